#!/usr/bin/env python3
"""mutt against moat's IMAP server, as a new user would use it, driven
through tmux: the index lists the delivered messages, a message opens and
shows its body, one is saved to a new folder (=Archive), one is deleted and
the mailbox synced; the result is checked over IMAP.  Skips when mutt or
tmux is not installed (apt-get install mutt tmux)."""
import imaplib
import os
import shutil
import smtplib
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moattest import TAP, Moat, free_port, make_tmpdir  # noqa: E402

t = TAP()
if not (shutil.which("mutt") and shutil.which("tmux")):
    t.skip_all("mutt or tmux not installed")

SESSION = "moat-mutt-%d" % os.getpid()


def screen():
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", SESSION], capture_output=True,
                          text=True).stdout


def keys(*k):
    subprocess.run(["tmux", "send-keys", "-t", SESSION] + list(k), check=True)


def wait_screen(text, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        s = screen()
        if text in s:
            return s
        time.sleep(0.2)
    return None


iport = free_port()
home = make_tmpdir("moat-mutt-")
with Moat(extra="listen imap 127.0.0.1:%d\nauth-allow-plaintext yes\n" % iport) as m:
    m.cli("user", "add", "alice@example.test", input="alice-pw\n", check=True)
    s = smtplib.SMTP("127.0.0.1", m.port, timeout=30)
    for i in range(3):
        s.sendmail("s@remote.test", ["alice@example.test"],
                   "From: Sender <s@remote.test>\r\nTo: alice@example.test\r\nSubject: mutt test %d\r\n"
                   "Date: Mon, 23 Nov 2026 1%d:00:00 +0000\r\n\r\nbody of message %d\r\n" % (i, i, i))
    s.quit()
    end = time.time() + 15
    while len(m.maildir_files("alice@example.test", "new")) < 3 and time.time() < end:
        time.sleep(0.1)
    rc = os.path.join(home, ".muttrc")
    with open(rc, "w") as f:
        f.write('set folder="imap://alice%%40example.test@127.0.0.1:%d/"\n'
                'set spoolfile="+INBOX"\nset imap_pass="alice-pw"\n'
                "set ssl_starttls=no\nset ssl_force_tls=no\nset mail_check=1\nset timeout=1\n"
                "set confirmappend=no\nset confirmcreate=no\nset sort=date-sent\nset delete=yes\n"
                "set move=no\nset mark_old=no\n" % iport)
    env = dict(os.environ, HOME=home, TERM="xterm")
    subprocess.run(["tmux", "new-session", "-d", "-s", SESSION, "-x", "160", "-y", "40",
                    "mutt -n -F %s" % rc], env=env, check=True)
    try:
        idx = wait_screen("mutt test 2")
        t.ok(idx and "mutt test 0" in idx and "mutt test 1" in idx and "Msgs:3" in idx,
             "mutt logs in over IMAP and lists the three messages", idx or screen())
        keys("Enter")
        pager = wait_screen("body of message 0")
        t.ok(pager is not None, "Enter opens the first message and shows its body", screen())
        keys("q")
        wait_screen("Msgs:3")
        keys("s")
        wait_screen("Save to mailbox")
        keys("=Archive", "Enter")
        t.ok(wait_screen("1 message saved") is not None or wait_screen("Del:1") is not None,
             "s =Archive saves it (the folder is created)", screen())
        keys("d")
        t.ok(wait_screen("Del:2") is not None, "d marks the second message deleted", screen())
        keys("$")
        t.ok(wait_screen("Msgs:1") is not None, "$ syncs: one message left in the index", screen())
        keys("q")
        time.sleep(1)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
    c = imaplib.IMAP4("127.0.0.1", iport, timeout=30)
    c.login("alice@example.test", "alice-pw")
    c.select("INBOX", readonly=True)
    typ, d = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subj = [x[1].decode().strip() for x in d if isinstance(x, tuple)]
    t.eq(subj, ["Subject: mutt test 2"], "IMAP: INBOX keeps only the third message")
    typ, d = c.select("Archive", readonly=True)
    t.eq((typ, d), ("OK", [b"1"]), "IMAP: Archive exists with one message")
    typ, d = c.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    t.ok(b"mutt test 0" in d[0][1] and b"\\Seen" in d[0][0], "the archived message is the one read (\\Seen)", d)
    c.logout()
shutil.rmtree(home, ignore_errors=True)
t.done()
