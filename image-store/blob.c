/*
 * blob.c - the content-addressed blob store of nube-image.
 *
 * An image's bytes live in <state_dir>/images/blobs/ab/cdef... where abcdef... is the
 * sha256 of the bytes: two images with the same content share one file, and a blob can
 * never change under an image that references it.
 *
 * An upload is written to ".tmp-XXXXXX" in the blob dir itself (same filesystem, so the
 * final rename(2) is atomic), hashed on the fly (md5 for Glance's "checksum", sha512 for
 * "os_hash_value", sha256 for the address), fdatasync'ed, then renamed into place. A crash
 * at any point leaves either a temp file, which img_blob_remove_temps() deletes at the
 * next start, or a complete blob, which the orphan sweep of service.c deletes when no
 * image row references it.
 *
 * Hashing three digests costs more CPU than receiving and writing the bytes (per GiB on
 * the 2-core bench machine: md5 ~1.2 s, sha512 ~0.95 s, sha256 ~0.5 s with SHA-NI), and
 * md5 cannot be split across cores. So the receiving thread only copies each piece into a
 * small ring of 1 MiB slots and goes back to the socket; four workers consume every slot
 * in order: one per digest and one that writes it to the temp file. A slot is refilled
 * only when all four are done with it (each worker keeps its own count of finished
 * slots, so the slowest one holds the ring back, and memory stays at NSLOTS slots
 * whatever the image size). The disk worker starts the writeback of every 8 MiB at once
 * (sync_file_range), so the disk works while the bytes still arrive and the final
 * fdatasync only has the tail to flush.
 * A worker's error (ENOSPC ...) is sticky and surfaces in the next write() or in seal().
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "img.h"
#include "log.h"
#include "util.h"

#define TEMP_PREFIX ".tmp-"
#define SLOT_BYTES (1024 * 1024)        /* large writes, few digest calls */
#define NSLOTS 4                        /* ring depth: 4 MiB per upload */
#define WRITEBACK_STEP (8 * 1024 * 1024) /* start writeback every 8 MiB */

enum { WK_MD5, WK_SHA256, WK_SHA512, WK_DISK, NWORKERS };

struct blob_worker {
    img_blob_writer *w;
    int kind;
    pthread_t th;
    bool started;
    uint64_t done;   /* slots finished (under w->mu) */
    int64_t busy_ns; /* CPU time spent working (written by the worker only) */
};

struct img_blob_writer {
    img_blob_store *bs;
    int fd;
    char temp[600];
    EVP_MD_CTX *md[3]; /* WK_MD5, WK_SHA256, WK_SHA512 */
    uint64_t size;     /* bytes accepted by img_blob_writer_write() */
    bool sealed;
    char sha256_hex[IMG_SHA256_HEX];
    /* the ring: slot i holds slot_len[i] bytes at ring + i * SLOT_BYTES */
    unsigned char *ring;
    size_t slot_len[NSLOTS];
    size_t fill;        /* bytes in the slot being filled (producer only) */
    uint64_t published; /* slots handed to the workers (under mu) */
    pthread_mutex_t mu;
    bool mu_ready;
    pthread_cond_t cv_work; /* a slot was published, or stop */
    pthread_cond_t cv_free; /* a worker finished a slot */
    int err;                /* first error of a worker (-errno), sticky */
    bool stop;
    struct blob_worker workers[NWORKERS];
    int64_t wait_ns;        /* producer time spent waiting for a free slot */
    /* disk worker only */
    uint64_t written, kicked;
    int64_t write_wall_ns, kick_wall_ns; /* time in write() and in sync_file_range() */
};

static int64_t clock_ns(clockid_t clk)
{
    struct timespec ts;

    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int write_all(int fd, const unsigned char *p, size_t left)
{
    while (left > 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        p += n;
        left -= (size_t)n;
    }
    return 0;
}

/* The disk worker's step: write the slot, then keep the dirty window short. */
static int disk_step(img_blob_writer *w, const unsigned char *buf, size_t len)
{
    int64_t t0 = clock_ns(CLOCK_MONOTONIC);
    int rc = write_all(w->fd, buf, len);

    w->write_wall_ns += clock_ns(CLOCK_MONOTONIC) - t0;

    if (rc < 0)
        return rc;
    w->written += len;
    if (w->written - w->kicked >= WRITEBACK_STEP) {
        /* Start writing this window out now (asynchronously), so the disk works while
         * the rest arrives and the final fdatasync only waits for the tail. Waiting for
         * each window here as well (to bound the dirty pages of one upload) made the
         * upload as slow as the disk's latency per window on the bench machine; the
         * kernel's dirty limits bound them anyway. Only a hint: fdatasync() in seal is
         * what makes the bytes durable, so errors (no support) are ignored. */
        t0 = clock_ns(CLOCK_MONOTONIC);
        (void)sync_file_range(w->fd, (off64_t)w->kicked, (off64_t)(w->written - w->kicked),
                              SYNC_FILE_RANGE_WRITE);
        w->kick_wall_ns += clock_ns(CLOCK_MONOTONIC) - t0;
        w->kicked = w->written;
    }
    return 0;
}

static void *worker_main(void *arg)
{
    struct blob_worker *wk = arg;
    img_blob_writer *w = wk->w;

    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (wk->done == w->published && !w->stop)
            pthread_cond_wait(&w->cv_work, &w->mu);
        if (wk->done == w->published)
            break; /* stopping, and every published slot is done */
        size_t i = (size_t)(wk->done % NSLOTS);
        const unsigned char *buf = w->ring + i * SLOT_BYTES;
        size_t len = w->slot_len[i];
        bool skip = w->err != 0; /* failed or abandoned: only drain */
        pthread_mutex_unlock(&w->mu);

        int rc = 0;
        if (!skip) {
            int64_t t0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
            if (wk->kind == WK_DISK)
                rc = disk_step(w, buf, len);
            else if (EVP_DigestUpdate(w->md[wk->kind], buf, len) != 1)
                rc = -EIO;
            wk->busy_ns += clock_ns(CLOCK_THREAD_CPUTIME_ID) - t0;
        }
        pthread_mutex_lock(&w->mu);
        if (rc < 0 && !w->err)
            w->err = rc;
        wk->done++;
        pthread_cond_broadcast(&w->cv_free);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Slots finished by every worker (the slowest one's count). Under mu. */
static uint64_t all_done(const img_blob_writer *w)
{
    uint64_t m = w->workers[0].done;

    for (int k = 1; k < NWORKERS; k++)
        if (w->workers[k].done < m)
            m = w->workers[k].done;
    return m;
}

/* Hand the slot being filled to the workers. */
static void publish(img_blob_writer *w)
{
    pthread_mutex_lock(&w->mu);
    w->slot_len[w->published % NSLOTS] = w->fill;
    w->published++;
    pthread_cond_broadcast(&w->cv_work);
    pthread_mutex_unlock(&w->mu);
    w->fill = 0;
}

/* Stop the workers (after they drained what was published) and join them. */
static void stop_workers(img_blob_writer *w)
{
    if (!w->mu_ready)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_broadcast(&w->cv_work);
    pthread_mutex_unlock(&w->mu);
    for (int k = 0; k < NWORKERS; k++) {
        if (w->workers[k].started)
            pthread_join(w->workers[k].th, NULL);
        w->workers[k].started = false;
    }
}

static int mkdir_p(const char *path)
{
    char buf[512];
    size_t n = cl_strlcpy(buf, path, sizeof(buf));

    if (n >= sizeof(buf))
        return -ENAMETOOLONG;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0700) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(buf, 0700) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/**
 * img_blob_store_init - create the blob dir under state_dir.
 */
int img_blob_store_init(img_blob_store *bs, const char *state_dir)
{
    if ((size_t)snprintf(bs->dir, sizeof(bs->dir), "%s/images/blobs", state_dir) >=
        sizeof(bs->dir))
        return -ENAMETOOLONG;
    return mkdir_p(bs->dir);
}

/**
 * img_blob_remove_temps - delete the temp files of uploads a crash interrupted.
 * Only call before the HTTP front starts (no upload is running then).
 */
int img_blob_remove_temps(img_blob_store *bs)
{
    DIR *d = opendir(bs->dir);
    struct dirent *e;
    int n = 0;

    if (!d)
        return -errno;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, TEMP_PREFIX, strlen(TEMP_PREFIX)) != 0)
            continue;
        if (unlinkat(dirfd(d), e->d_name, 0) == 0)
            n++;
    }
    closedir(d);
    return n;
}

static bool is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return s[n] == '\0';
}

/**
 * img_blob_path - <dir>/ab/cdef... for a sha256 hex string.
 */
int img_blob_path(const img_blob_store *bs, const char *sha256, char *out, size_t len)
{
    if (!sha256 || !is_hex(sha256, 64))
        return -EINVAL;
    if ((size_t)snprintf(out, len, "%s/%.2s/%s", bs->dir, sha256, sha256 + 2) >= len)
        return -ENAMETOOLONG;
    return 0;
}

/**
 * img_blob_writer_new - open a temp file, start the three hashes and the workers.
 */
int img_blob_writer_new(img_blob_store *bs, img_blob_writer **out)
{
    static const EVP_MD *(*const algos[3])(void) = {EVP_md5, EVP_sha256, EVP_sha512};
    img_blob_writer *w = calloc(1, sizeof(*w));

    if (!w)
        return -ENOMEM;
    w->bs = bs;
    w->fd = -1;
    snprintf(w->temp, sizeof(w->temp), "%s/" TEMP_PREFIX "XXXXXX", bs->dir);
    w->fd = mkostemp(w->temp, O_CLOEXEC);
    if (w->fd < 0) {
        int rc = -errno;
        free(w);
        return rc;
    }
    w->ring = malloc((size_t)NSLOTS * SLOT_BYTES);
    if (!w->ring)
        goto fail;
    for (int k = 0; k < 3; k++) {
        w->md[k] = EVP_MD_CTX_new();
        if (!w->md[k] || !EVP_DigestInit_ex(w->md[k], algos[k](), NULL))
            goto fail;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv_work, NULL);
    pthread_cond_init(&w->cv_free, NULL);
    w->mu_ready = true;
    for (int k = 0; k < NWORKERS; k++) {
        w->workers[k].w = w;
        w->workers[k].kind = k;
        if (pthread_create(&w->workers[k].th, NULL, worker_main, &w->workers[k]) != 0) {
            img_blob_writer_free(w);
            return -EAGAIN;
        }
        w->workers[k].started = true;
    }
    *out = w;
    return 0;
fail:
    img_blob_writer_free(w);
    return -ENOMEM;
}

/**
 * img_blob_writer_write - copy a chunk into the ring for the workers to write and hash.
 * Blocks while the ring is full (the slowest worker sets the pace). An error of a
 * worker on earlier bytes is returned here.
 */
int img_blob_writer_write(img_blob_writer *w, const void *data, size_t len)
{
    const unsigned char *p = data;
    size_t left = len;

    if (w->sealed)
        return -EINVAL;
    while (left > 0) {
        if (w->fill == 0) {
            /* Starting a slot: the workers must all be done with its last use. */
            int rc;
            pthread_mutex_lock(&w->mu);
            if (!w->err && all_done(w) + NSLOTS <= w->published) {
                int64_t t0 = clock_ns(CLOCK_MONOTONIC);
                while (!w->err && all_done(w) + NSLOTS <= w->published)
                    pthread_cond_wait(&w->cv_free, &w->mu);
                w->wait_ns += clock_ns(CLOCK_MONOTONIC) - t0;
            }
            rc = w->err;
            pthread_mutex_unlock(&w->mu);
            if (rc < 0)
                return rc;
        }
        size_t n = SLOT_BYTES - w->fill;
        if (n > left)
            n = left;
        memcpy(w->ring + (w->published % NSLOTS) * SLOT_BYTES + w->fill, p, n);
        w->fill += n;
        p += n;
        left -= n;
        if (w->fill == SLOT_BYTES)
            publish(w);
    }
    w->size += len;
    return 0;
}

static int digest_hex(EVP_MD_CTX *ctx, char *out, size_t outlen)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;

    if (!EVP_DigestFinal_ex(ctx, md, &n) || outlen < 2 * (size_t)n + 1)
        return -EIO;
    for (unsigned int i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

/**
 * img_blob_writer_seal - drain the workers, finish the hashes, make the bytes durable.
 */
int img_blob_writer_seal(img_blob_writer *w, img_blob_info *out)
{
    img_blob_info info = {.size = w->size};
    int rc;

    if (w->sealed)
        return -EINVAL;
    if (w->fill > 0)
        publish(w);
    pthread_mutex_lock(&w->mu);
    while (!w->err && all_done(w) < w->published)
        pthread_cond_wait(&w->cv_free, &w->mu);
    rc = w->err;
    pthread_mutex_unlock(&w->mu);
    stop_workers(w);
    if (rc < 0)
        return rc;
    if (digest_hex(w->md[WK_MD5], info.md5, sizeof(info.md5)) < 0 ||
        digest_hex(w->md[WK_SHA256], info.sha256, sizeof(info.sha256)) < 0 ||
        digest_hex(w->md[WK_SHA512], info.sha512, sizeof(info.sha512)) < 0)
        return -EIO;
    int64_t t0 = clock_ns(CLOCK_MONOTONIC);
    if (fdatasync(w->fd) < 0)
        return -errno;
    /* Where the time went (the bench reads this at debug level). */
    cl_debug("image.blob", "%" PRIu64 " bytes: md5 %.3f s, sha256 %.3f s, sha512 %.3f s, "
             "write %.3f s of CPU (%.3f s in write(), %.3f s starting writeback); "
             "receiver waited %.3f s for the ring; fdatasync %.3f s",
             w->size, w->workers[WK_MD5].busy_ns / 1e9, w->workers[WK_SHA256].busy_ns / 1e9,
             w->workers[WK_SHA512].busy_ns / 1e9, w->workers[WK_DISK].busy_ns / 1e9,
             w->write_wall_ns / 1e9, w->kick_wall_ns / 1e9, w->wait_ns / 1e9,
             (clock_ns(CLOCK_MONOTONIC) - t0) / 1e9);
    w->sealed = true;
    memcpy(w->sha256_hex, info.sha256, sizeof(w->sha256_hex));
    *out = info;
    return 0;
}

/**
 * img_blob_writer_commit - rename the sealed temp file to its address (or drop it when
 * the address exists already).
 */
int img_blob_writer_commit(img_blob_writer *w)
{
    char path[600], sub[600];
    struct stat st;
    int rc;

    if (!w->sealed)
        return -EINVAL;
    rc = img_blob_path(w->bs, w->sha256_hex, path, sizeof(path));
    if (rc < 0)
        return rc;
    snprintf(sub, sizeof(sub), "%s/%.2s", w->bs->dir, w->sha256_hex);
    if (mkdir(sub, 0700) < 0 && errno != EEXIST)
        return -errno;
    if (stat(path, &st) == 0) {
        /* Same sha256, same bytes: keep the existing blob. */
        unlink(w->temp);
    } else {
        if (fchmod(w->fd, 0600) < 0 || rename(w->temp, path) < 0)
            return -errno;
        /* Make the rename itself durable. */
        _cleanup_close_ int dfd = open(sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0)
            fsync(dfd);
    }
    w->temp[0] = '\0';
    return 0;
}

/**
 * img_blob_writer_free - stop the workers, close, and unlink the temp file unless it
 * was committed.
 */
void img_blob_writer_free(img_blob_writer *w)
{
    if (!w)
        return;
    if (w->mu_ready) {
        /* Abandoned mid-upload: the workers skip what is left instead of hashing it. */
        pthread_mutex_lock(&w->mu);
        if (!w->err)
            w->err = -ECANCELED;
        pthread_mutex_unlock(&w->mu);
        stop_workers(w);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv_work);
        pthread_cond_destroy(&w->cv_free);
    }
    if (w->fd >= 0)
        close(w->fd);
    if (w->temp[0])
        unlink(w->temp);
    for (int k = 0; k < 3; k++)
        EVP_MD_CTX_free(w->md[k]);
    free(w->ring);
    free(w);
}

/**
 * img_blob_remove - unlink a blob (and its fan-out dir when it becomes empty).
 */
int img_blob_remove(img_blob_store *bs, const char *sha256)
{
    char path[600], sub[600];
    int rc = img_blob_path(bs, sha256, path, sizeof(path));

    if (rc < 0)
        return rc;
    if (unlink(path) < 0)
        return -errno;
    snprintf(sub, sizeof(sub), "%s/%.2s", bs->dir, sha256);
    rmdir(sub); /* fails harmlessly while other blobs share the prefix */
    return 0;
}

/**
 * img_blob_foreach - call fn with the address of every stored blob.
 */
int img_blob_foreach(img_blob_store *bs, void (*fn)(const char *sha256, void *ud), void *ud)
{
    DIR *d = opendir(bs->dir);
    struct dirent *e;

    if (!d)
        return -errno;
    while ((e = readdir(d))) {
        char sub[600], addr[IMG_SHA256_HEX];
        DIR *sd;
        struct dirent *f;

        if (strlen(e->d_name) != 2 || !is_hex(e->d_name, 2))
            continue;
        if (snprintf(sub, sizeof(sub), "%s/%s", bs->dir, e->d_name) >= (int)sizeof(sub))
            continue; /* cannot be ours: the store's own paths fit */
        sd = opendir(sub);
        if (!sd)
            continue;
        while ((f = readdir(sd))) {
            if (strlen(f->d_name) != 62 || !is_hex(f->d_name, 62))
                continue;
            /* The address is the 2-character directory plus the 62-character name. */
            memcpy(addr, e->d_name, 2);
            memcpy(addr + 2, f->d_name, 62);
            addr[64] = '\0';
            fn(addr, ud);
        }
        closedir(sd);
    }
    closedir(d);
    return 0;
}
