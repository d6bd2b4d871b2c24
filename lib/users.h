/*
 * users.h - the local users database (<state-dir>/moat.db, SQLite, WAL).
 * One row per mailbox address; the password is a crypt(3) hash (yescrypt
 * via libcrypt).  The same users log in to SMTP AUTH, POP3 and IMAP.
 * Each thread opens its own handle.  Lookups are indexed point queries.
 */
#ifndef MOAT_USERS_H
#define MOAT_USERS_H

#include <stdbool.h>
#include <stddef.h>

struct users;

/* path: the database file.  create: make it (and the schema) if missing. */
struct users *users_open(const char *path, bool create, char **err);
void users_close(struct users *);

/*
 * Canonical form of a mailbox address: domain lowercased, local part
 * lowercased, "+extension" removed when delim is a one-character string.
 * Returns false if addr is not local@domain or out is too small.
 */
bool users_canon(const char *addr, const char *delim, char *out, size_t outsz);

/* 1 exists, 0 no such user, -1 error (address is canonicalised first) */
int  users_exists(struct users *, const char *addr, const char *delim);
/* 1 password matches, 0 no (or no such user), -1 error */
int  users_verify(struct users *, const char *addr, const char *password);
/* 0 ok, -1 error with *err (exists already, bad address, db error) */
int  users_add(struct users *, const char *addr, const char *password, char **err);
int  users_del(struct users *, const char *addr, char **err);
int  users_passwd(struct users *, const char *addr, const char *password, char **err);
/* calls cb(address, created_unix_time, arg) in address order; count or -1 */
int  users_list(struct users *, void (*cb)(const char *, long long, void *), void *arg);

#endif
