#!/bin/sh
# install-deps.sh - install moat's build (and optionally test) dependencies
# from Debian 12's packages.
#
#   contrib/install-deps.sh build   what `configure && make` needs
#   contrib/install-deps.sh run     that, plus swaks to try moatd out
#   contrib/install-deps.sh test    that, plus what `make check` and the
#                                   benchmark use (postfix for smtp-source and
#                                   smtp-sink, swaks, openssl, fetchmail,
#                                   mbsync, clang for the fuzzers)
#
# Runs apt-get as root, or through sudo.  When every package is already
# installed it does nothing (unless CI=true, where it always runs
# `apt-get update` and `apt-get install`, so a clean machine is what CI sees).
#
# Postfix is installed non-interactively with "No configuration" and any
# Postfix daemon the package starts is stopped again: the tests run their own
# smtp-sink and smtp-source, and the benchmark its own Postfix instance.
set -eu

BUILD_PKGS="autoconf automake libtool pkg-config gcc make libc6-dev
  libevent-dev libsqlite3-dev libcrypt-dev libssl-dev libgmime-3.0-dev liblmdb-dev libclamav-dev libpcre2-dev
  libunbound-dev libspf2-dev libopendkim-dev libopendmarc-dev libmaxminddb-dev libpsl-dev
  libmilter-dev"
RUN_PKGS="$BUILD_PKGS swaks"
# the integration tests also drive real clients: openssl (test
# certificates), fetchmail (POP3), mbsync from isync (IMAP)
TEST_PKGS="$BUILD_PKGS python3 postfix swaks clang libclang-rt-14-dev
  man-db groff-base procps iproute2 openssl ca-certificates fetchmail isync testssl.sh
  python3-dnslib python3-dkim opendkim-tools miltertest dovecot-imapd mutt tmux"

case "${1:-build}" in
build) PKGS=$BUILD_PKGS ;;
run)   PKGS=$RUN_PKGS ;;
test)  PKGS=$TEST_PKGS ;;
*)     echo "usage: $0 build|run|test" >&2; exit 2 ;;
esac

missing=""
for p in $PKGS; do
	st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case "$st" in
	*" installed") ;;
	*) missing="$missing $p" ;;
	esac
done
if [ -z "$missing" ] && [ "${CI:-}" != "true" ]; then
	echo "install-deps: all ${1:-build} dependencies are installed"
	exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
	SUDO=""
elif command -v sudo >/dev/null 2>&1; then
	SUDO="sudo"
else
	echo "install-deps: missing packages:$missing" >&2
	echo "install-deps: run this script as root (or install sudo) to install them" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-deps: apt-get update && apt-get install$missing"
# retry: a mirror hiccup should not fail a CI run
retry() {
	n=1
	until "$@"; do
		[ $n -ge 3 ] && return 1
		echo "install-deps: retrying in $((n * 10))s: $*" >&2
		sleep $((n * 10))
		n=$((n + 1))
	done
}
retry $SUDO apt-get update -q
case " $PKGS " in
*" postfix "*)
	echo "postfix postfix/main_mailer_type select No configuration" |
	    $SUDO debconf-set-selections
	;;
esac
# shellcheck disable=SC2086  # word splitting of the package list is wanted
retry $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold $PKGS

# A system Postfix started by the package would hold port 25 and spend CPU;
# nothing of moat's needs it.
if command -v postfix >/dev/null 2>&1; then
	if $SUDO postfix status >/dev/null 2>&1; then
		$SUDO postfix stop >/dev/null 2>&1 || true
	fi
fi
echo "install-deps: done"
