/*
 * Purveyor application counters: the counter-file layout, a publisher and a reader, for C
 * and C++ (header-only; C11 or C++11, GCC or Clang, Linux).
 *
 * The format is documented byte by byte in docs/counter-file.md. Every field is
 * little-endian at a fixed offset; there are no pointers, so 32-bit and 64-bit processes
 * share files. The structs below spell out every padding byte and every 64-bit field is
 * declared 8-byte aligned: on 32-bit x86 a plain uint64_t inside a struct is only 4-byte
 * aligned, which would move every later field. The static asserts pin each offset; the
 * Rust side (crates/counters/src/format.rs) pins the same numbers.
 *
 * Publisher:
 *     pv_counter_def defs[] = {
 *         {"requests", PV_COUNTER, PV_UNIT_COUNT, "requests served"},
 *         {"latency", PV_AVERAGE, PV_UNIT_MICROSECONDS, "time per request"},
 *     };
 *     char err[256];
 *     pv_set *set = pv_set_create(NULL, "myservice", "My service", defs, 2, 0, err, sizeof err);
 *     volatile uint64_t *requests = pv_set_slot(set, 0, "requests");
 *     pv_add(requests, 1);
 *     pv_observe(pv_set_slot(set, 0, "latency"), 250);
 *     pv_set_destroy(set);   // removes the file
 *
 * Readers map the file PROT_READ and read values with pv_load(). On 32-bit x86, GCC
 * compiles an 8-byte atomic load to an x87/SSE 8-byte move (fildq/fistpq), which is atomic
 * for an aligned address and never writes; a compiler that emits `lock cmpxchg8b` instead
 * would fault on a read-only mapping (cmpxchg8b always writes). Check with objdump if you
 * use another compiler; the test suite checks GCC -m32.
 */
#ifndef PURVEYOR_COUNTERS_H
#define PURVEYOR_COUNTERS_H

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PV_MAGIC "PVCNTR\0\0"
#define PV_VERSION 1u
#define PV_INSTANCE_NAME_MAX 56u
#define PV_VALUES_ALIGN 64u
#define PV_FLAG_INSTANCES 1u
#define PV_INSTANCE_FREE 0u
#define PV_INSTANCE_LIVE 1u

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "counter files are little-endian; this header supports little-endian targets only"
#endif

#define PV_ALIGNED8 __attribute__((aligned(8)))

typedef struct pv_header {
    char magic[8];               /*   0 */
    uint32_t version;            /*   8 */
    uint32_t header_size;        /*  12: 128 */
    PV_ALIGNED8 uint64_t generation; /* 16: seqlock of the instance table */
    uint32_t creator_pid;        /*  24 */
    uint32_t flags;              /*  28 */
    PV_ALIGNED8 uint64_t creator_start; /* 32: clock ticks since boot, 0 = unknown */
    PV_ALIGNED8 uint64_t file_size;     /* 40 */
    uint32_t strings_offset;     /*  48 */
    uint32_t strings_size;       /*  52 */
    uint32_t counters_offset;    /*  56 */
    uint32_t counter_count;      /*  60 */
    uint32_t instances_offset;   /*  64 */
    uint32_t instance_capacity;  /*  68 */
    uint32_t values_offset;      /*  72 */
    uint32_t slots_per_instance; /*  76 */
    uint32_t name_offset;        /*  80 */
    uint32_t name_len;           /*  84 */
    uint32_t help_offset;        /*  88 */
    uint32_t help_len;           /*  92 */
    uint8_t reserved[32];        /*  96 */
} pv_header;

typedef struct pv_counter_desc {
    uint32_t name_offset; /*  0 */
    uint32_t name_len;    /*  4 */
    uint32_t help_offset; /*  8 */
    uint32_t help_len;    /* 12 */
    uint8_t kind;         /* 16: pv_counter_type */
    uint8_t unit;         /* 17: pv_unit */
    uint8_t reserved0[2]; /* 18 */
    uint32_t slot;        /* 20 */
    uint8_t reserved1[8]; /* 24 */
} pv_counter_desc;

typedef struct pv_instance_rec {
    uint32_t state;    /* 0: PV_INSTANCE_FREE / PV_INSTANCE_LIVE */
    uint32_t name_len; /* 4 */
    char name[PV_INSTANCE_NAME_MAX]; /* 8 */
} pv_instance_rec;

_Static_assert(sizeof(pv_header) == 128, "header size");
_Static_assert(offsetof(pv_header, generation) == 16, "generation");
_Static_assert(offsetof(pv_header, creator_pid) == 24, "creator_pid");
_Static_assert(offsetof(pv_header, creator_start) == 32, "creator_start");
_Static_assert(offsetof(pv_header, file_size) == 40, "file_size");
_Static_assert(offsetof(pv_header, strings_offset) == 48, "strings_offset");
_Static_assert(offsetof(pv_header, counters_offset) == 56, "counters_offset");
_Static_assert(offsetof(pv_header, instances_offset) == 64, "instances_offset");
_Static_assert(offsetof(pv_header, values_offset) == 72, "values_offset");
_Static_assert(offsetof(pv_header, slots_per_instance) == 76, "slots_per_instance");
_Static_assert(offsetof(pv_header, name_offset) == 80, "name_offset");
_Static_assert(offsetof(pv_header, help_len) == 92, "help_len");
_Static_assert(sizeof(pv_counter_desc) == 32, "counter descriptor size");
_Static_assert(offsetof(pv_counter_desc, kind) == 16, "kind");
_Static_assert(offsetof(pv_counter_desc, slot) == 20, "slot");
_Static_assert(sizeof(pv_instance_rec) == 64, "instance record size");
_Static_assert(offsetof(pv_instance_rec, name) == 8, "instance name");

typedef enum pv_counter_type {
    PV_RAW = 1,      /* a gauge, shown as is */
    PV_COUNTER = 2,  /* monotonic, shown as a rate per second */
    PV_DELTA = 3,    /* monotonic, shown as the difference between samples */
    PV_AVERAGE = 4,  /* two slots, sum and count: shown as the mean per operation */
    PV_FRACTION = 5, /* two slots, value and base: shown as 100 * value / base percent */
    PV_ELAPSED = 6,  /* ns since the Unix epoch: shown as seconds elapsed since */
} pv_counter_type;

typedef enum pv_unit {
    PV_UNIT_NONE = 0, PV_UNIT_COUNT = 1, PV_UNIT_BYTES = 2, PV_UNIT_SECONDS = 3,
    PV_UNIT_MILLISECONDS = 4, PV_UNIT_MICROSECONDS = 5, PV_UNIT_NANOSECONDS = 6,
    PV_UNIT_PERCENT = 7, PV_UNIT_PACKETS = 8, PV_UNIT_OPERATIONS = 9,
} pv_unit;

typedef struct pv_counter_def {
    const char *name; /* [a-z][a-z0-9_]*, at most 64 bytes */
    pv_counter_type kind;
    pv_unit unit;
    const char *help;
} pv_counter_def;

/* ---- values: one atomic operation each ------------------------------------------- */

static inline void pv_add(volatile uint64_t *slot, uint64_t n) {
    __atomic_fetch_add(slot, n, __ATOMIC_RELAXED);
}
static inline void pv_store(volatile uint64_t *slot, uint64_t v) {
    __atomic_store_n(slot, v, __ATOMIC_RELAXED);
}
static inline uint64_t pv_load(const volatile uint64_t *slot) {
    return __atomic_load_n(slot, __ATOMIC_RELAXED);
}
/* An average: slot[0] is the sum, slot[1] the count. */
static inline void pv_observe(volatile uint64_t *slot, uint64_t value) {
    __atomic_fetch_add(&slot[0], value, __ATOMIC_RELAXED);
    __atomic_fetch_add(&slot[1], 1, __ATOMIC_RELAXED);
}

/* ---- publisher ------------------------------------------------------------------- */

typedef struct pv_set {
    uint8_t *base;
    size_t size;
    char path[4096];
    unsigned keyed;
} pv_set;


static inline void pv__err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline void pv__err(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    if (!err || !errlen) return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static inline pv_header *pv__hdr(const pv_set *s) { return (pv_header *)(void *)s->base; }

static inline int pv__valid_name(const char *n) {
    size_t len = strlen(n), i;
    if (len == 0 || len > 64 || n[0] < 'a' || n[0] > 'z') return 0;
    for (i = 0; i < len; i++)
        if (!((n[i] >= 'a' && n[i] <= 'z') || (n[i] >= '0' && n[i] <= '9') || n[i] == '_')) return 0;
    return 1;
}

static inline uint64_t pv__start_ticks(void) {
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    size_t n;
    char *p;
    int field;
    if (!f) return 0;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    p = strrchr(buf, ')');
    if (!p) return 0;
    p += 2; /* field 3 */
    for (field = 3; field < 22 && p; field++) {
        p = strchr(p, ' ');
        if (p) p++;
    }
    return p ? strtoull(p, NULL, 10) : 0;
}

/* Creates NAME.counters in DIR (NULL: $PURVEYOR_COUNTERS, else $XDG_RUNTIME_DIR/purveyor/
 * counters, else /run/purveyor/counters) with the given counters; INSTANCES is 0 for a set
 * without instances, else how many instances may exist at once. Returns NULL with a
 * message in ERR on failure. The file is written aside and renamed into place. */
static inline pv_set *pv_set_create(const char *dir, const char *name, const char *help,
                                    const pv_counter_def *defs, unsigned n, unsigned instances,
                                    char *err, size_t errlen) {
    char d[4096], aside[4200];
    size_t strings = 0, at, i, slots = 0, stride, counters_off, inst_off, values_off, size;
    unsigned capacity = instances ? instances : 1;
    pv_set *s;
    pv_header *h;
    int fd;
    if (!dir) {
        const char *env = getenv("PURVEYOR_COUNTERS"), *run = getenv("XDG_RUNTIME_DIR");
        int k;
        if (env && *env) k = snprintf(d, sizeof d, "%s", env);
        else if (run && *run) k = snprintf(d, sizeof d, "%s/purveyor/counters", run);
        else k = snprintf(d, sizeof d, "/run/purveyor/counters");
        if (k < 0 || (size_t)k >= sizeof d) {
            pv__err(err, errlen, "the counters directory path is too long");
            return NULL;
        }
        dir = d;
    }
    if (!pv__valid_name(name)) {
        pv__err(err, errlen, "invalid counter set name \"%s\": use [a-z][a-z0-9_]*", name);
        return NULL;
    }
    if (n == 0) {
        pv__err(err, errlen, "counter set %s has no counters", name);
        return NULL;
    }
    strings = strlen(name) + strlen(help ? help : "");
    for (i = 0; i < n; i++) {
        if (!pv__valid_name(defs[i].name) || !strcmp(defs[i].name, "instance")) {
            pv__err(err, errlen, "invalid counter name \"%s\"", defs[i].name);
            return NULL;
        }
        strings += strlen(defs[i].name) + strlen(defs[i].help ? defs[i].help : "");
        slots += (defs[i].kind == PV_AVERAGE || defs[i].kind == PV_FRACTION) ? 2 : 1;
    }
    stride = (slots + 7) & ~(size_t)7;
    counters_off = (128 + strings + 7) & ~(size_t)7;
    inst_off = counters_off + n * sizeof(pv_counter_desc);
    values_off = (inst_off + capacity * sizeof(pv_instance_rec) + PV_VALUES_ALIGN - 1) & ~(size_t)(PV_VALUES_ALIGN - 1);
    size = values_off + (size_t)capacity * stride * 8;

    s = (pv_set *)calloc(1, sizeof *s);
    if (!s) { pv__err(err, errlen, "out of memory"); return NULL; }
    mkdir(dir, 0755); /* one level; the parent must exist */
    {
        int k1 = snprintf(s->path, sizeof s->path, "%s/%s.counters", dir, name);
        int k2 = snprintf(aside, sizeof aside, "%s/.%s.%d.tmp", dir, name, (int)getpid());
        if (k1 < 0 || (size_t)k1 >= sizeof s->path || k2 < 0 || (size_t)k2 >= sizeof aside) {
            pv__err(err, errlen, "the directory path %s is too long", dir);
            free(s);
            return NULL;
        }
    }
    unlink(aside);
    fd = open(aside, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 || fchmod(fd, 0644) != 0 || ftruncate(fd, (off_t)size) != 0) {
        pv__err(err, errlen, "cannot create %s: %s", aside, strerror(errno));
        if (fd >= 0) { close(fd); unlink(aside); }
        free(s);
        return NULL;
    }
    s->base = (uint8_t *)mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (s->base == MAP_FAILED) {
        pv__err(err, errlen, "cannot map %s: %s", aside, strerror(errno));
        unlink(aside);
        free(s);
        return NULL;
    }
    s->size = size;
    s->keyed = instances != 0;
    h = pv__hdr(s);
    h->version = PV_VERSION;
    h->header_size = 128;
    h->creator_pid = (uint32_t)getpid();
    h->flags = instances ? PV_FLAG_INSTANCES : 0;
    h->creator_start = pv__start_ticks();
    h->file_size = size;
    h->strings_offset = 128;
    h->strings_size = (uint32_t)strings;
    h->counters_offset = (uint32_t)counters_off;
    h->counter_count = n;
    h->instances_offset = (uint32_t)inst_off;
    h->instance_capacity = capacity;
    h->values_offset = (uint32_t)values_off;
    h->slots_per_instance = (uint32_t)stride;
    at = 0;
#define PV__PUT(str, off, len)                                   \
    do {                                                         \
        const char *pv__s = (str) ? (str) : "";                  \
        size_t pv__n = strlen(pv__s);                            \
        memcpy(s->base + 128 + at, pv__s, pv__n);                \
        (off) = (uint32_t)at; (len) = (uint32_t)pv__n; at += pv__n; \
    } while (0)
    PV__PUT(name, h->name_offset, h->name_len);
    PV__PUT(help, h->help_offset, h->help_len);
    slots = 0;
    for (i = 0; i < n; i++) {
        pv_counter_desc *c = (pv_counter_desc *)(void *)(s->base + counters_off) + i;
        PV__PUT(defs[i].name, c->name_offset, c->name_len);
        PV__PUT(defs[i].help, c->help_offset, c->help_len);
        c->kind = (uint8_t)defs[i].kind;
        c->unit = (uint8_t)defs[i].unit;
        c->slot = (uint32_t)slots;
        slots += (defs[i].kind == PV_AVERAGE || defs[i].kind == PV_FRACTION) ? 2 : 1;
    }
#undef PV__PUT
    if (!instances) ((pv_instance_rec *)(void *)(s->base + inst_off))->state = PV_INSTANCE_LIVE;
    memcpy(h->magic, PV_MAGIC, 8); /* last: a zero magic is not a counter file yet */
    if (rename(aside, s->path) != 0) {
        pv__err(err, errlen, "cannot rename %s to %s: %s", aside, s->path, strerror(errno));
        munmap(s->base, size);
        unlink(aside);
        free(s);
        return NULL;
    }
    return s;
}

/* The slot(s) of counter NAME in instance record INDEX (0 for a set without instances);
 * NULL if there is no such counter. */
static inline volatile uint64_t *pv_set_slot(pv_set *s, unsigned index, const char *name) {
    pv_header *h = pv__hdr(s);
    unsigned i;
    if (index >= h->instance_capacity) return NULL;
    for (i = 0; i < h->counter_count; i++) {
        const pv_counter_desc *c = (const pv_counter_desc *)(const void *)(s->base + h->counters_offset) + i;
        if (strlen(name) == c->name_len && !memcmp(s->base + 128 + c->name_offset, name, c->name_len))
            return (volatile uint64_t *)(void *)(s->base + h->values_offset) +
                   (size_t)index * h->slots_per_instance + c->slot;
    }
    return NULL;
}

/* Adds an instance; returns its record index, or -1 (no room, bad name). Not thread-safe:
 * serialise adds and removes yourself. */
static inline int pv_instance_add(pv_set *s, const char *name) {
    pv_header *h = pv__hdr(s);
    size_t len = strlen(name);
    unsigned i, k;
    if (!s->keyed || len == 0 || len > PV_INSTANCE_NAME_MAX) return -1;
    for (i = 0; i < h->instance_capacity; i++) {
        pv_instance_rec *r = (pv_instance_rec *)(void *)(s->base + h->instances_offset) + i;
        if (__atomic_load_n(&r->state, __ATOMIC_RELAXED) != PV_INSTANCE_FREE) continue;
        __atomic_store_n(&h->generation, h->generation + 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
        for (k = 0; k < h->slots_per_instance; k++)
            pv_store((volatile uint64_t *)(void *)(s->base + h->values_offset) + (size_t)i * h->slots_per_instance + k, 0);
        memset(r->name, 0, sizeof r->name);
        memcpy(r->name, name, len);
        r->name_len = (uint32_t)len;
        r->state = PV_INSTANCE_LIVE;
        __atomic_store_n(&h->generation, h->generation + 1, __ATOMIC_RELEASE);
        return (int)i;
    }
    return -1;
}

static inline void pv_instance_remove(pv_set *s, int index) {
    pv_header *h = pv__hdr(s);
    pv_instance_rec *r = (pv_instance_rec *)(void *)(s->base + h->instances_offset) + index;
    __atomic_store_n(&h->generation, h->generation + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    r->state = PV_INSTANCE_FREE;
    __atomic_store_n(&h->generation, h->generation + 1, __ATOMIC_RELEASE);
}

/* Removes the file and unmaps it. */
static inline void pv_set_destroy(pv_set *s) {
    unlink(s->path);
    munmap(s->base, s->size);
    free(s);
}

/* ---- reader ---------------------------------------------------------------------- */

typedef struct pv_reader {
    const uint8_t *base;
    size_t size;
} pv_reader;

/* Maps PATH read-only and checks its header and regions. Returns 0, or -1 with ERR. */
static inline int pv_reader_open(const char *path, pv_reader *r, char *err, size_t errlen) {
    struct stat st;
    const pv_header *h;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) {
        pv__err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    if ((size_t)st.st_size < sizeof(pv_header)) {
        pv__err(err, errlen, "%s: truncated", path);
        close(fd);
        return -1;
    }
    r->size = (size_t)st.st_size;
    r->base = (const uint8_t *)mmap(NULL, r->size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (r->base == MAP_FAILED) {
        pv__err(err, errlen, "%s: cannot map: %s", path, strerror(errno));
        return -1;
    }
    h = (const pv_header *)(const void *)r->base;
    if (memcmp(h->magic, PV_MAGIC, 8) || h->version != PV_VERSION || h->file_size != r->size ||
        h->counters_offset + (uint64_t)h->counter_count * 32 > r->size ||
        h->instances_offset + (uint64_t)h->instance_capacity * 64 > r->size ||
        h->values_offset + (uint64_t)h->instance_capacity * h->slots_per_instance * 8 > r->size ||
        h->strings_offset + (uint64_t)h->strings_size > r->size || h->values_offset % 8) {
        pv__err(err, errlen, "%s: not a valid version %u counter file", path, PV_VERSION);
        munmap((void *)r->base, r->size);
        return -1;
    }
    return 0;
}

static inline const pv_header *pv_reader_header(const pv_reader *r) {
    return (const pv_header *)(const void *)r->base;
}
static inline const pv_counter_desc *pv_reader_counter(const pv_reader *r, unsigned i) {
    return (const pv_counter_desc *)(const void *)(r->base + pv_reader_header(r)->counters_offset) + i;
}
static inline const pv_instance_rec *pv_reader_instance(const pv_reader *r, unsigned i) {
    return (const pv_instance_rec *)(const void *)(r->base + pv_reader_header(r)->instances_offset) + i;
}
/* A string of the string area (not NUL-terminated): its bytes; LEN receives its length. */
static inline const char *pv_reader_string(const pv_reader *r, uint32_t off, uint32_t len, uint32_t *out_len) {
    const pv_header *h = pv_reader_header(r);
    if ((uint64_t)off + len > h->strings_size) { *out_len = 0; return ""; }
    *out_len = len;
    return (const char *)(r->base + h->strings_offset + off);
}
/* Slot SLOT of instance record INDEX, read atomically. */
static inline uint64_t pv_reader_value(const pv_reader *r, unsigned index, unsigned slot) {
    const pv_header *h = pv_reader_header(r);
    if (index >= h->instance_capacity || slot >= h->slots_per_instance) return 0;
    return pv_load((const volatile uint64_t *)(const void *)(r->base + h->values_offset) +
                   (size_t)index * h->slots_per_instance + slot);
}
static inline void pv_reader_close(pv_reader *r) { munmap((void *)r->base, r->size); }

#ifdef __cplusplus
}
#endif
#endif /* PURVEYOR_COUNTERS_H */
