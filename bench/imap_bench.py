#!/usr/bin/env python3
"""imap_bench.py - the IMAP read path of moat's store and of Dovecot, side
by side in one run (driven by bench/imap-bench.sh, which documents it).

Both stores get the same N messages (default 50,000), written directly as
Maildir files (same names, flags and mtimes): the bytes of the messages of
../shared/corpus, read in place and cycled.  Then, for each server in turn,
two logged-in sessions ("cold": the first one after start, nothing indexed
yet; "warm": a second one) each time:

    SELECT INBOX
    FETCH 1:* (FLAGS ENVELOPE)
    SEARCH FROM "<a frequent sender>"
    SEARCH SUBJECT "<a frequent subject word>"
    SEARCH UNSEEN

and prints wall-clock seconds for each and the moat/Dovecot ratio.  The
client only waits for the tagged completion and counts bytes, so it costs
both sides the same.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))

N = int(os.environ.get("MESSAGES", "50000"))
MAXSIZE = int(os.environ.get("MAXSIZE", "65536"))
KEEP = os.environ.get("KEEP") == "1"
ONLY = os.environ.get("ONLY", "")       # "moat" or "dovecot": run one side
CORPUS = os.path.abspath(os.environ.get("CORPUS", os.path.join(SRC, "..", "shared", "corpus")))
USER, PASS = "bench@bench.test", "bench-pw"


def corpus_files():
    out = []
    for d, _, fs in os.walk(CORPUS):
        for f in sorted(fs):
            if f.lower().endswith((".md", ".txt", ".json", ".csv")):
                continue
            p = os.path.join(d, f)
            try:
                if 0 < os.path.getsize(p) <= MAXSIZE:
                    out.append(p)
            except OSError:
                pass
    out.sort()
    return out


def fill(dirs):
    """write the same N messages into each Maildir of dirs; returns a
    frequent From address and Subject word for the SEARCHes"""
    files = corpus_files()
    if not files:
        sys.exit("no corpus messages under %s" % CORPUS)
    for d in dirs:
        for s in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(d, s), exist_ok=True)
    froms, words = {}, {}
    t0 = 1700000000
    host = "bench"
    for i in range(N):
        with open(files[i % len(files)], "rb") as f:
            data = f.read().replace(b"\r\n", b"\n")
        if i < len(files):
            hdr = data.split(b"\n\n", 1)[0]
            m = re.search(rb"^From:.*?([\w.+-]+@[\w.-]+)", hdr, re.M | re.I)
            if m:
                a = m.group(1).lower()
                froms[a] = froms.get(a, 0) + 1
            m = re.search(rb"^Subject:(.*)$", hdr, re.M | re.I)
            if m:
                for w in re.findall(rb"[A-Za-z]{5,}", m.group(1)):
                    w = w.lower()
                    words[w] = words.get(w, 0) + 1
        vsize = len(data) + data.count(b"\n")
        flags = "S" if i % 3 else ""          # a third unseen
        if i % 17 == 0:
            flags = "F" + flags
        name = "%d.M%dP%dQ%d.%s,S=%d,W=%d:2,%s" % (t0 + i, i, os.getpid(), i, host,
                                                   len(data), vsize, flags)
        for d in dirs:
            p = os.path.join(d, "cur", name)
            with open(p, "wb") as f:
                f.write(data)
            os.utime(p, (t0 + i, t0 + i))
    frm = max(froms, key=froms.get).decode() if froms else "example"
    word = max(words, key=words.get).decode() if words else "hello"
    return frm, word


class Client:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.n = 0
        self.buf = b""
        self.dump = None
        self.read_until(None)

    def read_until(self, tag):
        """read lines (skipping literals) up to the tagged one; the buffer
        is scanned by offset, never sliced per line, so the client's cost
        does not depend on how the server chunks its output"""
        total = 0
        pos = 0
        lit = re.compile(rb"\{(\d+)\}$")
        while True:
            i = self.buf.find(b"\r\n", pos)
            while i >= 0:
                total += i + 2 - pos
                if tag is None or (self.buf.startswith(tag + b" ", pos) and self.buf[i - 1:i] != b"}"):
                    line = self.buf[pos:i]
                    if self.dump is not None:
                        self.dump.write(self.buf[:i + 2])
                    self.buf = self.buf[i + 2:]
                    return line, total
                m = lit.search(self.buf, pos, i) if self.buf[i - 1:i] == b"}" else None
                pos = i + 2
                if m:               # a literal: skip its bytes
                    need = int(m.group(1))
                    while len(self.buf) - pos < need:
                        d = self.s.recv(1 << 20)
                        if not d:
                            raise EOFError
                        self.buf += d
                    pos += need
                    total += need
                i = self.buf.find(b"\r\n", pos)
            if self.dump is not None:
                self.dump.write(self.buf[:pos])
            self.buf = self.buf[pos:]
            pos = 0
            d = self.s.recv(1 << 20)
            if not d:
                raise EOFError("connection closed")
            self.buf += d

    def cmd(self, text):
        self.n += 1
        tag = b"B%d" % self.n
        t0 = time.perf_counter()
        self.s.sendall(tag + b" " + text.encode() + b"\r\n")
        line, total = self.read_until(tag)
        dt = time.perf_counter() - t0
        if not line.startswith(tag + b" OK"):
            raise RuntimeError("%s -> %r" % (text, line[:200]))
        return dt, total

    def close(self):
        try:
            self.cmd("LOGOUT")
        except Exception:       # noqa: BLE001
            pass
        self.s.close()


CMDS = ("SELECT", "FETCH 1:* (FLAGS ENVELOPE)", "SEARCH FROM", "SEARCH SUBJECT", "SEARCH UNSEEN")


def cpu_of(pids):
    """user+system seconds of the processes pids (Linux /proc)"""
    t = 0
    for pid in pids:
        try:
            f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
            t += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return t


SESSIONS = [0]


def session(port, frm, word, pids=()):
    SESSIONS[0] += 1
    c = Client(port)
    c.cmd('LOGIN "%s" "%s"' % (USER, PASS))
    out = []
    for name, cmd in (("SELECT", "SELECT INBOX"),
                      ("FETCH 1:* (FLAGS ENVELOPE)", "FETCH 1:* (FLAGS ENVELOPE)"),
                      ("SEARCH FROM", 'SEARCH FROM "%s"' % frm),
                      ("SEARCH SUBJECT", 'SEARCH SUBJECT "%s"' % word),
                      ("SEARCH UNSEEN", "SEARCH UNSEEN")):
        c0 = cpu_of(pids)
        if os.environ.get("DUMP"):      # DUMP=DIR: the responses, one file per server and command
            c.dump = open(os.path.join(os.environ["DUMP"], "%d-%d-%s" % (port, SESSIONS[0], name.split()[-1].strip("()"))), "wb")
        dt, nbytes = c.cmd(cmd)
        if c.dump is not None:
            c.dump.close()
            c.dump = None
        if pids and os.environ.get("CPU") == "1":
            print("#   %-28s wall %.3f cpu %.3f" % (name, dt, cpu_of(pids) - c0))
        out.append((name, dt, nbytes))
    c.close()
    return out


def main():
    from moattest import Moat, Dovecot, free_port, MOATD  # noqa: E402
    why = Dovecot.unavailable()
    if why:
        sys.exit(why)
    try:
        if b"__asan_init" in open(MOATD, "rb").read():
            print("warning: %s is built with sanitizers; use an -O2 build" % MOATD)
    except OSError:
        sys.exit("no moatd at %s (set MOAT_BUILDDIR)" % MOATD)

    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), "moat-imapbench.%d" % os.getpid())
    os.makedirs(tmp)
    os.chmod(tmp, 0o755)
    mport = free_port()
    moat = None
    dov = None
    try:
        # the same Dovecot set-up as the differential tests (moattest.Dovecot);
        # it indexes a Maildir on first access, so filling it after the
        # start is the same as before
        dov = Dovecot({USER: PASS}, prefix="moat-imapbench-dovecot-")
        dport = dov.port

        os.makedirs(os.path.join(tmp, "moat"))
        moat = Moat(domains={"bench.test": "store"}, tmpdir=os.path.join(tmp, "moat"),
                    extra="listen imap 127.0.0.1:%d\nauth-allow-plaintext yes\n" % mport,
                    start=False)
        mdir = moat.maildir(USER)
        ddir = os.path.join(dov.mail, USER)
        t0 = time.time()
        frm, word = fill([mdir, ddir])
        for root, ds, fs in os.walk(ddir):
            os.chown(root, 65534, 65534)
            for f in fs:
                os.chown(os.path.join(root, f), 65534, 65534)
        subprocess.run(["sync"])
        print("# %d messages written to both stores in %.1fs (corpus %s)" % (N, time.time() - t0, CORPUS))
        print("# SEARCH FROM %r, SUBJECT %r" % (frm, word))

        moat.start()
        st = os.stat(os.path.join(moat.state, "mail"))     # the worker's user
        for root, ds, fs in os.walk(os.path.dirname(mdir)):
            os.chown(root, st.st_uid, st.st_gid)
            for f in fs:
                os.chown(os.path.join(root, f), st.st_uid, st.st_gid)
        moat.cli("user", "add", USER, input=PASS + "\n", check=True)

        res = {}
        for who, port in (("moat", mport), ("dovecot", dport)):
            for run in ("cold", "warm"):
                if ONLY and ONLY != who:
                    res[(who, run)] = [(n, 0.0, 0) for n in CMDS]
                else:
                    pids = []
                    if who == "moat":
                        pids = [moat.proc.pid] + [int(x) for x in subprocess.run(
                            ["pgrep", "-P", str(moat.proc.pid)], capture_output=True,
                            text=True).stdout.split()]
                    res[(who, run)] = session(port, frm, word, pids)

        print()
        print("%-28s %-5s %10s %10s %7s" % ("command (%d messages)" % N, "run", "moat s", "dovecot s", "ratio"))
        tot = {}
        for run in ("cold", "warm"):
            for i, (name, _, _) in enumerate(res[("moat", run)]):
                m = res[("moat", run)][i][1]
                d = res[("dovecot", run)][i][1]
                tot[(run, "m")] = tot.get((run, "m"), 0) + m
                tot[(run, "d")] = tot.get((run, "d"), 0) + d
                print("%-28s %-5s %10.3f %10.3f %7.2f" % (name, run, m, d, m / d if d > 0 else 0))
            m, d = tot[(run, "m")], tot[(run, "d")]
            print("%-28s %-5s %10.3f %10.3f %7.2f" % ("total", run, m, d, m / d if d > 0 else 0))
        print()
        for run in ("cold", "warm"):
            mb = sum(x[2] for x in res[("moat", run)])
            db = sum(x[2] for x in res[("dovecot", run)])
            print("# response bytes (%s): moat %d, dovecot %d" % (run, mb, db))
    finally:
        if moat is not None:
            moat.stop()
        if dov is not None:
            if KEEP:
                print("# kept %s" % dov.tmp)
            dov.stop(keep=KEEP)
        if KEEP:
            print("# kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
