/*
 * log.h - one line per event.  stderr (with -f) or syslog(LOG_MAIL).
 * log_warn appends strerror(errno); log_warnx does not.  Client-supplied
 * text must go through log_esc() before it reaches a format string argument.
 * Thread-safe.
 */
#ifndef MOAT_LOG_H
#define MOAT_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_LVL_CRIT, LOG_LVL_WARN, LOG_LVL_NOTICE, LOG_LVL_INFO, LOG_LVL_DEBUG };

void log_init(const char *ident, bool to_stderr, int syslog_facility);
void log_setlevel(int level);
int  log_getlevel(void);
void log_setident(const char *ident);

#define LOGFMT(a, b) __attribute__((format(printf, a, b)))
void log_crit(const char *, ...) LOGFMT(1, 2);
void log_warn(const char *, ...) LOGFMT(1, 2);    /* + ": strerror(errno)" */
void log_warnx(const char *, ...) LOGFMT(1, 2);
void log_notice(const char *, ...) LOGFMT(1, 2);
void log_info(const char *, ...) LOGFMT(1, 2);
void log_debug(const char *, ...) LOGFMT(1, 2);
void fatal(const char *, ...) LOGFMT(1, 2) __attribute__((noreturn));
void fatalx(const char *, ...) LOGFMT(1, 2) __attribute__((noreturn));

/*
 * Escape untrusted bytes for a log line: printable ASCII except '"' and '\'
 * is copied, everything else becomes \xHH.  Truncates with "..." to fit
 * outsz (always NUL-terminated).  Returns out.
 */
char *log_esc(const char *in, size_t len, char *out, size_t outsz);
/* convenience: NUL-terminated input, static-size thread-local rotating buffers */
const char *esc(const char *in);

#endif
