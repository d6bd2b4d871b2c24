/*
 * privs.h - who the worker runs as.  When started as root, the master binds
 * the listeners, then the worker switches to the `user` directive's
 * account (default: "moat" if it exists, else "nobody").  The moat CLI uses
 * the same resolution to chown files it creates as root.
 */
#ifndef MOAT_PRIVS_H
#define MOAT_PRIVS_H

#include <stdbool.h>
#include <sys/types.h>

struct moat_conf;

/* false with *err if the user does not exist.  When not root, returns the
 * current uid/gid (no switch happens). */
bool privs_run_user(const struct moat_conf *, uid_t *, gid_t *, char *name, size_t namesz, char **err);
/* setgroups/setgid/setuid to the run user; fatal on failure.  No-op unless root. */
void privs_drop(const struct moat_conf *);
/* chown path to the run user when we are root (ignore errors otherwise) */
void privs_chown(const struct moat_conf *, const char *path);

#endif
