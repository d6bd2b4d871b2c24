/*
 * cmd_bayes.c - `moat bayes ...`: train, classify, stats, forget, expire,
 * export and import of the Bayes store <state-dir>/bayes.lmdb.
 *
 *   bayes train [--spam PATH]... [--ham PATH]...   PATH: a directory of
 *         message files (recursively, so a Maildir works), or an mbox file
 *   bayes classify FILE...        one FILE: probability, band, top tokens;
 *                                 several: "FILE PROB SYMBOL LOG-ODDS" per line
 *   bayes stats | expire [--days N] [--max-count N]
 *   bayes forget --spam|--ham FILE | export > FILE | import < FILE
 *
 * Runs in: the admin's shell (BLOCKING is fine here).  Untrusted input: the
 * messages read (each at most BAYES_CLI_MAXMSG bytes, parsed with the MIME
 * limits) and the import text (bounded lines, checked fields).
 */
#include "config.h"
#include "cli.h"
#include "bayes.h"
#include "buf.h"
#include "conf.h"
#include "mime.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BAYES_CLI_MAXMSG   (64 * 1024 * 1024)   /* bytes of one message file */
#define BAYES_CLI_BATCH    500                  /* learns per transaction */
#define BAYES_CLI_MAXDEPTH 4                    /* directory recursion */

struct train_ctx {
	struct bayes *b;
	bool          spam;
	unsigned long learned, already, failed, inbatch;
};

static int
read_file(const char *path, struct buf *out)
{
	char chunk[65536];
	int fd;
	ssize_t n;

	buf_reset(out);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return -1;
	while ((n = read(fd, chunk, sizeof(chunk))) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			close(fd);
			return -1;
		}
		if (out->len + (size_t)n > BAYES_CLI_MAXMSG) {
			close(fd);
			errno = EFBIG;
			return -1;
		}
		buf_add(out, chunk, (size_t)n);
	}
	close(fd);
	if (out->data == NULL)
		buf_add(out, "", 0);
	return 0;
}

static int
learn_one(struct train_ctx *t, const char *data, size_t len)
{
	uint8_t d[BAYES_DIGEST_LEN];
	struct mime_msg *m;
	int rc;

	if (t->inbatch == 0 && bayes_batch_begin(t->b) < 0)
		return -1;
	m = mime_parse(data, len, NULL, NULL);
	bayes_digest(data, len, d);
	rc = bayes_learn(t->b, m, t->spam, d);
	mime_free(&m);
	if (rc < 0)
		return -1;
	if (rc == BAYES_ALREADY)
		t->already++;
	else
		t->learned++;
	if (++t->inbatch >= BAYES_CLI_BATCH) {
		t->inbatch = 0;
		if (bayes_batch_end(t->b, true) < 0)
			return -1;
	}
	return 0;
}

/* an mbox file: messages start at "From " lines at the file start or
 * after an empty line */
static int
learn_mbox(struct train_ctx *t, const char *d, size_t len)
{
	size_t start = 0, i = 0;

	while (i < len) {
		const char *nl = memchr(d + i, '\n', len - i);
		size_t next = nl ? (size_t)(nl - d) + 1 : len;
		if (next < len && len - next >= 5 && memcmp(d + next, "From ", 5) == 0 &&
		    (next - i == 1 || (next - i == 2 && d[i] == '\r'))) {
			if (next > start && learn_one(t, d + start, next - start) < 0)
				return -1;
			start = next;
		}
		i = next;
	}
	if (len > start)
		return learn_one(t, d + start, len - start);
	return 0;
}

static int
train_path(struct train_ctx *t, const char *path, int depth, bool top)
{
	struct stat st;
	struct buf data = BUF_INIT;
	int rc = 0;

	if (stat(path, &st) < 0) {
		fprintf(stderr, "moat: %s: %s\n", path, strerror(errno));
		t->failed++;
		return 0;
	}
	if (S_ISDIR(st.st_mode)) {
		struct dirent **ents;
		int n;

		if (depth > BAYES_CLI_MAXDEPTH)
			return 0;
		if ((n = scandir(path, &ents, NULL, alphasort)) < 0) {
			fprintf(stderr, "moat: %s: %s\n", path, strerror(errno));
			t->failed++;
			return 0;
		}
		for (int i = 0; i < n; i++) {
			struct buf sub = BUF_INIT;
			if (ents[i]->d_name[0] != '.' && rc == 0) {
				buf_printf(&sub, "%s/%s", path, ents[i]->d_name);
				rc = train_path(t, sub.data, depth + 1, false);
			}
			buf_free(&sub);
			free(ents[i]);
		}
		free(ents);
		return rc;
	}
	if (!S_ISREG(st.st_mode))
		return 0;
	if (read_file(path, &data) < 0) {
		fprintf(stderr, "moat: %s: %s\n", path, strerror(errno));
		t->failed++;
		buf_free(&data);
		return 0;
	}
	/* a file named on the command line that starts with "From " is an
	 * mbox; files found in a directory are one message each */
	if (top && data.len >= 5 && memcmp(data.data, "From ", 5) == 0)
		rc = learn_mbox(t, data.data, data.len);
	else
		rc = learn_one(t, data.data, data.len);
	buf_free(&data);
	return rc;
}

static struct bayes *
open_store(struct moat_conf *c, bool rdonly)
{
	char *err = NULL;
	struct bayes *b;

	if ((b = bayes_open(c->state_dir, rdonly, &err)) == NULL) {
		fprintf(stderr, "moat: bayes: %s\n", err ? err : "cannot open");
		free(err);
	}
	return b;
}

static int
b_train(struct moat_conf *c, int argc, char **argv)
{
	struct train_ctx t = { 0 };
	int i, rc = 0;

	if (argc < 3)
		goto usage;
	for (i = 1; i < argc; i += 2)
		if (i + 1 >= argc || (strcmp(argv[i], "--spam") && strcmp(argv[i], "--ham")))
			goto usage;
	if ((t.b = open_store(c, false)) == NULL)
		return 1;
	for (i = 1; i < argc && rc == 0; i += 2) {
		unsigned long before = t.learned + t.already;
		t.spam = strcmp(argv[i], "--spam") == 0;
		rc = train_path(&t, argv[i + 1], 0, true);
		if (rc == 0)
			printf("%s: %lu messages as %s\n", argv[i + 1], t.learned + t.already - before,
			    t.spam ? "spam" : "ham");
	}
	if (t.inbatch && bayes_batch_end(t.b, rc == 0) < 0)
		rc = -1;
	if (rc < 0)
		fprintf(stderr, "moat: bayes train: %s\n", bayes_error(t.b));
	else
		printf("learned %lu, already known %lu, unreadable %lu\n", t.learned, t.already, t.failed);
	bayes_close(&t.b);
	return rc < 0 ? 1 : 0;
usage:
	fprintf(stderr, "usage: moat bayes train [--spam PATH]... [--ham PATH]...\n");
	return 2;
}

static int
b_classify(struct moat_conf *c, int argc, char **argv)
{
	struct bayes *b;
	struct buf data = BUF_INIT;
	int rc = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: moat bayes classify FILE...\n");
		return 2;
	}
	if ((b = open_store(c, true)) == NULL)
		return 1;
	for (int i = 1; i < argc; i++) {
		struct bayes_result r;
		struct mime_msg *m;

		if (read_file(argv[i], &data) < 0) {
			fprintf(stderr, "moat: %s: %s\n", argv[i], strerror(errno));
			rc = 1;
			continue;
		}
		m = mime_parse(data.data, data.len, NULL, NULL);
		if ((argc > 2 ? bayes_classify(b, m, &r) : bayes_classify_explain(b, m, &r)) < 0) {
			fprintf(stderr, "moat: bayes classify: %s\n", bayes_error(b));
			mime_free(&m);
			rc = 1;
			break;
		}
		mime_free(&m);
		if (argc > 2) {
			printf("%s %.6f %s %.4f\n", argv[i], r.prob, r.symbol, r.lodds);
			continue;
		}
		printf("probability %.6f\nsymbol %s %.3f\n", r.prob, r.symbol, r.score);
		printf("log-odds %.4f\n", r.lodds);
		printf("tokens %u used %u learned spam %llu ham %llu%s\n", r.ntokens, r.nused,
		    (unsigned long long)r.nspam, (unsigned long long)r.nham,
		    r.ready ? "" : " (not enough learned yet: the result is not used)");
		for (unsigned k = 0; k < r.ntop; k++)
			printf("  %.4f spam %u ham %u %s\n", r.top[k].prob, r.top[k].spam,
			    r.top[k].ham, esc(r.top[k].text));
	}
	buf_free(&data);
	bayes_close(&b);
	return rc;
}

static int
b_stats(struct moat_conf *c, int argc, char **argv)
{
	struct bayes_stats st;
	struct bayes *b;
	char when[64] = "-";

	(void)argv;
	if (argc != 1) {
		fprintf(stderr, "usage: moat bayes stats\n");
		return 2;
	}
	if ((b = open_store(c, true)) == NULL)
		return 1;
	if (bayes_stats(b, &st) < 0) {
		fprintf(stderr, "moat: bayes stats: %s\n", bayes_error(b));
		bayes_close(&b);
		return 1;
	}
	if (st.oldest) {
		time_t t = (time_t)st.oldest;
		struct tm tm;
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", gmtime_r(&t, &tm));
	}
	printf("spam %llu\nham %llu\ntokens %llu\nmessages-known %llu\noldest-token %s\ntokenizer %llu\n",
	    (unsigned long long)st.nspam, (unsigned long long)st.nham,
	    (unsigned long long)st.ntokens, (unsigned long long)st.nseen, when,
	    (unsigned long long)st.tokenizer);
	bayes_close(&b);
	return 0;
}

static int
b_forget(struct moat_conf *c, int argc, char **argv)
{
	struct bayes *b;
	struct buf data = BUF_INIT;
	uint8_t d[BAYES_DIGEST_LEN];
	struct mime_msg *m;
	int rc;

	if (argc != 3 || (strcmp(argv[1], "--spam") && strcmp(argv[1], "--ham"))) {
		fprintf(stderr, "usage: moat bayes forget --spam|--ham FILE\n");
		return 2;
	}
	if (read_file(argv[2], &data) < 0) {
		fprintf(stderr, "moat: %s: %s\n", argv[2], strerror(errno));
		buf_free(&data);
		return 1;
	}
	if ((b = open_store(c, false)) == NULL) {
		buf_free(&data);
		return 1;
	}
	m = mime_parse(data.data, data.len, NULL, NULL);
	bayes_digest(data.data, data.len, d);
	rc = bayes_forget(b, m, strcmp(argv[1], "--spam") == 0, d);
	mime_free(&m);
	buf_free(&data);
	if (rc < 0)
		fprintf(stderr, "moat: bayes forget: %s\n", bayes_error(b));
	else if (rc == BAYES_NOT_LEARNED)
		fprintf(stderr, "moat: %s was not learned as %s\n", argv[2], argv[1] + 2);
	else
		printf("forgotten\n");
	bayes_close(&b);
	return rc == BAYES_OK ? 0 : 1;
}

static int
b_expire(struct moat_conf *c, int argc, char **argv)
{
	long long days = 90, maxc = 1;
	struct bayes *b;
	long n;

	for (int i = 1; i < argc; i += 2) {
		if (i + 1 < argc && strcmp(argv[i], "--days") == 0 &&
		    parse_ll(argv[i + 1], 0, 100000, &days))
			continue;
		if (i + 1 < argc && strcmp(argv[i], "--max-count") == 0 &&
		    parse_ll(argv[i + 1], 0, 1000000, &maxc))
			continue;
		fprintf(stderr, "usage: moat bayes expire [--days N] [--max-count N]\n");
		return 2;
	}
	if ((b = open_store(c, false)) == NULL)
		return 1;
	n = bayes_expire(b, time(NULL) - (time_t)days * 86400, (unsigned)maxc);
	if (n < 0)
		fprintf(stderr, "moat: bayes expire: %s\n", bayes_error(b));
	else
		printf("expired %ld tokens\n", n);
	bayes_close(&b);
	return n < 0 ? 1 : 0;
}

static int
b_export(struct moat_conf *c, int argc, char **argv)
{
	struct bayes *b;
	int rc;

	(void)argv;
	if (argc != 1) {
		fprintf(stderr, "usage: moat bayes export > FILE\n");
		return 2;
	}
	if ((b = open_store(c, true)) == NULL)
		return 1;
	if ((rc = bayes_export(b, stdout)) < 0)
		fprintf(stderr, "moat: bayes export: %s\n", bayes_error(b));
	bayes_close(&b);
	return rc < 0 ? 1 : 0;
}

static int
b_import(struct moat_conf *c, int argc, char **argv)
{
	struct bayes *b;
	char *err = NULL;
	int rc;

	(void)argv;
	if (argc != 1) {
		fprintf(stderr, "usage: moat bayes import < FILE\n");
		return 2;
	}
	if ((b = open_store(c, false)) == NULL)
		return 1;
	if ((rc = bayes_import(b, stdin, &err)) < 0)
		fprintf(stderr, "moat: bayes import: stdin: %s\n", err ? err : "failed");
	else
		printf("imported\n");
	free(err);
	bayes_close(&b);
	return rc < 0 ? 1 : 0;
}

static const struct {
	const char *name;
	int (*fn)(struct moat_conf *, int, char **);
} bayes_cmds[] = {
	{ "train", b_train }, { "classify", b_classify }, { "stats", b_stats },
	{ "forget", b_forget }, { "expire", b_expire }, { "export", b_export },
	{ "import", b_import },
};

int
cmd_bayes(struct moat_conf *c, int argc, char **argv)
{
	static bool inited;

	if (!inited) {
		mime_init();
		inited = true;
	}
	if (argc >= 2)
		for (size_t i = 0; i < ARRAY_SIZE(bayes_cmds); i++)
			if (strcmp(argv[1], bayes_cmds[i].name) == 0)
				return bayes_cmds[i].fn(c, argc - 1, argv + 1);
	fprintf(stderr, "usage: moat bayes train [--spam PATH]... [--ham PATH]...\n"
	    "       moat bayes classify FILE...\n"
	    "       moat bayes stats | expire [--days N] [--max-count N]\n"
	    "       moat bayes forget --spam|--ham FILE\n"
	    "       moat bayes export > FILE | import < FILE\n");
	return 2;
}
