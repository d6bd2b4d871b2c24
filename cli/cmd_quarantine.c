/*
 * cmd_quarantine.c - `moat quarantine ...`: review, release, delete, learn
 * and purge what the filter engine quarantined (quarantine/qstore.h).
 *
 *   quarantine list [--since T] [--until T] [--rcpt ADDR] [--from TEXT]
 *                   [--min-score N] [--symbol NAME] [--limit N] [--all] [--json]
 *   quarantine show ID [--raw]
 *   quarantine release ID... [--rcpt ADDR] [--learn-ham]
 *   quarantine release --all FILTERS... [--rcpt ADDR] [--learn-ham] [--yes]
 *   quarantine delete ID... [--learn-spam]
 *   quarantine delete --all FILTERS... [--learn-spam] [--yes]
 *   quarantine purge [--older-than D] [--max-size S]
 *   quarantine check                 repair the index (orphans both ways)
 *   quarantine digest ADDR [--since T] [--from ADDR]   print a digest message
 *   quarantine import FILE --rcpt ADDR... [--from ADDR] [--score N]
 *                   [--symbols TEXT] [--client IP]     (tests, debugging)
 *
 * T: unix seconds, YYYY-MM-DD[THH:MM[:SS]] (UTC) or a duration ago ("2h",
 * "7d").  The CLI works on the store directly, so it works while moatd is
 * down; after a release it asks a running moatd to flush its queue.
 *
 * Runs in: the admin's shell, as root or the moat run user (or the owner of
 * the state-dir, for a moatd run without root); others are refused.  As root it prepares the directories, then drops to the run
 * user so every file it creates belongs to the daemon.  Untrusted input:
 * the stored messages (printed with control characters escaped; --raw is
 * the exception the admin asked for).
 */
#include "config.h"
#include "cli.h"
#include "bayes.h"
#include "buf.h"
#include "conf.h"
#include "log.h"
#include "mime.h"
#include "privs.h"
#include "qstore.h"
#include "spool.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define QCLI_IMPORT_MAX  (256 * 1024 * 1024)    /* bytes of an imported file */
#define QCLI_PREVIEW     2000                   /* bytes of text shown by show */
#define QCLI_MAX_IDS     100000                 /* ids gathered by --all */

static void
qusage(FILE *f)
{
	fprintf(f,
	    "usage: moat [-c FILE] quarantine list [--since T] [--until T] [--rcpt ADDR] [--from TEXT]\n"
	    "                        [--min-score N] [--symbol NAME] [--limit N] [--all] [--json]\n"
	    "       moat [-c FILE] quarantine show ID [--raw]\n"
	    "       moat [-c FILE] quarantine release ID... | --all FILTERS [--yes]  [--rcpt ADDR] [--learn-ham]\n"
	    "       moat [-c FILE] quarantine delete ID... | --all FILTERS [--yes]  [--learn-spam]\n"
	    "       moat [-c FILE] quarantine purge [--older-than D] [--max-size S]\n"
	    "       moat [-c FILE] quarantine check\n"
	    "       moat [-c FILE] quarantine digest ADDR [--since T] [--from ADDR]\n"
	    "       moat [-c FILE] quarantine import FILE --rcpt ADDR... [--from ADDR] [--score N]\n"
	    "                        [--symbols TEXT] [--client IP]\n"
	    "  T: unix time, YYYY-MM-DD[THH:MM[:SS]] (UTC), or a duration ago (2h, 7d)\n");
}

/* ---- options ---- */

struct qopts {
	struct qfilter f;
	const char *rcpt_only;          /* release --rcpt */
	const char *rcpts[64];          /* import --rcpt (several) */
	size_t      nrcpts;
	const char *sender;             /* import --from */
	const char *symbols;
	const char *client;
	const char *digest_from;
	double      score;
	bool        json, raw, all, yes, learn_ham, learn_spam, any_filter;
	long long   older_than, max_size;
	bool        older_set, size_set;
	char       *ids[256];
	size_t      nids;
};

static bool
parse_time(const char *s, time_t *out)
{
	long long v, d;
	struct tm tm;
	const char *end;

	if (parse_ll(s, 0, 4102444800LL, &v) && strlen(s) >= 9) {
		*out = (time_t)v;
		return true;
	}
	memset(&tm, 0, sizeof(tm));
	if ((end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm)) == NULL || *end) {
		memset(&tm, 0, sizeof(tm));
		if ((end = strptime(s, "%Y-%m-%dT%H:%M", &tm)) == NULL || *end) {
			memset(&tm, 0, sizeof(tm));
			if ((end = strptime(s, "%Y-%m-%d", &tm)) == NULL || *end)
				end = NULL;
		}
	}
	if (end) {
		*out = timegm(&tm);
		return true;
	}
	if ((d = parse_duration(s)) >= 0) {
		*out = time(NULL) - (time_t)d;
		return true;
	}
	return false;
}

/* 0 ok, 2 usage error (message printed) */
static int
parse_opts(int argc, char **argv, struct qopts *o, const char *allowed)
{
	memset(o, 0, sizeof(*o));
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = (i + 1 < argc) ? argv[i + 1] : NULL;
		char flag[64];
		bool takes = true;

		if (a[0] != '-' || strcmp(a, "-") == 0) {
			if (o->nids >= ARRAY_SIZE(o->ids)) {
				fprintf(stderr, "moat: quarantine: at most %zu ids at once (use --all with a filter)\n",
				    ARRAY_SIZE(o->ids));
				return 2;
			}
			o->ids[o->nids++] = argv[i];
			continue;
		}
		snprintf(flag, sizeof(flag), " %s ", a);
		if (strstr(allowed, flag) == NULL) {
			fprintf(stderr, "moat: quarantine %s: unknown option %s\n", argv[0], a);
			return 2;
		}
		if (!strcmp(a, "--json")) { o->json = true; takes = false; }
		else if (!strcmp(a, "--raw")) { o->raw = true; takes = false; }
		else if (!strcmp(a, "--all")) { o->all = true; takes = false; }
		else if (!strcmp(a, "--yes")) { o->yes = true; takes = false; }
		else if (!strcmp(a, "--learn-ham")) { o->learn_ham = true; takes = false; }
		else if (!strcmp(a, "--learn-spam")) { o->learn_spam = true; takes = false; }
		if (!takes)
			continue;
		if (v == NULL) {
			fprintf(stderr, "moat: quarantine %s: %s needs a value\n", argv[0], a);
			return 2;
		}
		i++;
		bool good = true;
		long long ll;
		if (!strcmp(a, "--since")) {
			good = parse_time(v, &o->f.since);
			o->any_filter = true;
		} else if (!strcmp(a, "--until")) {
			good = parse_time(v, &o->f.until);
			o->any_filter = true;
		} else if (!strcmp(a, "--rcpt")) {
			o->f.rcpt = v;
			o->rcpt_only = v;
			if (o->nrcpts < ARRAY_SIZE(o->rcpts))
				o->rcpts[o->nrcpts++] = v;
			o->any_filter = true;
		} else if (!strcmp(a, "--from")) {
			o->f.from = v;
			o->sender = v;
			o->digest_from = v;
			o->any_filter = true;
		} else if (!strcmp(a, "--min-score") || !strcmp(a, "--score")) {
			char *end;
			double d = strtod(v, &end);
			good = *v && *end == '\0' && d > -1e6 && d < 1e6;
			o->f.min_score = d;
			o->f.has_min_score = true;
			o->score = d;
			o->any_filter = true;
		} else if (!strcmp(a, "--symbol")) {
			o->f.symbol = v;
			o->any_filter = true;
		} else if (!strcmp(a, "--symbols")) {
			o->symbols = v;
		} else if (!strcmp(a, "--client")) {
			o->client = v;
		} else if (!strcmp(a, "--limit")) {
			good = parse_ll(v, 1, 100000000, &ll);
			o->f.limit = (long)ll;
		} else if (!strcmp(a, "--older-than")) {
			good = (o->older_than = parse_duration(v)) >= 0;
			o->older_set = true;
		} else if (!strcmp(a, "--max-size")) {
			good = (o->max_size = parse_size(v)) >= 0;
			o->size_set = true;
		}
		if (!good) {
			fprintf(stderr, "moat: quarantine %s: bad value for %s: %s\n", argv[0], a, esc(v));
			return 2;
		}
	}
	return 0;
}

/* ---- output helpers ---- */

static void
json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; s && *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20 || ch == 0x7f)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

/* print s in `width` columns (UTF-8 code points; cut with "~"), padded
 * unless it is the last column */
static void
put_col(const char *s, size_t width, bool pad)
{
	size_t cols = 0, i = 0, n = s ? strlen(s) : 0;

	while (i < n && cols < width) {
		size_t clen = 1;
		unsigned char c = (unsigned char)s[i];
		if (c >= 0xf0) clen = 4;
		else if (c >= 0xe0) clen = 3;
		else if (c >= 0xc0) clen = 2;
		if (i + clen > n)
			break;
		if (cols + 1 == width && i + clen < n) {
			fputc('~', stdout);
			cols++;
			i = n;
			break;
		}
		if (c < 0x20 || c == 0x7f)
			fputc('?', stdout);
		else
			fwrite(s + i, 1, clen, stdout);
		cols++;
		i += clen;
	}
	for (; pad && cols < width; cols++)
		fputc(' ', stdout);
}

/* for display: UTF-8 kept, control characters replaced */
static const char *
disp(const char *s, char *out, size_t outsz)
{
	size_t n = 0;

	for (; s && *s && n + 1 < outsz; s++)
		out[n++] = ((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s;
	out[n] = '\0';
	return out;
}

static void
fmt_time(time_t t, char *out, size_t outsz)
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(out, outsz, "%Y-%m-%d %H:%M", &tm);
}

struct list_ctx {
	bool json, states;
	long n;
};

static int
list_cb(const struct qstore_entry *en, void *arg)
{
	struct list_ctx *l = arg;
	char when[32], rc[600];

	if (l->json) {
		printf("%s{\"id\":", l->n ? ",\n " : "");
		json_str(stdout, en->id);
		printf(",\"time\":%lld,\"client\":", (long long)en->time);
		json_str(stdout, en->client ? en->client : "");
		printf(",\"sender\":");
		json_str(stdout, en->sender);
		printf(",\"rcpts\":[");
		for (size_t i = 0; i < en->nrcpts; i++) {
			printf("%s{\"addr\":", i ? "," : "");
			json_str(stdout, en->rcpts[i]);
			printf(",\"state\":");
			json_str(stdout, en->rcpt_states[i]);
			printf("}");
		}
		printf("],\"from\":");
		json_str(stdout, en->hfrom ? en->hfrom : "");
		printf(",\"subject\":");
		json_str(stdout, en->subject ? en->subject : "");
		printf(",\"size\":%lld,\"score\":%.2f,\"action\":", en->size, en->score);
		json_str(stdout, en->action ? en->action : "");
		printf(",\"symbols\":");
		json_str(stdout, en->symbols ? en->symbols : "");
		printf(",\"state\":");
		json_str(stdout, qstore_state_name(en->state));
		printf("}");
		l->n++;
		return 0;
	}
	if (l->n++ == 0)
		printf("%-18s  %-16s  %6s  %s%-28s  %-28s  %s\n", "ID", "TIME (UTC)", "SCORE",
		    l->states ? "STATE      " : "", "FROM", "RCPT", "SUBJECT");
	fmt_time(en->time, when, sizeof(when));
	if (en->nrcpts > 1)
		snprintf(rc, sizeof(rc), "%.500s +%zu", en->rcpts[0], en->nrcpts - 1);
	else
		snprintf(rc, sizeof(rc), "%.500s", en->nrcpts ? en->rcpts[0] : "");
	printf("%-18s  %-16s  %6.1f  ", en->id, when, en->score);
	if (l->states)
		printf("%-9s  ", qstore_state_name(en->state));
	put_col(en->sender && *en->sender ? en->sender : "<>", 28, true);
	printf("  ");
	put_col(rc, 28, true);
	printf("  ");
	put_col(en->subject ? en->subject : "", 60, false);
	printf("\n");
	return 0;
}

/* ---- authorisation, setup ---- */

static bool
run_user_uid(const struct moat_conf *c, uid_t *uid)
{
	struct passwd *pw = NULL;

	if (c->user)
		pw = getpwnam(c->user);
	else if ((pw = getpwnam("moat")) == NULL)
		pw = getpwnam("nobody");
	if (pw == NULL)
		return false;
	*uid = pw->pw_uid;
	return true;
}

/* who is acting (for the index and the X-Moat-Released header) */
static void
actor(char *out, size_t outsz)
{
	struct passwd *pw = getpwuid(getuid());
	const char *sudo = getenv("SUDO_USER");

	if (pw && pw->pw_uid == 0 && sudo && *sudo)
		snprintf(out, outsz, "%s (sudo)", sudo);
	else if (pw)
		moat_strlcpy(out, pw->pw_name, outsz);
	else
		snprintf(out, outsz, "uid %u", (unsigned)getuid());
	for (char *p = out; *p; p++)
		if ((unsigned char)*p < 0x21 || *p == 0x7f)
			*p = '_';
}

static int
authorise_and_setup(struct moat_conf *c)
{
	char path[PATH_MAX];
	uid_t ru;
	char *err = NULL;
	static const char *subs[] = { "", "spool", "spool/incoming", "spool/queue", "spool/state",
	    "spool/corrupt", "quarantine", "quarantine/msg", "quarantine/tmp",
	    "quarantine/index.db", "quarantine/index.db-wal", "quarantine/index.db-shm" };

	if (geteuid() != 0) {
		/* the run user; or, for a moatd started without root (it then runs
		 * as whoever started it), the owner of the state-dir */
		struct stat st;
		bool mine = stat(c->state_dir, &st) == 0 ? st.st_uid == geteuid() : errno == ENOENT;
		if (!mine && (!run_user_uid(c, &ru) || ru != geteuid())) {
			fprintf(stderr, "moat: quarantine: permission denied: run this as root or as the "
			    "moat run user (%s)\n", c->user ? c->user : "moat");
			return 1;
		}
	} else {
		/* root: make what the run user needs, hand it over, drop */
		if (mkdir_p(c->state_dir, 0755) < 0 || spool_init(c, &err) < 0) {
			fprintf(stderr, "moat: quarantine: %s\n", err ? err : strerror(errno));
			free(err);
			return 1;
		}
		conf_path(c, "quarantine/msg", path, sizeof(path));
		(void)mkdir_p(path, 0700);
		conf_path(c, "quarantine/tmp", path, sizeof(path));
		(void)mkdir_p(path, 0700);
		for (size_t i = 0; i < ARRAY_SIZE(subs); i++) {
			if (*subs[i])
				conf_path(c, subs[i], path, sizeof(path));
			else
				moat_strlcpy(path, c->state_dir, sizeof(path));
			if (access(path, F_OK) == 0)
				privs_chown(c, path);
		}
		privs_drop(c);
	}
	if (spool_init(c, &err) < 0) {
		fprintf(stderr, "moat: quarantine: %s\n", err);
		free(err);
		return 1;
	}
	return 0;
}

/* ---- learning ---- */

static struct bayes *learn_db;
static bool mime_ready;

static void
mime_once(void)
{
	if (!mime_ready)
		mime_init();
	mime_ready = true;
}

static int
learn(struct moat_conf *c, struct qstore *qs, const char *id, bool spam)
{
	struct envelope e;
	char *msg = NULL, *err = NULL;
	size_t len;
	uint8_t d[BAYES_DIGEST_LEN];
	int rc;

	if (learn_db == NULL) {
		mime_once();
		if ((learn_db = bayes_open(c->state_dir, false, &err)) == NULL) {
			fprintf(stderr, "moat: bayes: %s\n", err ? err : "cannot open");
			free(err);
			return -1;
		}
	}
	if (qstore_read(qs, id, &e, &msg, &len) < 0) {
		fprintf(stderr, "moat: quarantine: %s: cannot learn: %s\n", id, qstore_error(qs));
		return -1;
	}
	struct mime_msg *m = mime_parse(msg, len, NULL, NULL);
	bayes_digest(msg, len, d);
	rc = bayes_learn(learn_db, m, spam, d);
	mime_free(&m);
	free(msg);
	envelope_clear(&e);
	if (rc < 0) {
		fprintf(stderr, "moat: bayes: %s\n", bayes_error(learn_db));
		return -1;
	}
	printf("%s: learned as %s%s\n", id, spam ? "spam" : "ham",
	    rc == BAYES_ALREADY ? " (already)" : "");
	return 0;
}

/* ---- commands ---- */

static int
q_list(struct qstore *qs, struct qopts *o)
{
	struct list_ctx l = { o->json, o->f.all_states, 0 };
	long n;

	if (o->json)
		printf("[");
	n = qstore_list(qs, &o->f, list_cb, &l);
	if (n < 0) {
		if (o->json)
			printf("]\n");
		fprintf(stderr, "moat: quarantine: %s\n", qstore_error(qs));
		return 1;
	}
	if (o->json)
		printf("]\n");
	else if (n == 0)
		printf("the quarantine is empty%s\n", o->any_filter ? " (for this filter)" : "");
	return 0;
}

static void
print_escaped(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch == '\r')
			continue;
		if ((ch < 0x20 && ch != '\n' && ch != '\t') || ch == 0x7f)
			printf("\\x%02x", ch);
		else
			fputc(ch, stdout);
	}
}

static int
q_show(struct qstore *qs, struct qopts *o)
{
	struct qstore_entry en;
	struct envelope e;
	char *msg = NULL, when[32], d[4096];
	size_t len;
	int g;

	if (o->nids != 1) {
		qusage(stderr);
		return 2;
	}
	if ((g = qstore_get(qs, o->ids[0], &en)) != 0) {
		fprintf(stderr, "moat: quarantine: %s: %s\n", esc(o->ids[0]),
		    g == 1 ? "no such message" : qstore_error(qs));
		return 1;
	}
	if (qstore_read(qs, o->ids[0], &e, &msg, &len) < 0) {
		if (o->raw) {
			fprintf(stderr, "moat: quarantine: %s\n", qstore_error(qs));
			qstore_entry_clear(&en);
			return 1;
		}
		msg = NULL;
		len = 0;
		memset(&e, 0, sizeof(e));
	}
	if (o->raw) {
		if (e.add_headers_len)
			fwrite(e.add_headers, 1, e.add_headers_len, stdout);
		fwrite(msg, 1, len, stdout);
		goto out;
	}
	fmt_time(en.time, when, sizeof(when));
	printf("Id:         %s\nTime:       %s UTC\nState:      %s", en.id, when,
	    qstore_state_name(en.state));
	if (en.state_by)
		printf(" (by %s)", disp(en.state_by, d, sizeof(d)));
	printf("\nClient:     %s\n", disp(en.client ? en.client : "-", d, sizeof(d)));
	printf("Sender:     <%s>\n", disp(en.sender, d, sizeof(d)));
	for (size_t i = 0; i < en.nrcpts; i++)
		printf("%s<%s> %s\n", i ? "            " : "Recipients: ", disp(en.rcpts[i], d, sizeof(d)),
		    en.rcpt_states[i]);
	printf("From:       %s\n", disp(en.hfrom, d, sizeof(d)));
	printf("Subject:    %s\n", disp(en.subject, d, sizeof(d)));
	printf("Size:       %lld\nScore:      %.2f\n", en.size, en.score);
	printf("Action:     %s\n", disp(en.action, d, sizeof(d)));
	printf("Symbols:    %s\n", disp(en.symbols, d, sizeof(d)));
	if (msg) {
		/* the header section as stored, then a text preview */
		const char *end = NULL;
		for (size_t i = 0; i + 1 < len && !end; i++)
			if (msg[i] == '\n' && (msg[i + 1] == '\n' ||
			    (msg[i + 1] == '\r' && i + 2 < len && msg[i + 2] == '\n')))
				end = msg + i + 1;
		size_t hl = end ? (size_t)(end - msg) : len;
		printf("\n--- headers ---\n");
		if (e.add_headers_len)
			print_escaped(e.add_headers, e.add_headers_len);
		print_escaped(msg, hl);
		mime_once();
		struct mime_msg *m = mime_parse(msg, len, NULL, NULL);
		if (m && mime_text_count(m) > 0) {
			const struct mime_text *t = mime_text_at(m, 0);
			size_t n = t->len < QCLI_PREVIEW ? t->len : QCLI_PREVIEW;
			while (n > 0 && n < t->len && ((unsigned char)t->text[n] & 0xc0) == 0x80)
				n--;
			printf("\n--- text preview (%s%s) ---\n", t->type, n < t->len ? ", cut" : "");
			print_escaped(t->text, n);
			printf("\n");
		}
		mime_free(&m);
	}
out:
	free(msg);
	envelope_clear(&e);
	qstore_entry_clear(&en);
	return 0;
}

struct ids_ctx {
	char **ids;
	size_t n;
};

static int
ids_cb(const struct qstore_entry *en, void *arg)
{
	struct ids_ctx *x = arg;

	if (x->n >= QCLI_MAX_IDS)
		return 1;
	x->ids[x->n++] = xstrdup(en->id);
	return 0;
}

/* the ids to act on: given, or --all with a filter (confirmed) */
static int
gather(struct qstore *qs, struct qopts *o, const char *verb, struct ids_ctx *x)
{
	x->ids = NULL;
	x->n = 0;
	if (o->all) {
		if (o->nids) {
			fprintf(stderr, "moat: quarantine %s: give ids or --all with a filter, not both\n", verb);
			return 2;
		}
		struct qfilter f = o->f;
		if (!strcmp(verb, "release"))
			f.rcpt = o->rcpt_only;
		x->ids = xcalloc(QCLI_MAX_IDS, sizeof(char *));
		if (qstore_list(qs, &f, ids_cb, x) < 0) {
			fprintf(stderr, "moat: quarantine: %s\n", qstore_error(qs));
			return 1;
		}
		if (x->n == 0) {
			printf("nothing matches\n");
			return 0;
		}
		if (!o->yes) {
			char line[16];
			if (!isatty(STDIN_FILENO)) {
				fprintf(stderr, "moat: quarantine %s --all: %zu message(s) match; add --yes "
				    "to confirm (stdin is not a terminal)\n", verb, x->n);
				return 1;
			}
			fprintf(stderr, "%s %zu message(s)? [y/N] ", verb, x->n);
			if (fgets(line, sizeof(line), stdin) == NULL || (line[0] != 'y' && line[0] != 'Y')) {
				fprintf(stderr, "nothing done\n");
				return 1;
			}
		}
		return 0;
	}
	if (o->nids == 0) {
		qusage(stderr);
		return 2;
	}
	x->ids = xcalloc(o->nids, sizeof(char *));
	for (size_t i = 0; i < o->nids; i++)
		x->ids[x->n++] = xstrdup(o->ids[i]);
	return 0;
}

static void
ids_free(struct ids_ctx *x)
{
	for (size_t i = 0; i < x->n; i++)
		free(x->ids[i]);
	free(x->ids);
	x->ids = NULL;
	x->n = 0;
}

static int
q_release(struct moat_conf *c, struct qstore *qs, struct qopts *o)
{
	struct ids_ctx x;
	char who[128], nq[24];
	int rc, failed = 0, released = 0;

	if ((rc = gather(qs, o, "release", &x)) != 0 || x.n == 0) {
		ids_free(&x);
		return rc;
	}
	actor(who, sizeof(who));
	for (size_t i = 0; i < x.n; i++) {
		int r = qstore_release(qs, x.ids[i], o->rcpt_only, who, 0, nq);
		if (r == 0) {
			printf("%s: released%s%s as %s\n", x.ids[i], o->rcpt_only ? " to " : "",
			    o->rcpt_only ? esc(o->rcpt_only) : "", nq);
			released++;
			if (o->learn_ham && learn(c, qs, x.ids[i], false) < 0)
				failed++;
		} else {
			fprintf(stderr, "moat: quarantine: %s: %s\n", esc(x.ids[i]), qstore_error(qs));
			failed++;
		}
	}
	ids_free(&x);
	if (released) {
		char *rep = cli_control(c, "queue flush");
		if (rep == NULL)
			printf("moatd is not running; the message%s will be delivered when it starts\n",
			    released > 1 ? "s" : "");
		free(rep);
	}
	return failed ? 1 : 0;
}

static int
q_delete(struct moat_conf *c, struct qstore *qs, struct qopts *o)
{
	struct ids_ctx x;
	char who[128];
	int rc, failed = 0;

	if ((rc = gather(qs, o, "delete", &x)) != 0 || x.n == 0) {
		ids_free(&x);
		return rc;
	}
	actor(who, sizeof(who));
	for (size_t i = 0; i < x.n; i++) {
		/* learn first: the file goes with the delete */
		if (o->learn_spam && learn(c, qs, x.ids[i], true) < 0) {
			failed++;
			continue;
		}
		int r = qstore_delete(qs, x.ids[i], who);
		if (r == 0) {
			printf("%s: deleted\n", x.ids[i]);
		} else {
			fprintf(stderr, "moat: quarantine: %s: %s\n", esc(x.ids[i]), qstore_error(qs));
			failed++;
		}
	}
	ids_free(&x);
	return failed ? 1 : 0;
}

static int
q_purge(struct qstore *qs, struct qopts *o)
{
	struct qstore_conf qc;
	long n;

	qstore_conf_default(&qc);
	n = qstore_purge(qs, o->older_set ? o->older_than : qc.retention,
	    o->size_set ? o->max_size : qc.max_size);
	if (n < 0) {
		fprintf(stderr, "moat: quarantine: %s\n", qstore_error(qs));
		return 1;
	}
	printf("%ld message(s) purged\n", n);
	return 0;
}

static int
q_import(struct qstore *qs, struct qopts *o)
{
	struct envelope e;
	struct buf b = BUF_INIT;
	struct qstore_verdict v = { o->score, "quarantine", o->symbols };
	char chunk[65536];
	ssize_t n;
	int fd;

	if (o->nids != 1 || o->nrcpts == 0) {
		qusage(stderr);
		return 2;
	}
	if ((fd = open(o->ids[0], O_RDONLY | O_CLOEXEC)) < 0) {
		fprintf(stderr, "moat: quarantine import: %s: %s\n", esc(o->ids[0]), strerror(errno));
		return 1;
	}
	while ((n = read(fd, chunk, sizeof(chunk))) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 || b.len + (size_t)n > QCLI_IMPORT_MAX) {
			fprintf(stderr, "moat: quarantine import: %s: %s\n", esc(o->ids[0]),
			    n < 0 ? strerror(errno) : "too large");
			close(fd);
			buf_free(&b);
			return 1;
		}
		/* the spool keeps CRLF line ends */
		for (ssize_t i = 0; i < n; i++) {
			if (chunk[i] == '\n' && (b.len == 0 || b.data[b.len - 1] != '\r'))
				buf_addc(&b, '\r');
			buf_addc(&b, chunk[i]);
		}
	}
	close(fd);
	memset(&e, 0, sizeof(e));
	e.sender = xstrdup(o->sender ? o->sender : "");
	e.client_addr = o->client ? xstrdup(o->client) : NULL;
	e.proto = xstrdup("ESMTP");
	for (size_t i = 0; i < o->nrcpts; i++)
		envelope_add_rcpt(&e, o->rcpts[i], NULL, 0);
	int r = qstore_put_buf(qs, &e, b.data ? b.data : "", b.len, &v);
	if (r == 0)
		printf("%s\n", e.qid);
	else
		fprintf(stderr, "moat: quarantine import: %s\n", qstore_error(qs));
	envelope_clear(&e);
	buf_free(&b);
	return r == 0 ? 0 : 1;
}

int
cmd_quarantine(struct moat_conf *c, int argc, char **argv)
{
	struct qopts o;
	struct qstore *qs;
	char *err = NULL;
	const char *sub;
	int rc;

	if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
		qusage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	sub = argv[1];
	static const struct {
		const char *name, *opts;
	} subs[] = {
		{ "list", " --since --until --rcpt --from --min-score --symbol --limit --json --all " },
		{ "show", " --raw " },
		{ "release", " --rcpt --learn-ham --all --yes --since --until --from --min-score --symbol --limit " },
		{ "delete", " --learn-spam --all --yes --since --until --rcpt --from --min-score --symbol --limit " },
		{ "purge", " --older-than --max-size " },
		{ "check", " " },
		{ "digest", " --since --from " },
		{ "import", " --rcpt --from --score --symbols --client " },
	};
	size_t k;
	for (k = 0; k < ARRAY_SIZE(subs); k++)
		if (!strcmp(sub, subs[k].name))
			break;
	if (k == ARRAY_SIZE(subs)) {
		fprintf(stderr, "moat: quarantine: unknown command \"%s\"\n", esc(sub));
		qusage(stderr);
		return 2;
	}
	if ((rc = parse_opts(argc - 1, argv + 1, &o, subs[k].opts)) != 0)
		return rc;
	if (!strcmp(sub, "list") && o.all) {
		o.all = false;
		o.f.all_states = true;  /* list --all: released, deleted and lost too */
	}
	if ((!strcmp(sub, "release") || !strcmp(sub, "delete")) && o.all && !o.any_filter) {
		fprintf(stderr, "moat: quarantine %s --all needs a filter (--from, --rcpt, --since ...)\n", sub);
		return 2;
	}
	if ((rc = authorise_and_setup(c)) != 0)
		return rc;
	if ((qs = qstore_open(c->state_dir, &err)) == NULL) {
		fprintf(stderr, "moat: %s\n", err);
		free(err);
		return 1;
	}
	if (!strcmp(sub, "list")) {
		rc = o.nids ? (qusage(stderr), 2) : q_list(qs, &o);
	} else if (!strcmp(sub, "show")) {
		rc = q_show(qs, &o);
	} else if (!strcmp(sub, "release")) {
		rc = q_release(c, qs, &o);
	} else if (!strcmp(sub, "delete")) {
		rc = q_delete(c, qs, &o);
	} else if (!strcmp(sub, "purge")) {
		rc = o.nids ? (qusage(stderr), 2) : q_purge(qs, &o);
	} else if (!strcmp(sub, "check")) {
		long n = qstore_check(qs);
		if (n < 0)
			fprintf(stderr, "moat: quarantine check: %s\n", qstore_error(qs));
		else
			printf("%ld repair(s)\n", n);
		rc = n < 0 ? 1 : 0;
	} else if (!strcmp(sub, "digest")) {
		struct buf b = BUF_INIT;
		if (o.nids != 1) {
			qusage(stderr);
			rc = 2;
		} else if (qstore_digest_build(qs, o.ids[0], o.f.since, o.digest_from, &b) < 0) {
			fprintf(stderr, "moat: quarantine digest: %s\n", qstore_error(qs));
			rc = 1;
		} else {
			fwrite(b.data, 1, b.len, stdout);
			rc = 0;
		}
		buf_free(&b);
	} else {
		rc = q_import(qs, &o);
	}
	qstore_close(&qs);
	bayes_close(&learn_db);
	return rc;
}
