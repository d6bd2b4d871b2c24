#!/usr/bin/env python3
"""tag-subject-prefix: a tagged message's Subject gets the prefix (once,
not again if it has it), a folded Subject keeps its continuation lines, a
message without Subject gets one; untagged mail and the rest of a tagged
message are delivered byte for byte."""
import os
import smtplib

from moattest import TAP, Moat, Sink, SRCDIR

t = TAP()
RULES = os.path.join(SRCDIR, "rules")
FEE = open(os.path.join(SRCDIR, "tests", "corpus", "rules", "MOAT_ADVANCE_FEE.eml"), "rb").read()
FEE = FEE.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
HAM = (b"From: Bob <bob@remote.test>\r\nTo: x@relay.test\r\nSubject: lunch tomorrow\r\n"
       b"Message-ID: <lunch@remote.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"
       b"See you at noon at the usual place.\r\n")


def deliver(m, sink, data):
    n = len(sink.messages)
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    s.sendmail("a@b.example", ["x@relay.test"], data)
    s.quit()
    if not sink.wait_messages(n + 1, 30):
        return b""
    with sink.lock:
        d = sink.messages[-1]["data"]
    i = d.find(b"Message-ID:") if b"Message-ID:" in d else 0
    return d


def subject(d):
    hdr = d.split(b"\r\n\r\n", 1)[0]
    lines = hdr.split(b"\r\n")
    for k, l in enumerate(lines):
        if l.lower().startswith(b"subject:"):
            v = l
            for c in lines[k + 1:]:
                if c[:1] in (b" ", b"\t"):
                    v += b"\r\n" + c
                else:
                    break
            return v
    return None


with Sink() as sink:
    extra = "rules %s\naction tag 1.5\naction reject 100\ntag-subject-prefix \"[SPAM]\"\n" % RULES
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, extra=extra) as m:
        orig = subject(FEE)
        d = deliver(m, sink, FEE)
        t.eq(subject(d), b"Subject: [SPAM] " + orig[len(b"Subject: "):], "a tagged message: Subject prefixed")
        t.ok(d.endswith(FEE.split(b"\r\n\r\n", 1)[1]), "its body byte for byte")
        d = deliver(m, sink, HAM)
        t.eq(subject(d), b"Subject: lunch tomorrow", "an accepted message keeps its Subject")
        t.ok(d.endswith(HAM), "and is byte for byte")
        pre = FEE.replace(b"Subject: ", b"Subject: [SPAM] ", 1)
        d = deliver(m, sink, pre)
        t.eq(subject(d).count(b"[SPAM]"), 1, "prefixed already: not twice")
        folded = FEE.replace(b"Subject: ", b"Subject: first line\r\n\tsecond ", 1)
        d = deliver(m, sink, folded)
        t.ok(subject(d).startswith(b"Subject: [SPAM] first line\r\n\tsecond "),
             "a folded Subject: prefix on its first line, continuation kept", subject(d))
        nosub = b"\r\n".join(l for l in FEE.split(b"\r\n") if not l.startswith(b"Subject:"))
        d = deliver(m, sink, nosub)
        t.eq(subject(d), b"Subject: [SPAM]", "no Subject: one is added")
t.done()
