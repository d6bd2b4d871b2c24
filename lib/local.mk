# libmoat.a: everything shared by moatd, moat and the tests.
noinst_LIBRARIES += libmoat.a
libmoat_a_SOURCES = \
	lib/util.c lib/util.h lib/log.c lib/log.h lib/buf.c lib/buf.h \
	lib/conf.c lib/conf.h lib/pool.c lib/pool.h lib/privs.c lib/privs.h lib/tls.c lib/tls.h lib/net.c lib/net.h lib/lists.c lib/lists.h lib/users.c lib/users.h \
	lib/sasl.c lib/sasl.h lib/sasl_crypto.c lib/sasl_crypto.h lib/ratelimit.c lib/ratelimit.h lib/resolver.c lib/resolver.h lib/metrics.c lib/metrics.h lib/journal.c lib/journal.h \
	gateway/spool.c gateway/spool.h gateway/smtp_parse.c gateway/smtp_parse.h \
	gateway/dsn.c gateway/dsn.h gateway/local.c gateway/local.h \
	store/maildir.c store/maildir.h
