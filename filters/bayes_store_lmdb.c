/*
 * bayes_store_lmdb.c - the embedded Bayes token store: one LMDB
 * environment (a directory, <state-dir>/bayes.lmdb) with three databases:
 *   tokens  8-byte token id (native integer key) -> spam, ham, atime (3 x u32)
 *   meta    name -> u64 ("nspam", "nham", "tokenizer")
 *   seen    32-byte message digest -> class (1 byte) + time (u32)
 *
 * Concurrency: LMDB gives any number of readers (threads and processes:
 * moatd and the moat CLI) that never block, and one writer at a time;
 * MDB_NOTLS lets a read transaction be used by whichever pool thread holds
 * it.  Durability: every commit is synced (a learn that returned is kept).
 * Map size: BAYES_LMDB_MAPSIZE (sparse; MDB_MAP_FULL is reported).
 *
 * Runs in: pool threads and the CLI (BLOCKING).  Untrusted input: none
 * (keys and values come from bayes.c); values of a wrong size are treated
 * as missing.
 */
#include "config.h"
#include "bayes_store.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lmdb.h>

#define BAYES_LMDB_MAPSIZE  ((size_t)4 << 30)   /* 4 GiB of address space */

struct lstore {
	MDB_env *env;
	MDB_dbi  tokens, meta, seen;
	int      rc;                     /* last LMDB error */
	char     err[128];
};

static const char *
l_errstr(void *s)
{
	struct lstore *l = s;
	return l->err[0] ? l->err : mdb_strerror(l->rc);
}

static int
fail(struct lstore *l, int rc)
{
	l->rc = rc;
	l->err[0] = '\0';
	return -1;
}

static void
l_close(void *s)
{
	struct lstore *l = s;

	if (l == NULL)
		return;
	mdb_env_close(l->env);
	free(l);
}

static void *
l_open(const char *path, bool rdonly, char **err)
{
	struct lstore *l = xcalloc(1, sizeof(*l));
	MDB_txn *txn;
	int rc;
	unsigned dbflags = rdonly ? 0 : MDB_CREATE;

	if (!rdonly && mkdir_p(path, 0750) < 0 && errno != EEXIST) {
		rc = errno;
		goto fail;
	}
	if ((rc = mdb_env_create(&l->env)) != 0)
		goto fail;
	if ((rc = mdb_env_set_maxdbs(l->env, 4)) != 0 ||
	    (rc = mdb_env_set_mapsize(l->env, BAYES_LMDB_MAPSIZE)) != 0 ||
	    (rc = mdb_env_set_maxreaders(l->env, 256)) != 0)
		goto fail;
	if ((rc = mdb_env_open(l->env, path, MDB_NOTLS | (rdonly ? MDB_RDONLY : 0), 0640)) != 0)
		goto fail;
	if ((rc = mdb_txn_begin(l->env, NULL, rdonly ? MDB_RDONLY : 0, &txn)) != 0)
		goto fail;
	if ((rc = mdb_dbi_open(txn, "tokens", dbflags | MDB_INTEGERKEY, &l->tokens)) != 0 ||
	    (rc = mdb_dbi_open(txn, "meta", dbflags, &l->meta)) != 0 ||
	    (rc = mdb_dbi_open(txn, "seen", dbflags, &l->seen)) != 0) {
		mdb_txn_abort(txn);
		goto fail;
	}
	if ((rc = mdb_txn_commit(txn)) != 0)
		goto fail;
	return l;
fail:
	if (err) {
		*err = xmalloc(strlen(path) + 160);
		snprintf(*err, strlen(path) + 160, "%s: %s", path,
		    rc == MDB_NOTFOUND ? "no Bayes database (nothing learned yet)" : mdb_strerror(rc));
	}
	if (l->env)
		mdb_env_close(l->env);
	free(l);
	return NULL;
}

static void *
l_begin(void *s, bool write)
{
	struct lstore *l = s;
	MDB_txn *txn;
	int rc;

	if ((rc = mdb_txn_begin(l->env, NULL, write ? 0 : MDB_RDONLY, &txn)) != 0) {
		fail(l, rc);
		return NULL;
	}
	return txn;
}

static int
l_commit(void *s, void *txn)
{
	int rc = mdb_txn_commit(txn);
	return rc ? fail(s, rc) : 0;
}

static void
l_abort(void *s, void *txn)
{
	(void)s;
	mdb_txn_abort(txn);
}

static int
l_get(void *s, void *txn, uint64_t id, struct bayes_counts *c)
{
	struct lstore *l = s;
	MDB_val k = { sizeof(id), &id }, v;
	int rc = mdb_get(txn, l->tokens, &k, &v);

	if (rc == MDB_NOTFOUND)
		return 1;
	if (rc)
		return fail(l, rc);
	if (v.mv_size != sizeof(*c))
		return 1;
	memcpy(c, v.mv_data, sizeof(*c));
	return 0;
}

/*
 * With the ids in key order one cursor serves them all: when the next key
 * lies on the leaf page the cursor is on, LMDB searches that page only
 * instead of descending from the root again.
 */
static int
l_get_many(void *s, void *txn, const uint64_t *ids, size_t n,
    struct bayes_counts *out, uint8_t *found)
{
	struct lstore *l = s;
	MDB_cursor *cur;
	int rc;

	if ((rc = mdb_cursor_open(txn, l->tokens, &cur)) != 0)
		return fail(l, rc);
	for (size_t i = 0; i < n; i++) {
		uint64_t id = ids[i];
		MDB_val k = { sizeof(id), &id }, v;

		found[i] = 0;
		rc = mdb_cursor_get(cur, &k, &v, MDB_SET);
		if (rc == MDB_NOTFOUND)
			continue;
		if (rc) {
			mdb_cursor_close(cur);
			return fail(l, rc);
		}
		if (v.mv_size == sizeof(out[i])) {
			memcpy(&out[i], v.mv_data, sizeof(out[i]));
			found[i] = 1;
		}
	}
	mdb_cursor_close(cur);
	return 0;
}

static int
l_snapshot(void *s, void *txn, uint64_t *id)
{
	(void)s;
	*id = (uint64_t)mdb_txn_id(txn);
	return 0;
}

static int
l_put(void *s, void *txn, uint64_t id, const struct bayes_counts *c)
{
	struct lstore *l = s;
	MDB_val k = { sizeof(id), &id }, v = { sizeof(*c), (void *)c };
	int rc;

	if (c->spam == 0 && c->ham == 0) {
		rc = mdb_del(txn, l->tokens, &k, NULL);
		return rc && rc != MDB_NOTFOUND ? fail(l, rc) : 0;
	}
	rc = mdb_put(txn, l->tokens, &k, &v, 0);
	return rc ? fail(l, rc) : 0;
}

static int
l_meta_get(void *s, void *txn, const char *key, uint64_t *out)
{
	struct lstore *l = s;
	MDB_val k = { strlen(key), (void *)key }, v;
	int rc = mdb_get(txn, l->meta, &k, &v);

	*out = 0;
	if (rc == MDB_NOTFOUND)
		return 1;
	if (rc)
		return fail(l, rc);
	if (v.mv_size == sizeof(*out))
		memcpy(out, v.mv_data, sizeof(*out));
	return 0;
}

static int
l_meta_put(void *s, void *txn, const char *key, uint64_t val)
{
	struct lstore *l = s;
	MDB_val k = { strlen(key), (void *)key }, v = { sizeof(val), &val };
	int rc = mdb_put(txn, l->meta, &k, &v, 0);

	return rc ? fail(l, rc) : 0;
}

struct seen_val {
	uint8_t  spam;
	uint8_t  pad[3];
	uint32_t when;
};

static int
l_seen_get(void *s, void *txn, const uint8_t *d, int *spam, uint32_t *when)
{
	struct lstore *l = s;
	MDB_val k = { BAYES_DIGEST_LEN, (void *)d }, v;
	struct seen_val sv;
	int rc = mdb_get(txn, l->seen, &k, &v);

	if (rc == MDB_NOTFOUND)
		return 1;
	if (rc)
		return fail(l, rc);
	if (v.mv_size != sizeof(sv))
		return 1;
	memcpy(&sv, v.mv_data, sizeof(sv));
	*spam = sv.spam;
	*when = sv.when;
	return 0;
}

static int
l_seen_put(void *s, void *txn, const uint8_t *d, int spam, uint32_t when)
{
	struct lstore *l = s;
	struct seen_val sv = { (uint8_t)(spam ? 1 : 0), { 0, 0, 0 }, when };
	MDB_val k = { BAYES_DIGEST_LEN, (void *)d }, v = { sizeof(sv), &sv };
	int rc = mdb_put(txn, l->seen, &k, &v, 0);

	return rc ? fail(l, rc) : 0;
}

static int
l_seen_del(void *s, void *txn, const uint8_t *d)
{
	struct lstore *l = s;
	MDB_val k = { BAYES_DIGEST_LEN, (void *)d };
	int rc = mdb_del(txn, l->seen, &k, NULL);

	return rc && rc != MDB_NOTFOUND ? fail(l, rc) : 0;
}

static int
l_tokens(void *s, void *txn, int (*cb)(void *, uint64_t, const struct bayes_counts *), void *arg)
{
	struct lstore *l = s;
	MDB_cursor *cur;
	MDB_val k, v;
	int rc, op = MDB_FIRST;

	if ((rc = mdb_cursor_open(txn, l->tokens, &cur)) != 0)
		return fail(l, rc);
	while ((rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
		struct bayes_counts c;
		uint64_t id;
		int r;

		op = MDB_NEXT;
		if (k.mv_size != sizeof(id) || v.mv_size != sizeof(c))
			continue;
		memcpy(&id, k.mv_data, sizeof(id));
		memcpy(&c, v.mv_data, sizeof(c));
		if ((r = cb(arg, id, &c)) < 0)
			break;
		if (r == 1 && (rc = mdb_cursor_del(cur, 0)) != 0) {
			mdb_cursor_close(cur);
			return fail(l, rc);
		}
	}
	mdb_cursor_close(cur);
	if (rc != 0 && rc != MDB_NOTFOUND)
		return fail(l, rc);
	return 0;
}

static int
l_seen_walk(void *s, void *txn, int (*cb)(void *, const uint8_t *, int, uint32_t), void *arg)
{
	struct lstore *l = s;
	MDB_cursor *cur;
	MDB_val k, v;
	int rc, op = MDB_FIRST;

	if ((rc = mdb_cursor_open(txn, l->seen, &cur)) != 0)
		return fail(l, rc);
	while ((rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
		struct seen_val sv;

		op = MDB_NEXT;
		if (k.mv_size != BAYES_DIGEST_LEN || v.mv_size != sizeof(sv))
			continue;
		memcpy(&sv, v.mv_data, sizeof(sv));
		if (cb(arg, k.mv_data, sv.spam, sv.when) < 0)
			break;
	}
	mdb_cursor_close(cur);
	if (rc != 0 && rc != MDB_NOTFOUND)
		return fail(l, rc);
	return 0;
}

static int
l_count(void *s, void *txn, uint64_t *ntok, uint64_t *nseen)
{
	struct lstore *l = s;
	MDB_stat st;
	int rc;

	if ((rc = mdb_stat(txn, l->tokens, &st)) != 0)
		return fail(l, rc);
	*ntok = st.ms_entries;
	if ((rc = mdb_stat(txn, l->seen, &st)) != 0)
		return fail(l, rc);
	*nseen = st.ms_entries;
	return 0;
}

const struct bayes_store_ops bayes_store_lmdb = {
	.name = "lmdb",
	.open = l_open,
	.close = l_close,
	.errstr = l_errstr,
	.begin = l_begin,
	.commit = l_commit,
	.abort = l_abort,
	.get = l_get,
	.get_many = l_get_many,
	.snapshot = l_snapshot,
	.put = l_put,
	.meta_get = l_meta_get,
	.meta_put = l_meta_put,
	.seen_get = l_seen_get,
	.seen_put = l_seen_put,
	.seen_del = l_seen_del,
	.tokens = l_tokens,
	.seen_walk = l_seen_walk,
	.count = l_count,
};
