/*
 * spool.c - the durable message spool (format and protocol in spool.h).
 * Runs in: the worker (writers on the loop, commits in pool threads), the
 * master (startup clean-up) and the moat CLI (reading).  Untrusted input:
 * envelope values come from the SMTP parser, which has refused CR/LF/NUL;
 * queue files are re-read with explicit bounds (4 MiB envelope cap).
 */
#include "config.h"
#include "spool.h"
#include "buf.h"
#include "conf.h"
#include "log.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SPOOL_MAGIC      "MOAT-SPOOL 1\n"
/* every committed file ends with "\nMOAT-END <qid> <8 hex>\n" (the hex is
 * the length of the added headers stored just before it): a file without it
 * (a crash between rename and fsync) was never acknowledged */
#define TRAILER_LEN      (1 + 9 + 18 + 1 + 8 + 1)
#define ADD_HEADERS_MAX  (1024 * 1024)
#define ENVELOPE_MAX     (4 * 1024 * 1024)
#define WRITE_CHUNK      (64 * 1024)

static char dir_incoming[PATH_MAX];
static char dir_queue[PATH_MAX];
static char dir_state[PATH_MAX];
static char dir_corrupt[PATH_MAX];
static int  queue_dirfd = -1;

/* group commit of the queue directory fsync */
static pthread_mutex_t gc_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t  gc_cv = PTHREAD_COND_INITIALIZER;
static uint64_t gc_req, gc_done;
static bool     gc_busy;

struct spool_writer {
	char    qid[QID_SIZE];
	char    tmppath[PATH_MAX];
	char    qpath[PATH_MAX];
	int     fd;
	struct buf wbuf;
	off_t   size;
	int     err;            /* sticky errno */
	bool    committed;
	char   *hdrs;           /* added headers, written at commit */
	off_t   data_off;       /* where the message starts */
	size_t  hdrslen;
};

int
spool_init(const struct moat_conf *c, char **err)
{
	char base[PATH_MAX];
	const char *dirs[] = { dir_incoming, dir_queue, dir_state, dir_corrupt };

	conf_path(c, "spool", base, sizeof(base));
	snprintf(dir_incoming, sizeof(dir_incoming), "%s/incoming", base);
	snprintf(dir_queue, sizeof(dir_queue), "%s/queue", base);
	snprintf(dir_state, sizeof(dir_state), "%s/state", base);
	snprintf(dir_corrupt, sizeof(dir_corrupt), "%s/corrupt", base);
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++)
		if (mkdir_p(dirs[i], 0700) < 0) {
			char msg[PATH_MAX + 128];
			snprintf(msg, sizeof(msg), "cannot create %s: %s", dirs[i], strerror(errno));
			*err = xstrdup(msg);
			return -1;
		}
	if (queue_dirfd >= 0)
		close(queue_dirfd);
	queue_dirfd = open(dir_queue, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (queue_dirfd < 0) {
		char msg[PATH_MAX + 128];
		snprintf(msg, sizeof(msg), "cannot open %s: %s", dir_queue, strerror(errno));
		*err = xstrdup(msg);
		return -1;
	}
	return 0;
}

void
spool_new_qid(char out[QID_SIZE])
{
	static atomic_uint counter;
	static unsigned pidbits;
	uint64_t us = wall_us();
	unsigned n = atomic_fetch_add(&counter, 1);

	if (pidbits == 0)
		pidbits = ((unsigned)getpid() & 0xff) | 0x100;
	/* 13 hex digits of microseconds keep ids sortable by arrival until 2112 */
	snprintf(out, QID_SIZE, "%013llX%02X%03X", (unsigned long long)(us & 0xFFFFFFFFFFFFFULL),
	    pidbits & 0xff, n & 0xfff);
}

bool
spool_valid_qid(const char *s)
{
	size_t n = 0;
	for (; s[n]; n++)
		if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'A' && s[n] <= 'F')))
			return false;
	return n == 18;
}

int
spool_clean_incoming(void)
{
	DIR *d = opendir(dir_incoming);
	struct dirent *de;
	int n = 0;
	char path[PATH_MAX];

	if (d == NULL)
		return 0;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir_incoming, de->d_name);
		if (unlink(path) == 0)
			n++;
	}
	closedir(d);
	return n;
}

void
envelope_add_rcpt(struct envelope *e, const char *addr, const char *orcpt, unsigned notify)
{
	e->rcpts = xreallocarray(e->rcpts, e->nrcpts + 1, sizeof(*e->rcpts));
	e->rcpts[e->nrcpts].addr = xstrdup(addr);
	e->rcpts[e->nrcpts].orcpt = orcpt && *orcpt ? xstrdup(orcpt) : NULL;
	e->rcpts[e->nrcpts].notify = notify;
	e->nrcpts++;
}

void
envelope_clear(struct envelope *e)
{
	free(e->sender);
	free(e->envid);
	free(e->client_addr);
	free(e->client_name);
	free(e->helo);
	free(e->proto);
	free(e->add_headers);
	for (size_t i = 0; i < e->nrcpts; i++) {
		free(e->rcpts[i].addr);
		free(e->rcpts[i].orcpt);
	}
	free(e->rcpts);
	memset(e, 0, sizeof(*e));
}

/* values never hold CR/LF; strip defensively so the format stays sound */
static void
put_val(struct buf *b, const char *v)
{
	for (const char *p = v ? v : ""; *p; p++)
		buf_addc(b, (*p == '\r' || *p == '\n') ? ' ' : *p);
	buf_addc(b, '\n');
}

static void
put_kv(struct buf *b, const char *k, const char *v)
{
	buf_adds(b, k);
	buf_addc(b, ' ');
	put_val(b, v);
}

static void
writer_flush(struct spool_writer *w)
{
	if (w->err == 0 && w->wbuf.len) {
		if (write_full(w->fd, w->wbuf.data, w->wbuf.len) < 0)
			w->err = errno;
	}
	buf_reset(&w->wbuf);
}

struct spool_writer *
spool_begin(const struct envelope *e, const char *prefix, char **err)
{
	struct spool_writer *w = xcalloc(1, sizeof(*w));
	static const char *bodies[] = { "7bit", "8bitmime", "binarymime" };
	char num[32];

	moat_strlcpy(w->qid, e->qid, sizeof(w->qid));
	snprintf(w->tmppath, sizeof(w->tmppath), "%s/%s", dir_incoming, e->qid);
	snprintf(w->qpath, sizeof(w->qpath), "%s/%s", dir_queue, e->qid);
	w->fd = open(w->tmppath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (w->fd < 0) {
		char msg[PATH_MAX + 64];
		snprintf(msg, sizeof(msg), "cannot create %s: %s", w->tmppath, strerror(errno));
		*err = xstrdup(msg);
		free(w);
		return NULL;
	}
	buf_adds(&w->wbuf, SPOOL_MAGIC);
	put_kv(&w->wbuf, "qid", e->qid);
	snprintf(num, sizeof(num), "%lld", (long long)e->arrival);
	put_kv(&w->wbuf, "arrival", num);
	put_kv(&w->wbuf, "sender", e->sender);
	if (e->envid)
		put_kv(&w->wbuf, "envid", e->envid);
	if (e->ret != DSN_RET_UNSPEC)
		put_kv(&w->wbuf, "ret", e->ret == DSN_RET_FULL ? "full" : "hdrs");
	put_kv(&w->wbuf, "body", bodies[e->body]);
	put_kv(&w->wbuf, "smtputf8", e->smtputf8 ? "1" : "0");
	if (e->client_addr)
		put_kv(&w->wbuf, "client", e->client_addr);
	if (e->client_name)
		put_kv(&w->wbuf, "client-name", e->client_name);
	if (e->helo)
		put_kv(&w->wbuf, "helo", e->helo);
	put_kv(&w->wbuf, "proto", e->proto ? e->proto : "ESMTP");
	for (size_t i = 0; i < e->nrcpts; i++) {
		buf_printf(&w->wbuf, "rcpt %u %s ", e->rcpts[i].notify,
		    e->rcpts[i].orcpt ? e->rcpts[i].orcpt : "-");
		put_val(&w->wbuf, e->rcpts[i].addr);
	}
	buf_addc(&w->wbuf, '\n');
	w->data_off = (off_t)w->wbuf.len;
	if (prefix) {
		size_t pl = strlen(prefix);
		buf_add(&w->wbuf, prefix, pl);
		w->size += (off_t)pl;
	}
	return w;
}

void
spool_write(struct spool_writer *w, const void *p, size_t n)
{
	buf_add(&w->wbuf, p, n);
	w->size += (off_t)n;
	if (w->wbuf.len >= WRITE_CHUNK)
		writer_flush(w);
}

off_t
spool_writer_data_off(const struct spool_writer *w)
{
	return w->data_off;
}

off_t
spool_size(const struct spool_writer *w)
{
	return w->size;
}

const char *
spool_writer_path(const struct spool_writer *w)
{
	return w->committed ? w->qpath : w->tmppath;
}

int
spool_flush(struct spool_writer *w)
{
	writer_flush(w);
	return w->err ? -1 : 0;
}

int
spool_replace_data(struct spool_writer *w, const char *p, size_t n)
{
	writer_flush(w);
	if (w->err || w->committed)
		return -1;
	if (ftruncate(w->fd, w->data_off) < 0 || lseek(w->fd, w->data_off, SEEK_SET) < 0) {
		w->err = errno;
		return -1;
	}
	w->size = 0;
	spool_write(w, p, n);
	writer_flush(w);
	return w->err ? -1 : 0;
}

static int
dir_sync_group(void)
{
	int r = 0;

	pthread_mutex_lock(&gc_mu);
	uint64_t mine = ++gc_req;
	while (gc_done < mine) {
		if (!gc_busy) {
			gc_busy = true;
			uint64_t target = gc_req;
			pthread_mutex_unlock(&gc_mu);
			r = fsync(queue_dirfd);
			int e = errno;
			pthread_mutex_lock(&gc_mu);
			gc_busy = false;
			if (r == 0 && target > gc_done)
				gc_done = target;
			pthread_cond_broadcast(&gc_cv);
			if (r < 0) {
				pthread_mutex_unlock(&gc_mu);
				errno = e;
				return -1;
			}
		} else
			pthread_cond_wait(&gc_cv, &gc_mu);
	}
	pthread_mutex_unlock(&gc_mu);
	return 0;
}

/*
 * Commit: the message and its end marker are written, the file is renamed
 * into queue/, then fsync(file) and fsync(queue dir).  On ext4 the file
 * fsync commits the rename in the same journal transaction, so the
 * directory fsync is nearly free; on any POSIX file system both together
 * make name and data durable.  A crash between rename and fsync can leave
 * a partial file in queue/: it lacks the end marker and is set aside at
 * start (spool_recover), never delivered; it was never acknowledged.
 */
int
spool_commit(struct spool_writer *w, char **err)
{
	const char *what = "write";
	char trailer[TRAILER_LEN + 1];

	if (w->hdrslen)
		buf_add(&w->wbuf, w->hdrs, w->hdrslen);
	snprintf(trailer, sizeof(trailer), "\nMOAT-END %s %08zx\n", w->qid, w->hdrslen);
	buf_add(&w->wbuf, trailer, TRAILER_LEN);
	writer_flush(w);
	if (w->err == 0 && rename(w->tmppath, w->qpath) < 0) {
		w->err = errno;
		what = "rename";
	} else if (w->err == 0) {
		w->committed = true;    /* the file is now at qpath */
		if (fsync(w->fd) < 0) {
			w->err = errno;
			what = "fsync";
		} else if (dir_sync_group() < 0) {
			w->err = errno;
			what = "fsync(queue dir)";
		}
	}
	if (close(w->fd) < 0 && w->err == 0) {
		w->err = errno;
		what = "close";
	}
	w->fd = -1;
	if (w->err) {
		char msg[256];
		snprintf(msg, sizeof(msg), "%s %s: %s", what, w->qid, strerror(w->err));
		*err = xstrdup(msg);
		/* not acknowledged: it must not be delivered either */
		unlink(w->committed ? w->qpath : w->tmppath);
		w->committed = false;
		return -1;
	}
	return 0;
}

void
spool_abort(struct spool_writer *w)
{
	if (w->fd >= 0) {
		close(w->fd);
		w->fd = -1;
	}
	if (!w->committed)
		unlink(w->tmppath);
}

void
spool_writer_free(struct spool_writer *w)
{
	if (w == NULL)
		return;
	if (w->fd >= 0)
		spool_abort(w);
	buf_free(&w->wbuf);
	free(w->hdrs);
	free(w);
}

void
spool_set_headers(struct spool_writer *w, const char *hdrs, size_t len)
{
	free(w->hdrs);
	w->hdrs = NULL;
	w->hdrslen = 0;
	if (len == 0 || len > ADD_HEADERS_MAX)
		return;
	w->hdrs = xstrndup(hdrs, len);
	w->hdrslen = len;
}

int
spool_inject(struct envelope *e, const char *msg, size_t len, char **err)
{
	struct spool_writer *w;
	int r;

	spool_new_qid(e->qid);
	if (e->arrival == 0)
		e->arrival = time(NULL);
	if ((w = spool_begin(e, NULL, err)) == NULL)
		return -1;
	spool_write(w, msg, len);
	r = spool_commit(w, err);
	spool_writer_free(w);
	return r;
}

void
spool_queue_path(const char *qid, char *out, size_t outsz)
{
	snprintf(out, outsz, "%s/%s", dir_queue, qid);
}

static int
env_error(char **err, const char *what)
{
	*err = xstrdup(what);
	return -1;
}

int
spool_read_envelope_fd(int fd, struct envelope *e, char **err)
{
	struct buf b = BUF_INIT;
	char chunk[16384];
	char *end = NULL;
	ssize_t n;
	struct stat st;
	off_t off = 0;

	memset(e, 0, sizeof(*e));
	while (end == NULL) {
		n = pread(fd, chunk, sizeof(chunk), off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			buf_free(&b);
			return env_error(err, strerror(errno));
		}
		if (n == 0)
			break;
		size_t old = b.len;
		buf_add(&b, chunk, (size_t)n);
		off += n;
		/* look for "\n\n" from just before the new data */
		char *from = b.data + (old ? old - 1 : 0);
		end = memmem(from, b.len - (size_t)(from - b.data), "\n\n", 2);
		if (end == NULL && b.len > ENVELOPE_MAX) {
			buf_free(&b);
			return env_error(err, "envelope larger than 4 MiB");
		}
	}
	if (end == NULL || b.len < sizeof(SPOOL_MAGIC) - 1 ||
	    memcmp(b.data, SPOOL_MAGIC, sizeof(SPOOL_MAGIC) - 1) != 0) {
		buf_free(&b);
		return env_error(err, "not a moat queue file (bad header)");
	}
	e->data_off = (off_t)(end - b.data) + 2;
	*end = '\0';
	char *line = b.data + sizeof(SPOOL_MAGIC) - 1;
	bool have_sender = false;
	while (line && *line) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		char *sp = strchr(line, ' ');
		const char *v = sp ? sp + 1 : "";
		if (sp)
			*sp = '\0';
		if (!strcmp(line, "qid"))
			moat_strlcpy(e->qid, v, sizeof(e->qid));
		else if (!strcmp(line, "arrival"))
			e->arrival = (time_t)strtoll(v, NULL, 10);
		else if (!strcmp(line, "sender")) {
			free(e->sender);
			e->sender = xstrdup(v);
			have_sender = true;
		} else if (!strcmp(line, "envid")) {
			free(e->envid);
			e->envid = xstrdup(v);
		} else if (!strcmp(line, "ret"))
			e->ret = !strcmp(v, "hdrs") ? DSN_RET_HDRS : DSN_RET_FULL;
		else if (!strcmp(line, "body"))
			e->body = !strcmp(v, "8bitmime") ? BODY_8BITMIME :
			    !strcmp(v, "binarymime") ? BODY_BINARYMIME : BODY_7BIT;
		else if (!strcmp(line, "smtputf8"))
			e->smtputf8 = v[0] == '1';
		else if (!strcmp(line, "client")) {
			free(e->client_addr);
			e->client_addr = xstrdup(v);
		} else if (!strcmp(line, "client-name")) {
			free(e->client_name);
			e->client_name = xstrdup(v);
		} else if (!strcmp(line, "helo")) {
			free(e->helo);
			e->helo = xstrdup(v);
		} else if (!strcmp(line, "proto")) {
			free(e->proto);
			e->proto = xstrdup(v);
		} else if (!strcmp(line, "rcpt")) {
			/* NOTIFY ORCPT ADDRESS */
			char *p1 = strchr(v, ' ');
			char *p2 = p1 ? strchr(p1 + 1, ' ') : NULL;
			if (p2 == NULL || p2[1] == '\0') {
				buf_free(&b);
				envelope_clear(e);
				return env_error(err, "bad rcpt line in envelope");
			}
			*p1 = *p2 = '\0';
			unsigned notify = (unsigned)strtoul(v, NULL, 10);
			envelope_add_rcpt(e, p2 + 1, strcmp(p1 + 1, "-") ? p1 + 1 : NULL, notify);
		}
		/* unknown keys are ignored: newer versions may add some */
		line = nl ? nl + 1 : NULL;
	}
	buf_free(&b);
	if (!have_sender || e->nrcpts == 0 || !spool_valid_qid(e->qid)) {
		envelope_clear(e);
		return env_error(err, "incomplete envelope (sender, rcpt or qid missing)");
	}
	if (fstat(fd, &st) < 0) {
		envelope_clear(e);
		return env_error(err, strerror(errno));
	}
	char want[64], got[TRAILER_LEN + 1];
	snprintf(want, sizeof(want), "\nMOAT-END %s ", e->qid);
	size_t hl = 0;
	off_t tail = st.st_size - TRAILER_LEN;
	if (tail < e->data_off || pread(fd, got, TRAILER_LEN, tail) != TRAILER_LEN ||
	    memcmp(got, want, strlen(want)) != 0 || got[TRAILER_LEN - 1] != '\n') {
		envelope_clear(e);
		return env_error(err, "incomplete queue file (no end marker): never acknowledged");
	}
	got[TRAILER_LEN - 1] = '\0';
	for (const char *h = got + strlen(want); *h; h++) {
		int v = (*h >= '0' && *h <= '9') ? *h - '0' : (*h >= 'a' && *h <= 'f') ? *h - 'a' + 10 : -1;
		if (v < 0) {
			envelope_clear(e);
			return env_error(err, "bad end marker");
		}
		hl = hl * 16 + (size_t)v;
	}
	if (hl > ADD_HEADERS_MAX || (off_t)hl > tail - e->data_off) {
		envelope_clear(e);
		return env_error(err, "bad added-headers length in the end marker");
	}
	e->data_len = tail - (off_t)hl - e->data_off;
	if (hl) {
		e->add_headers = xmalloc(hl + 1);
		if (pread(fd, e->add_headers, hl, tail - (off_t)hl) != (ssize_t)hl) {
			envelope_clear(e);
			return env_error(err, "cannot read the added headers");
		}
		e->add_headers[hl] = '\0';
		e->add_headers_len = hl;
	}
	return 0;
}

int
spool_read_envelope(const char *qid, struct envelope *e, char **err)
{
	char path[PATH_MAX];
	int fd, r;

	if (!spool_valid_qid(qid))
		return env_error(err, "not a queue id");
	spool_queue_path(qid, path, sizeof(path));
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return env_error(err, strerror(errno));
	r = spool_read_envelope_fd(fd, e, err);
	close(fd);
	return r;
}

int
spool_list(void (*cb)(const char *, void *), void *arg)
{
	DIR *d = opendir(dir_queue);
	struct dirent *de;
	int n = 0;

	if (d == NULL)
		return -1;
	while ((de = readdir(d)) != NULL) {
		if (!spool_valid_qid(de->d_name))
			continue;
		cb(de->d_name, arg);
		n++;
	}
	closedir(d);
	return n;
}

int
spool_remove(const char *qid)
{
	char path[PATH_MAX];

	if (!spool_valid_qid(qid)) {
		errno = EINVAL;
		return -1;
	}
	spool_queue_path(qid, path, sizeof(path));
	/* no directory fsync: a file that comes back after a crash means a
	 * duplicate delivery, never a loss, and an fsync here would double
	 * the journal commits per message */
	return unlink(path);
}

int
spool_recover(void)
{
	DIR *d = opendir(dir_queue);
	struct dirent *de;
	int n = 0;

	if (d == NULL)
		return 0;
	while ((de = readdir(d)) != NULL) {
		struct envelope e;
		char *err = NULL;
		if (!spool_valid_qid(de->d_name))
			continue;
		if (spool_read_envelope(de->d_name, &e, &err) == 0) {
			envelope_clear(&e);
			continue;
		}
		char from[PATH_MAX], to[PATH_MAX];
		snprintf(from, sizeof(from), "%s/%s", dir_queue, de->d_name);
		snprintf(to, sizeof(to), "%s/%s", dir_corrupt, de->d_name);
		if (rename(from, to) == 0) {
			log_warnx("qid=%s event=spool-corrupt moved-to=%s error=\"%s\"", de->d_name, to,
			    esc(err));
			n++;
		}
		free(err);
	}
	closedir(d);
	return n;
}
