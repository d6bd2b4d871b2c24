/*
 * conf.h - moat.conf: parsed once (by the master), validated as a whole,
 * then shared read-only.  A reload builds a new struct and swaps it.
 * Errors are collected in one pass as "FILE:LINE: message" lines.
 * See docs/moat.conf.5 for the grammar and every directive.
 */
#ifndef MOAT_CONF_H
#define MOAT_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <netinet/in.h>

struct buf;

enum listen_kind {
	LISTEN_SMTP,
	LISTEN_SUBMISSION,
	LISTEN_SMTPS,
	LISTEN_IMAP,
	LISTEN_IMAPS,
	LISTEN_POP3,
	LISTEN_POP3S,
	LISTEN_MILTER,
	LISTEN_HTTP,
};

enum tls_mode { TLS_NONE, TLS_STARTTLS, TLS_IMPLICIT };
enum auth_mode { AUTH_NONE, AUTH_OPTIONAL, AUTH_REQUIRED };

struct listen_conf {
	enum listen_kind kind;
	char   *spec;                   /* "127.0.0.1:2525" as written */
	struct sockaddr_storage ss;
	socklen_t sslen;
	enum tls_mode tls;
	enum auth_mode auth;
	bool    tls_set, auth_set;      /* given explicitly (else defaults by kind) */
	struct cidr *allow, *deny;      /* allow=/deny= client networks (deny wins; an
	                                 * allow list admits only its networks) */
	size_t  nallow, ndeny;
	int     fd;                     /* bound socket, set by the master; -1 */
	const char *file;
	int     line;
};

enum deliver_kind { DELIVER_STORE, DELIVER_RELAY };
enum relay_proto  { RELAY_SMTP, RELAY_LMTP };
/* TLS towards a relay destination (Postfix: smtp_tls_security_level) */
enum relay_tls { RTLS_NONE, RTLS_OPPORTUNISTIC, RTLS_REQUIRED, RTLS_VERIFY };

struct relay_dest {
	enum relay_proto proto;
	char   *host;                   /* NULL for a unix socket */
	char   *port;                   /* "25" */
	char   *unix_path;              /* lmtp:unix:/path or smtp:unix:/path */
	char   *name;                   /* canonical "lmtp://10.0.0.5:24", the destination key */
	enum relay_tls tls;             /* default opportunistic (none for unix sockets) */
	char   *ca_file;                /* for tls=verify; NULL = the system CA store */
};

struct domain_conf {
	char   *name;                   /* lowercase, no trailing dot */
	enum deliver_kind deliver;
	struct relay_dest relay;        /* DELIVER_RELAY */
	/* the action thresholds for mail to this domain: the global ones,
	 * or "action tag|quarantine|reject N domain NAME" */
	double  th_tag, th_quarantine, th_reject;
};

struct cidr {
	int     family;                 /* AF_INET or AF_INET6 */
	unsigned char addr[16];
	int     bits;
};

struct tls_cert_conf {
	char   *cert;                   /* PEM, full chain */
	char   *key;
	const char *file;
	int     line;
};

enum rate_what { RATE_CONNECTIONS, RATE_MESSAGES, RATE_RECIPIENTS };
enum rate_per  { RATE_PER_IP, RATE_PER_USER };
struct rate_rule {                      /* ratelimit WHAT N/DURATION per ip|user */
	enum rate_what what;
	enum rate_per per;
	long long limit;
	long long window;               /* seconds */
};

struct moat_conf {
	char   *path;                   /* file name, or "(embedded default)" */
	char   *hostname;
	char   *state_dir;              /* absolute path */
	char   *user;                   /* NULL: "moat" if it exists, else "nobody" (when root) */
	char   *pid_file;               /* NULL: <state-dir>/moatd.pid */
	int     log_level;              /* LOG_LVL_* */
	int     syslog_facility;
	int     threads;                /* thread pool size */

	struct listen_conf *listens;
	size_t  nlistens;
	struct domain_conf *domains;
	size_t  ndomains;

	/* TLS (server side): the first certificate is the default, the others
	 * are chosen by SNI from their subject alternative names */
	struct tls_cert_conf *tls_certs;
	size_t  ntls_certs;
	int     tls_min_version;        /* TLS1_2_VERSION or TLS1_3_VERSION */
	char   *tls_ciphers;            /* TLS <= 1.2 cipher list (OpenSSL syntax) */
	char   *tls_ciphersuites;       /* TLS 1.3 suites */
	bool    auth_allow_plaintext;   /* offer AUTH/LOGIN without TLS (default no) */
	struct domain_conf *smarthost;  /* relay-authenticated URL: route for other domains */
	bool    submission_sender_check;/* MAIL FROM must be the authenticated user's */
	bool    submission_hide_client; /* no client IP/HELO in Received for authenticated mail */
	struct rate_rule *rates;
	size_t  nrates;

	/* the filter engine (docs/filter-engine.md) */
	double  action_tag;             /* total score thresholds; 0 = off */
	double  action_quarantine;
	double  action_reject;
	char  **rules_paths;            /* "rules PATH" (file, glob or directory), repeatable */
	size_t  nrules_paths;
	char   *av_database;            /* "antivirus database DIR ..." (libclamav) */
	char   *av_clamd;               /* "antivirus clamd ADDRESS ..." */
	bool    av_quarantine;          /* action quarantine (default reject) */
	bool    av_accept_on_error;     /* on-error accept (default tempfail) */
	bool    attachment_policy;      /* block dangerous attachments (default yes) */
	bool    bayes;                  /* use <state-dir>/bayes.lmdb when trained (default yes) */
	char   *lists_dir;              /* "lists DIR": DIR/allow and DIR/block */
	long long quarantine_retention; /* seconds; 0 = keep */
	long long quarantine_max_size;  /* bytes; 0 = no cap */
	long long quarantine_digest;    /* seconds between digests to recipients; 0 = none */
	long long quarantine_maintenance; /* seconds between purge/digest runs */
	long long auth_max_failures;    /* per client IP in auth-failure-window, then refused */
	long long auth_failure_window;
	long long auth_block_time;

	/* DNS for the filters (lib/resolver.c) */
	char   *resolver;               /* "HOST:PORT" upstream; NULL = /etc/resolv.conf */
	long long resolver_timeout;     /* seconds per query */
	char   *authserv_id;            /* Authentication-Results authserv-id; NULL = hostname */
	struct score_override {         /* "score SYMBOL N" */
		char   *symbol;
		double  score;
	} *scores;
	size_t  nscores;
	/* "filter-stage NAME rcpt|data": filters evaluated at the first RCPT
	 * (Postfix's smtpd_delay_reject point) instead of the end of data */
	char  **early_filters;
	size_t  nearly_filters;
	/* network filters (#4) -- dnsbl.c, helo.c */
	struct dnsbl_list {             /* "dnsbl|dnswl|uribl ZONE score N [returns A=N,...]" */
		enum { DNSL_BL, DNSL_WL, DNSL_URI } kind;
		char   *zone;           /* lowercase, no trailing dot */
		double  score;          /* any 127.0.0.x answer without a mapping */
		struct dnsbl_ret {      /* returns 127.0.0.2=N */
			unsigned char addr[4];
			double  score;
		} *rets;
		size_t  nrets;
	} *dnsbls;
	size_t  ndnsbls;
	bool    helo_checks;            /* HELO syntax and FCrDNS symbols (default yes) */
	/* network filters (#4) -- spf.c */
	bool    spf;                    /* SPF checks (filters/spf.c) */
	/* network filters (#4) -- dkim.c, dmarc.c */
	bool    dkim;                   /* verify DKIM signatures (default yes) */
	long long dkim_min_key_bits;    /* RSA keys below this fail (default 1024) */
	bool    dmarc;                  /* evaluate DMARC (default yes) */
	enum dmarc_action {             /* what a DMARC p=reject / p=quarantine failure does */
		DMARC_ACT_DEFAULT = 0,  /* reject for p=reject, quarantine for p=quarantine */
		DMARC_ACT_REJECT, DMARC_ACT_QUARANTINE, DMARC_ACT_SCORE,
	} dmarc_reject_action, dmarc_quarantine_action;
	/* network filters (#4) -- geoip.c, greylist.c */
	char   *geoip_path;             /* "geoip PATH": Country or City mmdb; NULL = off */
	char   *geoip_asn_path;         /* "geoip-asn PATH": ASN mmdb; NULL = off */
	bool    greylist;               /* greylist at RCPT (default no) */
	long long greylist_delay;       /* seconds before a retry passes */
	long long greylist_expire;      /* an unconfirmed triplet waits this long for its retry */
	long long greylist_allow_time;  /* a confirmed triplet passes this long after its last use */
	long long greylist_auto_clients;/* networks passing this many triplets skip greylisting; 0 = off */
	long long smtp_pregreet_wait;   /* seconds the 220 waits on smtp listeners; 0 = off */
	bool    smtp_pregreet_score;    /* early talker: PREGREET symbol (else refused) */
	/* milter (#9) */
	char   *milter_subject_prefix;  /* tag: prepended to Subject; NULL = none */
	bool    milter_discard;         /* milter-reject-action discard */
	int     milter_socket_mode;     /* unix socket mode | MILTER_SOCKET_MODE_SET; 0 = 0660 */
#define MILTER_SOCKET_MODE_SET 0x10000
	/* operations (#10) */
	char   *http_token;             /* bearer token for the http listener; NULL = none */
	char   *http_token_file;        /* the token read from this file (first line) */
	bool    journal;                /* the event journal <state-dir>/journal.db (default yes) */
	long long journal_retention;    /* seconds of events kept */
	char   *log_json;               /* JSON-lines copy of the journal events; NULL = none */
	long long alert_interval;       /* seconds between alert checks */
	long long alert_queue_size;     /* messages queued; 0 = off */
	long long alert_queue_age;      /* seconds, oldest queued message; 0 = off */
	long long alert_deferral_rate;  /* percent of delivery attempts deferred; 0 = off */
	long long alert_deferral_min;   /* attempts in the window before the rate counts */
	long long alert_disk_free;      /* bytes free in the state-dir file system; 0 = off */
	long long alert_av_age;         /* seconds since the AV database changed; 0 = off */
	long long alert_worker_restarts;/* worker restarts since the master started; 0 = off */
	bool    alert_email;            /* mail alerts to the postmaster (default no) */
	char   *alert_webhook;          /* http://HOST:PORT/PATH, POSTed a JSON body */

	/* SMTP server limits */
	char   *smtp_banner;            /* text after "220 hostname " */
	long long smtp_max_line;        /* command line, bytes incl. CRLF */
	long long smtp_max_data_line;   /* message text line, bytes not counting CR LF */
	long long message_size_limit;   /* bytes; SIZE= and DATA/BDAT */
	long long smtp_max_rcpts;       /* per message; 452 4.5.3 beyond */
	long long smtp_max_messages;    /* per session */
	long long smtp_max_bad_commands;/* then 421 and close */
	long long smtp_max_received;    /* Received headers before 554 5.4.6 loop */
	long long smtp_timeout;         /* seconds waiting for a command */
	long long smtp_data_timeout;    /* seconds between data reads */
	long long smtp_stress_timeout;  /* idle timeout under stress */
	long long smtp_max_sessions;    /* total concurrent */
	long long smtp_max_sessions_per_ip;
	long long smtp_max_header_size; /* bytes of header section */
	bool    smtp_reject_bare_lf;    /* false: Postfix 3.9 "normal"; true: "reject" */
	struct cidr *limit_exempt;      /* per-IP limits do not apply (default loopback) */
	size_t  nlimit_exempt;
	char   *recipient_delimiter;    /* "+" ; NULL/"" = none */
	bool    store_junk;             /* tagged spam to the user's Junk folder */
	char   *tag_subject_prefix;     /* tag: prepended to Subject; NULL = none */
	bool    bayes_autolearn;        /* learn from confident verdicts */
	double  bayes_autolearn_spam;   /* total without Bayes at or above: spam */
	double  bayes_autolearn_ham;    /* at or below: ham */

	/* queue and delivery */
	long long queue_retry_min;      /* seconds */
	long long queue_retry_max;
	long long queue_lifetime;
	long long bounce_lifetime;      /* for null-sender messages (bounces) */
	long long queue_scan_interval;
	long long relay_concurrency;    /* connections per destination */
	long long relay_connect_timeout;
	long long relay_command_timeout;
	long long relay_data_timeout;
	long long relay_max_messages_per_connection;
	char   *postmaster;             /* address for notices; default postmaster@hostname */
};

/*
 * Parse a file (path) or a string (name, text).  On any error returns NULL
 * and appends "FILE:LINE: message\n" lines to errs.
 */
struct moat_conf *conf_load(const char *path, struct buf *errs);
struct moat_conf *conf_load_string(const char *name, const char *text, struct buf *errs);
void conf_free(struct moat_conf *);

/*
 * Which file to use: -c FILE, else $MOAT_CONF, else SYSCONFDIR/moat/moat.conf
 * if it exists, else NULL (= the embedded default).
 */
const char *conf_default_path(const char *arg);
struct moat_conf *conf_load_default(const char *arg, struct buf *errs);
extern const char conf_embedded_default[];

/* exact, case-insensitive domain lookup; NULL if the domain is not ours */
const struct domain_conf *conf_find_domain(const struct moat_conf *, const char *domain);
/* the route for a recipient: its domain, else the relay-authenticated
 * smarthost (mail only authenticated users could submit, and DSNs), else NULL */
const struct domain_conf *conf_route(const struct moat_conf *, const char *domain);

/* parse "1.2.3.4/24", "::1", "10.0.0.0/8" */
bool cidr_parse(const char *, struct cidr *);
bool cidr_match(const struct cidr *, const struct sockaddr *);
bool cidr_list_match(const struct cidr *, size_t n, const struct sockaddr *);
/* listener access: true if the client may connect */
bool listen_admits(const struct listen_conf *, const struct sockaddr *);

const char *listen_kind_name(enum listen_kind);

/* state-dir sub-paths, built into buf of size PATH_MAX: conf_path(c, "spool/queue", out) */
void conf_path(const struct moat_conf *, const char *sub, char *out, size_t outsz);

#endif
