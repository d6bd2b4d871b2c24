/*
 * queue.c - the delivery queue manager (qmgr).
 *
 * Runs in: the worker, on its event loop.  Everything that touches the
 * disk (opening and flock()ing a queue file, reading its envelope and
 * state, local delivery, writing state, building and injecting DSNs,
 * removing) runs in the thread pool; the loop only schedules.
 *
 * Life of a message:
 *   known (ready or deferred, ~64 bytes in memory: qid, next attempt)
 *   -> open job (pool): open queue/QID, flock(LOCK_EX|LOCK_NB) (skip if
 *      another worker or `moat queue delete` holds it), read envelope and
 *      spool/state/QID; not due yet -> back to deferred
 *   -> dispatch (loop): each pending recipient routed by the CURRENT
 *      config (conf_find_domain): `deliver relay` recipients grouped per
 *      destination into one relay transaction (relay.c), `deliver store`
 *      recipients delivered by local_deliver() in one pool job
 *   -> results: 2xx delivered, 5xx failed, 4xx / connection trouble
 *      deferred; past queue-lifetime (bounce-lifetime for the null
 *      sender) the deferred ones fail with 4.4.7
 *   -> finish job (pool): state written atomically (tmp + fdatasync +
 *      rename) before anything else, then one DSN for every recipient
 *      that needs one (spool_inject), then spool_remove() and the state
 *      file once every recipient is final and no DSN is owed
 *   -> deferred again with exponential backoff (queue-retry-min ..
 *      queue-retry-max), or forgotten.
 *
 * Limits: at most QUEUE_MAX_ACTIVE messages open at once (file
 * descriptors, envelopes in memory); the rest wait in the ready list.
 * Untrusted input: remote replies (capped by relay.c, stored with control
 * bytes replaced, logged through esc()), state files (parsed defensively:
 * unknown or bad lines are ignored, indexes checked).
 */
#include "config.h"
#include "queue.h"
#include "buf.h"
#include "conf.h"
#include "dsn.h"
#include "journal.h"
#include "local.h"
#include "log.h"
#include "pool.h"
#include "relay.h"
#include "spool.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <event2/event.h>

#define QUEUE_MAX_ACTIVE   256
#define QUEUE_HASH_SIZE    16384
#define QUEUE_LOCKED_RETRY 10           /* seconds before retrying a locked file */
#define STATE_MAGIC        "MOAT-STATE 1\n"

enum rstatus { RS_PENDING, RS_DELIVERED, RS_FAILED };
static const char *const rstatus_name[] = { "pending", "delivered", "failed" };

/* DSN owed for a recipient */
enum rdsn { RD_NONE, RD_FAILED, RD_DELIVERED, RD_RELAYED, RD_SENT };
static const char *const rdsn_name[] = { "-", "failed", "delivered", "relayed", "sent" };

struct rstate {
	enum rstatus status;
	enum rdsn dsn;
	int     attempts;
	time_t  last;                   /* last attempt */
	char    dstatus[16];            /* DSN status "5.1.1", "" unknown */
	char    remote[128];            /* remote MTA, "" if the reply is local */
	char    reply[RELAY_REPLY_MAX];
};

struct qstate {
	int     attempts;
	time_t  next;
	struct rstate *r;
	size_t  n;
};

struct qmsg {
	TAILQ_ENTRY(qmsg) entry;        /* ready or deferred list */
	struct qmsg *hnext;
	char    qid[QID_SIZE];
	time_t  next;
	enum { QL_NONE, QL_READY, QL_DEFERRED } list;
	bool    active;
	bool    force;                  /* flush: ignore the state file's next time */
	bool    bad;                    /* unreadable: ignored until it changes */
};
TAILQ_HEAD(qlist, qmsg);

enum open_result { OPEN_OK, OPEN_GONE, OPEN_LOCKED, OPEN_NOTDUE, OPEN_BAD };

struct delivery;

struct lgroup {                         /* local (store) recipients */
	struct delivery *d;
	size_t *idx;
	size_t  n;
	enum local_result *res;
	struct buf *reply;
	char   *sender;
};

struct delivery {
	struct queue *q;
	struct qmsg *m;
	int     fd;
	bool    force;
	struct envelope env;
	struct qstate st;
	enum open_result open;
	char   *err;
	size_t  pending;                /* groups in flight */
	struct relay_txn *txns;
	size_t  ntxns;
	size_t **txn_idx;
	struct lgroup lg;
	bool    any_attempt;
	/* finish */
	bool    all_final;
	bool    removed;
	char    dsn_qid[QID_SIZE];
	char   *dsn_err;
	size_t  dsn_n;
};

struct queue {
	struct event_base *base;
	struct pool *pool;
	const struct moat_conf *conf;
	struct relay *relay;
	struct qmsg *hash[QUEUE_HASH_SIZE];
	struct qlist ready, deferred;
	size_t  nknown, nactive, ndeferred;
	struct event *tick;
	time_t  last_scan;
	bool    scanning;
	bool    draining;
	bool    freeing;
	bool    in_free;                /* inside queue_free(): q must not go away yet */
	void  (*drain_cb)(void *);
	void   *drain_arg;
	char    state_dir[PATH_MAX];
};

static void schedule(struct queue *);
static void check_drained(struct queue *);
static bool late_callback(struct queue *);

/* ------------------------------------------------------------------ */
/* known messages                                                      */

static unsigned
qhash(const char *s)
{
	unsigned h = 2166136261u;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h % QUEUE_HASH_SIZE;
}

static struct qmsg *
qfind(struct queue *q, const char *qid)
{
	for (struct qmsg *m = q->hash[qhash(qid)]; m; m = m->hnext)
		if (!strcmp(m->qid, qid))
			return m;
	return NULL;
}

static void
qlist_set(struct queue *q, struct qmsg *m, int list)
{
	if (m->list == QL_READY)
		TAILQ_REMOVE(&q->ready, m, entry);
	else if (m->list == QL_DEFERRED) {
		TAILQ_REMOVE(&q->deferred, m, entry);
		q->ndeferred--;
	}
	m->list = list;
	if (list == QL_READY)
		TAILQ_INSERT_TAIL(&q->ready, m, entry);
	else if (list == QL_DEFERRED) {
		TAILQ_INSERT_TAIL(&q->deferred, m, entry);
		q->ndeferred++;
	}
}

static struct qmsg *
qadd(struct queue *q, const char *qid)
{
	struct qmsg *m = xcalloc(1, sizeof(*m));
	unsigned h = qhash(qid);

	moat_strlcpy(m->qid, qid, sizeof(m->qid));
	m->hnext = q->hash[h];
	q->hash[h] = m;
	q->nknown++;
	return m;
}

static void
qforget(struct queue *q, struct qmsg *m)
{
	struct qmsg **pp = &q->hash[qhash(m->qid)];

	qlist_set(q, m, QL_NONE);
	while (*pp && *pp != m)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = m->hnext;
	q->nknown--;
	free(m);
}

/* ------------------------------------------------------------------ */
/* state files: spool/state/QID                                       */

static void
state_path(const struct queue *q, const char *qid, char *out, size_t outsz)
{
	snprintf(out, outsz, "%s/%s", q->state_dir, qid);
}

static void
clean_text(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			*s = ' ';
}

static void
state_init(struct qstate *st, size_t n)
{
	st->attempts = 0;
	st->next = 0;
	st->n = n;
	st->r = xcalloc(n ? n : 1, sizeof(*st->r));
}

static void
state_free(struct qstate *st)
{
	xfree(st->r);
	st->n = 0;
}

/* read spool/state/QID into st (already sized for the envelope).  A
 * missing file is a fresh message.  Bad lines are ignored. */
static int
state_read(const char *path, struct qstate *st)
{
	FILE *f = fopen(path, "re");
	char line[RELAY_REPLY_MAX + 512];

	if (f == NULL)
		return errno == ENOENT ? 0 : -1;
	if (fgets(line, sizeof(line), f) == NULL || strcmp(line, STATE_MAGIC) != 0) {
		fclose(f);
		return -1;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		char *nl = strchr(line, '\n');
		if (nl == NULL) {       /* overlong line: skip the rest of it */
			int ch;
			while ((ch = fgetc(f)) != EOF && ch != '\n')
				;
			continue;
		}
		*nl = '\0';
		long long a, b;
		if (sscanf(line, "attempts %lld", &a) == 1)
			st->attempts = (int)MIN(MAX(a, 0), 1000000);
		else if (sscanf(line, "next %lld", &a) == 1)
			st->next = (time_t)a;
		else if (!strncmp(line, "rcpt ", 5)) {
			/* rcpt IDX STATUS ATTEMPTS LAST DSN DSTATUS REMOTE REPLY */
			char stat[16], dsn[16], dstat[16], remote[128];
			int off = 0;
			unsigned long long idx;
			if (sscanf(line + 5, "%llu %15s %lld %lld %15s %15s %127s %n", &idx, stat, &a, &b,
			    dsn, dstat, remote, &off) < 7 || off == 0 || idx >= st->n)
				continue;
			struct rstate *r = &st->r[idx];
			for (int i = 0; i < 3; i++)
				if (!strcmp(stat, rstatus_name[i]))
					r->status = i;
			for (int i = 0; i < 5; i++)
				if (!strcmp(dsn, rdsn_name[i]))
					r->dsn = i;
			r->attempts = (int)MIN(MAX(a, 0), 1000000);
			r->last = (time_t)b;
			moat_strlcpy(r->dstatus, strcmp(dstat, "-") ? dstat : "", sizeof(r->dstatus));
			moat_strlcpy(r->remote, strcmp(remote, "-") ? remote : "", sizeof(r->remote));
			moat_strlcpy(r->reply, line + 5 + off, sizeof(r->reply));
			clean_text(r->reply);
		}
	}
	fclose(f);
	return 0;
}

/* BLOCKING: write tmp, fdatasync, rename over the state file */
static int
state_write(const struct queue *q, const char *qid, const struct qstate *st)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8];
	struct buf b = BUF_INIT;
	int fd, rc = -1;

	state_path(q, qid, path, sizeof(path));
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	buf_adds(&b, STATE_MAGIC);
	buf_printf(&b, "attempts %d\nnext %lld\n", st->attempts, (long long)st->next);
	for (size_t i = 0; i < st->n; i++) {
		const struct rstate *r = &st->r[i];
		char remote[128];
		moat_strlcpy(remote, r->remote[0] ? r->remote : "-", sizeof(remote));
		for (char *p = remote; *p; p++)
			if ((unsigned char)*p <= ' ')
				*p = '_';
		buf_printf(&b, "rcpt %zu %s %d %lld %s %s %s %s\n", i, rstatus_name[r->status],
		    r->attempts, (long long)r->last, rdsn_name[r->dsn],
		    r->dstatus[0] ? r->dstatus : "-", remote, r->reply);
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		goto out;
	if (write_full(fd, b.data, b.len) < 0 || fdatasync(fd) < 0) {
		close(fd);
		unlink(tmp);
		goto out;
	}
	close(fd);
	if (rename(tmp, path) < 0) {
		unlink(tmp);
		goto out;
	}
	rc = 0;
out:
	if (rc < 0)
		log_warn("qid=%s event=state-write-error path=%s", qid, path);
	buf_free(&b);
	return rc;
}

/* ------------------------------------------------------------------ */
/* helpers                                                             */

/* seconds since arrival; the queue id's first 13 hex digits are the
 * arrival in microseconds, more precise than the envelope's seconds */
static double
delay_of(const struct envelope *env)
{
	double now = (double)wall_us() / 1e6;
	double arr = (double)env->arrival;
	char hex[14];

	memcpy(hex, env->qid, 13);
	hex[13] = '\0';
	double us = (double)strtoll(hex, NULL, 16) / 1e6;
	if (us > arr - 2 && us < arr + 2)
		arr = us;
	return now - arr < 0 ? 0 : now - arr;
}

static time_t
backoff(const struct queue *q, int attempts)
{
	long long d = q->conf->queue_retry_min;
	for (int i = 1; i < attempts && d < q->conf->queue_retry_max; i++)
		d *= 2;
	if (d > q->conf->queue_retry_max)
		d = q->conf->queue_retry_max;
	return (time_t)d;
}

static const char *
rcpt_domain(const char *addr)
{
	const char *at = strrchr(addr, '@');
	return at ? at + 1 : "";
}

static void
delivery_free(struct delivery *d)
{
	if (d->fd >= 0)
		close(d->fd);
	for (size_t i = 0; i < d->ntxns; i++) {
		free(d->txns[i].res);
		free(d->txn_idx[i]);
	}
	free(d->txns);
	free(d->txn_idx);
	free(d->lg.idx);
	free(d->lg.res);
	if (d->lg.reply) {
		for (size_t i = 0; i < d->lg.n; i++)
			buf_free(&d->lg.reply[i]);
		free(d->lg.reply);
	}
	free(d->lg.sender);
	free(d->err);
	free(d->dsn_err);
	state_free(&d->st);
	envelope_clear(&d->env);
	free(d);
}

/* ------------------------------------------------------------------ */
/* recording results                                                   */

static void
record(struct delivery *d, size_t i, int code, bool remote_reply, const char *remote,
    const char *relay, const char *text, bool dsn_offered)
{
	struct rstate *r = &d->st.r[i];
	const struct rcpt *rc = &d->env.rcpts[i];
	bool null_sender = d->env.sender[0] == '\0';
	const char *event;

	r->attempts++;
	r->last = time(NULL);
	moat_strlcpy(r->reply, text, sizeof(r->reply));
	clean_text(r->reply);
	moat_strlcpy(r->remote, remote_reply && remote ? remote : "", sizeof(r->remote));
	dsn_status_of_reply(r->reply, r->dstatus, sizeof(r->dstatus));
	if (r->dstatus[0] == '\0' && code >= 200 && code <= 599) {
		/* local reasons start with an enhanced code only: "4.4.1 connect to ..." */
		char tmp[64];
		snprintf(tmp, sizeof(tmp), "%d %.50s", code, r->reply);
		dsn_status_of_reply(tmp, r->dstatus, sizeof(r->dstatus));
	}
	if (r->dstatus[0] == '\0')
		snprintf(r->dstatus, sizeof(r->dstatus), "%d.0.0", code / 100 == 2 ? 2 :
		    code / 100 == 5 ? 5 : 4);
	d->any_attempt = true;
	if (code / 100 == 2) {
		r->status = RS_DELIVERED;
		event = "delivered";
		if ((rc->notify & DSN_NOTIFY_SUCCESS) && !null_sender) {
			if (strcmp(relay, "store") == 0)
				r->dsn = RD_DELIVERED;
			else if (!dsn_offered)
				r->dsn = RD_RELAYED;
		}
	} else if (code / 100 == 5) {
		r->status = RS_FAILED;
		event = "bounced";
		if (!null_sender && !(rc->notify & DSN_NOTIFY_NEVER) &&
		    (rc->notify == 0 || (rc->notify & DSN_NOTIFY_FAILURE)))
			r->dsn = RD_FAILED;
	} else
		event = "deferred";
	log_notice("qid=%s event=%s to=<%s> relay=%s delay=%.2f attempts=%d reply=\"%s\"",
	    d->env.qid, event, esc(rc->addr), relay, delay_of(&d->env), r->attempts, esc(r->reply));
	journal_delivery(d->env.qid, event, rc->addr, relay, r->attempts, r->reply);
}

static void delivery_complete(struct delivery *);

static void
group_done(struct delivery *d)
{
	if (--d->pending == 0)
		delivery_complete(d);
}

static void
relay_done(struct relay_txn *t)
{
	struct delivery *d = t->arg;

	for (size_t k = 0; k < t->nrcpt; k++) {
		const struct relay_result *res = &t->res[k];
		record(d, t->rcpt[k], res->code, res->remote, t->remote_mta, t->dest->name,
		    res->text, t->dsn_offered);
	}
	group_done(d);
}

static void
local_work(void *arg)
{
	struct lgroup *g = arg;
	struct delivery *d = g->d;
	struct buf pre = BUF_INIT;

	for (size_t k = 0; k < g->n; k++) {
		const char *addr = d->env.rcpts[g->idx[k]].addr;
		buf_reset(&pre);
		buf_printf(&pre, "Return-Path: <%s>\r\nDelivered-To: %s\r\n", g->sender, addr);
		if (d->env.add_headers)
			buf_add(&pre, d->env.add_headers, d->env.add_headers_len);
		g->res[k] = local_deliver(d->q->conf, addr, d->fd, d->env.data_off, d->env.data_len,
		    pre.data, &g->reply[k]);
	}
	buf_free(&pre);
}

static int
reply_code(const char *s, int dflt)
{
	if (s && s[0] >= '2' && s[0] <= '5' && s[1] >= '0' && s[1] <= '9' && s[2] >= '0' &&
	    s[2] <= '9')
		return (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
	return dflt;
}

static void
local_done(void *arg)
{
	struct lgroup *g = arg;
	struct delivery *d = g->d;

	for (size_t k = 0; k < g->n; k++) {
		const char *rep = g->reply[k].len ? g->reply[k].data : NULL;
		int code;
		char text[RELAY_REPLY_MAX];
		switch (g->res[k]) {
		case LOCAL_OK:
			code = 250;
			moat_strlcpy(text, "250 2.0.0 delivered to mailbox", sizeof(text));
			break;
		case LOCAL_PERMFAIL:
			code = reply_code(rep, 550);
			if (code / 100 != 5)
				code = 550;
			snprintf(text, sizeof(text), "%s", rep ? rep : "550 5.0.0 local delivery failed");
			break;
		default:
			code = reply_code(rep, 451);
			if (code / 100 != 4)
				code = 451;
			snprintf(text, sizeof(text), "%s", rep ? rep : "451 4.3.0 local delivery failed");
			break;
		}
		record(d, g->idx[k], code, false, NULL, "store", text, false);
	}
	group_done(d);
}

/* ------------------------------------------------------------------ */
/* dispatch                                                            */

static void
dispatch(struct delivery *d)
{
	struct queue *q = d->q;
	const struct moat_conf *c = q->conf;
	size_t n = d->env.nrcpts;
	const struct domain_conf **route = xcalloc(n ? n : 1, sizeof(*route));
	bool *taken = xcalloc(n ? n : 1, sizeof(bool));

	d->pending = 1;         /* held while dispatching */
	for (size_t i = 0; i < n; i++) {
		if (d->st.r[i].status != RS_PENDING) {
			taken[i] = true;
			continue;
		}
		route[i] = conf_route(c, rcpt_domain(d->env.rcpts[i].addr));
		if (route[i] == NULL) {
			record(d, i, 451, false, NULL, "none",
			    "451 4.3.5 no route: the recipient's domain is not configured", false);
			taken[i] = true;
		} else if (route[i]->deliver == DELIVER_STORE) {
			if (d->lg.idx == NULL)
				d->lg.idx = xcalloc(n, sizeof(size_t));
			d->lg.idx[d->lg.n++] = i;
			taken[i] = true;
		}
	}
	/* relay groups: one transaction per destination */
	d->txns = xcalloc(n ? n : 1, sizeof(*d->txns));
	d->txn_idx = xcalloc(n ? n : 1, sizeof(*d->txn_idx));
	for (size_t i = 0; i < n; i++) {
		if (taken[i])
			continue;
		size_t *idx = xcalloc(n, sizeof(size_t));
		size_t k = 0;
		for (size_t j = i; j < n; j++)
			if (!taken[j] && !strcmp(route[j]->relay.name, route[i]->relay.name)) {
				idx[k++] = j;
				taken[j] = true;
			}
		struct relay_txn *t = &d->txns[d->ntxns];
		d->txn_idx[d->ntxns++] = idx;
		t->dest = &route[i]->relay;
		t->qid = d->env.qid;
		t->env = &d->env;
		t->fd = d->fd;
		t->rcpt = idx;
		t->nrcpt = k;
		t->done = relay_done;
		t->arg = d;
	}
	free(route);
	free(taken);
	if (d->lg.n > 0) {
		d->lg.d = d;
		d->lg.res = xcalloc(d->lg.n, sizeof(*d->lg.res));
		d->lg.reply = xcalloc(d->lg.n, sizeof(struct buf));
		d->lg.sender = xstrdup(d->env.sender);
		d->pending++;
		pool_submit(q->pool, local_work, local_done, &d->lg);
	}
	for (size_t i = 0; i < d->ntxns; i++) {
		d->pending++;
		relay_submit(q->relay, &d->txns[i]);
	}
	group_done(d);
}

/* ------------------------------------------------------------------ */
/* finishing an attempt                                                */

/* BLOCKING: read what the DSN attaches of the original */
static void
dsn_original(struct delivery *d, struct buf *out, size_t *total)
{
	bool full = d->env.ret != DSN_RET_HDRS && d->env.data_len <= DSN_MAX_ORIGINAL;
	size_t want = full ? (size_t)d->env.data_len :
	    (size_t)MIN(d->env.data_len, (off_t)DSN_MAX_HEADERS + 4);
	off_t off = 0;

	*total = (size_t)d->env.data_len;
	buf_reserve(out, want);
	while ((size_t)off < want) {
		ssize_t n = pread(d->fd, out->data + off, want - (size_t)off, d->env.data_off + off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		off += n;
	}
	out->len = (size_t)off;
	out->data[out->len] = '\0';
}

/* BLOCKING: build and inject one DSN for every recipient owed one */
static int
send_dsn(struct delivery *d)
{
	struct queue *q = d->q;
	struct dsn_rcpt *dr = xcalloc(d->st.n, sizeof(*dr));
	struct buf orig = BUF_INIT, msg = BUF_INIT;
	size_t n = 0, total = 0;
	char seed[64];
	int rc = -1;

	for (size_t i = 0; i < d->st.n; i++) {
		struct rstate *r = &d->st.r[i];
		if (r->dsn == RD_NONE || r->dsn == RD_SENT)
			continue;
		dr[n].addr = d->env.rcpts[i].addr;
		dr[n].orcpt = d->env.rcpts[i].orcpt;
		dr[n].action = r->dsn == RD_FAILED ? DSN_ACT_FAILED :
		    r->dsn == RD_DELIVERED ? DSN_ACT_DELIVERED : DSN_ACT_RELAYED;
		dr[n].status = r->dstatus[0] ? r->dstatus : NULL;
		dr[n].remote_mta = r->remote[0] ? r->remote : NULL;
		if (r->remote[0])
			dr[n].reply = r->reply;
		else
			dr[n].diag = r->reply;
		dr[n].last_attempt = r->last;
		n++;
	}
	if (n == 0) {
		free(dr);
		return 0;
	}
	dsn_original(d, &orig, &total);
	snprintf(seed, sizeof(seed), "%s.%llu", d->env.qid, (unsigned long long)wall_us());
	struct dsn_report rep = {
		.hostname = q->conf->hostname, .qid = d->env.qid, .sender = d->env.sender,
		.envid = d->env.envid, .ret = d->env.ret, .arrival = d->env.arrival,
		.now = time(NULL), .boundary_seed = seed, .rcpts = dr, .nrcpts = n,
	};
	if (dsn_build(&rep, orig.data, orig.len, total, &msg) == 0) {
		struct envelope e;
		memset(&e, 0, sizeof(e));
		e.sender = (char *)"";
		e.arrival = time(NULL);
		e.body = BODY_8BITMIME;
		e.smtputf8 = d->env.smtputf8;
		e.proto = (char *)"local";
		envelope_add_rcpt(&e, d->env.sender, NULL, DSN_NOTIFY_NEVER);
		if (spool_inject(&e, msg.data, msg.len, &d->dsn_err) == 0) {
			moat_strlcpy(d->dsn_qid, e.qid, sizeof(d->dsn_qid));
			d->dsn_n = n;
			for (size_t i = 0; i < d->st.n; i++)
				if (d->st.r[i].dsn != RD_NONE && d->st.r[i].dsn != RD_SENT)
					d->st.r[i].dsn = RD_SENT;
			rc = 0;
		}
		/* only the rcpts array is ours: sender/proto are literals */
		e.sender = NULL;
		e.proto = NULL;
		envelope_clear(&e);
	} else
		d->dsn_err = xstrdup("cannot build the DSN");
	buf_free(&orig);
	buf_free(&msg);
	free(dr);
	return rc;
}

static bool
dsn_owed(const struct qstate *st)
{
	for (size_t i = 0; i < st->n; i++)
		if (st->r[i].dsn != RD_NONE && st->r[i].dsn != RD_SENT)
			return true;
	return false;
}

static void
finish_work(void *arg)
{
	struct delivery *d = arg;
	struct queue *q = d->q;
	char path[PATH_MAX];

	/* 1. the recipients' outcome is durable before anything depends on it */
	if (!d->all_final || dsn_owed(&d->st))
		state_write(q, d->env.qid, &d->st);
	/* 2. the DSN */
	if (dsn_owed(&d->st)) {
		if (send_dsn(d) == 0 && !d->all_final)
			state_write(q, d->env.qid, &d->st);
	}
	/* 3. done with the message */
	if (d->all_final && !dsn_owed(&d->st)) {
		if (spool_remove(d->env.qid) == 0 || errno == ENOENT) {
			state_path(q, d->env.qid, path, sizeof(path));
			unlink(path);
			d->removed = true;
		} else
			log_warn("qid=%s event=remove-error", d->env.qid);
	}
	close(d->fd);   /* releases the flock */
	d->fd = -1;
}

static void
finish_done(void *arg)
{
	struct delivery *d = arg;
	struct queue *q = d->q;
	struct qmsg *m = d->m;

	if (q->freeing) {
		free(m);
		delivery_free(d);
		q->nactive--;
		late_callback(q);
		return;
	}
	if (d->dsn_qid[0])
		log_notice("qid=%s event=dsn-sent dsn_qid=%s to=<%s> rcpts=%zu", d->env.qid,
		    d->dsn_qid, esc(d->env.sender), d->dsn_n);
	if (d->dsn_qid[0])
		journal_dsn(d->env.qid, d->dsn_qid, d->env.sender);
	if (d->dsn_err)
		log_warnx("qid=%s event=dsn-error reason=\"%s\"", d->env.qid, esc(d->dsn_err));
	m->active = false;
	q->nactive--;
	if (d->removed) {
		log_notice("qid=%s event=removed", d->env.qid);
		journal_removed(d->env.qid);
		qforget(q, m);
	} else {
		m->next = d->st.next;
		if (d->all_final)       /* only a DSN is owed: try again soon */
			m->next = time(NULL) + (time_t)q->conf->queue_retry_min;
		qlist_set(q, m, QL_DEFERRED);
	}
	if (d->dsn_qid[0] && !q->freeing)
		queue_submit(q, d->dsn_qid);
	delivery_free(d);
	schedule(q);
	check_drained(q);
}

static void
delivery_complete(struct delivery *d)
{
	struct queue *q = d->q;
	time_t now = time(NULL);
	bool null_sender = d->env.sender[0] == '\0';
	long long life = null_sender ? q->conf->bounce_lifetime : q->conf->queue_lifetime;
	bool expired = now - d->env.arrival >= life;

	if (d->any_attempt)
		d->st.attempts++;
	d->all_final = true;
	for (size_t i = 0; i < d->st.n; i++) {
		struct rstate *r = &d->st.r[i];
		const struct rcpt *rc = &d->env.rcpts[i];
		if (r->status != RS_PENDING)
			continue;
		if (expired && d->any_attempt) {
			r->status = RS_FAILED;
			moat_strlcpy(r->dstatus, "4.4.7", sizeof(r->dstatus));
			if (!null_sender && !(rc->notify & DSN_NOTIFY_NEVER) &&
			    (rc->notify == 0 || (rc->notify & DSN_NOTIFY_FAILURE)))
				r->dsn = RD_FAILED;
			log_notice("qid=%s event=expired to=<%s> delay=%.2f attempts=%d status=4.4.7 reply=\"%s\"",
			    d->env.qid, esc(rc->addr), delay_of(&d->env), r->attempts, esc(r->reply));
			journal_delivery(d->env.qid, "expired", rc->addr, "-", r->attempts, r->reply);
			continue;
		}
		d->all_final = false;
	}
	if (!d->all_final) {
		d->st.next = now + backoff(q, d->st.attempts > 0 ? d->st.attempts : 1);
		/* do not retry past the lifetime by much: one last try at expiry */
		if (d->st.next > d->env.arrival + life && now < d->env.arrival + life)
			d->st.next = d->env.arrival + life;
	}
	if (q->freeing) {
		/* shutting down: the pool may not run new jobs any more */
		finish_work(d);
		finish_done(d);
		return;
	}
	pool_submit(q->pool, finish_work, finish_done, d);
}

/* ------------------------------------------------------------------ */
/* activation                                                          */

static void
open_work(void *arg)
{
	struct delivery *d = arg;
	struct queue *q = d->q;
	char path[PATH_MAX];

	spool_queue_path(d->m->qid, path, sizeof(path));
	d->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (d->fd < 0) {
		d->open = errno == ENOENT ? OPEN_GONE : OPEN_BAD;
		if (d->open == OPEN_BAD)
			d->err = xstrdup(strerror(errno));
		return;
	}
	if (flock(d->fd, LOCK_EX | LOCK_NB) < 0) {
		d->open = OPEN_LOCKED;
		close(d->fd);
		d->fd = -1;
		return;
	}
	/* it may have been delivered and removed while we waited for the lock */
	struct stat st;
	if (fstat(d->fd, &st) == 0 && st.st_nlink == 0) {
		d->open = OPEN_GONE;
		return;
	}
	if (spool_read_envelope_fd(d->fd, &d->env, &d->err) < 0) {
		d->open = OPEN_BAD;
		return;
	}
	state_init(&d->st, d->env.nrcpts);
	state_path(q, d->m->qid, path, sizeof(path));
	if (state_read(path, &d->st) < 0)
		log_warnx("qid=%s event=state-unreadable path=%s: starting afresh", d->m->qid, path);
	if (!d->force && d->st.next > time(NULL) && !dsn_owed(&d->st)) {
		d->open = OPEN_NOTDUE;
		return;
	}
	d->open = OPEN_OK;
}

static void
open_done(void *arg)
{
	struct delivery *d = arg;
	struct queue *q = d->q;
	struct qmsg *m = d->m;

	if (q->freeing) {
		free(m);
		delivery_free(d);
		q->nactive--;
		late_callback(q);
		return;
	}
	switch (d->open) {
	case OPEN_OK:
		log_debug("qid=%s event=active rcpts=%zu size=%lld", m->qid, d->env.nrcpts,
		    (long long)d->env.data_len);
		dispatch(d);
		return;
	case OPEN_GONE:
		break;
	case OPEN_LOCKED:
		log_debug("qid=%s event=locked: skipped", m->qid);
		m->next = time(NULL) + MIN(QUEUE_LOCKED_RETRY, q->conf->queue_retry_min);
		break;
	case OPEN_NOTDUE:
		m->next = d->st.next;
		break;
	case OPEN_BAD:
		log_warnx("qid=%s event=unreadable reason=\"%s\"", m->qid, esc(d->err));
		m->bad = true;
		break;
	}
	m->active = false;
	q->nactive--;
	if (d->open == OPEN_GONE)
		qforget(q, m);
	else if (!m->bad)
		qlist_set(q, m, QL_DEFERRED);
	delivery_free(d);
	schedule(q);
	check_drained(q);
}

static void
activate(struct queue *q, struct qmsg *m)
{
	struct delivery *d = xcalloc(1, sizeof(*d));

	qlist_set(q, m, QL_NONE);
	m->active = true;
	q->nactive++;
	d->q = q;
	d->m = m;
	d->fd = -1;
	d->force = m->force;
	m->force = false;
	pool_submit(q->pool, open_work, open_done, d);
}

static void
schedule(struct queue *q)
{
	struct qmsg *m;

	if (q->draining || q->freeing)
		return;
	while (q->nactive < QUEUE_MAX_ACTIVE && (m = TAILQ_FIRST(&q->ready)) != NULL)
		activate(q, m);
}

/* ------------------------------------------------------------------ */
/* scanning and the clock                                              */

struct scan {
	struct queue *q;
	char  (*qids)[QID_SIZE];
	size_t n, cap;
};

static void
scan_cb(const char *qid, void *arg)
{
	struct scan *s = arg;

	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 256;
		s->qids = xreallocarray(s->qids, s->cap, QID_SIZE);
	}
	moat_strlcpy(s->qids[s->n++], qid, QID_SIZE);
}

static void
scan_work(void *arg)
{
	struct scan *s = arg;

	if (spool_list(scan_cb, s) < 0)
		log_warn("queue: cannot list the spool");
}

static void
scan_done(void *arg)
{
	struct scan *s = arg;
	struct queue *q = s->q;
	size_t added = 0;

	q->scanning = false;
	if (q->freeing) {
		free(s->qids);
		free(s);
		late_callback(q);
		return;
	}
	{
		for (size_t i = 0; i < s->n; i++) {
			if (qfind(q, s->qids[i]))
				continue;
			struct qmsg *m = qadd(q, s->qids[i]);
			qlist_set(q, m, QL_READY);
			added++;
		}
		if (added)
			log_info("queue: scan found %zu new message(s), %zu known", added, q->nknown);
		schedule(q);
	}
	free(s->qids);
	free(s);
	check_drained(q);
}

static void
scan_start(struct queue *q)
{
	struct scan *s;

	if (q->scanning || q->draining || q->freeing)
		return;
	s = xcalloc(1, sizeof(*s));
	s->q = q;
	q->scanning = true;
	q->last_scan = time(NULL);
	pool_submit(q->pool, scan_work, scan_done, s);
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct queue *q = arg;
	time_t now = time(NULL);
	struct qmsg *m, *next;

	for (m = TAILQ_FIRST(&q->deferred); m != NULL; m = next) {
		next = TAILQ_NEXT(m, entry);
		if (m->next <= now)
			qlist_set(q, m, QL_READY);
	}
	if (now - q->last_scan >= q->conf->queue_scan_interval)
		scan_start(q);
	schedule(q);
}

/* ------------------------------------------------------------------ */
/* interface                                                           */

struct queue *
queue_new(struct event_base *base, struct pool *pool, const struct moat_conf *conf)
{
	struct queue *q = xcalloc(1, sizeof(*q));

	q->base = base;
	q->pool = pool;
	q->conf = conf;
	q->relay = relay_new(base, pool, conf);
	TAILQ_INIT(&q->ready);
	TAILQ_INIT(&q->deferred);
	conf_path(conf, "spool/state", q->state_dir, sizeof(q->state_dir));
	q->tick = event_new(base, -1, EV_PERSIST, tick_cb, q);
	return q;
}

void
queue_start(struct queue *q)
{
	struct timeval tv = { 1, 0 };

	event_add(q->tick, &tv);
	scan_start(q);
}

void
queue_submit(struct queue *q, const char *qid)
{
	struct qmsg *m;

	if (q->freeing || !spool_valid_qid(qid))
		return;
	if ((m = qfind(q, qid)) == NULL)
		m = qadd(q, qid);
	else if (m->active || m->list == QL_READY)
		return;
	m->force = true;
	m->bad = false;
	qlist_set(q, m, QL_READY);
	schedule(q);
}

void
queue_flush(struct queue *q)
{
	struct qmsg *m;
	size_t n = 0;

	relay_clear_dead(q->relay);
	while ((m = TAILQ_FIRST(&q->deferred)) != NULL) {
		m->force = true;
		qlist_set(q, m, QL_READY);
		n++;
	}
	log_notice("queue: flush: %zu deferred message(s) made due", n);
	scan_start(q);
	schedule(q);
}

static void
check_drained(struct queue *q)
{
	void (*cb)(void *) = q->drain_cb;

	if (!q->draining || cb == NULL || q->nactive > 0 || q->scanning)
		return;
	q->drain_cb = NULL;
	relay_close_idle(q->relay);
	cb(q->drain_arg);
}

void
queue_drain(struct queue *q, void (*cb)(void *), void *arg)
{
	q->draining = true;
	q->drain_cb = cb;
	q->drain_arg = arg;
	event_del(q->tick);
	relay_close_idle(q->relay);
	check_drained(q);
}

/* a pool callback arriving after queue_free(): the last one frees q */
static bool
late_callback(struct queue *q)
{
	if (q->nactive == 0 && !q->scanning && !q->in_free) {
		free(q);
		return true;
	}
	return false;
}

void
queue_free(struct queue *q)
{
	if (q == NULL)
		return;
	q->freeing = true;
	q->in_free = true;
	/* forget the idle messages first; active ones are freed by their callback */
	for (size_t i = 0; i < QUEUE_HASH_SIZE; i++) {
		struct qmsg *m, *next;
		for (m = q->hash[i]; m; m = next) {
			next = m->hnext;
			if (!m->active)
				free(m);
		}
		q->hash[i] = NULL;
	}
	TAILQ_INIT(&q->ready);
	TAILQ_INIT(&q->deferred);
	/* transactions still out complete now (421): their finish jobs write
	 * the state, and their callbacks come back through late_callback() */
	relay_free(q->relay);
	q->relay = NULL;
	event_free(q->tick);
	q->tick = NULL;
	q->in_free = false;
	late_callback(q);
}

void
queue_get_stats(const struct queue *q, struct queue_stats *s)
{
	long long oldest = 0;

	for (size_t i = 0; i < QUEUE_HASH_SIZE; i++)
		for (const struct qmsg *m = q->hash[i]; m; m = m->hnext) {
			/* the first 13 hex digits of a queue id are its arrival in microseconds */
			char hex[14];
			memcpy(hex, m->qid, 13);
			hex[13] = '\0';
			long long us = strtoll(hex, NULL, 16);
			long long t = us / 1000000;
			if (t > 0 && (oldest == 0 || t < oldest))
				oldest = t;
		}
	s->messages = q->nknown;
	s->active = q->nactive;
	s->deferred = q->ndeferred;
	s->oldest = oldest;
}
