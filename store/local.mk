# store/: the built-in Maildir++ store (maildir.c is in libmoat.a).
