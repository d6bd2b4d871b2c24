/*
 * test_maildir.c - unit tests of store/maildir.c (mailbox layout, unique
 * names, tmp -> new delivery, CRLF -> LF) and gateway/local.c (local
 * delivery from a spool-like file: known user, user+tag, unknown user).
 */
#include "config.h"
#include "maildir.h"
#include "local.h"
#include "buf.h"
#include "conf.h"
#include "users.h"
#include "util.h"
#include "t.h"

#include <dirent.h>
#include <fcntl.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

static char tmpdir[] = "/tmp/moat-test-maildir-XXXXXX";

static bool
is_dir(const char *base, const char *sub)
{
	char p[PATH_MAX];
	struct stat st;
	snprintf(p, sizeof(p), "%s/%s", base, sub);
	return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool
is_file(const char *base, const char *sub)
{
	char p[PATH_MAX];
	struct stat st;
	snprintf(p, sizeof(p), "%s/%s", base, sub);
	return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* the names in dir (up to max), count returned */
static int
list_dir(const char *base, const char *sub, char names[][320], int max)
{
	char p[PATH_MAX];
	DIR *d;
	struct dirent *e;
	int n = 0;

	snprintf(p, sizeof(p), "%s/%s", base, sub);
	if ((d = opendir(p)) == NULL)
		return -1;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		if (n < max)
			moat_strlcpy(names[n], e->d_name, 320);
		n++;
	}
	closedir(d);
	return n;
}

static char *
slurp(const char *base, const char *sub, const char *name, size_t *len)
{
	char p[PATH_MAX];
	struct buf b = BUF_INIT;
	char chunk[4096];
	ssize_t n;
	int fd;

	snprintf(p, sizeof(p), "%s/%s/%s", base, sub, name);
	if ((fd = open(p, O_RDONLY)) < 0)
		return NULL;
	while ((n = read(fd, chunk, sizeof(chunk))) > 0)
		buf_add(&b, chunk, (size_t)n);
	close(fd);
	buf_addc(&b, '\0');
	*len = b.len - 1;
	return buf_steal(&b);
}

static void
test_crlf(void)
{
	char out[64];
	bool cr = false;
	size_t n;

	n = maildir_crlf_to_lf("a\r\nb\r\n", 6, out, &cr, true);
	ok(n == 4 && memcmp(out, "a\nb\n", 4) == 0, "CRLF -> LF");
	cr = false;
	n = maildir_crlf_to_lf("a\rb\r", 4, out, &cr, true);
	ok(n == 4 && memcmp(out, "a\rb\r", 4) == 0, "bare CR is kept");
	/* CR at the end of one chunk, LF at the start of the next */
	cr = false;
	n = maildir_crlf_to_lf("x\r", 2, out, &cr, false);
	ok(n == 1 && cr, "chunk ending in CR holds it back");
	n = maildir_crlf_to_lf("\ny", 2, out, &cr, true);
	ok(n == 2 && memcmp(out, "\ny", 2) == 0 && !cr, "split CRLF becomes one LF");
	cr = false;
	n = maildir_crlf_to_lf("x\r", 2, out, &cr, false);
	n = maildir_crlf_to_lf("y", 1, out, &cr, true);
	ok(n == 2 && memcmp(out, "\ry", 2) == 0, "split bare CR is kept");
	cr = false;
	n = maildir_crlf_to_lf("\r\r\n", 3, out, &cr, true);
	ok(n == 2 && memcmp(out, "\r\n", 2) == 0, "CR CR LF -> CR LF");
}

static void
test_create(const char *box)
{
	static const char *const dirs[] = { "cur", "new", "tmp",
		".Sent/cur", ".Sent/new", ".Sent/tmp", ".Drafts/new", ".Trash/tmp", ".Junk/cur" };
	size_t i;

	ok(!maildir_exists(box), "no mailbox before create");
	is_int(maildir_create(box, NULL, NULL), 0, "maildir_create");
	ok(maildir_exists(box), "maildir_exists after create");
	for (i = 0; i < ARRAY_SIZE(dirs); i++)
		ok(is_dir(box, dirs[i]), "%s exists", dirs[i]);
	ok(is_file(box, ".Sent/maildirfolder") && is_file(box, ".Junk/maildirfolder"),
	    "folders carry a maildirfolder marker");
	ok(!is_file(box, "maildirfolder"), "INBOX has no maildirfolder marker");
	{
		size_t len = 0;
		char *s = slurp(box, ".", "subscriptions", &len);
		ok(s && strstr(s, "Sent\n") && strstr(s, "Junk\n"), "subscriptions lists the folders");
		free(s);
	}
	is_int(maildir_create(box, NULL, NULL), 0, "maildir_create again is harmless");
}

static void
test_deliver(const char *box)
{
	static const char msg[] = "Subject: hi\n\nline 1\nline 2\n";
	struct maildir_msg m, m2;
	char names[4][320], want[64];
	regex_t rx;
	size_t len = 0;
	char *s;
	int n;

	is_int(maildir_open(&m, box), 0, "maildir_open");
	is_int(maildir_write(&m, msg, sizeof(msg) - 1), 0, "maildir_write");
	is_int(list_dir(box, "tmp", names, 4), 1, "the message is in tmp/ while being written");
	is_int(list_dir(box, "new", names, 4), 0, "and not yet in new/");
	is_int(maildir_commit(&m), 0, "maildir_commit");
	is_int(list_dir(box, "tmp", names, 4), 0, "tmp/ is empty after commit");
	n = list_dir(box, "new", names, 4);
	is_int(n, 1, "one file in new/");
	if (n != 1)
		return;
	is_str(names[0], m.newname, "the name reported is the file in new/");
	regcomp(&rx, "^[0-9]+\\.M[0-9]{6}P[0-9]+Q[0-9]+\\.[^/:,]+,S=[0-9]+,W=[0-9]+$", REG_EXTENDED | REG_NOSUB);
	ok(regexec(&rx, names[0], 0, NULL, 0) == 0, "unique name <sec>.M<usec>P<pid>Q<n>.<host>,S=,W=: %s", names[0]);
	regfree(&rx);
	snprintf(want, sizeof(want), ",S=%zu,W=%zu", sizeof(msg) - 1, sizeof(msg) - 1 + 4);
	ok(strstr(names[0], want) != NULL, "S= is the file size, W= the CRLF size (%s)", want);
	s = slurp(box, "new", names[0], &len);
	ok(s && len == sizeof(msg) - 1 && memcmp(s, msg, len) == 0, "exact content");
	free(s);

	/* two more: distinct names */
	is_int(maildir_open(&m, box), 0, "open a second message");
	is_int(maildir_open(&m2, box), 0, "open a third message concurrently");
	ok(strcmp(m.base, m2.base) != 0, "concurrent messages get distinct names");
	maildir_write(&m, "a\n", 2);
	maildir_write(&m2, "b\n", 2);
	is_int(maildir_commit(&m2), 0, "commit third");
	is_int(maildir_commit(&m), 0, "commit second");
	is_int(list_dir(box, "new", names, 4), 3, "three files in new/");

	/* abort leaves nothing behind */
	is_int(maildir_open(&m, box), 0, "open a message to abort");
	maildir_write(&m, "x", 1);
	maildir_abort(&m);
	is_int(list_dir(box, "tmp", names, 4), 0, "abort removes the tmp file");
	is_int(list_dir(box, "new", names, 4), 3, "and adds nothing to new/");
}

static void
test_local(void)
{
	static const char spool[] = "XXXXenvelope\r\nSubject: test\r\n\r\nbody\r\n.dot\r\nbare\rcr\r\n";
	const size_t off = 14;          /* message starts after "XXXXenvelope\r\n" */
	struct buf conf = BUF_INIT, errs = BUF_INIT, reply = BUF_INIT;
	struct moat_conf *c;
	struct users *u;
	char path[PATH_MAX], box[PATH_MAX], names[4][320];
	char *err = NULL, *s;
	size_t len = 0;
	int fd, n;
	enum local_result r;

	buf_printf(&conf, "state-dir %s/state\nlisten smtp 127.0.0.1:2525\n"
	    "domain example.test deliver store\n", tmpdir);
	c = conf_load_string("test.conf", conf.data, &errs);
	ok(c != NULL, "config loads: %s", errs.len ? errs.data : "ok");
	buf_free(&conf);
	buf_free(&errs);
	if (c == NULL)
		return;
	snprintf(path, sizeof(path), "%s/state", tmpdir);
	mkdir(path, 0700);

	snprintf(path, sizeof(path), "%s/spool", tmpdir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	write_full(fd, spool, sizeof(spool) - 1);

	/* no users database yet: no such user */
	r = local_deliver(c, "alice@example.test", fd, off, sizeof(spool) - 1 - off, NULL, &reply);
	is_int(r, LOCAL_PERMFAIL, "no database: permanent failure");
	ok(strncmp(reply.data ? reply.data : "", "550 5.1.1", 9) == 0, "reply %s", reply.data);
	buf_reset(&reply);

	conf_path(c, "moat.db", path, sizeof(path));
	u = users_open(path, true, &err);
	ok(u != NULL, "users db");
	if (u == NULL)
		return;
	users_add(u, "alice@example.test", "pw", &err);
	users_close(u);

	r = local_deliver(c, "bob@example.test", fd, off, sizeof(spool) - 1 - off, NULL, &reply);
	is_int(r, LOCAL_PERMFAIL, "unknown user: permanent failure");
	ok(reply.data && strncmp(reply.data, "550 5.1.1 <bob@example.test>", 28) == 0, "reply %s", reply.data);
	buf_reset(&reply);

	r = local_deliver(c, "Alice@Example.TEST", fd, off, sizeof(spool) - 1 - off,
	    "Return-Path: <s@x.test>\r\nDelivered-To: alice@example.test\r\n", &reply);
	is_int(r, LOCAL_OK, "deliver to alice (mailbox created on the fly): %s", reply.data ? reply.data : "");
	conf_path(c, "mail/example.test/alice", box, sizeof(box));
	ok(maildir_exists(box) && is_dir(box, ".Trash/new"), "the mailbox was created with its folders");
	n = list_dir(box, "new", names, 4);
	is_int(n, 1, "one message in new/");
	if (n == 1) {
		s = slurp(box, "new", names[0], &len);
		is_str(s, "Return-Path: <s@x.test>\nDelivered-To: alice@example.test\n"
		    "Subject: test\n\nbody\n.dot\nbare\rcr\n", "prepend + message, LF endings, bare CR kept");
		free(s);
	}

	r = local_deliver(c, "alice+news@example.test", fd, off, sizeof(spool) - 1 - off, NULL, &reply);
	is_int(r, LOCAL_OK, "alice+news delivers to alice");
	is_int(list_dir(box, "new", names, 4), 2, "two messages in alice's new/");

	r = local_deliver(c, "../x@example.test", fd, off, sizeof(spool) - 1 - off, NULL, &reply);
	is_int(r, LOCAL_PERMFAIL, "a path-like address is refused");
	buf_reset(&reply);

	/* truncated spool file: temporary, nothing delivered */
	r = local_deliver(c, "alice@example.test", fd, off, sizeof(spool) + 100, NULL, &reply);
	is_int(r, LOCAL_TEMPFAIL, "short spool file: temporary failure");
	ok(reply.data && reply.data[0] == '4', "reply %s", reply.data);
	is_int(list_dir(box, "new", names, 4), 2, "nothing more in new/");
	is_int(list_dir(box, "tmp", names, 4), 0, "nothing left in tmp/");

	/* an empty message */
	r = local_deliver(c, "alice@example.test", fd, off, 0, "X: y\r", &reply);
	is_int(r, LOCAL_OK, "empty message with a prepend ending in CR");

	close(fd);
	buf_free(&reply);
	conf_free(c);
}

int
main(void)
{
	char box[PATH_MAX];

	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	test_crlf();
	snprintf(box, sizeof(box), "%s/mail/example.net/alice", tmpdir);
	test_create(box);
	test_deliver(box);
	test_local();
	{
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
		if (system(cmd) != 0)
			printf("# could not remove %s\n", tmpdir);
	}
	return t_done();
}
