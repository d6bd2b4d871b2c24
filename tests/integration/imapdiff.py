"""imapdiff - the same scripted IMAP session against two servers, responses
normalised and compared (used by test_imap_dovecot.py; also runnable by
hand: python3 imapdiff.py HOST:PORT USER PASS HOST:PORT USER PASS).

Messages are APPENDed to both servers in the same order with the same
flags and internal dates, so sequence numbers and data agree; only the
server's own choices are normalised away: tags, UIDVALIDITY, the human
text after OK/NO/BAD, CAPABILITY lists, and the order of items inside a
FETCH response.
"""
import re
import socket
import sys

MESSAGES = [
    # plain text, RFC 2047 subject, folded header
    (b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <jorg@remote.test>\r\n"
     b"To: Alice <alice@example.test>, bob@example.test\r\n"
     b"Cc: \"Carol, C.\" <carol@example.test>\r\n"
     b"Subject: =?utf-8?b?R3LDvMOfZQ==?= and\r\n plain words\r\n"
     b"Date: Mon, 02 Jan 2024 10:00:00 +0100\r\n"
     b"Message-ID: <one@remote.test>\r\n"
     b"In-Reply-To: <zero@remote.test>\r\n"
     b"\r\n"
     b"Hello Alice,\r\nthis is line two.\r\n\r\nRegards\r\n", r"(\Seen)", "02-Jan-2024 10:00:05 +0100"),
    # multipart/mixed with text, html alternative and an attachment
    (b"From: shop@remote.test\r\nTo: alice@example.test\r\nSubject: invoice\r\n"
     b"Date: Tue, 03 Jan 2024 11:00:00 +0000\r\nMessage-ID: <two@remote.test>\r\n"
     b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
     b"This is a multi-part message.\r\n"
     b"--outer\r\nContent-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n"
     b"--inner\r\nContent-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
     b"Gr=C3=BC=C3=9Fe, your invoice\r\n"
     b"--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>your <b>invoice</b></p>\r\n"
     b"--inner--\r\n"
     b"--outer\r\nContent-Type: application/pdf; name=\"inv.pdf\"\r\n"
     b"Content-Disposition: attachment; filename=\"inv.pdf\"\r\n"
     b"Content-Transfer-Encoding: base64\r\nContent-ID: <pdf1@remote.test>\r\n"
     b"Content-Description: the invoice\r\n\r\n"
     b"JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K\r\n"
     b"--outer--\r\nepilogue\r\n", r"()", "03-Jan-2024 11:00:05 +0000"),
    # a forwarded message (message/rfc822)
    (b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: Fwd: lunch\r\n"
     b"Date: Wed, 04 Jan 2024 12:00:00 +0000\r\nMessage-ID: <three@example.test>\r\n"
     b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b3\r\n\r\n"
     b"--b3\r\nContent-Type: text/plain\r\n\r\nsee below\r\n"
     b"--b3\r\nContent-Type: message/rfc822\r\n\r\n"
     b"From: carol@example.test\r\nTo: bob@example.test\r\nSubject: lunch\r\n"
     b"Date: Tue, 03 Jan 2024 09:00:00 +0000\r\n\r\nnoon?\r\n"
     b"--b3--\r\n", r"(\Flagged)", "04-Jan-2024 12:00:05 +0000"),
    # no MIME headers at all, long body lines
    (b"From: list@lists.remote.test\r\nSender: owner@lists.remote.test\r\n"
     b"Reply-To: discuss@lists.remote.test\r\nTo: undisclosed-recipients:;\r\n"
     b"Subject: digest\r\nDate: Thu, 05 Jan 2024 13:00:00 -0500\r\n\r\n" +
     b"word " * 200 + b"\r\nlast line\r\n", r"(\Answered \Seen)", "05-Jan-2024 13:00:05 -0500"),
    # a message with an empty body and odd headers
    (b"From: <>\r\nSubject: \r\nTo: alice@example.test\r\n\r\n", r"()", "06-Jan-2024 14:00:05 +0000"),
]

SCRIPT = [
    "SELECT INBOX",
    "FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE)",
    "FETCH 1:* ENVELOPE",
    "FETCH 1:* BODYSTRUCTURE",
    "FETCH 1:* BODY",
    "FETCH 1 (BODY.PEEK[HEADER.FIELDS (From Subject)])",
    "FETCH 1:* (BODY.PEEK[HEADER.FIELDS.NOT (Date Message-ID In-Reply-To Sender Reply-To Cc)])",
    "FETCH 2 (BODY.PEEK[1] BODY.PEEK[1.1] BODY.PEEK[1.2.MIME] BODY.PEEK[2])",
    "FETCH 2 (BODY.PEEK[1.MIME] BODY.PEEK[2.MIME])",
    "FETCH 3 (BODY.PEEK[2] BODY.PEEK[2.HEADER] BODY.PEEK[2.TEXT] BODY.PEEK[2.1])",
    "FETCH 4 (BODY.PEEK[TEXT]<10.20> BODY.PEEK[]<0.30>)",
    "FETCH 5 (BODY.PEEK[TEXT] BODY.PEEK[1] RFC822.HEADER)",
    "FETCH 1 (RFC822.TEXT)",
    "FETCH 1 FLAGS",
    "SEARCH ALL",
    "SEARCH SEEN",
    "SEARCH UNSEEN",
    "SEARCH FLAGGED",
    "SEARCH ANSWERED UNFLAGGED",
    "SEARCH FROM bob",
    "SEARCH SUBJECT invoice",
    "SEARCH BODY noon",
    "SEARCH TEXT invoice",
    "SEARCH HEADER Message-ID two",
    "SEARCH LARGER 1000",
    "SEARCH SMALLER 300",
    "SEARCH SINCE 04-Jan-2024",
    "SEARCH BEFORE 04-Jan-2024",
    "SEARCH ON 03-Jan-2024",
    "SEARCH SENTSINCE 04-Jan-2024",
    "SEARCH OR FLAGGED ANSWERED",
    "SEARCH NOT SEEN",
    "SEARCH 2:4 UNSEEN",
    "SEARCH UID 1:2",
    "SEARCH CHARSET UTF-8 SUBJECT digest",
    "UID SEARCH ALL",
    "STORE 2 +FLAGS (\\Deleted)",
    "STORE 3 -FLAGS.SILENT (\\Flagged)",
    "STORE 4 FLAGS (\\Seen \\Draft)",
    "FETCH 1:* FLAGS",
    "COPY 1:2 Trash",
    "STATUS Trash (MESSAGES UNSEEN)",
    "STATUS INBOX (MESSAGES RECENT UNSEEN)",
    "LIST \"\" *",
    "LIST \"\" %",
    "LSUB \"\" *",
    "CREATE Work",
    "CREATE Work.Sub",
    "LIST \"\" Work*",
    "RENAME Work Projects",
    "LIST \"\" *",
    "DELETE Projects.Sub",
    "DELETE Projects",
    "EXPUNGE",
    "FETCH 1:* (FLAGS UID)",
    "EXAMINE Trash",
    "FETCH 1:* (FLAGS ENVELOPE)",
    "CLOSE",
    "NAMESPACE",
    "BOGUS",
    "FETCH 1 FLAGS",
]


class Conn:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, port), timeout=20)
        self.buf = b""
        self.n = 0
        self.greeting = self._line()

    def _fill(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError("connection closed")
        self.buf += d

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        i = self.buf.index(b"\r\n")
        line, self.buf = self.buf[:i], self.buf[i + 2:]
        return line

    def _response(self):
        """one response line with its literals inlined"""
        out = b""
        while True:
            line = self._line()
            out += line
            m = re.search(rb"\{(\d+)\}$", line)
            if not m:
                return out
            n = int(m.group(1))
            while len(self.buf) < n:
                self._fill()
            out += b"\r\n" + self.buf[:n]
            self.buf = self.buf[n:]

    def cmd(self, text):
        self.n += 1
        tag = b"t%d" % self.n
        self.s.sendall(tag + b" " + text.encode() + b"\r\n")
        lines = []
        while True:
            r = self._response()
            if r.startswith(tag + b" "):
                return lines, r[len(tag) + 1:]
            lines.append(r)

    def append(self, box, data, flags, date):
        self.n += 1
        tag = b"t%d" % self.n
        self.s.sendall(tag + b" APPEND %s %s \"%s\" {%d}\r\n" % (box.encode(), flags.encode(),
                                                               date.encode(), len(data)))
        r = self._line()
        if not r.startswith(b"+"):
            raise RuntimeError("APPEND refused: %r" % r)
        self.s.sendall(data + b"\r\n")
        while True:
            r = self._response()
            if r.startswith(tag + b" "):
                return r[len(tag) + 1:]


def literals_to_quoted(v):
    """{n}CRLF<n bytes> -> a quoted string, where the bytes allow it (both
    forms are the same string to a client)"""
    out, i = b"", 0
    while i < len(v):
        m = re.match(rb"\{(\d+)\}\r\n", v[i:])
        if m and (i == 0 or v[i - 1:i] in b" ("):
            n = int(m.group(1))
            data = v[i + m.end():i + m.end() + n]
            if b"\r" not in data and b"\n" not in data:
                out += b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
                i += m.end() + n
                continue
        out += v[i:i + 1]
        i += 1
    return out


def fetch_items(body):
    """split a FETCH item list '(A x B (y) C {3}...)' into a sorted list"""
    items, i, depth, cur = [], 0, 0, b""
    s = body
    while i < len(s):
        c = s[i:i + 1]
        if c == b"\"":
            j = i + 1
            while j < len(s) and s[j:j + 1] != b"\"":
                j += 2 if s[j:j + 1] == b"\\" else 1
            cur += s[i:j + 1]
            i = j + 1
            continue
        m = re.match(rb"\{(\d+)\}\r\n", s[i:])
        if m:
            n = int(m.group(1))
            cur += s[i:i + m.end() + n]
            i += m.end() + n
            continue
        if c in (b"(", b"["):
            depth += 1
        elif c in (b")", b"]"):
            depth -= 1
        if c == b" " and depth == 0:
            items.append(cur)
            cur = b""
        else:
            cur += c
        i += 1
    if cur:
        items.append(cur)
    # pair names with values: NAME VALUE NAME VALUE
    pairs = []
    for k in range(0, len(items), 2):
        name, val = items[k], (items[k + 1] if k + 1 < len(items) else b"")
        if name in (b"ENVELOPE", b"BODYSTRUCTURE", b"BODY"):
            val = literals_to_quoted(val)
        pairs.append(name + b" " + val)
    return sorted(pairs)


def unquote(name):
    """a mailbox name as an atom when it can be one (both forms are legal)"""
    if name.startswith(b'"') and name.endswith(b'"') and re.match(rb'^"[A-Za-z0-9.&_-]+"$', name):
        return name[1:-1]
    return name


def normalise(lines, status):
    out = []
    for l in lines:
        if re.match(rb"\* OK \[(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ|CAPABILITY|UNSEEN|PERMANENTFLAGS|URLMECH|NOMODSEQ)", l):
            # UIDVALIDITY differs by design; PERMANENTFLAGS/UNSEEN compared elsewhere
            m = re.match(rb"\* OK \[(\w+)", l)
            if m.group(1) in (b"UNSEEN", b"PERMANENTFLAGS"):
                out.append(re.sub(rb"\] .*", b"]", l))
            continue
        if l.startswith(b"* OK") or l.startswith(b"* NO") or l.startswith(b"* CAPABILITY"):
            continue
        m = re.match(rb"\* (\d+) FETCH \((.*)\)$", l, re.S)
        if m:
            out.append(b"* " + m.group(1) + b" FETCH (" + b" ".join(fetch_items(m.group(2))) + b")")
            continue
        m = re.match(rb"\* STATUS (\S+) \((.*)\)$", l)
        if m:
            m = re.match(rb"\* STATUS (.+) \((.*)\)$", l)
            kv = m.group(2).split()
            pairs = sorted(b" ".join(kv[k:k + 2]) for k in range(0, len(kv), 2)
                           if kv[k] not in (b"UIDVALIDITY",))
            out.append(b"* STATUS " + unquote(m.group(1)) + b" (" + b" ".join(pairs) + b")")
            continue
        if l.startswith(b"* LIST") or l.startswith(b"* LSUB"):
            # attribute order is free; a name may be an atom or quoted
            m = re.match(rb"\* (LIST|LSUB) \(([^)]*)\) (\S+) (.*)$", l)
            if m:
                attrs = sorted(m.group(2).split())
                out.append(b"* " + m.group(1) + b" (" + b" ".join(attrs) + b") " + m.group(3) + b" " +
                           unquote(m.group(4)))
                continue
        if l.startswith(b"* SEARCH"):
            out.append(b" ".join([b"* SEARCH"] + sorted(l.split()[2:], key=int)))
            continue
        out.append(l)
    # LIST/LSUB replies may come in any order
    lists = sorted(x for x in out if x.startswith(b"* LIST") or x.startswith(b"* LSUB"))
    rest = [x for x in out if not (x.startswith(b"* LIST") or x.startswith(b"* LSUB"))]
    return rest + lists, status.split()[0]


def run(host, port, user, password, script=SCRIPT):
    c = Conn(host, port)
    lines, st = c.cmd("LOGIN %s %s" % (user, password))
    if not st.startswith(b"OK"):
        raise RuntimeError("login failed: %r" % st)
    for data, flags, date in MESSAGES:
        st = c.append("INBOX", data, flags, date)
        if not st.startswith(b"OK"):
            raise RuntimeError("APPEND failed: %r" % st)
    res = []
    for cmd in script:
        lines, st = c.cmd(cmd)
        res.append((cmd, normalise(lines, st)))
    c.cmd("LOGOUT")
    return res


def diff(a, b):
    """[(command, a-lines, b-lines)] where the normalised responses differ"""
    d = []
    for (ca, ra), (cb, rb) in zip(a, b):
        if ra != rb:
            d.append((ca, ra, rb))
    return d


if __name__ == "__main__":
    def hp(x):
        h, p = x.rsplit(":", 1)
        return h, int(p)
    a = run(*hp(sys.argv[1]), sys.argv[2], sys.argv[3])
    b = run(*hp(sys.argv[4]), sys.argv[5], sys.argv[6])
    for cmd, ra, rb in diff(a, b):
        print("== %s" % cmd)
        for l in ra[0]:
            if l not in rb[0]:
                print("  A: %r" % l[:400])
        for l in rb[0]:
            if l not in ra[0]:
                print("  B: %r" % l[:400])
        if ra[1] != rb[1]:
            print("  status A %r B %r" % (ra[1], rb[1]))
    print("%d of %d commands differ" % (len(diff(a, b)), len(a)))
