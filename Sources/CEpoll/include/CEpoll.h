// The Linux system interfaces Switchyard's own event loop uses (Glibc's Swift module leaves
// out epoll and eventfd).
#ifndef SWITCHYARD_CEPOLL_H
#define SWITCHYARD_CEPOLL_H
#ifdef __linux__
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <unistd.h>

/// `epoll_event.data` is a union: Swift reads and writes it through these.
static inline void cepoll_set_data(struct epoll_event *event, unsigned long long value) { event->data.u64 = value; }
static inline unsigned long long cepoll_data(const struct epoll_event *event) { return event->data.u64; }
static inline int cepoll_errno(void) { return errno; }
/// `accept4` with `SOCK_NONBLOCK | SOCK_CLOEXEC` (a GNU extension: compiled in CEpoll.c).
int cepoll_accept(int fd);
/// Names the calling thread (up to 15 bytes).
void cepoll_name_thread(const char *name);
#endif
#endif
