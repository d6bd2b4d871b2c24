/*
 * cli.h - the moat admin command.  Each command group is a handler that
 * gets the loaded config and its own argv (argv[0] = group name).  Returns
 * the process exit status: 0 ok, 1 failure, 2 usage error.
 */
#ifndef MOAT_CLI_H
#define MOAT_CLI_H

struct moat_conf;

int cmd_user(struct moat_conf *, int argc, char **argv);   /* cli/cmd_user.c */
int cmd_queue(struct moat_conf *, int argc, char **argv);  /* cli/cmd_queue.c */
int cmd_bayes(struct moat_conf *, int argc, char **argv);  /* cli/cmd_bayes.c */
int cmd_quarantine(struct moat_conf *, int argc, char **argv); /* cli/cmd_quarantine.c */
int cmd_rules(struct moat_conf *, int argc, char **argv);  /* cli/cmd_rules.c */
int cmd_av(struct moat_conf *, int argc, char **argv);     /* cli/cmd_av.c */
int cmd_lists(struct moat_conf *, int argc, char **argv);  /* cli/cmd_lists.c */
int cmd_status(struct moat_conf *, int argc, char **argv); /* cli/cmd_status.c */
int cmd_report(struct moat_conf *, int argc, char **argv); /* cli/cmd_report.c */
int cmd_trace(struct moat_conf *, int argc, char **argv);  /* cli/cmd_trace.c */

/* the event journal read-only (drops root to the run user first); NULL
 * with a message on stderr.  cli/cmd_report.c */
struct sqlite3;
struct sqlite3 *cli_journal(const struct moat_conf *, const char *cmd);
/* --since: "24h", "7d", "90m" or "2026-11-23[ HH:MM[:SS]]" */
#include <stdbool.h>
#include <time.h>
bool cli_parse_since(const char *, time_t *);
int cmd_spf(struct moat_conf *, int argc, char **argv);    /* cli/cmd_spf.c */

/* send one line to the daemon's control socket (<state-dir>/control.sock)
 * and return its reply in a malloc'ed string; NULL if the daemon is not
 * running (errno set).  cli/moat.c */
char *cli_control(const struct moat_conf *, const char *line);

#endif
