/* The supervised child of the benchmarks: appends "PID START_NS\n" to FILE, then waits forever.
 * Written in C so that a restart's latency is the supervisor's, not an interpreter's start-up.
 * With --ignore-term it ignores SIGTERM, so only SIGKILL ends it (the shutdown scenario). */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (argc < 2) {
        return 2;
    }
    if (argc > 2 && strcmp(argv[2], "--ignore-term") == 0) {
        signal(SIGTERM, SIG_IGN);
    }
    char line[64];
    int len = snprintf(line, sizeof line, "%d %lld\n", (int)getpid(),
                       (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
    int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, line, (size_t)len) != len) {
        return 1;
    }
    close(fd);
    for (;;) {
        pause();
    }
}
