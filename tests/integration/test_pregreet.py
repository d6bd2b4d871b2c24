#!/usr/bin/env python3
"""Early talkers (smtp-pregreet-wait): the 220 on smtp listeners waits;
a client that sends anything first is refused (554 5.5.1, no 220) or, with
smtp-pregreet-action score, served with a PREGREET symbol in its messages'
verdicts; a polite client gets a normal session after the wait; loopback
is not exempt, submission listeners and allow-listed clients are greeted
at once; the wait is off by default."""
import os
import signal
import socket
import time

from moattest import TAP, Moat, Sink, SMTPConn, enhanced, free_port

t = TAP()
MSG = b"From: a@sender.test\r\nTo: x@relay.test\r\nSubject: early\r\n\r\nhello\r\n"


def greet_time(port, src="127.0.0.1"):
    """seconds until the greeting, and its code"""
    t0 = time.time()
    with SMTPConn(port, source=src, timeout=10, greet=False) as c:
        code, text, _ = c.reply()
        return time.time() - t0, code


def deliver(c):
    code, _, _ = c.cmd("MAIL FROM:<a@sender.test>")
    code2, _, _ = c.cmd("RCPT TO:<x@relay.test>")
    code3, _, _ = c.cmd("DATA")
    if (code, code2, code3) != (250, 250, 354):
        return (code, code2, code3)
    c.send(MSG + b".\r\n")
    return c.reply()[0]


with Sink() as sink:
    m = Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, start=False)
    ldir = os.path.join(m.tmp, "lists")
    os.makedirs(ldir)
    with open(os.path.join(ldir, "allow"), "w") as f:
        f.write("ip 127.0.0.9\n")
    psub = free_port()
    m.write_conf(extra="\n".join(["smtp-pregreet-wait 2s", "lists %s" % ldir,
                                  "listen submission 127.0.0.1:%d" % psub, "auth-allow-plaintext yes"]))
    with m:
        m.start()
        # a polite client waits for the 220 and gets a normal session
        t0 = time.time()
        with SMTPConn(m.port, timeout=10, greet=False) as c:
            code, text, _ = c.reply()
            waited = time.time() - t0
            t.ok(code == 220 and 1.8 <= waited < 4, "the 220 comes after the wait (%.2fs)" % waited, text)
            code, _, _ = c.cmd("EHLO polite.test")
            t.eq(code, 250, "EHLO after the greeting")
            t.eq(deliver(c), 250, "a polite client's message is accepted")
        t.ok(sink.wait_messages(1, 30), "and delivered")
        t.ok("event=pregreet" not in m.log(), "no pregreet event for a polite client")

        # an early talker: refused at once, never greeted
        t0 = time.time()
        with SMTPConn(m.port, timeout=10, greet=False) as c:
            c.send(b"EHLO early.test\r\n")
            code, text, raw = c.reply()
            took = time.time() - t0
            t.ok(code == 554 and enhanced(text) == "5.5.1" and "talked before the greeting" in text,
                 "an early talker gets 554 5.5.1", raw)
            t.ok(b"220" not in raw, "and no 220", raw)
            t.ok(took < 1.5, "refused without waiting out the delay (%.2fs)" % took)
            t.ok(c.wait_closed(5), "and disconnected")
        t.ok(m.wait_log(r"event=pregreet ip=127\.0\.0\.1 after=\d+\.\d+s bytes=17 action=reject "
                        r"data=\"EHLO early\.test") is not None, "event=pregreet logged with what was sent")

        # talking just before the end of the wait still counts
        with SMTPConn(m.port, timeout=10, greet=False) as c:
            time.sleep(1.2)
            c.send(b"HELO late.test\r\n")
            code, text, raw = c.reply()
            t.eq(code, 554, "talking 1.2 s into a 2 s wait is refused too")

        # loopback is not exempt (smtp-limit-exempt is about limits only);
        # submission and allow-listed clients are greeted at once
        waited, code = greet_time(psub)
        t.ok(code == 220 and waited < 1, "a submission listener greets at once (%.2fs)" % waited)
        waited, code = greet_time(m.port, src="127.0.0.9")
        t.ok(code == 220 and waited < 1, "an allow-listed client is greeted at once (%.2fs)" % waited)
        waited, code = greet_time(m.port, src="127.0.0.10")
        t.ok(code == 220 and waited >= 1.8, "another loopback client waits (%.2fs)" % waited)

        # a client that leaves during the wait
        s = socket.create_connection(("127.0.0.1", m.port), source_address=("127.0.0.11", 0))
        s.close()
        time.sleep(2.5)
        t.ok(m.wait_log(r"event=disconnect ip=127\.0\.0\.11 ") is not None, "a client leaving during the wait is cleaned up")
        t.ok(m.proc.poll() is None, "moatd is still running")

        # shutdown during the wait: told at once, not after the wait
        with SMTPConn(m.port, timeout=10, greet=False, source="127.0.0.12") as c:
            time.sleep(0.3)
            t0 = time.time()
            m.proc.send_signal(signal.SIGTERM)
            code, text, _ = c.reply()
            took = time.time() - t0
            t.ok(code == 421 and took < 1.5, "shutdown during the wait: 421 at once (%.2fs)" % took, text)
        t.eq(m.stop(), 0, "moatd stops cleanly")

# smtp-pregreet-action score: served after the wait, PREGREET in the verdict
with Sink() as sink:
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port},
              extra="\n".join(["smtp-pregreet-wait 1s", "smtp-pregreet-action score",
                               "score PREGREET 6", "action tag 5"])) as m:
        with SMTPConn(m.port, timeout=10, greet=False) as c:
            c.send(b"EHLO early.test\r\n")
            code, text, _ = c.reply()
            t.eq(code, 220, "score: the early talker still gets the 220 after the wait")
            code, text, _ = c.reply()
            t.eq(code, 250, "and then the answer to its EHLO")
            t.eq(deliver(c), 250, "its message is accepted")
        t.ok(sink.wait_messages(1, 30), "and delivered")
        with sink.lock:
            d = sink.messages[0]["data"].decode("utf-8", "replace")
        hdr = d.split("\r\n\r\n")[0]
        t.ok("X-Spam-Flag: YES" in hdr and "PREGREET" in hdr, "tagged with PREGREET (score PREGREET 6)", hdr[:800])
        t.ok(m.wait_log(r"event=pregreet .*action=score") is not None, "event=pregreet action=score logged")
        t.ok(m.wait_log(r"event=verdict .*action=tag .*PREGREET\(6\.00\)") is not None, "PREGREET in the verdict line")
        # a polite client in the same instance: no PREGREET
        with SMTPConn(m.port, timeout=10) as c:
            c.cmd("EHLO polite.test")
            t.eq(deliver(c), 250, "a polite client's message")
        t.ok(sink.wait_messages(2, 30), "delivered")
        with sink.lock:
            d = sink.messages[1]["data"].decode("utf-8", "replace")
        t.ok("PREGREET" not in d.split("\r\n\r\n")[0], "has no PREGREET")

# the wait is not cut short by a shorter smtp-timeout
with Moat(extra="smtp-pregreet-wait 2s\nsmtp-timeout 1") as m:
    waited, code = greet_time(m.port)
    t.ok(code == 220 and waited >= 1.8, "a 2 s wait with smtp-timeout 1: still greeted (%.2fs, %s)" % (waited, code))

# off by default: greeted at once, talking first is not checked
with Moat() as m:
    waited, code = greet_time(m.port)
    t.ok(code == 220 and waited < 1, "smtp-pregreet-wait 0 (default): greeted at once (%.2fs)" % waited)

t.done()
