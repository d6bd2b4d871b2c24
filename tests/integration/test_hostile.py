#!/usr/bin/env python3
"""Hostile input against moatd's SMTP server (black box).

Overlong lines, NUL bytes, bare-LF / bare-CR smuggling, recipient floods,
garbage after end of data, idle-connection floods, oversized messages and
bad-command floods.  Each case checks the reply code and then that moatd
still serves a normal client.
"""
import os
import resource
import smtplib
import socket
import sys
import time
import traceback
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import (TAP, Moat, Sink, SMTPConn, MOATD, enhanced, find_message,  # noqa: E402
                      sink_count, spool_messages, wait_queue_empty)

t = TAP()
if not os.path.exists(MOATD):
    t.skip_all("moatd not built")

DOMAIN = "example.test"
SPOOL_OK = os.environ.get("MOAT_TEST_SPOOL_OK") == "1"


def marker():
    return "mk-" + uuid.uuid4().hex[:16]


def msg(mk, subject="test", body="hello\r\n"):
    return ("From: s@sender.test\r\nTo: u@%s\r\nSubject: %s %s\r\n\r\n%s\r\nmarker %s\r\n"
            % (DOMAIN, subject, mk, body, mk)).encode()


def is5(r):
    return r[0] is not None and 500 <= r[0] < 600


def serving(m, sink, desc):
    """a normal client gets a message through (checked after every case)"""
    mk = marker()
    try:
        with smtplib.SMTP("127.0.0.1", m.port, timeout=15) as s:
            s.ehlo("normal.test")
            s.sendmail("normal@sender.test", ["u@" + DOMAIN], msg(mk, "normal"))
        return t.ok(m.proc.poll() is None, "still serving after %s" % desc)
    except Exception as e:     # noqa: BLE001
        return t.ok(False, "still serving after %s" % desc, "%r\nlog tail:\n%s" % (e, m.log()[-2000:]))


def goes_on_or_closes(c, desc):
    """after an error the session either goes on (NOOP -> 250) or was closed
    cleanly (a 421 then EOF)"""
    try:
        r = c.cmd("NOOP", timeout=10)
    except OSError:
        r = (None, "", b"")
    if r[0] == 250:
        return t.ok(True, "%s: session goes on" % desc)
    if r[0] == 421 or r[0] is None:
        return t.ok(c.wait_closed(5), "%s: session closed cleanly" % desc, repr(r))
    return t.ok(False, "%s: session goes on or closes cleanly" % desc, repr(r))


def nowhere(m, sink, mk, desc, wait=2.0):
    wait_queue_empty(m, wait)
    where, _ = find_message(m, sink, mk, wait)
    return t.ok(where is None, desc, "found in %r" % where)


def count_everywhere(m, sink, needle):
    """messages holding needle, at the sink or still queued (waits for the
    queue to drain first, so nothing is counted twice)"""
    wait_queue_empty(m, 15)
    n = sink_count(sink, needle)
    nb = needle.encode()
    n += sum(1 for env, data in spool_messages(m).values() if data is not None and nb in data)
    return n


def section(name, fn, *args):
    try:
        fn(*args)
    except Exception:          # noqa: BLE001
        t.ok(False, "%s: no exception" % name, traceback.format_exc())


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_txn(m, rcpt=None):
    c = SMTPConn(m.port)
    c.cmd("EHLO hostile.test")
    c.cmd("MAIL FROM:<h@sender.test>")
    c.cmd("RCPT TO:<%s>" % (rcpt or "u@" + DOMAIN))
    return c


# ---------------------------------------------------------------------------

def t_long_command(m, sink):
    with SMTPConn(m.port) as c:
        c.cmd("EHLO hostile.test")
        r = c.cmd("NOOP " + "A" * 5000)
        t.ok(r[0] == 500 and (enhanced(r[1]) or "").startswith("5.5."),
             "a 5000-byte command line -> 500 5.5.x", repr(r))
        goes_on_or_closes(c, "overlong command")
    with SMTPConn(m.port) as c:
        c.cmd("EHLO hostile.test")
        r = c.cmd("MAIL FROM:<" + "a" * 3000 + "@sender.test>")
        t.ok(is5(r), "a 3000-byte MAIL FROM -> 5xx", repr(r))
        goes_on_or_closes(c, "overlong MAIL")
    serving(m, sink, "overlong command lines")

    # 64 MB without any line end: bounded memory, a 5xx, no crash (moatd
    # runs with a small ASan quarantine here, see main())
    pids = m.worker_pids() or [m.proc.pid]
    before = sum(rss_kb(p) for p in pids)
    c = SMTPConn(m.port)
    c.cmd("EHLO hostile.test")
    chunk = b"X" * (1 << 20)
    sent = 0
    try:
        c.s.settimeout(10)
        for _ in range(64):
            c.s.sendall(chunk)
            sent += 1
        c.s.sendall(b"\r\n")
    except OSError:
        pass
    r = c.reply(10)
    t.ok(r[0] is None or r[0] in (421, 500), "64 MB without a line end -> 500/421 or a close",
         "sent %d MB, reply %r" % (sent, r))
    after = sum(rss_kb(p) for p in (m.worker_pids() or [m.proc.pid]))
    t.ok(after - before < 32 * 1024, "memory stays bounded on an endless line (RSS +%d KB)" % (after - before))
    c.close()
    serving(m, sink, "an endless command line")


def t_long_data_line(m, sink):
    mk = marker()
    c = open_txn(m)
    r = c.cmd("DATA")
    t.eq(r[0], 354, "DATA -> 354")
    c.send(msg(mk, "long line", body="L" * 40000 + "\r\n") + b".\r\n")
    r = c.reply(30)
    t.ok(is5(r) and enhanced(r[1]) is not None,
         "a 40000-byte text line (> smtp-max-data-line) -> 5xx with an enhanced code at end of data", repr(r))
    goes_on_or_closes(c, "overlong data line")
    c.close()
    nowhere(m, sink, mk, "the message with the overlong line is not delivered")
    # a 30000-byte line is within the default (32768) and is accepted
    mk = marker()
    c = open_txn(m)
    c.cmd("DATA")
    c.send(msg(mk, "longish line", body="L" * 30000 + "\r\n") + b".\r\n")
    r = c.reply(30)
    t.eq(r[0], 250, "a 30000-byte line (within the limit) -> 250")
    c.close()
    serving(m, sink, "overlong data lines")


def t_nul(m, sink):
    with SMTPConn(m.port) as c:
        c.cmd("EHLO hostile.test")
        r = c.cmd(b"NO\x00OP")
        t.ok(r[0] in (500, 501), "NUL inside a verb -> 500/501", repr(r))
        r = c.cmd(b"MAIL FROM:<a\x00b@sender.test>")
        t.ok(r[0] in (500, 501), "NUL inside an address -> 500/501", repr(r))
        r = c.cmd(b"EHLO a\x00b.test")
        t.ok(r[0] in (500, 501), "NUL inside the EHLO name -> 500/501", repr(r))
        r = c.cmd(b"\x00\x00\x00\x00")
        t.ok(is5(r), "a line of NULs -> 5xx", repr(r))
        goes_on_or_closes(c, "NUL in commands")
    mk = marker()
    c = open_txn(m)
    c.cmd("DATA")
    c.send(msg(mk, "nul", body="before\x00after") + b".\r\n")
    r = c.reply(30)
    t.ok(is5(r) and enhanced(r[1]) is not None, "NUL in the message -> 5xx with an enhanced code at end of data",
         repr(r))
    goes_on_or_closes(c, "NUL in data")
    c.close()
    nowhere(m, sink, mk, "the message with a NUL is not delivered")
    serving(m, sink, "NUL bytes")


SMUGGLE_ENDS = [
    (b"\n.\r\n", "LF . CRLF"),
    (b"\r.\r\n", "CR . CRLF"),
    (b"\n.\n", "LF . LF"),
    (b"\r\n.\n", "CRLF . LF"),
    (b"\r\n.\r", "CRLF . CR"),
    (b"\r\n.\r\r\n", "CRLF . CR CRLF"),
]


def smuggle(m, sink, end, what, reject_mode=False):
    mk = marker()
    sm = marker()
    payload = (("Subject: outer %s\r\n\r\nouter body" % mk).encode() + end
               + ("MAIL FROM:<x@evil.test>\r\nRCPT TO:<victim@%s>\r\nDATA\r\n"
                  "Subject: smuggled %s\r\n\r\nsmuggled body %s\r\n.\r\n" % (DOMAIN, sm, sm)).encode())
    with SMTPConn(m.port) as c:
        c.cmd("EHLO hostile.test")
        c.cmd("MAIL FROM:<h@sender.test>")
        c.cmd("RCPT TO:<u@%s>" % DOMAIN)
        r = c.cmd("DATA")
        c.send(payload + b"QUIT\r\n")
        got = []
        for _ in range(8):
            r = c.reply(10)
            if r[0] is None:
                break
            got.append(r[0])
            if r[0] == 221:
                break
    if reject_mode:
        t.ok(len(got) == 2 and 500 <= got[0] < 600 and got[1] == 221,
             "smtp-bare-lf reject, %s: one 5xx for the one DATA, then 221" % what, repr(got))
        time.sleep(0.5)
        t.eq(count_everywhere(m, sink, sm), 0, "smtp-bare-lf reject, %s: nothing smuggled" % what)
        t.eq(count_everywhere(m, sink, mk), 0, "smtp-bare-lf reject, %s: the message is refused" % what)
        return
    t.eq(got, [250, 221], "smuggling with %s: exactly one reply for the one DATA, then 221" % what)
    where, found = find_message(m, sink, mk, 15)
    if where is None or (where == "spool" and not SPOOL_OK):
        t.ok(False, "smuggling with %s: the one message arrives" % what, "where=%r" % where)
        return
    time.sleep(0.5)
    t.eq(count_everywhere(m, sink, sm), 1, "smuggling with %s: the smuggled text is in exactly one message" % what)
    data = found["data"] if where == "sink" else found[2]
    t.ok(("smuggled body %s" % sm).encode() in data and b"MAIL FROM:<x@evil.test>" in data,
         "smuggling with %s: the smuggled commands are content of the first message" % what)
    if where == "sink":
        with sink.lock:
            evil = [x for x in sink.messages if x["mail_from"] == "x@evil.test"]
        t.eq(len(evil), 0, "smuggling with %s: no message from the smuggled sender" % what)
    t.ok(b"\n" not in data.replace(b"\r\n", b""), "smuggling with %s: stored with CRLF line ends only" % what)


def t_smuggling(m, sink):
    for end, what in SMUGGLE_ENDS:
        smuggle(m, sink, end, what)
    serving(m, sink, "smuggling attempts")


def t_smuggling_reject(mr, sink):
    smuggle(mr, sink, b"\n.\r\n", "LF . CRLF", reject_mode=True)
    # bare CR is content, not a bare LF: accepted in reject mode
    mk = marker()
    c = open_txn(mr)
    c.cmd("DATA")
    c.send(msg(mk, "bare cr", body="a\rb") + b".\r\n")
    t.eq(c.reply(30)[0], 250, "smtp-bare-lf reject: a bare CR is content -> 250")
    c.close()
    serving(mr, sink, "smtp-bare-lf reject")


def t_many_rcpts(m, sink):
    mk = marker()
    with SMTPConn(m.port, timeout=30) as c:
        c.cmd("EHLO hostile.test")
        c.cmd("MAIL FROM:<h@sender.test>")
        codes = []
        last452 = None
        for b in range(20):
            c.send("".join("RCPT TO:<r%04d@%s>\r\n" % (b * 100 + i, DOMAIN) for i in range(100)))
            for _ in range(100):
                r = c.reply(30)
                codes.append(r[0])
                if r[0] == 452:
                    last452 = r
        t.eq(codes[:1000], [250] * 1000, "the first 1000 RCPTs -> 250")
        t.eq(codes[1000:], [452] * 1000, "RCPTs 1001..2000 -> 452")
        t.ok(last452 is not None and enhanced(last452[1]) == "4.5.3", "the recipient limit reply is 452 4.5.3",
             repr(last452))
        r = c.cmd("DATA")
        t.eq(r[0], 354, "DATA after the recipient flood -> 354")
        c.send(msg(mk, "1000 rcpts") + b".\r\n")
        r = c.reply(60)
        t.eq(r[0], 250, "the message for 1000 recipients is accepted")
    where, what = find_message(m, sink, mk, 60)
    if where == "sink":
        end = time.time() + 60
        while time.time() < end:
            with sink.lock:
                got = set(x for y in sink.messages if mk.encode() in y["data"] for x in y["rcpts"])
            if len(got) >= 1000:
                break
            time.sleep(0.2)
        t.eq(len(got), 1000, "all 1000 accepted recipients are delivered")
        t.ok(all(int(a[1:5]) < 1000 for a in got), "no refused recipient is delivered")
    elif where == "spool" and SPOOL_OK:
        t.eq(len(what[1]["rcpt"]), 1000, "1000 recipients in the spooled envelope")
    else:
        t.ok(False, "the 1000-recipient message arrives", "where=%r" % where)
    serving(m, sink, "2000 RCPTs")


def t_garbage_after_data(m, sink):
    mk = marker()
    c = open_txn(m)
    c.cmd("DATA")
    garbage = [b"GARBAGE-%s" % mk.encode(), b"\x01\x02\x03\xff\xfe", b"Subject: not a command",
               b"foo bar baz"]
    c.send(msg(mk, "garbage after") + b".\r\n" + b"".join(g + b"\r\n" for g in garbage) + b"NOOP\r\n")
    r = c.reply(30)
    t.eq(r[0], 250, "the message before the garbage is accepted")
    rs = [c.reply(10) for _ in garbage]
    t.ok(all(x[0] is not None and 500 <= x[0] < 600 for x in rs),
         "each pipelined garbage line after end of data -> 5xx", repr(rs))
    r = c.reply(10)
    t.eq(r[0], 250, "the NOOP after the garbage -> 250")
    c.close()
    where, found = find_message(m, sink, mk, 15)
    data = found["data"] if where == "sink" else (found[2] if where == "spool" else None)
    t.ok(data is not None and b"GARBAGE-" not in data and data.endswith(("marker %s\r\n" % mk).encode()),
         "the garbage is not part of the message", "where=%r" % where)
    serving(m, sink, "garbage after end of data")


def t_idle_flood(m, sink, n=300, source=None, label="300 idle connections", during=None):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 100:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 200), hard))
        except (ValueError, OSError):
            pass
    idle = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", m.port), timeout=10)
            idle.append(s)
        t.eq(len(idle), n, "%s: all opened" % label)
        mk = marker()
        t0 = time.time()
        try:
            kw = {"source_address": (source, 0)} if source else {}
            with smtplib.SMTP("127.0.0.1", m.port, timeout=10, **kw) as s:
                s.ehlo("real.test")
                s.sendmail("real@sender.test", ["u@" + DOMAIN], msg(mk, "real client"))
            ok = True
            err = ""
        except Exception as e:     # noqa: BLE001
            ok = False
            err = repr(e)
        dt = time.time() - t0
        t.ok(ok, "%s: a real client%s sends a message" % (label, " from " + source if source else ""), err)
        t.ok(dt < 5.0, "%s: ... within 5 s (took %.2f s)" % (label, dt))
        # the idle ones are still there (not all dropped to make room)
        greeted = 0
        for s in idle[:20]:
            s.settimeout(5)
            try:
                if s.recv(100).startswith(b"220"):
                    greeted += 1
            except OSError:
                pass
        if during is not None:
            during()
        return greeted
    finally:
        for s in idle:
            try:
                s.close()
            except OSError:
                pass


def t_idle(m, sink):
    greeted = t_idle_flood(m, sink)
    t.ok(greeted > 0, "idle connections from loopback are greeted with 220 (%d of 20)" % greeted)
    time.sleep(0.5)
    serving(m, sink, "300 idle connections")


def t_idle_per_ip(mx, sink):
    """no loopback exemption: 300 idle from 127.0.0.1 exceed the per-IP
    limit (50); a client from 127.0.0.2 is still served at once"""
    def during():
        # past the per-IP limit a new connection from 127.0.0.1 is refused
        with SMTPConn(mx.port, greet=False) as c:
            r = c.reply(10)
            t.ok(r[0] == 421 and (enhanced(r[1]) or "").startswith("4."),
                 "a 301st connection from the flooding IP -> 421 4.x.x", repr(r))
    t_idle_flood(mx, sink, source="127.0.0.2", label="300 idle connections, per-IP limits on", during=during)
    time.sleep(1)
    serving(mx, sink, "300 idle connections with per-IP limits")
    with SMTPConn(mx.port) as c:
        t.eq(c.greeting[0], 220, "the flooding IP is served again after its connections closed")


def t_bad_commands(m, sink):
    with SMTPConn(m.port) as c:
        c.cmd("EHLO hostile.test")
        codes = []
        for i in range(40):
            r = c.cmd("XBAD%d" % i, timeout=10)
            codes.append(r[0])
            if r[0] != 500:
                break
        t.ok(codes and codes[-1] == 421 and 10 <= len(codes) <= 30,
             "bad-command flood -> 500s, then 421 (smtp-max-bad-commands 20)", repr(codes))
        t.ok(c.wait_closed(5), "... and the server disconnects")
    with SMTPConn(m.port) as c:
        c.cmd("EHLO hostile.test")
        c.send(b"".join(b"BOGUS %d\r\n" % i for i in range(100)))
        codes = []
        for _ in range(100):
            r = c.reply(10)
            if r[0] is None:
                break
            codes.append(r[0])
            if r[0] == 421:
                break
        t.ok(codes and codes[-1] == 421, "100 pipelined bad commands -> 421", repr(codes[-3:]))
        t.ok(c.wait_closed(5), "... and the server disconnects")
    with SMTPConn(m.port) as c:
        r = c.cmd("GET / HTTP/1.1")
        t.ok(is5(r) or r[0] == 421, "an HTTP request -> 5xx or 421", repr(r))
        goes_on_or_closes(c, "HTTP request")
    serving(m, sink, "bad-command floods")


def t_size(m, sink):
    with SMTPConn(m.port) as c:
        c.cmd("EHLO hostile.test")
        r = c.cmd("MAIL FROM:<h@sender.test> SIZE=60000000")
        t.ok(r[0] == 552 and enhanced(r[1]) == "5.3.4", "SIZE=60000000 over the default 50M -> 552 5.3.4", repr(r))
    serving(m, sink, "SIZE over the limit")


def t_size_small(ms, sink):
    mk = marker()
    c = open_txn(ms)
    c.cmd("DATA")
    c.send(msg(mk, "big", body=("B" * 78 + "\r\n") * 2600) + b".\r\n")
    r = c.reply(30)
    t.ok(r[0] == 552 and enhanced(r[1]) == "5.3.4",
         "a 200 KB message over message-size-limit 100k -> 552 5.3.4 at end of data", repr(r))
    goes_on_or_closes(c, "oversized message")
    c.close()
    nowhere(ms, sink, mk, "the oversized message is not delivered")
    serving(ms, sink, "an oversized message")


def t_timeout(ms, sink):
    with SMTPConn(ms.port) as c:
        c.cmd("EHLO hostile.test")
        t0 = time.time()
        r = c.reply(10)
        dt = time.time() - t0
        t.ok(r[0] == 421 and (enhanced(r[1]) or "").startswith("4."),
             "an idle session gets 421 4.x.x after smtp-timeout (2 s)", repr(r))
        t.ok(1.0 <= dt <= 6.0, "... after about 2 s (%.1f s)" % dt)
        t.ok(c.wait_closed(5), "... and is closed")
    # a client trickling data within the timeout is not cut off
    c = open_txn(ms)
    c.cmd("DATA")
    for i in range(3):
        c.send(b"X-Trickle: %d\r\n" % i)
        time.sleep(1)
    mk = marker()
    c.send(b"\r\n" + msg(mk, "trickle") + b".\r\n")
    t.eq(c.reply(10)[0], 250, "a slow but steady DATA within the timeout is accepted")
    c.close()


def t_bdat_huge(m, sink):
    """a BDAT announcing far more than message-size-limit: refused or
    drained, never buffered or allocated up front"""
    pids = m.worker_pids() or [m.proc.pid]
    before = sum(rss_kb(p) for p in pids)
    c = open_txn(m)
    c.send(b"BDAT 9000000000000000000 LAST\r\n")
    try:
        c.s.settimeout(10)
        for _ in range(16):
            c.s.sendall(b"Z" * (1 << 20))
    except OSError:
        pass
    r = c.reply(3)
    t.ok(r[0] is None or 400 <= r[0] < 600, "BDAT 9e18 LAST with 16 MB sent: no 2xx", repr(r))
    after = sum(rss_kb(p) for p in (m.worker_pids() or [m.proc.pid]))
    t.ok(after - before < 32 * 1024, "memory stays bounded on a huge BDAT (RSS +%d KB)" % (after - before))
    c.close()
    serving(m, sink, "a huge BDAT")


def t_pipelining_flood(m, sink):
    """50,000 pipelined NOOPs sent without reading: every reply arrives, in
    order, while moatd bounds what it buffers for this client"""
    import threading
    n = 50000
    with SMTPConn(m.port, timeout=30) as c:
        c.cmd("EHLO hostile.test")
        codes = []
        def reader():
            for _ in range(n):
                r = c.reply(30)
                if r[0] is None:
                    return
                codes.append(r[0])
        th = threading.Thread(target=reader, daemon=True)
        th.start()
        try:
            c.s.sendall(b"NOOP\r\n" * n)
        except OSError:
            pass
        th.join(120)
        t.eq((len(codes), set(codes)), (n, {250}), "50,000 pipelined NOOPs -> 50,000 x 250")
        r = c.cmd("QUIT")
        t.eq(r[0], 221, "QUIT after the NOOP flood -> 221")
    serving(m, sink, "a pipelined NOOP flood")


def main():
    with Sink() as sink:
        dom = {DOMAIN: "relay smtp://127.0.0.1:%d" % sink.port}
        # freed buffers sit in ASan's quarantine (256 MB by default), which
        # would hide or fake unbounded buffering in the RSS check
        old = os.environ.get("ASAN_OPTIONS")
        os.environ["ASAN_OPTIONS"] = (old + ":" if old else "") + "quarantine_size_mb=4"
        m = Moat(domains=dom)
        if old is None:
            del os.environ["ASAN_OPTIONS"]
        else:
            os.environ["ASAN_OPTIONS"] = old
        with m:
            for name, fn in [("long command", t_long_command), ("long data line", t_long_data_line),
                             ("nul", t_nul), ("smuggling", t_smuggling), ("many rcpts", t_many_rcpts),
                             ("garbage after data", t_garbage_after_data), ("idle flood", t_idle),
                             ("bad commands", t_bad_commands), ("size", t_size),
                             ("bdat huge", t_bdat_huge), ("pipelining flood", t_pipelining_flood)]:
                section(name, fn, m, sink)
            t.ok(m.proc.poll() is None, "moatd (defaults) survived every hostile case")
            t.ok("AddressSanitizer" not in m.log() and "runtime error" not in m.log(),
                 "no sanitizer report in moatd's log", m.log()[-3000:])
        with Moat(domains=dom, extra="smtp-bare-lf reject") as mr:
            section("smuggling (reject)", t_smuggling_reject, mr, sink)
        with Moat(domains=dom, extra="message-size-limit 100k\nsmtp-timeout 2") as ms:
            section("size (small)", t_size_small, ms, sink)
            section("timeout", t_timeout, ms, sink)
        with Moat(domains=dom, extra="smtp-limit-exempt none") as mx:
            section("idle per ip", t_idle_per_ip, mx, sink)
            t.ok("AddressSanitizer" not in mx.log(), "no sanitizer report (per-IP limits)")
    t.done()


main()
