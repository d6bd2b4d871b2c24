#!/usr/bin/env python3
"""test_relay.py - the delivery queue and the SMTP/LMTP relay client.

moatd accepts mail for relay domains and delivers it to Sink servers on
loopback: one transaction per destination, LMTP per-recipient replies,
retries with backoff after the downstream was down, DSNs (RFC 3464) for
permanent failures and expiry -- exactly one, never for the null sender
or NOTIFY=NEVER -- connection reuse under the concurrency limit, large
messages streamed intact, and a restart that delivers what was queued
exactly once.
"""
import hashlib
import os
import re
import shutil
import smtplib
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import TAP, Moat, Sink, free_port  # noqa: E402

t = TAP()
FAST = "queue-retry-min 2\nqueue-retry-max 4\nqueue-scan-interval 2\n"


def send(m, sender, rcpts, body, subject="test", mail_options=(), rcpt_options=()):
    msg = "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s.%f@test>\r\n\r\n%s" % (
        sender or "nobody@test", rcpts[0], subject, subject.replace(" ", "-"), time.time(), body)
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    try:
        s.ehlo("client.test")
        refused = s.sendmail(sender, rcpts, msg.encode("utf-8"), mail_options=list(mail_options),
                             rcpt_options=list(rcpt_options))
    finally:
        try:
            s.quit()
        except smtplib.SMTPException:
            pass
    return refused


def dsns(sink):
    with sink.lock:
        return [x for x in sink.messages if x["mail_from"] == ""]


def non_dsns(sink):
    with sink.lock:
        return [x for x in sink.messages if x["mail_from"] != ""]


def wait_until(fn, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if fn():
            return True
        time.sleep(0.05)
    return bool(fn())


def wait_queue_empty(m, timeout=20.0):
    return wait_until(lambda: m.queue_files() == [], timeout)


# ---- 1. SMTP relay: one transaction for two recipients, dot-stuffing ----
with Sink() as sink, Moat(domains={"example.test": "relay smtp://127.0.0.1:%d" % sink.port},
                          extra=FAST) as m:
    body = "hello\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n"
    send(m, "alice@example.test", ["bob@example.test", "carol@example.test"], body, "one txn")
    t.ok(sink.wait_messages(1, 20), "SMTP: message relayed", m.log())
    time.sleep(0.3)
    msgs = non_dsns(sink)
    t.eq(len(msgs), 1, "SMTP: two recipients of one destination in one transaction")
    if msgs:
        x = msgs[0]
        t.eq(sorted(x["rcpts"]), ["bob@example.test", "carol@example.test"], "SMTP: both recipients")
        t.eq(x["mail_from"], "alice@example.test", "SMTP: envelope sender kept")
        t.ok(x["data"].endswith(body.encode()), "SMTP: dot-stuffed lines arrive intact",
             x["data"][-200:])
        t.ok(b"\r\nReceived: " in b"\r\n" + x["data"], "SMTP: our Received header is there")
        t.ok(re.search(r"SIZE=\d+", x["params"]["mail"]), "SMTP: SIZE= passed (server offers SIZE)",
             x["params"])
        t.ok("ORCPT=rfc822;bob@example.test" in x["params"]["rcpt"]["bob@example.test"],
             "SMTP: ORCPT passed (server offers DSN)", x["params"])
    t.ok(wait_queue_empty(m), "SMTP: queue file removed after delivery", m.queue_files())
    t.ok(m.wait_log(r"event=delivered to=<bob@example\.test> relay=smtp://127\.0\.0\.1:%d delay=[\d.]+ "
                    r"attempts=1 reply=\"250 " % sink.port), "SMTP: delivered log line", m.log()[-2000:])
    t.ok(m.wait_log(r"event=removed"), "SMTP: removed log line")
    t.eq(os.listdir(os.path.join(m.state, "spool", "state")), [], "SMTP: no state file left")

# ---- 2. LMTP: per-recipient replies; the 550 gets a DSN, the 250 is delivered ----
with Sink() as back, \
        Sink(lmtp=True, replies={"lmtp_rcpt": {"bad@lmtp.test": "550 5.1.1 <bad@lmtp.test>: no such user"}}) as lm, \
        Moat(domains={"lmtp.test": "relay lmtp://127.0.0.1:%d" % lm.port,
                      "sender.test": "relay smtp://127.0.0.1:%d" % back.port}, extra=FAST) as m:
    send(m, "alice@sender.test", ["good@lmtp.test", "bad@lmtp.test"], "lmtp body\r\n", "lmtp test")
    t.ok(lm.wait_messages(1, 20), "LMTP: transaction reached the LMTP server", m.log()[-2000:])
    t.ok(back.wait_messages(1, 20), "LMTP: a DSN reached the sender's domain", m.log()[-3000:])
    time.sleep(1.0)
    d = dsns(back)
    t.eq(len(d), 1, "LMTP: exactly one DSN")
    if d:
        raw = d[0]["data"].decode("utf-8", "replace")
        t.eq(d[0]["rcpts"], ["alice@sender.test"], "LMTP: DSN goes to the original sender")
        t.ok(re.search(r"Content-Type: multipart/report; report-type=delivery-status;", raw),
             "LMTP: DSN is multipart/report", raw[:800])
        t.ok("Final-Recipient: rfc822; bad@lmtp.test" in raw, "LMTP: DSN names the failed recipient")
        t.ok("good@lmtp.test" not in raw.split("Content-Type: message/rfc822")[0].split("delivery-status")[-1],
             "LMTP: the delivered recipient is not in the report")
        t.ok("Action: failed" in raw and "Status: 5.1.1" in raw, "LMTP: Action failed, Status 5.1.1",
             raw[:3000])
        t.ok("Diagnostic-Code: smtp; 550 5.1.1 <bad@lmtp.test>: no such user" in raw,
             "LMTP: Diagnostic-Code carries the server's reply")
        t.ok("Subject: lmtp test" in raw, "LMTP: the original is attached")
    t.ok(m.wait_log(r"event=delivered to=<good@lmtp\.test> relay=lmtp://"), "LMTP: good recipient delivered")
    t.ok(m.wait_log(r"event=bounced to=<bad@lmtp\.test>"), "LMTP: bad recipient bounced")
    t.ok(m.wait_log(r"event=dsn-sent dsn_qid=\w+"), "LMTP: dsn-sent logged")
    t.ok(wait_queue_empty(m), "LMTP: queue empty after the DSN was delivered", m.queue_files())

# ---- 3. downstream 5xx at RCPT: exactly one DSN for two failed recipients ----
with Sink(replies={"rcpt": {"x1@example.test": "550 5.1.1 no such user x1",
                            "x2@example.test": "553 5.1.3 bad address x2"}}) as sink, \
        Moat(domains={"example.test": "relay smtp://127.0.0.1:%d" % sink.port}, extra=FAST) as m:
    send(m, "sender@example.test", ["x1@example.test", "x2@example.test"], "body\r\n", "two fail",
         mail_options=["RET=HDRS", "ENVID=env+2Bid1"])
    t.ok(sink.wait_messages(1, 20), "5xx: a DSN arrived", m.log()[-3000:])
    time.sleep(1.5)
    d = dsns(sink)
    t.eq(len(d), 1, "5xx: exactly one DSN for both failed recipients")
    t.eq(len(non_dsns(sink)), 0, "5xx: the message itself was not delivered")
    if d:
        raw = d[0]["data"].decode("utf-8", "replace")
        t.ok("Status: 5.1.1" in raw and "Status: 5.1.3" in raw, "5xx: both statuses reported", raw[:3000])
        t.eq(raw.count("Action: failed"), 2, "5xx: two failed recipients")
        t.ok("Original-Envelope-Id: env+id1" in raw, "5xx: ENVID decoded into Original-Envelope-Id")
        t.ok("text/rfc822-headers" in raw and "Subject: two fail" in raw and "\r\nbody\r\n" not in raw,
             "5xx: RET=HDRS returns headers only")
        t.ok("From: Mail Delivery System <MAILER-DAEMON@mx.moat.test>" in raw, "5xx: From MAILER-DAEMON")
    t.ok(wait_queue_empty(m), "5xx: queue empty", m.queue_files())

# ---- 4. NOTIFY=NEVER: no DSN; null sender: no DSN ----
with Sink(replies={"rcpt": {"no@example.test": "550 5.1.1 no"}}) as sink, \
        Moat(domains={"example.test": "relay smtp://127.0.0.1:%d" % sink.port}, extra=FAST) as m:
    send(m, "sender@example.test", ["no@example.test"], "x\r\n", "never", rcpt_options=["NOTIFY=NEVER"])
    send(m, "", ["no@example.test"], "x\r\n", "null sender")
    t.ok(m.wait_log(r"event=bounced to=<no@example\.test>.*\n(.*\n)*.*event=bounced to=<no@example\.test>", 20),
         "no-DSN: both messages bounced", m.log()[-3000:])
    t.ok(wait_queue_empty(m), "no-DSN: both removed", m.queue_files())
    time.sleep(1.5)
    t.eq(len(sink.messages), 0, "no-DSN: no DSN for NOTIFY=NEVER nor for the null sender")
    t.ok("event=dsn-sent" not in m.log(), "no-DSN: no dsn-sent in the log")

# ---- 5. NOTIFY=SUCCESS: passed on to a DSN server; "relayed" DSN from a non-DSN server ----
with Sink() as sink, Sink(ext=("PIPELINING", "8BITMIME")) as plain, \
        Moat(domains={"example.test": "relay smtp://127.0.0.1:%d" % sink.port,
                      "plain.test": "relay smtp://127.0.0.1:%d" % plain.port}, extra=FAST) as m:
    send(m, "s@example.test", ["r@example.test"], "x\r\n", "success dsn",
         rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
    t.ok(sink.wait_messages(1, 20), "SUCCESS: delivered to the DSN-capable server")
    time.sleep(1.0)
    x = non_dsns(sink)
    t.ok(x and "NOTIFY=SUCCESS,FAILURE" in x[0]["params"]["rcpt"]["r@example.test"],
         "SUCCESS: NOTIFY passed along", x and x[0]["params"])
    t.eq(len(dsns(sink)), 0, "SUCCESS: no DSN of ours when the server offers DSN")
    send(m, "s@example.test", ["r@plain.test"], "x\r\n", "relayed dsn", rcpt_options=["NOTIFY=SUCCESS"])
    t.ok(plain.wait_messages(1, 20), "SUCCESS: delivered to the server without DSN")
    t.ok(plain.messages and "NOTIFY" not in plain.messages[0]["params"]["rcpt"]["r@plain.test"],
         "SUCCESS: no DSN parameters to a server without DSN")
    t.ok(wait_until(lambda: len(dsns(sink)) == 1, 20), "SUCCESS: a 'relayed' DSN came back")
    if dsns(sink):
        raw = dsns(sink)[0]["data"].decode("utf-8", "replace")
        t.ok("Action: relayed" in raw and "Status: 2." in raw, "SUCCESS: Action relayed, Status 2.x.x",
             raw[:2500])

# ---- 6. downstream down, then up: delivered after a retry; dead destination ----
port = free_port()
with Moat(domains={"example.test": "relay smtp://127.0.0.1:%d" % port}, extra=FAST) as m:
    send(m, "s@example.test", ["r1@example.test"], "retry 1\r\n", "retry one")
    send(m, "s@example.test", ["r2@example.test"], "retry 2\r\n", "retry two")
    t.ok(m.wait_log(r"event=deferred to=<r1@example\.test>.*reply=\"4\.4\.1 connect to 127\.0\.0\.1:%d" % port, 10),
         "down: deferred with the connect error", m.log()[-2000:])
    t.ok(m.wait_log(r"event=deferred to=<r2@example\.test>", 10), "down: second message deferred too")
    t.eq(len(m.queue_files()), 2, "down: both messages wait in the queue")
    t.ok(os.path.exists(os.path.join(m.state, "spool", "state", m.queue_files()[0])) if m.queue_files() else False,
         "down: a state file records the attempt")
    with Sink(port=port) as sink:
        t.ok(sink.wait_messages(2, 30), "down: both delivered after the downstream came back", m.log()[-3000:])
        t.ok(wait_queue_empty(m), "down: queue empty")
        time.sleep(1.0)
        t.eq(len(sink.messages), 2, "down: each delivered exactly once")
    t.ok(re.search(r"event=delivered to=<r1@example\.test> .* attempts=[2-9]", m.log()),
         "down: delivered on a later attempt")

# ---- 7. queue-lifetime expiry: DSN with 4.4.7 ----
port = free_port()
with Sink() as back, Moat(domains={"gone.test": "relay smtp://127.0.0.1:%d" % port,
                                   "sender.test": "relay smtp://127.0.0.1:%d" % back.port},
                          extra=FAST + "queue-lifetime 3\n") as m:
    send(m, "alice@sender.test", ["lost@gone.test"], "expire me\r\n", "expiry")
    t.ok(back.wait_messages(1, 30), "expiry: a DSN arrived", m.log()[-3000:])
    d = dsns(back)
    if d:
        raw = d[0]["data"].decode("utf-8", "replace")
        t.ok("Status: 4.4.7" in raw and "Action: failed" in raw, "expiry: Action failed, Status 4.4.7",
             raw[:3000])
        t.ok("Final-Recipient: rfc822; lost@gone.test" in raw, "expiry: names the recipient")
    else:
        t.ok(False, "expiry: DSN content")
        t.ok(False, "expiry: names the recipient")
    t.ok(m.wait_log(r"event=expired to=<lost@gone\.test>"), "expiry: expired logged")
    t.ok(wait_queue_empty(m), "expiry: queue empty", m.queue_files())

# ---- 8. restart with messages in the queue: delivered once, finished rcpts not again ----
port = free_port()
with Sink() as up, Moat(domains={"up.test": "relay smtp://127.0.0.1:%d" % up.port,
                                 "later.test": "relay smtp://127.0.0.1:%d" % port},
                        extra=FAST) as m:
    for i in range(3):
        send(m, "s@up.test", ["a%d@up.test" % i, "b%d@later.test" % i], "restart %d\r\n" % i, "restart %d" % i)
    t.ok(up.wait_messages(3, 20), "restart: the reachable recipients were delivered")
    t.ok(wait_until(lambda: m.log().count("event=deferred to=<b") >= 3, 20), "restart: the others deferred")
    time.sleep(0.5)
    t.eq(len(m.queue_files()), 3, "restart: three messages in the queue")
    rc = m.stop()
    t.eq(rc, 0, "restart: moatd stopped cleanly")
    with Sink(port=port) as later:
        m.start()
        t.ok(later.wait_messages(3, 30), "restart: queued messages delivered after the restart",
             m.log()[-3000:])
        t.ok(wait_queue_empty(m), "restart: queue empty", m.queue_files())
        time.sleep(1.0)
        t.eq(len(later.messages), 3, "restart: each delivered once")
        t.eq(len(up.messages), 3, "restart: finished recipients were not delivered again")
        t.eq(sorted(r for x in later.messages for r in x["rcpts"]),
             ["b0@later.test", "b1@later.test", "b2@later.test"], "restart: only the pending recipients")

# ---- 9. connection reuse under relay-concurrency 1, max messages per connection ----
with Sink() as sink, Moat(domains={"example.test": "relay smtp://127.0.0.1:%d" % sink.port},
                          extra=FAST + "relay-concurrency 1\nrelay-max-messages-per-connection 3\n") as m:
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    for i in range(6):
        s.sendmail("s@example.test", ["r%d@example.test" % i], "Subject: reuse %d\r\n\r\nx\r\n" % i)
    s.quit()
    t.ok(sink.wait_messages(6, 30), "reuse: six messages delivered", m.log()[-2000:])
    time.sleep(0.5)
    t.ok(2 <= sink.connections <= 3, "reuse: 6 messages over 2-3 connections (got %d)" % sink.connections)

# ---- 10. a 5 MB message is streamed intact ----
with Sink() as sink, Moat(domains={"example.test": "relay smtp://127.0.0.1:%d" % sink.port},
                          extra=FAST + "message-size-limit 20M\n") as m:
    lines = []
    for i in range(70000):
        lines.append(("." if i % 7 == 0 else "") + ("line %06d " % i) + "x" * 60)
    body = "\r\n".join(lines) + "\r\n"
    send(m, "s@example.test", ["big@example.test"], body, "big one")
    t.ok(sink.wait_messages(1, 60), "big: delivered", m.log()[-2000:])
    if sink.messages:
        got = sink.messages[0]["data"]
        t.eq(hashlib.sha256(got[-len(body.encode()):]).hexdigest(), hashlib.sha256(body.encode()).hexdigest(),
             "big: body identical after dot-stuffing (%d bytes)" % len(got))

# ---- 11. a server that refuses EHLO: HELO fallback, no extensions used ----


class HeloServer:
    def __init__(self):
        self.port = free_port()
        self.cmds = []
        self.msgs = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(8)
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            f = c.makefile("rb")
            c.sendall(b"220 old ESMTP\r\n")
            try:
                while True:
                    line = f.readline(10000)
                    if not line:
                        break
                    cmd = line.decode().strip()
                    self.cmds.append(cmd)
                    u = cmd.upper()
                    if u.startswith("EHLO"):
                        c.sendall(b"502 5.5.2 what\r\n")
                    elif u == "DATA":
                        c.sendall(b"354 go\r\n")
                        while f.readline(10000000) not in (b".\r\n", b""):
                            pass
                        self.msgs += 1
                        c.sendall(b"250 ok\r\n")
                    elif u == "QUIT":
                        c.sendall(b"221 bye\r\n")
                        break
                    else:
                        c.sendall(b"250 ok\r\n")
            finally:
                c.close()


hs = HeloServer()
with Moat(domains={"old.test": "relay smtp://127.0.0.1:%d" % hs.port}, extra=FAST) as m:
    send(m, "s@old.test", ["r@old.test"], "x\r\n", "helo", mail_options=["BODY=8BITMIME"])
    t.ok(wait_until(lambda: hs.msgs == 1, 20), "HELO: delivered after EHLO was refused", m.log()[-2000:])
    t.ok(any(c.upper().startswith("HELO ") for c in hs.cmds), "HELO: fell back to HELO")
    t.ok("MAIL FROM:<s@old.test>" in hs.cmds, "HELO: MAIL without ESMTP parameters", hs.cmds)
hs.sock.close()

# ---- 12. deliver store: Return-Path/Delivered-To, NOTIFY=SUCCESS gives a "delivered" DSN ----
with Sink() as back, Moat(domains={"store.test": "store",
                                   "sender.test": "relay smtp://127.0.0.1:%d" % back.port}, extra=FAST) as m:
    r = m.cli("user", "add", "box@store.test", input="secret\n")
    t.ok(r.returncode == 0, "store: user added", r.stderr)
    send(m, "alice@sender.test", ["box@store.test"], "stored body\r\n", "store dsn",
         rcpt_options=["NOTIFY=SUCCESS"])
    t.ok(wait_until(lambda: len(m.maildir_files("box@store.test")) == 1, 20), "store: delivered to the Maildir",
         m.log()[-2000:])
    files = m.maildir_files("box@store.test")
    if files:
        data = open(files[0], "rb").read()
        t.ok(data.startswith(b"Return-Path: <alice@sender.test>\nDelivered-To: box@store.test\n"),
             "store: Return-Path and Delivered-To prepended", data[:200])
    t.ok(back.wait_messages(1, 20), "store: a success DSN came back", m.log()[-2000:])
    if back.messages:
        raw = back.messages[0]["data"].decode("utf-8", "replace")
        t.eq(back.messages[0]["mail_from"], "", "store: DSN from the null sender")
        t.ok("Action: delivered" in raw and "Status: 2.0.0" in raw, "store: Action delivered", raw[:2000])
    t.ok(m.wait_log(r"event=delivered to=<box@store\.test> relay=store"), "store: delivered log line")
    t.ok(wait_queue_empty(m), "store: queue empty")

# ---- 13. hostile or silent downstream: bounded replies, timeouts, deferred not lost ----


def evil_server(mode):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def run():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            try:
                if mode == "silent":
                    time.sleep(5)
                elif mode == "longline":
                    c.sendall(b"220 " + b"x" * 100000 + b"\r\n")
                elif mode == "manylines":
                    c.sendall(b"220-hi\r\n" * 5000 + b"220 hi\r\n")
                time.sleep(1)
            except OSError:
                pass
            finally:
                c.close()
    threading.Thread(target=run, daemon=True).start()
    return srv


for mode, what in (("silent", "timed out"), ("longline", "too long"), ("manylines", "more than")):
    srv = evil_server(mode)
    eport = srv.getsockname()[1]
    with Moat(domains={"evil.test": "relay smtp://127.0.0.1:%d" % eport},
              extra=FAST + "relay-command-timeout 1\n") as m:
        send(m, "s@evil.test", ["r@evil.test"], "x\r\n", "evil " + mode)
        t.ok(m.wait_log(r"event=deferred to=<r@evil\.test> .*%s" % what, 15),
             "hostile downstream (%s): deferred with a clear reason" % mode, m.log()[-1500:])
        t.eq(len(m.queue_files()), 1, "hostile downstream (%s): message kept in the queue" % mode)
        t.ok(m.proc.poll() is None, "hostile downstream (%s): moatd still running" % mode)
    srv.close()

# ---- 14. LMTP over a unix socket ----
us = Sink(lmtp=True)        # not started on TCP: its session code serves the unix socket
utmp = tempfile.mkdtemp(prefix="moat-lmtp-")
upath = os.path.join(utmp, "lmtp.sock")
usock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
usock.bind(upath)
os.chmod(utmp, 0o755)
os.chmod(upath, 0o777)      # moatd's worker may run as another user
usock.listen(8)


def unix_accept():
    while True:
        try:
            c, _ = usock.accept()
        except OSError:
            return
        threading.Thread(target=us._session, args=(c,), daemon=True).start()


threading.Thread(target=unix_accept, daemon=True).start()
with Moat(domains={"sock.test": "relay lmtp:unix:%s" % upath}, extra=FAST) as m:
    send(m, "s@sock.test", ["u1@sock.test", "u2@sock.test"], "over unix\r\n", "unix lmtp")
    t.ok(us.wait_messages(1, 20), "unix LMTP: delivered", m.log()[-2000:])
    t.ok(m.wait_log(r"event=delivered to=<u2@sock\.test> relay=lmtp:unix:"), "unix LMTP: logged per recipient")
    t.ok(wait_queue_empty(m), "unix LMTP: queue empty")
usock.close()
shutil.rmtree(utmp, ignore_errors=True)

t.done()
