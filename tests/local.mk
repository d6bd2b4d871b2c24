# Tests: every test prints TAP; `make check` counts the individual checks.
# C unit tests (tests/unit/test_*.c) link libmoat.a; integration tests are
# Python scripts (stdlib only) that start moatd on loopback ports in a
# temporary directory (tests/integration/moattest.py is the harness).
LOG_DRIVER = env AM_TAP_AWK='$(AWK)' $(SHELL) $(top_srcdir)/build-aux/tap-driver.sh
TEST_LOG_DRIVER = $(LOG_DRIVER)
PY_LOG_DRIVER = $(LOG_DRIVER)
TEST_EXTENSIONS = .py
PY_LOG_COMPILER = $(PYTHON3)
PYTHON3 = python3
AM_TESTS_ENVIRONMENT = \
	MOAT_BUILDDIR='$(abs_top_builddir)'; export MOAT_BUILDDIR; \
	MOAT_SRCDIR='$(abs_top_srcdir)'; export MOAT_SRCDIR; \
	PYTHONDONTWRITEBYTECODE=1; export PYTHONDONTWRITEBYTECODE;
EXTRA_DIST += tests/unit/t.h tests/integration/moattest.py tests/integration/dnsserver.py

# ---- unit tests: core (lib/, smtp parser, spool) ----
check_PROGRAMS += tests/unit/test_util tests/unit/test_conf tests/unit/test_smtp_parse tests/unit/test_spool
tests_unit_test_util_LDADD = $(MOAT_LIBS)
tests_unit_test_conf_LDADD = $(MOAT_LIBS)
tests_unit_test_smtp_parse_LDADD = $(MOAT_LIBS)
tests_unit_test_spool_LDADD = $(MOAT_LIBS)
TESTS += tests/unit/test_util tests/unit/test_conf tests/unit/test_smtp_parse tests/unit/test_spool

# ---- unit tests: queue, relay, dsn ----
check_PROGRAMS += tests/unit/test_dsn tests/unit/test_relay
tests_unit_test_dsn_LDADD = $(MOAT_LIBS)
tests_unit_test_relay_SOURCES = tests/unit/test_relay.c gateway/relay.c
tests_unit_test_relay_LDADD = $(MOAT_LIBS)
TESTS += tests/unit/test_dsn tests/unit/test_relay

# ---- unit tests: users, maildir, local delivery ----
check_PROGRAMS += tests/unit/test_users tests/unit/test_maildir
tests_unit_test_users_LDADD = $(MOAT_LIBS)
tests_unit_test_maildir_LDADD = $(MOAT_LIBS)
TESTS += tests/unit/test_users tests/unit/test_maildir

# ---- unit tests: SASL mechanisms, rate limits ----
check_PROGRAMS += tests/unit/test_sasl tests/unit/test_ratelimit
tests_unit_test_sasl_LDADD = $(MOAT_LIBS)
tests_unit_test_ratelimit_LDADD = $(MOAT_LIBS)
TESTS += tests/unit/test_sasl tests/unit/test_ratelimit

# ---- unit tests: mailbox layer, IMAP parser ----
check_PROGRAMS += tests/unit/test_mailbox tests/unit/test_imap_parse
tests_unit_test_mailbox_LDADD = $(MOAT_LIBS)
tests_unit_test_imap_parse_LDADD = $(MOAT_LIBS)
TESTS += tests/unit/test_mailbox tests/unit/test_imap_parse

# ---- integration tests ----
TESTS += tests/integration/test_daemon.py tests/integration/test_tls.py tests/integration/test_relay_tls.py tests/integration/test_auth.py tests/integration/test_testssl.py tests/integration/test_engine.py tests/integration/test_lists.py
EXTRA_DIST += tests/integration/test_daemon.py tests/integration/test_tls.py tests/integration/test_relay_tls.py tests/integration/test_auth.py tests/integration/test_testssl.py tests/integration/test_engine.py tests/integration/test_lists.py
# users, Maildir store and local delivery, the moat CLI
TESTS += tests/integration/test_store.py tests/integration/test_cli.py
EXTRA_DIST += tests/integration/test_store.py tests/integration/test_cli.py
# config checking (moatd -n), usage messages, moat.conf(5) covers lib/conf.c
TESTS += tests/integration/test_config.py
EXTRA_DIST += tests/integration/test_config.py
# delivery queue, SMTP/LMTP relay client, DSNs, moat queue
TESTS += tests/integration/test_relay.py tests/integration/test_queue_cli.py
EXTRA_DIST += tests/integration/test_relay.py tests/integration/test_queue_cli.py
# SMTP conformance, hostile input, durability (kill -9, downstream outage, smtp-source load)
TESTS += tests/integration/test_smtp.py tests/integration/test_hostile.py tests/integration/test_durability.py
EXTRA_DIST += tests/integration/test_smtp.py tests/integration/test_hostile.py tests/integration/test_durability.py
EXTRA_DIST += tests/corpus
TESTS += tests/integration/test_imap.py
EXTRA_DIST += tests/integration/test_imap.py
# POP3 and IMAP servers over the built-in store
TESTS += tests/integration/test_pop3.py
EXTRA_DIST += tests/integration/test_pop3.py

# ---- unit tests: MIME parser, Bayes ----
check_PROGRAMS += tests/unit/test_mime tests/unit/test_bayes
tests_unit_test_mime_LDADD = $(MOAT_LIBS)
tests_unit_test_bayes_LDADD = $(MOAT_LIBS)
TESTS += tests/unit/test_mime tests/unit/test_bayes
TESTS += tests/integration/test_bayes_cli.py
EXTRA_DIST += tests/integration/test_bayes_cli.py

# ---- antivirus (libclamav, clamd), attachment policy ----
check_PROGRAMS += tests/unit/test_av
tests_unit_test_av_LDADD = $(MOAT_LIBS)
TESTS += tests/unit/test_av
TESTS += tests/integration/test_av_cli.py
EXTRA_DIST += tests/integration/test_av_cli.py
check_PROGRAMS += tests/unit/test_attach
tests_unit_test_attach_LDADD = $(MOAT_LIBS)
TESTS += tests/unit/test_attach

# ---- quarantine store and `moat quarantine` ----
check_PROGRAMS += tests/unit/test_qstore
tests_unit_test_qstore_LDADD = $(MOAT_LIBS)
TESTS += tests/unit/test_qstore

# ---- operations (#10): metrics, alerts, journal/trace ----
check_PROGRAMS += tests/unit/test_metrics tests/unit/test_journal
tests_unit_test_metrics_LDADD = $(MOAT_LIBS)
tests_unit_test_journal_LDADD = $(MOAT_LIBS)
TESTS += tests/unit/test_metrics tests/unit/test_journal
TESTS += tests/integration/test_metrics.py tests/integration/test_alerts.py tests/integration/test_trace.py
EXTRA_DIST += tests/integration/test_metrics.py tests/integration/test_alerts.py tests/integration/test_trace.py \
	tests/integration/promparse.py

# ---- rule files (filters/rules.c, rules/, moat rules) ----
check_PROGRAMS += tests/unit/test_rules
tests_unit_test_rules_LDADD = $(MOAT_LIBS)
TESTS += tests/unit/test_rules tests/integration/test_rules_cli.py
EXTRA_DIST += tests/integration/test_rules_cli.py rules
TESTS += tests/integration/test_quarantine_cli.py
EXTRA_DIST += tests/integration/test_quarantine_cli.py
TESTS += tests/integration/test_authres.py
EXTRA_DIST += tests/integration/test_authres.py
TESTS += tests/integration/test_domain_action.py
EXTRA_DIST += tests/integration/test_domain_action.py
TESTS += tests/integration/test_imap_junk.py
EXTRA_DIST += tests/integration/test_imap_junk.py
TESTS += tests/integration/test_imap_keywords.py
EXTRA_DIST += tests/integration/test_imap_keywords.py
TESTS += tests/integration/test_imap_dovecot.py
EXTRA_DIST += tests/integration/test_imap_dovecot.py tests/integration/imapdiff.py
TESTS += tests/integration/test_imaptest.py tests/integration/test_imap_conformance.py
EXTRA_DIST += tests/integration/test_imaptest.py tests/integration/imaptest.py tests/integration/test_imap_conformance.py

# ---- GeoIP, greylisting, early talkers (issue #4) ----
check_PROGRAMS += tests/unit/test_geoip tests/unit/test_greylist
tests_unit_test_geoip_LDADD = $(MOAT_LIBS)
tests_unit_test_greylist_LDADD = $(MOAT_LIBS)
TESTS += tests/unit/test_geoip tests/unit/test_greylist
TESTS += tests/integration/test_geoip.py tests/integration/test_greylist.py tests/integration/test_pregreet.py
EXTRA_DIST += tests/integration/test_geoip.py tests/integration/test_greylist.py tests/integration/test_pregreet.py

# ---- DNS: resolver, DNSBL/DNSWL/URIBL, HELO and FCrDNS (issue #4) ----
check_PROGRAMS += tests/unit/test_resolver
tests_unit_test_resolver_LDADD = $(MOAT_LIBS)
TESTS += tests/unit/test_resolver
TESTS += tests/integration/test_dnsbl.py tests/integration/test_helo.py
EXTRA_DIST += tests/integration/test_dnsbl.py tests/integration/test_helo.py

# DKIM and DMARC (filters/dkim.c, filters/dmarc.c)
TESTS += tests/integration/test_dkim.py tests/integration/test_dmarc.py
EXTRA_DIST += tests/integration/test_dkim.py tests/integration/test_dmarc.py tests/integration/dkimsign.py
TESTS += tests/integration/test_filter_stage.py
EXTRA_DIST += tests/integration/test_filter_stage.py
TESTS += tests/integration/test_bayes_autolearn.py
EXTRA_DIST += tests/integration/test_bayes_autolearn.py

# ---- SPF (filters/spf.c, filters/spf_record.c; issue #4) ----
check_PROGRAMS += tests/unit/test_spf_record
tests_unit_test_spf_record_LDADD = $(MOAT_LIBS)
TESTS += tests/unit/test_spf_record tests/integration/test_spf.py tests/integration/test_spf_suite.py
EXTRA_DIST += tests/integration/test_spf.py tests/integration/test_spf_suite.py tests/integration/spf_suite.py
TESTS += tests/integration/test_subject_prefix.py
EXTRA_DIST += tests/integration/test_subject_prefix.py
TESTS += tests/integration/test_mutt.py
EXTRA_DIST += tests/integration/test_mutt.py
