#!/usr/bin/env python3
"""Greylisting at RCPT (greylist yes): the first attempt of a triplet
(client /24, sender, recipient) gets 450 4.7.1, a retry before the delay
too, a retry after it is accepted and the triplet then passes at once (also
after a restart); another /24 is another triplet; pipelined commands wait
for the decision and keep their order; authenticated and allow-listed
clients are not greylisted; every decision is one event=greylist line."""
import os
import re
import smtplib
import time

from moattest import TAP, Moat, Sink, SMTPConn, enhanced, free_port, wait_port

t = TAP()
USER, PW = "alice@users.test", "correct horse battery staple"
MSG = b"From: a@sender.test\r\nTo: x@relay.test\r\nSubject: grey\r\n\r\nhello\r\n"


def session(m, src="127.0.0.1"):
    c = SMTPConn(m.port, source=src, timeout=15)
    c.cmd("EHLO client.test")
    return c


def rcpt(m, frm, to, src="127.0.0.1"):
    """a new session: MAIL, RCPT; (code, text) of the RCPT"""
    with session(m, src) as c:
        code, text, _ = c.cmd("MAIL FROM:<%s>" % frm)
        if code != 250:
            return code, text
        code, text, _ = c.cmd("RCPT TO:<%s>" % to)
        c.cmd("QUIT")
        return code, text


with Sink() as sink:
    m = Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port, "users.test": "store"},
             start=False)
    ldir = os.path.join(m.tmp, "lists")
    os.makedirs(ldir)
    with open(os.path.join(ldir, "allow"), "w") as f:
        f.write("sender friend@trusted.test\nip 127.0.9.9\n")
    with open(os.path.join(ldir, "block"), "w") as f:
        f.write("")
    psub, p6 = free_port(), free_port()
    m.write_conf(extra="\n".join([
        "greylist yes", "greylist-delay 2s", "lists %s" % ldir,
        "listen submission 127.0.0.1:%d" % psub, "auth-allow-plaintext yes",
        "listen smtp [::1]:%d" % p6,
    ]))
    with m:
        m.cli("user", "add", USER, input=PW + "\n", check=True)
        m.start()
        t.ok(wait_port(psub), "moatd up with greylist yes and a submission listener")

        # the first attempt and an early retry
        t0 = time.time()
        with session(m) as c:
            c.cmd("MAIL FROM:<a@sender.test>")
            code, text, _ = c.cmd("RCPT TO:<x@relay.test>")
            t.ok(code == 450 and enhanced(text) == "4.7.1" and "Greylisted" in text,
                 "first attempt: 450 4.7.1 Greylisted", text)
            mm = re.search(r"try again in (\d+) seconds", text)
            t.ok(mm is not None and 1 <= int(mm.group(1)) <= 2, "the reply says when to retry", text)
            code, text, _ = c.cmd("DATA")
            t.ok(code in (503, 554), "no DATA without an accepted recipient (%s)" % code, text)
            code, text, _ = c.cmd("RCPT TO:<x@relay.test>")
            t.ok(code == 450 and enhanced(text) == "4.7.1", "a retry before the delay: still 450 4.7.1", text)
        t.ok(m.wait_log(r"event=greylist ip=127\.0\.0\.1 net=127\.0\.0\.0/24 from=<a@sender\.test> "
                        r"to=<x@relay\.test> action=defer") is not None, "deferral logged with ip, net, from, to")
        t.ok(os.path.exists(os.path.join(m.state, "greylist.db")), "state-dir/greylist.db created")
        t.ok(m.wait_log(r"event=greylist-purge deleted=0") is not None, "the hourly purge ran once at start")

        # after the delay
        time.sleep(max(0, 2.3 - (time.time() - t0)))
        with session(m) as c:
            c.cmd("MAIL FROM:<a@sender.test>")
            code, text, _ = c.cmd("RCPT TO:<x@relay.test>")
            t.eq(code, 250, "a retry after the delay is accepted")
            code, _, _ = c.cmd("DATA")
            t.eq(code, 354, "DATA")
            c.send(MSG + b".\r\n")
            code, text, _ = c.reply()
            t.eq(code, 250, "the message is accepted")
        t.ok(sink.wait_messages(1, 30), "and delivered")
        t.ok(m.wait_log(r"event=greylist .*to=<x@relay\.test> action=pass") is not None, "action=pass logged")

        # the same triplet later: at once
        t.eq(rcpt(m, "a@sender.test", "x@relay.test")[0], 250, "the confirmed triplet passes at once")
        t.ok(m.wait_log(r"event=greylist .*to=<x@relay\.test> action=allow") is not None, "action=allow logged")
        # sender address with a +extension and other case: the same sender
        t.eq(rcpt(m, "A+list@Sender.TEST", "X@relay.test")[0], 250,
             "the sender's +extension and letter case do not make a new triplet")
        # another /24 of the same client address space: another triplet
        t.eq(rcpt(m, "a@sender.test", "x@relay.test", src="127.0.1.1")[0], 450,
             "from another /24 the triplet is new: 450")
        t.eq(rcpt(m, "a@sender.test", "x@relay.test", src="127.0.0.77")[0], 250,
             "from the same /24 it passes")

        # IPv6: the network is the /64
        with SMTPConn(p6, host="::1", timeout=15) as c:
            c.cmd("EHLO client.test")
            c.cmd("MAIL FROM:<a@sender.test>")
            code, text, _ = c.cmd("RCPT TO:<x@relay.test>")
            t.ok(code == 450 and enhanced(text) == "4.7.1", "an IPv6 client is greylisted too", text)
        t.ok(m.wait_log(r"event=greylist ip=::1 net=::/64 from=<a@sender\.test> to=<x@relay\.test> action=defer")
             is not None, "keyed by its /64")

        # pipelining: the session stops reading during the decision and
        # answers every command in order
        with session(m) as c:
            c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<new@relay.test>\r\nRCPT TO:<x@relay.test>\r\n"
                   b"RCPT TO:<x@relay.test>\r\nDATA\r\n")
            codes = [r[0] for r in c.replies(5)]
            t.eq(codes, [250, 450, 250, 250, 354], "pipelined: MAIL, RCPT (greylisted), RCPT, duplicate RCPT, DATA")
            c.send(MSG + b".\r\n")
            code, text, _ = c.reply()
            t.eq(code, 250, "the pipelined message is accepted")
        t.ok(sink.wait_messages(2, 30), "and delivered")
        with sink.lock:
            t.eq(sink.messages[-1]["rcpts"], ["x@relay.test"], "only the accepted recipient receives it")

        # authenticated: not greylisted
        s = smtplib.SMTP("127.0.0.1", psub, timeout=15, source_address=("127.0.2.1", 0))
        s.ehlo("client.test")
        s.login(USER, PW)
        code, text = s.docmd("MAIL FROM:<%s>" % USER)
        code, text = s.docmd("RCPT TO:<other@relay.test>")
        t.eq(code, 250, "an authenticated client is not greylisted")
        s.quit()
        # allow-listed sender and client: not greylisted
        t.eq(rcpt(m, "friend@trusted.test", "other2@relay.test", src="127.0.3.1")[0], 250,
             "an allow-listed sender is not greylisted")
        t.eq(rcpt(m, "b@sender.test", "other3@relay.test", src="127.0.9.9")[0], 250,
             "an allow-listed client address is not greylisted")
        log = m.log()
        t.ok(not re.search(r"event=greylist .*to=<other[23]?@relay\.test>", log),
             "no greylist lookup for authenticated or allow-listed mail")

        # the store survives a restart
        m.stop()
        m.start()
        t.eq(rcpt(m, "a@sender.test", "x@relay.test")[0], 250, "after a restart the triplet still passes")
        t.ok("event=greylist-error" not in m.log(), "no greylist database errors", m.log()[-2000:])

# a database that cannot be opened: the recipient is accepted, the error logged
with Sink() as sink:
    m = Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, extra="greylist yes",
             start=False)
    os.makedirs(os.path.join(m.state, "greylist.db"))      # a directory: never a database
    with m:
        m.start()
        t.eq(rcpt(m, "a@sender.test", "x@relay.test")[0], 250,
             "greylist database unusable: the recipient is accepted (greylisting fails open)")
        t.ok(m.wait_log(r"event=greylist-error ip=127\.0\.0\.1 error=\"greylist: \S+greylist\.db") is not None,
             "and the error is logged")
        t.ok(m.wait_log(r"event=greylist .*action=error") is not None, "event=greylist action=error")
        t.ok(m.proc.poll() is None, "moatd keeps running")

# greylist off (the default): nothing is greylisted, no database
with Sink() as sink, Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}) as m:
    t.eq(rcpt(m, "a@sender.test", "x@relay.test")[0], 250, "greylist no (default): accepted at once")
    t.ok(not os.path.exists(os.path.join(m.state, "greylist.db")), "and no greylist.db")

t.done()
