/*
 * moatd.c - the moat daemon's master process.
 *
 * Runs as root when started by root: parses and validates the config,
 * prepares the state-dir, takes the pid-file lock (one master per
 * state-dir), removes never-acknowledged files from spool/incoming, binds
 * every listener, then forks the worker, which drops privileges and does
 * all network and message work.  The master only watches:
 *   worker died      -> restarted (1 s, backing off to 30 s if it keeps dying)
 *   SIGHUP           -> reload: parse the config again; if it is valid,
 *                       start a new worker with it (listeners reused or
 *                       bound) and let the old one drain; if not, log every
 *                       error and keep serving with the old config
 *   SIGTERM/SIGINT   -> the workers drain, then the master exits
 * It never parses network input.
 */
#include "config.h"
#include "buf.h"
#include "conf.h"
#include "log.h"
#include "privs.h"
#include "engine.h"
#include "lists.h"
#include "mime.h"
#include "spool.h"
#include "tls.h"
#include "util.h"
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_OLD 16
#define STOP_TIMEOUT 40

static const char *conf_arg;
static struct moat_conf *conf;
static struct tls_server *tls;      /* goes with conf */
static pid_t master_pid;
static pid_t worker_pid;
static time_t worker_started;
static pid_t old_workers[MAX_OLD];
static int pid_fd = -1;

static void __attribute__((noreturn))
usage(void)
{
	fprintf(stderr, "usage: moatd [-f] [-n] [-c FILE]\n"
	    "  -c FILE  configuration file (default: $MOAT_CONF, " SYSCONFDIR "/moat/moat.conf,\n"
	    "           else the embedded all-in-one default)\n"
	    "  -f       stay in the foreground and log to stderr\n"
	    "  -n       check the configuration and exit\n");
	exit(2);
}

static void
raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static int
bind_listener(struct listen_conf *l)
{
	int fd, one = 1;

	fd = socket(l->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (l->ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&l->ss, l->sslen) < 0 || listen(fd, 1024) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* bind c's listeners, reusing the sockets of old (may be NULL) */
static int
bind_all(struct moat_conf *c, struct moat_conf *old)
{
	for (size_t i = 0; i < c->nlistens; i++) {
		struct listen_conf *l = &c->listens[i];
		l->fd = -1;
		for (size_t j = 0; old && j < old->nlistens; j++) {
			struct listen_conf *o = &old->listens[j];
			if (o->fd >= 0 && o->sslen == l->sslen && !memcmp(&o->ss, &l->ss, l->sslen)) {
				l->fd = o->fd;
				o->fd = -1;     /* moved */
				break;
			}
		}
		if (l->fd < 0 && (l->fd = bind_listener(l)) < 0) {
			log_crit("%s:%d: cannot listen on %s: %s", l->file, l->line, l->spec,
			    strerror(errno));
			return -1;
		}
	}
	return 0;
}

static void
close_listeners(struct moat_conf *c)
{
	for (size_t i = 0; c && i < c->nlistens; i++)
		if (c->listens[i].fd >= 0) {
			close(c->listens[i].fd);
			c->listens[i].fd = -1;
		}
}

static int
prepare_state_dir(const struct moat_conf *c)
{
	char path[PATH_MAX];
	char *err = NULL;
	static const char *subs[] = { "spool", "spool/incoming", "spool/queue", "spool/state", "mail" };

	if (mkdir_p(c->state_dir, 0755) < 0) {
		log_crit("cannot create state-dir %s: %s", c->state_dir, strerror(errno));
		return -1;
	}
	privs_chown(c, c->state_dir);
	if (spool_init(c, &err) < 0) {
		log_crit("spool: %s", err);
		free(err);
		return -1;
	}
	for (size_t i = 0; i < ARRAY_SIZE(subs); i++) {
		conf_path(c, subs[i], path, sizeof(path));
		if (mkdir_p(path, 0700) < 0) {
			log_crit("cannot create %s: %s", path, strerror(errno));
			return -1;
		}
		privs_chown(c, path);
	}
	/* files the worker must write that may exist from an earlier run as another user */
	static const char *const lmdb[] = { "bayes.lmdb", "bayes.lmdb/data.mdb", "bayes.lmdb/lock.mdb" };
	for (size_t i = 0; i < ARRAY_SIZE(lmdb); i++) {
		conf_path(c, lmdb[i], path, sizeof(path));
		if (access(path, F_OK) == 0)
			privs_chown(c, path);
	}
	conf_path(c, "moat.db", path, sizeof(path));
	if (access(path, F_OK) == 0) {
		privs_chown(c, path);
		char extra[PATH_MAX + 8];
		snprintf(extra, sizeof(extra), "%s-wal", path);
		if (access(extra, F_OK) == 0)
			privs_chown(c, extra);
		snprintf(extra, sizeof(extra), "%s-shm", path);
		if (access(extra, F_OK) == 0)
			privs_chown(c, extra);
	}
	return 0;
}

static int
lock_pidfile(const struct moat_conf *c)
{
	char buf[32];
	int fd = open(c->pid_file, O_RDWR | O_CREAT | O_CLOEXEC, 0644);

	if (fd < 0) {
		log_crit("cannot open pid file %s: %s", c->pid_file, strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		ssize_t n = read(fd, buf, sizeof(buf) - 1);
		buf[n > 0 ? n : 0] = '\0';
		buf[strcspn(buf, "\n")] = '\0';
		log_crit("another moatd (pid %s) is running with state-dir %s", buf[0] ? buf : "?",
		    c->state_dir);
		close(fd);
		return -1;
	}
	return fd;
}

static void
write_pid(int fd)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
	if (ftruncate(fd, 0) == 0)
		(void)pwrite(fd, buf, (size_t)n, 0);
}

static void
daemonize(void)
{
	pid_t p = fork();
	if (p < 0)
		fatal("fork");
	if (p > 0)
		_exit(0);
	setsid();
	int fd = open("/dev/null", O_RDWR);
	if (fd >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		if (fd > 2)
			close(fd);
	}
	if (chdir("/") < 0)
		log_warn("chdir /");
}

static pid_t
start_worker(struct moat_conf *c, struct tls_server *t)
{
	pid_t p = fork();
	sigset_t none;

	if (p < 0) {
		log_warn("master: fork");
		return -1;
	}
	if (p > 0) {
		log_info("master event=worker-started pid=%d", (int)p);
		return p;
	}
	/* the worker */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGCHLD, SIG_DFL);
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != master_pid)
		_exit(0);
	if (pid_fd >= 0)
		close(pid_fd);
	log_setident("moatd-worker");
	privs_drop(c);
	exit(worker_main(c, t));
}

static void
add_old_worker(pid_t p)
{
	for (int i = 0; i < MAX_OLD; i++)
		if (old_workers[i] == 0) {
			old_workers[i] = p;
			return;
		}
	kill(p, SIGKILL);       /* too many draining at once */
}

static bool
children_left(void)
{
	if (worker_pid > 0)
		return true;
	for (int i = 0; i < MAX_OLD; i++)
		if (old_workers[i])
			return true;
	return false;
}

static void
signal_children(int sig)
{
	if (worker_pid > 0)
		kill(worker_pid, sig);
	for (int i = 0; i < MAX_OLD; i++)
		if (old_workers[i])
			kill(old_workers[i], sig);
}

static void
reload(void)
{
	struct buf errs = BUF_INIT;
	struct moat_conf *nc;

	log_info("master event=reload");
	nc = conf_load_default(conf_arg, &errs);
	if (nc == NULL) {
		char *line = errs.data, *nl;
		while (line && *line) {
			nl = strchr(line, '\n');
			if (nl)
				*nl = '\0';
			log_crit("reload refused: %s", line);
			line = nl ? nl + 1 : NULL;
		}
		log_crit("master event=reload-failed (still running with the previous configuration)");
		buf_free(&errs);
		return;
	}
	buf_free(&errs);
	if (strcmp(nc->state_dir, conf->state_dir) != 0) {
		log_crit("master event=reload-failed: state-dir cannot change on reload (restart moatd)");
		conf_free(nc);
		return;
	}
	char *terr = NULL;
	struct tls_server *nt = tls_server_new(nc, &terr);
	if (terr) {
		log_crit("reload refused: %s", terr);
		log_crit("master event=reload-failed (still running with the previous configuration)");
		free(terr);
		conf_free(nc);
		return;
	}
	if (bind_all(nc, conf) < 0) {
		tls_server_free(nt);
		/* give back the sockets we took over */
		for (size_t i = 0; i < nc->nlistens; i++)
			for (size_t j = 0; j < conf->nlistens; j++)
				if (conf->listens[j].fd < 0 && nc->listens[i].fd >= 0 &&
				    nc->listens[i].sslen == conf->listens[j].sslen &&
				    !memcmp(&nc->listens[i].ss, &conf->listens[j].ss, nc->listens[i].sslen)) {
					conf->listens[j].fd = nc->listens[i].fd;
					nc->listens[i].fd = -1;
				}
		close_listeners(nc);
		conf_free(nc);
		log_crit("master event=reload-failed (still running with the previous configuration)");
		return;
	}
	pid_t old = worker_pid;
	pid_t p = start_worker(nc, nt);
	if (p < 0) {
		close_listeners(nc);
		conf_free(nc);
		tls_server_free(nt);
		return;
	}
	worker_pid = p;
	worker_started = time(NULL);
	if (old > 0) {
		add_old_worker(old);
		kill(old, SIGUSR2);     /* stop accepting, let sessions finish */
	}
	close_listeners(conf);          /* the ones the new config dropped */
	conf_free(conf);
	tls_server_free(tls);
	conf = nc;
	tls = nt;
	log_setlevel(conf->log_level);
	log_info("master event=reloaded");
}

int
main(int argc, char **argv)
{
	bool fg = false, check = false;
	struct buf errs = BUF_INIT;
	int ch;
	sigset_t set;
	siginfo_t si;
	time_t restart_at = 0, stop_deadline = 0;
	int backoff = 1;
	bool stopping = false;

	while ((ch = getopt(argc, argv, "c:fnh")) != -1) {
		switch (ch) {
		case 'c': conf_arg = optarg; break;
		case 'f': fg = true; break;
		case 'n': check = true; break;
		default: usage();
		}
	}
	if (optind != argc)
		usage();

	conf = conf_load_default(conf_arg, &errs);
	if (conf == NULL) {
		fputs(errs.data ? errs.data : "configuration error\n", stderr);
		buf_free(&errs);
		return 1;
	}
	buf_free(&errs);
	{
		uid_t u; gid_t g; char name[64]; char *err = NULL;
		if (!privs_run_user(conf, &u, &g, name, sizeof(name), &err)) {
			fprintf(stderr, "%s: %s\n", conf->path, err);
			return 1;
		}
	}
	{
		char *terr = NULL;
		tls = tls_server_new(conf, &terr);
		if (terr) {
			fprintf(stderr, "%s\n", terr);
			free(terr);
			return 1;
		}
	}
	if (check) {
		/* load what the worker will load (rules, AV database) so their
		 * errors show here, not in a worker that keeps dying */
		char *eerr = NULL;
		mime_init();
		struct engine *e = engine_new(conf, &eerr);
		if (e == NULL) {
			fprintf(stderr, "%s: %s\n", conf->path, eerr);
			free(eerr);
			tls_server_free(tls);
			conf_free(conf);
			return 1;
		}
		engine_free(e);
		if (conf->lists_dir) {
			struct lists *l = lists_load(conf->lists_dir, &eerr);
			if (l == NULL) {
				fprintf(stderr, "%s\n", eerr);
				free(eerr);
				tls_server_free(tls);
				conf_free(conf);
				return 1;
			}
			lists_unref(l);
		}
		printf("%s: configuration OK\n", conf->path);
		tls_server_free(tls);
		conf_free(conf);
		return 0;
	}

	log_init("moatd", fg, conf->syslog_facility);
	log_setlevel(conf->log_level);
	if (conf->nlistens == 0)
		log_warnx("no listen directive: moatd will only deliver what is queued");
	if (!conf_arg && conf_default_path(NULL) == NULL)
		log_notice("using the embedded default configuration (all-in-one, state-dir %s)",
		    conf->state_dir);
	raise_nofile();
	signal(SIGPIPE, SIG_IGN);

	if (prepare_state_dir(conf) < 0)
		return 1;
	if ((pid_fd = lock_pidfile(conf)) < 0)
		return 1;
	/* recover the spool before anyone can connect */
	int n = spool_clean_incoming();
	if (n)
		log_info("master event=spool-cleanup removed=%d (never acknowledged)", n);
	if ((n = spool_recover()) > 0)
		log_warnx("master event=spool-recover set-aside=%d (incomplete, never acknowledged)", n);
	if (bind_all(conf, NULL) < 0)
		return 1;
	if (!fg)
		daemonize();
	master_pid = getpid();
	write_pid(pid_fd);

	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);

	log_info("master event=started pid=%d config=%s state-dir=%s", (int)master_pid, conf->path,
	    conf->state_dir);
	worker_pid = start_worker(conf, tls);
	worker_started = time(NULL);
	if (worker_pid < 0) {
		worker_pid = 0;
		restart_at = time(NULL) + 1;
	}

	for (;;) {
		struct timespec ts = { 1, 0 };
		int sig = sigtimedwait(&set, &si, &ts);
		pid_t p;
		int st;

		while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
			if (p == worker_pid) {
				worker_pid = 0;
				if (stopping)
					continue;
				if (WIFSIGNALED(st))
					log_crit("master event=worker-died pid=%d signal=%d", (int)p, WTERMSIG(st));
				else
					log_crit("master event=worker-exited pid=%d status=%d", (int)p, WEXITSTATUS(st));
				backoff = time(NULL) - worker_started < 10 ? MIN(backoff * 2, 30) : 1;
				restart_at = time(NULL) + (backoff > 1 ? backoff : 1);
				if (backoff <= 2)
					restart_at = time(NULL);    /* first crash: restart at once */
			} else {
				for (int i = 0; i < MAX_OLD; i++)
					if (old_workers[i] == p)
						old_workers[i] = 0;
				log_info("master event=old-worker-exited pid=%d", (int)p);
			}
		}
		if (sig == SIGHUP && !stopping)
			reload();
		else if ((sig == SIGTERM || sig == SIGINT) && !stopping) {
			log_info("master event=stopping signal=%d", sig);
			stopping = true;
			stop_deadline = time(NULL) + STOP_TIMEOUT;
			signal_children(SIGTERM);
		}
		if (stopping) {
			if (!children_left())
				break;
			if (time(NULL) >= stop_deadline) {
				log_warnx("master: workers did not stop in time; killing them");
				signal_children(SIGKILL);
				stop_deadline = time(NULL) + 5;
			}
			continue;
		}
		if (worker_pid == 0 && time(NULL) >= restart_at) {
			worker_pid = start_worker(conf, tls);
			worker_started = time(NULL);
			if (worker_pid < 0) {
				worker_pid = 0;
				restart_at = time(NULL) + 5;
			}
		}
	}
	close_listeners(conf);
	unlink(conf->pid_file);
	log_info("master event=stopped");
	tls_server_free(tls);
	conf_free(conf);
	return 0;
}
