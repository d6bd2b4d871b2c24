/*
 * helo.c - placeholder: the helo filter is not built yet (issue #4).
 * The engine skips a filter whose init is NULL.
 */
#include "config.h"
#include "filter.h"

const struct filter filter_helo = { "helo", FLT_HELO, NULL, NULL, NULL };
