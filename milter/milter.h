/*
 * milter.h - moat as a milter (docs/milter.md): a libmilter front end that
 * runs the same filter engine (filters/engine.h) for Postfix or Sendmail.
 *
 * It runs in its own process, forked by moatd's master (libmilter owns its
 * threads and signal handling): milter_main() has libmilter bind the
 * `listen milter` socket (still root, so a unix socket can be chowned to the
 * run user), drops privileges, loads the engine and the lists, then serves
 * until SIGTERM.  libmilter runs one thread per MTA connection; the
 * blocking engine_run() and quarantine writes happen in that thread.
 */
#ifndef MOAT_MILTER_H
#define MOAT_MILTER_H

struct moat_conf;
struct listen_conf;

/* the `listen milter` listener of c, or NULL */
const struct listen_conf *milter_listener(const struct moat_conf *);
/* the milter process: serve until SIGTERM; returns the exit status */
int milter_main(const struct moat_conf *, const struct listen_conf *);

#endif
