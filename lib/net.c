/*
 * net.c - shared listener plumbing (see net.h).
 */
#include "config.h"
#include "net.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>

/* the listener's argument: our pause state plus the caller's callback */
struct net_listener {
	struct evconnlistener *lis;
	struct event *timer;
	const char *name;
	evconnlistener_cb cb;
	void   *arg;
};

static void
trampoline(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int salen,
    void *arg)
{
	struct net_listener *n = arg;
	n->cb(lis, fd, sa, salen, n->arg);
}

static void
resume(evutil_socket_t fd, short ev, void *arg)
{
	struct net_listener *n = arg;
	evconnlistener_enable(n->lis);
}

static void
on_error(struct evconnlistener *lis, void *arg)
{
	struct net_listener *n = arg;
	int e = EVUTIL_SOCKET_ERROR();
	struct timeval tv = { 1, 0 };

	if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
		log_warnx("%s: accept: %s; not accepting for 1 s", n->name, strerror(e));
		evconnlistener_disable(lis);
		evtimer_add(n->timer, &tv);
		return;
	}
	/* ECONNABORTED and friends: the peer gave up; nothing to do */
	log_debug("%s: accept: %s", n->name, strerror(e));
}

struct evconnlistener *
net_listen(struct event_base *base, int fd, evconnlistener_cb cb, void *arg, const char *name)
{
	/* lives as long as the worker: listeners are only disabled, never freed early */
	struct net_listener *n = xcalloc(1, sizeof(*n));

	n->cb = cb;
	n->arg = arg;
	n->name = name;
	n->lis = evconnlistener_new(base, trampoline, n, LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE,
	    -1, fd);
	if (n->lis == NULL) {
		free(n);
		return NULL;
	}
	n->timer = evtimer_new(base, resume, n);
	evconnlistener_set_error_cb(n->lis, on_error);
	return n->lis;
}

void
net_peer(const struct sockaddr *sa, char *ip, size_t ipsz, int *port)
{
	static const unsigned char mapped[12] = { 0,0,0,0,0,0,0,0,0,0,0xff,0xff };

	*port = 0;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &s4->sin_addr, ip, (socklen_t)ipsz);
		*port = ntohs(s4->sin_port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		if (!memcmp(&s6->sin6_addr, mapped, 12))
			inet_ntop(AF_INET, (const char *)&s6->sin6_addr + 12, ip, (socklen_t)ipsz);
		else
			inet_ntop(AF_INET6, &s6->sin6_addr, ip, (socklen_t)ipsz);
		*port = ntohs(s6->sin6_port);
	} else
		moat_strlcpy(ip, "unknown", ipsz);
}

void
net_sid(char out[NET_SID_SIZE])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char rnd[8];

	random_bytes(rnd, sizeof(rnd));
	for (int i = 0; i < 8; i++) {
		out[i * 2] = hex[rnd[i] >> 4];
		out[i * 2 + 1] = hex[rnd[i] & 15];
	}
	out[16] = '\0';
}
