/*
 * local.c - local delivery into the built-in Maildir++ store.
 *
 * The queue manager calls local_deliver() from a pool thread for each
 * recipient in a `deliver store` domain.  The recipient is canonicalised
 * (users_canon with recipient-delimiter, so user+tag@dom lands in
 * user@dom), checked against the users database (a per-thread handle on
 * <state-dir>/moat.db, opened lazily), and the message is copied from the
 * spool file into <state-dir>/mail/<domain>/<local>/ with CRLF turned into
 * LF, fsync'ed and linked into new/ (store/maildir.c).
 *
 * Runs in: worker pool threads; BLOCKING.  Untrusted input: the message
 * bytes (copied verbatim except line endings, bounded by len) and the
 * recipient (validated by users_canon, which also keeps it a safe path).
 * Failure policy: an unknown user is permanent (550 5.1.1); anything else
 * (disk full, quota, I/O, database busy) is temporary so the message stays
 * in the queue -- mail is never dropped on a local error.
 */
#include "config.h"
#include "local.h"
#include "buf.h"
#include "conf.h"
#include "log.h"
#include "maildir.h"
#include "users.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LOCAL_CHUNK     (64 * 1024)

/*
 * One users handle per pool thread (users_thread_handle: opened on first
 * use, reopened if the state-dir changes, closed when the thread exits).
 */
static struct users *
local_users_handle(const struct moat_conf *c, char **err)
{
	char path[PATH_MAX];

	conf_path(c, "moat.db", path, sizeof(path));
	return users_thread_handle(path, err);
}

/* the reply for a failed write/fsync: always temporary */
static enum local_result
local_ioerr(struct buf *reply, const char *canon, int e)
{
	if (e == EDQUOT)
		buf_printf(reply, "452 4.2.2 <%s>: mailbox full", canon);
	else if (e == ENOSPC)
		buf_printf(reply, "452 4.3.1 <%s>: insufficient system storage", canon);
	else
		buf_printf(reply, "451 4.3.0 <%s>: local delivery failed: %s", canon, strerror(e));
	return LOCAL_TEMPFAIL;
}

/* write text converting CRLF to LF (a trailing CR stays pending in *cr) */
static int
local_write_conv(struct maildir_msg *m, const char *data, size_t len, char *out, bool *cr)
{
	while (len > 0) {
		size_t n = MIN(len, (size_t)LOCAL_CHUNK);
		size_t o = maildir_crlf_to_lf(data, n, out, cr, false);
		if (maildir_write(m, out, o) < 0)
			return -1;
		data += n;
		len -= n;
	}
	return 0;
}

enum local_result
local_deliver(const struct moat_conf *c, const char *rcpt, int fd, off_t off, off_t len,
    const char *prepend, struct buf *reply)
{
	char canon[256], box[PATH_MAX], sub[PATH_MAX];
	char *err = NULL, *in = NULL, *out = NULL;
	const char *at;
	struct users *u;
	struct maildir_msg m;
	bool cr = false, logged = false;
	off_t done = 0;
	int r = 0, e;

	if (!users_canon(rcpt, c->recipient_delimiter, canon, sizeof(canon))) {
		buf_printf(reply, "550 5.1.3 <%s>: bad recipient address syntax", esc(rcpt));
		return LOCAL_PERMFAIL;
	}
	/* RFC 5321 4.5.1: postmaster@ every domain we serve must be accepted;
	 * it has a mailbox even before anybody adds the user to read it */
	bool postmaster = ascii_strncasecmp(canon, "postmaster@", 11) == 0;
	if ((u = local_users_handle(c, &err)) == NULL) {
		if (errno == ENOENT && postmaster) {
			free(err);
			err = NULL;
		} else if (errno == ENOENT) {
			/* no users database at all: nobody can be a local user */
			free(err);
			buf_printf(reply, "550 5.1.1 <%s>: no such user", canon);
			return LOCAL_PERMFAIL;
		}
		log_warnx("local: to=<%s> users database: %s", canon, err ? err : "error");
		free(err);
		buf_printf(reply, "451 4.3.0 <%s>: users database unavailable", canon);
		return LOCAL_TEMPFAIL;
	}
	if (u && (r = users_exists(u, canon, NULL)) < 0) {
		users_thread_drop();
		buf_printf(reply, "451 4.3.0 <%s>: users database lookup failed", canon);
		return LOCAL_TEMPFAIL;
	}
	if (u && r == 0 && !postmaster) {
		buf_printf(reply, "550 5.1.1 <%s>: no such user", canon);
		return LOCAL_PERMFAIL;
	}

	at = strchr(canon, '@');
	snprintf(sub, sizeof(sub), "mail/%s/%.*s", at + 1, (int)(at - canon), canon);
	conf_path(c, sub, box, sizeof(box));
	if (!maildir_exists(box) && maildir_create(box, NULL, NULL) < 0) {
		e = errno;
		log_warn("local: to=<%s> cannot create mailbox %s", canon, box);
		return local_ioerr(reply, canon, e);
	}
	/* mail our filters tagged as spam goes to the user's Junk folder */
	if (c->store_junk && prepend && (!strncmp(prepend, "X-Spam-Flag: YES\r\n", 18) ||
	    strstr(prepend, "\nX-Spam-Flag: YES\r\n"))) {
		size_t bl = strlen(box);
		if (bl + 7 < sizeof(box)) {
			memcpy(box + bl, "/.Junk", 7);
			if (!maildir_exists(box) && maildir_create_folder(box) < 0) {
				e = errno;
				log_warn("local: to=<%s> cannot create folder %s", canon, box);
				return local_ioerr(reply, canon, e);
			}
		}
	}
	if (maildir_open(&m, box) < 0) {
		e = errno;
		log_warn("local: to=<%s> cannot open %s/tmp", canon, box);
		return local_ioerr(reply, canon, e);
	}

	in = xmalloc(LOCAL_CHUNK);
	out = xmalloc(LOCAL_CHUNK + 1);
	if (prepend && local_write_conv(&m, prepend, strlen(prepend), out, &cr) < 0)
		goto ioerr;
	while (done < len) {
		size_t want = (size_t)MIN((off_t)LOCAL_CHUNK, len - done);
		ssize_t n = pread(fd, in, want, off + done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto ioerr;
		if (n == 0) {
			errno = EIO;            /* the spool file is shorter than its envelope says */
			log_warnx("local: to=<%s> spool file truncated at %lld of %lld bytes",
			    canon, (long long)done, (long long)len);
			logged = true;
			goto ioerr;
		}
		done += n;
		size_t o = maildir_crlf_to_lf(in, (size_t)n, out, &cr, done == len);
		if (maildir_write(&m, out, o) < 0)
			goto ioerr;
	}
	if (len == 0 && cr) {
		/* prepend ended in a CR: flush it */
		size_t o = maildir_crlf_to_lf(in, 0, out, &cr, true);
		if (maildir_write(&m, out, o) < 0)
			goto ioerr;
	}
	if (maildir_commit(&m) < 0) {
		e = errno;
		log_warn("local: to=<%s> cannot commit to %s/new", canon, box);
		free(in);
		free(out);
		return local_ioerr(reply, canon, e);
	}
	log_debug("local: to=<%s> delivered size=%lld file=%s", canon, (long long)m.size, m.newname);
	free(in);
	free(out);
	return LOCAL_OK;
ioerr:
	e = errno;
	if (!logged)
		log_warn("local: to=<%s> write %s", canon, m.tmppath);
	maildir_abort(&m);
	free(in);
	free(out);
	return local_ioerr(reply, canon, e);
}
