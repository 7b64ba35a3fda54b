/*
 * usage_msg.h - the usage.samples message: what nube-agent measures and nube-billing
 * meters. One codec, both ends (STYLE.md): the agent encodes with it, billing decodes.
 *
 *  type           direction          body
 *  -------------  -----------------  ---------------------------------------------------
 *  usage.samples  agent -> billing   {"rows": [<row>, ...]}        (1..CL_USAGE_BATCH_MAX)
 *                                    or {"samples": [<sample>, ...]}  (the older layout)
 *
 * A row is one sample as an array, its fields at fixed positions (null when absent):
 *   [id, instance_uuid, project_id, host, ts, kind, event, flavor_id, boot_id,
 *    cpu_ns, net_rx_bytes, net_tx_bytes, disk_rd_bytes, disk_wr_bytes,
 *    vcpus, ram_mb, disk_gb, mem_used_mb]
 * with the meanings, types and requirements of the object layout below (counters are
 * present when cpu_ns is not null, gauges when vcpus is not null). Fields after the
 * 18th are ignored, so an agent may append new ones. The encoder writes rows: json-c
 * parses and builds an array at a fraction of the cost of an object, and billing's bus
 * thread does it 100 000+ times a second. The decoder still reads the object layout,
 * which agents of an earlier release may hold in their outboxes; a billing of an earlier
 * release does not read rows, so upgrade nube-billing before the agents.
 *
 * A sample in the object layout:
 *   {"id": "<uuid, unique per sample: the de-duplication key>",
 *    "instance_uuid": "<uuid>", "project_id": "<id>", "host": "<agent host name>",
 *    "ts": <unix ms when measured>,
 *    "kind": "counter" | "gauge" | "event",
 *    "counters": {"cpu_ns", "net_rx_bytes", "net_tx_bytes", "disk_rd_bytes",
 *                 "disk_wr_bytes"},                       -- required for "counter"
 *    "gauges": {"vcpus", "ram_mb", "disk_gb", "mem_used_mb"?},
 *                                                         -- required for "gauge", "event"
 *    "flavor_id": "<id>",                                 -- required for "event"
 *    "event": "created" | "started" | "stopped" | "paused" | "resumed" | "resized" |
 *             "migrated" | "deleted",                     -- required for "event"
 *    "boot_id": "<opaque, 1..64 chars>"}                  -- required for "counter"
 *
 * Rules the sender must follow (billing's exactness depends on them):
 *  - counters are cumulative since the counter base (libvirt's values for the running
 *    domain: cpu.time, net.*.rx/tx.bytes summed, block.*.rd/wr.bytes summed), never
 *    differences; billing computes the differences.
 *  - boot_id names one counter base. It changes exactly when the counters restart from
 *    zero: a guest (re)start, a migration (the domain is new on the target host), a
 *    QEMU restart. An agent restart alone does not reset libvirt's counters, so the agent
 *    keeps using the same boot_id for a domain it adopts (e.g. derive it from host name,
 *    libvirt domain id and the domain's start time). A counter lower than the previous
 *    one with the same boot_id is also treated as a reset, never as negative usage.
 *  - an "event" sample is sent at every life-cycle change with the flavor snapshot that is
 *    in force from that moment (gauges vcpus/ram_mb/disk_gb and flavor_id); "resized"
 *    carries the new flavor. A domain the agent adopts running, without billing having
 *    seen its start, gets a "started" event at adoption time. Time is charged only from
 *    events (running: started/resumed -> stopped/paused/deleted; disk: created or first
 *    event -> deleted).
 *  - samples stay in the agent's outbox until the bus acknowledges the batch; a resent
 *    batch, or the same sample in another batch, is counted once (de-dup by sample id).
 *
 * All quantities are integers; negative numbers are refused.
 */
#ifndef CL_USAGE_MSG_H
#define CL_USAGE_MSG_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "errors.h"
#include "model.h"
#include "util.h"

#define CL_MSG_USAGE_SAMPLES "usage.samples"

/* Samples per message: 1000 samples of ~600 bytes stay well under CL_BUS_MAX_FRAME. */
#define CL_USAGE_BATCH_MAX 1000
#define CL_USAGE_BOOT_ID_MAX 65 /* 64 characters and the NUL */

typedef enum {
    CL_USAGE_COUNTER,
    CL_USAGE_GAUGE,
    CL_USAGE_EVENT,
    CL_USAGE_KIND_MAX
} cl_usage_kind;

/* Order matters to billing: events with the same timestamp are applied in this order
 * (a "created" before the "started" of the same millisecond, "deleted" last). */
typedef enum {
    CL_USAGE_EV_NONE,
    CL_USAGE_EV_CREATED,
    CL_USAGE_EV_STARTED,
    CL_USAGE_EV_RESUMED,
    CL_USAGE_EV_RESIZED,
    CL_USAGE_EV_MIGRATED,
    CL_USAGE_EV_PAUSED,
    CL_USAGE_EV_STOPPED,
    CL_USAGE_EV_DELETED,
    CL_USAGE_EV_MAX
} cl_usage_event;

typedef struct cl_usage_counters {
    int64_t cpu_ns;
    int64_t net_rx_bytes;
    int64_t net_tx_bytes;
    int64_t disk_rd_bytes;
    int64_t disk_wr_bytes;
} cl_usage_counters;

typedef struct cl_usage_gauges {
    int64_t vcpus;
    int64_t ram_mb;
    int64_t disk_gb;
    int64_t mem_used_mb; /* -1 when the agent could not read it */
} cl_usage_gauges;

typedef struct cl_usage_sample {
    char id[CL_UUID_LEN];
    char instance_uuid[CL_UUID_LEN];
    char project_id[CL_ID_MAX];
    char host[CL_HOST_MAX];
    int64_t ts; /* unix ms */
    cl_usage_kind kind;
    bool has_counters;
    cl_usage_counters counters;
    bool has_gauges;
    cl_usage_gauges gauges;
    char flavor_id[CL_ID_MAX];      /* "" when absent */
    cl_usage_event event;           /* CL_USAGE_EV_NONE unless kind == EVENT */
    char boot_id[CL_USAGE_BOOT_ID_MAX]; /* "" when absent */
} cl_usage_sample;

/* Names ("counter", "started") and their parsers (0 or -EINVAL). */
const char *cl_usage_kind_name(cl_usage_kind k);
const char *cl_usage_event_name(cl_usage_event e);
int cl_usage_kind_parse(const char *s, cl_usage_kind *out);
int cl_usage_event_parse(const char *s, cl_usage_event *out);

/* Build the JSON object of one sample (new reference, caller owns) or NULL (no memory). */
json_object *cl_usage_sample_encode(const cl_usage_sample *s);

/* Build a usage.samples body {"rows": [...]} from n samples (1..CL_USAGE_BATCH_MAX).
 * Returns a new object (cl_bus_send takes it over) or NULL (bad n, no memory). */
json_object *cl_usage_batch_encode(const cl_usage_sample *samples, size_t n);

/* Validate one sample object and fill *out (written only on success).
 * Returns 0 or -EINVAL/-ENOENT with err naming the field ("samples[3].counters.cpu_ns"
 * style paths are the batch decoder's; here the path is relative to the sample). */
int cl_usage_sample_decode(json_object *obj, cl_usage_sample *out, cl_error *err);

/* Decode a usage.samples body, in either layout. The envelope must be sound ({"rows"} or
 * {"samples"}, not both: an array of 1 to CL_USAGE_BATCH_MAX entries) or the call fails
 * with -EINVAL / -E2BIG and err. Inside a sound batch, a sample that fails validation is
 * skipped and counted in *out_rejected (err then describes the first one, prefixed
 * "rows[i]: " or "samples[i]: ", while the call returns 0):
 * one malformed sample must not cost its neighbours, because the bus acknowledges the
 * whole message. On success *out is a malloc'd array of *out_n samples (caller frees;
 * NULL when every sample was rejected). */
int cl_usage_batch_decode(json_object *body, cl_usage_sample **out, size_t *out_n,
                          size_t *out_rejected, cl_error *err);

#endif
