#!/bin/sh
# imap-bench.sh - the IMAP read path of moat's built-in store vs Dovecot,
# side by side in one run: SELECT, FETCH 1:* (FLAGS ENVELOPE) and three
# SEARCHes (FROM, SUBJECT, UNSEEN) on the same 50,000-message Maildir,
# first session after start ("cold": nothing indexed yet) and a second one
# ("warm").  See bench/README.md.
#
#   bench/imap-bench.sh [BUILDDIR]
#
# BUILDDIR holds moatd and moat (default: build/, then the source dir); use
# an optimised build without sanitizers.  Needs root (Dovecot starts its
# login processes as its own users) and dovecot-imapd.  Messages are the
# corpus of ../shared/corpus, read in place, written into temporary
# Maildirs under $TMPDIR (default /tmp; about 2 x 250 MB for 50,000).
# Environment: MESSAGES (50000), MAXSIZE (65536: larger corpus files are
# skipped), CORPUS (../shared/corpus), ONLY=moat|dovecot runs one side,
# CPU=1 prints moatd's CPU time per command, DUMP=DIR keeps the responses,
# KEEP=1 keeps the temporary directory.
# Everything listens on 127.0.0.1 only; all processes are stopped at the end.
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
b=${1:-}
if [ -z "$b" ]; then
	for c in "$src/build" "$src"; do
		[ -x "$c/moatd" ] && { b=$c; break; }
	done
fi
[ -n "$b" ] && [ -x "$b/moatd" ] || { echo "imap-bench: no moatd (give the build directory)" >&2; exit 1; }
MOAT_BUILDDIR=$(cd "$b" && pwd) MOAT_SRCDIR=$src exec python3 "$src/bench/imap_bench.py"
