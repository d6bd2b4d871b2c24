/*
 * buf.h - a length-tracking growable byte buffer for anything built from
 * network data.  Always NUL-terminated for convenience (the NUL is not
 * counted in len).  Allocation failure is fatal.
 */
#ifndef MOAT_BUF_H
#define MOAT_BUF_H

#include <stddef.h>
#include "log.h"

struct buf {
	char   *data;
	size_t  len;
	size_t  cap;
};

#define BUF_INIT { NULL, 0, 0 }

void buf_reserve(struct buf *, size_t extra);
void buf_add(struct buf *, const void *, size_t);
void buf_adds(struct buf *, const char *);
void buf_addc(struct buf *, char);
void buf_printf(struct buf *, const char *, ...) LOGFMT(2, 3);
void buf_reset(struct buf *);           /* len = 0, keeps memory */
void buf_free(struct buf *);
/* drop the first n bytes */
void buf_consume(struct buf *, size_t n);
/* detach the data (caller frees); buffer becomes empty */
char *buf_steal(struct buf *);

#endif
