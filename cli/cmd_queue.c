/*
 * cmd_queue.c - `moat queue list [--json] | flush | delete ID...`.
 *
 * list and delete work directly on the spool files (the daemon may be
 * down): list reads every queue/QID envelope and its spool/state/QID
 * (format owned by gateway/queue.c: "MOAT-STATE 1", "attempts N",
 * "next T", "rcpt IDX STATUS ATTEMPTS LAST DSN DSTATUS REMOTE REPLY").
 * delete takes the same flock(LOCK_EX|LOCK_NB) the queue manager holds
 * while delivering, so a message in delivery is refused, not torn.
 * flush asks the running daemon over the control socket.
 *
 * Runs in: the admin's shell.  Untrusted input: reply text stored in the
 * state files came from remote servers: printed through esc().
 */
#include "config.h"
#include "cli.h"
#include "buf.h"
#include "conf.h"
#include "log.h"
#include "spool.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#define QSTATE_LINE 2048

struct rstat {
	char    status[16];
	int     attempts;
	char    reply[QSTATE_LINE];
};

static void
state_dir_path(const struct moat_conf *c, const char *qid, char *out, size_t outsz)
{
	char dir[PATH_MAX];

	conf_path(c, "spool/state", dir, sizeof(dir));
	snprintf(out, outsz, "%s/%s", dir, qid);
}

/* read the recipients' status; missing file: every recipient pending */
static void
read_state(const struct moat_conf *c, const char *qid, struct rstat *r, size_t n,
    long long *next, int *attempts)
{
	char path[PATH_MAX + 64], line[QSTATE_LINE];
	FILE *f;

	for (size_t i = 0; i < n; i++) {
		moat_strlcpy(r[i].status, "pending", sizeof(r[i].status));
		r[i].attempts = 0;
		r[i].reply[0] = '\0';
	}
	*next = 0;
	*attempts = 0;
	state_dir_path(c, qid, path, sizeof(path));
	if ((f = fopen(path, "re")) == NULL)
		return;
	if (fgets(line, sizeof(line), f) == NULL || strcmp(line, "MOAT-STATE 1\n") != 0) {
		fclose(f);
		return;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		char *nl = strchr(line, '\n');
		if (nl == NULL) {
			int ch;
			while ((ch = fgetc(f)) != EOF && ch != '\n')
				;
			continue;
		}
		*nl = '\0';
		long long a, b;
		if (sscanf(line, "attempts %lld", &a) == 1)
			*attempts = (int)a;
		else if (sscanf(line, "next %lld", &a) == 1)
			*next = a;
		else if (!strncmp(line, "rcpt ", 5)) {
			char stat[16], dsn[16], dstat[16], remote[128];
			unsigned long long idx;
			int off = 0;
			if (sscanf(line + 5, "%llu %15s %lld %lld %15s %15s %127s %n", &idx, stat, &a, &b,
			    dsn, dstat, remote, &off) < 7 || off == 0 || idx >= n)
				continue;
			moat_strlcpy(r[idx].status, stat, sizeof(r[idx].status));
			r[idx].attempts = (int)a;
			moat_strlcpy(r[idx].reply, line + 5 + off, sizeof(r[idx].reply));
		}
	}
	fclose(f);
}

struct qids {
	char  (*v)[QID_SIZE];
	size_t n, cap;
};

static void
collect(const char *qid, void *arg)
{
	struct qids *q = arg;

	if (q->n == q->cap) {
		q->cap = q->cap ? q->cap * 2 : 64;
		q->v = xreallocarray(q->v, q->cap, QID_SIZE);
	}
	moat_strlcpy(q->v[q->n++], qid, QID_SIZE);
}

static int
cmp_qid(const void *a, const void *b)
{
	return strcmp(a, b);
}

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

static int
queue_list(struct moat_conf *c, bool json)
{
	struct qids q = { NULL, 0, 0 };
	size_t shown = 0;

	if (spool_list(collect, &q) < 0) {
		fprintf(stderr, "moat: cannot read the spool: %s\n", strerror(errno));
		return 1;
	}
	if (q.n > 1)
		qsort(q.v, q.n, QID_SIZE, cmp_qid);
	if (json)
		printf("[");
	else if (q.n > 0)
		printf("%-18s  %-19s  %10s  %s\n", "QUEUE ID", "ARRIVAL", "SIZE", "SENDER / RECIPIENTS");
	for (size_t i = 0; i < q.n; i++) {
		struct envelope env;
		char *err = NULL;
		long long next;
		int attempts;

		if (spool_read_envelope(q.v[i], &env, &err) < 0) {
			/* delivered and removed while we listed it, or unreadable */
			if (err && strcmp(err, strerror(ENOENT)) != 0)
				fprintf(stderr, "moat: %s: %s\n", q.v[i], err);
			free(err);
			continue;
		}
		struct rstat *rs = xcalloc(env.nrcpts, sizeof(*rs));
		read_state(c, env.qid, rs, env.nrcpts, &next, &attempts);
		char date[64];
		struct tm tm;
		time_t t = env.arrival;
		localtime_r(&t, &tm);
		strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
		if (json) {
			printf("%s\n  {\"qid\": ", shown ? "," : "");
			json_str(stdout, env.qid);
			printf(", \"arrival\": %lld, \"size\": %lld, \"sender\": ", (long long)env.arrival,
			    (long long)env.data_len);
			json_str(stdout, env.sender);
			printf(", \"attempts\": %d, \"next_attempt\": %lld, \"recipients\": [", attempts, next);
			for (size_t k = 0; k < env.nrcpts; k++) {
				printf("%s{\"address\": ", k ? ", " : "");
				json_str(stdout, env.rcpts[k].addr);
				printf(", \"status\": ");
				json_str(stdout, rs[k].status);
				printf(", \"attempts\": %d, \"reply\": ", rs[k].attempts);
				json_str(stdout, rs[k].reply);
				printf("}");
			}
			printf("]}");
		} else {
			printf("%-18s  %-19s  %10lld  <%s>\n", env.qid, date, (long long)env.data_len,
			    esc(env.sender));
			for (size_t k = 0; k < env.nrcpts; k++) {
				printf("%-18s  %-19s  %10s    <%s> %s", "", "", "", esc(env.rcpts[k].addr),
				    rs[k].status);
				if (rs[k].attempts)
					printf(" attempts=%d", rs[k].attempts);
				if (rs[k].reply[0])
					printf(" (%s)", esc(rs[k].reply));
				printf("\n");
			}
		}
		shown++;
		free(rs);
		envelope_clear(&env);
	}
	if (json)
		printf("%s]\n", shown ? "\n" : "");
	else if (shown == 0)
		printf("the queue is empty\n");
	else
		printf("-- %zu message(s)\n", shown);
	free(q.v);
	return 0;
}

static int
queue_delete(struct moat_conf *c, int argc, char **argv)
{
	int rc = 0;

	for (int i = 0; i < argc; i++) {
		const char *qid = argv[i];
		char path[PATH_MAX], spath[PATH_MAX + 64];
		int fd;

		if (!spool_valid_qid(qid)) {
			fprintf(stderr, "moat: %s: not a queue id\n", esc(qid));
			rc = 1;
			continue;
		}
		spool_queue_path(qid, path, sizeof(path));
		if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
			fprintf(stderr, "moat: %s: %s\n", qid, errno == ENOENT ? "no such message in the queue" :
			    strerror(errno));
			rc = 1;
			continue;
		}
		if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
			fprintf(stderr, "moat: %s: being delivered right now; try again later\n", qid);
			close(fd);
			rc = 1;
			continue;
		}
		if (spool_remove(qid) < 0 && errno != ENOENT) {
			fprintf(stderr, "moat: %s: cannot remove: %s\n", qid, strerror(errno));
			close(fd);
			rc = 1;
			continue;
		}
		state_dir_path(c, qid, spath, sizeof(spath));
		(void)unlink(spath);
		close(fd);
		printf("%s: deleted\n", qid);
	}
	return rc;
}

int
cmd_queue(struct moat_conf *c, int argc, char **argv)
{
	char *err = NULL;

	if (argc < 2) {
		fprintf(stderr, "usage: moat queue list [--json] | flush | delete ID...\n");
		return 2;
	}
	if (!strcmp(argv[1], "flush")) {
		if (argc != 2) {
			fprintf(stderr, "usage: moat queue flush\n");
			return 2;
		}
		char *rep = cli_control(c, "queue flush");
		if (rep == NULL) {
			fprintf(stderr, "moat: moatd is not running (control socket: %s)\n", strerror(errno));
			return 1;
		}
		bool good = !strncmp(rep, "ok", 2);
		printf("%s\n", esc(rep));
		free(rep);
		return good ? 0 : 1;
	}
	if (spool_init(c, &err) < 0) {
		fprintf(stderr, "moat: %s\n", err);
		free(err);
		return 1;
	}
	if (!strcmp(argv[1], "list")) {
		bool json = argc == 3 && !strcmp(argv[2], "--json");
		if (argc > 3 || (argc == 3 && !json)) {
			fprintf(stderr, "usage: moat queue list [--json]\n");
			return 2;
		}
		return queue_list(c, json);
	}
	if (!strcmp(argv[1], "delete")) {
		if (argc < 3) {
			fprintf(stderr, "usage: moat queue delete ID...\n");
			return 2;
		}
		return queue_delete(c, argc - 2, argv + 2);
	}
	fprintf(stderr, "usage: moat queue list [--json] | flush | delete ID...\n");
	return 2;
}
