/*
 * control.c - the worker's control socket (see control.h).
 * Runs in: the worker, on the event loop.  Input: one line from a local
 * process that passed the uid check; bounded to 1 KiB.
 */
#include "config.h"
#include "control.h"
#include "conf.h"
#include "log.h"
#include "queue.h"
#include "smtp_session.h"
#include "util.h"
#include "worker.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>

static struct evconnlistener *ctl_lis;
static char ctl_path[PATH_MAX];

static void
ctl_write_done(struct bufferevent *bev, void *arg)
{
	bufferevent_free(bev);
}

static void
ctl_answer(struct bufferevent *bev, const char *line)
{
	struct evbuffer *out = bufferevent_get_output(bev);

	if (!strcmp(line, "ping"))
		evbuffer_add_printf(out, "ok pong\n");
	else if (!strcmp(line, "queue flush")) {
		queue_flush(W->queue);
		log_info("control event=queue-flush");
		evbuffer_add_printf(out, "ok queue flushed\n");
	} else if (!strcmp(line, "status")) {
		struct queue_stats qs;
		queue_get_stats(W->queue, &qs);
		evbuffer_add_printf(out, "ok pid=%d uptime=%lld sessions=%zu queue=%zu active=%zu deferred=%zu oldest=%lld\n",
		    (int)getpid(), (long long)(time(NULL) - W->started), smtp_session_count(),
		    qs.messages, qs.active, qs.deferred, qs.oldest);
	} else
		evbuffer_add_printf(out, "error: unknown request \"%s\"\n", esc(line));
	bufferevent_setcb(bev, NULL, ctl_write_done, NULL, NULL);
	bufferevent_disable(bev, EV_READ);
}

static void
ctl_read(struct bufferevent *bev, void *arg)
{
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t len;
	char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_LF);

	if (line == NULL) {
		if (evbuffer_get_length(in) > 1024)
			bufferevent_free(bev);
		return;
	}
	if (len && line[len - 1] == '\r')
		line[--len] = '\0';
	ctl_answer(bev, line);
	free(line);
}

static void
ctl_event(struct bufferevent *bev, short what, void *arg)
{
	bufferevent_free(bev);
}

static void
ctl_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int salen,
    void *arg)
{
	struct ucred cr;
	socklen_t crl = sizeof(cr);
	struct bufferevent *bev;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crl) < 0 ||
	    (cr.uid != 0 && cr.uid != geteuid())) {
		log_warnx("control event=refused uid=%d", getsockopt(fd, SOL_SOCKET, SO_PEERCRED,
		    &cr, &crl) < 0 ? -1 : (int)cr.uid);
		close(fd);
		return;
	}
	bev = bufferevent_socket_new(W->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		close(fd);
		return;
	}
	struct timeval tv = { 10, 0 };
	bufferevent_set_timeouts(bev, &tv, &tv);
	bufferevent_setcb(bev, ctl_read, NULL, ctl_event, NULL);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
}

int
control_start(void)
{
	struct sockaddr_un sun;
	int fd;

	conf_path(W->conf, "control.sock", ctl_path, sizeof(ctl_path));
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (moat_strlcpy(sun.sun_path, ctl_path, sizeof(sun.sun_path)) >= sizeof(sun.sun_path)) {
		log_warnx("control: socket path too long: %s", ctl_path);
		return -1;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		log_warn("control: socket");
		return -1;
	}
	unlink(ctl_path);
	mode_t old = umask(0117);
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		umask(old);
		log_warn("control: bind %s", ctl_path);
		close(fd);
		return -1;
	}
	umask(old);
	ctl_lis = evconnlistener_new(W->base, ctl_accept, NULL, LEV_OPT_CLOSE_ON_FREE, 16, fd);
	if (ctl_lis == NULL) {
		close(fd);
		return -1;
	}
	return 0;
}

void
control_stop(void)
{
	if (ctl_lis) {
		evconnlistener_free(ctl_lis);
		ctl_lis = NULL;
	}
}
