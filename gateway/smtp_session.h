/*
 * smtp_session.h - the SMTP server: listeners and sessions (RFC 5321,
 * 1869, 1870, 2920, 3030, 3461, 3463, 6152, 6531).  Runs in the worker,
 * on its event loop; fsync work goes to the pool.
 */
#ifndef MOAT_SMTP_SESSION_H
#define MOAT_SMTP_SESSION_H

#include <stdbool.h>
#include <stddef.h>

struct listen_conf;

/* start accepting on an already bound socket (l->fd) */
int    smtp_listen(const struct listen_conf *l);
/* stop accepting.  kick: tell idle sessions 421 now and close the others
 * after their transaction (shutdown); !kick: let every session run to its
 * natural end (reload).  cb(arg) once no session is left. */
void   smtp_drain(bool kick, void (*cb)(void *), void *arg);
size_t smtp_session_count(void);

#endif
