/* The wake-up step behind "Intake" (crates/host/src/server.rs, docs/performance.md).
 *
 * A client sends 18 bytes on a Unix socket and blocks in read(); a server answers with
 * 144 bytes after busy-working W microseconds. "read" servers take the request off the
 * socket first (as a plain echo does); "peek" servers read it with MSG_PEEK, answer, and
 * only then take it. Taking bytes off a Unix socket wakes the sender even while it
 * sleeps in read() (write space), so a "read" server wakes its client early: free when
 * the answer follows within about a microsecond, a second full wake-up when it does not.
 *
 * Build and run: bench/wakeup  (prints p50 round trips per W, for both servers).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

enum { ROUNDS = 20000, KINDS = 12 };
static const int work_ns[KINDS] = {0, 500, 1000, 1500, 2000, 3000, 0, 500, 1000, 1500, 2000, 3000};
static double samples[KINDS][ROUNDS];

int main(void) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        perror("socketpair");
        return 1;
    }
    pid_t server = fork();
    if (server == 0) {
        close(sv[0]);
        char b[256];
        for (;;) {
            /* The request says how long to work and whether to peek. */
            int n = recv(sv[1], b, sizeof b, MSG_PEEK);
            if (n <= 0) _exit(0);
            int peek = b[4];
            if (!peek && recv(sv[1], b, n, 0) != n) _exit(1);
            double work = *(int *)b / 1000.0, t = now_us();
            while (now_us() - t < work) {}
            if (write(sv[1], b, 144) != 144) _exit(1);
            if (peek && recv(sv[1], b, n, 0) != n) _exit(1);
        }
    }
    close(sv[1]);
    char b[256] = {0};
    for (int r = 0; r < ROUNDS; r++) {
        for (int k = 0; k < KINDS; k++) {
            *(int *)b = work_ns[k];
            b[4] = k >= KINDS / 2;
            double t = now_us();
            if (write(sv[0], b, 18) != 18) return 1;
            for (int got = 0; got < 144;) {
                int n = read(sv[0], b + got, 144 - got);
                if (n <= 0) return 1;
                got += n;
            }
            samples[k][r] = now_us() - t;
        }
    }
    close(sv[0]);
    waitpid(server, NULL, 0);
    printf("server work   read-then-answer p50   peek-answer-take p50\n");
    for (int k = 0; k < KINDS / 2; k++) {
        qsort(samples[k], ROUNDS, sizeof(double), by_value);
        qsort(samples[k + KINDS / 2], ROUNDS, sizeof(double), by_value);
        printf("%6.1f us     %8.2f us            %8.2f us\n", work_ns[k] / 1000.0,
               samples[k][ROUNDS / 2], samples[k + KINDS / 2][ROUNDS / 2]);
    }
    return 0;
}
