/*
 * A provider library for the cost curves (benches/curves.rs): one class per provider,
 * named after the provider, `bench.NAME`, keyed by `id`. A provider named `nCOUNT`
 * enumerates COUNT instances; any other name, one. Registered hundreds of times under
 * different names, it is the "many providers" of the curve; as `n100000`, the "many
 * instances". Speaks the JSON encoding with plain string searches, like
 * examples/providers/c/demo.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "purveyor/provider.h"

struct many {
    char class_path[128];
    unsigned long count;
};

static unsigned long long number_after(const char *json, const char *field) {
    const char *p = strstr(json, field);
    return p ? strtoull(p + strlen(field), NULL, 10) : 0;
}

/* Appends to a growing buffer; 0 when out of memory. */
static int put(char **buf, size_t *size, size_t *len, const char *fmt, unsigned long long a,
               unsigned long long b) {
    for (;;) {
        int n = snprintf(*buf + *len, *size - *len, fmt, a, b);
        if (n < 0) return 0;
        if ((size_t)n < *size - *len) {
            *len += (size_t)n;
            return 1;
        }
        char *bigger = realloc(*buf, *size * 2);
        if (!bigger) return 0;
        *buf = bigger;
        *size *= 2;
    }
}

/* Appends a string as it is. */
static int put_str(char **buf, size_t *size, size_t *len, const char *s) {
    size_t n = strlen(s);
    while (*size - *len <= n) {
        char *bigger = realloc(*buf, *size * 2);
        if (!bigger) return 0;
        *buf = bigger;
        *size *= 2;
    }
    memcpy(*buf + *len, s, n + 1);
    *len += n;
    return 1;
}

static int32_t many_call(void *state, const uint8_t *request, uint64_t request_len,
                         uint8_t **reply, uint64_t *reply_len) {
    struct many *m = state;
    char *req = malloc((size_t)request_len + 1);
    if (!req) return PV_ERR_FAILED;
    memcpy(req, request, (size_t)request_len);
    req[request_len] = 0;
    size_t size = 4096, len = 0;
    char *out = malloc(size);
    int ok = out != NULL;
    const char *call = strstr(req, "\"call\":");
    if (!call) call = "";
    ok = ok && put(&out, &size, &len, "{\"id\":%llu,\"reply\":", number_after(req, "\"id\":"), 0);
    if (!ok) {
    } else if (strstr(call, "\"classes\"")) {
        ok = put(&out, &size, &len, "{\"classes\":[{\"path\":\"", 0, 0) &&
             put_str(&out, &size, &len, m->class_path) &&
             put(&out, &size, &len,
                 "\",\"description\":\"bench\",\"properties\":["
                 "{\"name\":\"id\",\"type\":\"u64\",\"unit\":\"none\",\"semantic\":\"key\"},"
                 "{\"name\":\"value\",\"type\":\"u64\",\"unit\":\"count\",\"semantic\":\"discrete\"}"
                 "]}]}",
                 0, 0);
    } else if (strstr(call, "\"release\"")) {
        ok = put(&out, &size, &len, "\"released\"", 0, 0);
    } else if (strstr(call, "{\"enumerate\"")) {
        ok = put(&out, &size, &len, "{\"instances\":[", 0, 0);
        for (unsigned long i = 0; ok && i < m->count; i++) {
            ok = put(&out, &size, &len, i ? ",{\"id\":{\"u64\":%llu},\"value\":{\"u64\":%llu}}"
                                          : "{\"id\":{\"u64\":%llu},\"value\":{\"u64\":%llu}}",
                     i, i * 7);
        }
        ok = ok && put(&out, &size, &len, "]}", 0, 0);
    } else if (strstr(call, "{\"get\"")) {
        unsigned long long id = number_after(call, "\"id\":{\"u64\":");
        ok = id < m->count
                 ? put(&out, &size, &len,
                       "{\"instance\":{\"id\":{\"u64\":%llu},\"value\":{\"u64\":%llu}}}", id, id * 7)
                 : put(&out, &size, &len, "{\"instance\":null}", 0, 0);
    } else {
        ok = put(&out, &size, &len,
                 "{\"error\":{\"kind\":\"unsupported\",\"message\":\"unknown call\"}}", 0, 0);
    }
    ok = ok && put(&out, &size, &len, "}", 0, 0);
    free(req);
    if (!ok) {
        free(out);
        return PV_ERR_FAILED;
    }
    *reply = (uint8_t *)out;
    *reply_len = len;
    return PV_OK;
}

static void many_free(void *state, uint8_t *reply, uint64_t reply_len) {
    (void)state;
    (void)reply_len;
    free(reply);
}

static void many_release(void *state) { free(state); }

int32_t purveyor_provider_install(uint32_t host_abi, const char *name, pv_provider *out) {
    out->abi_version = PURVEYOR_PROVIDER_ABI;
    if (host_abi != PURVEYOR_PROVIDER_ABI) return PV_ERR_ABI;
    struct many *m = calloc(1, sizeof *m);
    if (!m) return PV_ERR_FAILED;
    snprintf(m->class_path, sizeof m->class_path, "bench.%s", name);
    m->count = name[0] == 'n' ? strtoul(name + 1, NULL, 10) : 1;
    out->encoding = PV_ENCODING_JSON;
    out->state = m;
    out->call = many_call;
    out->free_reply = many_free;
    out->release = many_release;
    return PV_OK;
}
