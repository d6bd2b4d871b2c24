/* test_greylist.c - greylisting decisions over time (with a chosen clock):
 * defer, early retry, pass, allow, expiry of unconfirmed and confirmed
 * triplets, auto-allowed networks, the purge; the network and sender keys */
#include "config.h"
#include "t.h"
#include "greylist.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char db[256];

static enum greylist_action
chk(const struct greylist_params *p, const char *net, const char *from, const char *to, time_t now,
    struct greylist_result *r)
{
	char *err = NULL;
	if (greylist_check(db, p, net, from, to, now, r, &err) < 0) {
		printf("# error: %s\n", err ? err : "?");
		free(err);
	}
	return r->action;
}

static const char *
net(const char *ip)
{
	static char out[64];
	struct sockaddr_storage ss;
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1)
		s4->sin_family = AF_INET;
	else if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1)
		s6->sin6_family = AF_INET6;
	if (!greylist_net((struct sockaddr *)&ss, out, sizeof(out)))
		return "(false)";
	return out;
}

static const char *
snd(const char *s)
{
	static char out[320];
	greylist_sender(s, "+", out, sizeof(out));
	return out;
}

int
main(void)
{
	char tmpl[] = "/tmp/moat-greylist-XXXXXX";
	struct greylist_params p = { .delay = 300, .expire = 2 * 86400, .allow_time = 35 * 86400,
	    .auto_clients = 0 };
	struct greylist_result r;
	const char *N = "192.0.2.0/24";
	time_t t0 = 1700000000;
	char *err = NULL;

	if (mkdtemp(tmpl) == NULL)
		return 1;
	snprintf(db, sizeof(db), "%s/greylist.db", tmpl);

	is_str(net("192.0.2.77"), "192.0.2.0/24", "IPv4 network: /24");
	is_str(net("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64", "IPv6 network: /64");
	is_str(net("::ffff:198.51.100.9"), "198.51.100.0/24", "v4-mapped: the IPv4 /24");
	is_str(snd("Alice@Example.NET"), "alice@example.net", "sender lowercased");
	is_str(snd("alice+news@example.net"), "alice@example.net", "sender +extension removed");
	is_str(snd("bounce-12345-678@list.example"), "bounce-#-#@list.example", "VERP digits folded");
	is_str(snd("owner-list=5517@list.example"), "owner-list=#@list.example", "digits after = folded");
	is_str(snd("john1990@example.org"), "john1990@example.org", "digits inside a word stay");
	is_str(snd("12345@example.org"), "#@example.org", "an all-digit local part is folded");
	is_str(snd("SRS0=HHH7=T2=example.com=bob@fwd.example"), "srs0=#=#=example.com=bob@fwd.example",
	    "SRS0 hash and timestamp folded");
	is_str(snd("SRS0=broken@fwd.example"), "srs0=broken@fwd.example", "a malformed SRS0 stays");
	is_str(snd("prvs=1234abcd=bob@example.org"), "bob@example.org", "BATV tag removed");
	is_str(snd(""), "", "null sender stays empty");
	is_str(snd("+x@example.org"), "+x@example.org", "a local part that is only an extension stays");

	ok(chk(&p, N, "a@x.test", "b@y.test", t0, &r) == GL_DEFER && r.retry == 300,
	    "a new triplet is deferred for the delay (%lld s)", r.retry);
	ok(access(db, F_OK) == 0, "the database was created");
	ok(chk(&p, N, "a@x.test", "b@y.test", t0 + 100, &r) == GL_DEFER && r.retry == 200,
	    "an early retry is deferred, the delay counted from the first attempt (%lld s left)", r.retry);
	ok(chk(&p, N, "a@x.test", "c@y.test", t0 + 100, &r) == GL_DEFER && r.retry == 300,
	    "another recipient is another triplet");
	ok(chk(&p, "192.0.3.0/24", "a@x.test", "b@y.test", t0 + 100, &r) == GL_DEFER,
	    "another network is another triplet");
	ok(chk(&p, N, "a@x.test", "b@y.test", t0 + 300, &r) == GL_PASS, "a retry after the delay passes");
	ok(chk(&p, N, "a@x.test", "b@y.test", t0 + 301, &r) == GL_ALLOW && !r.client,
	    "the confirmed triplet passes at once afterwards");
	ok(chk(&p, N, "a@x.test", "b@y.test", t0 + 30 * 86400, &r) == GL_ALLOW,
	    "still within allow-time after 30 days");
	ok(chk(&p, N, "a@x.test", "b@y.test", t0 + 30 * 86400 + 36 * 86400, &r) == GL_DEFER,
	    "unused longer than allow-time: greylisted again");

	/* an unconfirmed triplet whose retry comes after the expiry starts over */
	ok(chk(&p, N, "late@x.test", "b@y.test", t0, &r) == GL_DEFER, "new triplet");
	ok(chk(&p, N, "late@x.test", "b@y.test", t0 + 3 * 86400, &r) == GL_DEFER && r.retry == 300,
	    "a retry after greylist-expire is a first attempt again");
	ok(chk(&p, N, "late@x.test", "b@y.test", t0 + 3 * 86400 + 300, &r) == GL_PASS,
	    "and passes after the delay from then");
	/* the clock going back never passes a triplet early */
	ok(chk(&p, N, "clock@x.test", "b@y.test", t0 + 1000, &r) == GL_DEFER, "new triplet");
	ok(chk(&p, N, "clock@x.test", "b@y.test", t0 + 500, &r) == GL_DEFER && r.retry == 300,
	    "a retry stamped before the first attempt starts over");

	/* auto-allowed networks */
	struct greylist_params pa = p;
	pa.auto_clients = 2;
	const char *M = "203.0.113.0/24";
	for (int i = 0; i < 2; i++) {
		char to[64];
		snprintf(to, sizeof(to), "u%d@y.test", i);
		chk(&pa, M, "s@x.test", to, t0, &r);
		ok(chk(&pa, M, "s@x.test", to, t0 + 400, &r) == GL_PASS, "network triplet %d confirmed", i);
	}
	ok(chk(&pa, M, "new@x.test", "new@y.test", t0 + 500, &r) == GL_ALLOW && r.client,
	    "after 2 confirmed triplets the network passes any triplet at once");
	ok(chk(&p, M, "new2@x.test", "new@y.test", t0 + 500, &r) == GL_DEFER,
	    "with auto-allow-clients 0 it does not");
	ok(chk(&pa, M, "new3@x.test", "new@y.test", t0 + 500 + 36 * 86400, &r) == GL_DEFER,
	    "an auto-allowed network unused longer than allow-time is greylisted again");

	/* the purge removes expired rows and keeps live ones */
	long long n = greylist_purge(db, &p, t0 + 200 * 86400, &err);
	ok(n >= 5, "the purge deletes the expired triplets and networks (%lld rows)", n);
	n = greylist_purge(db, &p, t0 + 200 * 86400, &err);
	is_int(n, 0, "a second purge finds nothing");
	ok(chk(&p, N, "a@x.test", "b@y.test", t0 + 200 * 86400, &r) == GL_DEFER,
	    "a purged triplet is new again");

	/* an unusable database is an error, not a crash */
	greylist_thread_drop();
	ok(greylist_check("/nonexistent/dir/greylist.db", &p, N, "a", "b", t0, &r, &err) < 0 &&
	    r.action == GL_ERROR && err != NULL, "an unusable database path is an error (%s)",
	    err ? err : "");
	free(err);
	err = NULL;
	/* a file that is not SQLite */
	char bad[300];
	snprintf(bad, sizeof(bad), "%s/bad.db", tmpl);
	FILE *f = fopen(bad, "w");
	if (f) {
		fputs("this is not a database, just text that is long enough to be looked at......\n", f);
		fclose(f);
	}
	ok(greylist_check(bad, &p, N, "a", "b", t0, &r, &err) < 0 && r.action == GL_ERROR,
	    "a corrupt database is an error (%s)", err ? err : "");
	free(err);
	greylist_thread_drop();

	char cmd[400];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpl);
	if (system(cmd) != 0)
		printf("# cannot remove %s\n", tmpl);
	return t_done();
}
