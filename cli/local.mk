# moat: the admin CLI.
bin_PROGRAMS += moat
moat_SOURCES = cli/moat.c cli/cli.h cli/cmd_user.c cli/cmd_lists.c cli/cmd_queue.c cli/cmd_bayes.c cli/cmd_av.c cli/cmd_rules.c cli/cmd_quarantine.c \
	cli/cmd_status.c cli/cmd_report.c cli/cmd_trace.c cli/cmd_spf.c
moat_LDADD = $(MOAT_LIBS)
