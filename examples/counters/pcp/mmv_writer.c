/*
 * Writes a PCP Memory Mapped Values file with PCP's own library (libpcp_mmv), for the
 * import test: `cc mmv_writer.c -lpcp_mmv -lpcp`, run with PCP_TMP_DIR=DIR; the file is
 * DIR/mmv/NAME. With a second argument "long", a metric name longer than 63 bytes makes
 * the library write format version 2. Prints "ready" and waits for stdin to close.
 */
#include <pcp/pmapi.h>
#include <pcp/mmv_stats.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "pvtest";
    int long_names = argc > 2 && !strcmp(argv[2], "long");
    const char *big = long_names
        ? "a.metric.with.a.name.that.is.longer.than.sixty.three.bytes.for.version.two"
        : "big";
    mmv_registry_t *reg = mmv_stats_registry(name, 321, 0);
    void *map;
    pmAtomValue *v;
    char buf[64];
    if (!reg) { perror("mmv_stats_registry"); return 1; }
    mmv_stats_add_indom(reg, 1, "queues", "the queues");
    mmv_stats_add_instance(reg, 1, 0, "fast");
    mmv_stats_add_instance(reg, 1, 1, "slow");
    mmv_stats_add_metric(reg, "requests", 1, MMV_TYPE_U64, MMV_SEM_COUNTER,
                         (pmUnits)MMV_UNITS(0, 0, 1, 0, 0, PM_COUNT_ONE), 0,
                         "requests served", "all requests served so far");
    mmv_stats_add_metric(reg, "queue.depth", 2, MMV_TYPE_I32, MMV_SEM_INSTANT,
                         (pmUnits)MMV_UNITS(0, 0, 1, 0, 0, PM_COUNT_ONE), 1,
                         "waiting per queue", "");
    mmv_stats_add_metric(reg, "temperature", 3, MMV_TYPE_DOUBLE, MMV_SEM_INSTANT,
                         (pmUnits)MMV_UNITS(0, 0, 0, 0, 0, 0), 0, "a double", "");
    mmv_stats_add_metric(reg, "version", 4, MMV_TYPE_STRING, MMV_SEM_DISCRETE,
                         (pmUnits)MMV_UNITS(0, 0, 0, 0, 0, 0), 0, "a string", "");
    mmv_stats_add_metric(reg, big, 5, MMV_TYPE_U64, MMV_SEM_INSTANT,
                         (pmUnits)MMV_UNITS(1, 0, 0, PM_SPACE_BYTE, 0, 0), 0,
                         "bytes above 2^32", "");
    map = mmv_stats_start(reg);
    if (!map) { perror("mmv_stats_start"); return 1; }
    mmv_stats_add(map, "requests", "", 42);
    mmv_stats_set(map, "queue.depth", "fast", 3);
    mmv_stats_set(map, "queue.depth", "slow", -2);
    mmv_stats_set(map, "temperature", "", 21.5);
    mmv_stats_set_string(map, "version", "", "1.2.3");
    v = mmv_lookup_value_desc(map, big, "");
    if (v) v->ull = 0x123456789ULL;
    printf("ready\n");
    fflush(stdout);
    while (read(0, buf, sizeof buf) > 0) {
    }
    mmv_stats_free(reg);
    return 0;
}
