/*
 * greylist.h - greylisting at RCPT (triplet: client network, envelope
 * sender, recipient), stored in SQLite (STATE-DIR/greylist.db, WAL).
 *
 * Every function that touches the database BLOCKS: call it from a pool
 * thread only.  Each thread keeps its own connection (opened on first use,
 * closed at thread exit).  See docs/filter-engine.md, "Greylisting".
 */
#ifndef MOAT_GREYLIST_H
#define MOAT_GREYLIST_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

struct sockaddr;

struct greylist_params {
	long long delay;        /* seconds before a retry of a new triplet passes */
	long long expire;       /* an unconfirmed triplet waits this long for its retry */
	long long allow_time;   /* a confirmed triplet passes this long after its last use */
	long long auto_clients; /* a network with this many confirmed triplets skips greylisting; 0 = off */
};

enum greylist_action {
	GL_DEFER,               /* new, or retried too early: 450 4.7.1 */
	GL_PASS,                /* retried after the delay: confirmed now */
	GL_ALLOW,               /* a confirmed triplet, or an auto-allowed network */
	GL_ERROR,               /* the database failed (the caller lets the mail in) */
};

struct greylist_result {
	enum greylist_action action;
	long long retry;        /* GL_DEFER: seconds until a retry passes */
	bool    client;         /* GL_ALLOW: because the network is auto-allowed */
};

/* the greylisting network of a client: "192.0.2.0/24", "2001:db8:1:2::/64"
 * (v4-mapped v6 counts as v4); false if sa is neither v4 nor v6 */
bool greylist_net(const struct sockaddr *sa, char *out, size_t outsz);
/* the sender as stored: lowercase, "+ext" removed with the recipient
 * delimiter, BATV (prvs=TAG=) removed, SRS0 hash and timestamp folded,
 * digit runs that stand alone in the local part made "#" (postgrey's
 * s/\b\d+\b/#/: VERP bounce addresses change with every message) */
void greylist_sender(const char *sender, const char *delim, char *out, size_t outsz);

/* BLOCKING: decide for one triplet at time now; 0, or -1 with *err
 * (malloc'ed) and res->action GL_ERROR */
int  greylist_check(const char *dbpath, const struct greylist_params *, const char *net,
    const char *sender, const char *rcpt, time_t now, struct greylist_result *res, char **err);
/* true once an hour (the first caller claims the slot; any thread): time
 * to submit a greylist_purge() job */
bool greylist_purge_due(time_t now);
/* BLOCKING: delete expired triplets and networks now; returns the number
 * of rows deleted, or -1 with *err */
long long greylist_purge(const char *dbpath, const struct greylist_params *, time_t now,
    char **err);
/* close this thread's connection (tests) */
void greylist_thread_drop(void);

#endif
