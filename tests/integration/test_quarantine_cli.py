#!/usr/bin/env python3
"""test_quarantine_cli.py - `moat quarantine ...` against a running moatd.

Messages go into the quarantine with the `import` subcommand (the store's
C API, as the filter engine's quarantine action will call it).  Then:
list (table, JSON, filters), show (decoded headers, symbols, preview;
--raw), release (delivered to the Sink exactly once with the original
envelope and an X-Moat-Released header; --rcpt only that recipient),
delete, --learn-spam/--learn-ham (moat bayes stats counts), bulk --all with
the --yes confirmation, a release while moatd is down (delivered when it
starts), purge, authorisation (another user is refused), and kill -9 of
imports in flight (no index row without its file; `check` re-indexes the
files a kill left without a row).
"""
import json
import os
import pwd
import random
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import TAP, Moat, Sink, MOAT  # noqa: E402

t = TAP()
if not os.path.exists(MOAT):
    t.skip_all("moat not built")

MSG_A = ("From: =?UTF-8?B?U3DDpG1tZXI=?= <spam@bad.example>\n"
         "Subject: Cheap =?UTF-8?Q?p=C3=AFlls?=\n"
         "Message-ID: <a1@bad.example>\n\n"
         "Buy cheap pills now, best offer, click here.\n")
MSG_B = ("From: Newsletter <news@shop.example>\nSubject: Weekly sale\n"
         "Message-ID: <b1@shop.example>\n\nSale sale sale, discount viagra casino.\n")
MSG_C = ("From: Colleague <colleague@partner.example>\nSubject: Meeting notes\n"
         "Message-ID: <c1@partner.example>\n\nHere are the notes from the meeting on Tuesday.\n")


def wait_until(fn, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if fn():
            return True
        time.sleep(0.05)
    return bool(fn())


def qfile(m, name, text):
    p = os.path.join(m.tmp, name)
    with open(p, "w") as f:
        f.write(text)
    return p


def imp(m, path, sender, rcpts, score, symbols):
    args = ["quarantine", "import", path, "--from", sender, "--score", str(score),
            "--symbols", symbols, "--client", "192.0.2.9"]
    for r in rcpts:
        args += ["--rcpt", r]
    r = m.cli(*args)
    t.ok(r.returncode == 0, "import %s" % os.path.basename(path), r.stderr)
    return r.stdout.strip()


def qlist(m, *args):
    r = m.cli("quarantine", "list", "--json", *args)
    try:
        return json.loads(r.stdout)
    except ValueError:
        t.diag(r.stdout + r.stderr)
        return []


def bayes_counts(m):
    r = m.cli("bayes", "stats")
    d = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition(" ")
        d[k] = v
    return int(d.get("spam", "0") or 0), int(d.get("ham", "0") or 0)


with Sink() as sink:
    dom = {"example.test": "relay smtp://127.0.0.1:%d" % sink.port}
    with Moat(domains=dom, extra="queue-scan-interval 2\n") as m:
        a = imp(m, qfile(m, "a.eml", MSG_A), "spam@bad.example",
                ["bob@example.test", "carol@example.test"], 12.5, "BAYES_99(5),PILLS(7.5)")
        b = imp(m, qfile(m, "b.eml", MSG_B), "news@shop.example", ["bob@example.test"], 7.0, "URIBL(7)")
        c = imp(m, qfile(m, "c.eml", MSG_C), "colleague@partner.example", ["dave@example.test"], 6.2,
                "BAYES_80(2),RDNS_NONE(4.2)")
        t.ok(all(len(x) == 18 for x in (a, b, c)), "import prints the quarantine ids")
        t.eq(m.queue_files(), [], "nothing went into the delivery queue")

        # ---- list ----
        r = m.cli("quarantine", "list")
        t.eq(r.returncode, 0, "list exits 0")
        lines = r.stdout.splitlines()
        t.ok(len(lines) == 4 and lines[0].startswith("ID") and "SUBJECT" in lines[0], "list: header + 3 rows",
             r.stdout)
        t.ok(any(a in l and "12.5" in l and "Cheap pïlls" in l and "+1" in l for l in lines),
             "list: id, score, decoded subject, recipient count", r.stdout)
        cols = [l.index("SCORE") if "SCORE" in l else None for l in lines[:1]]
        t.ok(all(l[cols[0] - 2:cols[0] + 5].strip() != "" for l in lines[1:]), "list: aligned columns", r.stdout)
        js = qlist(m)
        t.eq(len(js), 3, "list --json: three entries")
        ea = [e for e in js if e["id"] == a][0] if js else {}
        t.eq(ea.get("from"), "Spämmer <spam@bad.example>", "json: From decoded")
        t.eq([x["addr"] for x in ea.get("rcpts", [])], ["bob@example.test", "carol@example.test"],
             "json: both recipients (stored once)")
        t.eq(ea.get("symbols"), "BAYES_99(5),PILLS(7.5)", "json: symbols")
        t.eq(sorted(e["id"] for e in qlist(m, "--rcpt", "BOB@example.test")), sorted([a, b]), "list --rcpt")
        t.eq([e["id"] for e in qlist(m, "--from", "partner.example")], [c], "list --from")
        t.eq([e["id"] for e in qlist(m, "--min-score", "10")], [a], "list --min-score")
        t.eq([e["id"] for e in qlist(m, "--symbol", "URIBL")], [b], "list --symbol")
        t.eq(len(qlist(m, "--limit", "2")), 2, "list --limit")
        t.eq(len(qlist(m, "--since", "1h")), 3, "list --since 1h")
        t.eq(len(qlist(m, "--until", "2001-01-01")), 0, "list --until a date")
        r = m.cli("quarantine", "list", "--since", "yesterday-ish")
        t.eq(r.returncode, 2, "list: a bad time is a usage error")

        # ---- show ----
        r = m.cli("quarantine", "show", a)
        t.ok(r.returncode == 0 and "Symbols:    BAYES_99(5),PILLS(7.5)" in r.stdout and
             "Subject:    Cheap pïlls" in r.stdout and "Buy cheap pills now" in r.stdout and
             "--- headers ---" in r.stdout, "show: verdict, decoded subject, headers, preview", r.stdout)
        r = subprocess.run([MOAT, "-c", m.conf, "quarantine", "show", a, "--raw"], capture_output=True)
        t.eq(r.stdout, MSG_A.replace("\n", "\r\n").encode(), "show --raw: the message as stored")
        r = m.cli("quarantine", "show", "0123456789ABCDEF01")
        t.ok(r.returncode == 1 and "no such message" in r.stderr, "show: unknown id", r.stderr)

        # ---- release one recipient, then the rest ----
        r = m.cli("quarantine", "release", a, "--rcpt", "carol@example.test")
        t.ok(r.returncode == 0 and "released" in r.stdout, "release --rcpt", r.stdout + r.stderr)
        t.ok(sink.wait_messages(1), "the release is delivered", m.log()[-1500:])
        msg = sink.messages[0] if sink.messages else {}
        t.eq(msg.get("mail_from"), "spam@bad.example", "delivered with the original sender")
        t.eq(msg.get("rcpts"), ["carol@example.test"], "delivered to that recipient only")
        data = msg.get("data", b"")
        t.ok(data.startswith(b"X-Moat-Released: ") and b" by " in data.split(b"\r\n")[0], "X-Moat-Released first",
             data[:200])
        t.ok(MSG_A.replace("\n", "\r\n").encode() in data, "the original message follows, unchanged")
        r = m.cli("quarantine", "release", a, "--rcpt", "carol@example.test")
        t.eq(r.returncode, 1, "releasing carol again fails")
        r = m.cli("quarantine", "release", a)
        t.eq(r.returncode, 0, "release the rest")
        t.ok(sink.wait_messages(2), "delivered", m.log()[-3000:])
        t.eq(sink.messages[1]["rcpts"] if len(sink.messages) > 1 else None, ["bob@example.test"],
             "the rest: bob only")
        r = m.cli("quarantine", "release", a)
        t.eq(r.returncode, 1, "release twice is refused")
        time.sleep(2.5)
        t.eq(len(sink.messages), 2, "each recipient got it exactly once")
        t.ok(a not in [e["id"] for e in qlist(m)], "a released message leaves the list")
        t.ok(any(e["id"] == a and e["state"] == "released" for e in qlist(m, "--all")), "list --all shows it released")

        # ---- learn ----
        s0, h0 = bayes_counts(m)
        r = m.cli("quarantine", "delete", b, "--learn-spam")
        t.ok(r.returncode == 0 and "deleted" in r.stdout and "learned as spam" in r.stdout,
             "delete --learn-spam", r.stdout + r.stderr)
        s1, h1 = bayes_counts(m)
        t.eq((s1, h1), (s0 + 1, h0), "--learn-spam: bayes spam count +1")
        t.ok(b not in [e["id"] for e in qlist(m)], "deleted")
        r = m.cli("quarantine", "show", b, "--raw")
        t.eq(r.returncode, 1, "the deleted message's file is gone")
        r = m.cli("quarantine", "release", c, "--learn-ham")
        t.ok(r.returncode == 0 and "learned as ham" in r.stdout, "release --learn-ham", r.stdout + r.stderr)
        s2, h2 = bayes_counts(m)
        t.eq((s2, h2), (s1, h1 + 1), "--learn-ham: bayes ham count +1")
        t.ok(sink.wait_messages(3), "released message delivered", m.log()[-3000:])
        t.eq(sink.messages[2]["rcpts"] if len(sink.messages) > 2 else None, ["dave@example.test"], "to dave")

        # ---- bulk ----
        ids = [imp(m, qfile(m, "d%d.eml" % i, MSG_B.replace("b1@", "d%d@" % i)), "bulk@bulk.example",
                   ["erin@example.test"], 8, "BULK(8)") for i in range(3)]
        r = m.cli("quarantine", "release", "--all", "--from", "bulk.example", input="")
        t.ok(r.returncode == 1 and "--yes" in r.stderr, "release --all without --yes: refused (no terminal)",
             r.stderr)
        r = m.cli("quarantine", "release", "--all")
        t.eq(r.returncode, 2, "release --all needs a filter")
        r = m.cli("quarantine", "delete", "--all", "--yes")
        t.eq(r.returncode, 2, "delete --all needs a filter")
        r = m.cli("quarantine", "release", "--all", "--from", "bulk.example", "--yes")
        t.ok(r.returncode == 0 and r.stdout.count("released") == 3, "release --all --from --yes", r.stdout)
        t.ok(sink.wait_messages(6), "three delivered", m.log()[-3000:])
        time.sleep(1)
        t.eq(len(sink.messages), 6, "and no more")

        # ---- authorisation ----
        other = None
        for name in ("daemon", "bin", "sys"):
            try:
                pw = pwd.getpwnam(name)
                other = pw
                break
            except KeyError:
                pass
        if os.geteuid() == 0 and other is not None:
            def drop():
                os.setgid(other.pw_gid)
                os.setuid(other.pw_uid)
            r = subprocess.run([MOAT, "-c", m.conf, "quarantine", "list"], capture_output=True, text=True,
                               preexec_fn=drop)
            t.ok(r.returncode == 1 and "permission denied" in r.stderr and "root or" in r.stderr,
                 "another user is refused", r.stderr)
        else:
            t.ok(True, "# SKIP authorisation (not root)")

        # ---- release while moatd is down ----
        d = imp(m, qfile(m, "e.eml", MSG_C.replace("c1@", "e1@")), "x@partner.example", ["frank@example.test"],
                6, "X(6)")
        m.stop()
        r = m.cli("quarantine", "release", d)
        t.ok(r.returncode == 0 and "moatd is not running; the message will be delivered when it starts" in r.stdout,
             "release with moatd down: says so", r.stdout + r.stderr)
        m.start()
        t.ok(sink.wait_messages(7), "delivered once moatd starts", m.log()[-3000:])
        t.eq(sink.messages[6]["rcpts"] if len(sink.messages) > 6 else None, ["frank@example.test"], "to frank")

        # ---- kill -9 during imports ----
        big = qfile(m, "big.eml", "Subject: big\n\n" + ("x" * 70 + "\n") * 20000)
        random.seed(7)
        for i in range(25):
            p = subprocess.Popen([MOAT, "-c", m.conf, "quarantine", "import", big, "--rcpt", "kill@example.test",
                                  "--from", "k@example.org", "--score", "9"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(random.uniform(0.01, 0.07))
            p.send_signal(signal.SIGKILL)
            p.wait()
        qdir = os.path.join(m.state, "quarantine", "msg")
        rows = qlist(m, "--rcpt", "kill@example.test")
        files = set(os.listdir(qdir))
        t.ok(all(e["id"] in files for e in rows), "after kill -9: every index row has its file (%d rows)" % len(rows))
        r = m.cli("quarantine", "check")
        t.eq(r.returncode, 0, "check runs: " + r.stdout.strip())
        rows = qlist(m, "--all")
        ids_in_index = set(e["id"] for e in rows)
        t.ok(set(os.listdir(qdir)) <= ids_in_index, "after check: every file has an index row")
        t.ok(not os.listdir(os.path.join(m.state, "quarantine", "tmp")), "no temporary files left")
        # an import never passes through the delivery queue: a kill leaves
        # it quarantined or never written, not delivered
        t.diag("kill -9 imports: %d of 25 got into the quarantine" % len(
            [e for e in rows if "kill@example.test" in [r["addr"] for r in e["rcpts"]]]))
        t.eq(m.queue_files(), [], "after kill -9: nothing in the delivery queue")

        # ---- purge ----
        r = m.cli("quarantine", "purge", "--max-size", "1")
        t.ok(r.returncode == 0 and "purged" in r.stdout, "purge --max-size", r.stdout + r.stderr)
        t.eq(os.listdir(qdir), [], "purge: every file gone")
        r = m.cli("quarantine", "list")
        t.ok("empty" in r.stdout, "list: empty after the purge", r.stdout)
        time.sleep(1)
        t.eq(len(sink.messages), 7, "in all, every release was delivered exactly once")

t.done()
