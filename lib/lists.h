/*
 * lists.h - the allow and block lists (lists/allow, lists/block under the
 * `lists DIR` directive).  One entry per line, "TYPE VALUE":
 *
 *   ip      192.0.2.7 | 198.51.100.0/24 | 2001:db8::/32
 *   helo    host.example.com                 (exact, case-insensitive)
 *   sender  user@example.com | example.com   (an address, or a domain that
 *                                             also matches its subdomains)
 *   from    example.com                      (the header From domain, and
 *                                             subdomains)
 *   rcpt    user@example.net | example.net   (like sender)
 *
 * "#" starts a comment.  A block hit refuses (the client IP at connect,
 * the others at their command); an allow hit makes the verdict accept
 * (viruses are still refused).  Lists are re-read when a file changes.
 * Runs in the worker (loop and pool threads read a loaded set; reloads
 * swap a reference-counted set).
 */
#ifndef MOAT_LISTS_H
#define MOAT_LISTS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

enum list_type { LT_IP, LT_HELO, LT_SENDER, LT_FROM, LT_RCPT, LT_N };
enum list_kind { LK_ALLOW, LK_BLOCK };

struct lists;

/* load DIR/allow and DIR/block (missing files are empty lists); NULL with
 * *err as "FILE:LINE: message" on a bad line */
struct lists *lists_load(const char *dir, char **err);
void lists_ref(struct lists *);
void lists_unref(struct lists *);
/* true if a file changed since the set was loaded */
bool lists_changed(const struct lists *);

bool lists_match_ip(const struct lists *, enum list_kind, const struct sockaddr *);
/* LT_HELO exact; LT_SENDER/LT_RCPT address or domain suffix; LT_FROM domain suffix */
bool lists_match(const struct lists *, enum list_kind, enum list_type, const char *value);

/* CLI edits: add or remove "TYPE VALUE" in DIR/allow or DIR/block,
 * atomically (tmp + rename).  0, or -1 with *err. */
int lists_edit(const char *dir, enum list_kind, bool add, const char *type, const char *value,
    char **err);
bool lists_type_parse(const char *, enum list_type *);
const char *lists_type_name(enum list_type);

#endif
