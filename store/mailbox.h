/*
 * mailbox.h - the mailbox layer of the built-in store, shared by the POP3
 * and IMAP servers (and later the web console).  It reads the Maildir++
 * that local delivery (store/maildir.c) writes and keeps what IMAP needs in
 * a small index file per folder, <folder>/moat-uidlist:
 *
 *     moat-uidlist 1 <uidvalidity> <uidnext>
 *     <uid> <internaldate> <size> <vsize> <base name>
 *     ...
 *
 * (base name = the file name without its ":2,<flags>" info suffix).  It is
 * rewritten atomically (tmp + rename) under an flock on
 * <folder>/moat-uidlist.lock; every change to a folder (sync, flag
 * renames, expunge, append, copy) holds that lock, so concurrent sessions
 * and local delivery (which only ever link()s into new/) neither lose nor
 * duplicate a message.  Flags live in the Maildir info suffix ":2,DFRST".
 *
 * EVERY FUNCTION HERE BLOCKS (file I/O, flock, password hashing): call it
 * from a pool thread, never on the event loop.  A struct mbox belongs to
 * one session; the session must not touch it while a job using it is out.
 * The login throttle (mbox_throttle_*) is the exception: loop thread only.
 */
#ifndef MOAT_MAILBOX_H
#define MOAT_MAILBOX_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

struct moat_conf;
struct buf;

/* system flags (Maildir info letters D F R S T) */
#define MBOX_F_SEEN     0x01u   /* S */
#define MBOX_F_ANSWERED 0x02u   /* R */
#define MBOX_F_FLAGGED  0x04u   /* F */
#define MBOX_F_DELETED  0x08u   /* T */
#define MBOX_F_DRAFT    0x10u   /* D */
#define MBOX_F_RECENT   0x20u   /* session-only: moved from new/ by this mbox */
/* keywords: info letters a..z, named per folder in its dovecot-keywords
 * file ("0 $Forwarded" ...), as Dovecot keeps them */
#define MBOX_KW_MAX     26
#define MBOX_F_KW(i)    (0x40u << (i))
#define MBOX_F_KWMASK   0xffffffc0u
#define MBOX_F_STORED   (0x1fu | MBOX_F_KWMASK)  /* the ones kept in the file name */
#define MBOX_KW_LEN     64      /* bytes of a keyword name */

#define MBOX_NAME_MAX   200     /* bytes of an IMAP folder name */

struct mbox_msg {
	uint32_t uid;
	unsigned flags;
	time_t  idate;              /* INTERNALDATE: the file's mtime at first sight */
	off_t   size;               /* bytes on disk (LF line ends) */
	off_t   vsize;              /* bytes with CRLF line ends (RFC822.SIZE) */
	char   *file;               /* current name in cur/ (base + ":2,..." info) */
	size_t  baselen;            /* length of the base part of file */
};

struct mbox {
	char    root[PATH_MAX];     /* the user's Maildir++ root (INBOX) */
	char    dir[PATH_MAX];      /* this folder's directory */
	char    name[MBOX_NAME_MAX + 1]; /* IMAP name: "INBOX", "Sent", "a.b" */
	uint32_t uidvalidity;
	uint32_t uidnext;
	uint32_t first_recent;      /* UIDs from here: not yet claimed as \Recent */
	struct mbox_msg *msgs;      /* sorted by uid */
	size_t  nmsgs;
	bool    readonly;
	char   *kw[MBOX_KW_MAX];    /* keyword names by index, NULL = unused */
	long long kw_mtime;         /* of dovecot-keywords when read (ns) */
	struct mbox_cache *cache;   /* the envelope-field cache, loaded lazily */
	/* cur/, new/ and the index as the last full sync saw them (mbox_sync
	 * skips the rescan while they are unchanged, as Dovecot does) */
	struct mbox_stamp {
		long long t[3];     /* mtimes (ns) */
		long long ino[3], size[3];
		bool    set, recent;
	} stamp;
};

/*
 * Log in: verify the password (users database, thread-local handle) and
 * find the user's Maildir root.  1 ok (canon = canonical address, root =
 * its Maildir, created if missing), 0 wrong user or password, -1 error.
 */
int  mbox_login(const struct moat_conf *, const char *user, const char *pass,
    char *canon, size_t canonsz, char *root, size_t rootsz);

/* validate an IMAP folder name ('.' separated Maildir++); INBOX in any case is fine */
bool mbox_name_valid(const char *name, size_t len);
/* "INBOX" (any case) -> true */
bool mbox_is_inbox(const char *name);

/* open a folder (NULL with *err "no such mailbox" etc.); does not sync */
struct mbox *mbox_open(const char *root, const char *name, char **err);
void mbox_close(struct mbox *);

/*
 * Sync with the disk: new/ -> cur/ (these get MBOX_F_RECENT when
 * take_recent), new files get UIDs in arrival order, vanished ones are
 * dropped, the index is rewritten if anything changed.  0 or -1 (*err).
 */
int  mbox_sync(struct mbox *, bool take_recent, char **err);

/* binary search by uid; NULL if not there */
struct mbox_msg *mbox_find(struct mbox *, uint32_t uid);
/* index of the first message with uid >= u (nmsgs if none) */
size_t mbox_lower(const struct mbox *, uint32_t u);

/* open the message file for reading (follows renames); fd or -1 (errno) */
int  mbox_msg_open(struct mbox *, struct mbox_msg *);
/* read the whole message (LF line ends as stored) into out; 0 or -1 */
int  mbox_msg_read(struct mbox *, struct mbox_msg *, struct buf *out);
/* read at most the header section (up to and incl. the empty line); 0 or -1 */
int  mbox_msg_read_header(struct mbox *, struct mbox_msg *, struct buf *out);

/*
 * The envelope-field cache, <folder>/moat-cache: for each UID the header
 * fields ENVELOPE and the common SEARCH keys need (mbox_cached_field), as
 * they appear in the message (LF line ends, folded lines kept, the empty
 * line at the end), so FETCH ENVELOPE and SEARCH FROM/SUBJECT/... do not
 * open every file.  Records are appended (checksummed, under the folder
 * lock), keyed by UID and a hash of the file's base name (message files
 * never change and a base name keeps its UID, so flag renames need
 * nothing; expunged UIDs are dropped when the file is compacted; a file
 * of another UIDVALIDITY is not used).  A torn tail is cut off, a foreign
 * file rewritten, at most 8 KiB per message; deleting it is always safe.
 */
/* those fields of the message's header into out (appended); 0 or -1 (gone) */
int  mbox_msg_envhdr(struct mbox *, struct mbox_msg *, struct buf *out);
/* true for a header field name that mbox_msg_envhdr returns */
bool mbox_cached_field(const char *name);
/* write what was read since the last flush into the cache file */
void mbox_cache_flush(struct mbox *);

/* keyword name -> bit, reading dovecot-keywords; with create, a new name
 * takes a free index (written under the folder's lock).  0 when unknown
 * (and not created) or all 26 are taken. */
unsigned mbox_keyword_bit(struct mbox *, const char *name, bool create);
/* re-read dovecot-keywords if it changed */
void mbox_keywords_load(struct mbox *);

/* set the stored flags of one message to `flags` (rename); 0, 1 gone, -1 error */
int  mbox_set_flags(struct mbox *, struct mbox_msg *, unsigned flags);
/* change flags of many messages under one lock: uids[n]; mode '+', '-', '=' */
int  mbox_store(struct mbox *, const uint32_t *uids, size_t n, char mode, unsigned flags, char **err);
/* unlink the messages; 0 or -1 */
int  mbox_expunge(struct mbox *, const uint32_t *uids, size_t n, char **err);

/*
 * Add a message (CRLF or LF text; stored with LF) with flags and an
 * internal date (0 = now).  *uid gets its UID.  0 or -1 (*err).
 */
int  mbox_append(struct mbox *, const char *data, size_t len, unsigned flags, time_t idate,
    uint32_t *uid, char **err);
/* copy messages (hard links when possible) into dst; new uids into out[n]; 0 or -1 */
int  mbox_copy(struct mbox *src, const uint32_t *uids, size_t n, struct mbox *dst,
    uint32_t *out, char **err);

/* folders */
struct mbox_folder {
	char    name[MBOX_NAME_MAX + 1];
	const char *special;        /* "\\Sent" ... or NULL */
	bool    subscribed;
	bool    children;
};
/* every folder, INBOX first; count or -1 (*out freed by the caller) */
int  mbox_folders(const char *root, struct mbox_folder **out, char **err);
int  mbox_create(const char *root, const char *name, char **err);
int  mbox_delete(const char *root, const char *name, char **err);
int  mbox_rename(const char *root, const char *from, const char *to, char **err);
int  mbox_subscribe(const char *root, const char *name, bool on, char **err);
/* "\\Sent" for Sent etc., else NULL */
const char *mbox_special_use(const char *name);

struct mbox_status {
	uint32_t messages, recent, unseen, uidnext, uidvalidity;
	unsigned long long size;
};
int  mbox_get_status(const char *root, const char *name, struct mbox_status *, char **err);

/* flags <-> Maildir info letters */
unsigned mbox_info_flags(const char *file);

/*
 * SASL PLAIN (RFC 4616) from its base64 form (pure, no I/O): "authzid NUL
 * authcid NUL passwd".  An authzid other than empty or authcid is refused.
 * true with user/pass filled (NUL-terminated), false if malformed.
 */
bool mbox_sasl_plain(const char *b64, size_t len, char *user, size_t usersz, char *pass, size_t passsz);
/* strict base64 decoding; false on bad input or if out is too small */
bool mbox_b64_decode(const char *in, size_t len, unsigned char *out, size_t outsz, size_t *outlen);

/*
 * Failed-login throttle (loop thread only, per worker): delay in ms a
 * client IP must wait before its next login answer (0 = none).
 */
unsigned mbox_throttle_delay(const char *ip);
/* share the worker's failed-login throttle (lib/ratelimit.h), the one SMTP
 * AUTH uses: failures in any protocol count together, and after
 * auth-max-failures the address is refused for auth-block-time */
struct rl_auth;
void mbox_throttle_use(struct rl_auth *);
/* true when logins from ip are refused for now (only with a shared throttle) */
bool mbox_throttle_refused(const char *ip);
void mbox_throttle_fail(const char *ip);
void mbox_throttle_ok(const char *ip);

#endif
