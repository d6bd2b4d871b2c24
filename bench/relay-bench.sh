#!/bin/bash
# relay-bench.sh - relay throughput of moatd and of Postfix, side by side.
#
# The same load - smtp-source, N messages of L bytes over S concurrent
# sessions, one message per connection - goes through
#   1. moatd, `domain bench.test deliver relay smtp://127.0.0.1:SINK`, and
#   2. a private Postfix instance (own config and queue directory under a
#      temporary directory, loopback ports, relayhost = the same sink;
#      not the system's Postfix, which is not touched),
# into one smtp-sink, and measures end-to-end messages per second: from the
# start of smtp-source until smtp-sink has received every message (its -c
# counter).  Both acknowledge a message only after it is fsync'ed to their
# queue (moatd always; Postfix by default), so durability is equal.
#
#   bench/relay-bench.sh [MOATD]
#
# MOATD defaults to build/moatd (contrib/quickstart.sh's build), then
# ./moatd.  Use an optimised build without sanitizers.  Needs root (Postfix
# runs its daemons as the postfix user) and the postfix package (smtp-source,
# smtp-sink).  Environment: MESSAGES (10000), SIZE (4096), SESSIONS
# ("20 100"), TIMEOUT per run in seconds (600), ONLY=moatd|postfix runs one
# side only, KEEP=1 keeps the temporary
# directory (logs of moatd, Postfix and the sink).
# Everything listens on 127.0.0.1 only; all processes are stopped at the end.
set -u

src=$(cd "$(dirname "$0")/.." && pwd)
MESSAGES=${MESSAGES:-10000}
SIZE=${SIZE:-4096}
SESSIONS=${SESSIONS:-"20 100"}
TIMEOUT=${TIMEOUT:-600}
ONLY=${ONLY:-}
want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

moatd=${1:-}
if [ -z "$moatd" ]; then
	for c in "$src/build/moatd" "$src/moatd"; do
		[ -x "$c" ] && { moatd=$c; break; }
	done
fi
die() { echo "relay-bench: $*" >&2; exit 1; }
! want moatd || { [ -n "$moatd" ] && [ -x "$moatd" ]; } || die "no moatd binary found; build one (contrib/quickstart.sh) or pass its path"
[ -n "$moatd" ] && moatd=$(cd "$(dirname "$moatd")" && pwd)/$(basename "$moatd")
[ "$(id -u)" -eq 0 ] || die "run as root: the private Postfix instance needs it"
for p in smtp-source smtp-sink postfix postconf; do
	command -v $p >/dev/null 2>&1 || die "$p not found: apt-get install postfix"
done
if want moatd && nm -D "$moatd" 2>/dev/null | grep -q __asan_init || nm "$moatd" 2>/dev/null | grep -q __asan_init; then
	echo "relay-bench: WARNING: $moatd is built with AddressSanitizer; its figures will be low" >&2
fi

T=$(mktemp -d /tmp/relay-bench.XXXXXX)
chmod 755 "$T"
sink_pid="" moat_pid="" pf_started=""
cleanup() {
	[ -n "$moat_pid" ] && kill -TERM "$moat_pid" 2>/dev/null && wait "$moat_pid" 2>/dev/null
	[ -n "$pf_started" ] && postfix -c "$T/pf/etc" stop >/dev/null 2>&1
	[ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null && wait "$sink_pid" 2>/dev/null
	if [ "${KEEP:-}" = 1 ]; then
		echo "relay-bench: kept $T"
	else
		rm -rf "$T"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {		# port
	for _ in $(seq 1 200); do
		(exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
		sleep 0.05
	done
	return 1
}
now() { date +%s.%N; }

SINK=$(free_port)
MOATP=$(free_port)
PFP=$(free_port)
while [ "$PFP" = "$MOATP" ] || [ "$PFP" = "$SINK" ] || [ "$MOATP" = "$SINK" ]; do
	MOATP=$(free_port); PFP=$(free_port)
done

# ---- the sink: counts every message received ("." lines) ----
smtp-sink -c -u nobody -m 1000 127.0.0.1:"$SINK" 1024 >"$T/sink.out" 2>"$T/sink.err" &
sink_pid=$!
wait_port "$SINK" || die "smtp-sink did not start: $(cat "$T/sink.err")"
sink_count() {
	local c
	c=$(tail -c 200 "$T/sink.out" 2>/dev/null | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -n 1)
	echo "${c#mesg=}" | sed 's/^$/0/'
}

# ---- moatd ----
if want moatd; then
mkdir -p "$T/moat"
cat >"$T/moat/moat.conf" <<EOF
hostname moat.bench.test
state-dir $T/moat/state
listen smtp 127.0.0.1:$MOATP
domain bench.test deliver relay smtp://127.0.0.1:$SINK
# same as Postfix's default_destination_concurrency_limit
relay-concurrency 20
smtp-max-sessions-per-ip 1000
EOF
"$moatd" -n -c "$T/moat/moat.conf" >/dev/null || die "moatd -n rejected the bench config"
"$moatd" -f -c "$T/moat/moat.conf" >"$T/moat/moatd.log" 2>&1 &
moat_pid=$!
wait_port "$MOATP" || die "moatd did not start: $(tail -n 20 "$T/moat/moatd.log")"
fi

# ---- Postfix, a private instance ----
if want postfix; then
mkdir -p "$T/pf/etc" "$T/pf/queue" "$T/pf/data"
chown postfix: "$T/pf/data"
cat >"$T/pf/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $T/pf/queue
data_directory = $T/pf/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = \$myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = bench.test
relayhost = [127.0.0.1]:$SINK
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtp_dns_support_level = disabled
# 100 smtpd for -s 100, plus the smtp clients and the rest
default_process_limit = 300
maillog_file = $T/pf/maillog
maillog_file_prefixes = $T/pf
alias_maps =
alias_database =
biff = no
EOF
# master.cf: Debian's services, not chrooted, smtpd on our port only
cat >"$T/pf/etc/master.cf" <<EOF
127.0.0.1:$PFP inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
postfix -c "$T/pf/etc" check >"$T/pf/check.log" 2>&1 || die "postfix check failed: $(cat "$T/pf/check.log" "$T/pf/maillog" 2>/dev/null)"
postfix -c "$T/pf/etc" start >"$T/pf/start.log" 2>&1 || die "postfix start failed: $(cat "$T/pf/start.log" "$T/pf/maillog" 2>/dev/null)"
pf_started=1
wait_port "$PFP" || die "Postfix did not start listening: $(tail -n 20 "$T/pf/maillog" 2>/dev/null)"
fi

echo "relay-bench: $MESSAGES messages of $SIZE bytes, one per connection, sessions: $SESSIONS"
echo "relay-bench: moatd $moatd (port $MOATP), Postfix $(postconf -d -h mail_version) (port $PFP), smtp-sink port $SINK"

# run NAME PORT SESSIONS -> prints msgs/s, or "FAIL"
run() {
	local name=$1 port=$2 s=$3 base target t0 t1 c src_rc
	base=$(sink_count)
	target=$((base + MESSAGES))
	t0=$(now)
	smtp-source -s "$s" -m "$MESSAGES" -l "$SIZE" -f bench@source.test -t bench@bench.test \
	    127.0.0.1:"$port" >"$T/source-$name-$s.log" 2>&1 &
	local src_pid=$!
	local deadline=$(( $(date +%s) + TIMEOUT ))
	while :; do
		c=$(sink_count)
		[ "$c" -ge "$target" ] && break
		if [ "$(date +%s)" -ge "$deadline" ]; then
			echo "relay-bench: $name -s $s: timed out with $((c - base)) of $MESSAGES at the sink" >&2
			kill "$src_pid" 2>/dev/null
			wait "$src_pid" 2>/dev/null
			echo FAIL
			return
		fi
		sleep 0.02
	done
	t1=$(now)
	wait "$src_pid"
	src_rc=$?
	if [ $src_rc -ne 0 ] || [ -s "$T/source-$name-$s.log" ]; then
		echo "relay-bench: $name -s $s: smtp-source exit $src_rc: $(head -c 500 "$T/source-$name-$s.log")" >&2
	fi
	awk -v n="$MESSAGES" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f %.2f\n", n / (b - a), b - a }'
}

printf '\n%-10s %14s %14s %8s\n' sessions "moatd msg/s" "Postfix msg/s" ratio
status=0
for s in $SESSIONS; do
	m=- mt=- p=- pt=-
	want moatd && read -r m mt <<<"$(run moatd "$MOATP" "$s")"
	want postfix && read -r p pt <<<"$(run postfix "$PFP" "$s")"
	if [ "$m" = FAIL ] || [ "$p" = FAIL ]; then
		printf '%-10s %14s %14s %8s\n' "$s" "$m" "$p" "-"
		status=1
		continue
	fi
	ratio=-
	[ -z "$ONLY" ] && ratio=$(awk -v a="$m" -v b="$p" 'BEGIN { printf "%.2fx", a / b }')
	printf '%-10s %14s %14s %8s   (%ss vs %ss)\n' "$s" "$m" "$p" "$ratio" "$mt" "$pt"
done
echo
echo "relay-bench: sink received $(sink_count) messages in all"
exit $status
