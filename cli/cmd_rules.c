/*
 * cmd_rules.c - `moat rules ...`: check rule files and try them on messages.
 *
 *   rules check [-v] [-l] PATH...   load the rule files (a file, a glob or a
 *         directory of *.cf and *.rules files) and print how many rules loaded, how
 *         many were skipped and why, grouped: eval: tests, bad regexes
 *         (FILE:LINE), unknown directives, ...  Exit 1 on a hard error (bad
 *         regex, syntax error, unreadable file), else 0.
 *   rules test [-r PATH]... FILE...  evaluate the rules on messages: for one
 *         FILE, each hit with its score and description and the total; for
 *         several, one line per message "FILE<TAB>SCORE<TAB>HIT,HIT,...";
 *         messages/s on stderr with -t.
 *
 * PATH defaults to the `rules` directive of the config once lib/conf.c has
 * it; until then the paths are given on the command line.
 *
 * Runs in: the admin's shell (blocking file reads are fine).  Untrusted
 * input: the messages (at most RULES_CLI_MAXMSG bytes each, parsed with
 * the MIME limits, evaluated under the PCRE2 limits of filters/rules.c).
 */
#include "config.h"
#include "cli.h"
#include "buf.h"
#include "conf.h"
#include "mime.h"
#include "rules.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RULES_CLI_MAXMSG   (64 * 1024 * 1024)   /* bytes of one message file */
#define RULES_CLI_SHOW     50                   /* issues listed per group */

static int
read_msg(const char *path, struct buf *out)
{
	char chunk[65536];
	ssize_t n;
	int fd;

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
		if (out->len + (size_t)n > RULES_CLI_MAXMSG) {
			close(fd);
			errno = EFBIG;
			return -1;
		}
		buf_add(out, chunk, (size_t)n);
	}
	close(fd);
	buf_addc(out, '\0');
	out->len--;
	return 0;
}

static void
print_report(const struct rules_report *rep, bool verbose)
{
	int k;

	printf("files: %u\n", rep->files);
	printf("rules loaded: %u\n", rep->loaded);
	printf("rules disabled (score 0): %u\n", rep->disabled);
	printf("lines in if/ifplugin branches not taken: %u\n", rep->skipped_block);
	for (k = 0; k < RULES_I_NKINDS; k++) {
		size_t i, shown = 0;

		if (rep->count[k] == 0)
			continue;
		printf("skipped: %u %s\n", rep->count[k], rules_issue_kind_name((enum rules_issue_kind)k));
		for (i = 0; i < rep->nissues; i++) {
			const struct rules_issue *is = &rep->issues[i];
			if ((int)is->kind != k)
				continue;
			/* hard errors are always listed in full */
			if (!verbose && shown >= RULES_CLI_SHOW &&
			    k != RULES_I_REGEX && k != RULES_I_SYNTAX && k != RULES_I_FILE) {
				printf("  ... (-v lists all)\n");
				break;
			}
			printf("  %s: %s\n", is->where, is->text);
			shown++;
		}
	}
	printf("hard errors: %u\n", rep->hard);
}

static int
rules_check(int argc, char **argv)
{
	struct rules_report rep;
	struct rules *r;
	char *err = NULL;
	bool verbose = false, list = false;
	int i, first = 1;

	for (; first < argc && argv[first][0] == '-'; first++) {
		if (strcmp(argv[first], "-v") == 0)
			verbose = true;
		else if (strcmp(argv[first], "-l") == 0)
			list = true;
		else
			break;
	}
	if (argc <= first) {
		fprintf(stderr, "moat rules check: no PATH given (and no `rules` in the config)\n");
		return 2;
	}
	r = rules_load((const char *const *)argv + first, (size_t)(argc - first), &rep, &err);
	if (r == NULL) {
		fprintf(stderr, "moat rules check: %s\n", err ? err : "cannot load");
		free(err);
		print_report(&rep, verbose);
		rules_report_free(&rep);
		return 1;
	}
	if (list) {
		for (size_t k = 0; k < rules_count(r); k++)
			printf("rule %s\n", rules_name_at(r, k));
	}
	print_report(&rep, verbose);
	i = rep.hard ? 1 : 0;
	rules_report_free(&rep);
	rules_free(&r);
	return i;
}

static int
rules_test(int argc, char **argv)
{
	const char **paths = NULL;
	size_t npaths = 0, nmsg = 0;
	struct rules_report rep;
	struct buf msg = BUF_INIT;
	struct rules *r;
	char *err = NULL;
	bool timing = false;
	uint64_t t0;
	int i, rc = 0;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-r") == 0 && i + 1 < argc) {
			paths = xreallocarray(paths, npaths + 1, sizeof(*paths));
			paths[npaths++] = argv[++i];
		} else if (strcmp(argv[i], "-t") == 0)
			timing = true;
		else
			break;
	}
	if (npaths == 0 || i >= argc) {
		fprintf(stderr, "usage: moat rules test [-t] -r PATH [-r PATH]... FILE...\n");
		free(paths);
		return 2;
	}
	r = rules_load(paths, npaths, &rep, &err);
	free(paths);
	if (r == NULL) {
		fprintf(stderr, "moat rules test: %s\n", err ? err : "cannot load");
		free(err);
		rules_report_free(&rep);
		return 1;
	}
	if (rep.hard)
		fprintf(stderr, "moat rules test: %u hard error(s) in the rules; `moat rules check` shows them\n",
		    rep.hard);
	rules_report_free(&rep);
	t0 = now_ms();
	bool one = argc - i == 1;
	for (; i < argc; i++) {
		struct rules_hits h;
		struct mime_msg *m;

		if (read_msg(argv[i], &msg) < 0) {
			fprintf(stderr, "moat rules test: %s: %s\n", argv[i], strerror(errno));
			rc = 1;
			continue;
		}
		m = mime_parse(msg.data, msg.len, NULL, &err);
		if (m == NULL) {
			fprintf(stderr, "moat rules test: %s: %s\n", argv[i], err ? err : "parse failed");
			free(err);
			err = NULL;
			rc = 1;
			continue;
		}
		if (rules_eval(r, m, msg.data, msg.len, &h) < 0) {
			fprintf(stderr, "moat rules test: %s: out of memory\n", argv[i]);
			mime_free(&m);
			rc = 1;
			continue;
		}
		nmsg++;
		if (one) {
			for (size_t k = 0; k < h.n; k++)
				printf("%6.2f %-28s %s\n", h.v[k].score, h.v[k].name, h.v[k].desc);
			printf("total %.2f, %zu hit(s)%s\n", h.total, h.n,
			    h.limit_hits ? ", regex limit reached" : "");
		} else {
			printf("%s\t%.2f\t", argv[i], h.total);
			for (size_t k = 0; k < h.n; k++)
				printf("%s%s", k ? "," : "", h.v[k].name);
			printf("\n");
		}
		rules_hits_free(&h);
		mime_free(&m);
	}
	if (timing) {
		uint64_t ms = now_ms() - t0;
		fprintf(stderr, "%zu messages in %llu ms: %.1f messages/s\n", nmsg,
		    (unsigned long long)ms, ms ? (double)nmsg * 1000.0 / (double)ms : 0.0);
	}
	buf_free(&msg);
	rules_free(&r);
	return rc;
}

int
cmd_rules(struct moat_conf *c, int argc, char **argv)
{
	static bool inited;

	(void)c;
	if (!inited) {
		mime_init();
		inited = true;
	}
	if (argc >= 2 && strcmp(argv[1], "check") == 0)
		return rules_check(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "test") == 0)
		return rules_test(argc - 1, argv + 1);
	fprintf(stderr, "usage: moat rules check [-v] [-l] PATH...\n"
	    "       moat rules test [-t] -r PATH [-r PATH]... FILE...\n");
	return 2;
}
