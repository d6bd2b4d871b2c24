#!/usr/bin/env python3
"""testssl.sh (Debian package testssl.sh) against moatd's STARTTLS SMTP port
and its implicit TLS port, with moat's default TLS settings: no SSLv2/3, TLS
1.0 or 1.1; no NULL, anonymous, export or 3DES ciphers; no CBC suites (so no
LUCKY13); nothing flagged vulnerable.  Skips when testssl.sh is absent."""
import os
import re
import shutil
import subprocess

from moattest import TAP, Moat, free_port, wait_port

t = TAP()
TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")
if TESTSSL is None:
    t.skip_all("testssl.sh is not installed (apt-get install testssl.sh)")

m = Moat(domains={"relay.test": "relay smtp://127.0.0.1:9"}, start=False)
key, crt = os.path.join(m.tmp, "k.pem"), os.path.join(m.tmp, "c.pem")
subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
                "-days", "2", "-subj", "/CN=mx.moat.test"], capture_output=True, check=True)
os.chmod(key, 0o644)
ps = free_port()
m.write_conf(extra="tls certificate %s key %s\nlisten smtps 127.0.0.1:%d\n" % (crt, key, ps))
with m:
    m.start()
    t.ok(wait_port(ps), "smtps listener up")
    for name, args in (("STARTTLS smtp", ["--starttls", "smtp", "127.0.0.1:%d" % m.port]),
                       ("implicit TLS (smtps)", ["127.0.0.1:%d" % ps])):
        r = subprocess.run([TESTSSL, "--quiet", "--color", "0", "--warnings", "off", "--ip", "one",
                            "-p", "-s", "-U"] + args, capture_output=True, text=True, timeout=900)
        out = r.stdout
        def line(label):
            m_ = re.search(r"^\s*" + re.escape(label) + r"\s+(.*)$", out, re.M)
            return m_.group(1).strip() if m_ else "(missing)"
        for p in ("SSLv2", "SSLv3", "TLS 1", "TLS 1.1"):
            t.ok(line(p).startswith("not offered"), "%s: %s not offered (%s)" % (name, p, line(p)))
        t.ok(line("TLS 1.2").startswith("offered"), "%s: TLS 1.2 offered" % name)
        t.ok(line("TLS 1.3").startswith("offered"), "%s: TLS 1.3 offered" % name)
        for c in ("NULL ciphers (no encryption)", "Anonymous NULL Ciphers (no authentication)",
                  "Export ciphers (w/o ADH+NULL)", "Triple DES Ciphers / IDEA",
                  "Obsolete CBC ciphers (AES, ARIA etc.)"):
            t.ok(line(c).startswith("not offered"), "%s: %s not offered (%s)" % (name, c, line(c)))
        t.ok(line("LUCKY13 (CVE-2013-0169), experimental").startswith("not vulnerable"),
             "%s: not flagged for LUCKY13" % name)
        bad = [l.strip() for l in out.splitlines()
               if re.search(r"\bVULNERABLE\b|potentially VULNERABLE|NOT ok", l)]
        t.ok(not bad, "%s: nothing flagged vulnerable or NOT ok" % name, "\n".join(bad) or out[-2000:])
t.done()
