/*
 * test_av.c - filters/av.c: libclamav with the custom databases of
 * ../shared/testdata/clamav (every sample detected with its signature
 * family, a corpus message clean), missing and empty databases give
 * AV_ERROR (never clean), reloads swap the engine while 4 threads scan,
 * a broken database keeps the old engine, memory stays flat over 10,000
 * scans, and the clamd backend against a fake clamd (INSTREAM chunks,
 * FOUND/OK/ERROR replies, a server that never answers, a refused connect).
 *
 * Skips (TAP "1..0 # SKIP") when the shared test data is absent.
 */
#include "config.h"
#include "av.h"
#include "util.h"
#include "t.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#if defined(__SANITIZE_ADDRESS__)
/* the RSS check below measures our leaks, not ASan's free quarantine */
const char *__asan_default_options(void);
const char *
__asan_default_options(void)
{
	return "quarantine_size_mb=1";
}
#endif

static char srcdir[2048], tdir[2048], dbdir[2048], samples[2048];

static char *
slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *d;
	long n;

	*len = 0;
	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	d = xmalloc((size_t)n + 1);
	if (fread(d, 1, (size_t)n, f) != (size_t)n)
		n = 0;
	fclose(f);
	d[n] = '\0';
	*len = (size_t)n;
	return d;
}

static int
write_file(const char *path, const char *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	int rc;

	if (f == NULL)
		return -1;
	rc = fwrite(data, 1, len, f) == len ? 0 : -1;
	return fclose(f) == 0 ? rc : -1;
}

static void
copy_file(const char *from, const char *to)
{
	size_t len;
	char *d = slurp(from, &len);

	if (d == NULL || write_file(to, d, len) < 0)
		printf("# copy %s -> %s failed\n", from, to);
	free(d);
}

static bool
starts(const char *s, const char *p)
{
	return strncmp(s, p, strlen(p)) == 0;
}

static const char eicar[] =
    "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
static const char clean_msg[] =
    "From: a@example.org\r\nTo: b@example.net\r\nSubject: hello\r\n"
    "Message-ID: <1@example.org>\r\n\r\nNothing to see here.\r\n";

/* ---- libclamav: samples ---- */

static void
test_samples(struct av *av)
{
	DIR *d = opendir(samples);
	struct dirent *de;
	int n = 0;

	while (d && (de = readdir(d)) != NULL) {
		char path[4096], vn[256], *err = NULL, *data;
		const char *want;
		size_t len;
		enum av_result r;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", samples, de->d_name);
		if ((data = slurp(path, &len)) == NULL)
			continue;
		want = strstr(de->d_name, "eicar") ? "Project.Test.EICAR." : "Project.Test.ClamExe.";
		r = av_scan(av, data, len, vn, sizeof(vn), &err);
		ok(r == AV_INFECTED && starts(vn, want) && strstr(vn, ".UNOFFICIAL"),
		    "sample %s: %s %s (%s)", de->d_name, av_result_name(r), vn, err ? err : "");
		free(err);
		free(data);
		n++;
	}
	if (d)
		closedir(d);
	ok(n >= 9, "%d samples scanned", n);
}

static void
test_clean(struct av *av)
{
	char path[4096], vn[256], *err = NULL, *data;
	size_t len;
	enum av_result r;

	snprintf(path, sizeof(path), "%s/tests/corpus/multipart.eml", srcdir);
	data = slurp(path, &len);
	ok(data != NULL, "corpus message read");
	r = av_scan(av, data ? data : "", len, vn, sizeof(vn), &err);
	ok(r == AV_CLEAN && vn[0] == '\0', "corpus multipart.eml is clean (%s)", av_result_name(r));
	free(err);
	free(data);
	r = av_scan(av, clean_msg, strlen(clean_msg), vn, sizeof(vn), &err);
	is_int(r, AV_CLEAN, "small message is clean");
	free(err);
	r = av_scan(av, "", 0, vn, sizeof(vn), &err);
	is_int(r, AV_CLEAN, "empty message is clean");
	free(err);
	/* a virus name longer than the buffer is cut, not overflowed */
	r = av_scan(av, eicar, strlen(eicar), vn, 8, &err);
	ok(r == AV_INFECTED && strlen(vn) == 7, "virus name cut to the buffer: %s", vn);
	free(err);
}

/* ---- limits ---- */

static void
test_limits(void)
{
	struct av_conf c = AV_CONF_DEFAULT;
	char path[4096], vn[256], *err = NULL, *data;
	struct av *av;
	size_t len;
	enum av_result r;

	snprintf(path, sizeof(path), "%s/eicar.zip", samples);
	data = slurp(path, &len);
	c.database = dbdir;
	c.max_filesize = 16;            /* eicar.com (68 bytes) is over it */
	av = av_open(&c, NULL);
	r = av_scan(av, data, len, vn, sizeof(vn), &err);
	ok(r == AV_CLEAN, "eicar.zip with max_filesize 16: not looked into (%s %s)", av_result_name(r), vn);
	free(err);
	err = NULL;
	av_close(&av);
	c.alert_exceeds_max = true;
	av = av_open(&c, NULL);
	r = av_scan(av, data, len, vn, sizeof(vn), &err);
	ok(r == AV_INFECTED && starts(vn, "Heuristics.Limits.Exceeded"),
	    "alert_exceeds_max: %s %s", av_result_name(r), vn);
	free(err);
	av_close(&av);
	free(data);
}

/* ---- missing and empty databases ---- */

static void
test_no_db(void)
{
	struct av_conf c = AV_CONF_DEFAULT;
	struct av *av;
	char vn[128], *err = NULL, empty[4096];
	enum av_result r;

	c.database = "/nonexistent/clamav-db";
	av = av_open(&c, &err);
	ok(av != NULL && err != NULL, "missing database: opens with a warning: %s", err ? err : "");
	free(err);
	err = NULL;
	r = av_scan(av, eicar, strlen(eicar), vn, sizeof(vn), &err);
	ok(r == AV_ERROR && err != NULL, "missing database: eicar gives ERROR (%s)", err ? err : "");
	free(err);
	err = NULL;
	r = av_scan(av, clean_msg, strlen(clean_msg), vn, sizeof(vn), &err);
	ok(r == AV_ERROR, "missing database: a clean message gives ERROR, never CLEAN");
	free(err);
	av_close(&av);
	ok(av == NULL, "av_close NULLs the pointer");

	snprintf(empty, sizeof(empty), "%s/empty", tdir);
	mkdir(empty, 0700);
	c.database = empty;
	err = NULL;
	av = av_open(&c, &err);
	ok(av != NULL && err != NULL, "empty database: %s", err ? err : "");
	free(err);
	err = NULL;
	r = av_scan(av, clean_msg, strlen(clean_msg), vn, sizeof(vn), &err);
	ok(r == AV_ERROR, "empty database: ERROR (%s)", err ? err : "");
	free(err);
	av_close(&av);

	c.require_db = true;
	err = NULL;
	av = av_open(&c, &err);
	ok(av == NULL && err != NULL, "require_db: open fails: %s", err ? err : "");
	free(err);
}

/* ---- reload under load ---- */

struct scanner {
	struct av  *av;
	atomic_int *stop;
	long        scans, wrong;
};

static void *
scanner_main(void *arg)
{
	struct scanner *s = arg;
	char vn[256], *err = NULL;

	while (!atomic_load(s->stop)) {
		enum av_result r = av_scan(s->av, eicar, strlen(eicar), vn, sizeof(vn), &err);
		if (r != AV_INFECTED || !starts(vn, "Project.Test.EICAR."))
			s->wrong++;
		free(err);
		r = av_scan(s->av, clean_msg, strlen(clean_msg), vn, sizeof(vn), &err);
		if (r != AV_CLEAN)
			s->wrong++;
		free(err);
		s->scans += 2;
	}
	return NULL;
}

static void
test_reload(void)
{
	static const char *dbs[] = { "project-test.hdb", "project-test.ndb", "project-test.ldb" };
	static const char extra_sig[] = "Project.Test.Reload:0:*:4d4f41542d52454c4f41442d54455354\n";
	static const char extra_msg[] = "Subject: x\r\n\r\nthis carries MOAT-RELOAD-TEST somewhere\r\n";
	struct av_conf c = AV_CONF_DEFAULT;
	struct av_stats st;
	struct av *av;
	struct scanner sc[4];
	pthread_t th[4];
	atomic_int stop = 0;
	char dir[4096], from[4096], to[4096], vn[256], *err = NULL;
	long total = 0, wrong = 0;
	int i, rc;

	snprintf(dir, sizeof(dir), "%s/db", tdir);
	mkdir(dir, 0700);
	for (i = 0; i < 3; i++) {
		snprintf(from, sizeof(from), "%s/%s", dbdir, dbs[i]);
		snprintf(to, sizeof(to), "%s/%s", dir, dbs[i]);
		copy_file(from, to);
	}
	c.database = dir;
	c.reload_interval = 0;
	av = av_open(&c, &err);
	ok(av != NULL && err == NULL, "reload: engine loaded from a copy");
	free(err);
	err = NULL;
	if (av == NULL)
		return;
	av_stats(av, &st);
	ok(st.signatures >= 6 && st.generation == 1 && st.db_age >= 0 && st.db_age < 60,
	    "stats: %u signatures, generation %u, database age %llds",
	    st.signatures, st.generation, st.db_age);
	is_int(av_reload_check(av, false), 0, "unchanged database: no reload");
	is_int(av_scan(av, extra_msg, strlen(extra_msg), vn, sizeof(vn), NULL), AV_CLEAN,
	    "reload marker not yet detected");

	for (i = 0; i < 4; i++) {
		sc[i] = (struct scanner){ .av = av, .stop = &stop };
		pthread_create(&th[i], NULL, scanner_main, &sc[i]);
	}
	for (i = 0; i < 3; i++) {
		usleep(100 * 1000);
		rc = av_reload_check(av, true);
		ok(rc == 1, "forced reload %d started", i + 1);
		rc = av_reload_wait(av, &err);
		ok(rc == 0, "reload %d done (%s)", i + 1, err ? err : "ok");
		free(err);
		err = NULL;
	}
	/* a changed database is noticed without force and brings a new signature */
	snprintf(to, sizeof(to), "%s/extra.ndb", dir);
	write_file(to, extra_sig, strlen(extra_sig));
	rc = av_reload_check(av, false);
	ok(rc == 1, "changed database noticed");
	rc = av_reload_wait(av, &err);
	ok(rc == 0, "reload with the new signature (%s)", err ? err : "ok");
	free(err);
	err = NULL;
	usleep(100 * 1000);
	atomic_store(&stop, 1);
	for (i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		total += sc[i].scans;
		wrong += sc[i].wrong;
	}
	ok(total > 0 && wrong == 0, "%ld scans in 4 threads across 4 reloads, %ld wrong", total, wrong);
	av_stats(av, &st);
	is_int(st.generation, 5, "5 engines in turn");
	is_int(st.reloads, 4, "4 reloads counted");
	is_int(av_scan(av, extra_msg, strlen(extra_msg), vn, sizeof(vn), NULL), AV_INFECTED,
	    "the new signature is in use: %s", vn);

	/* a broken database keeps the engine in use */
	write_file(to, "this is : not a signature\n", 26);
	ok(av_reload_check(av, false) == 1, "broken database: reload started");
	rc = av_reload_wait(av, &err);
	ok(rc == -1 && err != NULL, "broken database: reload fails: %s", err ? err : "");
	free(err);
	err = NULL;
	av_stats(av, &st);
	ok(st.generation == 5 && st.reload_failures == 1, "old engine kept (generation %u)", st.generation);
	is_int(av_scan(av, eicar, strlen(eicar), vn, sizeof(vn), NULL), AV_INFECTED,
	    "old engine still scans");
	is_int(av_reload_check(av, false), 0, "the same broken database is not rebuilt again");
	unlink(to);
	is_int(av_reload_check(av, false), 1, "fixed database: rebuilt");
	rc = av_reload_wait(av, &err);
	ok(rc == 0, "fixed database: reload done (%s)", err ? err : "ok");
	free(err);
	err = NULL;
	av_close(&av);
}

/* ---- memory ---- */

static long
rss_kb(void)
{
	long pages = 0, rss = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (f == NULL)
		return -1;
	if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
		rss = -1;
	fclose(f);
	return rss < 0 ? -1 : rss * (sysconf(_SC_PAGESIZE) / 1024);
}

static void
test_memory(struct av *av)
{
	char vn[256];
	long before, after;
	int i, bad = 0;

	for (i = 0; i < 1000; i++)
		if (av_scan(av, clean_msg, strlen(clean_msg), vn, sizeof(vn), NULL) != AV_CLEAN)
			bad++;
	before = rss_kb();
	for (i = 0; i < 10000; i++) {
		const char *m = i % 10 ? clean_msg : eicar;
		enum av_result r = av_scan(av, m, strlen(m), vn, sizeof(vn), NULL);
		if (r != (i % 10 ? AV_CLEAN : AV_INFECTED))
			bad++;
	}
	after = rss_kb();
	is_int(bad, 0, "11,000 scans, no wrong result");
	ok(before > 0 && after - before < 4096, "RSS over 10,000 scans: %ld kB -> %ld kB (+%ld kB)",
	    before, after, after - before);
}

/* ---- clamd ---- */

enum fake_mode { FAKE_NORMAL, FAKE_SILENT, FAKE_ERROR };

struct fake {
	int            lfd;
	enum fake_mode mode;
	atomic_int     stop;
	size_t         last_len;        /* bytes of the last stream */
	unsigned       last_chunks;
	bool           last_cmd_ok;
};

static int
read_full(int fd, void *p, size_t len)
{
	char *c = p;

	while (len) {
		ssize_t n = read(fd, c, len);
		if (n <= 0)
			return -1;
		c += n;
		len -= (size_t)n;
	}
	return 0;
}

static void
fake_session(struct fake *f, int fd)
{
	char cmd[10], *data = NULL;
	size_t len = 0;
	unsigned chunks = 0;
	const char *reply;
	uint32_t nl;

	f->last_cmd_ok = read_full(fd, cmd, 10) == 0 && memcmp(cmd, "zINSTREAM", 10) == 0;
	if (!f->last_cmd_ok)
		return;
	for (;;) {
		size_t n;
		if (read_full(fd, &nl, 4) < 0)
			goto out;
		n = ntohl(nl);
		if (n == 0)
			break;
		if (n > 1024 * 1024)
			goto out;
		data = xrealloc(data, len + n + 1);
		if (read_full(fd, data + len, n) < 0)
			goto out;
		len += n;
		chunks++;
	}
	f->last_len = len;
	f->last_chunks = chunks;
	if (f->mode == FAKE_SILENT) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		poll(&p, 1, 5000);      /* until the client gives up */
		goto out;
	}
	if (data)
		data[len] = '\0';
	if (f->mode == FAKE_ERROR)
		reply = "INSTREAM size limit exceeded. ERROR";
	else if (data && memmem(data, len, "EICAR-STANDARD", 14))
		reply = "stream: Eicar-Test-Signature FOUND";
	else
		reply = "stream: OK";
	if (write(fd, reply, strlen(reply) + 1) < 0)
		printf("# fake clamd: write: %s\n", strerror(errno));
out:
	free(data);
}

static void *
fake_main(void *arg)
{
	struct fake *f = arg;

	while (!atomic_load(&f->stop)) {
		struct pollfd p = { .fd = f->lfd, .events = POLLIN };
		int fd;

		if (poll(&p, 1, 50) <= 0)
			continue;
		if ((fd = accept(f->lfd, NULL, NULL)) < 0)
			continue;
		fake_session(f, fd);
		close(fd);
	}
	return NULL;
}

static void
test_clamd(void)
{
	struct av_conf c = AV_CONF_DEFAULT;
	struct sockaddr_un sun;
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);
	struct fake f;
	struct av *av;
	pthread_t th;
	char path[200], addr[300], vn[256], *err = NULL, *big;
	enum av_result r;
	uint64_t t0;
	size_t i;

	memset(&f, 0, sizeof(f));
	snprintf(path, sizeof(path), "%s/clamd.sock", tdir);
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	moat_strlcpy(sun.sun_path, path, sizeof(sun.sun_path));
	f.lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	ok(bind(f.lfd, (struct sockaddr *)&sun, sizeof(sun)) == 0 && listen(f.lfd, 8) == 0,
	    "fake clamd listens on %s", path);
	pthread_create(&th, NULL, fake_main, &f);

	c.backend = AV_BACKEND_CLAMD;
	c.clamd = path;
	c.clamd_chunk = 7;
	c.clamd_timeout_ms = 2000;
	av = av_open(&c, &err);
	ok(av != NULL && err == NULL, "clamd backend opened");
	free(err);
	err = NULL;

	r = av_scan(av, eicar, strlen(eicar), vn, sizeof(vn), &err);
	ok(r == AV_INFECTED && strcmp(vn, "Eicar-Test-Signature") == 0, "clamd: eicar FOUND: %s", vn);
	ok(f.last_cmd_ok && f.last_len == strlen(eicar) && f.last_chunks == (strlen(eicar) + 6) / 7,
	    "clamd: zINSTREAM, %zu bytes in %u chunks of 7", f.last_len, f.last_chunks);
	free(err);
	err = NULL;

	big = xmalloc(200000);
	for (i = 0; i < 200000; i++)
		big[i] = (char)('a' + i % 26);
	av_close(&av);
	c.clamd_chunk = 65536;
	c.clamd = addr;
	snprintf(addr, sizeof(addr), "unix:%s", path);
	av = av_open(&c, NULL);
	r = av_scan(av, big, 200000, vn, sizeof(vn), &err);
	ok(r == AV_CLEAN && f.last_len == 200000 && f.last_chunks == 4,
	    "clamd: 200000 clean bytes in %u chunks: %s", f.last_chunks, av_result_name(r));
	free(err);
	err = NULL;

	f.mode = FAKE_ERROR;
	r = av_scan(av, big, 1000, vn, sizeof(vn), &err);
	ok(r == AV_ERROR && err && strstr(err, "size limit"), "clamd ERROR reply: %s", err ? err : "");
	free(err);
	err = NULL;

	f.mode = FAKE_SILENT;
	av_close(&av);
	c.clamd = path;
	c.clamd_timeout_ms = 300;
	av = av_open(&c, NULL);
	t0 = now_ms();
	r = av_scan(av, eicar, strlen(eicar), vn, sizeof(vn), &err);
	ok(r == AV_ERROR && err && strstr(err, "timed out") && now_ms() - t0 < 2000,
	    "clamd silent: ERROR after %llums: %s", (unsigned long long)(now_ms() - t0), err ? err : "");
	free(err);
	err = NULL;
	av_close(&av);
	atomic_store(&f.stop, 1);
	pthread_join(th, NULL);
	close(f.lfd);
	unlink(path);

	/* TCP, then refused */
	memset(&f, 0, sizeof(f));
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	f.lfd = socket(AF_INET, SOCK_STREAM, 0);
	bind(f.lfd, (struct sockaddr *)&sin, sizeof(sin));
	listen(f.lfd, 8);
	getsockname(f.lfd, (struct sockaddr *)&sin, &sl);
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(sin.sin_port));
	pthread_create(&th, NULL, fake_main, &f);
	c.clamd = addr;
	c.clamd_timeout_ms = 2000;
	av = av_open(&c, NULL);
	r = av_scan(av, eicar, strlen(eicar), vn, sizeof(vn), &err);
	ok(r == AV_INFECTED, "clamd over TCP %s: %s %s", addr, av_result_name(r), vn);
	free(err);
	err = NULL;
	atomic_store(&f.stop, 1);
	pthread_join(th, NULL);
	close(f.lfd);
	r = av_scan(av, eicar, strlen(eicar), vn, sizeof(vn), &err);
	ok(r == AV_ERROR && err, "clamd down: ERROR: %s", err ? err : "");
	free(err);
	av_close(&av);
	free(big);

	c.clamd = "no-port-here";
	err = NULL;
	av = av_open(&c, NULL);
	r = av_scan(av, eicar, strlen(eicar), vn, sizeof(vn), &err);
	ok(r == AV_ERROR && err, "bad clamd address: %s", err ? err : "");
	free(err);
	av_close(&av);
}

int
main(void)
{
	const char *src = getenv("MOAT_SRCDIR");
	struct av_conf c = AV_CONF_DEFAULT;
	struct stat st;
	struct av *av;
	char *err = NULL;

	snprintf(srcdir, sizeof(srcdir), "%s", src ? src : ".");
	snprintf(dbdir, sizeof(dbdir), "%s/../shared/testdata/clamav/db", srcdir);
	snprintf(samples, sizeof(samples), "%s/../shared/testdata/clamav/samples", srcdir);
	if (stat(dbdir, &st) < 0 || stat(samples, &st) < 0) {
		printf("1..0 # SKIP shared testdata absent\n");
		return 0;
	}
	snprintf(tdir, sizeof(tdir), "/tmp/test_av.XXXXXX");
	if (mkdtemp(tdir) == NULL) {
		printf("Bail out! mkdtemp: %s\n", strerror(errno));
		return 1;
	}

	c.database = dbdir;
	c.require_db = true;
	av = av_open(&c, &err);
	ok(av != NULL, "engine loaded from %s (%s)", dbdir, err ? err : "ok");
	free(err);
	if (av) {
		test_samples(av);
		test_clean(av);
		test_memory(av);
		av_close(&av);
	}
	test_limits();
	test_no_db();
	test_reload();
	test_clamd();

	{
		char cmd[4200];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tdir);
		if (system(cmd) != 0)
			printf("# could not remove %s\n", tdir);
	}
	return t_done();
}
