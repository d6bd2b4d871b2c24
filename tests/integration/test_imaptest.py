#!/usr/bin/env python3
"""Dovecot imaptest's scripted compliance tests (../shared/conformance/
imaptest-tests, read in place) run by imaptest.py, our interpreter of the
script format, first against Dovecot (dovecot-imapd started here on
loopback: the interpreter is right when Dovecot passes) and then against
moat.  One TAP line per test group and server: pass, fail, or skip when
the server does not advertise a capability the group needs (as imaptest
does).  Moat groups that fail for a known reason are listed in
KNOWN_FAILURES below: they are reported but do not fail the test (and a
listed group that starts passing is only noted).  The Dovecot half needs
root and dovecot-imapd and is skipped otherwise; the moat half does not.
Then a stress run (imaptest.stress: 5 sessions for some seconds of random
APPEND/STORE/FETCH/EXPUNGE/SEARCH on one mailbox, every untagged
EXISTS/EXPUNGE/FETCH checked against each session's view, and every view
against a fresh SELECT at the end) on both servers: 0 errors wanted.
IMAPTEST_GROUPS="fetch copy" restricts the run (for development);
IMAPTEST_STRESS_SECS sets the stress time (default 6, 0 = no stress run)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import SHARED, TAP, Dovecot, Moat, free_port  # noqa: E402
import imaptest  # noqa: E402

# group -> why moat fails it (kept visible; see docs/imap.md "imaptest")
KNOWN_FAILURES = {
}

# groups the interpreter cannot run faithfully against Dovecot either
DOVECOT_KNOWN = {
}

t = TAP()
TESTDIR = os.path.join(SHARED, "conformance", "imaptest-tests")
if not os.path.isdir(TESTDIR):
    t.skip_all("../shared/conformance/imaptest-tests not present")
paths = imaptest.list_tests(TESTDIR)
only = os.environ.get("IMAPTEST_GROUPS", "").split()
if only:
    paths = [p for p in paths if os.path.basename(p) in only]
USER, PASS = "alice@example.test", "alice-pw"
STRESS_SECS = float(os.environ.get("IMAPTEST_STRESS_SECS", "6"))


def run_all(port, label, known):
    counts = {"pass": 0, "fail": 0, "skip": 0}
    for p in paths:
        name = os.path.basename(p)
        res, msgs = imaptest.run_test(p, "127.0.0.1", port, USER, PASS)
        counts[res] += 1
        if res == "skip":
            t.ok(True, "%s %s # SKIP %s" % (label, name, msgs[0] if msgs else ""))
        elif name in known:
            t.ok(True, "%s %s: %s (known failure: %s)"
                 % (label, name, "passes now" if res == "pass" else "fails", known[name]))
            if res == "fail":
                t.diag("\n".join(msgs[:3]))
        else:
            t.ok(res == "pass", "%s %s passes" % (label, name), "\n".join(msgs[:6]))
    t.diag("%s: %d test groups: %d passed, %d failed, %d skipped due to missing capabilities"
           % (label, len(paths), counts["pass"], counts["fail"], counts["skip"]))
    return counts


def run_stress(port, label):
    if STRESS_SECS <= 0:
        return
    n, errs = imaptest.stress("127.0.0.1", port, USER, PASS, clients=5, seconds=STRESS_SECS,
                              mbox=os.path.join(TESTDIR, "default.mbox"))
    t.ok(n > 100 and not errs, "%s stress: %d commands in %gs by 5 sessions, %d errors"
         % (label, n, STRESS_SECS, len(errs)), "\n".join(errs[:10]))


def run_dovecot():
    why = Dovecot.unavailable()
    if why:
        t.ok(True, "Dovecot half # SKIP " + why)
        return
    try:
        d = Dovecot({USER: PASS}, prefix="moat-imaptest-dovecot-")
    except RuntimeError as e:
        t.ok(False, "Dovecot starts", str(e))
        return
    with d:
        run_all(d.port, "dovecot", DOVECOT_KNOWN)
        run_stress(d.port, "dovecot")


# the stress checker is not vacuous: a view it cannot follow is an error
chk = imaptest.StressClient.__new__(imaptest.StressClient)
chk.errors, chk.uids, chk.conn = [], [], type("C", (), {"ident": 0})()
for line in ("* 2 EXISTS\r\n", "* 1 FETCH (UID 7)\r\n", "* 2 FETCH (UID 5)\r\n", "* 3 EXPUNGE\r\n",
             "* 1 EXISTS\r\n"):
    chk.untagged(line)
t.eq(len(chk.errors), 3, "stress checker flags UIDs out of order, a bad EXPUNGE, a shrinking EXISTS")

if os.environ.get("IMAPTEST_SERVER", "both") in ("both", "dovecot"):
    run_dovecot()
if os.environ.get("IMAPTEST_SERVER", "both") in ("both", "moat"):
    iport = free_port()
    with Moat(extra="listen imap 127.0.0.1:%d\nauth-allow-plaintext yes\n" % iport) as m:
        m.cli("user", "add", USER, input=PASS + "\n", check=True)
        run_all(iport, "moat", KNOWN_FAILURES)
        run_stress(iport, "moat")
t.done()
