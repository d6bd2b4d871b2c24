/*
 * moat.c - the admin command: `moat [-c FILE] GROUP ARGS...`.
 *
 * A command group is a row in cmd_groups[]: its name, its handler (which
 * gets the loaded config and its own argv) and a usage line.  The config
 * comes from -c FILE, $MOAT_CONF, SYSCONFDIR/moat/moat.conf or the embedded
 * default (conf_load_default); errors are printed as FILE:LINE: message.
 * Commands that act on the running daemon go through cli_control(): one
 * request line over the UNIX socket <state-dir>/control.sock, one reply
 * line ("ok ..." or "error: ..."), then the daemon closes.
 *
 * Runs in: the admin's shell, often as root.  Untrusted input: none (the
 * reply of our own daemon is still read with a bound).
 */
#include "config.h"
#include "cli.h"
#include "buf.h"
#include "conf.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#define CLI_REPLY_MAX   (4 * 1024 * 1024)       /* bytes of one reply line */
#define CLI_TIMEOUT     120                     /* seconds waiting for the daemon */

struct cmd_group {
	const char *name;
	int (*handler)(struct moat_conf *, int, char **);
	const char *usage;
};

static const struct cmd_group cmd_groups[] = {
	{ "user",  cmd_user,
	  "user add ADDRESS         add a mailbox user (password on stdin)\n"
	  "  user del ADDRESS         remove a user (the mailbox is kept)\n"
	  "  user passwd ADDRESS      change a password (password on stdin)\n"
	  "  user list [DOMAIN]       list users" },
	{ "queue", cmd_queue,
	  "queue list | flush | delete ID   show and act on the delivery queue" },
	{ "bayes", cmd_bayes,
	  "bayes train --spam PATH --ham PATH | classify FILE... | stats | forget --spam|--ham FILE\n"
	  "  bayes expire [--days N] | export > FILE | import < FILE   the Bayes token store" },
	{ "av", cmd_av,
	  "av scan [--database DIR | --clamd ADDR] FILE...   scan files for viruses\n"
	  "  av info [--database DIR]   signatures loaded, database age" },
	{ "lists", cmd_lists,
	  "lists add|del allow|block TYPE VALUE   edit the allow/block lists (TYPE: ip, helo,\n"
	  "           sender, from, rcpt)\n"
	  "  lists show" },
	{ "rules", cmd_rules,
	  "rules check [-v] PATH...  load rule files, report what was skipped and why\n"
	  "  rules test [-t] -r PATH... FILE...   the rule hits of messages" },
	{ "quarantine", cmd_quarantine,
	  "quarantine list [--rcpt A] [--from A] [--since T] [--json] ... | show ID [--raw]\n"
	  "  quarantine release ID...|--all FILTER [--rcpt A] [--learn-ham] | delete ID... [--learn-spam]\n"
	  "  quarantine purge [--older-than D] [--max-size S] | check   the quarantine store" },
	{ "spf", cmd_spf,
	  "spf check --ip IP [--helo NAME] [--sender ADDR]   evaluate SPF (RFC 7208) as moatd does" },
	{ "status", cmd_status,
	  "status                   ask the running moatd how it is doing" },
	{ "report", cmd_report,
	  "report [--since DURATION|DATE] [--json]   traffic summary from the event journal" },
	{ "trace", cmd_trace,
	  "trace [--json] QUEUEID|MESSAGE-ID|ADDRESS   every event of a message, in order" },
};

static void
usage(FILE *f)
{
	size_t i;

	fprintf(f, "usage: moat [-c FILE] GROUP ARGS...\n"
	    "  -c FILE   configuration file (default: $MOAT_CONF, %s/moat/moat.conf,\n"
	    "            or the embedded default)\n"
	    "  -h        this help\n"
	    "commands:\n", SYSCONFDIR);
	for (i = 0; i < ARRAY_SIZE(cmd_groups); i++)
		fprintf(f, "  %s\n", cmd_groups[i].usage);
}

char *
cli_control(const struct moat_conf *c, const char *line)
{
	struct sockaddr_un sun;
	struct timeval tv = { CLI_TIMEOUT, 0 };
	struct buf req = BUF_INIT, rep = BUF_INIT;
	char path[sizeof(sun.sun_path) + 64];
	char chunk[4096];
	int fd, e;

	conf_path(c, "control.sock", path, sizeof(path));
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (moat_strlcpy(sun.sun_path, path, sizeof(sun.sun_path)) >= sizeof(sun.sun_path)) {
		errno = ENAMETOOLONG;
		return NULL;
	}
	if (strchr(line, '\n') || strchr(line, '\r')) {
		errno = EINVAL;
		return NULL;
	}
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return NULL;
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0)
		goto fail;

	buf_adds(&req, line);
	buf_addc(&req, '\n');
	for (size_t off = 0; off < req.len; ) {
		ssize_t n = send(fd, req.data + off, req.len - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto fail;
		off += (size_t)n;
	}
	for (;;) {
		ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				errno = ETIMEDOUT;
			goto fail;
		}
		if (n == 0)
			break;
		char *nl = memchr(chunk, '\n', (size_t)n);
		buf_add(&rep, chunk, nl ? (size_t)(nl - chunk) : (size_t)n);
		if (nl)
			break;
		if (rep.len > CLI_REPLY_MAX) {
			errno = EMSGSIZE;
			goto fail;
		}
	}
	close(fd);
	buf_free(&req);
	if (rep.len == 0) {
		buf_free(&rep);
		errno = ECONNRESET;
		return NULL;
	}
	if (rep.data[rep.len - 1] == '\r')
		rep.data[--rep.len] = '\0';
	return buf_steal(&rep);
fail:
	e = errno;
	close(fd);
	buf_free(&req);
	buf_free(&rep);
	errno = e;
	return NULL;
}

int
main(int argc, char **argv)
{
	const char *cfile = NULL;
	struct buf errs = BUF_INIT;
	struct moat_conf *c;
	size_t i;
	int ch, rc;

	log_init("moat", true, LOG_MAIL);
	log_setlevel(LOG_LVL_WARN);
	while ((ch = getopt(argc, argv, "+c:h")) != -1) {
		switch (ch) {
		case 'c':
			cfile = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[0], "help") == 0) {
		usage(stdout);
		return 0;
	}
	for (i = 0; i < ARRAY_SIZE(cmd_groups); i++)
		if (strcmp(argv[0], cmd_groups[i].name) == 0)
			break;
	if (i == ARRAY_SIZE(cmd_groups)) {
		fprintf(stderr, "moat: unknown command \"%s\"\n", argv[0]);
		usage(stderr);
		return 2;
	}

	if ((c = conf_load_default(cfile, &errs)) == NULL) {
		if (errs.len)
			fputs(errs.data, stderr);
		else
			fprintf(stderr, "moat: cannot load the configuration\n");
		buf_free(&errs);
		return 1;
	}
	buf_free(&errs);
	rc = cmd_groups[i].handler(c, argc, argv);
	conf_free(c);
	return rc;
}
