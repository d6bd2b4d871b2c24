#!/usr/bin/env python3
"""GeoIP and ASN (geoip, geoip-asn) end to end: moatd opens MaxMind's test
databases, messages flow and are logged with their verdict (the test client
is on loopback, which no database knows: no GEOIP_* symbol, no error; the
lookups themselves are checked by tests/unit/test_geoip on chosen
addresses); moatd -n refuses a database of the wrong kind or an unreadable
path.  Skips without ../shared."""
import os
import re
import signal
import smtplib
import subprocess
import time

from moattest import TAP, Moat, Sink, MOATD, SHARED

t = TAP()
DB = os.path.join(SHARED, "testdata", "geoip", "test-data")
COUNTRY = os.path.join(DB, "GeoIP2-Country-Test.mmdb")
ASN = os.path.join(DB, "GeoLite2-ASN-Test.mmdb")
if not (os.path.exists(COUNTRY) and os.path.exists(ASN)):
    t.skip_all("%s absent (the shared test data)" % DB)
MSG = b"From: a@sender.test\r\nTo: x@relay.test\r\nSubject: geo\r\n\r\nhello\r\n"

with Sink() as sink:
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port},
              extra="\n".join(["geoip %s" % COUNTRY, "geoip-asn %s" % ASN,
                               "score GEOIP_COUNTRY_CN 3", "score GEOIP_ASN_4837 1"])) as m:
        t.ok(m.wait_log(r"engine: geoip country=\S+GeoIP2-Country-Test\.mmdb asn=\S+GeoLite2-ASN-Test\.mmdb")
             is not None, "the worker opened both databases")
        s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
        s.sendmail("a@sender.test", ["x@relay.test"], MSG)
        s.quit()
        t.ok(sink.wait_messages(1, 30), "a message from loopback is accepted and delivered")
        v = m.wait_log(r"event=verdict .*")
        t.ok(v is not None and "action=accept" in v.group(0), "its verdict is logged",
             v.group(0) if v else m.log()[-2000:])
        t.ok(v is not None and "GEOIP_" not in v.group(0), "loopback is in no database: no GEOIP symbol",
             v.group(0) if v else "")
        t.ok("geoip-error" not in m.log(), "no lookup error")

        # a reload (SIGHUP) opens them again in the new worker
        before = m.log().count("engine: geoip country=")
        m.proc.send_signal(signal.SIGHUP)
        ok = False
        end = time.time() + 20
        while time.time() < end and not ok:
            ok = m.log().count("engine: geoip country=") > before
            time.sleep(0.1)
        t.ok(ok, "after SIGHUP the new worker opens the databases again")
        s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
        s.sendmail("a@sender.test", ["x@relay.test"], MSG)
        s.quit()
        t.ok(sink.wait_messages(2, 30), "mail still flows after the reload")


def check(extra):
    m = Moat(domains={"relay.test": "relay smtp://127.0.0.1:1"}, extra=extra, start=False)
    r = subprocess.run([MOATD, "-n", "-c", m.conf], capture_output=True, text=True, timeout=60)
    m.__exit__()
    return m.conf, r


conf, r = check("geoip %s" % COUNTRY)
t.ok(r.returncode == 0, "moatd -n accepts a Country database", r.stderr)
conf, r = check("geoip %s" % os.path.join(DB, "GeoIP2-City-Test.mmdb"))
t.ok(r.returncode == 0, "and a City database", r.stderr)
conf, r = check("geoip %s" % ASN)
t.ok(r.returncode != 0 and "geoip-asn" in r.stderr, "an ASN database given to geoip is refused", r.stderr)
conf, r = check("geoip-asn %s" % COUNTRY)
t.ok(r.returncode != 0 and "ASN" in r.stderr, "a Country database given to geoip-asn is refused", r.stderr)
conf, r = check("geoip %s" % os.path.join(DB, "README.md"))
t.ok(r.returncode != 0 and "README.md" in r.stderr, "a file that is not a MaxMind DB is refused", r.stderr)
conf, r = check("geoip /nonexistent/GeoIP2-Country.mmdb")
t.ok(r.returncode != 0 and re.search(re.escape(conf) + r":\d+: geoip: cannot read /nonexistent", r.stderr),
     "an unreadable path is a FILE:LINE error", r.stderr)
conf, r = check("geoip %s\ngeoip %s" % (COUNTRY, COUNTRY))
t.ok(r.returncode != 0 and "set twice" in r.stderr, "geoip set twice is an error", r.stderr)

t.done()
