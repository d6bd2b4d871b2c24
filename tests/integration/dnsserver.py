#!/usr/bin/python3
"""dnsserver.py - a small authoritative DNS server for moat's tests (dnslib).

Runs under Debian's /usr/bin/python3 (package python3-dnslib); the test
harness (moattest.DNSServer) starts it as a subprocess on 127.0.0.1.

    /usr/bin/python3 dnsserver.py --port 0 --zone zone.json

prints "ready PORT" once it listens (UDP and TCP on the same port).
The zone is a JSON object: lowercase owner name (no final dot) -> list of
records, each a list:

    ["A", "127.0.0.2"]        ["AAAA", "::1"]        ["PTR", "mx.example.test"]
    ["TXT", "v=spf1 -all"]    ["TXT", ["two", "strings"]]   ["SPF", "v=spf1 ..."]
    ["MX", 10, "mx.example.test"]   ["CNAME", "target.test"]  ["NS", "ns.test"]
    ["TIMEOUT"]               no answer at all, for any type of this name
                              that has no record listed before it (as the
                              RFC 7208 suite's drivers do: [TXT, TIMEOUT]
                              answers TXT and times out the other types)
    ["SERVFAIL"]              rcode SERVFAIL
    ["DELAY", 1.5]            answer after 1.5 s (in a thread)
    ["TTL", 0]                TTL of the records of this name (default 0,
                              so the resolver's cache never hides a change)

A name that is not in the zone is NXDOMAIN; a name without a record of the
asked type is NOERROR with no answer (NODATA).  The zone file is re-read
when its mtime changes.  "*" as the first label is a wildcard.
"""
import argparse
import json
import os
import socket
import sys
import threading
import time

from dnslib import (AAAA, CNAME, MX, NS, PTR, QTYPE, RCODE, RR, SOA, TXT, A,
                    DNSRecord)

lock = threading.Lock()
zone = {}
zone_mtime = None
zone_path = None


def load():
    global zone, zone_mtime
    try:
        st = os.stat(zone_path)
    except OSError:
        return
    if st.st_mtime_ns == zone_mtime:
        return
    try:
        with open(zone_path) as f:
            z = json.load(f)
    except (OSError, ValueError):
        return              # half-written: keep the old zone, retry next query
    with lock:
        zone = {k.lower().rstrip("."): v for k, v in z.items()}
        zone_mtime = st.st_mtime_ns


def lookup(name):
    with lock:
        if name in zone:
            return zone[name]
        labels = name.split(".")
        for i in range(1, len(labels)):
            w = "*." + ".".join(labels[i:])
            if w in zone:
                return zone[w]
    return None


def rdata(rec):
    t = rec[0].upper()
    if t == "A":
        return QTYPE.A, A(rec[1])
    if t == "AAAA":
        return QTYPE.AAAA, AAAA(rec[1])
    if t == "PTR":
        return QTYPE.PTR, PTR(rec[1] + ".")
    if t == "CNAME":
        return QTYPE.CNAME, CNAME(rec[1] + ".")
    if t == "NS":
        return QTYPE.NS, NS(rec[1] + ".")
    if t == "MX":
        return QTYPE.MX, MX(rec[2] + ".", int(rec[1]))
    if t in ("TXT", "SPF"):
        v = rec[1]
        parts = v if isinstance(v, list) else [v]
        data = []
        for p in parts:
            b = p.encode("utf-8") if isinstance(p, str) else bytes(p)
            # a long string is split into 255-byte character-strings
            if not b:
                data.append(b)
            while b:
                data.append(b[:255])
                b = b[255:]
        return (QTYPE.TXT if t == "TXT" else 99), TXT(data)
    return None, None


def negative(reply):
    """an SOA with TTL 0 in the authority section: resolvers cache a
    negative answer (NXDOMAIN, NODATA) for the SOA's TTL/minimum (RFC 2308),
    so zero keeps a name added by a test visible at once"""
    reply.add_auth(RR(".", QTYPE.SOA, rdata=SOA("ns.test.", "hostmaster.test.", (1, 0, 0, 0, 0)), ttl=0))
    return reply


def answer(req):
    """the reply packet (bytes), or None for no reply at all"""
    q = req.q
    # the raw labels: str() would escape a space as \032
    name = ".".join(l.decode("latin-1") for l in q.qname.label).lower()
    reply = req.reply()
    reply.header.aa = 1
    load()
    recs = lookup(name)
    if recs is None:
        reply.header.rcode = RCODE.NXDOMAIN
        return negative(reply), 0
    delay = 0
    ttl = 0
    have = False            # a record of the asked type before TIMEOUT
    for r in recs:
        t = r[0].upper()
        if t == "TIMEOUT":
            if not have:
                return None, 0
            continue
        if t not in ("DELAY", "TTL", "SERVFAIL") and getattr(QTYPE, t, None) == q.qtype:
            have = True
        if t == "SERVFAIL":
            reply.header.rcode = RCODE.SERVFAIL
            return reply, 0
        if t == "DELAY":
            delay = float(r[1])
        if t == "TTL":
            ttl = int(r[1])
    owner = name
    for hop in range(8):
        cname = None
        for r in recs:
            rt, rd = rdata(r)
            if rt is None:
                continue
            if rt == QTYPE.CNAME and q.qtype != QTYPE.CNAME:
                cname = r[1].lower().rstrip(".")
                reply.add_answer(RR(owner + ".", rt, rdata=rd, ttl=ttl))
            elif rt == q.qtype or q.qtype == QTYPE.ANY:
                reply.add_answer(RR(owner + ".", rt, rdata=rd, ttl=ttl))
        if cname is None:
            break
        owner = cname
        recs = lookup(cname)
        if recs is None:
            if hop == 0 and not reply.rr:
                reply.header.rcode = RCODE.NXDOMAIN
            break
    if not reply.rr:
        negative(reply)
    return reply, delay


def serve_udp(sock):
    while True:
        try:
            data, addr = sock.recvfrom(4096)
        except OSError:
            return
        try:
            threading.Thread(target=handle_udp, args=(sock, data, addr), daemon=True).start()
        except RuntimeError:
            # no thread to be had on a loaded machine: answer inline
            # rather than let the server's loop die
            handle_udp(sock, data, addr)


def handle_udp(sock, data, addr):
    try:
        req = DNSRecord.parse(data)
    except Exception:
        return
    reply, delay = answer(req)
    if reply is None:
        return
    if delay:
        time.sleep(delay)
    out = reply.pack()
    if len(out) > 512:
        # too big for plain UDP: truncated, the resolver retries over TCP
        r = req.reply()
        r.header.tc = 1
        out = r.pack()
    try:
        sock.sendto(out, addr)
    except OSError:
        pass


def serve_tcp(lsock):
    while True:
        try:
            c, _ = lsock.accept()
        except OSError:
            return
        try:
            threading.Thread(target=handle_tcp, args=(c,), daemon=True).start()
        except RuntimeError:
            handle_tcp(c)


def recv_exact(c, n):
    b = b""
    while len(b) < n:
        d = c.recv(n - len(b))
        if not d:
            return None
        b += d
    return b


def handle_tcp(c):
    c.settimeout(10)
    try:
        while True:
            h = recv_exact(c, 2)
            if h is None:
                return
            data = recv_exact(c, int.from_bytes(h, "big"))
            if data is None:
                return
            req = DNSRecord.parse(data)
            reply, delay = answer(req)
            if reply is None:
                continue
            if delay:
                time.sleep(delay)
            out = reply.pack()
            c.sendall(len(out).to_bytes(2, "big") + out)
    except Exception:
        return
    finally:
        c.close()


def main():
    global zone_path
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--zone", required=True)
    a = ap.parse_args()
    zone_path = a.zone
    load()
    # one port for UDP and TCP: pick a UDP port, then bind TCP to it (retry)
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", a.port))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            t.bind(("127.0.0.1", port))
        except OSError:
            u.close()
            t.close()
            if a.port:
                raise
            continue
        t.listen(64)
        break
    threading.Thread(target=serve_udp, args=(u,), daemon=True).start()
    threading.Thread(target=serve_tcp, args=(t,), daemon=True).start()
    print("ready %d" % port, flush=True)
    # exit with the parent: stdin closes when the harness goes away
    try:
        sys.stdin.read()
    except Exception:
        pass


if __name__ == "__main__":
    main()
