/* placeholder until local delivery lands */
#include "config.h"
#include "local.h"
#include "buf.h"
enum local_result local_deliver(const struct moat_conf *c, const char *rcpt, int fd, off_t off, off_t len, const char *prepend, struct buf *reply) { buf_adds(reply, "451 4.3.0 local delivery not built yet"); return LOCAL_TEMPFAIL; }
