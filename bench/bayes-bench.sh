#!/bin/sh
# bayes-bench.sh - 5-fold cross-validation of moat's Bayes against bogofilter
# and SpamAssassin's Bayes on ../shared/corpus, same splits, same run.
#
#   bench/bayes-bench.sh [BUILDDIR]      (default: the source tree)
#   FOLDS=5 SEED=1 JOBS=2 bench/bayes-bench.sh /tmp/build     (~12 minutes)
#   SA_SAMPLE=1500 bench/bayes-bench.sh /tmp/build  (SpamAssassin on a subsample only)
#   TOOLS=moat SEED=2 MOAT_PARAMS="max_tokens=25;min_dev=0.3" bench/bayes-bench.sh /tmp/build
#       (moat alone, ~1.5 minutes; one more classification per parameter set)
#
# All three run on all de-duplicated messages, same splits.  SpamAssassin
# (one Perl process per step, Mail::SpamAssassin with only the Bayes plugin
# and its shipped BAYES_* rules, no network) learns at ~50 messages/s, so
# its folds run JOBS at a time after moat's and bogofilter's (whose timing
# is measured one step at a time); its speed is its own processes' CPU.
# SA_SAMPLE=N instead trains SpamAssassin on N messages and tests N/4 per
# fold (quicker; moat and bogofilter are then also scored on that sample).
# Needs: bogofilter, spamassassin (Debian packages).  Not part of make check.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/..}
moat=$build/moat
[ -x "$moat" ] || { echo "bayes-bench: $moat not built" >&2; exit 1; }
[ -d "$here/../../shared/corpus" ] || { echo "bayes-bench: ../shared/corpus not found" >&2; exit 1; }
tools=moat
command -v bogofilter >/dev/null && tools="$tools,bogofilter" || echo "# bogofilter not installed: skipped"
perl -MMail::SpamAssassin -e1 2>/dev/null && tools="$tools,spamassassin" || echo "# spamassassin not installed: skipped"
tools=${TOOLS:-$tools}
work=$(mktemp -d /tmp/bayes-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 "$here/bayes_cv.py" --moat "$moat" --tools "$tools" --folds "${FOLDS:-5}" \
	--seed "${SEED:-1}" --sa-sample "${SA_SAMPLE:-0}" --jobs "${JOBS:-2}" --work "$work" \
	--moat-params "${MOAT_PARAMS:-}"
