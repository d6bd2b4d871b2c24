/*
 * cmd_lists.c - `moat lists add|del allow|block TYPE VALUE`, `moat lists show`:
 * edit the allow and block lists in the `lists DIR` directory.  moatd picks
 * the change up by itself (it re-reads changed files within seconds).
 */
#include "config.h"
#include "cli.h"
#include "conf.h"
#include "lists.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int
usage(void)
{
	fprintf(stderr, "usage: moat lists add|del allow|block TYPE VALUE\n"
	    "       moat lists show\n"
	    "TYPE: ip (address or CIDR), helo, sender (address or domain), from (domain),\n"
	    "      rcpt (address or domain)\n");
	return 2;
}

static int
show(const char *dir)
{
	static const char *files[] = { "allow", "block" };
	for (int k = 0; k < 2; k++) {
		char path[4096], line[1024];
		snprintf(path, sizeof(path), "%s/%s", dir, files[k]);
		FILE *f = fopen(path, "r");
		printf("# %s (%s)\n", files[k], path);
		if (f == NULL)
			continue;
		while (fgets(line, sizeof(line), f))
			if (line[strspn(line, " \t")] != '#' && line[strspn(line, " \t\r\n")] != '\0')
				printf("%s %s", files[k], line);
		fclose(f);
	}
	return 0;
}

int
cmd_lists(struct moat_conf *c, int argc, char **argv)
{
	char *err = NULL;
	enum list_type t;

	if (c->lists_dir == NULL) {
		fprintf(stderr, "moat: no \"lists DIR\" directive in %s\n", c->path);
		return 1;
	}
	if (argc == 2 && !strcmp(argv[1], "show"))
		return show(c->lists_dir);
	if (argc != 5 || (strcmp(argv[1], "add") && strcmp(argv[1], "del")) ||
	    (strcmp(argv[2], "allow") && strcmp(argv[2], "block")) || !lists_type_parse(argv[3], &t))
		return usage();
	int r = lists_edit(c->lists_dir, argv[2][0] == 'a' ? LK_ALLOW : LK_BLOCK, argv[1][0] == 'a',
	    argv[3], argv[4], &err);
	if (r != 0) {
		fprintf(stderr, "moat: %s\n", err ? err : "error");
		free(err);
		return 1;
	}
	printf("%s %s %s %s\n", argv[1][0] == 'a' ? "added to" : "removed from", argv[2], argv[3], argv[4]);
	return 0;
}
