/*
 * test_ratelimit.c - unit tests of lib/ratelimit.c with a fake clock:
 * fixed and sliding windows, retry-after, cost, the key cap under a flood
 * of distinct keys, and the failed-login throttle (growing delay, refusal,
 * decay, per-IP independence, success handling).
 */
#include "config.h"
#include "ratelimit.h"
#include "util.h"
#include "t.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void
test_fixed(void)
{
	struct ratelimit *rl = ratelimit_new(RL_FIXED, 100);
	struct rl_result r;
	time_t t = 999960;              /* a multiple of 60 */
	int i, allowed = 0;

	for (i = 0; i < 12; i++)
		allowed += ratelimit_hit(rl, "msg:alice", t + i, 60, 10, 1, &r);
	is_int(allowed, 10, "fixed: 10 of 12 allowed in one minute");
	ok(!r.allowed && r.remaining == 0, "fixed: last one denied, nothing remaining");
	is_int(r.retry_after, 60 - 11, "fixed: retry after the window ends");
	is_int(ratelimit_get(rl, "msg:alice", t + 30, 60), 10, "fixed: get shows 10");
	ok(ratelimit_hit(rl, "msg:alice", t + 60, 60, 10, 1, &r), "fixed: next window allowed again");
	is_int(r.count, 1, "fixed: count restarted");
	is_int(r.remaining, 9, "fixed: 9 remaining");
	ok(ratelimit_hit(rl, "msg:bob", t + 1, 60, 10, 1, NULL), "fixed: another key is independent");

	/* cost */
	ok(ratelimit_hit(rl, "rcpt:1", t, 60, 10, 7, &r) && r.remaining == 3, "fixed: cost 7 of 10");
	ok(!ratelimit_hit(rl, "rcpt:1", t, 60, 10, 4, &r), "fixed: cost 4 more denied");
	is_int(ratelimit_get(rl, "rcpt:1", t, 60), 7, "fixed: a denied hit counts nothing");
	ok(ratelimit_hit(rl, "rcpt:1", t, 60, 10, 3, &r), "fixed: cost 3 fits exactly");
	ok(!ratelimit_hit(rl, "big", t, 60, 10, 11, &r) && r.retry_after == 60,
	    "fixed: a cost above the limit never fits");
	ok(!ratelimit_hit(rl, "zero", t, 60, 0, 1, &r), "fixed: limit 0 denies");

	/* undo and reset */
	ratelimit_undo(rl, "rcpt:1", t, 60, 5);
	is_int(ratelimit_get(rl, "rcpt:1", t, 60), 5, "undo subtracts");
	ratelimit_undo(rl, "rcpt:1", t, 60, 50);
	is_int(ratelimit_get(rl, "rcpt:1", t, 60), 0, "undo never goes below 0");
	ratelimit_reset(rl, "msg:alice");
	is_int(ratelimit_get(rl, "msg:alice", t + 61, 60), 0, "reset forgets the key");
	is_int(ratelimit_get(rl, "never", t, 60), 0, "unknown key counts 0");
	ratelimit_free(rl);
}

static void
test_sliding(void)
{
	struct ratelimit *rl = ratelimit_new(RL_SLIDING, 100);
	struct rl_result r;
	time_t t = 999960;              /* window start (a multiple of 60) */
	int i, allowed = 0;

	/* 10 hits late in window 1 */
	for (i = 0; i < 10; i++)
		allowed += ratelimit_hit(rl, "k", t + 50, 60, 10, 1, &r);
	is_int(allowed, 10, "sliding: 10 allowed");
	/* early in window 2 the previous window still weighs ~ fully: no burst at the edge */
	ok(!ratelimit_hit(rl, "k", t + 61, 60, 10, 1, &r), "sliding: no burst right after the edge");
	ok(r.retry_after >= 1 && r.retry_after <= 60, "sliding: retry-after %lld s", r.retry_after);
	/* the hit at retry-after passes */
	ok(ratelimit_hit(rl, "k", t + 61 + r.retry_after, 60, 10, 1, &r),
	    "sliding: allowed again at the announced retry-after");
	/* half-way through window 2: prev weighs half: 5 + 1 counted -> 4 more */
	ratelimit_reset(rl, "k");
	for (i = 0; i < 10; i++)
		ratelimit_hit(rl, "k", t + 10, 60, 10, 1, NULL);
	is_int(ratelimit_get(rl, "k", t + 90, 60), 5, "sliding: previous window weighs half at mid-window");
	allowed = 0;
	for (i = 0; i < 10; i++)
		allowed += ratelimit_hit(rl, "k", t + 90, 60, 10, 1, NULL);
	is_int(allowed, 5, "sliding: 5 more allowed at mid-window");
	is_int(ratelimit_get(rl, "k", t + 200, 60), 0, "sliding: two windows later it is 0");
	/* a different window length for the same key restarts it */
	ok(ratelimit_hit(rl, "k", t + 200, 3600, 1, 1, NULL), "sliding: new window length restarts");
	ratelimit_free(rl);
}

static void
test_flood(void)
{
	struct ratelimit *rl = ratelimit_new(RL_SLIDING, 1000);
	char key[64], longkey[1000];
	int i, denied = 0;

	for (i = 0; i < 100000; i++) {
		snprintf(key, sizeof(key), "conn:10.%d.%d.%d", i >> 16 & 255, i >> 8 & 255, i & 255);
		ratelimit_hit(rl, key, 1000 + i / 1000, 60, 5, 1, NULL);
	}
	ok(ratelimit_keys(rl) <= 1000, "flood: 100000 keys, %zu held (cap 1000)", ratelimit_keys(rl));
	/* a hot key survives the flood because it is recently used */
	for (i = 0; i < 5000; i++) {
		snprintf(key, sizeof(key), "flood:%d", i);
		ratelimit_hit(rl, key, 2000, 60, 5, 1, NULL);
		if (!ratelimit_hit(rl, "hot", 2000, 60, 3, 1, NULL))
			denied++;
	}
	is_int(denied, 4997, "flood: the hot key stays counted (LRU keeps it)");
	memset(longkey, 'x', sizeof(longkey) - 1);
	longkey[sizeof(longkey) - 1] = '\0';
	ok(ratelimit_hit(rl, longkey, 2000, 60, 1, 1, NULL), "long key: first hit");
	longkey[600] = 'y';             /* differs beyond RL_KEY_MAX: same key */
	ok(!ratelimit_hit(rl, longkey, 2000, 60, 1, 1, NULL), "long key: truncated to RL_KEY_MAX");
	ratelimit_free(rl);

	rl = ratelimit_new(RL_FIXED, 1);
	ok(ratelimit_hit(rl, "a", 0, 60, 1, 1, NULL), "cap 1: a");
	ok(ratelimit_hit(rl, "b", 0, 60, 1, 1, NULL), "cap 1: b evicts a");
	ok(ratelimit_hit(rl, "a", 0, 60, 1, 1, NULL), "cap 1: a is fresh again");
	is_int(ratelimit_keys(rl), 1, "cap 1: one key held");
	ratelimit_free(rl);
}

static void
test_auth(void)
{
	struct rl_auth_conf c;
	struct rl_auth *a;
	unsigned ra, d, delays[12];
	time_t t = 5000, last = 0;
	int i;
	char buf[200];

	rl_auth_conf_default(&c);
	a = rl_auth_new(&c);
	is_int(rl_auth_check(a, "192.0.2.1", t, &ra), RL_AUTH_ALLOW, "auth: a fresh IP is allowed");
	for (i = 0; i < 10; i++) {
		is_int(rl_auth_check(a, "192.0.2.1", t, &ra), RL_AUTH_ALLOW, "auth: attempt %d allowed", i + 1);
		delays[i] = rl_auth_failure(a, "192.0.2.1", t);
		last = t;
		t += delays[i];         /* the client waits for the delayed reply */
	}
	t = last;
	buf[0] = '\0';
	for (i = 0; i < 10; i++)
		snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "%u ", delays[i]);
	is_str(buf, "0 1 2 4 8 16 16 16 16 16 ", "auth: delays grow and are capped");
	is_int(rl_auth_check(a, "192.0.2.1", t, &ra), RL_AUTH_REFUSE, "auth: refused after 10 failures");
	is_int(ra, 600, "auth: for 10 minutes");
	is_int(rl_auth_check(a, "192.0.2.2", t, &ra), RL_AUTH_ALLOW, "auth: another IP is not affected");
	rl_auth_success(a, "192.0.2.2", t);
	is_int(rl_auth_check(a, "192.0.2.1", t + 1, &ra), RL_AUTH_REFUSE, "auth: a success elsewhere changes nothing");
	rl_auth_success(a, "192.0.2.1", t + 1);
	is_int(rl_auth_check(a, "192.0.2.1", t + 599, &ra), RL_AUTH_REFUSE, "auth: still refused at 599 s");
	is_int(ra, 1, "auth: 1 s left");
	is_int(rl_auth_check(a, "192.0.2.1", t + 600, &ra), RL_AUTH_ALLOW, "auth: allowed after 600 s");
	d = rl_auth_failure(a, "192.0.2.1", t + 600);
	is_int(d, 16, "auth: the count survived the refusal (window 900 s)");
	is_int(rl_auth_check(a, "192.0.2.1", t + 600, &ra), RL_AUTH_REFUSE, "auth: one more failure refuses again");
	/* a quiet window forgets */
	is_int(rl_auth_failures(a, "192.0.2.1", t + 600 + 900), 0, "auth: failures forgotten after a quiet window");
	is_int(rl_auth_failure(a, "192.0.2.1", t + 600 + 900 + 600), 0, "auth: delay back to 0");

	/* success does not reset by default (an attacker with one account must not reset) */
	is_int(rl_auth_failure(a, "198.51.100.9", t), 0, "auth: IP B failure 1");
	rl_auth_success(a, "198.51.100.9", t);
	is_int(rl_auth_failure(a, "198.51.100.9", t), 1, "auth: success does not reset the count by default");
	rl_auth_free(a);

	c.success_resets = true;
	c.refuse_after = 3;
	c.refuse_for = 60;
	a = rl_auth_new(&c);
	rl_auth_failure(a, "A", t);
	rl_auth_failure(a, "A", t);
	rl_auth_failure(a, "B", t);
	rl_auth_failure(a, "B", t);
	rl_auth_success(a, "A", t);
	is_int(rl_auth_failures(a, "A", t), 0, "auth: success_resets resets its own IP");
	is_int(rl_auth_failures(a, "B", t), 2, "auth: and not another IP");
	rl_auth_failure(a, "B", t);
	rl_auth_success(a, "B", t);
	is_int(rl_auth_check(a, "B", t, &ra), RL_AUTH_REFUSE, "auth: a success does not lift a refusal");
	rl_auth_free(a);

	/* bounded memory */
	c.max_keys = 100;
	a = rl_auth_new(&c);
	for (i = 0; i < 10000; i++) {
		snprintf(buf, sizeof(buf), "10.0.%d.%d", i >> 8, i & 255);
		rl_auth_failure(a, buf, t);
	}
	is_int(rl_auth_failures(a, "10.0.39.15", t), 1, "auth: the newest IP is kept");
	is_int(rl_auth_failures(a, "10.0.0.1", t), 0, "auth: the oldest IP was evicted (cap 100)");
	rl_auth_free(a);
}

int
main(void)
{
	test_fixed();
	test_sliding();
	test_flood();
	test_auth();
	return t_done();
}
