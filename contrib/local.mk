# contrib/: the sample configuration (installed), the systemd unit and the
# helper scripts (shipped in the tarball).
moatconfdir = $(sysconfdir)/moat
dist_moatconf_DATA = contrib/moat.conf.sample
EXTRA_DIST += contrib/moatd.service contrib/quickstart.sh contrib/test.sh \
	contrib/install-deps.sh contrib/lsan.supp \
	contrib/prometheus/moat-alerts.yml contrib/grafana/moat-dashboard.json docs/operations.md \
	bench/relay-bench.sh bench/README.md README.md
