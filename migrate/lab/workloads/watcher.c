/* watcher PATH...: an inotify watch on each PATH (a directory or a file) and, with -f before the paths, a fanotify
 * mark on each as well (where the kernel lets this process use fanotify); then prints one line per event,
 * "inotify PATH NAME EVENT" or "fanotify PATH EVENT", as it comes (the lab's tests of watches across a move).
 * Prints "watching" once every watch is in place. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <unistd.h>

#define MAX_PATHS 16
#define INOTIFY_MASK (IN_CREATE | IN_DELETE | IN_MODIFY | IN_MOVED_TO)
#define FANOTIFY_MASK (FAN_MODIFY | FAN_CLOSE_WRITE | FAN_EVENT_ON_CHILD)

static const char *inotify_event(unsigned mask) {
    if (mask & IN_CREATE) return "create";
    if (mask & IN_DELETE) return "delete";
    if (mask & IN_MODIFY) return "modify";
    if (mask & IN_MOVED_TO) return "moved-to";
    return "other";
}

static void read_inotify(int fd, char **paths, int *wds, int n) {
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t len = read(fd, buf, sizeof(buf));
    for (char *p = buf; len > 0 && p < buf + len;) {
        struct inotify_event *ev = (struct inotify_event *)p;
        const char *path = "?";
        for (int i = 0; i < n; i++)
            if (wds[i] == ev->wd) path = paths[i];
        printf("inotify %s %s %s\n", path, ev->len ? ev->name : "-", inotify_event(ev->mask));
        p += sizeof(*ev) + ev->len;
    }
}

static void read_fanotify(int fd) {
    char buf[4096] __attribute__((aligned(__alignof__(struct fanotify_event_metadata))));
    ssize_t len = read(fd, buf, sizeof(buf));
    struct fanotify_event_metadata *ev = (struct fanotify_event_metadata *)buf;
    for (; FAN_EVENT_OK(ev, len); ev = FAN_EVENT_NEXT(ev, len))
        printf("fanotify %s\n", ev->mask & FAN_CLOSE_WRITE ? "close-write" : ev->mask & FAN_MODIFY ? "modify" : "other");
}

int main(int argc, char **argv) {
    int fan = argc > 1 && strcmp(argv[1], "-f") == 0;
    char **paths = argv + 1 + fan;
    int n = argc - 1 - fan, wds[MAX_PATHS];
    if (n < 1 || n > MAX_PATHS) {
        fprintf(stderr, "usage: watcher [-f] PATH...\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int in = inotify_init1(IN_CLOEXEC), fa = -1;
    if (in < 0) {
        perror("watcher: inotify_init1");
        return 1;
    }
    for (int i = 0; i < n; i++)
        if ((wds[i] = inotify_add_watch(in, paths[i], INOTIFY_MASK)) < 0) {
            fprintf(stderr, "watcher: inotify_add_watch %s: %s\n", paths[i], strerror(errno));
            return 1;
        }
    if (fan) {
        fa = fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_REPORT_FID, O_RDONLY);
        if (fa < 0) {
            perror("watcher: fanotify_init");
            return 1;
        }
        for (int i = 0; i < n; i++)
            if (fanotify_mark(fa, FAN_MARK_ADD, FANOTIFY_MASK, AT_FDCWD, paths[i]) < 0) {
                fprintf(stderr, "watcher: fanotify_mark %s: %s\n", paths[i], strerror(errno));
                return 1;
            }
    }
    printf("watching\n");
    struct pollfd pfd[2] = {{.fd = in, .events = POLLIN}, {.fd = fa, .events = POLLIN}};
    for (;;) {
        if (poll(pfd, fan ? 2 : 1, -1) < 0) {
            if (errno == EINTR) continue;
            perror("watcher: poll");
            return 1;
        }
        if (pfd[0].revents & POLLIN) read_inotify(in, paths, wds, n);
        if (fan && (pfd[1].revents & POLLIN)) read_fanotify(fa);
    }
}
