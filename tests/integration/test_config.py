#!/usr/bin/env python3
"""moatd -n: good configurations pass, broken ones fail with FILE:LINE errors.

Also: moatd -n with no -c checks the embedded default; moatd and moat print
usage on bad flags; every directive of lib/conf.c is documented in
docs/moat.conf.5; contrib/moat.conf.sample is a valid configuration.
"""
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import TAP, MOATD, MOAT, SRCDIR, make_tmpdir  # noqa: E402

t = TAP()
tmp = make_tmpdir("moat-conf-")


def env():
    e = dict(os.environ)
    e.pop("MOAT_CONF", None)
    return e


def run(args, cwd=None, environ=None):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd or tmp,
                              env=environ or env(), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(args, 127, "", "cannot run %s: %s" % (args[0], e))


def write(name, text):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def check(name, text):
    path = write(name, text)
    return path, run([MOATD, "-n", "-c", path])


def err_lines(path, r):
    """{line number: [messages]} of the FILE:LINE: message lines on stderr."""
    out = {}
    rx = re.compile(r"^" + re.escape(path) + r":(\d+): (.*)$")
    for l in r.stderr.splitlines():
        m = rx.match(l)
        if m:
            out.setdefault(int(m.group(1)), []).append(m.group(2))
    return out


def show(r):
    return "exit %s\nstdout: %s\nstderr: %s" % (r.returncode, r.stdout[-2000:], r.stderr[-2000:])


STATE = os.path.join(tmp, "state")

# ---------------------------------------------------------------- good ones
GOOD = {
    "minimal": """\
state-dir %s
listen smtp 127.0.0.1:2525
domain example.test deliver store
""" % STATE,
    "everything": """\
# every directive, with a value different from its default
hostname   mx.example.test
state-dir  %s
pid-file   %s/pid
threads    4
log-level  debug
syslog-facility local3
postmaster postmaster@example.test

listen smtp 127.0.0.1:2525
listen smtp [::1]:2525
listen smtp 127.0.0.2:2525 tls=none auth=none

domain example.test  deliver store
domain Example.ORG   deliver relay smtp://127.0.0.1:2526
domain lmtp.test     deliver relay lmtp://[::1]:24
domain plain.test    deliver relay smtp://relay.example.test
domain sock.test     deliver relay lmtp:unix:/run/dovecot/lmtp

smtp-banner "ESMTP \\"example\\" gateway"   # quoted, with escapes
recipient-delimiter -
message-size-limit 10M
smtp-max-line 4096
smtp-max-data-line 1000
smtp-max-header-size 1M
smtp-max-recipients 500
smtp-max-messages 100
smtp-max-bad-commands 10
smtp-max-received 30
smtp-timeout 5m
smtp-data-timeout 10m
smtp-stress-timeout 20s
smtp-max-sessions 5000
smtp-max-sessions-per-ip 20
smtp-limit-exempt 127.0.0.0/8 ::1 192.0.2.0/24
smtp-bare-lf reject
queue-retry-min 5m
queue-retry-max 4h
queue-lifetime 3d
bounce-lifetime 1d
queue-scan-interval 30s
relay-concurrency 50
relay-connect-timeout 10s
relay-command-timeout 2m
relay-data-timeout 15m
relay-max-messages-per-connection 100
""" % (STATE, STATE),
    "empty-delimiter-and-comments": """\
state-dir %s   # trailing comment
\t listen\tsmtp\t127.0.0.1:2525
# a comment line

domain example.test deliver store
recipient-delimiter ""
smtp-limit-exempt none
smtp-bare-lf normal
""" % STATE,
}

for name, text in GOOD.items():
    path, r = check(name + ".conf", text)
    t.ok(r.returncode == 0, "moatd -n accepts the %s config" % name, show(r))
    t.ok(not os.path.exists(STATE), "moatd -n on the %s config creates no state-dir" % name,
         "%s exists" % STATE)

# ---------------------------------------------------------------- broken ones
# (name, text, {line: regex that one error on that line must match})
BAD = [
    ("unknown directive", """\
state-dir %s
listen smtp 127.0.0.1:2525
domian example.test deliver store
""" % STATE, {3: r"unknown directive.*domian"}),
    ("bad size", """\
state-dir %s
listen smtp 127.0.0.1:2525
domain example.test deliver store
message-size-limit 10X
""" % STATE, {4: r"message-size-limit"}),
    ("size below its minimum", """\
listen smtp 127.0.0.1:2525

message-size-limit 12
""", {3: r"message-size-limit"}),
    ("bad duration", """\
listen smtp 127.0.0.1:2525
smtp-timeout forever
""", {2: r"smtp-timeout"}),
    ("number out of range", """\
threads 0
listen smtp 127.0.0.1:2525
""", {1: r"threads"}),
    ("bad listen address", """\
state-dir %s
listen smtp 999.1.2.3:25
""" % STATE, {2: r"listen"}),
    ("listen without a port", """\
listen smtp 127.0.0.1
""", {1: r"listen"}),
    ("listen port out of range", """\
# comment
listen smtp 127.0.0.1:65536
""", {2: r"listen"}),
    ("listen on a host name", """\
listen smtp mail.example.test:25
""", {1: r"listen"}),
    ("unknown listener kind", """\
listen smpt 127.0.0.1:25
""", {1: r"listen"}),
    ("same listen address twice", """\
listen smtp 127.0.0.1:2525
listen smtp 127.0.0.1:2525
""", {2: r"listen.*(already|twice|line 1)"}),
    ("bad listen option", """\
listen smtp 127.0.0.1:2525 tls=sometimes
""", {1: r"tls"}),
    ("duplicate domain", """\
state-dir %s
listen smtp 127.0.0.1:2525
domain example.test deliver store

domain EXAMPLE.test deliver relay smtp://127.0.0.1:25
""" % STATE, {5: r"example\.test"}),
    ("bad relay URL scheme", """\
listen smtp 127.0.0.1:2525
domain example.test deliver relay http://127.0.0.1:25
""", {2: r"relay"}),
    ("relay URL with a bad port", """\
listen smtp 127.0.0.1:2525
domain example.test deliver relay smtp://127.0.0.1:0
""", {2: r"relay"}),
    ("relay URL without a host", """\
domain example.test deliver relay smtp://
""", {1: r"relay"}),
    ("relative unix socket", """\
domain example.test deliver relay lmtp:unix:run/lmtp
""", {1: r"relay"}),
    ("relay without a URL", """\
domain example.test deliver relay
""", {1: r"domain"}),
    ("unknown delivery", """\
domain example.test deliver mbox
""", {1: r"domain"}),
    ("bad domain name", """\
domain exa..mple.test deliver store
""", {1: r"domain"}),
    ("unterminated quote", """\
listen smtp 127.0.0.1:2525
smtp-banner "ESMTP moat
domain example.test deliver store
""", {2: r"(?i)unterminated|quote"}),
    ("setting given twice", """\
threads 4
listen smtp 127.0.0.1:2525
threads 8
""", {3: r"threads"}),
    ("bad bare-LF policy", """\
smtp-bare-lf sometimes
""", {1: r"smtp-bare-lf"}),
    ("bad CIDR", """\
smtp-limit-exempt 10.0.0.0/33
""", {1: r"smtp-limit-exempt"}),
    ("implicit TLS without a certificate", """\
listen smtps 127.0.0.1:2465
""", {1: r"(?i)tls"}),
    ("STARTTLS without a certificate", """\
# no tls certificate line
listen smtp 127.0.0.1:2525 tls=starttls
""", {2: r"(?i)tls"}),
    ("unreadable certificate", """\
tls certificate /nonexistent/moat-cert.pem key /nonexistent/moat-key.pem
""", {1: r"/nonexistent/moat-(cert|key)\.pem"}),
    ("bad tls min-version", """\
tls min-version 1.0
""", {1: r"min-version"}),
    ("unknown tls setting", """\
tls protocols all
""", {1: r"tls"}),
    ("several errors at once", """\
state-dir %s
listen smtp 127.0.0.1:99999
domain example.test deliver store
frobnicate yes
message-size-limit lots
domain example.test deliver store
smtp-banner "unterminated
domain other.test deliver relay ftp://x
""" % STATE, {2: r"listen", 4: r"frobnicate", 5: r"message-size-limit",
              6: r"example\.test", 7: r"(?i)unterminated|quote", 8: r"relay"}),
]

for name, text, want in BAD:
    fname = re.sub(r"[^a-z0-9]+", "-", name.lower()) + ".conf"
    path, r = check(fname, text)
    got = err_lines(path, r)
    t.ok(r.returncode != 0, "%s: moatd -n exits non-zero" % name, show(r))
    bad = []
    for line, rx in want.items():
        if not any(re.search(rx, m) for m in got.get(line, [])):
            bad.append("no error matching /%s/ at line %d" % (rx, line))
    extra = sorted(set(got) - set(want))
    if extra:
        bad.append("errors at unexpected lines %s" % extra)
    t.ok(not bad, "%s: reported as %s:%s: ..." % (name, fname, ",".join(map(str, want))),
         "\n".join(bad) + "\n" + show(r))

t.ok(not os.path.exists(STATE), "moatd -n on broken configs creates no state-dir")

# a file that does not exist
missing = os.path.join(tmp, "no-such.conf")
r = run([MOATD, "-n", "-c", missing])
t.ok(r.returncode != 0 and missing in r.stderr, "moatd -n -c on a missing file fails and names it",
     show(r))

# ---------------------------------------------------------------- embedded default
cwd = make_tmpdir("moat-conf-cwd-")
r = run([MOATD, "-n"], cwd=cwd)
t.ok(r.returncode == 0, "moatd -n with no -c accepts the embedded default", show(r))
t.ok(not os.path.exists(os.path.join(cwd, "var")), "moatd -n with no -c creates no ./var")

# MOAT_CONF names the file when there is no -c
bad_env = write("env-bad.conf", "listen smtp 127.0.0.1:2525\nbogus-directive 1\n")
e = env()
e["MOAT_CONF"] = bad_env
r = run([MOATD, "-n"], cwd=cwd, environ=e)
t.ok(r.returncode != 0 and (bad_env + ":2:") in r.stderr,
     "moatd -n with MOAT_CONF checks that file", show(r))

# ---------------------------------------------------------------- usage
for args, who in (([MOATD, "-x"], "moatd -x"), ([MOATD, "-c"], "moatd -c without a file"),
                  ([MOAT, "-x"], "moat -x"), ([MOAT], "moat with no command"),
                  ([MOAT, "frobnicate"], "moat frobnicate"),
                  ([MOAT, "user"], "moat user without a subcommand")):
    r = run(args, cwd=cwd)
    t.ok(r.returncode != 0 and re.search(r"(?i)usage", r.stdout + r.stderr),
         "%s prints usage and fails" % who, show(r))

# ---------------------------------------------------------------- docs and sample
conf_c = os.path.join(SRCDIR, "lib", "conf.c")
man5 = os.path.join(SRCDIR, "docs", "moat.conf.5")
with open(conf_c) as f:
    src = f.read()
names = set()
for table in ("settings[]", "directives[]"):
    i = src.find(table)
    j = src.find("};", i)
    if i >= 0:
        names.update(re.findall(r'\{\s*"([a-z0-9-]+)"\s*,', src[i:j]))
with open(man5) as f:
    man = f.read()
documented = set(re.findall(r"^\.B[IR]?\s+\"?([a-z0-9-]+)", man, re.M))
t.ok(len(names) > 20, "found the directive tables in lib/conf.c (%d names)" % len(names))
undocumented = sorted(names - documented)
t.ok(not undocumented, "every directive of lib/conf.c is documented in docs/moat.conf.5",
     "undocumented: %s" % " ".join(undocumented))

sample = os.path.join(SRCDIR, "contrib", "moat.conf.sample")
if os.path.exists(sample):
    # the sample names system paths; check it with a writable state-dir
    with open(sample) as f:
        text = f.read()
    path, r = check("sample.conf", text)
    t.ok(r.returncode == 0, "contrib/moat.conf.sample is a valid configuration", show(r))
    with open(sample) as f:
        stext = f.read()
    missing_in_sample = sorted(n for n in names
                               if not re.search(r"^#?\s*" + re.escape(n) + r"(?=\s|$)", stext, re.M))
    t.ok(not missing_in_sample, "contrib/moat.conf.sample mentions every directive",
         "missing: %s" % " ".join(missing_in_sample))

# the man pages render without groff warnings (what `man -l` shows)
groff = shutil.which("groff")
for page in ("moatd.8", "moat.1", "moat.conf.5"):
    path = os.path.join(SRCDIR, "docs", page)
    if groff is None:
        t.ok(True, "docs/%s renders # SKIP groff not installed" % page)
        continue
    r = run([groff, "-man", "-ww", "-z", "-Tutf8", path])
    t.ok(r.returncode == 0 and r.stderr.strip() == "", "docs/%s renders without warnings" % page,
         show(r))

if not os.environ.get("MOAT_KEEP_TMP"):
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(cwd, ignore_errors=True)
t.done()
