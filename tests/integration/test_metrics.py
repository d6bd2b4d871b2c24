#!/usr/bin/env python3
"""Operations: `listen http` serves /metrics (Prometheus text format, parsed
strictly by promparse and, when installed, by promtool), /healthz and the
JSON API; after a known load the counters match exactly: messages by action
and recipient domain, symbol hits, the filter latency histogram, SMTP-stage
rejects, connections by listener, deliveries by destination, the quarantine
size.  The bearer token guards all but /healthz.  moat status and moat report
read the same figures."""
import base64
import json
import os
import re
import shutil
import socket
import ssl
import signal
import smtplib
import subprocess
import time
import urllib.error
import urllib.request

from moattest import TAP, Moat, Sink, SRCDIR, free_port, wait_port
import promparse

t = TAP()
TOKEN = "s3cret-token-for-tests-0123456789"
RULES = """body MOAT_T_TAG /TAGME/
score MOAT_T_TAG 6
body MOAT_T_QUAR /QUARME/
score MOAT_T_QUAR 12
body MOAT_T_REJ /REJECTME/
score MOAT_T_REJ 50
"""


def msg(word, n):
    return ("From: a@b.example\r\nTo: x@relay.test\r\nSubject: test %d\r\n"
            "Message-ID: <m%d.%s@b.example>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"
            "Hello %s\r\n" % (n, n, word.lower(), word)).encode()


def send(m, data, to="x@relay.test"):
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    try:
        s.sendmail("a@b.example", [to], data)
        r = 250
    except smtplib.SMTPDataError as e:
        r = e.smtp_code
    except smtplib.SMTPResponseException as e:
        r = e.smtp_code
    except smtplib.SMTPRecipientsRefused as e:
        r = list(e.recipients.values())[0][0]
    s.quit()
    return r


def get(port, path, token=None):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path))
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def wait_for(cond, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def scrape(port):
    code, ctype, body = get(port, "/metrics", TOKEN)
    return code, ctype, body


with Sink() as sink:
    hport, hport2 = free_port(), free_port()
    subport = free_port()
    with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port, "local.test": "store"},
              start=False) as m:
        rules = os.path.join(m.tmp, "t.rules")
        with open(rules, "w") as f:
            f.write(RULES)
        m.write_conf("\n".join([
            "listen http 127.0.0.1:%d" % hport, "http-token %s" % TOKEN,
            "listen http 127.0.0.1:%d deny=127.0.0.0/8" % hport2,
            "rules %s" % rules, "action tag 5", "action quarantine 10", "action reject 20",
            "log-json %s" % os.path.join(m.tmp, "events.jsonl"),
            "listen submission 127.0.0.1:%d" % subport, "auth-allow-plaintext yes"]))
        m.cli("user", "add", "u@local.test", input="u-password\n", check=True)
        m.start()
        t.ok(wait_port(hport), "the http listener accepts connections")

        code, _, body = get(hport, "/healthz")
        t.eq((code, body), (200, "ok\n"), "/healthz answers without the token")
        code, _, _ = get(hport, "/metrics")
        t.eq(code, 401, "/metrics without the token: 401")
        code, _, _ = get(hport, "/metrics", "wrong-token-wrong-token-wrong")
        t.eq(code, 401, "/metrics with a wrong token: 401")
        t.eq(get(hport2, "/metrics", TOKEN)[0], 403, "a listener whose deny= matches the client: 403")
        code, _, _ = get(hport, "/nope", TOKEN)
        t.eq(code, 404, "an unknown path: 404")

        N_ACC, N_TAG, N_QUAR, N_REJ = 3, 2, 2, 4
        held = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
        held.ehlo("held.test")
        code, _, body = scrape(hport)
        t.eq(promparse.value(promparse.parse(body), "moat_sessions_open", listener="127.0.0.1:%d" % m.port),
             1, "moat_sessions_open counts an open session")
        held.quit()
        codes = []
        for pw in ("u-password", "wrong-password"):
            c = smtplib.SMTP("127.0.0.1", subport, timeout=30)
            c.ehlo("client.test")
            tok = base64.b64encode(b"\0u@local.test\0" + pw.encode()).decode()
            codes.append(c.docmd("AUTH", "PLAIN " + tok)[0])
            c.close()
        t.eq(codes, [235, 535], "AUTH PLAIN: one success, one failure")
        results = []
        n = 0
        for word, k in (("plain", N_ACC), ("TAGME", N_TAG), ("QUARME", N_QUAR), ("REJECTME", N_REJ)):
            for _ in range(k):
                n += 1
                results.append(send(m, msg(word, n)))
        t.eq(results, [250] * (N_ACC + N_TAG + N_QUAR) + [550] * N_REJ,
             "%d accepted, %d tagged, %d quarantined (250), %d rejected (550)" % (N_ACC, N_TAG, N_QUAR, N_REJ))
        r = send(m, msg("plain", 99), to="x@elsewhere.test")
        t.ok(500 <= r < 600, "a recipient of another domain is refused at RCPT (%d)" % r)
        t.ok(sink.wait_messages(N_ACC + N_TAG, 30), "accepted and tagged messages are delivered")

        # the quarantine size comes from a cache refreshed every 5 s
        fams = None
        end = time.time() + 20
        while time.time() < end:
            code, ctype, body = scrape(hport)
            fams = promparse.parse(body)
            if promparse.value(fams, "moat_quarantine_messages") == N_QUAR and \
               promparse.total(fams, "moat_delivery_total", result="delivered") >= N_ACC + N_TAG and \
               promparse.value(fams, "moat_queue_messages") == 0:
                break
            time.sleep(0.5)
        t.eq(code, 200, "/metrics with the token: 200")
        t.ok(ctype.startswith("text/plain; version=0.0.4"), "Prometheus content type", ctype)
        try:
            fams = promparse.parse(body)
            t.ok(True, "the exposition parses strictly (%d families)" % len(fams))
        except promparse.ParseError as e:
            t.ok(False, "the exposition parses strictly", str(e))
        if shutil.which("promtool"):
            r = subprocess.run(["promtool", "check", "metrics"], input=body, text=True,
                               capture_output=True)
            t.ok(r.returncode == 0, "promtool check metrics", r.stdout + r.stderr)
        V = lambda name, **l: promparse.value(fams, name, **l)
        for action, k in (("accept", N_ACC), ("tag", N_TAG), ("quarantine", N_QUAR), ("reject", N_REJ)):
            t.eq(V("moat_messages_total", action=action), k, "moat_messages_total{action=%s} = %d" % (action, k))
            t.eq(V("moat_messages_domain_total", domain="relay.test", action=action), k,
                 "moat_messages_domain_total{domain=relay.test,action=%s} = %d" % (action, k))
        t.eq(V("moat_messages_total", action="tempfail"), 0, "no tempfail")
        t.eq(V("moat_symbol_hits_total", symbol="MOAT_T_TAG"), N_TAG, "symbol hits: MOAT_T_TAG")
        t.eq(V("moat_symbol_hits_total", symbol="MOAT_T_QUAR"), N_QUAR, "symbol hits: MOAT_T_QUAR")
        t.eq(V("moat_symbol_hits_total", symbol="MOAT_T_REJ"), N_REJ, "symbol hits: MOAT_T_REJ")
        total = N_ACC + N_TAG + N_QUAR + N_REJ
        t.eq(V("moat_filter_duration_seconds_count"), total, "the latency histogram counts every verdict")
        t.eq(V("moat_filter_duration_seconds_bucket", le="+Inf"), total, "+Inf bucket = count")
        t.eq(V("moat_smtp_rejects_total", stage="rcpt"), 1, "one RCPT refused")
        t.eq(V("moat_connections_total", listener="127.0.0.1:%d" % m.port), total + 3,
             "connections by listener: one per message sent, the held one, the readiness probe")
        dest = "smtp://127.0.0.1:%d" % sink.port
        dl = promparse.total(fams, "moat_delivery_total", result="delivered")
        t.eq(dl, N_ACC + N_TAG, "deliveries: %d delivered" % (N_ACC + N_TAG))
        t.ok(any(l.get("destination", "").endswith("127.0.0.1:%d" % sink.port)
                 for f in fams.values() for nm, l, v in f["samples"] if nm == "moat_delivery_total"),
             "the destination label names the relay", [l for f in fams.values() for nm, l, v in f["samples"] if nm == "moat_delivery_total"])
        t.eq(promparse.total(fams, "moat_delivery_total", result="deferred"), 0, "no deferral")
        t.eq(V("moat_quarantine_messages"), N_QUAR, "moat_quarantine_messages = %d" % N_QUAR)
        t.eq(V("moat_queue_messages"), 0, "the queue is empty")
        t.eq(V("moat_sessions_open", listener="127.0.0.1:%d" % m.port), 0, "no SMTP session open")
        t.eq((V("moat_auth_total", result="ok"), V("moat_auth_total", result="failed")), (1, 1),
             "moat_auth_total: one ok, one failed")
        t.eq(V("moat_connections_total", listener="127.0.0.1:%d" % subport), 2,
             "connections on the submission listener: 2")
        t.eq(V("moat_up"), 1, "moat_up 1")
        t.eq(V("moat_worker_restarts_total"), 0, "no worker restarts")

        # the shipped alert rules and dashboard only use metrics that exist
        names = set(nm for f in fams.values() for nm, l, v in f["samples"])
        used = set()
        for rel in ("contrib/prometheus/moat-alerts.yml", "contrib/grafana/moat-dashboard.json"):
            p = os.path.join(SRCDIR, rel)
            if os.path.exists(p):
                with open(p) as f:
                    used |= set(re.findall(r"\bmoat_[a-z0-9_]+", f.read()))
        missing = sorted(n for n in used if n not in names and not n.startswith("moat_av_"))
        t.ok(used and not missing, "contrib/ rules and dashboard use existing metrics (%d)" % len(used),
             "missing: %s" % " ".join(missing))

        code, ctype, body = get(hport, "/api/status", TOKEN)
        try:
            st = json.loads(body)
        except ValueError:
            st = {}
        t.eq((code, ctype), (200, "application/json"), "/api/status is JSON")
        t.eq(st.get("messages"), {"accept": N_ACC, "tag": N_TAG, "quarantine": N_QUAR,
                                  "reject": N_REJ, "tempfail": 0}, "/api/status: messages by action")
        t.eq(st.get("quarantine", {}).get("messages"), N_QUAR, "/api/status: quarantine size")
        t.ok(st.get("listeners") and st["listeners"][0]["kind"] == "smtp", "/api/status: listeners")
        q = {}
        end = time.time() + 15
        while time.time() < end and not q.get("updated"):
            code, _, body = get(hport, "/api/quarantine", TOKEN)
            q = json.loads(body) if code == 200 else {}
            time.sleep(0.5)
        t.eq(len(q.get("held", [])), N_QUAR, "/api/quarantine lists the held messages")
        t.ok(all(h.get("rcpts") == ["x@relay.test"] and h.get("score", 0) >= 10 for h in q.get("held", [])),
             "with their recipients and scores", q)
        # the queue is listed while someone asks: the first answer may say "not yet"
        q = {}
        end = time.time() + 15
        while time.time() < end and not q.get("updated"):
            code, _, body = get(hport, "/api/queue", TOKEN)
            q = json.loads(body) if code == 200 else {}
            time.sleep(0.5)
        t.ok(q.get("updated") and q.get("messages") == [], "/api/queue: empty", q)

        # moat status and moat report read the same figures
        r = m.cli("status")
        t.ok(r.returncode == 0 and "reject" in r.stdout and "quarantine" in r.stdout,
             "moat status", r.stdout + r.stderr)
        time.sleep(1.5)         # the journal is written once a second
        r = m.cli("report", "--json")
        try:
            rep = json.loads(r.stdout)
        except ValueError:
            rep = {}
        want = {"accept": N_ACC, "tag": N_TAG, "quarantine": N_QUAR, "reject": N_REJ, "tempfail": 0}
        t.ok(rep.get("actions") == want, "moat report --json: volume by action",
             r.stdout + r.stderr)
        syms = dict((s["symbol"], s["count"]) for s in rep.get("top_symbols", []))
        t.eq(syms.get("MOAT_T_REJ"), N_REJ, "moat report: top symbols")
        r = m.cli("report")
        t.ok(r.returncode == 0 and "accept" in r.stdout, "moat report (text)", r.stdout + r.stderr)
        with open(os.path.join(m.tmp, "events.jsonl")) as f:
            lines = [json.loads(l) for l in f]
        t.eq(sum(1 for e in lines if e.get("type") == "verdict"), total,
             "log-json: one verdict event per message, each line JSON")

        # reload: a new worker serves the listener; its counters start at zero
        started = V("moat_worker_start_time_seconds")
        before = m.log().count("worker event=started")
        time.sleep(1.1)
        m.proc.send_signal(signal.SIGHUP)
        t.ok(m.wait_log(r"master event=reloaded", 10) and
             wait_for(lambda: m.log().count("worker event=started") > before, 10), "SIGHUP: a new worker")
        fams2 = {}
        end = time.time() + 10
        while time.time() < end:
            code, _, body = scrape(hport)
            fams2 = promparse.parse(body) if code == 200 else {}
            if promparse.value(fams2, "moat_worker_start_time_seconds") > started:
                break
            time.sleep(0.2)
        t.ok(promparse.value(fams2, "moat_worker_start_time_seconds") > started and
             promparse.value(fams2, "moat_messages_total", action="accept") == 0,
             "after the reload /metrics comes from the new worker, counters from zero")

# tempfail: an antivirus that cannot be reached with on-error tempfail (the default)
with Moat(domains={"relay.test": "relay smtp://127.0.0.1:9"}, start=False) as m:
    hport = free_port()
    key, crt = os.path.join(m.tmp, "k.pem"), os.path.join(m.tmp, "c.pem")
    have_tls = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                               key, "-out", crt, "-days", "2", "-subj", "/CN=mx.moat.test"],
                              capture_output=True).returncode == 0
    if have_tls:
        os.chmod(key, 0o644)
    m.write_conf("listen http 127.0.0.1:%d\nantivirus clamd 127.0.0.1:%d\n%s" % (
        hport, free_port(), "tls certificate %s key %s" % (crt, key) if have_tls else ""))
    m.start()
    wait_port(hport)
    if have_tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
        c.starttls(context=ctx)
        c.quit()
        raw = socket.create_connection(("127.0.0.1", m.port), timeout=10)
        raw.recv(1000)
        raw.sendall(b"EHLO x\r\nSTARTTLS\r\n")
        time.sleep(0.5)
        raw.sendall(b"this is not a TLS client hello\r\n" * 4)
        try:
            raw.recv(1000)
        except OSError:
            pass
        raw.close()
    K = 2
    t.eq([send(m, msg("plain", i)) for i in range(K)], [451] * K, "%d messages tempfailed (451)" % K)
    fams = promparse.parse(get(hport, "/metrics")[2])
    t.eq((promparse.value(fams, "moat_messages_total", action="tempfail"),
          promparse.value(fams, "moat_messages_total", action="accept")), (K, 0),
         "moat_messages_total{action=tempfail} = %d, no token needed without http-token" % K)
    if have_tls:
        end = time.time() + 5
        while time.time() < end and promparse.value(fams, "moat_tls_handshakes_total", result="failed") < 1:
            time.sleep(0.2)
            fams = promparse.parse(get(hport, "/metrics")[2])
        t.eq((promparse.value(fams, "moat_tls_handshakes_total", result="ok"),
              promparse.value(fams, "moat_tls_handshakes_total", result="failed")), (1, 1),
             "moat_tls_handshakes_total: one ok (STARTTLS), one failed (garbage)")
    else:
        t.ok(True, "# skip openssl cannot make a certificate")

# POP3 and IMAP connections are counted per listener too, and their open
# sessions go back to 0 when they close
hp, ip, pp = free_port(), free_port(), free_port()
with Moat(extra="listen http 127.0.0.1:%d\nlisten imap 127.0.0.1:%d\nlisten pop3 127.0.0.1:%d\n"
          % (hp, ip, pp)) as m:
    wait_port(hp)
    conns = []
    for port in (ip, ip, pp):
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.recv(512)                     # the greeting
        conns.append(c)
    il, pl = "127.0.0.1:%d" % ip, "127.0.0.1:%d" % pp
    fams = promparse.parse(get(hp, "/metrics")[2])
    t.eq((promparse.value(fams, "moat_connections_total", listener=il),
          promparse.value(fams, "moat_connections_total", listener=pl),
          promparse.value(fams, "moat_sessions_open", listener=il),
          promparse.value(fams, "moat_sessions_open", listener=pl)), (2, 1, 2, 1),
         "IMAP and POP3: connections and open sessions by listener")
    for c in conns:
        c.close()
    ok = wait_for(lambda: promparse.value(promparse.parse(get(hp, "/metrics")[2]), "moat_sessions_open",
                                          listener=il) == 0, 10)
    t.ok(ok, "closed IMAP sessions leave moat_sessions_open")
t.done()
