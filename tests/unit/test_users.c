/*
 * test_users.c - unit tests of lib/users.c: address canonicalisation,
 * add/duplicate/verify/passwd/del/list on a database in a temporary dir.
 */
#include "config.h"
#include "users.h"
#include "util.h"
#include "t.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

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
