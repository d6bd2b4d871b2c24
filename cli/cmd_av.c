/*
 * cmd_av.c - `moat av ...`: scan files with the same code as the daemon's
 * antivirus filter (filters/av.c).
 *
 *   av scan [--database DIR | --clamd ADDR] FILE...
 *         one line per FILE: "FILE: CLEAN", "FILE: INFECTED NAME" or
 *         "FILE: ERROR reason"; exit 0 all clean, 1 if any file is
 *         infected, 2 if none is but a file could not be scanned (or usage).
 *         FILE "-" is standard input.
 *   av info [--database DIR]
 *         signatures loaded and the age of the database.
 *
 * The database comes from --database until the config carries the
 * `antivirus` directive; the default is /var/lib/clamav.
 *
 * Runs in: the admin's shell (BLOCKING is fine here).  Untrusted input: the
 * files scanned (each read up to AV_CLI_MAXFILE bytes, handed to libclamav).
 */
#include "config.h"
#include "cli.h"
#include "av.h"
#include "buf.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define AV_CLI_MAXFILE  (256 * 1024 * 1024)     /* bytes of one file scanned */

/* read a whole file (or stdin for "-"); -1 with errno */
static int
av_read_file(const char *path, struct buf *b)
{
	char chunk[65536];
	int fd = strcmp(path, "-") == 0 ? 0 : open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	while ((n = read(fd, chunk, sizeof(chunk))) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (b->len + (size_t)n > AV_CLI_MAXFILE) {
			errno = EFBIG;
			n = -1;
			break;
		}
		buf_add(b, chunk, (size_t)n);
	}
	if (fd != 0) {
		int e = errno;
		close(fd);
		errno = e;
	}
	return n < 0 ? -1 : 0;
}

/* --database DIR / --clamd ADDR; returns the index of the first operand or -1 */
static int
av_cli_opts(int argc, char **argv, struct av_conf *c)
{
	int i;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--database") == 0 && i + 1 < argc) {
			c->backend = AV_BACKEND_LIBCLAMAV;
			c->database = argv[++i];
		} else if (strcmp(argv[i], "--clamd") == 0 && i + 1 < argc) {
			c->backend = AV_BACKEND_CLAMD;
			c->clamd = argv[++i];
		} else if (strcmp(argv[i], "--") == 0) {
			return i + 1;
		} else if (argv[i][0] == '-' && argv[i][1] != '\0') {
			return -1;
		} else
			break;
	}
	return i;
}

static int
av_cmd_scan(int argc, char **argv)
{
	struct av_conf c = AV_CONF_DEFAULT;
	struct av *av;
	char *err = NULL;
	int first, i, infected = 0, errors = 0;

	if ((first = av_cli_opts(argc, argv, &c)) < 0 || first >= argc) {
		fprintf(stderr, "usage: moat av scan [--database DIR | --clamd ADDR] FILE...\n");
		return 2;
	}
	c.max_scansize = AV_CLI_MAXFILE;
	if ((av = av_open(&c, &err)) == NULL) {
		fprintf(stderr, "moat: %s\n", err ? err : "antivirus: cannot start");
		free(err);
		return 2;
	}
	if (err) {
		fprintf(stderr, "moat: warning: %s\n", err);
		free(err);
		err = NULL;
	}
	for (i = first; i < argc; i++) {
		struct buf b = BUF_INIT;
		char vn[256];
		enum av_result r;

		if (av_read_file(argv[i], &b) < 0) {
			printf("%s: ERROR %s\n", argv[i], strerror(errno));
			errors++;
			buf_free(&b);
			continue;
		}
		r = av_scan(av, b.data ? b.data : "", b.len, vn, sizeof(vn), &err);
		if (r == AV_INFECTED) {
			printf("%s: INFECTED %s\n", argv[i], vn);
			infected++;
		} else if (r == AV_CLEAN) {
			printf("%s: CLEAN\n", argv[i]);
		} else {
			printf("%s: ERROR %s\n", argv[i], err ? err : "scan failed");
			errors++;
		}
		free(err);
		err = NULL;
		buf_free(&b);
	}
	av_close(&av);
	fflush(stdout);
	return infected ? 1 : errors ? 2 : 0;
}

static int
av_cmd_info(int argc, char **argv)
{
	struct av_conf c = AV_CONF_DEFAULT;
	struct av_stats st;
	struct av *av;
	char *err = NULL;
	int first;

	if ((first = av_cli_opts(argc, argv, &c)) < 0 || first != argc) {
		fprintf(stderr, "usage: moat av info [--database DIR | --clamd ADDR]\n");
		return 2;
	}
	c.require_db = true;
	if ((av = av_open(&c, &err)) == NULL) {
		fprintf(stderr, "moat: %s\n", err ? err : "antivirus: cannot start");
		free(err);
		return 1;
	}
	av_stats(av, &st);
	if (c.backend == AV_BACKEND_CLAMD)
		printf("backend: clamd %s\n", c.clamd);
	else
		printf("backend: libclamav\ndatabase: %s\nsignatures: %u\ndatabase-age: %lld\n",
		    c.database, st.signatures, st.db_age);
	av_close(&av);
	return 0;
}

int
cmd_av(struct moat_conf *conf, int argc, char **argv)
{
	(void)conf;
	if (argc >= 2 && strcmp(argv[1], "scan") == 0)
		return av_cmd_scan(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "info") == 0)
		return av_cmd_info(argc - 1, argv + 1);
	fprintf(stderr, "usage: moat av scan [--database DIR | --clamd ADDR] FILE...\n"
	    "       moat av info [--database DIR | --clamd ADDR]\n");
	return 2;
}
