#!/usr/bin/env python3
"""test_cli - the moat admin command: usage, config errors, `moat user ...`.

Runs the real `moat` binary against a generated config; no daemon needed.
When run as root, also checks that the files `moat user add` creates belong
to the run user (the unprivileged worker must read and write them).
"""
import os
import pwd
import re
import sqlite3
import stat
import subprocess
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import TAP, Moat, MOAT, MOATD  # noqa: E402

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import crypt as pycrypt
except ImportError:
    pycrypt = None

t = TAP()
if not os.path.exists(MOAT):
    t.skip_all("moat not built")


def run(*args, input=None, env=None):
    return subprocess.run([MOAT] + list(args), input=input, capture_output=True,
                          text=True, timeout=60, env=env)


def db_rows(m):
    con = sqlite3.connect(os.path.join(m.state, "moat.db"))
    try:
        return dict(con.execute("SELECT address, hash FROM users").fetchall())
    finally:
        con.close()


def hash_ok(h, pw):
    if pycrypt is None:
        return True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pycrypt.crypt(pw, h) == h


# --- front end ---
r = run("-h")
t.ok(r.returncode == 0 and "usage: moat" in r.stdout and "user add" in r.stdout
     and "queue" in r.stdout, "moat -h prints the usage and exits 0", r.stdout + r.stderr)
r = run()
t.ok(r.returncode == 2 and "usage: moat" in r.stderr, "moat without a command: usage, exit 2",
     "rc=%d %s" % (r.returncode, r.stderr))
r = run("frobnicate")
t.ok(r.returncode == 2 and "unknown command" in r.stderr, "unknown command group: exit 2",
     "rc=%d %s" % (r.returncode, r.stderr))

with Moat(domains={"example.test": "store", "relay.test": "relay smtp://127.0.0.1:9"},
          start=False) as m:
    bad = os.path.join(m.tmp, "bad.conf")
    with open(bad, "w") as f:
        f.write("state-dir %s\nno-such-directive 1\n" % m.state)
    r = run("-c", bad, "user", "list")
    t.ok(r.returncode == 1 and ("%s:2:" % bad) in r.stderr,
         "a config error is printed as FILE:LINE and exits 1", "rc=%d %s" % (r.returncode, r.stderr))

    env = dict(os.environ, MOAT_CONF=m.conf)
    r = run("user", "list", env=env)
    t.eq(r.returncode, 0, "$MOAT_CONF is used without -c")

    r = m.cli("user")
    t.ok(r.returncode == 2 and "user add" in r.stderr, "moat user without a verb: usage, exit 2")
    r = m.cli("user", "list")
    t.ok(r.returncode == 0 and r.stdout == "", "user list on a fresh state-dir: empty",
         "rc=%d out=%r err=%r" % (r.returncode, r.stdout, r.stderr))

    r = m.cli("status")
    t.ok(r.returncode == 1 and "not running" in r.stderr,
         "moat status without a daemon: a clear message, exit 1", "rc=%d %s" % (r.returncode, r.stderr))

    # --- user add ---
    r = m.cli("user", "add", "Alice@Example.TEST", input="s3cret\n")
    t.ok(r.returncode == 0 and "alice@example.test" in r.stdout,
         "user add with the password on stdin", r.stdout + r.stderr)
    rows = db_rows(m)
    t.ok("alice@example.test" in rows, "stored in canonical (lowercase) form", rows)
    h = rows.get("alice@example.test", "")
    t.ok(h.startswith("$y$"), "the password is a yescrypt crypt(3) hash", h)
    t.ok("s3cret" not in h and hash_ok(h, "s3cret"), "the hash matches the password")

    box = m.maildir("alice@example.test")
    t.ok(all(os.path.isdir(os.path.join(box, d)) for d in
             ("cur", "new", "tmp", ".Sent/cur", ".Drafts/new", ".Trash/tmp", ".Junk/new")),
         "user add creates the Maildir with cur/new/tmp and .Sent .Drafts .Trash .Junk")
    t.ok(os.path.exists(os.path.join(box, ".Sent", "maildirfolder")),
         "Maildir++ folders carry the maildirfolder marker")

    r = m.cli("user", "add", "alice@example.test", input="other\n")
    t.ok(r.returncode == 1 and "exists" in r.stderr, "a duplicate add is refused", r.stderr)
    t.eq(db_rows(m).get("alice@example.test"), h, "and does not change the password")

    r = m.cli("user", "add", "bob@relay.test", input="pw\n")
    t.ok(r.returncode == 1 and "deliver store" in r.stderr,
         "user add for a relay domain is refused with a clear message", r.stderr)
    r = m.cli("user", "add", "bob@elsewhere.test", input="pw\n")
    t.ok(r.returncode == 1 and "elsewhere.test" in r.stderr and "deliver store" in r.stderr,
         "user add for an unconfigured domain is refused", r.stderr)
    r = m.cli("user", "add", "bob+x@example.test", input="pw\n")
    t.ok(r.returncode == 1 and "delimiter" in r.stderr,
         "a local part with the recipient delimiter is refused", r.stderr)
    for badaddr in ("../../etc@example.test", "noat", "a/b@example.test", ".x@example.test"):
        r = m.cli("user", "add", badaddr, input="pw\n")
        t.ok(r.returncode == 1 and "valid address" in r.stderr, "invalid address %r refused" % badaddr,
             r.stderr)
    t.ok(not os.path.exists(os.path.join(m.state, "etc")), "no directory escaped the mail store")
    r = m.cli("user", "add", "carol@example.test", input="")
    t.ok(r.returncode == 1 and "password" in r.stderr, "no password on stdin: refused", r.stderr)
    r = m.cli("user", "add", "carol@example.test", input="\n")
    t.ok(r.returncode == 1 and "empty" in r.stderr, "empty password: refused", r.stderr)
    r = m.cli("user", "add", "carol@example.test", "password-in-argv", input="pw\n")
    t.eq(r.returncode, 2, "a password on the command line is not accepted (usage)")
    t.ok("carol@example.test" not in db_rows(m), "carol was not added by the failed attempts")

    r = m.cli("user", "add", "bob@example.test", input="pw with spaces\r\n")
    t.eq(r.returncode, 0, "add bob (CRLF-terminated password line)")
    t.ok(hash_ok(db_rows(m)["bob@example.test"], "pw with spaces"),
         "the newline is stripped, inner spaces are kept")

    # --- list ---
    r = m.cli("user", "list")
    lines = r.stdout.splitlines()
    t.eq([l.split("\t")[0] for l in lines], ["alice@example.test", "bob@example.test"],
         "user list shows both users in order")
    t.ok(all(len(l.split("\t")) == 2 and l.split("\t")[1].endswith("Z") for l in lines),
         "each line has the creation time", r.stdout)
    r = m.cli("user", "list", "relay.test")
    t.ok(r.returncode == 0 and r.stdout == "", "user list DOMAIN filters")

    # --- passwd ---
    r = m.cli("user", "passwd", "ALICE@example.test", input="n3w\n")
    t.ok(r.returncode == 0, "user passwd", r.stderr)
    h2 = db_rows(m)["alice@example.test"]
    t.ok(h2 != h and hash_ok(h2, "n3w") and (pycrypt is None or not hash_ok(h2, "s3cret")),
         "the new password replaces the old one")
    r = m.cli("user", "passwd", "nobody@example.test", input="x\n")
    t.ok(r.returncode == 1 and "no such user" in r.stderr, "passwd of an unknown user fails", r.stderr)

    # --- del ---
    r = m.cli("user", "del", "bob@example.test")
    t.ok(r.returncode == 0 and "kept" in r.stdout, "user del (the mailbox is kept)", r.stdout + r.stderr)
    t.ok("bob@example.test" not in db_rows(m), "bob is gone from the database")
    t.ok(os.path.isdir(m.maildir("bob@example.test")), "bob's mail is not destroyed")
    r = m.cli("user", "del", "bob@example.test")
    t.ok(r.returncode == 1 and "no such user" in r.stderr, "deleting again fails", r.stderr)
    r = m.cli("user", "list")
    t.eq(r.stdout.splitlines()[0].split("\t")[0] if r.stdout else None, "alice@example.test",
         "list after del shows alice only")
    t.eq(len(r.stdout.splitlines()), 1, "exactly one user left")

    # --- permissions and ownership ---
    st = os.stat(os.path.join(m.state, "moat.db"))
    t.eq(stat.S_IMODE(st.st_mode) & 0o077, 0, "moat.db is not readable by other users")
    if os.geteuid() == 0:
        try:
            runuser = pwd.getpwnam("moat")
        except KeyError:
            runuser = pwd.getpwnam("nobody")
        paths = [m.state, os.path.join(m.state, "moat.db"), os.path.join(m.state, "mail"),
                 box, os.path.join(box, "new"), os.path.join(box, ".Junk", "tmp"),
                 os.path.join(box, "subscriptions")]
        wrong = [p for p in paths if os.stat(p).st_uid != runuser.pw_uid]
        t.ok(not wrong, "as root, the files created belong to the run user %s" % runuser.pw_name, wrong)
        for side in ("moat.db-wal", "moat.db-shm"):
            p = os.path.join(m.state, side)
            if os.path.exists(p):
                t.eq(os.stat(p).st_uid, runuser.pw_uid, "%s belongs to the run user" % side)

        m2_conf = os.path.join(m.tmp, "nouser.conf")
        with open(m2_conf, "w") as f:
            f.write("state-dir %s\nuser no-such-user-xyz\ndomain example.test deliver store\n" % m.state)
        r = run("-c", m2_conf, "user", "add", "dave@example.test", input="pw\n")
        t.ok(r.returncode == 1 and "no-such-user-xyz" in r.stderr,
             "as root with a missing run user: refused before creating anything", r.stderr)
    else:
        t.diag("not root: ownership checks skipped")

# --- the control socket client (cli_control) against a running moatd ---
if os.path.exists(MOATD):
    with Moat(domains={"example.test": "store"}) as m:
        r = m.cli("status")
        t.ok(r.returncode == 0 and re.search(r"\bpid=\d+", r.stdout),
             "moat status asks the running daemon over control.sock", "rc=%d %r %r" % (r.returncode, r.stdout, r.stderr))
        r = m.cli("status", "extra")
        t.eq(r.returncode, 2, "moat status with arguments: usage")

t.done()
