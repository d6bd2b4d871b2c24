/*
 * pool.c - thread pool with completion delivered to a libevent loop.
 * Completed jobs are put on a list and the loop is woken through a pipe
 * (one byte per wake-up, only when the list goes from empty to non-empty).
 */
#include "config.h"
#include "pool.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#include <event2/event.h>

struct job {
	pool_fn work, done;
	void   *arg;
	struct job *next;
};

struct pool {
	pthread_mutex_t mu;
	pthread_cond_t  cv;
	struct job *head, *tail;         /* waiting */
	struct job *dhead, *dtail;       /* completed */
	pthread_t *threads;
	int     nthreads;
	int     stop;
	size_t  pending;
	int     wake[2];
	struct event *ev;
};

static void *
worker_main(void *arg)
{
	struct pool *p = arg;
	struct job *j;

	for (;;) {
		pthread_mutex_lock(&p->mu);
		while (p->head == NULL && !p->stop)
			pthread_cond_wait(&p->cv, &p->mu);
		if (p->head == NULL && p->stop) {
			pthread_mutex_unlock(&p->mu);
			return NULL;
		}
		j = p->head;
		p->head = j->next;
		if (p->head == NULL)
			p->tail = NULL;
		pthread_mutex_unlock(&p->mu);

		j->work(j->arg);

		pthread_mutex_lock(&p->mu);
		j->next = NULL;
		int was_empty = p->dhead == NULL;
		if (p->dtail)
			p->dtail->next = j;
		else
			p->dhead = j;
		p->dtail = j;
		pthread_mutex_unlock(&p->mu);
		if (was_empty) {
			char c = 1;
			while (write(p->wake[1], &c, 1) < 0 && errno == EINTR)
				;
		}
	}
}

static void
run_done(struct pool *p)
{
	struct job *list, *j;

	pthread_mutex_lock(&p->mu);
	list = p->dhead;
	p->dhead = p->dtail = NULL;
	pthread_mutex_unlock(&p->mu);
	while ((j = list) != NULL) {
		list = j->next;
		p->pending--;
		if (j->done)
			j->done(j->arg);
		free(j);
	}
}

static void
on_wake(evutil_socket_t fd, short ev, void *arg)
{
	char b[256];
	while (read(fd, b, sizeof(b)) > 0)
		;
	run_done(arg);
}

struct pool *
pool_new(struct event_base *base, int n)
{
	struct pool *p = xcalloc(1, sizeof(*p));

	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	if (pipe2(p->wake, O_NONBLOCK | O_CLOEXEC) < 0)
		fatal("pipe2");
	p->ev = event_new(base, p->wake[0], EV_READ | EV_PERSIST, on_wake, p);
	event_add(p->ev, NULL);
	p->threads = xcalloc((size_t)n, sizeof(pthread_t));
	p->nthreads = n;
	for (int i = 0; i < n; i++)
		if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0)
			fatalx("pthread_create failed");
	return p;
}

void
pool_submit(struct pool *p, pool_fn work, pool_fn done, void *arg)
{
	struct job *j = xmalloc(sizeof(*j));
	j->work = work;
	j->done = done;
	j->arg = arg;
	j->next = NULL;
	p->pending++;
	pthread_mutex_lock(&p->mu);
	if (p->tail)
		p->tail->next = j;
	else
		p->head = j;
	p->tail = j;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

size_t
pool_pending(const struct pool *p)
{
	return p->pending;
}

void
pool_free(struct pool *p)
{
	if (p == NULL)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = 1;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	run_done(p);
	event_free(p->ev);
	close(p->wake[0]);
	close(p->wake[1]);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p->threads);
	free(p);
}
