#!/usr/bin/python3
"""spf_suite.py - the RFC 7208 test suite (YAML) as JSON for test_spf_suite.py.

Runs under Debian's /usr/bin/python3 (python3-yaml); `python3` on PATH may
not have yaml.  Usage: spf_suite.py SUITE.yml > suite.json

Output: a list of scenarios {"description", "zone", "tests"}; the zone in
dnsserver.py's form (lowercase names, lists of records).  As the suite's
own drivers do (pyspf testspf.py), a name with type SPF (99) records and no
TXT record gets the same strings as TXT records: only the "Selecting
records" section publishes TXT and SPF apart on purpose.  An RR of no
strings (null-text) is served as one empty string.
"""
import json
import sys

import yaml


def records(rrs):
    out, gen, txt = [], True, []
    for r in rrs:
        if isinstance(r, str):
            out.append([r.upper()])          # TIMEOUT
            continue
        for t, v in r.items():
            t = t.upper()
            if t == "TXT":
                gen = False
            elif t == "SPF" and gen:
                txt.append(["TXT", v if v != [] else [""]])
            if v == "NONE":
                continue
            if t == "MX":
                out.append(["MX", int(v[0]), str(v[1]).rstrip(".")])
            elif t in ("A", "AAAA", "PTR", "CNAME"):
                out.append([t, str(v).rstrip(".") if t in ("PTR", "CNAME") else str(v)])
            elif t in ("TXT", "SPF") and v == []:
                # a TXT RR without strings cannot be sent (rdata of length
                # 0 is a malformed packet to every resolver): serve the
                # closest legal form, one empty string (docs/spf.md)
                out.append([t, [""]])
            else:
                out.append([t, v])
    if gen:
        out.extend(r for r in txt if r[1] != "NONE")
    return out


def main():
    scen = []
    with open(sys.argv[1]) as f:
        for doc in yaml.safe_load_all(f):
            if not doc:
                continue
            zone = {}
            for name, rrs in (doc.get("zonedata") or {}).items():
                zone.setdefault(str(name).lower().rstrip("."), []).extend(records(rrs or []))
            tests = []
            for name, t in doc["tests"].items():
                res = t["result"]
                tests.append({"name": name, "spec": str(t.get("spec", "")),
                              "helo": t.get("helo", ""), "host": t["host"],
                              "mailfrom": t.get("mailfrom", ""),
                              "result": res if isinstance(res, list) else [res],
                              "explanation": t.get("explanation")})
            scen.append({"description": doc.get("description", ""), "zone": zone,
                         "tests": tests})
    json.dump(scen, sys.stdout)


if __name__ == "__main__":
    main()
