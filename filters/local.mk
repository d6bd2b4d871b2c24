# filters/: the MIME parser the filters share and the Bayesian scorer.
libmoat_a_SOURCES += filters/mime.c filters/mime.h
libmoat_a_SOURCES += filters/bayes.c filters/bayes.h filters/bayes_store.h filters/bayes_store_lmdb.c
libmoat_a_SOURCES += filters/av.c filters/av.h filters/attach.c filters/attach.h
libmoat_a_SOURCES += filters/rules.c filters/rules.h
libmoat_a_SOURCES += filters/engine.c filters/engine.h
libmoat_a_SOURCES += filters/filter.h filters/dnsbl.c filters/helo.c filters/helo.h filters/spf.c filters/spf.h \
	filters/spf_record.c filters/spf_record.h \
	filters/dkim.c filters/dmarc.c filters/geoip.c
libmoat_a_SOURCES += filters/greylist.c filters/greylist.h
