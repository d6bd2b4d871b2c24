/*
 * helo.h - HELO syntax and forward-confirmed reverse DNS (filters/helo.c),
 * exposed for the tests and for an early (HELO-stage) caller.
 */
#ifndef MOAT_HELO_H
#define MOAT_HELO_H

#include <stdbool.h>
#include <stddef.h>

struct resolver;

/* what is wrong with a HELO/EHLO argument: the symbol name, or NULL when
 * it is fine.  loopback: the client is 127.0.0.0/8 or ::1 (a HELO of
 * "localhost" is then normal). */
const char *helo_syntax(const char *helo, bool loopback);

enum helo_rdns { HELO_RDNS_OK, HELO_RDNS_NONE, HELO_RDNS_MISMATCH, HELO_RDNS_TEMPFAIL };
#define HELO_RDNS_MAX_NAMES 5   /* PTR names checked forward */

/* BLOCKING: FCrDNS for ip: its PTR names (at most HELO_RDNS_MAX_NAMES),
 * then A or AAAA of each in one batch, all within one resolver-timeout;
 * OK when one of them has ip, and
 * name gets that name.  why gets a detail for the other results. */
enum helo_rdns helo_fcrdns(struct resolver *, const char *ip, char *name, size_t namesz,
    char *why, size_t whysz);
/* 127.0.0.0/8, ::1, ::ffff:127.0.0.0/104 */
bool helo_is_loopback(const char *ip);

#endif
