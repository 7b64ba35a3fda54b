/*
 * fuzz_usage.c - the usage.samples decoders (libcloud/usage_msg.h): an agent's samples
 * become money in nube-billing, so a malformed batch must be refused or skipped exactly
 * as the header promises, never half-read.
 *
 * The input is one JSON value; it goes to cl_usage_batch_decode() as a body, and each of
 * its "samples" entries (and the value itself) to cl_usage_sample_decode(). Invariants:
 *  - refusals are -EINVAL/-ENOENT/-E2BIG with err filled and outputs untouched;
 *  - a batch accounts for every entry: kept + rejected == entries, rejected > 0 exactly
 *    when err was filled, and each kept sample re-validates on its own;
 *  - an accepted sample is sane (UUIDs, kind/event in range, non-negative quantities,
 *    the parts its kind requires present) and decode -> encode -> decode is equal.
 */
#include <errno.h>
#include <string.h>

#include "fuzz_common.h"
#include "json.h"
#include "usage_msg.h"

static bool sample_eq(const cl_usage_sample *a, const cl_usage_sample *b)
{
    return strcmp(a->id, b->id) == 0 && strcmp(a->instance_uuid, b->instance_uuid) == 0 &&
           strcmp(a->project_id, b->project_id) == 0 && strcmp(a->host, b->host) == 0 &&
           a->ts == b->ts && a->kind == b->kind && a->has_counters == b->has_counters &&
           (!a->has_counters ||
            memcmp(&a->counters, &b->counters, sizeof(a->counters)) == 0) &&
           a->has_gauges == b->has_gauges &&
           (!a->has_gauges || (a->gauges.vcpus == b->gauges.vcpus &&
                               a->gauges.ram_mb == b->gauges.ram_mb &&
                               a->gauges.disk_gb == b->gauges.disk_gb &&
                               a->gauges.mem_used_mb == b->gauges.mem_used_mb)) &&
           strcmp(a->flavor_id, b->flavor_id) == 0 && a->event == b->event &&
           strcmp(a->boot_id, b->boot_id) == 0;
}

static void check_sample(const cl_usage_sample *s)
{
    FUZZ_STR_OK(s->id);
    FUZZ_STR_OK(s->instance_uuid);
    FUZZ_STR_OK(s->project_id);
    FUZZ_STR_OK(s->host);
    FUZZ_STR_OK(s->flavor_id);
    FUZZ_STR_OK(s->boot_id);
    FUZZ_CHECK(cl_uuid_valid(s->id) && cl_uuid_valid(s->instance_uuid));
    FUZZ_CHECK(s->project_id[0] && s->host[0]);
    FUZZ_CHECK(s->ts >= 0);
    FUZZ_CHECK((unsigned)s->kind < CL_USAGE_KIND_MAX);
    FUZZ_CHECK((unsigned)s->event < CL_USAGE_EV_MAX);
    if (s->has_counters)
        FUZZ_CHECK(s->counters.cpu_ns >= 0 && s->counters.net_rx_bytes >= 0 &&
                   s->counters.net_tx_bytes >= 0 && s->counters.disk_rd_bytes >= 0 &&
                   s->counters.disk_wr_bytes >= 0);
    if (s->has_gauges)
        FUZZ_CHECK(s->gauges.vcpus >= 0 && s->gauges.ram_mb >= 0 && s->gauges.disk_gb >= 0 &&
                   s->gauges.mem_used_mb >= -1);
    else
        FUZZ_CHECK(s->gauges.mem_used_mb == -1);
    switch (s->kind) {
    case CL_USAGE_COUNTER:
        FUZZ_CHECK(s->has_counters && s->boot_id[0] && s->event == CL_USAGE_EV_NONE);
        break;
    case CL_USAGE_GAUGE:
        FUZZ_CHECK(s->has_gauges && s->event == CL_USAGE_EV_NONE);
        break;
    case CL_USAGE_EVENT:
        FUZZ_CHECK(s->has_gauges && s->flavor_id[0] && s->event != CL_USAGE_EV_NONE);
        break;
    default:
        FUZZ_CHECK(!"unknown kind accepted");
    }
}

static void round_trip(const cl_usage_sample *s)
{
    cl_usage_sample s2;
    cl_error err = {0};

    _cleanup_json_ json_object *enc = cl_usage_sample_encode(s);
    FUZZ_CHECK(enc != NULL);
    memset(&s2, 0, sizeof(s2));
    int r = cl_usage_sample_decode(enc, &s2, &err);
    if (r != 0)
        fprintf(stderr, "sample re-decode: %s\n%s\n", err.message, cl_json_dump(enc));
    FUZZ_CHECK(r == 0);
    FUZZ_CHECK(sample_eq(s, &s2));
    /* Names and parsers agree. */
    cl_usage_kind k;
    FUZZ_CHECK(cl_usage_kind_parse(cl_usage_kind_name(s->kind), &k) == 0 && k == s->kind);
    if (s->event != CL_USAGE_EV_NONE) {
        cl_usage_event e;
        FUZZ_CHECK(cl_usage_event_parse(cl_usage_event_name(s->event), &e) == 0 &&
                   e == s->event);
    }
}

static void fuzz_sample(json_object *obj)
{
    cl_usage_sample s, sentinel;
    cl_error err = {0};

    memset(&s, 0xA5, sizeof(s));
    memcpy(&sentinel, &s, sizeof(s));
    int r = cl_usage_sample_decode(obj, &s, &err);
    if (r < 0) {
        FUZZ_CHECK(r == -EINVAL || r == -ENOENT);
        fuzz_check_error(&err);
        FUZZ_CHECK(memcmp(&s, &sentinel, sizeof(s)) == 0);
        return;
    }
    FUZZ_CHECK(r == 0);
    check_sample(&s);
    round_trip(&s);
}

static void fuzz_batch(json_object *body)
{
    static cl_usage_sample dummy; /* *out must stay as it was on a refusal */
    cl_usage_sample *const sentinel = &dummy;
    cl_usage_sample *v = sentinel;
    size_t n = 777, rejected = 777;
    cl_error err = {0};

    int r = cl_usage_batch_decode(body, &v, &n, &rejected, &err);
    if (r < 0) {
        FUZZ_CHECK(r == -EINVAL || r == -ENOENT || r == -E2BIG || r == -ENOMEM);
        if (r != -ENOMEM)
            fuzz_check_error(&err);
        FUZZ_CHECK(v == sentinel && n == 777 && rejected == 777);
        return;
    }
    FUZZ_CHECK(r == 0);
    json_object *arr = cl_json_path(body, "samples");
    FUZZ_CHECK(json_object_is_type(arr, json_type_array));
    size_t total = json_object_array_length(arr);
    FUZZ_CHECK(total >= 1 && total <= CL_USAGE_BATCH_MAX);
    FUZZ_CHECK(n + rejected == total);
    FUZZ_CHECK((n == 0) == (v == NULL));
    if (rejected) {
        fuzz_check_error(&err);
        FUZZ_CHECK(strncmp(err.message, "samples[", 8) == 0);
    } else {
        FUZZ_CHECK(err.message[0] == '\0');
    }
    for (size_t i = 0; i < n; i++) {
        check_sample(&v[i]);
        round_trip(&v[i]);
    }
    /* Re-encoding what was kept gives a batch that decodes whole. */
    if (n) {
        _cleanup_json_ json_object *enc = cl_usage_batch_encode(v, n);
        cl_usage_sample *v2 = NULL;
        size_t n2 = 0, rej2 = 0;
        FUZZ_CHECK(enc != NULL);
        FUZZ_CHECK(cl_usage_batch_decode(enc, &v2, &n2, &rej2, &err) == 0);
        FUZZ_CHECK(n2 == n && rej2 == 0);
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK(sample_eq(&v[i], &v2[i]));
        free(v2);
    }
    free(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    _cleanup_json_ json_object *body = NULL;
    cl_error err = {0};

    if (size > 256 * 1024)
        return 0;
    if (cl_json_parse((const char *)data, size, &body, &err) < 0)
        return 0;
    fuzz_batch(body);
    fuzz_sample(body);
    json_object *arr = cl_json_path(body, "samples");
    if (json_object_is_type(arr, json_type_array)) {
        size_t n = json_object_array_length(arr);
        for (size_t i = 0; i < n && i < 16; i++)
            fuzz_sample(json_object_array_get_idx(arr, i));
    }
    return 0;
}
