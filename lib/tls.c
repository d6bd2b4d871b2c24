/*
 * tls.c - OpenSSL server contexts and libevent TLS bufferevents.
 * Runs in: the master (building contexts, reading keys) and the worker
 * (handshakes).  Untrusted input: the handshake, handled by OpenSSL.
 */
#include "config.h"
#include "tls.h"
#include "conf.h"
#include "log.h"
#include "util.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>

/* Mozilla "intermediate" TLS 1.2 list: AEAD only, forward secret */
#define DEFAULT_CIPHERS \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:" \
	"DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"

struct tls_server {
	SSL_CTX **ctx;          /* [0] default, then SNI alternatives */
	X509   **cert;
	size_t   n;
};

void
tls_errors(char *out, size_t outsz)
{
	unsigned long e;
	size_t o = 0;

	out[0] = '\0';
	while ((e = ERR_get_error()) != 0 && o + 2 < outsz) {
		char b[256];
		ERR_error_string_n(e, b, sizeof(b));
		o += (size_t)snprintf(out + o, outsz - o, "%s%s", o ? "; " : "", b);
	}
	if (out[0] == '\0')
		moat_strlcpy(out, "unknown TLS error", outsz);
}

static int
sni_cb(SSL *ssl, int *alert, void *arg)
{
	struct tls_server *ts = arg;
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);

	if (name == NULL || ts->n < 2)
		return SSL_TLSEXT_ERR_OK;
	for (size_t i = 1; i < ts->n; i++)
		if (X509_check_host(ts->cert[i], name, 0, 0, NULL) == 1) {
			SSL_set_SSL_CTX(ssl, ts->ctx[i]);
			break;
		}
	return SSL_TLSEXT_ERR_OK;   /* unknown names get the default certificate */
}

static SSL_CTX *
make_ctx(const struct moat_conf *c, const struct tls_cert_conf *tc, X509 **certp, char **err)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	char e[512], msg[1024];
	static const unsigned char sid[] = "moat";

	if (ctx == NULL)
		goto fail;
	SSL_CTX_set_min_proto_version(ctx, c->tls_min_version);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE |
	    SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	if (!SSL_CTX_set_cipher_list(ctx, c->tls_ciphers ? c->tls_ciphers : DEFAULT_CIPHERS)) {
		snprintf(msg, sizeof(msg), "%s:%d: tls ciphers: no usable cipher in the list",
		    tc->file, tc->line);
		*err = xstrdup(msg);
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (c->tls_ciphersuites && !SSL_CTX_set_ciphersuites(ctx, c->tls_ciphersuites)) {
		snprintf(msg, sizeof(msg), "%s:%d: tls ciphersuites: no usable suite in the list",
		    tc->file, tc->line);
		*err = xstrdup(msg);
		SSL_CTX_free(ctx);
		return NULL;
	}
	SSL_CTX_set_dh_auto(ctx, 1);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
	SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);
	SSL_CTX_set_timeout(ctx, 3600);
	if (SSL_CTX_use_certificate_chain_file(ctx, tc->cert) != 1) {
		tls_errors(e, sizeof(e));
		snprintf(msg, sizeof(msg), "%s:%d: cannot load certificate %s: %s", tc->file, tc->line,
		    tc->cert, e);
		*err = xstrdup(msg);
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, tc->key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		tls_errors(e, sizeof(e));
		snprintf(msg, sizeof(msg), "%s:%d: cannot load key %s (or it does not match %s): %s",
		    tc->file, tc->line, tc->key, tc->cert, e);
		*err = xstrdup(msg);
		SSL_CTX_free(ctx);
		return NULL;
	}
	*certp = SSL_CTX_get0_certificate(ctx);
	return ctx;
fail:
	tls_errors(e, sizeof(e));
	snprintf(msg, sizeof(msg), "TLS: %s", e);
	*err = xstrdup(msg);
	return NULL;
}

struct tls_server *
tls_server_new(const struct moat_conf *c, char **err)
{
	struct tls_server *ts;

	*err = NULL;
	if (c->ntls_certs == 0)
		return NULL;
	ts = xcalloc(1, sizeof(*ts));
	ts->ctx = xcalloc(c->ntls_certs, sizeof(SSL_CTX *));
	ts->cert = xcalloc(c->ntls_certs, sizeof(X509 *));
	for (size_t i = 0; i < c->ntls_certs; i++) {
		ts->ctx[i] = make_ctx(c, &c->tls_certs[i], &ts->cert[i], err);
		if (ts->ctx[i] == NULL) {
			tls_server_free(ts);
			return NULL;
		}
		ts->n++;
	}
	SSL_CTX_set_tlsext_servername_callback(ts->ctx[0], sni_cb);
	SSL_CTX_set_tlsext_servername_arg(ts->ctx[0], ts);
	return ts;
}

void
tls_server_free(struct tls_server *ts)
{
	if (ts == NULL)
		return;
	for (size_t i = 0; i < ts->n; i++)
		SSL_CTX_free(ts->ctx[i]);
	free(ts->ctx);
	free(ts->cert);
	free(ts);
}

struct bufferevent *
tls_accept(struct event_base *base, struct tls_server *ts, evutil_socket_t fd)
{
	SSL *ssl = SSL_new(ts->ctx[0]);
	struct bufferevent *bev;

	if (ssl == NULL)
		return NULL;
	bev = bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
	    BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		SSL_free(ssl);
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

struct bufferevent *
tls_starttls(struct event_base *base, struct tls_server *ts, struct bufferevent *plain)
{
	evutil_socket_t fd = bufferevent_getfd(plain);
	struct evbuffer *in = bufferevent_get_input(plain);
	int nfd;

	/* anything the client sent after STARTTLS was sent in the clear:
	 * it must not be executed inside the TLS session (CVE-2011-0411 class) */
	evbuffer_drain(in, evbuffer_get_length(in));
	nfd = fd >= 0 ? dup(fd) : -1;
	bufferevent_free(plain);
	if (nfd < 0)
		return NULL;
	evutil_make_socket_nonblocking(nfd);
	evutil_make_socket_closeonexec(nfd);
	struct bufferevent *bev = tls_accept(base, ts, nfd);
	if (bev == NULL)
		close(nfd);
	return bev;
}

SSL *
tls_ssl(struct bufferevent *bev)
{
	return bev ? bufferevent_openssl_get_ssl(bev) : NULL;
}

void
tls_describe(struct bufferevent *bev, char *out, size_t outsz)
{
	SSL *ssl = tls_ssl(bev);
	int alg = 0;

	if (ssl == NULL) {
		out[0] = '\0';
		return;
	}
	int bits = SSL_get_cipher_bits(ssl, &alg);
	snprintf(out, outsz, "%s with cipher %s (%d/%d bits)", SSL_get_version(ssl),
	    SSL_get_cipher_name(ssl), bits, alg);
}

void
tls_short(struct bufferevent *bev, char *out, size_t outsz)
{
	SSL *ssl = tls_ssl(bev);
	if (ssl == NULL) {
		out[0] = '\0';
		return;
	}
	snprintf(out, outsz, "%s:%s", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
}

SSL_CTX *
tls_client_ctx_new(const struct moat_conf *c, bool verify, const char *ca_file, char **err)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	char e[512], msg[1024];

	*err = NULL;
	if (ctx == NULL)
		goto fail;
	SSL_CTX_set_min_proto_version(ctx, c->tls_min_version);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	if (verify) {
		int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL) :
		    SSL_CTX_set_default_verify_paths(ctx);
		if (ok != 1)
			goto fail;
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	} else
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	return ctx;
fail:
	tls_errors(e, sizeof(e));
	snprintf(msg, sizeof(msg), "TLS client context%s%s: %s", ca_file ? " with CA file " : "",
	    ca_file ? ca_file : "", e);
	*err = xstrdup(msg);
	SSL_CTX_free(ctx);
	return NULL;
}

struct bufferevent *
tls_connect_filter(struct event_base *base, SSL_CTX *ctx, struct bufferevent *plain,
    const char *host, bool verify)
{
	SSL *ssl = SSL_new(ctx);
	struct bufferevent *bev;

	if (ssl == NULL)
		return NULL;
	if (host && *host) {
		SSL_set_tlsext_host_name(ssl, host);
		if (verify)
			SSL_set1_host(ssl, host);
	}
	bev = bufferevent_openssl_filter_new(base, plain, ssl, BUFFEREVENT_SSL_CONNECTING,
	    BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		SSL_free(ssl);
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

const char *
tls_verify_error(struct bufferevent *bev)
{
	SSL *ssl = tls_ssl(bev);
	long r;

	if (ssl == NULL)
		return "no TLS";
	if (SSL_get0_peer_certificate(ssl) == NULL)
		return "no peer certificate";
	if ((r = SSL_get_verify_result(ssl)) != X509_V_OK)
		return X509_verify_cert_error_string(r);
	return NULL;
}
