#!/usr/bin/env python3
"""DKIM verification (filters/dkim.c) end to end over SMTP: keys served by
the test DNS server, messages through moatd, results read from the
delivered message's Authentication-Results and X-Spam-Status headers.

- the conformance vectors in ../shared/conformance/dkim (RFC 6376 RSA and
  RFC 8463 ed25519 signatures of football.example.com, the exim ed25519
  vector of test.ex) verify; tampered copies (body byte, signed header) fail;
- messages signed by a real signer (keys from opendkim-genkey, signed by
  dkimpy under /usr/bin/python3) verify, altered ones fail, a 512-bit RSA
  key gives DKIM_KEY_TOO_SMALL (fail), l= shorter than the body gives
  DKIM_BODY_LENGTH, a DNS failure gives DKIM_TEMPFAIL (temperror) and the
  mail still flows, an unsigned message gives dkim=none."""
import os
import re
import shutil
import smtplib
import subprocess
import tempfile

from moattest import TAP, Moat, Sink, DNSServer, SHARED, SRCDIR, SYS_PYTHON, have_dnslib

t = TAP()
if not have_dnslib():
    t.skip_all("python3-dnslib not installed (needed for the test DNS server)")
VEC = os.path.join(SHARED, "conformance", "dkim")
SIGNER = os.path.join(SRCDIR, "tests", "integration", "dkimsign.py")
have_vec = os.path.isfile(os.path.join(VEC, "rfc6376.signed.msg"))
have_signer = subprocess.run([SYS_PYTHON, "-c", "import dkim"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL).returncode == 0 and shutil.which("opendkim-genkey")


def crlf(b):
    return b.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def send(m, data, frm="joe@football.example.com", to="x@relay.test"):
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=60)
    try:
        s.sendmail(frm, [to], data)
        r = (250, "")
    except smtplib.SMTPDataError as e:
        r = (e.smtp_code, e.smtp_error.decode())
    s.quit()
    return r


def deliver(m, sink, data, desc, **kw):
    """send, wait for delivery; the delivered header section (unfolded) or ''"""
    with sink.lock:
        n = len(sink.messages)
    code = send(m, data, **kw)[0]
    if code != 250 or not sink.wait_messages(n + 1, 30):
        t.ok(False, desc + ": delivered", "code %s" % code)
        return ""
    with sink.lock:
        d = sink.messages[-1]["data"].decode("utf-8", "replace")
    return re.sub(r"\r\n[ \t]+", " ", d.split("\r\n\r\n")[0])


def ar(hdr):
    m = re.search(r"^Authentication-Results: (.*)$", hdr, re.M)
    return m.group(1) if m else ""


def tests_of(hdr):
    m = re.search(r"^X-Spam-Status: .* tests=(\S*)", hdr, re.M)
    return m.group(1).split(",") if m else []


def keys_zone():
    zone = {}
    with open(os.path.join(VEC, "keys-testpublickeys.txt")) as f:
        for line in f:
            if line.strip():
                name, txt = line.rstrip("\n").split(None, 1)
                zone[name] = [["TXT", txt]]
    return zone


def genkey(d, bits, domain, sel):
    subprocess.run(["opendkim-genkey", "-b", str(bits), "-d", domain, "-s", sel, "-D", d],
                   check=True, stderr=subprocess.DEVNULL)
    txt = open(os.path.join(d, sel + ".txt")).read()
    rec = "".join(re.findall(r'"([^"]*)"', txt))
    return os.path.join(d, sel + ".private"), rec


def sign(msg, domain, sel, key, *extra):
    r = subprocess.run([SYS_PYTHON, SIGNER, "--domain", domain, "--selector", sel, "--key", key] + list(extra),
                       input=msg, stdout=subprocess.PIPE, check=True)
    return r.stdout


with Sink() as sink, DNSServer(keys_zone() if have_vec else {}) as dns:
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, dns=dns,
              extra="authserv-id mx.moat.test") as m:
        # ---- conformance vectors ----
        if have_vec:
            signed = crlf(open(os.path.join(VEC, "rfc6376.signed.msg"), "rb").read())
            h = deliver(m, sink, signed, "rfc6376.signed.msg")
            a = ar(h)
            t.ok(re.search(r"dkim=pass header\.d=football\.example\.com header\.s=brisbane header\.b=\"9/dsDChY\"", a),
                 "RFC 8463 ed25519-sha256 signature verifies (header.b is the first 8 of b=)", a)
            t.ok(re.search(r"dkim=pass header\.d=football\.example\.com header\.s=test header\.b=\"icKcLSEZ\"", a),
                 "RFC 6376 rsa-sha256 signature of the same message verifies", a)
            t.ok("DKIM_VALID" in tests_of(h) and "DKIM_INVALID" not in tests_of(h), "DKIM_VALID, once", h)
            t.ok(m.wait_log(r"dkim: qid=\S+ sigs=2 checked=2 results=pass:football\.example\.com/brisbane/ed25519-sha256,"
                            r"pass:football\.example\.com/test/rsa-sha256") is not None, "one log line with both results")

            h = deliver(m, sink, signed.replace(b"We lost the game", b"We won the game"), "body changed")
            a = ar(h)
            t.ok(len(re.findall(r"dkim=fail \(body hash mismatch\) header\.d=football\.example\.com", a)) == 2,
                 "a changed body byte: both signatures fail with body hash mismatch", a)
            t.ok("DKIM_INVALID" in tests_of(h) and "DKIM_VALID" not in tests_of(h), "DKIM_INVALID", h)

            h = deliver(m, sink, signed.replace(b"Subject: Is dinner ready?", b"Subject: Is lunch ready?"),
                        "header changed")
            a = ar(h)
            t.ok(len(re.findall(r"dkim=fail \(signature verification failed\)", a)) == 2,
                 "a changed signed header: both signatures fail", a)

            ed2 = os.path.join(VEC, "ed25519test2.msg")
            dns.update({"sed._domainkey.test.ex": [["TXT", open(os.path.join(VEC, "eximtest.dns")).read().strip()]]})
            h = deliver(m, sink, crlf(open(ed2, "rb").read()), "exim ed25519 vector")
            t.ok(re.search(r"dkim=pass header\.d=test\.ex header\.s=sed", ar(h)), "exim's ed25519 vector (relaxed) verifies", ar(h))
        else:
            t.diag("../shared absent: conformance vectors not tested")
            for _ in range(8):
                t.ok(True, "# SKIP ../shared/conformance/dkim absent")

        # ---- unsigned ----
        plain = crlf(b"From: a@nosig.test\nTo: x@relay.test\nSubject: hi\nDate: Mon, 23 Nov 2026 10:00:00 +0000\n"
                     b"Message-ID: <p1@nosig.test>\n\nhello\n")
        h = deliver(m, sink, plain, "unsigned")
        t.ok(re.search(r"dkim=none", ar(h)) and "DKIM_NONE" in tests_of(h), "an unsigned message: dkim=none, DKIM_NONE", h)

        # ---- hostile signature fields: no crash, the mail flows, no pass ----
        body = b"From: a@evil.test\nTo: x@relay.test\nSubject: s\n\nhi\n"
        bad = [
            b"DKIM-Signature: v=1; a=rsa-sha256; s=x; h=from; bh=AAAA; b=AAAA\n",                 # no d=
            b"DKIM-Signature: v=1; a=rsa-sha256; d=evil.test; s=../../etc; h=from; bh=AAAA; b=AAAA\n",
            b"DKIM-Signature: v=1; a=rsa-sha999; d=evil.test; s=x; h=from; bh=AAAA; b=AAAA\n",
            b"DKIM-Signature: v=1; a=rsa-sha256; d=evil.test; s=" + b"x" * 300 + b"; h=from; bh=AAAA; b=" + b"A" * 5000 + b"\n",
            b"DKIM-Signature: ;;;;====;;;\n",
            b"DKIM-Signature: v=1; a=ed25519-sha256; d=evil.test; s=x; h=from; l=99999999999999999999; bh=AAAA; b=AAAA\n",
            b"DKIM-Signature: v=1; a=rsa-sha256; d=evil.test; s=x; h=from; bh=AAAA; b=AAAA\nNo colon in this header line\n",
        ]
        okc = 0
        for i, sigf in enumerate(bad):
            h = deliver(m, sink, crlf(sigf + body), "hostile %d" % i, frm="a@evil.test")
            if h and "dkim=pass" not in ar(h) and ("DKIM_INVALID" in tests_of(h) or "DKIM_NONE" in tests_of(h)):
                okc += 1
            else:
                t.diag("hostile %d: %s" % (i, h[:600]))
        t.eq(okc, len(bad), "malformed DKIM-Signature fields: delivered, never pass, DKIM_INVALID/none")

        # ---- a real signer ----
        if have_signer:
            kd = tempfile.mkdtemp(prefix="moat-dkimkeys-")
            try:
                k1, r1 = genkey(kd, 2048, "sender.test", "s2048")
                k5, r5 = genkey(kd, 512, "small.test", "s512")
                dns.update({"s2048._domainkey.sender.test": [["TXT", r1]],
                            "s512._domainkey.small.test": [["TXT", r5]],
                            "slow._domainkey.sender.test": [["SERVFAIL"]]})
                msg = crlf(b"From: Ann <ann@sender.test>\nTo: x@relay.test\nSubject: quarterly numbers\n"
                           b"Date: Mon, 23 Nov 2026 10:00:00 +0000\nMessage-ID: <q1@sender.test>\n\n"
                           b"The numbers are attached.\n\nAnn\n")
                s = sign(msg, "sender.test", "s2048", k1)
                h = deliver(m, sink, s, "2048-bit", frm="ann@sender.test")
                t.ok(re.search(r"dkim=pass header\.d=sender\.test header\.s=s2048", ar(h)),
                     "a 2048-bit RSA signature by dkimpy (key from opendkim-genkey) verifies", ar(h))
                h = deliver(m, sink, s.replace(b"attached", b"ATTACHED"), "2048 body", frm="ann@sender.test")
                t.ok(re.search(r"dkim=fail \(body hash mismatch\) header\.d=sender\.test", ar(h)), "its body altered: fail", ar(h))
                h = deliver(m, sink, s.replace(b"From: Ann <ann@", b"From: Bob <ann@"), "2048 hdr", frm="ann@sender.test")
                t.ok(re.search(r"dkim=fail \(signature verification failed\) header\.d=sender\.test", ar(h)),
                     "its From altered: fail", ar(h))
                h = deliver(m, sink, crlf(b"Received: from relay.example by x\n") + s, "2048 unsigned hdr", frm="ann@sender.test")
                t.ok(re.search(r"dkim=pass header\.d=sender\.test", ar(h)), "an unsigned header added above: still pass", ar(h))

                s5 = sign(msg.replace(b"sender.test", b"small.test"), "small.test", "s512", k5)
                h = deliver(m, sink, s5, "512-bit", frm="ann@small.test")
                t.ok(re.search(r"dkim=fail \(key too small: 512 bits\) header\.d=small\.test", ar(h)),
                     "a 512-bit RSA key: fail (key too small)", ar(h))
                t.ok("DKIM_KEY_TOO_SMALL" in tests_of(h) and "DKIM_VALID" not in tests_of(h), "DKIM_KEY_TOO_SMALL", h)

                sl = sign(msg, "sender.test", "s2048", k1, "--length")
                h = deliver(m, sink, sl.replace(b"\r\nAnn\r\n", b"\r\nAnn\r\n\r\nP.S. click http://bad.example/\r\n"),
                            "l=", frm="ann@sender.test")
                t.ok(re.search(r"dkim=pass \(l= covers \d+ of \d+ body bytes\) header\.d=sender\.test", ar(h)),
                     "l= shorter than the body: pass, noted", ar(h))
                t.ok("DKIM_BODY_LENGTH" in tests_of(h), "DKIM_BODY_LENGTH", h)
                h = deliver(m, sink, sl, "l= whole", frm="ann@sender.test")
                t.ok("DKIM_BODY_LENGTH" not in tests_of(h) and "dkim=pass" in ar(h), "l= covering the whole body: no DKIM_BODY_LENGTH", h)

                st = sign(msg, "sender.test", "slow", k1)
                h = deliver(m, sink, st, "tempfail", frm="ann@sender.test")
                t.ok(re.search(r"dkim=temperror \(key lookup failed\) header\.d=sender\.test header\.s=slow", ar(h)),
                     "key lookup SERVFAIL: temperror, the mail is delivered", ar(h))
                t.ok("DKIM_TEMPFAIL" in tests_of(h), "DKIM_TEMPFAIL", h)
                h = deliver(m, sink, sign(msg, "sender.test", "nokey", k1), "nokey", frm="ann@sender.test")
                t.ok(re.search(r"dkim=permerror \(no key\) header\.d=sender\.test", ar(h)), "no key record: permerror (no key)", ar(h))

                # a second signature added: every signature is reported, in header order
                both = sign(s5, "sender.test", "s2048", k1)
                h = deliver(m, sink, both, "two sigs", frm="ann@small.test")
                a = ar(h)
                t.ok(re.search(r"dkim=pass header\.d=sender\.test.*dkim=fail \(key too small", a),
                     "two signatures: both results, in header order", a)
                # ten signatures: only the first 8 are verified
                many = msg
                for _ in range(10):
                    many = sign(many, "sender.test", "s2048", k1)
                h = deliver(m, sink, many, "ten sigs", frm="ann@sender.test")
                t.eq(len(re.findall(r"dkim=pass", ar(h))), 8, "ten signatures: eight verified")
            finally:
                shutil.rmtree(kd, ignore_errors=True)
        else:
            for _ in range(15):
                t.ok(True, "# SKIP dkimpy or opendkim-genkey missing")
        m.stop()
        log = m.log()
        t.ok(not re.search(r"Sanitizer|runtime error:", log), "no sanitizer report in moatd's log", log[-3000:])

    # dkim no: not run at all
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, dns=dns, extra="dkim no") as m:
        h = deliver(m, sink, crlf(b"From: a@b.test\nSubject: x\n\nhi\n"), "dkim no")
        t.ok("dkim=" not in h and "DKIM_" not in h, "dkim no: no DKIM result", h)

t.done()
