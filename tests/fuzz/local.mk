# libFuzzer targets for the SMTP parsers (configure --enable-fuzzers, CC=clang).
# The parser itself is compiled into each target with the fuzzer's coverage
# instrumentation (the copy in libmoat.a is then not linked); the rest of
# libmoat.a comes from the archive.
# libFuzzer adds what it finds to the first corpus directory, so fuzz into a
# scratch copy of the seeds (SRC = the source tree):
#   mkdir -p /tmp/cmd && cp SRC/tests/fuzz/corpus/cmd/* /tmp/cmd
#   ./tests/fuzz/fuzz_smtp_cmd -max_total_time=600 /tmp/cmd
#   (likewise fuzz_smtp_data with corpus/data)
EXTRA_DIST += tests/fuzz/fuzz_smtp_cmd.c tests/fuzz/fuzz_smtp_data.c \
	tests/fuzz/corpus
# SASL mechanisms (lib/sasl.c, lib/sasl_crypto.c), seeds in corpus/sasl
EXTRA_DIST += tests/fuzz/fuzz_sasl.c
# SPF record checks (filters/spf_record.c), seeds in corpus/spf
EXTRA_DIST += tests/fuzz/fuzz_spf_record.c
if FUZZERS
FUZZ_FLAGS = -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer -g
noinst_PROGRAMS += tests/fuzz/fuzz_smtp_cmd tests/fuzz/fuzz_smtp_data
tests_fuzz_fuzz_smtp_cmd_SOURCES = tests/fuzz/fuzz_smtp_cmd.c gateway/smtp_parse.c
tests_fuzz_fuzz_smtp_cmd_CFLAGS = $(AM_CFLAGS) $(FUZZ_FLAGS)
tests_fuzz_fuzz_smtp_cmd_LDFLAGS = $(FUZZ_FLAGS)
tests_fuzz_fuzz_smtp_cmd_LDADD = $(MOAT_LIBS)
tests_fuzz_fuzz_smtp_data_SOURCES = tests/fuzz/fuzz_smtp_data.c gateway/smtp_parse.c
tests_fuzz_fuzz_smtp_data_CFLAGS = $(AM_CFLAGS) $(FUZZ_FLAGS)
tests_fuzz_fuzz_smtp_data_LDFLAGS = $(FUZZ_FLAGS)
tests_fuzz_fuzz_smtp_data_LDADD = $(MOAT_LIBS)
noinst_PROGRAMS += tests/fuzz/fuzz_sasl
tests_fuzz_fuzz_sasl_SOURCES = tests/fuzz/fuzz_sasl.c lib/sasl.c lib/sasl_crypto.c
tests_fuzz_fuzz_sasl_CFLAGS = $(AM_CFLAGS) $(FUZZ_FLAGS)
tests_fuzz_fuzz_sasl_LDFLAGS = $(FUZZ_FLAGS)
tests_fuzz_fuzz_sasl_LDADD = $(MOAT_LIBS)
noinst_PROGRAMS += tests/fuzz/fuzz_spf_record
tests_fuzz_fuzz_spf_record_SOURCES = tests/fuzz/fuzz_spf_record.c filters/spf_record.c
tests_fuzz_fuzz_spf_record_CFLAGS = $(AM_CFLAGS) $(FUZZ_FLAGS)
tests_fuzz_fuzz_spf_record_LDFLAGS = $(FUZZ_FLAGS)
tests_fuzz_fuzz_spf_record_LDADD = $(MOAT_LIBS)
endif
