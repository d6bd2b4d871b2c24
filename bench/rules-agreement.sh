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

# rspamd 3.4 (Debian), its stock rules, on the same messages: a private
# instance from a copy of /etc/rspamd on loopback ports, 2 normal workers
# (as spamd's 2 children), the network modules off (as spamd -L): rbl, spf,
# dkim, dmarc, asn, fuzzy, phishing, neural, ratelimit, greylist, ...
if ! command -v rspamd >/dev/null || ! command -v rspamc >/dev/null; then
	echo "rspamd: not installed, not compared (apt-get install rspamd)"
	exit 0
fi
RP=${RSPAMD_PORT:-17833}
R="$W/rspamd"
mkdir -p "$R/db" "$R/run" "$R/log"
cp -r /etc/rspamd "$R/conf"
for m in rbl spf dkim dmarc asn fuzzy_check phishing neural ratelimit greylist emails mx_check \
    url_redirector dkim_signing arc replies clickhouse elastic history_redis reputation; do
	echo "enabled = false;" > "$R/conf/local.d/$m.conf"
done
printf 'bind_socket = "127.0.0.1:%s";\ncount = 2;\n' "$RP" > "$R/conf/local.d/worker-normal.inc"
printf 'bind_socket = "127.0.0.1:%s";\n' $((RP + 1)) > "$R/conf/local.d/worker-controller.inc"
printf 'bind_socket = "127.0.0.1:%s";\n' $((RP + 2)) > "$R/conf/local.d/worker-proxy.inc"
printf 'dns { timeout = 1s; retransmits = 1; }\n' > "$R/conf/local.d/options.inc"
RU=""; [ "$(id -u)" = 0 ] && id _rspamd >/dev/null 2>&1 && { chown -R _rspamd "$R/db" "$R/run" "$R/log"; RU="-u _rspamd -g _rspamd"; }
rspamd -c "$R/conf/rspamd.conf" $RU --var=DBDIR="$R/db" --var=RUNDIR="$R/run" --var=LOGDIR="$R/log" \
	--var=CONFDIR="$R/conf" --var=LOCAL_CONFDIR="$R/conf" >/dev/null 2>&1 </dev/null
stop_rspamd() { [ -f "$R/run/rspamd.pid" ] && kill "$(cat "$R/run/rspamd.pid")" 2>/dev/null || true; }
trap 'stop_rspamd; if [ -f "$W/spamd.pid" ]; then kill "$(cat "$W/spamd.pid")" 2>/dev/null || true; fi; rm -rf "$W"' EXIT
ok=0
for i in $(seq 1 120); do
	if rspamc -h "127.0.0.1:$RP" stat >/dev/null 2>&1 || rspamc -h "127.0.0.1:$RP" < /dev/null >/dev/null 2>&1; then ok=1; break; fi
	sleep 1
done
[ "$ok" = 1 ] || { echo "rspamd: did not start"; exit 0; }
sleep 3                                 # hyperscan databases load
T0=$(date +%s.%N)
xargs rspamc -h "127.0.0.1:$RP" -n 2 < "$W/list" > "$W/rspamd.out" 2>&1 || true
T1=$(date +%s.%N)
python3 - "$W" "$T0" "$T1" <<'PY'
import sys
w, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
n = sum(1 for l in open(w + '/rspamd.out') if l.startswith('Results for file'))
print(f"rspamc/rspamd: {n} messages in {t1-t0:.1f} s: {n/(t1-t0):.1f} messages/s")
PY
