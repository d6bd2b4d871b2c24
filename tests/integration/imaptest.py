"""imaptest - an interpreter for Dovecot imaptest's scripted test format
(the files under ../shared/conformance/imaptest-tests), written from the
format's documentation and behaviour; no imaptest code.  Used by
test_imaptest.py; runnable by hand:

    python3 imaptest.py HOST PORT USER PASS TESTDIR [GROUP ...]

The format, as implemented here:
- a header (up to the first empty line): `capabilities: A B` (the group
  is skipped unless the server advertises all of them after login),
  `connections: N`, `state: nonauth|auth|created|appended|selected`
  (default selected), `messages: N|all` (appended from GROUP.mbox or
  default.mbox; the internal date from the From_ line),
  `ignore_extra_untagged: y|n`, `user N: NAME`.
- setup: every connection logs in; connection 1 LISTs and LSUBs
  "$mailbox*", DELETEs and UNSUBSCRIBEs what it finds (auth), CREATEs
  $mailbox (created), APPENDs the messages (appended), and then every
  connection SELECTs it (selected).
- commands: `[conn] [tagN] [ok|no|bad|""] command`; without a result the
  expected tagged reply follows the untagged lines (`ok [read-only]`,
  `tag1 ok`, with conn prefix when several connections).  Commands with
  tags form a pipelined group.  `* ...` must arrive, `! ...` must not,
  `? ...` may; `!ordered` makes the `*` lines ordered; `!sleep`,
  `!output`, `!ifenv/!ifnenv/!else/!endif` are honoured.  `{{{` ... `}}}`
  is a multi-line literal (`~{{{` a literal8).
- matching: IMAP args compared one by one, atoms/strings/literals by
  value, case-insensitively; NIL only matches NIL; lists in order and
  exactly unless `$!unordered[=N]` (then extras allowed unless
  `$!noextra`; `$!ignore=X`, `$!ban=X`).  Default directives as
  imaptest: LIST/LSUB flags unordered, STATUS items unordered pairs,
  FETCH items unordered pairs, FETCH FLAGS unordered without extras
  (\\Recent ignored).  OK/NO/BAD/BYE untagged and tagged replies match as
  a prefix (human text after them is free).  `$var` / `${var}` binds on
  first use and must then match exactly; `$$` is a literal `$`; `$N` is
  the current sequence of the message that was N when the command group
  started; `$` alone matches anything, including a list; `$]` skips to
  `]`; `${case:X}` matches X case-sensitively.
A group passes when every command's tagged reply and every required
untagged reply matched and no forbidden one arrived.
"""
import os
import re
import socket
import sys
import time

TIMEOUT = 15.0


class Fail(Exception):
    pass


class Abort(Exception):
    """the connection is gone or hangs: the rest of the group cannot run"""


# ---------------------------------------------------------------- parsing
# an arg is ('atom', str) | ('str', str) | ('lit', str) | ('nil', None)
# | ('list', [args])

def parse_args(data):
    """parse one IMAP line (str, literals inline as {N}\\r\\n...) into args"""
    pos = 0
    n = len(data)
    stack = [[]]
    while pos < n:
        c = data[pos]
        if c == ' ' or c == '\r' or c == '\n':
            pos += 1
            continue
        if c == '(':
            stack.append([])
            pos += 1
            continue
        if c == ')':
            if len(stack) == 1:
                raise ValueError("unbalanced )")
            lst = stack.pop()
            stack[-1].append(('list', lst))
            pos += 1
            continue
        if c == '"':
            pos += 1
            out = []
            while pos < n and data[pos] != '"':
                if data[pos] == '\\' and pos + 1 < n:
                    pos += 1
                out.append(data[pos])
                pos += 1
            if pos >= n:
                raise ValueError("unterminated string")
            pos += 1
            stack[-1].append(('str', ''.join(out)))
            continue
        m = re.compile(r'~?\{(\d+)\+?\}\r?\n').match(data, pos)
        if m:
            size = int(m.group(1))
            start = m.end()
            if start + size > n:
                raise ValueError("short literal")
            stack[-1].append(('lit', data[start:start + size]))
            pos = start + size
            continue
        end = pos
        while end < n and data[end] not in ' ()\r\n':
            # a quoted string glued to an atom is not split (atom allchars)
            end += 1
        tok = data[pos:end]
        pos = end
        if tok.upper() == 'NIL':
            stack[-1].append(('nil', None))
        else:
            stack[-1].append(('atom', tok))
    if len(stack) != 1:
        raise ValueError("unbalanced (")
    return stack[0]


def args_str(args):
    out = []
    for a in args:
        t, v = a
        if t == 'list':
            out.append('(' + args_str(v) + ')')
        elif t == 'nil':
            out.append('NIL')
        elif t == 'atom':
            out.append(v)
        elif t == 'str':
            out.append('"' + v.replace('\\', '\\\\').replace('"', '\\"') + '"')
        else:
            out.append('{%d}%s' % (len(v), v[:200].replace('\r\n', '\\r\\n')))
    return ' '.join(out)


def astring(a):
    # imaptest compares C strings: a value ends at its first NUL
    return a[1].split('\0', 1)[0] if a[0] in ('atom', 'str', 'lit') else None


MUST, MUSTNOT, MAY = 1, 2, 3


class Group:
    def __init__(self):
        self.conn = 0
        self.commands = []      # dicts: tag, reply(args|None), text, line
        self.untagged = []      # (existence, args)
        self.ordered = False
        self.sleep = 0.0
        self.output = []
        self.pending = 0
        self.bye = False


class Test:
    def __init__(self, path):
        self.path = path
        self.name = os.path.basename(path)
        self.caps = []
        self.connections = 1
        self.messages = 0
        self.state = 'selected'
        self.ignore_extra = True
        self.users = {}
        self.groups = []
        self.banner = False
        mb = path + '.mbox'
        self.mbox = mb if os.path.exists(mb) else os.path.join(os.path.dirname(path), 'default.mbox')


REPLY_RE = re.compile(r'(?i)^(ok|no|bad|"")(?: |$)')


def _directives(args, reply, parent_chain=None, depth=0, prev_atom=None):
    """add imaptest's default list directives in place (see module doc)"""
    have = any(a[0] == 'atom' and a[1].startswith('$!') for a in args[:1])
    if not have and depth > 0:
        add = []
        if reply in ('list', 'lsub') and depth == 1 and parent_chain == 1:
            add = ['$!unordered']
        elif reply == 'status' and depth == 1 and parent_chain == 2:
            add = ['$!unordered=2']
        elif reply == 'fetch' and depth == 1 and parent_chain == 2:
            add = ['$!unordered=2']
        elif reply == 'fetch' and depth == 2 and prev_atom == 'flags' and parent_chain == 'fetchitem':
            add = ['$!ignore=$HasNoAttachment', '$!ignore=$HasAttachment', '$!ignore=\\recent',
                   '$!noextra', '$!unordered']
        for d in add:
            args.insert(0, ('atom', d))
    mychain = 1
    for a in args:
        if a[0] == 'atom' and a[1].startswith('$!unordered='):
            mychain = int(a[1][12:])
    prev = None
    for i, a in enumerate(args):
        if a[0] == 'atom':
            prev = a[1].lower()
        if a[0] != 'list':
            continue
        idx = i if mychain == 1 else i % mychain
        if depth == 0:
            pc = i
        elif depth == 1 and reply == 'fetch' and parent_chain == 2:
            pc = 'fetchitem'
        else:
            pc = idx
        _directives(a[1], reply, pc, depth + 1, prev)


def untagged_args(line):
    args = parse_args(line)
    name = ''
    if args and args[0][0] == 'atom':
        s = args[0][1]
        if s[:1] == '$' or s[:1].isdigit():
            name = args[1][1] if len(args) > 1 and args[1][0] == 'atom' else ''
        else:
            name = s
    _directives(args, name.lower())
    return args, name


def read_script(path):
    t = Test(path)
    with open(path, 'rb') as f:
        raw = f.read().decode('utf-8', 'surrogateescape')
    lines = raw.split('\n')
    if lines and lines[-1] == '':
        lines.pop()
    header = True
    group = None
    skip_stack = []
    skip = False
    i = 0
    while i < len(lines):
        line = lines[i].rstrip('\r') if not lines[i].endswith('{{{') else lines[i]
        lineno = i + 1
        i += 1
        if line.endswith('{{{'):
            # multi-line literal(s); the line continues after }}}
            buf = ''
            cur = line
            while cur.endswith('{{{'):
                binary = cur.endswith('~{{{')
                buf += cur[:-4] if binary else cur[:-3]
                body = []
                while i < len(lines) and not lines[i].startswith('}}}'):
                    body.append(lines[i])
                    i += 1
                if i >= len(lines):
                    raise ValueError("%s:%d: unterminated {{{" % (path, lineno))
                rest = lines[i][3:]
                i += 1
                # lines as written (a CR kept); the last line's end dropped
                lit = ('\n' if binary else '\r\n').join(body)
                buf += '%s{%d}\r\n%s' % ('~' if binary else '', len(lit.encode('utf-8', 'surrogateescape')), lit)
                cur = rest
            line = buf + cur
        else:
            if line == '':
                header = False
                continue
            if line.startswith('#'):
                continue
        if header:
            k, _, v = line.partition(':')
            k = k.strip().lower()
            v = v.strip()
            if k == 'capabilities':
                t.caps = v.split()
            elif k == 'connections':
                t.connections = int(v)
            elif k == 'messages':
                t.messages = -1 if v == 'all' else int(v)
            elif k == 'state':
                t.state = v.lower()
            elif k == 'ignore_extra_untagged':
                t.ignore_extra = v.startswith('y')
            elif k.startswith('user '):
                t.users[int(k[5:])] = v
            else:
                raise ValueError("%s:%d: unknown header %s" % (path, lineno, k))
            continue
        if line.startswith('!ifenv ') or line.startswith('!ifnenv '):
            env = line.split(' ', 1)[1]
            have = os.environ.get(env) is None
            if line.startswith('!ifnenv '):
                have = not have
            skip_stack.append(skip)
            if have:
                skip = True
            continue
        if line == '!else':
            if not skip_stack[-1]:
                skip = not skip
            continue
        if line == '!endif':
            skip = skip_stack.pop()
            continue
        if skip:
            continue
        if group is not None:
            if line.startswith('!sleep '):
                v = line[7:].strip()
                m = re.match(r'(\d+)\s*(ms|msecs|s|secs)?$', v)
                group.sleep = int(m.group(1)) / (1000.0 if m.group(2) in ('ms', 'msecs') else 1.0)
                continue
            if line.startswith('!output '):
                group.output.append(line[8:])
                continue
            if line == '!ordered':
                group.ordered = True
                continue
            if line[:2] in ('* ', '! ', '? '):
                ex = {'* ': MUST, '! ': MUSTNOT, '? ': MAY}[line[:2]]
                args, name = untagged_args(line[2:])
                if name.lower().startswith('bye') and ex == MUST:
                    group.bye = True
                group.untagged.append((ex, args))
                continue
            if group.pending > 0:
                rest = line
                cidx = 0
                if t.connections > 1:
                    m = re.match(r'(\d+) ', rest)
                    if m:
                        cidx = int(m.group(1))
                        rest = rest[m.end():]
                tag = 0
                m = re.match(r'(?i)tag(\d+) ', rest)
                r2 = rest
                if m:
                    tag = int(m.group(1))
                    r2 = rest[m.end():]
                if REPLY_RE.match(r2):
                    if t.connections > 1 and cidx and cidx - 1 != group.conn:
                        raise ValueError("%s:%d: reply for the wrong connection" % (path, lineno))
                    cmd = next((c for c in group.commands if c['tag'] == tag), None)
                    if cmd is None or cmd['reply'] is not None:
                        raise ValueError("%s:%d: reply for unknown tag" % (path, lineno))
                    cmd['reply'] = reply_args(r2)
                    group.pending -= 1
                    continue
        if group is None or group.pending == 0:
            group = Group()
            t.groups.append(group)
        cidx = 1
        if t.connections > 1:
            m = re.match(r'(\d+)(?: |$)', line)
            if not m:
                raise ValueError("%s:%d: missing connection index" % (path, lineno))
            cidx = int(m.group(1))
            line = line[m.end():]
            if cidx > t.connections:
                t.connections = cidx
        group.conn = cidx - 1
        tag = 0
        m = re.match(r'(?i)tag(\d+) ', line)
        if m:
            tag = int(m.group(1))
            line = line[m.end():]
        reply = None
        m = REPLY_RE.match(line)
        if m:
            reply = [('atom', '' if m.group(1) == '""' else m.group(1).lower())]
            line = line[m.end():]
        if not group.commands and line[:2] in ('* ', '! ', '? '):
            t.banner = True
            ex = {'* ': MUST, '! ': MUSTNOT, '? ': MAY}[line[:2]]
            args, name = untagged_args(line[2:])
            group.untagged.append((ex, args))
            continue
        if reply is None:
            group.pending += 1
        group.commands.append({'tag': tag, 'reply': reply, 'text': line, 'line': lineno})
    if group is not None and group.pending:
        raise ValueError("%s: missing reply at the end" % path)
    has_logout = any(c['text'].lower() == 'logout' or g.bye for g in t.groups for c in g.commands)
    if not has_logout:
        g = Group()
        g.commands.append({'tag': 0, 'reply': [('atom', 'ok')], 'text': 'logout', 'line': 0})
        t.groups.append(g)
    return t


def reply_args(text):
    m = REPLY_RE.match(text)
    if m.group(1) == '""':
        return [('atom', '')] + parse_args(text[m.end():])
    return parse_args(text)


# ---------------------------------------------------------------- mbox

FROM_RE = re.compile(r'^From \S+\s+\w{3} (\w{3})\s+(\d+) (\d\d:\d\d:\d\d) (\d{4})(?: ([+-]\d{4}))?')


def read_mbox(path):
    msgs = []
    with open(path, 'rb') as f:
        data = f.read().decode('utf-8', 'surrogateescape')
    cur = None
    for line in data.split('\n')[:-1] if data.endswith('\n') else data.split('\n'):
        m = FROM_RE.match(line)
        if m and (cur is None or cur[1]):
            date = '%02d-%s-%s %s %s' % (int(m.group(2)), m.group(1), m.group(4), m.group(3),
                                         m.group(5) or '+0000')
            cur = [date, []]
            msgs.append(cur)
            continue
        if cur is None:
            raise ValueError("%s: not an mbox" % path)
        cur[1].append(line.rstrip('\r'))
    return [(d, ''.join(l + '\r\n' for l in body)) for d, body in msgs]


# ---------------------------------------------------------------- connection

class Conn:
    def __init__(self, host, port, ident):
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.buf = b''
        self.ident = ident
        self.tagn = 0
        self.count = 0          # messages in the selected mailbox
        self.caps = []
        self.closed = False
        self.seen_bye = False
        self.greeting = self.read_response()

    def send(self, s):
        try:
            self.sock.sendall(s.encode('utf-8', 'surrogateescape'))
        except OSError as e:
            raise Abort("send failed: %s" % e)

    def _fill(self):
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            raise Abort("timeout waiting for the server")
        except OSError as e:
            raise Abort("connection error: %s" % e)
        if not d:
            self.closed = True
            raise Abort("connection closed by the server")
        self.buf += d

    def read_response(self):
        """one response (line plus literals) as str"""
        out = b''
        while True:
            i = self.buf.find(b'\n')
            while i < 0:
                self._fill()
                i = self.buf.find(b'\n')
            line = self.buf[:i + 1]
            self.buf = self.buf[i + 1:]
            out += line
            m = re.search(rb'\{(\d+)\}\r?\n$', line)
            if not m:
                return out.decode('utf-8', 'surrogateescape')
            size = int(m.group(1))
            while len(self.buf) < size:
                self._fill()
            out += self.buf[:size]
            self.buf = self.buf[size:]

    def next_tag(self):
        self.tagn += 1
        return '%d.%d' % (self.ident, self.tagn)

    def simple(self, cmd):
        """setup command: returns (status, untagged lists)"""
        tag = self.next_tag()
        self.send('%s %s\r\n' % (tag, cmd))
        unt = []
        while True:
            r = self.read_response()
            if r.startswith(tag + ' '):
                return r[len(tag) + 1:].split(' ', 1)[0].upper(), unt
            if r.startswith('* '):
                self.track(r)
                unt.append(parse_args(r[2:]))

    def track(self, r):
        m = re.match(r'\* (\d+) (EXISTS|EXPUNGE)\b', r, re.I)
        if m:
            if m.group(2).upper() == 'EXISTS':
                self.count = int(m.group(1))
            else:
                self.count -= 1
        m = re.match(r'(?i)\* (?:OK \[)?CAPABILITY ([^\]\r\n]*)', r)
        if m:
            self.caps = m.group(1).split()
        if re.match(r'(?i)\* BYE', r):
            self.seen_bye = True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def quote(s):
    return '"' + s.replace('\\', '\\\\').replace('"', '\\"') + '"'


# ---------------------------------------------------------------- execution

class Run:
    def __init__(self, test, host, port, user, password, mailbox='imaptest'):
        self.t = test
        self.host, self.port = host, port
        self.user, self.password = user, password
        self.mailbox = mailbox
        self.vars = {}
        self.added = []
        self.errors = []
        self.seqmap = []
        self.msgs = None
        self.msg_i = 0

    def fail(self, msg):
        self.errors.append(msg)

    # -- variables and matching
    def rel_seq(self, n):
        if n == 0:
            return '<zero seq>'
        if n > len(self.seqmap):
            return '<out of range>'
        if self.seqmap[n - 1] == 0:
            return '<expunged>'
        return str(self.seqmap[n - 1])

    def expand_cmd(self, s):
        out = []
        i = 0
        n = len(s)
        while i < n:
            c = s[i]
            if c != '$' or i == n - 1:
                out.append(c)
                i += 1
                continue
            i += 1
            if s[i] == '$':
                out.append('$')
                i += 1
            elif s[i] == '!':
                while i < n and s[i] != ' ':
                    i += 1
                i += 1
            else:
                if s[i] == '{':
                    j = s.find('}', i)
                    if j < 0:
                        raise Fail("missing '}'")
                    name = s[i + 1:j]
                    i = j + 1
                else:
                    j = i
                    while j < n and (s[j].isalnum() or s[j] == '_'):
                        j += 1
                    name = s[i:j]
                    i = j
                if name.isdigit():
                    out.append(self.rel_seq(int(name)))
                elif name in self.vars:
                    out.append(self.vars[name])
                else:
                    raise Fail("uninitialized variable: %s" % name)
        return ''.join(out)

    def expand_input(self, pat, inp):
        """match pattern pat against input inp, binding variables;
        returns (expanded, icase) or None"""
        icase = True
        out = []
        pi = 0
        ii = 0
        n = len(pat)
        while pi < n:
            if pat[pi] != '$' or (pi + 1 < n and pat[pi + 1] == '$'):
                if pat[pi] == '$':
                    pi += 1
                ch = pat[pi]
                if ii >= len(inp) or ch.upper() != inp[ii].upper():
                    return None
                ii += 1
                out.append(ch)
                pi += 1
                continue
            pi += 1
            if pi < n and pat[pi] == '{':
                j = pat.find('}', pi + 1)
                if j < 0:
                    return ('', True)
                name = pat[pi + 1:j]
                pi = j + 1
            else:
                j = pi
                while j < n and (pat[j].isalnum() or pat[j] == '_'):
                    j += 1
                name = pat[pi:j]
                pi = j
            if name.isdigit():
                value = self.rel_seq(int(name))
            elif name.startswith('case:'):
                icase = False
                value = name[5:]
            else:
                value = self.vars.get(name) if name else None
                if value is None:
                    rest = pat[pi:]
                    if rest[:1] == '$' and rest[1:2] != '$':
                        r = self.expand_input(rest, inp[ii:])
                        stop = r[0][:1] if r else ''
                        ic = r[1] if r else True
                    else:
                        stop = rest[1:2] if rest[:2] == '$$' else rest[:1]
                        ic = True
                    k = ii
                    while k < len(inp):
                        if stop and (inp[k].upper() == stop.upper() if ic else inp[k] == stop):
                            break
                        k += 1
                    value = inp[ii:k]
                    if name:
                        self.vars[name] = value
                        self.added.append(name)
            out.append(value)
            if inp[ii:ii + len(value)] != value:
                return None
            ii += len(value)
        return (''.join(out), icase)

    def match_args(self, match, args, maxn=None, prefix=False):
        """number of leading args matched, or None when all matched"""
        ret = 0
        mi = 0
        ai = 0
        while mi < len(match) and (maxn is None or maxn > 0):
            m = match[mi]
            a = args[ai] if ai < len(args) else ('eol', None)
            if m[0] == 'nil':
                if a[0] != 'nil':
                    return ret
            elif m[0] in ('atom', 'str', 'lit'):
                if m[1] == '$' and a[0] == 'list':
                    pass
                elif m[1] == '$]':
                    while ai < len(args) and args[ai][0] == 'atom' and ']' not in args[ai][1]:
                        ai += 1
                else:
                    s = astring(a)
                    if s is None:
                        return ret
                    r = self.expand_input(astring(m), s)
                    if r is None:
                        return ret
                    ms, icase = r
                    last = mi == len(match) - 1
                    if prefix and last:
                        ok = s[:len(ms)].lower() == ms.lower() if icase else s.startswith(ms)
                    else:
                        ok = s.lower() == ms.lower() if icase else s == ms
                    if not ok:
                        return ret
            elif m[0] == 'list':
                if a[0] != 'list':
                    return ret
                sub = self.match_list(m[1], a[1])
                if sub is not None:
                    return ret + sub
            mi += 1
            ai += 1
            ret += 1
            if maxn is not None:
                maxn -= 1
        if prefix or ai >= len(args) or maxn == 0:
            return None
        return ret

    def match_list(self, match, args):
        unordered = False
        chain = 1
        ignores, bans = [], []
        noextra = -1
        k = 0
        while k < len(match) and match[k][0] == 'atom' and match[k][1].startswith('$!'):
            d = match[k][1][2:]
            if d.startswith('unordered'):
                unordered = True
                if noextra == -1:
                    noextra = 0
                if d[9:10] == '=':
                    chain = int(d[10:])
            elif d == 'ordered':
                unordered = False
            elif d == 'extra':
                noextra = 0
            elif d == 'noextra':
                noextra = 1
            elif d.startswith('ignore='):
                ignores.append(d[7:].lower())
            elif d.startswith('ban='):
                bans.append(d[4:].lower())
            k += 1
        match = match[k:]
        if noextra == -1:
            noextra = 1
        if not unordered:
            return self.match_args(match, args)
        if len(args) % chain:
            return 0
        matched = [False] * len(args)
        ret = 0
        for mi in range(0, len(match), chain):
            for ai in range(0, len(args), chain):
                if self.match_args(match[mi:mi + chain], args[ai:ai + chain], chain) is None:
                    matched[ai] = True
                    break
            else:
                return ret
            ret += 1
        if noextra > 0:
            for ai in range(0, len(args), chain):
                if matched[ai]:
                    continue
                s = astring(args[ai])
                if s is None:
                    continue
                if s.lower() not in ignores:
                    return ret
        elif bans:
            for ai in range(0, len(args), chain):
                if matched[ai]:
                    continue
                s = astring(args[ai])
                if s is not None and s.lower() in bans:
                    return ret
        return None

    # -- untagged handling for the current group
    def handle_untagged(self, group, conn, line, state):
        args = parse_args(line[2:])
        prefix = bool(args) and args[0][0] == 'atom' and args[0][1].lower() in ('ok', 'no', 'bad', 'bye')
        found_some = False
        for i, (ex, uargs) in enumerate(group.untagged):
            if state['found'][i]:
                continue
            self.added = []
            if state['tag']:
                self.vars['tag'] = state['tag']
            r = self.match_args(uargs, args, None, prefix)
            self.vars.pop('tag', None)
            if r is None:
                if ex == MUSTNOT:
                    self.fail("unexpected untagged reply: %s (matches ! %s)" % (line.strip()[:300], args_str(uargs)))
                    return
                state['found'][i] = True
                found_some = True
                self.added = []
                if group.ordered:
                    break
                continue
            if r > state['best'].get(i, (-1, ''))[0]:
                state['best'][i] = (r, line.strip()[:1500])
            for v in self.added:
                self.vars.pop(v, None)
            self.added = []
            if group.ordered and ex == MUST:
                break
        if not found_some:
            state['mismatch'] += 1
            if not self.t.ignore_extra and state['extra'] is None:
                state['extra'] = line.strip()[:300]
        # expunge: update the sequence map after matching
        m = re.match(r'\* (\d+) EXPUNGE\b', line, re.I)
        if m:
            seq = int(m.group(1))
            if seq <= len(self.seqmap):
                for k in range(seq - 1, len(self.seqmap)):
                    if self.seqmap[k] >= seq:
                        self.seqmap[k] = 0 if self.seqmap[k] == seq else self.seqmap[k] - 1

    def group_finished(self, group, state):
        missing = [i for i, (ex, _) in enumerate(group.untagged) if ex == MUST and not state['found'][i]]
        if missing:
            i = missing[0]
            self.fail("missing %d untagged replies (%d mismatches); first: %s; best match: %s"
                      % (len(missing), state['mismatch'], args_str(group.untagged[i][1]),
                         state['best'].get(i, (0, ''))[1]))
        if state['extra'] is not None:
            self.fail("unexpected untagged reply: %s" % state['extra'])
        if group.sleep:
            time.sleep(group.sleep)

    # -- the message source
    def next_message(self):
        if self.msgs is None:
            self.msgs = read_mbox(self.t.mbox)
        m = self.msgs[self.msg_i % len(self.msgs)]
        self.msg_i += 1
        return m

    def send_with_literals(self, conn, tag, text, state, group):
        """send 'tag text' waiting for '+' before each synchronizing literal;
        returns False when the command got its tagged reply early"""
        full = '%s %s' % (tag, text)
        pos = 0
        for m in re.finditer(r'~?\{(\d+)\}\r\n', full):
            conn.send(full[pos:m.end()])
            pos = m.end()
            while True:
                r = conn.read_response()
                if r.startswith('+'):
                    break
                if self.dispatch(conn, r, group, state):
                    if tag in state['done']:
                        return False
            # literal data follows
        conn.send(full[pos:] + '\r\n')
        return True

    def dispatch(self, conn, r, group, state):
        """handle one response on the group's connection; True if tagged"""
        if r.startswith('* '):
            conn.track(r)
            self.handle_untagged(group, conn, r, state)
            return False
        if r.startswith('+'):
            return False
        tag, _, rest = r.partition(' ')
        cmd = state['cmds'].get(tag)
        if cmd is None:
            self.fail("unexpected tagged reply: %s" % r.strip()[:200])
            return True
        args = parse_args(rest)
        self.vars['tag'] = tag
        mres = self.match_args(cmd['reply'], args, None, True)
        self.vars.pop('tag', None)
        status = args[0][1].lower() if args and args[0][0] == 'atom' else ''
        expect = cmd['reply'][0][1].lower() if cmd['reply'] else ''
        if mres is not None:
            self.fail("line %d %s: expected tagged reply '%s', got '%s'"
                      % (cmd['line'], cmd['text'][:80], args_str(cmd['reply']), rest.strip()[:200]))
        elif status == 'bad' and expect != 'bad':
            self.fail("line %d %s: BAD reply" % (cmd['line'], cmd['text'][:80]))
        state['done'].add(tag)
        return True

    def append_cmd(self, text):
        """APPEND without a message body: take the next one from the mbox"""
        low = text.lower()
        if low == 'append':
            date, body = self.next_message()
            return 'APPEND %s "%s" {%d}\r\n%s' % (quote(self.mailbox), date,
                                                  len(body.encode('utf-8', 'surrogateescape')), body)
        if low.startswith('append '):
            try:
                a = parse_args(text[7:])
            except ValueError:
                return text
            k = 1
            if len(a) > k and a[k][0] == 'list':
                k += 1
            if len(a) > k and a[k][0] == 'str':
                k += 1
            if len(a) > k and (a[k][0] == 'lit' or (a[k][0] == 'atom' and a[k][1].lower() == 'catenate')):
                return text
            date, body = self.next_message()
            return '%s {%d}\r\n%s' % (text, len(body.encode('utf-8', 'surrogateescape')), body)
        return text

    def run_group(self, conns, group):
        conn = conns[group.conn]
        if conn.closed:
            raise Abort("connection %d already closed" % (group.conn + 1))
        self.seqmap = list(range(1, conn.count + 1))
        state = {'found': [False] * len(group.untagged), 'best': {}, 'mismatch': 0,
                 'extra': None, 'cmds': {}, 'done': set(), 'tag': None}
        if not group.commands:
            # banner check: match the greeting
            self.handle_untagged(group, conn, conn.greeting, state)
            self.group_finished(group, state)
            return
        tags = []
        for cmd in group.commands:
            text = self.expand_cmd(cmd['text'])
            text = self.append_cmd(text)
            tag = conn.next_tag()
            tags.append(tag)
            state['cmds'][tag] = cmd
            if state['tag'] is None:
                state['tag'] = tag
            self.send_with_literals(conn, tag, text, state, group)
        try:
            while not all(t in state['done'] for t in tags):
                r = conn.read_response()
                self.dispatch(conn, r, group, state)
        except Abort:
            if group.bye and conn.seen_bye:
                for c in group.commands:
                    if c['reply'] != [('atom', '')]:
                        if not any(state['cmds'][t] is c for t in state['done']):
                            self.fail("line %d: only \"\" allowed when BYE happens" % c['line'])
                self.group_finished(group, state)
                return
            if conn.seen_bye and all(c['text'].lower() == 'logout' for c in group.commands):
                self.group_finished(group, state)
                return
            raise
        self.group_finished(group, state)

    def setup(self):
        t = self.t
        conns = []
        for i in range(t.connections):
            if i + 1 in t.users and t.users[i + 1] not in (self.user,):
                raise Skip("needs a second user (%s)" % t.users[i + 1])
            c = Conn(self.host, self.port, i + 1)
            conns.append(c)
            key = '' if i == 0 else str(i + 1)
            self.vars['user' + key] = self.user
            self.vars['username' + key] = self.user.split('@')[0]
            self.vars['domain' + key] = self.user.split('@')[1] if '@' in self.user else self.host
            self.vars['password' + key] = self.password
        self.vars['mailbox'] = self.mailbox
        self.vars['mailbox_url'] = self.mailbox
        c0 = conns[0]
        if t.state == 'nonauth':
            st, _ = c0.simple('CAPABILITY')
            if not self.have_caps(c0.caps):
                raise Skip("server lacks %s" % ' '.join(t.caps))
            return conns
        for c in conns:
            st, _ = c.simple('LOGIN %s %s' % (quote(self.user), quote(self.password)))
            if st != 'OK':
                raise Fail("LOGIN failed")
        st, _ = c0.simple('CAPABILITY')
        if st != 'OK':
            raise Fail("CAPABILITY failed")
        if not self.have_caps(c0.caps):
            raise Skip("server lacks %s" % ' '.join(cap for cap in t.caps
                                                    if cap.lower() not in [x.lower() for x in c0.caps]))
        mask = quote(self.mailbox + '*')
        st, lst = c0.simple('LIST "" %s' % mask)
        st2, lsub = c0.simple('LSUB "" %s' % mask)
        if st != 'OK' or st2 != 'OK':
            raise Fail("LIST/LSUB failed")

        def names(resps, what):
            out = []
            for a in resps:
                if len(a) >= 4 and a[0][0] == 'atom' and a[0][1].lower() == what and a[1][0] == 'list':
                    s = astring(a[3])
                    if s is not None and s not in out:
                        out.append(s)
            return out
        for name in sorted(names(lst, 'list'), key=str.lower, reverse=True):
            st, _ = c0.simple('DELETE %s' % quote(name))
            if st == 'BAD':
                raise Fail("DELETE %s: BAD" % name)
        for name in sorted(names(lsub, 'lsub'), key=str.lower, reverse=True):
            st, _ = c0.simple('UNSUBSCRIBE %s' % quote(name))
            if st == 'BAD':
                raise Fail("UNSUBSCRIBE %s: BAD" % name)
        if t.state == 'auth':
            return conns
        if self.mailbox.upper() != 'INBOX':
            st, _ = c0.simple('CREATE %s' % quote(self.mailbox))
            if st != 'OK':
                raise Fail("CREATE failed")
        if t.state == 'created':
            return conns
        n = t.messages
        if n != 0:
            total = len(read_mbox(self.t.mbox)) if n < 0 else n
            for _ in range(total):
                date, body = self.next_message()
                tag = c0.next_tag()
                c0.send('%s APPEND %s "%s" {%d}\r\n' % (tag, quote(self.mailbox), date,
                                                         len(body.encode('utf-8', 'surrogateescape'))))
                while True:
                    r = c0.read_response()
                    if r.startswith('+'):
                        break
                    if r.startswith(tag + ' '):
                        raise Fail("APPEND refused: %s" % r.strip())
                c0.send(body + '\r\n')
                while True:
                    r = c0.read_response()
                    if r.startswith(tag + ' '):
                        if not r[len(tag) + 1:].upper().startswith('OK'):
                            raise Fail("APPEND failed: %s" % r.strip())
                        break
        if t.state == 'appended':
            return conns
        for c in conns:
            st, _ = c.simple('SELECT %s' % quote(self.mailbox))
            if st != 'OK':
                raise Fail("SELECT failed")
        return conns

    def have_caps(self, have):
        low = [h.lower() for h in have]
        return all(c.lower() in low for c in self.t.caps)

    def run(self):
        """returns ('pass'|'fail'|'skip', [messages])"""
        conns = []
        try:
            try:
                conns = self.setup()
            except Skip as e:
                return 'skip', [str(e)]
            except (Fail, Abort, OSError) as e:
                return 'fail', ["initialization failed: %s" % e]
            for gi, group in enumerate(self.t.groups):
                if group.conn >= len(conns):
                    return 'fail', self.errors + ["no connection %d" % (group.conn + 1)]
                n = len(self.errors)
                try:
                    self.run_group(conns, group)
                except Fail as e:
                    self.fail(str(e))
                except Abort as e:
                    self.fail("group %d (line %d): %s" % (gi + 1, group.commands[0]['line']
                                                           if group.commands else 0, e))
                    break
                if len(self.errors) > n:
                    first = group.commands[0] if group.commands else {'line': 0, 'text': '(banner)'}
                    self.errors[n] = "command %d/%d (line %d: %s): %s" % (
                        gi + 1, len(self.t.groups), first['line'], first['text'][:100], self.errors[n])
            return ('fail' if self.errors else 'pass'), self.errors
        finally:
            for c in conns:
                c.close()


class Skip(Exception):
    pass


def list_tests(testdir):
    out = []
    for name in sorted(os.listdir(testdir)):
        p = os.path.join(testdir, name)
        if name.startswith('.') or name.endswith('.mbox') or os.path.isdir(p):
            continue
        out.append(p)
    return out


def run_test(path, host, port, user, password, mailbox='imaptest'):
    try:
        t = read_script(path)
    except (ValueError, OSError) as e:
        return 'fail', ["script error: %s" % e]
    return Run(t, host, port, user, password, mailbox).run()


# ---------------------------------------------------------------- stress

class StressClient:
    """one session of the stress run: random commands on the shared
    mailbox while tracking its view of it (the sequence -> UID map) from
    EXISTS, EXPUNGE and FETCH, as imaptest's stress mode does"""

    def __init__(self, run, ident, rnd):
        self.run = run
        self.rnd = rnd
        self.conn = Conn(run.host, run.port, ident)
        self.uids = []          # per sequence: UID or 0 when not yet known
        self.errors = []
        self.cmds = 0

    def err(self, msg):
        self.errors.append("client %d: %s" % (self.conn.ident, msg))

    def command(self, text):
        tag = self.conn.next_tag()
        full = '%s %s' % (tag, text)
        m = re.search(r'\{(\d+)\}\r\n', full)
        if m:
            self.conn.send(full[:m.end()])
            while True:
                r = self.conn.read_response()
                if r.startswith('+'):
                    break
                if r.startswith(tag + ' '):
                    return r[len(tag) + 1:].split(' ', 1)[0].upper()
                self.untagged(r)
            self.conn.send(full[m.end():] + '\r\n')
        else:
            self.conn.send(full + '\r\n')
        while True:
            r = self.conn.read_response()
            if r.startswith(tag + ' '):
                st = r[len(tag) + 1:].split(' ', 1)[0].upper()
                self.cmds += 1
                if st not in ('OK', 'NO'):
                    self.err("%s: %s" % (text.split('\r\n')[0][:60], r.strip()[:200]))
                return st
            if r.startswith('* '):
                self.untagged(r)
            elif not r.startswith('+'):
                self.err("unexpected line: %s" % r.strip()[:200])

    def untagged(self, r):
        m = re.match(r'\* (\d+) (EXISTS|EXPUNGE|FETCH)\b(.*)', r, re.I | re.S)
        if not m:
            if re.match(r'(?i)\* (BAD|BYE)', r):
                self.err("untagged %s" % r.strip()[:200])
            return
        n, what = int(m.group(1)), m.group(2).upper()
        if what == 'EXISTS':
            if n < len(self.uids):
                self.err("message count dropped %d -> %d without EXPUNGE" % (len(self.uids), n))
                del self.uids[n:]
            self.uids.extend([0] * (n - len(self.uids)))
        elif what == 'EXPUNGE':
            if n == 0 or n > len(self.uids):
                self.err("EXPUNGE %d with only %d messages" % (n, len(self.uids)))
            else:
                del self.uids[n - 1]
        else:
            if n == 0 or n > len(self.uids):
                self.err("FETCH for sequence %d with only %d messages" % (n, len(self.uids)))
                return
            u = re.search(r'(?i)\bUID (\d+)', m.group(3))
            if u:
                uid = int(u.group(1))
                if self.uids[n - 1] and self.uids[n - 1] != uid:
                    self.err("sequence %d changed UID %d -> %d" % (n, self.uids[n - 1], uid))
                self.uids[n - 1] = uid
                if (n > 1 and self.uids[n - 2] and self.uids[n - 2] >= uid) or \
                        (n < len(self.uids) and self.uids[n] and self.uids[n] <= uid):
                    self.err("UIDs out of order around sequence %d" % n)

    def step(self):
        rnd = self.rnd
        n = len(self.uids)
        seq = rnd.randint(1, n) if n else None
        k = rnd.random()
        flag = rnd.choice(['\\Seen', '\\Flagged', '\\Answered', '\\Deleted', '$Stress'])
        if k < 0.15:
            date, body = self.run.next_message()
            self.command('APPEND %s (%s) {%d}\r\n%s' % (quote(self.run.mailbox), flag,
                                                       len(body.encode('utf-8', 'surrogateescape')), body))
        elif k < 0.40 and seq:
            self.command('STORE %d %sFLAGS (%s)' % (seq, rnd.choice('+-'), flag))
        elif k < 0.60 and n:
            self.command('FETCH 1:* (UID FLAGS)')
        elif k < 0.70 and seq:
            self.command('FETCH %d (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (From Subject)])' % seq)
        elif k < 0.78:
            self.command('EXPUNGE')
        elif k < 0.86:
            self.command('UID SEARCH ALL')
        elif k < 0.92 and seq:
            self.command('UID STORE %d:* +FLAGS.SILENT (\\Seen)' % rnd.randint(1, 50))
        else:
            self.command('NOOP')


def stress(host, port, user, password, clients=5, seconds=8.0, seed=1, mbox=None):
    """imaptest's stress mode, simplified: CLIENTS sessions on one mailbox
    for SECONDS running random APPEND/STORE/FETCH/EXPUNGE/SEARCH/NOOP and
    checking every untagged EXISTS/EXPUNGE/FETCH against their view; at the
    end every session, after a NOOP, must see the same UIDs as a fresh
    SELECT.  Returns (commands run, errors)."""
    import random
    import threading
    t = Test(mbox or '/nonexistent')
    if mbox:
        t.mbox = mbox
    run = Run(t, host, port, user, password, 'imaptest-stress')
    errors = []
    c0 = Conn(host, port, 0)
    c0.simple('LOGIN %s %s' % (quote(user), quote(password)))
    c0.simple('DELETE %s' % quote(run.mailbox))
    if c0.simple('CREATE %s' % quote(run.mailbox))[0] != 'OK':
        return 0, ["CREATE failed"]
    cl = []
    for i in range(clients):
        sc = StressClient(run, i + 1, random.Random(seed + i))
        sc.command('LOGIN %s %s' % (quote(user), quote(password)))
        sc.command('SELECT %s' % quote(run.mailbox))
        cl.append(sc)
    stop = time.time() + seconds

    def loop(sc):
        try:
            while time.time() < stop and len(sc.errors) < 20:
                sc.step()
        except (Abort, OSError, ValueError) as e:
            sc.err("session died: %s" % e)
    th = [threading.Thread(target=loop, args=(sc,)) for sc in cl]
    for x in th:
        x.start()
    for x in th:
        x.join()
    # every view against a fresh SELECT
    st, unt = c0.simple('SELECT %s' % quote(run.mailbox))
    c0.uids = []
    st, unt = c0.simple('UID SEARCH ALL')
    truth = []
    for a in unt:
        if a and a[0][0] == 'atom' and a[0][1].upper() == 'SEARCH':
            truth = [int(x[1]) for x in a[1:]]
    total = 0
    for sc in cl:
        total += sc.cmds
        if not any(e.startswith("client %d: session died" % sc.conn.ident) for e in sc.errors):
            try:
                sc.command('NOOP')
                if sc.uids:
                    sc.command('FETCH 1:* UID')
                if sc.uids != truth:
                    sc.err("view %s... differs from a fresh SELECT's %s..." % (sc.uids[:20], truth[:20]))
            except (Abort, OSError) as e:
                sc.err("final check: %s" % e)
        errors += sc.errors
        sc.conn.close()
    c0.simple('DELETE %s' % quote(run.mailbox))
    c0.close()
    return total, errors


def main(argv):
    if len(argv) < 6:
        sys.stderr.write(__doc__)
        return 2
    host, port, user, password, testdir = argv[1], int(argv[2]), argv[3], argv[4], argv[5]
    paths = list_tests(testdir)
    if len(argv) > 6:
        paths = [p for p in paths if os.path.basename(p) in argv[6:]]
    counts = {'pass': 0, 'fail': 0, 'skip': 0}
    for p in paths:
        res, msgs = run_test(p, host, port, user, password)
        counts[res] += 1
        print("%-36s %s" % (os.path.basename(p), res))
        for m in msgs:
            print("    " + m.replace('\n', '\n    '))
    print("%d test groups: %d failed, %d skipped due to missing capabilities"
          % (len(paths), counts['fail'], counts['skip']))
    return 1 if counts['fail'] else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
