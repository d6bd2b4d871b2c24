/*
 * bayes_store.h - the token store behind the Bayesian scorer, as a table of
 * operations so that a shared backend (Redis, for several gateway nodes)
 * can sit next to the embedded one (LMDB, bayes_store_lmdb.c).
 *
 * A store holds: token id (64-bit hash) -> struct bayes_counts; named
 * 64-bit counters (meta: "nspam", "nham", "tokenizer"); and the digests of
 * learned messages -> class and time.  Every access happens inside a
 * transaction that begin() returns; read transactions may run in many
 * threads at once, write transactions are serialised by the backend.
 * Functions return 0 on success, 1 for "not found", -1 on error (the
 * backend's error text in *err of open(), or from errstr()).
 */
#ifndef MOAT_BAYES_STORE_H
#define MOAT_BAYES_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "bayes.h"

struct bayes_store_ops {
	const char *name;
	void *(*open)(const char *path, bool rdonly, char **err);
	void  (*close)(void *store);
	const char *(*errstr)(void *store);
	void *(*begin)(void *store, bool write);
	int   (*commit)(void *store, void *txn);
	void  (*abort)(void *store, void *txn);
	int   (*get)(void *store, void *txn, uint64_t id, struct bayes_counts *);
	/* optional: n ids in ascending order; found[i] 1 with out[i] filled,
	 * or 0; 0 or -1 */
	int   (*get_many)(void *store, void *txn, const uint64_t *ids, size_t n,
	    struct bayes_counts *out, uint8_t *found);
	/* optional: an id of the committed state a read txn sees (two read
	 * txns with the same id see the same data); 0, or -1 if none */
	int   (*snapshot)(void *store, void *txn, uint64_t *id);
	/* counts 0/0 delete the token */
	int   (*put)(void *store, void *txn, uint64_t id, const struct bayes_counts *);
	int   (*meta_get)(void *store, void *txn, const char *key, uint64_t *);
	int   (*meta_put)(void *store, void *txn, const char *key, uint64_t);
	int   (*seen_get)(void *store, void *txn, const uint8_t *digest, int *is_spam, uint32_t *when);
	int   (*seen_put)(void *store, void *txn, const uint8_t *digest, int is_spam, uint32_t when);
	int   (*seen_del)(void *store, void *txn, const uint8_t *digest);
	/* walk tokens; cb returns 1 to delete the current token, 0 to go on,
	 * -1 to stop */
	int   (*tokens)(void *store, void *txn,
	    int (*cb)(void *arg, uint64_t id, const struct bayes_counts *), void *arg);
	int   (*seen_walk)(void *store, void *txn,
	    int (*cb)(void *arg, const uint8_t *digest, int is_spam, uint32_t when), void *arg);
	int   (*count)(void *store, void *txn, uint64_t *ntokens, uint64_t *nseen);
};

extern const struct bayes_store_ops bayes_store_lmdb;

#endif
