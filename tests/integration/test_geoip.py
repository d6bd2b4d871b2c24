#!/usr/bin/env python3
"""GeoIP and ASN (geoip, geoip-asn) end to end.  Loopback is in no real
database, so the test writes its own small MaxMind DBs (127.0.0.0/24 GB,
127.0.1.0/24 CN in AS64512) and sends from those source addresses: the
symbols reach the verdict log line and X-Spam-Status, a configured score
rejects, an unknown address adds nothing.  With MaxMind's test databases
(../shared/testdata/geoip, skipped when absent) moatd opens real files,
reopens them on SIGHUP, and moatd -n refuses a database of the wrong kind
or an unreadable path.  The lookups on real addresses are checked by
tests/unit/test_geoip."""
import os
import re
import signal
import smtplib
import struct
import subprocess
import time

from moattest import TAP, Moat, Sink, MOATD, SHARED

t = TAP()
DB = os.path.join(SHARED, "testdata", "geoip", "test-data")
COUNTRY = os.path.join(DB, "GeoIP2-Country-Test.mmdb")
ASN = os.path.join(DB, "GeoLite2-ASN-Test.mmdb")
MSG = b"From: a@sender.test\r\nTo: x@relay.test\r\nSubject: geo\r\n\r\nhello\r\n"


# ---- a minimal MaxMind DB writer (format: https://maxmind.github.io/MaxMind-DB/)

def enc(v):
    """the data section encoding of v (no pointers)"""
    def ctrl(typ, size, payload):
        if typ > 7:     # extended type: the next byte is typ - 7
            first, ext = 0, bytes([typ - 7])
        else:
            first, ext = typ << 5, b""
        if size < 29:
            return bytes([first | size]) + ext + payload
        if size < 29 + 256:
            return bytes([first | 29]) + ext + bytes([size - 29]) + payload
        size -= 285
        return bytes([first | 30]) + ext + struct.pack(">H", size) + payload
    if isinstance(v, str):
        b = v.encode()
        return ctrl(2, len(b), b)
    if isinstance(v, dict):
        return ctrl(7, len(v), b"".join(enc(k) + enc(x) for k, x in v.items()))
    if isinstance(v, list):
        return ctrl(11, len(v), b"".join(enc(x) for x in v))
    if isinstance(v, tuple):     # (type, int): 5 uint16, 6 uint32, 9 uint64
        typ, n = v
        b = n.to_bytes(8, "big").lstrip(b"\0")
        return ctrl(typ, len(b), b)
    raise TypeError(v)


def mmdb(path, dbtype, nets):
    """nets: {"127.0.1.0/24": {...}}; an IPv4-only database, 24-bit records"""
    nodes = [[None, None]]
    data = b""
    for net, rec in nets.items():
        a, bits = net.split("/")
        ip = int.from_bytes(bytes(int(x) for x in a.split(".")), "big")
        off = len(data)
        data += enc(rec)
        n = 0
        for i in range(int(bits)):
            bit = (ip >> (31 - i)) & 1
            if i == int(bits) - 1:
                nodes[n][bit] = ("data", off)
            else:
                if not isinstance(nodes[n][bit], int):
                    nodes.append([None, None])
                    nodes[n][bit] = len(nodes) - 1
                n = nodes[n][bit]
    count = len(nodes)
    def rv(r):
        if r is None:
            return count
        if isinstance(r, tuple):
            return count + 16 + r[1]
        return r
    tree = b"".join(rv(l).to_bytes(3, "big") + rv(r).to_bytes(3, "big") for l, r in nodes)
    meta = enc({"node_count": (6, count), "record_size": (5, 24), "ip_version": (5, 4),
                "database_type": dbtype, "languages": ["en"],
                "binary_format_major_version": (5, 2), "binary_format_minor_version": (5, 0),
                "build_epoch": (9, 1700000000), "description": {"en": "moat test"}})
    with open(path, "wb") as f:
        f.write(tree + b"\0" * 16 + data + b"\xab\xcd\xefMaxMind.com" + meta)



def send(m, src):
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30, source_address=(src, 0))
    try:
        s.sendmail("a@sender.test", ["x@relay.test"], MSG)
        r = (250, "")
    except smtplib.SMTPDataError as e:
        r = (e.smtp_code, e.smtp_error.decode())
    s.quit()
    return r


def verdict(m, src, n=1):
    """the n-th verdict line for client src"""
    end = time.time() + 10
    while time.time() < end:
        lines = re.findall(r"event=verdict ip=%s .*" % re.escape(src), m.log())
        if len(lines) >= n:
            return lines[n - 1]
        time.sleep(0.05)
    return ""


with Sink() as sink:
    m = Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port}, start=False)
    cdb, adb = os.path.join(m.tmp, "country.mmdb"), os.path.join(m.tmp, "asn.mmdb")
    mmdb(cdb, "Moat-Test-Country", {"127.0.0.0/24": {"country": {"iso_code": "GB"}},
                                    "127.0.1.0/24": {"country": {"iso_code": "CN"}}})
    mmdb(adb, "Moat-Test-ASN", {"127.0.1.0/24": {"autonomous_system_number": (6, 64512),
                                                 "autonomous_system_organization": "Moat Test AS"}})
    m.write_conf(extra="\n".join(["geoip %s" % cdb, "geoip-asn %s" % adb,
                                  "score GEOIP_COUNTRY_CN 20", "score GEOIP_ASN_64512 0.5"]))
    with m:
        m.start()
        t.eq(send(m, "127.0.0.1")[0], 250, "a message from 127.0.0.1 (GB in the test database) is accepted")
        v = verdict(m, "127.0.0.1")
        t.ok("GEOIP_COUNTRY_GB(0.00)" in v and "GEOIP_ASN" not in v,
             "the verdict line shows GEOIP_COUNTRY_GB with score 0 (no ASN entry)", v)
        t.ok(sink.wait_messages(1, 30), "delivered")
        with sink.lock:
            hdr = sink.messages[0]["data"].decode("utf-8", "replace").split("\r\n\r\n")[0]
        t.ok(re.search(r"X-Spam-Status: No, .*tests=\S*GEOIP_COUNTRY_GB", hdr) is not None,
             "X-Spam-Status lists the country", hdr[:600])

        code, text = send(m, "127.0.1.1")
        t.ok(code == 550 and "5.7.1" in text, "from 127.0.1.1 (CN, score GEOIP_COUNTRY_CN 20): rejected", text)
        v = verdict(m, "127.0.1.1")
        t.ok("GEOIP_COUNTRY_CN(20.00)" in v and "GEOIP_ASN_64512(0.50)" in v and "action=reject" in v,
             "the verdict line has the country and the ASN with their configured scores", v)

        t.eq(send(m, "127.0.2.1")[0], 250, "from 127.0.2.1 (in neither database): accepted")
        v = verdict(m, "127.0.2.1")
        t.ok(v and "GEOIP_" not in v, "and no GEOIP symbol", v)
        t.ok("geoip-error" not in m.log(), "no lookup error")

if not (os.path.exists(COUNTRY) and os.path.exists(ASN)):
    t.ok(True, "# SKIP %s absent (the shared test data): real databases not tested" % DB)
    t.done()

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
