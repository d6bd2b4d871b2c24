/*
 * log.c - logging to stderr or syslog(LOG_MAIL), one line per call.
 */
#include "config.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <sys/time.h>
#include <unistd.h>

static bool log_stderr = true;
static int  log_level = LOG_LVL_INFO;
static char log_ident[32] = "moat";

void
log_init(const char *ident, bool to_stderr, int facility)
{
	log_stderr = to_stderr;
	log_setident(ident);
	if (!to_stderr)
		openlog(log_ident, LOG_PID | LOG_NDELAY, facility);
	tzset();
}

void
log_setident(const char *ident)
{
	snprintf(log_ident, sizeof(log_ident), "%s", ident);
}

void
log_setlevel(int level)
{
	log_level = level;
}

int
log_getlevel(void)
{
	return log_level;
}

static void
vlog(int lvl, int err, const char *fmt, va_list ap)
{
	static const int prio[] = { LOG_CRIT, LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG };
	static const char *names[] = { "crit", "warn", "notice", "info", "debug" };
	char msg[4096];
	int n;

	if (lvl > log_level)
		return;
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	if (n < 0)
		return;
	if (err && (size_t)n < sizeof(msg))
		snprintf(msg + n, sizeof(msg) - n, ": %s", strerror(err));
	if (log_stderr) {
		struct timeval tv;
		struct tm tm;
		char ts[32];
		gettimeofday(&tv, NULL);
		localtime_r(&tv.tv_sec, &tm);
		strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
		fprintf(stderr, "%s.%03ld %s[%d]: %s: %s\n", ts, (long)tv.tv_usec / 1000,
		    log_ident, (int)getpid(), names[lvl], msg);
	} else
		syslog(prio[lvl], "%s", msg);
}

#define LOGFN(name, lvl, witherr) \
void name(const char *fmt, ...) { \
	int e = errno; va_list ap; va_start(ap, fmt); \
	vlog(lvl, witherr ? e : 0, fmt, ap); va_end(ap); errno = e; }

LOGFN(log_crit, LOG_LVL_CRIT, 0)
LOGFN(log_warn, LOG_LVL_WARN, 1)
LOGFN(log_warnx, LOG_LVL_WARN, 0)
LOGFN(log_notice, LOG_LVL_NOTICE, 0)
LOGFN(log_info, LOG_LVL_INFO, 0)
LOGFN(log_debug, LOG_LVL_DEBUG, 0)

void
fatal(const char *fmt, ...)
{
	int e = errno;
	va_list ap;
	va_start(ap, fmt);
	vlog(LOG_LVL_CRIT, e, fmt, ap);
	va_end(ap);
	exit(1);
}

void
fatalx(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog(LOG_LVL_CRIT, 0, fmt, ap);
	va_end(ap);
	exit(1);
}

char *
log_esc(const char *in, size_t len, char *out, size_t outsz)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0, i;

	if (outsz == 0)
		return out;
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)in[i];
		size_t need = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? 1 : 4;
		if (o + need + 4 > outsz) {     /* room for "..." + NUL */
			if (o + 4 <= outsz) {
				memcpy(out + o, "...", 3);
				o += 3;
			}
			break;
		}
		if (need == 1)
			out[o++] = (char)c;
		else {
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	out[o] = '\0';
	return out;
}

const char *
esc(const char *in)
{
	static __thread char bufs[4][1024];
	static __thread int slot;
	char *b = bufs[slot++ & 3];
	if (in == NULL)
		return "";
	return log_esc(in, strlen(in), b, sizeof(bufs[0]));
}
