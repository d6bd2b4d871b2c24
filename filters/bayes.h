/*
 * bayes.h - the Bayesian scorer: tokenizer over a parsed message
 * (filters/mime.h), Robinson/Fisher chi-square combining, and a token store
 * behind a small backend interface (LMDB: filters/bayes_store_lmdb.c).
 *
 * BLOCKING: every call may touch the disk; run it in a pool thread or the
 * CLI, never on the event loop.  A handle may be shared by threads for
 * bayes_classify(), bayes_learn() and bayes_forget() (LMDB serialises the
 * writers, readers never wait); a batch (bayes_batch_begin/end) belongs to
 * the one thread that opened it.
 */
#ifndef MOAT_BAYES_H
#define MOAT_BAYES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

struct mime_msg;
struct bayes;

#define BAYES_DIGEST_LEN   32           /* SHA-256 */
#define BAYES_TOP          15           /* most significant tokens reported */
#define BAYES_TOKEN_SHOW   64           /* bytes of a reported token's text */

enum bayes_band {
	BAYES_B00, BAYES_B05, BAYES_B20, BAYES_B40, BAYES_B50, BAYES_B60,
	BAYES_B80, BAYES_B95, BAYES_B99, BAYES_B999, BAYES_NBANDS
};

struct bayes_params {
	double   s;                     /* Robinson's strength of the prior x */
	double   x;                     /* assumed probability of an unknown token */
	double   min_dev;               /* ignore tokens with |f - 0.5| below this */
	unsigned max_tokens;            /* most extreme tokens combined (0: all) */
	unsigned min_learned;           /* spam and ham each before results count */
	double   band_score[BAYES_NBANDS];
};

/* token counts and last-seen (learned) time, as the store keeps them */
struct bayes_counts {
	uint32_t spam;
	uint32_t ham;
	uint32_t atime;                 /* unix seconds */
};

struct bayes_token_info {
	char     text[BAYES_TOKEN_SHOW];
	double   prob;                  /* f(w) */
	uint32_t spam, ham;
};

struct bayes_result {
	double      prob;               /* 0 = ham ... 1 = spam */
	double      lodds;              /* ln(prob / (1 - prob)), computed so
	                                 * that it does not round off where prob
	                                 * has become 0 or 1: for ranking */
	enum bayes_band band;
	const char *symbol;             /* "BAYES_99", static */
	double      score;              /* configured score of the band */
	bool        ready;              /* trained on >= min_learned of each */
	unsigned    ntokens;            /* distinct tokens in the message */
	unsigned    nused;              /* tokens combined */
	uint64_t    nspam, nham;        /* messages learned */
	unsigned    ntop;
	struct bayes_token_info top[BAYES_TOP];
};

struct bayes_stats {
	uint64_t nspam, nham;
	uint64_t ntokens;
	uint64_t nseen;                 /* message digests kept */
	uint32_t oldest;                /* oldest token atime */
	uint64_t tokenizer;             /* tokenizer version of the store */
};

/* bayes_learn/forget results */
#define BAYES_OK            0
#define BAYES_ALREADY       1       /* this message was learned as that class */
#define BAYES_NOT_LEARNED   2       /* forget: not learned (as that class) */
#define BAYES_ERR         (-1)

/* the defaults (tuned on the development corpus, see bench/README.md);
 * $MOAT_BAYES_PARAMS ("s=0.1,x=0.5,min_dev=0.1,max_tokens=150") overrides */
void bayes_params_default(struct bayes_params *);
int  bayes_params_parse(struct bayes_params *, const char *spec, char **err);

/* open (create unless rdonly) <statedir>/bayes.lmdb */
struct bayes *bayes_open(const char *statedir, bool rdonly, char **err);
struct bayes *bayes_open_path(const char *path, bool rdonly, char **err);
void bayes_close(struct bayes **);
void bayes_set_params(struct bayes *, const struct bayes_params *);
const char *bayes_error(const struct bayes *);     /* last error text */

/* SHA-256 of the Message-ID and the body (after the header block): the
 * same message relayed again (new Received lines) has the same digest */
void bayes_digest(const char *raw, size_t len, uint8_t out[BAYES_DIGEST_LEN]);

int bayes_classify(struct bayes *, const struct mime_msg *, struct bayes_result *);
/* the same, with the text of the top tokens (r->top[].text; bayes_classify
 * leaves those empty: keeping every token's text costs time) */
int bayes_classify_explain(struct bayes *, const struct mime_msg *, struct bayes_result *);
/* learning the same digest as the same class again: BAYES_ALREADY; as the
 * other class: the old learning is undone first (relearn) */
int bayes_learn(struct bayes *, const struct mime_msg *, bool is_spam,
    const uint8_t digest[BAYES_DIGEST_LEN]);
/* undo a learn; want_spam < 0: whatever class it was learned as */
int bayes_forget(struct bayes *, const struct mime_msg *, int want_spam,
    const uint8_t digest[BAYES_DIGEST_LEN]);

/* group many learns in one write transaction (the CLI's train) */
int bayes_batch_begin(struct bayes *);
int bayes_batch_end(struct bayes *, bool commit);

int bayes_stats(struct bayes *, struct bayes_stats *);
/* drop tokens seen at most max_count times in total and last learned
 * before `before`; returns how many, or -1 */
long bayes_expire(struct bayes *, time_t before, unsigned max_count);
/* text dump: "moat-bayes 1", "m nspam nham", "t <id hex> spam ham atime",
 * "d <digest hex> s|h time"; import adds to what is there */
int bayes_export(struct bayes *, FILE *);
int bayes_import(struct bayes *, FILE *, char **err);

/* ---- pieces, exposed for the tests ---- */
/* 2: all-capitals words, URL paths, Message-ID shape, more headers; a
 * superset of 1, so a version-1 store keeps scoring (the new tokens are
 * unknown to it until learned) */
#define BAYES_TOKENIZER_VERSION 3
/* calls emit once per token occurrence (not de-duplicated) */
void bayes_tokenize(const struct mime_msg *,
    void (*emit)(void *, const char *tok, size_t len), void *arg);
/* fold one word (UTF-8) into out: ASCII, Latin-1, Latin Extended-A, Greek
 * and Cyrillic lowercased; returns bytes written (< outsz) */
size_t bayes_fold(const char *in, size_t len, char *out, size_t outsz);
uint64_t bayes_hash(const char *tok, size_t len);
/* upper tail of the chi-square distribution with v (even) degrees */
double bayes_chi2q(double x2, unsigned v);
/* Fisher/Robinson combining of n token probabilities */
double bayes_combine(const double *f, size_t n);
/* the same, and ln(prob / (1 - prob)) in *lodds, exact beyond prob's
 * rounding to 0 or 1 */
double bayes_combine_ex(const double *f, size_t n, double *lodds);
/* Robinson's f(w) */
double bayes_token_prob(uint32_t spam, uint32_t ham, uint64_t nspam, uint64_t nham,
    double s, double x);
enum bayes_band bayes_band_of(double prob);
const char *bayes_band_name(enum bayes_band);

#endif
