#!/usr/bin/env python3
"""test_queue_cli.py - `moat queue list | flush | delete`.

A message waits in the queue while the downstream is down (long retry
time, so only a flush can deliver it): `queue list` shows it with the
recipient's status and last reply (also as JSON), `queue flush` makes it
due and it is delivered once the downstream is up, `queue delete` removes
a queued message and its state file, refuses a message that is locked
(being delivered), and `queue flush` says so when moatd is not running.
"""
import fcntl
import json
import os
import smtplib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import TAP, Moat, Sink, free_port  # noqa: E402

t = TAP()
SLOW = "queue-retry-min 3600\nqueue-retry-max 7200\nqueue-scan-interval 1\n"


def send(m, sender, rcpts, subject):
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    s.sendmail(sender, rcpts, "Subject: %s\r\n\r\nbody\r\n" % subject)
    s.quit()


def wait_until(fn, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if fn():
            return True
        time.sleep(0.05)
    return bool(fn())


port = free_port()
with Moat(domains={"example.test": "relay smtp://127.0.0.1:%d" % port}, extra=SLOW) as m:
    r = m.cli("queue", "list")
    t.eq(r.returncode, 0, "list: empty queue exits 0")
    t.ok("empty" in r.stdout, "list: says the queue is empty", r.stdout)

    send(m, "alice@example.test", ["bob@example.test", "carol@example.test"], "first")
    send(m, "dave@example.test", ["erin@example.test"], "second")
    t.ok(wait_until(lambda: m.log().count("event=deferred") >= 3), "setup: messages deferred", m.log()[-2000:])
    # the state is written by a pool job after the attempt
    t.ok(wait_until(lambda: len(os.listdir(os.path.join(m.state, "spool", "state"))) >= 2),
         "setup: state files written")
    qids = m.queue_files()
    t.eq(len(qids), 2, "setup: two messages queued")

    r = m.cli("queue", "list")
    t.eq(r.returncode, 0, "list: exits 0")
    out = r.stdout
    t.ok(all(q in out for q in qids), "list: shows both queue ids", out)
    t.ok("<alice@example.test>" in out and "<bob@example.test> pending" in out,
         "list: sender and recipient with status", out)
    t.ok("Connection refused" in out, "list: shows the last reply", out)
    t.ok("2 message(s)" in out, "list: counts messages", out)

    r = m.cli("queue", "list", "--json")
    try:
        data = json.loads(r.stdout)
    except ValueError:
        data = None
    t.ok(isinstance(data, list) and len(data) == 2, "list --json: two messages", r.stdout)
    if data:
        first = [x for x in data if x["sender"] == "alice@example.test"]
        t.ok(first and [x["address"] for x in first[0]["recipients"]] == ["bob@example.test", "carol@example.test"],
             "list --json: recipients", data)
        t.ok(first and all(x["status"] == "pending" and x["attempts"] == 1 for x in first[0]["recipients"]),
             "list --json: status and attempts", data)

    r = m.cli("queue", "delete", "nonsense/../x")
    t.eq(r.returncode, 1, "delete: refuses a bad id")
    r = m.cli("queue", "delete", "0123456789ABCDEF00")
    t.eq(r.returncode, 1, "delete: unknown id fails")

    # a locked message (being delivered) is not deleted
    second = [q for q in qids if "dave@example.test" in open(os.path.join(m.state, "spool", "queue", q), "rb").read().decode("utf-8", "replace")][0]
    fd = os.open(os.path.join(m.state, "spool", "queue", second), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    r = m.cli("queue", "delete", second)
    t.eq(r.returncode, 1, "delete: refuses a locked message")
    t.ok("delivered right now" in r.stderr, "delete: says why", r.stderr)
    t.ok(second in m.queue_files(), "delete: locked message kept")
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)

    r = m.cli("queue", "delete", second)
    t.ok(r.returncode == 0, "delete: removes a queued message", r.stderr)
    t.ok(second not in m.queue_files(), "delete: queue file gone")
    t.ok(not os.path.exists(os.path.join(m.state, "spool", "state", second)), "delete: state file gone")

    with Sink(port=port) as sink:
        time.sleep(2.5)
        t.eq(len(sink.messages), 0, "flush: nothing is retried before its time")
        r = m.cli("queue", "flush")
        t.ok(r.returncode == 0, "flush: exits 0 with moatd running", r.stderr)
        t.ok("ok" in r.stdout, "flush: daemon answered ok", r.stdout)
        t.ok(sink.wait_messages(1, 20), "flush: the deferred message is delivered now", m.log()[-2000:])
        t.ok(wait_until(lambda: m.queue_files() == []), "flush: queue empty")
        time.sleep(1.0)
        t.eq(len(sink.messages), 1, "flush: the deleted message was not delivered")
        t.eq(sorted(sink.messages[0]["rcpts"]), ["bob@example.test", "carol@example.test"],
             "flush: the remaining message went to both recipients")
    r = m.cli("queue", "list")
    t.ok("empty" in r.stdout, "list: empty again", r.stdout)

    m.stop()
    r = m.cli("queue", "flush")
    t.eq(r.returncode, 1, "flush: exit 1 when moatd is not running")
    t.ok("not running" in r.stderr, "flush: says moatd is not running", r.stderr)
    r = m.cli("queue", "bogus")
    t.eq(r.returncode, 2, "usage error exits 2")

t.done()
