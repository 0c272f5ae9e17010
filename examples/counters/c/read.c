/*
 * An example C reader of a counter file (include/purveyor/counters.h): prints
 * "INSTANCE/COUNTER=VALUE[,VALUE]" for every live instance and counter.
 *
 *   cc -I include -o read examples/counters/c/read.c && ./read FILE
 */
#include <purveyor/counters.h>

int main(int argc, char **argv) {
    pv_reader r;
    char err[512];
    unsigned i, c;
    if (argc != 2) {
        fprintf(stderr, "usage: read FILE\n");
        return 2;
    }
    if (pv_reader_open(argv[1], &r, err, sizeof err) != 0) {
        fprintf(stderr, "read: %s\n", err);
        return 1;
    }
    for (i = 0; i < pv_reader_header(&r)->instance_capacity; i++) {
        const pv_instance_rec *inst = pv_reader_instance(&r, i);
        if (inst->state != PV_INSTANCE_LIVE) continue;
        for (c = 0; c < pv_reader_header(&r)->counter_count; c++) {
            const pv_counter_desc *d = pv_reader_counter(&r, c);
            uint32_t len;
            const char *name = pv_reader_string(&r, d->name_offset, d->name_len, &len);
            printf("%.*s/%.*s=%llu", (int)(inst->name_len > 56 ? 56 : inst->name_len), inst->name,
                   (int)len, name, (unsigned long long)pv_reader_value(&r, i, d->slot));
            if (d->kind == PV_AVERAGE || d->kind == PV_FRACTION)
                printf(",%llu", (unsigned long long)pv_reader_value(&r, i, d->slot + 1));
            printf("\n");
        }
    }
    pv_reader_close(&r);
    return 0;
}
