#!/usr/bin/env python3
"""test_pop3 - the POP3 server over the built-in store (RFC 1939, CAPA,
STLS, AUTH PLAIN, RFC 3206 codes), driven with Python's poplib and raw
sockets: mail delivered over SMTP to a user made with `moat user add` is
listed, read, deleted (the file goes at QUIT, not before); wrong passwords
are refused after a growing delay; plaintext logins are refused without
TLS unless auth-allow-plaintext; STLS and pop3s work with a self-signed
certificate made here; hostile input gets -ERR and a disconnect.
fetchmail (if installed) pulls the mail over POP3 with STLS.
"""
import os
import poplib
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
if not (os.path.exists(MOATD) and os.path.exists(MOAT)):
    t.skip_all("moatd/moat not built")

MSG = ("From: Sender <sender@remote.test>\r\n"
       "To: Alice <alice@example.test>\r\n"
       "Subject: pop3 test %d\r\n"
       "\r\n"
       "line one of %d\r\n"
       ".a line with a leading dot\r\n"
       "line three\r\n"
       "line four\r\n")


def make_cert(d):
    key, crt = os.path.join(d, "key.pem"), os.path.join(d, "crt.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                        "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,DNS:mx.moat.test,IP:127.0.0.1"], capture_output=True)
    return (crt, key) if r.returncode == 0 else None


def deliver(m, n, rcpt="alice@example.test"):
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    for i in range(n):
        s.sendmail("sender@remote.test", [rcpt], MSG % (i + 1, i + 1))
    s.quit()
    end = time.time() + 20
    while time.time() < end and len(m.maildir_files(rcpt, "new")) + len(m.maildir_files(rcpt, "cur")) < n:
        time.sleep(0.05)


def raw(port, lines, timeout=5, tls=False):
    """send lines one by one (each after the previous reply); return all output"""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out = b""
    try:
        out += s.recv(4096)
        for l in lines:
            s.sendall(l)
            time.sleep(0.05)
            try:
                out += s.recv(65536)
            except socket.timeout:
                pass
        # anything left, until close or timeout
        s.settimeout(2)
        while True:
            try:
                d = s.recv(65536)
            except (socket.timeout, OSError):
                break
            if not d:
                out += b"<EOF>"
                break
            out += d
    finally:
        s.close()
    return out.decode("utf-8", "replace")


tmp = None
pport, pport2, psport = free_port(), free_port(), free_port()
with Moat(extra="listen pop3 127.0.0.1:%d\nauth-allow-plaintext yes\n" % pport) as m:
    tmp = m.tmp
    if not wait_port(pport):
        t.ok(False, "pop3 listener up", m.log()[-2000:])
        t.done()
    m.cli("user", "add", "alice@example.test", input="alice-pw\n", check=True)
    m.cli("user", "add", "bob@example.test", input="bob-pw\n", check=True)
    deliver(m, 3)

    p = poplib.POP3("127.0.0.1", pport, timeout=20)
    t.ok(p.getwelcome().startswith(b"+OK"), "greeting +OK")
    caps = p.capa()
    t.ok("UIDL" in caps and "TOP" in caps and "USER" in caps and "RESP-CODES" in caps,
         "CAPA: UIDL TOP USER RESP-CODES", caps)
    t.ok("SASL" in caps and "PLAIN" in caps["SASL"], "CAPA: SASL PLAIN (plaintext allowed)", caps)
    t.ok("STLS" not in caps, "no STLS without a certificate", caps)
    p.user("alice@example.test")
    resp = p.pass_("alice-pw")
    t.ok(resp.startswith(b"+OK"), "USER/PASS login", resp)
    n, size = p.stat()
    t.eq(n, 3, "STAT: 3 messages")
    resp, lst, _ = p.list()
    t.eq(len(lst), 3, "LIST: 3 lines")
    sizes = [int(x.split()[1]) for x in lst]
    resp, uidl, _ = p.uidl()
    uids = [x.split()[1] for x in uidl]
    t.ok(len(set(uids)) == 3 and all(0x21 <= c <= 0x7e for u in uids for c in u), "UIDL: 3 distinct printable ids", uids)
    t.eq(sum(sizes), size, "STAT size = sum of LIST sizes")
    resp, lines, octets = p.retr(1)
    body = b"\r\n".join(lines) + b"\r\n"
    t.ok(b"Subject: pop3 test 1" in body and b".a line with a leading dot" in body,
         "RETR 1: headers and a dot-started line (unstuffed by poplib)", body)
    t.eq(len(body), sizes[0], "RETR size matches LIST (CRLF size)")
    resp, lines, _ = p.top(2, 1)
    t.ok(b"Subject: pop3 test 2" in b"\n".join(lines) and lines[-1] == b"line one of 2",
         "TOP 2 1: headers + one body line", lines)
    t.ok(p.uidl(2).split()[2] == uids[1], "UIDL 2 matches the listing")
    p.dele(1)
    try:
        p.retr(1)
        t.ok(False, "RETR of a deleted message fails")
    except poplib.error_proto as e:
        t.ok(True, "RETR of a deleted message: %s" % e)
    t.eq(p.stat()[0], 2, "STAT after DELE: 2")
    p.rset()
    t.eq(p.stat()[0], 3, "RSET undeletes")
    p.dele(1)
    p.dele(3)
    files_before = len(m.maildir_files("alice@example.test", "cur"))
    t.eq(files_before, 3, "files still there before QUIT")
    p.quit()
    time.sleep(0.2)
    left = m.maildir_files("alice@example.test", "cur")
    t.eq(len(left), 1, "QUIT (UPDATE) removed the two deleted files")
    t.ok(left and "pop3 test 2" in open(left[0], "rb").read().decode(), "the undeleted one stays")

    # the uid list is stable across sessions
    p = poplib.POP3("127.0.0.1", pport, timeout=20)
    p.user("alice@example.test")
    p.pass_("alice-pw")
    t.eq([x.split()[1] for x in p.uidl()[1]], [uids[1]], "UIDL stable in a new session")
    p.quit()

    # AUTH PLAIN with initial response, and the continuation form
    import base64
    tok = base64.b64encode(b"\0bob@example.test\0bob-pw").decode()
    out = raw(pport, [b"AUTH PLAIN " + tok.encode() + b"\r\n", b"STAT\r\n", b"QUIT\r\n"])
    t.ok("+OK Logged in" in out and "+OK 0 0" in out, "AUTH PLAIN with initial response", out)
    out = raw(pport, [b"AUTH PLAIN\r\n", tok.encode() + b"\r\n", b"QUIT\r\n"])
    t.ok("+ \r\n" in out and "+OK Logged in" in out, "AUTH PLAIN with continuation", out)

    # wrong password: -ERR [AUTH] after a delay that grows
    p = poplib.POP3("127.0.0.1", pport, timeout=30)
    p.user("alice@example.test")
    t0 = time.time()
    try:
        p.pass_("wrong")
        t.ok(False, "wrong password refused")
    except poplib.error_proto as e:
        t.ok(b"[AUTH]" in e.args[0], "wrong password: -ERR [AUTH]", e)
    d1 = time.time() - t0
    p.user("alice@example.test")
    t0 = time.time()
    try:
        p.pass_("wrong again")
    except poplib.error_proto:
        pass
    d2 = time.time() - t0
    p.user("alice@example.test")
    t0 = time.time()
    try:
        p.pass_("wrong a third time")
    except poplib.error_proto:
        pass
    d3 = time.time() - t0
    # the worker's shared failed-login throttle (the one SMTP AUTH uses):
    # the first failure is answered at once, then 1 s, 2 s, 4 s ...
    t.ok(d1 < 0.9 and d2 >= 0.9 and d3 >= 1.9,
         "failed logins: at once, then delayed 1 s, then 2 s (%.2f, %.2f, %.2f)" % (d1, d2, d3))
    p.user("alice@example.test")
    t.ok(p.pass_("alice-pw").startswith(b"+OK"), "right password after failures")
    p.quit()
    t.ok(m.wait_log(r'event=login-failed proto=pop3 ip=127\.0\.0\.1 user="alice@example\.test"'),
         "failed login logged with ip and user")

    # state and syntax errors
    out = raw(pport, [b"STAT\r\n", b"RETR 1\r\n", b"PASS x\r\n", b"BOGUS\r\n", b"QUIT\r\n"])
    t.ok(out.count("-ERR") == 4 and "+OK Bye" in out, "commands before login and unknown ones get -ERR", out)
    # overlong line
    out = raw(pport, [b"USER " + b"a" * 5000 + b"\r\n", b"CAPA\r\n", b"QUIT\r\n"])
    t.ok("-ERR Line too long" in out and "+OK Capability" in out, "overlong line: -ERR, session goes on", out)
    # ten bad commands close the session
    out = raw(pport, [b"XYZZY\r\n"] * 11)
    t.ok("Too many bad commands" in out and out.endswith("<EOF>"), "10 bad commands: disconnect", out[-300:])
    # NUL and binary garbage
    out = raw(pport, [b"\x00\xff\xfe garbage\r\n", b"QUIT\r\n"])
    t.ok("-ERR" in out and "+OK Bye" in out, "binary garbage: -ERR", out)
    # bad message numbers
    p = poplib.POP3("127.0.0.1", pport, timeout=20)
    p.user("alice@example.test")
    p.pass_("alice-pw")
    bad = 0
    for c in ("RETR 0", "RETR 99", "RETR -1", "RETR x", "TOP 1", "DELE 18446744073709551617"):
        try:
            p._shortcmd(c)
        except poplib.error_proto:
            bad += 1
    t.eq(bad, 6, "bad message numbers: -ERR")
    p.quit()
    t.ok(m.proc.poll() is None, "moatd still running")

# ---- without auth-allow-plaintext: no passwords in the clear; STLS; pop3s ----
with Moat(start=False) as m:
    cert = make_cert(m.tmp)
    if cert is None:
        t.ok(True, "# openssl missing: TLS part skipped")
        t.done()
    m.write_conf(extra="tls certificate %s key %s\nlisten pop3 127.0.0.1:%d\nlisten pop3s 127.0.0.1:%d\n"
                 % (cert[0], cert[1], pport2, psport))
    m.start()
    wait_port(pport2)
    m.cli("user", "add", "alice@example.test", input="alice-pw\n", check=True)
    deliver(m, 2)
    p = poplib.POP3("127.0.0.1", pport2, timeout=20)
    caps = p.capa()
    t.ok("STLS" in caps and "USER" not in caps, "CAPA: STLS, no USER before TLS", caps)
    try:
        p.user("alice@example.test")
        t.ok(False, "USER refused without TLS")
    except poplib.error_proto as e:
        t.ok(b"[SYS/PERM]" in e.args[0], "USER without TLS: -ERR [SYS/PERM]", e)
    ctx = ssl.create_default_context(cafile=cert[0])
    ctx.check_hostname = False
    p.stls(context=ctx)
    caps = p.capa()
    t.ok("USER" in caps and "STLS" not in caps, "after STLS: USER offered, STLS not", caps)
    p.user("alice@example.test")
    t.ok(p.pass_("alice-pw").startswith(b"+OK"), "login over STLS")
    t.eq(p.stat()[0], 2, "STAT over STLS")
    p.quit()
    # pipelined command after STLS is discarded (not run inside TLS)
    s = socket.create_connection(("127.0.0.1", pport2), timeout=10)
    s.recv(1000)
    s.sendall(b"STLS\r\nCAPA\r\n")
    time.sleep(0.3)
    got = s.recv(1000)
    t.ok(got.startswith(b"+OK Begin TLS") and b"Capability" not in got, "input pipelined after STLS discarded", got)
    s.close()

    p = poplib.POP3_SSL("127.0.0.1", psport, timeout=20, context=ctx)
    p.user("alice@example.test")
    t.ok(p.pass_("alice-pw").startswith(b"+OK"), "pop3s (implicit TLS) login")
    t.eq(len(p.uidl()[1]), 2, "pop3s UIDL")
    p.quit()

    # fetchmail over POP3 + STLS
    fm = shutil.which("fetchmail")
    if fm is None:
        print("ok %d - # SKIP fetchmail not installed" % (t.n + 1))
        t.n += 1
    else:
        rc = os.path.join(m.tmp, "fetchmailrc")
        out_mbox = os.path.join(m.tmp, "fetched.mbox")
        with open(rc, "w") as f:
            f.write("set no bouncemail\npoll localhost service %d protocol pop3 timeout 30\n"
                    "  user 'alice@example.test' password 'alice-pw' sslproto tls1.2+ sslcertck sslcertfile '%s'\n"
                    "  mda 'cat >> %s' keep\n" % (pport2, cert[0], out_mbox))
        os.chmod(rc, 0o600)
        env = dict(os.environ, HOME=m.tmp, FETCHMAILHOME=m.tmp)
        r = subprocess.run([fm, "-f", rc, "-v", "--nodetach", "--nosyslog"], capture_output=True, text=True,
                           timeout=60, env=env)
        got = open(out_mbox).read() if os.path.exists(out_mbox) else ""
        t.ok(r.returncode == 0 and got.count("Subject: pop3 test") == 2,
             "fetchmail pulls 2 messages over POP3+STLS", r.stdout[-1500:] + r.stderr[-1500:])
    t.ok(m.proc.poll() is None, "moatd still running")

t.done()
