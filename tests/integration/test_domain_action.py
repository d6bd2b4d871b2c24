#!/usr/bin/env python3
"""Per-domain thresholds: "action tag|quarantine|reject N domain NAME"
overrides the global thresholds for mail to that domain; recipients of
domains with different thresholds are split into separate transactions
(452 4.5.3 for the second policy, which the client retries at once);
an unknown domain is a FILE:LINE config error."""
import os
import subprocess

from moattest import TAP, Moat, Sink, SMTPConn, MOATD, SRCDIR, make_tmpdir

t = TAP()
RULES = os.path.join(SRCDIR, "rules")
FEE = open(os.path.join(SRCDIR, "tests", "corpus", "rules", "MOAT_ADVANCE_FEE.eml"), "rb").read()
# as it goes on the wire: CRLF, dot-stuffed, ending in CRLF
FEE = b"\r\n".join(b"." + l if l.startswith(b".") else l
                    for l in FEE.replace(b"\r\n", b"\n").rstrip(b"\n").split(b"\n")) + b"\r\n"


def transaction(port, rcpts, data):
    with SMTPConn(port) as c:
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@b.example>")
        codes = [c.cmd("RCPT TO:<%s>" % r)[0] for r in rcpts]
        if 250 not in codes:
            return codes, None
        c.cmd("DATA")
        c.send(data + b".\r\n")
        code, text, _ = c.reply(timeout=30)
        c.cmd("QUIT")
        return codes, (code, text)


with Sink() as sink:
    relay = "relay smtp://127.0.0.1:%d" % sink.port
    extra = "\n".join(["rules %s" % RULES, "action tag 1.5", "action reject 50",
                       "action reject 2 domain strict.test", "action tag 1 domain Tagged.test"])
    with Moat(domains={"lax.test": relay, "strict.test": relay, "tagged.test": relay}, extra=extra) as m:
        codes, r = transaction(m.port, ["x@lax.test"], FEE)
        t.ok(codes == [250] and r[0] == 250, "spam to the lax domain: accepted (global reject 50)", r)
        t.ok(sink.wait_messages(1, 30), "and delivered")
        with sink.lock:
            d = sink.messages[-1]["data"].decode("utf-8", "replace")
        t.ok("X-Spam-Flag: YES" in d and "required=1.50" in d, "tagged with the global threshold",
             d[:700])

        codes, r = transaction(m.port, ["x@strict.test"], FEE)
        t.ok(codes == [250] and r and r[0] == 550 and "5.7.1" in r[1],
             "the same message to the strict domain: 550 5.7.1 (action reject 2 domain strict.test)", r)

        codes, r = transaction(m.port, ["x@tagged.test"], FEE)
        t.ok(sink.wait_messages(2, 30), "to the domain with its own tag threshold: delivered")
        with sink.lock:
            d = sink.messages[-1]["data"].decode("utf-8", "replace")
        t.ok("required=1.00" in d, "X-Spam-Status shows that domain's threshold", d[:700])

        codes, r = transaction(m.port, ["a@lax.test", "b@strict.test", "c@lax.test"], FEE)
        t.eq(codes, [250, 452, 250], "mixed policies: the strict recipient gets 452 4.5.3, "
             "the other lax one is accepted")
        t.ok(m.wait_log(r"event=reject .*Recipient of another filter policy") is not None or
             "another filter policy" in m.log(), "the split is logged")

        codes, r = transaction(m.port, ["x@strict.test", "y@strict.test"], FEE)
        t.ok(codes == [250, 250] and r and r[0] == 550, "same-policy recipients share a transaction", r)

# config: an override for a domain we do not serve
tmp = make_tmpdir()
conf = os.path.join(tmp, "bad.conf")
with open(conf, "w") as f:
    f.write("state-dir %s/state\nlisten smtp 127.0.0.1:2525\ndomain a.test deliver store\n"
            "action reject 5 domain b.test\n" % tmp)
p = subprocess.run([MOATD, "-n", "-c", conf], capture_output=True, text=True)
t.ok(p.returncode != 0 and "bad.conf:4:" in p.stderr and "b.test" in p.stderr,
     "an override for an unknown domain: FILE:LINE error", p.stderr)
t.done()
