/*
 * dmarc.c - placeholder: the dmarc filter is not built yet (issue #4).
 * The engine skips a filter whose init is NULL.
 */
#include "config.h"
#include "filter.h"

const struct filter filter_dmarc = { "dmarc", FLT_DATA, NULL, NULL, NULL };
