# quarantine/: the quarantine store (message files + SQLite index).
libmoat_a_SOURCES += quarantine/qstore.c quarantine/qstore.h
AM_CPPFLAGS += -I$(top_srcdir)/quarantine
