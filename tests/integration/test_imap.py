#!/usr/bin/env python3
"""test_imap - the IMAP server over the built-in store, driven with
Python's imaplib and raw sockets: mail delivered over SMTP to a user made
with `moat user add` is listed, fetched (ENVELOPE, BODY[] sections,
partials, BODYSTRUCTURE), flagged, searched, copied, moved, appended and
expunged; IDLE reports new mail; two sessions on one mailbox see each
other's changes; plaintext logins are refused without TLS unless
auth-allow-plaintext (LOGINDISABLED), STARTTLS and imaps work with a
self-signed certificate made here; hostile input (overlong lines, huge
literals, garbage) gets BAD/NO/BYE and moatd keeps serving.  mbsync (if
installed) syncs the mailbox both ways.
"""
import base64
import imaplib
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import TAP, Moat, MOATD, MOAT, free_port, wait_port  # noqa: E402

t = TAP()
imaplib.Commands.setdefault("ENABLE", ("AUTH", "SELECTED"))
imaplib.Commands["ENABLE"] = ("AUTH", "SELECTED")
if not (os.path.exists(MOATD) and os.path.exists(MOAT)):
    t.skip_all("moatd/moat not built")

MSG = ("From: Sender Name <sender@remote.test>\r\n"
       "To: Alice <alice@example.test>\r\n"
       "Subject: imap test %d\r\n"
       "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
       "Message-ID: <m%d@remote.test>\r\n"
       "\r\n"
       "body of message %d\r\n"
       "second line\r\n")

MULTI = ("From: x@remote.test\r\nTo: alice@example.test\r\nSubject: multipart\r\n"
         "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"BB\"\r\n\r\n"
         "preamble\r\n--BB\r\nContent-Type: text/plain; charset=utf-8\r\n\r\npart one\r\n"
         "--BB\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
         "AAAA\r\n--BB--\r\n")


def make_cert(d):
    key, crt = os.path.join(d, "key.pem"), os.path.join(d, "crt.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                        "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,DNS:mx.moat.test,IP:127.0.0.1"], capture_output=True)
    return (crt, key) if r.returncode == 0 else None


def deliver(m, bodies, rcpt="alice@example.test"):
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    for b in bodies:
        s.sendmail("sender@remote.test", [rcpt], b)
    s.quit()


class Raw:
    """a raw IMAP connection: send lines, read until a tagged reply"""

    def __init__(self, port, tls_ctx=None):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=15)
        if tls_ctx:
            self.s = tls_ctx.wrap_socket(self.s, server_hostname="mx.moat.test")
        self.buf = b""
        self.greeting = self.line()

    def line(self, timeout=15):
        self.s.settimeout(timeout)
        while b"\r\n" not in self.buf:
            try:
                d = self.s.recv(65536)
            except (socket.timeout, OSError):
                return None
            if not d:
                return None
            self.buf += d
        l, self.buf = self.buf.split(b"\r\n", 1)
        return l.decode("utf-8", "replace")

    def send(self, data):
        self.s.sendall(data if isinstance(data, bytes) else data.encode())

    def cmd(self, tag, text, timeout=15):
        self.send("%s %s\r\n" % (tag, text))
        return self.until(tag, timeout)

    def until(self, tag, timeout=15):
        out = []
        while True:
            l = self.line(timeout)
            if l is None:
                out.append("<EOF>")
                return out
            out.append(l)
            if l.startswith(tag + " ") or l.startswith("* BYE"):
                return out

    def closed(self, timeout=5):
        self.s.settimeout(timeout)
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
        except (socket.timeout, OSError) as e:
            return not isinstance(e, socket.timeout)

    def close(self):
        self.s.close()


def login(port):
    c = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    c.login("alice@example.test", "alice-pw")
    return c


iport = free_port()
with Moat(extra="listen imap 127.0.0.1:%d\nauth-allow-plaintext yes\n" % iport) as m:
    if not wait_port(iport):
        t.ok(False, "imap listener up", m.log()[-2000:])
        t.done()
    m.cli("user", "add", "alice@example.test", input="alice-pw\n", check=True)
    deliver(m, [MSG % (i, i, i) for i in (1, 2, 3)] + [MULTI])

    c = imaplib.IMAP4("127.0.0.1", iport, timeout=30)
    caps = c.capabilities
    t.ok(all(x in caps for x in ("IMAP4REV1", "IDLE", "UIDPLUS", "MOVE", "LITERAL+", "SPECIAL-USE", "AUTH=PLAIN")),
         "CAPABILITY before login", caps)
    try:
        c.login("alice@example.test", "wrong")
        t.ok(False, "wrong password refused")
    except imaplib.IMAP4.error as e:
        t.ok("AUTHENTICATIONFAILED" in str(e), "wrong password: NO [AUTHENTICATIONFAILED]", e)
    typ, d = c.login("alice@example.test", "alice-pw")
    t.eq(typ, "OK", "LOGIN")
    typ, d = c.list()
    names = [x.decode() for x in d]
    t.ok(any("\\Sent" in x and '"Sent"' in x for x in names) and any("\\Junk" in x for x in names) and
         any('"INBOX"' in x for x in names), "LIST with SPECIAL-USE attributes", names)
    typ, d = c.select("INBOX")
    t.eq((typ, d), ("OK", [b"4"]), "SELECT INBOX: 4 messages")
    t.ok(c.untagged_responses.get("UIDVALIDITY") and c.untagged_responses.get("UIDNEXT") == [b"5"],
         "SELECT: UIDVALIDITY, UIDNEXT 5", c.untagged_responses)
    typ, d = c.fetch("1", "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
    r = d[0].decode()
    t.ok('UID 1' in r and 'ENVELOPE ("Mon, 1 Jan 2024 10:00:00 +0000" "imap test 1" (("Sender Name" NIL "sender" "remote.test"))' in r
         and '"<m1@remote.test>"' in r, "FETCH ENVELOPE", r)
    size = int(re.search(r"RFC822.SIZE (\d+)", r).group(1))
    typ, d = c.fetch("1", "(BODY.PEEK[])")
    t.eq(len(d[0][1]), size, "BODY[] length = RFC822.SIZE (CRLF)")
    t.ok(d[0][1].endswith(b"second line\r\n") and b"\r\n\r\nbody of message 1" in d[0][1], "BODY[] in CRLF")
    typ, d = c.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)] BODY.PEEK[TEXT]<0.4> FLAGS)")
    t.ok(d[0][1] == b"From: Sender Name <sender@remote.test>\r\nSubject: imap test 2\r\n\r\n" and d[1][1] == b"body",
         "HEADER.FIELDS and a partial TEXT", d)
    t.ok(b"\\Seen" not in d[2], "PEEK does not set \\Seen", d)
    typ, d = c.fetch("2", "(BODY[TEXT])")
    t.ok(b"\\Seen" in b"".join(x if isinstance(x, bytes) else x[0] for x in d), "BODY[] sets \\Seen", d)
    typ, d = c.fetch("4", "(BODYSTRUCTURE BODY.PEEK[1] BODY.PEEK[2.MIME])")
    r = b" ".join(x if isinstance(x, bytes) else x[0] + x[1] for x in d).decode()
    t.ok('("text" "plain" ("charset" "utf-8")' in r and '"mixed"' in r and '"base64"' in r, "BODYSTRUCTURE of a multipart", r)
    t.ok(d[0][1] == b"part one", "BODY[1] of a multipart", d)
    typ, d = c.fetch("1:2", "(RFC822.HEADER)")
    t.ok(b"\r\nFrom: Sender Name" in d[0][1] and d[0][1].endswith(b"\r\n\r\n") and b"body" not in d[0][1],
         "RFC822.HEADER", d)

    typ, d = c.store("1", "+FLAGS", "(\\Flagged)")
    t.ok(typ == "OK" and b"\\Flagged" in d[0], "STORE +FLAGS answers the new flags", d)
    typ, d = c.store("1", "+FLAGS.SILENT", "(\\Answered)")
    t.ok(typ == "OK" and d == [None], "STORE .SILENT says nothing", d)
    t.eq(c.search(None, "FLAGGED")[1], [b"1"], "SEARCH FLAGGED")
    t.eq(c.search(None, "UNSEEN")[1], [b"1 3 4"], "SEARCH UNSEEN")
    t.eq(c.search(None, '(SUBJECT "test 3")')[1], [b"3"], "SEARCH SUBJECT")
    t.eq(c.search(None, 'FROM', '"sender name"')[1], [b"1 2 3"], "SEARCH FROM (case-insensitive)")
    t.eq(c.search(None, 'BODY', '"part one"')[1], [b"4"], "SEARCH BODY")
    t.eq(c.search(None, 'OR', 'FLAGGED', 'SEEN')[1], [b"1 2"], "SEARCH OR")
    t.eq(c.search(None, 'NOT', 'FLAGGED', 'LARGER', '10')[1], [b"2 3 4"], "SEARCH NOT + LARGER")
    t.eq(c.search(None, 'SENTON', '1-Jan-2024')[1], [b"1 2 3"], "SEARCH SENTON")
    t.eq(c.search(None, 'SINCE', '1-Jan-2020', 'HEADER', 'Message-ID', 'm2@')[1], [b"2"], "SEARCH SINCE + HEADER")
    t.eq(c.uid("SEARCH", None, "2:*")[1], [b"2 3 4"], "UID SEARCH uid set")
    t.eq(c.search("UTF-8", "ALL")[1], [b"1 2 3 4"], "SEARCH CHARSET UTF-8")
    typ, d = c.uid("FETCH", "3", "(FLAGS)")
    t.ok(typ == "OK" and b"UID 3" in d[0], "UID FETCH", d)

    typ, d = c.copy("1:2", "Trash")
    t.ok(typ == "OK" and b"COPYUID" in d[0], "COPY with COPYUID", d)
    typ, d = c.status("Trash", "(MESSAGES UIDNEXT UNSEEN)")
    t.ok(typ == "OK" and b"MESSAGES 2" in d[0] and b"UIDNEXT 3" in d[0], "STATUS Trash", d)
    typ, d = c.uid("MOVE", "3", "Junk")
    t.eq(typ, "OK", "UID MOVE to Junk")
    t.ok(len(m.maildir_files("alice@example.test", "cur")) == 3, "moved file gone from INBOX")
    t.eq(c.select("INBOX")[1], [b"3"], "3 messages left")
    typ, d = c.append("INBOX", "(\\Seen)", imaplib.Time2Internaldate(1700000000), b"Subject: appended\r\n\r\nhello\r\n")
    t.ok(typ == "OK" and b"APPENDUID" in d[0], "APPEND with APPENDUID", d)
    typ, d = c.noop()
    t.ok(c.untagged_responses.get("EXISTS", [b""])[-1] == b"4" or b"4" in str(c.untagged_responses.get("EXISTS")).encode(),
         "appended message shows up (EXISTS 4)", c.untagged_responses)
    typ, d = c.fetch("4", "(INTERNALDATE FLAGS)")
    # the appended message is \Recent for this session: an unsolicited
    # FETCH FLAGS may come first
    got = b" ".join(x for x in d if isinstance(x, bytes) and b"INTERNALDATE" in x)
    t.ok(b"14-Nov-2023" in got and b"\\Seen" in got, "APPEND keeps flags and internal date", d)
    c.store("1", "+FLAGS.SILENT", "(\\Deleted)")
    typ, d = c.expunge()
    t.ok(typ == "OK" and d == [b"1"], "EXPUNGE reports 1", d)
    t.eq(len(m.maildir_files("alice@example.test", "cur")), 3, "expunged file unlinked")
    typ, d = c.create("Work.2024")
    t.eq(typ, "OK", "CREATE Work.2024")
    typ, d = c.rename("Work.2024", "Archive")
    t.eq(typ, "OK", "RENAME")
    t.eq(c.create("Archive")[0], "NO", "CREATE an existing mailbox: NO")
    typ, d = c.subscribe("Archive")
    t.ok(typ == "OK" and any(b"Archive" in x for x in c.lsub()[1]), "SUBSCRIBE + LSUB")
    t.eq(c.delete("Archive")[0], "OK", "DELETE")
    t.eq(c.select("Nope")[0], "NO", "SELECT of a missing mailbox: NO")
    typ, d = c.select("INBOX", readonly=True)
    t.ok(typ == "OK", "EXAMINE")
    t.eq(c.store("1", "+FLAGS", "(\\Seen)")[0], "NO", "STORE in a read-only mailbox: NO")
    c.select("INBOX")
    t.eq(c.xatom("NAMESPACE")[0], "OK", "NAMESPACE")
    t.eq(c.xatom("ID", "NIL")[0], "OK", "ID")
    t.eq(c.xatom("ENABLE", "CONDSTORE")[0], "OK", "ENABLE")
    t.eq(c.unselect()[0] if hasattr(c, "unselect") else c.xatom("UNSELECT")[0], "OK", "UNSELECT")
    c.logout()

    # two sessions: flags and expunges travel; IDLE sees new mail
    a, b = login(iport), login(iport)
    a.select("INBOX")
    b.select("INBOX")
    a.store("1", "+FLAGS", "(\\Flagged)")
    b.noop()
    fl = b.untagged_responses.get("FETCH", [])
    t.ok(any(b"\\Flagged" in x for x in fl), "session B sees A's flag change", b.untagged_responses)
    a.store("2", "+FLAGS.SILENT", "(\\Deleted)")
    a.expunge()
    b.noop()
    t.ok(b.untagged_responses.get("EXPUNGE") == [b"2"], "session B gets EXPUNGE 2", b.untagged_responses)
    a.logout()
    b.logout()

    r = Raw(iport)
    r.cmd("a1", "LOGIN alice@example.test alice-pw")
    r.cmd("a2", "SELECT INBOX")
    r.send("a3 IDLE\r\n")
    cont = r.line()
    deliver(m, [MSG % (9, 9, 9)])
    got = []
    end = time.time() + 15
    while time.time() < end:
        l = r.line(timeout=max(0.1, end - time.time()))
        if l is None:
            break
        got.append(l)
        if "EXISTS" in l:
            break
    t.ok(cont.startswith("+") and any(l.endswith("EXISTS") for l in got), "IDLE: EXISTS for new mail", [cont] + got)
    r.send("DONE\r\n")
    out = r.until("a3")
    t.ok(out[-1].startswith("a3 OK"), "DONE ends IDLE", out)

    # literals: sync with "+", LITERAL+, too big
    r.send("b1 APPEND INBOX {20}\r\n")
    cont = r.line()
    r.send("Subject: lit\r\n\r\nhi\r\n\r\n")
    out = r.until("b1")
    t.ok(cont.startswith("+") and out[-1].startswith("b1 OK") and "APPENDUID" in out[-1],
         "APPEND with a synchronizing literal", [cont] + out)
    out = r.cmd("b2", "APPEND INBOX {20+}\r\nSubject: lit\r\n\r\nhi\r\n")
    t.ok(out[-1].startswith("b2 OK"), "APPEND with LITERAL+", out)
    r.send("b3 LOGIN {999999999}\r\n")
    out = r.until("b3")
    t.ok(out[-1].startswith("b3 NO [TOOBIG]"), "huge literal announced: NO [TOOBIG]", out)
    out = r.cmd("b4", "NOOP")
    t.ok(out[-1].startswith("b4 OK"), "session goes on after a refused literal", out)
    r.send("b5 " + "X" * 70000 + "\r\n")
    out = r.until("b5")
    t.ok(any("too long" in l for l in out), "overlong line: BAD", out[:3])
    out = r.cmd("b6", "FETCH 1 (BODY[HEADER.FIELDS (SUBJECT)")
    t.ok(out[-1].startswith("b6 BAD"), "unbalanced FETCH: BAD", out)
    out = r.cmd("b7", "FETCH 0:x FLAGS")
    t.ok(out[-1].startswith("b7 BAD"), "bad sequence set: BAD", out)
    out = r.cmd("b8", "SEARCH " + "(" * 100 + "ALL" + ")" * 100)
    t.ok(out[-1].startswith("b8 BAD"), "deeply nested SEARCH: BAD", out)
    out = r.cmd("b9", "\x01\x02\x03 garbage")
    t.ok(any("BAD" in l for l in out), "garbage: BAD", out)
    r.send("c1 APPEND INBOX {999999999+}\r\n")
    out = r.until("c1")
    t.ok(any("BYE" in l for l in out) and r.closed(), "huge LITERAL+ : BYE and close", out)
    r.close()
    r = Raw(iport)
    for i in range(10):
        r.send("x%d BOGUS\r\n" % i)
    out = r.until("never", timeout=5)
    t.ok(any("BYE" in l for l in out), "10 bad commands: BYE", out[-3:])
    r.close()
    r = Raw(iport)
    out = r.cmd("d1", "SELECT INBOX")
    t.ok(out[-1].startswith("d1 BAD"), "SELECT before LOGIN: BAD", out)
    tok = base64.b64encode(b"\0alice@example.test\0alice-pw").decode()
    out = r.cmd("d2", "AUTHENTICATE PLAIN " + tok)
    t.ok(out[-1].startswith("d2 OK"), "AUTHENTICATE PLAIN with SASL-IR", out)
    r.close()
    r = Raw(iport)
    r.send("d3 AUTHENTICATE PLAIN\r\n")
    cont = r.line()
    r.send(tok + "\r\n")
    out = r.until("d3")
    t.ok(cont.startswith("+") and out[-1].startswith("d3 OK"), "AUTHENTICATE PLAIN with a continuation", [cont] + out)
    r.close()
    t.ok(m.proc.poll() is None, "moatd still running")

# ---- TLS: LOGINDISABLED, STARTTLS, imaps; mbsync ----
with Moat(start=False) as m:
    cert = make_cert(m.tmp)
    if cert is None:
        t.ok(True, "# openssl missing: TLS part skipped")
        t.done()
    ip2, ips = free_port(), free_port()
    m.write_conf(extra="tls certificate %s key %s\nlisten imap 127.0.0.1:%d\nlisten imaps 127.0.0.1:%d\n"
                 % (cert[0], cert[1], ip2, ips))
    m.start()
    wait_port(ip2)
    m.cli("user", "add", "alice@example.test", input="alice-pw\n", check=True)
    deliver(m, [MSG % (i, i, i) for i in (1, 2)])
    ctx = ssl.create_default_context(cafile=cert[0])
    ctx.check_hostname = False
    c = imaplib.IMAP4("127.0.0.1", ip2, timeout=30)
    t.ok("LOGINDISABLED" in c.capabilities and "STARTTLS" in c.capabilities, "LOGINDISABLED + STARTTLS before TLS",
         c.capabilities)
    try:
        c.login("alice@example.test", "alice-pw")
        t.ok(False, "LOGIN refused without TLS")
    except imaplib.IMAP4.error as e:
        t.ok("PRIVACYREQUIRED" in str(e), "LOGIN without TLS: NO [PRIVACYREQUIRED]", e)
    c.starttls(ssl_context=ctx)
    t.ok("AUTH=PLAIN" in c.capabilities and "STARTTLS" not in c.capabilities, "after STARTTLS: AUTH=PLAIN", c.capabilities)
    t.eq(c.login("alice@example.test", "alice-pw")[0], "OK", "LOGIN over STARTTLS")
    t.eq(c.select("INBOX")[1], [b"2"], "SELECT over STARTTLS")
    c.logout()
    c = imaplib.IMAP4_SSL("127.0.0.1", ips, ssl_context=ctx, timeout=30)
    t.eq(c.login("alice@example.test", "alice-pw")[0], "OK", "imaps (implicit TLS) LOGIN")
    c.logout()

    mbsync = shutil.which("mbsync")
    if mbsync is None:
        print("ok %d - # SKIP mbsync not installed" % (t.n + 1))
        t.n += 1
    else:
        local = os.path.join(m.tmp, "local") + "/"
        os.makedirs(local)
        rc = os.path.join(m.tmp, "mbsyncrc")
        with open(rc, "w") as f:
            f.write("IMAPAccount moat\nHost localhost\nPort %d\nUser alice@example.test\nPass alice-pw\n"
                    "SSLType STARTTLS\nCertificateFile %s\n\n"
                    "IMAPStore moat-remote\nAccount moat\n\n"
                    "MaildirStore moat-local\nPath %s\nInbox %sINBOX\nSubFolders Verbatim\n\n"
                    "Channel moat\nFar :moat-remote:\nNear :moat-local:\nPatterns *\nCreate Both\nExpunge Both\n"
                    "SyncState *\n" % (ip2, cert[0], local, local))
        r = subprocess.run([mbsync, "-c", rc, "-a"], capture_output=True, text=True, timeout=120)
        inbox_new = os.listdir(os.path.join(local, "INBOX", "new")) + os.listdir(os.path.join(local, "INBOX", "cur")) \
            if os.path.isdir(os.path.join(local, "INBOX")) else []
        t.ok(r.returncode == 0 and len(inbox_new) == 2, "mbsync pulls INBOX (2 messages)", r.stdout[-1500:] + r.stderr[-1500:])
        # push one message the other way
        sent_new = os.path.join(local, "Sent", "new")
        if os.path.isdir(sent_new):
            with open(os.path.join(sent_new, "1700000000.1.local"), "wb") as f:
                f.write(b"From: alice@example.test\nSubject: from mbsync\n\nhi\n")
        r = subprocess.run([mbsync, "-c", rc, "-a"], capture_output=True, text=True, timeout=120)
        sent_dir = os.path.join(m.maildir("alice@example.test"), ".Sent", "cur")
        pushed = [f for f in os.listdir(sent_dir)] if os.path.isdir(sent_dir) else []
        t.ok(r.returncode == 0 and any(b"from mbsync" in open(os.path.join(sent_dir, f), "rb").read() for f in pushed),
             "mbsync pushes a message into Sent", r.stdout[-1500:] + r.stderr[-1500:])
    t.ok(m.proc.poll() is None, "moatd still running")

t.done()
