#!/usr/bin/env python3
"""DMARC (filters/dmarc.c) end to end over SMTP with the test DNS server:
pass by aligned DKIM (relaxed and strict), p=none (symbol only),
p=quarantine (held in moat's quarantine), p=reject (550 5.7.1 with the
reference id), sp= for a subdomain, pct=0 (next lower policy), no record,
DNS failure (DMARC_TEMPFAIL, delivered), the configurable actions, the
aggregate-report record lines, and config errors.

SPF: until filters/spf.c lands, msg_ctx->auth.spf stays unset and DKIM
alignment decides every case here; the SPF-aligned pass case checks itself
and is skipped while no spf= result appears."""
import datetime
import glob
import json
import os
import re
import shutil
import smtplib
import subprocess
import tempfile

from moattest import TAP, Moat, Sink, DNSServer, MOATD, SRCDIR, SYS_PYTHON, have_dnslib

t = TAP()
if not have_dnslib():
    t.skip_all("python3-dnslib not installed (needed for the test DNS server)")
if subprocess.run([SYS_PYTHON, "-c", "import dkim"], stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL).returncode != 0 or not shutil.which("opendkim-genkey"):
    t.skip_all("dkimpy (python3-dkim) or opendkim-genkey missing: no signer for the test messages")
SIGNER = os.path.join(SRCDIR, "tests", "integration", "dkimsign.py")


def crlf(b):
    return b.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def msg(frm, subject="report", body=b"Numbers attached.\n"):
    return crlf(b"From: Ann <" + frm.encode() + b">\nTo: x@relay.test\nSubject: " + subject.encode() +
                b"\nDate: Mon, 23 Nov 2026 10:00:00 +0000\nMessage-ID: <" + subject.encode() + b"@m.test>\n\n" + body)


def sign(data, domain, sel, key):
    return subprocess.run([SYS_PYTHON, SIGNER, "--domain", domain, "--selector", sel, "--key", key],
                          input=data, stdout=subprocess.PIPE, check=True).stdout


def send(m, data, frm):
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=60)
    try:
        s.sendmail(frm, ["x@relay.test"], data)
        r = (250, "")
    except smtplib.SMTPDataError as e:
        r = (e.smtp_code, e.smtp_error.decode())
    s.quit()
    return r


def deliver(m, sink, data, frm, desc):
    with sink.lock:
        n = len(sink.messages)
    code, text = send(m, data, frm)
    if code != 250 or not sink.wait_messages(n + 1, 30):
        t.ok(False, desc + ": delivered", "%s %s" % (code, text))
        return ""
    with sink.lock:
        d = sink.messages[-1]["data"].decode("utf-8", "replace")
    return re.sub(r"\r\n[ \t]+", " ", d.split("\r\n\r\n")[0])


def ar(h):
    r = re.search(r"^Authentication-Results: (.*)$", h, re.M)
    return r.group(1) if r else ""


def tests_of(h):
    r = re.search(r"^X-Spam-Status: .* tests=(\S*)", h, re.M)
    return r.group(1).split(",") if r else []


kd = tempfile.mkdtemp(prefix="moat-dmarckeys-")
subprocess.run(["opendkim-genkey", "-b", "1024", "-d", "x", "-s", "k", "-D", kd], check=True)
KEY = os.path.join(kd, "k.private")
PUB = "".join(re.findall(r'"([^"]*)"', open(os.path.join(kd, "k.txt")).read()))
ZONE = {}
for d in ("sender.test", "relaxed.test", "strict.test", "other.test", "quar.test", "parent.test", "pct.test"):
    ZONE["k._domainkey." + d] = [["TXT", PUB]]
ZONE.update({
    "_dmarc.sender.test": [["TXT", "v=DMARC1; p=reject; rua=mailto:dmarc@sender.test"]],
    "_dmarc.relaxed.test": [["TXT", "v=DMARC1; p=reject"]],
    "_dmarc.strict.test": [["TXT", "v=DMARC1; p=reject; adkim=s"]],
    "_dmarc.none.test": [["TXT", "v=DMARC1; p=none"]],
    "_dmarc.quar.test": [["TXT", "v=DMARC1; p=quarantine"]],
    "_dmarc.parent.test": [["TXT", "v=DMARC1; p=none; sp=reject"]],
    "_dmarc.pct.test": [["TXT", "v=DMARC1; p=reject; pct=0"]],
    "_dmarc.flaky.test": [["SERVFAIL"]],
    "_dmarc.two.test": [["TXT", "v=DMARC1; p=reject"], ["TXT", "v=DMARC1; p=none"]],
    "_dmarc.bad.test": [["TXT", "v=DMARC1; p=bogus"]],
    "_dmarc.spf.test": [["TXT", "v=DMARC1; p=none"]],
    "spf.test": [["TXT", "v=spf1 ip4:127.0.0.1 -all"]],
})

try:
    with Sink() as sink, DNSServer(ZONE) as dns:
        relay = {"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}
        with Moat(domains=relay, dns=dns, extra="authserv-id mx.moat.test") as m:
            h = deliver(m, sink, sign(msg("ann@sender.test", "pass"), "sender.test", "k", KEY), "ann@sender.test", "pass")
            t.ok(re.search(r"dkim=pass header\.d=sender\.test.*;\s*dmarc=pass \(p=reject\) header\.from=sender\.test", ar(h)),
                 "aligned DKIM: dkim=pass header.d=sender.test; dmarc=pass header.from=sender.test", ar(h))
            t.ok("DMARC_PASS" in tests_of(h), "DMARC_PASS", h)

            h = deliver(m, sink, sign(msg("ann@mail.relaxed.test", "relaxed"), "relaxed.test", "k", KEY),
                        "ann@mail.relaxed.test", "relaxed")
            t.ok(re.search(r"dmarc=pass \(p=reject\) header\.from=mail\.relaxed\.test", ar(h)),
                 "relaxed alignment: d=relaxed.test passes for From mail.relaxed.test (record of the organizational domain)", ar(h))

            code, text = send(m, sign(msg("ann@mail.strict.test", "strict"), "strict.test", "k", KEY), "ann@mail.strict.test")
            t.ok(code == 550 and "5.7.1" in text and "DMARC policy of mail.strict.test: reject" in text,
                 "adkim=s: d=strict.test does not align with mail.strict.test -> rejected", "%s %s" % (code, text))

            h = deliver(m, sink, sign(msg("ann@strict.test", "strict2"), "strict.test", "k", KEY), "ann@strict.test", "strict exact")
            t.ok("dmarc=pass" in ar(h), "adkim=s: the exact domain passes", ar(h))

            code, text = send(m, msg("ann@sender.test", "forged"), "ann@sender.test")
            t.ok(code == 550 and "5.7.1" in text and "DMARC policy of sender.test: reject" in text and re.search(r"ref \S+", text),
                 "p=reject, unsigned: 550 5.7.1 with the reference id", "%s %s" % (code, text))
            t.ok(m.wait_log(r"dmarc: qid=\S+ from=sender\.test record=sender\.test p=reject .*result=fail .*disposition=reject") is not None,
                 "the DMARC evaluation is logged")

            code, text = send(m, sign(msg("ann@sender.test", "other"), "other.test", "k", KEY), "ann@sender.test")
            t.eq(code, 550, "p=reject, valid but unaligned signature (d=other.test): rejected")

            h = deliver(m, sink, msg("ann@none.test", "none"), "ann@none.test", "p=none")
            t.ok(re.search(r"dmarc=fail \(p=none\) header\.from=none\.test", ar(h)) and "DMARC_FAIL_NONE" in tests_of(h),
                 "p=none failure: delivered with DMARC_FAIL_NONE only", h)

            with sink.lock:
                before = len(sink.messages)
            code, _ = send(m, sign(msg("ann@quar.test", "quarantined"), "other.test", "k", KEY), "ann@quar.test")
            t.eq(code, 250, "p=quarantine failure: 250 to the client")
            t.ok(m.wait_log(r"event=quarantined ") is not None, "quarantined")
            r = m.cli("quarantine", "list")
            t.ok(r.returncode == 0 and "x@relay.test" in r.stdout and "quar.test" in r.stdout,
                 "moat quarantine list shows it", r.stdout + r.stderr)
            with sink.lock:
                t.eq(len(sink.messages), before, "and it was not delivered")

            code, text = send(m, msg("ann@sub.parent.test", "sub"), "ann@sub.parent.test")
            t.ok(code == 550 and "DMARC policy of sub.parent.test: reject" in text,
                 "a subdomain without its own record: sp=reject of the parent applies", "%s %s" % (code, text))
            h = deliver(m, sink, msg("ann@parent.test", "parent"), "ann@parent.test", "parent")
            t.ok(re.search(r"dmarc=fail \(p=none\) header\.from=parent\.test", ar(h)), "the parent itself: p=none", ar(h))

            with sink.lock:
                before = len(sink.messages)
            code, _ = send(m, msg("ann@pct.test", "pct"), "ann@pct.test")
            t.eq(code, 250, "p=reject with pct=0: not rejected")
            t.ok(m.wait_log(r"dmarc: qid=\S+ from=pct\.test .*policy=quarantine sampled_out=yes disposition=quarantine") is not None,
                 "pct=0: the next lower policy (quarantine) applies")

            h = deliver(m, sink, msg("ann@flaky.test", "flaky"), "ann@flaky.test", "tempfail")
            t.ok(re.search(r"dmarc=temperror header\.from=flaky\.test", ar(h)) and "DMARC_TEMPFAIL" in tests_of(h),
                 "_dmarc SERVFAIL: DMARC_TEMPFAIL, temperror, delivered (no reject)", h)

            h = deliver(m, sink, msg("ann@norecord.test", "norec"), "ann@norecord.test", "none")
            t.ok(re.search(r"dmarc=none header\.from=norecord\.test", ar(h)) and "DMARC_NONE" in tests_of(h),
                 "no record: dmarc=none, DMARC_NONE", h)
            h = deliver(m, sink, msg("ann@two.test", "two"), "ann@two.test", "two records")
            t.ok("dmarc=none" in ar(h), "two v=DMARC1 records: no policy (RFC 7489 6.6.3)", ar(h))
            h = deliver(m, sink, msg("ann@bad.test", "bad"), "ann@bad.test", "bad record")
            t.ok("dmarc=permerror" in ar(h) and "DMARC_PERMERROR" in tests_of(h), "p=bogus: permerror, delivered", h)

            # SPF alignment: only once filters/spf.c fills msg_ctx->auth.spf
            with sink.lock:
                n = len(sink.messages)
            code, text = send(m, msg("ann@spf.test", "spf"), "ann@spf.test")
            h = ""
            if code == 250 and sink.wait_messages(n + 1, 30):
                with sink.lock:
                    h = re.sub(r"\r\n[ \t]+", " ", sink.messages[-1]["data"].decode("utf-8", "replace").split("\r\n\r\n")[0])
            if "spf=" in ar(h) or code != 250:
                t.ok(re.search(r"spf=pass smtp\.mailfrom=spf\.test.*dmarc=pass \(p=none\)", ar(h)),
                     "aligned SPF pass (v=spf1 ip4:127.0.0.1 -all): dmarc=pass", "%s %s %s" % (code, text, ar(h)))
            else:
                t.ok(True, "# SKIP no SPF result yet (filters/spf.c not merged): SPF alignment not tested")

            # the aggregate-report records
            day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
            files = glob.glob(os.path.join(m.state, "dmarc", "records-*.jsonl"))
            lines = []
            for fn in files:
                with open(fn) as f:
                    lines += [json.loads(x) for x in f if x.strip()]
            t.ok(files and os.path.basename(files[0]) in ("records-%s.jsonl" % day, "records-%s.jsonl" %
                 (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)).strftime("%Y%m%d")),
                 "STATE-DIR/dmarc/records-YYYYMMDD.jsonl", repr(files))
            rec = [x for x in lines if x.get("header_from") == "sender.test" and x["policy_evaluated"]["dkim"] == "pass"]
            t.ok(rec and rec[0]["source_ip"] == "127.0.0.1" and rec[0]["envelope_from"] == "sender.test"
                 and rec[0]["dkim"] == [{"domain": "sender.test", "selector": "k", "result": "pass"}]
                 and rec[0]["policy_published"]["p"] == "reject" and rec[0]["policy_evaluated"]["disposition"] == "none",
                 "a JSON line per evaluated message: IP, header.from, envelope from, DKIM, policy, disposition", repr(rec[:1]))
            rej = [x for x in lines if x.get("header_from") == "sender.test" and x["policy_evaluated"]["disposition"] == "reject"]
            t.ok(len(rej) >= 2, "rejected messages are recorded too", repr(lines[:3]))
            t.ok(not [x for x in lines if x.get("header_from") in ("flaky.test", "norecord.test")],
                 "no record line without an evaluated policy")
            m.stop()
            log = m.log()
            t.ok(not re.search(r"Sanitizer|runtime error:", log), "no sanitizer report in moatd's log", log[-3000:])

        # configurable actions: reject -> score only, quarantine -> reject
        with Moat(domains=relay, dns=dns, extra="dmarc-reject-action score\ndmarc-quarantine-action reject") as m:
            h = deliver(m, sink, msg("ann@sender.test", "scored"), "ann@sender.test", "score")
            t.ok("DMARC_FAIL_REJECT" in tests_of(h) and re.search(r"X-Spam-Score: 4\.00", h),
                 "dmarc-reject-action score: delivered with the DMARC_FAIL_REJECT score (4)", h)
            code, text = send(m, msg("ann@quar.test", "q2"), "ann@quar.test")
            t.ok(code == 550 and "DMARC policy of quar.test: quarantine" in text,
                 "dmarc-quarantine-action reject: p=quarantine rejected", "%s %s" % (code, text))
        with Moat(domains=relay, dns=dns, extra="dmarc-reject-action quarantine\nscore DMARC_FAIL_REJECT 1.5") as m:
            code, _ = send(m, msg("ann@sender.test", "q3"), "ann@sender.test")
            t.eq(code, 250, "dmarc-reject-action quarantine: 250")
            t.ok(m.wait_log(r"event=quarantined .*DMARC_FAIL_REJECT\(1\.50\)") is not None,
                 "quarantined, with the score set by score DMARC_FAIL_REJECT 1.5")
        # a resolver that does not answer: the mail flows within the time budget
        dns.update({"k._domainkey.slow.test": [["TIMEOUT"]], "_dmarc.slow.test": [["TIMEOUT"]]})
        with Moat(domains=relay, dns=dns, extra="resolver-timeout 1") as m:
            import time
            t0 = time.time()
            h = deliver(m, sink, sign(msg("ann@slow.test", "slow"), "slow.test", "k", KEY), "ann@slow.test", "timeout")
            el = time.time() - t0
            t.ok(re.search(r"dkim=temperror \(key lookup failed\) header\.d=slow\.test.*dmarc=temperror header\.from=slow\.test", ar(h))
                 and "DKIM_TEMPFAIL" in tests_of(h) and "DMARC_TEMPFAIL" in tests_of(h),
                 "DNS timeouts: dkim=temperror, dmarc=temperror, delivered", h)
            t.ok(el < 8, "within the budget (resolver-timeout 1: %.1fs)" % el)
        with Moat(domains=relay, dns=dns, extra="dmarc no") as m:
            h = deliver(m, sink, msg("ann@sender.test", "off"), "ann@sender.test", "dmarc no")
            t.ok("dmarc=" not in ar(h) and "DMARC_" not in h, "dmarc no: not evaluated, delivered", h)

    # configuration errors
    m = Moat(domains={}, start=False)
    with open(m.conf, "a") as f:
        f.write("dmarc-reject-action bounce\ndmarc-quarantine-action\ndkim-min-key-bits 128\ndkim maybe\n")
    r = subprocess.run([MOATD, "-n", "-c", m.conf], capture_output=True, text=True)
    t.ok(r.returncode != 0 and re.search(r"moat\.conf:\d+: dmarc-reject-action: \"bounce\" is not one of reject, quarantine, score", r.stderr),
         "dmarc-reject-action bounce: FILE:LINE error", r.stderr)
    t.ok(re.search(r"moat\.conf:\d+: dmarc-quarantine-action: expected", r.stderr), "missing argument: FILE:LINE error", r.stderr)
    t.ok(re.search(r"moat\.conf:\d+: dkim-min-key-bits: expected a whole number from 512", r.stderr), "dkim-min-key-bits bounds", r.stderr)
    t.ok(re.search(r"moat\.conf:\d+: dkim: expected yes or no", r.stderr), "dkim yes|no", r.stderr)
    shutil.rmtree(m.tmp, ignore_errors=True)
finally:
    shutil.rmtree(kd, ignore_errors=True)
t.done()
