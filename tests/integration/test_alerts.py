#!/usr/bin/env python3
"""Operations: alerts.  With the downstream down, the queue passes
alert-queue-size: exactly one alert mail reaches the postmaster's mailbox
(deliver store) and exactly one webhook POST reaches a test HTTP listener,
with one crit log line; the alert stays silent while the condition holds.
When the downstream comes back and the queue drains: exactly one recovery
notice of each kind.  Bad alert-webhook values are config errors."""
import http.server
import json
import os
import re
import shutil
import signal
import socket
import smtplib
import subprocess
import threading
import time
import urllib.request

from moattest import TAP, Moat, Sink, MOATD, free_port, make_tmpdir
import promparse

t = TAP()
posts = []


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        posts.append((self.path, self.headers.get("Content-Type"), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
threading.Thread(target=hook.serve_forever, daemon=True).start()
sink_port = free_port()          # nothing listens there until the recovery
hport = free_port()


def get(path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (hport, path), timeout=10) as r:
        return r.read().decode()


def pm_mails(m):
    out = []
    for p in m.maildir_files("pm@local.test"):
        with open(p, "rb") as f:
            out.append(f.read().decode("utf-8", "replace"))
    return out


def wait(cond, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink_port, "local.test": "store"},
          start=False) as m:
    m.write_conf("\n".join([
        "postmaster pm@local.test", "queue-retry-min 1", "queue-retry-max 2",
        "listen http 127.0.0.1:%d" % hport,
        "alert-interval 1", "alert-queue-size 5", "alert-email yes",
        "alert-webhook http://127.0.0.1:%d/hooks/moat?x=1" % hook.server_address[1]]))
    m.cli("user", "add", "pm@local.test", input="pm-password\n", check=True)
    m.start()
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    for i in range(7):
        s.sendmail("a@b.example", ["x@relay.test"], b"Subject: %d\r\n\r\nbody\r\n" % i)
    s.quit()

    t.ok(wait(lambda: len(posts) >= 1, 20), "a webhook POST arrives when the queue passes 5")
    t.ok(wait(lambda: len(pm_mails(m)) >= 1, 20), "an alert mail arrives in the postmaster's mailbox")
    time.sleep(3)                # the condition holds: no more notices
    t.eq(len(posts), 1, "exactly one webhook POST while the condition holds")
    mails = pm_mails(m)
    t.eq(len(mails), 1, "exactly one alert mail")
    if posts:
        path, ctype, body = posts[0]
        try:
            j = json.loads(body)
        except ValueError:
            j = {}
        t.eq((path, ctype), ("/hooks/moat?x=1", "application/json"), "POSTed to the URL's path, JSON")
        t.ok(j.get("alert") == "queue-size" and j.get("status") == "firing" and j.get("value", 0) > 5
             and j.get("threshold") == 5 and j.get("host") == "mx.moat.test", "the webhook body", body)
    if mails:
        t.ok(re.search(r"(?m)^Subject: \[moat\] ALERT queue-size on mx\.moat\.test", mails[0]) and
             "Auto-Submitted: auto-generated" in mails[0], "the alert mail", mails[0][:800])
    t.eq(len(re.findall(r"crit: alert event=alert name=queue-size", m.log())), 1,
         "one crit log line")
    fams = promparse.parse(get("/metrics"))
    t.eq((promparse.value(fams, "moat_alert_firing", alert="queue-size"),
          promparse.value(fams, "moat_alerts_total", alert="queue-size")), (1, 1),
         "moat_alert_firing{alert=queue-size} 1, moat_alerts_total 1")
    t.eq(promparse.value(fams, "moat_messages_total", action="accept"), 7,
         "without filters every queued message counts as accept")
    t.ok(promparse.value(fams, "moat_queue_messages") >= 7 and
         promparse.total(fams, "moat_delivery_total", result="deferred") >= 7,
         "the queue and the deferrals show in /metrics")
    st = json.loads(get("/api/status"))
    t.eq(st.get("alerts"), ["queue-size"], "/api/status lists the raised alert")
    q = {}
    end = time.time() + 15
    while time.time() < end and not q.get("updated"):
        q = json.loads(get("/api/queue"))
        time.sleep(0.5)
    relay_msgs = [x for x in q.get("messages", []) if x.get("rcpts") == ["x@relay.test"]]
    t.eq(len(relay_msgs), 7, "/api/queue lists the 7 waiting messages")
    r = m.cli("status")
    t.ok(re.search(r"alerts\s+queue-size", r.stdout) and re.search(r"queue\s+\d+ messages", r.stdout),
         "moat status shows the raised alert and the queue", r.stdout + r.stderr)

    with Sink(port=sink_port) as sink:
        t.ok(sink.wait_messages(7, 30), "the downstream is back: the queue drains")
        t.ok(wait(lambda: len(posts) >= 2, 20), "a recovery webhook POST arrives")
        t.ok(wait(lambda: len(pm_mails(m)) >= 2, 20), "a recovery mail arrives")
        time.sleep(3)
        t.eq(len(posts), 2, "exactly one recovery POST")
        t.eq(len(pm_mails(m)), 2, "exactly one recovery mail")
        if len(posts) >= 2:
            j = json.loads(posts[1][2])
            t.ok(j.get("alert") == "queue-size" and j.get("status") == "resolved",
                 "the recovery webhook body", posts[1][2])
        rec = [x for x in pm_mails(m) if "RECOVERED" in x]
        t.ok(len(rec) == 1 and re.search(r"(?m)^Subject: \[moat\] RECOVERED queue-size", rec[0]),
             "the recovery mail", rec[0][:600] if rec else pm_mails(m))
        t.eq(len(re.findall(r"crit: alert event=recovered name=queue-size", m.log())), 1,
             "one crit recovery line")
        r = m.cli("status")
        t.ok(r.returncode == 0 and re.search(r"alerts\s+none", r.stdout), "moat status: no alert raised",
             r.stdout + r.stderr)

# more conditions: free disk below the threshold, a worker that died; the
# webhook to an IPv6 address when the host has ::1
posts6 = []


class Hook6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


class H6(Hook):
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        posts6.append((self.headers.get("Host"), json.loads(self.rfile.read(n))))
        self.send_response(200)
        self.end_headers()


try:
    hook6 = Hook6(("::1", 0), H6)
    threading.Thread(target=hook6.serve_forever, daemon=True).start()
except OSError:
    hook6 = None
dead = free_port()
with Moat(domains={"local.test": "store", "relay.test": "relay smtp://127.0.0.1:%d" % dead},
          start=False) as m:
    # a message waits in the queue from an earlier run
    m.write_conf("queue-retry-min 60")
    m.start()
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    s.sendmail("a@b.example", ["x@relay.test"], b"Subject: old\r\n\r\nbody\r\n")
    s.quit()
    m.stop()
    time.sleep(1.2)
    lines = ["queue-retry-min 60", "alert-interval 1", "alert-disk-free 1000000G",
             "alert-queue-age 1", "alert-worker-restarts 1", "listen http 127.0.0.1:%d" % hport]
    if hook6:
        lines.append("alert-webhook http://[::1]:%d/v6" % hook6.server_address[1])
    else:
        lines.append("alert-webhook http://127.0.0.1:%d/v4" % hook.server_address[1])
        del posts[:]
    m.write_conf("\n".join(lines))
    m.start()

    def hooks():
        return [j for h, j in posts6] if hook6 else [json.loads(b) for p, c, b in posts]

    def names(j):
        return sorted(a["alert"] for a in j.get("alerts", []))
    t.ok(m.wait_log(r"crit: alert event=alert name=disk-free value=\d+ threshold=1073741824000000", 20),
         "alert-disk-free: raised when less is free")
    t.ok(m.wait_log(r"crit: alert event=alert name=queue-age", 5), "alert-queue-age: raised")
    t.ok(wait(lambda: hooks(), 10) and names(hooks()[0]) == ["disk-free", "queue-age"],
         "two conditions at one check: one webhook POST listing both", hooks())
    if hook6:
        t.eq(posts6[0][0], "[::1]:%d" % hook6.server_address[1], "the webhook to [::1] (Host header)")
    else:
        t.ok(True, "# skip no ::1")
    t.ok(not re.search(r"name=worker-restarts", m.log()), "no worker restart yet")
    w = m.worker_pids()
    if w:
        os.kill(w[0], signal.SIGKILL)
    t.ok(m.wait_log(r"crit: alert event=alert name=worker-restarts value=1 threshold=1", 20),
         "alert-worker-restarts: the restarted worker raises it")
    t.ok(wait(lambda: len(hooks()) >= 2, 10) and names(hooks()[1]) == ["worker-restarts"],
         "the new worker raises only what is new (the state is kept in the state-dir)", hooks())
    fams = promparse.parse(get("/metrics"))
    t.eq(promparse.value(fams, "moat_worker_restarts_total"), 1, "moat_worker_restarts_total 1")
    t.eq(promparse.value(fams, "moat_alert_firing", alert="disk-free"), 1,
         "moat_alert_firing{alert=disk-free} 1 in the new worker")
    before = m.log().count("worker event=started")
    m.proc.send_signal(signal.SIGHUP)
    t.ok(wait(lambda: m.log().count("worker event=started") > before, 10), "reload")
    time.sleep(3)
    t.eq(len(hooks()), 2, "after the reload: nothing raised again")
    t.eq(len(re.findall(r"crit: alert event=alert name=disk-free", m.log())), 1,
         "one disk-free log line in all")

# the deferral rate over the last checks, once there were enough attempts
with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % free_port()}, start=False) as m:
    m.write_conf("alert-interval 1\nalert-deferral-rate 50\nalert-deferral-min 3\n"
                 "queue-retry-min 1\nqueue-retry-max 1\n")
    m.start()
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    s.sendmail("a@b.example", ["x@relay.test"], b"Subject: d\r\n\r\nbody\r\n")
    s.quit()
    t.ok(m.wait_log(r"crit: alert event=alert name=deferral-rate value=100 threshold=50", 20),
         "alert-deferral-rate: every attempt deferred")
    t.eq(len(re.findall(r"name=deferral-rate", m.log())), 1, "raised once")
hook.shutdown()
if hook6:
    hook6.shutdown()

# config errors
tmp = make_tmpdir()
conf = os.path.join(tmp, "moat.conf")
for line, want in (("alert-webhook https://127.0.0.1/x", "not an http:// URL"),
                   ("alert-webhook http://hooks.example.com/x", "must be an IP address"),
                   ("alert-webhook http:///x", "no host"),
                   ("alert-queue-size -1", "alert-queue-size"),
                   ("http-token-file /nonexistent/token", "cannot read"),
                   ("listen http 127.0.0.1:9 tls=starttls", "do not apply")):
    with open(conf, "w") as f:
        f.write("state-dir %s\n%s\n" % (tmp, line))
    r = subprocess.run([MOATD, "-n", "-c", conf], capture_output=True, text=True)
    t.ok(r.returncode != 0 and ("%s:2:" % conf) in r.stderr and want in r.stderr,
         "config error: %s" % line, r.stderr)
shutil.rmtree(tmp, ignore_errors=True)
t.done()
