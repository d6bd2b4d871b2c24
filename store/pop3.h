/*
 * pop3.h - the POP3 server (RFC 1939, CAPA RFC 2449, STLS RFC 2595,
 * AUTH PLAIN RFC 5034, response codes RFC 3206) over the built-in store.
 * Worker process, event loop; blocking work goes to the pool.
 */
#ifndef MOAT_POP3_H
#define MOAT_POP3_H

#include <stddef.h>

struct listen_conf;

/* start accepting on l->fd (LISTEN_POP3 / LISTEN_POP3S); 0 or -1 */
int    pop3_listen(const struct listen_conf *);
size_t pop3_session_count(void);

#endif
