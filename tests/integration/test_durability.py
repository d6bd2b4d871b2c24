#!/usr/bin/env python3
"""Durability of moatd's spool and delivery queue, black box.

1. kill -9 of the worker in the middle of a load (the master restarts it),
   later kill -9 of the master and every worker, then a restart: every
   message the client saw a 250 for reaches the downstream Sink (zero
   losses); duplicates are allowed but counted and reported; no file is
   left in spool/incoming.
2. The downstream is down for a while under load: the messages wait in the
   queue and all arrive once it is back.
3. Smoke load: Postfix's smtp-source -s 20 -m 2000 through moatd
   (`deliver relay`) to Postfix's smtp-sink: every message arrives.  With
   MOAT_SLOW_TESTS=1: 10,000 messages, a two-minute outage, and 10,000
   messages into `deliver store`.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import TAP, Moat, Sink, SMTPConn, MOATD, MOAT, QID_RE, free_port, make_tmpdir, wait_port  # noqa: E402

t = TAP()
if not os.path.exists(MOATD):
    t.skip_all("moatd not built")

SLOW = os.environ.get("MOAT_SLOW_TESTS") == "1"
DOMAIN = "example.test"
ID_RE = re.compile(rb"\r\nX-Load-Id: (\S+)\r\n")


def skip(desc, why):
    t.ok(True, "%s # SKIP %s" % (desc, why))


def section(name, fn, *args):
    try:
        fn(*args)
    except Exception:          # noqa: BLE001
        t.ok(False, "%s: no exception" % name, traceback.format_exc())


class CountingSink(Sink):
    """a Sink that indexes messages by their X-Load-Id and can go down
    (listener closed, live sessions cut) like a crashed downstream"""

    def __init__(self, port=None, seen=None):
        super().__init__(port=port)
        self.conns = set()
        self.seen = seen if seen is not None else {}    # load id -> times received
        self.indexed = 0

    def _session(self, c):
        with self.lock:
            self.conns.add(c)
        try:
            super()._session(c)
        finally:
            with self.lock:
                self.conns.discard(c)

    def down(self):
        self.stop()
        with self.lock:
            cs = list(self.conns)
        for c in cs:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def index(self):
        with self.lock:
            new = self.messages[self.indexed:]
            self.indexed = len(self.messages)
        for msg in new:
            m = ID_RE.search(msg["data"])
            if m:
                k = m.group(1).decode()
                self.seen[k] = self.seen.get(k, 0) + 1
        return self.seen


class Load:
    """client threads sending messages in a loop; every message carries a
    unique X-Load-Id and the ids that got a 250 are recorded with their
    queue id.  Connection errors (moatd being killed) are retried."""

    def __init__(self, port, nthreads=6, prefix="L", per_conn=20, max_msgs=None, body_lines=20):
        self.port = port
        self.n = nthreads
        self.prefix = prefix
        self.per_conn = per_conn
        self.max_msgs = max_msgs
        self.body = b"".join(b"line %03d of the load test body, some words to fill it up\r\n" % i
                             for i in range(body_lines))
        self.acked = {}
        self.refused = 0
        self.refused_replies = {}      # "code enhanced" -> count
        self.errors = 0
        self.sent = 0
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.threads = []

    def start(self):
        for i in range(self.n):
            th = threading.Thread(target=self._run, args=(i,), daemon=True)
            th.start()
            self.threads.append(th)
        return self

    def stop(self):
        self.stop_ev.set()
        for th in self.threads:
            th.join(30)

    def count(self):
        with self.lock:
            return len(self.acked)

    def wait_acked(self, n, timeout):
        end = time.time() + timeout
        while time.time() < end and self.count() < n:
            time.sleep(0.05)
        return self.count() >= n

    def _next(self, i, seq):
        with self.lock:
            if self.max_msgs is not None and self.sent >= self.max_msgs:
                return None
            self.sent += 1
        return "%s-%d-%d" % (self.prefix, i, seq)

    def _refused(self, r):
        k = "%s %s" % (r[0], r[1].split(" ")[0] if r[1] else "")
        with self.lock:
            self.refused += 1
            self.refused_replies[k] = self.refused_replies.get(k, 0) + 1

    def _run(self, i):
        seq = 0
        while not self.stop_ev.is_set():
            c = None
            try:
                c = SMTPConn(self.port, timeout=15)
                if c.greeting[0] != 220 or c.cmd("EHLO load%d.test" % i)[0] != 250:
                    raise OSError("no greeting/EHLO: %r" % (c.greeting,))
                for _ in range(self.per_conn):
                    if self.stop_ev.is_set():
                        break
                    lid = self._next(i, seq)
                    if lid is None:
                        self.stop_ev.wait(0.05)
                        return
                    seq += 1
                    bad = None
                    for line, want in (("MAIL FROM:<load%d@sender.test>" % i, 250),
                                       ("RCPT TO:<sink%d@%s>" % (i % 3, DOMAIN), 250), ("DATA", 354)):
                        r = c.cmd(line)
                        if r[0] is None:
                            raise OSError("connection lost")
                        if r[0] != want:
                            bad = r
                            break
                    if bad is not None:
                        self._refused(bad)
                        c.cmd("RSET")
                        continue
                    c.send(("From: load%d@sender.test\r\nTo: sink@%s\r\nSubject: load %s\r\n"
                            "X-Load-Id: %s\r\n\r\n" % (i, DOMAIN, lid, lid)).encode() + self.body + b".\r\n")
                    r = c.reply(30)
                    if r[0] == 250:
                        q = QID_RE.search(r[1])
                        with self.lock:
                            self.acked[lid] = q.group(1) if q else "?"
                    elif r[0] is None:
                        raise OSError("connection lost at end of data")
                    else:
                        self._refused(r)
                c.cmd("QUIT", timeout=5)
            except OSError:
                with self.lock:
                    self.errors += 1
                self.stop_ev.wait(0.05)
            finally:
                if c is not None:
                    c.close()


def wait_all(sink, ids, timeout):
    end = time.time() + timeout
    while True:
        seen = sink.index()
        missing = [k for k in ids if k not in seen]
        if not missing or time.time() >= end:
            return missing, seen
        time.sleep(0.2)


def dir_files(m, sub):
    d = os.path.join(m.state, "spool", sub)
    try:
        return os.listdir(d)
    except FileNotFoundError:
        return []


def wait_empty(m, sub, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if not dir_files(m, sub):
            return True
        time.sleep(0.1)
    return not dir_files(m, sub)


def sanitizer_clean(m, desc):
    log = m.log()
    bad = [l for l in log.splitlines() if "AddressSanitizer" in l or "runtime error:" in l
           or "LeakSanitizer" in l]
    t.ok(not bad, "no sanitizer report in moatd's log (%s)" % desc, "\n".join(bad[:20]))


def report(load, missing, seen, desc):
    acked = set(load.acked)
    seen = {k: n for k, n in seen.items() if k.startswith(load.prefix + "-")}
    dups = {k: n for k, n in seen.items() if n > 1}
    unacked = [k for k in seen if k not in acked]
    t.diag("%s: %d acknowledged, %d refused, %d connection errors; received %d distinct, "
           "%d duplicated (%d extra copies), %d received without an ack seen by the client"
           % (desc, len(acked), load.refused, load.errors, len(seen), len(dups),
              sum(n - 1 for n in dups.values()), len(unacked)))
    if load.refused_replies:
        t.diag("%s: refusals seen by the client: %r" % (desc, load.refused_replies))
    t.eq(len(missing), 0, "%s: every acknowledged message arrived (zero losses)" % desc)
    if missing:
        t.diag("lost: " + " ".join("%s(qid %s)" % (k, load.acked[k]) for k in sorted(missing)[:30]))
    if dups:
        t.diag("duplicates: " + " ".join("%s x%d" % (k, n) for k, n in sorted(dups.items())[:30]))


# ---------------------------------------------------------------------------

def t_kill9():
    sink = CountingSink().start()
    m = Moat(domains={DOMAIN: "relay smtp://127.0.0.1:%d" % sink.port},
             extra="queue-retry-min 1\nqueue-retry-max 2\nqueue-scan-interval 2")
    load = None
    try:
        load = Load(m.port, nthreads=6, prefix="K").start()
        t.ok(load.wait_acked(150, 30), "load is running (%d acked)" % load.count())

        for round in range(5 if SLOW else 2):
            workers = m.worker_pids()
            t.ok(len(workers) >= 1, "moatd has a worker process (%r)" % workers)
            for p in workers:
                os.kill(p, signal.SIGKILL)
            t0 = time.time()
            new = []
            # a worker that keeps dying young is restarted with a backoff
            # (up to 30 s, gateway/moatd.c), so allow for that
            while time.time() - t0 < 40:
                new = [p for p in m.worker_pids() if p not in workers]
                if new:
                    break
                time.sleep(0.05)
            t.ok(new, "kill -9 #%d: the master restarted the killed worker (%.1f s)" % (round + 1, time.time() - t0))
            t.ok(m.proc.poll() is None, "kill -9 #%d: the master survived its worker's death" % (round + 1))
            before = load.count()
            t.ok(load.wait_acked(before + 150, 30), "kill -9 #%d: mail flows again after the restart (%d acked)"
                 % (round + 1, load.count()))

        m.kill9_all()
        time.sleep(0.5)
        acked_at_kill = load.count()
        leftovers = set(dir_files(m, "incoming"))
        t.diag("kill -9 of everything left %d half-received files in spool/incoming" % len(leftovers))
        m.start()
        t.ok(m.proc.poll() is None, "moatd restarts after kill -9 of master and workers")
        time.sleep(0.5)
        stale = leftovers & set(dir_files(m, "incoming"))
        t.ok(not stale, "the restart discards the half-received files in spool/incoming", sorted(stale)[:10])
        t.ok(load.wait_acked(acked_at_kill + 150, 30), "mail flows after the restart (%d acked)" % load.count())
        time.sleep(1)
    finally:
        if load:
            load.stop()
    try:
        missing, seen = wait_all(sink, list(load.acked), 90 if not SLOW else 300)
        report(load, missing, seen, "kill -9")
        t.ok(wait_empty(m, "incoming", 10), "no file left in spool/incoming", dir_files(m, "incoming"))
        t.ok(wait_empty(m, "queue", 30), "spool/queue drains once everything is delivered",
             "%d left" % len(dir_files(m, "queue")))
        t.ok(m.proc.poll() is None, "moatd still running")
        sanitizer_clean(m, "kill -9")
    finally:
        m.__exit__(None, None, None)
        sink.stop()


def t_downstream_outage():
    outage = 120 if SLOW else 8
    seen = {}
    sink = CountingSink(seen=seen).start()
    port = sink.port
    m = Moat(domains={DOMAIN: "relay smtp://127.0.0.1:%d" % port},
             extra="queue-retry-min 2\nqueue-retry-max 4\nqueue-scan-interval 2\n"
                   "relay-connect-timeout 2")
    load = None
    sink2 = None
    try:
        load = Load(m.port, nthreads=4, prefix="O", max_msgs=40).start()
        t.ok(load.wait_acked(40, 60), "before the outage: 40 messages accepted")
        load.stop()
        missing, _ = wait_all(sink, list(load.acked), 30)
        t.eq(len(missing), 0, "before the outage: all 40 delivered")

        sink.down()
        t0 = time.time()
        load2 = Load(m.port, nthreads=4, prefix="P", max_msgs=200).start()
        ok = load2.wait_acked(200, 60)
        load2.stop()
        t.ok(ok, "during the outage moatd still accepts mail (%d acked)" % load2.count())
        time.sleep(1)
        queued = len(dir_files(m, "queue"))
        t.ok(queued >= 1, "during the outage the messages wait in spool/queue (%d files)" % queued)
        t.ok(not any(k.startswith("P-") for k in sink.index()),
             "nothing reaches the stopped downstream")
        left = outage - (time.time() - t0)
        if left > 0:
            time.sleep(left)
        t.ok(m.proc.poll() is None, "moatd keeps running during the outage")
        sink2 = CountingSink(port=port, seen=seen).start()
        t1 = time.time()
        missing, seen = wait_all(sink2, list(load2.acked), 60 if not SLOW else 300)
        report(load2, missing, seen, "downstream outage of %d s" % outage)
        t.diag("the queue drained %.1f s after the downstream came back" % (time.time() - t1))
        t.ok(wait_empty(m, "queue", 30), "spool/queue is empty after the downstream is back")
        sanitizer_clean(m, "outage")
    finally:
        if load:
            load.stop()
        m.__exit__(None, None, None)
        sink.stop()
        if sink2:
            sink2.stop()


def count_files(d):
    try:
        return len(os.listdir(d))
    except FileNotFoundError:
        return 0


def smtp_source(port, sessions, count, timeout, size=4096):
    src = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    cmd = [src, "-s", str(sessions), "-m", str(count), "-l", str(size), "-f", "src@sender.test",
           "-t", "rcpt@%s" % DOMAIN, "127.0.0.1:%d" % port]
    t0 = time.time()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, err = r.returncode, (r.stdout + r.stderr)
    except subprocess.TimeoutExpired as e:
        rc, err = "timeout", str(e)
    return rc, err, time.time() - t0


def have_postfix_tools():
    return all(shutil.which(x) or os.path.exists("/usr/sbin/" + x) for x in ("smtp-source", "smtp-sink"))


def t_smoke_relay():
    n = 10000 if SLOW else 2000
    if not have_postfix_tools():
        skip("smtp-source -s 20 -m %d through moatd to smtp-sink" % n, "postfix (smtp-source, smtp-sink) not installed")
        return
    tmp = make_tmpdir("moat-smoke-")
    dump = os.path.join(tmp, "sink")
    os.mkdir(dump)
    os.chmod(dump, 0o777)
    sport = free_port()
    sink_bin = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    cmd = [sink_bin] + (["-u", "nobody"] if os.geteuid() == 0 else []) + \
        ["-d", os.path.join(dump, "%H%M%S."), "127.0.0.1:%d" % sport, "256"]
    sinkp = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    m = None
    try:
        t.ok(wait_port(sport), "smtp-sink is listening")
        m = Moat(domains={DOMAIN: "relay smtp://127.0.0.1:%d" % sport})
        t0 = time.time()
        rc, out, dt = smtp_source(m.port, 20, n, 600 if SLOW else 150)
        t.ok(rc == 0, "smtp-source -s 20 -m %d finished (%.1f s, %.0f msgs/s in)" % (n, dt, n / max(dt, 0.001)),
             "rc=%r\n%s" % (rc, out[-2000:]))
        end = time.time() + (600 if SLOW else 120)
        while time.time() < end and count_files(dump) < n:
            time.sleep(0.2)
        got = count_files(dump)
        t.eq(got, n, "all %d messages arrived at smtp-sink" % n)
        t.diag("end to end: %d messages in %.1f s (sanitizer build: not a benchmark)" % (got, time.time() - t0))
        t.ok(wait_empty(m, "queue", 30), "the queue is empty after the smoke load")
        sanitizer_clean(m, "smoke load")
    finally:
        if m is not None:
            m.__exit__(None, None, None)
        sinkp.terminate()
        try:
            sinkp.wait(10)
        except subprocess.TimeoutExpired:
            sinkp.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def t_smoke_store():
    n = 10000 if SLOW else 1000
    if not have_postfix_tools():
        skip("smtp-source -m %d into deliver store" % n, "postfix (smtp-source) not installed")
        return
    if not os.path.exists(MOAT):
        skip("smtp-source -m %d into deliver store" % n, "moat CLI not built")
        return
    m = Moat(domains={DOMAIN: "store"}, start=False)
    try:
        r = m.cli("user", "add", "rcpt@" + DOMAIN, input="secret-password\n")
        t.eq(r.returncode, 0, "moat user add rcpt@%s" % DOMAIN)
        if r.returncode != 0:
            t.diag(r.stderr)
        m.start()
        rc, out, dt = smtp_source(m.port, 20, n, 600 if SLOW else 150)
        t.ok(rc == 0, "smtp-source -s 20 -m %d into deliver store finished (%.1f s)" % (n, dt),
             "rc=%r\n%s" % (rc, out[-2000:]))
        end = time.time() + (300 if SLOW else 60)
        while time.time() < end and len(m.maildir_files("rcpt@" + DOMAIN)) < n:
            time.sleep(0.5)
        t.eq(len(m.maildir_files("rcpt@" + DOMAIN)), n, "%d files in the recipient's Maildir/new" % n)
        t.ok(wait_empty(m, "queue", 30), "the queue is empty after local delivery")
        sanitizer_clean(m, "store load")
    finally:
        m.__exit__(None, None, None)


def main():
    t0 = time.time()
    section("kill -9", t_kill9)
    section("downstream outage", t_downstream_outage)
    section("smoke relay", t_smoke_relay)
    section("smoke store", t_smoke_store)
    t.diag("durability tests took %.0f s%s" % (time.time() - t0, " (slow mode)" if SLOW else ""))
    t.done()


main()
