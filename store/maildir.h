/*
 * maildir.h - the Maildir++ writer of the built-in store.  A mailbox is a
 * directory with cur/ new/ tmp/ and the default folders .Sent .Drafts
 * .Trash .Junk (each a Maildir with a "maildirfolder" marker), as Dovecot
 * lays them out.  A message is written to tmp/ under a unique name
 * (<sec>.M<usec>P<pid>Q<n>.<host>), fsync'ed, linked into
 * new/<name>,S=<size>,W=<vsize> and new/ is fsync'ed before success is
 * reported.  S= is the file size, W= the size with CRLF line endings
 * (Dovecot's virtual size).  BLOCKING: call from a pool thread or the CLI.
 */
#ifndef MOAT_MAILDIR_H
#define MOAT_MAILDIR_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* default Maildir++ folders created with every mailbox */
extern const char *const maildir_default_folders[];   /* NULL-terminated, "Sent" ... */

/*
 * Create the mailbox at path (and its parents, mode 0700) with cur/ new/
 * tmp/, the default folders and a Dovecot "subscriptions" file.  Existing
 * parts are kept.  If created is not NULL, each directory/file actually
 * created is reported to it (e.g. to chown it).  0, or -1 with errno.
 */
int maildir_create(const char *path, void (*created)(const char *path, void *arg), void *arg);

/* true if path looks like a Maildir (has cur/ new/ tmp/) */
bool maildir_exists(const char *path);
/* a Maildir++ folder (ROOT/.NAME) with its maildirfolder marker */
int maildir_create_folder(const char *path);

/* a message being delivered */
struct maildir_msg {
	int     fd;
	char    dir[PATH_MAX];          /* mailbox root */
	char    base[256];              /* unique base name */
	char    tmppath[PATH_MAX];
	char    newname[320];           /* base,S=..,W=.. after commit */
	off_t   size;                   /* bytes written */
	off_t   vsize;                  /* size with every bare LF counted as CRLF */
	int     last;                   /* last byte written, -1 at start */
};

/* open tmp/<unique> in mailbox dir; 0 or -1 with errno */
int maildir_open(struct maildir_msg *, const char *dir);
/* append bytes as given (no conversion); 0 or -1 with errno */
int maildir_write(struct maildir_msg *, const void *, size_t);
/* fsync, link into new/, unlink tmp, fsync new/; 0 or -1 with errno (the tmp file is removed) */
int maildir_commit(struct maildir_msg *);
/* discard the tmp file */
void maildir_abort(struct maildir_msg *);

/* unique base name into out: <sec>.M<usec>P<pid>Q<n>.<host>; false if too small */
bool maildir_unique(char *out, size_t outsz);

/*
 * Convert CRLF to LF in in[0..len) into out (which must hold len bytes);
 * *pending_cr carries a CR at the end of one chunk to the next; call with
 * final=true on the last chunk to flush it.  Returns the bytes put in out
 * (plus at most one CR flushed at final, so out needs len + 1).
 */
size_t maildir_crlf_to_lf(const char *in, size_t len, char *out, bool *pending_cr, bool final);

#endif
