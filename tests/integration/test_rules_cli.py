#!/usr/bin/env python3
"""test_rules_cli - `moat rules check|test` with the shipped rule set.

Every tests/corpus/rules/NAME.eml must hit rule NAME of rules/, the clean
message _ham.eml must hit nothing; `moat rules check rules/` loads all of
them with no hard error; when the Debian spamassassin package is installed
its /usr/share/spamassassin loads too (the supported rules) and the skipped
ones are reported by kind.  No daemon needed.
"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import TAP, MOAT, SRCDIR  # noqa: E402

t = TAP()
if not os.path.exists(MOAT):
    t.skip_all("moat not built")
RULES = os.path.join(SRCDIR, "rules")
CORPUS = os.path.join(SRCDIR, "tests", "corpus", "rules")
tmp = tempfile.mkdtemp(prefix="moat-rules-")
conf = os.path.join(tmp, "moat.conf")
with open(conf, "w") as f:
    f.write("hostname mx.moat.test\nstate-dir %s\n" % os.path.join(tmp, "state"))


def run(*args):
    return subprocess.run([MOAT, "-c", conf, "rules"] + list(args),
                          capture_output=True, text=True, timeout=600)


r = run("check", "-l", RULES)
t.eq(r.returncode, 0, "rules check rules/ exits 0")
names = set(re.findall(r"^rule (\S+)$", r.stdout, re.M))
loaded = re.search(r"^rules loaded: (\d+)$", r.stdout, re.M)
t.ok(loaded and int(loaded.group(1)) >= 40, "40 or more rules loaded", r.stdout[-500:])
t.ok("hard errors: 0" in r.stdout, "no hard error")

emls = sorted(f for f in os.listdir(CORPUS) if f.endswith(".eml"))
public = sorted(n for n in names if not n.startswith("__"))
have = set(f[:-4] for f in emls)
t.ok(all(n in have for n in public), "every rule has a test message",
     ", ".join(n for n in public if n not in have))
paths = [os.path.join(CORPUS, f) for f in emls]
r = run("test", "-r", RULES, *paths)
t.eq(r.returncode, 0, "rules test on the rule corpus exits 0")
hits = {}
for line in r.stdout.splitlines():
    f, score, h = line.split("\t")
    hits[os.path.basename(f)[:-4]] = set(x for x in h.split(",") if x)
for n in sorted(have):
    if n.startswith("_"):
        continue
    t.ok(n in hits.get(n, set()), "%s.eml hits %s" % (n, n), "hits: %s" % sorted(hits.get(n, ())))
t.eq(sorted(hits.get("_ham", {"?"})), [], "the clean message hits nothing")

r = run("test", "-r", RULES, os.path.join(CORPUS, "MOAT_ADVANCE_FEE.eml"))
t.ok(r.returncode == 0 and "MOAT_ADVANCE_FEE" in r.stdout and "total " in r.stdout,
     "rules test FILE prints hits, descriptions and the total", r.stdout + r.stderr)

# a bad regex: reported with FILE:LINE, exit 1, the rest still loads
bad = os.path.join(tmp, "bad.cf")
with open(bad, "w") as f:
    f.write("body GOOD /x/\nbody BAD /(x/\nheader EV eval:check_foo()\nwhatever 1\n")
r = run("check", bad)
t.eq(r.returncode, 1, "a bad regex makes rules check exit 1")
t.ok("%s:2: BAD:" % bad in r.stdout, "bad regex shown as FILE:LINE", r.stdout)
t.ok("rules loaded: 1" in r.stdout, "the good rule still loads")
t.ok(re.search(r"skipped: 1 eval", r.stdout) and re.search(r"skipped: 1 unknown directive", r.stdout),
     "eval: and unknown directive counted", r.stdout)

SA = "/usr/share/spamassassin"
if os.path.isdir(SA) and any(f.endswith(".cf") for f in os.listdir(SA)):
    r = run("check", SA)
    loaded = re.search(r"^rules loaded: (\d+)$", r.stdout, re.M)
    t.ok(loaded and int(loaded.group(1)) > 500, "SpamAssassin rules: supported ones load (%s)"
         % (loaded.group(1) if loaded else "?"), r.stdout[-800:] + r.stderr)
    t.ok(re.search(r"^skipped: \d+ eval", r.stdout, re.M), "SpamAssassin eval: rules reported as skipped")
    t.ok(r.returncode in (0, 1), "rules check on SpamAssassin's rules finishes")
else:
    t.diag("spamassassin package not installed: SpamAssassin rule check skipped")
t.done()
