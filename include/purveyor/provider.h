/*
 * Purveyor provider ABI, version 1 (docs/provider-abi.md).
 *
 * A provider library exports one function, purveyor_provider_install. The host calls it
 * with its ABI version; the library fills a pv_provider table. Only C types cross the
 * boundary: each request is a ProviderRequest and each reply a ProviderResponse, encoded
 * as bytes in the encoding the table names (JSON for C providers; the Rust SDK uses the
 * binary encoding).
 *
 * Threads: `call` may run on several host threads at once, and `state` must be usable
 * from any thread. `release` runs once, after the last call has returned.
 */
#ifndef PURVEYOR_PROVIDER_H
#define PURVEYOR_PROVIDER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PURVEYOR_PROVIDER_ABI 1

#define PV_ENCODING_BINARY 0u
#define PV_ENCODING_JSON 1u

#define PV_OK 0
#define PV_ERR_ABI 1     /* the library does not speak the host's ABI (abi_version says which it does) */
#define PV_ERR_FAILED 2

typedef struct pv_provider {
    uint32_t abi_version; /* set by the library to PURVEYOR_PROVIDER_ABI */
    uint32_t encoding;    /* PV_ENCODING_* of requests and replies */
    void *state;          /* the library's own; passed back to every function */
    /* Answers one request (request_len bytes). On PV_OK, *reply holds *reply_len bytes
     * the library allocated, which the host gives back through free_reply. */
    int32_t (*call)(void *state, const uint8_t *request, uint64_t request_len,
                    uint8_t **reply, uint64_t *reply_len);
    void (*free_reply)(void *state, uint8_t *reply, uint64_t reply_len);
    /* The cleanup entry point: frees state. Runs once; no call follows. May be NULL. */
    void (*release)(void *state);
} pv_provider;

_Static_assert(offsetof(pv_provider, abi_version) == 0, "pv_provider layout");
_Static_assert(offsetof(pv_provider, encoding) == 4, "pv_provider layout");
_Static_assert(offsetof(pv_provider, state) == 8, "pv_provider layout");
_Static_assert(offsetof(pv_provider, call) == 8 + sizeof(void *), "pv_provider layout");
_Static_assert(offsetof(pv_provider, free_reply) == 8 + 2 * sizeof(void *), "pv_provider layout");
_Static_assert(offsetof(pv_provider, release) == 8 + 3 * sizeof(void *), "pv_provider layout");
_Static_assert(sizeof(pv_provider) == 8 + 4 * sizeof(void *), "pv_provider layout");

/* The host's line for dialogs (docs/dialogs.md), given to the optional export
 * purveyor_provider_attach once after install, valid until after release. send() takes one
 * ProviderResponse with id 0 and a "dialog" reply, in the table's encoding, from any
 * thread. */
typedef struct pv_host {
    uint32_t abi_version;
    uint32_t reserved;
    void *state;
    void (*send)(void *state, const uint8_t *message, uint64_t len);
} pv_host;

_Static_assert(offsetof(pv_host, state) == 8, "pv_host layout");
_Static_assert(offsetof(pv_host, send) == 8 + sizeof(void *), "pv_host layout");
_Static_assert(sizeof(pv_host) == 8 + 2 * sizeof(void *), "pv_host layout");

/* Optional: receives the host's line for dialogs. Returns PV_OK. */
int32_t purveyor_provider_attach(void *state, const pv_host *host);

/* The one exported function. `name` is the provider's name from its manifest. Always sets
 * out->abi_version; returns PV_OK, PV_ERR_ABI or PV_ERR_FAILED. */
int32_t purveyor_provider_install(uint32_t host_abi, const char *name, pv_provider *out);

#ifdef __cplusplus
}
#endif

#endif
