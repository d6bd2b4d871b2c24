/*
 * privs.c - run-user resolution and privilege drop.
 */
#include "config.h"
#include "privs.h"
#include "conf.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

bool
privs_run_user(const struct moat_conf *c, uid_t *uid, gid_t *gid, char *name, size_t namesz,
    char **err)
{
	struct passwd *pw;

	if (geteuid() != 0) {
		*uid = geteuid();
		*gid = getegid();
		pw = getpwuid(*uid);
		moat_strlcpy(name, pw ? pw->pw_name : "?", namesz);
		return true;
	}
	if (c->user) {
		pw = getpwnam(c->user);
		if (pw == NULL) {
			char msg[512];
			snprintf(msg, sizeof(msg), "user \"%s\" does not exist (create it with "
			    "\"adduser --system --group %s\" or change the user directive)", c->user, c->user);
			*err = xstrdup(msg);
			return false;
		}
	} else if ((pw = getpwnam("moat")) == NULL && (pw = getpwnam("nobody")) == NULL) {
		*err = xstrdup("neither user \"moat\" nor \"nobody\" exists; set the user directive");
		return false;
	}
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
	moat_strlcpy(name, pw->pw_name, namesz);
	return true;
}

void
privs_drop(const struct moat_conf *c)
{
	uid_t uid;
	gid_t gid;
	char name[64];
	char *err = NULL;

	if (geteuid() != 0)
		return;
	if (!privs_run_user(c, &uid, &gid, name, sizeof(name), &err))
		fatalx("%s", err);
	if (uid == 0) {
		log_warnx("privs: the worker runs as root (user %s); set the user directive", name);
		return;
	}
	if (setgroups(1, &gid) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0)
		fatal("privs: cannot switch to user %s", name);
	if (setuid(0) == 0)
		fatalx("privs: could regain root after dropping privileges");
}

void
privs_chown(const struct moat_conf *c, const char *path)
{
	uid_t uid;
	gid_t gid;
	char name[64];
	char *err = NULL;

	if (geteuid() != 0)
		return;
	if (!privs_run_user(c, &uid, &gid, name, sizeof(name), &err)) {
		free(err);
		return;
	}
	if (chown(path, uid, gid) < 0)
		log_warn("chown %s", path);
}
