#!/usr/bin/env python3
"""TLS on the SMTP listeners: STARTTLS (RFC 3207) and implicit TLS (RFC 8314),
protocol and cipher policy, the STARTTLS command-injection class, state reset
after the handshake, certificate reload without dropping sessions."""
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import time

from moattest import TAP, Moat, Sink, MOATD, free_port, make_tmpdir, recv_reply, wait_port

t = TAP()


def make_cert(d, cn):
    key, crt = os.path.join(d, cn + ".key"), os.path.join(d, cn + ".pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                        "-out", crt, "-days", "2", "-subj", "/CN=" + cn,
                        "-addext", "subjectAltName=DNS:" + cn], capture_output=True)
    if r.returncode != 0:
        t.skip_all("openssl cannot make a test certificate: " + r.stderr.decode()[:200])
    os.chmod(key, 0o644)
    return crt, key


def client_ctx(**kw):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def peer_cn(sock):
    der = sock.getpeercert(binary_form=True)
    r = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=der,
                       capture_output=True)
    return r.stdout.decode().strip()


with Sink() as sink:
    m = Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, start=False)
    crt, key = make_cert(m.tmp, "mx.moat.test")
    sni_crt, sni_key = make_cert(m.tmp, "mail.other.test")
    port_s = free_port()
    m.write_conf(extra="tls certificate %s key %s\ntls certificate %s key %s\n"
                 "listen smtps 127.0.0.1:%d auth=none\n" % (crt, key, sni_crt, sni_key, port_s))
    with m:
        m.start()
        t.ok(wait_port(port_s), "smtps listener is up")

        s = smtplib.SMTP("127.0.0.1", m.port, timeout=10)
        s.ehlo("client.test")
        t.ok(s.has_extn("starttls"), "EHLO offers STARTTLS when a certificate is configured")
        code, _ = s.starttls(context=client_ctx())
        t.eq(code, 220, "STARTTLS -> 220")
        t.ok(s.sock.version() in ("TLSv1.2", "TLSv1.3"), "negotiated %s" % s.sock.version())
        code, resp = s.docmd("MAIL FROM:<a@b.example>")
        t.eq(code, 503, "after STARTTLS the session is reset: MAIL before EHLO -> 503")
        s.ehlo("client.test")
        t.ok(not s.has_extn("starttls"), "STARTTLS no longer offered inside TLS")
        code, resp = s.docmd("STARTTLS")
        t.ok(code == 503 and b"5.5.1" in resp, "STARTTLS inside TLS -> 503 5.5.1", resp)
        s.sendmail("a@b.example", ["x@relay.test"], b"Subject: over tls\r\n\r\nsecret\r\n")
        s.quit()
        t.ok(sink.wait_messages(1, 30), "message sent over STARTTLS delivered")
        with sink.lock:
            data = sink.messages[-1]["data"].decode("utf-8", "replace")
        t.ok(re.search(r"\(using TLSv1\.[23] with cipher \S+ \(\d+/\d+ bits\)\)", data) is not None,
             "Received header records the TLS version and cipher", data[:400])
        t.ok("with ESMTPS id" in data, "Received header says ESMTPS")
        t.ok(m.wait_log(r"event=accepted .* proto=ESMTPS .* tls=TLSv1\.[23]:") is not None,
             "the log line carries the TLS version and cipher")

        # implicit TLS
        s = smtplib.SMTP_SSL("127.0.0.1", port_s, timeout=10, context=client_ctx())
        code, _ = s.ehlo("client.test")
        t.eq(code, 250, "implicit TLS (smtps): EHLO inside TLS")
        t.ok(not s.has_extn("starttls"), "no STARTTLS on an implicit TLS port")
        s.sendmail("a@b.example", ["x@relay.test"], b"Subject: smtps\r\n\r\nx\r\n")
        s.quit()
        t.ok(sink.wait_messages(2, 30), "message over smtps delivered")

        # SNI picks the certificate; unknown names get the default
        w = client_ctx().wrap_socket(socket.create_connection(("127.0.0.1", port_s), timeout=10),
                                     server_hostname="mail.other.test")
        t.ok("mail.other.test" in peer_cn(w), "SNI mail.other.test gets its own certificate")
        w.close()
        w = client_ctx().wrap_socket(socket.create_connection(("127.0.0.1", port_s), timeout=10),
                                     server_hostname="unknown.example")
        t.ok("mx.moat.test" in peer_cn(w), "an unknown SNI name gets the default certificate")
        w.close()

        # session resumption (TLS 1.2 session ids/tickets)
        rc = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
        w = rc.wrap_socket(socket.create_connection(("127.0.0.1", port_s), timeout=10))
        recv_reply(w)
        sess = w.session
        w.sendall(b"QUIT\r\n")
        recv_reply(w)
        w.close()
        w = rc.wrap_socket(socket.create_connection(("127.0.0.1", port_s), timeout=10), session=sess)
        t.ok(w.session_reused, "TLS session resumption works")
        w.close()

        # STARTTLS command injection: bytes pipelined after STARTTLS are dropped
        raw = socket.create_connection(("127.0.0.1", m.port), timeout=10)
        recv_reply(raw)
        raw.sendall(b"EHLO client.test\r\n")
        recv_reply(raw)
        raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        r = b""
        while b"\r\n" not in r:
            r += raw.recv(1)
        t.ok(r.startswith(b"220 "), "STARTTLS -> 220 with a command pipelined behind it", r)
        tls = client_ctx().wrap_socket(raw)
        tls.sendall(b"EHLO client.test\r\n")
        r = recv_reply(tls).decode()
        t.ok(r.startswith("250-") and "2.1.0" not in r, "the injected MAIL was not executed inside TLS", r)
        tls.sendall(b"MAIL FROM:<a@b.example>\r\n")
        r = recv_reply(tls).decode()
        t.ok(r.startswith("250 2.1.0"), "MAIL inside TLS accepted (no nested-MAIL from the injection)", r)
        tls.close()

        # protocol and cipher policy
        for ver in ("TLSv1", "TLSv1_1"):
            try:
                c = client_ctx(minimum_version=getattr(ssl.TLSVersion, ver),
                               maximum_version=getattr(ssl.TLSVersion, ver))
                c.set_ciphers("ALL:@SECLEVEL=0")
                c.wrap_socket(socket.create_connection(("127.0.0.1", port_s), timeout=10)).close()
                refused = False
            except (ssl.SSLError, OSError):
                refused = True
            t.ok(refused, "%s is refused" % ver.replace("_", "."))
        for ciphers in ("AES128-SHA:AES256-SHA:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA384",
                        "DES-CBC3-SHA:ECDHE-RSA-DES-CBC3-SHA", "aNULL:eNULL:@SECLEVEL=0"):
            try:
                c = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
                c.set_ciphers(ciphers)
                c.wrap_socket(socket.create_connection(("127.0.0.1", port_s), timeout=10)).close()
                refused = False
            except (ssl.SSLError, OSError):
                refused = True
            t.ok(refused, "TLS 1.2 with only %s is refused" % ciphers.split(":")[0])
        c = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
        w = c.wrap_socket(socket.create_connection(("127.0.0.1", port_s), timeout=10))
        t.ok(w.cipher()[0].startswith("ECDHE") and ("GCM" in w.cipher()[0] or "CHACHA" in w.cipher()[0]),
             "TLS 1.2 negotiates an ECDHE AEAD suite (%s)" % w.cipher()[0])
        w.close()

        # certificate reload on SIGHUP without dropping a session
        old = client_ctx().wrap_socket(socket.create_connection(("127.0.0.1", port_s), timeout=10))
        recv_reply(old)
        t.ok("mx.moat.test" in peer_cn(old), "first certificate served")
        crt2, key2 = make_cert(m.tmp, "new.moat.test")
        m.write_conf(extra="tls certificate %s key %s\nlisten smtps 127.0.0.1:%d auth=none\n" % (crt2, key2, port_s))
        os.kill(m.proc.pid, signal.SIGHUP)
        t.ok(m.wait_log(r"master event=reloaded") is not None, "reloaded with a new certificate")
        time.sleep(0.3)
        new = client_ctx().wrap_socket(socket.create_connection(("127.0.0.1", port_s), timeout=10))
        recv_reply(new)
        t.ok("new.moat.test" in peer_cn(new), "new connections get the new certificate")
        new.close()
        old.sendall(b"EHLO client.test\r\n")
        r = recv_reply(old).decode()
        t.ok(r.startswith("250"), "a session opened before the reload keeps working", r)
        old.sendall(b"QUIT\r\n")
        old.close()

    # configuration errors
    cdir = make_tmpdir()
    crt, key = make_cert(cdir, "mx.moat.test")
    bad = os.path.join(cdir, "bad.conf")
    with open(bad, "w") as f:
        f.write("state-dir %s/s\nlisten smtps 127.0.0.1:%d auth=none\n" % (cdir, free_port()))
    r = subprocess.run([MOATD, "-n", "-c", bad], capture_output=True, text=True)
    t.ok(r.returncode != 0 and re.search(r"bad\.conf:2: listen smtps .* needs TLS", r.stderr),
         "smtps without a certificate: FILE:LINE error", r.stderr)
    with open(bad, "w") as f:
        f.write("state-dir %s/s\ntls certificate %s key %s\n" % (cdir, crt, crt))
    r = subprocess.run([MOATD, "-n", "-c", bad], capture_output=True, text=True)
    t.ok(r.returncode != 0 and "bad.conf:2: cannot load key" in r.stderr,
         "a key that is not a key: FILE:LINE error", r.stderr)
    subprocess.run(["rm", "-rf", cdir])
t.done()
