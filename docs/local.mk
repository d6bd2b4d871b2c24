# man pages
dist_man_MANS += docs/moatd.8 docs/moat.1 docs/moat.conf.5
EXTRA_DIST += docs/architecture.md docs/imap.md
