# milter/: moat's filter engine behind libmilter, in its own process forked
# by moatd's master (docs/milter.md).
moatd_SOURCES += milter/milter.c milter/milter.h
moatd_LDADD += $(MILTER_LIBS)
AM_CPPFLAGS += -I$(top_srcdir)/milter
# its tests: a private Postfix instance and miltertest scripts
TESTS += tests/integration/test_milter.py
EXTRA_DIST += tests/integration/test_milter.py tests/integration/milter/abort.lua \
	tests/integration/milter/large_body.lua tests/integration/milter/many_recipients.lua \
	tests/integration/milter/missing_macros.lua tests/integration/milter/several_messages.lua \
	tests/integration/milter/throughput.lua
EXTRA_DIST += docs/milter.md bench/milter-bench.sh
