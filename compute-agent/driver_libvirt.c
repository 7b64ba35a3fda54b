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
#include "image_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/inotify.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "cleanup.h"
#include "json.h"
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

    /* Lifecycle events wake waiters (stop waits for the domain to shut off). */
    pthread_mutex_t ev_mu;
    pthread_cond_t ev_cond;
    unsigned long ev_seq;

    /* QEMU hosts */
    char *image_dir;        /* "" = none */
    struct agent_image_cache *images; /* NULL = image_dir only */
    char *network;          /* "" = user-mode NIC */
    bool user_net;          /* the network could not be used: user-mode NIC */
    char net_mode[300];
    int shutdown_timeout_s;
    bool live_resize;       /* define domains with headroom (driver.h) */
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

    pthread_mutex_lock(&drv->ev_mu);
    drv->ev_seq++;
    pthread_cond_broadcast(&drv->ev_cond);
    pthread_mutex_unlock(&drv->ev_mu);

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

static void resolve_virt(agent_driver *drv);
static void ensure_network(agent_driver *drv);

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
    pthread_mutex_init(&drv->ev_mu, NULL);
    pthread_cond_init(&drv->ev_cond, NULL);
    drv->image_dir = strdup(opts->image_dir ? opts->image_dir : "");
    drv->images = opts->images;
    drv->network = strdup(opts->network ? opts->network : "");
    drv->shutdown_timeout_s = opts->shutdown_timeout_s > 0 ? opts->shutdown_timeout_s : 60;
    drv->live_resize = opts->live_resize;
    cl_strlcpy(drv->net_mode, "none", sizeof(drv->net_mode));
    if (!drv->uri || !drv->instances_dir || !drv->image_dir || !drv->network) {
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
    if (drv->hv == AGENT_HV_QEMU) {
        resolve_virt(drv);
        ensure_network(drv);
    }
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
    pthread_mutex_destroy(&drv->ev_mu);
    pthread_cond_destroy(&drv->ev_cond);
    free(drv->uri);
    free(drv->instances_dir);
    free(drv->image_dir);
    free(drv->network);
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

static void remove_rootfs(const char *dir, const char *uuid);

/* Remove the files make_instance_dir's owner put there, by name only (never recursive:
 * a wrong instances_dir must not be able to delete anything else). */
static void remove_instance_dir(const char *dir, const char *uuid)
{
    static const char *const files[] = {"console.log", "disk", "image_properties.json"};
    char path[4096];
    remove_rootfs(dir, uuid);
    for (size_t i = 0; i < CL_ARRAY_SIZE(files); i++) {
        snprintf(path, sizeof(path), "%s/%s/%s", dir, uuid, files[i]);
        if (unlink(path) < 0 && errno != ENOENT)
            cl_debug(MOD, "unlink %s: %s", path, strerror(errno));
    }
    snprintf(path, sizeof(path), "%s/%s", dir, uuid);
    if (rmdir(path) < 0 && errno != ENOENT)
        cl_debug(MOD, "rmdir %s: %s", path, strerror(errno));
}

static int prepare_boot(agent_driver *drv, const cl_msg_instance *inst, agent_boot *boot,
                        char paths[3][4096], char *cmdline, size_t cmdlen, cl_error *err);
static int prepare_hv(agent_driver *drv, virConnectPtr c, const cl_msg_instance *inst,
                      agent_boot *boot, cl_msg_image_props *props, char *rootfs, char *init,
                      cl_error *err);

/* Define the domain of inst; *out receives it. */
static int define_domain(agent_driver *drv, virConnectPtr c, const cl_msg_instance *inst,
                         virDomainPtr *out, cl_error *err)
{
    _cleanup_free_ char *xml = NULL;
    agent_boot boot;
    char paths[3][4096];
    char cmdline[1024];
    int r;

    memset(&boot, 0, sizeof(boot));
    if (drv->hv != AGENT_HV_TEST) {
        r = make_instance_dir(drv->instances_dir, inst->uuid, err);
        if (r < 0)
            return r;
    }
    if (drv->hv == AGENT_HV_QEMU || drv->hv == AGENT_HV_XEN) {
        r = prepare_boot(drv, inst, &boot, paths, cmdline, sizeof(cmdline), err);
        if (r < 0)
            return r;
    }
    cl_msg_image_props props;
    char rootfs[4096], init[128];
    r = prepare_hv(drv, c, inst, &boot, &props, rootfs, init, err);
    if (r < 0)
        return r;
    r = agent_domain_xml_ex(inst, drv->hv, drv->virt, drv->instances_dir, &boot, &xml, err);
    if (r < 0)
        return r;
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

int agent_driver_define(agent_driver *drv, const cl_msg_instance *inst, cl_error *err)
{
    _cleanup_conn_ virConnectPtr c = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;

    if (!cl_uuid_valid(inst->uuid))
        return cl_error_set(err, CL_E_BAD_REQUEST, "instance uuid is not a UUID");
    int r = conn_get(drv, &c, err);
    if (r < 0)
        return r;
    r = lookup(c, inst->uuid, &dom, err);
    if (r == -ENOENT)
        return define_domain(drv, c, inst, &dom, err);
    if (r == 0 && !dom_is_nube(dom))
        return cl_error_set(err, CL_E_CONFLICT, "a domain with uuid %s exists and is not "
                            "managed by nube", inst->uuid), -EEXIST;
    return r;
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

/* ---- issue 5: QEMU hosts (KVM probe, network, images), actions, addresses ---- */

#define KVM_PROBE_MS 2000 /* SeaBIOS prints within ~1.2 s even under TCG */
#define KVM_PROBE_PREFIX "nube-kvm-probe-"
#define NUBE_NET_XML                                                                       \
    "<network>\n  <name>%s</name>\n  <forward mode='nat'/>\n"                              \
    "  <bridge name='virbr-nube' stp='on' delay='0'/>\n"                                   \
    "  <ip address='10.231.0.1' netmask='255.255.255.0'>\n"                                \
    "    <dhcp><range start='10.231.0.10' end='10.231.0.250'/></dhcp>\n"                   \
    "  </ip>\n</network>\n"

agent_virt_type agent_driver_virt(const agent_driver *drv)
{
    return drv->virt;
}

const char *agent_driver_net_mode(const agent_driver *drv)
{
    return drv->net_mode;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until path (a serial log) is non-empty or deadline_ms passes; inotify wakes us on
 * every write, so there is no polling interval to tune. True when bytes arrived. */
static bool wait_bytes(const char *dir, const char *path, int64_t deadline_ms)
{
    struct stat sb;
    int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    bool ok = false;
    if (fd < 0)
        return false;
    /* Watch the directory: the file may not exist until QEMU opens it. */
    if (inotify_add_watch(fd, dir, IN_MODIFY | IN_CREATE | IN_CLOSE_WRITE) < 0)
        goto out;
    for (;;) {
        if (stat(path, &sb) == 0 && sb.st_size > 0) {
            ok = true;
            break;
        }
        int64_t left = deadline_ms - mono_ms();
        if (left <= 0)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)left) > 0) {
            char buf[4096];
            while (read(fd, buf, sizeof(buf)) > 0)
                ;
        }
    }
out:
    close(fd);
    return ok;
}

/* A probe guest of an agent killed mid-probe is transient and still running: destroy it
 * (it is nobody's instance; its name says what it is). */
static void drop_stale_probes(virConnectPtr c)
{
    virDomainPtr *doms = NULL;
    int n = virConnectListAllDomains(c, &doms, VIR_CONNECT_LIST_DOMAINS_TRANSIENT);
    for (int i = 0; i < n; i++) {
        const char *nm = virDomainGetName(doms[i]);
        if (nm && strncmp(nm, KVM_PROBE_PREFIX, strlen(KVM_PROBE_PREFIX)) == 0) {
            cl_info(MOD, "destroying %s, left by an earlier KVM probe", nm);
            virDomainDestroy(doms[i]);
        }
        virDomainFree(doms[i]);
    }
    free(doms);
    virResetLastError();
}

/* virt_type=auto on QEMU: KVM only when /dev/kvm opens AND a probe guest (no disk, just
 * SeaBIOS) writes to its serial port within KVM_PROBE_MS. On the development hosts
 * /dev/kvm exists but KVM guests spin without output, so a device check alone is not
 * enough. The outcome is logged once, at open. */
static void resolve_virt(agent_driver *drv)
{
    char dir[4096], path[4200], name[64];
    _cleanup_free_ char *xml = NULL;
    _cleanup_conn_ virConnectPtr c = NULL;
    cl_error err = {0};

    if (drv->virt != AGENT_VIRT_AUTO)
        return;
    drv->virt = AGENT_VIRT_QEMU;
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        cl_info(MOD, "virt_type auto: /dev/kvm unusable (%s); guests run under QEMU TCG",
                strerror(errno));
        return;
    }
    close(fd);
    if ((size_t)snprintf(dir, sizeof(dir), "%s/.kvm-probe", drv->instances_dir) >=
            sizeof(dir) ||
        make_instance_dir(drv->instances_dir, ".kvm-probe", &err) < 0)
        goto tcg;
    snprintf(path, sizeof(path), "%s/serial.log", dir);
    unlink(path);
    snprintf(name, sizeof(name), KVM_PROBE_PREFIX "%ld", (long)getpid());
    if (asprintf(&xml, "<domain type='kvm'>\n  <name>%s</name>\n"
                       "  <memory unit='MiB'>32</memory>\n  <vcpu>1</vcpu>\n"
                       "  <os><type arch='x86_64'>hvm</type></os>\n"
                       "  <devices>\n    <serial type='file'><source path='%s'/>"
                       "<target port='0'/></serial>\n"
                       "    <memballoon model='none'/>\n  </devices>\n</domain>\n",
                 name, path) < 0) {
        xml = NULL;
        goto tcg;
    }
    if (conn_get(drv, &c, &err) < 0)
        goto tcg;
    drop_stale_probes(c);
    virDomainPtr d = virDomainCreateXML(c, xml, 0);
    if (!d) {
        cl_info(MOD, "virt_type auto: a KVM guest cannot start (%s); guests run under QEMU "
                "TCG", virGetLastErrorMessage());
        goto cleanup;
    }
    bool ran = wait_bytes(dir, path, mono_ms() + KVM_PROBE_MS);
    virDomainDestroy(d);
    virDomainFree(d);
    if (ran) {
        drv->virt = AGENT_VIRT_KVM;
        cl_info(MOD, "virt_type auto: KVM works; guests use type='kvm'");
    } else {
        cl_warn(MOD, "virt_type auto: /dev/kvm opens but a KVM probe guest printed nothing "
                "in %d ms (KVM hangs on this host); guests run under QEMU TCG (type='qemu')",
                KVM_PROBE_MS);
    }
cleanup:
    unlink(path);
    rmdir(dir);
    return;
tcg:
    cl_info(MOD, "virt_type auto: KVM probe impossible (%s); guests run under QEMU TCG",
            err.message[0] ? err.message : "out of memory");
}

/* The NAT network guests attach to: created (and autostarted) when missing, started when
 * inactive. When that fails — no dnsmasq or iptables on the host — guests get a user-mode
 * NIC instead, which needs nothing from the host; logged once. */
static void ensure_network(agent_driver *drv)
{
    _cleanup_conn_ virConnectPtr c = NULL;
    cl_error err = {0};
    virNetworkPtr net = NULL;
    char xml[1024];

    if (!drv->network[0]) {
        drv->user_net = true;
        cl_strlcpy(drv->net_mode, "user", sizeof(drv->net_mode));
        cl_info(MOD, "[agent] network is empty: guests get a user-mode NIC");
        return;
    }
    if (conn_get(drv, &c, &err) < 0)
        goto fallback;
    net = virNetworkLookupByName(c, drv->network);
    if (!net) {
        virResetLastError();
        snprintf(xml, sizeof(xml), NUBE_NET_XML, drv->network);
        net = virNetworkDefineXML(c, xml);
        if (!net)
            goto fail;
        if (virNetworkSetAutostart(net, 1) < 0)
            virResetLastError();
        cl_info(MOD, "defined libvirt network %s (NAT 10.231.0.0/24)", drv->network);
    }
    if (virNetworkIsActive(net) != 1 && virNetworkCreate(net) < 0)
        goto fail;
    virNetworkFree(net);
    snprintf(drv->net_mode, sizeof(drv->net_mode), "network:%s", drv->network);
    return;
fail:
    cl_strlcpy(err.message, virGetLastErrorMessage(), sizeof(err.message));
    if (net)
        virNetworkFree(net);
fallback:
    drv->user_net = true;
    cl_strlcpy(drv->net_mode, "user", sizeof(drv->net_mode));
    cl_warn(MOD, "libvirt network %s unusable (%s); guests get a user-mode NIC (no DHCP "
            "address is reported)", drv->network, err.message);
}

/* An image_ref is a directory name under image_dir: no '/', not "." or "..". */
static bool image_ref_ok(const char *ref)
{
    return ref[0] && strcmp(ref, ".") != 0 && strcmp(ref, "..") != 0 && !strchr(ref, '/');
}

static bool is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Run argv (no shell) and wait for it; 0 when it exited 0. */
static int run(char *const argv[], cl_error *err)
{
    extern char **environ;
    pid_t pid;
    int status;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    int r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot run %s: %s", argv[0], strerror(r)),
               -r;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return cl_error_set(err, CL_E_INTERNAL, "waitpid %s: %s", argv[0],
                                strerror(errno)), -errno;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return cl_error_set(err, CL_E_INTERNAL, "%s failed (status %d)", argv[0], status),
               -EIO;
    return 0;
}

/* The virtual size of a qcow2 file from its header (big-endian u64 at offset 24, after
 * the "QFI\xfb" magic), without running qemu-img info and parsing its output; -errno
 * when the file is not a readable qcow2. */
static int64_t qcow2_virtual_size(const char *path)
{
    unsigned char h[32];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = pread(fd, h, sizeof(h), 0);
    close(fd);
    if (n != (ssize_t)sizeof(h) || memcmp(h, "QFI\xfb", 4) != 0)
        return -EINVAL;
    uint64_t v = 0;
    for (size_t i = 24; i < 32; i++)
        v = v << 8 | h[i];
    return v > (uint64_t)INT64_MAX ? -EINVAL : (int64_t)v;
}

/* Grow an existing disk to the flavor's size (a resize to a flavor with a larger disk;
 * the domain is shut off by then). Never shrinks: qcow2 cannot drop the tail safely
 * under a guest file system, so a revert keeps the grown disk (the guest just sees
 * more space), and a disk whose size cannot be read is left alone. */
static int grow_disk(const char *disk, int64_t disk_gb, cl_error *err)
{
    char size[32];
    if (disk_gb <= 0 || disk_gb > (INT64_MAX >> 30))
        return 0;
    int64_t cur = qcow2_virtual_size(disk);
    if (cur < 0 || cur >= disk_gb << 30)
        return 0;
    snprintf(size, sizeof(size), "%" PRId64 "G", disk_gb);
    cl_info(MOD, "growing %s from %" PRId64 " MiB to %s", disk, cur >> 20, size);
    char *argv[] = {"qemu-img", "resize", "-q", "-f", "qcow2", (char *)disk, size, NULL};
    return run(argv, err);
}

/* The instance's root disk: a qcow2 overlay over the image's base disk (backing format
 * stated, so qemu never probes it), or a blank qcow2 of the flavor's size when the image
 * has no disk. Kept when it exists (a redefine after restart or resize), grown when the
 * flavor's disk is larger than it. */
static int make_disk(agent_driver *drv, const cl_msg_instance *inst, const char *base,
                     const char *base_fmt, cl_error *err)
{
    char disk[4096], size[32];
    snprintf(disk, sizeof(disk), "%s/%s/disk", drv->instances_dir, inst->uuid);
    if (is_file(disk))
        return grow_disk(disk, inst->flavor.disk_gb, err);
    snprintf(size, sizeof(size), "%" PRId64 "G", inst->flavor.disk_gb > 0 ? inst->flavor.disk_gb
                                                                          : 1);
    if (base) {
        char *argv[] = {"qemu-img", "create", "-q", "-f", "qcow2", "-F", (char *)base_fmt, "-b",
                        (char *)base, disk, size, NULL};
        return run(argv, err);
    }
    char *argv[] = {"qemu-img", "create", "-q", "-f", "qcow2", disk, size, NULL};
    return run(argv, err);
}

/* Image files of inst (see driver.h: <image_dir>/<image_ref>/...), its disk, and the NIC. */
static int prepare_boot(agent_driver *drv, const cl_msg_instance *inst, agent_boot *boot,
                        char paths[3][4096], char *cmdline, size_t cmdlen, cl_error *err)
{
    const char *base = NULL, *base_fmt = "qcow2";
    char dir[4096];
    /* nube-image first (image_cache.h); -ENOENT: not an image it knows, try image_dir. */
    int r = drv->images ? agent_image_cache_prepare(drv->images, inst, boot, paths, cmdline,
                                                    cmdlen, &base, &base_fmt, err)
                        : -ENOENT;

    if (r < 0 && r != -ENOENT)
        return r;
    if (r == -ENOENT && drv->image_dir[0] && image_ref_ok(inst->image_ref)) {
        if ((size_t)snprintf(dir, sizeof(dir), "%s/%s", drv->image_dir, inst->image_ref) >=
                sizeof(dir) - 16 ||
            snprintf(paths[0], 4096, "%s/kernel", dir) < 0 ||
            snprintf(paths[1], 4096, "%s/ramdisk", dir) < 0 ||
            snprintf(paths[2], 4096, "%s/disk.qcow2", dir) < 0)
            return cl_error_set(err, CL_E_INTERNAL, "image path too long"), -ENAMETOOLONG;
        if (is_file(paths[0])) {
            char cpath[4200];
            boot->kernel = paths[0];
            boot->ramdisk = is_file(paths[1]) ? paths[1] : NULL;
            cl_strlcpy(cmdline, "console=ttyS0", cmdlen);
            snprintf(cpath, sizeof(cpath), "%s/cmdline", dir);
            FILE *f = fopen(cpath, "re");
            if (f) {
                if (fgets(cmdline, (int)cmdlen, f))
                    cmdline[strcspn(cmdline, "\n")] = '\0';
                fclose(f);
            }
            boot->cmdline = cmdline;
        }
        if (is_file(paths[2]))
            base = paths[2];
        if (!boot->kernel && !base)
            return cl_error_set(err, CL_E_NOT_FOUND, "image %s not found in %s (needs "
                                "kernel or disk.qcow2)", inst->image_ref, drv->image_dir),
                   -ENOENT;
    }
    r = make_disk(drv, inst, base, base_fmt, err);
    if (r < 0)
        return r;
    boot->network = drv->user_net ? NULL : drv->network;
    boot->user_net = drv->user_net;
    return 0;
}

/* Wait for dom to be shut off, woken by lifecycle events (and every 500 ms, in case an
 * event is lost). 0 or -ETIMEDOUT. */
static int wait_shutoff(agent_driver *drv, virDomainPtr dom, int timeout_ms)
{
    int64_t deadline = mono_ms() + timeout_ms;
    for (;;) {
        int st = VIR_DOMAIN_NOSTATE;
        pthread_mutex_lock(&drv->ev_mu);
        unsigned long seq = drv->ev_seq;
        pthread_mutex_unlock(&drv->ev_mu);
        if (virDomainGetState(dom, &st, NULL, 0) < 0 || st == VIR_DOMAIN_SHUTOFF)
            return 0;
        int64_t left = deadline - mono_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        if (left > 500)
            left = 500;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += left / 1000;
        ts.tv_nsec += (left % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_mutex_lock(&drv->ev_mu);
        while (drv->ev_seq == seq &&
               pthread_cond_timedwait(&drv->ev_cond, &drv->ev_mu, &ts) == 0)
            ;
        pthread_mutex_unlock(&drv->ev_mu);
    }
}

/* Stop: ACPI shutdown, destroy after the grace period (Nova's clean shutdown). A paused
 * guest cannot see the ACPI event: destroyed at once. A managed-save image is dropped (a
 * stopped instance boots fresh). */
static int do_stop(agent_driver *drv, virDomainPtr dom, cl_error *err)
{
    int st = VIR_DOMAIN_NOSTATE;
    if (virDomainGetState(dom, &st, NULL, 0) < 0)
        return lv_fail(err, "cannot read domain state");
    if (st != VIR_DOMAIN_SHUTOFF && st != VIR_DOMAIN_PAUSED) {
        if (virDomainShutdown(dom) == 0 &&
            wait_shutoff(drv, dom, drv->shutdown_timeout_s * 1000) == 0)
            return 0;
        virResetLastError();
        cl_info(MOD, "domain %s did not shut down within %d s; destroying it",
                virDomainGetName(dom), drv->shutdown_timeout_s);
    }
    if (virDomainIsActive(dom) == 1 && virDomainDestroy(dom) < 0 && virDomainIsActive(dom) == 1)
        return lv_fail(err, "cannot destroy domain");
    if (virDomainHasManagedSaveImage(dom, 0) == 1 && virDomainManagedSaveRemove(dom, 0) < 0)
        return lv_fail(err, "cannot drop the managed save image");
    virResetLastError();
    return 0;
}

static int do_start(virDomainPtr dom, cl_error *err)
{
    int st = VIR_DOMAIN_NOSTATE;
    if (virDomainGetState(dom, &st, NULL, 0) < 0)
        return lv_fail(err, "cannot read domain state");
    if (st == VIR_DOMAIN_RUNNING || st == VIR_DOMAIN_BLOCKED)
        return 0;
    if (st == VIR_DOMAIN_PAUSED)
        return virDomainResume(dom) < 0 ? lv_fail(err, "cannot resume domain") : 0;
    /* A managed save image is restored by create: that is resume after suspend. */
    return virDomainCreate(dom) < 0 ? lv_fail(err, "cannot start domain") : 0;
}

/* Redefine from spec (new flavor, same disk), keeping the domain's power state. */
static int redefine(agent_driver *drv, virConnectPtr c, virDomainPtr *dom,
                    const cl_msg_instance *spec, bool start, cl_error *err)
{
    int r = do_stop(drv, *dom, err);
    if (r < 0)
        return r;
    virDomainPtr nd = NULL;
    r = define_domain(drv, c, spec, &nd, err);
    if (r < 0)
        return r;
    virDomainFree(*dom);
    *dom = nd;
    return start ? do_start(*dom, err) : 0;
}

int agent_driver_action(agent_driver *drv, const char *uuid, cl_action action,
                        const cl_msg_instance *spec, cl_error *err)
{
    _cleanup_conn_ virConnectPtr c = NULL;
    virDomainPtr dom = NULL;
    int st = VIR_DOMAIN_NOSTATE;
    int r;

    if (!cl_uuid_valid(uuid))
        return cl_error_set(err, CL_E_BAD_REQUEST, "instance uuid is not a UUID");
    if (spec && strcmp(spec->uuid, uuid) != 0)
        return cl_error_set(err, CL_E_BAD_REQUEST, "spec is for another instance");
    r = conn_get(drv, &c, err);
    if (r < 0)
        return r;
    r = lookup(c, uuid, &dom, err);
    if (r < 0)
        return r;
    if (!dom_is_nube(dom)) {
        virDomainFree(dom);
        return cl_error_set(err, CL_E_FORBIDDEN, "domain %s is not managed by nube", uuid),
               -EPERM;
    }
    if (virDomainGetState(dom, &st, NULL, 0) < 0) {
        r = lv_fail(err, "cannot read domain state");
        goto out;
    }
    bool running = st == VIR_DOMAIN_RUNNING || st == VIR_DOMAIN_BLOCKED;

    switch (action) {
    case CL_ACTION_START:
    case CL_ACTION_RESUME:
        r = do_start(dom, err);
        break;
    case CL_ACTION_STOP:
        r = do_stop(drv, dom, err);
        break;
    case CL_ACTION_REBOOT_SOFT:
        if (!running) {
            r = cl_error_set(err, CL_E_CONFLICT, "cannot reboot a domain that is not "
                             "running");
            break;
        }
        /* As Nova's libvirt driver: a clean ACPI shutdown, then start again; a guest
         * that ignores the power button within the grace period is rebooted hard.
         * (virDomainReboot's in-place ACPI reboot depends on the guest turning a power
         * button press into a reboot, which many images — ours included — do not.) */
        if (virDomainShutdown(dom) == 0 &&
            wait_shutoff(drv, dom, drv->shutdown_timeout_s * 1000) == 0) {
            r = do_start(dom, err);
            break;
        }
        cl_info(MOD, "domain %s did not shut down for a soft reboot (%s); rebooting hard",
                virDomainGetName(dom), virGetLastErrorMessage());
        virResetLastError();
        __attribute__((fallthrough)); /* a soft reboot that timed out becomes a hard one */
    case CL_ACTION_REBOOT_HARD:
        if (virDomainIsActive(dom) == 1 && virDomainDestroy(dom) < 0 &&
            virDomainIsActive(dom) == 1) {
            r = lv_fail(err, "cannot destroy domain");
            break;
        }
        if (virDomainHasManagedSaveImage(dom, 0) == 1)
            (void)virDomainManagedSaveRemove(dom, 0);
        virResetLastError();
        r = spec ? redefine(drv, c, &dom, spec, true, err) : do_start(dom, err);
        break;
    case CL_ACTION_PAUSE:
        r = st == VIR_DOMAIN_PAUSED ? 0
            : virDomainSuspend(dom) < 0 ? lv_fail(err, "cannot pause domain") : 0;
        break;
    case CL_ACTION_UNPAUSE:
        r = st != VIR_DOMAIN_PAUSED ? 0
            : virDomainResume(dom) < 0 ? lv_fail(err, "cannot unpause domain") : 0;
        break;
    case CL_ACTION_SUSPEND:
        if (st == VIR_DOMAIN_SHUTOFF && virDomainHasManagedSaveImage(dom, 0) == 1) {
            r = 0;
            break;
        }
        r = virDomainManagedSave(dom, 0) < 0 ? lv_fail(err, "cannot suspend domain") : 0;
        break;
    case CL_ACTION_RESIZE:
    case CL_ACTION_REVERT_RESIZE:
        if (!spec) {
            r = cl_error_set(err, CL_E_BAD_REQUEST, "resize needs the instance's new flavor");
            break;
        }
        r = redefine(drv, c, &dom, spec, running || st == VIR_DOMAIN_PAUSED, err);
        break;
    default:
        r = cl_error_set(err, CL_E_BAD_REQUEST, "unknown action %d", (int)action);
        break;
    }
out:
    if (dom)
        virDomainFree(dom);
    return r;
}

int agent_driver_observe(agent_driver *drv, const char *uuid, cl_power_state *power,
                         bool *saved, cl_error *err)
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
    *power = power_of(st);
    *saved = st == VIR_DOMAIN_SHUTOFF && virDomainHasManagedSaveImage(dom, 0) == 1;
    virResetLastError();
    return 0;
}

int agent_driver_addresses(agent_driver *drv, const char *uuid,
                           char (*out)[CL_MSG_ADDR_LEN], size_t cap, size_t *out_n)
{
    _cleanup_conn_ virConnectPtr c = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    virDomainInterfacePtr *ifs = NULL;
    cl_error err = {0};

    *out_n = 0;
    if (drv->hv != AGENT_HV_QEMU || drv->user_net)
        return 0;
    int r = conn_get(drv, &c, &err);
    if (r < 0)
        return r;
    r = lookup(c, uuid, &dom, &err);
    if (r < 0)
        return r;
    int n = virDomainInterfaceAddresses(dom, &ifs, VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0);
    if (n < 0) {
        virResetLastError();
        return 0; /* no lease yet, or the driver cannot say: nothing to report */
    }
    for (int i = 0; i < n; i++) {
        for (unsigned k = 0; k < ifs[i]->naddrs && *out_n < cap; k++)
            if (ifs[i]->addrs[k].addr)
                cl_strlcpy(out[(*out_n)++], ifs[i]->addrs[k].addr, CL_MSG_ADDR_LEN);
        virDomainInterfaceFree(ifs[i]);
    }
    free(ifs);
    return 0;
}

/* Sum the typed parameters named "<prefix>.<n>.<suffix>" (per NIC / per disk). */
static int64_t sum_params(virTypedParameterPtr p, int n, const char *prefix,
                          const char *suffix)
{
    size_t pl = strlen(prefix), sl = strlen(suffix);
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        const char *f = p[i].field;
        size_t fl = strlen(f);
        if (fl <= pl + sl + 1 || strncmp(f, prefix, pl) != 0 || f[pl] != '.' ||
            strcmp(f + fl - sl, suffix) != 0 || f[fl - sl - 1] != '.')
            continue;
        /* only "<prefix>.<digits>.<suffix>" */
        bool digits = true;
        for (size_t k = pl + 1; k < fl - sl - 1; k++)
            digits = digits && f[k] >= '0' && f[k] <= '9';
        if (digits && p[i].type == VIR_TYPED_PARAM_ULLONG)
            total += (int64_t)p[i].value.ul;
    }
    return total;
}

static int64_t ull_param(virTypedParameterPtr p, int n, const char *name, int64_t dflt)
{
    unsigned long long v;
    return virTypedParamsGetULLong(p, n, name, &v) == 1 ? (int64_t)v : dflt;
}

int agent_driver_stats(agent_driver *drv, agent_domain_stats **out, size_t *out_n,
                       cl_error *err)
{
    _cleanup_conn_ virConnectPtr c = NULL;
    virDomainStatsRecordPtr *recs = NULL;
    unsigned types = VIR_DOMAIN_STATS_STATE | VIR_DOMAIN_STATS_CPU_TOTAL |
                     VIR_DOMAIN_STATS_BALLOON | VIR_DOMAIN_STATS_INTERFACE |
                     VIR_DOMAIN_STATS_BLOCK;
    int r = conn_get(drv, &c, err);
    if (r < 0)
        return r;
    int n = virConnectGetAllDomainStats(c, types, &recs, 0);
    if (n < 0) {
        /* Drivers that do not know every group (the test driver): ask for state only. */
        virResetLastError();
        n = virConnectGetAllDomainStats(c, VIR_DOMAIN_STATS_STATE, &recs, 0);
        if (n < 0)
            return lv_fail(err, "cannot read domain statistics");
    }
    agent_domain_stats *v = n > 0 ? calloc((size_t)n, sizeof(*v)) : NULL;
    size_t k = 0;
    for (int i = 0; v && i < n; i++) {
        virDomainStatsRecordPtr rec = recs[i];
        agent_domain_stats *d = &v[k];
        if (!dom_is_nube(rec->dom) || virDomainGetUUIDString(rec->dom, d->uuid) < 0)
            continue;
        int st = 0;
        (void)virTypedParamsGetInt(rec->params, rec->nparams, "state.state", &st);
        d->running = st == VIR_DOMAIN_RUNNING || st == VIR_DOMAIN_BLOCKED ||
                     st == VIR_DOMAIN_PAUSED;
        d->id = d->running ? virDomainGetID(rec->dom) == (unsigned)-1
                                 ? -1 : (int)virDomainGetID(rec->dom)
                           : -1;
        d->cpu_ns = ull_param(rec->params, rec->nparams, "cpu.time", 0);
        d->net_rx_bytes = sum_params(rec->params, rec->nparams, "net", "rx.bytes");
        d->net_tx_bytes = sum_params(rec->params, rec->nparams, "net", "tx.bytes");
        d->disk_rd_bytes = sum_params(rec->params, rec->nparams, "block", "rd.bytes");
        d->disk_wr_bytes = sum_params(rec->params, rec->nparams, "block", "wr.bytes");
        /* Guest view when the balloon driver reports it (available - unused), else the
         * balloon's current size, else unknown. */
        int64_t avail = ull_param(rec->params, rec->nparams, "balloon.available", -1);
        int64_t unused = ull_param(rec->params, rec->nparams, "balloon.unused", -1);
        int64_t cur = ull_param(rec->params, rec->nparams, "balloon.current", -1);
        d->mem_used_mb = avail >= 0 && unused >= 0 ? (avail - unused) / 1024
                         : cur >= 0 ? cur / 1024 : -1;
        k++;
    }
    if (recs)
        virDomainStatsRecordListFree(recs);
    virResetLastError();
    if (n > 0 && !v)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    *out = v;
    *out_n = k;
    return 0;
}

/* ---- issue 5: capabilities, image properties, LXC root file systems, live resize ---- */

int agent_driver_host_caps(agent_driver *drv, agent_host_caps *out, cl_error *err)
{
    _cleanup_conn_ virConnectPtr c = NULL;
    unsigned long version = 0;
    virNodeInfo info;
    int r = conn_get(drv, &c, err);
    if (r < 0)
        return r;

    memset(out, 0, sizeof(*out));
    if (virConnectGetVersion(c, &version) < 0)
        return lv_fail(err, "cannot read the hypervisor version");
    out->hypervisor_version = (int64_t)version;
    _cleanup_free_ char *caps = virConnectGetCapabilities(c);
    if (caps)
        (void)agent_caps_parse(caps, out->cpu_arch, sizeof(out->cpu_arch), out->cpu_model,
                               sizeof(out->cpu_model));
    else
        virResetLastError();
    /* Node info names the architecture too ("x86_64"), for drivers without <host><cpu>. */
    if (!out->cpu_arch[0] && virNodeGetInfo(c, &info) == 0)
        cl_strlcpy(out->cpu_arch, info.model, sizeof(out->cpu_arch));
    return 0;
}

/* <instances_dir>/<uuid>/<file>; false when it does not fit. */
static bool inst_path(const agent_driver *drv, const char *uuid, const char *file, char *out,
                      size_t len)
{
    return (size_t)snprintf(out, len, "%s/%s/%s", drv->instances_dir, uuid, file) < len;
}

int agent_driver_set_image_props(agent_driver *drv, const char *uuid,
                                 const cl_msg_image_props *props, cl_error *err)
{
    char path[4096], tmp[4200];
    if (!cl_uuid_valid(uuid))
        return cl_error_set(err, CL_E_BAD_REQUEST, "instance uuid is not a UUID");
    if (drv->hv == AGENT_HV_TEST)
        return 0;
    int r = make_instance_dir(drv->instances_dir, uuid, err);
    if (r < 0)
        return r;
    _cleanup_json_ json_object *o = json_object_new_object();
    if (!o || cl_msg_spawn_set_image_props(o, props) < 0)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    if (!inst_path(drv, uuid, "image_properties.json", path, sizeof(path)))
        return cl_error_set(err, CL_E_INTERNAL, "instances_dir path too long"), -ENAMETOOLONG;
    /* Written aside and renamed: a crash never leaves half a file to misread. */
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "we");
    if (!f)
        return cl_error_set(err, CL_E_INTERNAL, "cannot write %s: %s", tmp, strerror(errno)),
               -EIO;
    bool ok = fputs(cl_json_dump(o), f) >= 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) < 0) {
        unlink(tmp);
        return cl_error_set(err, CL_E_INTERNAL, "cannot write %s", path), -EIO;
    }
    return 0;
}

/* The remembered image properties (all empty when none). */
static void load_image_props(agent_driver *drv, const char *uuid, cl_msg_image_props *out)
{
    char path[4096];
    cl_error err = {0};
    memset(out, 0, sizeof(*out));
    if (drv->hv == AGENT_HV_TEST || !inst_path(drv, uuid, "image_properties.json", path,
                                               sizeof(path)))
        return;
    _cleanup_json_ json_object *o = json_object_from_file(path);
    if (o && cl_msg_spawn_get_image_props(o, out, NULL, &err) < 0)
        cl_warn(MOD, "instance %s: ignoring %s: %s", uuid, path, err.message);
}

static bool exists_nofollow(const char *path)
{
    struct stat sb;
    return lstat(path, &sb) == 0;
}

/* LXC: the container's root file system, extracted once from the image's tar
 * (<image_dir>/<image_ref>/rootfs.tar[.gz]) into <uuid>/rootfs.tmp and renamed into place,
 * so a half-extracted tree is never booted and a redefine reuses the finished one. */
static int prepare_rootfs(agent_driver *drv, const cl_msg_instance *inst, char *rootfs,
                          cl_error *err)
{
    static const char *const names[] = {"rootfs.tar", "rootfs.tar.gz", "rootfs.tgz"};
    char tar[4096] = "", tmp[4200];
    struct stat sb;

    if (!inst_path(drv, inst->uuid, "rootfs", rootfs, 4096))
        return cl_error_set(err, CL_E_INTERNAL, "instances_dir path too long"), -ENAMETOOLONG;
    if (stat(rootfs, &sb) == 0 && S_ISDIR(sb.st_mode))
        return 0;
    if (!drv->image_dir[0] || !image_ref_ok(inst->image_ref))
        return cl_error_set(err, CL_E_NOT_FOUND, "a container needs an image with a root "
                            "file system (image_dir is not set)"), -ENOENT;
    for (size_t i = 0; i < CL_ARRAY_SIZE(names) && !tar[0]; i++) {
        char p[4096];
        if ((size_t)snprintf(p, sizeof(p), "%s/%s/%s", drv->image_dir, inst->image_ref,
                             names[i]) < sizeof(p) && is_file(p))
            cl_strlcpy(tar, p, sizeof(tar));
    }
    if (!tar[0])
        return cl_error_set(err, CL_E_NOT_FOUND, "image %s has no root file system (%s/%s/"
                            "rootfs.tar)", inst->image_ref, drv->image_dir, inst->image_ref),
               -ENOENT;
    snprintf(tmp, sizeof(tmp), "%s.tmp", rootfs);
    char *rm[] = {"rm", "-rf", "--one-file-system", tmp, NULL};
    (void)run(rm, err);
    if (mkdir(tmp, 0755) < 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot create %s: %s", tmp, strerror(errno)),
               -errno;
    char *argv[] = {"tar", "-xf", tar, "-C", tmp, "--numeric-owner", NULL};
    int r = run(argv, err);
    if (r == 0 && rename(tmp, rootfs) < 0) {
        cl_error_set(err, CL_E_INTERNAL, "cannot rename %s: %s", tmp, strerror(errno));
        r = -EIO;
    }
    if (r < 0)
        (void)run(rm, &(cl_error){0});
    return r;
}

/* Remove an LXC container's root file system (never crossing into another mount). */
static void remove_rootfs(const char *dir, const char *uuid)
{
    static const char *const names[] = {"rootfs", "rootfs.tmp"};
    for (size_t i = 0; i < CL_ARRAY_SIZE(names); i++) {
        char path[4096];
        struct stat sb;
        snprintf(path, sizeof(path), "%s/%s/%s", dir, uuid, names[i]);
        if (lstat(path, &sb) < 0 || !S_ISDIR(sb.st_mode))
            continue;
        char *rm[] = {"rm", "-rf", "--one-file-system", path, NULL};
        cl_error err = {0};
        if (run(rm, &err) < 0)
            cl_warn(MOD, "cannot remove %s: %s", path, err.message);
    }
}

/* What a domain needs beyond the QEMU boot files: Xen's vm_mode, an LXC root file system
 * and init, and the live resize headroom. rootfs (4096) and init (128) back boot's
 * pointers. */
static int prepare_hv(agent_driver *drv, virConnectPtr c, const cl_msg_instance *inst,
                      agent_boot *boot, cl_msg_image_props *props, char *rootfs, char *init,
                      cl_error *err)
{
    load_image_props(drv, inst->uuid, props);
    if (drv->hv == AGENT_HV_XEN) {
        boot->vm_mode = props->vm_mode;
        boot->network = NULL;   /* a QEMU NAT network is not a Xen bridge */
        boot->user_net = false;
        if (props->os_command_line[0])
            boot->cmdline = props->os_command_line;
        else if (agent_vm_mode_is_pv(props->vm_mode) && boot->cmdline)
            boot->cmdline = "console=hvc0 root=/dev/xvda";
    }
    if (drv->hv == AGENT_HV_LXC) {
        int r = prepare_rootfs(drv, inst, rootfs, err);
        if (r < 0)
            return r;
        boot->rootfs = rootfs;
        /* The image's init, else /sbin/init when the tree has one, else a shell. */
        char p[4200];
        snprintf(p, sizeof(p), "%s/sbin/init", rootfs);
        cl_strlcpy(init, props->init[0] ? props->init
                         : exists_nofollow(p) ? "/sbin/init" : "/bin/sh", 128);
        boot->init = init;
    }
    if (drv->live_resize) {
        virNodeInfo info;
        if (virNodeGetInfo(c, &info) == 0) {
            int64_t host_mb = (int64_t)(info.memory / 1024);
            int64_t want = inst->flavor.ram_mb * 4;
            boot->max_vcpus = info.cpus;
            boot->max_ram_mb = want < host_mb ? want : host_mb;
        } else {
            virResetLastError();
        }
    }
    return 0;
}

/* virDomainSetMetadata puts the element into the namespace itself and fails on one that
 * declares it already: drop the "nube:" prefixes and the xmlns declaration in place
 * (user text is escaped, so "<nube:" only ever starts a tag). */
static void strip_prefix(char *xml)
{
    static const char decl[] = " xmlns:" NUBE_XMLNS_PREFIX "=\"" NUBE_XMLNS "\"";
    static const char open_tag[] = "<" NUBE_XMLNS_PREFIX ":";
    static const char close_tag[] = "</" NUBE_XMLNS_PREFIX ":";
    char *w = xml;
    for (const char *r = xml; *r;) {
        if (strncmp(r, decl, sizeof(decl) - 1) == 0) {
            r += sizeof(decl) - 1;
        } else if (strncmp(r, open_tag, sizeof(open_tag) - 1) == 0) {
            *w++ = '<';
            r += sizeof(open_tag) - 1;
        } else if (strncmp(r, close_tag, sizeof(close_tag) - 1) == 0) {
            *w++ = '<';
            *w++ = '/';
            r += sizeof(close_tag) - 1;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
}

/* virDomainSetVcpusFlags / SetMemoryFlags with flags; drivers that take LIVE and CONFIG
 * only one at a time (the test driver) get them one after the other. */
static int set_both(virDomainPtr dom, bool vcpus, unsigned long v, unsigned flags)
{
    int r = vcpus ? virDomainSetVcpusFlags(dom, (unsigned)v, flags)
                  : virDomainSetMemoryFlags(dom, v, flags);
    unsigned both = VIR_DOMAIN_AFFECT_LIVE | VIR_DOMAIN_AFFECT_CONFIG;
    if (r == 0 || (flags & both) != both || virGetLastErrorCode() != VIR_ERR_INVALID_ARG)
        return r;
    virResetLastError();
    for (int i = 0; i < 2; i++) {
        unsigned f = i == 0 ? VIR_DOMAIN_AFFECT_LIVE : VIR_DOMAIN_AFFECT_CONFIG;
        r = vcpus ? virDomainSetVcpusFlags(dom, (unsigned)v, f)
                  : virDomainSetMemoryFlags(dom, v, f);
        if (r < 0)
            return r;
    }
    return 0;
}

int agent_driver_live_resize(agent_driver *drv, const cl_msg_instance *spec, cl_error *err)
{
    _cleanup_conn_ virConnectPtr c = NULL;
    _cleanup_dom_ virDomainPtr dom = NULL;
    const cl_flavor *fl = &spec->flavor;
    int r;

    if (!cl_uuid_valid(spec->uuid))
        return cl_error_set(err, CL_E_BAD_REQUEST, "instance uuid is not a UUID");
    r = conn_get(drv, &c, err);
    if (r < 0)
        return r;
    r = lookup(c, spec->uuid, &dom, err);
    if (r < 0)
        return r == -ENOENT ? (cl_error_set(err, CL_E_NOT_FOUND, "no domain for instance %s",
                                            spec->uuid), -ENOENT) : r;
    if (!dom_is_nube(dom))
        return cl_error_set(err, CL_E_FORBIDDEN, "domain %s is not managed by nube",
                            spec->uuid), -EPERM;

    int active = virDomainIsActive(dom);
    unsigned flags = active == 1 ? VIR_DOMAIN_AFFECT_LIVE | VIR_DOMAIN_AFFECT_CONFIG
                                 : VIR_DOMAIN_AFFECT_CONFIG;
    int max_vcpus = virDomainGetVcpusFlags(dom, VIR_DOMAIN_AFFECT_CONFIG |
                                                VIR_DOMAIN_VCPU_MAXIMUM);
    unsigned long max_kib = virDomainGetMaxMemory(dom);
    if (max_vcpus < 0 || max_kib == 0)
        return lv_fail(err, "cannot read the domain's maximums");
    if (fl->vcpus > max_vcpus)
        return cl_error_set(err, CL_E_CONFLICT, "%" PRId64 " vCPUs exceed the domain's "
                            "maximum of %d (a cold resize can)", fl->vcpus, max_vcpus),
               -ERANGE;
    if ((unsigned long long)fl->ram_mb * 1024 > max_kib)
        return cl_error_set(err, CL_E_CONFLICT, "%" PRId64 " MB exceed the domain's maximum "
                            "memory of %lu MB (a cold resize can)", fl->ram_mb, max_kib / 1024),
               -ERANGE;
    if (set_both(dom, true, (unsigned long)fl->vcpus, flags) < 0 ||
        set_both(dom, false, (unsigned long)fl->ram_mb * 1024, flags) < 0) {
        bool unsupported = virGetLastErrorCode() == VIR_ERR_NO_SUPPORT ||
                           virGetLastErrorCode() == VIR_ERR_OPERATION_INVALID;
        r = lv_fail(err, "cannot change vCPUs/memory live");
        return unsupported ? -ENOTSUP : r;
    }
    /* The metadata carries the flavor a restarted agent adopts the domain with. */
    _cleanup_free_ char *md = NULL;
    if (agent_metadata_xml(spec, &md, err) < 0)
        return -EINVAL;
    strip_prefix(md);
    if (virDomainSetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT, md, NUBE_XMLNS_PREFIX,
                             NUBE_XMLNS, flags) < 0)
        return lv_fail(err, "cannot update the nube metadata");
    cl_info(MOD, "instance %s resized live to %" PRId64 " vCPUs, %" PRId64 " MB", spec->uuid,
            fl->vcpus, fl->ram_mb);
    return 0;
}
