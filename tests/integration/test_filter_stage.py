#!/usr/bin/env python3
"""filter-stage: the client and envelope filters (helo, dnsbl, geoip, spf)
can run at the first RCPT instead of the end of data, as Postfix evaluates
its client restrictions at RCPT (smtpd_delay_reject).  A listed client is
then refused at RCPT, for every recipient, before any DATA; otherwise the
early symbols join the message's verdict once, and the DNS lists still look
up the message's URLs at the end of data.  A filter that needs the message
(dkim, dmarc, rules ...) cannot move: a FILE:LINE config error."""
import os
import re
import smtplib
import subprocess
import time

from moattest import TAP, Moat, Sink, SMTPConn, MOATD, DNSServer, have_dnslib, make_tmpdir

t = TAP()

# config checks first (no DNS needed)
tmp = make_tmpdir()
for line, want in (("filter-stage dkim rcpt", r"bad\.conf:4: filter-stage dkim rcpt: dkim needs"),
                   ("filter-stage rules rcpt", r"bad\.conf:4: .*rules needs the message"),
                   ("filter-stage nosuch rcpt", r"bad\.conf:4: filter-stage: no filter named"),
                   ("filter-stage dnsbl connect", r"bad\.conf:4: filter-stage: expected")):
    conf = os.path.join(tmp, "bad.conf")
    with open(conf, "w") as f:
        f.write("state-dir %s/state\nlisten smtp 127.0.0.1:2525\ndomain a.test deliver store\n%s\n"
                % (tmp, line))
    p = subprocess.run([MOATD, "-n", "-c", conf], capture_output=True, text=True)
    t.ok(p.returncode != 0 and re.search(want, p.stderr), "%s: refused with FILE:LINE" % line, p.stderr)
conf = os.path.join(tmp, "good.conf")
with open(conf, "w") as f:
    f.write("state-dir %s/state\nlisten smtp 127.0.0.1:2525\ndomain a.test deliver store\n"
            "filter-stage dnsbl rcpt\nfilter-stage helo rcpt\nfilter-stage dkim data\n" % tmp)
p = subprocess.run([MOATD, "-n", "-c", conf], capture_output=True, text=True)
t.ok(p.returncode == 0, "dnsbl and helo at rcpt, dkim at data: accepted", p.stderr)

if not have_dnslib():
    t.diag("skipping the SMTP part: python3-dnslib is not installed for /usr/bin/python3")
    t.done()


def msg(body="See you at noon."):
    return ("From: a@b.example\r\nTo: x@relay.test\r\nSubject: lunch\r\nMessage-ID: <%d@b.example>\r\n"
            "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n%s\r\n" % (time.time_ns(), body)).encode()


zone = {"2.0.0.127.zen.test": [["A", "127.0.0.2"]],      # listed hard: refused at RCPT
        "3.0.0.127.zen.test": [["A", "127.0.0.3"]],      # listed soft: scored
        "listed.example.uribl.test": [["A", "127.0.0.2"]]}
with DNSServer(zone) as dns, Sink() as sink:
    extra = "\n".join(["dnsbl zen.test score 3 returns 127.0.0.2=50",
                       "uribl uribl.test score 4",
                       "filter-stage dnsbl rcpt", "action tag 1", "action reject 20"])
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, extra=extra,
              dns=dns) as m:
        with SMTPConn(m.port, source="127.0.0.2") as c:
            c.cmd("EHLO client.example")
            c.cmd("MAIL FROM:<a@b.example>")
            r1 = c.cmd("RCPT TO:<x@relay.test>")
            r2 = c.cmd("RCPT TO:<y@relay.test>")
            t.ok(r1[0] == 550 and "5.7.1" in r1[1], "a client listed at 50 is refused at RCPT", r1)
            t.ok(r2[0] == 550, "and so is every other recipient of the transaction", r2)
            t.eq(c.cmd("DATA")[0], 554, "no DATA without a recipient")
            c.cmd("RSET")
            c.cmd("MAIL FROM:<a@b.example>")
            t.eq(c.cmd("RCPT TO:<x@relay.test>")[0], 550, "a new transaction asks again: still refused")
        t.ok(m.wait_log(r"event=early-verdict ip=127\.0\.0\.2 .*action=reject .*DNSBL_ZEN_TEST") is not None,
             "logged as an early verdict with the symbol")

        n0 = len(sink.messages)
        s = smtplib.SMTP("127.0.0.1", m.port, timeout=30, source_address=("127.0.0.3", 0))
        s.sendmail("a@b.example", ["x@relay.test"], msg("see http://www.listed.example/x"))
        s.quit()
        t.ok(sink.wait_messages(n0 + 1, 30), "a soft-listed client: accepted at RCPT and delivered")
        g = m.wait_log(r"event=verdict ip=127\.0\.0\.3 [^\n]*score=([-0-9.]+) action=(\w+)[^\n]* symbols=(\S+)")
        syms = g.group(3) if g else ""
        t.ok(g and syms.count("DNSBL_ZEN_TEST") == 1 and "URIBL_URIBL_TEST" in syms,
             "the RCPT-time symbol counts once in the message's verdict, and URIBL ran at data",
             g.group(0) if g else m.log()[-2000:])
        t.ok(g and abs(float(g.group(1)) - 7.0) < 0.01 and g.group(2) == "tag",
             "score 3 (DNSBL at RCPT) + 4 (URIBL at data) = 7: tagged", g.group(0) if g else "")
        with sink.lock:
            d = sink.messages[-1]["data"].decode("utf-8", "replace")
        t.ok("DNSBL_ZEN_TEST" in d and "URIBL_URIBL_TEST" in d, "both in X-Spam-Status", d[:800])

    # helo at rcpt: a bad HELO scored over the threshold is refused before DATA
    extra = "\n".join(["filter-stage helo rcpt", "score HELO_NOT_FQDN 25", "action reject 20"])
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, extra=extra,
              dns=dns) as m:
        with SMTPConn(m.port) as c:
            c.cmd("EHLO justaname")
            c.cmd("MAIL FROM:<a@b.example>")
            r = c.cmd("RCPT TO:<x@relay.test>")
            t.ok(r[0] == 550 and "5.7.1" in r[1], "HELO justaname scored 25 at RCPT: refused", r)
        with SMTPConn(m.port) as c:
            c.cmd("EHLO mx.client.example")
            c.cmd("MAIL FROM:<a@b.example>")
            t.eq(c.cmd("RCPT TO:<x@relay.test>")[0], 250, "a proper HELO passes")
t.done()
