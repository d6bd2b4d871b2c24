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
int cmd_spf(struct moat_conf *, int argc, char **argv);    /* cli/cmd_spf.c */

/* send one line to the daemon's control socket (<state-dir>/control.sock)
 * and return its reply in a malloc'ed string; NULL if the daemon is not
 * running (errno set).  cli/moat.c */
char *cli_control(const struct moat_conf *, const char *line);

#endif
