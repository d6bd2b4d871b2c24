/*
 * alerts.h - threshold alerts, checked on a worker timer (alert-interval):
 * queue size, oldest queued message, deferral rate, free space in the
 * state-dir, AV database age, worker restarts.  A condition that starts
 * gives one log line at crit, one journal event, and, if configured, one
 * mail to the postmaster (through moat's own queue) and one webhook POST
 * (conditions starting at the same check share them);
 * it then stays raised, silent, until it has been clear for two checks in
 * a row, which gives one recovery notice the same ways.  What is raised
 * is kept in <state-dir>/alerts.state: a new worker (reload, restart) does
 * not raise it again.
 */
#ifndef MOAT_ALERTS_H
#define MOAT_ALERTS_H

struct buf;

void alerts_start(void);
void alerts_stop(void);
/* moat_alert_firing{alert=...} gauges */
void alerts_render(struct buf *);
/* ["queue-size", ...]: the alerts raised now */
void alerts_json(struct buf *);

#endif
