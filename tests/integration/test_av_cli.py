#!/usr/bin/env python3
"""test_av_cli - `moat av scan` and `moat av info` end to end.

Scans every sample of ../shared/testdata/clamav/samples with the custom
databases (each INFECTED with its signature family, exit 1), a clean corpus
message (CLEAN, exit 0), stdin, a missing file and a missing database
(ERROR, exit 2, never CLEAN), and the clamd backend against a fake clamd
on a UNIX socket.  Skipped when the shared test data is absent.
"""
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import TAP, MOAT, SHARED, SRCDIR  # noqa: E402

t = TAP()
AVDIR = os.path.join(SHARED, "testdata", "clamav")
DB = os.path.join(AVDIR, "db")
SAMPLES = os.path.join(AVDIR, "samples")
if not os.path.exists(MOAT):
    t.skip_all("moat not built")
if not os.path.isdir(DB) or not os.path.isdir(SAMPLES):
    t.skip_all("shared testdata absent")

tmp = tempfile.mkdtemp(prefix="moat-av-")
conf = os.path.join(tmp, "moat.conf")
with open(conf, "w") as f:
    f.write("hostname mx.moat.test\nstate-dir %s\n" % os.path.join(tmp, "state"))
CLEAN = os.path.join(SRCDIR, "tests", "corpus", "plain.eml")


def av(*args, input=None):
    return subprocess.run([MOAT, "-c", conf, "av"] + list(args), input=input,
                          capture_output=True, timeout=120)


def fake_clamd(path, stop):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    srv.settimeout(0.2)
    ready.set()
    while not stop.is_set():
        try:
            c, _ = srv.accept()
        except socket.timeout:
            continue
        with c:
            f = c.makefile("rb")
            if f.read(10) != b"zINSTREAM\0":
                continue
            data = b""
            while True:
                (n,) = struct.unpack("!I", f.read(4))
                if n == 0:
                    break
                data += f.read(n)
            c.sendall(b"stream: Fake.Eicar FOUND\0" if b"EICAR" in data else b"stream: OK\0")
    srv.close()


try:
    files = sorted(os.listdir(SAMPLES))
    paths = [os.path.join(SAMPLES, n) for n in files]
    r = av("scan", "--database", DB, *paths)
    out = r.stdout.decode()
    t.eq(r.returncode, 1, "samples: exit 1 (infected)")
    for n, p in zip(files, paths):
        fam = "Project.Test.EICAR." if "eicar" in n else "Project.Test.ClamExe."
        line = [x for x in out.splitlines() if x.startswith(p + ": ")]
        t.ok(len(line) == 1 and line[0].startswith(p + ": INFECTED " + fam), "%s detected" % n,
             out)

    r = av("scan", "--database", DB, CLEAN)
    t.ok(r.returncode == 0 and r.stdout.decode() == CLEAN + ": CLEAN\n", "clean message: CLEAN, exit 0",
         r.stdout.decode() + r.stderr.decode())

    eicar = open(os.path.join(SAMPLES, "eicar.com"), "rb").read()
    r = av("scan", "--database", DB, "-", input=eicar)
    t.ok(r.returncode == 1 and r.stdout.decode().startswith("-: INFECTED Project.Test.EICAR."),
         "stdin scanned", r.stdout.decode())

    r = av("scan", "--database", DB, CLEAN, os.path.join(tmp, "nope"))
    t.ok(r.returncode == 2 and ": ERROR " in r.stdout.decode(), "missing file: ERROR, exit 2",
         r.stdout.decode())

    r = av("scan", "--database", os.path.join(tmp, "no-db"), CLEAN)
    t.ok(r.returncode == 2 and "ERROR" in r.stdout.decode() and "CLEAN" not in r.stdout.decode(),
         "missing database: ERROR, never CLEAN", r.stdout.decode() + r.stderr.decode())

    r = av("info", "--database", DB)
    t.ok(r.returncode == 0 and "signatures: 6" in r.stdout.decode(), "info: 6 signatures",
         r.stdout.decode() + r.stderr.decode())
    r = av("info", "--database", os.path.join(tmp, "no-db"))
    t.ok(r.returncode == 1 and r.stderr, "info without a database fails", r.stderr.decode())

    r = av("scan")
    t.ok(r.returncode == 2 and b"usage" in r.stderr, "no file: usage, exit 2")
    r = av("bogus")
    t.ok(r.returncode == 2 and b"usage" in r.stderr, "unknown subcommand: usage, exit 2")

    sock = os.path.join(tmp, "clamd.sock")
    stop, ready = threading.Event(), threading.Event()
    th = threading.Thread(target=fake_clamd, args=(sock, stop), daemon=True)
    th.start()
    ready.wait(5)
    r = av("scan", "--clamd", sock, os.path.join(SAMPLES, "eicar.com"), CLEAN)
    out = r.stdout.decode()
    t.ok(r.returncode == 1 and "eicar.com: INFECTED Fake.Eicar" in out and CLEAN + ": CLEAN" in out,
         "clamd backend: FOUND and OK", out + r.stderr.decode())
    stop.set()
    th.join(5)
    r = av("scan", "--clamd", sock, CLEAN)
    t.ok(r.returncode == 2 and "ERROR" in r.stdout.decode(), "clamd down: ERROR, exit 2",
         r.stdout.decode())
finally:
    shutil.rmtree(tmp, ignore_errors=True)
t.done()
