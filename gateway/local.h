/*
 * local.h - local delivery into the built-in Maildir++ store
 * (<state-dir>/mail/DOMAIN/LOCALPART/).  BLOCKING: call from a pool
 * thread.  The delivered file is fsync'ed (tmp/ -> new/, directory fsync)
 * before LOCAL_OK is returned.
 */
#ifndef MOAT_LOCAL_H
#define MOAT_LOCAL_H

#include <sys/types.h>

struct moat_conf;
struct buf;

enum local_result { LOCAL_OK, LOCAL_TEMPFAIL, LOCAL_PERMFAIL };

/*
 * Deliver len bytes at offset off of fd (the spool queue file) to rcpt
 * (a full address in a `deliver store` domain).  `prepend` (may be NULL) is
 * written before the message (e.g. "Delivered-To: ...\r\n").  Messages are
 * stored with CRLF converted to LF (Maildir convention, as Dovecot does).
 * On failure an SMTP-style reply ("550 5.1.1 ...", "452 4.2.2 ...") is put
 * in reply.
 */
enum local_result local_deliver(const struct moat_conf *, const char *rcpt,
    int fd, off_t off, off_t len, const char *prepend, struct buf *reply);

#endif
