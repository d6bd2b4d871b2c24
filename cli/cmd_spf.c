/*
 * cmd_spf.c - `moat spf check --ip IP --helo NAME --sender ADDR`: one SPF
 * evaluation through the same code as the filter (filters/spf.c) and the
 * configured resolver, for admins and for the RFC 7208 test suite.
 * Output: "mailfrom: RESULT domain=D why=..." then "helo: ...", and
 * "explanation: ..." for a fail.  Exit 0 whatever the result, 2 on usage.
 * Runs in: the admin's shell.  Untrusted input: DNS answers.
 */
#include "config.h"
#include "cli.h"
#include "conf.h"
#include "resolver.h"
#include "util.h"
#include "../filters/spf.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int
usage(void)
{
	fprintf(stderr, "usage: moat [-c FILE] spf check --ip IP [--helo NAME] [--sender ADDR]\n");
	return 2;
}

static void
show(const char *what, const struct spf_out *o)
{
	printf("%s: %s domain=%s lookups=%u voids=%u why=\"%s\"\n", what, auth_res_name(o->res),
	    o->domain, o->lookups, o->voids, o->why);
}

int
cmd_spf(struct moat_conf *c, int argc, char **argv)
{
	static const struct option lo[] = {
		{ "ip", required_argument, NULL, 'i' },
		{ "helo", required_argument, NULL, 'H' },
		{ "sender", required_argument, NULL, 's' },
		{ NULL, 0, NULL, 0 },
	};
	struct spf_in in;
	struct spf_out mf, he;
	struct resolver *res;
	char *err = NULL;
	int ch;

	if (argc < 2 || strcmp(argv[1], "check") != 0)
		return usage();
	memset(&in, 0, sizeof(in));
	in.helo = "";
	in.sender = "";
	argc--;
	argv++;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 'i':
			in.ip = optarg;
			break;
		case 'H':
			in.helo = optarg;
			break;
		case 's':
			in.sender = optarg;
			break;
		default:
			return usage();
		}
	}
	if (in.ip == NULL || optind != argc)
		return usage();
	if ((res = resolver_new(c, &err)) == NULL) {
		fprintf(stderr, "moat: %s\n", err ? err : "resolver: cannot start");
		free(err);
		return 1;
	}
	in.receiver = c->hostname;
	in.budget_ms = (c->resolver_timeout > 0 ? c->resolver_timeout : 5) * 4000;
	spf_eval(res, &in, &mf, &he);
	show("mailfrom", &mf);
	show("helo", &he);
	if (mf.res == AR_FAIL && mf.expl[0])
		printf("explanation: %s\nexplanation-source: %s\n", mf.expl,
		    mf.expl_default ? "default" : "exp");
	resolver_free(res);
	return 0;
}
