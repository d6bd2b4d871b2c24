/*
 * imap.h - the IMAP server (IMAP4rev1, RFC 3501, with IDLE, UIDPLUS, MOVE,
 * NAMESPACE, LITERAL+, ID, ENABLE, SPECIAL-USE, SASL-IR, UNSELECT) over the
 * built-in store.  Worker process, event loop; blocking work in the pool.
 */
#ifndef MOAT_IMAP_H
#define MOAT_IMAP_H

#include <stddef.h>

struct listen_conf;

/* start accepting on l->fd (LISTEN_IMAP / LISTEN_IMAPS); 0 or -1 */
int    imap_listen(const struct listen_conf *);
size_t imap_session_count(void);

#endif
