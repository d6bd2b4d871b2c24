#!/usr/bin/env python3
"""DNS lists end to end over SMTP against the test DNS server (dnsserver.py):
DNSBL on the client IP (IPv4 and IPv6 nibble names) with scores, returns
maps, error codes and answers outside 127/8; DNSWL with a negative score;
URIBL on the registered domain of URLs in the body (Public Suffix List) and
on bare IP URLs, at most 20 domains per message; a resolver that never
answers costs one resolver-timeout for all lists, with *_TEMPFAIL symbols.
First, the resolver unit checks (tests/unit/test_resolver) against the same
server."""
import os
import re
import smtplib
import socket
import subprocess
import time

from moattest import TAP, Moat, Sink, MOATD, BUILDDIR, DNSServer, have_dnslib, free_port

t = TAP()
if not have_dnslib():
    t.skip_all("python3-dnslib is not installed for /usr/bin/python3: no test DNS server")

V6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0"
seq = [0]


def stopped_clean(m):
    """stop moatd; its log (workers' stderr) has no sanitizer report"""
    rc = m.stop()
    log = m.log()
    t.ok(rc == 0 and "Sanitizer" not in log and "runtime error" not in log,
         "moatd stops cleanly, no sanitizer report (rc %s)" % rc, log[-3000:])


def msg(body="See you at noon.", subject="lunch"):
    return ("From: a@b.example\r\nTo: x@relay.test\r\nSubject: %s\r\nMessage-ID: <%d@b.example>\r\n"
            "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n%s\r\n" % (subject, time.time_ns(), body)).encode()


def send(m, data, host="127.0.0.1", port=None, src=None):
    """send from a fresh sender address (and from source address src);
    (code, text, sender)"""
    seq[0] += 1
    sender = "s%d@b.example" % seq[0]
    s = smtplib.SMTP(host, port or m.port, timeout=30, source_address=(src, 0) if src else None)
    try:
        s.sendmail(sender, ["x@relay.test"], data)
        r = (250, "")
    except smtplib.SMTPDataError as e:
        r = (e.smtp_code, e.smtp_error.decode())
    try:
        s.quit()
    except smtplib.SMTPException:
        pass
    return r[0], r[1], sender


def verdict(m, sender, timeout=10):
    """the verdict log line of the message from sender: (action, score, symbols)"""
    g = m.wait_log(r"event=verdict [^\n]*from=<%s> [^\n]*score=([-0-9.]+) action=(\w+)[^\n]* symbols=(\S+)"
                   % re.escape(sender), timeout)
    if g is None:
        return (None, None, "")
    return (g.group(2), float(g.group(1)), g.group(3))


ips = [9]


def new_ip():
    """a loopback source address not used before: the resolver caches the
    NXDOMAIN of a name for 5 s (no SOA from the test server), so every
    scenario lists a fresh client address; (address, reversed)"""
    ips[0] += 1
    return "127.0.0.%d" % ips[0], "%d.0.0.127" % ips[0]


def count(sink):
    with sink.lock:
        return len(sink.messages)


def arrived(sink, needle=None, sender=None, timeout=20):
    """the delivered message containing needle (bytes) or from sender, as
    text, or """""
    end = time.time() + timeout
    while time.time() < end:
        with sink.lock:
            for x in sink.messages:
                if (needle and needle in x["data"]) or (sender and sender in (x["mail_from"] or "")):
                    return x["data"].decode("utf-8", "replace")
        time.sleep(0.1)
    return ""


# ---------------------------------------------------------------- resolver unit checks
ZONE = {
    "a.res.test": [["A", "127.0.0.2"], ["A", "127.0.0.3"], ["TXT", "v=spf1 -all"]],
    "two.res.test": [["TXT", ["two", "strings"]]],
    "aaaa.res.test": [["AAAA", "2001:db8::5"]],
    "sf.res.test": [["SERVFAIL"]],
    "10.2.0.192.in-addr.arpa": [["PTR", "mail.good.test"]],
    "mail.good.test": [["A", "192.0.2.10"]],
    "11.2.0.192.in-addr.arpa": [["PTR", "other.good.test"]],
    "other.good.test": [["A", "192.0.2.99"]],
    "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa": [["PTR", "mail6.good.test"]],
    "mail6.good.test": [["AAAA", "2001:db8::10"]],
    "13.2.0.192.in-addr.arpa": [["TIMEOUT"]],
}
for n in ["to"] + ["to%d" % i for i in range(1, 7)]:
    ZONE["%s.res.test" % n] = [["TIMEOUT"]]
with DNSServer(ZONE) as dns:
    env = dict(os.environ, MOAT_TEST_DNS="127.0.0.1:%d" % dns.port)
    r = subprocess.run([os.path.join(BUILDDIR, "tests", "unit", "test_resolver")], env=env,
                       capture_output=True, text=True, timeout=60)
    lines = r.stdout.splitlines()
    bad = [x for x in lines if x.startswith("not ok")]
    nok = len([x for x in lines if x.startswith("ok")])
    t.ok(r.returncode == 0 and not bad and nok > 50,
         "test_resolver against the test DNS server: %d checks pass (A, TXT, NXDOMAIN, NODATA, "
         "SERVFAIL, timeout, batch deadline, FCrDNS)" % nok, r.stdout[-3000:] + r.stderr[-2000:])
    for x in lines:
        if "within resolver-timeout" in x or "share one deadline" in x:
            t.diag(x)

# ---------------------------------------------------------------- DNSBL / DNSWL over SMTP
CONF = """dnsbl zen.test score 20
dnsbl bl2.test score 3 returns 127.0.0.4=6,127.0.0.5=0.5
dnswl wl.test score -4
dnsbl err.test score 10
dnsbl wide.test score 10
dnsbl sf.test score 10
action tag 5
action reject 15
resolver-timeout 2
"""
with DNSServer({}) as dns, Sink() as sink:
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, extra=CONF, dns=dns) as m:
        code, text, snd = send(m, msg())
        act, score, syms = verdict(m, snd)
        t.ok(code == 250 and act == "accept" and "DNSBL" not in syms and "DNSWL" not in syms,
             "a client on no list: accepted, no list symbol", "%s %s %s" % (code, act, syms))

        ip, rev = new_ip()
        dns.set(rev + ".zen.test", [["A", "127.0.0.2"]])
        code, text, snd = send(m, msg(), src=ip)
        act, score, syms = verdict(m, snd)
        t.ok(code == 550 and "5.7.1" in text, "%s listed on zen.test (score 20): 550 5.7.1" % ip, "%s %s" % (code, text))
        t.ok(act == "reject" and "DNSBL_ZEN_TEST(20.00)" in syms, "verdict: DNSBL_ZEN_TEST(20.00), reject", syms)

        ip, rev = new_ip()
        dns.set(rev + ".bl2.test", [["A", "127.0.0.4"]])
        code, text, snd = send(m, msg(), src=ip)
        act, score, syms = verdict(m, snd)
        t.ok(code == 250 and act == "tag" and "DNSBL_BL2_TEST(6.00)" in syms,
             "returns 127.0.0.4=6: the mapped score applies (tag)", "%s %s" % (act, syms))
        d = arrived(sink, sender=snd)
        t.ok(d != "", "delivered")
        t.ok(re.search(r"X-Spam-Status: Yes, score=6\.00 [^\r\n]*DNSBL_BL2_TEST", d) and
             re.search(r"\*\s+6\.00 DNSBL_BL2_TEST 127\.0\.0\.4", d),
             "X-Spam-Status/Report name the list and the returned address", d[:900])

        ip, rev = new_ip()
        dns.set(rev + ".bl2.test", [["A", "127.0.0.4"], ["A", "127.0.0.9"], ["A", "127.0.0.4"]])
        code, text, snd = send(m, msg(), src=ip)
        act, score, syms = verdict(m, snd)
        t.ok("DNSBL_BL2_TEST(9.00)" in syms,
             "127.0.0.4 (mapped 6) + 127.0.0.9 (unmapped: the list score 3), duplicates once = 9", syms)

        ip, rev = new_ip()
        dns.update({rev + ".bl2.test": [["A", "127.0.0.4"], ["A", "127.0.0.9"]],
                    rev + ".wl.test": [["A", "127.0.0.2"]]})
        code, text, snd = send(m, msg(), src=ip)
        act, score, syms = verdict(m, snd)
        t.ok(code == 250 and "DNSWL_WL_TEST(-4.00)" in syms and abs(score - 5.0) < 0.01,
             "DNSWL -4 brings 9 down to 5", "%s %s %s" % (act, score, syms))
        ip, rev = new_ip()
        dns.update({rev + ".bl2.test": [["A", "127.0.0.5"]], rev + ".wl.test": [["A", "127.0.0.2"]]})
        code, text, snd = send(m, msg(), src=ip)
        act, score, syms = verdict(m, snd)
        t.ok(act == "accept" and abs(score - (-3.5)) < 0.01 and "DNSBL_BL2_TEST(0.50)" in syms,
             "with a small listing the whitelist wins: accept at -3.5", "%s %s %s" % (act, score, syms))

        ip, rev = new_ip()
        dns.update({rev + ".err.test": [["A", "127.255.255.254"]],
                    rev + ".wide.test": [["A", "10.0.0.1"]],
                    rev + ".sf.test": [["SERVFAIL"]]})
        code, text, snd = send(m, msg(), src=ip)
        act, score, syms = verdict(m, snd)
        t.ok(code == 250 and act == "accept", "error codes, a wildcard answer and SERVFAIL: accepted", "%s %s" % (code, syms))
        t.ok("DNSBL_ERR_TEST_ERROR(0.00)" in syms and "DNSBL_ERR_TEST(" not in syms,
             "127.255.255.254 (Spamhaus error code): DNSBL_ERR_TEST_ERROR, not a listing", syms)
        t.ok("DNSBL_WIDE_TEST_ERROR(0.00)" in syms and "DNSBL_WIDE_TEST(" not in syms,
             "an answer outside 127.0.0.0/8 is ignored: DNSBL_WIDE_TEST_ERROR", syms)
        t.ok("DNSBL_SF_TEST_TEMPFAIL(0.00)" in syms, "SERVFAIL: DNSBL_SF_TEST_TEMPFAIL, score 0", syms)
        t.ok(m.wait_log(r"dnsbl event=list-error qid=\S+ zone=wide\.test") is not None, "a broken list is logged")
        stopped_clean(m)

    # IPv6 client from ::1: the nibble name; `score` overrides a list's symbol
    p6 = free_port()
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, dns=dns,
              extra=CONF + "listen smtp [::1]:%d\nscore DNSBL_BL2_TEST 1.25\n" % p6) as m:
        dns.set(V6 + ".zen.test", [["A", "127.0.0.2"]])
        try:
            code, text, snd = send(m, msg(), host="::1", port=p6)
            act, score, syms = verdict(m, snd)
            t.ok(code == 550 and "DNSBL_ZEN_TEST(20.00)" in syms and
                 m.wait_log(r"event=verdict ip=::1 from=<%s>" % re.escape(snd)) is not None,
                 "::1 listed as %s...zen.test (nibbles): rejected" % V6[:8], "%s %s" % (code, syms))
        except OSError as e:
            t.ok(False, "connect to [::1]:%d" % p6, str(e))
        code, text, snd = send(m, msg())
        act, score, syms = verdict(m, snd)
        t.ok(code == 250 and "DNSBL_ZEN_TEST" not in syms, "the IPv4 client is not on that list", syms)
        ip, rev = new_ip()
        dns.set(rev + ".bl2.test", [["A", "127.0.0.4"]])
        code, text, snd = send(m, msg(), src=ip)
        act, score, syms = verdict(m, snd)
        t.ok("DNSBL_BL2_TEST(1.25)" in syms, "score DNSBL_BL2_TEST 1.25 overrides the list's score", syms)
        stopped_clean(m)

    # URIBL: registered domains via the Public Suffix List, bare IP URLs
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, dns=dns,
              extra="uribl uribl.test score 7\nuribl multi.test score 2 returns 127.0.0.8=16\n"
                    "action tag 5\naction reject 15\n") as m:
        dns.update({"example.co.uk.uribl.test": [["A", "127.0.0.2"]],
                    "7.2.0.192.uribl.test": [["A", "127.0.0.2"]],
                    "d25.test.uribl.test": [["A", "127.0.0.2"]],
                    "d3.test.uribl.test": [["A", "127.0.0.2"]]})
        code, text, snd = send(m, msg("Great offer: http://www.shop.example.co.uk/deal?x=1 and "
                                      "https://harmless.example.org/ too"))
        act, score, syms = verdict(m, snd)
        t.ok(code == 250 and act == "tag" and "URIBL_URIBL_TEST(7.00)" in syms,
             "URL host www.shop.example.co.uk looked up as example.co.uk.uribl.test: URIBL hit, tagged",
             "%s %s %s" % (code, act, syms))
        d = arrived(sink, b"www.shop.example.co.uk")
        t.ok(re.search(r"\*\s+7\.00 URIBL_URIBL_TEST example\.co\.uk=127\.0\.0\.2", d),
             "the report names the domain", d[:900])
        code, text, snd = send(m, msg("click http://192.0.2.7/login"))
        act, score, syms = verdict(m, snd)
        t.ok("URIBL_URIBL_TEST(7.00)" in syms, "a bare IP URL is looked up reversed (7.2.0.192.uribl.test)", syms)
        code, text, snd = send(m, msg("only http://www.example.co.uk.evil.test/ here"))
        act, score, syms = verdict(m, snd)
        t.ok(act == "accept" and "URIBL" not in syms, "another registered domain: no hit", syms)
        dns.set("shop.test.multi.test", [["A", "127.0.0.8"]])
        code, text, snd = send(m, msg("http://a.shop.test/ http://b.shop.test/"))
        act, score, syms = verdict(m, snd)
        t.ok(code == 550 and "URIBL_MULTI_TEST(16.00)" in syms and "URIBL_URIBL_TEST" not in syms,
             "returns map on a URIBL (127.0.0.8=16); two hosts of one domain count once: rejected",
             "%s %s" % (code, syms))
        hostile = ("http://%s.test/ http://exämple.com/ http://a..b.test/ http://.test/ http://co.uk/ "
                   "http://[::1]/ http://999.1.1.1/ http://%s/" % ("a." * 120, "x" * 300))
        code, text, snd = send(m, msg(hostile))
        act, score, syms = verdict(m, snd)
        t.ok(code == 250 and act == "accept" and "URIBL" not in syms,
             "hostile URL hosts (long, 8-bit, empty labels, a bare public suffix): no lookup, no crash",
             "%s %s" % (code, syms))
        urls = " ".join("http://www.d%d.test/" % i for i in range(1, 31))
        code, text, snd = send(m, msg(urls))
        act, score, syms = verdict(m, snd)
        rep = arrived(sink, b"http://www.d30.test/").split("\r\n\r\n")[0]
        t.ok("URIBL_URIBL_TEST(7.00)" in syms and "d3.test=127.0.0.2" in rep and "d25.test" not in rep,
             "30 domains: the first 20 are looked up (d3 hits), d25 (listed too) is not", syms + rep[:900])
        stopped_clean(m)

# ---------------------------------------------------------------- a resolver that never answers
with DNSServer({"*.to1.test": [["TIMEOUT"]], "*.to2.test": [["TIMEOUT"]], "*.to3.test": [["TIMEOUT"]],
                "*.to4.test": [["TIMEOUT"]], "*.to5.test": [["TIMEOUT"]], "*.touri.test": [["TIMEOUT"]]}) as dns, \
        Sink() as sink:
    conf = "".join("dnsbl to%d.test score 10\n" % i for i in range(1, 6))
    conf += "uribl touri.test score 10\nresolver-timeout 1\naction reject 15\n"
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, extra=conf, dns=dns) as m:
        for attempt in (1, 2):
            t0 = time.time()
            code, text, snd = send(m, msg("see http://www.a.example.com/ and http://b.example.net/"))
            el = time.time() - t0
            act, score, syms = verdict(m, snd)
            t.ok(code == 250 and act == "accept", "resolver times out for everything: accepted (message %d)" % attempt,
                 "%s %s" % (code, text))
            t.ok(all("DNSBL_TO%d_TEST_TEMPFAIL(0.00)" % i in syms for i in range(1, 6)) and
                 "URIBL_TOURI_TEST_TEMPFAIL(0.00)" in syms,
                 "*_TEMPFAIL symbols for the 5 DNSBLs and the URIBL, score 0", syms)
            t.ok(el < 4.0, "5 DNSBL zones + 2 URIBL lookups took %.2fs: one resolver-timeout (1s), not 7" % el)
        t.ok(sink.wait_messages(2, 20), "both delivered")
        stopped_clean(m)

# ---------------------------------------------------------------- config errors
m = Moat(domains={}, start=False)
with open(m.conf, "a") as f:
    f.write("dnsbl zen.test\n"
            "dnsbl zen.test score 5 returns 10.0.0.1=3\n"
            "dnswl bad..zone score -1\n"
            "uribl u.test score lots\n"
            "dnsbl ok.test score 5 returns 127.0.0.2\n"
            "dnsbl ok.test score 5\n"
            "dnsbl ok.test score 7\n"
            "dnsbl ok2.test score 5 colour blue\n")
r = subprocess.run([MOATD, "-n", "-c", m.conf], capture_output=True, text=True)
err = r.stderr
n0 = sum(1 for _ in open(m.conf)) - 8
t.ok(r.returncode != 0, "bad dnsbl lines: moatd -n fails", err)
for i, rx in enumerate([r"dnsbl: expected \"dnsbl ZONE score N",
                        r"returns: \"10\.0\.0\.1\" is not an address in 127\.0\.0\.0/8",
                        r"dnswl: \"bad\.\.zone\" is not a DNS zone",
                        r"uribl u\.test: score \"lots\" is not a number",
                        r"\"127\.0\.0\.2\" is not ADDRESS=SCORE",
                        None,
                        r"dnsbl: ok\.test is configured twice",
                        r"unknown option \"colour\""]):
    if rx:
        t.ok(re.search(r"moat\.conf:%d: .*%s" % (n0 + i + 1, rx), err) is not None,
             "FILE:LINE error: %s" % rx.replace("\\", ""), err)
subprocess.run(["rm", "-rf", m.tmp])
t.done()
