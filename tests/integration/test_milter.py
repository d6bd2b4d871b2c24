#!/usr/bin/env python3
"""Milter mode end to end (docs/milter.md): a private Postfix instance (own
config and queue directory in a temporary directory, loopback ports) with
`smtpd_milters = inet:127.0.0.1:PORT` pointing at moatd's `listen milter`,
relaying to a Sink.  Clean mail arrives with the X-Spam headers added, a
tagged one with the subject prefix; a virus (shared test signatures) and a
rules-based reject are refused with our 5.7.1 text and Postfix's queue id as
the reference; a quarantine verdict puts the message in Postfix's hold queue
and in moat's quarantine; a tempfail verdict gives 451 4.7.1.  With moatd's
milter stopped Postfix follows milter_default_action (tempfail, then
accept); a killed milter process is restarted by the master, and a new
moatd resumes filtering without touching Postfix.  Then the miltertest
scripts (tests/integration/milter/*.lua) cover the protocol edge cases.

Postfix needs root to start its master (CI runs the tests as root); without
root, or without Postfix, the Postfix part skips with the reason."""
import glob
import os
import pwd
import re
import shutil
import signal
import smtplib
import subprocess
import time

from moattest import TAP, Moat, Sink, SHARED, SRCDIR, free_port, make_tmpdir, wait_port, children

t = TAP()
CLAMDB = os.path.join(SHARED, "testdata", "clamav", "db")
EICAR_MAIL = os.path.join(SHARED, "testdata", "clamav", "samples", "eicar-attachment.eml")
LUA_DIR = os.path.join(SRCDIR, "tests", "integration", "milter")
RULES = """\
header MILTER_TAGME Subject =~ /tagme/
score MILTER_TAGME 6
header MILTER_QUARME Subject =~ /quarme/
score MILTER_QUARME 12
header MILTER_REJECTME Subject =~ /rejectme/
score MILTER_REJECTME 25
"""


def msg(subject, body="See you at noon.\r\n"):
    return ("From: a@b.example\r\nTo: x@relay.test\r\nSubject: %s\r\nMessage-ID: <%s@b.example>\r\n"
            "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n%s" % (subject, abs(hash(subject + body)), body)).encode()


def send(port, data, to="x@relay.test"):
    """(code, text) of the end of DATA, or of the first refusal"""
    s = smtplib.SMTP("127.0.0.1", port, timeout=60)
    try:
        s.sendmail("a@b.example", [to], data)
        r = (250, "")
    except smtplib.SMTPDataError as e:
        r = (e.smtp_code, e.smtp_error.decode("utf-8", "replace"))
    except smtplib.SMTPRecipientsRefused as e:
        code, text = list(e.recipients.values())[0]
        r = (code, text.decode("utf-8", "replace"))
    except smtplib.SMTPSenderRefused as e:
        r = (e.smtp_code, e.smtp_error.decode("utf-8", "replace"))
    try:
        s.quit()
    except smtplib.SMTPException:
        pass
    return r


class Postfix:
    """A private Postfix instance: config_directory and queue_directory in
    a temporary directory, smtpd on a loopback port, relayhost = sink."""

    def __init__(self, sink_port, milter, default_action="tempfail"):
        self.tmp = make_tmpdir("moat-pf-")
        self.etc = os.path.join(self.tmp, "etc")
        self.queue = os.path.join(self.tmp, "queue")
        data = os.path.join(self.tmp, "data")
        for d in (self.etc, self.queue, data):
            os.makedirs(d)
        pw = pwd.getpwnam("postfix")
        os.chown(data, pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        self.maillog = os.path.join(self.tmp, "maillog")
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write("""compatibility_level = 3.6
queue_directory = {q}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.milter.test
mydomain = milter.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = relay.test
relayhost = [127.0.0.1]:{sink}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtp_dns_support_level = disabled
maillog_file = {log}
maillog_file_prefixes = {tmp}
alias_maps =
alias_database =
biff = no
smtpd_milters = {milter}
non_smtpd_milters =
milter_protocol = 6
milter_default_action = {da}
milter_connect_timeout = 5s
milter_command_timeout = 30s
milter_content_timeout = 60s
""".format(q=self.queue, data=data, sink=sink_port, log=self.maillog, tmp=self.tmp,
               milter=milter, da=default_action))
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write("""127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
""".format(port=self.port))
        self.started = False

    def run(self, *args):
        return subprocess.run(list(args), capture_output=True, text=True, timeout=60)

    def start(self):
        for cmd in (("postfix", "-c", self.etc, "check"), ("postfix", "-c", self.etc, "start")):
            r = self.run(*cmd)
            if r.returncode != 0:
                raise RuntimeError("%s: %s %s %s" % (" ".join(cmd), r.stdout, r.stderr, self.log()))
        self.started = True
        if not wait_port(self.port, timeout=20):
            raise RuntimeError("Postfix is not listening:\n" + self.log())
        return self

    def set(self, **kw):
        """postconf -e and postfix reload (the master re-reads main.cf)"""
        self.run("postconf", "-c", self.etc, "-e", *["%s=%s" % kv for kv in kw.items()])
        self.run("postfix", "-c", self.etc, "reload")
        time.sleep(1.5)     # running smtpd processes exit and are re-spawned

    def stop(self):
        if self.started:
            self.run("postfix", "-c", self.etc, "stop")
            self.started = False

    def log(self):
        try:
            with open(self.maillog, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=10.0):
        end = time.time() + timeout
        while time.time() < end:
            m = re.search(pattern, self.log())
            if m:
                return m
            time.sleep(0.1)
        return None

    def held(self):
        return sorted(os.path.basename(p) for p in glob.glob(os.path.join(self.queue, "hold", "*")))

    def postcat(self, qid):
        return self.run("postcat", "-c", self.etc, "-hq", qid).stdout

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()
        if not os.environ.get("MOAT_KEEP_TMP"):
            shutil.rmtree(self.tmp, ignore_errors=True)


def last(sink):
    with sink.lock:
        return sink.messages[-1]["data"].decode("utf-8", "replace")


def headers(d):
    return d.split("\r\n\r\n")[0]


def milter_pid(m):
    """the master's child that logs as moatd-milter"""
    log = m.log()
    for p in children(m.proc.pid):
        if re.search(r"moatd-milter\[%d\]" % p, log):
            return p
    return None


def subdir(tmp, name):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    os.chmod(d, 0o755)
    return d


def postfix_part():
    if os.geteuid() != 0:
        t.ok(True, "# SKIP not root: a private Postfix instance needs root to start (CI runs as root)")
        return
    if not shutil.which("postfix") or not shutil.which("postconf"):
        t.ok(True, "# SKIP Postfix is not installed (apt-get install postfix)")
        return
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        t.ok(True, "# SKIP no postfix user")
        return
    have_av = os.path.isdir(CLAMDB) and os.path.exists(EICAR_MAIL)
    mport = free_port()
    tmp = make_tmpdir()
    rules = os.path.join(tmp, "milter.cf")
    with open(rules, "w") as f:
        f.write(RULES)
    base = ["listen milter 127.0.0.1:%d" % mport, "rules %s" % rules,
            "action tag 5", "action quarantine 10", "action reject 20",
            "milter-subject-prefix [SPAM]"]
    extra = list(base)
    if have_av:
        extra.append("antivirus database %s" % CLAMDB)
    with Sink() as sink, \
            Postfix(sink.port, "inet:127.0.0.1:%d" % mport) as pf, \
            Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port},
                 extra="\n".join(extra), tmpdir=subdir(tmp, "a")) as m:
        t.ok(wait_port(mport, timeout=10) and m.wait_log(r"milter event=started", 15) is not None,
             "moatd's milter listens on 127.0.0.1:%d" % mport, m.log()[-2000:])
        try:
            pf.start()
        except RuntimeError as e:
            t.ok(False, "the private Postfix instance starts", str(e)[-3000:])
            return
        t.ok(True, "the private Postfix instance starts")

        # clean: delivered with the verdict headers
        t.eq(send(pf.port, msg("lunch"))[0], 250, "a clean message is accepted by Postfix")
        t.ok(sink.wait_messages(1, 30), "and relayed to the sink", pf.log()[-2000:])
        d = headers(last(sink)) if sink.messages else ""
        t.ok("X-Spam-Flag: NO" in d and re.search(r"X-Spam-Status: No, score=0\.00", d) is not None,
             "it carries X-Spam-Flag: NO and X-Spam-Status added by the milter", d)
        t.ok(re.match(r"Received: from .*postfix\.milter\.test", d, re.S) is not None and
             d.index("Received:") < d.index("X-Spam-Flag"),
             "after Postfix's own Received header", d[:400])
        qm = m.wait_log(r"moatd-milter\[\d+\]: info: milter qid=([0-9A-F]+) event=verdict ip=127\.0\.0\.1 from=<a@b\.example> to=<x@relay\.test> nrcpt=1 score=0\.00 action=accept")
        t.ok(qm is not None, "one verdict log line with Postfix's queue id and the client", m.log()[-1500:])
        t.ok(qm is not None and pf.wait_log(r"%s: to=<x@relay\.test>.*status=sent" % qm.group(1)) is not None,
             "the logged qid is Postfix's queue id of the delivered message")

        # tag: subject prefix and X-Spam-Flag: YES
        t.eq(send(pf.port, msg("please tagme"))[0], 250, "a message over the tag threshold is accepted")
        t.ok(sink.wait_messages(2, 30), "and relayed")
        d = headers(last(sink)) if len(sink.messages) >= 2 else ""
        t.ok("X-Spam-Flag: YES" in d and re.search(r"X-Spam-Status: Yes, score=6\.00 .*MILTER_TAGME", d) and
             re.search(r"X-Spam-Report:(\r?\n\t\*[^\r\n]*)*\r?\n\t\*\s+6\.00 MILTER_TAGME", d) is not None,
             "tagged: X-Spam-Flag: YES, the rule in X-Spam-Status and a folded X-Spam-Report", d)
        t.ok("Authentication-Results:" not in d or
             re.match(r"Received: [^\r\n]*(\r?\n\t[^\r\n]*)*\r?\n"
                      r"(Received-SPF: [^\r\n]*(\r?\n\t[^\r\n]*)*\r?\n)?"
                      r"Authentication-Results: mx\.moat\.test;", d) is not None,
             "Authentication-Results (and Received-SPF) right after Postfix's Received", d)
        t.ok(re.search(r"^Subject: \[SPAM\] please tagme\r?$", d, re.M) is not None,
             "milter-subject-prefix is prepended to the Subject", d)

        # reject: our 5.7.1 text with Postfix's queue id as the reference
        code, text = send(pf.port, msg("rejectme now"))
        rm = re.search(r"Message rejected as spam, score 25\.0 \(ref ([0-9A-F]+)\)", text)
        t.ok(code == 550 and "5.7.1" in text and rm is not None,
             "a rules-based reject: 550 5.7.1 with our text and a reference", "%s %s" % (code, text))
        t.ok(rm is not None and pf.wait_log(r"%s: milter-reject: END-OF-MESSAGE" % rm.group(1)) is not None,
             "the reference is Postfix's queue id (its milter-reject log line)", pf.log()[-1500:])
        if have_av:
            code, text = send(pf.port, open(EICAR_MAIL, "rb").read())
            t.ok(code == 550 and "5.7.1" in text and "virus Project.Test" in text and "(ref " in text,
                 "EICAR is refused with 550 5.7.1 naming the signature", "%s %s" % (code, text))
        else:
            t.ok(True, "# SKIP shared testdata absent: antivirus not tested")
        with sink.lock:
            t.eq(len(sink.messages), 2, "nothing refused reached the sink")

        # quarantine: Postfix's hold queue and moat's quarantine
        held0 = pf.held()
        t.eq(send(pf.port, msg("quarme please", "held body\r\n"))[0], 250,
             "a quarantine verdict: Postfix accepts (the client is not told)")
        end = time.time() + 15
        while time.time() < end and len(pf.held()) == len(held0):
            time.sleep(0.1)
        held = [q for q in pf.held() if q not in held0]
        t.ok(len(held) == 1, "the message is in Postfix's hold queue", pf.log()[-1500:])
        if held:
            pc = pf.postcat(held[0])
            t.ok("X-Spam-Flag: YES" in pc and "MILTER_QUARME" in pc,
                 "held with the verdict headers (postcat)", pc[:1500])
            t.ok(pf.wait_log(r"%s: milter-hold: END-OF-MESSAGE" % held[0]) is not None,
                 "Postfix logs milter-hold for it", pf.log()[-1500:])
        else:
            t.ok(False, "held with the verdict headers (postcat)")
            t.ok(False, "Postfix logs milter-hold with our reason")
        r = m.cli("quarantine", "list")
        t.ok(r.returncode == 0 and "x@relay.test" in r.stdout and "quarme please" in r.stdout,
             "and `moat quarantine list` shows it", r.stdout + r.stderr)
        t.ok(m.wait_log(r"milter qid=%s event=verdict .* action=quarantine .*quarantine-id=\w+" %
                        (held[0] if held else "X")) is not None, "quarantine logged with both ids")
        time.sleep(1)
        with sink.lock:
            t.eq(len(sink.messages), 2, "the held message is not delivered")

        # the milter process dies: the master restarts it
        mp = milter_pid(m)
        t.ok(mp is not None, "the milter runs as its own process (moatd-milter)")
        if mp:
            os.kill(mp, signal.SIGKILL)
            t.ok(m.wait_log(r"master event=milter-died pid=%d signal=9" % mp) is not None, "its death is logged")
            t.ok(m.wait_log(r"master event=milter-started pid=(?!%d)\d+" % mp, 10) is not None and
                 wait_port(mport, timeout=10), "and the master starts it again")
            t.eq(send(pf.port, msg("after restart tagme"))[0], 250, "mail flows again")
            t.ok(sink.wait_messages(3, 30) and "X-Spam-Flag: YES" in headers(last(sink)),
                 "filtered by the new milter process")
        else:
            for _ in range(4):
                t.ok(False, "milter restart")

        # reload (SIGHUP): the old milter process stops listening and finishes
        # its sessions, the new one takes the socket over at once
        n = len(sink.messages)
        started = m.log().count("milter event=started")
        m.proc.send_signal(signal.SIGHUP)
        end = time.time() + 15
        while time.time() < end and m.log().count("milter event=started") <= started:
            time.sleep(0.05)
        t.ok(m.log().count("milter event=started") > started and "milter event=replaced" in m.log(),
             "SIGHUP: the milter process is replaced", m.log()[-1500:])
        w = re.findall(r"milter event=listening waited=(\d+)ms", m.log())
        t.ok(not w or int(w[-1]) < 1000, "the new process gets the socket at once (waited %s ms)" %
             (w[-1] if w else 0))
        t.eq(send(pf.port, msg("after reload tagme"))[0], 250, "mail flows right after the reload")
        t.ok(sink.wait_messages(n + 1, 30) and "X-Spam-Flag: YES" in headers(last(sink)),
             "filtered by the new milter process")

        # moatd stopped: milter_default_action
        m.stop()
        t.ok(re.search(r"(?i)AddressSanitizer|LeakSanitizer|runtime error", m.log()) is None, "no sanitizer report",
             m.log()[-2000:])
        code, text = send(pf.port, msg("while down"))
        t.ok(code == 451 and "4.7.1" in text, "moatd stopped, milter_default_action=tempfail: 451 4.7.1",
             "%s %s" % (code, text))
        pf.set(milter_default_action="accept")
        n = len(sink.messages)
        t.eq(send(pf.port, msg("while down, accept"))[0], 250, "milter_default_action=accept: accepted")
        t.ok(sink.wait_messages(n + 1, 30) and "X-Spam-" not in headers(last(sink)),
             "and delivered unfiltered")
        pf.set(milter_default_action="tempfail")

    # a new moatd on the same milter socket, Postfix untouched: a tempfail
    # verdict (the antivirus has no usable database) gives our 451 4.7.1
        bad_db = os.path.join(tmp, "empty-clamdb")
        os.makedirs(bad_db, exist_ok=True)
        with Moat(domains={"relay.test": "relay smtp://127.0.0.1:%d" % sink.port},
                  extra="\n".join(base + ["antivirus database %s" % bad_db]),
                  tmpdir=subdir(tmp, "b")) as m2:
            t.ok(wait_port(mport, timeout=10) and m2.wait_log(r"milter event=started", 15) is not None,
                 "moatd started again (Postfix not restarted)", m2.log()[-1500:])
            code, text = send(pf.port, msg("lunch again"))
            t.ok(code == 451 and "4.7.1" in text and "Message deferred:" in text and "(ref " in text,
                 "filtering resumed: a tempfail verdict gives our 451 4.7.1 text",
                 "%s %s\n%s\n%s" % (code, text, m2.log()[-1500:], pf.log()[-1500:]))
        pf.stop()
    if not os.environ.get("MOAT_KEEP_TMP"):
        shutil.rmtree(tmp, ignore_errors=True)


def miltertest_part():
    mt = shutil.which("miltertest")
    if not mt:
        t.ok(True, "# SKIP miltertest not installed (apt-get install miltertest)")
        return
    tmp = make_tmpdir()
    rules = os.path.join(tmp, "milter.cf")
    with open(rules, "w") as f:
        f.write(RULES)
    sock = os.path.join(tmp, "milter.sock")
    mport = free_port()
    for i, (spec, listen) in enumerate((("inet:%d@127.0.0.1" % mport, "127.0.0.1:%d" % mport), ("unix:" + sock, "unix:" + sock))):
        extra = "\n".join(["listen milter %s" % listen, "rules %s" % rules, "action tag 5",
                           "action quarantine 10", "action reject 20", "message-size-limit 1M",
                           "milter-socket-mode 0600", "milter-subject-prefix [SPAM]"])
        with Moat(extra=extra, tmpdir=subdir(tmp, "m%d" % i)) as m:
            if not m.wait_log(r"milter event=started", 10):
                t.ok(False, "the milter starts on %s" % listen, m.log()[-1500:])
                continue
            if spec.startswith("unix:"):
                st = os.stat(sock)
                t.eq(oct(st.st_mode & 0o777), "0o600", "milter-socket-mode applies to the unix socket")
            for lua in sorted(glob.glob(os.path.join(LUA_DIR, "*.lua"))):
                env = dict(os.environ, MILTER_SOCKET=spec)
                t0 = time.time()
                r = subprocess.run([mt, "-s", lua], capture_output=True, text=True, timeout=120, env=env)
                elapsed = time.time() - t0
                t.ok(r.returncode == 0, "miltertest %s over %s" % (os.path.basename(lua), spec.split(":")[0]),
                     (r.stdout + r.stderr)[-2000:] + "\n" + m.log()[-1500:])
                if os.path.basename(lua) == "throughput.lua" and spec.startswith("inet:"):
                    # with Nagle on, each message waits >= 40 ms for the delayed ACK: >= 8 s
                    t.ok(elapsed < 4.0, "200 tagged messages over TCP in %.2f s: no Nagle/delayed-ACK stall "
                         "(TCP_NODELAY)" % elapsed)
            t.ok(re.search(r"(?i)AddressSanitizer|LeakSanitizer|runtime error|event=milter-died", m.log()) is None,
                 "no sanitizer report, no crash", m.log()[-2000:])

    # milter-reject-action discard, and the block/allow lists at their stage
    lists = os.path.join(tmp, "lists")
    os.makedirs(lists)
    with open(os.path.join(lists, "block"), "w") as f:
        f.write("ip 192.0.2.66\nsender spammer@example.org\n")
    with open(os.path.join(lists, "allow"), "w") as f:
        f.write("sender friend@example.org\n")
    os.chmod(lists, 0o755)
    lua = os.path.join(tmp, "discard.lua")
    with open(lua, "w") as f:
        f.write("""
conn = mt.connect(os.getenv("MILTER_SOCKET"), 40, 0.25)
if conn == nil then error("cannot connect") end
if mt.conninfo(conn, "client.example", "192.0.2.20") ~= nil then error("conninfo failed") end
if mt.helo(conn, "client.example") ~= nil then error("helo failed") end
local function message(from, subject)
	mt.macro(conn, SMFIC_MAIL, "i", "DISC1")
	if mt.mailfrom(conn, from) ~= nil then error("mailfrom failed") end
	if mt.getreply(conn) ~= SMFIR_CONTINUE then return false end
	if mt.rcptto(conn, "<x@example.test>") ~= nil then error("rcptto failed") end
	if mt.header(conn, "Subject", subject) ~= nil then error("header failed") end
	if mt.eoh(conn) ~= nil then error("eoh failed") end
	if mt.bodystring(conn, "body\\r\\n") ~= nil then error("body failed") end
	if mt.eom(conn) ~= nil then error("eom failed") end
	return true
end
if not message("<a@example.org>", "rejectme") then error("mail refused") end
if mt.getreply(conn) ~= SMFIR_DISCARD then error("reject verdict: not discarded") end
if message("<spammer@example.org>", "hello") then error("blocked sender not refused at MAIL") end
if mt.getreply(conn) ~= SMFIR_REPLYCODE then error("blocked sender: no reply code") end
if not message("<friend@example.org>", "rejectme") then error("allowed sender refused") end
local r = mt.getreply(conn)
if r ~= SMFIR_CONTINUE and r ~= SMFIR_ACCEPT then error("allow-listed sender: not accepted") end
-- one verdict per message: a recipient of a domain with other thresholds is deferred
mt.macro(conn, SMFIC_MAIL, "i", "POLICY1")
if mt.mailfrom(conn, "<a@example.org>") ~= nil then error("mailfrom failed") end
if mt.rcptto(conn, "<x@example.test>") ~= nil then error("rcptto failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then error("first recipient refused") end
if mt.rcptto(conn, "<y@strict.test>") ~= nil then error("rcptto 2 failed") end
if mt.getreply(conn) ~= SMFIR_REPLYCODE then error("recipient of another policy not deferred") end
if mt.rcptto(conn, "<z@example.test>") ~= nil then error("rcptto 3 failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then error("recipient of the same policy refused") end
if mt.abort(conn) ~= nil then error("abort failed") end
mt.disconnect(conn)
conn = mt.connect(os.getenv("MILTER_SOCKET"), 40, 0.25)
if mt.conninfo(conn, "bad.example", "192.0.2.66") ~= nil then error("conninfo 2 failed") end
if mt.getreply(conn) ~= SMFIR_REPLYCODE then error("blocked IP: not refused at connect") end
mt.disconnect(conn)
""")
    dport = free_port()
    extra = "\n".join(["listen milter 127.0.0.1:%d" % dport, "rules %s" % rules, "action tag 5",
                       "action reject 20", "milter-reject-action discard", "lists %s" % lists,
                       "domain strict.test deliver store", "action reject 8 domain strict.test"])
    with Moat(extra=extra, tmpdir=subdir(tmp, "d")) as m:
        if not m.wait_log(r"milter event=started", 10):
            t.ok(False, "the milter starts with lists", m.log()[-1500:])
        else:
            r = subprocess.run([mt, "-s", lua], capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, MILTER_SOCKET="inet:%d@127.0.0.1" % dport))
            t.ok(r.returncode == 0, "milter-reject-action discard; block list refuses at connect and MAIL; "
                 "an allow-listed sender passes; a recipient of another policy gets 452", (r.stdout + r.stderr)[-2000:] + "\n" + m.log()[-1500:])
            t.ok(m.wait_log(r"milter qid=DISC1 event=verdict .* action=discard ") is not None,
                 "the discard is logged")

    # filter-stage helo rcpt: the early filters refuse at the first RCPT, and
    # every later recipient of the transaction
    lua = os.path.join(tmp, "early.lua")
    with open(lua, "w") as f:
        f.write("""
local function session(helo)
	local conn = mt.connect(os.getenv("MILTER_SOCKET"), 40, 0.25)
	if conn == nil then error("cannot connect") end
	if mt.conninfo(conn, "client.example", "192.0.2.30") ~= nil then error("conninfo failed") end
	if mt.helo(conn, helo) ~= nil then error("helo failed") end
	if mt.mailfrom(conn, "<a@example.org>") ~= nil then error("mailfrom failed") end
	return conn
end
local conn = session("justaname")
if mt.rcptto(conn, "<x@example.test>") ~= nil then error("rcptto failed") end
if mt.getreply(conn) ~= SMFIR_REPLYCODE then error("HELO justaname: not refused at RCPT") end
if mt.rcptto(conn, "<y@example.test>") ~= nil then error("rcptto 2 failed") end
if mt.getreply(conn) ~= SMFIR_REPLYCODE then error("second recipient not refused") end
mt.disconnect(conn)
conn = session("mx.client.example")
if mt.rcptto(conn, "<x@example.test>") ~= nil then error("rcptto 3 failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then error("a proper HELO: refused") end
mt.disconnect(conn)
""")
    eport = free_port()
    extra = "\n".join(["listen milter 127.0.0.1:%d" % eport, "filter-stage helo rcpt",
                       "score HELO_NOT_FQDN 25", "action reject 20"])
    with Moat(extra=extra, tmpdir=subdir(tmp, "e")) as m:
        if not m.wait_log(r"milter event=started", 10):
            t.ok(False, "the milter starts with filter-stage helo rcpt", m.log()[-1500:])
        else:
            r = subprocess.run([mt, "-s", lua], capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, MILTER_SOCKET="inet:%d@127.0.0.1" % eport))
            t.ok(r.returncode == 0, "filter-stage helo rcpt: HELO justaname refused at the first RCPT "
                 "and for every recipient; a proper HELO passes", (r.stdout + r.stderr)[-2000:] + "\n" +
                 m.log()[-1500:])
            t.ok(m.wait_log(r"milter qid=NOQUEUE event=early-verdict ip=192\.0\.2\.30 .*action=reject "
                            r".*HELO_NOT_FQDN") is not None, "logged as an early verdict")
    if not os.environ.get("MOAT_KEEP_TMP"):
        shutil.rmtree(tmp, ignore_errors=True)


postfix_part()
miltertest_part()
t.done()
