#!/bin/sh
# rules-agreement.sh - moat's rule engine vs SpamAssassin on the same messages.
#
#   bench/rules-agreement.sh [MOAT_BINARY] [N]
#
# Takes every k-th message of /work/shared/corpus (N messages, default 600,
# a deterministic subsample: spamd is slow), loads the stock SpamAssassin
# rules from /usr/share/spamassassin into moat (`moat rules test`) and into a
# local spamd (-L: network tests off, no Bayes training: score set 0), and
# compares per message the hit sets, restricted to the rules moat runs
# (`moat rules check -l`: non-eval rules and the metas over them).  Prints
# the share of messages whose sets agree exactly, the rules that disagree
# most, and messages/s of moat rules (MIME + rules, one process) vs
# spamc/spamd (2 children).  rspamd is compared when rspamc is installed.
# Not part of `make check`.
set -eu
MOAT=${1:-/tmp/build-rules/moat}
N=${2:-600}
CORPUS=${CORPUS:-/work/shared/corpus}
SARULES=${SARULES:-/usr/share/spamassassin}
PORT=${PORT:-17830}
W=$(mktemp -d /tmp/rules-bench.XXXXXX)
trap 'if [ -f "$W/spamd.pid" ]; then kill "$(cat "$W/spamd.pid")" 2>/dev/null || true; fi; rm -rf "$W"' EXIT

command -v spamd >/dev/null || { echo "spamassassin not installed (apt-get install spamassassin)"; exit 77; }
find "$CORPUS" -type f -path '*/ham/*' -o -type f -path '*/spam/*' | sort > "$W/all"
TOTAL=$(wc -l < "$W/all")
K=$(( TOTAL / N )); [ "$K" -ge 1 ] || K=1
awk -v k="$K" -v n="$N" 'NR % k == 0 && c < n { print; c++ }' "$W/all" > "$W/list"
echo "messages: $(wc -l < "$W/list") of $TOTAL (every ${K}th)"

"$MOAT" rules check -l "$SARULES" | sed -n 's/^rule //p' | sort > "$W/supported"
echo "moat rules active: $(wc -l < "$W/supported")"

# moat
xargs "$MOAT" rules test -t -r "$SARULES" < "$W/list" > "$W/moat.out" 2> "$W/moat.err" || true
grep "messages/s" "$W/moat.err" | sed 's/^/moat: /'

# spamd, local tests only
U=""; [ "$(id -u)" = 0 ] && U="-u nobody"
spamd -L -i 127.0.0.1 -p "$PORT" --max-children 2 --min-children 2 $U \
	--pidfile "$W/spamd.pid" -s stderr -q >/dev/null 2>"$W/spamd.log" &
for i in $(seq 1 120); do
	spamc -p "$PORT" -K >/dev/null 2>&1 && break
	sleep 1
done
T0=$(date +%s.%N)
: > "$W/sa.out"
while read -r f; do
	h=$(spamc -p "$PORT" -y < "$f" 2>/dev/null || true)
	printf '%s\t%s\n' "$f" "$h" >> "$W/sa.out"
done < "$W/list"
T1=$(date +%s.%N)
python3 - "$W" "$T0" "$T1" <<'PY'
import sys, collections
w, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
sup = set(open(w + '/supported').read().split())
moat = {}
for l in open(w + '/moat.out'):
    f, _, hits = l.rstrip('\n').split('\t')
    moat[f] = set(h for h in hits.split(',') if h)
sa = {}
for l in open(w + '/sa.out'):
    f, hits = l.rstrip('\n').split('\t', 1)
    sa[f] = set(h for h in hits.split(',') if h and h in sup)
n = agree = 0
dis = collections.Counter(); only_m = collections.Counter(); only_s = collections.Counter()
for f in sa:
    if f not in moat:
        continue
    n += 1
    if moat[f] == sa[f]:
        agree += 1
    for r in moat[f] - sa[f]: dis[r] += 1; only_m[r] += 1
    for r in sa[f] - moat[f]: dis[r] += 1; only_s[r] += 1
print(f"agreement: {agree}/{n} = {100.0*agree/max(n,1):.1f}% of messages with identical hit sets")
print("rules that disagree most (messages; moat-only / SA-only):")
for r, c in dis.most_common(15):
    print(f"  {r:32s} {c:4d}  {only_m[r]:4d} / {only_s[r]:4d}")
print(f"spamc/spamd: {n} messages in {t1-t0:.1f} s: {n/(t1-t0):.1f} messages/s")
PY
command -v rspamc >/dev/null || echo "rspamd: not installed, not compared"
