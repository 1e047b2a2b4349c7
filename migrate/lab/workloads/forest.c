/* forest N: a container's worth of processes (the lab's tests and bench of many processes across a move).
 * N workers pass a token round a ring of pipes (this process -> worker 1 -> ... -> worker N -> this process),
 * each with a second thread asleep beside it (~100 laps a second), and N/10 children exit at once and are never reaped (zombies).
 * Prints "ready" when all are in place, then a line per second with the laps the token has made so far: they go
 * on growing across a move only if every worker and every pipe came back.
 * forest -l: lists the container's processes, one line each ("pid ppid alive|zombie threads name"), leaving out itself
 * and anything else not descended from pid 1 (docker exec sessions), to compare before and after a move. */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void *doze(void *arg) {
    (void)arg;
    for (;;) pause();
    return NULL;
}

static void worker(int in, int out) {
    pthread_t t;
    if (pthread_create(&t, NULL, doze, NULL)) _exit(1);
    unsigned long token;
    while (read(in, &token, sizeof(token)) == sizeof(token)) {
        token++;
        if (write(out, &token, sizeof(token)) != sizeof(token)) _exit(1);
    }
    _exit(0);
}

static int stat_of(int pid, int *ppid, char *state, int *threads, char *name, size_t len) {
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *open = strchr(buf, '('), *close = strrchr(buf, ')');
    if (!open || !close) return -1;
    snprintf(name, len, "%.*s", (int)(close - open - 1), open + 1);
    /* after ") ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime
     * cstime priority nice num_threads */
    long skip;
    if (sscanf(close + 2, "%c %d %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %d", state, ppid, &skip,
               &skip, &skip, &skip, &skip, &skip, &skip, &skip, &skip, &skip, &skip, &skip, &skip, &skip, &skip,
               threads) != 18)
        return -1;
    return 0;
}

static int from_init(int pid) {
    for (int hops = 0; pid > 1 && hops < 4096; hops++) {
        int ppid, threads;
        char state, name[64];
        if (stat_of(pid, &ppid, &state, &threads, name, sizeof(name))) return 0;
        pid = ppid;
    }
    return pid == 1;
}

static int list(void) {
    DIR *d = opendir("/proc");
    if (!d) return 1;
    int self = getpid();
    for (struct dirent *e; (e = readdir(d));) {
        int pid = atoi(e->d_name), ppid, threads;
        char state, name[64];
        if (pid <= 0 || pid == self || !from_init(pid)) continue;
        if (stat_of(pid, &ppid, &state, &threads, name, sizeof(name)) == 0)
            printf("%d %d %s %d %s\n", pid, ppid, state == 'Z' ? "zombie" : "alive", threads, name);
    }
    closedir(d);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "-l") == 0) return list();
    int n = argc == 2 ? atoi(argv[1]) : 0;
    if (n < 1 || n > 4000) {
        fprintf(stderr, "usage: forest N (1..4000) | forest -l\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int first[2], prev[2];
    if (pipe(first)) return 1;
    prev[0] = first[0];
    for (int i = 0; i < n; i++) {
        int next[2];
        if (pipe(next)) return 1;
        pid_t pid = fork();
        if (pid < 0) return 1;
        if (pid == 0) {
            close(first[1]);
            close(next[0]);
            worker(prev[0], next[1]);
        }
        close(prev[0]);
        close(next[1]);
        prev[0] = next[0];
    }
    for (int i = 0; i < n / 10; i++)
        if (fork() == 0) _exit(0);
    printf("ready\n");
    unsigned long token = 0, laps = 0;
    time_t last = 0;
    for (;;) {
        if (write(first[1], &token, sizeof(token)) != sizeof(token)) return 1;
        if (read(prev[0], &token, sizeof(token)) != sizeof(token)) return 1;
        laps++;
        if (token != laps * (unsigned long)n) {
            printf("broken: token %lu after %lu laps\n", token, laps);
            return 1;
        }
        time_t now = time(NULL);
        if (now != last) {
            printf("%lu\n", laps);
            last = now;
        }
        usleep(10000);   /* ~100 laps a second: enough to show the ring is whole, and no busy loop */
    }
}
