/*
 * rules.h - rule files in SpamAssassin syntax, compiled with PCRE2 (JIT).
 *
 * rules_load() reads rule files once (a path is a file, a glob, or a
 * directory whose *.cf and *.rules files are read in name order), compiles
 * every regex, resolves meta rules and returns an immutable rule set that
 * any number of threads may evaluate at once with rules_eval().  What the
 * loader cannot run (eval: tests, unknown directives, bad regexes, blocks
 * for plugins moat does not have) is skipped, counted and described in the
 * report as FILE:LINE: reason; it never stops the rest from loading.
 *
 * Scores: the first score of `score NAME a b c d` is used, which is
 * SpamAssassin's score set 0 ("no Bayes, no network tests").  A rule with
 * a score of 0 is not run (as in SpamAssassin); meta rules see it as 0.
 */
#ifndef MOAT_RULES_H
#define MOAT_RULES_H

#include <stdbool.h>
#include <stddef.h>

struct mime_msg;
struct rules;

/* why a line was not loaded */
enum rules_issue_kind {
	RULES_I_EVAL,           /* eval: test, needs Perl code */
	RULES_I_REGEX,          /* regex that PCRE2 does not compile */
	RULES_I_DIRECTIVE,      /* unknown directive */
	RULES_I_UNSUPPORTED,    /* known but unsupported rule type or option */
	RULES_I_META,           /* meta depending on a rule that was skipped */
	RULES_I_SYNTAX,         /* malformed line, unbalanced if/endif */
	RULES_I_FILE,           /* file or directory unreadable, include loop */
	RULES_I_NKINDS
};

struct rules_issue {
	enum rules_issue_kind kind;
	char *where;            /* "FILE:LINE" */
	char *text;             /* the reason, one line */
};

struct rules_report {
	unsigned files;         /* files read */
	unsigned loaded;        /* rules compiled and active (incl. __ rules) */
	unsigned disabled;      /* defined but scored 0, not run */
	unsigned skipped_block; /* lines in if/ifplugin branches not taken */
	unsigned count[RULES_I_NKINDS];
	struct rules_issue *issues;     /* at most RULES_MAX_ISSUES kept */
	size_t nissues;
	unsigned hard;          /* hard errors: RULES_I_REGEX/SYNTAX/FILE */
};

#define RULES_MAX_ISSUES 10000

void rules_report_free(struct rules_report *);
const char *rules_issue_kind_name(enum rules_issue_kind);

/* NULL with *err (malloc'ed) only when nothing could be loaded at all
 * (no path readable); report may be NULL. */
struct rules *rules_load(const char *const *paths, size_t n,
    struct rules_report *report, char **err);
void rules_free(struct rules **);
size_t rules_count(const struct rules *);
/* the i-th active rule (i < rules_count()), __ rules included */
const char *rules_name_at(const struct rules *, size_t i);

struct rules_hit {
	const char *name;       /* valid while the rule set lives */
	const char *desc;       /* "" if none */
	double score;
	unsigned count;         /* matches counted (tflags multiple) */
};

struct rules_hits {
	struct rules_hit *v;
	size_t n, cap;
	double total;
	unsigned limit_hits;    /* regex runs stopped by the PCRE2 limits */
};

/* Evaluate every active rule on one message: m from mime_parse() of
 * raw/rawlen.  Only rules with a non-zero score and no __ prefix are
 * reported, sorted by name.  0, or -1 if memory ran out. */
int rules_eval(const struct rules *, const struct mime_msg *m,
    const char *raw, size_t rawlen, struct rules_hits *out);
void rules_hits_free(struct rules_hits *);

/* Perl regex literal ("/re/flags", "m{re}i", ...) to a PCRE2 pattern and
 * options.  0 on success; -1 with *why set (static string).  Exposed for
 * the tests. */
int rules_perl_re(const char *s, size_t len, char **pattern, unsigned *options,
    const char **why);

/* SpamAssassin's uri rule strings for one raw URI (Util.pm
 * uri_list_canonicalize(): the URI itself, then cleaned variants: scheme
 * added, %-escapes of printable ASCII decoded, &#NN; decoded, default
 * port removed, numeric hosts as dotted quads, URLs inside redirectors);
 * cb may see a string twice.  Exposed for the tests. */
void rules_uri_variants(const char *uri, size_t len,
    void (*cb)(void *, const char *, size_t), void *arg);
/* Message.pm split_into_array_of_short_paragraphs() (rawbody chunks) */
void rules_split_paragraphs(const char *s, size_t len,
    void (*cb)(void *, const char *, size_t), void *arg);

#endif
