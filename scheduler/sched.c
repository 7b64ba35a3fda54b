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
 * Claims: the in-memory host list is a snapshot used to filter and order candidates
 * (placement.c); cl_store_claim() re-checks capacity under the database write lock, so
 * a snapshot that went stale costs nothing worse than a "no valid host" for a request
 * that raced another one to the last free slot.
 */
#include "sched.h"

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "cleanup.h"
#include "http.h"
#include "log.h"
#include "messages.h"
#include "model.h"
#include "placement.h"
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
    CFG_KEY("scheduler", "host_down_after_s", CL_CFG_INT, "30", 1, 3600, host_down_after_s,
            "A host with no heartbeat for this many seconds is marked down."),
    CFG_KEY("scheduler", "check_interval_ms", CL_CFG_INT, "1000", 100, 60000,
            check_interval_ms, "How often host liveness is checked."),
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
    _Atomic int64_t hosts_up;
    _Atomic int64_t hosts_down;
    _Atomic bool store_ok;
};

static void free_hostsp(cl_host **p) { free(*p); }
static void free_instancesp(cl_instance **p) { free(*p); }
static void free_host_instancesp(cl_msg_host_instance **p) { free(*p); }

/* ---- small helpers ---- */

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
        cl_warn(LOG_MOD, "host %s reports instance %s which the controller places on %s; "
                "left as it is", host, ri->uuid, inst.host);
        return;
    }
    r = store_result(s, cl_store_allocation_ensure(s->store, ri->uuid, host));
    if (r < 0) {
        cl_err(LOG_MOD, "cannot record allocation of %s on %s: %s", ri->uuid, host,
               strerror(-r));
        return;
    }
    /* A delete in flight wins over what the host reports, and an ERROR instance keeps
     * its error until a user acts on it: only the power state is refreshed then. */
    vm = vm_state_for_power(ri->power_state);
    task = vm < 0 ? -1 : CL_TASK_NONE;
    if (inst.task_state == CL_TASK_DELETING || inst.vm_state == CL_VM_ERROR) {
        vm = -1;
        task = -1;
    }
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

    for (size_t i = 0; i < nri; i++)
        adopt_reported(s, h.name, &ri[i]);
    check_unreported(s, h.name, ri, nri);
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

static void fail_no_valid_host(sched *s, const cl_instance *inst)
{
    _cleanup_(free_hostsp) cl_host *hosts = NULL;
    char fault[CL_FAULT_MAX];
    size_t n = 0;
    int r;

    /* Explain from a fresh list: the claim may have lost a race the snapshot did not
     * show, and the user should see the capacity as it is now. */
    if (store_result(s, cl_store_host_list(s->store, &hosts, &n)) < 0)
        n = 0;
    sched_placement_explain(hosts, n, &inst->flavor, fault, sizeof(fault));
    atomic_fetch_add(&s->claims_no_valid_host, 1);
    cl_warn(LOG_MOD, "instance %s: %s", inst->uuid, fault);
    r = store_result(s, cl_store_instance_fail(s->store, inst->uuid, fault,
                                                FAULT_CODE_NO_VALID_HOST));
    if (r < 0 && r != -ENOENT)
        cl_err(LOG_MOD, "cannot record the failure of %s: %s", inst->uuid, strerror(-r));
}

static void schedule_instance(sched *s, cl_instance *inst, const cl_bus_msg *msg)
{
    _cleanup_(free_hostsp) cl_host *hosts = NULL;
    _cleanup_free_ const cl_host **cands = NULL;
    _cleanup_free_ const char **names = NULL;
    size_t nhosts = 0, ncands;
    int r;

    r = store_result(s, cl_store_host_list(s->store, &hosts, &nhosts));
    if (r < 0) {
        cl_err(LOG_MOD, "cannot list hosts to place %s: %s", inst->uuid, strerror(-r));
        return;
    }
    if (nhosts > 0) {
        cands = calloc(nhosts, sizeof(*cands));
        names = calloc(nhosts, sizeof(*names));
        if (!cands || !names) {
            cl_err(LOG_MOD, "out of memory placing %s", inst->uuid);
            return;
        }
    }
    ncands = sched_placement_candidates(hosts, nhosts, &inst->flavor, cands);
    if (ncands == 0) {
        fail_no_valid_host(s, inst);
        return;
    }
    for (size_t i = 0; i < ncands; i++)
        names[i] = cands[i]->name;

    r = store_result(s, cl_store_claim(s->store, inst->uuid, names, ncands, inst->host));
    if (r == -ENOSPC) {
        fail_no_valid_host(s, inst);
        return;
    }
    if (r == -EBUSY || r == -ENOENT) {
        cl_info(LOG_MOD, "instance %s is being deleted; not scheduled", inst->uuid);
        return;
    }
    if (r < 0) {
        cl_err(LOG_MOD, "claim for %s failed: %s", inst->uuid, strerror(-r));
        return;
    }
    atomic_fetch_add(&s->claims_ok, 1);
    cl_info(LOG_MOD, "instance %s placed on %s (%zu candidates)", inst->uuid, inst->host,
            ncands);

    r = send_spawn(s, inst, req_of(msg));
    if (r < 0) {
        /* The claim holds resources nothing will use: give them back and tell the user,
         * rather than leave a server in BUILD forever. */
        char fault[CL_FAULT_MAX];

        snprintf(fault, sizeof(fault), "The scheduler could not send the spawn request to "
                 "host %s (%s); try again later", inst->host, strerror(-r));
        cl_err(LOG_MOD, "instance %s: %s", inst->uuid, fault);
        store_result(s, cl_store_instance_fail(s->store, inst->uuid, fault,
                                               FAULT_CODE_HOST_ERROR));
    }
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

    switch (st.vm_state) {
    case CL_VM_ERROR:
        r = cl_store_instance_fail(s->store, inst.uuid,
                                   st.fault[0] ? st.fault : "The instance failed on its host",
                                   FAULT_CODE_HOST_ERROR);
        cl_warn(LOG_MOD, "instance %s failed on %s: %s", inst.uuid, st.host,
                st.fault[0] ? st.fault : "(no fault given)");
        break;
    case CL_VM_DELETED:
        r = cl_store_instance_mark_deleted(s->store, inst.uuid);
        cl_info(LOG_MOD, "instance %s deleted on %s", inst.uuid, st.host);
        break;
    default:
        /* A periodic report must not clear a delete request that is in flight. */
        task = inst.task_state == CL_TASK_DELETING ? -1 : (int)st.task_state;
        r = cl_store_instance_set_state(s->store, inst.uuid, (int)st.vm_state, task,
                                        (int)st.power_state, NULL, 0);
        cl_debug(LOG_MOD, "instance %s now %s/%s/%s", inst.uuid, cl_vm_state_name(st.vm_state),
                 cl_task_state_name(st.task_state), cl_power_state_name(st.power_state));
        break;
    }
    r = store_result(s, r);
    if (r < 0 && r != -ENOENT)
        cl_err(LOG_MOD, "cannot record state of %s: %s", inst.uuid, strerror(-r));
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
};

static void on_msg(cl_bus *bus, const cl_bus_msg *msg, void *ud)
{
    sched *s = ud;

    for (size_t i = 0; i < CL_ARRAY_SIZE(handlers); i++) {
        if (strcmp(msg->type, handlers[i].type) == 0) {
            handlers[i].fn(s, msg);
            return;
        }
    }
    cl_warn(LOG_MOD, "ignoring message of unknown type '%s' from %s", msg->type, msg->peer);
}

static void on_tick(cl_bus *bus, void *ud)
{
    sched *s = ud;
    int64_t cutoff = cl_now_ms() - s->cfg->host_down_after_s * 1000;
    int n = 0, r;

    r = store_result(s, cl_store_host_mark_stale_down(s->store, cutoff, &n));
    if (r < 0)
        cl_err(LOG_MOD, "cannot check host liveness: %s", strerror(-r));
    else if (n > 0)
        cl_warn(LOG_MOD, "%d %s marked down: no heartbeat for %" PRId64 " s", n,
                n == 1 ? "host" : "hosts", s->cfg->host_down_after_s);
    refresh_host_counts(s);
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

static int start_bus(sched *s, cl_error *err)
{
    cl_bus_opts bo = {
        .role = CL_BUS_ROUTER,
        .endpoint = s->cfg->bus_listen,
        .name = "nube-scheduler",
        .resend_ms = (int)s->cfg->bus_resend_ms,
        .max_tries = 0, /* an agent that is away gets its commands when it returns */
        .tick_ms = (int)s->cfg->check_interval_ms,
        .on_msg = on_msg,
        .on_tick = on_tick,
        .ud = s,
    };

    return cl_bus_new(&bo, &s->bus, err);
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
    free(s);
}

uint16_t sched_http_port(const sched *s)
{
    return s && s->http ? cl_http_server_port(s->http) : 0;
}
