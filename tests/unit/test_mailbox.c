/*
 * test_mailbox.c - unit tests of store/mailbox.c: UIDs assigned in
 * arrival order and stable across syncs and flag changes, new/ -> cur/
 * with \Recent, flags in the info suffix, append/copy/expunge, a lost
 * index rebuilt with a new UIDVALIDITY, folders and subscriptions, the
 * envelope-field cache (served without the file, a torn tail dropped,
 * rebuilt when deleted or when the UIDVALIDITY changes).
 */
#include "config.h"
#include "mailbox.h"
#include "maildir.h"
#include "buf.h"
#include "util.h"
#include "t.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/moat-test-mailbox-XXXXXX";

static void
deliver(const char *root, const char *text)
{
	struct maildir_msg m;
	if (maildir_open(&m, root) < 0 || maildir_write(&m, text, strlen(text)) < 0 || maildir_commit(&m) < 0)
		printf("# deliver failed\n");
}

/* replace the text of a message file in place (as if read from elsewhere) */
static void
overwrite(const char *root, const struct mbox_msg *m, const char *text)
{
	char p[PATH_MAX];
	FILE *f;
	snprintf(p, sizeof(p), "%s/cur/%s", root, m->file);
	if ((f = fopen(p, "w")) == NULL || fputs(text, f) < 0 || fclose(f) != 0)
		printf("# overwrite %s failed\n", p);
}

static long long
fsize(const char *dir, const char *name)
{
	char p[PATH_MAX];
	struct stat st;
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	return stat(p, &st) < 0 ? -1 : (long long)st.st_size;
}

/* the cached fields of the message with uid in a fresh session */
static bool
envhdr_is(const char *root, uint32_t uid, const char *want)
{
	char *err = NULL;
	struct mbox *mb = mbox_open(root, "INBOX", &err);
	struct buf b = BUF_INIT;
	bool r = false;
	if (mb != NULL && mbox_sync(mb, true, &err) == 0 && mbox_find(mb, uid) != NULL &&
	    mbox_msg_envhdr(mb, mbox_find(mb, uid), &b) == 0)
		r = b.data != NULL && strcmp(b.data, want) == 0;
	if (!r)
		printf("# uid %u: got \"%s\" want \"%s\"\n", uid, b.data ? b.data : "(null)", want);
	mbox_cache_flush(mb);
	mbox_close(mb);
	buf_free(&b);
	free(err);
	return r;
}

static void
test_cache(void)
{
	char root[PATH_MAX], p[PATH_MAX], *err = NULL;
	struct mbox *mb;
	struct buf b = BUF_INIT;
	FILE *f;

	snprintf(root, sizeof(root), "%s/cachebox", tmpdir);
	ok(maildir_create(root, NULL, NULL) == 0, "cache: mailbox created");
	deliver(root, "Received: by x\nFrom: A <a@x.test>\nX-Other: no\nSubject: one\n two\nTo: b@x.test\n\nbody\n");
	deliver(root, "Subject: second\nMessage-ID: <2@x>\n\nbody: x\nFrom: not a header\n");
	deliver(root, "From: c@x.test\n\n");
	ok(mbox_cached_field("from") && mbox_cached_field("Message-ID") && !mbox_cached_field("X-Other"),
	   "cache: the envelope fields");
	mb = mbox_open(root, "INBOX", &err);
	ok(mb != NULL && mbox_sync(mb, true, &err) == 0 && mb->nmsgs == 3, "cache: 3 messages");
	if (mb == NULL || mb->nmsgs != 3)
		return;
	ok(mbox_msg_envhdr(mb, &mb->msgs[0], &b) == 0 &&
	   !strcmp(b.data, "From: A <a@x.test>\nSubject: one\n two\nTo: b@x.test\n\n"),
	   "cache: fields of message 1, folded line kept, others left out");
	buf_reset(&b);
	ok(mbox_msg_envhdr(mb, &mb->msgs[1], &b) == 0 && !strcmp(b.data, "Subject: second\nMessage-ID: <2@x>\n\n"),
	   "cache: only the header section");
	buf_reset(&b);
	ok(mbox_msg_envhdr(mb, &mb->msgs[2], &b) == 0 && !strcmp(b.data, "From: c@x.test\n\n"), "cache: message 3");
	ok(fsize(root, "moat-cache") < 0, "cache: nothing written before the flush");
	mbox_cache_flush(mb);
	long long size3 = fsize(root, "moat-cache");
	ok(size3 > 32, "cache: written by the flush (%lld bytes)", size3);

	/* served from the cache: the file is not read again */
	overwrite(root, &mb->msgs[0], "Subject: changed\n\n");
	ok(envhdr_is(root, 1, "From: A <a@x.test>\nSubject: one\n two\nTo: b@x.test\n\n"), "cache: hit in another session");
	is_int(fsize(root, "moat-cache"), size3, "cache: a hit writes nothing");

	/* a torn tail (a crash while appending): the records before it count,
	 * the next append replaces it */
	snprintf(p, sizeof(p), "%s/moat-cache", root);
	if ((f = fopen(p, "a")) != NULL) {
		fputs("\x04\0\0\0\xff", f);
		fclose(f);
	}
	ok(envhdr_is(root, 1, "From: A <a@x.test>\nSubject: one\n two\nTo: b@x.test\n\n"), "cache: valid records before a torn tail");
	deliver(root, "Subject: four\n\n");
	ok(envhdr_is(root, 4, "Subject: four\n\n"), "cache: a new message");
	ok(fsize(root, "moat-cache") == size3 + 16 + 15, "cache: torn tail replaced by the new record (%lld)",
	   fsize(root, "moat-cache"));
	ok(envhdr_is(root, 2, "Subject: second\nMessage-ID: <2@x>\n\n"), "cache: still readable");

	/* deleted: rebuilt from the files */
	unlink(p);
	ok(envhdr_is(root, 1, "Subject: changed\n\n"), "cache: deleted, read from the file again");
	ok(fsize(root, "moat-cache") > 32, "cache: rewritten");

	/* the index lost: UIDs given again (the first message gone, uid 1
	 * is now the second one); its old records must not be used, whether
	 * the new UIDVALIDITY differs or (same second) not */
	snprintf(p, sizeof(p), "%s/cur/%s", root, mb->msgs[0].file);
	unlink(p);
	snprintf(p, sizeof(p), "%s/moat-uidlist", root);
	unlink(p);
	ok(envhdr_is(root, 1, "Subject: second\nMessage-ID: <2@x>\n\n"), "cache: not used for UIDs given again");

	mbox_close(mb);
	buf_free(&b);
	free(err);
}

static int
count(const char *root, const char *sub)
{
	char p[PATH_MAX];
	DIR *d;
	struct dirent *de;
	int n = 0;
	snprintf(p, sizeof(p), "%s/%s", root, sub);
	if ((d = opendir(p)) == NULL)
		return -1;
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

int
main(void)
{
	char root[PATH_MAX], *err = NULL;
	struct mbox *mb, *mb2, *sent;
	struct buf b = BUF_INIT;
	uint32_t uid = 0, uids[3], out[3];
	uint32_t uv;

	if (mkdtemp(tmpdir) == NULL)
		return 1;
	snprintf(root, sizeof(root), "%s/box", tmpdir);
	ok(maildir_create(root, NULL, NULL) == 0, "mailbox created");
	deliver(root, "Subject: one\n\nbody one\n");
	deliver(root, "Subject: two\n\nbody two\n");

	ok(mbox_name_valid("Sent", 4) && mbox_name_valid("a.b", 3), "valid names");
	ok(!mbox_name_valid("../x", 4) && !mbox_name_valid(".x", 2) && !mbox_name_valid("a..b", 4) &&
	   !mbox_name_valid("a/b", 3) && !mbox_name_valid("", 0), "invalid names refused");

	mb = mbox_open(root, "inbox", &err);
	ok(mb != NULL, "open INBOX (any case)");
	ok(mbox_sync(mb, true, &err) == 0, "sync");
	is_int(mb->nmsgs, 2, "two messages");
	is_int(mb->msgs[0].uid, 1, "uid 1");
	is_int(mb->msgs[1].uid, 2, "uid 2");
	is_int(mb->uidnext, 3, "uidnext 3");
	ok(mb->msgs[0].flags & MBOX_F_RECENT, "recent after new/ -> cur/");
	is_int(count(root, "new"), 0, "new/ emptied");
	is_int(count(root, "cur"), 2, "cur/ has both");
	is_int(mb->msgs[0].vsize, mb->msgs[0].size + 3, "vsize counts CRLF");
	uv = mb->uidvalidity;

	ok(mbox_msg_read(mb, &mb->msgs[1], &b) == 0 && strstr(b.data, "body two") != NULL, "read message 2");
	buf_reset(&b);
	ok(mbox_msg_read_header(mb, &mb->msgs[0], &b) == 0 && !strcmp(b.data, "Subject: one\n\n"), "read header only");

	uids[0] = 1;
	ok(mbox_store(mb, uids, 1, '+', MBOX_F_SEEN | MBOX_F_FLAGGED, &err) == 0, "store +FLAGS");
	ok(strstr(mb->msgs[0].file, ":2,FS") != NULL, "info suffix :2,FS (%s)", mb->msgs[0].file);

	/* a second session sees the same UIDs and flags */
	mb2 = mbox_open(root, "INBOX", &err);
	ok(mbox_sync(mb2, true, &err) == 0 && mb2->nmsgs == 2 && mb2->msgs[0].uid == 1 &&
	   (mb2->msgs[0].flags & MBOX_F_SEEN) && !(mb2->msgs[0].flags & MBOX_F_RECENT), "second session: same uids, flags, not recent");
	/* it changes a flag: the first one follows the rename */
	uids[0] = 1;
	ok(mbox_store(mb2, uids, 1, '-', MBOX_F_FLAGGED, &err) == 0, "second session: -FLAGS");
	ok(mbox_store(mb, uids, 1, '+', MBOX_F_ANSWERED, &err) == 0, "first session: +FLAGS on a renamed file");
	ok(mbox_sync(mb, false, &err) == 0 && mb->msgs[0].flags == (MBOX_F_SEEN | MBOX_F_ANSWERED | MBOX_F_RECENT),
	   "flags merged (%x)", mb->msgs[0].flags);

	deliver(root, "Subject: three\n\nbody three\n");
	ok(mbox_sync(mb2, true, &err) == 0 && mb2->nmsgs == 3 && mb2->msgs[2].uid == 3, "new arrival gets uid 3");
	ok(mbox_sync(mb, true, &err) == 0 && mb->nmsgs == 3 && mb->msgs[2].uid == 3 &&
	   !(mb->msgs[2].flags & MBOX_F_RECENT), "other session: uid 3, not recent for it");

	ok(mbox_append(mb, "Subject: four\r\n\r\nbody\r\n", 23, MBOX_F_SEEN, 1000000000, &uid, &err) == 0, "append");
	is_int(uid, 4, "appended uid 4");
	ok(mbox_find(mb, 4) && mbox_find(mb, 4)->idate == 1000000000, "internal date kept");
	ok(mbox_find(mb, 4) && mbox_find(mb, 4)->size == 20, "stored with LF");

	sent = mbox_open(root, "Sent", &err);
	ok(sent != NULL && mbox_sync(sent, true, &err) == 0, "open Sent");
	uids[0] = 2; uids[1] = 4;
	ok(mbox_copy(mb, uids, 2, sent, out, &err) == 0, "copy 2 messages");
	ok(out[0] == 1 && out[1] == 2 && sent->nmsgs == 2, "copy uids 1,2 in Sent");
	ok(sent->msgs[1].flags & MBOX_F_SEEN, "flags copied");

	uids[0] = 1; uids[1] = 3;
	ok(mbox_expunge(mb, uids, 2, &err) == 0 && mb->nmsgs == 2, "expunge 2");
	ok(mbox_sync(mb2, true, &err) == 0 && mb2->nmsgs == 2 && mb2->msgs[0].uid == 2 && mb2->msgs[1].uid == 4,
	   "other session sees the expunge");
	is_int(mb2->uidvalidity, uv, "uidvalidity stable");

	/* the index lost: rebuilt, new UIDVALIDITY */
	{
		char p[PATH_MAX];
		snprintf(p, sizeof(p), "%s/moat-uidlist", root);
		unlink(p);
	}
	ok(mbox_sync(mb, true, &err) == 0 && mb->nmsgs == 2 && mb->uidvalidity != uv, "index rebuilt with a new uidvalidity");

	/* folders */
	struct mbox_folder *f = NULL;
	int n = mbox_folders(root, &f, &err);
	is_int(n, 5, "INBOX + 4 default folders");
	ok(n > 0 && !strcmp(f[0].name, "INBOX"), "INBOX first");
	free(f);
	ok(mbox_create(root, "Work", &err) == 0 && mbox_create(root, "Work.2024", &err) == 0, "create Work, Work.2024");
	ok(mbox_create(root, "Work", &err) < 0, "create twice fails");
	ok(mbox_rename(root, "Work", "Job", &err) == 0, "rename Work -> Job");
	n = mbox_folders(root, &f, &err);
	{
		bool job = false, job2 = false, work = false;
		for (int i = 0; i < n; i++) {
			job |= !strcmp(f[i].name, "Job") && f[i].children;
			job2 |= !strcmp(f[i].name, "Job.2024");
			work |= !strncmp(f[i].name, "Work", 4);
		}
		ok(job && job2 && !work, "children renamed too");
	}
	free(f);
	ok(mbox_subscribe(root, "Job", true, &err) == 0, "subscribe");
	n = mbox_folders(root, &f, &err);
	{
		bool sub = false;
		for (int i = 0; i < n; i++)
			sub |= !strcmp(f[i].name, "Job") && f[i].subscribed;
		ok(sub, "subscribed");
	}
	free(f);
	ok(mbox_delete(root, "Job.2024", &err) == 0 && mbox_delete(root, "INBOX", &err) < 0, "delete");
	struct mbox_status st;
	ok(mbox_get_status(root, "Sent", &st, &err) == 0 && st.messages == 2 && st.uidnext == 3, "status");

	test_cache();

	/* throttle */
	ok(mbox_throttle_delay("192.0.2.1") == 0, "no delay at first");
	mbox_throttle_fail("192.0.2.1");
	is_int(mbox_throttle_delay("192.0.2.1"), 1000, "1 s after a failure");
	mbox_throttle_fail("192.0.2.1");
	is_int(mbox_throttle_delay("192.0.2.1"), 2000, "2 s after two");
	for (int i = 0; i < 10; i++)
		mbox_throttle_fail("192.0.2.1");
	is_int(mbox_throttle_delay("192.0.2.1"), 15000, "at most 15 s");
	mbox_throttle_ok("192.0.2.1");
	is_int(mbox_throttle_delay("192.0.2.1"), 0, "reset by a good login");

	mbox_close(mb);
	mbox_close(mb2);
	mbox_close(sent);
	buf_free(&b);
	free(err);
	{
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
		if (system(cmd) != 0)
			printf("# cleanup failed\n");
	}
	return t_done();
}
