/*
 * Purveyor I/O procedure libraries (docs/io-procedures.md).
 *
 * A library exports one function, purveyor_io_install, which calls
 * registry->install(registry->ctx, "XOR ", &procedure) once per procedure it shares.
 * The host (or an application's registry) copies the table. A procedure's `message`
 * function handles every message for it; `*stream` is the procedure's own state for one
 * open stream, set by PV_IO_OPEN and cleared by PV_IO_CLOSE.
 *
 * Return values: >= 0 success (a count, a position, an answer); a negative errno on
 * failure. Unknown messages answer -ENOSYS (PV_IO_UNSUPPORTED).
 * `message` may be called from any thread, but never for one stream from two at once.
 */
#ifndef PURVEYOR_IO_H
#define PURVEYOR_IO_H

#include <stdint.h>
#include <errno.h>

#define PV_IO_ABI_VERSION 1u

/* Messages. `arg`, `buf` and `len` as described for each. */
#define PV_IO_OPEN        1u    /* buf: const pv_io_name * (mode set); sets *stream      */
#define PV_IO_CLOSE       2u    /* finishes and frees *stream                            */
#define PV_IO_READ        3u    /* buf/len: where to read; returns bytes read, 0 at end  */
#define PV_IO_WRITE       4u    /* buf/len: what to write; returns bytes written         */
#define PV_IO_WRITEFLUSH  5u    /* as WRITE (len may be 0), then flush                   */
#define PV_IO_SEEK        6u    /* arg: offset; len: 0 start, 1 current, 2 end           */
#define PV_IO_RENAME      7u    /* no stream; buf: const pv_io_rename *                  */
#define PV_IO_DELETE      8u    /* no stream; buf: const pv_io_name *                    */
#define PV_IO_USER        0x4000u /* first custom message: buf/len input, returns answer */

#define PV_IO_UNSUPPORTED (-ENOSYS)

#define PV_IO_MODE_READ       1u
#define PV_IO_MODE_WRITE      2u  /* create or truncate */
#define PV_IO_MODE_READ_WRITE 3u

/* `file.EXT+element`: path is the container (file.EXT), element what is inside it
 * (relative, never ".."; empty for the whole file). UTF-8, not NUL-terminated. */
typedef struct pv_io_name {
    const uint8_t *path;
    uint64_t path_len;
    const uint8_t *element;
    uint64_t element_len;
    uint32_t mode;      /* PV_IO_OPEN only */
    uint32_t reserved;
} pv_io_name;

typedef struct pv_io_rename {
    pv_io_name from;
    pv_io_name to;
} pv_io_rename;

typedef int64_t (*pv_io_message_fn)(void *state, void **stream, uint32_t message,
                                    int64_t arg, void *buf, uint64_t len);

typedef struct pv_io_procedure {
    uint32_t abi_version;       /* PV_IO_ABI_VERSION */
    uint32_t reserved;
    void *state;                /* the procedure's own, passed to every message */
    const char *description;    /* NUL-terminated, lives as long as the library */
    pv_io_message_fn message;
    void (*destroy)(void *state); /* may be NULL: called when the procedure is dropped */
} pv_io_procedure;

typedef struct pv_io_registry {
    uint32_t abi_version;
    uint32_t reserved;
    void *ctx;
    /* code: exactly 4 bytes, printable ASCII, uppercase, space-padded ("GZ  "). */
    int32_t (*install)(void *ctx, const char code[4], const pv_io_procedure *procedure);
} pv_io_registry;

/* The one export. Returns how many procedures it installed, or a negative errno. */
int32_t purveyor_io_install(const pv_io_registry *registry);

#define PV_IO_PTR sizeof(void *)
_Static_assert(sizeof(pv_io_procedure) == 8 + 4 * PV_IO_PTR, "pv_io_procedure size");
_Static_assert(__builtin_offsetof(pv_io_procedure, message) == 8 + 2 * PV_IO_PTR,
               "pv_io_procedure.message");
_Static_assert(__builtin_offsetof(pv_io_registry, install) == 8 + PV_IO_PTR,
               "pv_io_registry.install");

#endif
