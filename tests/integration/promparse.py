"""promparse - a strict parser for the Prometheus text exposition format
(version 0.0.4), enough for moat's tests: HELP/TYPE comments, samples with
labels, and the checks promtool does on them (a TYPE before the samples of a
family, names and label names well formed, escapes, histogram buckets
cumulative with a +Inf bucket equal to _count)."""
import math
import re

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LNAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
SAMPLE = re.compile(r"^(%s)(\{(.*)\})? (\S+)( -?\d+)?$" % NAME)
LABEL = re.compile(r'\s*(%s)="((?:[^"\\\n]|\\[\\"n])*)"\s*(,|$)' % LNAME)


class ParseError(Exception):
    pass


def _labels(s, lineno):
    out = {}
    pos = 0
    while pos < len(s):
        m = LABEL.match(s, pos)
        if not m:
            raise ParseError("line %d: bad labels %r" % (lineno, s))
        k = m.group(1)
        if k in out:
            raise ParseError("line %d: label %s twice" % (lineno, k))
        out[k] = m.group(2).replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        pos = m.end()
    return out


def parse(text):
    """{family: {"type": t, "help": h, "samples": [(name, labels, value)]}}"""
    fams = {}
    types = {}
    seen_samples = set()
    if text and not text.endswith("\n"):
        raise ParseError("the text must end with a newline")
    for n, line in enumerate(text.split("\n")[:-1], 1):
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            if len(parts) < 4 or not re.fullmatch(NAME, parts[2]):
                raise ParseError("line %d: bad comment %r" % (n, line))
            f = fams.setdefault(parts[2], {"type": "untyped", "help": "", "samples": []})
            if parts[1] == "TYPE":
                if parts[2] in types:
                    raise ParseError("line %d: second TYPE for %s" % (n, parts[2]))
                if f["samples"]:
                    raise ParseError("line %d: TYPE after samples of %s" % (n, parts[2]))
                if parts[3] not in ("counter", "gauge", "histogram", "summary", "untyped"):
                    raise ParseError("line %d: unknown type %r" % (n, parts[3]))
                types[parts[2]] = f["type"] = parts[3]
            else:
                f["help"] = parts[3]
            continue
        if line.startswith("#") or line == "":
            continue
        m = SAMPLE.match(line)
        if not m:
            raise ParseError("line %d: bad sample %r" % (n, line))
        name, labels, value = m.group(1), _labels(m.group(3) or "", n), m.group(4)
        try:
            v = float(value)
        except ValueError:
            raise ParseError("line %d: bad value %r" % (n, value))
        fam = name
        for suf in ("_bucket", "_sum", "_count"):
            if name.endswith(suf) and types.get(name[:-len(suf)]) == "histogram":
                fam = name[:-len(suf)]
        if fam not in fams:
            fams[fam] = {"type": "untyped", "help": "", "samples": []}
        key = (name, tuple(sorted(labels.items())))
        if key in seen_samples:
            raise ParseError("line %d: duplicate sample %r" % (n, line))
        seen_samples.add(key)
        if fams[fam]["type"] == "counter" and (v < 0 or math.isnan(v)):
            raise ParseError("line %d: negative counter" % n)
        fams[fam]["samples"].append((name, labels, v))
    for fam, f in fams.items():
        if f["type"] != "histogram":
            continue
        buckets = [(float(l["le"]), v) for nm, l, v in f["samples"] if nm == fam + "_bucket"]
        count = [v for nm, l, v in f["samples"] if nm == fam + "_count"]
        if not buckets or buckets[-1][0] != math.inf or not count or buckets[-1][1] != count[0]:
            raise ParseError("histogram %s: no +Inf bucket equal to _count" % fam)
        if any(b[1] > a[1] for b, a in zip(buckets, buckets[1:])):
            raise ParseError("histogram %s: buckets not cumulative" % fam)
    return fams


def value(fams, name, **labels):
    """the sample's value (0 if absent), labels matched exactly"""
    for fam in fams.values():
        for nm, l, v in fam["samples"]:
            if nm == name and l == labels:
                return v
    return 0.0


def total(fams, name, **labels):
    """sum of the samples whose labels include these"""
    s = 0.0
    for fam in fams.values():
        for nm, l, v in fam["samples"]:
            if nm == name and all(l.get(k) == w for k, w in labels.items()):
                s += v
    return s
