#!/usr/bin/env python3
"""Operations: the event journal and `moat trace`.  A message the downstream
refuses twice with 451 and then accepts is traced by its queue id, its
Message-ID and its recipient address: connect, verdict, queued, deferred
(with the reason) twice, delivered, removed - in that order.  moat report
shows the destination's deferrals and success rate."""
import json
import os
import re
import smtplib
import time

from moattest import TAP, Moat, Sink

t = TAP()
MSG = (b"From: a@b.example\r\nTo: x@relay.test\r\nSubject: trace me\r\n"
       b"Message-ID: <trace-1@b.example>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nhello\r\n")

with Sink(replies={"data": "451 4.3.0 try again later"}) as sink:
    rules = None
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, start=False) as m:
        rules = os.path.join(m.tmp, "t.rules")
        with open(rules, "w") as f:
            f.write("body MOAT_T_HELLO /hello/\nscore MOAT_T_HELLO 0.5\n")
        m.write_conf("rules %s\nqueue-retry-min 1\nqueue-retry-max 2\n" % rules)
        m.start()
        s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
        code, resp = s.docmd("EHLO", "client.test")
        s.mail("a@b.example")
        s.rcpt("x@relay.test")
        code, resp = s.data(MSG)
        s.quit()
        mq = re.search(r"queued as (\S+)", resp.decode())
        qid = mq.group(1) if mq else "?"
        t.ok(code == 250 and mq, "accepted as %s" % qid)

        end = time.time() + 20
        while time.time() < end and len(re.findall(r"qid=%s event=deferred" % qid, m.log())) < 2:
            time.sleep(0.05)
        sink.replies = {}        # the third attempt gets 250
        t.eq(len(re.findall(r"qid=%s event=deferred" % qid, m.log())), 2, "deferred twice (451)")
        t.ok(sink.wait_messages(1, 20), "then delivered")
        t.ok(m.wait_log(r"qid=%s event=removed" % qid, 10), "and removed from the queue")
        time.sleep(1.5)          # the journal is written once a second

        r = m.cli("trace", qid)
        t.ok(r.returncode == 0, "moat trace QUEUEID", r.stderr)
        types = [l.split()[2] for l in r.stdout.splitlines() if len(l.split()) > 2]
        want = ["connect", "message", "verdict", "queued", "deferred", "deferred", "delivered",
                "removed"]
        t.ok(types == want, "every step, in order: %s" % " ".join(want), r.stdout)
        lines = r.stdout.splitlines()
        t.ok(any("try again later" in l for l in lines if " deferred " in l),
             "the deferral shows the reason", r.stdout)
        t.ok(any("attempts=3" in l for l in lines if " delivered " in l),
             "the delivery shows attempt 3", r.stdout)
        t.ok(any("action=accept" in l and "MOAT_T_HELLO" in l for l in lines if " verdict " in l),
             "the verdict shows the action and symbols", r.stdout)

        r2 = m.cli("trace", "<trace-1@b.example>")
        t.eq(r2.stdout, r.stdout, "moat trace MESSAGE-ID: the same events")
        r3 = m.cli("trace", "x@relay.test")
        t.eq(r3.stdout, r.stdout, "moat trace ADDRESS: the same events")
        r4 = m.cli("trace", "--json", qid)
        try:
            ev = json.loads(r4.stdout)
        except ValueError:
            ev = []
        t.eq([e.get("type") for e in ev], types, "moat trace --json")
        t.ok(ev and all(ev[i]["time"] <= ev[i + 1]["time"] for i in range(len(ev) - 1)),
             "--json: times ascending")
        r5 = m.cli("trace", "nobody@nowhere.test")
        t.ok(r5.returncode == 1 and "nothing" in r5.stderr, "an unknown address: exit 1", r5.stderr)
        r6 = m.cli("trace")
        t.eq(r6.returncode, 2, "moat trace without an argument: usage")

        r = m.cli("report", "--json", "--since", "1h")
        try:
            rep = json.loads(r.stdout)
        except ValueError:
            rep = {}
        d = [x for x in rep.get("destinations", []) if x["destination"].endswith(":%d" % sink.port)]
        t.ok(d and d[0]["delivered"] == 1 and d[0]["deferred"] == 2 and d[0]["success_rate"] == 100.0,
             "moat report: the destination delivered 1, deferred 2, 100% success", r.stdout + r.stderr)
        # a bounce: the DSN shows in the trace
        s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
        sink.replies = {"rcpt": {"gone@relay.test": "550 5.1.1 no such user"}}
        s.ehlo("client.test")
        s.mail("someone@relay.test")
        s.rcpt("gone@relay.test")
        code, resp = s.data(MSG.replace(b"trace-1", b"trace-2"))
        s.quit()
        mq = re.search(r"queued as (\S+)", resp.decode())
        qid2 = mq.group(1) if mq else "?"
        t.ok(m.wait_log(r"qid=%s event=dsn-sent" % qid2, 15), "a bounced message gets a DSN")
        time.sleep(1.5)
        r = m.cli("trace", "gone@relay.test")
        types2 = [l.split()[2] for l in r.stdout.splitlines() if len(l.split()) > 2]
        t.ok(types2[-3:] == ["bounced", "dsn", "removed"] and "dsn_qid=" in r.stdout and
             "5.1.1 no such user" in r.stdout, "trace: bounced, dsn (with its queue id), removed", r.stdout)
        r = m.cli("report", "--since", "yesterday")
        t.eq(r.returncode, 2, "moat report --since with a bad value: usage")
        r = m.cli("report", "--since", time.strftime("%Y-%m-%d"))
        t.ok(r.returncode == 0 and "delivery by destination" in r.stdout, "moat report --since DATE",
             r.stdout + r.stderr)
t.done()
