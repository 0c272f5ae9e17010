/*
 * An example C publisher of application counters (include/purveyor/counters.h).
 *
 *   cc -I include -o publish examples/counters/c/publish.c
 *   ./publish [DIR] [NAME]      then: purveyor get app.NAME
 *
 * Publishes set NAME (default "cdemo") with instances "a" and "b" and fixed values the
 * tests check, prints "ready PATH", and keeps the file until its stdin closes; then it
 * removes the file. Killed instead, it leaves a stale file behind, as a crashed program
 * would. The same source builds 32-bit (gcc -m32) and 64-bit.
 */
#include <purveyor/counters.h>

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : NULL;
    const char *name = argc > 2 ? argv[2] : "cdemo";
    static const pv_counter_def defs[] = {
        {"requests", PV_COUNTER, PV_UNIT_COUNT, "requests served"},
        {"queue", PV_RAW, PV_UNIT_COUNT, "requests waiting"},
        {"latency", PV_AVERAGE, PV_UNIT_MICROSECONDS, "time per request"},
        {"hits", PV_FRACTION, PV_UNIT_PERCENT, "cache hits"},
        {"big", PV_RAW, PV_UNIT_BYTES, "a value above 2^32, to catch 32-bit truncation"},
    };
    char err[512], buf[64];
    pv_set *set = pv_set_create(dir, name, "A C publisher", defs, 5, 4, err, sizeof err);
    int a, b;
    if (!set) {
        fprintf(stderr, "publish: %s\n", err);
        return 1;
    }
    a = pv_instance_add(set, "a");
    b = pv_instance_add(set, "b");
    pv_add(pv_set_slot(set, a, "requests"), 42);
    pv_store(pv_set_slot(set, a, "queue"), 7);
    pv_observe(pv_set_slot(set, a, "latency"), 100);
    pv_observe(pv_set_slot(set, a, "latency"), 300);
    pv_store(pv_set_slot(set, a, "hits"), 3);
    pv_store(pv_set_slot(set, a, "hits") + 1, 4);
    pv_store(pv_set_slot(set, a, "big"), 0x123456789ULL);
    pv_add(pv_set_slot(set, b, "requests"), 5);
    printf("ready %s\n", set->path);
    fflush(stdout);
    while (read(0, buf, sizeof buf) > 0) {
    }
    pv_set_destroy(set);
    return 0;
}
