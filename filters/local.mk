# filters/: the MIME parser the filters share and the Bayesian scorer.
libmoat_a_SOURCES += filters/mime.c filters/mime.h
