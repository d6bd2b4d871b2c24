/*
 * test_mailbox.c - unit tests of store/mailbox.c: UIDs assigned in
 * arrival order and stable across syncs and flag changes, new/ -> cur/
 * with \Recent, flags in the info suffix, append/copy/expunge, a lost
 * index rebuilt with a new UIDVALIDITY, folders and subscriptions.
 */
#include "config.h"
#include "mailbox.h"
#include "maildir.h"
#include "buf.h"
#include "util.h"
#include "t.h"

#include <dirent.h>
#include <stdlib.h>
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
