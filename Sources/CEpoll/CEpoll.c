#define _GNU_SOURCE
#include <pthread.h>
#include <sys/socket.h>
#include "CEpoll.h"

int cepoll_accept(int fd) { return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }

void cepoll_name_thread(const char *name) { pthread_setname_np(pthread_self(), name); }
