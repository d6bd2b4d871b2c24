#!/usr/bin/python3
"""Sign a message with dkimpy (run under /usr/bin/python3: the python3 on
PATH cannot import Debian's modules).  Test helper for test_dkim.py and
test_dmarc.py.

    dkimsign.py --domain D --selector S --key FILE [--algo rsa-sha256|ed25519-sha256]
                [--length] [--canon relaxed/relaxed] < message > signed

The key file is PEM (RSA, as written by opendkim-genkey) or, for ed25519,
the base64 private seed (dkimpy's format)."""
import argparse
import sys

import dkim


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--domain", required=True)
    ap.add_argument("--selector", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--algo", default="rsa-sha256")
    ap.add_argument("--length", action="store_true", help="add l= (body length)")
    ap.add_argument("--canon", default="relaxed/simple")
    a = ap.parse_args()
    msg = sys.stdin.buffer.read()
    key = open(a.key, "rb").read()
    hc, bc = a.canon.split("/")
    sig = dkim.sign(msg, a.selector.encode(), a.domain.encode(), key,
                    canonicalize=(hc.encode(), bc.encode()), length=a.length,
                    signature_algorithm=a.algo.encode(),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    sys.stdout.buffer.write(sig + msg)


if __name__ == "__main__":
    main()
