/*
 * av.c - antivirus scanning: libclamav in-process, or clamd over INSTREAM.
 *
 * libclamav: cl_init() once per process, then one compiled engine per
 * database state.  The engine in use sits behind a mutex-protected pointer
 * with a reference count: a scan takes a reference, scans without the lock,
 * and drops it; the last reference frees the engine.  A reload (the database
 * directory changed, or forced) builds and compiles a new engine in a
 * background thread and swaps the pointer; scans in flight finish on the
 * old engine, new scans get the new one, and a database that fails to load
 * or compile keeps the old engine in service.  The message is scanned from
 * memory (cl_fmap_open_memory) with every parser on (mail, archives, PE,
 * PDF, OLE2, ...) and the limits of struct av_conf set on the engine.
 *
 * clamd: one connection per scan, "zINSTREAM\0", then chunks each prefixed
 * with its length as a 4-byte big-endian integer, then a zero length; the
 * reply is "stream: OK", "stream: NAME FOUND" or "... ERROR", NUL-ended.
 * Connect, send and receive share one deadline (clamd_timeout_ms).
 *
 * Runs in: pool threads and the CLI (BLOCKING).  Untrusted input: the
 * message (handed to libclamav or clamd as is) and clamd's reply (read into
 * a bounded buffer).
 */
#include "config.h"
#include "av.h"
#include "util.h"
#include "log.h"

#include <clamav.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#define AV_REPLY_MAX    1024            /* bytes of a clamd reply */

struct av_engine {
	struct cl_engine *cl;
	unsigned          refs;         /* under av.mu */
	unsigned          sigs;
	time_t            built;
	unsigned long long stamp;       /* av_db_stamp() of the files it was built from */
};

struct av {
	struct av_conf    conf;         /* strings below are ours */
	char             *database, *tmpdir, *clamd;

	pthread_mutex_t   mu;           /* cur, refs, stats, reload state */
	pthread_mutex_t   reload_mu;    /* one joiner of the builder at a time */
	struct av_engine *cur;
	unsigned          generation;
	unsigned long long scans, infected, errors, reloads, reload_failures;

	bool              reloading;    /* a builder thread exists (join it) */
	bool              built;        /* ... and it has finished */
	pthread_t         builder;
	char             *reload_err;   /* of the last build, for av_reload_wait */
	time_t            last_look;
	unsigned long long failed_stamp; /* database state that did not build */
};

static pthread_once_t av_once = PTHREAD_ONCE_INIT;
static cl_error_t av_init_rc = CL_SUCCESS;

/* libclamav's messages go to our log, not to stderr */
static void
av_cl_msg(enum cl_msg severity, const char *fullmsg, const char *msg, void *ctx)
{
	size_t l = strlen(msg);

	while (l > 0 && (msg[l - 1] == '\n' || msg[l - 1] == '\r'))
		l--;
	if (severity == CL_MSG_ERROR)
		log_warnx("av: libclamav: %.*s", (int)l, msg);
	else if (severity == CL_MSG_WARN)
		log_info("av: libclamav: %.*s", (int)l, msg);
	else
		log_debug("av: libclamav: %.*s", (int)l, msg);
}

static void
av_cl_init(void)
{
	cl_set_clcb_msg(av_cl_msg);
	av_init_rc = cl_init(CL_INIT_DEFAULT);
}

static char *
av_errf(const char *fmt, ...)
{
	char b[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(b, sizeof(b), fmt, ap);
	va_end(ap);
	return xstrdup(b);
}

static void
set_err(char **err, char *msg)
{
	if (err) {
		free(*err);
		*err = msg;
	} else
		free(msg);
}

const char *
av_result_name(enum av_result r)
{
	switch (r) {
	case AV_CLEAN:    return "CLEAN";
	case AV_INFECTED: return "INFECTED";
	default:          return "ERROR";
	}
}

/*
 * A fingerprint of the database: names, sizes and mtimes of its files (or
 * of the one file).  Also gives the newest mtime for av_stats().  0 if the
 * path cannot be read.
 */
static unsigned long long
av_db_stamp(const char *path, time_t *newest)
{
	unsigned long long h = 1469598103934665603ull;
	struct stat st;
	struct dirent *de;
	DIR *d;

	*newest = 0;
#define MIX(v) do { h ^= (unsigned long long)(v); h *= 1099511628211ull; } while (0)
	if (stat(path, &st) < 0)
		return 0;
	if (!S_ISDIR(st.st_mode)) {
		MIX(st.st_size); MIX(st.st_mtim.tv_sec); MIX(st.st_mtim.tv_nsec); MIX(st.st_ino);
		*newest = st.st_mtim.tv_sec;
		return h ? h : 1;
	}
	if ((d = opendir(path)) == NULL)
		return 0;
	while ((de = readdir(d)) != NULL) {
		char p[4096];
		int n;

		if (de->d_name[0] == '.')
			continue;
		n = snprintf(p, sizeof(p), "%s/%s", path, de->d_name);
		if (n < 0 || (size_t)n >= sizeof(p) || stat(p, &st) < 0 || !S_ISREG(st.st_mode))
			continue;
		/* order-independent: readdir order may change without a change */
		{
			unsigned long long e = 1469598103934665603ull;
			for (const char *c = de->d_name; *c; c++) {
				e ^= (unsigned char)*c;
				e *= 1099511628211ull;
			}
			e ^= (unsigned long long)st.st_size * 31 + (unsigned long long)st.st_mtim.tv_sec * 1000003ull +
			    (unsigned long long)st.st_mtim.tv_nsec + (unsigned long long)st.st_ino * 7;
			e *= 1099511628211ull;
			h += e;
		}
		if (st.st_mtim.tv_sec > *newest)
			*newest = st.st_mtim.tv_sec;
	}
	closedir(d);
#undef MIX
	return h ? h : 1;
}

/* the name of the first detection of a scan; libclamav's virname
 * return leaves heuristic alerts (limits exceeded) unnamed */
struct av_found {
	char  *name;
	size_t size;
	bool   set;
};

static void
av_virus_found(int fd, const char *virname, void *context)
{
	struct av_found *f = context;

	(void)fd;
	if (f && !f->set && virname && f->size) {
		moat_strlcpy(f->name, virname, f->size);
		f->set = true;
	}
}

/* build and compile an engine from conf; NULL with *err */
static struct av_engine *
av_engine_build(const struct av *av, unsigned long long *stampp, char **err)
{
	const struct av_conf *c = &av->conf;
	struct av_engine *e;
	struct cl_engine *cl;
	unsigned sigs = 0;
	time_t newest;
	unsigned long long stamp;
	cl_error_t rc;

	*stampp = stamp = av_db_stamp(av->database, &newest);
	if (stamp == 0) {
		*err = av_errf("signature database %s: %s", av->database, strerror(errno));
		return NULL;
	}
	if ((cl = cl_engine_new()) == NULL) {
		*err = av_errf("cl_engine_new failed");
		return NULL;
	}
	cl_engine_set_num(cl, CL_ENGINE_MAX_SCANSIZE, (long long)c->max_scansize);
	cl_engine_set_num(cl, CL_ENGINE_MAX_FILESIZE, (long long)c->max_filesize);
	cl_engine_set_num(cl, CL_ENGINE_MAX_FILES, c->max_files);
	cl_engine_set_num(cl, CL_ENGINE_MAX_RECURSION, c->max_recursion);
	cl_engine_set_num(cl, CL_ENGINE_MAX_SCANTIME, c->max_scantime_ms);
	if (av->tmpdir)
		cl_engine_set_str(cl, CL_ENGINE_TMPDIR, av->tmpdir);
	cl_engine_set_clcb_virus_found(cl, av_virus_found);
	rc = cl_load(av->database, cl, &sigs, CL_DB_STDOPT);
	if (rc != CL_SUCCESS) {
		*err = av_errf("signature database %s: %s", av->database, cl_strerror(rc));
		cl_engine_free(cl);
		return NULL;
	}
	if (sigs == 0) {
		*err = av_errf("signature database %s: no signatures", av->database);
		cl_engine_free(cl);
		return NULL;
	}
	if ((rc = cl_engine_compile(cl)) != CL_SUCCESS) {
		*err = av_errf("signature database %s: compile: %s", av->database, cl_strerror(rc));
		cl_engine_free(cl);
		return NULL;
	}
	e = xcalloc(1, sizeof(*e));
	e->cl = cl;
	e->refs = 1;                    /* the av's own reference */
	e->sigs = sigs;
	e->built = time(NULL);
	e->stamp = stamp;
	return e;
}

static struct av_engine *
av_engine_get(struct av *av)
{
	struct av_engine *e;

	pthread_mutex_lock(&av->mu);
	if ((e = av->cur) != NULL)
		e->refs++;
	pthread_mutex_unlock(&av->mu);
	return e;
}

static void
av_engine_put(struct av *av, struct av_engine *e)
{
	bool last;

	if (e == NULL)
		return;
	pthread_mutex_lock(&av->mu);
	last = --e->refs == 0;
	pthread_mutex_unlock(&av->mu);
	if (last) {
		cl_engine_free(e->cl);
		free(e);
	}
}

/* swap e in; the old engine goes when its last scan drops it */
static void
av_engine_swap(struct av *av, struct av_engine *e)
{
	struct av_engine *old;

	pthread_mutex_lock(&av->mu);
	old = av->cur;
	av->cur = e;
	av->generation++;
	pthread_mutex_unlock(&av->mu);
	av_engine_put(av, old);
}

static void *
av_builder(void *arg)
{
	struct av *av = arg;
	struct av_engine *e;
	unsigned long long stamp = 0;
	char *err = NULL;

	e = av_engine_build(av, &stamp, &err);
	if (e) {
		av_engine_swap(av, e);
		log_info("av: signature database %s reloaded: %u signatures", av->database, e->sigs);
	} else
		log_warnx("av: reload failed, keeping the engine in use: %s", err);
	pthread_mutex_lock(&av->mu);
	if (e)
		av->reloads++;
	else {
		av->reload_failures++;
		av->failed_stamp = stamp;       /* not retried until it changes again */
	}
	free(av->reload_err);
	av->reload_err = err;
	av->built = true;
	pthread_mutex_unlock(&av->mu);
	return NULL;
}

static char *
xstrdup_or_null(const char *s)
{
	return s ? xstrdup(s) : NULL;
}

struct av *
av_open(const struct av_conf *conf, char **err)
{
	struct av *av;
	unsigned long long stamp = 0;
	char *e = NULL;

	if (err)
		*err = NULL;
	if (conf->backend == AV_BACKEND_CLAMD) {
		if (conf->clamd == NULL || *conf->clamd == '\0') {
			set_err(err, av_errf("clamd: no socket address"));
			return NULL;
		}
	} else if (conf->database == NULL || *conf->database == '\0') {
		set_err(err, av_errf("antivirus: no signature database"));
		return NULL;
	}
	av = xcalloc(1, sizeof(*av));
	av->conf = *conf;
	av->database = xstrdup_or_null(conf->database);
	av->tmpdir = xstrdup_or_null(conf->tmpdir);
	av->clamd = xstrdup_or_null(conf->clamd);
	av->conf.database = av->database;
	av->conf.tmpdir = av->tmpdir;
	av->conf.clamd = av->clamd;
	if (av->conf.clamd_chunk == 0 || av->conf.clamd_chunk > 16u * 1024 * 1024)
		av->conf.clamd_chunk = 64 * 1024;
	pthread_mutex_init(&av->mu, NULL);
	pthread_mutex_init(&av->reload_mu, NULL);
	if (conf->backend == AV_BACKEND_CLAMD)
		return av;

	pthread_once(&av_once, av_cl_init);
	if (av_init_rc != CL_SUCCESS) {
		set_err(err, av_errf("cl_init: %s", cl_strerror(av_init_rc)));
		av_close(&av);
		return NULL;
	}
	av->last_look = time(NULL);
	if ((av->cur = av_engine_build(av, &stamp, &e)) != NULL) {
		av->generation = 1;
		return av;
	}
	if (conf->require_db) {
		set_err(err, e);
		av_close(&av);
		return NULL;
	}
	av->failed_stamp = stamp;
	set_err(err, e);                /* a warning: scans give AV_ERROR */
	return av;
}

static int av_reload_check_locked(struct av *, bool, time_t);

int
av_reload_check(struct av *av, bool force)
{
	time_t now = time(NULL);
	int rc;

	if (av->conf.backend != AV_BACKEND_LIBCLAMAV)
		return 0;
	if (pthread_mutex_trylock(&av->reload_mu) != 0)
		return 0;               /* someone waits for the builder */
	rc = av_reload_check_locked(av, force, now);
	pthread_mutex_unlock(&av->reload_mu);
	return rc;
}

static int
av_reload_check_locked(struct av *av, bool force, time_t now)
{
	time_t newest;
	unsigned long long stamp;
	int rc;

	pthread_mutex_lock(&av->mu);
	if (av->reloading && av->built) {
		/* a finished builder is joined here; a running one is left alone */
		pthread_join(av->builder, NULL);
		av->reloading = false;
	}
	if (av->reloading) {
		pthread_mutex_unlock(&av->mu);
		return 0;
	}
	if (!force && av->conf.reload_interval && now - av->last_look < (time_t)av->conf.reload_interval) {
		pthread_mutex_unlock(&av->mu);
		return 0;
	}
	av->last_look = now;
	pthread_mutex_unlock(&av->mu);

	if (!force) {
		stamp = av_db_stamp(av->database, &newest);
		pthread_mutex_lock(&av->mu);
		rc = stamp != 0 && stamp != av->failed_stamp &&
		    (av->cur == NULL || av->cur->stamp != stamp);
		pthread_mutex_unlock(&av->mu);
		if (!rc)
			return 0;
	}
	pthread_mutex_lock(&av->mu);
	if (av->reloading) {
		pthread_mutex_unlock(&av->mu);
		return 0;
	}
	if ((rc = pthread_create(&av->builder, NULL, av_builder, av)) != 0) {
		pthread_mutex_unlock(&av->mu);
		errno = rc;
		return -1;
	}
	av->reloading = true;
	av->built = false;
	pthread_mutex_unlock(&av->mu);
	return 1;
}

int
av_reload_wait(struct av *av, char **err)
{
	pthread_t t;
	bool running;
	char *e;

	if (err)
		*err = NULL;
	pthread_mutex_lock(&av->reload_mu);
	pthread_mutex_lock(&av->mu);
	running = av->reloading;
	t = av->builder;
	pthread_mutex_unlock(&av->mu);
	if (running)
		pthread_join(t, NULL);
	pthread_mutex_lock(&av->mu);
	av->reloading = false;
	e = running ? av->reload_err : NULL;
	if (running)
		av->reload_err = NULL;
	pthread_mutex_unlock(&av->mu);
	pthread_mutex_unlock(&av->reload_mu);
	if (e == NULL)
		return 0;
	set_err(err, e);
	return -1;
}

void
av_stats(struct av *av, struct av_stats *s)
{
	time_t newest;

	memset(s, 0, sizeof(*s));
	s->db_age = -1;
	pthread_mutex_lock(&av->mu);
	if (av->cur) {
		s->signatures = av->cur->sigs;
		s->loaded_at = av->cur->built;
	}
	s->generation = av->generation;
	s->scans = av->scans;
	s->infected = av->infected;
	s->errors = av->errors;
	s->reloads = av->reloads;
	s->reload_failures = av->reload_failures;
	pthread_mutex_unlock(&av->mu);
	if (av->conf.backend == AV_BACKEND_LIBCLAMAV && av_db_stamp(av->database, &newest) && newest)
		s->db_age = (long long)(time(NULL) - newest);
}

void
av_close(struct av **avp)
{
	struct av *av = *avp;

	if (av == NULL)
		return;
	av_reload_wait(av, NULL);
	if (av->cur) {
		av_engine_put(av, av->cur);
		av->cur = NULL;
	}
	free(av->reload_err);
	pthread_mutex_destroy(&av->mu);
	pthread_mutex_destroy(&av->reload_mu);
	free(av->database);
	free(av->tmpdir);
	free(av->clamd);
	free(av);
	*avp = NULL;
}

/* ---- libclamav ---- */

static enum av_result
av_scan_libclamav(struct av *av, const char *data, size_t len,
    char *virname, size_t vsz, char **err)
{
	struct cl_scan_options opt;
	struct av_found found = { .name = virname, .size = vsz };
	struct av_engine *e;
	const char *vn = NULL;
	unsigned long scanned = 0;
	cl_fmap_t *map;
	cl_error_t rc;

	if ((e = av_engine_get(av)) == NULL) {
		set_err(err, av_errf("no signature database loaded (%s)", av->database));
		return AV_ERROR;
	}
	/* an empty message: fmap refuses length 0, and nothing is in it */
	if (len == 0) {
		av_engine_put(av, e);
		return AV_CLEAN;
	}
	memset(&opt, 0, sizeof(opt));
	opt.general = av->conf.heuristics ? CL_SCAN_GENERAL_HEURISTICS : 0;
	opt.parse = ~0u;                /* archives, mail, PE, ELF, PDF, OLE2, HTML, ... */
	if (av->conf.alert_exceeds_max) {
		opt.general |= CL_SCAN_GENERAL_HEURISTICS;
		opt.heuristic |= CL_SCAN_HEURISTIC_EXCEEDS_MAX;
	}
	if ((map = cl_fmap_open_memory(data, len)) == NULL) {
		av_engine_put(av, e);
		set_err(err, av_errf("cl_fmap_open_memory failed"));
		return AV_ERROR;
	}
	rc = cl_scanmap_callback(map, NULL, &vn, &scanned, e->cl, &opt, &found);
	cl_fmap_close(map);
	if (rc == CL_VIRUS && !found.set && vsz)
		moat_strlcpy(virname, vn ? vn : "unknown", vsz);
	else if (rc != CL_VIRUS && vsz)
		virname[0] = '\0';
	av_engine_put(av, e);
	if (rc == CL_VIRUS)
		return AV_INFECTED;
	if (rc == CL_CLEAN)
		return AV_CLEAN;
	set_err(err, av_errf("libclamav: %s", cl_strerror(rc)));
	return AV_ERROR;
}

/* ---- clamd ---- */

static int
ms_left(uint64_t deadline)
{
	uint64_t now = now_ms();

	return now >= deadline ? 0 : (int)(deadline - now > 0x7fffffff ? 0x7fffffff : deadline - now);
}

static int
wait_fd(int fd, short ev, uint64_t deadline)
{
	struct pollfd p = { .fd = fd, .events = ev };
	int n;

	for (;;) {
		int left = ms_left(deadline);
		if (left == 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		n = poll(&p, 1, left);
		if (n > 0)
			return 0;
		if (n == 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		if (errno != EINTR)
			return -1;
	}
}

static int
connect_wait(int fd, const struct sockaddr *sa, socklen_t sl, uint64_t deadline)
{
	int soerr = 0;
	socklen_t el = sizeof(soerr);

	if (connect(fd, sa, sl) == 0)
		return 0;
	if (errno != EINPROGRESS && errno != EAGAIN)
		return -1;
	if (wait_fd(fd, POLLOUT, deadline) < 0)
		return -1;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &el) < 0)
		return -1;
	if (soerr) {
		errno = soerr;
		return -1;
	}
	return 0;
}

/* a non-blocking socket connected to clamd, or -1 with *err */
static int
clamd_connect(const char *addr, uint64_t deadline, char **err)
{
	const char *path = NULL;
	int fd;

	if (addr[0] == '/')
		path = addr;
	else if (strncmp(addr, "unix:", 5) == 0)
		path = addr + 5;
	if (path) {
		struct sockaddr_un sun;

		memset(&sun, 0, sizeof(sun));
		sun.sun_family = AF_UNIX;
		if (strlen(path) >= sizeof(sun.sun_path)) {
			set_err(err, av_errf("clamd %s: socket path too long", addr));
			return -1;
		}
		memcpy(sun.sun_path, path, strlen(path) + 1);
		if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) {
			set_err(err, av_errf("clamd %s: socket: %s", addr, strerror(errno)));
			return -1;
		}
		if (connect_wait(fd, (struct sockaddr *)&sun, sizeof(sun), deadline) < 0) {
			set_err(err, av_errf("clamd %s: connect: %s", addr, strerror(errno)));
			close(fd);
			return -1;
		}
		return fd;
	}

	/* host:port or [v6]:port */
	char host[256];
	const char *port, *colon;
	struct addrinfo hints, *res, *ai;
	int rc, saved = 0;

	if (addr[0] == '[') {
		const char *rb = strchr(addr, ']');
		if (rb == NULL || rb[1] != ':' || (size_t)(rb - addr - 1) >= sizeof(host)) {
			set_err(err, av_errf("clamd %s: expected [ADDRESS]:PORT", addr));
			return -1;
		}
		memcpy(host, addr + 1, (size_t)(rb - addr - 1));
		host[rb - addr - 1] = '\0';
		port = rb + 2;
	} else {
		if ((colon = strrchr(addr, ':')) == NULL || (size_t)(colon - addr) >= sizeof(host)) {
			set_err(err, av_errf("clamd %s: expected /PATH or HOST:PORT", addr));
			return -1;
		}
		memcpy(host, addr, (size_t)(colon - addr));
		host[colon - addr] = '\0';
		port = colon + 1;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	if ((rc = getaddrinfo(host, port, &hints, &res)) != 0) {
		set_err(err, av_errf("clamd %s: %s", addr, gai_strerror(rc)));
		return -1;
	}
	fd = -1;
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			saved = errno;
			continue;
		}
		if (connect_wait(fd, ai->ai_addr, ai->ai_addrlen, deadline) == 0)
			break;
		saved = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		set_err(err, av_errf("clamd %s: connect: %s", addr, strerror(saved)));
	return fd;
}

static int
send_all(int fd, const void *p, size_t len, uint64_t deadline)
{
	const char *c = p;

	while (len > 0) {
		ssize_t n = send(fd, c, len, MSG_NOSIGNAL);
		if (n > 0) {
			c += n;
			len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (wait_fd(fd, POLLOUT, deadline) < 0)
				return -1;
			continue;
		}
		return -1;
	}
	return 0;
}

/* read until NUL, EOF or the bound; returns the length or -1 */
static ssize_t
recv_reply(int fd, char *buf, size_t size, uint64_t deadline)
{
	size_t have = 0;

	while (have + 1 < size) {
		ssize_t n = recv(fd, buf + have, size - 1 - have, 0);
		if (n > 0) {
			if (memchr(buf + have, '\0', (size_t)n)) {
				have += (size_t)n;
				break;
			}
			have += (size_t)n;
			continue;
		}
		if (n == 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			if (wait_fd(fd, POLLIN, deadline) < 0)
				return -1;
			continue;
		}
		return -1;
	}
	buf[have] = '\0';
	return (ssize_t)strlen(buf);
}

/* parse "stream: OK" / "stream: NAME FOUND" / "... ERROR" */
static enum av_result
clamd_verdict(const char *addr, char *r, size_t rl, char *virname, size_t vsz, char **err)
{
	char *p;

	while (rl > 0 && (r[rl - 1] == '\n' || r[rl - 1] == '\r' || r[rl - 1] == ' '))
		r[--rl] = '\0';
	p = r;
	if (strncmp(p, "stream: ", 8) == 0)
		p += 8;
	else if (strncmp(p, "stream(", 7) == 0 && (p = strstr(r, "): ")) != NULL)
		p += 3;
	else
		p = r;
	if (strcmp(p, "OK") == 0)
		return AV_CLEAN;
	rl = strlen(p);
	if (rl > 6 && strcmp(p + rl - 6, " FOUND") == 0) {
		size_t nl = rl - 6;
		if (vsz == 0)
			return AV_INFECTED;
		if (nl >= vsz)
			nl = vsz - 1;
		memcpy(virname, p, nl);
		virname[nl] = '\0';
		return AV_INFECTED;
	}
	set_err(err, av_errf("clamd %s: %s", addr, rl ? p : "no reply"));
	return AV_ERROR;
}

static enum av_result
av_scan_clamd(struct av *av, const char *data, size_t len,
    char *virname, size_t vsz, char **err)
{
	uint64_t deadline = now_ms() + (av->conf.clamd_timeout_ms ? av->conf.clamd_timeout_ms : 30000);
	char reply[AV_REPLY_MAX];
	size_t off = 0, chunk = av->conf.clamd_chunk;
	uint32_t nl;
	ssize_t rl;
	int fd;

	if ((fd = clamd_connect(av->clamd, deadline, err)) < 0)
		return AV_ERROR;
	if (send_all(fd, "zINSTREAM", 10, deadline) < 0)
		goto ioerr;
	while (off < len) {
		size_t n = len - off < chunk ? len - off : chunk;
		nl = htonl((uint32_t)n);
		if (send_all(fd, &nl, 4, deadline) < 0 || send_all(fd, data + off, n, deadline) < 0) {
			/* clamd closes early when the stream exceeds StreamMaxLength:
			 * its reply says so */
			if (errno == EPIPE || errno == ECONNRESET) {
				rl = recv_reply(fd, reply, sizeof(reply), deadline);
				if (rl > 0) {
					close(fd);
					return clamd_verdict(av->clamd, reply, (size_t)rl, virname, vsz, err);
				}
			}
			goto ioerr;
		}
		off += n;
	}
	nl = 0;
	if (send_all(fd, &nl, 4, deadline) < 0)
		goto ioerr;
	if ((rl = recv_reply(fd, reply, sizeof(reply), deadline)) < 0)
		goto ioerr;
	close(fd);
	return clamd_verdict(av->clamd, reply, (size_t)rl, virname, vsz, err);
ioerr:
	set_err(err, av_errf("clamd %s: %s", av->clamd,
	    errno == ETIMEDOUT ? "timed out" : strerror(errno)));
	close(fd);
	return AV_ERROR;
}

enum av_result
av_scan(struct av *av, const char *data, size_t len,
    char *virname, size_t vsz, char **err)
{
	enum av_result r;

	if (vsz)
		virname[0] = '\0';
	if (err)
		*err = NULL;
	if (av == NULL) {
		set_err(err, av_errf("antivirus not configured"));
		return AV_ERROR;
	}
	if (av->conf.backend == AV_BACKEND_CLAMD)
		r = av_scan_clamd(av, data, len, virname, vsz, err);
	else
		r = av_scan_libclamav(av, data, len, virname, vsz, err);
	pthread_mutex_lock(&av->mu);
	av->scans++;
	if (r == AV_INFECTED)
		av->infected++;
	else if (r == AV_ERROR)
		av->errors++;
	pthread_mutex_unlock(&av->mu);
	return r;
}
