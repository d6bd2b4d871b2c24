/*
 * test_users.c - unit tests of lib/users.c: address canonicalisation,
 * add/duplicate/verify/passwd/del/list on a database in a temporary dir,
 * the CRAM-MD5/SCRAM secrets stored by add/passwd, per-thread handles.
 */
#include "config.h"
#include "users.h"
#include "util.h"
#include "t.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <sqlite3.h>

static void
canon_ok(const char *in, const char *delim, const char *want)
{
	char out[256];
	bool r = users_canon(in, delim, out, sizeof(out));
	ok(r, "canon accepts \"%s\" (delim %s)", in, delim ? delim : "none");
	if (r)
		is_str(out, want, "canon \"%s\" -> \"%s\"", in, want);
}

static void
canon_bad(const char *in, const char *why)
{
	char out[256];
	ok(!users_canon(in, "+", out, sizeof(out)), "canon rejects %s", why);
}

struct list_acc {
	char seen[512];
	int n;
	long long min_created;
};

static void
list_cb(const char *addr, long long created, void *arg)
{
	struct list_acc *a = arg;
	moat_strlcat(a->seen, addr, sizeof(a->seen));
	moat_strlcat(a->seen, " ", sizeof(a->seen));
	if (a->n == 0 || created < a->min_created)
		a->min_created = created;
	a->n++;
}

static const char *thread_path;

static void *
thread_main(void *arg)
{
	struct users **out = arg;

	*out = users_thread_handle(thread_path, NULL);
	/* closed by the thread-exit destructor (ASan reports a leak otherwise) */
	return NULL;
}

static void
test_secrets(struct users *u, const char *path)
{
	struct user_secrets s1, s2, want;
	sqlite3 *db;

	is_int(users_get_secrets(u, "ALICE@example.net", &s1), 1, "secrets: alice found");
	ok(s1.has_cram_md5 && s1.has_scram, "secrets: CRAM-MD5 and SCRAM present");
	is_int(s1.scram_iter, USERS_SCRAM_ITER, "secrets: 4096 iterations");
	is_int(s1.scram_saltlen, USERS_SCRAM_SALT_LEN, "secrets: 16-byte salt");
	is_int(users_derive_secrets("n3w", s1.scram_salt, s1.scram_saltlen, s1.scram_iter, &want), 0,
	    "secrets: derive");
	ok(memcmp(want.cram_md5, s1.cram_md5, sizeof(want.cram_md5)) == 0,
	    "secrets: CRAM-MD5 state is derived from the password");
	ok(memcmp(want.scram_stored_key, s1.scram_stored_key, USERS_KEY_LEN) == 0 &&
	    memcmp(want.scram_server_key, s1.scram_server_key, USERS_KEY_LEN) == 0,
	    "secrets: StoredKey and ServerKey are derived from the password");

	is_int(users_passwd(u, "alice@example.net", "other", NULL), 0, "secrets: passwd");
	is_int(users_get_secrets(u, "alice@example.net", &s2), 1, "secrets: found after passwd");
	ok(s2.has_cram_md5 && s2.has_scram && memcmp(s1.cram_md5, s2.cram_md5, 32) != 0 &&
	    memcmp(s1.scram_salt, s2.scram_salt, USERS_SCRAM_SALT_LEN) != 0,
	    "secrets: passwd replaces them (new salt)");
	is_int(users_add(u, "twin@example.net", "n3w", NULL), 0, "secrets: add a user with alice's old password");
	is_int(users_get_secrets(u, "twin@example.net", &s2), 1, "secrets: twin found");
	ok(memcmp(s1.scram_salt, s2.scram_salt, USERS_SCRAM_SALT_LEN) != 0 &&
	    memcmp(s1.scram_stored_key, s2.scram_stored_key, USERS_KEY_LEN) != 0,
	    "secrets: same password, different salt and StoredKey");

	is_int(users_get_secrets(u, "nobody@example.net", &s2), 0, "secrets: unknown user");
	ok(!s2.has_cram_md5 && !s2.has_scram, "secrets: nothing for an unknown user");
	is_int(users_get_secrets(u, "garbage", &s2), 0, "secrets: invalid address");

	/* users from before the secrets existed, and damaged columns */
	ok(sqlite3_open(path, &db) == SQLITE_OK, "secrets: open the db directly");
	ok(sqlite3_exec(db, "UPDATE users SET cram_md5 = NULL, scram_sha256 = NULL"
	    " WHERE address = 'twin@example.net'", NULL, NULL, NULL) == SQLITE_OK, "secrets: clear twin's");
	is_int(users_get_secrets(u, "twin@example.net", &s2), 1, "secrets: old user found");
	ok(!s2.has_cram_md5 && !s2.has_scram, "secrets: old user has none");
	is_int(users_verify(u, "twin@example.net", "n3w"), 1, "secrets: old user still verifies (PLAIN/LOGIN)");
	ok(sqlite3_exec(db, "UPDATE users SET cram_md5 = 'zz', scram_sha256 ="
	    " 'SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA' WHERE address = 'twin@example.net'",
	    NULL, NULL, NULL) == SQLITE_OK, "secrets: damage twin's");
	is_int(users_get_secrets(u, "twin@example.net", &s2), 1, "secrets: damaged user found");
	ok(!s2.has_cram_md5 && !s2.has_scram, "secrets: damaged secrets are not used");
	sqlite3_close(db);
	is_int(users_passwd(u, "twin@example.net", "again", NULL), 0, "secrets: passwd restores them");
	is_int(users_get_secrets(u, "twin@example.net", &s2), 1, "secrets: twin again");
	ok(s2.has_cram_md5 && s2.has_scram, "secrets: present again after passwd");
	is_int(users_del(u, "twin@example.net", NULL), 0, "secrets: del twin");
	is_int(users_passwd(u, "alice@example.net", "n3w", NULL), 0, "secrets: alice back to n3w");
	users_secrets_clear(&s1);
	users_secrets_clear(&s2);
	users_secrets_clear(&want);
	ok(!s1.has_scram && s1.scram_iter == 0, "secrets: clear zeroes");
}

static void
test_thread_handle(const char *path, const char *dir)
{
	struct users *a, *b, *other = NULL;
	char missing[PATH_MAX];
	char *err = NULL;
	pthread_t th;

	a = users_thread_handle(path, &err);
	ok(a != NULL, "thread handle: opens");
	b = users_thread_handle(path, &err);
	ok(a == b, "thread handle: the same handle on the next call");
	is_int(users_exists(a, "alice@example.net", NULL), 1, "thread handle: works");
	thread_path = path;
	ok(pthread_create(&th, NULL, thread_main, &other) == 0 && pthread_join(th, NULL) == 0,
	    "thread handle: another thread");
	ok(other != NULL && other != a, "thread handle: another thread has its own handle");
	users_thread_drop();
	b = users_thread_handle(path, &err);
	ok(b != NULL, "thread handle: reopens after drop");
	snprintf(missing, sizeof(missing), "%s/missing.db", dir);
	errno = 0;
	b = users_thread_handle(missing, &err);
	ok(b == NULL && errno == ENOENT && err != NULL, "thread handle: a missing database is ENOENT");
	free(err);
	users_thread_drop();
}

int
main(void)
{
	char dir[] = "/tmp/moat-test-users-XXXXXX";
	char path[PATH_MAX], out[256], big[400];
	struct users *u, *u2;
	char *err = NULL;
	struct list_acc acc;
	struct stat st;

	/* canonical form */
	canon_ok("Alice@Example.NET", NULL, "alice@example.net");
	canon_ok("alice+tag@example.net", "+", "alice@example.net");
	canon_ok("ALICE+Tag+more@EXAMPLE.net", "+", "alice@example.net");
	canon_ok("alice+tag@example.net", NULL, "alice+tag@example.net");
	canon_ok("alice+tag@example.net", "", "alice+tag@example.net");
	canon_ok("alice-tag@example.net", "-", "alice@example.net");
	canon_ok("+tag@example.net", "+", "+tag@example.net");
	canon_ok("first.last@example.net", "+", "first.last@example.net");
	canon_bad("alice", "no @");
	canon_bad("@example.net", "an empty local part");
	canon_bad("alice@", "an empty domain");
	canon_bad("a@b@example.net", "two @");
	canon_bad("al\rice@example.net", "CR");
	canon_bad("alice@example.net\n", "LF");
	canon_bad("../etc@example.net", "a leading dot");
	canon_bad(".hidden@example.net", "a leading dot (hidden dir)");
	canon_bad("a/b@example.net", "'/' in the local part");
	canon_bad("alice@../../etc", "'..' as domain");
	canon_bad("alice@exa/mple.net", "'/' in the domain");
	canon_bad("alice@.example.net", "a leading dot in the domain");
	canon_bad("alice@example..net", "'..' in the domain");
	canon_bad("", "an empty string");
	memset(big, 'a', sizeof(big));
	memcpy(big + 250, "@example.net", 13);
	canon_bad(big, "over 254 bytes");
	ok(!users_canon("alice@example.net", NULL, out, 10), "canon fails when out is too small");

	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(path, sizeof(path), "%s/moat.db", dir);

	u = users_open(path, false, &err);
	ok(u == NULL && err != NULL, "open without create on a missing file fails");
	free(err);
	err = NULL;

	u = users_open(path, true, &err);
	ok(u != NULL, "open with create: %s", err ? err : "ok");
	if (u == NULL)
		return t_done();
	ok(stat(path, &st) == 0 && (st.st_mode & 077) == 0, "moat.db is not readable by others");

	is_int(users_exists(u, "alice@example.net", "+"), 0, "alice does not exist yet");
	is_int(users_add(u, "Alice@Example.NET", "s3cret pw", &err), 0, "add alice");
	is_int(users_exists(u, "alice@example.net", "+"), 1, "alice exists");
	is_int(users_exists(u, "ALICE@example.net", "+"), 1, "exists is case-insensitive");
	is_int(users_exists(u, "alice+list@example.net", "+"), 1, "alice+list reaches alice");
	is_int(users_exists(u, "alice+list@example.net", NULL), 0, "without a delimiter alice+list is another user");
	is_int(users_exists(u, "bob@example.net", "+"), 0, "bob does not exist");
	is_int(users_exists(u, "garbage", "+"), 0, "an invalid address is no user");

	err = NULL;
	is_int(users_add(u, "alice@example.net", "other", &err), -1, "duplicate add fails");
	ok(err && strstr(err, "exists"), "duplicate add says the user exists: %s", err ? err : "(null)");
	free(err);
	err = NULL;
	is_int(users_add(u, "bad address", "pw", &err), -1, "add of an invalid address fails");
	free(err);
	err = NULL;
	is_int(users_add(u, "carol@example.net", "", &err), -1, "add with an empty password fails");
	free(err);
	err = NULL;

	is_int(users_verify(u, "alice@example.net", "s3cret pw"), 1, "verify: right password");
	is_int(users_verify(u, "ALICE@EXAMPLE.NET", "s3cret pw"), 1, "verify: address is case-insensitive");
	is_int(users_verify(u, "alice@example.net", "s3cret pW"), 0, "verify: wrong password");
	is_int(users_verify(u, "alice@example.net", ""), 0, "verify: empty password");
	is_int(users_verify(u, "nobody@example.net", "s3cret pw"), 0, "verify: unknown user");
	is_int(users_verify(u, "not an address", "x"), 0, "verify: invalid address");

	/* no user enumeration by timing: an unknown user costs a hash too */
	{
		uint64_t t0, t_known = 0, t_unknown = 0;
		int i;
		for (i = 0; i < 3; i++) {
			t0 = wall_us();
			users_verify(u, "alice@example.net", "wrong");
			t_known += wall_us() - t0;
			t0 = wall_us();
			users_verify(u, "nobody@example.net", "wrong");
			t_unknown += wall_us() - t0;
		}
		ok(t_unknown * 3 >= t_known, "verify of an unknown user costs about as much as a wrong "
		    "password (%llu vs %llu us)", (unsigned long long)t_unknown, (unsigned long long)t_known);
	}

	/* a second handle (another thread/process) sees the same data */
	u2 = users_open(path, false, &err);
	ok(u2 != NULL, "second handle opens");
	if (u2) {
		is_int(users_exists(u2, "alice@example.net", NULL), 1, "second handle sees alice");
		users_close(u2);
	}

	is_int(users_passwd(u, "alice@example.net", "n3w", &err), 0, "passwd alice");
	is_int(users_verify(u, "alice@example.net", "s3cret pw"), 0, "old password no longer works");
	is_int(users_verify(u, "alice@example.net", "n3w"), 1, "new password works");
	is_int(users_passwd(u, "bob@example.net", "x", &err), -1, "passwd of an unknown user fails");
	free(err);
	err = NULL;

	test_secrets(u, path);
	test_thread_handle(path, dir);

	is_int(users_add(u, "bob@example.net", "b", &err), 0, "add bob");
	is_int(users_add(u, "aaron@example.org", "a", &err), 0, "add aaron");
	memset(&acc, 0, sizeof(acc));
	is_int(users_list(u, list_cb, &acc), 3, "list returns 3");
	is_str(acc.seen, "aaron@example.org alice@example.net bob@example.net ", "list in address order");
	ok(acc.min_created > 1600000000, "list gives a creation time");

	is_int(users_del(u, "Bob@example.net", &err), 0, "del bob");
	is_int(users_exists(u, "bob@example.net", NULL), 0, "bob is gone");
	is_int(users_del(u, "bob@example.net", &err), -1, "del of an unknown user fails");
	ok(err && strstr(err, "no such user"), "del says no such user: %s", err ? err : "(null)");
	free(err);
	err = NULL;
	memset(&acc, 0, sizeof(acc));
	is_int(users_list(u, list_cb, &acc), 2, "list returns 2 after del");

	/* SQL metacharacters are data, not SQL */
	is_int(users_add(u, "o'neil\"x;drop@example.net", "q", &err), 0, "add an address with quotes");
	is_int(users_exists(u, "o'neil\"x;drop@example.net", NULL), 1, "and find it");

	users_close(u);

	/* reopen: data persisted */
	u = users_open(path, false, &err);
	ok(u != NULL, "reopen");
	if (u) {
		is_int(users_verify(u, "alice@example.net", "n3w"), 1, "password persisted");
		users_close(u);
	}

	{
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
		if (system(cmd) != 0)
			printf("# could not remove %s\n", dir);
	}
	return t_done();
}
