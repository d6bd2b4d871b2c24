#!/usr/bin/env python3
"""Junk training over IMAP: moving (or copying) a message into Junk learns
it as spam through moatd's Bayes, moving it out of Junk learns it as ham
(undoing the spam learning), moving from Junk to Trash learns nothing, and
the same message is not learned twice (`moat bayes stats` counts)."""
import imaplib
import os
import smtplib
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import TAP, Moat, free_port  # noqa: E402

t = TAP()
MSG = ("From: Sender <sender@remote.test>\r\nTo: alice@example.test\r\n"
       "Subject: cheap pills %d\r\nMessage-ID: <junk%d@remote.test>\r\n\r\n"
       "buy cheap pills now, limited offer number %d\r\n")


def counts(m):
    r = m.cli("bayes", "stats")
    d = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition(" ")
        d[k] = v
    return int(d.get("spam", "0") or 0), int(d.get("ham", "0") or 0)


def wait_counts(m, want, timeout=10):
    import time
    end = time.time() + timeout
    got = counts(m)
    while got != want and time.time() < end:
        time.sleep(0.1)
        got = counts(m)
    return got


iport = free_port()
with Moat(extra="listen imap 127.0.0.1:%d\nauth-allow-plaintext yes\n" % iport) as m:
    m.cli("user", "add", "alice@example.test", input="alice-pw\n", check=True)
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    for i in range(3):
        s.sendmail("sender@remote.test", ["alice@example.test"], MSG % (i, i, i))
    s.quit()
    import time
    end = time.time() + 20       # delivery is asynchronous: wait for the three files
    while len(m.maildir_files("alice@example.test", "new")) + \
            len(m.maildir_files("alice@example.test", "cur")) < 3 and time.time() < end:
        time.sleep(0.1)
    c = imaplib.IMAP4("127.0.0.1", iport, timeout=30)
    c.login("alice@example.test", "alice-pw")
    c.select("INBOX")
    typ, d = c.search(None, "ALL")
    t.eq(len(d[0].split()), 3, "three messages in INBOX")
    t.eq(counts(m), (0, 0), "nothing learned yet")

    typ, d = c.uid("MOVE", "1", "Junk")
    t.eq(typ, "OK", "UID MOVE 1 Junk")
    t.eq(wait_counts(m, (1, 0)), (1, 0), "moved into Junk: learned as spam")
    t.ok(m.wait_log(r"event=junk-learn user=alice@example.test class=spam .*learned=1") is not None,
         "logged as junk-learn class=spam")

    typ, d = c.uid("COPY", "2", "Junk")
    t.eq(wait_counts(m, (2, 0)), (2, 0), "copied into Junk: learned as spam too")

    c.select("Junk")
    typ, d = c.uid("SEARCH", None, "ALL")
    juids = d[0].split()
    t.eq(len(juids), 2, "two messages in Junk")
    typ, d = c.uid("COPY", juids[0].decode(), "Junk")
    t.eq(wait_counts(m, (2, 0)), (2, 0), "Junk to Junk: nothing learned")

    typ, d = c.uid("MOVE", juids[0].decode(), "INBOX")
    t.eq(typ, "OK", "MOVE out of Junk back to INBOX")
    t.eq(wait_counts(m, (1, 1)), (1, 1), "moved out of Junk: relearned as ham (spam undone)")

    typ, d = c.uid("MOVE", juids[1].decode(), "Trash")
    t.eq(wait_counts(m, (1, 1)), (1, 1), "Junk to Trash: not learned as ham")

    c.select("INBOX")
    typ, d = c.uid("SEARCH", None, "ALL")
    uids = d[0].split()
    # the message learned as ham (back from Junk) goes to Junk again: relearn
    typ, d = c.uid("COPY", b",".join(uids).decode(), "Junk")
    st = wait_counts(m, (3, 0))
    t.eq(st, (3, 0), "all INBOX messages copied to Junk: each counted once as spam")
    typ, d = c.uid("COPY", b",".join(uids).decode(), "Junk")
    t.eq(wait_counts(m, (3, 0)), (3, 0), "the same messages again: refused as already learned")
    t.ok(m.wait_log(r"event=junk-learn .*learned=0 already=3") is not None, "logged as already learned")
    c.logout()

# bayes no: no learning
iport = free_port()
with Moat(extra="listen imap 127.0.0.1:%d\nauth-allow-plaintext yes\nbayes no\n" % iport) as m:
    m.cli("user", "add", "alice@example.test", input="alice-pw\n", check=True)
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    s.sendmail("sender@remote.test", ["alice@example.test"], MSG % (9, 9, 9))
    s.quit()
    c = imaplib.IMAP4("127.0.0.1", iport, timeout=30)
    c.login("alice@example.test", "alice-pw")
    c.select("INBOX")
    typ, d = c.uid("MOVE", "1", "Junk")
    t.eq(typ, "OK", "bayes no: MOVE to Junk works")
    t.ok("event=junk-learn" not in m.log(), "bayes no: nothing learned")
    c.logout()
# tagged spam is delivered to Junk (store-spam-to-junk, default yes)
from moattest import SRCDIR  # noqa: E402
RULES = os.path.join(SRCDIR, "rules")
FEE = open(os.path.join(SRCDIR, "tests", "corpus", "rules", "MOAT_ADVANCE_FEE.eml"), "rb").read()
HAM = ("From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\nSubject: lunch tomorrow\r\n"
       "Message-ID: <lunch@remote.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"
       "See you at noon at the usual place.\r\n")


def boxcounts(iport):
    c = imaplib.IMAP4("127.0.0.1", iport, timeout=30)
    c.login("alice@example.test", "alice-pw")
    n = {}
    for b in ("INBOX", "Junk"):
        typ, d = c.select(b, readonly=True)
        n[b] = int(d[0]) if typ == "OK" else None
    c.logout()
    return n


for junk in ("yes", "no"):
    iport = free_port()
    with Moat(extra="listen imap 127.0.0.1:%d\nauth-allow-plaintext yes\nrules %s\naction tag 1.5\n"
              "action reject 100\nstore-spam-to-junk %s\n" % (iport, RULES, junk)) as m:
        m.cli("user", "add", "alice@example.test", input="alice-pw\n", check=True)
        s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
        s.sendmail("sender@remote.test", ["alice@example.test"], FEE)
        s.sendmail("sender@remote.test", ["alice@example.test"], HAM)
        s.quit()
        import time
        end = time.time() + 15
        n = boxcounts(iport)
        while sum(v or 0 for v in n.values()) < 2 and time.time() < end:
            time.sleep(0.2)
            n = boxcounts(iport)
        want = {"INBOX": 1, "Junk": 1} if junk == "yes" else {"INBOX": 2, "Junk": 0}
        t.eq(n, want, "store-spam-to-junk %s: tagged spam in %s, ham in INBOX" %
             (junk, "Junk" if junk == "yes" else "INBOX"))
        if junk == "yes":
            # the user deleted Junk: the next spam recreates it
            c = imaplib.IMAP4("127.0.0.1", iport, timeout=30)
            c.login("alice@example.test", "alice-pw")
            t.eq(c.delete("Junk")[0], "OK", "DELETE Junk")
            c.logout()
            s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
            s.sendmail("sender@remote.test", ["alice@example.test"], FEE.replace(b"Subject:", b"X-N: 2\r\nSubject:", 1))
            s.quit()
            end = time.time() + 15
            n = boxcounts(iport)
            while n.get("Junk") != 1 and time.time() < end:
                time.sleep(0.2)
                n = boxcounts(iport)
            t.eq(n, {"INBOX": 1, "Junk": 1}, "a deleted Junk folder is made again for the next spam")
t.done()
