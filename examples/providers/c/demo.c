/*
 * A Purveyor provider in C: class demo.counter, keyed by `name`, with a `hits` counter
 * and the `pid` of the process serving it.
 *
 * One source, every hosting model:
 *   cc -shared -fPIC -I include -o libdemo_c.so examples/providers/c/demo.c
 *        a provider library (hosting = "in-daemon" or "isolated")
 *   cc -DPURVEYOR_EXTERNAL -I include -o demo-external examples/providers/c/demo.c
 *        an external executable (hosting = "external"); add -m32 for a 32-bit one
 *
 * It speaks the JSON encoding and, to stay dependency-free, reads requests with plain
 * string searches; a real provider would use a JSON library. For the host's failure
 * tests, `get` with name "crash" dereferences NULL, "abort" aborts, "exit" exits with
 * status 3, "hang" sleeps for an hour, "burnN" spends N ms of CPU and "leakN" allocates
 * and touches N MiB it never frees before answering like "a" (for the accounting and
 * limit tests), "open:PATH" tries to open PATH and answers with the errno in `hits` (0: it
 * opened), "unshare" tries unshare(CLONE_NEWUTS) the same way (for the sandbox tests):
 * never do this in a provider of your own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "purveyor/provider.h"

static const char *CLASSES =
    "{\"classes\":[{\"path\":\"demo.counter\",\"description\":\"A counter per name\","
    "\"properties\":["
    "{\"name\":\"name\",\"type\":\"string\",\"unit\":\"none\",\"semantic\":\"key\"},"
    "{\"name\":\"hits\",\"type\":\"u64\",\"unit\":\"count\",\"semantic\":\"counter\"},"
    "{\"name\":\"pid\",\"type\":\"u64\",\"unit\":\"none\",\"semantic\":\"discrete\"}"
    "]}]}";

static unsigned long long hits;
static char *volatile leaked;

/* The value of `"field":` as an unsigned number, or 0. */
static unsigned long long number_after(const char *json, const char *field) {
    const char *p = strstr(json, field);
    return p ? strtoull(p + strlen(field), NULL, 10) : 0;
}

/* Copies the string value of the key property `name` into out; 0 if there is none. */
static int key_name(const char *json, char *out, size_t size) {
    const char *p = strstr(json, "\"name\":{\"string\":\"");
    if (!p) return 0;
    p += strlen("\"name\":{\"string\":\"");
    size_t n = 0;
    while (p[n] && p[n] != '"' && n + 1 < size) n++;
    memcpy(out, p, n);
    out[n] = 0;
    return 1;
}

static int append(char *buf, size_t size, size_t *len, const char *fmt, const char *name,
                  unsigned long long a, unsigned long long b) {
    int n = snprintf(buf + *len, size - *len, fmt, name, a, b);
    if (n < 0 || (size_t)n >= size - *len) return -1;
    *len += (size_t)n;
    return 0;
}

static const char *INSTANCE =
    "{\"name\":{\"string\":\"%s\"},\"hits\":{\"u64\":%llu},\"pid\":{\"u64\":%llu}}";

/* Answers one JSON request into a malloc'd JSON response. */
static char *answer(const char *req) {
    size_t size = 4096, len = 0;
    char *out = malloc(size);
    if (!out) return NULL;
    unsigned long long id = number_after(req, "\"id\":");
    unsigned long long pid = (unsigned long long)getpid();
    len = (size_t)snprintf(out, size, "{\"id\":%llu,\"reply\":", id);
    const char *call = strstr(req, "\"call\":");
    if (!call) call = "";
    if (strstr(call, "\"classes\"")) {
        len += (size_t)snprintf(out + len, size - len, "%s", CLASSES);
    } else if (strstr(call, "\"release\"")) {
        len += (size_t)snprintf(out + len, size - len, "\"released\"");
    } else if (strstr(call, "{\"enumerate\"")) {
        __atomic_add_fetch(&hits, 1, __ATOMIC_RELAXED);
        unsigned long long h = __atomic_load_n(&hits, __ATOMIC_RELAXED);
        len += (size_t)snprintf(out + len, size - len, "{\"instances\":[");
        append(out, size, &len, INSTANCE, "a", h, pid);
        len += (size_t)snprintf(out + len, size - len, ",");
        append(out, size, &len, INSTANCE, "b", h, pid);
        len += (size_t)snprintf(out + len, size - len, "]}");
    } else if (strstr(call, "{\"get\"")) {
        char name[64];
        if (!key_name(call, name, sizeof name)) {
            len += (size_t)snprintf(out + len, size - len,
                                    "{\"error\":{\"kind\":\"invalid_argument\",\"message\":\"no name\"}}");
        } else if (!strcmp(name, "crash")) {
            volatile int *null = NULL;
            *null = 1;
        } else if (!strcmp(name, "abort")) {
            abort();
        } else if (!strcmp(name, "exit")) {
            exit(3);
        } else if (!strcmp(name, "hang")) {
            sleep(3600);
        } else if (!strncmp(name, "burn", 4)) {
            struct timespec start, now;
            long ms = strtol(name + 4, NULL, 10);
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &start);
            do {
                clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
            } while ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 < ms);
            len += (size_t)snprintf(out + len, size - len, "{\"instance\":");
            append(out, size, &len, INSTANCE, name, 0, pid);
            len += (size_t)snprintf(out + len, size - len, "}");
        } else if (!strncmp(name, "open:", 5) || !strcmp(name, "unshare")) {
            int err = 0;
            if (name[0] == 'o') {
                FILE *f = fopen(name + 5, "r");
                if (f) fclose(f); else err = errno;
            } else if (unshare(CLONE_NEWUTS) != 0) {
                err = errno;
            }
            len += (size_t)snprintf(out + len, size - len, "{\"instance\":");
            append(out, size, &len, INSTANCE, name, (unsigned long long)err, pid);
            len += (size_t)snprintf(out + len, size - len, "}");
        } else if (!strncmp(name, "leak", 4)) {
            long mib = strtol(name + 4, NULL, 10);
            char *block = malloc((size_t)mib << 20);
            if (block) {
                memset(block, 1, (size_t)mib << 20);
                *(char **)block = leaked; /* kept reachable: never freed, never optimised out */
                leaked = block;
            }
            len += (size_t)snprintf(out + len, size - len, "{\"instance\":");
            append(out, size, &len, INSTANCE, name, 0, pid);
            len += (size_t)snprintf(out + len, size - len, "}");
        } else if (!strcmp(name, "a") || !strcmp(name, "b")) {
            unsigned long long h = __atomic_add_fetch(&hits, 1, __ATOMIC_RELAXED);
            len += (size_t)snprintf(out + len, size - len, "{\"instance\":");
            append(out, size, &len, INSTANCE, name, h, pid);
            len += (size_t)snprintf(out + len, size - len, "}");
        } else {
            len += (size_t)snprintf(out + len, size - len, "{\"instance\":null}");
        }
    } else {
        len += (size_t)snprintf(out + len, size - len,
                                "{\"error\":{\"kind\":\"unsupported\",\"message\":\"unknown call\"}}");
    }
    snprintf(out + len, size - len, "}");
    return out;
}

#ifndef PURVEYOR_EXTERNAL

static int32_t demo_call(void *state, const uint8_t *request, uint64_t request_len,
                         uint8_t **reply, uint64_t *reply_len) {
    (void)state;
    char *req = malloc((size_t)request_len + 1);
    if (!req) return PV_ERR_FAILED;
    memcpy(req, request, (size_t)request_len);
    req[request_len] = 0;
    char *out = answer(req);
    free(req);
    if (!out) return PV_ERR_FAILED;
    *reply = (uint8_t *)out;
    *reply_len = strlen(out);
    return PV_OK;
}

static void demo_free(void *state, uint8_t *reply, uint64_t reply_len) {
    (void)state;
    (void)reply_len;
    free(reply);
}

static void demo_release(void *state) {
    (void)state;
    /* Nothing to free; a file named by PURVEYOR_DEMO_RELEASED records the call for tests. */
    const char *mark = getenv("PURVEYOR_DEMO_RELEASED");
    if (mark) {
        FILE *f = fopen(mark, "a");
        if (f) {
            fprintf(f, "released %d\n", (int)getpid());
            fclose(f);
        }
    }
}

int32_t purveyor_provider_install(uint32_t host_abi, const char *name, pv_provider *out) {
    (void)name;
    out->abi_version = PURVEYOR_PROVIDER_ABI;
    if (host_abi != PURVEYOR_PROVIDER_ABI) return PV_ERR_ABI;
    out->encoding = PV_ENCODING_JSON;
    out->state = NULL;
    out->call = demo_call;
    out->free_reply = demo_free;
    out->release = demo_release;
    return PV_OK;
}

#else /* PURVEYOR_EXTERNAL: frames over stdin/stdout */

static int read_all(void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(0, (char *)buf + got, n - got);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static char *read_frame(void) {
    unsigned char h[4];
    if (read_all(h, 4)) return NULL;
    uint32_t len = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
    if (len > (64u << 20)) return NULL;
    char *buf = malloc((size_t)len + 1);
    if (!buf || read_all(buf, len)) return NULL;
    buf[len] = 0;
    return buf;
}

static int write_frame(const char *payload) {
    uint32_t len = (uint32_t)strlen(payload);
    unsigned char h[4] = {len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff, len >> 24};
    if (write(1, h, 4) != 4) return -1;
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(1, payload + done, len - done);
        if (w <= 0) return -1;
        done += (size_t)w;
    }
    return 0;
}

int main(void) {
    char *hello = read_frame(); /* {"abi":1,"encoding":"json",...} */
    if (!hello) return 0;
    free(hello);
    if (write_frame("{\"abi\":1}")) return 1;
    for (;;) {
        char *req = read_frame();
        if (!req) return 0; /* the host closed the channel: exit */
        char *out = answer(req);
        free(req);
        if (!out || write_frame(out)) return 1;
        free(out);
    }
}

#endif
