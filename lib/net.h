/*
 * net.h - what every listener (SMTP, POP3, IMAP, later milter and HTTP)
 * does the same way: accept on a socket the master bound, name the peer,
 * give the session an id.  Runs in the worker, on its event loop.
 */
#ifndef MOAT_NET_H
#define MOAT_NET_H

#include <stddef.h>
#include <sys/socket.h>
#include <event2/listener.h>

#define NET_SID_SIZE 17     /* 16 hex digits + NUL */

/*
 * Listen on the bound socket fd.  When accept() fails for lack of file
 * descriptors or memory, the listener pauses for a second instead of
 * spinning on the ready socket (and logs once per pause).  name is used in
 * log lines ("smtp", "pop3" ...).
 */
struct evconnlistener *net_listen(struct event_base *, int fd, evconnlistener_cb cb, void *arg,
    const char *name);
/* the peer as text ("192.0.2.1", "2001:db8::1"; v4-mapped v6 shown as v4) and port */
void net_peer(const struct sockaddr *, char *ip, size_t ipsz, int *port);
/* a random session id: 16 lowercase hex digits */
void net_sid(char out[NET_SID_SIZE]);

#endif
