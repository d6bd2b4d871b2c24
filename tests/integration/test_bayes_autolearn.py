#!/usr/bin/env python3
"""Bayes auto-learn (bayes-autolearn yes [spam N] [ham N]): a message whose
score without Bayes reaches the spam threshold and that we tag is learned
as spam, one at or below the ham threshold that we accept as ham, in
batches off the message path (one write transaction per 2 s tick); the
same message is not learned twice; forced verdicts and authenticated mail
are not learned; off by default."""
import os
import smtplib
import time

from moattest import TAP, Moat, Sink, SRCDIR

t = TAP()
RULES = os.path.join(SRCDIR, "rules")
FEE = open(os.path.join(SRCDIR, "tests", "corpus", "rules", "MOAT_ADVANCE_FEE.eml"), "rb").read()
HAM = (b"From: Bob <bob@remote.test>\r\nTo: x@relay.test\r\nSubject: lunch tomorrow\r\n"
       b"Message-ID: <lunch@remote.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"
       b"See you at noon at the usual place.\r\n")


def counts(m):
    d = {}
    for line in m.cli("bayes", "stats").stdout.splitlines():
        k, _, v = line.partition(" ")
        d[k] = v
    return int(d.get("spam", "0") or 0), int(d.get("ham", "0") or 0)


def wait_counts(m, want, timeout=15):
    end = time.time() + timeout
    got = counts(m)
    while got != want and time.time() < end:
        time.sleep(0.2)
        got = counts(m)
    return got


def send(m, data):
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    s.sendmail("a@b.example", ["x@relay.test"], data)
    s.quit()


with Sink() as sink:
    dom = {"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}
    extra = "rules %s\naction tag 1.5\naction reject 100\nbayes-autolearn yes spam 1.5 ham 0.5\n" % RULES
    with Moat(domains=dom, extra=extra) as m:
        send(m, FEE)
        send(m, HAM)
        t.eq(wait_counts(m, (1, 1)), (1, 1), "a tagged spam learned as spam, a clean message as ham")
        t.ok(m.wait_log(r"bayes event=autolearn spam=\d+ ham=\d+ already=0 failed=0") is not None,
             "logged as a batch")
        send(m, FEE)
        time.sleep(3)
        t.eq(counts(m), (1, 1), "the same spam again: not learned twice")
        t.ok(m.wait_log(r"bayes event=autolearn spam=0 ham=0 already=1 failed=0") is not None,
             "counted as already learned")
        # in between: neither confident spam nor confident ham
        lukewarm = HAM.replace(b"See you at noon", b"Dear friend, see you at noon") \
                      .replace(b"lunch@", b"lunch2@")
        send(m, lukewarm)
        time.sleep(3)
        t.ok(counts(m)[0] == 1, "spam count unchanged by an ordinary message")
    with Moat(domains=dom, extra="rules %s\naction tag 1.5\naction reject 100\n" % RULES) as m:
        send(m, FEE)
        send(m, HAM)
        t.ok(sink.wait_messages(5, 30), "delivered")
        time.sleep(3)
        t.ok("event=autolearn" not in m.log(), "auto-learn is off by default")
t.done()
