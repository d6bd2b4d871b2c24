/*
 * av.h - antivirus scanning of whole messages: libclamav in-process (one
 * engine shared read-only by every pool thread, rebuilt aside and swapped in
 * when the signature database changes) or clamd over its socket (INSTREAM).
 *
 * av_scan() is BLOCKING (CPU for libclamav, socket I/O for clamd): call it
 * from pool threads or the CLI, never from an event loop.  It never reports
 * a message clean when it could not scan it: a missing engine, an empty
 * database, a clamd that is down or slow all give AV_ERROR, and the caller
 * applies av_conf.on_error (tempfail, or accept with a symbol).
 */
#ifndef MOAT_AV_H
#define MOAT_AV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

enum av_backend { AV_BACKEND_LIBCLAMAV, AV_BACKEND_CLAMD };
enum av_action  { AV_ACTION_REJECT, AV_ACTION_QUARANTINE };      /* on AV_INFECTED */
enum av_onerror { AV_ONERROR_TEMPFAIL, AV_ONERROR_ACCEPT };      /* on AV_ERROR */
enum av_result  { AV_CLEAN, AV_INFECTED, AV_ERROR };

struct av_conf {
	enum av_backend backend;
	const char *database;           /* libclamav: signature directory (or one file) */
	const char *tmpdir;             /* libclamav temporary files; NULL: $TMPDIR */
	const char *clamd;              /* clamd: "/path", "unix:/path", "host:port", "[v6]:port" */
	uint64_t    max_scansize;       /* bytes scanned per message (archives unpacked) */
	uint64_t    max_filesize;       /* bytes of one file inside the message */
	unsigned    max_files;          /* files unpacked per message */
	unsigned    max_recursion;      /* archive/mail nesting */
	unsigned    max_scantime_ms;    /* libclamav time per message */
	bool        heuristics;         /* libclamav heuristic alerts (broken exe, ...) */
	bool        alert_exceeds_max;  /* a message beyond the limits is INFECTED
	                                 * (Heuristics.Limits.Exceeded.*), not CLEAN */
	bool        require_db;         /* av_open fails when no signature loads */
	unsigned    reload_interval;    /* seconds between av_reload_check() looks; 0: every call */
	unsigned    clamd_timeout_ms;   /* connect + send + verdict, as one deadline */
	size_t      clamd_chunk;        /* bytes per INSTREAM chunk */
	enum av_action  action;         /* for the caller (the filter engine) */
	enum av_onerror on_error;       /* for the caller */
};

#define AV_CONF_DEFAULT { \
	.backend = AV_BACKEND_LIBCLAMAV, .database = "/var/lib/clamav", \
	.tmpdir = NULL, .clamd = "/run/clamav/clamd.ctl", \
	.max_scansize = 100u * 1024 * 1024, .max_filesize = 25u * 1024 * 1024, \
	.max_files = 10000, .max_recursion = 16, .max_scantime_ms = 120000, \
	.heuristics = false, .alert_exceeds_max = false, .require_db = false, .reload_interval = 60, \
	.clamd_timeout_ms = 30000, .clamd_chunk = 64 * 1024, \
	.action = AV_ACTION_REJECT, .on_error = AV_ONERROR_TEMPFAIL }

struct av_stats {
	unsigned           signatures;  /* of the engine in use; 0 if none */
	long long          db_age;      /* seconds since the newest database file changed; -1 unknown */
	time_t             loaded_at;   /* when the engine in use was built; 0 if none */
	unsigned           generation;  /* engines swapped in so far */
	unsigned long long scans, infected, errors;
	unsigned long long reloads, reload_failures;
};

struct av;

/* libclamav: loads and compiles the database before it returns.  NULL with
 * *err (malloc'ed) on a bad configuration or, when require_db, on a database
 * that does not load.  Without require_db a database that does not load
 * gives an av whose scans return AV_ERROR until a reload succeeds; *err then
 * carries the warning (malloc'ed; the caller logs and frees it).  The
 * strings of the conf are copied. */
struct av *av_open(const struct av_conf *, char **err);

/* scan one message (raw, as received).  virname gets the signature name on
 * AV_INFECTED ("" otherwise); *err (malloc'ed) the reason on AV_ERROR.
 * Thread-safe; may run while a reload is built and swapped. */
enum av_result av_scan(struct av *, const char *data, size_t len,
    char *virname, size_t vsz, char **err);

/* libclamav: if force, or if the database changed since the engine in use
 * was built (and reload_interval has passed since the last look), build a
 * new engine in a background thread and swap it in when it compiles; scans
 * in flight keep the old one, which is freed after the last of them.
 * Returns 1 if a rebuild started, 0 if none was needed or one is already
 * running, -1 on error (errno).  Never blocks on the build.  clamd: 0. */
int av_reload_check(struct av *, bool force);
/* wait for a rebuild started by av_reload_check(); 0 if it swapped a new
 * engine in (or none was running), -1 if it failed (*err malloc'ed, may be
 * NULL).  For tests and the CLI. */
int av_reload_wait(struct av *, char **err);

void av_stats(struct av *, struct av_stats *);
const char *av_result_name(enum av_result);

/* waits for a running rebuild, then frees everything; *avp = NULL */
void av_close(struct av **avp);

#endif
