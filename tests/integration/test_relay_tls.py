#!/usr/bin/env python3
"""The relay client's STARTTLS, per destination: tls=opportunistic (default),
required, verify (certificate and name checked against ca=FILE), none."""
import os
import subprocess
import time

from moattest import TAP, Moat, Sink, free_port

t = TAP()


def make_cert(d, cn):
    key, crt = os.path.join(d, cn + ".key"), os.path.join(d, cn + ".pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                        "-out", crt, "-days", "2", "-subj", "/CN=" + cn,
                        "-addext", "subjectAltName=DNS:" + cn], capture_output=True)
    if r.returncode != 0:
        t.skip_all("openssl cannot make a test certificate")
    return crt, key


def send(m, to):
    import smtplib
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=10)
    s.sendmail("a@b.example", [to], b"Subject: relay tls\r\n\r\nbody\r\n")
    s.quit()


m = Moat(domains={}, start=False)
crt, key = make_cert(m.tmp, "localhost")
other_crt, other_key = make_cert(m.tmp, "other.test")

with Sink(tls=(crt, key)) as tsink, Sink() as plain, Sink(tls=(other_crt, other_key)) as wrong:
    m.domains = {
        "opp.test": "relay smtp://127.0.0.1:%d" % tsink.port,
        "oppplain.test": "relay smtp://127.0.0.1:%d" % plain.port,
        "req.test": "relay smtp://127.0.0.1:%d tls=required" % plain.port,
        "ver.test": "relay smtp://localhost:%d tls=verify ca=%s" % (tsink.port, crt),
        "bad.test": "relay smtp://localhost:%d tls=verify ca=%s" % (wrong.port, crt),
        "none.test": "relay smtp://127.0.0.1:%d tls=none" % tsink.port,
    }
    m.write_conf(extra="queue-retry-min 2s\nqueue-retry-max 4s\n")
    with m:
        m.start()
        send(m, "x@opp.test")
        t.ok(tsink.wait_messages(1, 30), "opportunistic: delivered")
        with tsink.lock:
            v = tsink.messages[-1]["params"].get("tls")
        t.ok(v in ("TLSv1.2", "TLSv1.3"), "opportunistic: STARTTLS used when offered (%s)" % v)
        t.ok(m.wait_log(r"event=tls peer=127\.0\.0\.1.* tls=TLSv1\.[23]:") is not None, "TLS logged")

        send(m, "x@oppplain.test")
        t.ok(plain.wait_messages(1, 30), "opportunistic: delivered in the clear when not offered")

        send(m, "x@none.test")
        t.ok(tsink.wait_messages(2, 30), "tls=none: delivered")
        with tsink.lock:
            v = tsink.messages[-1]["params"].get("tls")
        t.ok(v is None, "tls=none: STARTTLS not used even when offered")

        send(m, "x@req.test")
        t.ok(m.wait_log(r"event=deferred .*TLS is required, but was not offered", 20) is not None,
             "tls=required without STARTTLS offered: deferred, with the reason")
        time.sleep(0.5)
        with plain.lock:
            n = len(plain.messages)
        t.eq(n, 1, "tls=required: nothing sent in the clear")

        send(m, "x@ver.test")
        ok = tsink.wait_messages(3, 30)
        with tsink.lock:
            v = tsink.messages[-1]["params"].get("tls") if ok else None
        t.ok(ok and v is not None, "tls=verify with the right CA and name: delivered over TLS")
        t.ok(m.wait_log(r"event=tls .* verified=yes") is not None, "verified TLS logged")

        send(m, "x@bad.test")
        t.ok(m.wait_log(r"event=deferred .*certificate not trusted", 20) is not None,
             "tls=verify with an untrusted certificate: deferred")
        time.sleep(0.5)
        with wrong.lock:
            n = len(wrong.messages)
        t.eq(n, 0, "tls=verify: nothing delivered to the untrusted server")
        r = m.cli("queue", "list")
        t.ok("x@req.test" in r.stdout and "x@bad.test" in r.stdout, "both wait in the queue", r.stdout)
    bad = os.path.join(m.tmp, "bad.conf")
with open(bad := os.path.join(m.tmp if os.path.isdir(m.tmp) else "/tmp", "moat-relaytls-bad.conf"), "w") as f:
    f.write("domain x.test deliver relay smtp://127.0.0.1:25 tls=sometimes\n"
            "domain y.test deliver relay lmtp:unix:/run/x tls=verify\n")
from moattest import MOATD
r = subprocess.run([MOATD, "-n", "-c", bad], capture_output=True, text=True)
t.ok(r.returncode != 0 and ":1: domain: unknown relay option" in r.stderr and ":2: domain: TLS over a unix socket" in r.stderr,
     "bad relay TLS options: FILE:LINE errors", r.stderr)
os.unlink(bad)
t.done()
