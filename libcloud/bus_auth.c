/*
 * bus_auth.c - CURVE key files and the ZAP handler that admits only known bus peers.
 *
 * See bus_auth.h for the file formats and the rotation/revocation story. The moving parts:
 *
 *   key set     the allowed-keys directory read into an array of (key, name); a mutex
 *               guards it because the ZAP thread and the bus thread both ask it. It is
 *               re-read when the directory's mtime changes (a file added or removed) or
 *               when the last read is older than BUS_AUTH_MAX_AGE_MS (a file rewritten in
 *               place does not touch the directory's mtime).
 *   ZAP thread  a REP socket bound to inproc://zeromq.zap.01 in the bus's context. libzmq
 *               sends one request per CURVE handshake and waits for our reply before the
 *               connection is usable. An eventfd in the same zmq_poll() stops the thread.
 *
 * Without ZMQ_ZAP_ENFORCE_DOMAIN a CURVE server whose ZAP handler is missing lets every
 * client in; the bus sets it (when the libzmq build knows it) so a handler that failed to
 * start closes the door instead of opening it. Here the handler always starts before the
 * server socket binds.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "bus.h"
#include "bus_auth.h"
#include "cleanup.h"
#include "log.h"
#include "util.h"

#define AUTH_LOG "cl.bus.auth"
#define AUTH_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define AUTH_MAX_KEYS 65536          /* one directory cannot grow memory without bound */
#define AUTH_MAX_AGE_MS 2000
#define AUTH_FILE_MAX 1024           /* a key file is one short line */

typedef struct auth_key {
    char key[CL_BUS_KEY_LEN];
    char name[CL_BUS_NAME_MAX];
} auth_key;

struct cl_bus_auth {
    void *sock;
    int efd;
    pthread_t thread;
    bool started;
    char dir[4096];

    pthread_mutex_t lock; /* guards everything below */
    auth_key *keys;
    size_t nkeys;
    struct timespec dir_mtime;
    int64_t loaded_ms;
    int64_t last_warn_ms;
    cl_bus_auth_stats stats;
};

/* ------------------------------------------------------------------ key files */

bool cl_bus_key_valid(const char *s)
{
    static const char z85[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                              ".-:+=^!/*?&<>()[]{}@%$#";
    if (!s || strlen(s) != CL_BUS_KEY_LEN - 1)
        return false;
    for (size_t i = 0; i < CL_BUS_KEY_LEN - 1; i++)
        if (!strchr(z85, s[i]))
            return false;
    return true;
}

/* Generate a CURVE key pair (see bus_auth.h). */
int cl_bus_keypair(char pub[CL_BUS_KEY_LEN], char sec[CL_BUS_KEY_LEN])
{
    if (!zmq_has("curve"))
        return -ENOTSUP;
    return zmq_curve_keypair(pub, sec) == 0 ? 0 : -EIO;
}

static int auth_write_file(const char *path, const char *text, mode_t mode, bool overwrite,
                           cl_error *err)
{
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | (overwrite ? O_TRUNC : O_EXCL);
    int fd = open(path, flags, mode);
    if (fd < 0) {
        int e = errno;
        cl_error_set(err, e == EEXIST ? CL_E_CONFLICT : CL_E_BAD_REQUEST,
                     "cannot create '%s': %s", path, strerror(e));
        return -e;
    }
    /* An existing file keeps its mode through O_TRUNC: force ours. */
    int r = 0;
    size_t len = strlen(text);
    if (fchmod(fd, mode) < 0 || write(fd, text, len) != (ssize_t)len || fsync(fd) < 0)
        r = -errno;
    if (close(fd) < 0 && r == 0)
        r = -errno;
    if (r < 0)
        cl_error_set(err, CL_E_INTERNAL, "cannot write '%s': %s", path, strerror(-r));
    return r;
}

/* Write a key pair to files (see bus_auth.h). */
int cl_bus_key_write(const char *path, const char *pub_path, const char *name,
                     const char pub[CL_BUS_KEY_LEN], const char sec[CL_BUS_KEY_LEN],
                     bool overwrite, cl_error *err)
{
    char line[CL_BUS_KEY_LEN + CL_BUS_NAME_MAX + 4];
    if (!path || !cl_bus_key_valid(pub) || !cl_bus_key_valid(sec) || !name ||
        strlen(name) >= CL_BUS_NAME_MAX || strpbrk(name, " \t\r\n/#"))
        return cl_error_set(err, CL_E_BAD_REQUEST, "bad key or name");
    snprintf(line, sizeof line, "%s\n", sec);
    int r = auth_write_file(path, line, 0600, overwrite, err);
    if (r < 0 || !pub_path)
        return r;
    snprintf(line, sizeof line, "%s %s\n", pub, name);
    return auth_write_file(pub_path, line, 0644, overwrite, err);
}

/* Read a small file into buf (NUL-terminated); st receives its status. */
static int auth_read_small(const char *path, char *buf, size_t len, struct stat *st,
                           cl_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        int e = errno;
        cl_error_set(err, e == ENOENT ? CL_E_NOT_FOUND : CL_E_BAD_REQUEST,
                     "cannot open '%s': %s", path, strerror(e));
        return -e;
    }
    int r = 0;
    ssize_t n = 0;
    if (fstat(fd, st) < 0)
        r = -errno;
    else if (!S_ISREG(st->st_mode) || st->st_size >= (off_t)len)
        r = -EINVAL;
    else if ((n = read(fd, buf, len - 1)) < 0)
        r = -errno;
    close(fd);
    if (r < 0) {
        cl_error_set(err, CL_E_BAD_REQUEST, "cannot read '%s': %s", path, strerror(-r));
        return r;
    }
    buf[n] = '\0';
    return 0;
}

/* Read a secret key file (see bus_auth.h). */
int cl_bus_key_read_secret(const char *path, char pub[CL_BUS_KEY_LEN],
                           char sec[CL_BUS_KEY_LEN], cl_error *err)
{
    char buf[AUTH_FILE_MAX];
    struct stat st;
    int r = auth_read_small(path, buf, sizeof buf, &st, err);
    if (r < 0)
        return r;
    if (st.st_mode & 077) {
        cl_error_set(err, CL_E_FORBIDDEN,
                     "secret key file '%s' is readable by others (mode %03o): chmod 600 it",
                     path, (unsigned)(st.st_mode & 0777));
        return -EPERM;
    }
    buf[strcspn(buf, " \t\r\n")] = '\0';
    if (!cl_bus_key_valid(buf) || zmq_curve_public(pub, buf) != 0) {
        cl_error_set(err, CL_E_BAD_REQUEST, "'%s' does not hold a Z85 CURVE secret key",
                     path);
        return -EINVAL;
    }
    memcpy(sec, buf, CL_BUS_KEY_LEN);
    explicit_bzero(buf, sizeof buf);
    return 0;
}

/* Parse "<key> [name]" from buf. */
static int auth_parse_public(char *buf, char pub[CL_BUS_KEY_LEN], char *name,
                             size_t name_len)
{
    char *save = NULL;
    char *k = strtok_r(buf, " \t\r\n", &save);
    char *n = k ? strtok_r(NULL, " \t\r\n", &save) : NULL;
    if (!k || !cl_bus_key_valid(k) || (n && strtok_r(NULL, " \t\r\n", &save)))
        return -EINVAL;
    memcpy(pub, k, CL_BUS_KEY_LEN);
    if (name && cl_strlcpy(name, n ? n : "", name_len) >= name_len)
        return -EINVAL;
    return 0;
}

/* Read a public key file (see bus_auth.h). */
int cl_bus_key_read_public(const char *path, char pub[CL_BUS_KEY_LEN], char *name,
                           size_t name_len, cl_error *err)
{
    char buf[AUTH_FILE_MAX];
    struct stat st;
    int r = auth_read_small(path, buf, sizeof buf, &st, err);
    if (r < 0)
        return r;
    if (auth_parse_public(buf, pub, name, name_len) < 0) {
        cl_error_set(err, CL_E_BAD_REQUEST, "'%s' is not '<z85 public key> <name>'", path);
        return -EINVAL;
    }
    return 0;
}

/* Load a daemon's keys and point the bus options at them (see bus_auth.h). */
int cl_bus_keys_apply(cl_bus_keys *k, const char *secret_file, const char *server_pub_file,
                      bool dealer, struct cl_bus_opts *opts, cl_error *err)
{
    int r;
    memset(k, 0, sizeof *k);
    if (!secret_file || !secret_file[0])
        return 0;
    if ((r = cl_bus_key_read_secret(secret_file, k->pub, k->sec, err)) < 0)
        return r;
    if (dealer) {
        if (!server_pub_file || !server_pub_file[0])
            return cl_error_set(err, CL_E_BAD_REQUEST,
                                "bus: curve_secret_key_file needs curve_server_key_file");
        if ((r = cl_bus_key_read_public(server_pub_file, k->server, NULL, 0, err)) < 0)
            return r;
        opts->curve_server_key = k->server;
    }
    opts->curve_public_key = k->pub;
    opts->curve_secret_key = k->sec;
    return 0;
}

/* ------------------------------------------------------------------ the key set */

/* Re-read the directory when it changed. Called with a->lock held. */
static void auth_refresh_locked(cl_bus_auth *a)
{
    struct stat st;
    int64_t now = cl_mono_ms();
    if (stat(a->dir, &st) < 0) {
        /* A directory that vanished admits nobody (fail closed). */
        cl_debug(AUTH_LOG, "allowed keys dir '%s': %s", a->dir, strerror(errno));
        a->nkeys = 0;
        return;
    }
    if (a->loaded_ms && st.st_mtim.tv_sec == a->dir_mtime.tv_sec &&
        st.st_mtim.tv_nsec == a->dir_mtime.tv_nsec && now - a->loaded_ms < AUTH_MAX_AGE_MS)
        return;

    DIR *d = opendir(a->dir);
    if (!d) {
        a->nkeys = 0;
        return;
    }
    size_t n = 0, cap = 0;
    auth_key *keys = NULL;
    struct dirent *de;
    while ((de = readdir(d)) && n < AUTH_MAX_KEYS) {
        if (de->d_name[0] == '.')
            continue; /* ., .., editor and rename temporaries */
        char path[4096 + 256];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", a->dir, de->d_name) >= sizeof path)
            continue;
        char buf[AUTH_FILE_MAX];
        struct stat fst;
        cl_error err = {0};
        auth_key k;
        if (auth_read_small(path, buf, sizeof buf, &fst, &err) < 0 ||
            auth_parse_public(buf, k.key, k.name, sizeof k.name) < 0 || !k.name[0]) {
            cl_debug(AUTH_LOG, "ignoring '%s': not '<key> <name>'", path);
            continue;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            auth_key *nk = realloc(keys, ncap * sizeof *nk);
            if (!nk)
                break;
            keys = nk;
            cap = ncap;
        }
        keys[n++] = k;
    }
    closedir(d);
    free(a->keys);
    a->keys = keys;
    a->nkeys = n;
    a->dir_mtime = st.st_mtim;
    a->loaded_ms = now;
    cl_debug(AUTH_LOG, "allowed keys: %zu from '%s'", n, a->dir);
}

/* Name of key into name (or false). Called with a->lock held. */
static bool auth_lookup_locked(cl_bus_auth *a, const char *key, char *name, size_t len)
{
    auth_refresh_locked(a);
    for (size_t i = 0; i < a->nkeys; i++)
        if (strcmp(a->keys[i].key, key) == 0) {
            cl_strlcpy(name, a->keys[i].name, len);
            return true;
        }
    return false;
}

/* Is key still allowed as name (see bus_auth.h). */
bool cl_bus_auth_allowed(cl_bus_auth *a, const char *key, const char *name)
{
    char cur[CL_BUS_NAME_MAX];
    if (!a || !key || !name)
        return false;
    pthread_mutex_lock(&a->lock);
    bool ok = auth_lookup_locked(a, key, cur, sizeof cur) && strcmp(cur, name) == 0;
    pthread_mutex_unlock(&a->lock);
    return ok;
}

void cl_bus_auth_count_revoked(cl_bus_auth *a)
{
    if (!a)
        return;
    pthread_mutex_lock(&a->lock);
    a->stats.revoked_msgs++;
    pthread_mutex_unlock(&a->lock);
}

/* Rate limit for refusal warnings (see bus_auth.h). */
bool cl_bus_auth_warn_due(cl_bus_auth *a)
{
    if (!a)
        return true;
    int64_t now = cl_mono_ms();
    pthread_mutex_lock(&a->lock);
    bool due = a->last_warn_ms == 0 || now - a->last_warn_ms >= CL_BUS_AUTH_WARN_MS;
    if (due)
        a->last_warn_ms = now;
    pthread_mutex_unlock(&a->lock);
    return due;
}

/* Copy the counters. Thread-safe. */
void cl_bus_auth_get_stats(cl_bus_auth *a, cl_bus_auth_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    if (!a)
        return;
    pthread_mutex_lock(&a->lock);
    *out = a->stats;
    pthread_mutex_unlock(&a->lock);
}

/* ------------------------------------------------------------------ ZAP */

#define ZAP_REQ_FRAMES 7 /* version, request id, domain, address, identity, mechanism, key */
#define ZAP_FRAME_MAX 256

/* One received request: frames copied out, at most ZAP_FRAME_MAX bytes each. */
typedef struct zap_req {
    char f[ZAP_REQ_FRAMES][ZAP_FRAME_MAX];
    size_t len[ZAP_REQ_FRAMES];
    size_t nframes;
} zap_req;

static bool zap_recv(void *sock, zap_req *rq)
{
    int more = 1;
    size_t moresz = sizeof more;
    rq->nframes = 0;
    while (more) {
        char buf[ZAP_FRAME_MAX];
        int n = zmq_recv(sock, buf, sizeof buf, rq->nframes == 0 ? ZMQ_DONTWAIT : 0);
        if (n < 0)
            return rq->nframes > 0;
        if (rq->nframes < ZAP_REQ_FRAMES) {
            size_t k = (size_t)n < sizeof buf ? (size_t)n : sizeof buf;
            memcpy(rq->f[rq->nframes], buf, k);
            rq->len[rq->nframes] = k;
        }
        rq->nframes++;
        if (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &moresz) < 0)
            more = 0;
    }
    return true;
}

static bool zap_frame_is(const zap_req *rq, size_t i, const char *s)
{
    return rq->len[i] == strlen(s) && memcmp(rq->f[i], s, rq->len[i]) == 0;
}

/* ZMTP property list: name length (1 byte), name, value length (4 bytes BE), value. */
static size_t zap_metadata(char *out, size_t cap, const char *name, const char *value)
{
    size_t nl = strlen(name), vl = strlen(value);
    if (1 + nl + 4 + vl > cap)
        return 0;
    size_t i = 0;
    out[i++] = (char)nl;
    memcpy(out + i, name, nl);
    i += nl;
    out[i++] = (char)((vl >> 24) & 0xff);
    out[i++] = (char)((vl >> 16) & 0xff);
    out[i++] = (char)((vl >> 8) & 0xff);
    out[i++] = (char)(vl & 0xff);
    memcpy(out + i, value, vl);
    return i + vl;
}

static void zap_handle(cl_bus_auth *a, const zap_req *rq)
{
    const char *status = "400", *text = "unknown key";
    char name[CL_BUS_NAME_MAX] = "";
    char key[CL_BUS_KEY_LEN] = "";
    bool ok = false;

    if (rq->nframes != ZAP_REQ_FRAMES || !zap_frame_is(rq, 0, "1.0")) {
        text = "bad request";
    } else if (!zap_frame_is(rq, 2, CL_BUS_ZAP_DOMAIN)) {
        text = "wrong domain";
    } else if (!zap_frame_is(rq, 5, "CURVE") || rq->len[6] != 32) {
        text = "CURVE only";
    } else {
        zmq_z85_encode(key, (const uint8_t *)rq->f[6], 32);
        pthread_mutex_lock(&a->lock);
        ok = auth_lookup_locked(a, key, name, sizeof name);
        if (ok)
            a->stats.admitted++;
        else
            a->stats.refused++;
        pthread_mutex_unlock(&a->lock);
        if (ok) {
            status = "200";
            text = "OK";
        }
    }
    char addr[ZAP_FRAME_MAX + 1] = "";
    if (rq->nframes > 3) {
        memcpy(addr, rq->f[3], rq->len[3]);
        addr[rq->len[3]] = '\0';
    }
    if (ok)
        cl_debug(AUTH_LOG, "admitted %s as '%s' from %s", key, name, addr);
    else if (cl_bus_auth_warn_due(a))
        cl_warn(AUTH_LOG, "refused a bus connection from %s (key %s): %s", addr,
                key[0] ? key : "-", text);
    else
        cl_debug(AUTH_LOG, "refused a bus connection from %s (key %s): %s", addr,
                 key[0] ? key : "-", text);

    char meta[128];
    size_t mlen = ok ? zap_metadata(meta, sizeof meta, CL_BUS_AUTH_KEY_PROP, key) : 0;
    /* Reply: version, request id (echoed), status code, status text, user id, metadata. */
    size_t idlen = rq->nframes > 1 ? rq->len[1] : 0;
    zmq_send(a->sock, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(a->sock, rq->f[1], idlen, ZMQ_SNDMORE);
    zmq_send(a->sock, status, 3, ZMQ_SNDMORE);
    zmq_send(a->sock, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(a->sock, name, strlen(name), ZMQ_SNDMORE);
    zmq_send(a->sock, meta, mlen, 0);
}

static void *auth_thread_main(void *arg)
{
    cl_bus_auth *a = arg;
    zmq_pollitem_t items[2] = {
        {.socket = a->sock, .events = ZMQ_POLLIN},
        {.socket = NULL, .fd = a->efd, .events = ZMQ_POLLIN},
    };
    for (;;) {
        int n = zmq_poll(items, 2, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (items[1].revents & ZMQ_POLLIN)
            break;
        zap_req rq;
        while ((items[0].revents & ZMQ_POLLIN) && zap_recv(a->sock, &rq))
            zap_handle(a, &rq);
    }
    return NULL;
}

/* Bind the ZAP handler in zctx and start its thread (see bus_auth.h). */
int cl_bus_auth_start(void *zctx, const char *allowed_dir, cl_bus_auth **out, cl_error *err)
{
    struct stat st;
    if (!zctx || !allowed_dir || !allowed_dir[0] || !out)
        return cl_error_set(err, CL_E_BAD_REQUEST, "bus auth: no allowed keys directory");
    if (stat(allowed_dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        cl_error_set(err, CL_E_BAD_REQUEST,
                     "bus auth: allowed keys directory '%s' does not exist", allowed_dir);
        return -ENOENT;
    }
    cl_bus_auth *a = calloc(1, sizeof *a);
    if (!a)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    pthread_mutex_init(&a->lock, NULL);
    a->efd = -1;
    int r;
    if (cl_strlcpy(a->dir, allowed_dir, sizeof a->dir) >= sizeof a->dir) {
        r = cl_error_set(err, CL_E_BAD_REQUEST, "bus auth: directory path too long");
        goto fail;
    }
    a->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    a->sock = zmq_socket(zctx, ZMQ_REP);
    int linger = 0;
    if (a->efd < 0 || !a->sock ||
        zmq_setsockopt(a->sock, ZMQ_LINGER, &linger, sizeof linger) < 0 ||
        zmq_bind(a->sock, AUTH_ZAP_ENDPOINT) < 0) {
        r = -errno;
        cl_error_set(err, CL_E_INTERNAL, "bus auth: cannot bind the ZAP handler: %s",
                     zmq_strerror(errno));
        goto fail;
    }
    pthread_mutex_lock(&a->lock);
    auth_refresh_locked(a);
    pthread_mutex_unlock(&a->lock);
    r = -pthread_create(&a->thread, NULL, auth_thread_main, a);
    if (r < 0) {
        cl_error_set(err, CL_E_INTERNAL, "bus auth: cannot start thread: %s", strerror(-r));
        goto fail;
    }
    a->started = true;
    *out = a;
    return 0;
fail:
    cl_bus_auth_stop(a);
    return r;
}

/* Stop the ZAP thread and close its socket (see bus_auth.h). */
void cl_bus_auth_stop(cl_bus_auth *a)
{
    if (!a)
        return;
    if (a->started) {
        uint64_t one = 1;
        ssize_t w = write(a->efd, &one, sizeof one);
        (void)w;
        pthread_join(a->thread, NULL);
    }
    if (a->sock)
        zmq_close(a->sock);
    if (a->efd >= 0)
        close(a->efd);
    free(a->keys);
    pthread_mutex_destroy(&a->lock);
    free(a);
}
