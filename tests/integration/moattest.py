"""moattest - harness for moat's integration tests (Python stdlib only).

Every test script prints TAP.  A test starts its own moatd on a free
loopback port with a temporary state-dir, drives it with real clients and
stops it.  No traffic leaves 127.0.0.0/8.

    from moattest import TAP, Moat, Sink
    t = TAP()
    with Sink() as sink, Moat(domains={"example.test": "relay smtp://127.0.0.1:%d" % sink.port}) as m:
        ...
    t.done()
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BUILDDIR = os.environ.get("MOAT_BUILDDIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
SRCDIR = os.environ.get("MOAT_SRCDIR") or BUILDDIR
MOATD = os.path.join(BUILDDIR, "moatd")
MOAT = os.path.join(BUILDDIR, "moat")
SHARED = os.path.abspath(os.path.join(SRCDIR, "..", "shared"))


class TAP:
    def __init__(self):
        self.n = 0
        self.failed = 0
        self.done_called = False

    def ok(self, cond, desc, diag=None):
        self.n += 1
        print("%sok %d - %s" % ("" if cond else "not ", self.n, desc), flush=True)
        if not cond:
            self.failed += 1
            if diag is not None:
                for line in str(diag).splitlines()[:40]:
                    print("#   " + line, flush=True)
        return bool(cond)

    def eq(self, got, want, desc):
        return self.ok(got == want, desc, "got:  %r\nwant: %r" % (got, want))

    def diag(self, msg):
        for line in str(msg).splitlines():
            print("# " + line, flush=True)

    def skip_all(self, reason):
        print("1..0 # SKIP %s" % reason, flush=True)
        sys.exit(0)

    def done(self):
        print("1..%d" % self.n, flush=True)
        sys.exit(1 if self.failed else 0)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, host="127.0.0.1", timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            c = socket.create_connection((host, port), timeout=1)
            c.close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def make_tmpdir(prefix="moat-test-"):
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)      # moatd's worker may run as another user when tests run as root
    return d


class Moat:
    """A moatd started in the foreground with a generated config.

    domains: {"example.test": "store" | "relay smtp://127.0.0.1:PORT"}
    extra:   more config lines (str)
    """

    def __init__(self, domains=None, extra="", port=None, tmpdir=None, start=True, dns=None):
        self.dns = dns
        self.tmp = tmpdir or make_tmpdir()
        self.own_tmp = tmpdir is None
        self.port = port or free_port()
        self.state = os.path.join(self.tmp, "state")
        self.conf = os.path.join(self.tmp, "moat.conf")
        self.logpath = os.path.join(self.tmp, "moatd.log")
        self.domains = domains if domains is not None else {"example.test": "store"}
        self.extra = extra
        self.proc = None
        self.write_conf()
        if start:
            self.start()

    def write_conf(self, extra=None):
        if extra is not None:
            self.extra = extra
        lines = ["hostname mx.moat.test", "state-dir %s" % self.state,
                 "listen smtp 127.0.0.1:%d" % self.port, "log-level debug"]
        for d, how in self.domains.items():
            lines.append("domain %s deliver %s" % (d, how))
        # the filters' DNS never leaves loopback: the test's own server, or
        # a shared empty one (every name NXDOMAIN)
        if not re.search(r"^\s*resolver\s", self.extra or "", re.M):
            dns = self.dns or null_dns()
            lines.append("resolver 127.0.0.1:%d" % (dns.port if dns else 9))
        lines.append(self.extra)
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, wait=True):
        started_before = self.log().count("worker event=started")
        self.logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen([MOATD, "-f", "-c", self.conf],
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        if wait and not wait_port(self.port):
            self.stop()
            raise RuntimeError("moatd did not start listening:\n" + self.log())
        if wait:
            # the master listens before it forks the worker; the worker is
            # ready (queue, control socket) once it logs "started"
            end = time.time() + 10
            while time.time() < end and self.log().count("worker event=started") <= started_before:
                time.sleep(0.02)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        self.logf.close()
        return rc

    def kill9_all(self):
        """kill -9 the master and every worker it started."""
        if self.proc is None:
            return
        pids = [self.proc.pid] + children(self.proc.pid)
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc = None
        self.logf.close()

    def worker_pids(self):
        return children(self.proc.pid) if self.proc else []

    def log(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=10.0):
        end = time.time() + timeout
        rx = re.compile(pattern)
        while time.time() < end:
            m = rx.search(self.log())
            if m:
                return m
            time.sleep(0.05)
        return None

    def cli(self, *args, input=None, check=False):
        r = subprocess.run([MOAT, "-c", self.conf] + list(args), input=input,
                           capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError("moat %s failed: %s" % (" ".join(args), r.stderr))
        return r

    def maildir(self, addr):
        local, domain = addr.split("@", 1)
        return os.path.join(self.state, "mail", domain.lower(), local.lower())

    def maildir_files(self, addr, sub="new"):
        d = os.path.join(self.maildir(addr), sub)
        try:
            return sorted(os.path.join(d, f) for f in os.listdir(d))
        except FileNotFoundError:
            return []

    def queue_files(self):
        d = os.path.join(self.state, "spool", "queue")
        try:
            return sorted(os.listdir(d))
        except FileNotFoundError:
            return []

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()
        if self.own_tmp and not os.environ.get("MOAT_KEEP_TMP"):
            shutil.rmtree(self.tmp, ignore_errors=True)


DNSSERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dnsserver.py")
SYS_PYTHON = "/usr/bin/python3"


def have_dnslib():
    try:
        return subprocess.run([SYS_PYTHON, "-c", "import dnslib"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0
    except OSError:
        return False


class DNSServer:
    """tests/integration/dnsserver.py (dnslib, under /usr/bin/python3) on
    127.0.0.1, serving a zone given as a dict (see dnsserver.py for the
    record forms).  Change it with set()/update()/remove(); the server
    re-reads the file on the next query.

        with DNSServer({"example.test": [["TXT", "v=spf1 -all"]]}) as dns:
            Moat(..., dns=dns)
    """

    def __init__(self, zone=None, tmpdir=None):
        self.tmp = tmpdir or make_tmpdir("moat-dns-")
        self.path = os.path.join(self.tmp, "zone.json")
        self.zone = {}
        for k, v in (zone or {}).items():
            self.zone[k.lower().rstrip(".")] = v
        self._write()
        self.proc = subprocess.Popen([SYS_PYTHON, DNSSERVER, "--zone", self.path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "ready":
            self.proc.kill()
            raise RuntimeError("dnsserver.py did not start (is python3-dnslib installed?)")
        self.port = int(line[1])

    def _write(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.zone, f)
        # a new mtime even within the same clock tick
        st = os.stat(tmp)
        os.utime(tmp, ns=(st.st_atime_ns, max(st.st_mtime_ns, getattr(self, "_mt", 0) + 1000)))
        self._mt = os.stat(tmp).st_mtime_ns
        os.rename(tmp, self.path)

    def set(self, name, rrs):
        self.zone[name.lower().rstrip(".")] = rrs
        self._write()

    def remove(self, name):
        self.zone.pop(name.lower().rstrip("."), None)
        self._write()

    def update(self, d):
        for k, v in d.items():
            self.zone[k.lower().rstrip(".")] = v
        self._write()

    def stop(self):
        if self.proc:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()


_null_dns = []


def null_dns():
    """a process-wide empty DNS server (every name NXDOMAIN), or None
    without dnslib (then moatd is pointed at the discard port)"""
    if not _null_dns:
        try:
            d = DNSServer({})
            import atexit
            atexit.register(d.stop)
            _null_dns.append(d)
        except (RuntimeError, OSError):
            _null_dns.append(None)
    return _null_dns[0]


class Dovecot:
    """Dovecot (dovecot-imapd) on a free loopback port with its own config,
    users and Maildirs in a temporary directory, for comparisons with moat.
    Needs root (its login processes run as Dovecot's system users); mail is
    owned by uid 65534.  Dovecot.unavailable() says why it cannot run.

        with Dovecot({"alice@example.test": "pw"}, special_use=True) as d:
            ... d.port ...
    """
    BIN = shutil.which("dovecot") or "/usr/sbin/dovecot"
    SPECIAL_USE = """  mailbox INBOX {
    auto = subscribe
  }
  mailbox Drafts {
    auto = subscribe
    special_use = \\Drafts
  }
  mailbox Junk {
    auto = subscribe
    special_use = \\Junk
  }
  mailbox Sent {
    auto = subscribe
    special_use = \\Sent
  }
  mailbox Trash {
    auto = subscribe
    special_use = \\Trash
  }
"""

    @classmethod
    def unavailable(cls):
        if not os.path.exists(cls.BIN):
            return "dovecot not installed (apt-get install dovecot-imapd)"
        if os.geteuid() != 0:
            return "Dovecot needs root to start its login processes (CI runs as root)"
        return None

    def __init__(self, users, special_use=False, prefix="moat-dovecot-"):
        self.tmp = make_tmpdir(prefix)
        self.port = free_port()
        self.mail = os.path.join(self.tmp, "mail")
        self.conf = os.path.join(self.tmp, "dovecot.conf")
        os.makedirs(self.mail)
        os.chown(self.mail, 65534, 65534)
        for d in ("run", "state"):
            os.makedirs(os.path.join(self.tmp, d))
        with open(os.path.join(self.tmp, "users"), "w") as f:
            for u, pw in users.items():
                f.write("%s:{PLAIN}%s\n" % (u, pw))
        with open(self.conf, "w") as f:
            f.write("""base_dir = {t}/run
state_dir = {t}/state
log_path = {t}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{t}/mail/%u
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {t}/users
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={t}/mail/%u
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {p}
  }}
}}
namespace inbox {{
  inbox = yes
  separator = .
{su}}}
""".format(t=self.tmp, p=self.port, su=self.SPECIAL_USE if special_use else ""))
        # the daemon keeps its stdio: no pipes here, or run() waits for it
        errf = os.path.join(self.tmp, "start.err")
        with open(errf, "w") as ef:
            r = subprocess.run([self.BIN, "-c", self.conf], stdin=subprocess.DEVNULL, stdout=ef,
                               stderr=ef)
        if r.returncode != 0 or not wait_port(self.port, timeout=10):
            log = os.path.join(self.tmp, "dovecot.log")
            why = open(errf).read() + (open(log).read() if os.path.exists(log) else "")
            self.stop()
            raise RuntimeError("Dovecot did not start: " + why)

    def stop(self, keep=False):
        """stop Dovecot and remove its directory (keep=True: leave it)"""
        if self.tmp is None:
            return
        subprocess.run([self.BIN, "-c", self.conf, "stop"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        if not keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()


def children(pid):
    """direct children of pid (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
            ppid = int(st[st.rindex(")") + 2:].split()[1])
            if ppid == pid:
                out.append(int(d))
        except (OSError, ValueError):
            pass
    return out


class Sink:
    """A threaded SMTP/LMTP sink on loopback that records what it receives.

    reply(stage, arg) may be overridden through `replies`:
      replies = {"rcpt": {"bad@x": "550 5.1.1 no such user"}, "data": "451 4.3.0 later",
                 "connect": "554 go away", "mail": "..."}
    messages: list of dicts {mail_from, rcpts, data(bytes), params}
    """

    def __init__(self, lmtp=False, port=None, replies=None, ext=("PIPELINING", "8BITMIME", "SIZE 100000000", "DSN", "ENHANCEDSTATUSCODES", "SMTPUTF8"),
                 tls=None):
        """tls: (certfile, keyfile) to offer STARTTLS; each message's
        params["tls"] then holds the TLS version it came over (or None)."""
        self.tls = tls
        self.lmtp = lmtp
        self.port = port or free_port()
        self.replies = replies or {}
        self.ext = ext
        self.messages = []
        self.connections = 0
        self.lock = threading.Lock()
        self.sock = None
        self.running = False

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(128)
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.running = False
        if self.sock:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()

    def wait_messages(self, n, timeout=30.0):
        end = time.time() + timeout
        while time.time() < end:
            with self.lock:
                if len(self.messages) >= n:
                    return True
            time.sleep(0.05)
        with self.lock:
            return len(self.messages) >= n

    def _accept(self):
        while self.running:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._session, args=(c,), daemon=True).start()

    def _session(self, c):
        f = c.makefile("rb")
        def send(s):
            c.sendall((s + "\r\n").encode())
        try:
            r = self.replies.get("connect")
            if r:
                send(r)
                return
            send("220 sink.test ESMTP sink")
            mail_from, rcpts, params = None, [], {}
            tls_version = None
            while True:
                line = f.readline(100000)
                if not line:
                    return
                cmd = line.decode("utf-8", "replace").rstrip("\r\n")
                u = cmd.upper()
                if u == "STARTTLS" and self.tls and tls_version is None:
                    import ssl
                    send("220 2.0.0 ready")
                    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    ctx.load_cert_chain(*self.tls)
                    c = ctx.wrap_socket(c, server_side=True)
                    f = c.makefile("rb")
                    tls_version = c.version()
                    mail_from, rcpts = None, []
                    continue
                if u.startswith("EHLO") or u.startswith("LHLO") or u.startswith("HELO"):
                    lines = ["sink.test"] + list(self.ext)
                    if self.tls and tls_version is None:
                        lines.append("STARTTLS")
                    for i, l in enumerate(lines):
                        send("250%s%s" % ("-" if i < len(lines) - 1 else " ", l))
                elif u.startswith("MAIL FROM:"):
                    r = self.replies.get("mail")
                    m = re.match(r"MAIL FROM:\s*<([^>]*)>(.*)", cmd, re.I)
                    mail_from = m.group(1) if m else cmd[10:]
                    params = {"mail": m.group(2).strip() if m else "", "tls": tls_version}
                    rcpts = []
                    send(r or "250 2.1.0 ok")
                elif u.startswith("RCPT TO:"):
                    m = re.match(r"RCPT TO:\s*<([^>]*)>(.*)", cmd, re.I)
                    addr = m.group(1) if m else cmd[8:]
                    r = self.replies.get("rcpt", {}).get(addr)
                    if r is None or r.startswith("2"):
                        rcpts.append(addr)
                        params.setdefault("rcpt", {})[addr] = m.group(2).strip() if m else ""
                    send(r or "250 2.1.5 ok")
                elif u == "DATA":
                    if not rcpts:
                        send("554 5.5.1 no valid recipients")
                        continue
                    send("354 go ahead")
                    data = []
                    while True:
                        l = f.readline(10000000)
                        if not l:
                            return
                        if l == b".\r\n":
                            break
                        if l.startswith(b"."):
                            l = l[1:]
                        data.append(l)
                    r = self.replies.get("data")
                    if r is None or r.startswith("2"):
                        with self.lock:
                            self.messages.append({"mail_from": mail_from, "rcpts": list(rcpts),
                                                  "data": b"".join(data), "params": params})
                    if self.lmtp:
                        for a in rcpts:
                            rr = self.replies.get("lmtp_rcpt", {}).get(a)
                            send(rr or r or "250 2.0.0 ok")
                    else:
                        send(r or "250 2.0.0 ok queued")
                    mail_from, rcpts = None, []
                elif u == "RSET":
                    mail_from, rcpts = None, []
                    send("250 2.0.0 ok")
                elif u == "NOOP":
                    send("250 2.0.0 ok")
                elif u == "QUIT":
                    send("221 2.0.0 bye")
                    return
                else:
                    send("502 5.5.2 unknown")
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass


def smtp_dialog(port, lines, host="127.0.0.1", timeout=10):
    """Send raw bytes and return everything the server said (for hostile-input tests)."""
    s = socket.create_connection((host, port), timeout=timeout)
    out = b""
    try:
        out += recv_reply(s)
        for l in lines:
            s.sendall(l)
            out += recv_reply(s)
    except OSError:
        pass
    finally:
        s.close()
    return out.decode("utf-8", "replace")


def recv_reply(s, timeout=10):
    """read one complete (possibly multi-line) SMTP reply"""
    s.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return data
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) >= 2:
            last = lines[-2]
            if len(last) >= 4 and last[3:4] == b" ":
                return data


# ---- helpers for protocol tests (raw sockets, spool inspection) ----

class SMTPConn:
    """A raw SMTP client that keeps its read buffer, so pipelined replies
    are never lost.  reply() returns (code, text, raw): code is an int or
    None (connection closed or timed out), text the reply lines joined
    with "\\n" without the codes."""

    def __init__(self, port, host="127.0.0.1", timeout=10, source=None, greet=True):
        self.s = socket.create_connection((host, port), timeout=timeout,
                                          source_address=(source, 0) if source else None)
        self.timeout = timeout
        self.buf = b""
        self.eof = False
        self.greeting = self.reply() if greet else None

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.s.sendall(data)

    def _fill(self, deadline):
        if self.eof:
            return False
        left = deadline - time.time()
        if left <= 0:
            return False
        self.s.settimeout(left)
        try:
            chunk = self.s.recv(65536)
        except socket.timeout:
            return False
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def reply(self, timeout=None):
        deadline = time.time() + (timeout if timeout is not None else self.timeout)
        lines = []
        raw = b""
        while True:
            i = self.buf.find(b"\r\n")
            if i < 0:
                if not self._fill(deadline):
                    return (None, "\n".join(lines), raw)
                continue
            line, self.buf = self.buf[:i], self.buf[i + 2:]
            raw += line + b"\r\n"
            txt = line.decode("utf-8", "replace")
            lines.append(txt[4:])
            if len(txt) < 4 or txt[3] != "-":
                try:
                    return (int(txt[:3]), "\n".join(lines), raw)
                except ValueError:
                    return (None, "\n".join(lines), raw)

    def cmd(self, line, timeout=None):
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.reply(timeout)

    def replies(self, n, timeout=None):
        return [self.reply(timeout) for _ in range(n)]

    def wait_closed(self, timeout=5):
        """True if the server closes the connection within timeout
        (any bytes still buffered are kept in self.buf)."""
        deadline = time.time() + timeout
        while not self.eof and time.time() < deadline:
            self._fill(deadline)
        return self.eof

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def enhanced(text):
    """the RFC 3463 enhanced status code at the start of a reply text"""
    m = re.match(r"\s*([245]\.\d{1,3}\.\d{1,3})\b", text or "")
    return m.group(1) if m else None


QID_RE = re.compile(r"\b([0-9A-Fa-f]{16,20})\b")


def parse_spool_file(path):
    """read spool/queue/QID: returns (envelope dict, message bytes); the
    envelope dict maps key -> value, with "rcpt" -> list of values."""
    with open(path, "rb") as f:
        data = f.read()
    i = data.find(b"\n\n")
    if i < 0:
        return None, None
    env = {"rcpt": []}
    msg = data[i + 2:]
    # the end marker written at commit ("\nMOAT-END QID HHHHHHHH\n", HHHHHHHH
    # = length of the added headers stored before it) is not message data
    j = msg.rfind(b"\nMOAT-END ")
    if j >= 0 and msg.endswith(b"\n") and b"\n" not in msg[j + 1:-1]:
        parts = msg[j + 1:-1].split(b" ")
        hl = int(parts[2], 16) if len(parts) == 3 else 0
        env_added = msg[j - hl:j]
        msg = msg[:j - hl]
    for line in data[:i].decode("utf-8", "replace").split("\n"):
        k, _, v = line.partition(" ")
        if k == "rcpt":
            env["rcpt"].append(v)
        else:
            env[k] = v
    return env, msg


def spool_messages(m, sub="queue"):
    """{qid: (env, message bytes)} for every file in state-dir/spool/SUB"""
    d = os.path.join(m.state, "spool", sub)
    out = {}
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return out
    for n in names:
        try:
            out[n] = parse_spool_file(os.path.join(d, n))
        except OSError:
            pass        # delivered and removed meanwhile
    return out


def find_message(m, sink, needle, timeout=10.0):
    """Wait for a message whose bytes contain needle to reach the sink.
    Returns ("sink", dict); if it never arrived but sits in the spool queue,
    ("spool", (qid, env, data)) after the timeout; else (None, None)."""
    if isinstance(needle, str):
        needle = needle.encode("utf-8")
    end = time.time() + timeout
    while True:
        if sink is not None:
            with sink.lock:
                for msg in sink.messages:
                    if needle in msg["data"]:
                        return "sink", msg
        if time.time() >= end:
            break
        time.sleep(0.05)
    for qid, (env, data) in spool_messages(m).items():
        if data is not None and needle in data:
            return "spool", (qid, env, data)
    return None, None


def wait_queue_empty(m, timeout=15.0):
    """wait until state-dir/spool/queue is empty (everything delivered)"""
    end = time.time() + timeout
    while time.time() < end:
        if not m.queue_files():
            return True
        time.sleep(0.05)
    return not m.queue_files()


def sink_count(sink, needle):
    if isinstance(needle, str):
        needle = needle.encode("utf-8")
    with sink.lock:
        return sum(1 for msg in sink.messages if needle in msg["data"])
