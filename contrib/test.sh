#!/bin/bash
# test.sh - install what the tests need, build moat with the sanitizers and
# -Werror, run the whole suite, and end with the line "N passed, N failed".
#
#   contrib/test.sh                 from anywhere inside a checkout
#
# Environment:
#   MOAT_BUILD_DIR=DIR   build directory (default: build-test in the checkout;
#                        the build is out of tree, so an in-tree build made
#                        by contrib/quickstart.sh is left alone)
#   MOAT_SKIP_DEPS=1     do not run contrib/install-deps.sh
#   MOAT_JOBS=N          make -jN (default 2)
#   MOAT_CHECK_TIMEOUT=S time limit for `make check` in seconds (default 1800)
#   TESTS="a b"          run only these tests (passed to make check)
#   MOAT_FUZZ_RUNS=N     after the suite, run each libFuzzer target for N
#                        inputs from its seed corpus with a fixed seed, so a
#                        run is repeatable (default 200000; 0 skips the fuzz
#                        stage).  The targets are built with clang in BUILD-fuzz.
#   MOAT_FUZZ_SECONDS=S  time cap per target (default 90)
#
# Counting: every TAP result is one test (automake's tap-driver writes one
# ":test-result:" line per result into each .trs file).  failed = FAIL +
# ERROR + XPASS, plus one for every sanitizer report written by any process
# (the daemons' workers included: a report from a worker the master quietly
# restarted is still a failure), plus one for a build failure or a time-out.
# Exit status: 0 only when nothing failed and at least one test ran.
set -u

die_summary() {		# passed failed
	echo
	echo "$1 passed, $2 failed"
	exit 1
}

src=$(cd "$(dirname "$0")/.." && pwd)
build=${MOAT_BUILD_DIR:-$src/build-test}
jobs=${MOAT_JOBS:-2}
check_timeout=${MOAT_CHECK_TIMEOUT:-1800}

echo "== moat test: source $src, build $build"

if [ "${MOAT_SKIP_DEPS:-}" != 1 ]; then
	sh "$src/contrib/install-deps.sh" test || { echo "test.sh: installing dependencies failed"; die_summary 0 1; }
fi

# ---- build ----
cd "$src" || die_summary 0 1
if [ -f "$src/config.status" ]; then
	# an in-tree build exists (contrib/quickstart.sh): configure refuses to
	# build out of tree beside it, so use the source directory itself
	echo "test.sh: $src is configured in tree; building there"
	build=$src
fi
echo "== autoreconf -fi"
autoreconf -fi || { echo "test.sh: autoreconf failed"; die_summary 0 1; }
mkdir -p "$build" && cd "$build" || die_summary 0 1
echo "== configure --enable-sanitizers --enable-werror"
"$src/configure" --enable-sanitizers --enable-werror >configure.out 2>&1
rc=$?
tail -n 12 configure.out
if [ $rc -ne 0 ]; then
	echo "test.sh: configure failed; config.log follows"
	tail -n 80 config.log 2>/dev/null
	die_summary 0 1
fi
echo "== make -j$jobs"
if ! make -j"$jobs"; then
	echo "test.sh: build failed"
	die_summary 0 1
fi

# ---- sanitizer settings for everything make check starts ----
# LeakSanitizer works on this machine kind (it needs ptrace of its own
# threads); leaks fail the run.  Reports go to files so that reports from
# daemons whose stderr a test swallowed are still seen; they are printed and
# counted below.  The directory is in /tmp and world-writable because
# moatd's worker drops privileges when the tests run as root, and may not be
# able to reach a build directory under /root.
sandir=$(mktemp -d /tmp/moat-sanitizer.XXXXXX) || die_summary 0 1
chmod 1777 "$sandir"
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:print_stacktrace=1:detect_stack_use_after_return=1:disable_coredump=1:log_path=$sandir/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$sandir/ubsan"
export LSAN_OPTIONS="suppressions=$src/contrib/lsan.supp:print_suppressions=0"

# ---- run ----
echo "== make -j$jobs check"
find . -name '*.trs' -delete 2>/dev/null
rm -f test-suite.log
check_args=()
[ -n "${TESTS:-}" ] && check_args+=("TESTS=$TESTS")
timeout --kill-after=30 "$check_timeout" make -j"$jobs" check "${check_args[@]}" </dev/null
check_rc=$?
timed_out=0
if [ $check_rc -eq 124 ] || [ $check_rc -eq 137 ]; then
	echo "test.sh: make check did not finish within ${check_timeout}s"
	timed_out=1
fi

# ---- fuzz smoke: every libFuzzer target, from its seed corpus ----
# Each target that runs its inputs without a crash is one passed test; a
# crash, a leak or a build failure is one failed test (its output and the
# crashing input are printed).  -seed=1 makes the run repeatable; long
# fuzzing campaigns are run by hand (see tests/fuzz/local.mk).
fuzz_pass=0 fuzz_fail=0
fuzz_runs=${MOAT_FUZZ_RUNS:-200000}
fuzz_secs=${MOAT_FUZZ_SECONDS:-90}
if [ "$build" = "$src" ]; then
	echo "test.sh: in-tree build: skipping the fuzz stage (it needs a second, out-of-tree build)"
elif [ "$fuzz_runs" -gt 0 ] 2>/dev/null && [ -d "$src/tests/fuzz" ]; then
	fbuild=$build-fuzz
	echo "== fuzz: CC=clang configure --enable-fuzzers in $fbuild; $fuzz_runs inputs (at most ${fuzz_secs}s) per target"
	mkdir -p "$fbuild"
	targets=()
	for c in "$src"/tests/fuzz/fuzz_*.c; do
		[ -f "$c" ] && targets+=("tests/fuzz/$(basename "$c" .c)")
	done
	if [ ${#targets[@]} -eq 0 ]; then
		echo "test.sh: no fuzz targets"
	elif ! (cd "$fbuild" && CC=clang "$src/configure" --enable-fuzzers >configure.out 2>&1 &&
	    make -j"$jobs" "${targets[@]}" >make.out 2>&1); then
		echo "======== FAILED: building the fuzz targets ========"
		tail -n 40 "$fbuild/configure.out" "$fbuild/make.out" 2>/dev/null
		fuzz_fail=$((fuzz_fail + 1))
	else
		for tgt in "${targets[@]}"; do
			name=$(basename "$tgt")             # fuzz_smtp_cmd
			short=${name#fuzz_}; short=${short#smtp_}
			work=$(mktemp -d "$fbuild/corpus-$name.XXXXXX")
			for d in "$src/tests/fuzz/corpus/$short" "$src/tests/fuzz/corpus/${name#fuzz_}"; do
				[ -d "$d" ] && cp -R "$d/." "$work/" && break
			done
			log=$fbuild/$name.log
			rm -f "$fbuild/$name-"*
			if (cd "$fbuild" && ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:print_stacktrace=1" \
			    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
			    timeout $((fuzz_secs + 120)) "./$tgt" -seed=1 -runs="$fuzz_runs" -max_total_time="$fuzz_secs" \
			    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
			    -artifact_prefix="$fbuild/$name-" "$work" >"$log" 2>&1); then
				echo "PASS: fuzz $name ($(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$') inputs)"
				fuzz_pass=$((fuzz_pass + 1))
			else
				echo "FAIL: fuzz $name"
				echo "======== FAILED: fuzz $name ========"
				grep -v '^#[0-9]' "$log" | tail -n 80
				for a in "$fbuild/$name-"*; do
					[ -f "$a" ] && echo "crashing input $a:" && od -c "$a" | head -n 20
				done
				fuzz_fail=$((fuzz_fail + 1))
			fi
			rm -rf "$work"
		done
	fi
fi

# ---- count ----
pass=$fuzz_pass fail=$fuzz_fail error=0 skip=0 xfail=0 xpass=0
failed_logs=()
while IFS= read -r trs; do
	while IFS= read -r r; do
		case "$r" in
		PASS) pass=$((pass + 1)) ;;
		FAIL) fail=$((fail + 1)) ;;
		ERROR) error=$((error + 1)) ;;
		SKIP) skip=$((skip + 1)) ;;
		XFAIL) xfail=$((xfail + 1)) ;;
		XPASS) xpass=$((xpass + 1)) ;;
		esac
	done < <(sed -n 's/^:test-result: *\([A-Z]*\).*/\1/p' "$trs")
	if grep -Eq '^:(test-result|global-test-result): *(FAIL|ERROR|XPASS)' "$trs"; then
		failed_logs+=("${trs%.trs}.log")
	fi
done < <(find . -name '*.trs' | sort)

sanreports=()
while IFS= read -r f; do
	sanreports+=("$f")
done < <(find "$sandir" -type f | sort)

if [ ${#failed_logs[@]} -gt 0 ]; then
	for l in "${failed_logs[@]}"; do
		echo
		echo "======== FAILED: ${l#./} ========"
		cat "$l" 2>/dev/null | tail -n 300
	done
fi
if [ ${#sanreports[@]} -gt 0 ]; then
	for f in "${sanreports[@]}"; do
		echo
		echo "======== SANITIZER REPORT: $(basename "$f") ========"
		head -n 150 "$f"
	done
fi

failed=$((fail + error + xpass + ${#sanreports[@]} + timed_out))
if [ $check_rc -ne 0 ] && [ $failed -eq 0 ]; then
	# make check failed without a failing result (e.g. a test program
	# did not build): that is a failure too
	echo "test.sh: make check exited $check_rc without a failing test result"
	failed=1
fi
if [ $pass -eq 0 ] && [ $failed -eq 0 ]; then
	echo "test.sh: no test ran"
	failed=1
fi
echo
echo "# PASS: $pass  FAIL: $fail  ERROR: $error  XPASS: $xpass  SKIP: $skip  XFAIL: $xfail  sanitizer reports: ${#sanreports[@]}"
echo "$pass passed, $failed failed"
[ $failed -eq 0 ]
