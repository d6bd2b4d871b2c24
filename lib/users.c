/* placeholder until the users database lands */
#include "config.h"
#include "users.h"
#include "util.h"
#include <string.h>
struct users { int x; };
struct users *users_open(const char *path, bool create, char **err) { *err = xstrdup("users db not built yet"); return NULL; }
void users_close(struct users *u) {}
bool users_canon(const char *addr, const char *delim, char *out, size_t outsz) { return moat_strlcpy(out, addr, outsz) < outsz; }
int users_exists(struct users *u, const char *addr, const char *delim) { return -1; }
int users_verify(struct users *u, const char *addr, const char *pw) { return -1; }
int users_add(struct users *u, const char *a, const char *p, char **err) { return -1; }
int users_del(struct users *u, const char *a, char **err) { return -1; }
int users_passwd(struct users *u, const char *a, const char *p, char **err) { return -1; }
int users_list(struct users *u, void (*cb)(const char *, long long, void *), void *arg) { return -1; }
