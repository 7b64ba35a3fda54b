/*
 * sched.c - nube-scheduler: the agents' bus endpoint, host liveness, claims, and the
 * recording of the states agents report.
 *
 * Shape: one bus ROUTER (libcloud/bus.c) whose thread is the event loop. Every message
 * handler and the periodic check run there, one at a time, and they are the only users
 * of the single cl_store connection, so the scheduler needs no locks of its own. The
 * HTTP workers only read atomics that the loop keeps up to date.
 *
 * Message flow for the walking skeleton (bodies in libcloud/messages.h):
 *
 *   nube-api --instance.schedule--> sched --instance.spawn--> agent
 *   agent --host.register / host.heartbeat / instance.state--> sched
 *   nube-api --instance.delete--> sched --instance.destroy--> agent
 *
 * The bus acknowledges a message after its handler returned and resends unacknowledged
 * ones, so every handler here must be idempotent: a second instance.schedule for a
 * claimed instance re-sends the spawn (the agent deduplicates by instance uuid) instead
 * of claiming twice; a second delete finds the instance deleted and does nothing.
 *
 * Claims: the in-memory host snapshot (hosts + cl_host_ext: generation, AZ, aggregate
 * metadata, failures) is filtered and weighed by filters.c; cl_store_claim_ex()
 * re-checks capacity, the hard server-group policy and the instance cap under the
 * database write lock with a generation compare-and-swap, so a stale snapshot costs at
 * most one re-read (a second round on a fresh snapshot) and never an overcommit. The
 * snapshot is re-read when we changed hosts ourselves (register, liveness, deletes,
 * failures), when an operator changed aggregates or host settings (placement_version),
 * or after snapshot_max_age_ms; each claim updates it in place.
 *
 * Retries: an instance.state ERROR for a build still spawning releases the claim
 * (cl_store_placement_release_for_retry, which logs host and fault) and schedules again
 * with the hosts tried so far excluded (RetryFilter), up to max_attempts; then ERROR
 * with every attempt's reason. "No valid host" faults name the filter stages that
 * removed the hosts ("0 of 120 hosts passed: 80 removed by RAM (need 8192 MB), ...").
 */
#include "sched.h"

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus.h"
#include "bus_auth.h"
#include "cleanup.h"
#include "http.h"
#include "log.h"
#include "messages.h"
#include "model.h"
#include "placement.h"
#include "store_placement.h"
#include "scheduler/actions.h"
#include "scheduler/migrations.h"
#include "store.h"
#include "util.h"

#define LOG_MOD "sched"

/* Nova records a scheduling failure with code 500 on the instance fault. */
#define FAULT_CODE_NO_VALID_HOST 500
#define FAULT_CODE_HOST_ERROR 500

#define CFG_KEY(sec, key, type, def, lo, hi, field, help)                                  \
    {sec, key, type, def, lo, hi, offsetof(sched_cfg, field), help}

const cl_cfg_key sched_cfg_keys[] = {
    CL_DAEMON_COMMON_KEYS(sched_cfg),
    CFG_KEY("database", "connection", CL_CFG_STR, "/var/lib/nube/controller.db", 0, -1,
            db_connection, "Path of the controller SQLite database (shared with nube-api)."),
    CFG_KEY("bus", "listen", CL_CFG_STR, "tcp://127.0.0.1:5570", 0, -1, bus_listen,
            "ZeroMQ endpoint the scheduler binds; agents and nube-api connect to it."),
    CFG_KEY("bus", "resend_ms", CL_CFG_INT, "2000", 100, 60000, bus_resend_ms,
            "Resend an unacknowledged reliable message after this many milliseconds."),
    CFG_KEY("bus", "curve_secret_key_file", CL_CFG_STR, "", 0, -1, bus_curve_secret_key_file,
            "File (mode 0600) with the scheduler's CURVE secret key (nube-keys gen); empty "
            "= plain TCP."),
    CFG_KEY("bus", "allowed_keys_dir", CL_CFG_STR, "", 0, -1, bus_allowed_keys_dir,
            "Directory of '<public key> <host>' files: only those agents (and nube-api) "
            "may connect, each only as its host. Needs curve_secret_key_file."),
    CFG_KEY("scheduler", "host_down_after_s", CL_CFG_INT, "30", 1, 3600, host_down_after_s,
            "A host with no heartbeat for this many seconds is marked down."),
    CFG_KEY("scheduler", "check_interval_ms", CL_CFG_INT, "1000", 100, 60000,
            check_interval_ms, "How often host liveness is checked."),
    CFG_KEY("scheduler", "resize_confirm_window_s", CL_CFG_INT, "0", 0, 31536000,
            resize_confirm_window_s, "Confirm a cold migration left in VERIFY_RESIZE after "
            "this many seconds (0 = never)."),
    CFG_KEY("scheduler", "cpu_allocation_ratio", CL_CFG_DOUBLE, "4.0", 0.1, 100,
            cpu_allocation_ratio, "vCPUs that may be allocated per physical CPU (new hosts)."),
    CFG_KEY("scheduler", "ram_allocation_ratio", CL_CFG_DOUBLE, "1.0", 0.1, 100,
            ram_allocation_ratio, "Virtual RAM per MB of physical RAM (new hosts)."),
    CFG_KEY("scheduler", "disk_allocation_ratio", CL_CFG_DOUBLE, "1.0", 0.1, 100,
            disk_allocation_ratio, "Virtual disk per GB of physical disk (new hosts)."),
    CFG_KEY("scheduler", "reserved_host_vcpus", CL_CFG_INT, "0", 0, 1048576,
            reserved_host_vcpus, "vCPUs of each new host kept for the host itself."),
    CFG_KEY("scheduler", "reserved_host_memory_mb", CL_CFG_INT, "0", 0, 1073741824,
            reserved_host_memory_mb, "MB of RAM of each new host kept for the host itself."),
    CFG_KEY("scheduler", "reserved_host_disk_gb", CL_CFG_INT, "0", 0, 1073741824,
            reserved_host_disk_gb, "GB of disk of each new host kept for the host itself."),
    CFG_KEY("scheduler", "enabled_filters", CL_CFG_STR,
            "ComputeFilter, RetryFilter, AvailabilityZoneFilter, ImagePropertiesFilter,"
            " AggregateInstanceExtraSpecsFilter, SameHostFilter, DifferentHostFilter,"
            " ServerGroupFilter, NumInstancesFilter, VCPUFilter, RamFilter, DiskFilter", 0, -1,
            enabled_filters, "Filters run on every request, in this order (cheap first)."),
    CFG_KEY("scheduler", "ram_weight_multiplier", CL_CFG_DOUBLE, "1.0", -1000, 1000,
            ram_weight_multiplier, "Free-RAM weigher: positive spreads, negative packs."),
    CFG_KEY("scheduler", "cpu_weight_multiplier", CL_CFG_DOUBLE, "1.0", -1000, 1000,
            cpu_weight_multiplier, "Free-vCPU weigher: positive spreads, negative packs."),
    CFG_KEY("scheduler", "disk_weight_multiplier", CL_CFG_DOUBLE, "1.0", -1000, 1000,
            disk_weight_multiplier, "Free-disk weigher: positive spreads, negative packs."),
    CFG_KEY("scheduler", "num_instances_weight_multiplier", CL_CFG_DOUBLE, "0.0", -1000,
            1000, num_instances_weight_multiplier,
            "Instance-count weigher: negative prefers hosts with fewer instances."),
    CFG_KEY("scheduler", "build_failure_weight_multiplier", CL_CFG_DOUBLE, "-1000.0",
            -1000000, 0, build_failure_weight_multiplier,
            "Recent build failures weigher (negative: avoid hosts that failed spawns)."),
    CFG_KEY("scheduler", "soft_affinity_weight_multiplier", CL_CFG_DOUBLE, "1.0", 0, 1000,
            soft_affinity_weight_multiplier, "soft-affinity groups: prefer members' hosts."),
    CFG_KEY("scheduler", "soft_anti_affinity_weight_multiplier", CL_CFG_DOUBLE, "1.0", 0,
            1000, soft_anti_affinity_weight_multiplier,
            "soft-anti-affinity groups: prefer hosts with fewer members."),
    CFG_KEY("scheduler", "host_subset_size", CL_CFG_INT, "1", 1, 1000, host_subset_size,
            "Pick at random among the best N hosts (spreads concurrent schedulers)."),
    CFG_KEY("scheduler", "max_attempts", CL_CFG_INT, "3", 1, 100, max_attempts,
            "Spawn attempts (first host plus alternates) before a build goes to ERROR."),
    CFG_KEY("scheduler", "max_instances_per_host", CL_CFG_INT, "50", 0, 1000000,
            max_instances_per_host, "Instances per host at most (0: no cap)."),
    CFG_KEY("scheduler", "snapshot_max_age_ms", CL_CFG_INT, "1000", 0, 600000,
            snapshot_max_age_ms,
            "Re-read the hosts at least this often (claims re-check under the lock)."),
    CFG_KEY("http", "listen", CL_CFG_STR, "127.0.0.1", 0, -1, http_listen,
            "Address of the /healthz and /metrics HTTP server."),
    CFG_KEY("http", "port", CL_CFG_INT, "8775", 0, 65535, http_port,
            "Port of the /healthz and /metrics HTTP server; 0 disables it."),
};
const size_t sched_cfg_nkeys = CL_ARRAY_SIZE(sched_cfg_keys);

struct sched {
    const sched_cfg *cfg;
    cl_store *store; /* bus thread only (and the main thread before the bus starts) */
    cl_bus *bus;
    cl_http_server *http;

    /* Written by the loop, read by HTTP workers for /metrics and /healthz. */
    _Atomic uint64_t claims_ok;
    _Atomic uint64_t claims_no_valid_host;
    _Atomic uint64_t retries;
    _Atomic uint64_t generation_conflicts;
    _Atomic uint64_t decisions;
    _Atomic uint64_t decision_us_total;

    /* Placement (bus thread only): policy, the host snapshot and what changed it. */
    sched_policy policy;
    cl_host *snap_hosts;
    cl_host_ext *snap_ext;
    size_t snap_n;
    int64_t snap_ms;
    int64_t snap_version;           /* placement_version the snapshot was read at */
    bool snap_dirty;
    bool resumed;   /* in-flight commands re-sent after a (re)start (resume_in_flight) */
    int64_t next_sweep_ms; /* next look for orphaned scheduling requests (sweep_orphans) */
    int64_t moves_sweep_ms; /* sweep_lost_moves from then on (requests resent to a restarted
                             * scheduler arrive first) */
    unsigned rng;

    _Atomic int64_t hosts_up;
    _Atomic int64_t hosts_down;
    _Atomic bool store_ok;
};

static void free_hostsp(cl_host **p) { free(*p); }
static void free_instancesp(cl_instance **p) { free(*p); }
static void free_host_instancesp(cl_msg_host_instance **p) { free(*p); }

/* ---- small helpers ---- */

static int64_t cl_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Remember whether the last store call worked, for /healthz. Only real database
 * failures count; "not found" and "no room" are answers, not faults. */
static int store_result(sched *s, int r)
{
    atomic_store(&s->store_ok, !(r == -EIO || r == -EBUSY || r == -ENOMEM));
    return r;
}

/* Recount hosts up and down for /metrics. */
static void refresh_host_counts(sched *s)
{
    _cleanup_(free_hostsp) cl_host *hosts = NULL;
    size_t n = 0;
    int64_t up = 0, down = 0;

    if (store_result(s, cl_store_host_list(s->store, &hosts, &n)) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        if (hosts[i].up)
            up++;
        else
            down++;
    }
    atomic_store(&s->hosts_up, up);
    atomic_store(&s->hosts_down, down);
}

/* A request id to carry on a command: the one of the message being handled, if any. */
static const char *req_of(const cl_bus_msg *msg)
{
    return msg && msg->req[0] ? msg->req : NULL;
}

static int send_spawn(sched *s, const cl_instance *inst, const char *req)
{
    cl_msg_instance m = {.flavor = inst->flavor};
    json_object *body;

    cl_strlcpy(m.uuid, inst->uuid, sizeof(m.uuid));
    cl_strlcpy(m.name, inst->name, sizeof(m.name));
    cl_strlcpy(m.project_id, inst->project_id, sizeof(m.project_id));
    cl_strlcpy(m.user_id, inst->user_id, sizeof(m.user_id));
    cl_strlcpy(m.image_ref, inst->image_ref, sizeof(m.image_ref));
    body = cl_msg_spawn_encode(&m);
    if (!body)
        return -ENOMEM;
    /* The image properties the instance was scheduled with (hints/metadata today, the
     * image service later) tell the agent how to build the domain (Xen PV/HVM, LXC). */
    cl_sched_hints hints;
    if (cl_store_placement_hints_get(s->store, inst->uuid, &hints) == 0 &&
        (hints.vm_mode[0] || hints.hypervisor_type[0] || hints.architecture[0])) {
        cl_msg_image_props ip = {0};
        cl_strlcpy(ip.vm_mode, hints.vm_mode, sizeof(ip.vm_mode));
        cl_strlcpy(ip.hypervisor_type, hints.hypervisor_type, sizeof(ip.hypervisor_type));
        cl_strlcpy(ip.architecture, hints.architecture, sizeof(ip.architecture));
        if (cl_msg_spawn_set_image_props(body, &ip) < 0) {
            json_object_put(body);
            return -ENOMEM;
        }
    }
    return cl_bus_send(s->bus, inst->host, CL_MSG_INSTANCE_SPAWN, req, body, true, NULL);
}

static int send_destroy(sched *s, const char *host, const char *uuid, const char *req)
{
    json_object *body = cl_msg_uuid_encode(uuid);

    if (!body)
        return -ENOMEM;
    return cl_bus_send(s->bus, host, CL_MSG_INSTANCE_DESTROY, req, body, true, NULL);
}

/* ---- host.register ---- */

/* The vm_state an adopted domain's power state implies. Returns -1 when the report
 * says nothing about the vm_state (nostate): then only the power state is recorded. */
static int vm_state_for_power(cl_power_state p)
{
    switch (p) {
    case CL_POWER_RUNNING:
        return CL_VM_ACTIVE;
    case CL_POWER_PAUSED:
        return CL_VM_PAUSED;
    case CL_POWER_SUSPENDED:
        return CL_VM_SUSPENDED;
    case CL_POWER_SHUTDOWN:
    case CL_POWER_CRASHED:
        return CL_VM_STOPPED;
    default:
        return -1;
    }
}

/*
 * A resize waiting for confirm or revert (vm_state resized, no task) stays VERIFY_RESIZE
 * whatever the power state an agent observes: after an agent restart its reports say
 * only "running" or "shut off", and mapping that to active would lose the pending resize
 * (Nova's power-state sync leaves resized instances alone too). With a task in flight
 * (stop, revert) the report is the task's outcome and applies.
 */
static int keep_resized(const cl_instance *inst, int vm)
{
    if (vm >= 0 && inst->vm_state == CL_VM_RESIZED && inst->task_state == CL_TASK_NONE &&
        (vm == CL_VM_ACTIVE || vm == CL_VM_STOPPED))
        return CL_VM_RESIZED;
    return vm;
}

/* Migrations under way: a move's task belongs to migrations.c from its claim on. */
#define MOVES_UNDER_WAY "'preparing', 'running', 'cancelling', 'done', 'migrating', 'finished'"

/* nube-api set a move's task (live or cold migration, evacuate, resize to another host)
 * and its request has not reached us yet: no migration of the instance is under way, and
 * none changed since the instance row did (a move that failed or was reverted changes its
 * migration last, and the source's report then clears the task). A host's report must not
 * clear such a task: the request arriving after it would be dropped as stale (found by
 * tests/crash/test_migrate_crash.py: a restarted agent's registration and state sync
 * raced the API's write, and a migrate answered 202 never happened). sweep_lost_moves
 * clears a task whose request was lost. */
static bool move_requested(sched *s, const cl_instance *inst)
{
    _cleanup_stmt_ sqlite3_stmt *q = NULL;

    if (inst->task_state != CL_TASK_MIGRATING && inst->task_state != CL_TASK_RESIZE_MIGRATING)
        return false;
    if (cl_db_prepare(cl_store_db(s->store), "SELECT 1 FROM migrations WHERE instance_uuid"
                      " = ?1 AND (status IN (" MOVES_UNDER_WAY ") OR updated_ms >= ?2)",
                      &q) < 0)
        return false;
    cl_db_bind_text(q, 1, inst->uuid);
    cl_db_bind_int64(q, 2, inst->updated_ms);
    return sqlite3_step(q) != SQLITE_ROW;
}

/* A live migration of uuid is in flight: the instance holds the destination's
 * allocation (the migration the source's) and the migration's check, not the source's
 * report (a restarted source agent registers), settles both allocation and state. */
static bool live_move_in_flight(sched *s, const char *uuid)
{
    _cleanup_stmt_ sqlite3_stmt *q = NULL;

    if (cl_db_prepare(cl_store_db(s->store), "SELECT 1 FROM migrations WHERE instance_uuid"
                      " = ?1 AND migration_type = 'live-migration' AND status IN "
                      "('preparing', 'running', 'cancelling')", &q) < 0)
        return false;
    cl_db_bind_text(q, 1, uuid);
    return sqlite3_step(q) == SQLITE_ROW;
}

/* Record one instance the agent reported running (or existing) on host. */
static void adopt_reported(sched *s, const char *host, const cl_msg_host_instance *ri)
{
    cl_instance inst;
    int vm, task, r;

    r = store_result(s, cl_store_instance_get(s->store, ri->uuid, &inst));
    if (r == -ENOENT) {
        /* A domain with nube metadata that this controller never created (another
         * controller's, or a restored backup): leave it alone, an operator decides. */
        cl_warn(LOG_MOD, "host %s reports instance %s that the controller does not know",
                host, ri->uuid);
        return;
    }
    if (r < 0) {
        cl_err(LOG_MOD, "cannot load instance %s reported by %s: %s", ri->uuid, host,
               strerror(-r));
        return;
    }
    if (inst.vm_state == CL_VM_DELETED) {
        /* Deleted while its host was away (local delete): finish the job on the host. */
        cl_info(LOG_MOD, "instance %s was deleted while %s was down; destroying it there",
                ri->uuid, host);
        r = send_destroy(s, host, ri->uuid, NULL);
        if (r < 0)
            cl_err(LOG_MOD, "cannot queue instance.destroy for %s: %s", ri->uuid, strerror(-r));
        return;
    }
    if (inst.host[0] && strcmp(inst.host, host) != 0) {
        /* Moved away while the host was down (evacuate): fence it (migrations.c). */
        if (sched_migrations_fence(s->store, s->bus, host, ri->uuid))
            return;
        cl_warn(LOG_MOD, "host %s reports instance %s which the controller places on %s; "
                "left as it is", host, ri->uuid, inst.host);
        return;
    }
    if (live_move_in_flight(s, ri->uuid))
        return;
    r = store_result(s, cl_store_allocation_ensure(s->store, ri->uuid, host));
    if (r < 0) {
        cl_err(LOG_MOD, "cannot record allocation of %s on %s: %s", ri->uuid, host,
               strerror(-r));
        return;
    }
    /* A delete in flight wins over what the host reports, and an ERROR instance keeps
     * its error until a user acts on it: only the power state is refreshed then. */
    vm = keep_resized(&inst, vm_state_for_power(ri->power_state));
    task = vm < 0 ? -1 : CL_TASK_NONE;
    if (inst.task_state == CL_TASK_DELETING || inst.vm_state == CL_VM_ERROR) {
        vm = -1;
        task = -1;
    }
    if (move_requested(s, &inst))
        task = -1;
    r = store_result(s, cl_store_instance_set_state(s->store, ri->uuid, vm, task,
                                                     (int)ri->power_state, NULL, 0));
    if (r < 0 && r != -ENOENT)
        cl_err(LOG_MOD, "cannot record state of %s: %s", ri->uuid, strerror(-r));
}

/* Warn about instances the database places on host that the agent did not report.
 * Nothing destructive happens: a missing domain may be an agent that lost its disk or an
 * operator's mistake, and only a person can tell which. */
static void check_unreported(sched *s, const char *host, const cl_msg_host_instance *ri,
                             size_t nri)
{
    cl_instance_filter f = {.host = host, .include_deleted = false};
    _cleanup_(free_instancesp) cl_instance *list = NULL;
    size_t n = 0;
    int r;

    r = store_result(s, cl_store_instance_list(s->store, &f, &list, &n));
    if (r < 0) {
        cl_err(LOG_MOD, "cannot list instances of %s: %s", host, strerror(-r));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        bool reported = false;

        for (size_t j = 0; j < nri && !reported; j++)
            reported = strcmp(list[i].uuid, ri[j].uuid) == 0;
        if (reported)
            continue;
        /* A spawn still on its way is expected not to exist yet. */
        if (list[i].task_state == CL_TASK_SPAWNING)
            cl_debug(LOG_MOD, "instance %s on %s is still spawning", list[i].uuid, host);
        else
            cl_warn(LOG_MOD, "host %s did not report instance %s (%s) that the controller "
                    "places there", host, list[i].uuid, cl_vm_state_name(list[i].vm_state));
    }
}

/* Optional capabilities in a host.register body ("cpu_arch", "cpu_model",
 * "hypervisor_version"), read when an agent sends them: the ImagePropertiesFilter
 * matches architecture against cpu_arch (hosts that report none are not excluded). */
static void register_caps(sched *s, const char *host, json_object *body)
{
    json_object *v;
    const char *arch = NULL, *model = NULL;
    int64_t version = 0;

    if (json_object_object_get_ex(body, "cpu_arch", &v) &&
        json_object_is_type(v, json_type_string))
        arch = json_object_get_string(v);
    if (json_object_object_get_ex(body, "cpu_model", &v) &&
        json_object_is_type(v, json_type_string))
        model = json_object_get_string(v);
    if (json_object_object_get_ex(body, "hypervisor_version", &v) &&
        json_object_is_type(v, json_type_int))
        version = json_object_get_int64(v);
    if (!arch && !model && !version)
        return;
    if (store_result(s, cl_store_host_set_caps(s->store, host, NULL, version, arch, model)) < 0)
        cl_warn(LOG_MOD, "cannot record the capabilities of %s", host);
}

static void on_host_register(sched *s, const cl_bus_msg *msg)
{
    _cleanup_(free_host_instancesp) cl_msg_host_instance *ri = NULL;
    cl_msg_host mh;
    cl_host h = {0};
    cl_error err = {0};
    size_t nri = 0;
    int r;

    r = cl_msg_host_decode(msg->body, &mh, &ri, &nri, &err);
    if (r < 0) {
        cl_warn(LOG_MOD, "bad host.register from %s: %s", msg->peer, err.message);
        return;
    }
    if (msg->peer[0] && strcmp(msg->peer, mh.host) != 0)
        cl_warn(LOG_MOD, "host.register for %s arrived from peer %s; commands go to %s",
                mh.host, msg->peer, mh.host);

    cl_strlcpy(h.name, mh.host, sizeof(h.name));
    cl_strlcpy(h.hypervisor_type, mh.hypervisor_type, sizeof(h.hypervisor_type));
    cl_strlcpy(h.libvirt_uri, mh.libvirt_uri, sizeof(h.libvirt_uri));
    h.vcpus = mh.vcpus;
    h.ram_mb = mh.ram_mb;
    h.disk_gb = mh.disk_gb;
    h.cpu_ratio = s->cfg->cpu_allocation_ratio;
    h.ram_ratio = s->cfg->ram_allocation_ratio;
    h.disk_ratio = s->cfg->disk_allocation_ratio;
    h.reserved_vcpus = s->cfg->reserved_host_vcpus;
    h.reserved_ram_mb = s->cfg->reserved_host_memory_mb;
    h.reserved_disk_gb = s->cfg->reserved_host_disk_gb;
    h.up = true;
    h.enabled = true;
    h.last_seen_ms = cl_now_ms();

    r = store_result(s, cl_store_host_register(s->store, &h));
    if (r < 0) {
        cl_err(LOG_MOD, "cannot register host %s: %s", h.name, strerror(-r));
        return;
    }
    cl_info(LOG_MOD, "host %s registered (%s, %" PRId64 " vCPUs, %" PRId64 " MB RAM, %" PRId64
            " GB disk, %zu instances reported)", h.name, h.hypervisor_type, h.vcpus, h.ram_mb,
            h.disk_gb, nri);

    register_caps(s, h.name, msg->body);
    s->snap_dirty = true;
    sched_actions_on_register(s->store, h.name, msg);
    for (size_t i = 0; i < nri; i++)
        adopt_reported(s, h.name, &ri[i]);
    check_unreported(s, h.name, ri, nri);
    sched_migrations_on_register(s->store, s->bus, h.name, ri, nri); /* migrations.c */
    refresh_host_counts(s);
}

/* ---- host.heartbeat ---- */

static void on_host_heartbeat(sched *s, const cl_bus_msg *msg)
{
    cl_msg_host mh;
    cl_error err = {0};
    int r;

    r = cl_msg_host_decode(msg->body, &mh, NULL, NULL, &err);
    if (r < 0) {
        cl_warn(LOG_MOD, "bad host.heartbeat from %s: %s", msg->peer, err.message);
        return;
    }
    r = store_result(s, cl_store_host_heartbeat(s->store, mh.host, mh.vcpus, mh.ram_mb,
                                                 mh.disk_gb));
    if (r == -ENOENT)
        /* The agent sends host.register reliably before its first heartbeat; this one
         * merely overtook it (heartbeats are not queued behind reliable messages). */
        cl_debug(LOG_MOD, "heartbeat from unregistered host %s", mh.host);
    else if (r < 0)
        cl_err(LOG_MOD, "cannot record heartbeat of %s: %s", mh.host, strerror(-r));
}

/* ---- instance.schedule ---- */

/* ---- the host snapshot ----
 *
 * Filtering reads an in-memory copy of the hosts, refreshed when something we know of
 * changed them (register, liveness, delete, failure) or when it is older than
 * snapshot_max_age_ms; each claim updates the copy in place. The claim re-checks the
 * real rows under the write lock, so staleness can only cost a re-try, never a wrong
 * placement. */

static void snapshot_drop(sched *s)
{
    free(s->snap_hosts);
    free(s->snap_ext);
    s->snap_hosts = NULL;
    s->snap_ext = NULL;
    s->snap_n = 0;
}

static int snapshot_fresh(sched *s, bool force)
{
    int64_t now = cl_now_ms(), version = -1;
    cl_host *h = NULL;
    cl_host_ext *x = NULL;
    size_t n = 0;
    int r;

    /* One cheap read tells whether an operator changed aggregates or hosts. */
    if (cl_store_placement_version(s->store, &version) < 0)
        version = -1;
    if (!force && !s->snap_dirty && s->snap_hosts && version == s->snap_version &&
        now - s->snap_ms <= s->cfg->snapshot_max_age_ms)
        return 0;
    r = store_result(s, cl_store_host_snapshot(s->store, &h, &x, &n));
    if (r < 0)
        return r;
    snapshot_drop(s);
    s->snap_hosts = h;
    s->snap_ext = x;
    s->snap_n = n;
    s->snap_ms = now;
    s->snap_version = version;
    s->snap_dirty = false;
    return 0;
}

/* A claim landed on host: keep the snapshot in step without a re-read. */
static void snapshot_apply_claim(sched *s, const char *host, const cl_flavor *f, int64_t gen)
{
    sched_need need = sched_need_of(f);

    for (size_t i = 0; i < s->snap_n; i++) {
        if (strcmp(s->snap_hosts[i].name, host) != 0)
            continue;
        s->snap_hosts[i].used_vcpus += need.vcpus;
        s->snap_hosts[i].used_ram_mb += need.ram_mb;
        s->snap_hosts[i].used_disk_gb += need.disk_gb;
        s->snap_hosts[i].running_vms++;
        s->snap_ext[i].generation = gen;
        return;
    }
}

/* ---- the request of one instance ---- */

typedef struct req_buf {
    sched_request rq;
    cl_sched_hints hints;
    cl_server_group group;
    char (*group_hosts)[CL_HOST_MAX];
    char (*spec_keys)[256];
    char (*spec_values)[256];
    char (*same)[CL_HOST_MAX];
    char (*different)[CL_HOST_MAX];
} req_buf;

static void req_buf_free(req_buf *b)
{
    free(b->group_hosts);
    free(b->spec_keys);
    free(b->spec_values);
    free(b->same);
    free(b->different);
}

/* Hosts of the instances named in a comma separated uuid list (unknown or unplaced ones
 * are skipped: Nova's same_host/different_host ignore them too). */
static int hosts_of(sched *s, const char *csv, char (**out)[CL_HOST_MAX], size_t *n_out)
{
    size_t cap = 1, n = 0;

    for (const char *c = csv; *c; c++)
        cap += *c == ',';
    *out = calloc(cap, sizeof(**out));
    if (!*out)
        return -ENOMEM;
    for (const char *c = csv; *c;) {
        char uuid[CL_UUID_LEN];
        size_t len = strcspn(c, ",");
        cl_instance other;

        if (len < sizeof(uuid)) {
            memcpy(uuid, c, len);
            uuid[len] = '\0';
            if (cl_store_instance_get(s->store, uuid, &other) == 0 && other.host[0] &&
                other.vm_state != CL_VM_DELETED)
                cl_strlcpy((*out)[n++], other.host, CL_HOST_MAX);
        }
        c += len;
        if (*c == ',')
            c++;
    }
    *n_out = n;
    return 0;
}

static int build_request(sched *s, const cl_instance *inst, req_buf *b)
{
    sched_request *rq = &b->rq;
    int r;

    memset(b, 0, sizeof(*b));
    rq->flavor = &inst->flavor;
    rq->max_instances_per_host = s->cfg->max_instances_per_host;
    r = cl_store_placement_hints_get(s->store, inst->uuid, &b->hints);
    if (r < 0 && r != -ENOENT)
        return r;
    rq->az = b->hints.az;
    rq->hypervisor_type = b->hints.hypervisor_type;
    rq->architecture = b->hints.architecture;
    rq->vm_mode = b->hints.vm_mode;
    rq->tried_hosts = b->hints.tried_hosts;

    r = cl_store_group_of(s->store, inst->uuid, &b->group);
    if (r == 0) {
        rq->has_group = true;
        rq->group_policy = (int)b->group.policy;
        rq->group_max_per_host = b->group.max_server_per_host;
        rq->group_name = b->group.name[0] ? b->group.name : b->group.uuid;
        r = cl_store_group_member_hosts(s->store, b->group.uuid, inst->uuid, &b->group_hosts,
                                        &rq->ngroup_hosts);
        rq->group_hosts = (const char(*)[CL_HOST_MAX])b->group_hosts;
    }
    if (r < 0 && r != -ENOENT)
        return r;
    r = cl_store_placement_flavor_specs(s->store, inst->flavor.id,
                                        "aggregate_instance_extra_specs:", &b->spec_keys,
                                        &b->spec_values, &rq->nspecs);
    if (r < 0)
        return r;
    rq->spec_keys = (const char(*)[256])b->spec_keys;
    rq->spec_values = (const char(*)[256])b->spec_values;
    if (b->hints.same_host[0]) {
        r = hosts_of(s, b->hints.same_host, &b->same, &rq->nsame);
        if (r < 0)
            return r;
        rq->same_hosts = (const char(*)[CL_HOST_MAX])b->same;
    }
    if (b->hints.different_host[0]) {
        r = hosts_of(s, b->hints.different_host, &b->different, &rq->ndifferent);
        if (r < 0)
            return r;
        rq->different_hosts = (const char(*)[CL_HOST_MAX])b->different;
    }
    return 0;
}

/* ---- failing a build ---- */

static void fail_instance(sched *s, const cl_instance *inst, const char *fault, int code)
{
    int r = store_result(s, cl_store_instance_fail(s->store, inst->uuid, fault, code));

    cl_warn(LOG_MOD, "instance %s: %s", inst->uuid, fault);
    if (r < 0 && r != -ENOENT)
        cl_err(LOG_MOD, "cannot record the failure of %s: %s", inst->uuid, strerror(-r));
}

/* "No valid host was found. <stages>. <capacity summary>[ Previous attempts: ...]" */
static void fail_no_valid_host(sched *s, const cl_instance *inst, const req_buf *b,
                               const sched_outcome *oc, const cl_claim_result *cres)
{
    char stages[512] = "", summary[CL_FAULT_MAX], fault[CL_FAULT_MAX];
    const char *prefix = "No valid host was found. ";
    const char *rest;

    if (oc)
        sched_outcome_explain(oc, &b->rq, stages, sizeof(stages));
    if (cres && oc && oc->npassed > 0) {
        /* Every candidate lost in the claim: say why (a race, or a group policy). */
        size_t len = strlen(stages);

        snprintf(stages + len, sizeof(stages) - len,
                 "; at claim time %zu had no room left, %zu were down, %zu were full by "
                 "instance count, %zu would break the %s policy of the server group",
                 cres->rejected_capacity, cres->rejected_down, cres->rejected_max_instances,
                 cres->rejected_group, cres->group_policy[0] ? cres->group_policy : "(none)");
    }
    /* Explain from a fresh list: the claim may have lost a race the snapshot did not
     * show, and the user should see the capacity as it is now. */
    snapshot_fresh(s, true);
    sched_placement_explain(s->snap_hosts, s->snap_n, &inst->flavor, summary, sizeof(summary));
    rest = strncmp(summary, prefix, strlen(prefix)) == 0 ? summary + strlen(prefix) : summary;
    if (snprintf(fault, sizeof(fault), "%s%s%s%s%s%s", prefix, stages, stages[0] ? ". " : "",
                 rest, b && b->hints.attempt_faults[0] ? ". Previous attempts: " : "",
                 b ? b->hints.attempt_faults : "") >= (int)sizeof(fault))
        cl_debug(LOG_MOD, "fault of %s truncated", inst->uuid);
    atomic_fetch_add(&s->claims_no_valid_host, 1);
    fail_instance(s, inst, fault, FAULT_CODE_NO_VALID_HOST);
}

/* Candidates handed to one claim: enough alternates for races, bounded so one claim
 * never holds the write lock for a walk over thousands of full hosts. */
#define CLAIM_CANDIDATES_MAX 64

static void schedule_instance(sched *s, cl_instance *inst, const cl_bus_msg *msg)
{
    _cleanup_free_ size_t *idx = NULL;
    _cleanup_free_ double *scratch = NULL;
    const char *names[CLAIM_CANDIDATES_MAX];
    int64_t gens[CLAIM_CANDIDATES_MAX];
    cl_claim_result cres;
    sched_outcome oc;
    req_buf b;
    size_t npass = 0, ncand;
    int64_t t0 = cl_now_us();
    int r;

    r = build_request(s, inst, &b);
    if (r < 0) {
        cl_err(LOG_MOD, "cannot read the request of %s: %s", inst->uuid, strerror(-r));
        req_buf_free(&b);
        return;
    }
    /* Two rounds: a claim that loses every candidate to a stale snapshot re-reads the
     * hosts once and tries again before the user hears "no valid host". */
    for (int round = 0; round < 2; round++) {
        r = snapshot_fresh(s, round > 0);
        if (r < 0) {
            cl_err(LOG_MOD, "cannot list hosts to place %s: %s", inst->uuid, strerror(-r));
            goto out;
        }
        free(idx);
        free(scratch);
        idx = calloc(s->snap_n ? s->snap_n : 1, sizeof(*idx));
        scratch = calloc(s->snap_n ? s->snap_n * 8 : 1, sizeof(*scratch));
        if (!idx || !scratch) {
            cl_err(LOG_MOD, "out of memory placing %s", inst->uuid);
            goto out;
        }
        npass = sched_select(&s->policy, &b.rq, s->snap_hosts, s->snap_ext, s->snap_n, idx,
                             scratch, &s->rng, &oc);
        if (npass == 0 && round == 0)
            continue; /* confirm on a fresh snapshot before telling the user */
        if (npass == 0) {
            fail_no_valid_host(s, inst, &b, &oc, NULL);
            goto out;
        }
        ncand = npass < CLAIM_CANDIDATES_MAX ? npass : CLAIM_CANDIDATES_MAX;
        for (size_t i = 0; i < ncand; i++) {
            names[i] = s->snap_hosts[idx[i]].name;
            gens[i] = s->snap_ext[idx[i]].generation;
        }
        cl_claim_req creq = {.instance_uuid = inst->uuid, .candidates = names,
                             .ncandidates = ncand, .generations = gens,
                             .max_instances_per_host = s->cfg->max_instances_per_host};

        r = store_result(s, cl_store_claim_ex(s->store, &creq, &cres));
        if (cres.generation_conflicts)
            atomic_fetch_add(&s->generation_conflicts, cres.generation_conflicts);
        if (r != -ENOSPC)
            break;
        s->snap_dirty = true;
    }
    atomic_fetch_add(&s->decisions, 1);
    atomic_fetch_add(&s->decision_us_total, (uint64_t)(cl_now_us() - t0));
    if (r == -ENOSPC) {
        fail_no_valid_host(s, inst, &b, &oc, &cres);
        goto out;
    }
    if (r == -EBUSY || r == -ENOENT) {
        cl_info(LOG_MOD, "instance %s is being deleted; not scheduled", inst->uuid);
        goto out;
    }
    if (r < 0) {
        cl_err(LOG_MOD, "claim for %s failed: %s", inst->uuid, strerror(-r));
        goto out;
    }
    cl_strlcpy(inst->host, cres.host, sizeof(inst->host));
    snapshot_apply_claim(s, cres.host, &inst->flavor, cres.generation);
    atomic_fetch_add(&s->claims_ok, 1);
    cl_info(LOG_MOD, "instance %s placed on %s (%zu of %zu hosts passed, attempt %lld)",
            inst->uuid, inst->host, npass, s->snap_n, (long long)b.hints.attempts + 1);

    r = send_spawn(s, inst, req_of(msg));
    if (r < 0) {
        /* The claim holds resources nothing will use: give them back and tell the user,
         * rather than leave a server in BUILD forever. */
        char fault[CL_FAULT_MAX];

        snprintf(fault, sizeof(fault), "The scheduler could not send the spawn request to "
                 "host %s (%s); try again later", inst->host, strerror(-r));
        fail_instance(s, inst, fault, FAULT_CODE_HOST_ERROR);
        s->snap_dirty = true;
    }
out:
    req_buf_free(&b);
}

/* A spawn failed on host: move to the next alternate while attempts remain, else ERROR
 * with the reasons of every attempt. Returns true when it handled the report. */
static bool retry_or_fail(sched *s, const cl_instance *inst, const char *host,
                          const char *fault, const cl_bus_msg *msg)
{
    int64_t attempts = 0;
    int r;

    if (inst->vm_state != CL_VM_BUILDING || inst->task_state != CL_TASK_SPAWNING)
        return false;
    r = store_result(s, cl_store_placement_release_for_retry(s->store, inst->uuid, host,
                                                             fault, &attempts));
    if (r < 0) {
        if (r != -ENOENT)
            cl_err(LOG_MOD, "cannot release %s for a retry: %s", inst->uuid, strerror(-r));
        return false;
    }
    s->snap_dirty = true;
    /* The failed host keeps a record of the instance and would retry it on every sync:
     * tell it to forget. Its "deleted" report is ignored (the instance is elsewhere,
     * or in ERROR without a host: see on_instance_state). */
    if (send_destroy(s, host, inst->uuid, req_of(msg)) < 0)
        cl_warn(LOG_MOD, "cannot queue instance.destroy of %s on %s", inst->uuid, host);
    if (attempts >= s->cfg->max_attempts) {
        cl_sched_hints h;
        char msgbuf[CL_FAULT_MAX];

        if (cl_store_placement_hints_get(s->store, inst->uuid, &h) < 0)
            h.attempt_faults[0] = '\0';
        if (snprintf(msgbuf, sizeof(msgbuf), "Exceeded maximum number of retries (%lld "
                     "attempts): %s", (long long)attempts, h.attempt_faults) >=
            (int)sizeof(msgbuf))
            cl_debug(LOG_MOD, "fault of %s truncated", inst->uuid);
        fail_instance(s, inst, msgbuf, FAULT_CODE_HOST_ERROR);
        return true;
    }
    atomic_fetch_add(&s->retries, 1);
    cl_warn(LOG_MOD, "instance %s failed to spawn on %s (%s); rescheduling, attempt %lld "
            "of %lld", inst->uuid, host, fault, (long long)attempts + 1,
            (long long)s->cfg->max_attempts);
    cl_instance fresh;
    if (store_result(s, cl_store_instance_get(s->store, inst->uuid, &fresh)) == 0)
        schedule_instance(s, &fresh, msg);
    return true;
}

static void on_instance_schedule(sched *s, const cl_bus_msg *msg)
{
    char uuid[CL_UUID_LEN];
    cl_instance inst;
    cl_error err = {0};
    int r;

    if (cl_msg_uuid_decode(msg->body, uuid, &err) < 0) {
        cl_warn(LOG_MOD, "bad instance.schedule from %s: %s", msg->peer, err.message);
        return;
    }
    r = store_result(s, cl_store_instance_get(s->store, uuid, &inst));
    if (r < 0) {
        if (r == -ENOENT)
            cl_warn(LOG_MOD, "instance.schedule for unknown instance %s", uuid);
        else
            cl_err(LOG_MOD, "cannot load instance %s: %s", uuid, strerror(-r));
        return;
    }
    if (inst.vm_state == CL_VM_DELETED || inst.task_state == CL_TASK_DELETING) {
        cl_info(LOG_MOD, "instance %s is deleted or being deleted; not scheduled", uuid);
        return;
    }
    if (inst.host[0]) {
        /* Already claimed: this is a resent request (the first ack got lost, or the
         * scheduler restarted before acknowledging). Never claim twice; re-send the
         * spawn if it may not have gone out, the agent deduplicates by instance. */
        if (inst.task_state == CL_TASK_SPAWNING) {
            cl_info(LOG_MOD, "instance %s already placed on %s; re-sending spawn", uuid,
                    inst.host);
            r = send_spawn(s, &inst, req_of(msg));
            if (r < 0)
                cl_err(LOG_MOD, "cannot queue instance.spawn for %s: %s", uuid, strerror(-r));
        } else {
            cl_debug(LOG_MOD, "instance %s already placed on %s", uuid, inst.host);
        }
        return;
    }
    if (inst.vm_state != CL_VM_BUILDING) {
        /* An ERROR instance (say, no valid host last time) is not retried silently. */
        cl_info(LOG_MOD, "instance %s is %s; not scheduled", uuid,
                cl_vm_state_name(inst.vm_state));
        return;
    }
    schedule_instance(s, &inst, msg);
}

/* ---- instance.state ---- */

/* A report host wrote (ts, its clock) before the instance's latest move to host began
 * describes an earlier stay there: an agent's outbox resends what its previous run did
 * not see acknowledged, after the instance left and came back (found by
 * tests/crash/test_migrate_crash.py: a stale "shut off" made a server SHUTOFF that was
 * running). Only once no move is under way: a move's own reports are its steps, and a
 * clock skew must not drop them. */
static bool report_predates_arrival(sched *s, const cl_instance *inst, const char *host,
                                    int64_t ts)
{
    _cleanup_stmt_ sqlite3_stmt *q = NULL;

    if (ts <= 0 || !host[0] ||
        cl_db_prepare(cl_store_db(s->store), "SELECT 1 FROM migrations WHERE instance_uuid = ?1"
                      " AND dest_host = ?2 AND created_ms > ?3 AND NOT EXISTS (SELECT 1 FROM "
                      "migrations WHERE instance_uuid = ?1 AND status IN (" MOVES_UNDER_WAY
                      ")) LIMIT 1", &q) < 0)
        return false;
    cl_db_bind_text(q, 1, inst->uuid);
    cl_db_bind_text(q, 2, host);
    cl_db_bind_int64(q, 3, ts);
    return sqlite3_step(q) == SQLITE_ROW;
}

static void on_instance_state(sched *s, const cl_bus_msg *msg)
{
    cl_msg_state st;
    cl_instance inst;
    cl_error err = {0};
    int task, r;

    if (cl_msg_state_decode(msg->body, &st, &err) < 0) {
        cl_warn(LOG_MOD, "bad instance.state from %s: %s", msg->peer, err.message);
        return;
    }
    r = store_result(s, cl_store_instance_get(s->store, st.instance_uuid, &inst));
    if (r < 0) {
        if (r == -ENOENT)
            cl_warn(LOG_MOD, "state report for unknown instance %s from %s",
                    st.instance_uuid, st.host);
        else
            cl_err(LOG_MOD, "cannot load instance %s: %s", st.instance_uuid, strerror(-r));
        return;
    }
    if (inst.vm_state == CL_VM_DELETED) {
        cl_debug(LOG_MOD, "state report for deleted instance %s ignored", inst.uuid);
        return;
    }
    /* After a local delete or a failed claim an old host may still talk about the
     * instance; only the host that holds it speaks for it. */
    if (st.host[0] && inst.host[0] && strcmp(st.host, inst.host) != 0) {
        cl_warn(LOG_MOD, "state report for %s from %s ignored: the instance is on %s",
                inst.uuid, st.host, inst.host);
        return;
    }
    if (report_predates_arrival(s, &inst, st.host, msg->ts)) {
        cl_info(LOG_MOD, "state report for %s from %s ignored: written before the instance "
                "last moved there", inst.uuid, st.host);
        return;
    }

    /* A cold migration's destination reports RESIZED (VERIFY_RESIZE) (migrations.c). */
    int vm = (int)st.vm_state;
    if (sched_migrations_cold_report(s->store, s->bus, &inst, st.host, &vm, st.fault))
        return;
    st.vm_state = (cl_vm_state)vm;

    switch (st.vm_state) {
    case CL_VM_ERROR:
        /* A failed spawn moves to an alternate host (placement retries). */
        if (retry_or_fail(s, &inst, st.host[0] ? st.host : inst.host, st.fault, msg))
            return;
        r = cl_store_instance_fail(s->store, inst.uuid,
                                   st.fault[0] ? st.fault : "The instance failed on its host",
                                   FAULT_CODE_HOST_ERROR);
        cl_warn(LOG_MOD, "instance %s failed on %s: %s", inst.uuid, st.host,
                st.fault[0] ? st.fault : "(no fault given)");
        break;
    case CL_VM_DELETED:
        if (inst.task_state != CL_TASK_DELETING) {
            /* A destroy that was not a delete: the clean-up after a failed build
             * (retry_or_fail; the ERROR server stays for the user to see), or a move's
             * clean-up of this host reported late, after the instance came back here
             * (found by tests/crash/test_migrate_crash.py: the record was deleted). */
            cl_debug(LOG_MOD, "instance %s: clean-up on %s done", inst.uuid, st.host);
            return;
        }
        s->snap_dirty = true;
        r = cl_store_instance_mark_deleted(s->store, inst.uuid);
        cl_info(LOG_MOD, "instance %s deleted on %s", inst.uuid, st.host);
        break;
    default:
        if (st.vm_state == CL_VM_ACTIVE && inst.task_state == CL_TASK_SPAWNING &&
            inst.host[0])
            cl_store_host_record_build(s->store, inst.host, true);
        /* A periodic report must not clear a delete or a move request in flight. */
        task = inst.task_state == CL_TASK_DELETING || move_requested(s, &inst)
                   ? -1 : (int)st.task_state;
        st.vm_state = (cl_vm_state)keep_resized(&inst, (int)st.vm_state);
        r = cl_store_instance_set_state(s->store, inst.uuid, (int)st.vm_state, task,
                                        (int)st.power_state, NULL, 0);
        cl_debug(LOG_MOD, "instance %s now %s/%s/%s", inst.uuid, cl_vm_state_name(st.vm_state),
                 cl_task_state_name(st.task_state), cl_power_state_name(st.power_state));
        break;
    }
    r = store_result(s, r);
    if (r < 0 && r != -ENOENT)
        cl_err(LOG_MOD, "cannot record state of %s: %s", inst.uuid, strerror(-r));
    if (r == 0 && st.vm_state != CL_VM_DELETED)
        sched_actions_on_state(s->store, inst.uuid, msg);
}

/* ---- instance.delete ---- */

static void on_instance_delete(sched *s, const cl_bus_msg *msg)
{
    char uuid[CL_UUID_LEN];
    cl_instance inst;
    cl_host host;
    cl_error err = {0};
    bool host_known;
    int r;

    if (cl_msg_uuid_decode(msg->body, uuid, &err) < 0) {
        cl_warn(LOG_MOD, "bad instance.delete from %s: %s", msg->peer, err.message);
        return;
    }
    r = store_result(s, cl_store_instance_get(s->store, uuid, &inst));
    if (r < 0) {
        if (r == -ENOENT)
            cl_warn(LOG_MOD, "instance.delete for unknown instance %s", uuid);
        else
            cl_err(LOG_MOD, "cannot load instance %s: %s", uuid, strerror(-r));
        return;
    }
    if (inst.vm_state == CL_VM_DELETED) {
        cl_debug(LOG_MOD, "instance %s is already deleted", uuid);
        return;
    }
    s->snap_dirty = true; /* its allocation goes away now or with the destroy report */

    if (!inst.host[0]) {
        /* Never placed (or its claim was released by a failure): nothing runs anywhere. */
        r = store_result(s, cl_store_instance_mark_deleted(s->store, uuid));
        if (r < 0 && r != -ENOENT)
            cl_err(LOG_MOD, "cannot delete %s: %s", uuid, strerror(-r));
        else
            cl_info(LOG_MOD, "instance %s deleted (it had no host)", uuid);
        return;
    }

    r = store_result(s, cl_store_host_get(s->store, inst.host, &host));
    host_known = r == 0;
    if (r < 0 && r != -ENOENT) {
        cl_err(LOG_MOD, "cannot load host %s: %s", inst.host, strerror(-r));
        return;
    }
    if (!host_known || !host.up) {
        /* Nova's "local delete": the user should not wait for a dead host. The record
         * and its allocation go now; the destroy below waits in the bus until the host
         * comes back, and host.register finishes the job if that message is lost. */
        r = store_result(s, cl_store_instance_mark_deleted(s->store, uuid));
        if (r < 0 && r != -ENOENT) {
            cl_err(LOG_MOD, "cannot delete %s: %s", uuid, strerror(-r));
            return;
        }
        cl_info(LOG_MOD, "instance %s deleted locally: host %s is down", uuid, inst.host);
    } else if (inst.task_state != CL_TASK_DELETING) {
        /* nube-api normally marks the task itself; make sure periodic reports cannot
         * resurrect the instance while the destroy is in flight. */
        store_result(s, cl_store_instance_set_state(s->store, uuid, -1, CL_TASK_DELETING, -1,
                                                    NULL, 0));
    }
    r = send_destroy(s, inst.host, uuid, req_of(msg));
    if (r < 0)
        cl_err(LOG_MOD, "cannot queue instance.destroy for %s on %s: %s", uuid, inst.host,
               strerror(-r));
}

/* ---- instance.action (scheduler/actions.c) ---- */

static void on_instance_action(sched *s, const cl_bus_msg *msg)
{
    sched_actions_on_action(s->store, s->bus, msg);
}

/* ---- the loop ---- */

typedef void (*handler_fn)(sched *s, const cl_bus_msg *msg);

static const struct {
    const char *type;
    handler_fn fn;
} handlers[] = {
    {CL_MSG_HOST_REGISTER, on_host_register},
    {CL_MSG_HOST_HEARTBEAT, on_host_heartbeat},
    {CL_MSG_INSTANCE_SCHEDULE, on_instance_schedule},
    {CL_MSG_INSTANCE_STATE, on_instance_state},
    {CL_MSG_INSTANCE_DELETE, on_instance_delete},
    {CL_MSG_INSTANCE_ACTION, on_instance_action},
};

/* With CURVE + ZAP the bus tells us whose key sent a message (user_id, a host name or
 * nube-api's name). A host speaks only for itself: host.* and instance.state must name
 * the key's host; requests from the API (schedule, delete, action) only come from the
 * API's key. Without authentication (user_id "") everything passes, as before. */
#define SCHED_API_PEER "nube-api"

static bool sender_authorized(const cl_bus_msg *msg)
{
    if (!msg->user_id[0])
        return true;
    if (strcmp(msg->type, CL_MSG_INSTANCE_SCHEDULE) == 0 ||
        strcmp(msg->type, CL_MSG_INSTANCE_DELETE) == 0 ||
        strcmp(msg->type, CL_MSG_INSTANCE_ACTION) == 0) {
        if (strcmp(msg->user_id, SCHED_API_PEER) == 0)
            return true;
        cl_warn(LOG_MOD, "refused %s %s from '%s': only %s may send it", msg->type, msg->id,
                msg->user_id, SCHED_API_PEER);
        return false;
    }
    if (strcmp(msg->type, CL_MSG_HOST_REGISTER) != 0 &&
        strcmp(msg->type, CL_MSG_HOST_HEARTBEAT) != 0 &&
        strcmp(msg->type, CL_MSG_INSTANCE_STATE) != 0)
        return true;
    json_object *h = NULL;
    const char *host = json_object_object_get_ex(msg->body, "host", &h) &&
                               json_object_is_type(h, json_type_string)
                           ? json_object_get_string(h)
                           : "";
    if (strcmp(host, msg->user_id) == 0)
        return true;
    cl_warn(LOG_MOD, "refused %s %s about host '%s' from '%s': a host reports only for itself",
            msg->type, msg->id, host, msg->user_id);
    return false;
}

static void on_msg(cl_bus *bus, const cl_bus_msg *msg, void *ud)
{
    sched *s = ud;

    if (!sender_authorized(msg))
        return;
    /* Live migrations (scheduler/migrations.c) move allocations: re-read the snapshot. */
    if (sched_migrations_on_msg(s->store, bus, msg)) {
        s->snap_dirty = true;
        return;
    }

    for (size_t i = 0; i < CL_ARRAY_SIZE(handlers); i++) {
        if (strcmp(msg->type, handlers[i].type) == 0) {
            handlers[i].fn(s, msg);
            return;
        }
    }
    cl_warn(LOG_MOD, "ignoring message of unknown type '%s' from %s", msg->type, msg->peer);
}

/* The scheduler keeps no outbox: a spawn or destroy command it had queued or sent but not
 * yet seen acknowledged dies with it (found by tests/crash: an instance stuck in BUILD/
 * spawning after a SIGKILL). On the first tick after a start, every instance still
 * spawning or deleting on a host gets its command again; agents deduplicate by instance
 * uuid (a spawn of an existing domain or a destroy of a missing one just reports the
 * state). Runs on the bus thread, which owns the store. */
static void resume_in_flight(sched *s)
{
    cl_instance_filter f = {.include_deleted = false};
    _cleanup_(free_instancesp) cl_instance *list = NULL;
    size_t n = 0, sent = 0;

    if (store_result(s, cl_store_instance_list(s->store, &f, &list, &n)) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        if (!list[i].host[0])
            continue;
        int r = 0;
        if (list[i].task_state == CL_TASK_SPAWNING)
            r = send_spawn(s, &list[i], NULL);
        else if (list[i].task_state == CL_TASK_DELETING)
            r = send_destroy(s, list[i].host, list[i].uuid, NULL);
        else
            continue;
        if (r < 0)
            cl_warn(LOG_MOD, "cannot resend the command for %s: %s", list[i].uuid,
                    strerror(-r));
        else
            sent++;
    }
    if (sent)
        cl_info(LOG_MOD, "re-sent %zu in-flight spawn/destroy commands after start", sent);
}

/* nube-api writes the instance row, then queues instance.schedule on its bus; an API
 * killed between the two (it keeps no outbox) leaves a server in BUILD/scheduling that
 * nobody will ever schedule (found by tests/crash). Every SWEEP_MS the scheduler
 * schedules such rows itself once they are SWEEP_STALE_MS old: on_instance_schedule is
 * idempotent (a placed instance is never claimed twice), so a request that was merely
 * slow and arrives later does no harm. */
#define SWEEP_MS 5000
#define SWEEP_STALE_MS 15000
#define SWEEP_MAX 256

/* The uuids a sweep query finds (?1: the staleness cut-off in ms, ?2: the row cap), at
 * most SWEEP_MAX; 0 when the query fails. Read whole before acting, so that what the
 * sweep then writes does not run under an open read statement. */
static size_t stale_uuids(sched *s, const char *sql, char uuids[SWEEP_MAX][CL_UUID_LEN])
{
    _cleanup_stmt_ sqlite3_stmt *q = NULL;
    size_t n = 0;

    if (cl_db_prepare(cl_store_db(s->store), sql, &q) < 0)
        return 0;
    sqlite3_bind_int64(q, 1, cl_now_ms() - SWEEP_STALE_MS);
    sqlite3_bind_int(q, 2, SWEEP_MAX);
    while (n < SWEEP_MAX && sqlite3_step(q) == SQLITE_ROW)
        cl_db_column_text(q, 0, uuids[n++], CL_UUID_LEN);
    return n;
}

static void sweep_orphans(sched *s)
{
    char uuids[SWEEP_MAX][CL_UUID_LEN];
    size_t n = stale_uuids(s, "SELECT uuid FROM instances WHERE vm_state = 'building' AND "
                              "task_state = 'scheduling' AND host = '' AND created_ms < ?1 "
                              "ORDER BY created_ms LIMIT ?2", uuids);

    for (size_t i = 0; i < n; i++) {
        cl_bus_msg m = {0};
        m.body = cl_msg_uuid_encode(uuids[i]);
        if (!m.body)
            return;
        cl_strlcpy(m.type, CL_MSG_INSTANCE_SCHEDULE, sizeof(m.type));
        cl_warn(LOG_MOD, "instance %s has waited %d s for scheduling: its request was lost "
                "(nube-api restarted?); scheduling it now", uuids[i], SWEEP_STALE_MS / 1000);
        on_instance_schedule(s, &m);
        json_object_put(m.body);
    }
}

/* A move's task with no migration under way SWEEP_STALE_MS after it was set: nube-api
 * died before its request reached the bus (it keeps no outbox). Nothing will start the
 * move; the task goes, so that the server takes actions again. */
static void sweep_lost_moves(sched *s)
{
    char uuids[SWEEP_MAX][CL_UUID_LEN];
    size_t n = stale_uuids(s, "SELECT uuid FROM instances i WHERE task_state IN "
                              "('migrating', 'resize_migrating') AND updated_ms < ?1 AND NOT "
                              "EXISTS (SELECT 1 FROM migrations m WHERE m.instance_uuid = "
                              "i.uuid AND m.status IN (" MOVES_UNDER_WAY ")) LIMIT ?2", uuids);

    for (size_t i = 0; i < n; i++) {
        cl_warn(LOG_MOD, "instance %s has waited %d s for its move to start: the request "
                "was lost (nube-api restarted?); clearing its task", uuids[i],
                SWEEP_STALE_MS / 1000);
        int r = store_result(s, cl_store_instance_set_state(s->store, uuids[i], -1,
                                                            CL_TASK_NONE, -1, NULL, 0));
        if (r < 0 && r != -ENOENT)
            cl_err(LOG_MOD, "cannot clear the task of %s: %s", uuids[i], strerror(-r));
    }
}

static void on_tick(cl_bus *bus, void *ud)
{
    sched *s = ud;
    if (!s->resumed) {
        s->resumed = true;
        s->moves_sweep_ms = cl_mono_ms() + SWEEP_STALE_MS;
        resume_in_flight(s);
        sched_migrations_resume(s->store, bus);
    }
    if (cl_mono_ms() >= s->next_sweep_ms) {
        s->next_sweep_ms = cl_mono_ms() + SWEEP_MS;
        sweep_orphans(s);
        if (cl_mono_ms() >= s->moves_sweep_ms)
            sweep_lost_moves(s);
    }
    int64_t cutoff = cl_now_ms() - s->cfg->host_down_after_s * 1000;
    int n = 0, r;

    r = store_result(s, cl_store_host_mark_stale_down(s->store, cutoff, &n));
    if (r < 0)
        cl_err(LOG_MOD, "cannot check host liveness: %s", strerror(-r));
    else if (n > 0)
        s->snap_dirty = true;
    if (n > 0)
        cl_warn(LOG_MOD, "%d %s marked down: no heartbeat for %" PRId64 " s", n,
                n == 1 ? "host" : "hosts", s->cfg->host_down_after_s);
    refresh_host_counts(s);
    sched_migrations_auto_confirm(s->store, s->bus, s->cfg->resize_confirm_window_s);
}

/* ---- HTTP: /healthz and /metrics ---- */

static void metrics(FILE *out, void *ud)
{
    sched *s = ud;
    cl_bus_stats bs;

    cl_bus_get_stats(s->bus, &bs);
    fprintf(out,
            "# HELP nube_scheduler_hosts Compute hosts known to the scheduler, by liveness.\n"
            "# TYPE nube_scheduler_hosts gauge\n"
            "nube_scheduler_hosts{state=\"up\"} %" PRId64 "\n"
            "nube_scheduler_hosts{state=\"down\"} %" PRId64 "\n",
            atomic_load(&s->hosts_up), atomic_load(&s->hosts_down));
    fprintf(out,
            "# HELP nube_scheduler_claims_total Placement attempts, by result.\n"
            "# TYPE nube_scheduler_claims_total counter\n"
            "nube_scheduler_claims_total{result=\"ok\"} %" PRIu64 "\n"
            "nube_scheduler_claims_total{result=\"no_valid_host\"} %" PRIu64 "\n",
            atomic_load(&s->claims_ok), atomic_load(&s->claims_no_valid_host));
    fprintf(out,
            "# HELP nube_scheduler_retries_total Builds moved to an alternate host.\n"
            "# TYPE nube_scheduler_retries_total counter\n"
            "nube_scheduler_retries_total %" PRIu64 "\n"
            "# HELP nube_scheduler_generation_conflicts_total Claims that found a host "
            "generation newer than the snapshot.\n"
            "# TYPE nube_scheduler_generation_conflicts_total counter\n"
            "nube_scheduler_generation_conflicts_total %" PRIu64 "\n"
            "# HELP nube_scheduler_decisions_total Placement decisions (filter, weigh, claim).\n"
            "# TYPE nube_scheduler_decisions_total counter\n"
            "nube_scheduler_decisions_total %" PRIu64 "\n"
            "nube_scheduler_decision_seconds_total %.6f\n",
            atomic_load(&s->retries), atomic_load(&s->generation_conflicts),
            atomic_load(&s->decisions), (double)atomic_load(&s->decision_us_total) / 1e6);
    fprintf(out,
            "# HELP nube_scheduler_bus_messages_total Bus traffic of the scheduler's ROUTER.\n"
            "# TYPE nube_scheduler_bus_messages_total counter\n"
            "nube_scheduler_bus_messages_total{event=\"sent\"} %" PRIu64 "\n"
            "nube_scheduler_bus_messages_total{event=\"received\"} %" PRIu64 "\n"
            "nube_scheduler_bus_messages_total{event=\"acked\"} %" PRIu64 "\n"
            "nube_scheduler_bus_messages_total{event=\"resent\"} %" PRIu64 "\n"
            "nube_scheduler_bus_messages_total{event=\"duplicate\"} %" PRIu64 "\n"
            "nube_scheduler_bus_messages_total{event=\"dropped\"} %" PRIu64 "\n"
            "nube_scheduler_bus_messages_total{event=\"bad_frame\"} %" PRIu64 "\n"
            "# HELP nube_scheduler_bus_pending Reliable messages waiting for their ack.\n"
            "# TYPE nube_scheduler_bus_pending gauge\n"
            "nube_scheduler_bus_pending %zu\n",
            bs.sent, bs.received, bs.acked, bs.resent, bs.duplicates, bs.dropped,
            bs.bad_frames, cl_bus_pending(s->bus));
}

static bool health(char *reason, size_t len, void *ud)
{
    sched *s = ud;

    if (!atomic_load(&s->store_ok)) {
        snprintf(reason, len, "controller database unavailable");
        return false;
    }
    snprintf(reason, len, "ok");
    return true;
}

/* ---- lifecycle ---- */

/* The outbox sits beside the controller database whose decisions its commands carry:
 * "<dir of [database] connection>/nube-scheduler-outbox.db". */
static int outbox_path(const sched *s, char *out, size_t len)
{
    const char *db = s->cfg->db_connection;
    const char *slash = strrchr(db, '/');
    int n = slash ? snprintf(out, len, "%.*s/nube-scheduler-outbox.db", (int)(slash - db), db)
                  : snprintf(out, len, "nube-scheduler-outbox.db");
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* The bus keeps the commands it has not seen acknowledged in an outbox (SQLite), and
 * stores what a handler queued before it acknowledges the message that caused it: a
 * scheduler killed right after deciding still sends the spawn, destroy or migration step
 * when it is back (tests/crash/test_migrate_crash.py: a lost export left a cold
 * migration "migrating" forever, a lost destroy a second domain on the source). */
static int start_bus(sched *s, cl_error *err)
{
    char outbox[4096];
    if (outbox_path(s, outbox, sizeof(outbox)) < 0)
        return cl_error_set(err, CL_E_INTERNAL, "[database] connection is too long");
    cl_bus_opts bo = {
        .outbox_path = outbox,
        .role = CL_BUS_ROUTER,
        .endpoint = s->cfg->bus_listen,
        .name = "nube-scheduler",
        .resend_ms = (int)s->cfg->bus_resend_ms,
        .max_tries = 0, /* an agent that is away gets its commands when it returns */
        .tick_ms = (int)s->cfg->check_interval_ms,
        .on_msg = on_msg,
        .on_tick = on_tick,
        .ud = s,
        .curve_allowed_dir = s->cfg->bus_allowed_keys_dir,
    };
    cl_bus_keys keys;
    int r = cl_bus_keys_apply(&keys, s->cfg->bus_curve_secret_key_file, NULL, false, &bo, err);
    if (r < 0)
        return r;
    r = cl_bus_new(&bo, &s->bus, err);
    explicit_bzero(&keys, sizeof keys);
    return r;
}

static int start_http(sched *s, cl_error *err)
{
    cl_http_opts ho = {
        .service = "scheduler",
        .bind_addr = s->cfg->http_listen,
        .port = (uint16_t)s->cfg->http_port,
        .threads = 2,
        .ud = s,
        .metrics_fn = metrics,
        .health_fn = health,
    };

    return cl_http_server_start(&ho, &s->http, err);
}

int sched_start(const sched_cfg *cfg, sched **out, cl_error *err)
{
    sched *s;
    int r;

    s = calloc(1, sizeof(*s));
    if (!s)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    s->cfg = cfg;
    atomic_init(&s->store_ok, true);
    sched_policy_default(&s->policy);
    r = sched_policy_set_filters(&s->policy, cfg->enabled_filters, err);
    if (r < 0) {
        free(s);
        return r;
    }
    s->policy.ram_weight = cfg->ram_weight_multiplier;
    s->policy.cpu_weight = cfg->cpu_weight_multiplier;
    s->policy.disk_weight = cfg->disk_weight_multiplier;
    s->policy.instances_weight = cfg->num_instances_weight_multiplier;
    s->policy.failure_weight = cfg->build_failure_weight_multiplier;
    s->policy.soft_affinity_weight = cfg->soft_affinity_weight_multiplier;
    s->policy.soft_anti_affinity_weight = cfg->soft_anti_affinity_weight_multiplier;
    s->policy.host_subset_size = (size_t)cfg->host_subset_size;
    s->rng = (unsigned)cl_now_us();

    r = cl_store_open(cfg->db_connection, &s->store, err);
    if (r < 0)
        goto fail;
    /* Metrics are right from the first scrape; the bus thread is not running yet. */
    refresh_host_counts(s);

    r = start_bus(s, err);
    if (r < 0)
        goto fail;
    if (cfg->http_port > 0) {
        r = start_http(s, err);
        if (r < 0)
            goto fail;
    }
    cl_info(LOG_MOD, "scheduler listening on %s%s", cfg->bus_listen,
            s->http ? "" : " (HTTP disabled)");
    *out = s;
    return 0;

fail:
    sched_stop(s);
    return r;
}

void sched_stop(sched *s)
{
    if (!s)
        return;
    /* HTTP first (its metrics read the bus), then the loop, then what the loop used. */
    cl_http_server_stop(s->http);
    cl_bus_free(s->bus);
    if (s->store)
        cl_store_free(s->store);
    snapshot_drop(s);
    free(s);
}

uint16_t sched_http_port(const sched *s)
{
    return s && s->http ? cl_http_server_port(s->http) : 0;
}
