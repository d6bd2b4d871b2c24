# store/: the built-in Maildir++ store (maildir.c is in libmoat.a), its
# mailbox layer and the POP3/IMAP servers.  The servers sit in libmoat.a
# too (this fragment is included before gateway/local.mk defines
# moatd_SOURCES); only moatd references them, so only moatd links them.
libmoat_a_SOURCES += store/mailbox.c store/mailbox.h \
	store/pop3.c store/pop3.h \
	store/imap.c store/imap.h store/imap_parse.c store/imap_parse.h
