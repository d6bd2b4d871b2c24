#!/usr/bin/env python3
"""SMTP server conformance (RFC 5321 and its extensions), black box.

Drives moatd with Python's smtplib and raw sockets; mail is for a
`deliver relay` domain that points at the harness's Sink.  Reply codes
follow Postfix's conventions with RFC 3463 enhanced status codes.
"""
import os
import re
import smtplib
import sys
import time
import traceback
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import (TAP, Moat, Sink, SMTPConn, SRCDIR, MOATD, enhanced, find_message,  # noqa: E402
                      sink_count, spool_messages, QID_RE)

t = TAP()
if not os.path.exists(MOATD):
    t.skip_all("moatd not built")

CORPUS = os.path.join(SRCDIR, "tests", "corpus")
DOMAIN = "example.test"
SIZE_LIMIT = 1000000
# Delivery to the Sink is asserted hard (the queue manager relays); set
# MOAT_TEST_SPOOL_OK=1 to accept a message that only reached the spool.
SPOOL_OK = os.environ.get("MOAT_TEST_SPOOL_OK") == "1"


def corpus(name):
    with open(os.path.join(CORPUS, name), "rb") as f:
        return f.read()


def marker():
    return "mk-" + uuid.uuid4().hex[:16]


def msg_bytes(mk, subject="test", body="hello\r\n", extra_headers=""):
    return ("From: sender@sender.test\r\nTo: rcpt@%s\r\nSubject: %s %s\r\n%s\r\n%s\r\nmarker %s\r\n"
            % (DOMAIN, subject, mk, extra_headers, body, mk)).encode()


def dot_stuff(data):
    out = []
    for line in data.split(b"\r\n"):
        out.append(b"." + line if line.startswith(b".") else line)
    return b"\r\n".join(out)


def ehlo(c, name="client.test"):
    return c.cmd("EHLO " + name)


def check(code_text, want_code, want_enh, desc):
    """assert a reply: want_code an int (or tuple of ints), want_enh a string
    or tuple of strings (or None: not checked)"""
    code, text = code_text[0], code_text[1]
    codes = want_code if isinstance(want_code, tuple) else (want_code,)
    ok = code in codes
    if ok and want_enh is not None:
        enhs = want_enh if isinstance(want_enh, tuple) else (want_enh,)
        ok = enhanced(text) in enhs
    return t.ok(ok, desc, "got:  %r %r\nwant: %r %r" % (code, text, want_code, want_enh))


def arrived(m, sink, mk, desc, timeout=15.0):
    """the message with marker mk reached the sink (or, with SPOOL_OK, the
    spool); returns its bytes or None"""
    where, what = find_message(m, sink, mk, timeout)
    if where == "sink":
        t.ok(True, desc + " (delivered to the sink)")
        return what["data"]
    if where == "spool" and SPOOL_OK:
        t.ok(True, desc + " (in the spool, queue %s)" % what[0])
        return what[2]
    t.ok(False, desc, "where=%r; spool has %d messages" % (where, len(spool_messages(m))))
    return what[2] if where == "spool" else None


def send_raw(port, frm, rcpts, data, mail_params="", helo="EHLO client.test"):
    """one whole transaction over a raw socket; returns a dict of the
    replies: helo, mail, rcpt (list), data (to DATA), end (after the
    message; (None, "", b"") if DATA failed)."""
    out = {"end": (None, "", b"")}
    with SMTPConn(port) as c:
        out["helo"] = c.cmd(helo)
        out["mail"] = c.cmd("MAIL FROM:<%s>%s" % (frm, mail_params))
        out["rcpt"] = [c.cmd("RCPT TO:<%s>" % r) for r in rcpts]
        out["data"] = c.cmd("DATA")
        if out["data"][0] == 354:
            c.send(dot_stuff(data) + b".\r\n")
            out["end"] = c.reply(30)
        c.cmd("QUIT")
    return out


def serving(m, sink, desc="moatd still serves a normal client"):
    mk = marker()
    try:
        with smtplib.SMTP("127.0.0.1", m.port, timeout=15) as s:
            s.ehlo("check.test")
            s.sendmail("alive@sender.test", ["alive@" + DOMAIN], msg_bytes(mk, "alive"))
        return t.ok(True, desc)
    except Exception as e:     # noqa: BLE001
        return t.ok(False, desc, repr(e))


def section(name, fn, *args):
    try:
        fn(*args)
    except Exception:          # noqa: BLE001
        t.ok(False, "%s: no exception" % name, traceback.format_exc())


# ---------------------------------------------------------------------------

def t_greeting_ehlo(m, sink):
    with SMTPConn(m.port) as c:
        code, text, _ = c.greeting
        t.eq(code, 220, "greeting is 220")
        t.ok(text.split()[0:1] == ["mx.moat.test"], "greeting starts with the hostname", text)
        code, text, _ = ehlo(c)
        t.eq(code, 250, "EHLO answers 250")
        lines = text.split("\n")
        t.ok(lines[0].startswith("mx.moat.test"), "EHLO first line names the host", text)
        kw = {l.split()[0].upper(): l.split()[1:] for l in lines[1:] if l.strip()}
        for ext in ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "DSN", "CHUNKING"):
            t.ok(ext in kw, "EHLO advertises %s" % ext, text)
        t.ok("SIZE" in kw and kw["SIZE"] == [str(SIZE_LIMIT)],
             "EHLO advertises SIZE %d (message-size-limit)" % SIZE_LIMIT, text)
        check(c.cmd("NOOP"), 250, "2.0.0", "NOOP -> 250 2.0.0")
        check(c.cmd("QUIT"), 221, "2.0.0", "QUIT -> 221 2.0.0")
        t.ok(c.wait_closed(5), "the server closes the connection after QUIT")

    with SMTPConn(m.port) as c:
        code, text, _ = c.cmd("HELO client.test")
        t.ok(code == 250 and text.startswith("mx.moat.test") and "\n" not in text,
             "HELO -> one-line 250 naming the host", text)
        check(c.cmd("MAIL FROM:<a@sender.test>"), 250, "2.1.0", "MAIL after HELO -> 250 2.1.0")
        check(c.cmd("RCPT TO:<u@%s>" % DOMAIN), 250, "2.1.5", "RCPT after HELO -> 250 2.1.5")
        check(c.cmd("RSET"), 250, "2.0.0", "RSET -> 250 2.0.0")

    with SMTPConn(m.port) as c:
        check(c.cmd("EHLO"), 501, "5.5.4", "EHLO without a name -> 501 5.5.4")
        check(c.cmd("HELO"), 501, "5.5.4", "HELO without a name -> 501 5.5.4")
        check(ehlo(c), 250, None, "EHLO after the errors still works")
        check(ehlo(c, "again.test"), 250, None, "a second EHLO is allowed (RFC 5321 4.1.4)")


def t_happy_path(m, sink):
    mk = marker()
    with smtplib.SMTP("127.0.0.1", m.port, timeout=15) as s:
        code, _ = s.ehlo("client.test")
        t.eq(code, 250, "smtplib: EHLO")
        code, _ = s.mail("sender@sender.test")
        t.eq(code, 250, "smtplib: MAIL")
        code, _ = s.rcpt("rcpt@" + DOMAIN)
        t.eq(code, 250, "smtplib: RCPT")
        code, resp = s.data(msg_bytes(mk, "happy"))
        t.eq(code, 250, "smtplib: DATA -> 250")
        resp = resp.decode()
        qm = QID_RE.search(resp)
        t.ok(qm is not None, "the 250 after DATA names the queue id", resp)
        t.ok(enhanced(resp) == "2.0.0", "the 250 after DATA carries 2.0.0", resp)
    data = arrived(m, sink, mk, "the message arrives")
    if data is not None and qm:
        qid = qm.group(1)
        head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        t.ok(head.startswith("Received:"), "our Received header comes first", head[:300])
        first = re.split(r"\r\n(?![ \t])", head)[0]
        t.ok(re.search(r"\bby mx\.moat\.test\b", first) is not None, "Received: ... by mx.moat.test", first)
        t.ok(re.search(r"\bid %s\b" % re.escape(qid), first) is not None,
             "Received header carries the queue id %s" % qid, first)
        t.ok(re.search(r"\bfrom client\.test\b", first) is not None, "Received header names the HELO", first)
        t.ok(b"\r\nmarker " + mk.encode() + b"\r\n" in data, "the body is intact")
    if sink_count(sink, mk):
        with sink.lock:
            msg = [x for x in sink.messages if mk.encode() in x["data"]][0]
        t.eq(msg["mail_from"], "sender@sender.test", "the sink got the envelope sender")
        t.eq(msg["rcpts"], ["rcpt@" + DOMAIN], "the sink got the envelope recipient")

    # every corpus message goes through unchanged (after our Received header)
    for name in ("plain.eml", "multipart.eml", "8bit.eml", "long-header.eml"):
        raw = corpus(name)
        mk = marker()
        raw = raw.replace(b"\r\n\r\n", ("\r\nX-Marker: %s\r\n\r\n" % mk).encode(), 1)
        params = " BODY=8BITMIME" if name == "8bit.eml" else ""
        r = send_raw(m.port, "sender@sender.test", ["bob@" + DOMAIN], raw, params)
        t.eq(r["end"][0], 250, "corpus %s accepted" % name)
        data = arrived(m, sink, mk, "corpus %s arrives" % name)
        if data is not None:
            i = data.find(b"From:")
            t.ok(data.endswith(raw) and data[:i].startswith(b"Received:"),
                 "corpus %s arrives byte for byte behind the Received header" % name,
                 "tail: %r" % data[-200:])


def t_null_sender(m, sink):
    mk = marker()
    r = send_raw(m.port, "", ["rcpt@" + DOMAIN], msg_bytes(mk, "bounce"))
    check(r["mail"], 250, "2.1.0", "MAIL FROM:<> (null sender) -> 250 2.1.0")
    check(r["end"], 250, "2.0.0", "null-sender message accepted")
    if r["end"][0] == 250:
        where, what = find_message(m, sink, mk, 15)
        if where == "sink":
            t.eq(what["mail_from"], "", "null sender relayed as <>")
        elif where == "spool":
            t.eq(what[1].get("sender", None), "", "null sender spooled as empty sender")
        else:
            t.ok(False, "null-sender message found")


def t_sequence(m, sink):
    with SMTPConn(m.port) as c:
        check(c.cmd("MAIL FROM:<a@sender.test>"), 503, "5.5.1", "MAIL before EHLO -> 503 5.5.1")
        check(c.cmd("RCPT TO:<u@%s>" % DOMAIN), 503, "5.5.1", "RCPT before MAIL -> 503 5.5.1")
        check(c.cmd("DATA"), 503, "5.5.1", "DATA before MAIL -> 503 5.5.1")
        ehlo(c)
        check(c.cmd("RCPT TO:<u@%s>" % DOMAIN), 503, "5.5.1", "RCPT before MAIL (after EHLO) -> 503 5.5.1")
        check(c.cmd("DATA"), 503, "5.5.1", "DATA without MAIL -> 503 5.5.1")
        check(c.cmd("MAIL FROM:<a@sender.test>"), 250, "2.1.0", "MAIL -> 250")
        check(c.cmd("MAIL FROM:<b@sender.test>"), 503, "5.5.1", "nested MAIL -> 503 5.5.1")
        check(c.cmd("DATA"), (503, 554), "5.5.1", "DATA without RCPT -> 503/554 5.5.1")
        check(c.cmd("RCPT TO:<nobody@unconfigured.test>"), 550, "5.7.1", "refused RCPT -> 550")
        check(c.cmd("DATA"), (503, 554), "5.5.1", "DATA with no accepted RCPT -> 554 5.5.1")
        check(c.cmd("RSET"), 250, "2.0.0", "RSET -> 250 2.0.0")
        check(c.cmd("RCPT TO:<u@%s>" % DOMAIN), 503, "5.5.1", "RSET clears the transaction: RCPT -> 503")
        check(c.cmd("MAIL FROM:<a@sender.test>"), 250, "2.1.0", "MAIL after RSET -> 250")
        check(c.cmd("RCPT TO:<u@%s>" % DOMAIN), 250, "2.1.5", "RCPT -> 250 2.1.5")
        c.send(b"BDAT 4\r\nabcd")
        check(c.reply(), 250, None, "BDAT chunk -> 250")
        check(c.cmd("DATA"), 503, "5.5.1", "DATA after BDAT in the same transaction -> 503 5.5.1")
        check(c.cmd("RSET"), 250, "2.0.0", "RSET after mixing BDAT and DATA")
        check(c.cmd("NOOP"), 250, "2.0.0", "session usable after RSET")


def t_syntax(m, sink):
    with SMTPConn(m.port) as c:
        ehlo(c)
        check(c.cmd("FOOBAR x"), 500, "5.5.2", "unknown command -> 500 5.5.2")
        check(c.cmd("MAIL"), 501, "5.5.4", "MAIL without FROM: -> 501 5.5.4")
        check(c.cmd("MAIL TO:<a@sender.test>"), 501, "5.5.4", "MAIL TO: -> 501 5.5.4")
        check(c.cmd("MAIL FROM:<a@sender.test"), 501, ("5.1.7", "5.5.4"), "MAIL FROM:<unclosed -> 501 5.1.7")
        check(c.cmd("MAIL FROM:<a@@sender.test>"), 501, ("5.1.7", "5.5.4"), "MAIL FROM:<a@@b> -> 501 5.1.7")
        check(c.cmd("MAIL FROM:<a b@sender.test>"), 501, ("5.1.7", "5.5.4"), "unquoted blank in address -> 501")
        check(c.cmd("MAIL FROM:<a@sender.test> SIZE=abc"), 501, "5.5.4", "SIZE=abc -> 501 5.5.4")
        check(c.cmd("MAIL FROM:<a@sender.test> BODY=9BIT"), 501, "5.5.4", "BODY=9BIT -> 501 5.5.4")
        check(c.cmd("MAIL FROM:<a@sender.test> XFOO=1"), 555, "5.5.4", "unknown MAIL parameter -> 555 5.5.4")
        check(c.cmd("MAIL FROM:<a@sender.test>"), 250, "2.1.0", "good MAIL after the errors -> 250")
        check(c.cmd("RCPT"), 501, "5.5.4", "RCPT without TO: -> 501 5.5.4")
        check(c.cmd("RCPT TO:<>"), 501, ("5.1.3", "5.5.4"), "RCPT TO:<> -> 501")
        check(c.cmd("RCPT TO:<u@%s"  % DOMAIN), 501, ("5.1.3", "5.5.4"), "RCPT TO:<unclosed -> 501")
        check(c.cmd("RCPT TO:<u@%s> XFOO=1" % DOMAIN), 555, "5.5.4", "unknown RCPT parameter -> 555 5.5.4")
        check(c.cmd("RCPT TO:<u@%s>" % DOMAIN), 250, "2.1.5", "good RCPT after the errors -> 250")
        code, text, _ = c.cmd("VRFY someone")
        t.eq(code, 252, "VRFY -> 252")
        code, text, _ = c.cmd("HELP")
        t.eq(code, 214, "HELP -> 214")
        check(c.cmd("NOOP"), 250, "2.0.0", "session alive after syntax errors")
    with SMTPConn(m.port) as c:
        ehlo(c)
        # RSET/NOOP/QUIT take no (RSET, QUIT) or any (NOOP) argument
        check(c.cmd("NOOP anything"), 250, "2.0.0", "NOOP with an argument -> 250")
        check(c.cmd("RSET now"), 501, "5.5.4", "RSET with an argument -> 501 5.5.4")
        check(c.cmd("noop"), 250, "2.0.0", "verbs are case-insensitive")
        check(c.cmd("mail from:<a@sender.test>"), 250, "2.1.0", "lower-case MAIL FROM: accepted")
        check(c.cmd("rcpt to:<U@EXAMPLE.TEST>"), 250, "2.1.5", "domain match is case-insensitive")


def t_relay(m, sink):
    with SMTPConn(m.port) as c:
        ehlo(c)
        check(c.cmd("MAIL FROM:<a@sender.test>"), 250, None, "MAIL")
        tricks = [
            ("victim@unconfigured.test", "unconfigured domain"),
            ("victim@[127.0.0.1]", "address literal [127.0.0.1]"),
            ("victim@[IPv6:::1]", "address literal [IPv6:::1]"),
            ("victim%unconfigured.test@[127.0.0.1]", "percent hack via a literal"),
            ("victim%%%s@unconfigured.test" % DOMAIN, "percent hack with our domain on the left"),
            ("@%s:victim@unconfigured.test" % DOMAIN, "source route through our domain"),
            ("@%s,@%s:victim@unconfigured.test" % (DOMAIN, DOMAIN), "double source route"),
            ("unconfigured.test!victim@unconfigured.test", "bang path"),
            ("victim@sub.%s" % DOMAIN, "subdomain of a configured domain"),
            ("victim@%s.unconfigured.test" % DOMAIN, "configured domain as a prefix"),
            ("victim@localhost", "localhost (not configured here)"),
            ("postmaster@unconfigured.test", "postmaster at a foreign domain"),
        ]
        for addr, what in tricks:
            code, text, _ = c.cmd("RCPT TO:<%s>" % addr)
            t.ok(code is not None and 500 <= code < 600, "no open relay: %s -> 5xx" % what,
                 "got %r %r" % (code, text))
            if code == 550:
                t.eq(enhanced(text), "5.7.1", "  ... %s refused with 5.7.1" % what)
        check(c.cmd("RCPT TO:<victim@unconfigured.test>"), 550, "5.7.1",
              "RCPT to an unconfigured domain -> 550 5.7.1")
        check(c.cmd("DATA"), (503, 554), "5.5.1", "nothing accepted: DATA -> 554 5.5.1")
    # percent hack / trailing dot for OUR domain may be accepted, but then it
    # goes to our downstream only, never to unconfigured.test
    mk = marker()
    with SMTPConn(m.port) as c:
        ehlo(c)
        c.cmd("MAIL FROM:<a@sender.test>")
        code, _, _ = c.cmd("RCPT TO:<victim%%unconfigured.test@%s>" % DOMAIN)
        if code == 250:
            c.cmd("DATA")
            c.send(msg_bytes(mk, "percent") + b".\r\n")
            check(c.reply(), 250, None, "percent-hack recipient for our domain accepted as a local part")
            where, what = find_message(m, sink, mk, 15)
            if where == "sink":
                t.eq(what["rcpts"], ["victim%%unconfigured.test@%s" % DOMAIN],
                     "percent hack went to our downstream unchanged")
            else:
                t.ok(where == "spool" and what[1]["rcpt"][0].endswith("victim%%unconfigured.test@%s" % DOMAIN),
                     "percent hack spooled for our domain unchanged", repr((where, what and what[1])))
        else:
            t.ok(code is not None and 500 <= code < 600, "percent-hack recipient for our domain refused")
    # source route to OUR domain is stripped (RFC 5321 C) and accepted
    with SMTPConn(m.port) as c:
        ehlo(c)
        c.cmd("MAIL FROM:<a@sender.test>")
        check(c.cmd("RCPT TO:<@relay.unconfigured.test:u@%s>" % DOMAIN), 250, "2.1.5",
              "source route ending at our domain is stripped and accepted")


def t_size(m, sink):
    with SMTPConn(m.port) as c:
        ehlo(c)
        check(c.cmd("MAIL FROM:<a@sender.test> SIZE=%d" % (SIZE_LIMIT + 1)), 552, "5.3.4",
              "SIZE= over the limit -> 552 5.3.4 at MAIL")
        check(c.cmd("MAIL FROM:<a@sender.test> SIZE=99999999999999999999999"), (552, 501), ("5.3.4", "5.5.4"),
              "absurd SIZE= -> 552/501")
        check(c.cmd("MAIL FROM:<a@sender.test> SIZE=%d" % SIZE_LIMIT), 250, "2.1.0",
              "SIZE= at the limit -> 250")
        check(c.cmd("RCPT TO:<u@%s>" % DOMAIN), 250, None, "RCPT")
        check(c.cmd("DATA"), 354, None, "DATA -> 354")
        body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (SIZE_LIMIT // 1000 + 10)
        c.send(body + b".\r\n")
        check(c.reply(30), 552, "5.3.4", "a message over the size limit -> 552 5.3.4 at end of data")
        check(c.cmd("NOOP"), 250, None, "session goes on after the 552")
    with SMTPConn(m.port) as c:
        ehlo(c)
        c.cmd("MAIL FROM:<a@sender.test>")
        c.cmd("RCPT TO:<u@%s>" % DOMAIN)
        n = SIZE_LIMIT + 100
        c.send("BDAT %d LAST\r\n" % n)
        c.send(b"y" * n)
        check(c.reply(30), 552, "5.3.4", "a BDAT message over the size limit -> 552 5.3.4")
        check(c.cmd("NOOP"), 250, None, "session goes on after the BDAT 552")


def t_bdat(m, sink):
    mk = marker()
    with SMTPConn(m.port) as c:
        ehlo(c)
        c.cmd("MAIL FROM:<a@sender.test>")
        c.cmd("RCPT TO:<u@%s>" % DOMAIN)
        m1 = ("Subject: chunks %s\r\n\r\n" % mk).encode()
        m2 = b"..a line with two dots stays as is in BDAT\r\n"
        m3 = ("marker %s\r\n" % mk).encode()
        c.send(b"BDAT %d\r\n" % len(m1) + m1)
        check(c.reply(), 250, "2.0.0", "BDAT chunk 1 -> 250")
        c.send(b"BDAT %d\r\n" % len(m2) + m2)
        check(c.reply(), 250, "2.0.0", "BDAT chunk 2 -> 250")
        c.send(b"BDAT %d LAST\r\n" % len(m3) + m3)
        code, text, _ = c.reply(30)
        t.eq(code, 250, "BDAT LAST -> 250")
        t.ok(QID_RE.search(text) is not None, "BDAT LAST reply names the queue id", text)
        check(c.cmd("NOOP"), 250, None, "session continues after BDAT LAST")
    data = arrived(m, sink, mk, "BDAT message arrives")
    if data is not None:
        t.ok(data.endswith(m1 + m2 + m3), "BDAT content arrives verbatim (no dot-unstuffing)", repr(data[-200:]))

    # BDAT 0 LAST after chunks, and BDAT 0 LAST alone
    mk = marker()
    with SMTPConn(m.port) as c:
        ehlo(c)
        c.cmd("MAIL FROM:<a@sender.test>")
        c.cmd("RCPT TO:<u@%s>" % DOMAIN)
        m1 = ("Subject: zero-last %s\r\n\r\nbody\r\n" % mk).encode()
        c.send(b"BDAT %d\r\n" % len(m1) + m1)
        check(c.reply(), 250, None, "BDAT chunk")
        check(c.cmd("BDAT 0 LAST", timeout=5), 250, "2.0.0", "BDAT 0 LAST ends the message -> 250 at once")
    data = arrived(m, sink, mk, "message ended by BDAT 0 LAST arrives")
    if data is not None:
        t.ok(data.endswith(m1), "BDAT 0 LAST message intact")
    with SMTPConn(m.port) as c:
        ehlo(c)
        c.cmd("MAIL FROM:<a@sender.test>")
        c.cmd("RCPT TO:<u@%s>" % DOMAIN)
        code, text, _ = c.cmd("BDAT 0 LAST", timeout=5)
        t.ok(code == 250 or (code is not None and 500 <= code < 600),
             "an empty message by BDAT 0 LAST is accepted or clearly refused", "%r %r" % (code, text))

    # BDAT out of sequence: the chunk is still consumed, not read as commands
    with SMTPConn(m.port) as c:
        ehlo(c)
        c.send(b"BDAT 12\r\nNOOP\r\nNOOP\r\n")
        check(c.reply(), 503, "5.5.1", "BDAT before MAIL -> 503 5.5.1")
        check(c.cmd("NOOP"), 250, None, "the refused chunk's bytes were skipped, not run as commands")
        t.ok(c.buf == b"", "no extra replies for the chunk's content", repr(c.buf))
    # a BDAT syntax error loses the chunk boundary: 501, and the server may close
    for bad in ("BDAT", "BDAT -1", "BDAT 10 MORE", "BDAT x LAST"):
        with SMTPConn(m.port) as c:
            ehlo(c)
            c.cmd("MAIL FROM:<a@sender.test>")
            c.cmd("RCPT TO:<u@%s>" % DOMAIN)
            check(c.cmd(bad), 501, "5.5.4", "%s -> 501 5.5.4" % bad)
    # BDAT 0 (an empty chunk) is answered at once
    with SMTPConn(m.port) as c:
        ehlo(c)
        c.cmd("MAIL FROM:<a@sender.test>")
        c.cmd("RCPT TO:<u@%s>" % DOMAIN)
        check(c.cmd("BDAT 0", timeout=5), 250, "2.0.0", "BDAT 0 (empty chunk) -> 250 at once")

    # BDAT then DATA in one transaction: DATA is refused, BDAT may go on
    with SMTPConn(m.port) as c:
        ehlo(c)
        c.cmd("MAIL FROM:<a@sender.test>")
        c.cmd("RCPT TO:<u@%s>" % DOMAIN)
        c.send(b"BDAT 7\r\nSubj: x")
        check(c.reply(), 250, None, "BDAT chunk accepted")
        check(c.cmd("DATA"), 503, "5.5.1", "DATA inside a BDAT transaction -> 503 5.5.1")
        c.send(b"BDAT 2 LAST\r\n\r\n")
        code, text, _ = c.reply(30)
        t.ok(code == 250 or code == 503,
             "BDAT LAST after the refused DATA: 250 (transaction kept) or 503", "%r %r" % (code, text))
        check(c.cmd("NOOP"), 250, None, "session alive after mixing BDAT and DATA")
    # DATA, then BDAT in the next transaction without MAIL: 503
    with SMTPConn(m.port) as c:
        ehlo(c)
        c.cmd("MAIL FROM:<a@sender.test>")
        c.cmd("RCPT TO:<u@%s>" % DOMAIN)
        c.cmd("DATA")
        c.send(msg_bytes(marker(), "data-then-bdat") + b".\r\n")
        check(c.reply(30), 250, None, "DATA message accepted")
        c.send(b"BDAT 4 LAST\r\nabcd")
        check(c.reply(), 503, "5.5.1", "BDAT after the DATA transaction ended -> 503 5.5.1")
        check(c.cmd("NOOP"), 250, None, "BDAT bytes skipped after the 503")


def t_pipelining(m, sink):
    mk = marker()
    with SMTPConn(m.port) as c:
        ehlo(c)
        body = dot_stuff(msg_bytes(mk, "pipelined", body=".leading dot\r\nline\r\n"))
        c.send(("MAIL FROM:<p@sender.test>\r\nRCPT TO:<u1@%s>\r\nRCPT TO:<x@unconfigured.test>\r\n"
                "RCPT TO:<u2@%s>\r\nDATA\r\n" % (DOMAIN, DOMAIN)).encode() + body + b".\r\nNOOP\r\nQUIT\r\n")
        got = [c.reply(30)[0] for _ in range(8)]
        t.eq(got, [250, 250, 550, 250, 354, 250, 250, 221],
             "a whole pipelined transaction gets every reply, in order")
        t.ok(c.wait_closed(5), "closed after the pipelined QUIT")
    data = arrived(m, sink, mk, "the pipelined message arrives")
    if data is not None:
        t.ok(b"\r\n.leading dot\r\n" in data, "dot-unstuffing in the pipelined DATA")
    if sink_count(sink, mk):
        with sink.lock:
            rc = sorted(r for x in sink.messages if mk.encode() in x["data"] for r in x["rcpts"])
        t.eq(rc, ["u1@" + DOMAIN, "u2@" + DOMAIN], "only the accepted recipients are relayed")

    # BDAT pipelined with the envelope, then more commands
    mk = marker()
    with SMTPConn(m.port) as c:
        ehlo(c)
        m1 = ("Subject: pipelined bdat %s\r\n\r\nbody\r\n" % mk).encode()
        c.send(("MAIL FROM:<p@sender.test>\r\nRCPT TO:<u1@%s>\r\n" % DOMAIN).encode()
               + b"BDAT %d LAST\r\n" % len(m1) + m1 + b"NOOP\r\n")
        got = [c.reply(30)[0] for _ in range(4)]
        t.eq(got, [250, 250, 250, 250], "pipelined MAIL, RCPT, BDAT LAST, NOOP")
    arrived(m, sink, mk, "the pipelined BDAT message arrives")


def t_dsn(m, sink):
    mk = marker()
    with SMTPConn(m.port) as c:
        ehlo(c)
        check(c.cmd("MAIL FROM:<d@sender.test> RET=HDRS ENVID=env+2Bid-%s" % mk), 250, "2.1.0",
              "MAIL with RET=HDRS ENVID= -> 250")
        check(c.cmd("RCPT TO:<u1@%s> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;u1+40%s" % (DOMAIN, DOMAIN)),
              250, "2.1.5", "RCPT with NOTIFY=SUCCESS,FAILURE,DELAY ORCPT= -> 250")
        check(c.cmd("RCPT TO:<u2@%s> NOTIFY=NEVER" % DOMAIN), 250, "2.1.5", "RCPT with NOTIFY=NEVER -> 250")
        check(c.cmd("RCPT TO:<u3@%s> notify=failure orcpt=RFC822;u3@%s" % (DOMAIN, DOMAIN)), 250, "2.1.5",
              "DSN keywords are case-insensitive")
        c.cmd("DATA")
        c.send(msg_bytes(mk, "dsn") + b".\r\n")
        check(c.reply(30), 250, None, "DSN message accepted")
    where, what = find_message(m, sink, mk, 15)
    if where == "sink":
        t.ok("RET=HDRS" in what["params"]["mail"] and ("ENVID=env+2Bid-%s" % mk) in what["params"]["mail"],
             "RET and ENVID relayed downstream", what["params"])
        r1 = what["params"].get("rcpt", {}).get("u1@" + DOMAIN, "")
        t.ok("NOTIFY=SUCCESS,FAILURE,DELAY" in r1.upper() and "ORCPT=rfc822;u1+40" in r1,
             "NOTIFY and ORCPT relayed downstream", r1)
    elif where == "spool":
        env = what[1]
        t.eq(env.get("ret"), "hdrs", "RET stored in the spool")
        t.eq(env.get("envid"), "env+2Bid-%s" % mk, "ENVID stored in the spool")
        t.ok(any(r.endswith("u1@" + DOMAIN) and "rfc822;u1+40" in r for r in env["rcpt"]),
             "ORCPT stored in the spool", env["rcpt"])
    else:
        t.ok(False, "the DSN message arrives or is spooled")

    with SMTPConn(m.port) as c:
        ehlo(c)
        bad_mail = [("RET=BOGUS", "RET=BOGUS"), ("RET=HDRS RET=FULL", "duplicate RET"),
                    ("ENVID=a=b", "ENVID with '=' (not xtext)"), ("ENVID=a+zz", "ENVID with a bad +HH"),
                    ("ENVID=" + "x" * 101, "ENVID longer than 100 characters (RFC 3461 4.4)"),
                    ("RET=", "empty RET")]
        for p, what in bad_mail:
            check(c.cmd("MAIL FROM:<d@sender.test> %s" % p), 501, "5.5.4", "MAIL %s -> 501 5.5.4" % what)
        check(c.cmd("MAIL FROM:<d@sender.test>"), 250, None, "MAIL")
        bad_rcpt = [("NOTIFY=SOMETIMES", "NOTIFY=SOMETIMES"), ("NOTIFY=NEVER,SUCCESS", "NOTIFY=NEVER,SUCCESS"),
                    ("NOTIFY=", "empty NOTIFY"), ("NOTIFY=SUCCESS,", "NOTIFY with a trailing comma"),
                    ("ORCPT=u1@%s" % DOMAIN, "ORCPT without addr-type"), ("ORCPT=rfc822;a=b", "ORCPT with bad xtext"),
                    ("NOTIFY=DELAY NOTIFY=DELAY", "duplicate NOTIFY")]
        for p, what in bad_rcpt:
            check(c.cmd("RCPT TO:<u@%s> %s" % (DOMAIN, p)), 501, "5.5.4", "RCPT %s -> 501 5.5.4" % what)
        check(c.cmd("RCPT TO:<u@%s>" % DOMAIN), 250, None, "plain RCPT after the bad ones -> 250")
    # with SMTPUTF8 an ORCPT may carry UTF-8 (RFC 6533), but never control
    # characters: they would be stored and relayed downstream verbatim
    with SMTPConn(m.port) as c:
        ehlo(c)
        check(c.cmd("MAIL FROM:<d@sender.test> SMTPUTF8"), 250, None, "MAIL with SMTPUTF8")
        check(c.cmd("RCPT TO:<u@%s> ORCPT=utf-8;ü@%s" % (DOMAIN, DOMAIN)), 250, "2.1.5",
              "SMTPUTF8: ORCPT=utf-8;<UTF-8 address> -> 250")
        check(c.cmd(b"RCPT TO:<u@example.test> ORCPT=rfc822;a\x01b@example.test"), 501, "5.5.4",
              "SMTPUTF8: ORCPT with a control character -> 501 5.5.4")
        check(c.cmd(b"RCPT TO:<u@example.test> ORCPT=rfc822;a\x7fb@example.test"), 501, "5.5.4",
              "SMTPUTF8: ORCPT with DEL -> 501 5.5.4")


def t_smtputf8(m, sink):
    with SMTPConn(m.port) as c:
        ehlo(c)
        code, text, _ = c.cmd("MAIL FROM:<jörg@bücher.test>")
        t.ok(code in (553, 501, 555) and text.startswith("5."),
             "UTF-8 sender without SMTPUTF8 -> 5xx (553 5.6.7)", "%r %r" % (code, text))
        c.cmd("RSET")
        check(c.cmd("MAIL FROM:<a@sender.test>"), 250, None, "ASCII MAIL")
        code, text, _ = c.cmd("RCPT TO:<ü@%s>" % DOMAIN)
        t.ok(code in (553, 501) and text.startswith("5."),
             "UTF-8 recipient without SMTPUTF8 -> 5xx (553 5.6.7)", "%r %r" % (code, text))
    mk = marker()
    with SMTPConn(m.port) as c:
        ehlo(c)
        check(c.cmd("MAIL FROM:<jörg@bücher.test> SMTPUTF8"), 250, "2.1.0", "UTF-8 sender with SMTPUTF8 -> 250")
        check(c.cmd("RCPT TO:<ü@%s>" % DOMAIN), 250, "2.1.5", "UTF-8 recipient with SMTPUTF8 -> 250")
        c.cmd("DATA")
        c.send(("From: jörg@bücher.test\r\nSubject: ütf8 %s\r\n\r\nmarker %s\r\n.\r\n" % (mk, mk)).encode())
        check(c.reply(30), 250, None, "SMTPUTF8 message accepted")
    where, what = find_message(m, sink, mk, 15)
    if where == "sink":
        t.eq(what["rcpts"], ["ü@" + DOMAIN], "UTF-8 recipient relayed")
        t.ok("SMTPUTF8" in what["params"]["mail"].upper(), "SMTPUTF8 relayed downstream", what["params"])
    elif where == "spool":
        t.eq(what[1].get("smtputf8"), "1", "smtputf8 flag spooled")
    else:
        t.ok(False, "SMTPUTF8 message arrives or is spooled")
    with SMTPConn(m.port) as c:
        ehlo(c)
        check(c.cmd(b"MAIL FROM:<j\xf6rg@b\xfccher.test> SMTPUTF8"), 501, ("5.1.7", "5.5.4", "5.6.7"),
              "invalid UTF-8 (Latin-1 bytes) in the sender -> 501")


def t_received_limit(m, sink):
    loop = corpus("many-received.eml")
    mk = marker()
    loop = loop.replace(b"Subject:", ("X-Marker: %s\r\nSubject:" % mk).encode(), 1)
    r = send_raw(m.port, "loop@sender.test", ["u@" + DOMAIN], loop)
    check(r["end"], 554, "5.4.6", "60 Received headers (> smtp-max-received 50) -> 554 5.4.6")
    where, _ = find_message(m, sink, mk, 3)
    t.ok(where is None, "the looping message is neither spooled nor delivered", repr(where))
    # 30 Received headers are fine
    hdrs = "".join("Received: from h%d.test by h%d.test; Mon, 23 Nov 2026 04:00:00 +0000\r\n" % (i, i)
                   for i in range(30))
    mk = marker()
    r = send_raw(m.port, "hops@sender.test", ["u@" + DOMAIN], hdrs.encode() + msg_bytes(mk, "hops"))
    check(r["end"], 250, None, "30 Received headers -> 250")
    # "Received:" inside the body does not count
    mk = marker()
    body = "".join("Received: quoted in the body %d\r\n" % i for i in range(80))
    r = send_raw(m.port, "hops@sender.test", ["u@" + DOMAIN], msg_bytes(mk, "body-received", body=body))
    check(r["end"], 250, None, "Received lines in the body do not count as hops -> 250")


def t_session_limit(m2, sink):
    with SMTPConn(m2.port) as c:
        ehlo(c)
        codes = []
        for i in range(3):
            c.cmd("MAIL FROM:<a@sender.test>")
            c.cmd("RCPT TO:<u@%s>" % DOMAIN)
            c.cmd("DATA")
            c.send(msg_bytes(marker(), "per-session %d" % i) + b".\r\n")
            codes.append(c.reply(30)[0])
        t.eq(codes, [250, 250, 250], "smtp-max-messages 3: three messages accepted")
        code, text, _ = c.cmd("MAIL FROM:<a@sender.test>")
        t.ok(code in (421, 452) and text.startswith("4."),
             "the fourth MAIL in the session -> 4xx (421/452)", "%r %r" % (code, text))
    with SMTPConn(m2.port) as c:
        ehlo(c)
        check(c.cmd("MAIL FROM:<a@sender.test>"), 250, None, "a new session may send again")


def t_rcpt_limit_small(m2, sink):
    with SMTPConn(m2.port) as c:
        ehlo(c)
        c.cmd("MAIL FROM:<a@sender.test>")
        got = [c.cmd("RCPT TO:<r%d@%s>" % (i, DOMAIN)) for i in range(7)]
        t.eq([g[0] for g in got], [250] * 5 + [452, 452], "smtp-max-recipients 5: 6th and 7th RCPT -> 452")
        t.eq(enhanced(got[5][1]), "4.5.3", "the recipient limit reply is 4.5.3")


def main():
    with Sink() as sink:
        dom = {DOMAIN: "relay smtp://127.0.0.1:%d" % sink.port}
        with Moat(domains=dom, extra="message-size-limit %d" % SIZE_LIMIT) as m:
            for name, fn in [("greeting", t_greeting_ehlo), ("happy path", t_happy_path),
                             ("null sender", t_null_sender), ("sequence", t_sequence),
                             ("syntax", t_syntax), ("relay", t_relay), ("size", t_size),
                             ("bdat", t_bdat), ("pipelining", t_pipelining), ("dsn", t_dsn),
                             ("smtputf8", t_smtputf8), ("received limit", t_received_limit)]:
                section(name, fn, m, sink)
            serving(m, sink)
            t.ok(m.proc.poll() is None, "moatd is still running")
        with Moat(domains=dom, extra="smtp-max-messages 3\nsmtp-max-recipients 5") as m2:
            section("session limit", t_session_limit, m2, sink)
            section("rcpt limit", t_rcpt_limit_small, m2, sink)
            serving(m2, sink)
    t.done()


main()
