/*
 * image_cache.c - base images from nube-image, downloaded once per host, verified before
 * first use (see image_cache.h for the contract).
 *
 * Layout of the cache directory:
 *   <sha256>             a verified image file, mode 0444, shared by every instance
 *   index/<sha512>       symlink to ../<sha256>: how an image the store names by its
 *                        os_hash_value is found without downloading it again
 *   refs/<uuid>          the instances_dir of <uuid> (a "# " line), then the sha256 of
 *                        each file instance <uuid> boots from
 *   .lock                flock()ed around every change, so agents sharing a state_dir
 *                        (simulated and real hosts of one machine) share one cache
 *   tmp.XXXXXX           a download in progress (removed at open after a crash)
 * A file only gets its sha256 name after the size, the sha512 and the format inspector
 * agreed, so whatever carries a 64-hex name has been verified. The name is the content's
 * own hash, computed here, not a name the store gave.
 *
 * Why an entry's mtime is its "last used" time: resolve touches the entries it hands
 * out, and the sweep touches an instance's entries when it sees the instance gone; an
 * entry in no refs file whose mtime is older than max_idle_s is removed.
 */
#include "image_cache.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "http.h"
#include "image_inspect.h"
#include "json.h"
#include "log.h"
#include "token.h"
#include "util.h"

#define MOD "agent.image"

#define SHA256_HEX 65
#define SHA512_HEX 129
#define TOKEN_TTL_MS (5 * 60 * 1000)
#define MAX_PINNED 32         /* entries being handed out by resolves in flight */
#define CONNECT_TIMEOUT_S 10
#define STALL_SECONDS 60      /* a download slower than 1 KiB/s for this long fails */
#define META_TIMEOUT_MS 15000
#define MAX_REFS 16           /* sha256 lines in one refs file */

struct agent_image_cache {
    char *endpoint, *token, *dir, *instances_dir;
    int64_t max_idle_s;
    uint64_t max_virtual_size;
    bool have_key;
    cl_token_key key;
    pthread_mutex_t lock;
    int lock_fd;                /* <dir>/.lock: other agents on the same cache dir */
    /* Entries a resolve in flight has fetched but not yet recorded in a refs file: the
     * sweep keeps them. Under lock. */
    char pinned[MAX_PINNED][SHA256_HEX];
    atomic_uint_fast64_t downloads, hits;
};

static bool is_hex(const char *s, size_t len)
{
    size_t i;
    for (i = 0; s[i]; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return i == len;
}

/* The cache lock: the mutex for this process's threads, flock for other agents. */
static void cache_lock(agent_image_cache *c)
{
    pthread_mutex_lock(&c->lock);
    while (c->lock_fd >= 0 && flock(c->lock_fd, LOCK_EX) < 0 && errno == EINTR)
        ;
}

static void cache_unlock(agent_image_cache *c)
{
    if (c->lock_fd >= 0)
        flock(c->lock_fd, LOCK_UN);
    pthread_mutex_unlock(&c->lock);
}

static int mkdir_p0700(const char *path)
{
    if (mkdir(path, 0700) == 0 || errno == EEXIST)
        return 0;
    return -errno;
}

/**
 * agent_image_cache_open - see image_cache.h.
 */
int agent_image_cache_open(const agent_image_cache_opts *opts, agent_image_cache **out,
                           cl_error *err)
{
    agent_image_cache *c;
    char path[4200];
    DIR *d;
    struct dirent *e;
    int r;

    if (!opts->endpoint || !opts->endpoint[0] || !opts->cache_dir || !opts->cache_dir[0])
        return cl_error_set(err, CL_E_INTERNAL, "[image] endpoint and the cache directory "
                                                "must be set");
    c = calloc(1, sizeof(*c));
    if (!c)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    pthread_mutex_init(&c->lock, NULL);
    c->lock_fd = -1;
    c->endpoint = strdup(opts->endpoint);
    c->token = strdup(opts->token ? opts->token : "");
    c->dir = strdup(opts->cache_dir);
    c->instances_dir = strdup(opts->instances_dir ? opts->instances_dir : "");
    c->max_idle_s = opts->max_idle_s;
    c->max_virtual_size = opts->max_virtual_size ? opts->max_virtual_size : (1ULL << 40);
    if (!c->endpoint || !c->token || !c->dir || !c->instances_dir) {
        r = cl_error_set(err, CL_E_INTERNAL, "out of memory");
        goto fail;
    }
    /* A trailing slash would make "//v2/images" paths. */
    while (strlen(c->endpoint) > 1 && c->endpoint[strlen(c->endpoint) - 1] == '/')
        c->endpoint[strlen(c->endpoint) - 1] = '\0';
    if (opts->token_key_file && opts->token_key_file[0]) {
        r = cl_token_key_load(opts->token_key_file, false, &c->key, err);
        if (r < 0)
            goto fail;
        c->have_key = true;
    } else if (!c->token[0]) {
        r = cl_error_set(err, CL_E_INTERNAL, "[image] needs token_key_file or token to "
                                             "authenticate to nube-image");
        goto fail;
    }
    if ((r = mkdir_p0700(c->dir)) < 0 ||
        (snprintf(path, sizeof(path), "%s/refs", c->dir), (r = mkdir_p0700(path)) < 0) ||
        (snprintf(path, sizeof(path), "%s/index", c->dir), (r = mkdir_p0700(path)) < 0)) {
        cl_error_set(err, CL_E_INTERNAL, "cannot create the image cache %s: %s", c->dir,
                     strerror(-r));
        goto fail;
    }
    snprintf(path, sizeof(path), "%s/.lock", c->dir);
    c->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (c->lock_fd < 0) {
        r = cl_error_set(err, CL_E_INTERNAL, "cannot open %s: %s", path, strerror(errno));
        goto fail;
    }
    /* Downloads a crash interrupted never got a verified name: drop them (another agent
     * on this cache may be downloading: only files older than a stalled download). */
    d = opendir(c->dir);
    while (d && (e = readdir(d))) {
        struct stat sb;
        if (strncmp(e->d_name, "tmp.", 4) == 0 &&
            fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 &&
            sb.st_mtime < time(NULL) - 2 * STALL_SECONDS &&
            unlinkat(dirfd(d), e->d_name, 0) == 0)
            cl_debug(MOD, "removed interrupted download %s", e->d_name);
    }
    if (d)
        closedir(d);
    cl_http_client_global_init();
    *out = c;
    return 0;
fail:
    agent_image_cache_free(c);
    return r;
}

/**
 * agent_image_cache_free - see image_cache.h.
 */
void agent_image_cache_free(agent_image_cache *c)
{
    if (!c)
        return;
    OPENSSL_cleanse(&c->key, sizeof(c->key));
    if (c->lock_fd >= 0)
        close(c->lock_fd);
    free(c->endpoint);
    free(c->token);
    free(c->dir);
    free(c->instances_dir);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/**
 * agent_image_cache_downloads - files downloaded (and verified) since open.
 */
uint64_t agent_image_cache_downloads(const agent_image_cache *c)
{
    return c ? atomic_load(&c->downloads) : 0;
}

/**
 * agent_image_cache_hits - files found already cached since open.
 */
uint64_t agent_image_cache_hits(const agent_image_cache *c)
{
    return c ? atomic_load(&c->hits) : 0;
}

/* ---- talking to nube-image ---- */

/* The X-Auth-Token header for a request made for project (see image_cache.h). */
static int auth_header(agent_image_cache *c, const char *project, char *out, size_t len,
                       cl_error *err)
{
    char tok[CL_TOKEN_MAX];
    cl_auth a;

    if (!c->have_key || !project[0]) {
        if (!c->token[0])
            return cl_error_set(err, CL_E_INTERNAL, "no token for nube-image: the instance "
                                                    "has no project and [image] token is "
                                                    "empty");
        snprintf(out, len, "X-Auth-Token: %s", c->token);
        return 0;
    }
    memset(&a, 0, sizeof(a));
    cl_strlcpy(a.user_id, "nube-agent", sizeof(a.user_id));
    cl_strlcpy(a.domain_id, "default", sizeof(a.domain_id));
    cl_strlcpy(a.project_id, project, sizeof(a.project_id));
    a.roles = CL_ROLE_BIT(CL_ROLE_READER);
    a.issued_ms = cl_now_ms();
    a.expires_ms = a.issued_ms + TOKEN_TTL_MS;
    if (cl_token_issue(&c->key, &a, tok, sizeof(tok), err) < 0)
        return -EIO;
    snprintf(out, len, "X-Auth-Token: %s", tok);
    OPENSSL_cleanse(tok, sizeof(tok));
    return 0;
}

/* GET /v2/images/<id>: 0 and *out, -ENOENT (404), or another error with err. */
static int get_image(agent_image_cache *c, const char *auth, const char *id, json_object **out,
                     cl_error *err)
{
    const char *hdrs[] = {auth, "Accept: application/json", NULL};
    cl_http_result res = {0};
    char url[512];
    int r;

    snprintf(url, sizeof(url), "%s/v2/images/%s", c->endpoint, id);
    r = cl_http_request("GET", url, hdrs, NULL, 0, META_TIMEOUT_MS, &res, err);
    if (r < 0)
        return cl_error_set(err, CL_E_INTERNAL, "nube-image at %s is unreachable: %s",
                            c->endpoint, err->message), r;
    if (res.status == 200)
        r = cl_json_parse_object(res.body, res.body_len, out, err);
    else if (res.status == 404)
        r = -ENOENT;
    else if (res.status == 401)
        r = cl_error_set(err, CL_E_INTERNAL, "nube-image refused the agent's token (check "
                                             "[image] token_key_file or token)");
    else
        r = cl_error_set(err, CL_E_INTERNAL, "nube-image answered %ld for image %s",
                         res.status, id);
    cl_http_result_free(&res);
    return r;
}

/* ---- downloads ---- */

typedef struct download {
    int fd;
    uint64_t got, want;
    EVP_MD_CTX *sha256, *sha512;
    cl_img_inspector *insp;
    int error;                  /* errno of a failed write, or EFBIG, or EINVAL (refused) */
} download;

static size_t on_data(char *data, size_t size, size_t n, void *ud)
{
    download *d = ud;
    size_t len = size * n;
    int r;

    if (d->got + len > d->want) {
        d->error = EFBIG; /* more bytes than the store said the image has */
        return 0;
    }
    if ((r = cl_write_all(d->fd, data, len)) < 0) {
        d->error = -r;
        return 0;
    }
    d->got += len;
    EVP_DigestUpdate(d->sha256, data, len);
    EVP_DigestUpdate(d->sha512, data, len);
    if (cl_img_inspector_feed(d->insp, data, len) < 0) {
        d->error = EINVAL; /* refused already: stop reading */
        return 0;
    }
    return len;
}

static void digest_hex(EVP_MD_CTX *ctx, char *out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;

    EVP_DigestFinal_ex(ctx, md, &n);
    for (unsigned i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void pin(agent_image_cache *c, const char *sha256)
{
    for (size_t i = 0; i < MAX_PINNED; i++) {
        if (!c->pinned[i][0]) {
            cl_strlcpy(c->pinned[i], sha256, SHA256_HEX);
            return;
        }
    }
}

static void unpin(agent_image_cache *c, const char *sha256)
{
    for (size_t i = 0; i < MAX_PINNED; i++) {
        if (strcmp(c->pinned[i], sha256) == 0) {
            c->pinned[i][0] = '\0';
            return;
        }
    }
}

/* Under lock: is the file of the image with this sha512 cached (and the size right)? */
static bool lookup_locked(agent_image_cache *c, const char *sha512, uint64_t size,
                          char sha256[SHA256_HEX])
{
    char link[4200], target[128], path[4200];
    struct stat sb;
    ssize_t n;

    snprintf(link, sizeof(link), "%s/index/%s", c->dir, sha512);
    n = readlink(link, target, sizeof(target) - 1);
    if (n < 0)
        return false;
    target[n] = '\0';
    if (strncmp(target, "../", 3) != 0 || !is_hex(target + 3, 64))
        return false;
    snprintf(path, sizeof(path), "%s/%s", c->dir, target + 3);
    if (stat(path, &sb) < 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size != size)
        return false;
    cl_strlcpy(sha256, target + 3, SHA256_HEX);
    utimensat(AT_FDCWD, path, NULL, 0); /* last used: now */
    return true;
}

/* Download image id into a temp file, check it, and give it its content name. */
static int download_verify(agent_image_cache *c, const char *auth, const char *id,
                           const char *sha512_want, uint64_t size, cl_img_format fmt,
                           char sha256[SHA256_HEX], cl_error *err)
{
    char tmp[4200], final[4200], link[4200], ltmp[4200], url[512], target[80];
    char sha512[SHA512_HEX] = "";
    download d = {.fd = -1, .want = size};
    struct curl_slist *hl = NULL;
    CURL *curl = NULL;
    CURLcode cc;
    long status = 0;
    cl_img_format got_fmt = fmt;
    uint64_t vsize = 0;
    int r = 0;

    snprintf(tmp, sizeof(tmp), "%s/tmp.XXXXXX", c->dir);
    d.fd = mkostemp(tmp, O_CLOEXEC);
    if (d.fd < 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot create a file in %s: %s", c->dir,
                            strerror(errno)), -errno;
    d.sha256 = EVP_MD_CTX_new();
    d.sha512 = EVP_MD_CTX_new();
    d.insp = cl_img_inspector_new(fmt, c->max_virtual_size);
    curl = curl_easy_init();
    hl = curl_slist_append(NULL, auth);
    if (!d.sha256 || !d.sha512 || !d.insp || !curl || !hl ||
        !EVP_DigestInit_ex(d.sha256, EVP_sha256(), NULL) ||
        !EVP_DigestInit_ex(d.sha512, EVP_sha512(), NULL)) {
        r = cl_error_set(err, CL_E_INTERNAL, "out of memory");
        goto out;
    }
    snprintf(url, sizeof(url), "%s/v2/images/%s/file", c->endpoint, id);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &d);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, (long)CONNECT_TIMEOUT_S);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, (long)STALL_SECONDS);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    cl_debug(MOD, "downloading image %s (%" PRIu64 " bytes)", id, size);
    cc = curl_easy_perform(curl);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    if (d.error == EFBIG) {
        r = cl_error_set(err, CL_E_INTERNAL, "image %s: nube-image sent more than the %"
                         PRIu64 " bytes it announced", id, size);
        goto out;
    }
    if (d.error == EINVAL || (cc == CURLE_OK && d.got == size &&
                              cl_img_inspector_finish(d.insp, &got_fmt, &vsize) < 0)) {
        r = cl_error_set(err, CL_E_INTERNAL, "image %s refused by the agent's format check: "
                         "%s", id, cl_img_inspector_reason(d.insp));
        goto out;
    }
    if (d.error) {
        r = cl_error_set(err, CL_E_INTERNAL, "cannot write image %s to %s: %s", id, c->dir,
                         strerror(d.error));
        goto out;
    }
    if (cc != CURLE_OK) {
        r = cl_error_set(err, CL_E_INTERNAL, "download of image %s failed: %s (HTTP %ld)",
                         id, curl_easy_strerror(cc), status);
        goto out;
    }
    if (d.got != size) {
        r = cl_error_set(err, CL_E_INTERNAL, "image %s: got %" PRIu64 " bytes, nube-image "
                         "announced %" PRIu64, id, d.got, size);
        goto out;
    }
    digest_hex(d.sha256, sha256);
    digest_hex(d.sha512, sha512);
    if (strcmp(sha512, sha512_want) != 0) {
        r = cl_error_set(err, CL_E_INTERNAL, "image %s: sha512 mismatch: the downloaded "
                         "data hashes to %.16s..., nube-image records %.16s... (the stored "
                         "image is corrupt or was altered)", id, sha512, sha512_want);
        goto out;
    }
    if (fsync(d.fd) < 0 || fchmod(d.fd, 0444) < 0) {
        r = cl_error_set(err, CL_E_INTERNAL, "cannot sync %s: %s", tmp, strerror(errno));
        goto out;
    }
    snprintf(final, sizeof(final), "%s/%s", c->dir, sha256);
    snprintf(link, sizeof(link), "%s/index/%s", c->dir, sha512);
    snprintf(ltmp, sizeof(ltmp), "%s/index/tmp.%s", c->dir, sha256);
    snprintf(target, sizeof(target), "../%s", sha256);
    cache_lock(c);
    if (rename(tmp, final) < 0) {
        r = -errno;
    } else {
        tmp[0] = '\0';
        unlink(ltmp);
        if (symlink(target, ltmp) < 0 || rename(ltmp, link) < 0)
            r = -errno;
        else
            pin(c, sha256);
    }
    cache_unlock(c);
    if (r < 0) {
        cl_error_set(err, CL_E_INTERNAL, "cannot add image %s to the cache: %s", id,
                     strerror(-r));
        goto out;
    }
    atomic_fetch_add(&c->downloads, 1);
    cl_info(MOD, "image %s cached as %s (%" PRIu64 " bytes, sha512 verified, format %s)", id,
            sha256, size, cl_img_format_name(got_fmt));
out:
    if (r < 0 && r != -ENOENT && !err->message[0])
        cl_error_set(err, CL_E_INTERNAL, "image %s: download failed", id);
    if (d.fd >= 0)
        close(d.fd);
    if (tmp[0])
        unlink(tmp);
    curl_slist_free_all(hl);
    if (curl)
        curl_easy_cleanup(curl);
    EVP_MD_CTX_free(d.sha256);
    EVP_MD_CTX_free(d.sha512);
    cl_img_inspector_free(d.insp);
    return r < 0 ? r : 0;
}

/* Make the file of image `id` (which must have one of the formats allowed) present and
 * verified; path receives it, fmt_out its format. what names the part in messages. */
static int fetch(agent_image_cache *c, const char *auth, const char *id, const char *what,
                 const cl_img_format *allowed, size_t nallowed, char *path, size_t pathlen,
                 cl_img_format *fmt_out, char sha256[SHA256_HEX], cl_error *err)
{
    _cleanup_json_ json_object *doc = NULL;
    const char *status = NULL, *sha512 = NULL, *df = NULL;
    int64_t size = -1;
    cl_img_format fmt;
    bool ok = false, hit;
    int r;

    if (!cl_uuid_valid(id))
        return cl_error_set(err, CL_E_BAD_REQUEST, "%s %s is not an image id", what, id),
               -EINVAL;
    r = get_image(c, auth, id, &doc, err);
    if (r == -ENOENT)
        return -ENOENT;
    if (r < 0)
        return r;
    if (cl_json_get_str(doc, "status", true, &status, NULL) < 0 || strcmp(status, "active"))
        return cl_error_set(err, CL_E_CONFLICT, "%s %s is not active (status %s)", what, id,
                            status ? status : "unknown"), -EBUSY;
    if (cl_json_get_str(doc, "disk_format", true, &df, NULL) < 0 ||
        cl_img_format_parse(df, &fmt) < 0)
        return cl_error_set(err, CL_E_BAD_REQUEST, "%s %s has disk_format %s, which nube "
                            "cannot boot", what, id, df ? df : "null"), -EINVAL;
    for (size_t i = 0; i < nallowed; i++)
        ok = ok || allowed[i] == fmt;
    if (!ok)
        return cl_error_set(err, CL_E_BAD_REQUEST, "%s %s has disk_format %s, which cannot "
                            "serve as the %s", what, id, df, what), -EINVAL;
    if (cl_json_get_str(doc, "os_hash_value", true, &sha512, NULL) < 0 ||
        !is_hex(sha512, 128) || cl_json_get_int64(doc, "size", true, &size, NULL) < 0 ||
        size < 0)
        return cl_error_set(err, CL_E_INTERNAL, "%s %s: nube-image gives no sha512 and size",
                            what, id), -EPROTO;

    cache_lock(c);
    hit = lookup_locked(c, sha512, (uint64_t)size, sha256);
    if (hit)
        pin(c, sha256);
    cache_unlock(c);
    if (hit) {
        atomic_fetch_add(&c->hits, 1);
        cl_debug(MOD, "%s %s found in the cache (%s)", what, id, sha256);
    } else {
        r = download_verify(c, auth, id, sha512, (uint64_t)size, fmt, sha256, err);
        if (r < 0)
            return r;
    }
    snprintf(path, pathlen, "%s/%s", c->dir, sha256);
    *fmt_out = fmt;
    return 0;
}

/* Record which entries instance uuid uses: refs/<uuid>, written whole and renamed. */
static int write_refs_locked(agent_image_cache *c, const char *uuid, char sha[][SHA256_HEX],
                             size_t n)
{
    char path[4200], tmp[4300];
    FILE *f;
    int r = 0;

    snprintf(path, sizeof(path), "%s/refs/%s", c->dir, uuid);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "we");
    if (!f)
        return -errno;
    fprintf(f, "# %s\n", c->instances_dir);
    for (size_t i = 0; i < n; i++)
        if (sha[i][0])
            fprintf(f, "%s\n", sha[i]);
    if (fflush(f) != 0 || fsync(fileno(f)) < 0)
        r = -errno;
    if (fclose(f) != 0 && r == 0)
        r = -errno;
    if (r == 0 && rename(tmp, path) < 0)
        r = -errno;
    if (r < 0)
        unlink(tmp);
    return r;
}

/**
 * agent_image_cache_resolve - see image_cache.h.
 */
int agent_image_cache_resolve(agent_image_cache *c, const cl_msg_instance *inst,
                              agent_image_files *out, cl_error *err)
{
    static const cl_img_format disk_fmts[] = {CL_IMG_FMT_QCOW2, CL_IMG_FMT_RAW};
    static const cl_img_format kernel_fmts[] = {CL_IMG_FMT_AKI};
    static const cl_img_format ramdisk_fmts[] = {CL_IMG_FMT_ARI};
    _cleanup_json_ json_object *doc = NULL;
    char auth[CL_TOKEN_MAX + 32], sha[3][SHA256_HEX];
    const char *kid = NULL, *rid = NULL, *cmd = NULL;
    cl_img_format fmt;
    int r;

    memset(out, 0, sizeof(*out));
    memset(sha, 0, sizeof(sha));
    if (!cl_uuid_valid(inst->image_ref) || !cl_uuid_valid(inst->uuid))
        return -ENOENT;
    r = auth_header(c, inst->project_id, auth, sizeof(auth), err);
    if (r < 0)
        return r;
    /* The properties first: kernel_id, ramdisk_id, os_command_line. */
    r = get_image(c, auth, inst->image_ref, &doc, err);
    if (r < 0)
        goto out;
    cl_json_get_str(doc, "kernel_id", false, &kid, NULL);
    cl_json_get_str(doc, "ramdisk_id", false, &rid, NULL);
    cl_json_get_str(doc, "os_command_line", false, &cmd, NULL);

    r = fetch(c, auth, inst->image_ref, "image", disk_fmts, CL_ARRAY_SIZE(disk_fmts),
              out->disk, sizeof(out->disk), &fmt, sha[0], err);
    if (r < 0)
        goto out;
    cl_strlcpy(out->disk_format, fmt == CL_IMG_FMT_QCOW2 ? "qcow2" : "raw",
               sizeof(out->disk_format));
    if (kid && kid[0]) {
        r = fetch(c, auth, kid, "kernel", kernel_fmts, 1, out->kernel, sizeof(out->kernel),
                  &fmt, sha[1], err);
        if (r == -ENOENT) {
            cl_error_set(err, CL_E_NOT_FOUND, "kernel %s named by image %s not found", kid,
                         inst->image_ref);
            r = -ENOKEY;
        }
        if (r < 0)
            goto out;
    }
    if (rid && rid[0]) {
        r = fetch(c, auth, rid, "ramdisk", ramdisk_fmts, 1, out->ramdisk,
                  sizeof(out->ramdisk), &fmt, sha[2], err);
        if (r == -ENOENT) {
            cl_error_set(err, CL_E_NOT_FOUND, "ramdisk %s named by image %s not found", rid,
                         inst->image_ref);
            r = -ENOKEY;
        }
        if (r < 0)
            goto out;
    }
    cl_strlcpy(out->cmdline, cmd && cmd[0] ? cmd : "console=ttyS0", sizeof(out->cmdline));

    cache_lock(c);
    r = write_refs_locked(c, inst->uuid, sha, 3);
    cache_unlock(c);
    if (r < 0)
        cl_error_set(err, CL_E_INTERNAL, "cannot record the image use of %s: %s", inst->uuid,
                     strerror(-r));
out:
    cache_lock(c);
    for (size_t i = 0; i < 3; i++)
        if (sha[i][0])
            unpin(c, sha[i]);
    cache_unlock(c);
    OPENSSL_cleanse(auth, sizeof(auth));
    return r;
}

/**
 * agent_image_cache_prepare - resolve and describe the boot (see image_cache.h).
 */
int agent_image_cache_prepare(agent_image_cache *c, const cl_msg_instance *inst,
                              agent_boot *boot, char paths[3][4096], char *cmdline,
                              size_t cmdlen, const char **base, const char **base_fmt,
                              cl_error *err)
{
    agent_image_files *f = malloc(sizeof(*f));
    int r;

    if (!f)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    r = agent_image_cache_resolve(c, inst, f, err);
    if (r == 0) {
        cl_strlcpy(paths[0], f->kernel, 4096);
        cl_strlcpy(paths[1], f->ramdisk, 4096);
        cl_strlcpy(paths[2], f->disk, 4096);
        cl_strlcpy(cmdline, f->cmdline, cmdlen);
        /* AMI-style: QEMU loads kernel and initrd itself; the disk is the root device. */
        boot->kernel = paths[0][0] ? paths[0] : NULL;
        boot->ramdisk = boot->kernel && paths[1][0] ? paths[1] : NULL;
        boot->cmdline = boot->kernel ? cmdline : NULL;
        *base = paths[2];
        *base_fmt = strcmp(f->disk_format, "raw") == 0 ? "raw" : "qcow2";
    }
    free(f);
    return r;
}

/* ---- sweep ---- */

typedef struct shaset {
    char (*v)[SHA256_HEX];
    size_t n, cap;
} shaset;

static void shaset_add(shaset *s, const char *sha)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 32;
        void *nv = realloc(s->v, cap * sizeof(*s->v));
        if (!nv)
            return;
        s->v = nv;
        s->cap = cap;
    }
    cl_strlcpy(s->v[s->n++], sha, SHA256_HEX);
}

static bool shaset_has(const shaset *s, const char *sha)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i], sha) == 0)
            return true;
    return false;
}

/* Read refs/<name>: entries in use go to into; when the instance is gone (its
 * directory, named in the file, no longer exists) they are marked used now instead (the
 * idle time starts) and *gone is set. */
static void read_refs(agent_image_cache *c, int dfd, const char *name, shaset *into,
                      bool *gone)
{
    char line[4200], path[4600], sha[MAX_REFS][SHA256_HEX];
    int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC);
    FILE *f = fd >= 0 ? fdopen(fd, "r") : NULL;
    const char *idir = c->instances_dir;
    size_t n = 0;
    struct stat sb;

    *gone = false;
    if (!f) {
        if (fd >= 0)
            close(fd);
        return;
    }
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, "# ", 2) == 0 && n == 0) {
            snprintf(path, sizeof(path), "%.4100s/%.64s", line + 2, name);
            idir = NULL;
        } else if (is_hex(line, 64) && n < MAX_REFS) {
            cl_strlcpy(sha[n++], line, SHA256_HEX);
        }
    }
    fclose(f);
    if (idir)
        snprintf(path, sizeof(path), "%.4100s/%.64s", idir, name);
    *gone = (idir == NULL || idir[0]) && stat(path, &sb) < 0 && errno == ENOENT;
    for (size_t i = 0; i < n; i++) {
        if (*gone) {
            snprintf(path, sizeof(path), "%.4100s/%.64s", c->dir, sha[i]);
            utimensat(AT_FDCWD, path, NULL, 0);
        } else {
            shaset_add(into, sha[i]);
        }
    }
}

/**
 * agent_image_cache_sweep - see image_cache.h.
 */
int agent_image_cache_sweep(agent_image_cache *c, int64_t now_ms)
{
    shaset used = {0};
    char path[4200], target[128];
    struct dirent *e;
    struct stat sb;
    DIR *d;
    int removed = 0;

    cache_lock(c);
    snprintf(path, sizeof(path), "%s/refs", c->dir);
    d = opendir(path);
    while (d && (e = readdir(d))) {
        bool gone;
        if (!cl_uuid_valid(e->d_name))
            continue;
        read_refs(c, dirfd(d), e->d_name, &used, &gone);
        if (gone) {
            unlinkat(dirfd(d), e->d_name, 0);
            cl_debug(MOD, "instance %s is gone: its images are released", e->d_name);
        }
    }
    if (d)
        closedir(d);
    for (size_t i = 0; i < MAX_PINNED; i++)
        if (c->pinned[i][0])
            shaset_add(&used, c->pinned[i]);

    d = opendir(c->dir);
    while (d && (e = readdir(d))) {
        if (!is_hex(e->d_name, 64) || shaset_has(&used, e->d_name))
            continue;
        if (fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0 ||
            !S_ISREG(sb.st_mode))
            continue;
        int64_t mtime_ms = (int64_t)sb.st_mtim.tv_sec * 1000 + sb.st_mtim.tv_nsec / 1000000;
        if (now_ms - mtime_ms < c->max_idle_s * 1000)
            continue;
        if (unlinkat(dirfd(d), e->d_name, 0) == 0) {
            removed++;
            cl_info(MOD, "removed cached image %s (unused for %" PRId64 " s)", e->d_name,
                    (now_ms - mtime_ms) / 1000);
        }
    }
    if (d)
        closedir(d);
    /* Index links whose file went. */
    snprintf(path, sizeof(path), "%s/index", c->dir);
    d = opendir(path);
    while (d && (e = readdir(d))) {
        ssize_t n;
        if (e->d_name[0] == '.')
            continue;
        n = readlinkat(dirfd(d), e->d_name, target, sizeof(target) - 1);
        if (n < 0)
            continue;
        target[n] = '\0';
        if (fstatat(dirfd(d), target, &sb, 0) < 0 && errno == ENOENT)
            unlinkat(dirfd(d), e->d_name, 0);
    }
    if (d)
        closedir(d);
    cache_unlock(c);
    free(used.v);
    return removed;
}
