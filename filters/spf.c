/*
 * spf.c - placeholder: the spf filter is not built yet (issue #4).
 * The engine skips a filter whose init is NULL.
 */
#include "config.h"
#include "filter.h"

const struct filter filter_spf = { "spf", FLT_MAIL, NULL, NULL, NULL };
