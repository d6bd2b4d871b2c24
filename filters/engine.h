/*
 * engine.h - the filter engine's data stage (docs/filter-engine.md).
 *
 * At the end of DATA/BDAT, before the commit, the SMTP session hands the
 * message to engine_run() in a pool thread: the message is parsed once
 * (filters/mime.c) and the configured filters add scored symbols - rules
 * (SpamAssassin syntax), attachment policy, antivirus, Bayes.  The total
 * score maps to an action by the `action tag|quarantine|reject` thresholds;
 * a filter may force one (a virus, a blocked attachment, an AV failure).
 * Quarantined messages go to the quarantine store (quarantine/qstore.c),
 * never to the queue.  The verdict's headers (X-Spam-*) are stored with the queue file
 * (spool_set_headers), so the message is never copied.
 * The filters themselves implement filters/filter.h and are listed in the
 * static table in engine.c.
 */
#ifndef MOAT_ENGINE_H
#define MOAT_ENGINE_H

#include <stdbool.h>
#include <stddef.h>

struct moat_conf;
struct buf;
struct sockaddr;

enum verdict_action { VA_ACCEPT, VA_TAG, VA_QUARANTINE, VA_REJECT, VA_TEMPFAIL };

struct symbol {
	char    name[64];
	double  score;
	char    reason[160];
};

struct verdict {
	struct symbol *sym;
	size_t  nsym;
	double  score;
	bool    forced;             /* a filter decided the action */
	enum verdict_action force;
	char    force_why[200];     /* for the reply and the log ("virus Eicar-Test") */
	enum verdict_action action; /* final */
	double  elapsed_ms;
	double  required;           /* the tag (else reject) threshold applied */
	char   *hdrs;               /* header fields filters add (CRLF lines), or NULL */
	size_t  hdrslen;
};

struct engine;

/* load the filters the config asks for; NULL with *err on a hard error.
 * Runs in the worker at start (rules compile, AV engine load). */
struct engine *engine_new(const struct moat_conf *, char **err);
void engine_free(struct engine *);
/* true if any data-stage filter is configured */
bool engine_active(const struct engine *);
struct lists;
/* what the session already knows about the message */
struct engine_in {
	const struct lists *lists;  /* for the header From domain; may be NULL */
	bool    allowlisted;        /* an allow-list hit (IP, HELO, sender, rcpt) */
	/* the connection and the envelope (any may be NULL/0 in tests) */
	const char *qid;
	const struct sockaddr *client;
	const char *client_ip;
	const char *helo;
	const char *sender;         /* "" for <> */
	const char *const *rcpts;
	size_t  nrcpts;
	const char *auth_user;
	bool    tls;
	/* per-domain thresholds (the recipients' domain); else the global ones */
	bool    th_set;
	double  th_tag, th_quarantine, th_reject;
	/* symbols the session found before the message (PREGREET), scored
	 * with the rest */
	const struct symbol *early;
	size_t  nearly;
	/* the filters run at the first RCPT (engine_early_run), or NULL */
	const struct engine_early *pre;
};
struct engine_early;
/* any filter placed at the first RCPT ("filter-stage NAME rcpt")? */
bool engine_has_early(const struct engine *);
/* BLOCKING (pool thread): run those filters on the connection and the
 * envelope (no message yet); its verdict's action is VA_REJECT when they
 * alone reach the reject threshold or force a reject, else VA_ACCEPT */
struct engine_early *engine_early_run(struct engine *, const struct engine_in *);
const struct verdict *engine_early_verdict(const struct engine_early *);
void engine_early_free(struct engine_early *);
/* BLOCKING (pool thread): run the data filters on the message bytes */
void engine_run(struct engine *, const char *msg, size_t len, const struct engine_in *,
    struct verdict *);
/* BLOCKING (pool thread): learn a message as spam or ham (IMAP Junk
 * moves); creates the Bayes database on first use.  BAYES_OK,
 * BAYES_ALREADY or BAYES_ERR (filters/bayes.h) */
int engine_learn(struct engine *, const char *msg, size_t len, bool spam);
/* the header fields to add for this verdict (CRLF lines), into out */
void verdict_headers(const struct verdict *, const struct moat_conf *, struct buf *out);
/* "RULE(2.50),BAYES_99(3.50)" for the log */
void verdict_symbols(const struct verdict *, struct buf *out);
const char *verdict_action_name(enum verdict_action);
void verdict_clear(struct verdict *);

#endif
