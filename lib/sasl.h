/*
 * sasl.h - server side of the SASL mechanisms for SMTP AUTH (RFC 4954),
 * POP3 AUTH (RFC 5034) and IMAP AUTHENTICATE: PLAIN (RFC 4616), LOGIN
 * (draft-murchison-sasl-login), CRAM-MD5 (RFC 2195) and SCRAM-SHA-256
 * (RFC 7677, RFC 5802; no channel binding, no -PLUS variant).
 *
 * A struct sasl_server is one authentication exchange: a state machine
 * without I/O.  The caller feeds it each client response exactly as
 * received (the base64 text without CRLF) and sends back what it returns:
 *
 *   AUTH mech [ir]      sv = sasl_server_new(mech, hostname);
 *                       st = sasl_server_step(sv, users, ir or NULL, len, &out);
 *   SASL_CONTINUE       send "334 " out (out may be "", an empty challenge),
 *                       read a line, sasl_server_step(sv, users, line, len, &out)
 *   SASL_OK             235 2.7.0; sasl_server_authenticated(sv) is the user
 *   SASL_FAILED         535 5.7.8 (wrong password, unknown user, refused authzid)
 *   SASL_BAD_PROTOCOL   501 5.5.2 (bad base64, malformed message, over-long)
 *   SASL_CANCELLED      501 5.0.0 (the client sent "*")
 *   SASL_TEMPFAIL       454 4.7.0 (users database unavailable)
 * Every status other than SASL_CONTINUE ends the exchange; free sv then.
 *
 * Input conventions: in == NULL means "no initial response" (AUTH with one
 * argument) and is only valid on the first step.  On the first step "="
 * is the empty initial response (RFC 4954).  An empty line (len 0) is an
 * empty response.  "*" cancels.  Anything else must be strict base64
 * (sasl_crypto.h) of at most SASL_MAX_B64 characters.
 *
 * SCRAM-SHA-256 ends with the server-final message ("v=" ServerSignature):
 * SMTP, POP3 and IMAP cannot carry data on their success reply, so it is
 * returned as a SASL_CONTINUE challenge after the proof was verified; the
 * client answers with an empty line and only then the step returns
 * SASL_OK.  (Callers therefore never see SASL_OK with data.)
 *
 * Names and passwords: no SASLprep normalisation.  Names and passwords are
 * compared as the bytes sent; ASCII control characters (0x00-0x1f, 0x7f)
 * and the UTF-8 encoded C1 controls (U+0080-U+009F), which SASLprep
 * prohibits, are refused (SASL_FAILED); other non-ASCII bytes pass through
 * unnormalised, so a non-ASCII password must be typed in the normalisation
 * form it was set in.  User names are mailbox addresses, looked up in their
 * canonical form (users_canon) and returned in it on success.
 *
 * Authorization identities: an authzid (PLAIN, SCRAM "a=") that differs
 * from the authentication identity is refused: nobody may act for someone
 * else.  An authzid equal to it (also after canonicalisation) is accepted.
 *
 * Timing: a failed exchange costs the same whether or not the user exists
 * or has the secret the mechanism needs (PLAIN/LOGIN: one crypt(3) hash
 * either way, see users_verify; CRAM-MD5/SCRAM: the same HMACs over dummy
 * secrets, and SCRAM hands an unknown user a stable fake salt so repeated
 * attempts do not reveal that it is made up; the fake salt derives from
 * a per-process random key, so it changes when moatd restarts while real
 * salts do not -- an observer across restarts could tell).  Users without stored
 * challenge secrets (created before they existed) fail CRAM-MD5 and SCRAM.
 *
 * Threads: sasl_server_step is BLOCKING (crypt(3) for PLAIN/LOGIN, SQLite
 * reads): call it from a pool thread.  One sasl_server must not be used by
 * two threads at once; different ones are independent.
 */
#ifndef MOAT_SASL_H
#define MOAT_SASL_H

#include <stdbool.h>
#include <stddef.h>

struct users;
struct user_secrets;

#define SASL_MAX_B64        12288   /* longest client response accepted (base64 chars) */
#define SASL_NAME_MAX       255     /* longest user name / authzid (bytes) */
#define SASL_PASSWORD_MAX   1024    /* longest password (bytes) */
#define SASL_NONCE_MAX      256     /* longest SCRAM client nonce */

enum sasl_mech {
	SASL_PLAIN,
	SASL_LOGIN,
	SASL_CRAM_MD5,
	SASL_SCRAM_SHA_256,
};

/* mechanism name as in AUTH/EHLO (ASCII case-insensitive); false if unknown */
bool        sasl_mech_lookup(const char *name, size_t len, enum sasl_mech *out);
const char *sasl_mech_name(enum sasl_mech);
/* true for PLAIN and LOGIN: the password crosses the wire; offer only over TLS */
bool        sasl_mech_sends_password(enum sasl_mech);

enum sasl_status {
	SASL_CONTINUE,
	SASL_OK,
	SASL_FAILED,
	SASL_BAD_PROTOCOL,
	SASL_CANCELLED,
	SASL_TEMPFAIL,
};
const char *sasl_status_name(enum sasl_status);

struct sasl_server;

/* hostname: the server name in the CRAM-MD5 challenge (NULL: "localhost") */
struct sasl_server *sasl_server_new(enum sasl_mech, const char *hostname);

/*
 * One step (see the head comment).  *out is set to a malloc'ed NUL-
 * terminated base64 challenge for SASL_CONTINUE and to NULL otherwise.
 * BLOCKING.
 */
enum sasl_status sasl_server_step(struct sasl_server *, struct users *,
                     const char *in, size_t len, char **out);

/*
 * The same against another user store (tests, later backends).  verify and
 * secrets return 1 found/match, 0 no (or no such user), -1 error; canon
 * may be NULL (names are then used as given) or writes the canonical name
 * and returns false for a name that cannot be a user.
 */
struct sasl_userdb {
	int   (*verify)(void *arg, const char *user, const char *password);
	int   (*secrets)(void *arg, const char *user, struct user_secrets *out);
	bool  (*canon)(void *arg, const char *user, char *out, size_t outsz);
	void   *arg;
};
enum sasl_status sasl_server_step_db(struct sasl_server *, const struct sasl_userdb *,
                     const char *in, size_t len, char **out);

/* the user name the client gave (for logs: escape it), NULL before it did */
const char *sasl_server_user(const struct sasl_server *);
/* the canonical authenticated user after SASL_OK, else NULL */
const char *sasl_server_authenticated(const struct sasl_server *);
enum sasl_mech sasl_server_mech(const struct sasl_server *);
void        sasl_server_free(struct sasl_server *);

/*
 * Tests only: use nonce instead of a random one -- the CRAM-MD5 challenge
 * becomes "<nonce@hostname>", the SCRAM server nonce part is nonce
 * (printable ASCII without ','; longer than 64 bytes is ignored).  Call
 * before the first step.
 */
void        sasl_server_set_nonce(struct sasl_server *, const char *nonce);

#endif
