/*
 * cmd_user.c - `moat user add|del|passwd|list`: the local users database
 * (<state-dir>/moat.db, lib/users.c) and their Maildirs
 * (<state-dir>/mail/<domain>/<local>/, store/maildir.c).
 *
 * Passwords come from stdin, never from argv (argv is visible to every
 * local user in ps): on a terminal we prompt twice with echo off, otherwise
 * one line is read and its newline stripped.  Only domains configured as
 * `deliver store` can have users.  When run as root, everything created
 * (state-dir, moat.db and its -wal/-shm, the Maildirs) is given to the run
 * user, so the unprivileged worker can read and deliver.
 *
 * Runs in: the admin's shell.  Untrusted input: none beyond the admin's
 * arguments, which go through users_canon().
 */
#include "config.h"
#include "cli.h"
#include "conf.h"
#include "maildir.h"
#include "privs.h"
#include "users.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#define PASSWORD_MAX    1024

/* terminal state restored if the admin hits ^C at the password prompt */
static struct termios user_saved_tio;
static volatile sig_atomic_t user_tio_saved;

static void
user_restore_tty(int sig)
{
	if (user_tio_saved)
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &user_saved_tio);
	if (sig) {
		signal(sig, SIG_DFL);
		raise(sig);
	}
}

/* read one line from fp into out; strip "\n" / "\r\n"; false on EOF/too long */
static bool
user_read_line(FILE *fp, char *out, size_t outsz)
{
	size_t n;

	if (fgets(out, (int)outsz, fp) == NULL)
		return false;
	n = strlen(out);
	if (n > 0 && out[n - 1] == '\n')
		out[--n] = '\0';
	else if (!feof(fp)) {
		/* longer than the buffer */
		explicit_bzero(out, outsz);
		errno = EMSGSIZE;
		return false;
	}
	if (n > 0 && out[n - 1] == '\r')
		out[--n] = '\0';
	return true;
}

static bool
user_prompt(const char *prompt, char *out, size_t outsz)
{
	struct termios tio;
	struct sigaction sa, oint, oterm;
	bool ok;

	if (tcgetattr(STDIN_FILENO, &user_saved_tio) < 0)
		return false;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = user_restore_tty;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, &oint);
	sigaction(SIGTERM, &sa, &oterm);
	user_tio_saved = 1;
	tio = user_saved_tio;
	tio.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK | ECHONL);
	tcsetattr(STDIN_FILENO, TCSAFLUSH, &tio);
	fputs(prompt, stderr);
	fflush(stderr);
	ok = user_read_line(stdin, out, outsz);
	fputc('\n', stderr);
	user_restore_tty(0);
	user_tio_saved = 0;
	sigaction(SIGINT, &oint, NULL);
	sigaction(SIGTERM, &oterm, NULL);
	return ok;
}

/* the new password into out; false with a message printed */
static bool
user_get_password(char *out, size_t outsz)
{
	if (isatty(STDIN_FILENO)) {
		char again[PASSWORD_MAX];
		bool same;
		if (!user_prompt("Password: ", out, outsz) ||
		    !user_prompt("Password (again): ", again, sizeof(again))) {
			fprintf(stderr, "moat: no password read\n");
			return false;
		}
		same = strcmp(out, again) == 0;
		explicit_bzero(again, sizeof(again));
		if (!same) {
			fprintf(stderr, "moat: the passwords do not match\n");
			return false;
		}
	} else if (!user_read_line(stdin, out, outsz)) {
		fprintf(stderr, "moat: %s\n", errno == EMSGSIZE ?
		    "password too long" : "no password on stdin (give it as one line)");
		return false;
	}
	if (out[0] == '\0') {
		fprintf(stderr, "moat: empty password refused\n");
		return false;
	}
	return true;
}

static void
user_chown_cb(const char *path, void *arg)
{
	privs_chown(arg, path);
}

/* mkdir -p the state-dir, giving what we create to the run user */
static int
user_state_dir(const struct moat_conf *c)
{
	char tmp[PATH_MAX];
	char *p;

	if (moat_strlcpy(tmp, c->state_dir, sizeof(tmp)) >= sizeof(tmp)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (p = tmp + 1; ; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char save = *p;
		*p = '\0';
		if (mkdir(tmp, 0755) == 0)
			privs_chown(c, tmp);
		else if (errno != EEXIST)
			return -1;
		*p = save;
		if (save == '\0')
			break;
	}
	return 0;
}

/* open (creating) <state-dir>/moat.db, owned by the run user */
static struct users *
user_open_db(const struct moat_conf *c)
{
	static const char *const sfx[] = { "-wal", "-shm" };
	char path[PATH_MAX], side[PATH_MAX];
	struct users *u;
	char *err = NULL;
	int fd;

	if (user_state_dir(c) < 0) {
		fprintf(stderr, "moat: state-dir %s: %s\n", c->state_dir, strerror(errno));
		return NULL;
	}
	conf_path(c, "moat.db", path, sizeof(path));
	/* create the file first and hand it over: SQLite running as root then
	 * gives its -wal and -shm files the same owner */
	if ((fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0) {
		fprintf(stderr, "moat: %s: %s\n", path, strerror(errno));
		return NULL;
	}
	close(fd);
	privs_chown(c, path);
	if ((u = users_open(path, true, &err)) == NULL) {
		fprintf(stderr, "moat: %s\n", err ? err : "cannot open the users database");
		free(err);
		return NULL;
	}
	for (size_t i = 0; i < ARRAY_SIZE(sfx); i++) {
		if ((size_t)snprintf(side, sizeof(side), "%s%s", path, sfx[i]) < sizeof(side) &&
		    access(side, F_OK) == 0)
			privs_chown(c, side);
	}
	return u;
}

/* canonical address of argv, checked against the config; NULL and a message if unusable */
static bool
user_address(const struct moat_conf *c, const char *arg, bool need_store, char *out, size_t outsz)
{
	const struct domain_conf *d;
	char plain[256];
	const char *delim = c->recipient_delimiter;

	if (!users_canon(arg, NULL, plain, sizeof(plain))) {
		fprintf(stderr, "moat: \"%s\" is not a valid address (local@domain, no '/', "
		    "no leading '.', at most 254 bytes)\n", arg);
		return false;
	}
	if (!users_canon(arg, delim, out, outsz))
		return false;
	if (strcmp(plain, out) != 0) {
		fprintf(stderr, "moat: \"%s\": the local part contains the recipient delimiter "
		    "\"%s\" (mail to %s reaches %s already)\n", arg, delim, plain, out);
		return false;
	}
	if (need_store) {
		const char *dom = strchr(out, '@') + 1;
		d = conf_find_domain(c, dom);
		if (d == NULL) {
			fprintf(stderr, "moat: %s is not a domain of this server (%s); add "
			    "\"domain %s deliver store\" to the configuration first\n", dom, c->path, dom);
			return false;
		}
		if (d->deliver != DELIVER_STORE) {
			fprintf(stderr, "moat: mail for %s is relayed to %s, not stored here; "
			    "users can only be added to \"deliver store\" domains\n", dom,
			    d->relay.name ? d->relay.name : "another server");
			return false;
		}
	}
	return true;
}

static void
user_maildir_path(const struct moat_conf *c, const char *canon, char *out, size_t outsz)
{
	char sub[PATH_MAX];
	const char *at = strchr(canon, '@');

	snprintf(sub, sizeof(sub), "mail/%s/%.*s", at + 1, (int)(at - canon), canon);
	conf_path(c, sub, out, outsz);
}

static int
user_add(const struct moat_conf *c, const char *arg)
{
	char canon[256], pw[PASSWORD_MAX], box[PATH_MAX];
	struct users *u;
	char *err = NULL;
	int r;

	if (!user_address(c, arg, true, canon, sizeof(canon)))
		return 1;
	if (!user_get_password(pw, sizeof(pw))) {
		explicit_bzero(pw, sizeof(pw));
		return 1;
	}
	if ((u = user_open_db(c)) == NULL) {
		explicit_bzero(pw, sizeof(pw));
		return 1;
	}
	r = users_add(u, canon, pw, &err);
	explicit_bzero(pw, sizeof(pw));
	users_close(u);
	if (r < 0) {
		fprintf(stderr, "moat: %s\n", err);
		free(err);
		return 1;
	}
	user_maildir_path(c, canon, box, sizeof(box));
	if (maildir_create(box, user_chown_cb, (void *)c) < 0) {
		fprintf(stderr, "moat: user %s added, but its mailbox %s could not be created: %s "
		    "(delivery will try again)\n", canon, box, strerror(errno));
		return 1;
	}
	printf("user %s added, mailbox %s\n", canon, box);
	return 0;
}

static int
user_del(const struct moat_conf *c, const char *arg)
{
	char canon[256], box[PATH_MAX];
	struct users *u;
	char *err = NULL;
	int r;

	if (!user_address(c, arg, false, canon, sizeof(canon)))
		return 1;
	if ((u = user_open_db(c)) == NULL)
		return 1;
	r = users_del(u, canon, &err);
	users_close(u);
	if (r < 0) {
		fprintf(stderr, "moat: %s\n", err);
		free(err);
		return 1;
	}
	user_maildir_path(c, canon, box, sizeof(box));
	printf("user %s deleted", canon);
	if (access(box, F_OK) == 0)
		printf("; its mailbox %s is kept (remove it yourself if it is no longer wanted)", box);
	printf("\n");
	return 0;
}

static int
user_passwd(const struct moat_conf *c, const char *arg)
{
	char canon[256], pw[PASSWORD_MAX];
	struct users *u;
	char *err = NULL;
	int r;

	if (!user_address(c, arg, false, canon, sizeof(canon)))
		return 1;
	if ((u = user_open_db(c)) == NULL)
		return 1;
	if ((r = users_exists(u, canon, NULL)) != 1) {
		if (r == 0)
			fprintf(stderr, "moat: no such user %s\n", canon);
		else
			fprintf(stderr, "moat: users database error\n");
		users_close(u);
		return 1;
	}
	if (!user_get_password(pw, sizeof(pw))) {
		explicit_bzero(pw, sizeof(pw));
		users_close(u);
		return 1;
	}
	r = users_passwd(u, canon, pw, &err);
	explicit_bzero(pw, sizeof(pw));
	users_close(u);
	if (r < 0) {
		fprintf(stderr, "moat: %s\n", err);
		free(err);
		return 1;
	}
	printf("password of %s changed\n", canon);
	return 0;
}

struct user_list_arg {
	const char *domain;     /* NULL: all */
	int shown;
};

static void
user_list_cb(const char *addr, long long created, void *arg)
{
	struct user_list_arg *la = arg;
	const char *at = strchr(addr, '@');
	char when[32];
	struct tm tm;
	time_t t = (time_t)created;

	if (la->domain && (at == NULL || ascii_strcasecmp(at + 1, la->domain) != 0))
		return;
	if (gmtime_r(&t, &tm) == NULL || strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		moat_strlcpy(when, "-", sizeof(when));
	printf("%s\t%s\n", addr, when);
	la->shown++;
}

static int
user_list(const struct moat_conf *c, const char *domain)
{
	struct user_list_arg la = { domain, 0 };
	char path[PATH_MAX];
	struct users *u;
	char *err = NULL;
	int n;

	conf_path(c, "moat.db", path, sizeof(path));
	if (access(path, F_OK) < 0 && errno == ENOENT)
		return 0;                       /* no database yet: no users */
	if ((u = users_open(path, false, &err)) == NULL) {
		fprintf(stderr, "moat: %s\n", err ? err : "cannot open the users database");
		free(err);
		return 1;
	}
	n = users_list(u, user_list_cb, &la);
	users_close(u);
	if (n < 0) {
		fprintf(stderr, "moat: users database error\n");
		return 1;
	}
	return 0;
}

static void
user_usage(void)
{
	fprintf(stderr, "usage: moat [-c FILE] user add ADDRESS      (password on stdin)\n"
	    "       moat [-c FILE] user del ADDRESS\n"
	    "       moat [-c FILE] user passwd ADDRESS   (password on stdin)\n"
	    "       moat [-c FILE] user list [DOMAIN]\n");
}

int
cmd_user(struct moat_conf *c, int argc, char **argv)
{
	uid_t uid;
	gid_t gid;
	char name[64];
	char *err = NULL;

	if (argc < 2) {
		user_usage();
		return 2;
	}
	/* as root, refuse early if the run user does not exist: we could not
	 * give it the files we are about to create */
	if (geteuid() == 0 && !privs_run_user(c, &uid, &gid, name, sizeof(name), &err)) {
		fprintf(stderr, "moat: %s\n", err);
		free(err);
		return 1;
	}
	umask(077);
	if (strcmp(argv[1], "add") == 0 && argc == 3)
		return user_add(c, argv[2]);
	if (strcmp(argv[1], "del") == 0 && argc == 3)
		return user_del(c, argv[2]);
	if (strcmp(argv[1], "passwd") == 0 && argc == 3)
		return user_passwd(c, argv[2]);
	if (strcmp(argv[1], "list") == 0 && argc <= 3)
		return user_list(c, argc == 3 ? argv[2] : NULL);
	user_usage();
	return 2;
}
