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
 * Hashing three digests costs more CPU than receiving and writing the bytes, so each
 * writer has a helper thread that computes md5 while the receiving thread writes and
 * computes sha256 and sha512 over the same chunk (fork-join per chunk: the chunk is not
 * copied, and the caller's buffer is free again when img_blob_writer_write() returns).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "img.h"
#include "util.h"

#define TEMP_PREFIX ".tmp-"

struct img_blob_writer {
    img_blob_store *bs;
    int fd;
    char temp[600];
    EVP_MD_CTX *md5, *sha256, *sha512;
    uint64_t size;
    bool sealed;
    char sha256_hex[IMG_SHA256_HEX];
    /* the md5 helper thread */
    pthread_t helper;
    bool helper_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    const void *job;      /* chunk to hash, NULL when idle */
    size_t job_len;
    bool job_ok;          /* result of the last job */
    bool quit;
};

static void *md5_helper(void *arg)
{
    img_blob_writer *w = arg;

    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->job && !w->quit)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->quit)
            break;
        const void *data = w->job;
        size_t len = w->job_len;
        pthread_mutex_unlock(&w->mu);
        bool ok = EVP_DigestUpdate(w->md5, data, len) == 1;
        pthread_mutex_lock(&w->mu);
        w->job_ok = ok;
        w->job = NULL;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
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
 * img_blob_writer_new - open a temp file and start the three hashes.
 */
int img_blob_writer_new(img_blob_store *bs, img_blob_writer **out)
{
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
    w->md5 = EVP_MD_CTX_new();
    w->sha256 = EVP_MD_CTX_new();
    w->sha512 = EVP_MD_CTX_new();
    if (!w->md5 || !w->sha256 || !w->sha512 ||
        !EVP_DigestInit_ex(w->md5, EVP_md5(), NULL) ||
        !EVP_DigestInit_ex(w->sha256, EVP_sha256(), NULL) ||
        !EVP_DigestInit_ex(w->sha512, EVP_sha512(), NULL)) {
        img_blob_writer_free(w);
        return -ENOMEM;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (pthread_create(&w->helper, NULL, md5_helper, w) != 0) {
        img_blob_writer_free(w);
        return -EAGAIN;
    }
    w->helper_started = true;
    *out = w;
    return 0;
}

/**
 * img_blob_writer_write - append and hash a chunk (the whole chunk or an error).
 */
int img_blob_writer_write(img_blob_writer *w, const void *data, size_t len)
{
    const char *p = data;
    size_t left = len;
    bool ok;

    pthread_mutex_lock(&w->mu);
    w->job = data;
    w->job_len = len;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    ok = EVP_DigestUpdate(w->sha256, data, len) == 1 &&
         EVP_DigestUpdate(w->sha512, data, len) == 1;
    while (left > 0) {
        ssize_t n = write(w->fd, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            ok = false;
            break;
        }
        p += n;
        left -= (size_t)n;
    }
    int rc = left ? -errno : 0;
    /* Join: the helper must be done with the caller's buffer before we return. */
    pthread_mutex_lock(&w->mu);
    while (w->job)
        pthread_cond_wait(&w->cv, &w->mu);
    ok = ok && w->job_ok;
    pthread_mutex_unlock(&w->mu);
    if (rc < 0)
        return rc;
    if (!ok)
        return -EIO;
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
 * img_blob_writer_seal - finish the hashes and make the bytes durable.
 */
int img_blob_writer_seal(img_blob_writer *w, img_blob_info *out)
{
    img_blob_info info = {.size = w->size};

    if (w->sealed)
        return -EINVAL;
    if (digest_hex(w->md5, info.md5, sizeof(info.md5)) < 0 ||
        digest_hex(w->sha256, info.sha256, sizeof(info.sha256)) < 0 ||
        digest_hex(w->sha512, info.sha512, sizeof(info.sha512)) < 0)
        return -EIO;
    if (fdatasync(w->fd) < 0)
        return -errno;
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
 * img_blob_writer_free - close, and unlink the temp file unless it was committed.
 */
void img_blob_writer_free(img_blob_writer *w)
{
    if (!w)
        return;
    if (w->helper_started) {
        pthread_mutex_lock(&w->mu);
        w->quit = true;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->helper, NULL);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
    }
    if (w->fd >= 0)
        close(w->fd);
    if (w->temp[0])
        unlink(w->temp);
    EVP_MD_CTX_free(w->md5);
    EVP_MD_CTX_free(w->sha256);
    EVP_MD_CTX_free(w->sha512);
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
