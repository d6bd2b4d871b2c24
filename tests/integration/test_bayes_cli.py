#!/usr/bin/env python3
"""test_bayes_cli - `moat bayes ...` end to end on real corpus messages.

Trains on a hundred messages of ../shared/corpus (skipped when the corpus
is absent), classifies held-out spam and ham, checks learn-twice, forget,
stats, mbox input and the export/import round trip.  No daemon needed.
"""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import TAP, MOAT, SHARED  # noqa: E402

t = TAP()
CORPUS = os.path.join(SHARED, "corpus", "spamassassin")
if not os.path.exists(MOAT):
    t.skip_all("moat not built")
if not os.path.isdir(os.path.join(CORPUS, "spam")):
    t.skip_all("corpus not found at %s" % CORPUS)

tmp = tempfile.mkdtemp(prefix="moat-bayes-")
state = os.path.join(tmp, "state")
conf = os.path.join(tmp, "moat.conf")
with open(conf, "w") as f:
    f.write("hostname mx.moat.test\nstate-dir %s\n" % state)


def run(*args, input=None, env=None):
    return subprocess.run([MOAT, "-c", conf, "bayes"] + list(args), input=input,
                          capture_output=True, text=True, timeout=300, env=env)


def pick(kind, n, skip=0):
    files = sorted(os.listdir(os.path.join(CORPUS, kind)))
    return [os.path.join(CORPUS, kind, f) for f in files[skip:skip + n]]


try:
    spam, ham = pick("spam", 60), pick("ham", 60)
    test_spam, test_ham = pick("spam", 5, 300), pick("ham", 5, 1500)
    for kind, files in (("spam", spam), ("ham", ham)):
        d = os.path.join(tmp, kind)
        os.makedirs(os.path.join(d, "cur"))
        for i, p in enumerate(files[:45]):
            shutil.copy(p, os.path.join(d, "cur", "%d.msg" % i))   # Maildir-like
    # the other 15 of each as one mbox file
    for kind, files in (("spam", spam), ("ham", ham)):
        with open(os.path.join(tmp, kind + ".mbox"), "wb") as out:
            for p in files[45:]:
                data = open(p, "rb").read()
                if not data.startswith(b"From "):
                    out.write(b"From test@example.test Thu Jan  1 00:00:00 2004\n")
                out.write(data.rstrip(b"\n") + b"\n\n")

    r = run("classify", test_spam[0])
    t.ok(r.returncode == 1 and "bayes" in r.stderr, "classify before any training: clear error",
         r.stdout + r.stderr)
    r = run("train", "--spam", os.path.join(tmp, "spam"), "--ham", os.path.join(tmp, "ham"),
            "--spam", os.path.join(tmp, "spam.mbox"), "--ham", os.path.join(tmp, "ham.mbox"))
    t.ok(r.returncode == 0 and "learned 120," in r.stdout, "train: directories and mbox files",
         r.stdout + r.stderr)
    r = run("stats")
    t.ok(r.returncode == 0 and "spam 60\n" in r.stdout and "ham 60\n" in r.stdout
         and "messages-known 120" in r.stdout, "stats: 60 spam, 60 ham", r.stdout + r.stderr)
    r = run("train", "--spam", os.path.join(tmp, "spam"))
    t.ok(r.returncode == 0 and "learned 0, already known 45" in r.stdout,
         "training the same messages again: refused", r.stdout + r.stderr)

    env = dict(os.environ, MOAT_BAYES_PARAMS="min_learned=10")
    for p in test_spam:
        r = run("classify", p, env=env)
        prob = float(r.stdout.split()[1]) if r.returncode == 0 else -1
        t.ok(prob > 0.5, "held-out spam %s: %.4f" % (os.path.basename(p)[:20], prob),
             r.stdout + r.stderr)
    for p in test_ham:
        r = run("classify", p, env=env)
        prob = float(r.stdout.split()[1]) if r.returncode == 0 else -1
        t.ok(0 <= prob < 0.5, "held-out ham %s: %.4f" % (os.path.basename(p)[:20], prob),
             r.stdout + r.stderr)
    r = run("classify", test_spam[0], env=env)
    lines = r.stdout.splitlines()
    t.ok(lines[1].startswith("symbol BAYES_") and len([x for x in lines if x.startswith("  ")]) == 15,
         "classify prints the band symbol and 15 tokens", r.stdout)
    r = run("classify", test_spam[0], test_ham[0])
    t.ok(r.returncode == 0 and len(r.stdout.splitlines()) == 2
         and r.stdout.startswith(test_spam[0] + " "), "several files: one line each", r.stdout)

    # forget
    one = os.path.join(tmp, "spam", "cur", "0.msg")
    r = run("forget", "--ham", one)
    t.ok(r.returncode == 1 and "not learned" in r.stderr, "forget with the wrong class refused",
         r.stdout + r.stderr)
    r = run("forget", "--spam", one)
    t.ok(r.returncode == 0, "forget --spam", r.stdout + r.stderr)
    r = run("stats")
    t.ok("spam 59\n" in r.stdout, "59 spam after forget", r.stdout)

    # export / import round trip
    r = run("export")
    dump = r.stdout
    t.ok(r.returncode == 0 and dump.startswith("moat-bayes 1") and "\nm 59 60\n" in dump,
         "export", dump[:200] + r.stderr)
    before = run("classify", test_ham[0], env=env).stdout.splitlines()[0]
    shutil.rmtree(os.path.join(state, "bayes.lmdb"))
    r = run("import", input=dump)
    t.ok(r.returncode == 0, "import into a fresh store", r.stdout + r.stderr)
    after = run("classify", test_ham[0], env=env).stdout.splitlines()[0]
    t.eq(after, before, "same probability after the round trip")
    r = run("export")
    t.ok(sorted(r.stdout.splitlines()) == sorted(dump.splitlines()), "second export identical")
    r = run("import", input="garbage\n")
    t.ok(r.returncode == 1 and "line 1" in r.stderr, "bad import: FILE:LINE error", r.stderr)
    r = run("bogus")
    t.ok(r.returncode == 2 and "usage" in r.stderr, "unknown subcommand: usage, exit 2")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
t.done()
