/*
 * usage_msg.c - encoder and decoder of the usage.samples message (see usage_msg.h for
 * the contract between nube-agent and nube-billing).
 *
 * The decoder is strict about each sample and lenient about the batch: every field is
 * checked (uuids, bounded strings that are refused rather than truncated, non-negative
 * integers, enum names, the fields each kind requires), but one bad sample is skipped
 * and counted instead of failing the batch, because the bus acknowledges whole messages
 * and the good samples beside it must not be lost or resent forever.
 *
 * Two body layouts decode (usage_msg.h): "rows" (what the encoder writes: one array per
 * sample with the fields at fixed positions) and "samples" (one object per sample, what
 * agents before the row layout wrote and may still hold in their outboxes). Rows exist
 * for speed: billing ingests 100 000+ samples a second through one bus thread, and an
 * array costs json-c a fraction of an object (no hash table, no key strings to parse,
 * copy or look up), on both ends of the wire. The checks are the same for both.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "usage_msg.h"

static const char *const kind_names[CL_USAGE_KIND_MAX] = {
    [CL_USAGE_COUNTER] = "counter",
    [CL_USAGE_GAUGE] = "gauge",
    [CL_USAGE_EVENT] = "event",
};

static const char *const event_names[CL_USAGE_EV_MAX] = {
    [CL_USAGE_EV_NONE] = "none",       [CL_USAGE_EV_CREATED] = "created",
    [CL_USAGE_EV_STARTED] = "started", [CL_USAGE_EV_RESUMED] = "resumed",
    [CL_USAGE_EV_RESIZED] = "resized", [CL_USAGE_EV_MIGRATED] = "migrated",
    [CL_USAGE_EV_PAUSED] = "paused",   [CL_USAGE_EV_STOPPED] = "stopped",
    [CL_USAGE_EV_DELETED] = "deleted",
};

/* Name of a kind; "unknown" for out-of-range values. */
const char *cl_usage_kind_name(cl_usage_kind k)
{
    return (unsigned)k < CL_USAGE_KIND_MAX ? kind_names[k] : "unknown";
}

/* Name of an event; "unknown" for out-of-range values. */
const char *cl_usage_event_name(cl_usage_event e)
{
    return (unsigned)e < CL_USAGE_EV_MAX ? event_names[e] : "unknown";
}

/* Parse a kind name. 0 or -EINVAL (out untouched). */
int cl_usage_kind_parse(const char *s, cl_usage_kind *out)
{
    for (int i = 0; s && i < CL_USAGE_KIND_MAX; i++)
        if (strcmp(s, kind_names[i]) == 0) {
            *out = (cl_usage_kind)i;
            return 0;
        }
    return -EINVAL;
}

/* Parse an event name ("none" is not a valid event on the wire). 0 or -EINVAL. */
int cl_usage_event_parse(const char *s, cl_usage_event *out)
{
    for (int i = CL_USAGE_EV_NONE + 1; s && i < CL_USAGE_EV_MAX; i++)
        if (strcmp(s, event_names[i]) == 0) {
            *out = (cl_usage_event)i;
            return 0;
        }
    return -EINVAL;
}

/* ---- encoding ---- */

static bool add_ok(json_object *obj, const char *key, json_object *val)
{
    if (!val)
        return false;
    if (json_object_object_add(obj, key, val) < 0) {
        json_object_put(val);
        return false;
    }
    return true;
}

static bool add_i64(json_object *obj, const char *key, int64_t v)
{
    return add_ok(obj, key, json_object_new_int64(v));
}

static bool add_str(json_object *obj, const char *key, const char *s)
{
    return add_ok(obj, key, json_object_new_string(s));
}

/* Build one sample object; optional parts only when present. Caller owns the result. */
json_object *cl_usage_sample_encode(const cl_usage_sample *s)
{
    if (!s)
        return NULL;
    _cleanup_json_ json_object *o = json_object_new_object();
    if (!o || !add_str(o, "id", s->id) || !add_str(o, "instance_uuid", s->instance_uuid) ||
        !add_str(o, "project_id", s->project_id) || !add_str(o, "host", s->host) ||
        !add_i64(o, "ts", s->ts) || !add_str(o, "kind", cl_usage_kind_name(s->kind)))
        return NULL;
    if (s->has_counters) {
        json_object *c = json_object_new_object();
        if (!add_ok(o, "counters", c) || !add_i64(c, "cpu_ns", s->counters.cpu_ns) ||
            !add_i64(c, "net_rx_bytes", s->counters.net_rx_bytes) ||
            !add_i64(c, "net_tx_bytes", s->counters.net_tx_bytes) ||
            !add_i64(c, "disk_rd_bytes", s->counters.disk_rd_bytes) ||
            !add_i64(c, "disk_wr_bytes", s->counters.disk_wr_bytes))
            return NULL;
    }
    if (s->has_gauges) {
        json_object *g = json_object_new_object();
        if (!add_ok(o, "gauges", g) || !add_i64(g, "vcpus", s->gauges.vcpus) ||
            !add_i64(g, "ram_mb", s->gauges.ram_mb) || !add_i64(g, "disk_gb", s->gauges.disk_gb))
            return NULL;
        if (s->gauges.mem_used_mb >= 0 && !add_i64(g, "mem_used_mb", s->gauges.mem_used_mb))
            return NULL;
    }
    if (s->flavor_id[0] && !add_str(o, "flavor_id", s->flavor_id))
        return NULL;
    if (s->kind == CL_USAGE_EVENT && !add_str(o, "event", cl_usage_event_name(s->event)))
        return NULL;
    if (s->boot_id[0] && !add_str(o, "boot_id", s->boot_id))
        return NULL;
    return TAKE_PTR(o);
}

/* The row layout: the position of each field in a row (usage_msg.h). */
enum {
    R_ID, R_INST, R_PROJECT, R_HOST, R_TS, R_KIND, R_EVENT, R_FLAVOR, R_BOOT,
    R_CPU, R_RX, R_TX, R_RD, R_WR, R_VCPUS, R_RAM, R_DISK, R_MEM, R_NCOLS
};

static const char *const row_names[R_NCOLS] = {
    [R_ID] = "id", [R_INST] = "instance_uuid", [R_PROJECT] = "project_id", [R_HOST] = "host",
    [R_TS] = "ts", [R_KIND] = "kind", [R_EVENT] = "event", [R_FLAVOR] = "flavor_id",
    [R_BOOT] = "boot_id", [R_CPU] = "counters.cpu_ns", [R_RX] = "counters.net_rx_bytes",
    [R_TX] = "counters.net_tx_bytes", [R_RD] = "counters.disk_rd_bytes",
    [R_WR] = "counters.disk_wr_bytes", [R_VCPUS] = "gauges.vcpus", [R_RAM] = "gauges.ram_mb",
    [R_DISK] = "gauges.disk_gb", [R_MEM] = "gauges.mem_used_mb",
};

/* One sample as a row; absent fields are null. Caller owns the result. */
static json_object *row_encode(const cl_usage_sample *s)
{
    json_object *v[R_NCOLS] = {0};
    bool c = s->has_counters, g = s->has_gauges;

    v[R_ID] = json_object_new_string(s->id);
    v[R_INST] = json_object_new_string(s->instance_uuid);
    v[R_PROJECT] = json_object_new_string(s->project_id);
    v[R_HOST] = json_object_new_string(s->host);
    v[R_TS] = json_object_new_int64(s->ts);
    v[R_KIND] = json_object_new_string(cl_usage_kind_name(s->kind));
    if (s->kind == CL_USAGE_EVENT)
        v[R_EVENT] = json_object_new_string(cl_usage_event_name(s->event));
    if (s->flavor_id[0])
        v[R_FLAVOR] = json_object_new_string(s->flavor_id);
    if (s->boot_id[0])
        v[R_BOOT] = json_object_new_string(s->boot_id);
    if (c) {
        v[R_CPU] = json_object_new_int64(s->counters.cpu_ns);
        v[R_RX] = json_object_new_int64(s->counters.net_rx_bytes);
        v[R_TX] = json_object_new_int64(s->counters.net_tx_bytes);
        v[R_RD] = json_object_new_int64(s->counters.disk_rd_bytes);
        v[R_WR] = json_object_new_int64(s->counters.disk_wr_bytes);
    }
    if (g) {
        v[R_VCPUS] = json_object_new_int64(s->gauges.vcpus);
        v[R_RAM] = json_object_new_int64(s->gauges.ram_mb);
        v[R_DISK] = json_object_new_int64(s->gauges.disk_gb);
        if (s->gauges.mem_used_mb >= 0)
            v[R_MEM] = json_object_new_int64(s->gauges.mem_used_mb);
    }
    /* Which fields are present is decided above; any NULL beyond that is no memory. */
    bool ok = v[R_ID] && v[R_INST] && v[R_PROJECT] && v[R_HOST] && v[R_TS] && v[R_KIND] &&
              (s->kind != CL_USAGE_EVENT || v[R_EVENT]) && (!s->flavor_id[0] || v[R_FLAVOR]) &&
              (!s->boot_id[0] || v[R_BOOT]) &&
              (!c || (v[R_CPU] && v[R_RX] && v[R_TX] && v[R_RD] && v[R_WR])) &&
              (!g || (v[R_VCPUS] && v[R_RAM] && v[R_DISK] &&
                      (s->gauges.mem_used_mb < 0 || v[R_MEM])));
    json_object *row = ok ? json_object_new_array_ext(R_NCOLS) : NULL;
    for (int i = 0; i < R_NCOLS; i++) {
        if (row && json_object_array_add(row, v[i]) == 0)
            continue;
        json_object_put(v[i]);
        if (row) {
            json_object_put(row);
            row = NULL;
        }
    }
    return row;
}

/* Build {"rows": [...]}. Caller owns the result. */
json_object *cl_usage_batch_encode(const cl_usage_sample *samples, size_t n)
{
    if (!samples || n == 0 || n > CL_USAGE_BATCH_MAX)
        return NULL;
    _cleanup_json_ json_object *body = json_object_new_object();
    json_object *arr = json_object_new_array_ext((int)n);
    if (!body || !add_ok(body, "rows", arr))
        return NULL;
    for (size_t i = 0; i < n; i++) {
        json_object *s = row_encode(&samples[i]);
        if (!s)
            return NULL;
        if (json_object_array_add(arr, s) < 0) {
            json_object_put(s);
            return NULL;
        }
    }
    return TAKE_PTR(body);
}

/* ---- decoding ---- */

/* A bounded string copied into a fixed buffer; too long is an error, never a cut. */
static int get_str(json_object *root, const char *path, bool required, size_t min,
                   char *out, size_t outlen, cl_error *err)
{
    const char *s = NULL;
    int r = cl_json_get_str_len(root, path, required, min, outlen - 1, &s, err);
    if (r < 0)
        return r;
    if (!s)
        return 0;
    if (strlen(s) >= outlen)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': longer than %zu bytes", path,
                            outlen - 1);
    cl_strlcpy(out, s, outlen);
    return 0;
}

static int get_uuid(json_object *root, const char *path, char out[CL_UUID_LEN], cl_error *err)
{
    const char *s = NULL;
    int r = cl_json_get_str(root, path, true, &s, err);
    if (r < 0)
        return r;
    if (!s || !cl_uuid_valid(s))
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': expected a UUID", path);
    cl_strlcpy(out, s, CL_UUID_LEN);
    return 0;
}

static int get_count(json_object *root, const char *path, bool required, int64_t *out,
                     cl_error *err)
{
    return cl_json_get_int_range(root, path, required, 0, INT64_MAX, out, err);
}

static int decode_counters(json_object *obj, cl_usage_counters *c, cl_error *err)
{
    int r;
    if ((r = get_count(obj, "counters.cpu_ns", true, &c->cpu_ns, err)) < 0 ||
        (r = get_count(obj, "counters.net_rx_bytes", true, &c->net_rx_bytes, err)) < 0 ||
        (r = get_count(obj, "counters.net_tx_bytes", true, &c->net_tx_bytes, err)) < 0 ||
        (r = get_count(obj, "counters.disk_rd_bytes", true, &c->disk_rd_bytes, err)) < 0 ||
        (r = get_count(obj, "counters.disk_wr_bytes", true, &c->disk_wr_bytes, err)) < 0)
        return r;
    return 0;
}

static int decode_gauges(json_object *obj, cl_usage_gauges *g, cl_error *err)
{
    int r;
    g->mem_used_mb = -1;
    if ((r = cl_json_get_int_range(obj, "gauges.vcpus", true, 0, INT32_MAX, &g->vcpus,
                                   err)) < 0 ||
        (r = cl_json_get_int_range(obj, "gauges.ram_mb", true, 0, INT32_MAX, &g->ram_mb,
                                   err)) < 0 ||
        (r = cl_json_get_int_range(obj, "gauges.disk_gb", true, 0, INT32_MAX, &g->disk_gb,
                                   err)) < 0 ||
        (r = cl_json_get_int_range(obj, "gauges.mem_used_mb", false, 0, INT32_MAX,
                                   &g->mem_used_mb, err)) < 0)
        return r;
    return 0;
}

/* What each kind requires, once its fields are read (both layouts). evname: the "event"
 * field of an event sample. */
static int check_kind(cl_usage_sample *s, const char *evname, cl_error *err)
{
    switch (s->kind) {
    case CL_USAGE_COUNTER:
        if (!s->has_counters)
            return cl_error_set(err, CL_E_BAD_REQUEST, "Missing required field 'counters'");
        if (!s->boot_id[0])
            return cl_error_set(err, CL_E_BAD_REQUEST, "Missing required field 'boot_id'");
        return 0;
    case CL_USAGE_GAUGE:
        if (!s->has_gauges)
            return cl_error_set(err, CL_E_BAD_REQUEST, "Missing required field 'gauges'");
        return 0;
    case CL_USAGE_EVENT:
        if (cl_usage_event_parse(evname, &s->event) < 0)
            return cl_error_set(err, CL_E_BAD_REQUEST,
                                "Invalid input for field 'event': unknown value '%.32s'",
                                evname ? evname : "");
        if (!s->has_gauges)
            return cl_error_set(err, CL_E_BAD_REQUEST, "Missing required field 'gauges'");
        if (!s->flavor_id[0])
            return cl_error_set(err, CL_E_BAD_REQUEST, "Missing required field 'flavor_id'");
        return 0;
    default:
        return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid input for field 'kind'");
    }
}

/* Decode one sample into *out (only on success). */
int cl_usage_sample_decode(json_object *obj, cl_usage_sample *out, cl_error *err)
{
    cl_usage_sample s;
    const char *name = NULL;
    json_object *sub = NULL;
    int r;

    memset(&s, 0, sizeof s);
    s.gauges.mem_used_mb = -1;
    if (!json_object_is_type(obj, json_type_object))
        return cl_error_set(err, CL_E_BAD_REQUEST, "a usage sample must be an object");
    if ((r = get_uuid(obj, "id", s.id, err)) < 0 ||
        (r = get_uuid(obj, "instance_uuid", s.instance_uuid, err)) < 0 ||
        (r = get_str(obj, "project_id", true, 1, s.project_id, sizeof s.project_id, err)) < 0 ||
        (r = get_str(obj, "host", true, 1, s.host, sizeof s.host, err)) < 0 ||
        /* Up to the year 2255 in ms; a negative or absurd time is a broken clock. */
        (r = cl_json_get_int_range(obj, "ts", true, 0, INT64_C(9000000000000), &s.ts,
                                   err)) < 0 ||
        (r = get_str(obj, "flavor_id", false, 1, s.flavor_id, sizeof s.flavor_id, err)) < 0 ||
        (r = get_str(obj, "boot_id", false, 1, s.boot_id, sizeof s.boot_id, err)) < 0)
        return r;
    if ((r = cl_json_get_str(obj, "kind", true, &name, err)) < 0)
        return r;
    if (cl_usage_kind_parse(name, &s.kind) < 0)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field 'kind': unknown value '%.32s'", name);
    if ((r = cl_json_get_object(obj, "counters", false, &sub, err)) < 0)
        return r;
    if (sub) {
        if ((r = decode_counters(obj, &s.counters, err)) < 0)
            return r;
        s.has_counters = true;
    }
    sub = NULL;
    if ((r = cl_json_get_object(obj, "gauges", false, &sub, err)) < 0)
        return r;
    if (sub) {
        if ((r = decode_gauges(obj, &s.gauges, err)) < 0)
            return r;
        s.has_gauges = true;
    }
    name = NULL;
    if (s.kind == CL_USAGE_EVENT && (r = cl_json_get_str(obj, "event", true, &name, err)) < 0)
        return r;
    if ((r = check_kind(&s, name, err)) < 0)
        return r;
    *out = s;
    return 0;
}

/* ---- the row layout ---- */

/* Column col of a row: NULL when null or absent. */
static json_object *col(json_object *row, int c)
{
    return json_object_array_get_idx(row, (size_t)c);
}

static int col_missing(int c, cl_error *err)
{
    cl_error_set(err, CL_E_BAD_REQUEST, "Missing required field '%s'", row_names[c]);
    return -ENOENT;
}

/* A string column copied into a fixed buffer, with the checks of cl_json_get_str_len:
 * no control characters (nor an escaped NUL), at least min characters, and too long is
 * an error, never a cut. */
static int col_str(json_object *row, int c, bool required, size_t min, char *out,
                   size_t outlen, cl_error *err)
{
    json_object *v = col(row, c);
    if (!v)
        return required ? col_missing(c, err) : 0;
    if (!json_object_is_type(v, json_type_string))
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': expected a string", row_names[c]);
    const char *str = json_object_get_string(v);
    size_t len = (size_t)json_object_get_string_len(v);
    if (strlen(str) != len)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': must not contain control "
                            "characters", row_names[c]);
    for (const char *p = str; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return cl_error_set(err, CL_E_BAD_REQUEST,
                                "Invalid input for field '%s': must not contain control "
                                "characters", row_names[c]);
    if (len < min || len >= outlen)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': length must be between %zu and "
                            "%zu bytes", row_names[c], min, outlen - 1);
    memcpy(out, str, len + 1);
    return 0;
}

static int col_uuid(json_object *row, int c, char out[CL_UUID_LEN], cl_error *err)
{
    int r = col_str(row, c, true, 1, out, CL_UUID_LEN, err);
    if (r < 0)
        return r;
    if (!cl_uuid_valid(out))
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': expected a UUID", row_names[c]);
    return 0;
}

/* An integer column in [lo, hi]; a value json-c clamped (above INT64_MAX) is refused. */
static int col_int(json_object *row, int c, bool required, int64_t lo, int64_t hi,
                   int64_t *out, cl_error *err)
{
    json_object *v = col(row, c);
    if (!v)
        return required ? col_missing(c, err) : 0;
    if (!json_object_is_type(v, json_type_int))
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': expected an integer", row_names[c]);
    int64_t n = json_object_get_int64(v);
    if ((n == INT64_MAX && json_object_get_uint64(v) != (uint64_t)INT64_MAX) || n < lo ||
        n > hi)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': must be between %" PRId64
                            " and %" PRId64, row_names[c], lo, hi);
    *out = n;
    return 0;
}

/* Decode one row into *out (only on success): the same rules as a sample object. */
static int row_decode(json_object *row, cl_usage_sample *out, cl_error *err)
{
    cl_usage_sample s;
    char kind[16] = "", evname[16] = "";
    int r;

    memset(&s, 0, sizeof s);
    s.gauges.mem_used_mb = -1;
    /* Columns past R_NCOLS are ignored: room for fields a newer agent may add. */
    if (!json_object_is_type(row, json_type_array) ||
        json_object_array_length(row) < R_NCOLS)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "a usage row must be an array of at least %d fields", R_NCOLS);
    if ((r = col_uuid(row, R_ID, s.id, err)) < 0 ||
        (r = col_uuid(row, R_INST, s.instance_uuid, err)) < 0 ||
        (r = col_str(row, R_PROJECT, true, 1, s.project_id, sizeof s.project_id, err)) < 0 ||
        (r = col_str(row, R_HOST, true, 1, s.host, sizeof s.host, err)) < 0 ||
        (r = col_int(row, R_TS, true, 0, INT64_C(9000000000000), &s.ts, err)) < 0 ||
        (r = col_str(row, R_FLAVOR, false, 1, s.flavor_id, sizeof s.flavor_id, err)) < 0 ||
        (r = col_str(row, R_BOOT, false, 1, s.boot_id, sizeof s.boot_id, err)) < 0)
        return r;
    /* Names longer than any known one are unknown values, whatever their length. */
    if ((r = col_str(row, R_KIND, true, 1, kind, sizeof kind, err)) < 0 &&
        r != -EINVAL)
        return r;
    if (r < 0 || cl_usage_kind_parse(kind, &s.kind) < 0)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field 'kind': unknown value '%.32s'", kind);
    if (col(row, R_CPU)) {
        if ((r = col_int(row, R_CPU, true, 0, INT64_MAX, &s.counters.cpu_ns, err)) < 0 ||
            (r = col_int(row, R_RX, true, 0, INT64_MAX, &s.counters.net_rx_bytes, err)) < 0 ||
            (r = col_int(row, R_TX, true, 0, INT64_MAX, &s.counters.net_tx_bytes, err)) < 0 ||
            (r = col_int(row, R_RD, true, 0, INT64_MAX, &s.counters.disk_rd_bytes, err)) < 0 ||
            (r = col_int(row, R_WR, true, 0, INT64_MAX, &s.counters.disk_wr_bytes, err)) < 0)
            return r;
        s.has_counters = true;
    }
    if (col(row, R_VCPUS)) {
        if ((r = col_int(row, R_VCPUS, true, 0, INT32_MAX, &s.gauges.vcpus, err)) < 0 ||
            (r = col_int(row, R_RAM, true, 0, INT32_MAX, &s.gauges.ram_mb, err)) < 0 ||
            (r = col_int(row, R_DISK, true, 0, INT32_MAX, &s.gauges.disk_gb, err)) < 0 ||
            (r = col_int(row, R_MEM, false, 0, INT32_MAX, &s.gauges.mem_used_mb, err)) < 0)
            return r;
        s.has_gauges = true;
    }
    if (s.kind == CL_USAGE_EVENT) {
        if ((r = col_str(row, R_EVENT, true, 1, evname, sizeof evname, err)) < 0 &&
            r != -EINVAL)
            return r;
        if (r < 0)
            evname[0] = '\0';
    }
    if ((r = check_kind(&s, evname, err)) < 0)
        return r;
    *out = s;
    return 0;
}

/* Decode a batch; see usage_msg.h for the skip-and-count policy. */
int cl_usage_batch_decode(json_object *body, cl_usage_sample **out, size_t *out_n,
                          size_t *out_rejected, cl_error *err)
{
    json_object *arr = NULL, *rows = NULL, *objs = NULL;
    const char *key;
    size_t n, kept = 0, rejected = 0;

    if (!json_object_is_type(body, json_type_object))
        return cl_error_set(err, CL_E_BAD_REQUEST, "message body must be an object");
    json_object_object_get_ex(body, "rows", &rows);
    json_object_object_get_ex(body, "samples", &objs);
    if (rows && objs)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "a usage.samples body holds 'rows' or 'samples', not both");
    arr = rows ? rows : objs;
    key = rows ? "rows" : "samples";
    if (!arr)
        return cl_error_set(err, CL_E_BAD_REQUEST, "Missing required field 'rows'");
    if (!json_object_is_type(arr, json_type_array))
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "Invalid input for field '%s': expected an array", key);
    n = json_object_array_length(arr);
    if (n == 0)
        return cl_error_set(err, CL_E_BAD_REQUEST, "'%s' must not be empty", key);
    if (n > CL_USAGE_BATCH_MAX) {
        cl_error_set(err, CL_E_TOO_LARGE, "'%s' holds %zu samples, more than %d", key, n,
                     CL_USAGE_BATCH_MAX);
        return -E2BIG;
    }
    _cleanup_free_ cl_usage_sample *v = malloc(n * sizeof *v);
    if (!v)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        cl_error e = {0};
        json_object *item = json_object_array_get_idx(arr, i);
        int r = rows ? row_decode(item, &v[kept], &e) : cl_usage_sample_decode(item, &v[kept], &e);
        if (r < 0) {
            if (rejected++ == 0)
                cl_error_set(err, e.code, "%s[%zu]: %s", key, i, e.message);
            continue;
        }
        kept++;
    }
    *out_rejected = rejected;
    *out_n = kept;
    *out = kept ? TAKE_PTR(v) : NULL;
    return 0;
}
