/*
 * alerts.c - threshold alerts (see alerts.h).
 * Runs in: the worker, on the event loop; the alert mail is written to the
 * spool in a pool job, the webhook is an evhttp client request.
 */
#include "config.h"
#include "alerts.h"
#include "buf.h"
#include "conf.h"
#include "journal.h"
#include "log.h"
#include "metrics.h"
#include "ops.h"
#include "pool.h"
#include "queue.h"
#include "spool.h"
#include "util.h"
#include "worker.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

enum alert_kind { A_QUEUE_SIZE, A_QUEUE_AGE, A_DEFERRAL_RATE, A_DISK_FREE, A_AV_AGE,
    A_WORKER_RESTARTS, A_N };

static const char *names[A_N] = { "queue-size", "queue-age", "deferral-rate", "disk-free",
    "av-age", "worker-restarts" };

struct alert {
	bool    firing;
	int     clear_checks;           /* consecutive clear checks while firing */
	time_t  since;
};

static struct alert alerts[A_N];
static struct event *ev_check;

/* what changed at this check: notified together (a storm is one notice) */
struct change {
	enum alert_kind k;
	double  value, threshold;
	char    text[300];
};
static struct change raised[A_N], cleared[A_N];
static size_t nraised, ncleared;

/* delivery counters at each of the last WINDOW checks: the deferral rate window */
#define WINDOW 10
static struct { double deferred, total; } snaps[WINDOW];
static size_t nsnaps;

static double
total_attempts(void)
{
	return metric_sum(M_DELIVERY, NULL, "delivered") + metric_sum(M_DELIVERY, NULL, "deferred") +
	    metric_sum(M_DELIVERY, NULL, "bounced") + metric_sum(M_DELIVERY, NULL, "expired");
}

/* ---- notifications ---- */

struct mail_job {
	char   *text;
	char    qid[QID_SIZE];
	char   *err;
	bool    ok;
};

/* BLOCKING (pool thread) */
static void
mail_work(void *arg)
{
	struct mail_job *j = arg;
	struct envelope env;

	memset(&env, 0, sizeof(env));
	env.sender = xstrdup("");               /* a notice: never bounced */
	env.proto = xstrdup("local");
	envelope_add_rcpt(&env, W->conf->postmaster, NULL, 0);
	if (spool_inject(&env, j->text, strlen(j->text), &j->err) == 0) {
		j->ok = true;
		moat_strlcpy(j->qid, env.qid, sizeof(j->qid));
	}
	envelope_clear(&env);
}

static void
mail_done(void *arg)
{
	struct mail_job *j = arg;

	if (j->ok) {
		log_info("qid=%s event=alert-mail to=<%s>", j->qid, esc(W->conf->postmaster));
		if (W->queue && !W->draining)
			queue_submit(W->queue, j->qid);
	} else
		log_warnx("alert event=mail-error error=\"%s\"", esc(j->err ? j->err : "?"));
	free(j->text);
	free(j->err);
	free(j);
}

static void
names_of(const struct change *ch, size_t n, struct buf *b)
{
	for (size_t i = 0; i < n; i++)
		buf_printf(b, "%s%s", i ? ", " : "", names[ch[i].k]);
}

static void
send_mail(bool firing, const struct change *ch, size_t n)
{
	const struct moat_conf *c = W->conf;
	struct buf b = BUF_INIT, nm = BUF_INIT;
	char date[64], id[32];
	time_t now = time(NULL);
	struct tm tm;

	localtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
	spool_new_qid(id);
	names_of(ch, n, &nm);
	buf_printf(&b, "From: moat <MAILER-DAEMON@%s>\r\nTo: <%s>\r\n"
	    "Subject: [moat] %s %s on %s%s%.200s\r\nDate: %s\r\nMessage-ID: <alert.%s@%s>\r\n"
	    "Auto-Submitted: auto-generated\r\nX-Moat-Alert: %s %s\r\n"
	    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
	    c->hostname, c->postmaster, firing ? "ALERT" : "RECOVERED", nm.data, c->hostname,
	    n == 1 ? ": " : "", n == 1 ? ch[0].text : "", date, id, c->hostname,
	    firing ? "firing" : "resolved", nm.data);
	buf_printf(&b, "%s on %s at %s:\r\n\r\n", firing ? "Raised" : "Recovered", c->hostname, date);
	for (size_t i = 0; i < n; i++)
		buf_printf(&b, "  %s: %s\r\n", names[ch[i].k], ch[i].text);
	if (firing)
		buf_adds(&b, "\r\nYou will get one more mail when it clears.\r\n");
	buf_free(&nm);
	struct mail_job *j = xcalloc(1, sizeof(*j));
	j->text = buf_steal(&b);
	pool_submit(W->pool, mail_work, mail_done, j);
}

static void
hook_done(struct evhttp_request *req, void *arg)
{
	char *name = arg;
	int code = req ? evhttp_request_get_response_code(req) : 0;

	if (code >= 200 && code < 300)
		log_info("alert event=webhook-sent name=%s status=%d", name, code);
	else
		log_warnx("alert event=webhook-error name=%s status=%d", name, code);
	free(name);
}

static void
send_webhook(bool firing, const struct change *ch, size_t n)
{
	const char *name = names[ch[0].k];
	const struct moat_conf *c = W->conf;
	struct evhttp_uri *u = evhttp_uri_parse(c->alert_webhook);
	struct evhttp_connection *cn = NULL;
	struct evhttp_request *req;
	struct buf b = BUF_INIT, path = BUF_INIT;
	char hostport[300], addr[64];
	const char *host;
	size_t hl;
	int port;

	if (u == NULL || (host = evhttp_uri_get_host(u)) == NULL) {
		log_warnx("alert event=webhook-error name=%s error=\"bad URL\"", name);
		goto out;
	}
	port = evhttp_uri_get_port(u);
	if (port < 0)
		port = 80;
	buf_adds(&path, evhttp_uri_get_path(u) && *evhttp_uri_get_path(u) ? evhttp_uri_get_path(u) : "/");
	if (evhttp_uri_get_query(u))
		buf_printf(&path, "?%s", evhttp_uri_get_query(u));
	/* the host is an address (checked when the config was read): no DNS here */
	hl = strlen(host);
	if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']')
		snprintf(addr, sizeof(addr), "%.*s", (int)(hl - 2), host + 1);
	else
		snprintf(addr, sizeof(addr), "%s", host);
	if ((cn = evhttp_connection_base_new(W->base, NULL, addr, (unsigned short)port)) == NULL) {
		log_warnx("alert event=webhook-error name=%s error=\"cannot connect\"", name);
		goto out;
	}
	evhttp_connection_set_timeout(cn, 10);
	evhttp_connection_free_on_completion(cn);
	/* the first change at the top level, all of them in "alerts" */
	buf_adds(&b, "{\"alert\":");
	json_str(&b, name);
	buf_printf(&b, ",\"status\":\"%s\",\"host\":", firing ? "firing" : "resolved");
	json_str(&b, c->hostname);
	buf_printf(&b, ",\"value\":%.17g,\"threshold\":%.17g,\"time\":%lld,\"text\":",
	    ch[0].value, ch[0].threshold, (long long)time(NULL));
	json_str(&b, ch[0].text);
	buf_adds(&b, ",\"alerts\":[");
	for (size_t i = 0; i < n; i++) {
		buf_printf(&b, "%s{\"alert\":\"%s\",\"value\":%.17g,\"threshold\":%.17g,\"text\":",
		    i ? "," : "", names[ch[i].k], ch[i].value, ch[i].threshold);
		json_str(&b, ch[i].text);
		buf_addc(&b, '}');
	}
	buf_adds(&b, "]}\n");
	if ((req = evhttp_request_new(hook_done, xstrdup(name))) == NULL) {
		evhttp_connection_free(cn);
		goto out;
	}
	if (strchr(addr, ':'))
		snprintf(hostport, sizeof(hostport), "[%s]:%d", addr, port);
	else
		snprintf(hostport, sizeof(hostport), "%s:%d", addr, port);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Host", hostport);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
	evhttp_add_header(evhttp_request_get_output_headers(req), "User-Agent", "moat/" PACKAGE_VERSION);
	evbuffer_add(evhttp_request_get_output_buffer(req), b.data, b.len);
	if (evhttp_make_request(cn, req, EVHTTP_REQ_POST, path.data) < 0)
		log_warnx("alert event=webhook-error name=%s error=\"cannot send\"", name);
	/* on failure evhttp_make_request frees the request and the connection
	 * goes with free_on_completion */
out:
	if (u)
		evhttp_uri_free(u);
	buf_free(&b);
	buf_free(&path);
}

/* one log line and journal event per change; the mail and the webhook once
 * per check for all that changed (a storm is one notice) */
static void
record(enum alert_kind k, bool firing, const char *text, double value, double threshold)
{
	struct change *ch = firing ? &raised[nraised++] : &cleared[ncleared++];

	if (firing) {
		log_crit("alert event=alert name=%s value=%.17g threshold=%.17g text=\"%s\"", names[k],
		    value, threshold, esc(text));
		metric_inc(M_ALERTS, names[k], NULL);
	} else
		log_crit("alert event=recovered name=%s value=%.17g threshold=%.17g text=\"%s\"",
		    names[k], value, threshold, esc(text));
	journal_alert(names[k], firing, text);
	ch->k = k;
	ch->value = value;
	ch->threshold = threshold;
	moat_strlcpy(ch->text, text, sizeof(ch->text));
}

static void
notify(bool firing, const struct change *ch, size_t n)
{
	const struct moat_conf *c = W->conf;

	if (n == 0)
		return;
	if (c->alert_email)
		send_mail(firing, ch, n);
	if (c->alert_webhook)
		send_webhook(firing, ch, n);
}

/* ---- the state, kept in <state-dir>/alerts.state so that a new worker
 * (reload, restart) does not raise again what is already raised ---- */

#define STATE_FILE "alerts.state"

struct state_job {
	char   *text;
	bool    ok;
};

/* BLOCKING (pool thread) */
static void
state_work(void *arg)
{
	struct state_job *j = arg;
	char path[PATH_MAX], tmp[PATH_MAX + 8];
	FILE *f;

	conf_path(W->conf, STATE_FILE, path, sizeof(path));
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if ((f = fopen(tmp, "w")) == NULL)
		return;
	fputs(j->text, f);
	j->ok = fclose(f) == 0 && rename(tmp, path) == 0;
}

static void
state_done(void *arg)
{
	struct state_job *j = arg;

	if (!j->ok)
		log_warnx("alert event=state-write-error file=%s", STATE_FILE);
	free(j->text);
	free(j);
}

static void
state_save(void)
{
	struct buf b = BUF_INIT;
	struct state_job *j;

	for (int k = 0; k < A_N; k++)
		if (alerts[k].firing)
			buf_printf(&b, "%s %lld\n", names[k], (long long)alerts[k].since);
	j = xcalloc(1, sizeof(*j));
	j->text = b.data ? buf_steal(&b) : xstrdup("");
	pool_submit(W->pool, state_work, state_done, j);
}

static bool
enabled(enum alert_kind k)
{
	const struct moat_conf *c = W->conf;

	switch (k) {
	case A_QUEUE_SIZE: return c->alert_queue_size > 0;
	case A_QUEUE_AGE: return c->alert_queue_age > 0;
	case A_DEFERRAL_RATE: return c->alert_deferral_rate > 0;
	case A_DISK_FREE: return c->alert_disk_free > 0;
	case A_AV_AGE: return c->alert_av_age > 0;
	case A_WORKER_RESTARTS: return c->alert_worker_restarts > 0;
	default: return false;
	}
}

/* at worker start (before the loop runs): a small file; conditions the
 * configuration no longer checks are dropped */
static void
state_load(void)
{
	char path[PATH_MAX], line[128], name[64];
	long long since;
	FILE *f;

	conf_path(W->conf, STATE_FILE, path, sizeof(path));
	if ((f = fopen(path, "r")) == NULL)
		return;
	while (fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "%63s %lld", name, &since) == 2)
			for (int k = 0; k < A_N; k++)
				if (!strcmp(name, names[k]) && enabled((enum alert_kind)k)) {
					alerts[k].firing = true;
					alerts[k].since = (time_t)since;
				}
	fclose(f);
}

/* ---- checks ---- */

static void
evaluate(enum alert_kind k, bool on, bool over, double value, double threshold, const char *what)
{
	struct alert *a = &alerts[k];
	char text[300];

	if (!on)
		return;
	if (over) {
		a->clear_checks = 0;
		if (a->firing)
			return;
		a->firing = true;
		a->since = time(NULL);
		snprintf(text, sizeof(text), "%s: %.17g (threshold %.17g)", what, value, threshold);
		record(k, true, text, value, threshold);
	} else if (a->firing && ++a->clear_checks >= 2) {
		a->firing = false;
		a->clear_checks = 0;
		snprintf(text, sizeof(text), "%s: %.17g (threshold %.17g), raised for %llds", what,
		    value, threshold, (long long)(time(NULL) - a->since));
		record(k, false, text, value, threshold);
	}
}

static void
on_check(evutil_socket_t fd, short ev, void *arg)
{
	const struct moat_conf *c = W->conf;
	const struct ops_cache *oc = ops_cache();
	struct queue_stats qs;
	time_t now = time(NULL);
	double age;

	if (W->draining || oc->updated == 0)
		return;         /* (until the first figures are in: checks see them all at once) */
	nraised = ncleared = 0;
	memset(&qs, 0, sizeof(qs));
	if (W->queue)
		queue_get_stats(W->queue, &qs);
	evaluate(A_QUEUE_SIZE, c->alert_queue_size > 0, (long long)qs.messages > c->alert_queue_size,
	    (double)qs.messages, (double)c->alert_queue_size, "queued messages");
	age = qs.oldest ? (double)(now - qs.oldest) : 0;
	evaluate(A_QUEUE_AGE, c->alert_queue_age > 0, age >= (double)c->alert_queue_age, age,
	    (double)c->alert_queue_age, "seconds the oldest message has been queued");

	/* deferral rate over the last WINDOW checks */
	double d = metric_sum(M_DELIVERY, NULL, "deferred"), t = total_attempts();
	if (nsnaps == WINDOW) {
		memmove(&snaps[0], &snaps[1], sizeof(snaps[0]) * (WINDOW - 1));
		nsnaps--;
	}
	snaps[nsnaps].deferred = d;
	snaps[nsnaps++].total = t;
	double dt = t - snaps[0].total, dd = d - snaps[0].deferred;
	double rate = dt > 0 ? 100.0 * dd / dt : 0;
	if (c->alert_deferral_rate > 0 &&
	    (dt >= (double)c->alert_deferral_min || alerts[A_DEFERRAL_RATE].firing))
		evaluate(A_DEFERRAL_RATE, true, rate >= (double)c->alert_deferral_rate, rate,
		    (double)c->alert_deferral_rate, "percent of delivery attempts deferred");

	if (oc->updated && oc->disk_free >= 0)
		evaluate(A_DISK_FREE, c->alert_disk_free > 0, oc->disk_free < c->alert_disk_free,
		    (double)oc->disk_free, (double)c->alert_disk_free, "bytes free in the state-dir");
	if (oc->updated && oc->av_age >= 0)
		evaluate(A_AV_AGE, c->alert_av_age > 0, oc->av_age >= c->alert_av_age,
		    (double)oc->av_age, (double)c->alert_av_age, "seconds since the AV database changed");
	evaluate(A_WORKER_RESTARTS, c->alert_worker_restarts > 0,
	    metrics_worker_restarts >= c->alert_worker_restarts, (double)metrics_worker_restarts,
	    (double)c->alert_worker_restarts, "worker restarts since moatd started");
	notify(true, raised, nraised);
	notify(false, cleared, ncleared);
	if (nraised || ncleared)
		state_save();
}

void
alerts_start(void)
{
	const struct moat_conf *c = W->conf;
	struct timeval tv = { (time_t)c->alert_interval, 0 };
	bool any = false;

	memset(alerts, 0, sizeof(alerts));
	nsnaps = 0;
	for (int k = 0; k < A_N; k++)
		any |= enabled((enum alert_kind)k);
	if (!any)
		return;
	state_load();
	ev_check = event_new(W->base, -1, EV_PERSIST, on_check, NULL);
	evtimer_add(ev_check, &tv);
}

void
alerts_stop(void)
{
	if (ev_check) {
		event_free(ev_check);
		ev_check = NULL;
	}
}

void
alerts_render(struct buf *b)
{
	buf_adds(b, "# HELP moat_alert_firing 1 while an alert is raised.\n"
	    "# TYPE moat_alert_firing gauge\n");
	for (int k = 0; k < A_N; k++)
		buf_printf(b, "moat_alert_firing{alert=\"%s\"} %d\n", names[k], alerts[k].firing ? 1 : 0);
}

void
alerts_json(struct buf *b)
{
	bool first = true;

	buf_addc(b, '[');
	for (int k = 0; k < A_N; k++)
		if (alerts[k].firing) {
			buf_printf(b, "%s\"%s\"", first ? "" : ",", names[k]);
			first = false;
		}
	buf_addc(b, ']');
}
