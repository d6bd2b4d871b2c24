#!/bin/sh
# quickstart.sh - install the build dependencies (Debian 12), build moat, and
# run moatd in the foreground with the embedded default configuration:
#
#     state-dir ./var
#     listen smtp 127.0.0.1:2525
#     domain localhost deliver store
#
# Run it from anywhere inside a checkout, as root or as a user with sudo (only
# apt-get uses sudo).  moatd runs in the checkout's top directory, so the
# state (spool, mailboxes, users database) lands in ./var there.  Extra
# arguments go to moatd (e.g. -c moat.conf).  Stop it with Ctrl-C.
set -eu

src=$(cd "$(dirname "$0")/.." && pwd)
build=${MOAT_BUILD_DIR:-$src/build}

sh "$src/contrib/install-deps.sh" run

cd "$src"
if [ -f "$src/config.status" ]; then
	build=$src              # already configured in tree: use that build
fi
if [ ! -x "$src/configure" ] || [ "$src/configure.ac" -nt "$src/configure" ]; then
	echo "quickstart: autoreconf -fi"
	autoreconf -fi
fi
mkdir -p "$build"
cd "$build"
if [ ! -f Makefile ]; then
	echo "quickstart: configure"
	"$src/configure" --quiet
fi
echo "quickstart: make"
make -j2

cd "$src"
echo "quickstart: starting $build/moatd -f in $src (state in $src/var)"
echo "quickstart: try: $build/moat user add you@localhost"
echo "quickstart:      swaks --server 127.0.0.1:2525 --to you@localhost"
exec "$build/moatd" -f "$@"
