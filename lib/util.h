/*
 * util.h - small helpers shared by every moat program: checked allocation,
 * bounded string copies, number/duration/size parsing, time.
 * Runs in: every process. Untrusted input: parse_* take (ptr,len) and never
 * read past len.
 */
#ifndef MOAT_UTIL_H
#define MOAT_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <sys/types.h>
#include <time.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

void *xmalloc(size_t);
void *xcalloc(size_t, size_t);
void *xrealloc(void *, size_t);
void *xreallocarray(void *, size_t, size_t);
char *xstrdup(const char *);
char *xstrndup(const char *, size_t);
/* free *p and set it to NULL */
#define xfree(p) do { free(p); (p) = NULL; } while (0)

size_t moat_strlcpy(char *dst, const char *src, size_t size);
size_t moat_strlcat(char *dst, const char *src, size_t size);

/* ASCII-only, locale-independent */
int  ascii_strcasecmp(const char *, const char *);
int  ascii_strncasecmp(const char *, const char *, size_t);
void ascii_lower(char *);
bool ascii_prefix_ci(const char *s, size_t len, const char *prefix);

/* "30", "30s", "5m", "2h", "5d" -> seconds. -1 on error. */
long long parse_duration(const char *);
/* "1000", "64k", "50M", "1G" -> bytes. -1 on error. */
long long parse_size(const char *);
/* strict decimal, whole string, within [min,max]. false on error. */
bool parse_ll(const char *, long long min, long long max, long long *out);

/* monotonic and wall clock */
uint64_t now_ms(void);          /* CLOCK_MONOTONIC milliseconds */
uint64_t wall_us(void);         /* CLOCK_REALTIME microseconds */

/* fill with random bytes (getrandom; falls back to /dev/urandom) */
void random_bytes(void *, size_t);

/* RFC 5322 date for Received/Date headers into buf (>= 40 bytes) */
void rfc5322_date(time_t t, char *buf, size_t len);

/* write all / read all, retrying on EINTR; -1 on error */
ssize_t write_full(int fd, const void *, size_t);

/* open(dir) + fsync + close; 0 or -1 */
int fsync_dir(const char *path);
/* mkdir -p with mode; 0 or -1 (errno) */
int mkdir_p(const char *path, mode_t mode);

#endif
