#!/usr/bin/env python3
"""The differential IMAP test: the same scripted session (imapdiff.py: 5
varied messages APPENDed, then ~60 commands: FETCH of every item and body
section, SEARCH keys, STORE, COPY, STATUS, LIST/LSUB, CREATE/RENAME/DELETE,
EXPUNGE, EXAMINE, errors) against Dovecot (dovecot-imapd, started here on
loopback with its own config) and against moat; the responses are compared
after normalising what each server may choose freely (tags, UIDVALIDITY,
human text, item order, atom vs quoted vs literal strings).  The known,
deliberate deviations are listed below with the reason; anything else
that differs fails.  Skips when Dovecot is not installed or the test does
not run as root (Dovecot's login processes need their system users)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import TAP, Dovecot, Moat, free_port  # noqa: E402
import imapdiff  # noqa: E402

t = TAP()
if Dovecot.unavailable():
    t.skip_all(Dovecot.unavailable())

# command -> why moat answers differently on purpose
DEVIATIONS = {
    "FETCH 2 (BODY.PEEK[1] BODY.PEEK[1.1] BODY.PEEK[1.2.MIME] BODY.PEEK[2])":
        "BODY[1] of a nested multipart: Dovecot includes the CRLF after the inner close-delimiter; "
        "RFC 2046 5.1.1 gives that CRLF to the outer delimiter, and moat follows the RFC",
}

try:
    dovecot = Dovecot({"alice@example.test": "alice-pw"}, special_use=True)
except RuntimeError as e:
    t.ok(False, "Dovecot starts", str(e))
    t.done()
port = dovecot.port
try:
    iport = free_port()
    with Moat(extra="listen imap 127.0.0.1:%d\nauth-allow-plaintext yes\n" % iport) as m:
        m.cli("user", "add", "alice@example.test", input="alice-pw\n", check=True)
        try:
            dv = imapdiff.run("127.0.0.1", port, "alice@example.test", "alice-pw")
            mo = imapdiff.run("127.0.0.1", iport, "alice@example.test", "alice-pw")
        except Exception as e:      # noqa: BLE001
            t.ok(False, "both sessions run", repr(e))
            t.done()
        t.eq(len(mo), len(dv), "the same %d commands ran against both" % len(dv))
        diffs = {c: (a, b) for c, a, b in imapdiff.diff(dv, mo)}
        for cmd, (a, b) in zip([c for c, _ in dv], [(x, y) for (_, x), (_, y) in zip(dv, mo)]):
            if cmd in DEVIATIONS:
                t.ok(cmd in diffs, "%s: differs as documented (%s)" % (cmd, DEVIATIONS[cmd][:60]))
                continue
            if cmd in diffs:
                lines = ["dovecot: %r" % (l[:300],) for l in a[0] if l not in b[0]]
                lines += ["moat:    %r" % (l[:300],) for l in b[0] if l not in a[0]]
                if a[1] != b[1]:
                    lines.append("status dovecot %r moat %r" % (a[1], b[1]))
                t.ok(False, "%s: same responses as Dovecot" % cmd, "\n".join(lines))
            else:
                t.ok(True, "%s: same responses as Dovecot" % cmd)
finally:
    dovecot.stop()
t.done()
