#!/usr/bin/env python3
"""SMTP AUTH (RFC 4954): PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256 over STARTTLS;
no password mechanisms in the clear; submission requires AUTH; authenticated
relay through relay-authenticated; sender ownership; failed-login throttling
per client IP; rate limits with 4.7.x replies that recover after the window."""
import base64
import hashlib
import hmac
import os
import smtplib
import socket
import ssl
import subprocess
import threading
import time

from moattest import TAP, Moat, Sink, free_port, wait_port

t = TAP()
USER, PW = "alice@example.test", "correct horse"


def make_cert(d):
    key, crt = os.path.join(d, "k.pem"), os.path.join(d, "c.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                        "-out", crt, "-days", "2", "-subj", "/CN=mx.moat.test"], capture_output=True)
    if r.returncode != 0:
        t.skip_all("openssl cannot make a test certificate")
    os.chmod(key, 0o644)
    return crt, key


def ctx():
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


def sub(port, tls=True, src="127.0.0.1"):
    s = smtplib.SMTP("127.0.0.1", port, timeout=60, source_address=(src, 0))
    s.ehlo("client.test")
    if tls:
        s.starttls(context=ctx())
        s.ehlo("client.test")
    return s


def b64(b):
    return base64.b64encode(b if isinstance(b, bytes) else b.encode()).decode()


def scram_login(s, user, pw):
    """the client side of SCRAM-SHA-256 (RFC 5802/7677); returns (code, verified)"""
    cnonce = b64(os.urandom(18))
    first_bare = "n=%s,r=%s" % (user.replace("=", "=3D").replace(",", "=2C"), cnonce)
    code, resp = s.docmd("AUTH", "SCRAM-SHA-256 " + b64("n,," + first_bare))
    if code != 334:
        return code, False
    server_first = base64.b64decode(resp).decode()
    f = dict(kv.split("=", 1) for kv in server_first.split(","))
    if not f["r"].startswith(cnonce):
        return -1, False
    salted = hashlib.pbkdf2_hmac("sha256", pw.encode(), base64.b64decode(f["s"]), int(f["i"]))
    ckey = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(ckey).digest()
    final_wo = "c=biws,r=" + f["r"]
    authmsg = (first_bare + "," + server_first + "," + final_wo).encode()
    proof = bytes(a ^ b for a, b in zip(ckey, hmac.new(stored, authmsg, hashlib.sha256).digest()))
    code, resp = s.docmd(b64(final_wo + ",p=" + b64(proof)))
    skey = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    want = "v=" + b64(hmac.new(skey, authmsg, hashlib.sha256).digest())
    if code != 334:
        return code, False
    # RFC 4954 has no "success with data": the server-final comes as a
    # 334 challenge, answered with an empty line, then 235
    verified = base64.b64decode(resp).decode() == want
    code, resp = s.docmd("")
    return code, verified


with Sink() as smarthost:
    m = Moat(domains={"example.test": "store"}, start=False)
    crt, key = make_cert(m.tmp)
    psub = free_port()
    m.write_conf(extra="\n".join([
        "tls certificate %s key %s" % (crt, key),
        "listen submission 127.0.0.1:%d" % psub,
        "relay-authenticated smtp://127.0.0.1:%d" % smarthost.port,
        "smtp-limit-exempt none",
        "ratelimit recipients 3/3s per user",
        "ratelimit messages 4/3s per ip",
        "auth-max-failures 6",
        "auth-block-time 30s",
    ]))
    with m:
        r = m.cli("user", "add", USER, input=PW + "\n")
        t.ok(r.returncode == 0, "user added", r.stderr)
        m.start()
        t.ok(wait_port(psub), "submission listener up")

        s = sub(psub, tls=False)
        auth = s.esmtp_features.get("auth", "")
        t.ok("PLAIN" not in auth.split() and "LOGIN" not in auth.split(),
             "before TLS no password mechanism is offered (%s)" % auth)
        code, resp = s.docmd("AUTH", "PLAIN " + b64("\0%s\0%s" % (USER, PW)))
        t.ok(code == 538 and b"5.7.11" in resp, "AUTH PLAIN in the clear -> 538 5.7.11", resp)
        code, resp = s.docmd("MAIL FROM:<%s>" % USER)
        t.ok(code == 530 and b"5.7.0" in resp, "submission without AUTH -> 530 5.7.0", resp)
        s.quit()

        for mech in ("PLAIN", "LOGIN", "CRAM-MD5"):
            s = sub(psub)
            t.ok(mech in s.esmtp_features.get("auth", "").split(), "%s offered over TLS" % mech)
            s.user, s.password = USER, PW
            try:
                code, resp = s.auth(mech, getattr(s, "auth_" + mech.lower().replace("-", "_")))
            except smtplib.SMTPAuthenticationError as e:
                code, resp = e.smtp_code, e.smtp_error
            t.eq(code, 235, "AUTH %s with the right password" % mech)
            s.quit()
        s = sub(psub)
        code, verified = scram_login(s, USER, PW)
        t.eq(code, 235, "AUTH SCRAM-SHA-256 with the right password")
        t.ok(verified, "SCRAM server signature verified by the client")
        s.quit()
        s = sub(psub)
        code, _ = scram_login(s, USER, "wrong")
        t.eq(code, 535, "SCRAM with a wrong password -> 535")
        s.quit()

        s = sub(psub)
        s.user, s.password = USER, "wrong password"
        t0 = time.time()
        try:
            s.auth("PLAIN", s.auth_plain)
            code = 235
        except smtplib.SMTPAuthenticationError as e:
            code = e.smtp_code
        t.eq(code, 535, "wrong password -> 535")
        t.ok(time.time() - t0 >= 0.9, "the failure is answered after a delay (%.1fs)" % (time.time() - t0))
        s.quit()

        # authenticated relay to any domain, through the smarthost
        s = sub(psub)
        s.login(USER, PW)
        s.sendmail(USER, ["friend@remote.example"], b"Subject: out\r\n\r\nhello out\r\n")
        try:
            s.sendmail("boss@example.test", ["friend@remote.example"], b"Subject: forged\r\n\r\nx\r\n")
            code = 250
        except smtplib.SMTPSenderRefused as e:
            code, resp = e.smtp_code, e.smtp_error
        t.ok(code == 553, "a sender the user does not own -> 553 5.7.1")
        s.quit()
        t.ok(smarthost.wait_messages(1, 30), "authenticated mail to another domain leaves via relay-authenticated")
        with smarthost.lock:
            msg = smarthost.messages[0]["data"].decode()
        t.ok("with ESMTPSA id" in msg, "Received says ESMTPSA")

        # no open relay without authentication, on either port
        s = smtplib.SMTP("127.0.0.1", m.port, timeout=10)
        s.ehlo("x")
        s.docmd("MAIL FROM:<a@b.example>")
        code, resp = s.docmd("RCPT TO:<friend@remote.example>")
        t.ok(code == 550 and b"5.7.1" in resp, "port 25 without AUTH: relay refused", resp)
        s.quit()

        # rate limits: recipients per user, messages per ip (the sliding
        # window needs up to two windows to forget: start clean)
        time.sleep(6.5)
        s = sub(psub)
        s.login(USER, PW)
        s.docmd("MAIL FROM:<%s>" % USER)
        codes = [s.docmd("RCPT TO:<r%d@remote.example>" % i)[0] for i in range(4)]
        t.eq(codes, [250, 250, 250, 450], "recipients per user: the 4th of 3/3s -> 450")
        code, resp = s.docmd("RCPT TO:<r9@remote.example>")
        t.ok(b"4.7.1" in resp and b"rate limit" in resp, "with a 4.7.1 rate-limit reply", resp)
        s.docmd("RSET")
        time.sleep(6.5)
        s.docmd("MAIL FROM:<%s>" % USER)
        code, _ = s.docmd("RCPT TO:<later@remote.example>")
        t.eq(code, 250, "after the window the recipient is accepted again")
        s.quit()
        time.sleep(3.5)
        s = smtplib.SMTP("127.0.0.1", m.port, timeout=10, source_address=("127.0.0.3", 0))
        s.ehlo("x")
        codes = []
        for i in range(5):
            codes.append(s.docmd("MAIL FROM:<a%d@b.example>" % i)[0])
            s.docmd("RSET")
        t.eq(codes, [250, 250, 250, 250, 450], "messages per ip: the 5th of 4/3s -> 450")
        s.quit()
        s = smtplib.SMTP("127.0.0.1", m.port, timeout=10, source_address=("127.0.0.4", 0))
        s.ehlo("x")
        t.eq(s.docmd("MAIL FROM:<a@b.example>")[0], 250, "another IP is not limited")
        s.quit()

        # 200 wrong passwords from one IP: slowed down, then refused; others unaffected
        results = []
        lock = threading.Lock()

        def attack(n):
            for _ in range(n):
                try:
                    s = sub(psub, src="127.0.0.9")
                    s.user, s.password = USER, "guess"
                    try:
                        s.auth("PLAIN", s.auth_plain)
                        r = 235
                    except smtplib.SMTPAuthenticationError as e:
                        r = e.smtp_code
                    except smtplib.SMTPServerDisconnected:
                        r = 421
                    try:
                        s.quit()
                    except Exception:
                        pass
                except (smtplib.SMTPException, OSError) as e:
                    r = getattr(e, "smtp_code", 421)
                with lock:
                    results.append(r)

        t0 = time.time()
        ths = [threading.Thread(target=attack, args=(10,)) for _ in range(20)]
        for th in ths:
            th.start()
        time.sleep(2)
        # while the attack runs: another IP logs in fine and quickly
        s = sub(psub, src="127.0.0.10")
        t1 = time.time()
        s.login(USER, PW)
        t.ok(time.time() - t1 < 5, "another IP authenticates during the attack (%.2fs)" % (time.time() - t1))
        s.quit()
        for th in ths:
            th.join(120)
        t.eq(len(results), 200, "200 attempts made")
        t.ok(results.count(235) == 0, "no guess succeeded")
        t.ok(results.count(421) >= 150, "most attempts refused outright once the limit was hit (%d of 200)"
             % results.count(421))
        t.ok(results.count(535) <= 30, "only the first few got to try a password (%d)" % results.count(535))
        t.diag("attack took %.1fs" % (time.time() - t0))
        t.ok(m.wait_log(r"event=auth-refused ip=127\.0\.0\.9") is not None, "refusals logged with the IP")
        t.ok(m.wait_log(r"event=auth ip=127\.0\.0\.9 user=<alice@example\.test> mech=PLAIN result=failed") is not None,
             "failures logged with the IP and the user name")
        s = smtplib.SMTP("127.0.0.1", m.port, timeout=10)
        t.eq(s.noop()[0], 250, "the daemon stays responsive")
        s.quit()

# one throttle for all protocols: SMTP AUTH failures make POP3 logins from the
# same address refused too
with Moat(domains={"example.test": "store"}, start=False) as m:
    crt, key = make_cert(m.tmp)
    psub, ppop = free_port(), free_port()
    m.write_conf(extra="\n".join([
        "tls certificate %s key %s" % (crt, key), "listen submission 127.0.0.1:%d" % psub,
        "listen pop3 127.0.0.1:%d" % ppop, "auth-allow-plaintext yes", "smtp-limit-exempt none",
        "auth-max-failures 3", "auth-block-time 60s"]))
    m.cli("user", "add", USER, input=PW + "\n", check=True)
    m.start()
    for i in range(3):
        s = sub(psub, src="127.0.0.30")
        s.user, s.password = USER, "guess"
        try:
            s.auth("PLAIN", s.auth_plain)
        except (smtplib.SMTPException, OSError):
            pass
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass
    def pop_login(src, pw):
        """USER/PASS from a given source address; returns the reply to PASS"""
        c = socket.create_connection(("127.0.0.1", ppop), timeout=30, source_address=(src, 0))
        f = c.makefile("rb")
        f.readline()
        c.sendall(b"USER %s\r\n" % USER.encode())
        f.readline()
        c.sendall(b"PASS %s\r\n" % pw.encode())
        r = f.readline().decode()
        c.close()
        return r
    r = pop_login("127.0.0.30", PW)
    t.ok(r.startswith("-ERR") and "Too many failed logins" in r,
         "after 3 SMTP AUTH failures, POP3 from the same address is refused (even the right password)", r)
    r = pop_login("127.0.0.31", PW)
    t.ok(r.startswith("+OK"), "another address logs in to POP3", r)

# the admin's choices: plaintext AUTH allowed, client hidden, connection rate
with Sink() as smarthost:
    psub = free_port()
    with Moat(domains={"example.test": "store"}, extra="\n".join([
            "listen submission 127.0.0.1:%d" % psub,
            "relay-authenticated smtp://127.0.0.1:%d" % smarthost.port,
            "auth-allow-plaintext yes", "submission-hide-client yes",
            "smtp-limit-exempt none", "ratelimit connections 3/4s per ip"])) as m:
        m.cli("user", "add", USER, input=PW + "\n", check=True)
        t.ok(wait_port(psub), "second instance up")
        s = sub(psub, tls=False, src="127.0.0.20")
        t.ok("PLAIN" in s.esmtp_features.get("auth", "").split(),
             "auth-allow-plaintext yes: PLAIN offered without TLS")
        s.login(USER, PW)
        s.sendmail(USER, ["x@remote.example"], b"Subject: hidden\r\n\r\nx\r\n")
        s.quit()
        t.ok(smarthost.wait_messages(1, 30), "delivered via the smarthost")
        with smarthost.lock:
            msg = smarthost.messages[0]["data"].decode()
        rcv = msg.split("\r\n\r\n")[0]
        t.ok("127.0.0.20" not in rcv and "client.test" not in rcv and "Received: by " in rcv,
             "submission-hide-client: no client IP or HELO in Received", rcv[:300])
        codes = []
        for i in range(4):
            c = socket.create_connection(("127.0.0.1", m.port), timeout=10, source_address=("127.0.0.21", 0))
            codes.append(c.recv(200)[:3])
            c.close()
        t.eq(codes, [b"220", b"220", b"220", b"421"], "ratelimit connections 3/4s per ip: the 4th gets 421")
        c = socket.create_connection(("127.0.0.1", m.port), timeout=10, source_address=("127.0.0.22", 0))
        t.eq(c.recv(200)[:3], b"220", "another IP still connects")
        c.close()
t.done()
