/*
 * ratelimit.c - rate counters behind an operations table (one in-memory
 * backend today) and the failed-login throttle; see ratelimit.h.
 *
 * Runs in: the worker's event loop (single-threaded, never blocks).
 * Untrusted input: keys are built from client data (IP, user name); they
 * are truncated to RL_KEY_MAX bytes and hashed with SipHash-2-4 under a
 * random per-table key, so chosen keys cannot pile into one bucket.
 * Limits: at most max_keys entries per table (LRU eviction); the table
 * never grows after creation.
 */
#include "config.h"
#include "ratelimit.h"
#include "util.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RL_NIL          UINT32_MAX
#define RL_MAX_CAP      (1u << 24)

/* ---- SipHash-2-4 ---- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND do { \
	v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
	v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2; \
	v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0; \
	v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); } while (0)

static uint64_t
rl_siphash(const uint64_t k[2], const void *data, size_t len)
{
	const unsigned char *p = data;
	uint64_t v0 = 0x736f6d6570736575ULL ^ k[0], v1 = 0x646f72616e646f6dULL ^ k[1];
	uint64_t v2 = 0x6c7967656e657261ULL ^ k[0], v3 = 0x7465646279746573ULL ^ k[1];
	uint64_t m, b = (uint64_t)len << 56;
	size_t i, left = len & 7;
	int j;

	for (i = 0; i + 8 <= len; i += 8) {
		m = 0;
		for (j = 7; j >= 0; j--)
			m = m << 8 | p[i + (size_t)j];
		v3 ^= m;
		SIPROUND;
		SIPROUND;
		v0 ^= m;
	}
	for (j = (int)left - 1; j >= 0; j--)
		b |= (uint64_t)p[i + (size_t)j] << (8 * j);
	v3 ^= b;
	SIPROUND;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- bounded LRU hash table ---- */

struct rl_entry {
	char           *key;            /* NULL: free */
	uint64_t        hash;
	uint32_t        chain;          /* next in bucket */
	uint32_t        prev, next;     /* LRU list, head = most recent */
	union {
		struct {
			time_t          start;  /* current window start */
			unsigned        window;
			long long       cur, prev;
		} c;
		struct {
			time_t          last;   /* last failure */
			time_t          until;  /* refused until */
			unsigned        failures;
		} a;
	} u;
};

struct rl_table {
	struct rl_entry *ents;
	uint32_t       *buckets;
	uint32_t        cap, nbuckets, used;
	uint32_t        head, tail;     /* LRU */
	uint32_t        free_head;      /* free slots, linked through chain */
	uint64_t        sipkey[2];
};

static void
rl_table_init(struct rl_table *t, size_t max_keys)
{
	uint32_t i;

	if (max_keys == 0)
		max_keys = 1;
	if (max_keys > RL_MAX_CAP)
		max_keys = RL_MAX_CAP;
	t->cap = (uint32_t)max_keys;
	for (t->nbuckets = 16; t->nbuckets < t->cap; t->nbuckets <<= 1)
		;
	t->ents = xcalloc(t->cap, sizeof(*t->ents));
	t->buckets = xreallocarray(NULL, t->nbuckets, sizeof(*t->buckets));
	for (i = 0; i < t->nbuckets; i++)
		t->buckets[i] = RL_NIL;
	for (i = 0; i < t->cap; i++)
		t->ents[i].chain = i + 1 < t->cap ? i + 1 : RL_NIL;
	t->free_head = 0;
	t->used = 0;
	t->head = t->tail = RL_NIL;
	random_bytes(t->sipkey, sizeof(t->sipkey));
}

static void
rl_table_fini(struct rl_table *t)
{
	uint32_t i;

	for (i = 0; i < t->cap; i++)
		free(t->ents[i].key);
	free(t->ents);
	free(t->buckets);
}

static void
rl_lru_unlink(struct rl_table *t, uint32_t i)
{
	struct rl_entry *e = &t->ents[i];

	if (e->prev != RL_NIL)
		t->ents[e->prev].next = e->next;
	else
		t->head = e->next;
	if (e->next != RL_NIL)
		t->ents[e->next].prev = e->prev;
	else
		t->tail = e->prev;
	e->prev = e->next = RL_NIL;
}

static void
rl_lru_push(struct rl_table *t, uint32_t i)
{
	struct rl_entry *e = &t->ents[i];

	e->prev = RL_NIL;
	e->next = t->head;
	if (t->head != RL_NIL)
		t->ents[t->head].prev = i;
	t->head = i;
	if (t->tail == RL_NIL)
		t->tail = i;
}

static void
rl_bucket_unlink(struct rl_table *t, uint32_t i)
{
	uint32_t *pp = &t->buckets[t->ents[i].hash & (t->nbuckets - 1)];

	while (*pp != RL_NIL) {
		if (*pp == i) {
			*pp = t->ents[i].chain;
			break;
		}
		pp = &t->ents[*pp].chain;
	}
	t->ents[i].chain = RL_NIL;
}

static void
rl_remove(struct rl_table *t, uint32_t i)
{
	rl_bucket_unlink(t, i);
	rl_lru_unlink(t, i);
	free(t->ents[i].key);
	memset(&t->ents[i], 0, sizeof(t->ents[i]));
	t->ents[i].chain = t->free_head;
	t->free_head = i;
	t->used--;
}

/* the entry of key (created zeroed if create), moved to the LRU head; NULL if absent */
static struct rl_entry *
rl_lookup(struct rl_table *t, const char *key, bool create)
{
	size_t klen = strnlen(key, RL_KEY_MAX);
	uint64_t h = rl_siphash(t->sipkey, key, klen);
	uint32_t i, b = (uint32_t)(h & (t->nbuckets - 1));
	struct rl_entry *e;

	for (i = t->buckets[b]; i != RL_NIL; i = t->ents[i].chain) {
		e = &t->ents[i];
		if (e->hash == h && strncmp(e->key, key, klen) == 0 && e->key[klen] == '\0') {
			if (t->head != i) {
				rl_lru_unlink(t, i);
				rl_lru_push(t, i);
			}
			return e;
		}
	}
	if (!create)
		return NULL;
	if (t->used == t->cap)
		rl_remove(t, t->tail);          /* evict the least recently used */
	i = t->free_head;
	t->free_head = t->ents[i].chain;
	e = &t->ents[i];
	memset(e, 0, sizeof(*e));
	e->key = xstrndup(key, klen);
	e->hash = h;
	e->chain = t->buckets[b];
	t->buckets[b] = i;
	rl_lru_push(t, i);
	t->used++;
	return e;
}

static void
rl_remove_key(struct rl_table *t, const char *key)
{
	struct rl_entry *e = rl_lookup(t, key, false);

	if (e)
		rl_remove(t, (uint32_t)(e - t->ents));
}

/* ---- counters: the operations table and the memory backend ---- */

struct rl_ops {
	bool      (*hit)(void *, const char *, time_t, unsigned, long long, long long,
	              struct rl_result *);
	long long (*get)(void *, const char *, time_t, unsigned);
	void      (*undo)(void *, const char *, time_t, unsigned, long long);
	void      (*reset)(void *, const char *);
	size_t    (*keys)(const void *);
	void      (*free)(void *);
};

struct ratelimit {
	const struct rl_ops *ops;
	void               *impl;
};

struct rl_mem {
	struct rl_table     t;
	enum rl_mode        mode;
};

/* bring the entry's windows up to now */
static void
rl_roll(struct rl_entry *e, time_t now, unsigned window)
{
	time_t start = now - (time_t)((unsigned long long)now % window);

	if (e->u.c.window != window) {
		e->u.c.window = window;
		e->u.c.start = start;
		e->u.c.cur = e->u.c.prev = 0;
		return;
	}
	if (start == e->u.c.start)
		return;
	if (start < e->u.c.start) {             /* clock went back: keep counting */
		return;
	}
	e->u.c.prev = start - e->u.c.start == (time_t)window ? e->u.c.cur : 0;
	e->u.c.cur = 0;
	e->u.c.start = start;
}

/* weight of the previous window still inside [now - W, now] */
static double
rl_prev_weight(const struct rl_entry *e, time_t now, unsigned window)
{
	double elapsed = (double)(now - e->u.c.start);

	if (elapsed < 0)
		elapsed = 0;
	if (elapsed >= window)
		return 0;
	return (window - elapsed) / window;
}

static long long
rl_estimate(const struct rl_mem *m, const struct rl_entry *e, time_t now, unsigned window)
{
	if (m->mode == RL_FIXED)
		return e->u.c.cur;
	return e->u.c.cur + (long long)(e->u.c.prev * rl_prev_weight(e, now, window) + 0.999999);
}

static bool
rl_mem_hit(void *impl, const char *key, time_t now, unsigned window, long long limit,
    long long cost, struct rl_result *res)
{
	struct rl_mem *m = impl;
	struct rl_entry *e;
	long long est;
	time_t wait;

	if (window == 0)
		window = 1;
	if (cost < 1)
		cost = 1;
	if (limit < 0)
		limit = 0;
	e = rl_lookup(&m->t, key, true);
	rl_roll(e, now, window);
	est = rl_estimate(m, e, now, window);
	res->allowed = cost <= limit && est <= limit - cost;
	if (res->allowed) {
		e->u.c.cur += cost;
		est += cost;
		res->retry_after = 0;
	} else if (cost > limit) {
		res->retry_after = window;      /* never fits; say "a window" */
	} else {
		time_t end = e->u.c.start + (time_t)window;
		if (m->mode == RL_FIXED || e->u.c.cur > limit - cost) {
			/* wait for the window to end; sliding: then cur becomes prev */
			wait = end - now;
			if (m->mode == RL_SLIDING && e->u.c.cur > 0) {
				/* cur * (W - x)/W + cost <= limit  =>  x >= W * (1 - (limit-cost)/cur) */
				double x = window * (1.0 - (double)(limit - cost) / (double)e->u.c.cur);
				wait += (time_t)(x + 0.999999);
			}
		} else {
			/* prev * (W - x)/W <= limit - cost - cur  (x = elapsed in window) */
			double room = (double)(limit - cost - e->u.c.cur);
			double x = window * (1.0 - room / (double)e->u.c.prev);
			wait = e->u.c.start + (time_t)(x + 0.999999) - now;
		}
		res->retry_after = wait < 1 ? 1 : wait;
	}
	res->count = est;
	res->remaining = limit - est > 0 ? limit - est : 0;
	return res->allowed;
}

static long long
rl_mem_get(void *impl, const char *key, time_t now, unsigned window)
{
	struct rl_mem *m = impl;
	struct rl_entry *e;

	if (window == 0)
		window = 1;
	if ((e = rl_lookup(&m->t, key, false)) == NULL)
		return 0;
	rl_roll(e, now, window);
	return rl_estimate(m, e, now, window);
}

static void
rl_mem_undo(void *impl, const char *key, time_t now, unsigned window, long long cost)
{
	struct rl_mem *m = impl;
	struct rl_entry *e;

	if (window == 0)
		window = 1;
	if ((e = rl_lookup(&m->t, key, false)) == NULL)
		return;
	rl_roll(e, now, window);
	e->u.c.cur = e->u.c.cur > cost ? e->u.c.cur - cost : 0;
}

static void
rl_mem_reset(void *impl, const char *key)
{
	struct rl_mem *m = impl;

	rl_remove_key(&m->t, key);
}

static size_t
rl_mem_keys(const void *impl)
{
	const struct rl_mem *m = impl;

	return m->t.used;
}

static void
rl_mem_free(void *impl)
{
	struct rl_mem *m = impl;

	rl_table_fini(&m->t);
	free(m);
}

static const struct rl_ops rl_mem_ops = {
	.hit = rl_mem_hit, .get = rl_mem_get, .undo = rl_mem_undo, .reset = rl_mem_reset,
	.keys = rl_mem_keys, .free = rl_mem_free,
};

struct ratelimit *
ratelimit_new(enum rl_mode mode, size_t max_keys)
{
	struct ratelimit *rl = xcalloc(1, sizeof(*rl));
	struct rl_mem *m = xcalloc(1, sizeof(*m));

	m->mode = mode;
	rl_table_init(&m->t, max_keys);
	rl->ops = &rl_mem_ops;
	rl->impl = m;
	return rl;
}

void
ratelimit_free(struct ratelimit *rl)
{
	if (rl == NULL)
		return;
	rl->ops->free(rl->impl);
	free(rl);
}

bool
ratelimit_hit(struct ratelimit *rl, const char *key, time_t now, unsigned window,
    long long limit, long long cost, struct rl_result *res)
{
	struct rl_result tmp;

	return rl->ops->hit(rl->impl, key, now, window, limit, cost, res ? res : &tmp);
}

long long
ratelimit_get(struct ratelimit *rl, const char *key, time_t now, unsigned window)
{
	return rl->ops->get(rl->impl, key, now, window);
}

void
ratelimit_undo(struct ratelimit *rl, const char *key, time_t now, unsigned window,
    long long cost)
{
	rl->ops->undo(rl->impl, key, now, window, cost);
}

void
ratelimit_reset(struct ratelimit *rl, const char *key)
{
	rl->ops->reset(rl->impl, key);
}

size_t
ratelimit_keys(const struct ratelimit *rl)
{
	return rl->ops->keys(rl->impl);
}

/* ---- failed-login throttle ---- */

struct rl_auth {
	struct rl_auth_conf conf;
	struct rl_table     t;
};

void
rl_auth_conf_default(struct rl_auth_conf *c)
{
	c->window = 900;
	c->delay_base = 1;
	c->delay_max = 16;
	c->refuse_after = 10;
	c->refuse_for = 600;
	c->success_resets = false;
	c->max_keys = 65536;
}

struct rl_auth *
rl_auth_new(const struct rl_auth_conf *c)
{
	struct rl_auth *a = xcalloc(1, sizeof(*a));

	if (c)
		a->conf = *c;
	else
		rl_auth_conf_default(&a->conf);
	if (a->conf.window == 0)
		a->conf.window = 1;
	if (a->conf.refuse_after == 0)
		a->conf.refuse_after = UINT_MAX;
	rl_table_init(&a->t, a->conf.max_keys);
	return a;
}

void
rl_auth_free(struct rl_auth *a)
{
	if (a == NULL)
		return;
	rl_table_fini(&a->t);
	free(a);
}

/* forget failures after a quiet window */
static void
rl_auth_decay(const struct rl_auth *a, struct rl_entry *e, time_t now)
{
	if (e->u.a.failures > 0 && now - e->u.a.last >= (time_t)a->conf.window)
		e->u.a.failures = 0;
}

enum rl_auth_verdict
rl_auth_check(struct rl_auth *a, const char *ip, time_t now, unsigned *retry_after)
{
	struct rl_entry *e = rl_lookup(&a->t, ip, false);

	*retry_after = 0;
	if (e == NULL || now >= e->u.a.until)
		return RL_AUTH_ALLOW;
	*retry_after = (unsigned)(e->u.a.until - now);
	return RL_AUTH_REFUSE;
}

unsigned
rl_auth_failure(struct rl_auth *a, const char *ip, time_t now)
{
	struct rl_entry *e = rl_lookup(&a->t, ip, true);
	unsigned f, d;

	rl_auth_decay(a, e, now);
	if (e->u.a.failures < UINT_MAX)
		e->u.a.failures++;
	e->u.a.last = now;
	f = e->u.a.failures;
	if (f >= a->conf.refuse_after)
		e->u.a.until = now + (time_t)a->conf.refuse_for;
	/* 0, base, 2*base, 4*base ... capped */
	if (f <= 1)
		return 0;
	if (f - 2 >= 31 || a->conf.delay_base > (a->conf.delay_max >> (f - 2)))
		d = a->conf.delay_max;
	else
		d = a->conf.delay_base << (f - 2);
	return MIN(d, a->conf.delay_max);
}

void
rl_auth_success(struct rl_auth *a, const char *ip, time_t now)
{
	struct rl_entry *e;

	if (!a->conf.success_resets || (e = rl_lookup(&a->t, ip, false)) == NULL)
		return;
	if (now >= e->u.a.until)
		rl_remove(&a->t, (uint32_t)(e - a->t.ents));
}

unsigned
rl_auth_failures(struct rl_auth *a, const char *ip, time_t now)
{
	struct rl_entry *e = rl_lookup(&a->t, ip, false);

	if (e == NULL)
		return 0;
	rl_auth_decay(a, e, now);
	return e->u.a.failures;
}
