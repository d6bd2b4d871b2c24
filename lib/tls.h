/*
 * tls.h - TLS for every moat listener and the relay client (OpenSSL 3,
 * libevent bufferevent_openssl).
 *
 * Server contexts are built by the master (which can read the keys as
 * root) from the config's "tls certificate FILE key FILE" lines before the
 * worker is forked; a reload builds new ones for the new worker, so
 * certificates change without dropping sessions.  The first certificate is
 * the default; the others are chosen by SNI (matched against their
 * subject alternative names).  Defaults: TLS 1.2 and 1.3 only, AEAD
 * ciphers only (no CBC, no RC4/3DES/NULL/anonymous/export), server cipher
 * preference, no compression, no renegotiation, session resumption.
 */
#ifndef MOAT_TLS_H
#define MOAT_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <openssl/ssl.h>
#include <event2/bufferevent.h>

struct moat_conf;
struct tls_server;

/* NULL with *err when no certificate is configured or loading fails
 * (message names the file).  Returns NULL, *err NULL if none configured. */
struct tls_server *tls_server_new(const struct moat_conf *, char **err);
void tls_server_free(struct tls_server *);

/* implicit TLS: wrap a freshly accepted socket (handshake as server) */
struct bufferevent *tls_accept(struct event_base *, struct tls_server *, evutil_socket_t fd);
/*
 * STARTTLS: `plain`'s output must already be flushed.  Its pending input
 * (bytes pipelined after the STARTTLS command) is discarded, it is freed,
 * and a TLS bufferevent on the same socket is returned (callbacks must be
 * set again).  NULL on failure (plain is freed either way).
 */
struct bufferevent *tls_starttls(struct event_base *, struct tls_server *, struct bufferevent *plain);

/* "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"; "" if no TLS */
void tls_describe(struct bufferevent *, char *out, size_t outsz);
/* short form for log lines: "TLSv1.3:TLS_AES_256_GCM_SHA384" */
void tls_short(struct bufferevent *, char *out, size_t outsz);
/* SSL* of a TLS bufferevent, NULL for a plain one */
SSL *tls_ssl(struct bufferevent *);

/*
 * Client side (relay): a context per (verify, ca_file).  verify: the peer
 * certificate must chain to ca_file (or the system store) and match host.
 * tls_connect_filter() wraps an established plain bufferevent (after the
 * server's 220 to STARTTLS) and starts the handshake; the plain one is
 * owned by the result.
 */
SSL_CTX *tls_client_ctx_new(const struct moat_conf *, bool verify, const char *ca_file, char **err);
struct bufferevent *tls_connect_filter(struct event_base *, SSL_CTX *, struct bufferevent *plain,
    const char *host, bool verify);
/* after the handshake: NULL if fine, else why the certificate was refused */
const char *tls_verify_error(struct bufferevent *);

/* the last OpenSSL error queue entries as text (for logs) */
void tls_errors(char *out, size_t outsz);

#endif
