/*
 * agent.c - what nube-agent does, as a context with start/stop (agent.h).
 *
 * The agent's promise to the scheduler: every instance.spawn it acknowledged ends in a
 * running domain or an instance.state error, every instance.destroy in a vanished domain
 * and an instance.state "deleted", even across a kill -9 of the agent. It keeps that
 * promise with a local SQLite record per instance (state_dir/agent-<host>.db), written on
 * the bus thread *before* the handler returns (the bus acknowledges after the handler),
 * and with a reconcile pass at every start:
 *
 *   record, no domain        -> re-create it (the libvirt test driver's domains die with
 *                               the process; on real hosts this is Nova's
 *                               resume_guests_state_on_host_boot)
 *   record marked deleting   -> destroy, drop the record, report "deleted" (done by the
 *                               first sync job, queued right after start)
 *   nube domain, no record   -> adopt it (record rebuilt from the domain's metadata)
 *
 * then host.register carries capacity and every instance with its power state, followed
 * by one instance.state per instance (the scheduler may have missed the last one).
 *
 * Threads and who owns what:
 *   bus thread     on_msg (write records, queue jobs), on_tick (heartbeat, periodic sync)
 *   worker thread  every blocking libvirt call: spawn, destroy, sync (FIFO, cap 1024)
 *   event thread   libvirt lifecycle events (driver.h) -> instance.state at once
 *   HTTP threads   /healthz, /metrics, GET /v1/domains (read live from libvirt)
 * The records DB is one connection under db_lock (statements are short). Reports go
 * through report(), which holds state_lock around the "last reported power state" cache
 * and the bus pointer, so a report never races with the bus being freed at stop.
 */
#include "agent.h"
#include "image_cache.h"
#include "migrate.h"
#include "simulate.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bus.h"
#include "bus_auth.h"
#include "cleanup.h"
#include "db.h"
#include "driver.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "messages.h"
#include "usage.h"
#include "util.h"

#define MOD "agent"

#define QUEUE_CAP 1024        /* queued spawn/destroy/sync jobs; full -> "agent busy" */
#define SYNC_EVERY_TICKS 10   /* power-state sync every 10 heartbeats */
#define DB_BUSY_MS 5000
#define CONSOLE_MAX_BYTES (100 * 1024) /* as Nova's libvirt driver: the log's last 100 KiB */
#define ADDR_WATCH_MS 120000           /* look for a DHCP lease this long after a boot */

/* ---- configuration ---- */

const cl_cfg_key agent_cfg_keys[] = {
    CL_DAEMON_COMMON_KEYS(agent_cfg),
    {"agent", "host", CL_CFG_STR, "", 0, -1, offsetof(agent_cfg, host),
     "Name of this host on the bus and in the scheduler (empty: gethostname())."},
    {"agent", "libvirt_uri", CL_CFG_STR, "qemu:///system", 0, -1,
     offsetof(agent_cfg, libvirt_uri),
     "libvirt connection URI: qemu:///system, xen:///system, lxc:///system, test:///..."},
    {"agent", "heartbeat_interval_ms", CL_CFG_INT, "10000", 100, 600000,
     offsetof(agent_cfg, heartbeat_interval_ms),
     "Milliseconds between heartbeats to the scheduler."},
    {"agent", "instances_dir", CL_CFG_STR, "/var/lib/nube/instances", 0, -1,
     offsetof(agent_cfg, instances_dir),
     "Directory of instance disks and console logs (<dir>/<uuid>/disk, console.log)."},
    {"agent", "virt_type", CL_CFG_STR, "auto", 0, -1, offsetof(agent_cfg, virt_type),
     "QEMU acceleration: auto (kvm when /dev/kvm opens and a probe guest runs, else "
     "qemu/TCG), kvm or qemu."},
    {"agent", "image_dir", CL_CFG_STR, "", 0, -1, offsetof(agent_cfg, image_dir),
     "Local images until nube-image is used: <image_dir>/<image_ref>/{kernel,ramdisk,"
     "disk.qcow2,cmdline} (empty: <state_dir>/images)."},
    {"image", "endpoint", CL_CFG_STR, "", 0, -1, offsetof(agent_cfg, image_endpoint),
     "nube-image URL (http://127.0.0.1:9292): image_refs it knows are downloaded, verified "
     "and cached in <state_dir>/image-cache (empty: [agent] image_dir only)."},
    {"image", "token_key_file", CL_CFG_STR, "", 0, -1,
     offsetof(agent_cfg, image_token_key_file),
     "The shared token key (nube-api's [auth] token_key_file): the agent mints a 5-minute "
     "reader token for the instance's project per request, so an instance only boots "
     "images its project may see. Preferred over token."},
    {"image", "token", CL_CFG_STR, "", 0, -1, offsetof(agent_cfg, image_token),
     "Static token for nube-image (its [auth] admin_token), used when token_key_file is "
     "empty."},
    {"image", "cache_max_idle_s", CL_CFG_INT, "86400", 0, 31536000,
     offsetof(agent_cfg, image_cache_max_idle_s),
     "Seconds a cached image no instance uses is kept before it is removed."},
    {"agent", "network", CL_CFG_STR, "nube", 0, -1, offsetof(agent_cfg, network),
     "libvirt NAT network for guests, created when missing (10.231.0.0/24); empty, or "
     "unusable (no dnsmasq/iptables): a user-mode NIC."},
    {"agent", "shutdown_timeout_s", CL_CFG_INT, "60", 1, 3600,
     offsetof(agent_cfg, shutdown_timeout_s),
     "Seconds a guest gets to shut down on ACPI power-off (stop, resize) before it is "
     "destroyed."},
    {"agent", "live_resize", CL_CFG_BOOL, "false", 0, 0, offsetof(agent_cfg, live_resize),
     "Define domains with vCPU/memory headroom, and resize to a flavor with the same disk "
     "without stopping the guest (falls back to a cold resize beyond the headroom)."},
    {"agent", "migration_uri", CL_CFG_STR, "", 0, -1, offsetof(agent_cfg, migration_uri),
     "libvirt URI other hosts' libvirtd use to reach this one for live migration "
     "(empty: qemu+tcp://<migration_address>/system)."},
    {"agent", "migration_address", CL_CFG_STR, "", 0, -1,
     offsetof(agent_cfg, migration_address),
     "Address QEMU's live-migration stream connects to on this host (empty: libvirt's "
     "default, the host name)."},
    {"agent", "migration_max_downtime_ms", CL_CFG_INT, "500", 10, 60000,
     offsetof(agent_cfg, migration_max_downtime_ms),
     "Largest guest pause allowed at the switch-over; reached in steps."},
    {"agent", "migration_timeout_s", CL_CFG_INT, "300", 0, 86400,
     offsetof(agent_cfg, migration_timeout_s),
     "A live migration still running after this long is aborted or force-completed "
     "(0: never)."},
    {"agent", "migration_timeout_action", CL_CFG_STR, "abort", 0, -1,
     offsetof(agent_cfg, migration_timeout_action),
     "abort (the guest stays on the source) or force_complete (pause it to finish)."},
    {"agent", "migration_auto_converge", CL_CFG_BOOL, "false", 0, 0,
     offsetof(agent_cfg, migration_auto_converge),
     "Live migration with auto-converge (QEMU throttles a guest that dirties memory "
     "faster than it can be sent)."},
    {"agent", "migration_post_copy", CL_CFG_BOOL, "false", 0, 0,
     offsetof(agent_cfg, migration_post_copy),
     "Allow post-copy: force-complete (API or timeout) switches to post-copy instead of "
     "pausing the guest."},
    {"bus", "scheduler_endpoint", CL_CFG_STR, "tcp://127.0.0.1:5570", 0, -1,
     offsetof(agent_cfg, scheduler_endpoint), "ZeroMQ endpoint of the scheduler's bus."},
    {"bus", "resend_ms", CL_CFG_INT, "2000", 100, 60000, offsetof(agent_cfg, resend_ms),
     "Milliseconds before an unacknowledged message is sent again."},
    {"bus", "curve_secret_key_file", CL_CFG_STR, "", 0, -1,
     offsetof(agent_cfg, curve_secret_key_file),
     "File (mode 0600) with this host's CURVE secret key (nube-keys gen); empty = plain "
     "TCP. Its public key must be in the scheduler's allowed_keys_dir under this host."},
    {"bus", "curve_server_key_file", CL_CFG_STR, "", 0, -1,
     offsetof(agent_cfg, curve_server_key_file),
     "The scheduler's public key file ('<key> <name>'), required with a secret key."},
    {"resources", "vcpus", CL_CFG_INT, "0", 0, 1048576, offsetof(agent_cfg, vcpus),
     "vCPUs to report (0: detect from libvirt node info)."},
    {"resources", "ram_mb", CL_CFG_INT, "0", 0, 1073741824, offsetof(agent_cfg, ram_mb),
     "Memory in MB to report (0: detect from libvirt node info)."},
    {"resources", "disk_gb", CL_CFG_INT, "0", 0, 1073741824, offsetof(agent_cfg, disk_gb),
     "Disk in GB to report (0: detect with statvfs of instances_dir)."},
    {"billing", "endpoint", CL_CFG_STR, "", 0, -1, offsetof(agent_cfg, billing_endpoint),
     "ZeroMQ endpoint of nube-billing's usage bus (empty: no usage samples)."},
    {"billing", "curve_server_key_file", CL_CFG_STR, "", 0, -1,
     offsetof(agent_cfg, billing_curve_server_key_file),
     "nube-billing's public key file: with [bus] curve_secret_key_file the usage bus uses "
     "CURVE with this host's key (billing's allowed_keys_dir must list it); empty = plain "
     "TCP."},
    {"billing", "sample_interval_s", CL_CFG_INT, "60", 1, 86400,
     offsetof(agent_cfg, sample_interval_s),
     "Seconds between counter/gauge usage samples of every running instance."},
    {"http", "listen", CL_CFG_STR, "127.0.0.1", 0, -1, offsetof(agent_cfg, http_listen),
     "Address of the HTTP endpoint (/healthz, /metrics, /v1/domains)."},
    {"http", "port", CL_CFG_INT, "8776", 0, 65535, offsetof(agent_cfg, http_port),
     "Port of the HTTP endpoint (0: disabled)."},
};
const size_t agent_cfg_nkeys = CL_ARRAY_SIZE(agent_cfg_keys);

/* ---- the context ---- */

typedef enum { JOB_SPAWN, JOB_DESTROY, JOB_SYNC, JOB_ACTION, JOB_ADDRS, JOB_USAGE } job_kind;

typedef struct job {
    job_kind kind;
    char uuid[CL_UUID_LEN];
    char req[80];               /* request id to carry into logs and replies */
    cl_msg_instance spec;       /* JOB_SPAWN */
    bool define_only;           /* JOB_SPAWN of a stopped server that moved here */
    bool moved;                 /* JOB_SPAWN: it arrived by a cold move; JOB_DESTROY: the
                                 * copy a cold move left (billing: not created/deleted) */
    cl_msg_action act;          /* JOB_ACTION */
    struct job *next;
} job;

/* Last state reported per instance: events and the sync report only changes. */
typedef struct reported {
    char uuid[CL_UUID_LEN];
    cl_power_state power;
    cl_vm_state vm;
    char addrs[CL_MSG_MAX_ADDRESSES * CL_MSG_ADDR_LEN]; /* joined, as last reported */
    int64_t addr_until_ms;      /* look for a lease until then (0: not looking) */
} reported;

struct agent {
    char host[CL_HOST_MAX];
    char instances_dir[4096];
    char image_dir[4096];
    char url[320];              /* http://listen:port of the HTTP endpoint, "" when off */
    cl_msg_host info;           /* capacity etc., fixed after start */
    agent_host_caps caps;       /* hypervisor version, CPU arch/model, fixed after start */
    bool live_resize;
    atomic_llong orphans;       /* domains that look like nube's but are not managed */

    agent_driver *drv;
    agent_image_cache *images;  /* NULL: [image] endpoint empty */

    pthread_mutex_t db_lock;
    cl_db *db;

    pthread_mutex_t state_lock; /* guards bus (for report) and rep[] */
    cl_bus *bus;
    reported *rep;
    size_t nrep, caprep;

    pthread_mutex_t qlock;
    pthread_cond_t qcond;
    job *qhead, *qtail;
    size_t qlen;
    bool qstop;
    bool sync_queued;
    bool addrs_queued;
    char acting[CL_UUID_LEN];   /* instance whose action runs now (state_lock); events
                                 * about it are left to the action's own report */
    pthread_t worker;
    bool worker_started;

    cl_http_server *http;

    agent_usage *usage;         /* NULL: [billing] endpoint empty */
    agent_mig *mig;             /* live migration (migrate.h) */
    int64_t sample_every_ms;
    int64_t next_sample_ms;     /* bus thread only */
    bool usage_queued;          /* qlock */

    unsigned ticks;             /* bus thread only */
    atomic_llong running_vms;
    atomic_ullong spawns, spawn_errors, destroys, destroy_errors, events, busy;
};

/* ---- local records ---- */

static const cl_db_migration migrations[] = {
    {1, "CREATE TABLE instances ("
        "  uuid TEXT PRIMARY KEY,"
        "  spec TEXT NOT NULL,"             /* JSON body of the instance.spawn */
        "  created_ms INTEGER NOT NULL,"
        "  deleting INTEGER NOT NULL DEFAULT 0" /* destroy accepted, not yet done */
        ");"},
    /* An accepted instance.action not yet carried out (its body), redone at start. */
    {2, "ALTER TABLE instances ADD COLUMN action TEXT NOT NULL DEFAULT '';"},
};

typedef struct rec {
    cl_msg_instance spec;
    bool deleting;
    bool has_action;
    cl_msg_action act;          /* when has_action */
} rec;

static int rec_put(agent *a, const cl_msg_instance *spec)
{
    _cleanup_json_ json_object *body = cl_msg_spawn_encode(spec);
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int r;
    if (!body)
        return -ENOMEM;
    pthread_mutex_lock(&a->db_lock);
    /* A spawn for an instance whose destroy is pending does not resurrect it. */
    r = cl_db_prepare(a->db, "INSERT INTO instances(uuid, spec, created_ms) VALUES(?,?,?) "
                             "ON CONFLICT(uuid) DO UPDATE SET spec = excluded.spec "
                             "WHERE deleting = 0", &st);
    if (r == 0) {
        cl_db_bind_text(st, 1, spec->uuid);
        cl_db_bind_text(st, 2, cl_json_dump(body));
        cl_db_bind_int64(st, 3, cl_now_ms());
        r = cl_db_step_done(st);
    }
    pthread_mutex_unlock(&a->db_lock);
    return r;
}

static int rec_exec_uuid(agent *a, const char *sql, const char *uuid)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&a->db_lock);
    int r = cl_db_prepare(a->db, sql, &st);
    if (r == 0) {
        cl_db_bind_text(st, 1, uuid);
        r = cl_db_step_done(st);
    }
    pthread_mutex_unlock(&a->db_lock);
    return r;
}

static int rec_delete(agent *a, const char *uuid)
{
    return rec_exec_uuid(a, "DELETE FROM instances WHERE uuid = ?", uuid);
}

static int rec_mark_deleting(agent *a, const char *uuid)
{
    return rec_exec_uuid(a, "UPDATE instances SET deleting = 1 WHERE uuid = ?", uuid);
}

/* 1 = record present and not being deleted, 0 = absent or deleting, <0 = error. */
static int rec_live(agent *a, const char *uuid)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&a->db_lock);
    int r = cl_db_prepare(a->db, "SELECT deleting FROM instances WHERE uuid = ?", &st);
    if (r == 0) {
        cl_db_bind_text(st, 1, uuid);
        int s = sqlite3_step(st);
        r = s == SQLITE_ROW ? sqlite3_column_int(st, 0) == 0 : s == SQLITE_DONE ? 0 : -EIO;
    }
    pthread_mutex_unlock(&a->db_lock);
    return r;
}

/* The spec of a record (deleting or not). 0, -ENOENT, or negative errno. */
static int rec_get(agent *a, const char *uuid, cl_msg_instance *out)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    _cleanup_json_ json_object *body = NULL;
    int r;
    pthread_mutex_lock(&a->db_lock);
    r = cl_db_prepare(a->db, "SELECT spec FROM instances WHERE uuid = ?", &st);
    if (r == 0) {
        cl_db_bind_text(st, 1, uuid);
        int s = sqlite3_step(st);
        const char *text = s == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
        r = s == SQLITE_DONE ? -ENOENT : !text ? -EIO
            : cl_json_parse_object(text, strlen(text), &body, NULL) < 0 ||
                      cl_msg_spawn_decode(body, out, NULL) < 0
                  ? -EIO : 0;
    }
    pthread_mutex_unlock(&a->db_lock);
    return r;
}

/* Remember (body) or forget (NULL) the instance's pending action. */
static int rec_set_action(agent *a, const char *uuid, json_object *body)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&a->db_lock);
    int r = cl_db_prepare(a->db, "UPDATE instances SET action = ? WHERE uuid = ?", &st);
    if (r == 0) {
        cl_db_bind_text(st, 1, body ? cl_json_dump(body) : "");
        cl_db_bind_text(st, 2, uuid);
        r = cl_db_step_done(st);
    }
    pthread_mutex_unlock(&a->db_lock);
    return r;
}

/* All records (malloc'd array in *out). Records whose spec no longer decodes are
 * skipped with a warning: they cannot be re-created anyway. */
static int rec_list(agent *a, rec **out, size_t *out_n)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    rec *v = NULL;
    size_t n = 0, cap = 0;
    int r, s;

    pthread_mutex_lock(&a->db_lock);
    r = cl_db_prepare(a->db, "SELECT uuid, spec, deleting, action FROM instances "
                             "ORDER BY created_ms", &st);
    while (r == 0 && (s = sqlite3_step(st)) == SQLITE_ROW) {
        const char *text = (const char *)sqlite3_column_text(st, 1);
        _cleanup_json_ json_object *body = NULL;
        cl_error err = {0};
        rec one;
        memset(&one, 0, sizeof(one));
        if (!text || cl_json_parse_object(text, strlen(text), &body, &err) < 0 ||
            cl_msg_spawn_decode(body, &one.spec, &err) < 0) {
            cl_warn(MOD, "local record %s is unreadable (%s); ignoring it",
                    (const char *)sqlite3_column_text(st, 0), err.message);
            continue;
        }
        one.deleting = sqlite3_column_int(st, 2) != 0;
        const char *act = (const char *)sqlite3_column_text(st, 3);
        _cleanup_json_ json_object *abody = NULL;
        if (act && *act &&
            cl_json_parse_object(act, strlen(act), &abody, &err) == 0 &&
            cl_msg_action_decode(abody, &one.act, &err) == 0)
            one.has_action = true;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            rec *nv = realloc(v, ncap * sizeof(*nv));
            if (!nv) {
                r = -ENOMEM;
                break;
            }
            v = nv;
            cap = ncap;
        }
        v[n++] = one;
    }
    if (r == 0 && s != SQLITE_DONE)
        r = -EIO;
    pthread_mutex_unlock(&a->db_lock);
    if (r < 0) {
        free(v);
        return r;
    }
    *out = v;
    *out_n = n;
    return 0;
}

/* ---- reporting ---- */

/* The vm_state an observed power state implies (Nova's _sync_instance_power_state: an
 * active instance found shut off or crashed is stopped). */
static cl_vm_state vm_of_power(cl_power_state p)
{
    switch (p) {
    case CL_POWER_RUNNING: return CL_VM_ACTIVE;
    case CL_POWER_PAUSED: return CL_VM_PAUSED;
    case CL_POWER_SUSPENDED: return CL_VM_SUSPENDED;
    case CL_POWER_SHUTDOWN:
    case CL_POWER_CRASHED: return CL_VM_STOPPED;
    default: return CL_VM_ERROR;
    }
}

/* A shut-off domain with a managed save image is a suspended instance. */
static cl_vm_state vm_observed(cl_power_state p, bool saved)
{
    return p == CL_POWER_SHUTDOWN && saved ? CL_VM_SUSPENDED : vm_of_power(p);
}

static reported *rep_find_locked(agent *a, const char *uuid)
{
    for (size_t i = 0; i < a->nrep; i++)
        if (strcmp(a->rep[i].uuid, uuid) == 0)
            return &a->rep[i];
    return NULL;
}

static void rep_set_locked(agent *a, const char *uuid, cl_power_state p)
{
    reported *r = rep_find_locked(a, uuid);
    if (!r) {
        if (a->nrep == a->caprep) {
            size_t ncap = a->caprep ? a->caprep * 2 : 64;
            reported *nv = realloc(a->rep, ncap * sizeof(*nv));
            if (!nv)
                return; /* only costs a duplicate report later */
            a->rep = nv;
            a->caprep = ncap;
        }
        r = &a->rep[a->nrep++];
        memset(r, 0, sizeof(*r));
        cl_strlcpy(r->uuid, uuid, sizeof(r->uuid));
    }
    r->power = p;
}

static void rep_forget(agent *a, const char *uuid)
{
    pthread_mutex_lock(&a->state_lock);
    reported *r = rep_find_locked(a, uuid);
    if (r)
        *r = a->rep[--a->nrep];
    pthread_mutex_unlock(&a->state_lock);
}

static bool report_ex(agent *a, const char *uuid, cl_vm_state vm, cl_power_state power,
                      const char *fault, bool only_if_changed,
                      const char (*addrs)[CL_MSG_ADDR_LEN], size_t naddrs, bool with_addrs);
static int rec_get(agent *a, const char *uuid, cl_msg_instance *out);

/* The usage event a reported vm_state change means (usage_msg.h): time is charged from
 * events only, so every change of "running" or of the flavor in force sends one.
 * old_vm -1: nothing reported yet in this run (spawn, or adoption after a restart). */
static cl_usage_event usage_event_of(int old_vm, cl_vm_state vm)
{
    if (old_vm == (int)vm)
        return CL_USAGE_EV_NONE;
    switch (vm) {
    case CL_VM_ACTIVE:
        if (old_vm == CL_VM_PAUSED)
            return CL_USAGE_EV_RESUMED;
        if (old_vm == CL_VM_RESIZED)
            return CL_USAGE_EV_RESIZED; /* reverted: the old flavor is in force again */
        return CL_USAGE_EV_STARTED;
    case CL_VM_PAUSED: return CL_USAGE_EV_PAUSED;
    case CL_VM_RESIZED: return CL_USAGE_EV_RESIZED;
    case CL_VM_STOPPED:
    case CL_VM_SUSPENDED:
    case CL_VM_ERROR:
        return old_vm == CL_VM_ACTIVE || old_vm == CL_VM_PAUSED || old_vm == CL_VM_RESIZED
                   ? CL_USAGE_EV_STOPPED : CL_USAGE_EV_NONE;
    default: return CL_USAGE_EV_NONE; /* deleted: do_destroy sends it with the spec */
    }
}

static void usage_transition(agent *a, const char *uuid, int old_vm, cl_vm_state vm)
{
    cl_usage_event ev = usage_event_of(old_vm, vm);
    cl_msg_instance spec;
    if (ev != CL_USAGE_EV_NONE && rec_get(a, uuid, &spec) == 0)
        agent_usage_event(a->usage, &spec, ev);
}

/* Send instance.state (reliable). only_if_changed: skip when power and vm_state equal the
 * last report (events and sync); returns true when a message was queued. */
static bool report(agent *a, const char *uuid, cl_vm_state vm, cl_power_state power,
                   const char *fault, bool only_if_changed)
{
    return report_ex(a, uuid, vm, power, fault, only_if_changed, NULL, 0, false);
}

static void join_addrs(const char (*addrs)[CL_MSG_ADDR_LEN], size_t n, char *out, size_t len)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && used < len; i++) {
        int w = snprintf(out + used, len - used, "%s%s", i ? " " : "", addrs[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

/* report() plus, with with_addrs, the guest's addresses (sent only when they changed, or
 * with any state report when only_if_changed is false). */
static bool report_ex(agent *a, const char *uuid, cl_vm_state vm, cl_power_state power,
                      const char *fault, bool only_if_changed,
                      const char (*addrs)[CL_MSG_ADDR_LEN], size_t naddrs, bool with_addrs)
{
    char joined[CL_MSG_MAX_ADDRESSES * CL_MSG_ADDR_LEN];
    if (with_addrs)
        join_addrs(addrs, naddrs, joined, sizeof(joined));
    cl_msg_state st;
    bool sent = false;

    memset(&st, 0, sizeof(st));
    cl_strlcpy(st.instance_uuid, uuid, sizeof(st.instance_uuid));
    cl_strlcpy(st.host, a->host, sizeof(st.host));
    st.vm_state = vm;
    st.power_state = power;
    st.task_state = CL_TASK_NONE;
    cl_strlcpy(st.fault, fault ? fault : "", sizeof(st.fault));

    pthread_mutex_lock(&a->state_lock);
    reported *prev = rep_find_locked(a, uuid);
    if (only_if_changed && prev && prev->power == power && prev->vm == vm &&
        (!with_addrs || strcmp(prev->addrs, joined) == 0))
        goto out;
    if (!a->bus)
        goto out; /* stopping: the next start reports every instance anyway */
    json_object *body = cl_msg_state_encode(&st);
    if (body && with_addrs && cl_msg_state_set_addresses(body, addrs, naddrs) < 0) {
        json_object_put(body);
        body = NULL;
    }
    int r = body ? cl_bus_send(a->bus, NULL, CL_MSG_INSTANCE_STATE, NULL, body, true, NULL)
                 : -ENOMEM;
    if (r < 0) {
        cl_warn(MOD, "cannot queue instance.state for %s: %s", uuid, strerror(-r));
        goto out;
    }
    if (a->usage)
        usage_transition(a, uuid, prev ? (int)prev->vm : -1, vm);
    if (vm != CL_VM_DELETED) { /* a deleted instance is forgotten by the caller */
        rep_set_locked(a, uuid, power);
        reported *now = rep_find_locked(a, uuid);
        if (now) {
            now->vm = vm;
            if (with_addrs)
                cl_strlcpy(now->addrs, joined, sizeof(now->addrs));
        }
    }
    sent = true;
    cl_info(MOD, "instance %s: vm_state %s, power %s%s%s", uuid, cl_vm_state_name(vm),
            cl_power_state_name(power), st.fault[0] ? ", fault: " : "", st.fault);
out:
    pthread_mutex_unlock(&a->state_lock);
    return sent;
}

/* ---- the worker ---- */

static job *job_new(job_kind kind, const char *uuid)
{
    job *j = calloc(1, sizeof(*j));
    if (!j)
        return NULL;
    j->kind = kind;
    if (uuid)
        cl_strlcpy(j->uuid, uuid, sizeof(j->uuid));
    const char *req = cl_log_request_id();
    cl_strlcpy(j->req, req ? req : "", sizeof(j->req));
    return j;
}

/* Queue j (taken over). -ENOBUFS when the queue is full (j freed). */
static int job_push(agent *a, job *j)
{
    pthread_mutex_lock(&a->qlock);
    if (a->qlen >= QUEUE_CAP) {
        pthread_mutex_unlock(&a->qlock);
        free(j);
        atomic_fetch_add(&a->busy, 1);
        return -ENOBUFS;
    }
    if (j->kind == JOB_SYNC)
        a->sync_queued = true;
    if (j->kind == JOB_ADDRS)
        a->addrs_queued = true;
    if (j->kind == JOB_USAGE)
        a->usage_queued = true;
    if (a->qtail)
        a->qtail->next = j;
    else
        a->qhead = j;
    a->qtail = j;
    a->qlen++;
    pthread_cond_signal(&a->qcond);
    pthread_mutex_unlock(&a->qlock);
    return 0;
}

/* Count running nube domains for heartbeats. */
static void refresh_running(agent *a)
{
    agent_domain_info *v = NULL;
    size_t n = 0;
    cl_error err = {0};
    long long running = 0;
    if (agent_driver_list(a->drv, true, &v, &n, &err) < 0) {
        cl_debug(MOD, "cannot count domains: %s", err.message);
        return;
    }
    for (size_t i = 0; i < n; i++)
        running += v[i].power == CL_POWER_RUNNING;
    free(v);
    atomic_store(&a->running_vms, running);
}

/* Look for the guest's DHCP lease for a while (the ticks queue JOB_ADDRS). */
static void watch_addrs(agent *a, const char *uuid)
{
    pthread_mutex_lock(&a->state_lock);
    reported *r = rep_find_locked(a, uuid);
    if (r)
        r->addr_until_ms = cl_now_ms() + ADDR_WATCH_MS;
    pthread_mutex_unlock(&a->state_lock);
}

/* Report leases of the watched instances (only changes are sent). */
static void do_addrs(agent *a)
{
    char uuids[64][CL_UUID_LEN];
    size_t n = 0;
    int64_t now = cl_now_ms();

    pthread_mutex_lock(&a->state_lock);
    for (size_t i = 0; i < a->nrep && n < 64; i++)
        if (a->rep[i].addr_until_ms > now && !a->rep[i].addrs[0])
            cl_strlcpy(uuids[n++], a->rep[i].uuid, CL_UUID_LEN);
    pthread_mutex_unlock(&a->state_lock);
    for (size_t i = 0; i < n; i++) {
        char addrs[CL_MSG_MAX_ADDRESSES][CL_MSG_ADDR_LEN];
        size_t na = 0;
        if (agent_driver_addresses(a->drv, uuids[i], addrs, CL_MSG_MAX_ADDRESSES, &na) < 0 ||
            na == 0)
            continue;
        pthread_mutex_lock(&a->state_lock);
        reported *r = rep_find_locked(a, uuids[i]);
        cl_vm_state vm = r ? r->vm : CL_VM_ACTIVE;
        cl_power_state p = r ? r->power : CL_POWER_RUNNING;
        pthread_mutex_unlock(&a->state_lock);
        report_ex(a, uuids[i], vm, p, NULL, true, (const char (*)[CL_MSG_ADDR_LEN])addrs, na,
                  true);
    }
}

/* Counter and gauge samples of the running instances. */
static void do_usage(agent *a)
{
    rec *recs = NULL;
    size_t n = 0;
    if (!a->usage || rec_list(a, &recs, &n) < 0)
        return;
    cl_msg_instance *specs = n ? calloc(n, sizeof(*specs)) : NULL;
    size_t k = 0;
    for (size_t i = 0; specs && i < n; i++)
        if (!recs[i].deleting)
            specs[k++] = recs[i].spec;
    agent_usage_sample(a->usage, a->drv, specs, k);
    free(specs);
    free(recs);
}

static void set_busy(agent *a, const char *uuid)
{
    pthread_mutex_lock(&a->state_lock);
    cl_strlcpy(a->acting, uuid ? uuid : "", sizeof(a->acting));
    pthread_mutex_unlock(&a->state_lock);
}

static bool is_busy(agent *a, const char *uuid)
{
    pthread_mutex_lock(&a->state_lock);
    bool b = strcmp(a->acting, uuid) == 0;
    pthread_mutex_unlock(&a->state_lock);
    return b;
}

/* Carry out a server action, then report the state it left (always: the report clears
 * the task_state nube-api set). A failed action leaves the instance as it is, with the
 * failure in the log, as Nova reverts the task and keeps the vm_state. */
static void do_action(agent *a, const cl_msg_action *act)
{
    const char *uuid = act->instance_uuid;
    cl_error err = {0};
    cl_power_state p = CL_POWER_NOSTATE;
    bool saved = false;
    int r;

    if (rec_live(a, uuid) != 1) {
        cl_debug(MOD, "instance %s: %s skipped, being deleted", uuid,
                 cl_action_name(act->action));
        return;
    }
    set_busy(a, uuid);
    bool resize = act->has_instance &&
                  (act->action == CL_ACTION_RESIZE || act->action == CL_ACTION_REVERT_RESIZE);
    cl_msg_instance old;
    bool live = resize && a->live_resize && rec_get(a, uuid, &old) == 0 &&
                old.flavor.disk_gb == act->instance.flavor.disk_gb &&
                old.flavor.ephemeral_gb == act->instance.flavor.ephemeral_gb &&
                old.flavor.swap_mb == act->instance.flavor.swap_mb;
    if (resize && (r = rec_put(a, &act->instance)) < 0)
        cl_warn(MOD, "instance %s: cannot record the new flavor: %s", uuid, strerror(-r));
    int64_t t0 = cl_now_ms();
    /* Same disks: change vCPUs/memory in place when the domain has the headroom, else
     * (or when the hypervisor refuses) the cold path below. */
    r = -1;
    if (live && (r = agent_driver_live_resize(a->drv, &act->instance, &err)) < 0)
        cl_info(MOD, "instance %s: live resize not possible (%s); resizing cold", uuid,
                err.message);
    if (r < 0)
        r = agent_driver_action(a->drv, uuid, act->action, act->has_instance ? &act->instance
                                                                             : NULL, &err);
    if (r < 0)
        cl_warn(MOD, "instance %s: %s failed: %s", uuid, cl_action_name(act->action),
                err.message);
    else
        cl_info(MOD, "instance %s: %s done in %" PRId64 " ms", uuid,
                cl_action_name(act->action), cl_now_ms() - t0);
    (void)rec_set_action(a, uuid, NULL);
    cl_error e2 = {0};
    int o = agent_driver_observe(a->drv, uuid, &p, &saved, &e2);
    set_busy(a, NULL);
    if (o == -ENOENT) {
        report(a, uuid, CL_VM_ERROR, CL_POWER_NOSTATE,
               "the instance's domain vanished from the hypervisor", false);
        return;
    }
    cl_vm_state vm = vm_observed(p, saved);
    if (r == 0 && act->action == CL_ACTION_RESIZE)
        vm = CL_VM_RESIZED;
    report(a, uuid, vm, p, NULL, false);
    if (p == CL_POWER_RUNNING)
        watch_addrs(a, uuid);
}

static void do_spawn(agent *a, const cl_msg_instance *spec, bool define_only, bool moved)
{
    cl_error err = {0};
    cl_power_state p = CL_POWER_NOSTATE;

    /* A destroy that arrived after this spawn was queued wins. */
    if (rec_live(a, spec->uuid) != 1) {
        cl_debug(MOD, "instance %s: spawn skipped, being deleted", spec->uuid);
        return;
    }
    /* First report of this instance in this run: a new instance ("created" for
     * billing). The domain's own start event is left to this function's report (busy),
     * so "created" always precedes "started". */
    pthread_mutex_lock(&a->state_lock);
    bool first = rep_find_locked(a, spec->uuid) == NULL;
    pthread_mutex_unlock(&a->state_lock);
    set_busy(a, spec->uuid);
    /* Tests only ([agent] fail_spawns, simulate.h): every spawn fails. */
    if (agent_sim_fail_spawns())
        cl_error_set(&err, CL_E_INTERNAL, "spawn refused: [agent] fail_spawns is set (test)");
    else if (define_only && agent_driver_define(a->drv, spec, &err) == 0) {
        /* A stopped server moved here (cold migration): defined, left shut off. */
        if (first)
            agent_usage_event(a->usage, spec, CL_USAGE_EV_MIGRATED);
        report(a, spec->uuid, CL_VM_STOPPED, CL_POWER_SHUTDOWN, NULL, false);
        set_busy(a, NULL);
        return;
    } else if (!define_only && agent_driver_spawn(a->drv, spec, &err) == 0) {
        atomic_fetch_add(&a->spawns, 1);
        if (first)
            agent_usage_event(a->usage, spec, moved ? CL_USAGE_EV_MIGRATED
                                                    : CL_USAGE_EV_CREATED);
        report(a, spec->uuid, CL_VM_ACTIVE, CL_POWER_RUNNING, NULL, false);
        set_busy(a, NULL);
        watch_addrs(a, spec->uuid);
        return;
    }
    set_busy(a, NULL);
    atomic_fetch_add(&a->spawn_errors, 1);
    cl_warn(MOD, "instance %s: spawn failed: %s", spec->uuid, err.message);
    cl_error ignored = {0};
    (void)agent_driver_state(a->drv, spec->uuid, &p, &ignored);
    report(a, spec->uuid, CL_VM_ERROR, p, err.message, false);
}

/* Destroy, drop the record, report deleted. The record stays (marked deleting) on
 * failure so the next sync or start retries. */
static void do_destroy(agent *a, const char *uuid, bool moved)
{
    cl_error err = {0};
    if (agent_driver_destroy(a->drv, uuid, &err) < 0) {
        atomic_fetch_add(&a->destroy_errors, 1);
        cl_warn(MOD, "instance %s: destroy failed: %s", uuid, err.message);
        report(a, uuid, CL_VM_ERROR, CL_POWER_NOSTATE, err.message, false);
        return;
    }
    cl_msg_instance spec;
    if (a->usage && !moved && rec_get(a, uuid, &spec) == 0)
        agent_usage_event(a->usage, &spec, CL_USAGE_EV_DELETED);
    int r = rec_delete(a, uuid);
    if (r < 0)
        cl_warn(MOD, "instance %s: cannot drop local record: %s", uuid, strerror(-r));
    atomic_fetch_add(&a->destroys, 1);
    report(a, uuid, CL_VM_DELETED, CL_POWER_NOSTATE, NULL, false);
    rep_forget(a, uuid);
}

/* Orphans: domains named like nube's ("instance-<uuid>") without nube metadata, and nube
 * domains this agent keeps no record of (defined behind its back after it started; at
 * start they are adopted instead). They are counted for /metrics and logged when the
 * count changes, and never touched: an operator decides. (Nube domains the controller
 * does not know are logged by the scheduler when the host registers.) */
static void check_orphans(agent *a)
{
    agent_domain_info *v = NULL;
    size_t n = 0;
    cl_error err = {0};
    cl_msg_instance spec;
    long long count = 0;

    if (agent_driver_list(a->drv, false, &v, &n, &err) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        bool named = strncmp(v[i].name, "instance-", 9) == 0 && cl_uuid_valid(v[i].name + 9);
        const char *why = NULL;
        if (!v[i].nube && named)
            why = "is named like a nube instance but has no nube metadata";
        else if (v[i].nube && rec_get(a, v[i].uuid, &spec) == -ENOENT &&
                 !agent_mig_owns(a->mig, v[i].uuid))
            why = "carries nube metadata but this agent has no record of it";
        if (!why)
            continue;
        count++;
        if (count > atomic_load(&a->orphans))
            cl_warn(MOD, "orphan domain %s (%s) %s; left alone", v[i].name, v[i].uuid, why);
    }
    atomic_store(&a->orphans, count);
    free(v);
}

/* Periodic sync: finish pending destroys, and report power states that changed without
 * an event (events can be lost while the libvirt connection is down). */
static void do_sync(agent *a)
{
    rec *recs = NULL;
    size_t nrecs = 0;
    agent_domain_info *doms = NULL;
    size_t ndoms = 0;
    cl_error err = {0};

    if (rec_list(a, &recs, &nrecs) < 0)
        return;
    if (agent_driver_list(a->drv, true, &doms, &ndoms, &err) < 0) {
        cl_warn(MOD, "sync: cannot list domains: %s", err.message);
        free(recs);
        return;
    }
    for (size_t i = 0; i < nrecs; i++) {
        const char *uuid = recs[i].spec.uuid;
        if (recs[i].deleting) {
            do_destroy(a, uuid, false);
            continue;
        }
        /* Not reported yet means its spawn is still queued: nothing to compare. A
         * migrating instance is migrate.c's to report. */
        pthread_mutex_lock(&a->state_lock);
        bool known = rep_find_locked(a, uuid) != NULL;
        pthread_mutex_unlock(&a->state_lock);
        if (!known || agent_mig_owns(a->mig, uuid))
            continue;
        const agent_domain_info *d = NULL;
        for (size_t k = 0; k < ndoms && !d; k++)
            if (strcmp(doms[k].uuid, uuid) == 0)
                d = &doms[k];
        bool saved = false;
        if (d && d->power == CL_POWER_SHUTDOWN) {
            cl_power_state p2;
            cl_error e2 = {0};
            (void)agent_driver_observe(a->drv, uuid, &p2, &saved, &e2);
        }
        if (d) {
            /* A resized instance keeps VERIFY_RESIZE while its power state holds. */
            pthread_mutex_lock(&a->state_lock);
            reported *rp = rep_find_locked(a, uuid);
            cl_vm_state vm = rp && rp->vm == CL_VM_RESIZED && rp->power == d->power
                                 ? CL_VM_RESIZED : vm_observed(d->power, saved);
            pthread_mutex_unlock(&a->state_lock);
            report(a, uuid, vm, d->power, NULL, true);
        }
        else
            report(a, uuid, CL_VM_ERROR, CL_POWER_NOSTATE,
                   "the instance's domain vanished from the hypervisor", true);
    }
    free(doms);
    free(recs);
    check_orphans(a);
}

static void *worker_main(void *arg)
{
    agent *a = arg;
    for (;;) {
        pthread_mutex_lock(&a->qlock);
        while (!a->qhead && !a->qstop)
            pthread_cond_wait(&a->qcond, &a->qlock);
        if (a->qstop) {
            pthread_mutex_unlock(&a->qlock);
            break;
        }
        job *j = a->qhead;
        a->qhead = j->next;
        if (!a->qhead)
            a->qtail = NULL;
        a->qlen--;
        if (j->kind == JOB_SYNC)
            a->sync_queued = false;
        if (j->kind == JOB_ADDRS)
            a->addrs_queued = false;
        if (j->kind == JOB_USAGE)
            a->usage_queued = false;
        pthread_mutex_unlock(&a->qlock);

        cl_log_set_request_id(j->req[0] ? j->req : NULL);
        switch (j->kind) {
        case JOB_SPAWN: do_spawn(a, &j->spec, j->define_only, j->moved); break;
        case JOB_DESTROY: do_destroy(a, j->uuid, j->moved); break;
        case JOB_SYNC: do_sync(a); break;
        case JOB_ACTION: do_action(a, &j->act); break;
        case JOB_ADDRS: do_addrs(a); break;
        case JOB_USAGE: do_usage(a); break;
        }
        refresh_running(a);
        cl_log_set_request_id(NULL);
        free(j);
    }
    return NULL;
}

/* ---- live migration hooks (migrate.h) ---- */

static int mig_send(void *ud, const char *type, json_object *body, bool reliable)
{
    agent *a = ud;
    pthread_mutex_lock(&a->state_lock);
    int r = a->bus ? cl_bus_send(a->bus, NULL, type, NULL, body, reliable, NULL) : -ESHUTDOWN;
    pthread_mutex_unlock(&a->state_lock);
    if (r < 0 && r == -ESHUTDOWN)
        json_object_put(body);
    return r;
}

/* The instance arrived here: keep its record and report it (its first report on this
 * host, like an adoption at start). */
static void mig_adopt(void *ud, const cl_msg_instance *spec)
{
    agent *a = ud;
    int r = rec_put(a, spec);
    if (r < 0)
        cl_warn(MOD, "instance %s: cannot record the migrated instance: %s", spec->uuid,
                strerror(-r));
    /* Billing keeps the running interval open across hosts (a "migrated" event splits
     * it; the "started" the first report sends is a no-op for a running instance), and
     * treats the new QEMU's counters as restarted from zero. */
    if (a->usage)
        agent_usage_event(a->usage, spec, CL_USAGE_EV_MIGRATED);
    report(a, spec->uuid, CL_VM_ACTIVE, CL_POWER_RUNNING, NULL, false);
    refresh_running(a);
}

/* The instance left: its domain is on another host, only the record goes. */
static void mig_forget(void *ud, const char *uuid)
{
    agent *a = ud;
    int r = rec_delete(a, uuid);
    if (r < 0)
        cl_warn(MOD, "instance %s: cannot drop local record: %s", uuid, strerror(-r));
    rep_forget(a, uuid);
    refresh_running(a);
}

/* Cold migration's source: stop the guest as the stop action does (ACPI shutdown, destroy
 * after the grace period); migrate.c owns the instance meanwhile, so its events and the
 * sync leave it alone. The stop is reported at once (billing's "stopped" must precede
 * the destination's "started"; the scheduler ignores the state, the instance is on the
 * destination by then). */
static int mig_stop(void *ud, const char *uuid, cl_error *err)
{
    agent *a = ud;
    int r = agent_driver_action(a->drv, uuid, CL_ACTION_STOP, NULL, err);
    if (r == 0)
        report(a, uuid, CL_VM_STOPPED, CL_POWER_SHUTDOWN, NULL, false);
    return r;
}

/* ---- bus handlers (bus thread) ---- */

static void on_spawn(agent *a, const cl_bus_msg *msg)
{
    cl_msg_instance spec;
    cl_error err = {0};

    if (cl_msg_spawn_decode(msg->body, &spec, &err) < 0) {
        /* Report against the uuid when there is one, so the instance does not sit in
         * BUILD forever; otherwise there is no one to tell. */
        const char *uuid = NULL;
        if (cl_json_get_str(msg->body, "instance.uuid", false, &uuid, NULL) == 0 && uuid &&
            cl_uuid_valid(uuid))
            report(a, uuid, CL_VM_ERROR, CL_POWER_NOSTATE, err.message, false);
        cl_warn(MOD, "bad instance.spawn from %s: %s", msg->from, err.message);
        return;
    }
    /* Image properties (Xen PV/HVM, LXC init) travel next to the spec; the driver keeps
     * them with the instance's files. */
    cl_msg_image_props props;
    bool has_props = false;
    if (cl_msg_spawn_get_image_props(msg->body, &props, &has_props, &err) < 0)
        cl_warn(MOD, "instance %s: ignoring image properties: %s", spec.uuid, err.message);
    else if (has_props && agent_driver_set_image_props(a->drv, spec.uuid, &props, &err) < 0)
        cl_warn(MOD, "instance %s: cannot keep image properties: %s", spec.uuid, err.message);
    int r = rec_put(a, &spec);
    if (r < 0) {
        char fault[256];
        snprintf(fault, sizeof(fault), "agent cannot record the instance: %s", strerror(-r));
        report(a, spec.uuid, CL_VM_ERROR, CL_POWER_NOSTATE, fault, false);
        return;
    }
    /* "power_on": false (cold migration of a stopped server): define, do not start. */
    bool power_on = true;
    (void)cl_json_get_bool(msg->body, "power_on", false, &power_on, NULL);
    job *j = job_new(JOB_SPAWN, spec.uuid);
    if (j) {
        j->spec = spec;
        j->define_only = !power_on;
        j->moved = json_object_object_get_ex(msg->body, "migration_uuid", NULL);
    }
    if (!j || job_push(a, j) < 0) {
        /* Nothing will run it: drop the record so a restart does not either. */
        rec_delete(a, spec.uuid);
        report(a, spec.uuid, CL_VM_ERROR, CL_POWER_NOSTATE, "agent busy", false);
    }
}

static void on_destroy(agent *a, const cl_bus_msg *msg)
{
    char uuid[CL_UUID_LEN];
    cl_error err = {0};

    if (cl_msg_uuid_decode(msg->body, uuid, &err) < 0) {
        cl_warn(MOD, "bad instance.destroy from %s: %s", msg->from, err.message);
        return;
    }
    /* Durable before the ack: a restart or the next sync finishes it if this job is
     * lost or the queue is full. */
    int r = rec_mark_deleting(a, uuid);
    if (r < 0)
        cl_warn(MOD, "instance %s: cannot mark deleting: %s", uuid, strerror(-r));
    job *j = job_new(JOB_DESTROY, uuid);
    if (j) /* "moved": the copy a cold move leaves behind; the instance lives on */
        (void)cl_json_get_bool(msg->body, "moved", false, &j->moved, NULL);
    if (!j || job_push(a, j) < 0)
        cl_warn(MOD, "instance %s: worker queue full; destroy left to the periodic sync",
                uuid);
}

static void on_action(agent *a, const cl_bus_msg *msg)
{
    cl_msg_action act;
    cl_error err = {0};

    if (cl_msg_action_decode(msg->body, &act, &err) < 0) {
        cl_warn(MOD, "bad instance.action from %s: %s", msg->from, err.message);
        return;
    }
    if (rec_live(a, act.instance_uuid) != 1) {
        cl_warn(MOD, "instance %s: %s for an instance this host does not run",
                act.instance_uuid, cl_action_name(act.action));
        return;
    }
    /* Durable before the ack: a restart redoes it (every action is idempotent). */
    int r = rec_set_action(a, act.instance_uuid, msg->body);
    if (r < 0)
        cl_warn(MOD, "instance %s: cannot record the action: %s", act.instance_uuid,
                strerror(-r));
    job *j = job_new(JOB_ACTION, act.instance_uuid);
    if (j)
        j->act = act;
    if (!j || job_push(a, j) < 0)
        cl_warn(MOD, "instance %s: worker queue full; %s left for the next start",
                act.instance_uuid, cl_action_name(act.action));
}

static void on_msg(cl_bus *bus, const cl_bus_msg *msg, void *ud)
{
    agent *a = ud;
    (void)bus;
    if (strcmp(msg->type, CL_MSG_INSTANCE_SPAWN) == 0)
        on_spawn(a, msg);
    else if (strcmp(msg->type, CL_MSG_INSTANCE_DESTROY) == 0)
        on_destroy(a, msg);
    else if (strcmp(msg->type, CL_MSG_INSTANCE_ACTION) == 0)
        on_action(a, msg);
    else if (agent_mig_on_msg(a->mig, msg))
        ;
    else
        cl_debug(MOD, "ignoring %s from %s", msg->type, msg->from);
}

static void on_tick(cl_bus *bus, void *ud)
{
    agent *a = ud;
    cl_msg_host h = a->info;
    h.running_vms = atomic_load(&a->running_vms);
    json_object *body = cl_msg_host_encode(&h, NULL, 0);
    if (body)
        cl_bus_send(bus, NULL, CL_MSG_HOST_HEARTBEAT, "", body, false, NULL);

    int64_t now = cl_now_ms();
    /* Cached images no instance used for [image] cache_max_idle_s go (a directory scan). */
    if (a->images)
        agent_image_cache_sweep(a->images, now);
    /* While a guest waits for its DHCP lease, look every tick. */
    if (a->usage && now >= a->next_sample_ms) {
        a->next_sample_ms = now + a->sample_every_ms;
        pthread_mutex_lock(&a->qlock);
        bool queued = a->usage_queued;
        pthread_mutex_unlock(&a->qlock);
        job *ju = queued ? NULL : job_new(JOB_USAGE, NULL);
        if (ju)
            (void)job_push(a, ju);
    }
    bool watch = false;
    pthread_mutex_lock(&a->state_lock);
    for (size_t i = 0; i < a->nrep && !watch; i++)
        watch = a->rep[i].addr_until_ms > now && !a->rep[i].addrs[0];
    pthread_mutex_unlock(&a->state_lock);
    if (watch) {
        pthread_mutex_lock(&a->qlock);
        bool queued = a->addrs_queued;
        pthread_mutex_unlock(&a->qlock);
        job *ja = queued ? NULL : job_new(JOB_ADDRS, NULL);
        if (ja)
            (void)job_push(a, ja);
    }

    if (++a->ticks % SYNC_EVERY_TICKS == 0) {
        pthread_mutex_lock(&a->qlock);
        bool queued = a->sync_queued;
        pthread_mutex_unlock(&a->qlock);
        job *j = queued ? NULL : job_new(JOB_SYNC, NULL);
        if (j)
            (void)job_push(a, j); /* full: the next tick tries again */
    }
}

/* ---- libvirt events (event thread) ---- */

static void on_event(const char *uuid, cl_power_state power, void *ud)
{
    agent *a = ud;
    atomic_fetch_add(&a->events, 1);
    /* Our own destroys stop domains too: those records are marked deleting first. An
     * action in progress reports its own outcome (a resize stops and starts the domain
     * on its way). */
    if (rec_live(a, uuid) != 1 || is_busy(a, uuid) || agent_mig_owns(a->mig, uuid))
        return;
    /* The event may be stale by now (events queue while the worker acts): report what
     * the domain is now, which also tells suspended (managed save) from stopped. */
    bool saved = false;
    cl_power_state now = power;
    cl_error e = {0};
    if (agent_driver_observe(a->drv, uuid, &now, &saved, &e) < 0)
        now = power;
    pthread_mutex_lock(&a->state_lock);
    reported *rp = rep_find_locked(a, uuid);
    bool resized = rp && rp->vm == CL_VM_RESIZED && rp->power == now;
    pthread_mutex_unlock(&a->state_lock);
    report(a, uuid, resized ? CL_VM_RESIZED : vm_observed(now, saved), now, NULL, true);
}

/* ---- HTTP ---- */

static void h_domains(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    agent *a = ud;
    agent_domain_info *v = NULL;
    size_t n = 0;
    cl_error err = {0};
    (void)req;

    if (agent_driver_list(a->drv, false, &v, &n, &err) < 0) {
        err.code = CL_E_UNAVAILABLE;
        cl_http_resp_error(resp, &err);
        return;
    }
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        json_object *d = json_object_new_object();
        json_object_object_add(d, "name", json_object_new_string(v[i].name));
        json_object_object_add(d, "uuid", json_object_new_string(v[i].uuid));
        json_object_object_add(d, "state",
                               json_object_new_string(cl_power_state_name(v[i].power)));
        json_object_object_add(d, "nube", json_object_new_boolean(v[i].nube));
        json_object_array_add(arr, d);
    }
    free(v);
    json_object *body = json_object_new_object();
    json_object_object_add(body, "domains", arr);
    cl_http_resp_json(resp, 200, body);
}

static void metrics(FILE *out, void *ud)
{
    agent *a = ud;
    agent_domain_info *v = NULL;
    size_t n = 0, by_state[CL_POWER_STATE_MAX] = {0};
    cl_error err = {0};

    fprintf(out, "# HELP nube_agent_orphan_domains domains that look like nube's but that "
            "nube does not manage (left alone).\n# TYPE nube_agent_orphan_domains gauge\n"
            "nube_agent_orphan_domains %lld\n", (long long)atomic_load(&a->orphans));
    fputs("# HELP nube_agent_domains nube domains in libvirt by power state.\n"
          "# TYPE nube_agent_domains gauge\n", out);
    if (agent_driver_list(a->drv, true, &v, &n, &err) == 0) {
        for (size_t i = 0; i < n; i++)
            if ((unsigned)v[i].power < CL_POWER_STATE_MAX)
                by_state[v[i].power]++;
        for (int s = 0; s < CL_POWER_STATE_MAX; s++)
            fprintf(out, "nube_agent_domains{state=\"%s\"} %zu\n",
                    cl_power_state_name((cl_power_state)s), by_state[s]);
    }
    free(v);

    pthread_mutex_lock(&a->qlock);
    size_t qlen = a->qlen;
    pthread_mutex_unlock(&a->qlock);
    fprintf(out,
            "# TYPE nube_agent_spawns_total counter\nnube_agent_spawns_total %llu\n"
            "# TYPE nube_agent_spawn_errors_total counter\nnube_agent_spawn_errors_total %llu\n"
            "# TYPE nube_agent_destroys_total counter\nnube_agent_destroys_total %llu\n"
            "# TYPE nube_agent_destroy_errors_total counter\n"
            "nube_agent_destroy_errors_total %llu\n"
            "# TYPE nube_agent_lifecycle_events_total counter\n"
            "nube_agent_lifecycle_events_total %llu\n"
            "# TYPE nube_agent_busy_total counter\nnube_agent_busy_total %llu\n"
            "# TYPE nube_agent_queue_length gauge\nnube_agent_queue_length %zu\n"
            "# TYPE nube_agent_libvirt_up gauge\nnube_agent_libvirt_up %d\n",
            (unsigned long long)atomic_load(&a->spawns),
            (unsigned long long)atomic_load(&a->spawn_errors),
            (unsigned long long)atomic_load(&a->destroys),
            (unsigned long long)atomic_load(&a->destroy_errors),
            (unsigned long long)atomic_load(&a->events),
            (unsigned long long)atomic_load(&a->busy), qlen,
            agent_driver_alive(a->drv) ? 1 : 0);

    if (a->images)
        fprintf(out, "# TYPE nube_agent_image_downloads_total counter\n"
                     "nube_agent_image_downloads_total %llu\n"
                     "# TYPE nube_agent_image_cache_hits_total counter\n"
                     "nube_agent_image_cache_hits_total %llu\n",
                (unsigned long long)agent_image_cache_downloads(a->images),
                (unsigned long long)agent_image_cache_hits(a->images));
    if (a->usage)
        fprintf(out, "# TYPE nube_agent_usage_samples_total counter\n"
                     "nube_agent_usage_samples_total %llu\n", agent_usage_sent(a->usage));

    cl_bus_stats bs;
    size_t pending = 0;
    pthread_mutex_lock(&a->state_lock);
    bool have_bus = a->bus != NULL;
    if (have_bus) {
        cl_bus_get_stats(a->bus, &bs);
        pending = cl_bus_pending(a->bus);
    }
    pthread_mutex_unlock(&a->state_lock);
    if (!have_bus)
        return;
    fprintf(out,
            "# TYPE nube_agent_bus_messages_total counter\n"
            "nube_agent_bus_messages_total{kind=\"sent\"} %" PRIu64 "\n"
            "nube_agent_bus_messages_total{kind=\"received\"} %" PRIu64 "\n"
            "nube_agent_bus_messages_total{kind=\"acked\"} %" PRIu64 "\n"
            "nube_agent_bus_messages_total{kind=\"resent\"} %" PRIu64 "\n"
            "nube_agent_bus_messages_total{kind=\"duplicates\"} %" PRIu64 "\n"
            "nube_agent_bus_messages_total{kind=\"dropped\"} %" PRIu64 "\n"
            "nube_agent_bus_messages_total{kind=\"bad_frames\"} %" PRIu64 "\n"
            "# TYPE nube_agent_bus_pending gauge\nnube_agent_bus_pending %zu\n",
            bs.sent, bs.received, bs.acked, bs.resent, bs.duplicates, bs.dropped,
            bs.bad_frames, pending);
}

static bool health(char *reason, size_t len, void *ud)
{
    agent *a = ud;
    if (!agent_driver_alive(a->drv)) {
        snprintf(reason, len, "libvirt connection to %s lost", agent_driver_uri(a->drv));
        return false;
    }
    return true;
}

/* Keep the last `lines` lines of buf[0..len) (all when lines < 0); returns the offset. */
static size_t tail_lines(const char *buf, size_t len, int64_t lines)
{
    if (lines < 0)
        return 0;
    size_t i = len;
    if (i > 0 && buf[i - 1] == '\n')
        i--; /* the final newline ends the last line, it does not start an empty one */
    int64_t seen = 0;
    while (i > 0) {
        if (buf[i - 1] == '\n' && ++seen == lines)
            return i;
        i--;
    }
    return lines == 0 ? len : 0;
}

/* GET /v1/instances/{uuid}/console?length=N: the last N lines (all: no length or -1) of
 * the serial console log, at most its last 100 KiB, as {"output": "..."}. Bytes that are
 * not printable ASCII, newline or tab become '?' (escape sequences from the firmware
 * would otherwise reach clients raw; Nova's clients expect text). The test driver writes
 * no log: the output is empty then. 404 for instances this host does not run. */
static void h_console(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    agent *a = ud;
    const char *uuid = cl_http_req_param(req, "uuid");
    const char *len_s = cl_http_req_query(req, "length");
    int64_t lines = -1;
    char path[4200];

    if (!uuid || !cl_uuid_valid(uuid) || rec_live(a, uuid) != 1) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Instance %.40s is not on this host.",
                            uuid ? uuid : "");
        return;
    }
    if (len_s && (cl_parse_int64(len_s, &lines) < 0 || lines < -1)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "length must be an integer >= -1");
        return;
    }
    snprintf(path, sizeof(path), "%s/%s/console.log", a->instances_dir, uuid);
    _cleanup_free_ char *buf = malloc(CONSOLE_MAX_BYTES + 1);
    size_t n = 0;
    if (!buf) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "out of memory");
        return;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        struct stat sb;
        off_t from = 0;
        if (fstat(fd, &sb) == 0 && sb.st_size > CONSOLE_MAX_BYTES)
            from = sb.st_size - CONSOLE_MAX_BYTES;
        while (n < CONSOLE_MAX_BYTES) {
            ssize_t got = pread(fd, buf + n, CONSOLE_MAX_BYTES - n, from + (off_t)n);
            if (got <= 0)
                break;
            n += (size_t)got;
        }
        close(fd);
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c == '\r')
            continue; /* serial lines end in CR LF */
        buf[k++] = c != '\n' && c != '\t' && (c < 0x20 || c > 0x7e) ? '?' : (char)c;
    }
    n = k;
    buf[n] = '\0';
    size_t off = tail_lines(buf, n, lines);
    json_object *body = json_object_new_object();
    json_object_object_add(body, "output", json_object_new_string_len(buf + off,
                                                                      (int)(n - off)));
    cl_http_resp_json(resp, 200, body);
}

/* GET /v1/migrations/{mid}/disk: a cold migration's disk, for its destination agent only
 * (migrate.h: the token of the move). */
static void h_mig_disk(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    agent *a = ud;
    agent_mig_serve_disk(a->mig, req, resp);
}

static const cl_http_route routes[] = {
    {"GET", "/v1/domains", h_domains},
    {"GET", "/v1/migrations/{mid}/disk", h_mig_disk},
    {"GET", "/v1/instances/{uuid}/console", h_console},
};

/* ---- start / stop ---- */

/* Host names end up in file names and bus routing ids. */
static bool host_name_ok(const char *h)
{
    if (!*h || h[0] == '.' || strlen(h) >= CL_HOST_MAX)
        return false;
    for (const char *p = h; *p; p++)
        if (*p == '/' || (unsigned char)*p < 0x21 || *p == 0x7f)
            return false;
    return true;
}

static int resolve_host(const agent_cfg *cfg, char out[CL_HOST_MAX], cl_error *err)
{
    if (cfg->host && *cfg->host) {
        cl_strlcpy(out, cfg->host, CL_HOST_MAX);
    } else {
        char buf[CL_HOST_MAX];
        if (gethostname(buf, sizeof(buf)) < 0)
            return cl_error_set(err, CL_E_INTERNAL, "gethostname: %s", strerror(errno)),
                   -errno;
        buf[sizeof(buf) - 1] = '\0';
        cl_strlcpy(out, buf, CL_HOST_MAX);
    }
    if (!host_name_ok(out))
        return cl_error_set(err, CL_E_BAD_REQUEST, "[agent] host '%s' is not a usable host "
                            "name (no '/', spaces, control characters or leading '.')",
                            out);
    return 0;
}

static int open_records(agent *a, const char *state_dir, cl_error *err)
{
    char path[4096];
    if (mkdir(state_dir, 0750) < 0 && errno != EEXIST)
        return cl_error_set(err, CL_E_INTERNAL, "cannot create state_dir %s: %s", state_dir,
                            strerror(errno)), -errno;
    if ((size_t)snprintf(path, sizeof(path), "%s/agent-%s.db", state_dir, a->host) >=
        sizeof(path))
        return cl_error_set(err, CL_E_INTERNAL, "state_dir path too long"), -ENAMETOOLONG;
    return cl_db_open(path, migrations, CL_ARRAY_SIZE(migrations), DB_BUSY_MS, &a->db, err);
}

/* Power state of every live record after reconcile, for host.register. */
typedef struct boot_instance {
    char uuid[CL_UUID_LEN];
    cl_power_state power_state;
    bool saved;                 /* managed save image: suspended */
} boot_instance;
typedef struct boot_state {
    boot_instance *v;
    size_t n;
} boot_state;

/* Bring libvirt in line with the records (see the file comment). Runs before the bus
 * and the worker exist; results are reported once the bus is up. */
static int reconcile(agent *a, boot_state *bs, cl_error *err)
{
    rec *recs = NULL;
    size_t nrecs = 0;
    agent_domain_info *doms = NULL;
    size_t ndoms = 0;
    int r = rec_list(a, &recs, &nrecs);
    if (r < 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot read local records: %s",
                            strerror(-r)), r;

    for (size_t i = 0; i < nrecs; i++) {
        cl_error e = {0};
        cl_power_state p;
        const char *uuid = recs[i].spec.uuid;
        if (recs[i].deleting)
            continue; /* destroyed by the first sync job, queued at start */
        if (agent_driver_state(a->drv, uuid, &p, &e) == -ENOENT) {
            if (agent_mig_marked(a->instances_dir, uuid)) {
                /* Migrating away when the agent stopped: it may run elsewhere now. */
                cl_info(MOD, "instance %s: domain missing during a migration; not "
                        "re-created", uuid);
                continue;
            }
            cl_info(MOD, "instance %s: domain missing, re-creating it", uuid);
            if (agent_driver_spawn(a->drv, &recs[i].spec, &e) < 0)
                cl_warn(MOD, "instance %s: re-create failed: %s", uuid, e.message);
        }
    }

    r = agent_driver_list(a->drv, true, &doms, &ndoms, err);
    if (r < 0)
        goto out;
    for (size_t k = 0; k < ndoms; k++) {
        bool known = false;
        for (size_t i = 0; i < nrecs && !known; i++)
            known = strcmp(recs[i].spec.uuid, doms[k].uuid) == 0;
        if (known)
            continue;
        cl_msg_instance spec;
        cl_error e = {0};
        if (agent_driver_metadata(a->drv, doms[k].uuid, &spec, &e) < 0 ||
            rec_put(a, &spec) < 0) {
            cl_warn(MOD, "domain %s: cannot adopt: %s", doms[k].name, e.message);
            continue;
        }
        cl_info(MOD, "instance %s: adopted domain %s", doms[k].uuid, doms[k].name);
    }
    free(recs);
    recs = NULL;

    /* The final picture, records as they now stand. */
    r = rec_list(a, &recs, &nrecs);
    if (r < 0)
        goto out;
    bs->v = nrecs ? calloc(nrecs, sizeof(*bs->v)) : NULL;
    bs->n = 0;
    if (nrecs && !bs->v) {
        r = cl_error_set(err, CL_E_INTERNAL, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nrecs; i++) {
        if (recs[i].deleting)
            continue;
        boot_instance *hi = &bs->v[bs->n++];
        cl_strlcpy(hi->uuid, recs[i].spec.uuid, sizeof(hi->uuid));
        hi->power_state = CL_POWER_NOSTATE;
        for (size_t k = 0; k < ndoms; k++)
            if (strcmp(doms[k].uuid, hi->uuid) == 0)
                hi->power_state = doms[k].power;
    }
out:
    free(doms);
    free(recs);
    return r;
}

/* Re-read power states after reconcile (re-created domains now run). */
static void refresh_boot_states(agent *a, boot_state *bs)
{
    for (size_t i = 0; i < bs->n; i++) {
        cl_error e = {0};
        cl_power_state p;
        bool saved = false;
        if (agent_driver_observe(a->drv, bs->v[i].uuid, &p, &saved, &e) == 0)
            bs->v[i].power_state = p;
        else
            bs->v[i].power_state = CL_POWER_NOSTATE;
        bs->v[i].saved = saved;
    }
}

static int start_http_server(agent *a, const agent_cfg *cfg, cl_error *err);

static int start_bus(agent *a, const agent_cfg *cfg, cl_error *err)
{
    char outbox[4096];
    if ((size_t)snprintf(outbox, sizeof(outbox), "%s/agent-%s-outbox.db",
                         cfg->common.state_dir, a->host) >= sizeof(outbox))
        return cl_error_set(err, CL_E_INTERNAL, "state_dir path too long"), -ENAMETOOLONG;
    cl_bus_opts o = {
        .role = CL_BUS_DEALER,
        .endpoint = cfg->scheduler_endpoint,
        .name = a->host,
        .resend_ms = (int)cfg->resend_ms,
        .outbox_path = outbox,
        .tick_ms = (int)cfg->heartbeat_interval_ms,
        .on_msg = on_msg,
        .on_tick = on_tick,
        .ud = a,
    };
    cl_bus *bus = NULL;
    cl_bus_keys keys;
    int r = cl_bus_keys_apply(&keys, cfg->curve_secret_key_file, cfg->curve_server_key_file,
                              true, &o, err);
    if (r == 0)
        r = cl_bus_new(&o, &bus, err);
    explicit_bzero(&keys, sizeof keys);
    if (r < 0)
        return r;
    pthread_mutex_lock(&a->state_lock);
    a->bus = bus;
    pthread_mutex_unlock(&a->state_lock);
    return 0;
}

static int start_http(agent *a, const agent_cfg *cfg, cl_error *err)
{
    if (cfg->http_port == 0)
        return 0;
    int r = start_http_server(a, cfg, err);
    if (r < 0)
        return r;
    /* The URL nube-api uses for console reads: a wildcard listen address is reached by
     * the host name. */
    const char *h = cfg->http_listen && *cfg->http_listen ? cfg->http_listen : "127.0.0.1";
    if (strcmp(h, "0.0.0.0") == 0 || strcmp(h, "::") == 0)
        h = a->host;
    snprintf(a->url, sizeof(a->url), strchr(h, ':') ? "http://[%s]:%u" : "http://%s:%u", h,
             (unsigned)cl_http_server_port(a->http));
    return 0;
}

static int start_http_server(agent *a, const agent_cfg *cfg, cl_error *err)
{
    cl_http_opts o = {
        .service = "agent",
        .bind_addr = cfg->http_listen && *cfg->http_listen ? cfg->http_listen : "127.0.0.1",
        .port = (uint16_t)cfg->http_port,
        .threads = 2,
        .routes = routes,
        .nroutes = CL_ARRAY_SIZE(routes),
        .ud = a,
        .metrics_fn = metrics,
        .health_fn = health,
    };
    return cl_http_server_start(&o, &a->http, err);
}

/* The optional capabilities of host.register the scheduler reads (sched.c
 * register_caps): cpu_arch, cpu_model, hypervisor_version. */
static int add_caps(agent *a, json_object *body)
{
    if (a->caps.cpu_arch[0] &&
        json_object_object_add(body, "cpu_arch", json_object_new_string(a->caps.cpu_arch)) < 0)
        return -ENOMEM;
    if (a->caps.cpu_model[0] &&
        json_object_object_add(body, "cpu_model",
                               json_object_new_string(a->caps.cpu_model)) < 0)
        return -ENOMEM;
    if (a->caps.hypervisor_version > 0 &&
        json_object_object_add(body, "hypervisor_version",
                               json_object_new_int64(a->caps.hypervisor_version)) < 0)
        return -ENOMEM;
    return 0;
}

/* Register, then one instance.state per instance (see the file comment). */
static void announce(agent *a, boot_state *bs)
{
    cl_msg_host_instance *hv = bs->n ? calloc(bs->n, sizeof(*hv)) : NULL;
    for (size_t i = 0; hv && i < bs->n; i++) {
        cl_strlcpy(hv[i].uuid, bs->v[i].uuid, sizeof(hv[i].uuid));
        hv[i].power_state = bs->v[i].power_state;
    }
    json_object *body = bs->n && !hv ? NULL : cl_msg_host_encode(&a->info, hv, bs->n);
    free(hv);
    if (body && a->url[0] && cl_msg_host_set_agent_url(body, a->url) < 0) {
        json_object_put(body);
        body = NULL;
    }
    if (body && add_caps(a, body) < 0) {
        json_object_put(body);
        body = NULL;
    }
    pthread_mutex_lock(&a->state_lock);
    int r = body ? cl_bus_send(a->bus, NULL, CL_MSG_HOST_REGISTER, NULL, body, true, NULL)
                 : -ENOMEM;
    pthread_mutex_unlock(&a->state_lock);
    if (r < 0)
        cl_warn(MOD, "cannot queue host.register: %s", strerror(-r));
    for (size_t i = 0; i < bs->n; i++) {
        cl_power_state p = bs->v[i].power_state;
        if (agent_mig_owns(a->mig, bs->v[i].uuid))
            continue; /* an unsettled migration (migrate.c): the scheduler asks both hosts */
        if (p == CL_POWER_NOSTATE)
            report(a, bs->v[i].uuid, CL_VM_ERROR, p,
                   "the instance's domain could not be re-created on agent start", false);
        else
            report(a, bs->v[i].uuid, vm_observed(p, bs->v[i].saved), p, NULL, false);
    }
}

static int fill_host_info(agent *a, const agent_cfg *cfg, cl_error *err)
{
    agent_capacity cap;
    int r = agent_driver_capacity(a->drv, &cap, err);
    if (r < 0)
        return r;
    memset(&a->info, 0, sizeof(a->info));
    cl_strlcpy(a->info.host, a->host, sizeof(a->info.host));
    cl_strlcpy(a->info.hypervisor_type, agent_driver_hv_name(a->drv),
               sizeof(a->info.hypervisor_type));
    cl_strlcpy(a->info.libvirt_uri, cfg->libvirt_uri, sizeof(a->info.libvirt_uri));
    a->info.vcpus = cfg->vcpus > 0 ? cfg->vcpus : cap.vcpus;
    a->info.ram_mb = cfg->ram_mb > 0 ? cfg->ram_mb : cap.ram_mb;
    a->info.disk_gb = cfg->disk_gb > 0 ? cfg->disk_gb : cap.disk_gb;
    cl_error cerr = {0};
    if (agent_driver_host_caps(a->drv, &a->caps, &cerr) < 0)
        cl_warn(MOD, "cannot read host capabilities: %s", cerr.message);
    else
        cl_info(MOD, "host %s: %s %" PRId64 ", %s %s", a->host, a->info.hypervisor_type,
                a->caps.hypervisor_version, a->caps.cpu_arch, a->caps.cpu_model);
    return 0;
}

/* Actions accepted by a previous run and not finished (killed mid-way): do them again. */
static void requeue_actions(agent *a)
{
    rec *recs = NULL;
    size_t n = 0;
    if (rec_list(a, &recs, &n) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        if (!recs[i].has_action || recs[i].deleting)
            continue;
        job *j = job_new(JOB_ACTION, recs[i].spec.uuid);
        if (!j)
            break;
        j->act = recs[i].act;
        cl_info(MOD, "instance %s: redoing %s accepted before the restart", j->uuid,
                cl_action_name(j->act.action));
        if (job_push(a, j) < 0)
            break;
    }
    free(recs);
}

int agent_start(const agent_cfg *cfg, agent **out, cl_error *err)
{
    agent_virt_type virt;
    boot_state bs = {NULL, 0};
    int r;

    if (agent_virt_type_parse(cfg->virt_type, &virt) < 0)
        return cl_error_set(err, CL_E_BAD_REQUEST, "[agent] virt_type '%s' is not one of "
                            "auto, kvm, qemu", cfg->virt_type ? cfg->virt_type : "");
    if (!cfg->common.state_dir || !*cfg->common.state_dir)
        return cl_error_set(err, CL_E_BAD_REQUEST, "[DEFAULT] state_dir is empty");

    agent *a = calloc(1, sizeof(*a));
    if (!a)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    pthread_mutex_init(&a->db_lock, NULL);
    pthread_mutex_init(&a->state_lock, NULL);
    pthread_mutex_init(&a->qlock, NULL);
    pthread_cond_init(&a->qcond, NULL);
    cl_strlcpy(a->instances_dir, cfg->instances_dir ? cfg->instances_dir : "",
               sizeof(a->instances_dir));
    if (cfg->image_dir && *cfg->image_dir)
        cl_strlcpy(a->image_dir, cfg->image_dir, sizeof(a->image_dir));
    else
        snprintf(a->image_dir, sizeof(a->image_dir), "%.4000s/images", cfg->common.state_dir);

    r = resolve_host(cfg, a->host, err);
    if (r < 0)
        goto fail;
    r = open_records(a, cfg->common.state_dir, err);
    if (r < 0)
        goto fail;

    if (cfg->image_endpoint && *cfg->image_endpoint) {
        char cdir[4200];
        snprintf(cdir, sizeof(cdir), "%.4000s/image-cache", cfg->common.state_dir);
        agent_image_cache_opts io = {.endpoint = cfg->image_endpoint,
                                     .token = cfg->image_token,
                                     .token_key_file = cfg->image_token_key_file,
                                     .cache_dir = cdir, .instances_dir = a->instances_dir,
                                     .max_idle_s = cfg->image_cache_max_idle_s};
        r = agent_image_cache_open(&io, &a->images, err);
        if (r < 0)
            goto fail;
        agent_image_cache_sweep(a->images, cl_now_ms());
    }
    agent_driver_opts dopts = {.uri = cfg->libvirt_uri, .virt_type = virt,
                               .instances_dir = a->instances_dir, .on_event = on_event,
                               .ud = a, .image_dir = a->image_dir, .images = a->images,
                               .network = cfg->network ? cfg->network : "",
                               .shutdown_timeout_s = (int)cfg->shutdown_timeout_s,
                               .live_resize = cfg->live_resize};
    a->live_resize = cfg->live_resize;
    r = agent_driver_open(&dopts, &a->drv, err);
    if (r < 0)
        goto fail;
    r = fill_host_info(a, cfg, err);
    if (r < 0)
        goto fail;
    r = reconcile(a, &bs, err);
    if (r < 0)
        goto fail;
    refresh_boot_states(a, &bs);
    check_orphans(a);
    refresh_running(a);
    a->info.running_vms = atomic_load(&a->running_vms);

    if (cfg->billing_endpoint && *cfg->billing_endpoint) {
        char ob[4200];
        snprintf(ob, sizeof(ob), "%.4000s/agent-%.150s-usage-outbox.db", cfg->common.state_dir,
                 a->host);
        r = agent_usage_start(cfg->billing_endpoint, a->host, ob, (int)cfg->resend_ms,
                              cfg->curve_secret_key_file,
                              cfg->billing_curve_server_key_file, &a->usage, err);
        if (r < 0)
            goto fail;
        a->sample_every_ms = cfg->sample_interval_s * 1000;
        a->next_sample_ms = cl_now_ms() + a->sample_every_ms;
    }
    char mig_cache[4200] = "";
    if (a->images)
        snprintf(mig_cache, sizeof(mig_cache), "%.4000s/image-cache", cfg->common.state_dir);
    agent_mig_opts mo = {
        .libvirt_uri = cfg->libvirt_uri, .instances_dir = a->instances_dir,
        .image_dir = a->image_dir, .images = a->images, .cache_dir = mig_cache,
        .migration_uri = cfg->migration_uri,
        .migration_address = cfg->migration_address,
        .max_downtime_ms = cfg->migration_max_downtime_ms,
        .timeout_s = cfg->migration_timeout_s,
        .force_on_timeout = cfg->migration_timeout_action &&
                            strcmp(cfg->migration_timeout_action, "force_complete") == 0,
        .auto_converge = cfg->migration_auto_converge,
        .post_copy = cfg->migration_post_copy,
        .progress_ms = 500};
    agent_mig_hooks mh = {.ud = a, .send = mig_send, .adopt = mig_adopt,
                          .forget = mig_forget, .stop = mig_stop};
    r = agent_mig_new(&mo, &mh, &a->mig, err);
    if (r < 0)
        goto fail;
    /* HTTP before the bus: host.register carries its URL. */
    r = start_http(a, cfg, err);
    if (r < 0)
        goto fail;
    r = start_bus(a, cfg, err);
    if (r < 0)
        goto fail;
    r = pthread_create(&a->worker, NULL, worker_main, a);
    if (r != 0) {
        cl_error_set(err, CL_E_INTERNAL, "cannot start the worker thread: %s", strerror(r));
        r = -r;
        goto fail;
    }
    a->worker_started = true;
    announce(a, &bs);
    /* Finish destroys a previous run accepted but did not complete. */
    job *j = job_new(JOB_SYNC, NULL);
    if (j)
        (void)job_push(a, j);
    requeue_actions(a);

    cl_info(MOD, "host %s up: %s (%s), %" PRId64 " vCPUs, %" PRId64 " MB, %" PRId64
            " GB, %zu instances", a->host, agent_driver_uri(a->drv), a->info.hypervisor_type,
            a->info.vcpus, a->info.ram_mb, a->info.disk_gb, bs.n);
    free(bs.v);
    *out = a;
    return 0;

fail:
    free(bs.v);
    agent_stop(a);
    return r;
}

void agent_stop(agent *a)
{
    if (!a)
        return;
    cl_http_server_stop(a->http);
    a->http = NULL;

    if (a->worker_started) {
        pthread_mutex_lock(&a->qlock);
        a->qstop = true;
        pthread_cond_broadcast(&a->qcond);
        pthread_mutex_unlock(&a->qlock);
        pthread_join(a->worker, NULL);
    }

    /* Migrations abort (the guest stays here) and report before the bus goes. */
    agent_mig_free(a->mig);
    a->mig = NULL;

    pthread_mutex_lock(&a->state_lock);
    cl_bus *bus = a->bus;
    a->bus = NULL;
    pthread_mutex_unlock(&a->state_lock);
    cl_bus_free(bus); /* joins the bus thread: no handler runs after this */

    /* Events may still arrive until the driver is closed; report() drops them now. */
    agent_driver_free(a->drv);
    agent_image_cache_free(a->images); /* after the worker: no spawn uses it now */
    agent_usage_stop(a->usage);

    for (job *j = a->qhead, *next; j; j = next) {
        next = j->next;
        free(j);
    }
    cl_db_close(a->db);
    free(a->rep);
    pthread_cond_destroy(&a->qcond);
    pthread_mutex_destroy(&a->qlock);
    pthread_mutex_destroy(&a->state_lock);
    pthread_mutex_destroy(&a->db_lock);
    free(a);
}

uint16_t agent_http_port(const agent *a)
{
    return a->http ? cl_http_server_port(a->http) : 0;
}

const char *agent_host(const agent *a)
{
    return a->host;
}
