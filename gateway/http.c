/*
 * http.c - the http listener (see http.h).
 * Runs in: the worker, on the event loop.  Input: HTTP requests from
 * whoever the listener's allow=/deny= admit; bounded by evhttp limits
 * (headers 8 KiB, no body), GET and HEAD only.
 */
#include "config.h"
#include "http.h"
#include "alerts.h"
#include "av.h"
#include "buf.h"
#include "conf.h"
#include "engine.h"
#include "journal.h"
#include "log.h"
#include "metrics.h"
#include "ops.h"
#include "queue.h"
#include "resolver.h"
#include "smtp_session.h"
#include "util.h"
#include "worker.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#define MAX_HTTP 8

static struct evhttp *servers[MAX_HTTP];
static size_t nservers;

/* constant time: the token is a secret */
static bool
token_ok(const char *hdr, const char *token)
{
	size_t n = strlen(token), m;
	unsigned char diff = 0;

	if (hdr == NULL || ascii_strncasecmp(hdr, "Bearer ", 7) != 0)
		return false;
	hdr += 7;
	m = strlen(hdr);
	diff = m != n;
	for (size_t i = 0; i < n; i++)
		diff |= (unsigned char)token[i] ^ (unsigned char)(i < m ? hdr[i] : 0);
	return diff == 0;
}

static void
gauge(struct buf *b, const char *name, const char *help, double v)
{
	buf_printf(b, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", name, help, name, name, v);
}

static void
counter(struct buf *b, const char *name, const char *help, double v)
{
	buf_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s %.17g\n", name, help, name, name, v);
}

static void
render_metrics(struct buf *b)
{
	const struct ops_cache *oc = ops_cache();
	struct queue_stats qs;
	time_t now = time(NULL);

	metrics_render(b);
	memset(&qs, 0, sizeof(qs));
	if (W->queue)
		queue_get_stats(W->queue, &qs);
	gauge(b, "moat_up", "1 while the worker serves.", 1);
	gauge(b, "moat_worker_start_time_seconds", "When this worker started (unix time); "
	    "counters restart from zero with a new worker.", (double)W->started);
	counter(b, "moat_worker_restarts_total", "Workers the master restarted after they died.",
	    (double)metrics_worker_restarts);
	gauge(b, "moat_sessions", "SMTP sessions open now.", (double)smtp_session_count());
	gauge(b, "moat_queue_messages", "Messages in the delivery queue.", (double)qs.messages);
	gauge(b, "moat_queue_active", "Messages being delivered now.", (double)qs.active);
	gauge(b, "moat_queue_deferred", "Messages waiting for a retry.", (double)qs.deferred);
	gauge(b, "moat_queue_oldest_age_seconds", "Age of the oldest queued message (0 if none).",
	    qs.oldest ? (double)(now - qs.oldest) : 0);
	if (oc->updated) {
		gauge(b, "moat_quarantine_messages", "Messages held in the quarantine.",
		    (double)oc->quarantine_msgs);
		gauge(b, "moat_quarantine_bytes", "Bytes held in the quarantine.",
		    (double)oc->quarantine_bytes);
		if (oc->disk_free >= 0)
			gauge(b, "moat_state_dir_free_bytes", "Bytes available in the state-dir file system.",
			    (double)oc->disk_free);
	}
	struct av *av = engine_av(W->engine);
	long long avage = oc->updated ? oc->av_age : -1;
	if (av) {
		struct av_stats st;
		av_stats(av, &st);
		if (st.db_age >= 0)
			avage = st.db_age;
		gauge(b, "moat_av_signatures", "Antivirus signatures loaded.", (double)st.signatures);
		counter(b, "moat_av_scans_total", "Messages scanned for viruses.", (double)st.scans);
		counter(b, "moat_av_infected_total", "Messages found infected.", (double)st.infected);
		counter(b, "moat_av_errors_total", "Scans that failed.", (double)st.errors);
	}
	if (avage >= 0)
		gauge(b, "moat_av_database_age_seconds", "Seconds since the newest antivirus database "
		    "file changed.", (double)avage);
	struct resolver *res = engine_resolver(W->engine);
	{
		unsigned long long q = 0, f = 0, t = 0;
		if (res)
			resolver_stats(res, &q, &f, &t);
		counter(b, "moat_resolver_queries_total", "DNS queries by the filters.", (double)q);
		counter(b, "moat_resolver_failures_total", "DNS queries that failed (SERVFAIL, errors).",
		    (double)f);
		counter(b, "moat_resolver_timeouts_total", "DNS queries that timed out.", (double)t);
	}
	alerts_render(b);
}

void
http_status_json(struct buf *b)
{
	const struct moat_conf *c = W->conf;
	const struct ops_cache *oc = ops_cache();
	struct queue_stats qs;
	time_t now = time(NULL);
	static const char *actions[] = { "accept", "tag", "quarantine", "reject", "tempfail" };

	memset(&qs, 0, sizeof(qs));
	if (W->queue)
		queue_get_stats(W->queue, &qs);
	buf_adds(b, "{\"host\":");
	json_str(b, c->hostname);
	buf_printf(b, ",\"version\":\"%s\",\"pid\":%d,\"started\":%lld,\"uptime\":%lld,"
	    "\"worker_restarts\":%lld,\"listeners\":[", PACKAGE_VERSION, (int)getpid(),
	    (long long)W->started, (long long)(now - W->started), metrics_worker_restarts);
	for (size_t i = 0; i < c->nlistens; i++) {
		buf_printf(b, "%s{\"kind\":\"%s\",\"address\":", i ? "," : "",
		    listen_kind_name(c->listens[i].kind));
		json_str(b, c->listens[i].spec);
		buf_printf(b, ",\"connections\":%.0f}", metric_sum(M_CONNECTIONS, c->listens[i].spec, NULL));
	}
	buf_printf(b, "],\"sessions\":%zu,\"connections\":%.0f,\"messages\":{",
	    smtp_session_count(), metric_sum(M_CONNECTIONS, NULL, NULL));
	for (size_t i = 0; i < ARRAY_SIZE(actions); i++)
		buf_printf(b, "%s\"%s\":%.0f", i ? "," : "", actions[i],
		    metric_sum(M_MESSAGES, actions[i], NULL));
	buf_printf(b, "},\"smtp_rejects\":%.0f,\"queue\":{\"messages\":%zu,\"active\":%zu,"
	    "\"deferred\":%zu,\"oldest_age\":%lld},", metric_sum(M_SMTP_REJECTS, NULL, NULL),
	    qs.messages, qs.active, qs.deferred, qs.oldest ? (long long)(now - qs.oldest) : 0LL);
	buf_printf(b, "\"quarantine\":{\"messages\":%ld,\"bytes\":%lld},\"av_database_age\":%lld,"
	    "\"disk_free\":%lld,\"cache_updated\":%lld,\"alerts\":", oc->quarantine_msgs,
	    oc->quarantine_bytes, oc->updated ? oc->av_age : -1LL, oc->updated ? oc->disk_free : -1LL,
	    (long long)oc->updated);
	alerts_json(b);
	buf_adds(b, "}\n");
}

static void
send_text(struct evhttp_request *req, int code, const char *reason, const char *type,
    struct buf *body)
{
	struct evbuffer *out = evbuffer_new();

	if (out == NULL) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
	if (body && body->len)
		evbuffer_add(out, body->data, body->len);
	evhttp_send_reply(req, code, reason, out);
	evbuffer_free(out);
}

/* the listener's allow=/deny= (evhttp keeps the peer as a numeric string) */
static bool
peer_admitted(const struct listen_conf *l, struct evhttp_connection *conn)
{
	struct sockaddr_storage ss;
	char *host = NULL;
	ev_uint16_t port = 0;

	if (l->nallow == 0 && l->ndeny == 0)
		return true;
	evhttp_connection_get_peer(conn, &host, &port);
	memset(&ss, 0, sizeof(ss));
	if (host && inet_pton(AF_INET, host, &((struct sockaddr_in *)&ss)->sin_addr) == 1)
		ss.ss_family = AF_INET;
	else if (host && inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1)
		ss.ss_family = AF_INET6;
	else
		return false;
	return listen_admits(l, (const struct sockaddr *)&ss);
}

static void
handle(struct evhttp_request *req, void *arg)
{
	const struct listen_conf *l = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	struct evhttp_connection *conn = evhttp_request_get_connection(req);
	struct buf b = BUF_INIT;
	const char *json = "application/json";

	if (conn == NULL || !peer_admitted(l, conn)) {
		buf_adds(&b, "forbidden\n");
		send_text(req, 403, "Forbidden", "text/plain", &b);
		goto out;
	}
	if (path == NULL || path[0] == '\0')
		path = "/";
	if (strcmp(path, "/healthz") != 0 && W->conf->http_token &&
	    !token_ok(evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization"),
	    W->conf->http_token)) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
		    "Bearer realm=\"moat\"");
		buf_adds(&b, "unauthorized\n");
		send_text(req, 401, "Unauthorized", "text/plain", &b);
		goto out;
	}
	if (!strcmp(path, "/metrics")) {
		render_metrics(&b);
		send_text(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", &b);
	} else if (!strcmp(path, "/healthz")) {
		buf_adds(&b, W->draining ? "draining\n" : "ok\n");
		send_text(req, W->draining ? 503 : 200, W->draining ? "Service Unavailable" : "OK",
		    "text/plain", &b);
	} else if (!strcmp(path, "/api/status")) {
		http_status_json(&b);
		send_text(req, 200, "OK", json, &b);
	} else if (!strcmp(path, "/api/queue") || !strcmp(path, "/api/quarantine")) {
		const struct ops_cache *oc = ops_cache();
		bool q = !strcmp(path, "/api/queue");
		ops_want_lists();
		const struct buf *src = q ? &oc->queue_json : &oc->quarantine_json;
		/* updated 0: not listed yet, ask again in a few seconds */
		buf_printf(&b, "{\"updated\":%lld,\"limit\":%d,\"%s\":",
		    (long long)oc->lists_updated, OPS_LIST_MAX, q ? "messages" : "held");
		if (src->len)
			buf_add(&b, src->data, src->len);
		else
			buf_adds(&b, "[]");
		buf_adds(&b, "}\n");
		send_text(req, 200, "OK", json, &b);
	} else {
		buf_adds(&b, "not found\n");
		send_text(req, 404, "Not Found", "text/plain", &b);
	}
out:
	buf_free(&b);
}

void
http_start(void)
{
	const struct moat_conf *c = W->conf;

	for (size_t i = 0; i < c->nlistens && nservers < MAX_HTTP; i++) {
		const struct listen_conf *l = &c->listens[i];
		struct evhttp *h;
		if (l->kind != LISTEN_HTTP || l->fd < 0)
			continue;
		if ((h = evhttp_new(W->base)) == NULL ||
		    evhttp_accept_socket(h, l->fd) < 0) {
			log_warnx("http: cannot serve on %s", l->spec);
			if (h)
				evhttp_free(h);
			continue;
		}
		evhttp_set_allowed_methods(h, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
		evhttp_set_max_headers_size(h, 8192);
		evhttp_set_max_body_size(h, 0);
		evhttp_set_timeout(h, 10);
		evhttp_set_gencb(h, handle, (void *)l);
		servers[nservers++] = h;
		log_info("http event=listening address=%s%s", l->spec,
		    c->http_token ? " token=yes" : "");
	}
}

/* stop accepting: a new worker has the listeners (our copy of the socket closes) */
void
http_drain(void)
{
	http_stop();
}

void
http_stop(void)
{
	for (size_t i = 0; i < nservers; i++)
		evhttp_free(servers[i]);
	nservers = 0;
}
