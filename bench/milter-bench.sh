#!/bin/bash
# milter-bench.sh - what a milter costs Postfix: messages/s through one
# private Postfix instance with
#   1. no milter,
#   2. moat's milter over TCP      (listen milter 127.0.0.1:PORT),
#   3. moat's milter over a unix socket (listen milter unix:PATH),
#   4. spamass-milter + spamd over a unix socket and over TCP (when the
#      spamass-milter and spamd packages are installed),
# under the same smtp-source load (N messages of L bytes over S concurrent
# sessions, one message per connection), relayed to one smtp-sink, measured
# end to end: from the start of smtp-source until smtp-sink has counted
# every message.
#
# The Postfix instance has its own config and queue directory under a
# temporary directory (the system's Postfix is not touched); each case is
# one smtpd service on its own loopback port with -o smtpd_milters=...
# moatd runs twice (TCP, unix) with the project's rules/ and, when
# ../shared is there, libclamav with the shared test signatures; spamd runs
# with -L (no network tests).  Everything listens on 127.0.0.1 only and is
# stopped at the end.
#
#   bench/milter-bench.sh [MOATD]
#
# MOATD defaults to build/moatd, then ./moatd: use an optimised build
# without sanitizers.  Needs root (Postfix, spamd) and the postfix package
# (smtp-source, smtp-sink).  Environment: MESSAGES (2000), SIZE (4096),
# SESSIONS (20), TIMEOUT per run in seconds (600), ONLY="none moat-tcp
# moat-unix spamass-unix spamass-tcp" (a subset), KEEP=1 keeps the
# temporary directory (logs).
set -u

src=$(cd "$(dirname "$0")/.." && pwd)
MESSAGES=${MESSAGES:-2000}
SIZE=${SIZE:-4096}
SESSIONS=${SESSIONS:-20}
TIMEOUT=${TIMEOUT:-600}
ONLY=${ONLY:-"none moat-tcp moat-unix spamass-unix spamass-tcp"}
want() { case " $ONLY " in *" $1 "*) return 0 ;; esac; return 1; }

moatd=${1:-}
if [ -z "$moatd" ]; then
	for c in "$src/build/moatd" "$src/moatd"; do
		[ -x "$c" ] && { moatd=$c; break; }
	done
fi
die() { echo "milter-bench: $*" >&2; exit 1; }
[ -n "$moatd" ] && [ -x "$moatd" ] || die "no moatd binary found; build one (contrib/quickstart.sh) or pass its path"
moatd=$(cd "$(dirname "$moatd")" && pwd)/$(basename "$moatd")
[ "$(id -u)" -eq 0 ] || die "run as root: the private Postfix instance needs it"
for p in smtp-source smtp-sink postfix postconf; do
	command -v $p >/dev/null 2>&1 || die "$p not found: apt-get install postfix"
done
if nm "$moatd" 2>/dev/null | grep -q __asan_init; then
	echo "milter-bench: WARNING: $moatd is built with AddressSanitizer; its figures will be low" >&2
fi
have_spamass=1
if ! command -v spamass-milter >/dev/null 2>&1 || ! command -v spamd >/dev/null 2>&1; then
	have_spamass=0
	echo "milter-bench: spamass-milter or spamd not installed (apt-get install spamass-milter spamd): skipping it" >&2
fi

T=$(mktemp -d /tmp/milter-bench.XXXXXX)
chmod 755 "$T"
sink_pid="" moat_tcp_pid="" moat_unix_pid="" spamd_pid="" sa_unix_pid="" sa_tcp_pid="" pf_started=""
stop_pid() { [ -n "$1" ] && kill -TERM "$1" 2>/dev/null && wait "$1" 2>/dev/null; }
cleanup() {
	[ -n "$pf_started" ] && postfix -c "$T/pf/etc" stop >/dev/null 2>&1
	stop_pid "$moat_tcp_pid"
	stop_pid "$moat_unix_pid"
	stop_pid "$sa_unix_pid"
	stop_pid "$sa_tcp_pid"
	[ -n "$spamd_pid" ] && kill -TERM "$spamd_pid" 2>/dev/null
	stop_pid "$sink_pid"
	if [ "${KEEP:-}" = 1 ]; then
		echo "milter-bench: kept $T"
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
	for _ in $(seq 1 400); do
		(exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
		sleep 0.05
	done
	return 1
}
wait_sock() {		# path
	for _ in $(seq 1 400); do
		[ -S "$1" ] && return 0
		sleep 0.05
	done
	return 1
}
now() { date +%s.%N; }

ports=()
new_port() {		# a free port not handed out yet (the caller records it in ports)
	local p
	while :; do
		p=$(free_port)
		case " ${ports[*]:-} " in *" $p "*) continue ;; esac
		echo "$p"
		return
	done
}
SINK=$(new_port); ports+=("$SINK")
MT=$(new_port); ports+=("$MT")
SAT=$(new_port); ports+=("$SAT")
SPAMD=$(new_port); ports+=("$SPAMD")
P_NONE=$(new_port); ports+=("$P_NONE")
P_MT=$(new_port); ports+=("$P_MT")
P_MU=$(new_port); ports+=("$P_MU")
P_SU=$(new_port); ports+=("$P_SU")
P_ST=$(new_port); ports+=("$P_ST")
MSOCK=$T/moat-unix/milter.sock
SASOCK=$T/spamass/milter.sock

# ---- the sink: counts every message received ----
smtp-sink -c -u nobody -m 1000 127.0.0.1:"$SINK" 1024 >"$T/sink.out" 2>"$T/sink.err" &
sink_pid=$!
wait_port "$SINK" || die "smtp-sink did not start: $(cat "$T/sink.err")"
sink_count() {
	local c
	c=$(tail -c 200 "$T/sink.out" 2>/dev/null | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -n 1)
	echo "${c#mesg=}" | sed 's/^$/0/'
}

# ---- moatd, twice: milter over TCP and over a unix socket ----
clamdb=$src/../shared/testdata/clamav/db
start_moat() {		# name listen-spec -> pid
	local d=$T/$1
	mkdir -p "$d"
	chmod 755 "$d"
	{
		echo "hostname moat.bench.test"
		echo "state-dir $d/state"
		echo "listen milter $2"
		echo "milter-socket-mode 0666"
		echo "domain bench.test deliver store"
		echo "rules $src/rules"
		echo "action tag 5"
		[ -d "$clamdb" ] && echo "antivirus database $(cd "$clamdb" && pwd)"
	} >"$d/moat.conf"
	"$moatd" -n -c "$d/moat.conf" >"$d/check.log" 2>&1 || die "moatd -n rejected the bench config: $(cat "$d/check.log")"
	"$moatd" -f -c "$d/moat.conf" >"$d/moatd.log" 2>&1 &
	echo $!
}
if want moat-tcp; then
	moat_tcp_pid=$(start_moat moat-tcp "127.0.0.1:$MT")
	wait_port "$MT" || die "moatd's milter did not start: $(tail -n 20 "$T/moat-tcp/moatd.log")"
fi
if want moat-unix; then
	moat_unix_pid=$(start_moat moat-unix "unix:$MSOCK")
	wait_sock "$MSOCK" || die "moatd's milter did not start: $(tail -n 20 "$T/moat-unix/moatd.log")"
fi

# ---- spamd + spamass-milter (Debian's defaults: spamc through spamd) ----
if [ $have_spamass = 1 ] && { want spamass-unix || want spamass-tcp; }; then
	mkdir -p "$T/spamass"
	chown postfix: "$T/spamass"
	spamd -x -L -u nobody --listen "127.0.0.1:$SPAMD" -m 8 -s stderr \
	    -r "$T/spamass/spamd.pid" >"$T/spamass/spamd.log" 2>&1 &
	spamd_pid=$!
	wait_port "$SPAMD" || die "spamd did not start: $(tail -n 20 "$T/spamass/spamd.log")"
	if want spamass-unix; then
		runuser -u postfix -- spamass-milter -p "$SASOCK" -- -d 127.0.0.1 -p "$SPAMD" \
		    >"$T/spamass/milter-unix.log" 2>&1 &
		sa_unix_pid=$!
		wait_sock "$SASOCK" || die "spamass-milter did not start: $(cat "$T/spamass/milter-unix.log")"
	fi
	if want spamass-tcp; then
		runuser -u postfix -- spamass-milter -p "inet:$SAT@127.0.0.1" -- -d 127.0.0.1 -p "$SPAMD" \
		    >"$T/spamass/milter-tcp.log" 2>&1 &
		sa_tcp_pid=$!
		wait_port "$SAT" || die "spamass-milter did not start: $(cat "$T/spamass/milter-tcp.log")"
	fi
fi

# ---- Postfix, a private instance: one smtpd per case ----
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
default_process_limit = 300
maillog_file = $T/pf/maillog
maillog_file_prefixes = $T/pf
alias_maps =
alias_database =
biff = no
milter_protocol = 6
milter_default_action = tempfail
non_smtpd_milters =
EOF
cat >"$T/pf/etc/master.cf" <<EOF
127.0.0.1:$P_NONE inet n - n - - smtpd -o smtpd_milters=
127.0.0.1:$P_MT inet n - n - - smtpd -o smtpd_milters=inet:127.0.0.1:$MT
127.0.0.1:$P_MU inet n - n - - smtpd -o smtpd_milters=unix:$MSOCK
127.0.0.1:$P_SU inet n - n - - smtpd -o smtpd_milters=unix:$SASOCK
127.0.0.1:$P_ST inet n - n - - smtpd -o smtpd_milters=inet:127.0.0.1:$SAT
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
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
postfix -c "$T/pf/etc" check >"$T/pf/check.log" 2>&1 || die "postfix check failed: $(cat "$T/pf/check.log")"
postfix -c "$T/pf/etc" start >"$T/pf/start.log" 2>&1 || die "postfix start failed: $(cat "$T/pf/start.log" "$T/pf/maillog" 2>/dev/null)"
pf_started=1
wait_port "$P_NONE" || die "Postfix did not start listening: $(tail -n 20 "$T/pf/maillog" 2>/dev/null)"

echo "milter-bench: $MESSAGES messages of $SIZE bytes, one per connection, $SESSIONS sessions; Postfix $(postconf -d -h mail_version)"
echo "milter-bench: moatd $moatd (rules/$([ -d "$clamdb" ] && echo ", libclamav with the shared test db"))"

# run NAME PORT -> "msgs/s seconds", or FAIL
run() {
	local name=$1 port=$2 base target t0 t1 c src_rc
	base=$(sink_count)
	target=$((base + MESSAGES))
	t0=$(now)
	smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f bench@source.test -t bench@bench.test \
	    127.0.0.1:"$port" >"$T/source-$name.log" 2>&1 &
	local src_pid=$!
	local deadline=$(( $(date +%s) + TIMEOUT )) last=$base stuck_since
	stuck_since=$(date +%s)
	while :; do
		c=$(sink_count)
		[ "$c" -ge "$target" ] && break
		if [ "$c" != "$last" ]; then
			last=$c
			stuck_since=$(date +%s)
		fi
		# out of time, or smtp-source is done and nothing arrived for 30 s
		# (refused or deferred messages never reach the sink)
		if [ "$(date +%s)" -ge "$deadline" ] ||
		    { ! kill -0 "$src_pid" 2>/dev/null && [ $(( $(date +%s) - stuck_since )) -ge 30 ]; }; then
			echo "milter-bench: $name: stopped with $((c - base)) of $MESSAGES at the sink" >&2
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
	if [ $src_rc -ne 0 ] || [ -s "$T/source-$name.log" ]; then
		echo "milter-bench: $name: smtp-source exit $src_rc: $(head -c 500 "$T/source-$name.log")" >&2
	fi
	awk -v n="$MESSAGES" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f %.2f\n", n / (b - a), b - a }'
}

printf '\n%-34s %10s %9s %12s\n' "Postfix with" "msg/s" "seconds" "vs none"
base_rate=""
status=0
for c in none moat-tcp moat-unix spamass-unix spamass-tcp; do
	want "$c" || continue
	case $c in
	none)         port=$P_NONE; label="no milter" ;;
	moat-tcp)     port=$P_MT;   label="moat milter, TCP" ;;
	moat-unix)    port=$P_MU;   label="moat milter, unix socket" ;;
	spamass-unix) port=$P_SU;   label="spamass-milter+spamd, unix" ;;
	spamass-tcp)  port=$P_ST;   label="spamass-milter+spamd, TCP" ;;
	esac
	case $c in spamass-*) [ $have_spamass = 1 ] || { printf '%-34s %10s\n' "$label" "(not installed)"; continue; } ;; esac
	read -r rate secs <<<"$(run "$c" "$port")"
	if [ "$rate" = FAIL ]; then
		printf '%-34s %10s\n' "$label" FAIL
		status=1
		continue
	fi
	[ "$c" = none ] && base_rate=$rate
	rel=-
	[ -n "$base_rate" ] && rel=$(awk -v a="$rate" -v b="$base_rate" 'BEGIN { printf "%+.0f%%", (a / b - 1) * 100 }')
	printf '%-34s %10s %9s %12s\n' "$label" "$rate" "$secs" "$rel"
done
echo
for d in moat-tcp moat-unix; do
	[ -f "$T/$d/moatd.log" ] || continue
	n=$(grep -c 'event=verdict' "$T/$d/moatd.log")
	echo "milter-bench: $d: $n verdicts logged"
done
[ -f "$T/pf/maillog" ] && grep -q 'milter.*\(timeout\|error\|unavailable\)' "$T/pf/maillog" &&
	echo "milter-bench: WARNING: Postfix logged milter errors: $(grep -m 3 'milter.*\(timeout\|error\|unavailable\)' "$T/pf/maillog")" >&2
exit $status
