/*
 * fuzz_bus.c - the bus envelope decoder (cl_bus_decode), which sees every frame any peer
 * on the bus sends: a compromised agent controls all of its bytes.
 *
 * Invariants beyond "no crash":
 *  - a refusal is -EINVAL (or -ENOMEM) with the cl_error filled, and *out untouched;
 *  - an accepted envelope is well-formed (v == 1, id a UUID, type/from non-empty, every
 *    string terminated inside its buffer, body an object, peer empty);
 *  - decode -> encode -> decode gives the same envelope, and encoding that again gives
 *    byte-identical text (the codec is a fixed point after one round).
 */
#include <errno.h>
#include <string.h>

#include "bus.h"
#include "fuzz_common.h"

static void check_sane(const cl_bus_msg *m)
{
    FUZZ_CHECK(m->v == CL_BUS_VERSION);
    FUZZ_STR_OK(m->id);
    FUZZ_STR_OK(m->type);
    FUZZ_STR_OK(m->from);
    FUZZ_STR_OK(m->req);
    FUZZ_STR_OK(m->peer);
    FUZZ_CHECK(cl_uuid_valid(m->id));
    FUZZ_CHECK(m->type[0] != '\0');
    FUZZ_CHECK(m->from[0] != '\0');
    FUZZ_CHECK(m->peer[0] == '\0');
    FUZZ_CHECK(json_object_is_type(m->body, json_type_object));
}

static void check_same(const cl_bus_msg *a, const cl_bus_msg *b)
{
    FUZZ_CHECK(a->v == b->v);
    FUZZ_CHECK(strcmp(a->id, b->id) == 0);
    FUZZ_CHECK(strcmp(a->type, b->type) == 0);
    FUZZ_CHECK(a->ts == b->ts);
    FUZZ_CHECK(strcmp(a->from, b->from) == 0);
    FUZZ_CHECK(strcmp(a->req, b->req) == 0);
    FUZZ_CHECK(json_object_equal(a->body, b->body));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cl_bus_msg m, sentinel, m2;
    cl_error err = {0};
    char *enc1 = NULL, *enc2 = NULL;
    int r;

    memset(&m, 0xA5, sizeof(m));
    memcpy(&sentinel, &m, sizeof(m));
    r = cl_bus_decode((const char *)data, size, &m, &err);
    if (r < 0) {
        FUZZ_CHECK(r == -EINVAL || r == -ENOMEM);
        if (r == -EINVAL)
            fuzz_check_error(&err);
        FUZZ_CHECK(memcmp(&m, &sentinel, sizeof(m)) == 0);
        return 0;
    }
    FUZZ_CHECK(r == 0);
    check_sane(&m);

    r = cl_bus_encode(&m, &enc1);
    FUZZ_CHECK(r == 0 && enc1 != NULL);
    if (strlen(enc1) > CL_BUS_MAX_FRAME) {
        /* Escaping can grow a frame past the cap; the sender would refuse it. */
        free(enc1);
        cl_bus_msg_clear(&m);
        return 0;
    }
    memset(&m2, 0, sizeof(m2));
    memset(&err, 0, sizeof(err));
    r = cl_bus_decode(enc1, strlen(enc1), &m2, &err);
    if (r != 0)
        fprintf(stderr, "re-decode of our own encoding failed: %s\n%s\n", err.message, enc1);
    FUZZ_CHECK(r == 0);
    check_sane(&m2);
    check_same(&m, &m2);
    r = cl_bus_encode(&m2, &enc2);
    FUZZ_CHECK(r == 0 && enc2 != NULL);
    FUZZ_CHECK(strcmp(enc1, enc2) == 0);

    free(enc1);
    free(enc2);
    cl_bus_msg_clear(&m);
    cl_bus_msg_clear(&m2);
    return 0;
}
