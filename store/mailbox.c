/*
 * mailbox.c - the mailbox layer under POP3 and IMAP: folders of the
 * user's Maildir++, a per-folder UID index (moat-uidlist), flags in the
 * Maildir info suffix, the envelope-field cache (moat-cache),
 * read/append/copy/expunge, logins.
 *
 * Runs in: worker pool threads (everything but the login throttle, which
 * is loop-thread state).  Untrusted input: folder names (validated by
 * mbox_name_valid before any path is built), APPEND data (written as
 * given), and the index file itself (parsed defensively: a damaged index
 * is rebuilt with a new UIDVALIDITY).
 *
 * Concurrency: local delivery link()s complete files into new/ at any
 * time and never touches cur/ or the index.  Every sync, flag rename,
 * expunge, append and copy here holds an exclusive flock on the folder's
 * moat-uidlist.lock, so two sessions never rename the same file at once
 * and a scan of cur/ never races a moat rename.  A file renamed by some
 * other program under us (ENOENT) is looked up again by its base name.
 */
#include "config.h"
#include "mailbox.h"
#include "buf.h"
#include "conf.h"
#include "log.h"
#include "ratelimit.h"
#include "maildir.h"
#include "users.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/time.h>

#define MBOX_INDEX      "moat-uidlist"
#define MBOX_LOCK       "moat-uidlist.lock"
#define MBOX_MSG_MAX    (256u * 1024 * 1024)    /* refuse to read bigger files */

/* ---- logins: a users handle per pool thread ---- */

struct mbox_tls {
	struct users *users;
	char    path[PATH_MAX];
};
static pthread_key_t mbox_key;
static pthread_once_t mbox_key_once = PTHREAD_ONCE_INIT;

static void
mbox_tls_free(void *p)
{
	struct mbox_tls *t = p;
	if (t) {
		users_close(t->users);
		free(t);
	}
}

static void
mbox_key_init(void)
{
	if (pthread_key_create(&mbox_key, mbox_tls_free) != 0)
		fatalx("mailbox: pthread_key_create failed");
}

static struct users *
mbox_users(const struct moat_conf *c)
{
	struct mbox_tls *t;
	char path[PATH_MAX], *err = NULL;

	pthread_once(&mbox_key_once, mbox_key_init);
	if ((t = pthread_getspecific(mbox_key)) == NULL) {
		t = xcalloc(1, sizeof(*t));
		if (pthread_setspecific(mbox_key, t) != 0)
			fatalx("mailbox: pthread_setspecific failed");
	}
	conf_path(c, "moat.db", path, sizeof(path));
	if (t->users && strcmp(path, t->path) == 0)
		return t->users;
	users_close(t->users);
	t->users = users_open(path, false, &err);
	if (t->users == NULL) {
		log_warnx("mailbox: cannot open %s: %s", path, err ? err : "?");
		free(err);
		t->path[0] = '\0';
		return NULL;
	}
	moat_strlcpy(t->path, path, sizeof(t->path));
	return t->users;
}

int
mbox_login(const struct moat_conf *c, const char *user, const char *pass,
    char *canon, size_t canonsz, char *root, size_t rootsz)
{
	struct users *u;
	char sub[PATH_MAX];
	const char *at;
	int r;

	if ((u = mbox_users(c)) == NULL)
		return -1;
	r = users_verify(u, user, pass);
	if (r != 1)
		return r;
	if (!users_canon(user, NULL, canon, canonsz) || (at = strchr(canon, '@')) == NULL)
		return 0;
	if ((size_t)snprintf(sub, sizeof(sub), "mail/%s/%.*s", at + 1, (int)(at - canon), canon) >= sizeof(sub))
		return -1;
	conf_path(c, sub, root, rootsz);
	if (!maildir_exists(root) && maildir_create(root, NULL, NULL) < 0) {
		log_warn("mailbox: cannot create %s", root);
		return -1;
	}
	return 1;
}

static void mbox_cache_free(struct mbox *);
static void mbox_cache_synced(struct mbox *, uint32_t);

/* ---- names and paths ---- */

bool
mbox_is_inbox(const char *name)
{
	return ascii_strcasecmp(name, "INBOX") == 0;
}

bool
mbox_name_valid(const char *name, size_t len)
{
	size_t i;

	if (len == 0 || len > MBOX_NAME_MAX)
		return false;
	if (name[0] == '.' || name[len - 1] == '.')
		return false;
	for (i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)name[i];
		if (ch < 0x20 || ch == 0x7f || ch == '/' || ch == '\\' || ch == '*' || ch == '%' ||
		    ch == '"' || ch == '\n' || ch == '\r')
			return false;
		if (ch == '.' && i + 1 < len && name[i + 1] == '.')
			return false;
	}
	return true;
}

const char *
mbox_special_use(const char *name)
{
	if (!strcmp(name, "Sent"))
		return "\\Sent";
	if (!strcmp(name, "Drafts"))
		return "\\Drafts";
	if (!strcmp(name, "Trash"))
		return "\\Trash";
	if (!strcmp(name, "Junk"))
		return "\\Junk";
	return NULL;
}

static int
mbox_dir(const char *root, const char *name, char *out, size_t outsz)
{
	if (mbox_is_inbox(name))
		return (size_t)snprintf(out, outsz, "%s", root) < outsz ? 0 : -1;
	if (!mbox_name_valid(name, strlen(name)))
		return -1;
	return (size_t)snprintf(out, outsz, "%s/.%s", root, name) < outsz ? 0 : -1;
}

static void
seterr(char **err, const char *fmt, ...) LOGFMT(2, 3);
static void
seterr(char **err, const char *fmt, ...)
{
	va_list ap;
	struct buf b = BUF_INIT;
	char tmp[512];

	if (err == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	buf_adds(&b, tmp);
	free(*err);
	*err = buf_steal(&b);
}

struct mbox *
mbox_open(const char *root, const char *name, char **err)
{
	struct mbox *mb;

	mb = xcalloc(1, sizeof(*mb));
	moat_strlcpy(mb->root, root, sizeof(mb->root));
	if (mbox_dir(root, name, mb->dir, sizeof(mb->dir)) < 0) {
		seterr(err, "invalid mailbox name");
		free(mb);
		return NULL;
	}
	if (!maildir_exists(mb->dir)) {
		seterr(err, "no such mailbox");
		free(mb);
		return NULL;
	}
	moat_strlcpy(mb->name, mbox_is_inbox(name) ? "INBOX" : name, sizeof(mb->name));
	return mb;
}

static void
mbox_free_msgs(struct mbox_msg *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i].file);
	free(v);
}

void
mbox_close(struct mbox *mb)
{
	if (mb == NULL)
		return;
	mbox_cache_free(mb);    /* records not written are simply read again */
	mbox_free_msgs(mb->msgs, mb->nmsgs);
	for (size_t i = 0; i < MBOX_KW_MAX; i++)
		free(mb->kw[i]);
	free(mb);
}

/* ---- flags ---- */

static const struct { char c; unsigned f; } mbox_letters[] = {
	{ 'D', MBOX_F_DRAFT }, { 'F', MBOX_F_FLAGGED }, { 'R', MBOX_F_ANSWERED },
	{ 'S', MBOX_F_SEEN }, { 'T', MBOX_F_DELETED },
};

unsigned
mbox_info_flags(const char *file)
{
	const char *info = strstr(file, ":2,");
	unsigned f = 0;

	if (info == NULL)
		return 0;
	for (info += 3; *info; info++) {
		if (*info >= 'a' && *info <= 'z') {
			f |= MBOX_F_KW(*info - 'a');
			continue;
		}
		for (size_t i = 0; i < ARRAY_SIZE(mbox_letters); i++)
			if (*info == mbox_letters[i].c)
				f |= mbox_letters[i].f;
	}
	return f;
}

static size_t
mbox_baselen(const char *file)
{
	const char *info = strstr(file, ":2,");
	return info ? (size_t)(info - file) : strlen(file);
}

/* file name for base + flags: system letters, then keyword letters, in
 * ASCII order as the Maildir spec asks */
static int
mbox_flagname(const char *old, size_t baselen, unsigned flags, char *out, size_t outsz)
{
	size_t o;

	if (baselen + 4 + 5 + MBOX_KW_MAX > outsz)
		return -1;
	memcpy(out, old, baselen);
	o = baselen;
	memcpy(out + o, ":2,", 3);
	o += 3;
	for (size_t i = 0; i < ARRAY_SIZE(mbox_letters); i++)
		if (flags & mbox_letters[i].f)
			out[o++] = mbox_letters[i].c;
	for (int k = 0; k < MBOX_KW_MAX; k++)
		if (flags & MBOX_F_KW(k))
			out[o++] = (char)('a' + k);
	out[o] = '\0';
	return 0;
}

/* ---- keywords (dovecot-keywords: "INDEX NAME" lines) ---- */

static int mbox_lock(const struct mbox *);
static void mbox_unlock(int);

static bool
mbox_kw_valid(const char *n)
{
	size_t l = strlen(n);
	if (l == 0 || l >= MBOX_KW_LEN)
		return false;
	for (; *n; n++)
		if ((unsigned char)*n <= 0x20 || (unsigned char)*n >= 0x7f || strchr("(){%*\"\\]", *n))
			return false;
	return true;
}

void
mbox_keywords_load(struct mbox *mb)
{
	char path[PATH_MAX], line[256];
	struct stat st;
	FILE *f;

	if ((size_t)snprintf(path, sizeof(path), "%s/dovecot-keywords", mb->dir) >= sizeof(path))
		return;
	if (stat(path, &st) < 0) {
		if (mb->kw_mtime != 0)
			for (size_t i = 0; i < MBOX_KW_MAX; i++) {
				free(mb->kw[i]);
				mb->kw[i] = NULL;
			}
		mb->kw_mtime = 0;
		return;
	}
	long long mt = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec + 1;
	if (mt == mb->kw_mtime || (f = fopen(path, "re")) == NULL)
		return;
	for (size_t i = 0; i < MBOX_KW_MAX; i++) {
		free(mb->kw[i]);
		mb->kw[i] = NULL;
	}
	while (fgets(line, sizeof(line), f)) {
		char *sp, *end;
		long idx;
		line[strcspn(line, "\r\n")] = '\0';
		if ((sp = strchr(line, ' ')) == NULL)
			continue;
		*sp = '\0';
		idx = strtol(line, &end, 10);
		if (*end || idx < 0 || idx >= MBOX_KW_MAX || !mbox_kw_valid(sp + 1) || mb->kw[idx])
			continue;
		mb->kw[idx] = xstrdup(sp + 1);
	}
	fclose(f);
	mb->kw_mtime = mt;
}

static int
mbox_keywords_write(struct mbox *mb)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8];
	struct buf b = BUF_INIT;
	int fd, r = -1;

	snprintf(path, sizeof(path), "%s/dovecot-keywords", mb->dir);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	for (size_t i = 0; i < MBOX_KW_MAX; i++)
		if (mb->kw[i])
			buf_printf(&b, "%zu %s\n", i, mb->kw[i]);
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) >= 0) {
		if (write_full(fd, b.data ? b.data : "", b.len) >= 0 && fsync(fd) == 0 &&
		    close(fd) == 0 && rename(tmp, path) == 0) {
			struct stat st;
			r = 0;
			if (stat(path, &st) == 0)
				mb->kw_mtime = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec + 1;
		} else {
			close(fd);
			unlink(tmp);
		}
	}
	buf_free(&b);
	return r;
}

/* lock held when create */
static unsigned
mbox_keyword_bit_locked(struct mbox *mb, const char *name, bool create)
{
	int free_i = -1;

	if (!mbox_kw_valid(name))
		return 0;
	mbox_keywords_load(mb);
	for (int i = 0; i < MBOX_KW_MAX; i++) {
		if (mb->kw[i] && !ascii_strcasecmp(mb->kw[i], name))
			return MBOX_F_KW(i);
		if (!mb->kw[i] && free_i < 0)
			free_i = i;
	}
	if (!create || free_i < 0)
		return 0;
	mb->kw[free_i] = xstrdup(name);
	if (mbox_keywords_write(mb) < 0) {
		free(mb->kw[free_i]);
		mb->kw[free_i] = NULL;
		return 0;
	}
	return MBOX_F_KW(free_i);
}

unsigned
mbox_keyword_bit(struct mbox *mb, const char *name, bool create)
{
	int lk;
	unsigned b;

	if (!create)
		return mbox_keyword_bit_locked(mb, name, false);
	if ((lk = mbox_lock(mb)) < 0)
		return 0;
	b = mbox_keyword_bit_locked(mb, name, true);
	mbox_unlock(lk);
	return b;
}

/* the keyword bits of a message of src as bits of dst (by name) */
static unsigned
mbox_kw_remap(struct mbox *src, struct mbox *dst, unsigned flags)
{
	unsigned out = flags & ~MBOX_F_KWMASK;
	for (int i = 0; i < MBOX_KW_MAX; i++)
		if ((flags & MBOX_F_KW(i)) && src->kw[i])
			out |= mbox_keyword_bit_locked(dst, src->kw[i], true);
	return out;
}

/* ",S=123" / ",W=456" in a base name; -1 if absent */
static long long
mbox_namesize(const char *file, size_t baselen, char key)
{
	for (size_t i = 0; i + 3 < baselen; i++) {
		if (file[i] == ',' && file[i + 1] == key && file[i + 2] == '=') {
			long long v = 0;
			size_t j = i + 3;
			if (j >= baselen || file[j] < '0' || file[j] > '9')
				return -1;
			for (; j < baselen && file[j] >= '0' && file[j] <= '9'; j++) {
				if (v > (1LL << 50))
					return -1;
				v = v * 10 + (file[j] - '0');
			}
			return v;
		}
	}
	return -1;
}

/* ---- locking ---- */

static int
mbox_lock(const struct mbox *mb)
{
	char p[PATH_MAX];
	int fd;

	if ((size_t)snprintf(p, sizeof(p), "%s/%s", mb->dir, MBOX_LOCK) >= sizeof(p))
		return -1;
	fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -1;
	while (flock(fd, LOCK_EX) < 0) {
		if (errno != EINTR) {
			close(fd);
			return -1;
		}
	}
	return fd;
}

static void
mbox_unlock(int fd)
{
	if (fd >= 0)
		close(fd);      /* releases the flock */
}

/* ---- the index ---- */

struct ient {
	uint32_t uid;
	time_t  idate;
	long long size, vsize;
	char   *base;
	bool    seen;           /* found on disk in this sync */
};

static int
ient_cmp_base(const void *a, const void *b)
{
	return strcmp(((const struct ient *)a)->base, ((const struct ient *)b)->base);
}

struct index {
	uint32_t uidvalidity, uidnext;
	uint32_t first_recent;      /* UIDs from here are \Recent for the next session to claim them */
	struct ient *v;
	size_t  n;
	bool    valid;
};

static void
index_free(struct index *ix)
{
	for (size_t i = 0; i < ix->n; i++)
		free(ix->v[i].base);
	free(ix->v);
	memset(ix, 0, sizeof(*ix));
}

/* "<uid> <idate> <size> <vsize> " (as sscanf "%llu %lld %lld %lld %n",
 * without its cost: this runs for every message at every full sync) */
static bool
index_fields(const char *line, unsigned long long *uid, long long *idate, long long *size,
    long long *vsize, int *off)
{
	const char *p = line;
	long long v[4];

	for (int k = 0; k < 4; k++) {
		bool neg = false;
		unsigned long long x = 0;
		int digits = 0;
		if (*p == '-' && k == 1) {
			neg = true;
			p++;
		}
		while (*p >= '0' && *p <= '9' && digits < 18) {
			x = x * 10 + (unsigned long long)(*p - '0');
			p++;
			digits++;
		}
		if (digits == 0 || *p != ' ')
			return false;
		while (*p == ' ')
			p++;
		v[k] = neg ? -(long long)x : (long long)x;
	}
	*uid = (unsigned long long)v[0];
	*idate = v[1];
	*size = v[2];
	*vsize = v[3];
	*off = (int)(p - line);
	return true;
}

static void
index_read(const struct mbox *mb, struct index *ix)
{
	char p[PATH_MAX];
	struct buf b = BUF_INIT;
	char chunk[65536];
	ssize_t r;
	int fd;
	size_t cap = 0;

	memset(ix, 0, sizeof(*ix));
	if ((size_t)snprintf(p, sizeof(p), "%s/%s", mb->dir, MBOX_INDEX) >= sizeof(p))
		return;
	if ((fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
		return;
	while ((r = read(fd, chunk, sizeof(chunk))) > 0)
		buf_add(&b, chunk, (size_t)r);
	close(fd);
	if (r < 0 || b.len == 0) {
		buf_free(&b);
		return;
	}
	char *line = b.data, *end = b.data + b.len, *nl;
	unsigned long long uv, un, fr = 0;
	int nf;
	nl = memchr(line, '\n', (size_t)(end - line));
	if (nl == NULL || (nf = sscanf(line, "moat-uidlist 1 %llu %llu %llu", &uv, &un, &fr)) < 2 ||
	    uv == 0 || uv > UINT32_MAX || un == 0 || un > UINT32_MAX) {
		log_warnx("mailbox: %s: damaged header, rebuilding", p);
		buf_free(&b);
		return;
	}
	ix->uidvalidity = (uint32_t)uv;
	ix->uidnext = (uint32_t)un;
	/* an index written before \Recent was kept: nothing is recent */
	ix->first_recent = nf == 3 && fr >= 1 && fr <= un ? (uint32_t)fr : (uint32_t)un;
	uint32_t last = 0;
	for (line = nl + 1; line < end; line = nl + 1) {
		unsigned long long uid;
		long long idate, size, vsize;
		int off = 0;
		if ((nl = memchr(line, '\n', (size_t)(end - line))) == NULL)
			break;          /* a torn last line: it will be rescanned */
		*nl = '\0';
		if (!index_fields(line, &uid, &idate, &size, &vsize, &off) ||
		    off <= 0 || uid == 0 || uid <= last || uid >= ix->uidnext || line[off] == '\0' ||
		    strchr(line + off, '/') != NULL) {
			log_warnx("mailbox: %s: damaged line, rebuilding", p);
			index_free(ix);
			buf_free(&b);
			return;
		}
		last = (uint32_t)uid;
		if (ix->n == cap) {
			cap = cap ? cap * 2 : 256;
			ix->v = xreallocarray(ix->v, cap, sizeof(*ix->v));
		}
		ix->v[ix->n].uid = (uint32_t)uid;
		ix->v[ix->n].idate = (time_t)idate;
		ix->v[ix->n].size = size;
		ix->v[ix->n].vsize = vsize;
		ix->v[ix->n].base = xstrdup(line + off);
		ix->v[ix->n].seen = false;
		ix->n++;
	}
	buf_free(&b);
	ix->valid = true;
}

static int
index_write(const struct mbox *mb, uint32_t uidvalidity, uint32_t uidnext, uint32_t first_recent,
    const struct mbox_msg *v, size_t n)
{
	char p[PATH_MAX], tmp[PATH_MAX];
	struct buf b = BUF_INIT;
	int fd, e;

	if ((size_t)snprintf(p, sizeof(p), "%s/%s", mb->dir, MBOX_INDEX) >= sizeof(p) ||
	    (size_t)snprintf(tmp, sizeof(tmp), "%s/%s.tmp", mb->dir, MBOX_INDEX) >= sizeof(tmp)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	buf_printf(&b, "moat-uidlist 1 %u %u %u\n", uidvalidity, uidnext, first_recent);
	for (size_t i = 0; i < n; i++)
		buf_printf(&b, "%u %lld %lld %lld %.*s\n", v[i].uid, (long long)v[i].idate,
		    (long long)v[i].size, (long long)v[i].vsize, (int)v[i].baselen, v[i].file);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		buf_free(&b);
		return -1;
	}
	if (write_full(fd, b.data, b.len) < 0 || fdatasync(fd) < 0) {
		e = errno;
		close(fd);
		unlink(tmp);
		buf_free(&b);
		errno = e;
		return -1;
	}
	close(fd);
	buf_free(&b);
	if (rename(tmp, p) < 0) {
		e = errno;
		unlink(tmp);
		errno = e;
		return -1;
	}
	return 0;
}

/* ---- sync ---- */

struct dent {
	char   *file;
	bool    innew;
	time_t  mtime;
	long long size, vsize;
};

static int
dent_cmp_arrival(const void *a, const void *b)
{
	const struct dent *x = a, *y = b;
	long long sx = atoll(x->file), sy = atoll(y->file);
	if (sx != sy)
		return sx < sy ? -1 : 1;
	return strcmp(x->file, y->file);
}

static int
dent_cmp_name(const void *a, const void *b)
{
	return strcmp(((const struct dent *)a)->file, ((const struct dent *)b)->file);
}

static void
dents_free(struct dent *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i].file);
	free(v);
}

static int
msg_cmp_uid(const void *a, const void *b)
{
	uint32_t x = ((const struct mbox_msg *)a)->uid, y = ((const struct mbox_msg *)b)->uid;
	return x < y ? -1 : x > y;
}

/* the CRLF size of a file: size + bare LFs */
static long long
mbox_file_vsize(const char *path, long long size)
{
	char chunk[65536];
	long long v = 0;
	int fd, last = -1;
	ssize_t r;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
		return size;
	while ((r = read(fd, chunk, sizeof(chunk))) > 0) {
		for (ssize_t i = 0; i < r; i++) {
			if (chunk[i] == '\n' && last != '\r')
				v++;
			last = (unsigned char)chunk[i];
		}
		v += r;
	}
	close(fd);
	return v;
}

/* list the message files of sub ("new" or "cur") into *v */
static int
mbox_scan(const struct mbox *mb, const char *sub, struct dent **v, size_t *n, size_t *cap)
{
	char p[PATH_MAX];
	DIR *d;
	struct dirent *de;

	if ((size_t)snprintf(p, sizeof(p), "%s/%s", mb->dir, sub) >= sizeof(p))
		return -1;
	if ((d = opendir(p)) == NULL)
		return -1;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.' || strlen(de->d_name) > 250)
			continue;
		if (*n == *cap) {
			*cap = *cap ? *cap * 2 : 256;
			*v = xreallocarray(*v, *cap, sizeof(**v));
		}
		memset(&(*v)[*n], 0, sizeof(**v));
		(*v)[*n].file = xstrdup(de->d_name);
		(*v)[*n].innew = sub[0] == 'n';
		(*n)++;
	}
	closedir(d);
	return 0;
}

/*
 * A new UIDVALIDITY for a folder of this user: the time, but always above
 * the last one given out (kept in ROOT/moat-uidvalidity under its own
 * flock), so a folder deleted and created again within a second never
 * reuses UIDs with an old UIDVALIDITY (RFC 3501 2.3.1.1).
 */
static uint32_t
mbox_next_uidvalidity(const char *root)
{
	char p[PATH_MAX], num[32];
	uint32_t v = (uint32_t)time(NULL), last = 0;
	int fd;
	ssize_t n;

	if ((size_t)snprintf(p, sizeof(p), "%s/moat-uidvalidity", root) >= sizeof(p) ||
	    (fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0)
		return v;
	if (flock(fd, LOCK_EX) == 0) {
		if ((n = pread(fd, num, sizeof(num) - 1, 0)) > 0) {
			num[n] = '\0';
			last = (uint32_t)strtoul(num, NULL, 10);
		}
		if (v <= last)
			v = last + 1;
		n = snprintf(num, sizeof(num), "%u\n", v);
		if (ftruncate(fd, 0) == 0)
			(void)!pwrite(fd, num, (size_t)n, 0);
	}
	close(fd);
	return v;
}


static int
mbox_sync_locked(struct mbox *mb, bool take_recent, char **err)
{
	struct index ix;
	struct dent *dv = NULL;
	size_t dn = 0, dcap = 0, i;
	struct mbox_msg *nv = NULL;
	size_t nn = 0;
	struct dent **fresh = NULL, *moved = NULL;
	size_t nfresh = 0, nmoved = 0;
	bool changed = false;
	char from[PATH_MAX], to[PATH_MAX];

	mbox_keywords_load(mb);

	index_read(mb, &ix);
	if (!ix.valid) {
		index_free(&ix);
		ix.uidvalidity = mbox_next_uidvalidity(mb->root);
		if (mb->uidvalidity && ix.uidvalidity <= mb->uidvalidity)
			ix.uidvalidity = mb->uidvalidity + 1;
		ix.uidnext = 1;
		ix.first_recent = 1;
		changed = true;
	}
	if (take_recent) {
		/* new/ -> cur/ first, then one scan of cur/ sees everything */
		size_t c0 = 0;
		if (mbox_scan(mb, "new", &moved, &nmoved, &c0) < 0) {
			seterr(err, "cannot read %s/new: %s", mb->dir, strerror(errno));
			index_free(&ix);
			return -1;
		}
		for (i = 0; i < nmoved; i++) {
			if ((size_t)snprintf(from, sizeof(from), "%s/new/%s", mb->dir, moved[i].file) < sizeof(from) &&
			    (size_t)snprintf(to, sizeof(to), "%s/cur/%s%s", mb->dir, moved[i].file,
			        strstr(moved[i].file, ":2,") ? "" : ":2,") < sizeof(to)) {
				if (rename(from, to) < 0 && errno != ENOENT)
					log_warn("mailbox: rename %s", from);
			}
			moved[i].file[mbox_baselen(moved[i].file)] = '\0';
		}
		if (nmoved > 0)
			qsort(moved, nmoved, sizeof(*moved), dent_cmp_name);
	}
	if (mbox_scan(mb, "cur", &dv, &dn, &dcap) < 0 || mbox_scan(mb, "new", &dv, &dn, &dcap) < 0) {
		seterr(err, "cannot read %s: %s", mb->dir, strerror(errno));
		for (i = 0; i < dn; i++)
			free(dv[i].file);
		free(dv);
		dents_free(moved, nmoved);
		index_free(&ix);
		return -1;
	}

	if (ix.n > 0)
		qsort(ix.v, ix.n, sizeof(*ix.v), ient_cmp_base);
	nv = xreallocarray(NULL, dn ? dn : 1, sizeof(*nv));
	fresh = xreallocarray(NULL, dn ? dn : 1, sizeof(*fresh));
	for (i = 0; i < dn; i++) {
		size_t bl = mbox_baselen(dv[i].file);
		char save = dv[i].file[bl];
		struct ient key, *e;
		dv[i].file[bl] = '\0';
		key.base = dv[i].file;
		e = ix.n > 0 ? bsearch(&key, ix.v, ix.n, sizeof(*ix.v), ient_cmp_base) : NULL;
		dv[i].file[bl] = save;
		if (e != NULL && e->seen) {
			/* the same base twice (a crash between link and unlink elsewhere): keep one */
			free(dv[i].file);
			dv[i].file = NULL;
			continue;
		}
		if (e != NULL) {
			e->seen = true;
			nv[nn].uid = e->uid;
			nv[nn].idate = e->idate;
			nv[nn].size = e->size;
			nv[nn].vsize = e->vsize;
			nv[nn].file = dv[i].file;
			nv[nn].baselen = bl;
			nv[nn].flags = mbox_info_flags(dv[i].file);
			if (dv[i].innew)
				nv[nn].flags |= MBOX_F_RECENT;
			nn++;
			dv[i].file = NULL;
		} else {
			fresh[nfresh++] = &dv[i];
		}
	}
	/* new files: stat them, order by arrival, give them UIDs */
	size_t kept = 0;
	for (i = 0; i < nfresh; i++) {
		struct dent *d = fresh[i];
		struct stat st;
		size_t bl = mbox_baselen(d->file);
		if ((size_t)snprintf(from, sizeof(from), "%s/%s/%s", mb->dir, d->innew ? "new" : "cur", d->file) >= sizeof(from) ||
		    stat(from, &st) < 0 || !S_ISREG(st.st_mode)) {
			free(d->file);
			d->file = NULL;
			continue;
		}
		d->mtime = st.st_mtime;
		d->size = mbox_namesize(d->file, bl, 'S');
		if (d->size != (long long)st.st_size)
			d->size = (long long)st.st_size;
		d->vsize = mbox_namesize(d->file, bl, 'W');
		if (d->vsize < d->size)
			d->vsize = mbox_file_vsize(from, d->size);
		fresh[kept++] = d;
	}
	nfresh = kept;
	if (nfresh > 0) {
		struct dent *tmpv = xreallocarray(NULL, nfresh, sizeof(*tmpv));
		for (i = 0; i < nfresh; i++) {
			tmpv[i] = *fresh[i];
			fresh[i]->file = NULL;
		}
		qsort(tmpv, nfresh, sizeof(*tmpv), dent_cmp_arrival);
		for (i = 0; i < nfresh; i++) {
			nv[nn].uid = ix.uidnext++;
			nv[nn].idate = tmpv[i].mtime;
			nv[nn].size = tmpv[i].size;
			nv[nn].vsize = tmpv[i].vsize;
			nv[nn].file = tmpv[i].file;
			nv[nn].baselen = mbox_baselen(tmpv[i].file);
			nv[nn].flags = mbox_info_flags(tmpv[i].file);
			if (tmpv[i].innew)
				nv[nn].flags |= MBOX_F_RECENT;
			nn++;
		}
		free(tmpv);
		changed = true;
	}
	for (i = 0; i < ix.n; i++)
		if (!ix.v[i].seen)
			changed = true;
	if (nn > 0)
		qsort(nv, nn, sizeof(*nv), msg_cmp_uid);

	/* carry this mbox's \Recent over; mark what this sync moved from new/ */
	for (i = 0; i < nn; i++) {
		struct mbox_msg *old = mbox_find(mb, nv[i].uid);
		if (old != NULL && (old->flags & MBOX_F_RECENT))
			nv[i].flags |= MBOX_F_RECENT;
		if (nmoved > 0) {
			struct dent key;
			char save = nv[i].file[nv[i].baselen];
			nv[i].file[nv[i].baselen] = '\0';
			key.file = nv[i].file;
			if (bsearch(&key, moved, nmoved, sizeof(*moved), dent_cmp_name) != NULL)
				nv[i].flags |= MBOX_F_RECENT;
			nv[i].file[nv[i].baselen] = save;
		}
	}
	/*
	 * \Recent as Dovecot keeps it: a message is recent for the first
	 * session that syncs it read-write (take_recent) after it arrived,
	 * however it arrived (delivery, APPEND, COPY); that session claims it.
	 * A read-only view (EXAMINE) shows the unclaimed ones as recent.
	 */
	if (take_recent || mb->readonly)
		for (i = 0; i < nn; i++)
			if (nv[i].uid >= ix.first_recent)
				nv[i].flags |= MBOX_F_RECENT;
	if (take_recent && ix.first_recent != ix.uidnext) {
		ix.first_recent = ix.uidnext;
		changed = true;
	}
	if (changed && index_write(mb, ix.uidvalidity, ix.uidnext, ix.first_recent, nv, nn) < 0)
		log_warn("mailbox: cannot write the index of %s", mb->dir);
	if (mb->uidvalidity && mb->uidvalidity != ix.uidvalidity)
		log_warnx("mailbox: %s: UIDVALIDITY changed %u -> %u", mb->dir, mb->uidvalidity, ix.uidvalidity);
	mbox_free_msgs(mb->msgs, mb->nmsgs);
	mb->msgs = nv;
	mb->nmsgs = nn;
	mb->uidvalidity = ix.uidvalidity;
	mb->uidnext = ix.uidnext;
	mb->first_recent = ix.first_recent;
	for (i = 0; i < dn; i++)
		free(dv[i].file);
	free(dv);
	free(fresh);
	dents_free(moved, nmoved);
	index_free(&ix);
	return 0;
}

/*
 * Take the stamp of cur/, new/ and the index.  False when one is missing
 * or a directory was changed within the last 2 seconds: a change in the
 * same clock tick as a scan would not show in its mtime, so such a folder
 * is always rescanned (Dovecot's rule for Maildir).
 */
static bool
mbox_stamp_take(const struct mbox *mb, struct mbox_stamp *st)
{
	static const char *const subs[] = { "cur", "new", MBOX_INDEX };
	char p[PATH_MAX];
	struct stat sb;
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	memset(st, 0, sizeof(*st));
	for (size_t i = 0; i < ARRAY_SIZE(subs); i++) {
		if ((size_t)snprintf(p, sizeof(p), "%s/%s", mb->dir, subs[i]) >= sizeof(p) || stat(p, &sb) < 0)
			return false;
		/* the index is only ever replaced by rename(): its identity
		 * shows every change; a directory's mtime may not */
		if (i < 2 && sb.st_mtim.tv_sec + 2 >= now.tv_sec)
			return false;
		st->t[i] = (long long)sb.st_mtim.tv_sec * 1000000000LL + sb.st_mtim.tv_nsec;
		st->ino[i] = (long long)sb.st_ino;
		st->size[i] = (long long)sb.st_size;
	}
	st->set = true;
	return true;
}

int
mbox_sync(struct mbox *mb, bool take_recent, char **err)
{
	struct mbox_stamp now;
	int lk, r;

	/* nothing changed since the last full sync: keep what we have */
	if (mb->stamp.set && (!take_recent || mb->stamp.recent) && mbox_stamp_take(mb, &now) &&
	    memcmp(now.t, mb->stamp.t, sizeof(now.t)) == 0 &&
	    memcmp(now.ino, mb->stamp.ino, sizeof(now.ino)) == 0 &&
	    memcmp(now.size, mb->stamp.size, sizeof(now.size)) == 0) {
		mbox_keywords_load(mb);
		return 0;
	}
	if ((lk = mbox_lock(mb)) < 0) {
		seterr(err, "cannot lock %s: %s", mb->dir, strerror(errno));
		return -1;
	}
	uint32_t uv = mb->uidvalidity;
	r = mbox_sync_locked(mb, take_recent, err);
	/* the stamp after our own changes, still under the lock */
	if (r == 0 && mbox_stamp_take(mb, &mb->stamp))
		mb->stamp.recent = take_recent;
	else
		mb->stamp.set = false;
	mbox_unlock(lk);
	mbox_cache_synced(mb, uv);
	return r;
}

struct mbox_msg *
mbox_find(struct mbox *mb, uint32_t uid)
{
	size_t lo = 0, hi = mb->nmsgs;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (mb->msgs[mid].uid == uid)
			return &mb->msgs[mid];
		if (mb->msgs[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

size_t
mbox_lower(const struct mbox *mb, uint32_t u)
{
	size_t lo = 0, hi = mb->nmsgs;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (mb->msgs[mid].uid < u)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* ---- messages ---- */

/* where is it now?  look in cur/ then new/ by base name; 0 found, -1 gone */
static int
mbox_relocate(struct mbox *mb, struct mbox_msg *m, bool *innew)
{
	static const char *const subs[] = { "cur", "new" };
	char p[PATH_MAX];

	for (size_t s = 0; s < 2; s++) {
		DIR *d;
		struct dirent *de;
		if ((size_t)snprintf(p, sizeof(p), "%s/%s", mb->dir, subs[s]) >= sizeof(p))
			return -1;
		if ((d = opendir(p)) == NULL)
			continue;
		while ((de = readdir(d)) != NULL) {
			if (strncmp(de->d_name, m->file, m->baselen) == 0 &&
			    (de->d_name[m->baselen] == '\0' || de->d_name[m->baselen] == ':')) {
				free(m->file);
				m->file = xstrdup(de->d_name);
				*innew = s == 1;
				closedir(d);
				return 0;
			}
		}
		closedir(d);
	}
	return -1;
}

static int
mbox_path(const struct mbox *mb, const struct mbox_msg *m, bool innew, char *out, size_t outsz)
{
	return (size_t)snprintf(out, outsz, "%s/%s/%s", mb->dir, innew ? "new" : "cur", m->file) < outsz ? 0 : -1;
}

int
mbox_msg_open(struct mbox *mb, struct mbox_msg *m)
{
	char p[PATH_MAX];
	bool innew = strstr(m->file, ":2,") == NULL;
	int fd;

	for (int tries = 0; tries < 3; tries++) {
		if (mbox_path(mb, m, innew, p, sizeof(p)) < 0) {
			errno = ENAMETOOLONG;
			return -1;
		}
		if ((fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) >= 0)
			return fd;
		if (errno != ENOENT)
			return -1;
		if (mbox_relocate(mb, m, &innew) < 0) {
			errno = ENOENT;
			return -1;
		}
	}
	errno = ENOENT;
	return -1;
}

static int
mbox_read_fd(int fd, struct buf *out, bool header_only)
{
	char chunk[65536];
	ssize_t r;
	size_t total = 0;

	while ((r = read(fd, chunk, sizeof(chunk))) > 0) {
		size_t from = out->len;
		buf_add(out, chunk, (size_t)r);
		total += (size_t)r;
		if (total > MBOX_MSG_MAX) {
			errno = EFBIG;
			return -1;
		}
		if (header_only) {
			/* stop after the first empty line */
			size_t start = from > 0 ? from - 1 : 0;
			for (size_t i = start; i < out->len; i++) {
				if (out->data[i] == '\n' && (i == 0 || out->data[i - 1] == '\n' ||
				    (i >= 2 && out->data[i - 1] == '\r' && out->data[i - 2] == '\n'))) {
					out->len = i + 1;
					out->data[out->len] = '\0';
					return 0;
				}
			}
		}
	}
	return r < 0 ? -1 : 0;
}

int
mbox_msg_read(struct mbox *mb, struct mbox_msg *m, struct buf *out)
{
	int fd = mbox_msg_open(mb, m), r;
	if (fd < 0)
		return -1;
	r = mbox_read_fd(fd, out, false);
	close(fd);
	return r;
}

int
mbox_msg_read_header(struct mbox *mb, struct mbox_msg *m, struct buf *out)
{
	int fd = mbox_msg_open(mb, m), r;
	if (fd < 0)
		return -1;
	r = mbox_read_fd(fd, out, true);
	close(fd);
	return r;
}

/* lock held */
static int
mbox_set_flags_locked(struct mbox *mb, struct mbox_msg *m, char mode, unsigned chg)
{
	char from[PATH_MAX], to[PATH_MAX], name[300];
	bool innew = strstr(m->file, ":2,") == NULL;
	unsigned flags;

	chg &= MBOX_F_STORED;
	for (int tries = 0; tries < 3; tries++) {
		/* the name on disk is the truth: another session may have renamed it */
		flags = mbox_info_flags(m->file);
		if (mode == '+')
			flags |= chg;
		else if (mode == '-')
			flags &= ~chg;
		else
			flags = chg;
		if (!innew && (mbox_info_flags(m->file) == flags) && strstr(m->file, ":2,")) {
			m->flags = (m->flags & MBOX_F_RECENT) | flags;
			return 0;
		}
		if (mbox_flagname(m->file, m->baselen, flags, name, sizeof(name)) < 0 ||
		    mbox_path(mb, m, innew, from, sizeof(from)) < 0 ||
		    (size_t)snprintf(to, sizeof(to), "%s/cur/%s", mb->dir, name) >= sizeof(to)) {
			errno = ENAMETOOLONG;
			return -1;
		}
		if (rename(from, to) == 0) {
			free(m->file);
			m->file = xstrdup(name);
			m->flags = (m->flags & MBOX_F_RECENT) | flags;
			return 0;
		}
		if (errno != ENOENT)
			return -1;
		if (mbox_relocate(mb, m, &innew) < 0)
			return 1;
	}
	return 1;
}

int
mbox_set_flags(struct mbox *mb, struct mbox_msg *m, unsigned flags)
{
	int lk = mbox_lock(mb), r;
	if (lk < 0)
		return -1;
	r = mbox_set_flags_locked(mb, m, '=', flags);
	mbox_unlock(lk);
	return r;
}

int
mbox_store(struct mbox *mb, const uint32_t *uids, size_t n, char mode, unsigned flags, char **err)
{
	int lk = mbox_lock(mb);

	if (lk < 0) {
		seterr(err, "cannot lock: %s", strerror(errno));
		return -1;
	}
	flags &= MBOX_F_STORED;
	for (size_t i = 0; i < n; i++) {
		struct mbox_msg *m = mbox_find(mb, uids[i]);
		if (m == NULL)
			continue;
		if (mbox_set_flags_locked(mb, m, mode, flags) < 0) {
			seterr(err, "cannot change flags: %s", strerror(errno));
			mbox_unlock(lk);
			return -1;
		}
	}
	mbox_unlock(lk);
	return 0;
}

int
mbox_expunge(struct mbox *mb, const uint32_t *uids, size_t n, char **err)
{
	char p[PATH_MAX];
	int lk = mbox_lock(mb);

	if (lk < 0) {
		seterr(err, "cannot lock: %s", strerror(errno));
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		struct mbox_msg *m = mbox_find(mb, uids[i]);
		bool innew;
		if (m == NULL)
			continue;
		innew = strstr(m->file, ":2,") == NULL;
		for (int tries = 0; tries < 3; tries++) {
			if (mbox_path(mb, m, innew, p, sizeof(p)) < 0)
				break;
			if (unlink(p) == 0 || errno != ENOENT)
				break;
			if (mbox_relocate(mb, m, &innew) < 0)
				break;
		}
	}
	/* the index forgets them at this sync */
	int r = mbox_sync_locked(mb, false, err);
	mbox_unlock(lk);
	return r;
}

/* write data (CRLF or LF) into tmp/ as LF text; fills m; 0 or -1 */
static int
mbox_write_tmp(struct mbox *mb, const char *data, size_t len, time_t idate, struct maildir_msg *m)
{
	char out[8193];
	bool cr = false;
	struct timeval tv[2];

	if (maildir_open(m, mb->dir) < 0)
		return -1;
	while (len > 0) {
		size_t k = MIN(len, (size_t)8192);
		size_t o = maildir_crlf_to_lf(data, k, out, &cr, k == len);
		if (maildir_write(m, out, o) < 0)
			goto fail;
		data += k;
		len -= k;
	}
	if (cr && maildir_write(m, "\r", 1) < 0)
		goto fail;
	if (fsync(m->fd) < 0)
		goto fail;
	if (idate > 0) {
		tv[0].tv_sec = tv[1].tv_sec = idate;
		tv[0].tv_usec = tv[1].tv_usec = 0;
		(void)futimes(m->fd, tv);
	}
	close(m->fd);
	m->fd = -1;
	return 0;
fail:
	maildir_abort(m);
	return -1;
}

/* the uid that a sync gave to base (under the lock) */
static uint32_t
mbox_uid_of(const struct mbox *mb, const char *base, size_t bl)
{
	for (size_t i = mb->nmsgs; i-- > 0;)
		if (mb->msgs[i].baselen == bl && !memcmp(mb->msgs[i].file, base, bl))
			return mb->msgs[i].uid;
	return 0;
}

int
mbox_append(struct mbox *mb, const char *data, size_t len, unsigned flags, time_t idate,
    uint32_t *uid, char **err)
{
	struct maildir_msg m;
	char base[320], name[340], to[PATH_MAX];
	int lk, e;

	if (mbox_write_tmp(mb, data, len, idate, &m) < 0) {
		seterr(err, "cannot write: %s", strerror(errno));
		return -1;
	}
	if ((size_t)snprintf(base, sizeof(base), "%s,S=%lld,W=%lld", m.base, (long long)m.size,
	        (long long)m.vsize) >= sizeof(base) ||
	    mbox_flagname(base, strlen(base), flags, name, sizeof(name)) < 0 ||
	    (size_t)snprintf(to, sizeof(to), "%s/cur/%s", mb->dir, name) >= sizeof(to)) {
		unlink(m.tmppath);
		seterr(err, "name too long");
		return -1;
	}
	if ((lk = mbox_lock(mb)) < 0) {
		unlink(m.tmppath);
		seterr(err, "cannot lock: %s", strerror(errno));
		return -1;
	}
	if (link(m.tmppath, to) < 0) {
		e = errno;
		unlink(m.tmppath);
		mbox_unlock(lk);
		seterr(err, "cannot store: %s", strerror(e));
		return -1;
	}
	unlink(m.tmppath);
	{
		char cur[PATH_MAX];
		snprintf(cur, sizeof(cur), "%s/cur", mb->dir);
		(void)fsync_dir(cur);
	}
	if (mbox_sync_locked(mb, false, err) < 0) {
		mbox_unlock(lk);
		return -1;
	}
	*uid = mbox_uid_of(mb, base, strlen(base));
	mbox_unlock(lk);
	return 0;
}

static int
mbox_copy_file(const char *from, const char *to)
{
	char chunk[65536];
	struct stat st;
	struct timeval tv[2];
	ssize_t r;
	int in, out, e;

	if ((in = open(from, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
		return -1;
	if ((out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0) {
		e = errno;
		close(in);
		errno = e;
		return -1;
	}
	while ((r = read(in, chunk, sizeof(chunk))) > 0)
		if (write_full(out, chunk, (size_t)r) < 0) {
			r = -1;
			break;
		}
	if (r == 0 && fstat(in, &st) == 0) {
		tv[0].tv_sec = tv[1].tv_sec = st.st_mtime;
		tv[0].tv_usec = tv[1].tv_usec = 0;
		(void)futimes(out, tv);
	}
	if (r < 0 || fsync(out) < 0) {
		e = errno;
		close(in);
		close(out);
		unlink(to);
		errno = e;
		return -1;
	}
	close(in);
	close(out);
	return 0;
}

int
mbox_copy(struct mbox *src, const uint32_t *uids, size_t n, struct mbox *dst,
    uint32_t *out, char **err)
{
	char (*bases)[320] = NULL;
	char from[PATH_MAX], to[PATH_MAX], name[340], uniq[256];
	size_t i;
	int lk;

	if (n == 0)
		return 0;
	mbox_keywords_load(src);
	bases = xcalloc(n, sizeof(*bases));
	if ((lk = mbox_lock(dst)) < 0) {
		free(bases);
		seterr(err, "cannot lock: %s", strerror(errno));
		return -1;
	}
	for (i = 0; i < n; i++) {
		struct mbox_msg *m = mbox_find(src, uids[i]);
		bool innew;
		int done = -1;
		out[i] = 0;
		if (m == NULL)
			continue;
		innew = strstr(m->file, ":2,") == NULL;
		if (!maildir_unique(uniq, sizeof(uniq)) ||
		    (size_t)snprintf(bases[i], sizeof(bases[i]), "%s,S=%lld,W=%lld", uniq,
		        (long long)m->size, (long long)m->vsize) >= sizeof(bases[i]) ||
		    mbox_flagname(bases[i], strlen(bases[i]),
		        mbox_kw_remap(src, dst, m->flags & MBOX_F_STORED), name, sizeof(name)) < 0 ||
		    (size_t)snprintf(to, sizeof(to), "%s/cur/%s", dst->dir, name) >= sizeof(to))
			goto fail;
		for (int tries = 0; tries < 3 && done < 0; tries++) {
			if (mbox_path(src, m, innew, from, sizeof(from)) < 0)
				goto fail;
			if (link(from, to) == 0 || (errno != ENOENT && mbox_copy_file(from, to) == 0))
				done = 0;
			else if (errno != ENOENT || mbox_relocate(src, m, &innew) < 0)
				break;
		}
		if (done < 0) {
			if (errno == ENOENT) {
				bases[i][0] = '\0';     /* expunged meanwhile: nothing to copy */
				continue;
			}
			goto fail;
		}
	}
	snprintf(to, sizeof(to), "%s/cur", dst->dir);
	(void)fsync_dir(to);
	if (mbox_sync_locked(dst, false, err) < 0) {
		mbox_unlock(lk);
		free(bases);
		return -1;
	}
	for (i = 0; i < n; i++)
		if (bases[i][0])
			out[i] = mbox_uid_of(dst, bases[i], strlen(bases[i]));
	mbox_unlock(lk);
	free(bases);
	return 0;
fail:
	seterr(err, "cannot copy: %s", strerror(errno));
	(void)mbox_sync_locked(dst, false, NULL);
	mbox_unlock(lk);
	free(bases);
	return -1;
}

/* ---- folders ---- */

static int
subs_read(const char *root, char ***names, size_t *n)
{
	char p[PATH_MAX], line[512];
	FILE *f;

	*names = NULL;
	*n = 0;
	if ((size_t)snprintf(p, sizeof(p), "%s/subscriptions", root) >= sizeof(p))
		return -1;
	if ((f = fopen(p, "re")) == NULL)
		return errno == ENOENT ? 0 : -1;
	while (fgets(line, sizeof(line), f) != NULL && *n < 10000) {
		line[strcspn(line, "\r\n")] = '\0';
		if (line[0] == '\0' || line[0] == 'V')
			continue;
		*names = xreallocarray(*names, *n + 1, sizeof(**names));
		(*names)[(*n)++] = xstrdup(line);
	}
	fclose(f);
	return 0;
}

static void
subs_free(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

static int
subs_write(const char *root, char **names, size_t n)
{
	char p[PATH_MAX], tmp[PATH_MAX];
	struct buf b = BUF_INIT;
	int fd;

	if ((size_t)snprintf(p, sizeof(p), "%s/subscriptions", root) >= sizeof(p) ||
	    (size_t)snprintf(tmp, sizeof(tmp), "%s/subscriptions.tmp.%ld", root, (long)pthread_self() & 0xffff) >= sizeof(tmp))
		return -1;
	for (size_t i = 0; i < n; i++)
		buf_printf(&b, "%s\n", names[i]);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || write_full(fd, b.data ? b.data : "", b.len) < 0 || fdatasync(fd) < 0) {
		if (fd >= 0)
			close(fd);
		unlink(tmp);
		buf_free(&b);
		return -1;
	}
	close(fd);
	buf_free(&b);
	return rename(tmp, p);
}

static int
folder_cmp(const void *a, const void *b)
{
	const struct mbox_folder *x = a, *y = b;
	if (!strcmp(x->name, "INBOX"))
		return -1;
	if (!strcmp(y->name, "INBOX"))
		return 1;
	return strcmp(x->name, y->name);
}

int
mbox_folders(const char *root, struct mbox_folder **out, char **err)
{
	DIR *d;
	struct dirent *de;
	struct mbox_folder *v = NULL;
	size_t n = 0, i, j;
	char **subs = NULL;
	size_t nsubs = 0;

	if ((d = opendir(root)) == NULL) {
		seterr(err, "cannot read the mailbox: %s", strerror(errno));
		return -1;
	}
	v = xcalloc(1, sizeof(*v));
	moat_strlcpy(v[0].name, "INBOX", sizeof(v[0].name));
	n = 1;
	while ((de = readdir(d)) != NULL) {
		char p[PATH_MAX];
		size_t len;
		if (de->d_name[0] != '.' || !strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		len = strlen(de->d_name + 1);
		if (!mbox_name_valid(de->d_name + 1, len) || mbox_is_inbox(de->d_name + 1))
			continue;
		if ((size_t)snprintf(p, sizeof(p), "%s/%s", root, de->d_name) >= sizeof(p) || !maildir_exists(p))
			continue;
		if (n >= 100000)
			break;
		v = xreallocarray(v, n + 1, sizeof(*v));
		memset(&v[n], 0, sizeof(*v));
		moat_strlcpy(v[n].name, de->d_name + 1, sizeof(v[n].name));
		n++;
	}
	closedir(d);
	qsort(v, n, sizeof(*v), folder_cmp);
	(void)subs_read(root, &subs, &nsubs);
	for (i = 0; i < n; i++) {
		size_t len = strlen(v[i].name);
		v[i].special = mbox_special_use(v[i].name);
		for (j = 0; j < nsubs; j++)
			if (!strcmp(subs[j], v[i].name) || (i == 0 && mbox_is_inbox(subs[j])))
				v[i].subscribed = true;
		if (i == 0)
			v[i].subscribed = true;
		for (j = 0; j < n; j++)
			if (j != i && !strncmp(v[j].name, v[i].name, len) && v[j].name[len] == '.')
				v[i].children = true;
	}
	subs_free(subs, nsubs);
	*out = v;
	return (int)n;
}

static int
mbox_rmtree_box(const char *dir)
{
	static const char *const subs[] = { "cur", "new", "tmp" };
	char p[PATH_MAX], f[PATH_MAX];
	DIR *d;
	struct dirent *de;

	for (size_t s = 0; s < 3; s++) {
		if ((size_t)snprintf(p, sizeof(p), "%s/%s", dir, subs[s]) >= sizeof(p))
			return -1;
		if ((d = opendir(p)) == NULL)
			continue;
		while ((de = readdir(d)) != NULL) {
			if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
				continue;
			if ((size_t)snprintf(f, sizeof(f), "%s/%s", p, de->d_name) < sizeof(f))
				unlink(f);
		}
		closedir(d);
		if (rmdir(p) < 0)
			return -1;
	}
	if ((d = opendir(dir)) == NULL)
		return -1;
	while ((de = readdir(d)) != NULL) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if ((size_t)snprintf(f, sizeof(f), "%s/%s", dir, de->d_name) < sizeof(f))
			unlink(f);
	}
	closedir(d);
	return rmdir(dir);
}

int
mbox_create(const char *root, const char *name, char **err)
{
	char dir[PATH_MAX], p[PATH_MAX];
	static const char *const subs[] = { "cur", "new", "tmp" };
	int fd;

	if (mbox_is_inbox(name)) {
		seterr(err, "[ALREADYEXISTS] INBOX always exists");
		return -1;
	}
	if (mbox_dir(root, name, dir, sizeof(dir)) < 0) {
		seterr(err, "[CANNOT] invalid mailbox name");
		return -1;
	}
	if (mkdir(dir, 0700) < 0) {
		seterr(err, errno == EEXIST ? "[ALREADYEXISTS] mailbox exists" : "[SERVERBUG] cannot create: %s",
		    strerror(errno));
		return -1;
	}
	for (size_t i = 0; i < 3; i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, subs[i]);
		if (mkdir(p, 0700) < 0 && errno != EEXIST) {
			seterr(err, "[SERVERBUG] cannot create: %s", strerror(errno));
			return -1;
		}
	}
	snprintf(p, sizeof(p), "%s/maildirfolder", dir);
	if ((fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)) >= 0)
		close(fd);
	(void)fsync_dir(root);
	return 0;
}

int
mbox_delete(const char *root, const char *name, char **err)
{
	char dir[PATH_MAX];

	if (mbox_is_inbox(name)) {
		seterr(err, "[CANNOT] INBOX cannot be deleted");
		return -1;
	}
	if (mbox_dir(root, name, dir, sizeof(dir)) < 0) {
		seterr(err, "[CANNOT] invalid mailbox name");
		return -1;
	}
	if (!maildir_exists(dir)) {
		seterr(err, "[NONEXISTENT] no such mailbox");
		return -1;
	}
	if (mbox_rmtree_box(dir) < 0) {
		seterr(err, "[SERVERBUG] cannot delete: %s", strerror(errno));
		return -1;
	}
	(void)mbox_subscribe(root, name, false, NULL);
	return 0;
}

int
mbox_rename(const char *root, const char *from, const char *to, char **err)
{
	char a[PATH_MAX], b[PATH_MAX];
	struct mbox_folder *v = NULL;
	int n;
	size_t fl = strlen(from);

	if (mbox_is_inbox(from)) {
		seterr(err, "[CANNOT] renaming INBOX is not supported");
		return -1;
	}
	if (mbox_is_inbox(to) || mbox_dir(root, from, a, sizeof(a)) < 0 || mbox_dir(root, to, b, sizeof(b)) < 0) {
		seterr(err, "[CANNOT] invalid mailbox name");
		return -1;
	}
	if (!maildir_exists(a)) {
		seterr(err, "[NONEXISTENT] no such mailbox");
		return -1;
	}
	if (access(b, F_OK) == 0) {
		seterr(err, "[ALREADYEXISTS] target mailbox exists");
		return -1;
	}
	/* children first */
	if ((n = mbox_folders(root, &v, err)) < 0)
		return -1;
	for (int i = 0; i < n; i++) {
		if (!strncmp(v[i].name, from, fl) && v[i].name[fl] == '.') {
			char cn[MBOX_NAME_MAX * 2 + 2], ca[PATH_MAX], cb[PATH_MAX];
			snprintf(cn, sizeof(cn), "%s%s", to, v[i].name + fl);
			if (!mbox_name_valid(cn, strlen(cn)) || mbox_dir(root, v[i].name, ca, sizeof(ca)) < 0 ||
			    mbox_dir(root, cn, cb, sizeof(cb)) < 0)
				continue;
			(void)rename(ca, cb);
		}
	}
	free(v);
	if (rename(a, b) < 0) {
		seterr(err, "[SERVERBUG] cannot rename: %s", strerror(errno));
		return -1;
	}
	(void)fsync_dir(root);
	return 0;
}

int
mbox_subscribe(const char *root, const char *name, bool on, char **err)
{
	char **v;
	size_t n, i;
	bool have = false;
	int r = 0;

	if (subs_read(root, &v, &n) < 0) {
		seterr(err, "cannot read subscriptions");
		return -1;
	}
	for (i = 0; i < n; i++)
		if (!strcmp(v[i], name))
			have = true;
	if (on && !have) {
		v = xreallocarray(v, n + 1, sizeof(*v));
		v[n++] = xstrdup(name);
		r = subs_write(root, v, n);
	} else if (!on && have) {
		size_t o = 0;
		for (i = 0; i < n; i++) {
			if (!strcmp(v[i], name))
				free(v[i]);
			else
				v[o++] = v[i];
		}
		n = o;
		r = subs_write(root, v, n);
	}
	subs_free(v, n);
	if (r < 0)
		seterr(err, "cannot write subscriptions");
	return r;
}

int
mbox_get_status(const char *root, const char *name, struct mbox_status *st, char **err)
{
	struct mbox *mb = mbox_open(root, name, err);

	memset(st, 0, sizeof(*st));
	if (mb == NULL)
		return -1;
	if (mbox_sync(mb, false, err) < 0) {
		mbox_close(mb);
		return -1;
	}
	for (size_t i = 0; i < mb->nmsgs; i++) {
		st->messages++;
		if ((mb->msgs[i].flags & MBOX_F_RECENT) || mb->msgs[i].uid >= mb->first_recent)
			st->recent++;
		if (!(mb->msgs[i].flags & MBOX_F_SEEN))
			st->unseen++;
		st->size += (unsigned long long)mb->msgs[i].vsize;
	}
	st->uidnext = mb->uidnext;
	st->uidvalidity = mb->uidvalidity;
	mbox_close(mb);
	return 0;
}

/* ---- SASL PLAIN ---- */

bool
mbox_b64_decode(const char *in, size_t len, unsigned char *out, size_t outsz, size_t *outlen)
{
	unsigned acc = 0;
	size_t o = 0, i, pad = 0;
	int bits = 0;

	if (len % 4 != 0)
		return false;
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)in[i];
		int v;
		if (c == '=') {
			if (i < len - 2)
				return false;
			pad++;
			continue;
		}
		if (pad)
			return false;
		if (c >= 'A' && c <= 'Z')
			v = c - 'A';
		else if (c >= 'a' && c <= 'z')
			v = c - 'a' + 26;
		else if (c >= '0' && c <= '9')
			v = c - '0' + 52;
		else if (c == '+')
			v = 62;
		else if (c == '/')
			v = 63;
		else
			return false;
		acc = (acc << 6) | (unsigned)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (o >= outsz)
				return false;
			out[o++] = (unsigned char)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	*outlen = o;
	return true;
}

bool
mbox_sasl_plain(const char *b64, size_t len, char *user, size_t usersz, char *pass, size_t passsz)
{
	unsigned char dec[1024];
	size_t n, i, z1, z2;

	if (!mbox_b64_decode(b64, len, dec, sizeof(dec), &n))
		return false;
	for (z1 = 0; z1 < n && dec[z1] != '\0'; z1++)
		;
	for (z2 = z1 + 1; z2 < n && dec[z2] != '\0'; z2++)
		;
	if (z1 >= n || z2 >= n)
		return false;
	for (i = z2 + 1; i < n; i++)
		if (dec[i] == '\0')
			return false;
	size_t ulen = z2 - z1 - 1, plen = n - z2 - 1;
	if (ulen == 0 || ulen >= usersz || plen >= passsz)
		return false;
	if (z1 > 0 && (z1 != ulen || memcmp(dec, dec + z1 + 1, ulen) != 0))
		return false;   /* acting as another user is not supported */
	memcpy(user, dec + z1 + 1, ulen);
	user[ulen] = '\0';
	memcpy(pass, dec + z2 + 1, plen);
	pass[plen] = '\0';
	explicit_bzero(dec, sizeof(dec));
	return true;
}

/* ---- failed-login throttle (loop thread) ---- */

#define THR_SLOTS   4096
#define THR_EXPIRE  (15 * 60 * 1000ULL)
struct thr {
	char    ip[48];
	unsigned fails;
	uint64_t last;
};
static struct thr thr_tab[THR_SLOTS];

static struct thr *
thr_find(const char *ip, bool create)
{
	unsigned h = 2166136261u;
	uint64_t now = now_ms();
	struct thr *oldest = NULL;

	for (const char *s = ip; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	/* open addressing over 16 probes; the stalest slot is reused */
	for (unsigned i = 0; i < 16; i++) {
		struct thr *t = &thr_tab[(h + i) % THR_SLOTS];
		if (t->ip[0] && now - t->last > THR_EXPIRE)
			t->ip[0] = '\0';
		if (t->ip[0] && !strcmp(t->ip, ip))
			return t;
		if (oldest == NULL || !t->ip[0] || (oldest->ip[0] && t->last < oldest->last))
			oldest = t;
	}
	if (!create)
		return NULL;
	memset(oldest, 0, sizeof(*oldest));
	moat_strlcpy(oldest->ip, ip, sizeof(oldest->ip));
	oldest->last = now;
	return oldest;
}

static struct rl_auth *shared_throttle;
static unsigned shared_last_delay_ms;    /* from the failure just recorded */

void
mbox_throttle_use(struct rl_auth *rl)
{
	shared_throttle = rl;
}

bool
mbox_throttle_refused(const char *ip)
{
	unsigned retry;
	return shared_throttle &&
	    rl_auth_check(shared_throttle, ip, time(NULL), &retry) == RL_AUTH_REFUSE;
}

unsigned
mbox_throttle_delay(const char *ip)
{
	struct thr *t = thr_find(ip, false);
	unsigned d;

	if (shared_throttle)
		return shared_last_delay_ms;
	if (t == NULL || t->fails == 0)
		return 0;
	d = t->fails >= 5 ? 15000 : 1000u << (t->fails - 1);
	return MIN(d, 15000u);
}

void
mbox_throttle_fail(const char *ip)
{
	if (shared_throttle) {
		shared_last_delay_ms = rl_auth_failure(shared_throttle, ip, time(NULL)) * 1000u;
		return;
	}
	struct thr *t = thr_find(ip, true);
	if (t->fails < 100)
		t->fails++;
	t->last = now_ms();
}

void
mbox_throttle_ok(const char *ip)
{
	if (shared_throttle) {
		rl_auth_success(shared_throttle, ip, time(NULL));
		return;
	}
	struct thr *t = thr_find(ip, false);
	if (t)
		t->ip[0] = '\0';
}

/* ---- the envelope-field cache (moat-cache) ---- */

#define MBOX_CACHE      "moat-cache"
#define MBOX_CACHE_REC_MAX  8192u           /* bigger field sets are not cached */
#define MBOX_CACHE_MAX  (256u * 1024 * 1024) /* the file stops growing here */
#define MBOX_CACHE_FLUSH (1024u * 1024)      /* pending bytes that trigger a write */
#define MBOX_CACHE_HDR  32                   /* "moat-cache 1 <uidvalidity>\n", padded */
#define MBOX_CACHE_RECHDR 16                 /* uid, len, base hash, checksum (LE) */

static const char *const mbox_cache_fields[] = {
	"Date", "Subject", "From", "Sender", "Reply-To", "To", "Cc", "Bcc",
	"In-Reply-To", "Message-ID",
};

struct centry {
	uint32_t uid, len, bhash;
	size_t  off;
};

struct mbox_cache {
	int     fd;                 /* the file as opened, -1 */
	size_t  filelen;            /* its size then */
	size_t  validlen;           /* bytes up to the first bad record */
	dev_t   dev;
	ino_t   ino;
	bool    ok;                 /* the header matched our UIDVALIDITY */
	bool    recheck;            /* synced since: look for records of others */
	struct centry *v;           /* sorted by uid */
	size_t  n, cap;
	size_t  nsorted;            /* v[0..nsorted) is sorted */
	struct buf pending;         /* records not written yet */
	char   *rec;                /* one record as read */
	size_t  npending;
};

bool
mbox_cached_field(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(mbox_cache_fields); i++)
		if (ascii_strcasecmp(name, mbox_cache_fields[i]) == 0)
			return true;
	return false;
}

/* FNV-1a, seeded */
static uint32_t
cache_sum(uint32_t seed, const char *p, size_t len)
{
	uint32_t h = 2166136261u ^ seed;
	h *= 16777619u;
	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)p[i];
		h *= 16777619u;
	}
	return h;
}

static void
put32(char *p, uint32_t v)
{
	p[0] = (char)(v & 0xff);
	p[1] = (char)((v >> 8) & 0xff);
	p[2] = (char)((v >> 16) & 0xff);
	p[3] = (char)((v >> 24) & 0xff);
}

static uint32_t
get32(const char *p)
{
	const unsigned char *u = (const unsigned char *)p;
	return (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

static int
centry_cmp(const void *a, const void *b)
{
	uint32_t x = ((const struct centry *)a)->uid, y = ((const struct centry *)b)->uid;
	return x < y ? -1 : x > y;
}

static void
cache_reset(struct mbox_cache *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->filelen = c->validlen = 0;
	c->n = c->nsorted = 0;
	c->ok = false;
}

static void
cache_header(const struct mbox *mb, char *h)
{
	memset(h, ' ', MBOX_CACHE_HDR);
	int n = snprintf(h, MBOX_CACHE_HDR, "moat-cache 1 %u", mb->uidvalidity);
	h[n] = ' ';
	h[MBOX_CACHE_HDR - 1] = '\n';
}

/*
 * (Re)open the file if it changed and index the records past what we
 * know, checking each; the first bad one ends the valid part (a torn
 * tail).  The file is read, not mapped: whoever truncates it under us
 * costs us cache misses, never a SIGBUS.
 */
static void
cache_load(struct mbox *mb)
{
	struct mbox_cache *c = mb->cache;
	char p[PATH_MAX], h[MBOX_CACHE_HDR], h2[MBOX_CACHE_HDR];
	struct stat st;
	int fd;

	if ((size_t)snprintf(p, sizeof(p), "%s/%s", mb->dir, MBOX_CACHE) >= sizeof(p))
		return;
	if ((fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0) {
		cache_reset(c);
		return;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    st.st_size > (off_t)(MBOX_CACHE_MAX + MBOX_CACHE_FLUSH + MBOX_CACHE_REC_MAX)) {
		close(fd);
		cache_reset(c);
		return;
	}
	bool same = c->fd >= 0 && st.st_dev == c->dev && st.st_ino == c->ino;
	if (same && (size_t)st.st_size == c->filelen) {
		close(fd);
		return;         /* unchanged */
	}
	size_t o = MBOX_CACHE_HDR;
	if (same && (size_t)st.st_size > c->filelen && c->validlen == c->filelen && c->ok) {
		o = c->validlen;        /* grown: read the new part only */
		close(c->fd);
		c->fd = -1;
	} else
		cache_reset(c);
	c->fd = fd;
	c->dev = st.st_dev;
	c->ino = st.st_ino;
	c->filelen = (size_t)st.st_size;
	if (o == MBOX_CACHE_HDR) {
		cache_header(mb, h);
		if (c->filelen < MBOX_CACHE_HDR || pread(fd, h2, sizeof(h2), 0) != (ssize_t)sizeof(h2) ||
		    memcmp(h, h2, sizeof(h)) != 0) {
			c->ok = false;  /* another UIDVALIDITY or not ours: rewritten on flush */
			c->validlen = 0;
			return;
		}
		c->ok = true;
	}
	char *chunk = xmalloc(MBOX_CACHE_FLUSH);
	for (;;) {
		size_t want = MIN((size_t)MBOX_CACHE_FLUSH, c->filelen - o), k = 0;
		ssize_t r;
		bool bad = false;
		if (want < MBOX_CACHE_RECHDR || (r = pread(fd, chunk, want, (off_t)o)) < (ssize_t)MBOX_CACHE_RECHDR)
			break;
		while (k + MBOX_CACHE_RECHDR <= (size_t)r) {
			uint32_t uid = get32(chunk + k), len = get32(chunk + k + 4), bh = get32(chunk + k + 8),
			    sum = get32(chunk + k + 12);
			if (uid == 0 || len > MBOX_CACHE_REC_MAX || len > c->filelen - o - k - MBOX_CACHE_RECHDR) {
				bad = true;
				break;
			}
			if (k + MBOX_CACHE_RECHDR + len > (size_t)r)
				break;  /* continues in the next chunk */
			if (cache_sum(uid ^ bh, chunk + k + MBOX_CACHE_RECHDR, len) != sum) {
				bad = true;
				break;
			}
			if (c->n == c->cap) {
				c->cap = c->cap ? c->cap * 2 : 1024;
				c->v = xreallocarray(c->v, c->cap, sizeof(*c->v));
			}
			c->v[c->n].uid = uid;
			c->v[c->n].len = len;
			c->v[c->n].bhash = bh;
			c->v[c->n].off = o + k + MBOX_CACHE_RECHDR;
			c->n++;
			k += MBOX_CACHE_RECHDR + len;
		}
		o += k;
		if (bad || k == 0)
			break;
	}
	free(chunk);
	c->validlen = o;
	/* sort unless it already is (the usual case: appended in UID order) */
	bool sorted = true;
	for (size_t i = c->nsorted > 0 ? c->nsorted : 1; i < c->n && sorted; i++)
		if (c->v[i - 1].uid > c->v[i].uid)
			sorted = false;
	if (!sorted)
		qsort(c->v, c->n, sizeof(*c->v), centry_cmp);
	c->nsorted = c->n;
}

/* one record, read and checked again; false if it is not there any more */
static bool
cache_get(const struct mbox_cache *c, const struct centry *e, char *rec)
{
	size_t n = MBOX_CACHE_RECHDR + e->len;
	return pread(c->fd, rec, n, (off_t)(e->off - MBOX_CACHE_RECHDR)) == (ssize_t)n &&
	    get32(rec) == e->uid && get32(rec + 4) == e->len &&
	    cache_sum(e->uid ^ e->bhash, rec + MBOX_CACHE_RECHDR, e->len) == get32(rec + 12);
}

static const struct centry *
cache_find(const struct mbox_cache *c, uint32_t uid)
{
	size_t lo = 0, hi = c->nsorted;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (c->v[mid].uid == uid)
			return &c->v[mid];
		if (c->v[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* the cached fields of a header section (as hdr_get in imap.c reads
 * fields: NAME ':' at the start of a line, folded lines following) */
static void
cache_extract(const char *p, size_t len, struct buf *out)
{
	size_t i = 0;
	bool keep = false;

	while (i < len) {
		size_t e = i;
		while (e < len && p[e] != '\n')
			e++;
		if (e == i || (e == i + 1 && p[i] == '\r'))
			break;
		if (p[i] == ' ' || p[i] == '\t') {
			/* a folded line: goes with the field before it */
		} else {
			keep = false;
			for (size_t k = 0; k < ARRAY_SIZE(mbox_cache_fields) && !keep; k++) {
				size_t nl = strlen(mbox_cache_fields[k]);
				if (e - i > nl && p[i + nl] == ':' && ascii_strncasecmp(p + i, mbox_cache_fields[k], nl) == 0)
					keep = true;
			}
		}
		if (keep)
			buf_add(out, p + i, e - i);
		if (keep)
			buf_addc(out, '\n');
		i = e + 1;
	}
	buf_addc(out, '\n');
}

int
mbox_msg_envhdr(struct mbox *mb, struct mbox_msg *m, struct buf *out)
{
	struct mbox_cache *c;
	const struct centry *e;
	struct buf raw = BUF_INIT;
	size_t start = out->len;

	if (mb->cache == NULL) {
		mb->cache = xcalloc(1, sizeof(*mb->cache));
		mb->cache->fd = -1;
		cache_load(mb);
	}
	c = mb->cache;
	if (c->recheck) {
		c->recheck = false;
		cache_load(mb);
	}
	/* the record must be of this file too: a UID given again after an
	 * index was lost within the same second keeps its UIDVALIDITY */
	uint32_t bh = cache_sum(0, m->file, m->baselen);
	if (c->rec == NULL)
		c->rec = xmalloc(MBOX_CACHE_RECHDR + MBOX_CACHE_REC_MAX);
	if (c->fd >= 0 && c->ok && (e = cache_find(c, m->uid)) != NULL && e->bhash == bh &&
	    cache_get(c, e, c->rec)) {
		buf_add(out, c->rec + MBOX_CACHE_RECHDR, e->len);
		return 0;
	}
	if (mbox_msg_read_header(mb, m, &raw) < 0) {
		buf_free(&raw);
		return -1;
	}
	cache_extract(raw.data ? raw.data : "", raw.len, out);
	buf_free(&raw);
	size_t len = out->len - start;
	if (len <= MBOX_CACHE_REC_MAX && c->filelen + c->pending.len < MBOX_CACHE_MAX) {
		char rh[MBOX_CACHE_RECHDR];
		put32(rh, m->uid);
		put32(rh + 4, (uint32_t)len);
		put32(rh + 8, bh);
		put32(rh + 12, cache_sum(m->uid ^ bh, out->data + start, len));
		buf_add(&c->pending, rh, sizeof(rh));
		buf_add(&c->pending, out->data + start, len);
		c->npending++;
		if (c->pending.len >= MBOX_CACHE_FLUSH)
			mbox_cache_flush(mb);
	}
	return 0;
}

/* rewrite the file with the live records and the pending ones (under the lock) */
static void
cache_rewrite(struct mbox *mb, const char *path)
{
	struct mbox_cache *c = mb->cache;
	char tmp[PATH_MAX], h[MBOX_CACHE_HDR];
	struct buf b = BUF_INIT;
	int fd;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
		return;
	cache_header(mb, h);
	buf_add(&b, h, sizeof(h));
	if (c->fd >= 0 && c->ok) {
		char *rec = xmalloc(MBOX_CACHE_RECHDR + MBOX_CACHE_REC_MAX);
		for (size_t i = 0; i < c->nsorted; i++)
			if ((i == 0 || c->v[i - 1].uid != c->v[i].uid) && mbox_find(mb, c->v[i].uid) != NULL &&
			    cache_get(c, &c->v[i], rec))
				buf_add(&b, rec, MBOX_CACHE_RECHDR + c->v[i].len);
		free(rec);
	}
	buf_add(&b, c->pending.data ? c->pending.data : "", c->pending.len);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || write_full(fd, b.data, b.len) < 0) {
		log_warn("mailbox: cannot write %s", tmp);
		if (fd >= 0)
			close(fd);
		unlink(tmp);
	} else {
		close(fd);
		if (rename(tmp, path) < 0) {
			log_warn("mailbox: cannot rename %s", tmp);
			unlink(tmp);
		}
	}
	buf_free(&b);
}

void
mbox_cache_flush(struct mbox *mb)
{
	struct mbox_cache *c = mb->cache;
	char p[PATH_MAX];
	int lk, fd;

	if (c == NULL || c->npending == 0)
		return;
	if ((size_t)snprintf(p, sizeof(p), "%s/%s", mb->dir, MBOX_CACHE) >= sizeof(p) ||
	    (lk = mbox_lock(mb)) < 0)
		goto done;
	cache_load(mb);         /* what the others wrote meanwhile */
	if (c->fd < 0 || !c->ok || c->n > 2 * mb->nmsgs + 1024) {
		/* missing, foreign, or mostly expunged UIDs: a fresh file */
		cache_rewrite(mb, p);
	} else if ((fd = open(p, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)) >= 0) {
		/* drop a torn tail, then append */
		if ((c->validlen == c->filelen || ftruncate(fd, (off_t)c->validlen) == 0) &&
		    lseek(fd, (off_t)c->validlen, SEEK_SET) >= 0) {
			if (write_full(fd, c->pending.data, c->pending.len) < 0) {
				log_warn("mailbox: cannot write %s", p);
				if (ftruncate(fd, (off_t)c->validlen) < 0)
					log_warn("mailbox: cannot truncate %s", p);
			}
		}
		close(fd);
	}
	cache_load(mb);         /* index what was just written */
	mbox_unlock(lk);
done:
	buf_reset(&c->pending);
	c->npending = 0;
}

static void
mbox_cache_free(struct mbox *mb)
{
	if (mb->cache == NULL)
		return;
	cache_reset(mb->cache);
	free(mb->cache->rec);
	free(mb->cache->v);
	buf_free(&mb->cache->pending);
	free(mb->cache);
	mb->cache = NULL;
}

/* after a sync: look for others' records again; a new UIDVALIDITY drops it */
static void
mbox_cache_synced(struct mbox *mb, uint32_t uv)
{
	if (mb->cache == NULL)
		return;
	if (mb->uidvalidity != uv)
		mbox_cache_free(mb);
	else
		mb->cache->recheck = true;
}
