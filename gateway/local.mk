# moatd: master, worker, SMTP server, queue manager, relay client.
sbin_PROGRAMS += moatd
moatd_SOURCES = gateway/moatd.c gateway/worker.c gateway/worker.h \
	gateway/smtp_session.c gateway/smtp_session.h \
	gateway/queue.c gateway/queue.h gateway/relay.c gateway/relay.h \
	gateway/control.c gateway/control.h \
	gateway/ops.c gateway/ops.h gateway/http.c gateway/http.h gateway/alerts.c gateway/alerts.h
moatd_LDADD = $(MOAT_LIBS)
