/*
 * ratelimit.h - rate counters keyed by string ("conn:192.0.2.7",
 * "msg:alice@example.net", "rcpt:2001:db8::/64") and the failed-login
 * throttle.
 *
 * Counters sit behind one interface (struct ratelimit, an operations table)
 * so a shared backend (Redis INCR/EXPIRE) can come later; the one backend
 * today is in memory: a hash table (SipHash, random key) holding at most
 * max_keys keys, evicting the least recently used one when full, so a flood
 * of distinct keys costs bounded memory (and can only make the limiter
 * forget, never grow).  Keys longer than RL_KEY_MAX bytes are truncated.
 *
 * Time is passed in by the caller (seconds; tests use a fake clock).
 * Single-threaded: use it from the event loop, never from pool threads.
 * Callers should key IPv6 clients by prefix (/64), or one host owns
 * millions of keys.  Eviction forgets the least recently touched key,
 * which may be a refused IP of the login throttle: size max_keys above the
 * number of distinct clients expected within a window.
 */
#ifndef MOAT_RATELIMIT_H
#define MOAT_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#define RL_KEY_MAX      255

enum rl_mode {
	/* counts per aligned window [k*W, (k+1)*W): cheap, bursts of 2*limit at the edge */
	RL_FIXED,
	/*
	 * sliding-window counter: count = current window + previous window
	 * weighted by how much of it still overlaps [now-W, now] (the estimate
	 * Cloudflare and redis-cell use).  O(1) memory per key, no edge bursts.
	 */
	RL_SLIDING,
};

struct rl_result {
	bool            allowed;
	long long       count;          /* counted in the window, after this hit if allowed */
	long long       remaining;      /* still allowed in the window (>= 0) */
	long long       retry_after;    /* denied: seconds until this cost would pass (>= 1) */
};

struct ratelimit;

struct ratelimit *ratelimit_new(enum rl_mode, size_t max_keys);
void ratelimit_free(struct ratelimit *);

/*
 * Count cost (>= 1) against key if the window (seconds >= 1) stays within
 * limit (>= 0); a denied hit counts nothing.  Returns res->allowed; res
 * may be NULL.  Use one window length per key: another window length for
 * the same key starts the key afresh.
 */
bool ratelimit_hit(struct ratelimit *, const char *key, time_t now, unsigned window,
         long long limit, long long cost, struct rl_result *res);
/* the current count of key in that window, without counting (0 if unknown) */
long long ratelimit_get(struct ratelimit *, const char *key, time_t now, unsigned window);
/* subtract cost again (e.g. a connection closed: concurrent-style use); never below 0 */
void ratelimit_undo(struct ratelimit *, const char *key, time_t now, unsigned window,
         long long cost);
void ratelimit_reset(struct ratelimit *, const char *key);
size_t ratelimit_keys(const struct ratelimit *);   /* keys held now (tests, metrics) */

/*
 * Failed-login throttle, per client IP (pass the IP or the IPv6 /64 as the
 * key).  Each failure within `window` seconds of the previous one counts;
 * a quiet window forgets them.  The reply to the f-th failure is delayed by
 * 0, delay_base, 2*delay_base, 4*delay_base ... seconds, capped at
 * delay_max; at refuse_after failures the IP is refused for refuse_for
 * seconds.  The count survives the refusal while its window lasts, so the
 * next failure right after it refuses again.  A success resets only its
 * own IP, and only if success_resets is set: otherwise an attacker holding
 * one valid account could interleave successes to keep guessing another's
 * password at full speed.  Other IPs are never affected.
 */
struct rl_auth_conf {
	unsigned        window;         /* seconds; default 900 */
	unsigned        delay_base;     /* default 1 */
	unsigned        delay_max;      /* default 16 */
	unsigned        refuse_after;   /* failures; default 10 */
	unsigned        refuse_for;     /* seconds; default 600 */
	bool            success_resets; /* default false */
	size_t          max_keys;       /* default 65536 */
};

enum rl_auth_verdict { RL_AUTH_ALLOW, RL_AUTH_REFUSE };

struct rl_auth;

void rl_auth_conf_default(struct rl_auth_conf *);
struct rl_auth *rl_auth_new(const struct rl_auth_conf *);
void rl_auth_free(struct rl_auth *);
/* before an AUTH: REFUSE (454 4.7.0 / 421) with *retry_after seconds, or ALLOW */
enum rl_auth_verdict rl_auth_check(struct rl_auth *, const char *ip, time_t now,
         unsigned *retry_after);
/* after a failed AUTH: returns the seconds to wait before sending the failure reply */
unsigned rl_auth_failure(struct rl_auth *, const char *ip, time_t now);
void rl_auth_success(struct rl_auth *, const char *ip, time_t now);
/* failures currently counted for ip (tests, logs) */
unsigned rl_auth_failures(struct rl_auth *, const char *ip, time_t now);

#endif
