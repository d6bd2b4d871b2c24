/*
 * http.h - `listen http ADDR:PORT`: /metrics (Prometheus text format),
 * /healthz, and a read-only JSON API (/api/status, /api/queue,
 * /api/quarantine) on the worker's event loop (libevent's evhttp).
 * The sockets are bound by the master like every listener.  With
 * http-token (or http-token-file) every path but /healthz needs
 * "Authorization: Bearer TOKEN".  Nothing here blocks: the costly figures
 * come from the ops cache (ops.h).
 */
#ifndef MOAT_HTTP_H
#define MOAT_HTTP_H

struct buf;

void http_start(void);
void http_drain(void);          /* stop accepting (reload, shutdown) */
void http_stop(void);
/* the /api/status document */
void http_status_json(struct buf *);

#endif
