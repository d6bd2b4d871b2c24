/*
 * geoip.c - placeholder: the geoip filter is not built yet (issue #4).
 * The engine skips a filter whose init is NULL.
 */
#include "config.h"
#include "filter.h"

const struct filter filter_geoip = { "geoip", FLT_CONNECT, NULL, NULL, NULL };
