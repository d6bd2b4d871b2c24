#!/usr/bin/env python3
"""moatd process behaviour: reload on SIGHUP (bad config keeps the old one),
worker restart after kill -9, drain on SIGTERM with a transaction in flight,
one master per state-dir, crash leftovers in the spool, embedded default."""
import os
import signal
import smtplib
import socket
import subprocess
import time

from moattest import TAP, Moat, Sink, MOATD, children, free_port, make_tmpdir, recv_reply, wait_port

t = TAP()


def send(port, to="x@relay.test"):
    s = smtplib.SMTP("127.0.0.1", port, timeout=10)
    try:
        s.ehlo("client.test")
        code, resp = s.docmd("MAIL FROM:<a@b.example>")
        s.docmd("RCPT TO:<%s>" % to)
        code, resp = s.data(b"Subject: t\r\n\r\nhello\r\n")
        s.quit()
        return code, resp.decode()
    except (smtplib.SMTPException, OSError) as e:
        return 0, str(e)


with Sink() as sink, Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}) as m:
    code, resp = send(m.port)
    t.eq(code, 250, "message accepted before any reload")
    master = m.proc.pid
    w1 = children(master)
    t.eq(len(w1), 1, "one worker process")

    # a broken config is refused and the old one keeps serving
    m.write_conf(extra="this-is-not-a-directive 1\n")
    os.kill(master, signal.SIGHUP)
    t.ok(m.wait_log(r"reload-failed") is not None, "bad config: reload refused and logged")
    t.ok(m.wait_log(r"moat.conf:\d+: unknown directive") is not None, "the error names FILE:LINE")
    code, _ = send(m.port)
    t.eq(code, 250, "still serving with the old config")
    t.eq(children(master), w1, "same worker after a refused reload")

    # a good config adds a listener; a new worker takes over
    port2 = free_port()
    m.write_conf(extra="listen smtp 127.0.0.1:%d\n" % port2)
    os.kill(master, signal.SIGHUP)
    t.ok(m.wait_log(r"master event=reloaded") is not None, "good config: reloaded")
    t.ok(wait_port(port2, timeout=5), "new listener is open after reload")
    code, _ = send(port2)
    t.eq(code, 250, "mail accepted on the new listener")
    code, _ = send(m.port)
    t.eq(code, 250, "old listener kept across reload")
    time.sleep(0.5)
    w2 = children(master)
    t.ok(len(w2) == 1 and w2 != w1, "the old worker drained and exited, a new one serves")

    # kill -9 the worker: the master starts a new one
    os.kill(w2[0], signal.SIGKILL)
    t.ok(m.wait_log(r"worker-died pid=%d signal=9" % w2[0]) is not None, "worker death logged")
    end = time.time() + 5
    while time.time() < end and (not children(master) or children(master) == w2):
        time.sleep(0.1)
    w3 = children(master)
    t.ok(len(w3) == 1 and w3 != w2, "a new worker was started")
    code, _ = send(m.port)
    t.eq(code, 250, "and it serves")

    # a second master on the same state-dir is refused
    r = subprocess.run([MOATD, "-f", "-c", m.conf], capture_output=True, text=True, timeout=10)
    t.ok(r.returncode != 0 and "another moatd" in r.stderr, "second moatd on the same state-dir refused",
         r.stderr)

    # SIGTERM while a transaction is in flight: it completes, then 421
    c = socket.create_connection(("127.0.0.1", m.port), timeout=10)
    recv_reply(c)
    c.sendall(b"EHLO x\r\n")
    recv_reply(c)
    c.sendall(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@relay.test>\r\nDATA\r\n")
    got = b""
    end = time.time() + 5
    while b"354" not in got and time.time() < end:
        got += c.recv(4096)
    c.sendall(b"Subject: in flight\r\n\r\nfirst half\r\n")
    idle = socket.create_connection(("127.0.0.1", m.port), timeout=10)
    recv_reply(idle)
    os.kill(master, signal.SIGTERM)
    time.sleep(0.5)
    c.sendall(b"second half\r\n.\r\n")
    r = recv_reply(c).decode()
    t.ok(r.startswith("250 2.0.0 Ok: queued as"), "transaction in flight finishes during drain", r)
    if "421" not in r:
        try:
            r += recv_reply(c).decode()
        except OSError:
            pass
    t.ok("\r\n421 4.3.2" in r, "then the session is closed with 421 4.3.2", r)
    r = recv_reply(idle).decode()
    t.ok(r.startswith("421 4.3.2"), "an idle session is told 421 4.3.2 at once", r)
    c.close()
    idle.close()
    try:
        m.proc.wait(20)
    except subprocess.TimeoutExpired:
        pass
    t.ok(m.proc.poll() == 0, "master exits 0 after the drain")

# per-listener access control: allow= / deny= by IP and CIDR, at connect
pa, pd = free_port(), free_port()
with Moat(domains={"relay.test": "relay smtp://127.0.0.1:9"},
          extra="listen smtp 127.0.0.1:%d allow=127.0.0.5,10.0.0.0/8,::1\n"
                "listen smtp 127.0.0.1:%d deny=127.0.0.6/32\n" % (pa, pd)) as m:
    def greet(port, src):
        c = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(src, 0))
        r = recv_reply(c).decode()
        c.close()
        return r
    r = greet(pa, "127.0.0.1")
    t.ok(r.startswith("554 5.7.1") and "access denied" in r, "allow list: other clients get 554 5.7.1", r)
    t.ok(greet(pa, "127.0.0.5").startswith("220 "), "allow list: a listed client gets 220")
    t.ok(greet(pd, "127.0.0.6").startswith("554 5.7.1"), "deny list: a listed client gets 554")
    t.ok(greet(pd, "127.0.0.7").startswith("220 "), "deny list: others get 220")
    t.ok(greet(m.port, "127.0.0.6").startswith("220 "), "lists are per listener")
    t.ok(m.wait_log(r"event=reject-connection ip=127\.0\.0\.1 reason=access-list") is not None,
         "refusal logged")

# the total session limit: the one over it gets 421, the others are served
with Moat(domains={"relay.test": "relay smtp://127.0.0.1:9"}, extra="smtp-max-sessions 5\n") as m:
    m.wait_log(r"event=disconnect")     # the harness's readiness probe is gone
    time.sleep(0.3)
    held = [socket.create_connection(("127.0.0.1", m.port), timeout=10) for _ in range(5)]
    for c in held:
        recv_reply(c)
    c = socket.create_connection(("127.0.0.1", m.port), timeout=10)
    r = recv_reply(c).decode()
    t.ok(r.startswith("421 4.7.0") and "too many connections" in r, "smtp-max-sessions 5: the 6th gets 421 4.7.0", r)
    c.close()
    held[0].sendall(b"QUIT\r\n")
    recv_reply(held[0])
    held[0].close()
    time.sleep(0.3)
    code, _ = send(m.port)
    t.eq(code, 250, "once a session ends, a new client is served")
    for c in held[1:]:
        c.close()

# out of file descriptors: the listener pauses instead of spinning, then recovers
import resource
m = Moat(domains={"relay.test": "relay smtp://127.0.0.1:9"}, start=False)
with m:
    def lowfd():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    m.logf = open(m.logpath, "ab")
    m.proc = subprocess.Popen([MOATD, "-f", "-c", m.conf], stdout=m.logf, stderr=subprocess.STDOUT,
                              preexec_fn=lowfd)
    t.ok(wait_port(m.port), "moatd up with 64 file descriptors")
    held = []
    for i in range(150):
        try:
            held.append(socket.create_connection(("127.0.0.1", m.port), timeout=2))
        except OSError:
            break
    time.sleep(1)
    w = children(m.proc.pid)
    ticks = lambda p: sum(int(x) for x in open("/proc/%d/stat" % p).read().rsplit(")", 1)[1].split()[11:13])
    before = ticks(w[0])
    time.sleep(2)
    used = ticks(w[0]) - before
    t.ok(used < 50, "descriptors exhausted: the worker does not spin (%d ticks in 2 s)" % used)
    t.ok(m.wait_log(r"smtp: accept: .*not accepting for 1 s") is not None, "the pause is logged")
    for c in held:
        c.close()
    time.sleep(1.5)
    code, _ = send(m.port)
    t.eq(code, 250, "after the connections close, mail is accepted again")

# crash leftovers: incoming/ is cleaned, an incomplete queue file is set aside
with Moat(domains={"relay.test": "relay smtp://127.0.0.1:9"}, start=False) as m:
    for d in ("incoming", "queue"):
        os.makedirs(os.path.join(m.state, "spool", d), exist_ok=True)
    with open(os.path.join(m.state, "spool", "incoming", "0000000000000AA000"), "w") as f:
        f.write("MOAT-SPOOL 1\nhalf")
    with open(os.path.join(m.state, "spool", "queue", "0000000000000BB000"), "w") as f:
        f.write("MOAT-SPOOL 1\nqid 0000000000000BB000\narrival 1\nsender a@b\nrcpt 0 - x@relay.test\n\nSubject: cut")
    m.start()
    t.eq(os.listdir(os.path.join(m.state, "spool", "incoming")), [], "incoming/ emptied at start")
    t.ok(os.path.exists(os.path.join(m.state, "spool", "corrupt", "0000000000000BB000")),
         "incomplete queue file (no end marker) set aside in spool/corrupt")
    t.ok("0000000000000BB000" not in m.queue_files(), "and not in the queue")

# the embedded default: moatd -n with no -c, from a directory without /etc/moat
tmp = make_tmpdir()
env = dict(os.environ)
env.pop("MOAT_CONF", None)
r = subprocess.run([MOATD, "-n"], capture_output=True, text=True, cwd=tmp, env=env, timeout=10)
if os.path.exists("/etc/moat/moat.conf") or os.path.exists("/usr/local/etc/moat/moat.conf"):
    t.ok(r.returncode == 0, "moatd -n with an installed config")
else:
    t.ok(r.returncode == 0 and "(embedded default): configuration OK" in r.stdout,
         "moatd -n checks the embedded default", r.stdout + r.stderr)
    s = socket.socket()
    busy = s.connect_ex(("127.0.0.1", 2525)) == 0
    s.close()
    if busy:
        t.ok(True, "# SKIP port 2525 busy: embedded default not started")
    else:
        p = subprocess.Popen([MOATD, "-f"], cwd=tmp, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            up = wait_port(2525, timeout=10)
            t.ok(up, "moatd -f with no config listens on 127.0.0.1:2525")
            t.ok(os.path.isdir(os.path.join(tmp, "var", "spool", "queue")), "state-dir ./var created")
            if up:
                s = smtplib.SMTP("127.0.0.1", 2525, timeout=10)
                s.ehlo("x")
                code, _ = s.docmd("MAIL FROM:<a@b.example>")
                code, resp = s.docmd("RCPT TO:<nobody@localhost>")
                t.ok(code == 550 and b"5.1.1" in resp, "unknown local user refused with 550 5.1.1", resp)
                code, resp = s.docmd("RCPT TO:<x@example.com>")
                t.ok(code == 550 and b"5.7.1" in resp, "other domains refused with 550 5.7.1 (no open relay)", resp)
                s.quit()
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(20)
subprocess.run(["rm", "-rf", tmp])
t.done()
