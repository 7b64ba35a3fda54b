/*
 * migrate.c - live migration on the agent (migrate.h): both the destination's steps
 * (prepare the disk, confirm and adopt, or clean a half-copied arrival) and the source's
 * run (virDomainMigrateToURI3 in a thread, with a job monitor).
 *
 * Why the destination prepares the disk: libvirt only pre-creates the target volumes of
 * storage pools, and nube's disks are plain files (a qcow2 overlay on a cached base), so
 * for an incremental block migration the overlay must exist on the destination, over
 * the destination's own copy of the base, before QEMU starts mirroring into it.
 *
 * Why the XML is rewritten: the domain's paths (disk, console log, kernel) are those of
 * the source's instances_dir/image_dir. The destination tells its own directories in
 * migration.prepared; the source sends its migratable XML with those prefixes replaced
 * as both the destination XML and the persistent XML, so the guest's ABI is unchanged
 * (same devices, addresses, MAC) and only file locations move.
 *
 * Outcome: after the libvirt call returns (whatever it returned) the source looks its
 * domain up again and says what it holds; the scheduler then asks the destination
 * (migration.check). Only "absent here, running there" moves the instance. A source
 * left paused by a failed force-complete is resumed.
 *
 * Downtime steps (as Nova's live_migration_downtime_steps): the allowed downtime starts
 * at max/steps and grows to max over the first half of the completion timeout; most
 * small TCG guests converge at the first step.
 *
 * Shared storage (an instances_dir both hosts mount): the destination finds the disk
 * already at its path at prepare time, creates nothing and says "shared"; the source then
 * migrates with VIR_MIGRATE_UNSAFE (no block copy). Removal is by proof, never by
 * default, as a wrong removal deletes the disk the guest runs from: the destination
 * removes files only under its "incoming" marker (written with an overlay it created),
 * the source only with a slot that says "not shared" (restored from its "migrating"
 * marker, which records "shared", after a restart). block_migration true over shared
 * storage is refused at prepare; a cold move refuses a destination that already sees
 * the disk (its confirm/revert would remove the one shared copy).
 *
 * Cold migration (and resize to another host) moves the stopped guest's overlay instead:
 * the source offers it over the agent's HTTP port to the holder of the move's token, the
 * destination pulls, checks and rebases it (the "cold migration" section below).
 */
#include "migrate.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <curl/curl.h>
#include <openssl/evp.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cleanup.h"
#include "image_cache.h"
#include "image_inspect.h"
#include "json.h"
#include "log.h"
#include "migration_msg.h"
#include "util.h"

#define MOD "agent.migrate"

#define MIG_MAX 64            /* migrations in flight on one host (either role; a cold
                               * move's destination keeps its slot until confirm/revert) */
#define OPS_CAP 64            /* queued destination/cleanup steps */
#define DOWNTIME_STEPS 5
#define PATH_MAX_LEN 4096

enum { REQ_NONE, REQ_ABORT, REQ_FORCE };

typedef struct mig_entry {
    bool used;
    bool source;               /* this host is the source */
    bool shared;               /* the disk is on shared storage: nothing copied/removed */
    char mig[CL_UUID_LEN];
    char uuid[CL_UUID_LEN];
    /* source only */
    bool thread;               /* th must be joined */
    bool finished;             /* the run ended (done sent) */
    pthread_t th;
    atomic_int request;        /* REQ_* from migration.abort or stop */
    bool block;
    char dest_uri[256];
    char dest_addr[128];
    char dest_inst[PATH_MAX_LEN];
    char dest_img[PATH_MAX_LEN];
    char dest_cache[PATH_MAX_LEN];
    /* cold migration (a slot of its own per move and role) */
    bool cold;
    bool exported;             /* source: the disk is offered (serve_disk) */
    bool imported;             /* destination: this agent wrote the instance's disk */
    uint64_t size;             /* its size when the guest had stopped */
    char token[72];            /* the move's secret, as the scheduler sent it */
    char disk[PATH_MAX_LEN + 80];
} mig_entry;

typedef struct op {
    char type[64];
    json_object *body;
    struct op *next;
} op;

struct agent_mig {
    agent_mig_opts o;
    char *uri, *inst_dir, *img_dir, *mig_uri, *mig_addr, *cache_dir;
    agent_mig_hooks h;

    pthread_mutex_t lock;      /* entries, ops queue */
    pthread_cond_t cond;
    mig_entry e[MIG_MAX];
    op *qhead, *qtail;
    size_t qlen;
    bool stop;
    pthread_t worker;
    bool worker_started;
};

/* ---- small helpers ---- */

static void conn_closep(virConnectPtr *c)
{
    if (*c)
        virConnectClose(*c);
}
static void dom_freep(virDomainPtr *d)
{
    if (*d)
        virDomainFree(*d);
}
#define _cleanup_vconn_ __attribute__((cleanup(conn_closep)))
#define _cleanup_vdom_ __attribute__((cleanup(dom_freep)))

static const char *lv_msg(void)
{
    const char *m = virGetLastErrorMessage();
    return m ? m : "unknown libvirt error";
}

static mig_entry *find_locked(agent_mig *m, const char *mig)
{
    for (size_t i = 0; i < MIG_MAX; i++)
        if (m->e[i].used && strcmp(m->e[i].mig, mig) == 0)
            return &m->e[i];
    return NULL;
}

static mig_entry *alloc_locked(agent_mig *m, const char *mig, const char *uuid)
{
    mig_entry *e = find_locked(m, mig);
    if (e)
        return e;
    for (size_t i = 0; i < MIG_MAX; i++) {
        if (!m->e[i].used) {
            e = &m->e[i];
            /* A finished run whose thread was not joined yet (it no longer takes the
             * lock after marking itself finished, so this join is short). */
            if (e->thread)
                pthread_join(e->th, NULL);
            memset(e, 0, sizeof(*e));
            e->used = true;
            cl_strlcpy(e->mig, mig, sizeof(e->mig));
            cl_strlcpy(e->uuid, uuid, sizeof(e->uuid));
            return e;
        }
    }
    return NULL;
}

static const char *jstr(json_object *body, const char *key)
{
    const char *s = NULL;
    if (cl_json_get_str(body, key, false, &s, NULL) < 0 || !s)
        return "";
    return s;
}

static bool jbool(json_object *body, const char *key)
{
    bool b = false;
    (void)cl_json_get_bool(body, key, false, &b, NULL);
    return b;
}

/* A message body for another thread to keep: a copy. json-c's reference counts are
 * plain integers (no threading support built in), so a body shared with the bus thread,
 * which drops its reference as the handler returns while the worker drops its own, can
 * lose a count: LeakSanitizer found a leaked migration.cold_release body at agent exit
 * (tests/crash/test_migrate_crash.py). NULL when out of memory. */
static json_object *body_for_thread(json_object *body)
{
    json_object *copy = NULL;
    return json_object_deep_copy(body, &copy, NULL) == 0 ? copy : NULL;
}

static int send_msg(agent_mig *m, const char *type, json_object *body, bool reliable)
{
    if (!body)
        return -ENOMEM;
    return m->h.send(m->h.ud, type, body, reliable);
}

static bool is_file(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Run argv without a shell; 0 when it exited 0. */
static int run(char *const argv[], cl_error *err)
{
    extern char **environ;
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int status;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    int r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot run %s: %s", argv[0], strerror(r)), -r;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return cl_error_set(err, CL_E_INTERNAL, "waitpid: %s", strerror(errno)), -EIO;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return cl_error_set(err, CL_E_INTERNAL, "%s failed (status %d)", argv[0], status),
               -EIO;
    return 0;
}

/* Remove the files an instance keeps in instances_dir (by name: never recursive). */
static void remove_files(const char *dir, const char *uuid)
{
    static const char *const files[] = {"console.log", "disk", "migrating", "incoming"};
    char path[PATH_MAX_LEN + 64];
    for (size_t i = 0; i < CL_ARRAY_SIZE(files); i++) {
        snprintf(path, sizeof(path), "%s/%s/%s", dir, uuid, files[i]);
        (void)unlink(path);
    }
    snprintf(path, sizeof(path), "%s/%s", dir, uuid);
    (void)rmdir(path);
}

/* The crash-safe "migrating away" marker of the source (migrate.h). */
static void marker_path(const char *dir, const char *uuid, char *out, size_t len)
{
    snprintf(out, len, "%s/%s/migrating", dir, uuid);
}

/* Write text to path, synced; 0 or negative errno. */
static int put_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    int r = write(fd, text, strlen(text)) == (ssize_t)strlen(text) && fsync(fd) == 0 ? 0
                                                                                   : -EIO;
    close(fd);
    return r;
}

/* The first len-1 bytes of path ("" when unreadable). */
static void get_file(const char *path, char *out, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, out, len - 1) : -1;
    if (fd >= 0)
        close(fd);
    out[n > 0 ? n : 0] = '\0';
}

/* The source's marker holds the migration's uuid and, with shared storage, " shared":
 * a restarted source must not remove a disk the destination now runs from. */
static void marker_set(agent_mig *m, const char *uuid, const char *mig, bool shared)
{
    char p[PATH_MAX_LEN + 64], text[64];
    marker_path(m->inst_dir, uuid, p, sizeof(p));
    snprintf(text, sizeof(text), "%s%s", mig, shared ? " shared" : "");
    int r = put_file(p, text);
    if (r < 0)
        cl_warn(MOD, "cannot write %s: %s", p, strerror(-r));
}

static void marker_clear(agent_mig *m, const char *uuid)
{
    char p[PATH_MAX_LEN + 64];
    marker_path(m->inst_dir, uuid, p, sizeof(p));
    (void)unlink(p);
}

bool agent_mig_marked(const char *instances_dir, const char *uuid)
{
    char p[PATH_MAX_LEN + 64];
    marker_path(instances_dir, uuid, p, sizeof(p));
    return is_file(p);
}

/* The destination's "incoming" marker: do_prepare writes the migration's uuid there
 * before it creates the overlay, and only a check of that migration removes the files
 * (its slot may be gone: a restart). With shared storage the disk at that path is the
 * source's own: no marker is written, so no check, resend or restart can remove it. */
static void incoming_path(const char *dir, const char *uuid, char *out, size_t len)
{
    snprintf(out, len, "%s/%s/incoming", dir, uuid);
}

static bool incoming_is(agent_mig *m, const char *uuid, const char *mig)
{
    char p[PATH_MAX_LEN + 64], got[CL_UUID_LEN];
    incoming_path(m->inst_dir, uuid, p, sizeof(p));
    get_file(p, got, sizeof(got));
    return got[0] && (!mig || strcmp(got, mig) == 0);
}

/* Replace every occurrence of from by to in s (new string, NULL on ENOMEM). */
static char *replace_all(const char *s, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to), n = 0;
    if (fl == 0)
        return strdup(s);
    for (const char *p = strstr(s, from); p; p = strstr(p + fl, from))
        n++;
    size_t len = strlen(s) + n * tl + 1;
    char *out = malloc(len > n * fl ? len : 1);
    if (!out)
        return NULL;
    char *w = out;
    const char *p = s, *q;
    while ((q = strstr(p, from))) {
        memcpy(w, p, (size_t)(q - p));
        w += q - p;
        memcpy(w, to, tl);
        w += tl;
        p = q + fl;
    }
    memcpy(w, p, strlen(p) + 1);
    return out;
}

static int local_base(agent_mig *m, const cl_msg_instance *spec, char *base, size_t blen,
                      char *fmt, size_t flen, cl_error *err);

/* ---- destination: prepare ---- */

static void do_prepare(agent_mig *m, json_object *body)
{
    const char *mig = jstr(body, "migration_uuid");
    const char *block = jstr(body, "block");
    cl_msg_instance spec;
    cl_error err = {0};
    char dir[PATH_MAX_LEN + 64], disk[PATH_MAX_LEN + 80], base[PATH_MAX_LEN + 200];
    bool shared = false, made = false;
    int r = cl_msg_spawn_decode(body, &spec, &err);

    if (r == 0) {
        snprintf(dir, sizeof(dir), "%s/%s", m->inst_dir, spec.uuid);
        snprintf(disk, sizeof(disk), "%s/disk", dir);
        if (mkdir(m->inst_dir, 0755) < 0 && errno != EEXIST)
            r = -errno;
        else if (mkdir(dir, 0755) < 0 && errno != EEXIST)
            r = -errno;
        if (r < 0)
            cl_error_set(&err, CL_E_INTERNAL, "cannot create %s: %s", dir, strerror(-r));
        else if (is_file(disk) && incoming_is(m, spec.uuid, mig))
            made = true; /* a resend: QEMU may be copying into it already; left alone */
        else if (is_file(disk) && !incoming_is(m, spec.uuid, NULL)) {
            /* Never overwritten: a disk already at this path is the source's own, seen
             * through shared storage (an overlay of this host's carries its "incoming"
             * marker; failed attempts remove what they created). */
            if (strcmp(block, "true") == 0)
                r = cl_error_set(&err, CL_E_BAD_REQUEST, "block migration requested but "
                                 "the instance's disk is on shared storage");
            shared = true;
        } else if (strcmp(block, "false") == 0) {
            r = cl_error_set(&err, CL_E_BAD_REQUEST, "block_migration false but the "
                             "destination does not share the source's storage");
        }
    }
    /* The base image: from nube-image into this host's cache (the incremental copy
     * moves only the overlay, so the destination needs the same base), else image_dir. */
    char fmt[16] = "qcow2";
    base[0] = '\0';
    if (r == 0 && !shared && !made) {
        char ip[PATH_MAX_LEN + 64];
        incoming_path(m->inst_dir, spec.uuid, ip, sizeof(ip));
        (void)unlink(disk); /* an earlier attempt's overlay, as its marker said */
        int w = put_file(ip, mig);
        if (w < 0)
            r = cl_error_set(&err, CL_E_INTERNAL, "cannot write %s: %s", ip, strerror(-w));
    }
    if (r == 0 && !shared && !made)
        r = local_base(m, &spec, base, sizeof(base), fmt, sizeof(fmt), &err);
    if (r == 0 && !shared && !made) {
        char size[32];
        snprintf(size, sizeof(size), "%" PRId64 "G",
                 spec.flavor.disk_gb > 0 ? spec.flavor.disk_gb : 1);
        if (base[0]) {
            char *argv[] = {"qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b",
                            base, disk, size, NULL};
            r = run(argv, &err);
        } else {
            char *argv[] = {"qemu-img", "create", "-q", "-f", "qcow2", disk, size, NULL};
            r = run(argv, &err);
        }
    }
    if (r == 0) {
        pthread_mutex_lock(&m->lock);
        mig_entry *e = alloc_locked(m, mig, spec.uuid);
        if (e) {
            e->source = false;
            e->shared = shared;
        }
        pthread_mutex_unlock(&m->lock);
        if (!e)
            r = cl_error_set(&err, CL_E_CONFLICT, "too many migrations in flight");
    }
    if (r < 0 && spec.uuid[0] && !shared)
        remove_files(m->inst_dir, spec.uuid);
    json_object *rep = json_object_new_object();
    json_object_object_add(rep, "migration_uuid", json_object_new_string(mig));
    json_object_object_add(rep, "ok", json_object_new_boolean(r == 0));
    json_object_object_add(rep, "fault", json_object_new_string(r == 0 ? "" : err.message));
    json_object_object_add(rep, "shared", json_object_new_boolean(shared));
    json_object_object_add(rep, "uri", json_object_new_string(m->mig_uri));
    json_object_object_add(rep, "address", json_object_new_string(m->mig_addr));
    json_object_object_add(rep, "instances_dir", json_object_new_string(m->inst_dir));
    json_object_object_add(rep, "image_dir", json_object_new_string(m->img_dir));
    json_object_object_add(rep, "cache_dir", json_object_new_string(m->cache_dir));
    cl_info(MOD, "migration %s: prepared %s (%s)%s%s", mig, spec.uuid,
            shared ? "shared storage" : "overlay created", r ? ": " : "", r ? err.message : "");
    (void)send_msg(m, CL_MSG_MIGRATION_PREPARED, rep, true);
}

/* ---- destination: check (and adopt or clean) ---- */

static int64_t job_param(virTypedParameterPtr p, int n, const char *name)
{
    unsigned long long v = 0;
    if (virTypedParamsGetULLong(p, n, name, &v) != 1)
        return 0;
    return (int64_t)v;
}

static void do_check(agent_mig *m, json_object *body)
{
    const char *mig = jstr(body, "migration_uuid");
    bool source_has = jbool(body, "source_has");
    cl_msg_instance spec;
    cl_error err = {0};
    bool here = false, ours;
    int64_t downtime = 0, elapsed = 0;
    char fault[512] = "";

    if (cl_msg_spawn_decode(body, &spec, &err) < 0) {
        cl_warn(MOD, "bad migration.check: %s", err.message);
        return;
    }
    /* Only what this host made for this migration may go, whatever its slot says (it is
     * lost in a restart; a resend finds it freed): with shared storage the disk is the
     * source's own. */
    ours = incoming_is(m, spec.uuid, mig);

    _cleanup_vconn_ virConnectPtr c = virConnectOpen(m->uri);
    _cleanup_vdom_ virDomainPtr dom = c ? virDomainLookupByUUIDString(c, spec.uuid) : NULL;
    int st = VIR_DOMAIN_NOSTATE;
    if (!c)
        snprintf(fault, sizeof(fault), "cannot connect to libvirt: %s", lv_msg());
    else if (dom && virDomainGetState(dom, &st, NULL, 0) == 0)
        here = st == VIR_DOMAIN_RUNNING || st == VIR_DOMAIN_PAUSED || st == VIR_DOMAIN_BLOCKED;
    if (here && !source_has) {
        virTypedParameterPtr p = NULL;
        int n = 0, type = 0;
        if (virDomainGetJobStats(dom, &type, &p, &n, VIR_DOMAIN_JOB_STATS_COMPLETED) == 0) {
            downtime = job_param(p, n, VIR_DOMAIN_JOB_DOWNTIME);
            elapsed = job_param(p, n, VIR_DOMAIN_JOB_TIME_ELAPSED);
            virTypedParamsFree(p, n);
        }
        /* A force-complete pauses the guest; the destination resumes it, but make sure. */
        if (st == VIR_DOMAIN_PAUSED && virDomainResume(dom) < 0)
            cl_warn(MOD, "migration %s: cannot resume %s: %s", mig, spec.uuid, lv_msg());
        char ip[PATH_MAX_LEN + 64];
        incoming_path(m->inst_dir, spec.uuid, ip, sizeof(ip));
        (void)unlink(ip); /* the disk is the instance's now */
    } else {
        /* Not ours (the source still runs it, or it never arrived): remove what came. */
        if (dom) {
            if (virDomainIsActive(dom) == 1)
                (void)virDomainDestroy(dom);
            (void)virDomainUndefineFlags(dom, VIR_DOMAIN_UNDEFINE_MANAGED_SAVE);
        }
        if (ours)
            remove_files(m->inst_dir, spec.uuid);
        here = false;
    }
    pthread_mutex_lock(&m->lock);
    mig_entry *e = find_locked(m, mig);
    if (e)
        e->used = false;
    pthread_mutex_unlock(&m->lock);

    json_object *rep = json_object_new_object();
    json_object_object_add(rep, "migration_uuid", json_object_new_string(mig));
    json_object_object_add(rep, "here", json_object_new_boolean(here));
    json_object_object_add(rep, "fault", json_object_new_string(fault));
    json_object_object_add(rep, "downtime_ms", json_object_new_int64(downtime));
    json_object_object_add(rep, "elapsed_ms", json_object_new_int64(elapsed));
    cl_info(MOD, "migration %s: instance %s %s (downtime %" PRId64 " ms)", mig, spec.uuid,
            here ? "arrived and runs here" : "is not here; cleaned", downtime);
    (void)send_msg(m, CL_MSG_MIGRATION_CHECKED, rep, true);
    if (here)
        m->h.adopt(m->h.ud, &spec);
}

/* ---- source: cleanup after the move ---- */

static void do_cleanup(agent_mig *m, json_object *body)
{
    const char *mig = jstr(body, "migration_uuid");
    const char *uuid = jstr(body, "instance_uuid");
    bool shared = false;

    if (!cl_uuid_valid(uuid))
        return;
    pthread_mutex_lock(&m->lock);
    mig_entry *e = find_locked(m, mig);
    /* Files go only with a slot that says they are this host's alone (after a restart
     * the marker restores it): a resend finds the slot freed, and with shared storage
     * the disk is the one the guest now runs from. */
    shared = !e || e->shared;
    if (!jbool(body, "moved")) {
        /* It stayed here: only the in-flight claim goes (a run already released it). */
        if (e && e->source && e->finished && !e->thread)
            e->used = false;
        pthread_mutex_unlock(&m->lock);
        marker_clear(m, uuid);
        return;
    }
    pthread_mutex_unlock(&m->lock);
    /* UNDEFINE_SOURCE removed the definition; a leftover (inactive) one goes too. */
    _cleanup_vconn_ virConnectPtr c = virConnectOpen(m->uri);
    _cleanup_vdom_ virDomainPtr dom = c ? virDomainLookupByUUIDString(c, uuid) : NULL;
    if (dom && virDomainIsActive(dom) == 0)
        (void)virDomainUndefineFlags(dom, VIR_DOMAIN_UNDEFINE_MANAGED_SAVE);
    if (dom && virDomainIsActive(dom) == 1) {
        cl_warn(MOD, "migration %s: %s still runs here; not cleaning", mig, uuid);
        return;
    }
    if (!shared)
        remove_files(m->inst_dir, uuid);
    else
        marker_clear(m, uuid);
    m->h.forget(m->h.ud, uuid);
    pthread_mutex_lock(&m->lock);
    e = find_locked(m, mig);
    bool join = e && e->thread;
    pthread_t th;
    if (join) {
        th = e->th;
        e->thread = false;
    }
    if (e)
        e->used = false;
    pthread_mutex_unlock(&m->lock);
    if (join)
        pthread_join(th, NULL);
    cl_info(MOD, "migration %s: %s cleaned from this host", mig, uuid);
}

/* ---- source: the run ---- */

typedef struct call_ctx {
    virDomainPtr dom;
    const char *dconnuri;
    virTypedParameterPtr params;
    int nparams;
    unsigned flags;
    int rc;
    char fault[512];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
} call_ctx;

static void *call_main(void *arg)
{
    call_ctx *cc = arg;
    int rc = virDomainMigrateToURI3(cc->dom, cc->dconnuri, cc->params, (unsigned)cc->nparams,
                                    cc->flags);
    pthread_mutex_lock(&cc->mu);
    cc->rc = rc;
    if (rc < 0)
        cl_strlcpy(cc->fault, lv_msg(), sizeof(cc->fault));
    cc->done = true;
    pthread_cond_signal(&cc->cv);
    pthread_mutex_unlock(&cc->mu);
    return NULL;
}

static void send_progress(agent_mig *m, const char *mig, virTypedParameterPtr p, int n)
{
    json_object *b = json_object_new_object();
    static const struct {
        const char *key, *param;
    } f[] = {
        {"elapsed_ms", VIR_DOMAIN_JOB_TIME_ELAPSED},
        {"memory_total", VIR_DOMAIN_JOB_MEMORY_TOTAL},
        {"memory_processed", VIR_DOMAIN_JOB_MEMORY_PROCESSED},
        {"memory_remaining", VIR_DOMAIN_JOB_MEMORY_REMAINING},
        {"disk_total", VIR_DOMAIN_JOB_DISK_TOTAL},
        {"disk_processed", VIR_DOMAIN_JOB_DISK_PROCESSED},
        {"disk_remaining", VIR_DOMAIN_JOB_DISK_REMAINING},
    };
    json_object_object_add(b, "migration_uuid", json_object_new_string(mig));
    for (size_t i = 0; i < CL_ARRAY_SIZE(f); i++)
        json_object_object_add(b, f[i].key, json_object_new_int64(job_param(p, n, f[i].param)));
    (void)send_msg(m, CL_MSG_MIGRATION_PROGRESS, b, false);
}

static void *run_main(void *arg);

typedef struct run_arg {
    agent_mig *m;
    mig_entry *e;
} run_arg;

static void *run_main(void *arg)
{
    run_arg *ra = arg;
    agent_mig *m = ra->m;
    mig_entry *e = ra->e;
    free(ra);
    char fault[600] = "";
    const char *source = "absent";
    virTypedParameterPtr params = NULL;
    int np = 0, maxp = 0;
    _cleanup_free_ char *xml = NULL, *x1 = NULL, *x2 = NULL, *dxml = NULL;
    char from[PATH_MAX_LEN + 64], to[PATH_MAX_LEN + 64], mig_uri[200];
    int64_t t0 = cl_now_ms();
    bool forced = false;

    _cleanup_vconn_ virConnectPtr c = virConnectOpen(m->uri);
    _cleanup_vdom_ virDomainPtr dom = c ? virDomainLookupByUUIDString(c, e->uuid) : NULL;
    if (!dom) {
        snprintf(fault, sizeof(fault), "the domain is not on the source: %s", lv_msg());
        goto decide;
    }
    xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_MIGRATABLE | VIR_DOMAIN_XML_SECURE);
    if (!xml) {
        snprintf(fault, sizeof(fault), "cannot read the domain XML: %s", lv_msg());
        goto decide;
    }
    snprintf(from, sizeof(from), "%s/%s/", m->inst_dir, e->uuid);
    snprintf(to, sizeof(to), "%s/%s/", e->dest_inst[0] ? e->dest_inst : m->inst_dir, e->uuid);
    x1 = replace_all(xml, from, to);
    snprintf(from, sizeof(from), "%s/", m->img_dir);
    snprintf(to, sizeof(to), "%s/", e->dest_img[0] ? e->dest_img : m->img_dir);
    x2 = x1 ? replace_all(x1, from, to) : NULL;
    if (m->cache_dir[0] && e->dest_cache[0]) {
        /* Cache entries are named by their content's hash: same name on every host. */
        snprintf(from, sizeof(from), "%s/", m->cache_dir);
        snprintf(to, sizeof(to), "%s/", e->dest_cache);
        dxml = x2 ? replace_all(x2, from, to) : NULL;
    } else {
        dxml = TAKE_PTR(x2);
    }
    if (!dxml) {
        cl_strlcpy(fault, "out of memory", sizeof(fault));
        goto decide;
    }
    if (virTypedParamsAddString(&params, &np, &maxp, VIR_MIGRATE_PARAM_DEST_XML, dxml) < 0 ||
        virTypedParamsAddString(&params, &np, &maxp, VIR_MIGRATE_PARAM_PERSIST_XML, dxml) < 0) {
        cl_strlcpy(fault, "cannot build migration parameters", sizeof(fault));
        goto decide;
    }
    if (e->dest_addr[0]) {
        snprintf(mig_uri, sizeof(mig_uri), strchr(e->dest_addr, ':') ? "tcp://[%s]"
                                                                      : "tcp://%s",
                 e->dest_addr);
        (void)virTypedParamsAddString(&params, &np, &maxp, VIR_MIGRATE_PARAM_URI, mig_uri);
    }
    unsigned flags = VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER | VIR_MIGRATE_PERSIST_DEST |
                     VIR_MIGRATE_UNDEFINE_SOURCE;
    flags |= e->shared ? VIR_MIGRATE_UNSAFE : VIR_MIGRATE_NON_SHARED_INC;
    if (m->o.auto_converge)
        flags |= VIR_MIGRATE_AUTO_CONVERGE;
    if (m->o.post_copy)
        flags |= VIR_MIGRATE_POSTCOPY;

    call_ctx cc = {.dom = dom, .dconnuri = e->dest_uri, .params = params, .nparams = np,
                   .flags = flags};
    pthread_mutex_init(&cc.mu, NULL);
    pthread_cond_init(&cc.cv, NULL);
    pthread_t cth;
    if (pthread_create(&cth, NULL, call_main, &cc) != 0) {
        cl_strlcpy(fault, "cannot start the migration thread", sizeof(fault));
        pthread_cond_destroy(&cc.cv);
        pthread_mutex_destroy(&cc.mu);
        goto decide;
    }
    cl_info(MOD, "migration %s: %s -> %s (%s)", e->mig, e->uuid, e->dest_uri,
            e->shared ? "shared storage" : "incremental disk copy");
    /* The monitor: job statistics, downtime steps, timeout, abort/force requests. */
    int step = 0;
    int64_t timeout_ms = m->o.timeout_s * 1000;
    bool aborted = false;
    pthread_mutex_lock(&cc.mu);
    while (!cc.done) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ns = ts.tv_nsec + (m->o.progress_ms % 1000) * 1000000LL;
        ts.tv_sec += m->o.progress_ms / 1000 + ns / 1000000000LL;
        ts.tv_nsec = ns % 1000000000LL;
        pthread_cond_timedwait(&cc.cv, &cc.mu, &ts);
        if (cc.done)
            break;
        pthread_mutex_unlock(&cc.mu);
        int64_t el = cl_now_ms() - t0;
        virTypedParameterPtr jp = NULL;
        int jn = 0, jt = 0;
        if (virDomainGetJobStats(dom, &jt, &jp, &jn, 0) == 0 && jt != VIR_DOMAIN_JOB_NONE) {
            send_progress(m, e->mig, jp, jn);
            int want = 1 + (int)(timeout_ms > 0 ? el * 2 * DOWNTIME_STEPS / timeout_ms : 0);
            if (want > DOWNTIME_STEPS)
                want = DOWNTIME_STEPS;
            if (want > step) {
                unsigned long long d = (unsigned long long)(m->o.max_downtime_ms * want /
                                                            DOWNTIME_STEPS);
                if (virDomainMigrateSetMaxDowntime(dom, d, 0) == 0)
                    step = want;
                cl_debug(MOD, "migration %s: max downtime %llu ms", e->mig, d);
            }
        }
        if (jp)
            virTypedParamsFree(jp, jn);
        int req = atomic_exchange(&e->request, REQ_NONE);
        if (req == REQ_NONE && timeout_ms > 0 && el > timeout_ms && !aborted && !forced)
            req = m->o.force_on_timeout ? REQ_FORCE : REQ_ABORT;
        if (req == REQ_ABORT && !aborted) {
            cl_info(MOD, "migration %s: aborting", e->mig);
            aborted = virDomainAbortJob(dom) == 0 || aborted;
        } else if (req == REQ_FORCE && !forced && m->o.post_copy) {
            /* The guest runs on the destination at once; pages follow on demand. */
            cl_info(MOD, "migration %s: force-complete (switching to post-copy)", e->mig);
            forced = virDomainMigrateStartPostCopy(dom, 0) == 0;
        } else if (req == REQ_FORCE && !forced) {
            cl_info(MOD, "migration %s: force-complete (pausing the guest)", e->mig);
            forced = virDomainSuspend(dom) == 0;
        }
        pthread_mutex_lock(&cc.mu);
    }
    pthread_mutex_unlock(&cc.mu);
    pthread_join(cth, NULL);
    pthread_cond_destroy(&cc.cv);
    pthread_mutex_destroy(&cc.mu);
    if (cc.rc < 0)
        snprintf(fault, sizeof(fault), "%s%s", aborted ? "aborted: " : "", cc.fault);
    cl_info(MOD, "migration %s: libvirt call returned %d after %" PRId64 " ms%s%s", e->mig,
            cc.rc, cl_now_ms() - t0, fault[0] ? ": " : "", fault);

decide:
    virTypedParamsFree(params, np);
    /* Ask this host's hypervisor, not the return code. */
    {
        _cleanup_vdom_ virDomainPtr d2 = c ? virDomainLookupByUUIDString(c, e->uuid) : NULL;
        int st = VIR_DOMAIN_NOSTATE;
        if (d2 && virDomainIsActive(d2) == 1 && virDomainGetState(d2, &st, NULL, 0) == 0) {
            if (st == VIR_DOMAIN_PAUSED && forced && virDomainResume(d2) == 0)
                st = VIR_DOMAIN_RUNNING;
            source = st == VIR_DOMAIN_PAUSED ? "paused" : "running";
        } else if (d2) {
            source = "shutoff";
        } else if (!c) {
            source = "unknown";
            snprintf(fault, sizeof(fault), "cannot connect to libvirt: %s", lv_msg());
        }
    }
    json_object *b = json_object_new_object();
    json_object_object_add(b, "migration_uuid", json_object_new_string(e->mig));
    json_object_object_add(b, "instance_uuid", json_object_new_string(e->uuid));
    json_object_object_add(b, "source", json_object_new_string(source));
    json_object_object_add(b, "fault", json_object_new_string(fault));
    json_object_object_add(b, "total_ms", json_object_new_int64(cl_now_ms() - t0));
    (void)send_msg(m, CL_MSG_MIGRATION_DONE, b, true);
    pthread_mutex_lock(&m->lock);
    e->finished = true;
    /* Still here: the instance stays this host's, nothing to clean (the thread is
     * joined when the slot is reused or at free). Gone: owned until migration.cleanup. */
    if (strcmp(source, "running") == 0 || strcmp(source, "paused") == 0 ||
        strcmp(source, "shutoff") == 0) {
        e->used = false;
        marker_clear(m, e->uuid);
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

static void on_start(agent_mig *m, json_object *body)
{
    const char *mig = jstr(body, "migration_uuid"), *uuid = jstr(body, "instance_uuid");
    const char *fault = NULL;

    if (!cl_uuid_valid(mig) || !cl_uuid_valid(uuid) || !jstr(body, "dest_uri")[0]) {
        cl_warn(MOD, "bad migration.start");
        return;
    }
    pthread_mutex_lock(&m->lock);
    mig_entry *e = find_locked(m, mig);
    if (e && e->source) {
        pthread_mutex_unlock(&m->lock);
        return; /* a resend: already running or done */
    }
    e = m->stop ? NULL : alloc_locked(m, mig, uuid);
    if (!e)
        fault = "too many migrations in flight on the source";
    if (e) {
        e->source = true;
        e->shared = jbool(body, "shared");
        e->block = !e->shared;
        cl_strlcpy(e->dest_uri, jstr(body, "dest_uri"), sizeof(e->dest_uri));
        cl_strlcpy(e->dest_addr, jstr(body, "dest_address"), sizeof(e->dest_addr));
        cl_strlcpy(e->dest_inst, jstr(body, "dest_instances_dir"), sizeof(e->dest_inst));
        cl_strlcpy(e->dest_img, jstr(body, "dest_image_dir"), sizeof(e->dest_img));
        cl_strlcpy(e->dest_cache, jstr(body, "dest_cache_dir"), sizeof(e->dest_cache));
        marker_set(m, uuid, mig, e->shared); /* before the domain can leave: survives a crash */
        run_arg *ra = malloc(sizeof(*ra));
        if (ra) {
            ra->m = m;
            ra->e = e;
        }
        if (!ra || pthread_create(&e->th, NULL, run_main, ra) != 0) {
            free(ra);
            e->used = false;
            marker_clear(m, uuid);
            fault = "cannot start the migration thread";
        } else {
            e->thread = true;
        }
    }
    pthread_mutex_unlock(&m->lock);
    if (fault) {
        json_object *b = json_object_new_object();
        json_object_object_add(b, "migration_uuid", json_object_new_string(mig));
        json_object_object_add(b, "instance_uuid", json_object_new_string(uuid));
        json_object_object_add(b, "source", json_object_new_string("running"));
        json_object_object_add(b, "fault", json_object_new_string(fault));
        (void)send_msg(m, CL_MSG_MIGRATION_DONE, b, true);
    }
}

static void on_abort(agent_mig *m, json_object *body)
{
    const char *mig = jstr(body, "migration_uuid");
    bool force = strcmp(jstr(body, "action"), "force_complete") == 0;
    pthread_mutex_lock(&m->lock);
    mig_entry *e = find_locked(m, mig);
    if (e && e->source && !e->finished)
        atomic_store(&e->request, force ? REQ_FORCE : REQ_ABORT);
    pthread_mutex_unlock(&m->lock);
    cl_info(MOD, "migration %s: %s requested%s", mig, force ? "force-complete" : "abort",
            e ? "" : " (not running here)");
}

/* ---- cold migration (issue 8): export on the source, import on the destination ----
 *
 * Agents share no storage and never talk on the bus, so the overlay travels over HTTP:
 * the source serves it from its agent port (agent.c's GET /v1/migrations/{mid}/disk) to
 * whoever presents the move's token, which the scheduler made up and sent only to the
 * two agents; the destination pulls it with libcurl, streamed to a temporary file and
 * checked on the way (no more bytes than announced, sha256, the format inspector), and
 * rebases it on its own copy of the base image before it takes the final name. The
 * stop and the transfer run in a thread per move (the slot's th): the shutdown may take
 * the guest's whole ACPI grace period, the worker must stay free for live migrations. */

#define MSG_COLD_EXPORT "migration.cold_export"
#define MSG_COLD_EXPORTED "migration.cold_exported"
#define MSG_COLD_IMPORT "migration.cold_import"
#define MSG_COLD_IMPORTED "migration.cold_imported"
#define MSG_COLD_RELEASE "migration.cold_release"
#define TOKEN_HEADER "X-Nube-Migration-Token"
#define QEMU_IMG_AS_BYTES (1ULL << 30) /* qemu-img's address space */
#define QEMU_IMG_CPU_S 30              /* and CPU time */
#define FETCH_CONNECT_S 10
#define FETCH_STALL_S 30               /* below 1 KiB/s for this long: give up */
#define OVERLAY_SLACK (64ULL << 20)    /* qcow2 metadata beyond the virtual size */

typedef struct cold_arg {
    agent_mig *m;
    mig_entry *e;
    json_object *body;
} cold_arg;

static bool test_driver(const agent_mig *m)
{
    return strncmp(m->uri, "test:", 5) == 0;
}

/* The base of spec's overlay on this host: nube-image's file in the local cache, else
 * <image_dir>/<image_ref>/disk.qcow2; base "" when there is none (a blank disk). */
static int local_base(agent_mig *m, const cl_msg_instance *spec, char *base, size_t blen,
                      char *fmt, size_t flen, cl_error *err)
{
    base[0] = '\0';
    cl_strlcpy(fmt, "qcow2", flen);
    if (m->o.images) {
        _cleanup_free_ agent_image_files *files = calloc(1, sizeof(*files)); /* ~13 KB */
        int r = files ? agent_image_cache_resolve(m->o.images, spec, files, err) : -ENOMEM;
        if (r == 0 && files->disk[0]) {
            cl_strlcpy(base, files->disk, blen);
            cl_strlcpy(fmt, files->disk_format[0] ? files->disk_format : "qcow2", flen);
        } else if (r < 0 && r != -ENOENT)
            return r;
    }
    if (!base[0])
        snprintf(base, blen, "%s/%s/disk.qcow2", m->img_dir, spec->image_ref);
    if (base[0] != '/' || strstr(base, "/../") || !is_file(base))
        base[0] = '\0';
    return 0;
}

/* Run qemu-img (found on PATH) with argv under CPU-time and address-space limits, as
 * issue 6 asks of every qemu-img run on data that came from elsewhere. */
static int run_qemu_img(char *const argv[], cl_error *err)
{
    char path[PATH_MAX_LEN] = "";
    const char *env = getenv("PATH");
    _cleanup_free_ char *dirs = strdup(env && *env ? env : "/usr/bin:/bin");
    char *save = NULL;
    for (char *d = dirs ? strtok_r(dirs, ":", &save) : NULL; d && !path[0];
         d = strtok_r(NULL, ":", &save)) {
        snprintf(path, sizeof(path), "%s/qemu-img", d);
        if (access(path, X_OK) != 0)
            path[0] = '\0';
    }
    if (!path[0])
        return cl_error_set(err, CL_E_INTERNAL, "qemu-img not found on PATH"), -ENOENT;
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0)
        return cl_error_set(err, CL_E_INTERNAL, "/dev/null: %s", strerror(errno)), -EIO;
    pid_t pid = fork();
    if (pid == 0) {
        /* Only async-signal-safe calls here: the parent has threads. */
        struct rlimit as = {QEMU_IMG_AS_BYTES, QEMU_IMG_AS_BYTES};
        struct rlimit cpu = {QEMU_IMG_CPU_S, QEMU_IMG_CPU_S};
        if (setrlimit(RLIMIT_AS, &as) < 0 || setrlimit(RLIMIT_CPU, &cpu) < 0 ||
            dup2(null, STDIN_FILENO) < 0 || dup2(null, STDOUT_FILENO) < 0)
            _exit(126);
        execv(path, argv);
        _exit(127);
    }
    int e = errno;
    close(null);
    if (pid < 0)
        return cl_error_set(err, CL_E_INTERNAL, "fork: %s", strerror(e)), -e;
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return cl_error_set(err, CL_E_INTERNAL, "waitpid: %s", strerror(errno)), -EIO;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return cl_error_set(err, CL_E_INTERNAL, "qemu-img %s failed (status %d)", argv[1],
                            status), -EIO;
    return 0;
}

static void hex_of(const unsigned char *md, unsigned n, char *out)
{
    for (unsigned i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* sha256 (hex) and size of a file. */
static int hash_file(const char *path, char out[65], uint64_t *size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int r = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) ? 0 : -ENOMEM;
    _cleanup_free_ char *buf = malloc(1 << 20);
    uint64_t n = 0;
    if (!buf)
        r = -ENOMEM;
    while (r == 0) {
        ssize_t got = read(fd, buf, 1 << 20);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            r = -errno;
        if (got <= 0)
            break;
        EVP_DigestUpdate(ctx, buf, (size_t)got);
        n += (uint64_t)got;
    }
    if (r == 0) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned len = 0;
        EVP_DigestFinal_ex(ctx, md, &len);
        hex_of(md, len, out);
        *size = n;
    }
    EVP_MD_CTX_free(ctx);
    close(fd);
    return r;
}

static void cold_reply(agent_mig *m, const char *type, const char *mig, const char *uuid,
                       const char *fault, json_object *extra)
{
    json_object *b = extra ? extra : json_object_new_object();
    if (!b)
        return;
    json_object_object_add(b, "migration_uuid", json_object_new_string(mig));
    json_object_object_add(b, "instance_uuid", json_object_new_string(uuid));
    json_object_object_add(b, "ok", json_object_new_boolean(fault == NULL));
    json_object_object_add(b, "fault", json_object_new_string(fault ? fault : ""));
    (void)send_msg(m, type, b, true);
}

/* ---- source: export ---- */

static void *export_main(void *arg)
{
    cold_arg *ca = arg;
    agent_mig *m = ca->m;
    mig_entry *e = ca->e;
    char mig[CL_UUID_LEN], uuid[CL_UUID_LEN], disk[PATH_MAX_LEN + 80], sha[65] = "";
    cl_error err = {0};
    uint64_t size = 0;
    bool nodisk = false;
    const char *fault = NULL;

    pthread_mutex_lock(&m->lock);
    cl_strlcpy(mig, e->mig, sizeof(mig));
    cl_strlcpy(uuid, e->uuid, sizeof(uuid));
    pthread_mutex_unlock(&m->lock);
    snprintf(disk, sizeof(disk), "%s/%s/disk", m->inst_dir, uuid);
    int64_t t0 = cl_now_ms();
    int r = m->h.stop(m->h.ud, uuid, &err);
    if (r < 0)
        fault = r == -ENOENT ? "the instance has no domain on the source" : err.message;
    if (!fault) {
        r = hash_file(disk, sha, &size);
        if (r == -ENOENT && test_driver(m))
            nodisk = true; /* the test driver keeps no disk file */
        else if (r < 0) {
            cl_error_set(&err, CL_E_INTERNAL, "cannot read %.300s: %s", disk, strerror(-r));
            fault = err.message;
        }
    }
    pthread_mutex_lock(&m->lock);
    if (!fault) {
        e->exported = !nodisk;
        e->size = size;
        cl_strlcpy(e->disk, disk, sizeof(e->disk));
    }
    pthread_mutex_unlock(&m->lock);
    json_object *b = json_object_new_object();
    if (b) {
        json_object_object_add(b, "size", json_object_new_int64((int64_t)size));
        json_object_object_add(b, "sha256", json_object_new_string(sha));
        json_object_object_add(b, "nodisk", json_object_new_boolean(nodisk));
    }
    cl_info(MOD, "cold migration %s: %s stopped and exported in %" PRId64 " ms (%" PRIu64
            " bytes)%s%s", mig, uuid, cl_now_ms() - t0, size, fault ? ": " : "",
            fault ? fault : "");
    cold_reply(m, MSG_COLD_EXPORTED, mig, uuid, fault, b);
    json_object_put(ca->body);
    free(ca);
    return NULL;
}

/* Start a thread for a cold step on a new slot (source: export; else import). */
static void cold_start(agent_mig *m, json_object *body, bool source,
                       void *(*fn)(void *), const char *reply)
{
    const char *mig = jstr(body, "migration_uuid");
    const char *uuid = jstr(body, "instance_uuid");
    cl_msg_instance spec;
    if (!source && cl_msg_spawn_decode(body, &spec, NULL) == 0)
        uuid = spec.uuid;
    if (!cl_uuid_valid(mig) || !cl_uuid_valid(uuid)) {
        cl_warn(MOD, "bad %s", source ? MSG_COLD_EXPORT : MSG_COLD_IMPORT);
        return;
    }
    const char *fault = NULL;
    pthread_mutex_lock(&m->lock);
    mig_entry *e = find_locked(m, mig);
    if (e) {
        pthread_mutex_unlock(&m->lock);
        return; /* a resend: running or done */
    }
    e = m->stop ? NULL : alloc_locked(m, mig, uuid);
    if (!e)
        fault = "too many migrations in flight";
    else {
        e->source = source;
        e->cold = true;
        e->finished = true; /* nothing of the live-migration run applies */
        cl_strlcpy(e->token, jstr(body, "token"), sizeof(e->token));
        cold_arg *ca = malloc(sizeof(*ca));
        if (ca) {
            ca->m = m;
            ca->e = e;
            ca->body = body_for_thread(body);
        }
        if (!ca || !ca->body || pthread_create(&e->th, NULL, fn, ca) != 0) {
            if (ca)
                json_object_put(ca->body);
            free(ca);
            e->used = false;
            fault = "cannot start the migration thread";
        } else
            e->thread = true;
    }
    pthread_mutex_unlock(&m->lock);
    if (fault)
        cold_reply(m, reply, mig, uuid, fault, NULL);
}

static bool token_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char d = la != lb;
    for (size_t i = 0; i < la && i < lb; i++)
        d |= (unsigned char)(a[i] ^ b[i]);
    return d == 0 && la > 0;
}

void agent_mig_serve_disk(agent_mig *m, const cl_http_req *req, cl_http_resp *resp)
{
    const char *mid = cl_http_req_param(req, "mid");
    const char *tok = cl_http_req_header(req, TOKEN_HEADER);
    char disk[PATH_MAX_LEN + 80] = "";
    uint64_t size = 0;

    pthread_mutex_lock(&m->lock);
    mig_entry *e = mid ? find_locked(m, mid) : NULL;
    bool ok = e && e->cold && e->source && e->exported && tok && token_equal(tok, e->token);
    if (ok) {
        cl_strlcpy(disk, e->disk, sizeof(disk));
        size = e->size;
    }
    pthread_mutex_unlock(&m->lock);
    if (!ok) {
        cl_warn(MOD, "disk of migration %.40s refused: %s", mid ? mid : "",
                e && e->cold ? "wrong or missing token" : "no such export");
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "No such migration disk.");
        return;
    }
    int fd = open(disk, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) < 0 || (uint64_t)sb.st_size != size) {
        if (fd >= 0)
            close(fd);
        cl_http_resp_errorf(resp, CL_E_CONFLICT, "The exported disk changed or vanished.");
        return;
    }
    cl_info(MOD, "cold migration %s: serving %" PRIu64 " bytes", mid, size);
    cl_http_resp_fd(resp, 200, fd, 0, size);
}

/* ---- destination: import ---- */

typedef struct fetch {
    int fd;
    uint64_t got, want;
    EVP_MD_CTX *sha256;
    cl_img_inspector *insp;
    unsigned char backing[12]; /* header bytes 8..19: backing file offset and size */
    int error;                 /* errno of a failed write, EFBIG, or EINVAL (refused) */
} fetch;

static size_t on_fetch(char *data, size_t size, size_t n, void *ud)
{
    fetch *f = ud;
    size_t len = size * n;
    if (f->got + len > f->want) {
        f->error = EFBIG;
        return 0;
    }
    int wr = cl_write_all(f->fd, data, len);
    if (wr < 0) {
        f->error = -wr;
        return 0;
    }
    EVP_DigestUpdate(f->sha256, data, len);
    /* The overlay names its base (the source's path): the inspector refuses any
     * backing file, so it sees the header with that reference blanked; the reference
     * is replaced by this host's base below. Everything else it checks as for images
     * (version, external data file, unknown features, virtual size). */
    size_t head = f->got < 20 ? (size_t)(20 - f->got) : 0;
    if (head > len)
        head = len;
    unsigned char tmp[20];
    memcpy(tmp, data, head);
    for (size_t i = 0; i < head; i++) {
        uint64_t at = f->got + i;
        if (at >= 8) {
            f->backing[at - 8] = tmp[i];
            tmp[i] = 0;
        }
    }
    int r = head ? cl_img_inspector_feed(f->insp, tmp, head) : 0;
    if (r == 0 && len > head)
        r = cl_img_inspector_feed(f->insp, data + head, len - head);
    f->got += len;
    if (r < 0) {
        f->error = EINVAL;
        return 0;
    }
    return len;
}

/* Pull url into path (created), checking size, sha256 and the format. *had_backing:
 * the overlay named a base. 0 or negative errno + err. */
static int fetch_disk(const char *url, const char *token, const char *path, uint64_t size,
                      const char *sha_want, uint64_t max_vsize, bool *had_backing,
                      cl_error *err)
{
    fetch f = {.fd = -1, .want = size};
    char hdr[128], sha[65] = "";
    struct curl_slist *hl = NULL;
    CURL *curl = NULL;
    long status = 0;
    int r = 0;

    f.fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (f.fd < 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot create %s: %s", path,
                            strerror(errno)), -errno;
    snprintf(hdr, sizeof(hdr), TOKEN_HEADER ": %s", token);
    f.sha256 = EVP_MD_CTX_new();
    f.insp = cl_img_inspector_new(CL_IMG_FMT_QCOW2, max_vsize);
    curl = curl_easy_init();
    hl = curl_slist_append(NULL, hdr);
    explicit_bzero(hdr, sizeof(hdr));
    if (!f.sha256 || !f.insp || !curl || !hl ||
        !EVP_DigestInit_ex(f.sha256, EVP_sha256(), NULL)) {
        r = cl_error_set(err, CL_E_INTERNAL, "out of memory");
        goto out;
    }
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_fetch);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &f);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, (long)FETCH_CONNECT_S);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, (long)FETCH_STALL_S);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    CURLcode cc = curl_easy_perform(curl);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    cl_img_format fmt = CL_IMG_FMT_QCOW2;
    uint64_t vsize = 0;
    if (f.error == EFBIG)
        r = cl_error_set(err, CL_E_INTERNAL, "the source sent more than the %" PRIu64
                         " bytes it announced", size);
    else if (f.error == EINVAL || (cc == CURLE_OK && f.got == size &&
                                   cl_img_inspector_finish(f.insp, &fmt, &vsize) < 0))
        r = cl_error_set(err, CL_E_INTERNAL, "the disk from the source was refused by the "
                         "format check: %s", cl_img_inspector_reason(f.insp));
    else if (f.error)
        r = cl_error_set(err, CL_E_INTERNAL, "cannot write %s: %s", path, strerror(f.error));
    else if (cc != CURLE_OK)
        r = cl_error_set(err, CL_E_INTERNAL, "fetching the disk from the source failed: %s "
                         "(HTTP %ld)", curl_easy_strerror(cc), status);
    else if (f.got != size)
        r = cl_error_set(err, CL_E_INTERNAL, "got %" PRIu64 " bytes of the disk, the source "
                         "announced %" PRIu64, f.got, size);
    else if (fmt != CL_IMG_FMT_QCOW2)
        r = cl_error_set(err, CL_E_INTERNAL, "the disk from the source is %s, not qcow2",
                         cl_img_format_name(fmt));
    if (r < 0)
        goto out;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    EVP_DigestFinal_ex(f.sha256, md, &mdlen);
    hex_of(md, mdlen, sha);
    if (strcmp(sha, sha_want) != 0) {
        r = cl_error_set(err, CL_E_INTERNAL, "sha256 mismatch: the disk received hashes to "
                         "%.16s..., the source measured %.16s...", sha, sha_want);
        goto out;
    }
    if (fsync(f.fd) < 0) {
        r = cl_error_set(err, CL_E_INTERNAL, "cannot sync %s: %s", path, strerror(errno));
        goto out;
    }
    uint64_t off = 0;
    for (int i = 0; i < 8; i++)
        off = off << 8 | f.backing[i];
    *had_backing = off != 0;
out:
    curl_slist_free_all(hl);
    if (curl)
        curl_easy_cleanup(curl);
    cl_img_inspector_free(f.insp);
    EVP_MD_CTX_free(f.sha256);
    close(f.fd);
    return r;
}

static void *import_main(void *arg)
{
    cold_arg *ca = arg;
    agent_mig *m = ca->m;
    json_object *body = ca->body;
    const char *mig = jstr(body, "migration_uuid");
    cl_msg_instance spec;
    cl_error err = {0};
    char dir[PATH_MAX_LEN + 64] = "", disk[PATH_MAX_LEN + 80], part[PATH_MAX_LEN + 90] = "";
    char base[PATH_MAX_LEN + 200], fmt[16];
    int64_t size = 0, max_gb = 0;
    bool had_backing = false, made = false;
    int64_t t0 = cl_now_ms();
    memset(&spec, 0, sizeof(spec));
    int r = cl_msg_spawn_decode(body, &spec, &err);

    (void)cl_json_get_int64(body, "size", false, &size, NULL);
    (void)cl_json_get_int64(body, "max_disk_gb", false, &max_gb, NULL);
    if (r == 0 && jbool(body, "nodisk")) {
        if (!test_driver(m))
            r = cl_error_set(&err, CL_E_CONFLICT, "the source has no disk file to send");
        goto reply;
    }
    if (r < 0)
        goto reply;
    snprintf(dir, sizeof(dir), "%s/%s", m->inst_dir, spec.uuid);
    snprintf(disk, sizeof(disk), "%s/disk", dir);
    snprintf(part, sizeof(part), "%s/disk.part", dir);
    uint64_t max_vsize = (uint64_t)(max_gb > 0 ? max_gb : 1) << 30;
    if (size <= 0 || (uint64_t)size > max_vsize + OVERLAY_SLACK) {
        r = cl_error_set(&err, CL_E_BAD_REQUEST, "the source "
                         "announced a disk of %" PRId64 " bytes for a %" PRId64 " GB flavor",
                         size, max_gb);
        goto reply;
    }
    if (mkdir(m->inst_dir, 0755) < 0 && errno != EEXIST) {
        r = cl_error_set(&err, CL_E_INTERNAL, "cannot create %s: %s", m->inst_dir,
                         strerror(errno));
        goto reply;
    }
    if (mkdir(dir, 0755) == 0)
        made = true;
    else if (errno != EEXIST) {
        r = cl_error_set(&err, CL_E_INTERNAL, "cannot create %s: %s", dir, strerror(errno));
        goto reply;
    }
    if (is_file(disk)) {
        /* Never overwritten: it may be the source's own disk seen through shared storage
         * (not supported for cold moves), or another copy's. */
        r = cl_error_set(&err, CL_E_CONFLICT, "a disk for %s is already on the destination "
                         "(shared storage is not supported by cold migration; use "
                         "os-migrateLive)", spec.uuid);
        made = false;
        goto reply;
    }
    (void)unlink(part); /* a crashed earlier attempt's */
    r = local_base(m, &spec, base, sizeof(base), fmt, sizeof(fmt), &err);
    if (r == 0)
        r = fetch_disk(jstr(body, "url"), jstr(body, "token"), part, (uint64_t)size,
                       jstr(body, "sha256"), max_vsize, &had_backing, &err);
    if (r == 0 && had_backing && !base[0])
        r = cl_error_set(&err, CL_E_NOT_FOUND, "the base image %s of the disk is not on the "
                         "destination", spec.image_ref);
    if (r == 0 && had_backing) {
        /* -u: only the reference changes (both bases hold the same image). */
        char *argv[] = {"qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-F", fmt, "-b",
                        base, part, NULL};
        r = run_qemu_img(argv, &err);
    }
    if (r == 0 && rename(part, disk) < 0)
        r = cl_error_set(&err, CL_E_INTERNAL, "cannot rename %s: %s", part, strerror(errno));
reply:
    if (r < 0 && spec.uuid[0] && dir[0]) {
        (void)unlink(part);
        if (made)
            (void)rmdir(dir);
    }
    cl_info(MOD, "cold migration %s: import of %s %s in %" PRId64 " ms (%" PRId64 " bytes)%s%s",
            mig, spec.uuid, r < 0 ? "failed" : "done", cl_now_ms() - t0, size,
            r < 0 ? ": " : "", r < 0 ? err.message : "");
    /* A failed import frees its slot (the thread is joined when the slot is reused or at
     * free); a good one keeps it until the move ends, as the proof that this agent wrote
     * the disk (cold_release removes only such a disk: with shared storage the file
     * at that path would be the source's own). */
    pthread_mutex_lock(&m->lock);
    ca->e->imported = r == 0;
    ca->e->used = r == 0;
    explicit_bzero(ca->e->token, sizeof(ca->e->token));
    pthread_mutex_unlock(&m->lock);
    cold_reply(m, MSG_COLD_IMPORTED, mig, spec.uuid, r < 0 ? err.message : NULL, NULL);
    json_object_put(body);
    free(ca);
    return NULL;
}

/* ---- both: the move ended (confirm or revert) ---- */

static void do_cold_release(agent_mig *m, json_object *body)
{
    const char *mig = jstr(body, "migration_uuid");
    const char *uuid = jstr(body, "instance_uuid");
    if (!cl_uuid_valid(uuid))
        return;
    pthread_mutex_lock(&m->lock);
    mig_entry *e = find_locked(m, mig);
    bool join = e && e->cold && e->thread;
    pthread_t th;
    if (join) {
        th = e->th;
        e->thread = false;
    }
    pthread_mutex_unlock(&m->lock);
    if (join)
        pthread_join(th, NULL);
    pthread_mutex_lock(&m->lock);
    e = find_locked(m, mig);
    bool imported = e && e->cold && !e->source && e->imported;
    if (e && e->cold) {
        explicit_bzero(e->token, sizeof(e->token));
        e->used = false;
    }
    pthread_mutex_unlock(&m->lock);
    if (!jbool(body, "drop_disk"))
        return;
    /* The destination of a move that went back: a transfer cut short (only an import
     * writes disk.part; an empty directory goes with it), and an imported disk that no
     * domain uses (the spawn never came; a defined domain's goes with instance.destroy). */
    char part[PATH_MAX_LEN + 90];
    snprintf(part, sizeof(part), "%s/%s/disk.part", m->inst_dir, uuid);
    (void)unlink(part);
    snprintf(part, sizeof(part), "%s/%s", m->inst_dir, uuid);
    (void)rmdir(part);
    if (!imported)
        return;
    _cleanup_vconn_ virConnectPtr c = virConnectOpen(m->uri);
    _cleanup_vdom_ virDomainPtr dom = c ? virDomainLookupByUUIDString(c, uuid) : NULL;
    if (!c || dom)
        return;
    remove_files(m->inst_dir, uuid);
    cl_info(MOD, "cold migration %s: the disk imported for %s removed", mig, uuid);
}

/* ---- the worker for short steps ---- */

static void *worker_main(void *arg)
{
    agent_mig *m = arg;
    for (;;) {
        pthread_mutex_lock(&m->lock);
        while (!m->qhead && !m->stop)
            pthread_cond_wait(&m->cond, &m->lock);
        if (!m->qhead) {
            pthread_mutex_unlock(&m->lock);
            break;
        }
        op *o = m->qhead;
        m->qhead = o->next;
        if (!m->qhead)
            m->qtail = NULL;
        m->qlen--;
        pthread_mutex_unlock(&m->lock);
        if (strcmp(o->type, CL_MSG_MIGRATION_PREPARE) == 0)
            do_prepare(m, o->body);
        else if (strcmp(o->type, CL_MSG_MIGRATION_CHECK) == 0)
            do_check(m, o->body);
        else if (strcmp(o->type, CL_MSG_MIGRATION_CLEANUP) == 0)
            do_cleanup(m, o->body);
        else if (strcmp(o->type, MSG_COLD_RELEASE) == 0)
            do_cold_release(m, o->body);
        json_object_put(o->body);
        free(o);
    }
    return NULL;
}

static void push_op(agent_mig *m, const char *type, json_object *body)
{
    op *o = calloc(1, sizeof(*o));
    if (!o)
        return;
    cl_strlcpy(o->type, type, sizeof(o->type));
    o->body = body_for_thread(body);
    if (!o->body) {
        free(o);
        cl_warn(MOD, "%s dropped: out of memory", type);
        return;
    }
    pthread_mutex_lock(&m->lock);
    if (m->qlen >= OPS_CAP || m->stop) {
        pthread_mutex_unlock(&m->lock);
        json_object_put(o->body);
        free(o);
        cl_warn(MOD, "%s dropped: queue full", type);
        return;
    }
    if (m->qtail)
        m->qtail->next = o;
    else
        m->qhead = o;
    m->qtail = o;
    m->qlen++;
    pthread_cond_signal(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

/* ---- public ---- */

bool agent_mig_on_msg(agent_mig *m, const cl_bus_msg *msg)
{
    if (!m || !CL_MSG_IS_MIGRATION(msg->type))
        return false;
    if (strcmp(msg->type, CL_MSG_MIGRATION_START) == 0)
        on_start(m, msg->body);
    else if (strcmp(msg->type, CL_MSG_MIGRATION_ABORT) == 0)
        on_abort(m, msg->body);
    else if (strcmp(msg->type, MSG_COLD_EXPORT) == 0)
        cold_start(m, msg->body, true, export_main, MSG_COLD_EXPORTED);
    else if (strcmp(msg->type, MSG_COLD_IMPORT) == 0)
        cold_start(m, msg->body, false, import_main, MSG_COLD_IMPORTED);
    else if (strcmp(msg->type, CL_MSG_MIGRATION_PREPARE) == 0 ||
             strcmp(msg->type, CL_MSG_MIGRATION_CHECK) == 0 ||
             strcmp(msg->type, CL_MSG_MIGRATION_CLEANUP) == 0 ||
             strcmp(msg->type, MSG_COLD_RELEASE) == 0)
        push_op(m, msg->type, msg->body);
    else
        cl_debug(MOD, "ignoring %s", msg->type);
    return true;
}

bool agent_mig_owns(agent_mig *m, const char *uuid)
{
    if (!m)
        return false;
    pthread_mutex_lock(&m->lock);
    bool owned = false;
    /* A cold move's destination slot does not own the instance: agent.c runs it there. */
    for (size_t i = 0; i < MIG_MAX && !owned; i++)
        owned = m->e[i].used && !(m->e[i].cold && !m->e[i].source) &&
                strcmp(m->e[i].uuid, uuid) == 0;
    pthread_mutex_unlock(&m->lock);
    return owned;
}

/* Migrations a previous run started as the source and did not settle (killed): owned
 * again, so the domain is not reported or synced until the scheduler's cleanup or the
 * check after host.register settles it. */
static void load_markers(agent_mig *m)
{
    DIR *d = opendir(m->inst_dir);
    struct dirent *de;
    if (!d)
        return;
    while ((de = readdir(d))) {
        char p[PATH_MAX_LEN + 64], text[64], mig[CL_UUID_LEN];
        if (!cl_uuid_valid(de->d_name) || !agent_mig_marked(m->inst_dir, de->d_name))
            continue;
        marker_path(m->inst_dir, de->d_name, p, sizeof(p));
        get_file(p, text, sizeof(text));
        cl_strlcpy(mig, text, sizeof(mig));
        if (!cl_uuid_valid(mig))
            continue;
        mig_entry *e = alloc_locked(m, mig, de->d_name);
        if (e) {
            e->source = true;
            e->finished = true;
            e->shared = strcmp(text + strlen(mig), " shared") == 0;
            cl_info(MOD, "migration %s of %s was in flight when the agent stopped; left "
                    "to the scheduler", mig, de->d_name);
        }
    }
    closedir(d);
}

int agent_mig_new(const agent_mig_opts *opts, const agent_mig_hooks *hooks, agent_mig **out,
                  cl_error *err)
{
    agent_mig *m = calloc(1, sizeof(*m));
    if (!m)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory"), -ENOMEM;
    m->o = *opts;
    m->h = *hooks;
    if (m->o.progress_ms < 50)
        m->o.progress_ms = 500;
    m->uri = strdup(opts->libvirt_uri ? opts->libvirt_uri : "");
    m->inst_dir = strdup(opts->instances_dir ? opts->instances_dir : "");
    m->img_dir = strdup(opts->image_dir ? opts->image_dir : "");
    m->cache_dir = strdup(opts->cache_dir ? opts->cache_dir : "");
    m->mig_addr = strdup(opts->migration_address ? opts->migration_address : "");
    if (opts->migration_uri && *opts->migration_uri)
        m->mig_uri = strdup(opts->migration_uri);
    else if (m->mig_addr && *m->mig_addr &&
             asprintf(&m->mig_uri, "qemu+tcp://%s/system", m->mig_addr) < 0)
        m->mig_uri = NULL;
    else if (!m->mig_uri)
        m->mig_uri = strdup("");
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->cond, NULL);
    if (!m->uri || !m->inst_dir || !m->img_dir || !m->mig_addr || !m->mig_uri ||
        !m->cache_dir) {
        agent_mig_free(m);
        return cl_error_set(err, CL_E_INTERNAL, "out of memory"), -ENOMEM;
    }
    load_markers(m);
    int r = pthread_create(&m->worker, NULL, worker_main, m);
    if (r != 0) {
        agent_mig_free(m);
        return cl_error_set(err, CL_E_INTERNAL, "cannot start the migration worker: %s",
                            strerror(r)), -r;
    }
    m->worker_started = true;
    *out = m;
    return 0;
}

void agent_mig_free(agent_mig *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    m->stop = true;
    pthread_cond_broadcast(&m->cond);
    for (size_t i = 0; i < MIG_MAX; i++)
        if (m->e[i].used && m->e[i].source && !m->e[i].finished)
            atomic_store(&m->e[i].request, REQ_ABORT);
    pthread_mutex_unlock(&m->lock);
    if (m->worker_started)
        pthread_join(m->worker, NULL);
    for (size_t i = 0; i < MIG_MAX; i++)
        if (m->e[i].thread)
            pthread_join(m->e[i].th, NULL);
    for (op *o = m->qhead, *n; o; o = n) {
        n = o->next;
        json_object_put(o->body);
        free(o);
    }
    pthread_cond_destroy(&m->cond);
    pthread_mutex_destroy(&m->lock);
    free(m->uri);
    free(m->inst_dir);
    free(m->img_dir);
    free(m->cache_dir);
    free(m->mig_uri);
    free(m->mig_addr);
    free(m);
}
