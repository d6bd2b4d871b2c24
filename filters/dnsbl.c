/*
 * dnsbl.c - placeholder: the dnsbl filter is not built yet (issue #4).
 * The engine skips a filter whose init is NULL.
 */
#include "config.h"
#include "filter.h"

const struct filter filter_dnsbl = { "dnsbl", FLT_CONNECT, NULL, NULL, NULL };
