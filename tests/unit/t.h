/*
 * t.h - minimal TAP producer for unit tests.  Every check prints one TAP
 * line; the program exits non-zero if any failed.
 */
#ifndef MOAT_T_H
#define MOAT_T_H
#include <stdio.h>
#include <string.h>

static int t_n, t_failed;

#define ok(cond, ...) do { \
	int ok_c_ = (cond) ? 1 : 0; \
	printf("%sok %d - ", ok_c_ ? "" : "not ", ++t_n); \
	printf(__VA_ARGS__); printf("\n"); \
	if (!ok_c_) { t_failed++; printf("#   failed at %s:%d\n", __FILE__, __LINE__); } \
	fflush(stdout); } while (0)
#define is_int(a, b, ...) do { long long is_a_ = (long long)(a), is_b_ = (long long)(b); \
	ok(is_a_ == is_b_, __VA_ARGS__); \
	if (is_a_ != is_b_) printf("#   got %lld, expected %lld\n", is_a_, is_b_); } while (0)
#define is_str(a, b, ...) do { const char *is_a_ = (a), *is_b_ = (b); \
	int is_eq_ = is_a_ && is_b_ && strcmp(is_a_, is_b_) == 0; \
	ok(is_eq_, __VA_ARGS__); \
	if (!is_eq_) printf("#   got \"%s\", expected \"%s\"\n", is_a_ ? is_a_ : "(null)", is_b_ ? is_b_ : "(null)"); } while (0)
#define t_done() (printf("1..%d\n", t_n), t_failed ? 1 : 0)
#endif
