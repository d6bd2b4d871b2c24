# store/: the built-in Maildir++ store (maildir.c is in libmoat.a), its
# mailbox layer and the POP3/IMAP servers.
libmoat_a_SOURCES += store/mailbox.c store/mailbox.h
