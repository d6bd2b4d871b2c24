#!/usr/bin/env python3
"""IMAP details found by Dovecot's imaptest scripts (test_imaptest.py),
checked here without ../shared: a mailbox name with '[' but no ']' (an
ATOM-CHAR), STORE +FLAGS NIL (the keyword NIL), UID SEARCH up to
4294967295, LSUB with % returning the \\Noselect parent of a subscribed
deeper mailbox, and SEARCH FROM finding an address written with
comments."""
import imaplib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import TAP, Moat, free_port  # noqa: E402

t = TAP()
MSGS = [b"From: <user-from (comment)@ (comment) domain.org>\r\nTo: a@example.test\r\nSubject: one\r\n\r\nbody\r\n",
        b"From: Real <other@domain.org>\r\nTo: a@example.test\r\nSubject: two\r\n\r\nbody\r\n"]

iport = free_port()
with Moat(extra="listen imap 127.0.0.1:%d\nauth-allow-plaintext yes\n" % iport) as m:
    m.cli("user", "add", "alice@example.test", input="alice-pw\n", check=True)
    c = imaplib.IMAP4("127.0.0.1", iport, timeout=30)
    c.login("alice@example.test", "alice-pw")
    for msg in MSGS:
        c.append("INBOX", None, None, msg)
    c.select("INBOX")

    typ, d = c._simple_command("SELECT", "a[b}")
    t.eq(typ, "NO", "SELECT a[b}: NO (no such mailbox), not BAD")
    typ, d = c._simple_command("LIST", '""', "a[b}%")
    t.eq(typ, "OK", "LIST with '[' in an atom pattern")
    c.select("INBOX")

    typ, d = c.store("1", "+FLAGS", "NIL")
    t.eq(typ, "OK", "STORE +FLAGS NIL")
    typ, d = c.fetch("1", "(FLAGS)")
    t.ok(typ == "OK" and b"NIL" in d[0].upper(), "the keyword NIL is set", d)

    typ, d = c.uid("SEARCH", "UID", "1:4294967295")
    t.ok(typ == "OK" and d[0].split() == [b"1", b"2"], "UID SEARCH UID 1:4294967295", d)
    typ, d = c.uid("SEARCH", "UID", "3:4294967295")
    t.ok(typ == "OK" and d[0].split() == [], "UID SEARCH UID 3:4294967295 is empty (unlike 3:*)", d)

    typ, d = c.search(None, "FROM", "user-from@domain.org")
    t.ok(typ == "OK" and d[0].split() == [b"1"], "SEARCH FROM finds an address written with comments", d)
    typ, d = c.search(None, "FROM", "real")
    t.ok(typ == "OK" and d[0].split() == [b"2"], "SEARCH FROM still finds the display name", d)

    for box in ("top", "top.mid", "top.mid.leaf"):
        c.create(box)
    c.subscribe("top.mid.leaf")
    typ, d = c.lsub('""', "top.%")
    t.ok(typ == "OK" and len(d) == 1 and d[0] is not None and b"\\Noselect" in d[0] and d[0].endswith(b'"top.mid"'),
         "LSUB top.%: the unsubscribed parent of a subscribed mailbox as \\Noselect", d)
    typ, d = c.lsub('""', "top.*")
    t.ok(typ == "OK" and len(d) == 1 and d[0] is not None and d[0].endswith(b'"top.mid.leaf"'),
         "LSUB top.*: only the subscribed mailbox", d)
    c.subscribe("top.mid")
    typ, d = c.lsub('""', "top.%")
    t.ok(typ == "OK" and len(d) == 1 and d[0] is not None and b"\\Noselect" not in d[0],
         "LSUB top.%: a subscribed parent comes once, without \\Noselect", d)
    c.logout()
t.done()
