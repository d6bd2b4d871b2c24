#!/usr/bin/env python3
"""test_store - `deliver store` end to end: moat user add, then SMTP into
moatd, then the message in the user's Maildir (<state>/mail/<dom>/<local>/new).

Covers: RCPT-time recipient verification (550 5.1.1), user+tag, mixed case,
several recipients, no open relay (550 5.7.1), LF line endings, body and
dot-stuffing intact, Return-Path/Delivered-To, user del taking effect at
once, nothing left in tmp/.
"""
import os
import pwd
import re
import smtplib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import TAP, Moat, MOATD, MOAT  # noqa: E402

t = TAP()
if not (os.path.exists(MOATD) and os.path.exists(MOAT)):
    t.skip_all("moatd/moat not built")


def wait_files(m, addr, n, timeout=30.0):
    end = time.time() + timeout
    while time.time() < end:
        files = m.maildir_files(addr)
        if len(files) >= n:
            return files
        time.sleep(0.05)
    return m.maildir_files(addr)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def rcpt(port, addr, sender="sender@remote.test"):
    """MAIL + RCPT only; returns (code, text) of the RCPT reply"""
    s = smtplib.SMTP("127.0.0.1", port, timeout=20)
    try:
        s.ehlo("client.test")
        s.mail(sender)
        code, text = s.rcpt(addr)
        s.rset()
        return code, text.decode("utf-8", "replace")
    finally:
        try:
            s.quit()
        except smtplib.SMTPException:
            pass


BODY = ("From: Sender <sender@remote.test>\r\n"
        "To: Alice <alice@example.test>\r\n"
        "Subject: store test %s\r\n"
        "Message-ID: <%s@remote.test>\r\n"
        "\r\n"
        "Hello Alice,\r\n"
        ".a line that starts with a dot\r\n"
        "..two dots\r\n"
        "\r\n"
        "last line\r\n")

with Moat(domains={"example.test": "store", "other.test": "store"}) as m:
    try:
        m.cli("user", "add", "alice@example.test", input="alice-pw\n", check=True)
        m.cli("user", "add", "bob@example.test", input="bob-pw\n", check=True)
        m.cli("user", "add", "carol@other.test", input="carol-pw\n", check=True)
        t.ok(True, "moat user add alice, bob, carol (password on stdin)")
    except RuntimeError as e:
        t.ok(False, "moat user add", e)
        t.done()

    # --- one message to one user ---
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    s.ehlo("client.test")
    refused = s.sendmail("sender@remote.test", ["alice@example.test"], BODY % ("1", "one"))
    s.quit()
    t.eq(refused, {}, "SMTP accepts mail for alice@example.test")
    files = wait_files(m, "alice@example.test", 1)
    t.eq(len(files), 1, "one file in alice's Maildir new/")
    if files:
        data = read(files[0])
        name = os.path.basename(files[0])
        t.ok(re.match(r"^\d+\.M\d+P\d+Q\d+\.[^/:]+,S=\d+", name), "Maildir unique name", name)
        size = int(re.search(r",S=(\d+)", name).group(1))
        t.eq(size, len(data), "S= in the name is the file size")
        t.ok(b"\r\n" not in data, "stored with LF line endings (CRLF converted)")
        want_body = (b"Hello Alice,\n.a line that starts with a dot\n..two dots\n\nlast line\n")
        t.ok(data.endswith(want_body), "body intact, dot-stuffing undone exactly once", data[-200:])
        t.ok(b"Subject: store test 1\n" in data and b"Message-ID: <one@remote.test>\n" in data,
             "original headers intact")
        head = data.split(b"\n\n", 1)[0]
        t.ok(re.search(rb"^(Delivered-To: alice@example\.test|Return-Path: <sender@remote\.test>)$",
                       head, re.M | re.I), "a Delivered-To or Return-Path header is added", head[:600])
        t.ok(re.search(rb"^Received: ", head, re.M), "a Received header is added")
        if os.geteuid() == 0:
            owner = pwd.getpwuid(os.stat(files[0]).st_uid).pw_name
            t.ok(owner != "root", "the message file is not owned by root (worker runs unprivileged)",
                 owner)
    t.eq(m.maildir_files("alice@example.test", "tmp"), [], "nothing left in tmp/")

    # --- RCPT-time verification and routing ---
    code, text = rcpt(m.port, "nosuchuser@example.test")
    t.ok(code == 550 and text.startswith("5.1.1"), "unknown local user: 550 5.1.1 at RCPT",
         "%d %s" % (code, text))
    code, text = rcpt(m.port, "someone@unconfigured.test")
    t.ok(code == 550 and text.startswith("5.7.1"), "unconfigured domain: 550 5.7.1 (no open relay)",
         "%d %s" % (code, text))
    code, text = rcpt(m.port, "Alice+Lists@EXAMPLE.test")
    t.ok(200 <= code < 300, "Alice+Lists@EXAMPLE.test is accepted at RCPT", "%d %s" % (code, text))
    code, text = rcpt(m.port, "../../etc@example.test")
    t.ok(code >= 500, "a path-like local part is refused", "%d %s" % (code, text))

    # --- user+tag, mixed case, several recipients in one transaction ---
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    s.ehlo("client.test")
    try:
        refused = s.sendmail("sender@remote.test",
                             ["alice+news@example.test", "BOB@Example.Test", "ghost@example.test",
                              "carol@other.test"], BODY % ("2", "two"))
        ok_send = True
    except smtplib.SMTPException as e:
        refused, ok_send = {"error": str(e)}, False
    s.quit()
    t.ok(ok_send and list(refused) == ["ghost@example.test"] and refused["ghost@example.test"][0] == 550,
         "three recipients accepted, the unknown one refused with 550", refused)
    fa = wait_files(m, "alice@example.test", 2)
    fb = wait_files(m, "bob@example.test", 1)
    fc = wait_files(m, "carol@other.test", 1)
    t.eq((len(fa), len(fb), len(fc)), (2, 1, 1), "alice+news reaches alice; bob and carol get theirs")
    newest = [f for f in fa if b"store test 2" in read(f)]
    t.eq(len(newest), 1, "the +news copy is in alice's INBOX")
    if newest:
        t.ok(re.search(rb"^Delivered-To: alice(\+news)?@example\.test$", read(newest[0]), re.M | re.I)
             or b"Return-Path" in read(newest[0]), "the +news copy names its recipient")
    if fb:
        t.ok(b"store test 2" in read(fb[0]) and b"\r\n" not in read(fb[0]), "bob's copy is intact")
    t.ok(not os.path.exists(m.maildir("ghost@example.test")), "no mailbox appears for an unknown user")

    # --- a larger message (several write chunks) ---
    big_lines = "".join("line %06d %s\r\n" % (i, "x" * 60) for i in range(3000))
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=60)
    s.sendmail("sender@remote.test", ["bob@example.test"],
               "Subject: big\r\n\r\n" + big_lines)
    s.quit()
    fb = wait_files(m, "bob@example.test", 2)
    bigf = [f for f in fb if b"Subject: big" in read(f)]
    t.ok(len(bigf) == 1 and read(bigf[0]).endswith(big_lines.replace("\r\n", "\n").encode()),
         "a 200 KB message arrives byte for byte (LF endings)")

    # --- user del takes effect at RCPT at once; user add too ---
    m.cli("user", "del", "bob@example.test", check=True)
    code, text = rcpt(m.port, "bob@example.test")
    t.ok(code == 550 and text.startswith("5.1.1"), "after moat user del: 550 5.1.1", "%d %s" % (code, text))
    m.cli("user", "add", "dave@example.test", input="dave-pw\n", check=True)
    code, text = rcpt(m.port, "dave@example.test")
    t.ok(200 <= code < 300, "a user added while moatd runs is accepted at once", "%d %s" % (code, text))
    m.cli("user", "passwd", "dave@example.test", input="new-pw\n", check=True)
    code, text = rcpt(m.port, "dave@example.test")
    t.ok(200 <= code < 300, "passwd while moatd runs does not disturb delivery", "%d %s" % (code, text))

    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    s.sendmail("sender@remote.test", ["dave@example.test"], BODY % ("3", "three"))
    s.quit()
    t.eq(len(wait_files(m, "dave@example.test", 1)), 1, "dave receives mail")

    r = m.cli("user", "list")
    t.eq([l.split("\t")[0] for l in r.stdout.splitlines()],
         ["alice@example.test", "carol@other.test", "dave@example.test"], "moat user list")

    # RFC 5321 4.5.1: postmaster@ a served domain is accepted without a user
    code, text = rcpt(m.port, "Postmaster@other.test")
    t.ok(200 <= code < 300, "postmaster@ a store domain accepted with no such user", "%d %s" % (code, text))
    code, text = rcpt(m.port, "postmaster")
    t.ok(200 <= code < 300, "RCPT TO:<postmaster> (no domain) accepted", "%d %s" % (code, text))
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    s.sendmail("sender@remote.test", ["postmaster@other.test"], BODY % ("pm", "to the postmaster"))
    s.quit()
    got = wait_files(m, "postmaster@other.test", 1)
    t.eq(len(got), 1, "mail to postmaster@ lands in that domain's postmaster mailbox")

    end = time.time() + 10
    while time.time() < end and m.queue_files():
        time.sleep(0.1)
    t.eq(m.queue_files(), [], "the spool is empty after local delivery")
    rc = m.stop()
    t.eq(rc, 0, "moatd stops cleanly on SIGTERM")
    t.ok(not re.search(r"(AddressSanitizer|LeakSanitizer|runtime error:)", m.log()),
         "no sanitizer or leak report in the log (after shutdown)",
         "\n".join(l for l in m.log().splitlines() if "Sanitizer" in l or " in " in l)[:3000])

t.done()
