#!/usr/bin/env python3
"""SPF (filters/spf.c) end to end over SMTP: moatd with its resolver on the
test DNS server; each result (pass, fail, softfail, neutral, none,
permerror, temperror on SERVFAIL and on a timeout) shows as its symbol in
the verdict log line and as Received-SPF and Authentication-Results (spf=)
headers in the delivered message; the HELO identity for <> and beside the
MAIL FROM identity; `score SPF_FAIL 20` + `action reject 15` refuses with
550 5.7.1; `spf no` turns it off; `moat spf check` gives the same answers."""
import re
import smtplib
import threading
import time

from moattest import TAP, Moat, Sink, DNSServer, have_dnslib, SYS_PYTHON

t = TAP()
if not have_dnslib():
    t.skip_all("python3-dnslib is not installed for %s" % SYS_PYTHON)

ZONE = {
    "pass.test": [["TXT", "v=spf1 ip4:127.0.0.0/8 -all"]],
    "fail.test": [["TXT", "v=spf1 ip4:192.0.2.1 -all"]],
    "soft.test": [["TXT", "v=spf1 ~all"]],
    "neutral.test": [["TXT", "v=spf1 ?all"]],
    "none.test": [["A", "192.0.2.7"]],
    "perm.test": [["TXT", "v=spf1 ip4:127.0.0.1/33 -all"]],
    "twice.test": [["TXT", "v=spf1 +all"], ["TXT", "v=spf1 -all"]],
    "servfail.test": [["SERVFAIL"]],
    "slow.test": [["TIMEOUT"]],
    "helo-ok.test": [["TXT", "v=spf1 a -all"], ["A", "127.0.0.1"]],
    "helo-bad.test": [["TXT", "v=spf1 -all"]],
    "inc.test": [["TXT", "v=spf1 include:pass.test -all"]],
    # hostile data: none of it may reach libspf2 as is
    "nul.test": [["TXT", "v=spf1 a:foo.example.com\u0000 -all"]],
    "eight.test": [["TXT", "v=spf1 a:b\u00e4r.example.com -all"]],
    "big.test": [["TXT", "v=spf1 " + "ip4:192.0.2.1 " * 400 + "-all"]],
    "mx20.test": [["TXT", "v=spf1 mx -all"]] + [["MX", i, "mx%d.mx20.test" % i] for i in range(20)],
    "loop.test": [["TXT", "v=spf1 include:loop.test -all"]],
    "void.test": [["TXT", "v=spf1 a:n1.void.test a:n2.void.test a:n3.void.test -all"]],
    "macro.test": [["TXT", "v=spf1 exists:%{L50r+-=}.%{S}.%{d1000r}.macro.test -all"]],
    "many.test": [["TXT", "v=spf1 " + " ".join("a:h%d.many.test" % i for i in range(11)) + " -all"]]
                 + [["A", "192.0.2.%d" % i] for i in range(1, 3)],
}
for i in range(11):
    ZONE["h%d.many.test" % i] = [["A", "192.0.2.99"]]
MSG = (b"From: a@example.org\r\nTo: x@relay.test\r\nSubject: spf\r\n"
       b"Message-ID: <%d@example.org>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nhello\r\n")
seq = [0]


def send(m, sender, helo="mail.client.test"):
    seq[0] += 1
    s = smtplib.SMTP("127.0.0.1", m.port, local_hostname=helo, timeout=60)
    try:
        s.sendmail(sender, ["x@relay.test"], MSG % seq[0])
        r = (250, "")
    except smtplib.SMTPDataError as e:
        r = (e.smtp_code, e.smtp_error.decode())
    except smtplib.SMTPRecipientsRefused as e:
        code, text = list(e.recipients.values())[0]
        r = (code, text.decode())
    s.quit()
    return r


def delivered(sink, n):
    if not sink.wait_messages(n, 30):
        return ""
    with sink.lock:
        return sink.messages[n - 1]["data"].decode("utf-8", "replace").split("\r\n\r\n")[0]


def verdict_line(m, nth):
    end = time.time() + 20
    while time.time() < end:
        lines = [l for l in m.log().splitlines() if "event=verdict" in l]
        if len(lines) >= nth:
            return lines[nth - 1]
        time.sleep(0.05)
    return ""


with DNSServer(ZONE) as dns, Sink() as sink:
    n = 0
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, dns=dns,
              extra="resolver-timeout 1\naction tag 100\naction reject 200") as m:
        cases = [
            ("a@pass.test", "pass", "SPF_PASS"),
            ("a@fail.test", "fail", "SPF_FAIL"),
            ("a@soft.test", "softfail", "SPF_SOFTFAIL"),
            ("a@neutral.test", "neutral", "SPF_NEUTRAL"),
            ("a@none.test", "none", "SPF_NONE"),
            ("a@perm.test", "permerror", "SPF_PERMERROR"),
            ("a@twice.test", "permerror", "SPF_PERMERROR"),
            ("a@inc.test", "pass", "SPF_PASS"),
            ("a@servfail.test", "temperror", "SPF_TEMPERROR"),
            ("a@slow.test", "temperror", "SPF_TEMPERROR"),
        ]
        for sender, res, sym in cases:
            dom = sender.split("@")[1]
            code, text = send(m, sender)
            t.eq(code, 250, "%s: accepted (%s)" % (sender, res))
            n += 1
            hdr = delivered(sink, n)
            t.ok(re.search(r"^Received-SPF: %s \(" % res, hdr, re.M) is not None and
                 "identity=mailfrom;" in hdr and "client-ip=127.0.0.1;" in hdr,
                 "%s: Received-SPF: %s" % (sender, res), hdr[:900])
            t.ok(re.search(r"Authentication-Results: mx\.moat\.test;\s+spf=%s smtp\.mailfrom=%s"
                           % (res, re.escape(dom)), hdr) is not None,
                 "%s: Authentication-Results spf=%s smtp.mailfrom=%s" % (sender, res, dom), hdr[:900])
            v = verdict_line(m, n)
            t.ok(re.search(r"\b%s\(" % sym, v) is not None, "%s: %s in the verdict log line" % (sender, sym), v)
        t.ok(m.wait_log(r"spf: qid=\S+ ip=127\.0\.0\.1 identity=mailfrom domain=slow\.test "
                        r"result=temperror") is not None, "the timeout is logged with the queue id")

        # hostile records: permerror (our checks and limits), never a crash
        for sender, why in [("a@nul.test", "NUL"), ("a@eight.test", "8-bit"),
                            ("a@big.test", "record over 4096 octets"), ("a@mx20.test", "20 MX"),
                            ("a@loop.test", "include loop"), ("a@void.test", "3 void lookups"),
                            ("a@many.test", "11 DNS-querying terms")]:
            code, _ = send(m, sender)
            n += 1
            hdr = delivered(sink, n)
            t.ok(code == 250 and re.search(r"^Received-SPF: permerror \(", hdr, re.M) is not None,
                 "%s (%s): accepted, permerror" % (sender, why), hdr[:700])
        code, _ = send(m, "x.y+z=w@macro.test")
        n += 1
        hdr = delivered(sink, n)
        t.ok(code == 250 and re.search(r"^Received-SPF: (fail|permerror) \(", hdr, re.M) is not None,
             "macro transformers at their bounds: evaluated", hdr[:700])
        # pool threads evaluate at once: each message keeps its own result
        senders = ["c%d@%s" % (i, ("pass.test", "fail.test", "soft.test", "inc.test")[i % 4])
                   for i in range(24)]
        codes = []

        def one(snd):
            try:
                codes.append(send(m, snd)[0])
            except Exception as e:  # noqa: BLE001 - reported below
                codes.append(repr(e))
        th = [threading.Thread(target=one, args=(x,)) for x in senders]
        for x in th:
            x.start()
        for x in th:
            x.join()
        n0 = n
        n += len(senders)
        ok_all = sink.wait_messages(n, 60)
        want = {"pass.test": "pass", "fail.test": "fail", "soft.test": "softfail", "inc.test": "pass"}
        bad = []
        with sink.lock:
            msgs = [x["data"].decode("utf-8", "replace") for x in sink.messages[n0:n]]
        for d in msgs:
            mm = re.search(r'^Received-SPF: (\w+) .*?envelope-from="c\d+@([a-z.]+)"', d, re.M | re.S)
            if mm is None or want.get(mm.group(2)) != mm.group(1):
                bad.append(d[:300])
        t.ok(ok_all and codes.count(250) == len(senders) and not bad and len(msgs) == len(senders),
             "24 concurrent messages: each has its own sender's result", "codes=%s bad=%s" % (codes, bad[:2]))
        t.ok("Sanitizer" not in m.log() and m.proc.poll() is None, "moatd alive, no sanitizer report")

        # the null sender: the HELO identity, postmaster@HELO (RFC 7208 2.4)
        code, _ = send(m, "", helo="helo-ok.test")
        t.eq(code, 250, "<> with HELO helo-ok.test: accepted")
        n += 1
        hdr = delivered(sink, n)
        t.ok(re.search(r"^Received-SPF: pass \(", hdr, re.M) is not None and "identity=helo;" in hdr,
             "<>: Received-SPF: pass for the HELO identity", hdr[:900])
        t.ok(re.search(r"spf=pass smtp\.helo=helo-ok\.test", hdr) is not None,
             "<>: Authentication-Results spf=pass smtp.helo=helo-ok.test", hdr[:900])
        t.ok("SPF_PASS(" in verdict_line(m, n), "<>: SPF_PASS")

        # both identities: MAIL FROM passes, the HELO name fails
        code, _ = send(m, "a@pass.test", helo="helo-bad.test")
        n += 1
        hdr = delivered(sink, n)
        v = verdict_line(m, n)
        t.ok(code == 250 and "SPF_PASS(" in v and "SPF_HELO_FAIL(" in v,
             "MAIL FROM pass + HELO fail: SPF_PASS and SPF_HELO_FAIL", v)
        t.ok(re.search(r"spf=pass smtp\.mailfrom=pass\.test", hdr) is not None,
             "Authentication-Results reports the MAIL FROM identity", hdr[:900])

        # an unqualified HELO is not checked (RFC 7208 2.3)
        code, _ = send(m, "a@pass.test", helo="localhostish")
        n += 1
        v = verdict_line(m, n)
        t.ok(code == 250 and "SPF_PASS(" in v and "SPF_HELO_" not in v,
             "a HELO name without a dot adds no SPF_HELO_ symbol", v)

        # the CLI answers as the filter
        r = m.cli("spf", "check", "--ip", "127.0.0.1", "--helo", "helo-bad.test", "--sender", "a@fail.test")
        t.ok(r.returncode == 0 and r.stdout.startswith("mailfrom: fail domain=fail.test")
             and "\nhelo: fail domain=helo-bad.test" in r.stdout,
             "moat spf check: mailfrom fail, helo fail", r.stdout + r.stderr)
        r = m.cli("spf", "check", "--ip", "127.0.0.1", "--sender", "a@servfail.test")
        t.ok(r.stdout.startswith("mailfrom: temperror"), "moat spf check: SERVFAIL is temperror", r.stdout)
        r = m.cli("spf", "check", "--sender", "a@pass.test")
        t.eq(r.returncode, 2, "moat spf check without --ip: usage error")

    # scores: SPF_FAIL 20 over reject 15 refuses at the end of DATA
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, dns=dns,
              extra="score SPF_FAIL 20\naction reject 15") as m:
        code, text = send(m, "a@fail.test")
        t.ok(code == 550 and "5.7.1" in text, "score SPF_FAIL 20 + action reject 15: 550 5.7.1", "%s %s" % (code, text))
        t.ok(m.wait_log(r"event=verdict .*action=reject .*SPF_FAIL\(20\.00\)") is not None,
             "the reject verdict names SPF_FAIL(20.00)")
        code, _ = send(m, "a@pass.test")
        t.eq(code, 250, "a passing sender still gets through")
        n += 1
        t.ok(delivered(sink, n) != "", "and is delivered")

    # filter-stage spf rcpt: evaluated once, at the first RCPT
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, dns=dns,
              extra="filter-stage spf rcpt\nscore SPF_FAIL 20\naction reject 15") as m:
        code, text = send(m, "a@fail.test")
        t.ok(code == 550 and "5.7.1" in text, "filter-stage spf rcpt: SPF_FAIL 20 refuses the RCPT",
             "%s %s" % (code, text))
        code, _ = send(m, "a@pass.test")
        n += 1
        hdr = delivered(sink, n)
        t.ok(code == 250 and hdr.count("Received-SPF:") == 1 and
             re.search(r"spf=pass smtp\.mailfrom=pass\.test", hdr) is not None,
             "filter-stage spf rcpt: a pass is delivered with one Received-SPF and spf=pass", hdr[:900])
        t.eq(len(re.findall(r"spf: qid=\S+ ip=127\.0\.0\.1 identity=mailfrom domain=pass\.test", m.log())), 1,
             "filter-stage spf rcpt: evaluated once for the message")

    # spf no: no evaluation, no header
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, dns=dns,
              extra="spf no") as m:
        code, _ = send(m, "a@fail.test")
        n += 1
        hdr = delivered(sink, n)
        t.ok(code == 250 and "Received-SPF" not in hdr and "spf=" not in hdr,
             "spf no: no Received-SPF, no spf= result", hdr[:600])
t.done()
