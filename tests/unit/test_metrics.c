/*
 * test_metrics - lib/metrics.c: counters by label, the cardinality cap
 * ("other"), hostile label values, the histogram, the exposition text;
 * lib/journal.c's JSON string escaping.
 */
#include "config.h"
#include "buf.h"
#include "journal.h"
#include "metrics.h"
#include "t.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

static void *
bump(void *arg)
{
	for (int i = 0; i < 10000; i++)
		metric_inc(M_AUTH, "ok", NULL);
	return arg;
}

int
main(void)
{
	struct buf b = BUF_INIT;
	char name[32];

	metric_inc(M_MESSAGES, "accept", NULL);
	metric_inc(M_MESSAGES, "accept", NULL);
	metric_inc(M_MESSAGES, "reject", NULL);
	metric_add(M_MESSAGES, "tag", NULL, 0);
	is_int(metric_sum(M_MESSAGES, "accept", NULL), 2, "two accepts");
	is_int(metric_sum(M_MESSAGES, NULL, NULL), 3, "three messages in all");
	metric_add(M_MESSAGES, "accept", NULL, -5);
	is_int(metric_sum(M_MESSAGES, "accept", NULL), 2, "a counter never goes down");

	metric_inc(M_DELIVERY, "smtp://10.0.0.5:25", "delivered");
	metric_inc(M_DELIVERY, "smtp://10.0.0.5:25", "deferred");
	metric_inc(M_DELIVERY, "store", "delivered");
	is_int(metric_sum(M_DELIVERY, NULL, "delivered"), 2, "two labels: by the second");
	is_int(metric_sum(M_DELIVERY, "smtp://10.0.0.5:25", NULL), 2, "two labels: by the first");

	/* hostile symbol names: bounded series, "other" beyond */
	for (int i = 0; i < 1000; i++) {
		snprintf(name, sizeof(name), "SYM_%d", i);
		metric_inc(M_SYMBOLS, name, NULL);
	}
	is_int(metric_sum(M_SYMBOLS, NULL, NULL), 1000, "every hit counted");
	is_int(metric_sum(M_SYMBOLS, "other", NULL), 1000 - (METRIC_MAX_SERIES - 1),
	    "beyond %d label sets: \"other\"", METRIC_MAX_SERIES);
	metric_inc(M_SYMBOLS, "SYM_1", NULL);
	is_int(metric_sum(M_SYMBOLS, "SYM_1", NULL), 2, "a known label still counts by name");

	metric_inc(M_CONN_REFUSED, "a\"b\\c\nd\x01\xff", NULL);
	metrics_render(&b);
	ok(strstr(b.data, "moat_connections_refused_total{reason=\"a\\\"b\\\\c?d??\"} 1\n") != NULL,
	    "label values escaped, control and 8-bit bytes replaced");
	ok(strstr(b.data, "# TYPE moat_messages_total counter\n") != NULL, "TYPE lines");
	ok(strstr(b.data, "moat_messages_total{action=\"tag\"} 0\n") != NULL, "a preset series at 0");
	ok(strstr(b.data, "moat_journal_errors_total 0\n") != NULL, "an unlabelled counter at 0");

	buf_reset(&b);
	metric_observe(M_FILTER_SECONDS, 0.003);
	metric_observe(M_FILTER_SECONDS, 0.2);
	metric_observe(M_FILTER_SECONDS, 100);
	metric_observe(M_FILTER_SECONDS, -1);   /* ignored */
	metrics_render(&b);
	ok(strstr(b.data, "moat_filter_duration_seconds_bucket{le=\"0.005\"} 1\n") != NULL, "bucket 5 ms");
	ok(strstr(b.data, "moat_filter_duration_seconds_bucket{le=\"0.25\"} 2\n") != NULL,
	    "buckets are cumulative");
	ok(strstr(b.data, "moat_filter_duration_seconds_bucket{le=\"+Inf\"} 3\n") != NULL, "+Inf");
	ok(strstr(b.data, "moat_filter_duration_seconds_count 3\n") != NULL, "count");

	pthread_t th[4];
	for (int i = 0; i < 4; i++)
		pthread_create(&th[i], NULL, bump, NULL);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	is_int(metric_sum(M_AUTH, "ok", NULL), 40000, "4 threads x 10000 increments");

	buf_reset(&b);
	json_str(&b, "a\"b\\c\n\x01\xc3\xa9");
	is_str(b.data, "\"a\\\"b\\\\c\\u000a\\u0001\\u00c3\\u00a9\"", "json_str escapes everything");
	buf_reset(&b);
	json_str(&b, NULL);
	is_str(b.data, "\"\"", "json_str(NULL)");
	buf_free(&b);
	return t_done();
}
