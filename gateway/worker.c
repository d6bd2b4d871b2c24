/*
 * worker.c - the worker process (unprivileged): one libevent loop for the
 * SMTP sessions, the queue manager and the control socket, plus the thread
 * pool for blocking work.  SIGTERM drains: listeners close, idle sessions
 * get 421, transactions in flight finish, deliveries in flight finish,
 * then the process exits (at most drain-timeout later).
 */
#include "config.h"
#include "worker.h"
#include "conf.h"
#include "control.h"
#include "log.h"
#include "pool.h"
#include "imap.h"
#include "pop3.h"
#include "queue.h"
#include "buf.h"
#include "engine.h"
#include "lists.h"
#include "ops.h"
#include "qstore.h"
#include "mailbox.h"
#include "mime.h"
#include "ratelimit.h"
#include "smtp_session.h"
#include "spool.h"
#include "users.h"
#include "util.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#define DRAIN_TIMEOUT 30

struct worker *W;
static struct worker wk;
static struct event *ev_term, *ev_int, *ev_hup, *ev_usr2, *ev_drain_timer;
static bool reloading;
static bool sessions_done, queue_done;
static uint64_t users_retry_at;

struct users *
worker_users(void)
{
	char path[PATH_MAX];
	char *err = NULL;

	if (wk.users)
		return wk.users;
	if (now_ms() < users_retry_at)
		return NULL;
	conf_path(wk.conf, "moat.db", path, sizeof(path));
	wk.users = users_open(path, true, &err);
	if (wk.users == NULL) {
		log_warnx("users: cannot open %s: %s", path, err ? err : "?");
		free(err);
		users_retry_at = now_ms() + 1000;
	}
	return wk.users;
}

/* ---- quarantine maintenance: retention and digests (a pool job per tick) ---- */

static struct event *ev_maint;

struct maint {
	long    purged;
	char  **qids;                   /* digests injected into the queue */
	size_t  nqids;
	size_t  nrcpts;
	char   *err;
};

struct rcpt_set {
	char  **v;
	size_t  n;
};

static int
collect_rcpts(const struct qstore_entry *e, void *arg)
{
	struct rcpt_set *rs = arg;
	for (size_t i = 0; i < e->nrcpts && rs->n < 100000; i++) {
		if (e->rcpt_states && strcmp(e->rcpt_states[i], "held") != 0)
			continue;
		size_t k;
		for (k = 0; k < rs->n; k++)
			if (!ascii_strcasecmp(rs->v[k], e->rcpts[i]))
				break;
		if (k == rs->n) {
			rs->v = xreallocarray(rs->v, rs->n + 1, sizeof(char *));
			rs->v[rs->n++] = xstrdup(e->rcpts[i]);
		}
	}
	return 0;
}

static void
maint_work(void *arg)
{
	struct maint *mt = arg;
	const struct moat_conf *c = wk.conf;
	char *err = NULL, stamp[PATH_MAX];
	struct qstore *qs = qstore_open(c->state_dir, &err);

	if (qs == NULL) {
		mt->err = err ? err : xstrdup("cannot open the quarantine");
		return;
	}
	mt->purged = qstore_purge(qs, c->quarantine_retention, c->quarantine_max_size);
	if (c->quarantine_digest > 0) {
		time_t now = time(NULL), last = 0;
		conf_path(c, "quarantine/digest.stamp", stamp, sizeof(stamp));
		FILE *f = fopen(stamp, "r");
		if (f) {
			long long v;
			if (fscanf(f, "%lld", &v) == 1)
				last = (time_t)v;
			fclose(f);
		}
		if (last == 0)
			last = now - (time_t)c->quarantine_digest;
		if (now - last >= (time_t)c->quarantine_digest) {
			struct rcpt_set rs = { NULL, 0 };
			struct qfilter qf;
			memset(&qf, 0, sizeof(qf));
			qf.since = last;
			qstore_list(qs, &qf, collect_rcpts, &rs);
			for (size_t i = 0; i < rs.n; i++) {
				struct buf msg = BUF_INIT;
				if (qstore_digest_build(qs, rs.v[i], last, c->postmaster, &msg) > 0) {
					struct envelope env;
					char *ierr = NULL;
					memset(&env, 0, sizeof(env));
					env.sender = xstrdup("");       /* a notice: never bounced */
					env.proto = xstrdup("local");
					envelope_add_rcpt(&env, rs.v[i], NULL, 0);
					if (spool_inject(&env, msg.data, msg.len, &ierr) == 0) {
						mt->qids = xreallocarray(mt->qids, mt->nqids + 1, sizeof(char *));
						mt->qids[mt->nqids++] = xstrdup(env.qid);
					} else {
						log_warnx("quarantine event=digest-error rcpt=<%s> error=\"%s\"",
						    esc(rs.v[i]), esc(ierr));
						free(ierr);
					}
					envelope_clear(&env);
				}
				buf_free(&msg);
				free(rs.v[i]);
			}
			mt->nrcpts = rs.n;
			free(rs.v);
			if ((f = fopen(stamp, "w")) != NULL) {
				fprintf(f, "%lld\n", (long long)now);
				fclose(f);
			}
		}
	}
	qstore_close(&qs);
}

static void maint_arm(void);

static void
maint_done(void *arg)
{
	struct maint *mt = arg;

	if (mt->err)
		log_warnx("quarantine event=maintenance-error error=\"%s\"", esc(mt->err));
	if (mt->purged > 0)
		log_info("quarantine event=purged messages=%ld retention=%llds max-size=%lld",
		    mt->purged, wk.conf->quarantine_retention, wk.conf->quarantine_max_size);
	for (size_t i = 0; i < mt->nqids; i++) {
		log_info("quarantine event=digest-sent qid=%s", mt->qids[i]);
		if (wk.queue && !wk.draining)
			queue_submit(wk.queue, mt->qids[i]);
		free(mt->qids[i]);
	}
	free(mt->qids);
	free(mt->err);
	free(mt);
	if (!wk.draining)
		maint_arm();
}

static void
on_maint(evutil_socket_t fd, short ev, void *arg)
{
	pool_submit(wk.pool, maint_work, maint_done, xcalloc(1, sizeof(struct maint)));
}

static void
maint_arm(void)
{
	struct timeval tv = { (time_t)wk.conf->quarantine_maintenance, 0 };
	if (ev_maint == NULL) {
		/* the first run comes soon after start: opening the store also
		 * repairs it after a crash (qstore_check) */
		ev_maint = evtimer_new(wk.base, on_maint, NULL);
		tv.tv_sec = MIN(tv.tv_sec, 60);
	}
	evtimer_add(ev_maint, &tv);
}

/* a changed list file is parsed in the pool (lists may be large), then swapped in */
struct lists_job {
	struct lists *l;
	char   *err;
};

static bool lists_loading;

static void
lists_work(void *arg)
{
	struct lists_job *j = arg;
	j->l = lists_load(wk.conf->lists_dir, &j->err);
}

static void
lists_done(void *arg)
{
	struct lists_job *j = arg;

	lists_loading = false;
	if (j->l == NULL) {
		log_warnx("lists: %s (keeping the previous lists)", j->err);
		free(j->err);
	} else {
		log_info("lists event=reloaded dir=%s", wk.conf->lists_dir);
		lists_unref(wk.lists);  /* jobs in flight hold their own reference */
		wk.lists = j->l;
	}
	free(j);
}

struct lists *
worker_lists(void)
{
	return wk.lists;
}

/* every 2 s: a changed list file is re-read in the background */
static struct event *ev_lists;

static bool autolearning;

static void
autolearn_work(void *arg)
{
	engine_autolearn_flush(wk.engine);
}

static void
autolearn_done(void *arg)
{
	autolearning = false;
}

static void
on_lists_timer(evutil_socket_t fd, short ev, void *arg)
{
	/* the same 2 s tick learns what auto-learn queued, in one batch */
	if (!autolearning && engine_autolearn_pending(wk.engine)) {
		autolearning = true;
		pool_submit(wk.pool, autolearn_work, autolearn_done, NULL);
	}
	if (wk.lists == NULL || lists_loading || !lists_changed(wk.lists))
		return;
	lists_loading = true;
	pool_submit(wk.pool, lists_work, lists_done, xcalloc(1, sizeof(struct lists_job)));
}

static void
maybe_exit(void)
{
	if (sessions_done && queue_done) {
		log_info("worker event=drained");
		event_base_loopexit(wk.base, NULL);
	}
}

static void on_queue_done(void *);

static void
on_sessions_done(void *arg)
{
	sessions_done = true;
	if (reloading && !wk.draining) {
		/* reload: the sessions are gone, now finish the deliveries */
		wk.draining = true;
		queue_drain(wk.queue, on_queue_done, NULL);
		return;
	}
	maybe_exit();
}

static void
on_queue_done(void *arg)
{
	queue_done = true;
	maybe_exit();
}

static void
on_drain_timeout(evutil_socket_t fd, short ev, void *arg)
{
	log_warnx("worker event=drain-timeout sessions=%zu (closing them)", smtp_session_count());
	event_base_loopexit(wk.base, NULL);
}

static void
on_term(evutil_socket_t sig, short ev, void *arg)
{
	struct timeval tv = { DRAIN_TIMEOUT, 0 };

	if (wk.draining)
		return;
	log_info("worker event=draining signal=%d sessions=%zu", (int)sig, smtp_session_count());
	wk.draining = true;
	control_stop();
	ops_drain();
	if (ev_drain_timer)
		event_free(ev_drain_timer);
	ev_drain_timer = evtimer_new(wk.base, on_drain_timeout, NULL);
	evtimer_add(ev_drain_timer, &tv);
	sessions_done = false;
	smtp_drain(true, on_sessions_done, NULL);
	queue_drain(wk.queue, on_queue_done, NULL);
}

/*
 * SIGUSR2 from the master: a new worker has taken over the listeners.
 * Stop accepting, let the sessions end by themselves (their own idle
 * timeouts apply; at most RELOAD_DRAIN_TIMEOUT), keep delivering meanwhile
 * (queue files are flock'ed, so the new worker never delivers the same
 * message), then drain the queue and exit.
 */
#define RELOAD_DRAIN_TIMEOUT 900
static void
on_usr2(evutil_socket_t sig, short ev, void *arg)
{
	struct timeval tv = { RELOAD_DRAIN_TIMEOUT, 0 };

	if (wk.draining || reloading)
		return;
	log_info("worker event=reload-drain sessions=%zu", smtp_session_count());
	reloading = true;
	control_stop();
	ops_drain();
	ev_drain_timer = evtimer_new(wk.base, on_drain_timeout, NULL);
	evtimer_add(ev_drain_timer, &tv);
	smtp_drain(false, on_sessions_done, NULL);
}

static void
on_hup(evutil_socket_t sig, short ev, void *arg)
{
	/* the master reloads by starting a new worker; nothing to do here */
}

int
worker_main(const struct moat_conf *c, struct tls_server *tls)
{
	char *err = NULL;

	memset(&wk, 0, sizeof(wk));
	wk.conf = c;
	wk.tls = tls;
	wk.started = time(NULL);
	W = &wk;
	signal(SIGPIPE, SIG_IGN);
	if ((wk.base = event_base_new()) == NULL)
		fatalx("worker: event_base_new failed");
	if (spool_init(c, &err) < 0)
		fatalx("worker: spool: %s", err);
	mime_init();            /* once, before any pool thread parses */
	wk.engine = engine_new(c, &err);
	if (wk.engine == NULL)
		fatalx("worker: %s", err);
	if (!engine_active(wk.engine)) {
		engine_free(wk.engine);
		wk.engine = NULL;
	}
	if (c->lists_dir) {
		wk.lists = lists_load(c->lists_dir, &err);
		if (wk.lists == NULL)
			fatalx("worker: %s", err);
	}
	wk.pool = pool_new(wk.base, c->threads);
	{
		/* lists re-read and auto-learn batches */
		struct timeval ltv = { 2, 0 };
		ev_lists = event_new(wk.base, -1, EV_PERSIST, on_lists_timer, NULL);
		evtimer_add(ev_lists, &ltv);
	}
	wk.rates = ratelimit_new(RL_SLIDING, 65536);
	struct rl_auth_conf ac;
	rl_auth_conf_default(&ac);
	ac.window = (unsigned)c->auth_failure_window;
	ac.refuse_after = (unsigned)c->auth_max_failures;
	ac.refuse_for = (unsigned)c->auth_block_time;
	wk.auth_throttle = rl_auth_new(&ac);
	mbox_throttle_use(wk.auth_throttle);        /* POP3 and IMAP share it */
	wk.queue = queue_new(wk.base, wk.pool, c);
	for (size_t i = 0; i < c->nlistens; i++) {
		const struct listen_conf *l = &c->listens[i];
		bool smtp = l->kind == LISTEN_SMTP || l->kind == LISTEN_SUBMISSION ||
		    l->kind == LISTEN_SMTPS;
		if (smtp && l->fd >= 0 && smtp_listen(l) < 0)
			fatalx("worker: cannot listen on %s", l->spec);
		if ((l->kind == LISTEN_POP3 || l->kind == LISTEN_POP3S) && l->fd >= 0 && pop3_listen(l) < 0)
			fatalx("worker: cannot listen on %s", l->spec);
		if ((l->kind == LISTEN_IMAP || l->kind == LISTEN_IMAPS) && l->fd >= 0 && imap_listen(l) < 0)
			fatalx("worker: cannot listen on %s", l->spec);
	}
	if (control_start() < 0)
		log_warnx("worker: no control socket; \"moat queue flush\" will not reach this worker");
	ev_term = evsignal_new(wk.base, SIGTERM, on_term, NULL);
	ev_int = evsignal_new(wk.base, SIGINT, on_term, NULL);
	ev_hup = evsignal_new(wk.base, SIGHUP, on_hup, NULL);
	ev_usr2 = evsignal_new(wk.base, SIGUSR2, on_usr2, NULL);
	event_add(ev_usr2, NULL);
	event_add(ev_term, NULL);
	event_add(ev_int, NULL);
	event_add(ev_hup, NULL);
	queue_start(wk.queue);
	maint_arm();
	ops_start();
	log_info("worker event=started pid=%d threads=%d", (int)getpid(), c->threads);

	event_base_dispatch(wk.base);

	queue_free(wk.queue);
	pool_free(wk.pool);
	ops_stop();
	ratelimit_free(wk.rates);
	if (wk.engine)
		engine_autolearn_flush(wk.engine);     /* what is still queued */
	engine_free(wk.engine);
	lists_unref(wk.lists);
	rl_auth_free(wk.auth_throttle);
	if (wk.users)
		users_close(wk.users);
	event_free(ev_term);
	event_free(ev_int);
	event_free(ev_hup);
	event_free(ev_usr2);
	if (ev_maint)
		event_free(ev_maint);
	if (ev_lists)
		event_free(ev_lists);
	if (ev_drain_timer)
		event_free(ev_drain_timer);
	log_info("worker event=exit pid=%d", (int)getpid());
	return 0;
}
