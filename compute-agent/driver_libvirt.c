/*
 * driver_libvirt.c - the agent driver over libvirt (see driver.h for the contract).
 *
 * Process-wide pieces, set up once:
 *  - virSetErrorFunc() routes libvirt's own error printing to cl_debug: libvirt reports
 *    every failure on stderr by default, including expected ones (VIR_ERR_NO_DOMAIN when
 *    destroy finds nothing). Errors that matter are returned as cl_error by the
 *    functions below, built from virGetLastErrorMessage() (thread-local).
 *  - virEventRegisterDefaultImpl() must precede the first virConnectOpen so that the
 *    connection can deliver domain events and keepalives; the loop itself runs in one
 *    thread (virEventRunDefaultImpl) while any driver is open. libvirt offers no way to
 *    unregister the implementation, so registration happens once per process, and the
 *    thread is started/stopped with a refcount (tests open several drivers in a row).
 *
 * Per driver: one virConnectPtr guarded by a mutex. Callers borrow it with
 * conn_get(), which takes a reference (virConnectRef) so a reopen by another thread
 * never frees a connection in use. The close callback only marks the connection lost
 * (it runs on the event thread, where tearing the connection down is not allowed);
 * the next conn_get() reopens it and registers the callbacks again.
 */
#include "driver.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "cleanup.h"
#include "log.h"
#include "util.h"

#define MOD "agent.driver"

/* Seconds between keepalive probes, and unanswered probes before the connection is
 * declared dead (libvirt then closes it and our close callback fires). */
#define KEEPALIVE_INTERVAL_S 5
#define KEEPALIVE_COUNT 3

struct agent_driver {
    char *uri;
    char *instances_dir;
    agent_virt_type virt;
    agent_hv_type hv;
    char hv_name[32];
    agent_driver_event_fn on_event;
    void *ud;

    pthread_mutex_t lock;   /* guards conn and event_id */
    virConnectPtr conn;
    int event_id;           /* lifecycle callback id, -1 when none */
    atomic_bool lost;       /* set by the close callback */
};

/* ---- cleanup helpers for libvirt types ---- */

static void dom_freep(virDomainPtr *d)
{
    if (*d)
        virDomainFree(*d);
}
#define _cleanup_dom_ _cleanup_(dom_freep)

static void conn_unrefp(virConnectPtr *c)
{
    if (*c)
        virConnectClose(*c);
}
#define _cleanup_conn_ _cleanup_(conn_unrefp)

/* ---- process-wide: error routing and the event loop ---- */

static pthread_once_t lv_once = PTHREAD_ONCE_INIT;
static int lv_once_rc;

static pthread_mutex_t ev_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned ev_users;
static pthread_t ev_thread;
static atomic_bool ev_quit;

static void lv_error_func(void *ud, virErrorPtr e)
{
    (void)ud;
    cl_debug("agent.libvirt", "%s", e && e->message ? e->message : "(no message)");
}

static void lv_init_once(void)
{
    virSetErrorFunc(NULL, lv_error_func);
    lv_once_rc = virEventRegisterDefaultImpl();
}

static void *ev_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&ev_quit)) {
        if (virEventRunDefaultImpl() < 0) {
            /* Only fails when the poll set itself is broken: spinning would not help. */
            cl_warn(MOD, "libvirt event loop failed: %s", virGetLastErrorMessage());
            break;
        }
    }
    return NULL;
}

/* A zero timeout fires on the next iteration, which is how the loop is woken to see
 * ev_quit; it removes itself so it fires once. */
static void ev_wake_cb(int timer, void *opaque)
{
    (void)opaque;
    virEventRemoveTimeout(timer);
}

static int ev_acquire(cl_error *err)
{
    pthread_once(&lv_once, lv_init_once);
    if (lv_once_rc < 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot register libvirt's event loop: %s",
                            virGetLastErrorMessage()), -EIO;

    pthread_mutex_lock(&ev_lock);
    if (ev_users == 0) {
        atomic_store(&ev_quit, false);
        int r = pthread_create(&ev_thread, NULL, ev_main, NULL);
        if (r != 0) {
            pthread_mutex_unlock(&ev_lock);
            cl_error_set(err, CL_E_INTERNAL, "cannot start the libvirt event thread: %s",
                         strerror(r));
            return -r;
        }
    }
    ev_users++;
    pthread_mutex_unlock(&ev_lock);
    return 0;
}

static void ev_release(void)
{
    pthread_mutex_lock(&ev_lock);
    if (ev_users > 0 && --ev_users == 0) {
        atomic_store(&ev_quit, true);
        if (virEventAddTimeout(0, ev_wake_cb, NULL, NULL) < 0)
            cl_warn(MOD, "cannot wake the libvirt event thread: %s", virGetLastErrorMessage());
        pthread_join(ev_thread, NULL);
    }
    pthread_mutex_unlock(&ev_lock);
}

/* ---- small helpers ---- */

/* Fill err with what libvirt said about the failed call `what`; returns -EIO. */
static int lv_fail(cl_error *err, const char *what)
{
    cl_error_set(err, CL_E_INTERNAL, "%s: %s", what, virGetLastErrorMessage());
    return -EIO;
}

/* Nova's mapping (nova/virt/libvirt/driver.py LIBVIRT_POWER_STATE): a domain being
 * shut down already counts as SHUTDOWN, a blocked one as RUNNING. */
static cl_power_state power_of(int st)
{
    switch (st) {
    case VIR_DOMAIN_RUNNING:
    case VIR_DOMAIN_BLOCKED: return CL_POWER_RUNNING;
    case VIR_DOMAIN_PAUSED: return CL_POWER_PAUSED;
    case VIR_DOMAIN_SHUTDOWN:
    case VIR_DOMAIN_SHUTOFF: return CL_POWER_SHUTDOWN;
    case VIR_DOMAIN_CRASHED: return CL_POWER_CRASHED;
    case VIR_DOMAIN_PMSUSPENDED: return CL_POWER_SUSPENDED;
    default: return CL_POWER_NOSTATE;
    }
}

/* True when the domain carries our metadata element. Our domains are all named
 * instance-<uuid>; checking the name first spares an RPC (and a libvirt error) for
 * every foreign domain. */
static bool dom_is_nube(virDomainPtr dom)
{
    const char *name = virDomainGetName(dom);
    if (!name || strncmp(name, "instance-", 9) != 0)
        return false;
    char *md = virDomainGetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT, NUBE_XMLNS, 0);
    bool yes = md != NULL;
    free(md);
    if (!yes)
        virResetLastError(); /* VIR_ERR_NO_DOMAIN_METADATA is the normal "no" */
    return yes;
}

/* ---- callbacks (event thread) ---- */

static int lifecycle_cb(virConnectPtr conn, virDomainPtr dom, int event, int detail,
                        void *opaque)
{
    agent_driver *drv = opaque;
    cl_power_state power;
    char uuid[VIR_UUID_STRING_BUFLEN];
    (void)conn;

    switch (event) {
    case VIR_DOMAIN_EVENT_STARTED:
    case VIR_DOMAIN_EVENT_RESUMED: power = CL_POWER_RUNNING; break;
    case VIR_DOMAIN_EVENT_SUSPENDED: power = CL_POWER_PAUSED; break;
    case VIR_DOMAIN_EVENT_STOPPED:
        power = detail == VIR_DOMAIN_EVENT_STOPPED_CRASHED ? CL_POWER_CRASHED
                                                           : CL_POWER_SHUTDOWN;
        break;
    case VIR_DOMAIN_EVENT_CRASHED: power = CL_POWER_CRASHED; break;
    case VIR_DOMAIN_EVENT_PMSUSPENDED: power = CL_POWER_SUSPENDED; break;
    default: return 0; /* defined, undefined, shutting down: no new power state */
    }
    if (!drv->on_event || virDomainGetUUIDString(dom, uuid) < 0 || !dom_is_nube(dom))
        return 0;
    cl_debug(MOD, "domain %s: lifecycle event %d/%d -> %s", uuid, event, detail,
             cl_power_state_name(power));
    drv->on_event(uuid, power, drv->ud);
    return 0;
}

static void close_cb(virConnectPtr conn, int reason, void *opaque)
{
    agent_driver *drv = opaque;
    (void)conn;
    static const char *const reasons[] = {"error", "end of file", "keepalive timeout",
                                          "client request"};
    const char *why = reason >= 0 && reason < (int)CL_ARRAY_SIZE(reasons) ? reasons[reason]
                                                                         : "unknown";
    if (reason != VIR_CONNECT_CLOSE_REASON_CLIENT)
        cl_warn(MOD, "connection to %s lost (%s); reopening on next use", drv->uri, why);
    atomic_store(&drv->lost, true);
}

/* ---- connection management (drv->lock held) ---- */

static void conn_teardown_locked(agent_driver *drv)
{
    if (!drv->conn)
        return;
    if (drv->event_id >= 0)
        virConnectDomainEventDeregisterAny(drv->conn, drv->event_id);
    drv->event_id = -1;
    virConnectUnregisterCloseCallback(drv->conn, close_cb);
    virConnectClose(drv->conn);
    drv->conn = NULL;
}

static int conn_open_locked(agent_driver *drv, cl_error *err)
{
    virConnectPtr c = virConnectOpen(drv->uri);
    if (!c)
        return lv_fail(err, "cannot connect to libvirt");

    /* 1 = keepalive unsupported (local drivers such as test:///): nothing to probe. */
    if (virConnectSetKeepAlive(c, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT) < 0)
        cl_debug(MOD, "keepalive not enabled: %s", virGetLastErrorMessage());
    if (virConnectRegisterCloseCallback(c, close_cb, drv, NULL) < 0)
        cl_debug(MOD, "no close callback: %s", virGetLastErrorMessage());
    drv->event_id = virConnectDomainEventRegisterAny(
        c, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE, VIR_DOMAIN_EVENT_CALLBACK(lifecycle_cb), drv,
        NULL);
    if (drv->event_id < 0)
        cl_warn(MOD, "no domain lifecycle events from %s (%s); relying on periodic sync",
                drv->uri, virGetLastErrorMessage());
    drv->conn = c;
    atomic_store(&drv->lost, false);
    return 0;
}

/* Borrow the connection (reopening it first if it was lost). Release with
 * virConnectClose (use _cleanup_conn_). */
static int conn_get(agent_driver *drv, virConnectPtr *out, cl_error *err)
{
    int r = 0;
    pthread_mutex_lock(&drv->lock);
    if (atomic_load(&drv->lost) || !drv->conn) {
        conn_teardown_locked(drv);
        r = conn_open_locked(drv, err);
        if (r == 0)
            cl_info(MOD, "reconnected to %s", drv->uri);
    }
    if (r == 0) {
        virConnectRef(drv->conn);
        *out = drv->conn;
    }
    pthread_mutex_unlock(&drv->lock);
    return r;
}

/* Look a domain up by uuid: 0, -ENOENT when absent, -EIO with err otherwise. */
static int lookup(virConnectPtr c, const char *uuid, virDomainPtr *out, cl_error *err)
{
    virDomainPtr d = virDomainLookupByUUIDString(c, uuid);
    if (d) {
        *out = d;
        return 0;
    }
    if (virGetLastErrorCode() == VIR_ERR_NO_DOMAIN) {
        virResetLastError();
        return -ENOENT;
    }
    return lv_fail(err, "cannot look up domain");
}

/* ---- public API ---- */

int agent_driver_open(const agent_driver_opts *opts, agent_driver **out, cl_error *err)
{
    int r;

    if (!opts || !opts->uri || !*opts->uri || !opts->instances_dir || !*opts->instances_dir)
        return cl_error_set(err, CL_E_INTERNAL, "driver needs a libvirt URI and an "
                                                "instances_dir");
    r = ev_acquire(err);
    if (r < 0)
        return r;

    agent_driver *drv = calloc(1, sizeof(*drv));
    if (!drv) {
        ev_release();
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    }
    drv->uri = strdup(opts->uri);
    drv->instances_dir = strdup(opts->instances_dir);
    drv->virt = opts->virt_type;
    drv->on_event = opts->on_event;
    drv->ud = opts->ud;
    drv->event_id = -1;
    pthread_mutex_init(&drv->lock, NULL);
    if (!drv->uri || !drv->instances_dir) {
        r = cl_error_set(err, CL_E_INTERNAL, "out of memory");
        goto fail;
    }

    pthread_mutex_lock(&drv->lock);
    r = conn_open_locked(drv, err);
    pthread_mutex_unlock(&drv->lock);
    if (r < 0)
        goto fail;

    const char *type = virConnectGetType(drv->conn);
    if (!type) {
        r = lv_fail(err, "cannot read the hypervisor type");
        goto fail;
    }
    if (agent_hv_from_libvirt(type, &drv->hv) < 0) {
        r = -ENOTSUP;
        cl_error_set(err, CL_E_NOT_IMPLEMENTED, "libvirt URI %s is a '%s' hypervisor, "
                     "which nube does not drive (QEMU, Xen, LXC, Test)", drv->uri, type);
        goto fail;
    }
    /* libvirt spells the test driver "TEST"; report the canonical spellings. */
    static const char *const canonical[AGENT_HV_MAX] = {
        [AGENT_HV_TEST] = "Test", [AGENT_HV_QEMU] = "QEMU", [AGENT_HV_XEN] = "Xen",
        [AGENT_HV_LXC] = "LXC"};
    cl_strlcpy(drv->hv_name, canonical[drv->hv], sizeof(drv->hv_name));
    cl_debug(MOD, "connected to %s (%s)", drv->uri, drv->hv_name);
    *out = drv;
    return 0;

fail:
    agent_driver_free(drv);
    return r;
}

void agent_driver_free(agent_driver *drv)
{
    if (!drv)
        return;
    pthread_mutex_lock(&drv->lock);
    conn_teardown_locked(drv);
    pthread_mutex_unlock(&drv->lock);
    /* Only after the loop stopped can no callback hold drv any more. */
    ev_release();
    pthread_mutex_destroy(&drv->lock);
    free(drv->uri);
    free(drv->instances_dir);
    free(drv);
}

agent_hv_type agent_driver_hv(const agent_driver *drv)
{
    return drv->hv;
}

const char *agent_driver_hv_name(const agent_driver *drv)
{
    return drv->hv_name;
}

const char *agent_driver_uri(const agent_driver *drv)
{
    return drv->uri;
}

bool agent_driver_alive(agent_driver *drv)
{
    return !atomic_load(&drv->lost);
}

/* statvfs of path, or of its nearest existing parent (instances_dir may not exist yet
 * on a fresh host, the filesystem it will live on does). */
static int statvfs_nearest(const char *path, struct statvfs *out)
{
    char buf[4096];
    if (cl_strlcpy(buf, path, sizeof(buf)) >= sizeof(buf))
        return -ENAMETOOLONG;
    for (;;) {
        if (statvfs(buf, out) == 0)
            return 0;
        if (errno != ENOENT && errno != ENOTDIR)
            return -errno;
        char *slash = strrchr(buf, '/');
        if (!slash)
            return -ENOENT;
        if (slash == buf) {
            if (buf[1] == '\0')
                return -ENOENT;
            buf[1] = '\0';
        } else {
            *slash = '\0';
        }
    }
}

int agent_driver_capacity(agent_driver *drv, agent_capacity *out, cl_error *err)
{
    _cleanup_conn_ virConnectPtr c = NULL;
    virNodeInfo info;
    struct statvfs vfs;
    int r = conn_get(drv, &c, err);
    if (r < 0)
        return r;

    if (virNodeGetInfo(c, &info) < 0)
        return lv_fail(err, "cannot read node info");
    r = statvfs_nearest(drv->instances_dir, &vfs);
    if (r < 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot statvfs %s: %s", drv->instances_dir,
                            strerror(-r)), r;
    out->vcpus = info.cpus;
    out->ram_mb = (int64_t)(info.memory / 1024); /* KiB */
    out->disk_gb = (int64_t)(((unsigned long long)vfs.f_blocks * vfs.f_frsize) >> 30);
    return 0;
}

int agent_driver_list(agent_driver *drv, bool nube_only, agent_domain_info **out,
                      size_t *out_n, cl_error *err)
{
    _cleanup_conn_ virConnectPtr c = NULL;
    virDomainPtr *doms = NULL;
    int r = conn_get(drv, &c, err);
    if (r < 0)
        return r;

    int n = virConnectListAllDomains(c, &doms, 0);
    if (n < 0)
        return lv_fail(err, "cannot list domains");

    agent_domain_info *v = n > 0 ? calloc((size_t)n, sizeof(*v)) : NULL;
    size_t k = 0;
    if (n > 0 && !v) {
        r = cl_error_set(err, CL_E_INTERNAL, "out of memory");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        agent_domain_info *d = &v[k];
        int st = VIR_DOMAIN_NOSTATE;
        const char *name = virDomainGetName(doms[i]);

        d->nube = dom_is_nube(doms[i]);
        if (nube_only && !d->nube)
            continue;
        cl_strlcpy(d->name, name ? name : "", sizeof(d->name));
        if (virDomainGetUUIDString(doms[i], d->uuid) < 0)
            continue;
        /* A domain can vanish between the listing and this call: report nostate. */
        if (virDomainGetState(doms[i], &st, NULL, 0) < 0)
            virResetLastError();
        d->power = power_of(st);
        k++;
    }
    *out = k > 0 ? TAKE_PTR(v) : NULL;
    *out_n = k;
out:
    free(v);
    for (int i = 0; i < n; i++)
        virDomainFree(doms[i]);
    free(doms);
    return r;
}

/* mkdir -p for the instance directory (real hypervisors read the disk and write the
 * console log there; the test driver touches no file). */
static int make_instance_dir(const char *dir, const char *uuid, cl_error *err)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, uuid) >= sizeof(path))
        return cl_error_set(err, CL_E_INTERNAL, "instances_dir path too long"), -ENAMETOOLONG;
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            goto fail;
        *p = '/';
    }
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        goto fail;
    return 0;
fail:;
    int e = errno;
    cl_error_set(err, CL_E_INTERNAL, "cannot create %s: %s", path, strerror(e));
    return -e;
}

/* Remove the files make_instance_dir's owner put there, by name only (never recursive:
 * a wrong instances_dir must not be able to delete anything else). */
static void remove_instance_dir(const char *dir, const char *uuid)
{
    static const char *const files[] = {"console.log", "disk"};
    char path[4096];
    for (size_t i = 0; i < CL_ARRAY_SIZE(files); i++) {
        snprintf(path, sizeof(path), "%s/%s/%s", dir, uuid, files[i]);
        if (unlink(path) < 0 && errno != ENOENT)
            cl_debug(MOD, "unlink %s: %s", path, strerror(errno));
    }
    snprintf(path, sizeof(path), "%s/%s", dir, uuid);
    if (rmdir(path) < 0 && errno != ENOENT)
        cl_debug(MOD, "rmdir %s: %s", path, strerror(errno));
}

/* Define the domain of inst; *out receives it. */
static int define_domain(agent_driver *drv, virConnectPtr c, const cl_msg_instance *inst,
                         virDomainPtr *out, cl_error *err)
{
    _cleanup_free_ char *xml = NULL;
    int r = agent_domain_xml(inst, drv->hv, drv->virt, drv->instances_dir, &xml, err);
    if (r < 0)
        return r;
    if (drv->hv != AGENT_HV_TEST) {
        r = make_instance_dir(drv->instances_dir, inst->uuid, err);
        if (r < 0)
            return r;
    }
    virDomainPtr d = virDomainDefineXML(c, xml);
    if (!d)
        return lv_fail(err, "cannot define domain");
    *out = d;
    return 0;
}

int agent_driver_spawn(agent_driver *drv, const cl_msg_instance *inst, cl_error *err)
{
    _cleanup_conn_ virConnectPtr c = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    int st = VIR_DOMAIN_NOSTATE;
    int r;

    if (!cl_uuid_valid(inst->uuid))
        return cl_error_set(err, CL_E_BAD_REQUEST, "instance uuid is not a UUID");
    r = conn_get(drv, &c, err);
    if (r < 0)
        return r;

    r = lookup(c, inst->uuid, &dom, err);
    if (r == -ENOENT)
        r = define_domain(drv, c, inst, &dom, err);
    else if (r == 0 && !dom_is_nube(dom))
        return cl_error_set(err, CL_E_CONFLICT, "a domain with uuid %s exists and is not "
                            "managed by nube", inst->uuid), -EEXIST;
    if (r < 0)
        return r;

    if (virDomainGetState(dom, &st, NULL, 0) < 0)
        return lv_fail(err, "cannot read domain state");
    switch (st) {
    case VIR_DOMAIN_RUNNING:
    case VIR_DOMAIN_BLOCKED:
        return 0; /* already what was asked */
    case VIR_DOMAIN_PAUSED:
        if (virDomainResume(dom) < 0)
            return lv_fail(err, "cannot resume domain");
        return 0;
    default:
        if (virDomainCreate(dom) < 0)
            return lv_fail(err, "cannot start domain");
        return 0;
    }
}

/* Undefine, tolerating a domain that was transient (gone once destroyed) and drivers
 * that do not know the flags. */
static int undefine(virDomainPtr dom, cl_error *err)
{
    unsigned flags = VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
    if (virDomainUndefineFlags(dom, flags) == 0)
        return 0;
    int code = virGetLastErrorCode();
    if (code == VIR_ERR_NO_DOMAIN || code == VIR_ERR_OPERATION_INVALID) {
        /* transient domain: destroy already removed it */
        virResetLastError();
        return 0;
    }
    if (virDomainUndefine(dom) == 0)
        return 0;
    if (virGetLastErrorCode() == VIR_ERR_NO_DOMAIN) {
        virResetLastError();
        return 0;
    }
    return lv_fail(err, "cannot undefine domain");
}

int agent_driver_destroy(agent_driver *drv, const char *uuid, cl_error *err)
{
    _cleanup_conn_ virConnectPtr c = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    int r;

    if (!cl_uuid_valid(uuid))
        return cl_error_set(err, CL_E_BAD_REQUEST, "instance uuid is not a UUID");
    r = conn_get(drv, &c, err);
    if (r < 0)
        return r;
    r = lookup(c, uuid, &dom, err);
    if (r == -ENOENT)
        return 0; /* idempotent: nothing to destroy */
    if (r < 0)
        return r;
    if (!dom_is_nube(dom))
        return cl_error_set(err, CL_E_FORBIDDEN, "domain %s is not managed by nube", uuid),
               -EPERM;

    if (virDomainIsActive(dom) == 1 && virDomainDestroy(dom) < 0) {
        /* It may have stopped by itself meanwhile; only a still-running domain is an
         * error. */
        if (virDomainIsActive(dom) == 1)
            return lv_fail(err, "cannot destroy domain");
        virResetLastError();
    }
    r = undefine(dom, err);
    if (r < 0)
        return r;
    if (drv->hv != AGENT_HV_TEST)
        remove_instance_dir(drv->instances_dir, uuid);
    return 0;
}

int agent_driver_state(agent_driver *drv, const char *uuid, cl_power_state *out,
                       cl_error *err)
{
    _cleanup_conn_ virConnectPtr c = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    int st;
    int r = conn_get(drv, &c, err);
    if (r < 0)
        return r;
    r = lookup(c, uuid, &dom, err);
    if (r < 0)
        return r;
    if (virDomainGetState(dom, &st, NULL, 0) < 0) {
        if (virGetLastErrorCode() == VIR_ERR_NO_DOMAIN) {
            virResetLastError();
            return -ENOENT;
        }
        return lv_fail(err, "cannot read domain state");
    }
    *out = power_of(st);
    return 0;
}

int agent_driver_metadata(agent_driver *drv, const char *uuid, cl_msg_instance *out,
                          cl_error *err)
{
    _cleanup_conn_ virConnectPtr c = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    int r = conn_get(drv, &c, err);
    if (r < 0)
        return r;
    r = lookup(c, uuid, &dom, err);
    if (r < 0)
        return r;
    _cleanup_free_ char *md =
        virDomainGetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT, NUBE_XMLNS, 0);
    if (!md) {
        if (virGetLastErrorCode() == VIR_ERR_NO_DOMAIN_METADATA) {
            virResetLastError();
            return -ENOENT;
        }
        return lv_fail(err, "cannot read domain metadata");
    }
    return agent_metadata_parse(md, out, err);
}
