#!/usr/bin/env python3
"""IMAP keywords (RFC 3501 flag-keyword): STORE/APPEND/COPY keep them,
FLAGS and PERMANENTFLAGS (with \\*) announce them, other sessions learn of
new ones, SEARCH KEYWORD/UNKEYWORD find them, 26 per folder (then NO
[LIMIT]); stored as Dovecot does (info letters a..z named in
dovecot-keywords), so a Maildir moves between moat and Dovecot."""
import glob
import imaplib
import os
import re
import smtplib
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import TAP, Moat, free_port  # noqa: E402

t = TAP()
MSG = ("From: s@remote.test\r\nTo: alice@example.test\r\nSubject: kw %d\r\n"
       "Message-ID: <kw%d@remote.test>\r\n\r\nbody %d\r\n")


def flags_of(c, uid):
    typ, d = c.uid("FETCH", str(uid), "(FLAGS)")
    m = re.search(rb"FLAGS \(([^)]*)\)", d[0] if isinstance(d[0], bytes) else d[0][0])
    return set(m.group(1).decode().split()) if m else None


iport = free_port()
with Moat(extra="listen imap 127.0.0.1:%d\nauth-allow-plaintext yes\n" % iport) as m:
    m.cli("user", "add", "alice@example.test", input="alice-pw\n", check=True)
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    for i in range(3):
        s.sendmail("s@remote.test", ["alice@example.test"], MSG % (i, i, i))
    s.quit()
    root = os.path.join(m.state, "mail", "example.test", "alice")

    c = imaplib.IMAP4("127.0.0.1", iport, timeout=30)
    c.login("alice@example.test", "alice-pw")
    c2 = imaplib.IMAP4("127.0.0.1", iport, timeout=30)
    c2.login("alice@example.test", "alice-pw")
    typ, d = c.select("INBOX")
    t.ok("\\*" in str(c.untagged_responses.get("OK", [])), "PERMANENTFLAGS includes \\*",
         c.untagged_responses.get("OK"))
    c2.select("INBOX")

    typ, d = c.uid("STORE", "1", "+FLAGS", "($Forwarded Project-X)")
    t.eq(typ, "OK", "STORE +FLAGS with two keywords")
    fl = c.untagged_responses.get("FLAGS", [b""])[-1]
    t.ok(b"$Forwarded" in fl and b"Project-X" in fl, "untagged FLAGS announces the new keywords", fl)
    t.eq(flags_of(c, 1) - {"\\Recent"}, {"$Forwarded", "Project-X"},
         "FETCH FLAGS shows the keywords")
    kwfile = open(os.path.join(root, "dovecot-keywords")).read()
    t.eq(kwfile, "0 $Forwarded\n1 Project-X\n", "dovecot-keywords names index 0 and 1")
    files = glob.glob(os.path.join(root, "cur", "*"))
    t.ok(any(re.search(r":2,[A-Z]*ab$", f) for f in files), "the message file carries info letters a and b",
         files)

    c2.noop()
    fl2 = c2.untagged_responses.get("FLAGS", [b""])[-1]
    t.ok(b"Project-X" in fl2, "another session learns the new keywords on NOOP", c2.untagged_responses)

    typ, d = c.uid("SEARCH", None, "KEYWORD", "Project-X")
    t.eq(d[0].split(), [b"1"], "SEARCH KEYWORD Project-X")
    typ, d = c.uid("SEARCH", None, "UNKEYWORD", "project-x")
    t.eq(d[0].split(), [b"2", b"3"], "SEARCH UNKEYWORD (case-insensitive)")
    typ, d = c.uid("SEARCH", None, "KEYWORD", "Nope")
    t.eq(d[0].split(), [], "SEARCH KEYWORD of an unknown keyword: nothing")

    typ, d = c.uid("STORE", "1", "-FLAGS", "(Project-X)")
    t.eq(flags_of(c, 1) - {"\\Recent"}, {"$Forwarded"}, "-FLAGS removes one keyword")
    typ, d = c.uid("STORE", "1", "FLAGS", "(\\Seen Other)")
    t.eq(flags_of(c, 1) - {"\\Recent"}, {"\\Seen", "Other"}, "FLAGS replaces keywords too")

    # COPY into a folder whose keyword indices differ: names are kept
    c.create("Archive")
    typ, d = c.append("Archive", "(Zeta)", None, (MSG % (9, 9, 9)).encode())
    t.eq(typ, "OK", "APPEND with a keyword")
    typ, d = c.uid("COPY", "1", "Archive")
    t.eq(typ, "OK", "COPY a message with a keyword")
    c.select("Archive")
    typ, d = c.uid("SEARCH", None, "KEYWORD", "Other")
    t.eq(len(d[0].split()), 1, "the copy has its keyword in the other folder")
    akw = open(os.path.join(root, ".Archive", "dovecot-keywords")).read()
    t.eq(akw, "0 Zeta\n1 Other\n", "the target folder's own index for it")
    typ, d = c.uid("SEARCH", None, "KEYWORD", "Zeta")
    t.eq(len(d[0].split()), 1, "the appended message has Zeta")

    # limits and syntax
    c.select("INBOX")
    typ, d = c.uid("STORE", "2", "+FLAGS", "(" + " ".join("k%d" % i for i in range(23)) + ")")
    t.eq(typ, "OK", "23 more keywords fit (26 in all with the 3 made above)")
    typ, d = c.uid("STORE", "2", "+FLAGS", "(one-too-many)")
    t.ok(typ == "NO" and b"LIMIT" in d[0], "the 27th keyword: NO [LIMIT]", d)
    try:
        typ, d = c.uid("STORE", "2", "+FLAGS", "(bad]kw)")
    except imaplib.IMAP4.error as e:
        typ, d = "BAD", [str(e).encode()]
    t.eq(typ, "BAD", "a keyword with ] is BAD")
    typ, d = c.uid("STORE", "2", "-FLAGS", "(not-there)")
    t.eq(typ, "OK", "-FLAGS of an unknown keyword: OK, nothing created")
    t.ok("not-there" not in open(os.path.join(root, "dovecot-keywords")).read(), "not created")
    c.logout()
    c2.logout()
t.done()
