/*
 * control.h - the control socket <state-dir>/control.sock used by the moat
 * CLI.  One request line, one reply line ("ok ..." or "error: ..."), then
 * the server closes.  Only root and the worker's own uid may connect
 * (SO_PEERCRED).  Requests: "ping", "status", "queue flush".
 */
#ifndef MOAT_CONTROL_H
#define MOAT_CONTROL_H

int  control_start(void);
void control_stop(void);

#endif
