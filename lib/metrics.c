/*
 * metrics.c - counters and histograms (see metrics.h).
 * Runs in: the worker, any thread (one mutex; an increment is a short
 * linear search in a bounded table, far below the cost of what it counts).
 */
#include "config.h"
#include "metrics.h"
#include "buf.h"
#include "util.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define LABEL_MAX 64

enum mtype { MT_COUNTER, MT_GAUGE, MT_HISTOGRAM };

static const struct family {
	const char *name;
	const char *help;
	enum mtype type;
	const char *l1, *l2;
} families[M_NMETRICS] = {
	[M_CONNECTIONS] = { "moat_connections_total", "Connections accepted, by listener.",
	    MT_COUNTER, "listener", NULL },
	[M_CONN_REFUSED] = { "moat_connections_refused_total",
	    "Connections closed before the greeting, by reason.", MT_COUNTER, "reason", NULL },
	[M_SMTP_REJECTS] = { "moat_smtp_rejects_total",
	    "SMTP commands refused before a message was queued, by stage.", MT_COUNTER, "stage", NULL },
	[M_MESSAGES] = { "moat_messages_total", "Messages by final action.", MT_COUNTER,
	    "action", NULL },
	[M_MESSAGES_DOMAIN] = { "moat_messages_domain_total",
	    "Messages by recipient domain (configured domains, else \"other\") and action.",
	    MT_COUNTER, "domain", "action" },
	[M_SYMBOLS] = { "moat_symbol_hits_total", "Filter symbol hits.", MT_COUNTER, "symbol", NULL },
	[M_FILTER_SECONDS] = { "moat_filter_duration_seconds",
	    "Time the filter engine took for a verdict.", MT_HISTOGRAM, NULL, NULL },
	[M_DELIVERY] = { "moat_delivery_total",
	    "Delivery attempts per recipient, by destination and result "
	    "(delivered, deferred, bounced, expired).", MT_COUNTER, "destination", "result" },
	[M_TLS] = { "moat_tls_handshakes_total", "Inbound TLS handshakes, by result.", MT_COUNTER,
	    "result", NULL },
	[M_AUTH] = { "moat_auth_total", "SMTP AUTH attempts, by result.", MT_COUNTER, "result", NULL },
	[M_ALERTS] = { "moat_alerts_total", "Alerts raised, by alert.", MT_COUNTER, "alert", NULL },
	[M_JOURNAL_ERRORS] = { "moat_journal_errors_total",
	    "Event journal batches that could not be written.", MT_COUNTER, NULL, NULL },
	[M_SESSIONS_OPEN] = { "moat_sessions_open", "Sessions open now (SMTP, POP3, IMAP), by listener.",
	    MT_GAUGE, "listener", NULL },
};

static const double buckets[] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 };
#define NBUCKETS ARRAY_SIZE(buckets)

struct series {
	char    l1[LABEL_MAX], l2[LABEL_MAX];
	double  v;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct series *tab[M_NMETRICS];
static size_t ntab[M_NMETRICS];
static unsigned long long hcount[NBUCKETS + 1];
static double hsum;

long long metrics_worker_restarts;

/* a label value: bounded, printable ASCII (others become '?') */
static void
label_copy(char *dst, const char *src)
{
	size_t i = 0;
	for (; src && src[i] && i + 1 < LABEL_MAX; i++)
		dst[i] = (src[i] >= 0x20 && src[i] < 0x7f) ? src[i] : '?';
	dst[i] = '\0';
}

static struct series *
find(enum metric m, const char *l1, const char *l2)
{
	char a[LABEL_MAX], b[LABEL_MAX];
	const struct family *f = &families[m];

	label_copy(a, f->l1 ? (l1 ? l1 : "") : "");
	label_copy(b, f->l2 ? (l2 ? l2 : "") : "");
	if (tab[m] == NULL)
		tab[m] = xcalloc(METRIC_MAX_SERIES, sizeof(struct series));
	for (size_t i = 0; i < ntab[m]; i++)
		if (!strcmp(tab[m][i].l1, a) && !strcmp(tab[m][i].l2, b))
			return &tab[m][i];
	if (ntab[m] >= METRIC_MAX_SERIES - 1) {
		/* full: everything new is "other" (the last slot is kept for it) */
		if (f->l1)
			moat_strlcpy(a, "other", sizeof(a));
		if (f->l2)
			moat_strlcpy(b, "other", sizeof(b));
		for (size_t i = 0; i < ntab[m]; i++)
			if (!strcmp(tab[m][i].l1, a) && !strcmp(tab[m][i].l2, b))
				return &tab[m][i];
		if (ntab[m] >= METRIC_MAX_SERIES)
			return &tab[m][ntab[m] - 1];
	}
	struct series *s = &tab[m][ntab[m]++];
	memcpy(s->l1, a, sizeof(a));
	memcpy(s->l2, b, sizeof(b));
	return s;
}

void
metric_add(enum metric m, const char *l1, const char *l2, double v)
{
	if ((unsigned)m >= M_NMETRICS || families[m].type != MT_COUNTER || !(v >= 0))
		return;
	pthread_mutex_lock(&mu);
	find(m, l1, l2)->v += v;
	pthread_mutex_unlock(&mu);
}

void
metric_gauge_add(enum metric m, const char *l1, const char *l2, double delta)
{
	if ((unsigned)m >= M_NMETRICS || families[m].type != MT_GAUGE || !isfinite(delta))
		return;
	pthread_mutex_lock(&mu);
	find(m, l1, l2)->v += delta;
	pthread_mutex_unlock(&mu);
}

void
metric_inc(enum metric m, const char *l1, const char *l2)
{
	metric_add(m, l1, l2, 1);
}

void
metric_observe(enum metric m, double v)
{
	size_t i;

	if (m != M_FILTER_SECONDS || !isfinite(v) || v < 0)
		return;
	for (i = 0; i < NBUCKETS && v > buckets[i]; i++)
		;
	pthread_mutex_lock(&mu);
	hcount[i]++;
	hsum += v;
	pthread_mutex_unlock(&mu);
}

double
metric_sum(enum metric m, const char *l1, const char *l2)
{
	double sum = 0;

	if ((unsigned)m >= M_NMETRICS)
		return 0;
	pthread_mutex_lock(&mu);
	for (size_t i = 0; i < ntab[m]; i++)
		if ((!l1 || !strcmp(tab[m][i].l1, l1)) && (!l2 || !strcmp(tab[m][i].l2, l2)))
			sum += tab[m][i].v;
	pthread_mutex_unlock(&mu);
	return sum;
}

void
metric_label_esc(struct buf *out, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			buf_addc(out, '\\');
		if (*v == '\n')
			buf_adds(out, "\\n");
		else
			buf_addc(out, *v);
	}
}

static void
labels(struct buf *out, const struct family *f, const struct series *s)
{
	if (!f->l1)
		return;
	buf_printf(out, "{%s=\"", f->l1);
	metric_label_esc(out, s->l1);
	if (f->l2) {
		buf_printf(out, "\",%s=\"", f->l2);
		metric_label_esc(out, s->l2);
	}
	buf_adds(out, "\"}");
}

void
metrics_render(struct buf *out)
{
	pthread_mutex_lock(&mu);
	for (size_t m = 0; m < M_NMETRICS; m++) {
		const struct family *f = &families[m];
		buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
		    f->type == MT_COUNTER ? "counter" : f->type == MT_GAUGE ? "gauge" : "histogram");
		if (f->type == MT_HISTOGRAM) {
			unsigned long long cum = 0;
			for (size_t i = 0; i < NBUCKETS; i++) {
				cum += hcount[i];
				buf_printf(out, "%s_bucket{le=\"%g\"} %llu\n", f->name, buckets[i], cum);
			}
			cum += hcount[NBUCKETS];
			buf_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n",
			    f->name, cum, f->name, hsum, f->name, cum);
			continue;
		}
		if (ntab[m] == 0 && !f->l1)
			buf_printf(out, "%s 0\n", f->name);
		for (size_t i = 0; i < ntab[m]; i++) {
			buf_adds(out, f->name);
			labels(out, f, &tab[m][i]);
			buf_printf(out, " %.17g\n", tab[m][i].v);
		}
	}
	pthread_mutex_unlock(&mu);
}
