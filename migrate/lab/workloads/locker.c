/* locker FILE: holds an exclusive flock(2), a POSIX (fcntl F_SETLK) write lock on byte 0 and an OFD lock
 * (F_OFD_SETLK) on byte 1 of FILE, then counts once a second (the lab's tests of file locks across a move).
 * locker -t FILE: tries each of the three without waiting, from a new process, and prints "flock:busy" or
 * "flock:free" (and so on) for each; exit 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

static int posix_lock(int fd, int cmd, off_t start) {
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = start, .l_len = 1};
    return fcntl(fd, cmd, &fl);
}

int main(int argc, char **argv) {
    int try = argc == 3 && strcmp(argv[1], "-t") == 0;
    if (argc != 2 && !try) {
        fprintf(stderr, "usage: locker [-t] FILE\n");
        return 2;
    }
    const char *path = argv[argc - 1];
    int a = open(path, O_RDWR | O_CREAT, 0644), b = open(path, O_RDWR), c = open(path, O_RDWR);
    if (a < 0 || b < 0 || c < 0) {
        perror("locker: open");
        return 1;
    }
    int got[3] = {flock(a, LOCK_EX | LOCK_NB), posix_lock(b, F_SETLK, 0), posix_lock(c, F_OFD_SETLK, 1)};
    const char *names[3] = {"flock", "posix", "ofd"};
    if (try) {
        for (int i = 0; i < 3; i++)
            printf("%s:%s\n", names[i], got[i] == 0 ? "free" : "busy");
        return 0;
    }
    for (int i = 0; i < 3; i++)
        if (got[i] != 0) {
            fprintf(stderr, "locker: %s lock: %s\n", names[i], strerror(errno));
            return 1;
        }
    printf("locked\n");
    fflush(stdout);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        fflush(stdout);
        sleep(1);
    }
}
