#!/usr/bin/env python3
"""Header fields removed while receiving: Authentication-Results fields that
claim our authserv-id (RFC 8601 section 5) and, when the filters run, the
X-Spam-* fields a sender wrote itself.  Others' A-R fields, the body and
everything else arrive byte for byte, however the client splits its
segments."""
import socket
import time

from moattest import TAP, Moat, Sink, SMTPConn

t = TAP()

HDRS = (b"From: a@b.example\r\n"
        b"Authentication-Results: mx.moat.test; spf=pass smtp.mailfrom=b.example\r\n"
        b"Authentication-Results: other.example; dkim=pass header.d=b.example\r\n"
        b"Authentication-Results:\r\n (forged, folded) MX.Moat.Test;\r\n\tdkim=pass header.d=paypal.example\r\n"
        b"X-Spam-Flag: NO\r\n"
        b"X-Spam-Status: No, score=-100\r\n"
        b"Authentication-Results: mx.moat.test.evil.example; none\r\n"
        b"Subject: hello\r\n"
        b"To: x@relay.test\r\n")
BODY = (b"\r\nAuthentication-Results: mx.moat.test; this line is body text\r\n"
        b"X-Spam-Flag: NO (body too)\r\n")


def deliver(m, sink, data, chunk=None):
    """send one message with DATA; chunk: bytes per segment (with a pause)"""
    n = len(sink.messages)
    with SMTPConn(m.port) as c:
        for line in (b"EHLO client.example", b"MAIL FROM:<a@b.example>", b"RCPT TO:<x@relay.test>",
                     b"DATA"):
            c.cmd(line)
        payload = data + (b"" if data.endswith(b"\r\n") else b"\r\n") + b".\r\n"
        if chunk:
            for i in range(0, len(payload), chunk):
                c.send(payload[i:i + chunk])
                time.sleep(0.002)
        else:
            c.send(payload)
        code, text, _ = c.reply(timeout=30)
        r = "%s %s" % (code, text)
        c.cmd(b"QUIT")
    ok = r.startswith("250") and sink.wait_messages(n + 1, 30)
    with sink.lock:
        got = sink.messages[-1]["data"] if ok else b""
    return r, got


def after_ours(d):
    """the message after the fields moat added (Received, X-Spam-*)"""
    i = d.index(b"From: a@b.example")
    return d[:i], d[i:]


with Sink() as sink:
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port},
              extra="attachment-policy yes") as m:
        r, d = deliver(m, sink, HDRS + BODY)
        t.ok(r.startswith("250"), "accepted", r)
        ours, rest = after_ours(d)
        want = (b"From: a@b.example\r\n"
                b"Authentication-Results: other.example; dkim=pass header.d=b.example\r\n"
                b"Authentication-Results: mx.moat.test.evil.example; none\r\n"
                b"Subject: hello\r\n"
                b"To: x@relay.test\r\n") + BODY
        t.eq(rest, want, "A-R fields with our authserv-id (also folded, with a comment, any case) "
             "and the sender's X-Spam-* fields are gone; the rest is byte for byte")
        t.eq(ours.count(b"X-Spam-Flag:"), 1, "exactly one X-Spam-Flag: ours")
        t.ok(m.wait_log(r"event=header-removed .*field=\"Authentication-Results\"") is not None,
             "the removal is logged")

        # the same message cut into 1- and 7-byte segments: same result
        for ch in (1, 7):
            r, d = deliver(m, sink, HDRS + BODY, chunk=ch)
            t.eq(after_ours(d)[1] if r.startswith("250") else r, want,
                 "segments of %d bytes: the same fields removed" % ch)

        # fields longer than the hold buffer (4 KiB): decided on their start
        big = b"x" * 9000
        data = (b"From: a@b.example\r\n"
                b"Authentication-Results: mx.moat.test; dkim=pass (" + big + b")\r\n"
                b"X-Long: " + big + b"\r\n\t" + big + b"\r\n"
                b"Subject: long\r\n\r\nbody\r\n")
        r, d = deliver(m, sink, data)
        rest = after_ours(d)[1]
        want_long = (b"From: a@b.example\r\nX-Long: " + big + b"\r\n\t" + big +
                     b"\r\nSubject: long\r\n\r\nbody\r\n")
        t.ok(rest == want_long, "a 9 KB forged A-R field is dropped whole, a 18 KB folded field kept whole",
             "got %d bytes, want %d; got starts %r ends %r" % (len(rest), len(want_long), rest[:80], rest[-80:]))

        # a message that is all header (no empty line): the last field is settled
        r, d = deliver(m, sink, b"From: a@b.example\r\nSubject: no body\r\n"
                       b"Authentication-Results: mx.moat.test; spf=pass")
        t.eq(after_ours(d)[1] if r.startswith("250") else r,
             b"From: a@b.example\r\nSubject: no body\r\n",
             "a header-only message: the last (forged) field is dropped too")

# without filters, foreign X-Spam-* fields are left alone (not ours to judge),
# but a forged A-R with our id still goes
with Sink() as sink:
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port},
              extra="attachment-policy no\nbayes no\nhelo-checks no\ndkim no\ndmarc no\nspf no") as m:
        r, d = deliver(m, sink, HDRS + BODY)
        rest = after_ours(d)[1]
        t.ok(b"X-Spam-Status: No, score=-100" in rest and b"(forged, folded)" not in rest
             and b"mx.moat.test; spf=pass" not in rest,
             "no filters: X-Spam-* kept, our authserv-id's A-R still removed", rest[:500])

t.done()
