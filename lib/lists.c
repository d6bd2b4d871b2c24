/*
 * lists.c - allow and block lists (see lists.h).
 * Runs in: the worker and the moat CLI.  Input: the admin's files (checked
 * strictly: a bad line is reported as FILE:LINE and the set is refused).
 */
#include "config.h"
#include "lists.h"
#include "buf.h"
#include "conf.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LISTS_MAX_ENTRIES 1000000

struct entries {
	char  **v;                      /* lowercase values, sorted */
	size_t  n;
	struct cidr *ip;
	size_t  nip;
};

struct lists {
	atomic_int refs;
	char    path[2][PATH_MAX];
	struct timespec mtime[2];
	bool    exists[2];
	struct entries e[2][LT_N];
};

static const char *type_names[LT_N] = { "ip", "helo", "sender", "from", "rcpt" };

const char *
lists_type_name(enum list_type t)
{
	return t < LT_N ? type_names[t] : "?";
}

bool
lists_type_parse(const char *s, enum list_type *t)
{
	for (int i = 0; i < LT_N; i++)
		if (!strcmp(s, type_names[i])) {
			*t = (enum list_type)i;
			return true;
		}
	return false;
}

static int
cmpstr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool
sorted_has(const struct entries *e, const char *v)
{
	return e->n && bsearch(&v, e->v, e->n, sizeof(char *), cmpstr) != NULL;
}

/* parse "TYPE VALUE"; false with msg */
static bool
parse_entry(char *line, enum list_type *t, char **val, const char **msg)
{
	char *p = line, *type, *v;

	while (*p == ' ' || *p == '\t')
		p++;
	type = p;
	while (*p && *p != ' ' && *p != '\t')
		p++;
	if (*p)
		*p++ = '\0';
	while (*p == ' ' || *p == '\t')
		p++;
	v = p;
	while (*p && *p != ' ' && *p != '\t')
		p++;
	if (*p) {
		*p++ = '\0';
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p) {
			*msg = "one value per line";
			return false;
		}
	}
	if (!lists_type_parse(type, t)) {
		*msg = "unknown type (ip, helo, sender, from, rcpt)";
		return false;
	}
	if (*v == '\0') {
		*msg = "missing value";
		return false;
	}
	if (*t == LT_IP) {
		struct cidr c;
		if (!cidr_parse(v, &c)) {
			*msg = "not an IP address or CIDR";
			return false;
		}
	} else if (strlen(v) > 320 || strchr(v, '"')) {
		*msg = "value too long or quoted";
		return false;
	}
	*val = v;
	return true;
}

static int
load_file(struct lists *l, int k, char **err)
{
	FILE *f;
	char line[1024];
	int lineno = 0;
	struct stat st;
	size_t total = 0;

	if (stat(l->path[k], &st) < 0) {
		if (errno == ENOENT)
			return 0;
		goto ioerr;
	}
	l->exists[k] = true;
	l->mtime[k] = st.st_mtim;
	if ((f = fopen(l->path[k], "r")) == NULL)
		goto ioerr;
	while (fgets(line, sizeof(line), f)) {
		enum list_type t;
		char *val, *hash;
		const char *msg;
		lineno++;
		if (strchr(line, '\n') == NULL && !feof(f)) {
			fclose(f);
			snprintf(line, sizeof(line), "%s:%d: line too long", l->path[k], lineno);
			*err = xstrdup(line);
			return -1;
		}
		if ((hash = strchr(line, '#')) != NULL)
			*hash = '\0';
		line[strcspn(line, "\r\n")] = '\0';
		char *p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\0')
			continue;
		if (!parse_entry(p, &t, &val, &msg)) {
			char m[PATH_MAX + 128];
			snprintf(m, sizeof(m), "%s:%d: %s", l->path[k], lineno, msg);
			*err = xstrdup(m);
			fclose(f);
			return -1;
		}
		if (++total > LISTS_MAX_ENTRIES) {
			fclose(f);
			*err = xstrdup("lists: too many entries");
			return -1;
		}
		struct entries *e = &l->e[k][t];
		if (t == LT_IP) {
			e->ip = xreallocarray(e->ip, e->nip + 1, sizeof(struct cidr));
			cidr_parse(val, &e->ip[e->nip++]);
		} else {
			char *v = xstrdup(val);
			ascii_lower(v);
			e->v = xreallocarray(e->v, e->n + 1, sizeof(char *));
			e->v[e->n++] = v;
		}
	}
	fclose(f);
	for (int t = 0; t < LT_N; t++)
		if (l->e[k][t].n > 1)
			qsort(l->e[k][t].v, l->e[k][t].n, sizeof(char *), cmpstr);
	return 0;
ioerr: {
	char m[PATH_MAX + 128];
	snprintf(m, sizeof(m), "%s:0: %s", l->path[k], strerror(errno));
	*err = xstrdup(m);
	return -1;
	}
}

static void
lists_free(struct lists *l)
{
	for (int k = 0; k < 2; k++)
		for (int t = 0; t < LT_N; t++) {
			for (size_t i = 0; i < l->e[k][t].n; i++)
				free(l->e[k][t].v[i]);
			free(l->e[k][t].v);
			free(l->e[k][t].ip);
		}
	free(l);
}

struct lists *
lists_load(const char *dir, char **err)
{
	struct lists *l = xcalloc(1, sizeof(*l));

	*err = NULL;
	atomic_init(&l->refs, 1);
	snprintf(l->path[LK_ALLOW], sizeof(l->path[0]), "%s/allow", dir);
	snprintf(l->path[LK_BLOCK], sizeof(l->path[0]), "%s/block", dir);
	for (int k = 0; k < 2; k++)
		if (load_file(l, k, err) < 0) {
			lists_free(l);
			return NULL;
		}
	return l;
}

void
lists_ref(struct lists *l)
{
	atomic_fetch_add(&l->refs, 1);
}

void
lists_unref(struct lists *l)
{
	if (l && atomic_fetch_sub(&l->refs, 1) == 1)
		lists_free(l);
}

bool
lists_changed(const struct lists *l)
{
	for (int k = 0; k < 2; k++) {
		struct stat st;
		bool ex = stat(l->path[k], &st) == 0;
		if (ex != l->exists[k])
			return true;
		if (ex && (st.st_mtim.tv_sec != l->mtime[k].tv_sec ||
		    st.st_mtim.tv_nsec != l->mtime[k].tv_nsec))
			return true;
	}
	return false;
}

bool
lists_match_ip(const struct lists *l, enum list_kind k, const struct sockaddr *sa)
{
	return l && cidr_list_match(l->e[k][LT_IP].ip, l->e[k][LT_IP].nip, sa);
}

/* value or any parent domain of it is listed */
static bool
domain_suffix(const struct entries *e, const char *d)
{
	while (d && *d) {
		if (sorted_has(e, d))
			return true;
		d = strchr(d, '.');
		if (d)
			d++;
	}
	return false;
}

bool
lists_match(const struct lists *l, enum list_kind k, enum list_type t, const char *value)
{
	char v[330];
	const struct entries *e;

	if (l == NULL || value == NULL || t == LT_IP)
		return false;
	e = &l->e[k][t];
	if (e->n == 0 || moat_strlcpy(v, value, sizeof(v)) >= sizeof(v))
		return false;
	ascii_lower(v);
	if (t == LT_HELO)
		return sorted_has(e, v);
	if (t == LT_FROM)
		return domain_suffix(e, v);
	/* sender, rcpt: the address itself, or its domain and parents */
	if (sorted_has(e, v))
		return true;
	const char *at = strrchr(v, '@');
	return at && domain_suffix(e, at + 1);
}

int
lists_edit(const char *dir, enum list_kind k, bool add, const char *type, const char *value,
    char **err)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8], line[1024], want[1024], check[1024];
	enum list_type t;
	const char *msg;
	char *val;
	FILE *in, *out;
	bool found = false;

	snprintf(want, sizeof(want), "%s %s", type, value);
	moat_strlcpy(check, want, sizeof(check));
	if (!parse_entry(check, &t, &val, &msg)) {
		snprintf(line, sizeof(line), "\"%s\": %s", want, msg);
		*err = xstrdup(line);
		return -1;
	}
	if (mkdir_p(dir, 0755) < 0) {
		snprintf(line, sizeof(line), "%s: %s", dir, strerror(errno));
		*err = xstrdup(line);
		return -1;
	}
	snprintf(path, sizeof(path), "%s/%s", dir, k == LK_ALLOW ? "allow" : "block");
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if ((out = fopen(tmp, "w")) == NULL) {
		snprintf(line, sizeof(line), "%s: %s", tmp, strerror(errno));
		*err = xstrdup(line);
		return -1;
	}
	if ((in = fopen(path, "r")) != NULL) {
		while (fgets(line, sizeof(line), in)) {
			char copy[1024], *h;
			enum list_type lt;
			char *lv;
			moat_strlcpy(copy, line, sizeof(copy));
			if ((h = strchr(copy, '#')) != NULL)
				*h = '\0';
			copy[strcspn(copy, "\r\n")] = '\0';
			if (parse_entry(copy, &lt, &lv, &msg) && lt == t && !ascii_strcasecmp(lv, val)) {
				found = true;
				if (!add)
					continue;       /* drop it */
			}
			fputs(line, out);
		}
		fclose(in);
	}
	if (add && !found)
		fprintf(out, "%s %s\n", lists_type_name(t), val);
	if (fflush(out) != 0 || fsync(fileno(out)) != 0 || fclose(out) != 0 || rename(tmp, path) < 0) {
		snprintf(line, sizeof(line), "%s: %s", path, strerror(errno));
		*err = xstrdup(line);
		unlink(tmp);
		return -1;
	}
	if (!add && !found) {
		snprintf(line, sizeof(line), "\"%s %s\" is not in %s", lists_type_name(t), val, path);
		*err = xstrdup(line);
		return 1;
	}
	return 0;
}
