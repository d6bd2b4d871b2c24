#!/usr/bin/env python3
"""HELO syntax symbols end to end over SMTP (filters/helo.c): not an FQDN,
bare IP, bad address literal, bad characters, localhost from loopback;
`score` overrides a default and can make a bad HELO reject; loopback
clients get no RDNS_* symbol even though the test zone has no PTR for
them (FCrDNS itself is checked by tests/unit/test_resolver against the
test DNS server, from test_dnsbl.py); `helo-checks no` turns it off."""
import re
import smtplib
import time

from moattest import TAP, Moat, Sink, DNSServer, have_dnslib

t = TAP()
if not have_dnslib():
    t.skip_all("python3-dnslib is not installed for /usr/bin/python3: no test DNS server")
seq = [0]


def stopped_clean(m):
    """stop moatd; its log (workers' stderr) has no sanitizer report"""
    rc = m.stop()
    log = m.log()
    t.ok(rc == 0 and "Sanitizer" not in log and "runtime error" not in log,
         "moatd stops cleanly, no sanitizer report (rc %s)" % rc, log[-3000:])


def msg():
    return ("From: a@b.example\r\nTo: x@relay.test\r\nSubject: hi\r\nMessage-ID: <%d@b.example>\r\n"
            "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nhello\r\n" % time.time_ns()).encode()


def send(m, helo, src="127.0.0.1"):
    seq[0] += 1
    sender = "h%d@b.example" % seq[0]
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30, local_hostname=helo, source_address=(src, 0))
    try:
        s.sendmail(sender, ["x@relay.test"], msg())
        r = (250, "")
    except smtplib.SMTPDataError as e:
        r = (e.smtp_code, e.smtp_error.decode())
    s.quit()
    g = m.wait_log(r"event=verdict [^\n]*from=<%s> [^\n]*action=(\w+)[^\n]* symbols=(\S+)" % re.escape(sender))
    return r[0], r[1], (g.group(1) if g else None), (g.group(2) if g else "")


with DNSServer({}) as dns, Sink() as sink:
    dom = {"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}
    with Moat(domains=dom, dns=dns, extra="score HELO_BARE_IP 20\naction tag 100\naction reject 15\n") as m:
        code, _, act, syms = send(m, "mail.client.test")
        t.ok(code == 250 and not re.search(r"(?:^|,)HELO_", syms) and "RDNS_" not in syms,
             "FQDN HELO from a loopback client: no HELO_ symbol, no RDNS_ symbol (no PTR in the zone)", syms)
        code, _, act, syms = send(m, "mailserver")
        t.ok(code == 250 and "HELO_NOT_FQDN(1.00)" in syms, "EHLO mailserver: HELO_NOT_FQDN(1.00)", syms)
        code, _, act, syms = send(m, "[300.1.1.1]", src="127.0.0.2")
        t.ok("HELO_BAD_LITERAL(1.00)" in syms, "EHLO [300.1.1.1]: HELO_BAD_LITERAL", syms)
        code, _, act, syms = send(m, "bad!host.test")
        t.ok("HELO_BAD_SYNTAX(1.00)" in syms, "EHLO bad!host.test: HELO_BAD_SYNTAX", syms)
        code, _, act, syms = send(m, "[127.0.0.1]")
        t.ok(code == 250 and not re.search(r"(?:^|,)HELO_", syms), "EHLO [127.0.0.1] (address literal): fine", syms)
        code, _, act, syms = send(m, "[IPv6:::1]")
        t.ok(code == 250 and not re.search(r"(?:^|,)HELO_", syms), "EHLO [IPv6:::1]: fine", syms)
        code, _, act, syms = send(m, "localhost", src="127.0.0.3")
        t.ok(code == 250 and not re.search(r"(?:^|,)HELO_", syms), "EHLO localhost from 127.0.0.3 (loopback): fine", syms)
        code, text, act, syms = send(m, "192.0.2.1")
        t.ok(code == 550 and "5.7.1" in text and act == "reject" and "HELO_BARE_IP(20.00)" in syms,
             "EHLO 192.0.2.1 (bare IP) with score HELO_BARE_IP 20: rejected", "%s %s %s" % (code, text, syms))
        t.ok("RDNS_" not in m.log(), "no RDNS_ symbol for any loopback client")
        stopped_clean(m)

    with Moat(domains=dom, dns=dns, extra="helo-checks no\naction tag 100\n") as m:
        code, _, act, syms = send(m, "mailserver")
        t.ok(code == 250 and act is not None and not re.search(r"(?:^|,)HELO_", syms), "helo-checks no: no HELO_ symbol", syms)
        code, _, act, syms = send(m, "192.0.2.1")
        t.ok(code == 250 and not re.search(r"(?:^|,)HELO_", syms), "helo-checks no: a bare IP passes", syms)
        stopped_clean(m)
t.done()
