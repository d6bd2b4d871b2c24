/*
 * geoip.c - the country and the autonomous system of the client address
 * (libmaxminddb), as symbols: GEOIP_COUNTRY_<CC> and GEOIP_ASN_<N>.
 *
 * Runs in: init in the worker (and moatd -n); check() in pool threads.
 * The databases ("geoip PATH": a Country or City database, "geoip-asn
 * PATH": an ASN database) are opened once per engine with MMDB_MODE_MMAP
 * and only read afterwards, which libmaxminddb allows from any number of
 * threads; a reload builds a new engine and so reopens them (a database
 * updated in place is picked up by the next reload).
 *
 * The symbols are always added, with score 0 unless "score GEOIP_COUNTRY_XX
 * N" / "score GEOIP_ASN_N N" says otherwise (rspamd does the same): the
 * verdict log line then shows where every message came from.  An address
 * the database does not know (loopback, private networks) adds nothing; a
 * lookup error adds GEOIP_ERROR (score 0) and the message goes on.
 *
 * Input: the client address (ours, printed by the session); the database
 * contents are treated as untrusted: only a two-letter A-Z code and a
 * 32-bit number are used, the organisation name is cut to printable ASCII.
 */
#include "config.h"
#include "conf.h"
#include "filter.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <maxminddb.h>

struct geoip {
	const struct moat_conf *conf;
	MMDB_s  country;
	MMDB_s  asn;
	bool    have_country, have_asn;
};

static char *
geoip_err(const char *what, const char *path, const char *why)
{
	char msg[1024];
	snprintf(msg, sizeof(msg), "%s %s: %s", what, esc(path), why);
	return xstrdup(msg);
}

/* open one database and check it is of the kind the directive wants */
static int
geoip_open(const char *what, const char *path, bool asn, MMDB_s *db, char **err)
{
	int r = MMDB_open(path, MMDB_MODE_MMAP, db);
	const char *type;

	if (r != MMDB_SUCCESS) {
		*err = geoip_err(what, path, MMDB_strerror(r));
		return -1;
	}
	type = db->metadata.database_type ? db->metadata.database_type : "";
	/* an ASN database has no country data and the reverse: a swapped
	 * pair of paths would silently add nothing */
	if (asn != (strstr(type, "ASN") != NULL || strstr(type, "ISP") != NULL)) {
		char why[200];
		snprintf(why, sizeof(why), "is a \"%s\" database; %s", esc(type),
		    asn ? "geoip-asn needs an ASN (or ISP) database" :
		    "geoip needs a Country or City database (ASN goes to geoip-asn)");
		*err = geoip_err(what, path, why);
		MMDB_close(db);
		return -1;
	}
	return 0;
}

static void geoip_fini(void *);

static int
geoip_init(const struct moat_conf *c, void **state, char **err)
{
	struct geoip *g;

	*state = NULL;
	if (c->geoip_path == NULL && c->geoip_asn_path == NULL)
		return 0;
	g = xcalloc(1, sizeof(*g));
	g->conf = c;
	if (c->geoip_path) {
		if (geoip_open("geoip", c->geoip_path, false, &g->country, err) < 0) {
			geoip_fini(g);
			return -1;
		}
		g->have_country = true;
	}
	if (c->geoip_asn_path) {
		if (geoip_open("geoip-asn", c->geoip_asn_path, true, &g->asn, err) < 0) {
			geoip_fini(g);
			return -1;
		}
		g->have_asn = true;
	}
	log_info("engine: geoip country=%s asn=%s", c->geoip_path ? esc(c->geoip_path) : "-",
	    c->geoip_asn_path ? esc(c->geoip_asn_path) : "-");
	*state = g;
	return 0;
}

static void
geoip_fini(void *state)
{
	struct geoip *g = state;

	if (g == NULL)
		return;
	if (g->have_country)
		MMDB_close(&g->country);
	if (g->have_asn)
		MMDB_close(&g->asn);
	free(g);
}

/* the numeric client address as a sockaddr (v4-mapped v6 as v4); false
 * if it is not a numeric address */
static bool
geoip_addr(const char *ip, struct sockaddr_storage *ss)
{
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		return true;
	}
	if (inet_pton(AF_INET6, ip, &s6->sin6_addr) != 1)
		return false;
	if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
		struct in_addr a;
		memcpy(&a, &s6->sin6_addr.s6_addr[12], 4);
		memset(ss, 0, sizeof(*ss));
		s4->sin_family = AF_INET;
		s4->sin_addr = a;
		return true;
	}
	s6->sin6_family = AF_INET6;
	return true;
}

/* 1: found (entry set), 0: not in the database, -1: error (why set) */
static int
geoip_lookup(const MMDB_s *db, const struct sockaddr *sa, MMDB_lookup_result_s *res,
    const char **why)
{
	int merr = MMDB_SUCCESS;

	*res = MMDB_lookup_sockaddr(db, sa, &merr);
	if (merr == MMDB_IPV6_LOOKUP_IN_IPV4_DATABASE_ERROR)
		return 0;
	if (merr != MMDB_SUCCESS) {
		*why = MMDB_strerror(merr);
		return -1;
	}
	return res->found_entry ? 1 : 0;
}

/* a path the record does not have is "no data", not an error */
static int
geoip_value(MMDB_entry_s *e, MMDB_entry_data_s *d, const char *k1, const char *k2)
{
	int r = MMDB_get_value(e, d, k1, k2, (const char *)NULL);

	if (r == MMDB_LOOKUP_PATH_DOES_NOT_MATCH_DATA_ERROR || r == MMDB_INVALID_LOOKUP_PATH_ERROR) {
		d->has_data = false;
		return MMDB_SUCCESS;
	}
	if (r != MMDB_SUCCESS)
		d->has_data = false;
	return r;
}

static void
geoip_symbol(struct geoip *g, struct verdict *v, const char *sym, const char *reason)
{
	verdict_add(v, sym, filter_score(g->conf, sym, 0), reason);
}

static void
geoip_error(struct geoip *g, struct msg_ctx *x, struct verdict *v, const char *db,
    const char *why)
{
	char r[160];

	snprintf(r, sizeof(r), "%s lookup failed: %s", db, why);
	log_warnx("qid=%s event=geoip-error ip=%s db=%s error=\"%s\"", x->qid, x->client_ip, db,
	    esc(why));
	geoip_symbol(g, v, "GEOIP_ERROR", r);
}

static void
geoip_country(struct geoip *g, struct msg_ctx *x, const struct sockaddr *sa, struct verdict *v)
{
	MMDB_lookup_result_s res;
	MMDB_entry_data_s d;
	const char *why = NULL;
	char sym[32], cc[3];
	int r;

	if ((r = geoip_lookup(&g->country, sa, &res, &why)) <= 0) {
		if (r < 0)
			geoip_error(g, x, v, "country", why);
		return;
	}
	/* where the address is used; else where its block is registered */
	r = geoip_value(&res.entry, &d, "country", "iso_code");
	if (r == MMDB_SUCCESS && !d.has_data)
		r = geoip_value(&res.entry, &d, "registered_country", "iso_code");
	if (r != MMDB_SUCCESS) {
		geoip_error(g, x, v, "country", MMDB_strerror(r));
		return;
	}
	if (!d.has_data || d.type != MMDB_DATA_TYPE_UTF8_STRING || d.data_size != 2)
		return;
	for (int i = 0; i < 2; i++) {
		char ch = d.utf8_string[i];
		if (ch >= 'a' && ch <= 'z')
			ch = (char)(ch - 'a' + 'A');
		if (ch < 'A' || ch > 'Z')
			return;
		cc[i] = ch;
	}
	cc[2] = '\0';
	snprintf(sym, sizeof(sym), "GEOIP_COUNTRY_%s", cc);
	char reason[64];
	snprintf(reason, sizeof(reason), "country %s", cc);
	geoip_symbol(g, v, sym, reason);
}

static void
geoip_asn(struct geoip *g, struct msg_ctx *x, const struct sockaddr *sa, struct verdict *v)
{
	MMDB_lookup_result_s res;
	MMDB_entry_data_s d;
	const char *why = NULL;
	char sym[32], reason[160];
	uint32_t asn;
	int r;

	if ((r = geoip_lookup(&g->asn, sa, &res, &why)) <= 0) {
		if (r < 0)
			geoip_error(g, x, v, "asn", why);
		return;
	}
	r = geoip_value(&res.entry, &d, "autonomous_system_number", NULL);
	if (r != MMDB_SUCCESS) {
		geoip_error(g, x, v, "asn", MMDB_strerror(r));
		return;
	}
	if (!d.has_data)
		return;
	switch (d.type) {
	case MMDB_DATA_TYPE_UINT32: asn = d.uint32; break;
	case MMDB_DATA_TYPE_UINT16: asn = d.uint16; break;
	default: return;
	}
	snprintf(sym, sizeof(sym), "GEOIP_ASN_%u", (unsigned)asn);
	/* the organisation, printable ASCII only, for the report */
	size_t o = (size_t)snprintf(reason, sizeof(reason), "AS%u", (unsigned)asn);
	if (geoip_value(&res.entry, &d, "autonomous_system_organization", NULL) == MMDB_SUCCESS &&
	    d.has_data && d.type == MMDB_DATA_TYPE_UTF8_STRING && o + 2 < sizeof(reason)) {
		reason[o++] = ' ';
		for (uint32_t i = 0; i < d.data_size && o + 1 < sizeof(reason); i++) {
			unsigned char ch = (unsigned char)d.utf8_string[i];
			reason[o++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
		}
		reason[o] = '\0';
	}
	geoip_symbol(g, v, sym, reason);
}

static void
geoip_check(void *state, struct msg_ctx *x, struct verdict *v)
{
	struct geoip *g = state;
	struct sockaddr_storage ss;

	if (x->client_ip == NULL || !geoip_addr(x->client_ip, &ss))
		return;
	if (g->have_country)
		geoip_country(g, x, (const struct sockaddr *)&ss, v);
	if (g->have_asn)
		geoip_asn(g, x, (const struct sockaddr *)&ss, v);
}

const struct filter filter_geoip = { "geoip", FLT_CONNECT, geoip_init, geoip_check, geoip_fini };
