/*
 * maildir.c - Maildir++ writer for the built-in store.
 *
 * Layout (what Dovecot's maildir driver reads with LAYOUT=maildir++):
 *   <mailbox>/{cur,new,tmp}/               INBOX
 *   <mailbox>/.Sent/{cur,new,tmp}/ + maildirfolder   (also .Drafts .Trash .Junk)
 *   <mailbox>/subscriptions                one folder name per line
 * Delivery follows the Maildir rules (cr.yp.to/proto/maildir.html): write
 * tmp/<unique>, fsync, link() it to new/<unique>,S=<size>,W=<vsize> (link,
 * not rename, so an existing name is never replaced), unlink the tmp name,
 * fsync new/.  Only then is the message reported delivered.
 *
 * Runs in: worker pool threads (local delivery) and the moat CLI (mailbox
 * creation).  Untrusted input: none here; the caller supplies a path built
 * from a canonical address (see users_canon) and the message bytes.
 */
#include "config.h"
#include "maildir.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/time.h>

#define MAILDIR_MODE    0700
#define MAILDIR_FMODE   0600
#define MAILDIR_TRIES   16

const char *const maildir_default_folders[] = { "Sent", "Drafts", "Trash", "Junk", NULL };

static atomic_ulong maildir_seq;
static pthread_once_t maildir_host_once = PTHREAD_ONCE_INIT;
static char maildir_host[128];

/* the host part of unique names: '/' and ':' (and ',') escaped as octal */
static void
maildir_host_init(void)
{
	char h[64];
	size_t i, o = 0;

	if (gethostname(h, sizeof(h)) < 0 || h[0] == '\0')
		moat_strlcpy(h, "localhost", sizeof(h));
	h[sizeof(h) - 1] = '\0';
	for (i = 0; h[i] != '\0' && o + 5 < sizeof(maildir_host); i++) {
		unsigned char c = (unsigned char)h[i];
		if (c == '/' || c == ':' || c == ',' || c == '\\' || c < 0x21 || c > 0x7e)
			o += (size_t)snprintf(maildir_host + o, sizeof(maildir_host) - o, "\\%03o", c);
		else
			maildir_host[o++] = (char)c;
	}
	maildir_host[o] = '\0';
}

bool
maildir_unique(char *out, size_t outsz)
{
	struct timeval tv;
	unsigned long q;
	int n;

	pthread_once(&maildir_host_once, maildir_host_init);
	gettimeofday(&tv, NULL);
	q = atomic_fetch_add(&maildir_seq, 1) + 1;
	n = snprintf(out, outsz, "%lld.M%06ldP%ldQ%lu.%s", (long long)tv.tv_sec,
	    (long)tv.tv_usec, (long)getpid(), q, maildir_host);
	return n > 0 && (size_t)n < outsz;
}

/* 1 created, 0 existed (as a directory), -1 error */
static int
maildir_mkdir1(const char *path)
{
	struct stat st;

	if (mkdir(path, MAILDIR_MODE) == 0)
		return 1;
	if (errno != EEXIST)
		return -1;
	if (stat(path, &st) < 0)
		return -1;
	if (!S_ISDIR(st.st_mode)) {
		errno = ENOTDIR;
		return -1;
	}
	return 0;
}

/* mkdir -p, reporting every component created; fsyncs parents of new dirs */
static int
maildir_mkdirs(const char *path, void (*created)(const char *, void *), void *arg)
{
	char tmp[PATH_MAX];
	char *p;
	int r;

	if (moat_strlcpy(tmp, path, sizeof(tmp)) >= sizeof(tmp)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (p = tmp + 1; ; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char save = *p;
		*p = '\0';
		if ((r = maildir_mkdir1(tmp)) < 0)
			return -1;
		if (r == 1) {
			char parent[PATH_MAX];
			char *slash;
			if (created)
				created(tmp, arg);
			moat_strlcpy(parent, tmp, sizeof(parent));
			if ((slash = strrchr(parent, '/')) != NULL) {
				if (slash == parent)
					slash[1] = '\0';
				else
					*slash = '\0';
				(void)fsync_dir(parent);
			}
		}
		*p = save;
		if (save == '\0')
			break;
		while (p[1] == '/')
			p++;
	}
	return 0;
}

static int
maildir_make_box(const char *dir, bool folder, void (*created)(const char *, void *), void *arg)
{
	static const char *const subs[] = { "cur", "new", "tmp" };
	char p[PATH_MAX];
	size_t i;

	if (maildir_mkdirs(dir, created, arg) < 0)
		return -1;
	for (i = 0; i < ARRAY_SIZE(subs); i++) {
		if ((size_t)snprintf(p, sizeof(p), "%s/%s", dir, subs[i]) >= sizeof(p)) {
			errno = ENAMETOOLONG;
			return -1;
		}
		int r = maildir_mkdir1(p);
		if (r < 0)
			return -1;
		if (r == 1 && created)
			created(p, arg);
	}
	if (folder) {
		/* Maildir++: an empty "maildirfolder" file marks a subfolder */
		if ((size_t)snprintf(p, sizeof(p), "%s/maildirfolder", dir) >= sizeof(p)) {
			errno = ENAMETOOLONG;
			return -1;
		}
		int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, MAILDIR_FMODE);
		if (fd >= 0) {
			close(fd);
			if (created)
				created(p, arg);
		} else if (errno != EEXIST) {
			return -1;
		}
	}
	return fsync_dir(dir);
}

/* write <dir>/subscriptions (Dovecot's format: one mailbox name a line) if missing */
static int
maildir_subscriptions(const char *dir, void (*created)(const char *, void *), void *arg)
{
	char path[PATH_MAX], tmp[PATH_MAX], body[256];
	size_t i, blen = 0;
	int fd;

	if ((size_t)snprintf(path, sizeof(path), "%s/subscriptions", dir) >= sizeof(path) ||
	    (size_t)snprintf(tmp, sizeof(tmp), "%s/tmp/subscriptions.%ld", dir, (long)getpid()) >= sizeof(tmp)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	if (access(path, F_OK) == 0)
		return 0;
	for (i = 0; maildir_default_folders[i]; i++)
		blen += (size_t)snprintf(body + blen, sizeof(body) - blen, "%s\n", maildir_default_folders[i]);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, MAILDIR_FMODE);
	if (fd < 0)
		return -1;
	if (write_full(fd, body, blen) < 0 || fsync(fd) < 0) {
		int e = errno;
		close(fd);
		unlink(tmp);
		errno = e;
		return -1;
	}
	close(fd);
	/* link: a concurrent creator's file wins, ours is dropped */
	if (link(tmp, path) < 0 && errno != EEXIST) {
		int e = errno;
		unlink(tmp);
		errno = e;
		return -1;
	}
	unlink(tmp);
	if (created)
		created(path, arg);
	return fsync_dir(dir);
}

int
maildir_create(const char *path, void (*created)(const char *, void *), void *arg)
{
	char p[PATH_MAX];
	size_t i;

	if (maildir_make_box(path, false, created, arg) < 0)
		return -1;
	for (i = 0; maildir_default_folders[i]; i++) {
		if ((size_t)snprintf(p, sizeof(p), "%s/.%s", path, maildir_default_folders[i]) >= sizeof(p)) {
			errno = ENAMETOOLONG;
			return -1;
		}
		if (maildir_make_box(p, true, created, arg) < 0)
			return -1;
	}
	return maildir_subscriptions(path, created, arg);
}

int
maildir_create_folder(const char *path)
{
	return maildir_make_box(path, true, NULL, NULL);
}

bool
maildir_exists(const char *path)
{
	static const char *const subs[] = { "cur", "new", "tmp" };
	char p[PATH_MAX];
	struct stat st;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(subs); i++) {
		if ((size_t)snprintf(p, sizeof(p), "%s/%s", path, subs[i]) >= sizeof(p))
			return false;
		if (stat(p, &st) < 0 || !S_ISDIR(st.st_mode))
			return false;
	}
	return true;
}

int
maildir_open(struct maildir_msg *m, const char *dir)
{
	int i;

	memset(m, 0, sizeof(*m));
	m->fd = -1;
	m->last = -1;
	if (moat_strlcpy(m->dir, dir, sizeof(m->dir)) >= sizeof(m->dir)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (i = 0; i < MAILDIR_TRIES; i++) {
		if (!maildir_unique(m->base, sizeof(m->base)) ||
		    (size_t)snprintf(m->tmppath, sizeof(m->tmppath), "%s/tmp/%s", dir, m->base) >= sizeof(m->tmppath)) {
			errno = ENAMETOOLONG;
			return -1;
		}
		m->fd = open(m->tmppath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, MAILDIR_FMODE);
		if (m->fd >= 0)
			return 0;
		if (errno != EEXIST)
			return -1;
	}
	errno = EEXIST;
	return -1;
}

int
maildir_write(struct maildir_msg *m, const void *data, size_t len)
{
	const unsigned char *p = data;
	size_t i;

	if (len == 0)
		return 0;
	if (write_full(m->fd, data, len) < 0)
		return -1;
	m->size += (off_t)len;
	m->vsize += (off_t)len;
	for (i = 0; i < len; i++) {
		if (p[i] == '\n' && m->last != '\r')
			m->vsize++;
		m->last = p[i];
	}
	return 0;
}

int
maildir_commit(struct maildir_msg *m)
{
	char newpath[PATH_MAX], newdir[PATH_MAX];
	int i, e;

	if (fsync(m->fd) < 0) {
		e = errno;
		goto fail;
	}
	if (close(m->fd) < 0) {
		m->fd = -1;
		e = errno;
		goto fail;
	}
	m->fd = -1;
	if ((size_t)snprintf(newdir, sizeof(newdir), "%s/new", m->dir) >= sizeof(newdir)) {
		e = ENAMETOOLONG;
		goto fail;
	}
	for (i = 0; ; i++) {
		if ((size_t)snprintf(m->newname, sizeof(m->newname), "%s,S=%lld,W=%lld", m->base,
		        (long long)m->size, (long long)m->vsize) >= sizeof(m->newname) ||
		    (size_t)snprintf(newpath, sizeof(newpath), "%s/%s", newdir, m->newname) >= sizeof(newpath)) {
			e = ENAMETOOLONG;
			goto fail;
		}
		if (link(m->tmppath, newpath) == 0)
			break;
		e = errno;
		if (e == EEXIST && i < MAILDIR_TRIES) {
			/* someone has this name (clock went back?): take a new one */
			if (!maildir_unique(m->base, sizeof(m->base))) {
				e = ENAMETOOLONG;
				goto fail;
			}
			continue;
		}
		if (e == EPERM || e == ENOSYS || e == EOPNOTSUPP || e == EXDEV) {
			/* filesystems without hard links: rename (the name is unique) */
			if (rename(m->tmppath, newpath) == 0)
				goto renamed;
			e = errno;
		}
		goto fail;
	}
	(void)unlink(m->tmppath);
renamed:
	if (fsync_dir(newdir) < 0) {
		/* the message is in new/ but not durable: report failure, and
		 * leave it (a retry may deliver twice, but nothing is lost) */
		return -1;
	}
	m->tmppath[0] = '\0';
	return 0;
fail:
	maildir_abort(m);
	errno = e;
	return -1;
}

void
maildir_abort(struct maildir_msg *m)
{
	int e = errno;

	if (m->fd >= 0) {
		close(m->fd);
		m->fd = -1;
	}
	if (m->tmppath[0] != '\0') {
		(void)unlink(m->tmppath);
		m->tmppath[0] = '\0';
	}
	errno = e;
}

size_t
maildir_crlf_to_lf(const char *in, size_t len, char *out, bool *pending_cr, bool final)
{
	size_t i, o = 0;

	for (i = 0; i < len; i++) {
		char c = in[i];
		if (*pending_cr) {
			*pending_cr = false;
			if (c == '\n') {
				out[o++] = '\n';
				continue;
			}
			out[o++] = '\r';        /* a bare CR stays */
		}
		if (c == '\r')
			*pending_cr = true;
		else
			out[o++] = c;
	}
	if (final && *pending_cr) {
		out[o++] = '\r';
		*pending_cr = false;
	}
	return o;
}
