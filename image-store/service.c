/*
 * service.c - the nube-image service context: its config table, start-up with crash
 * recovery, shutdown, and authentication (the static admin token, and the tokens nube-api
 * seals, verified locally with the shared token key).
 *
 * Start-up order matters for crash safety. Before the HTTP front accepts a single
 * request: temp files of interrupted uploads are deleted, images a crash left in
 * "saving" are set to "killed" (their data never completed, and nothing can resume it),
 * and blobs no image row references (a crash between the rename of a blob and the
 * update of its row) are deleted. So a restart never shows a partial image as active
 * and never keeps bytes nobody can reach.
 *
 * The HTTP front is libcloud's cl_http_server with one thread per connection (uploads
 * and downloads block on disk) and the routes of api.c, the upload among them as a
 * streaming route.
 */
#include <errno.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "img.h"
#include "log.h"

#define MAX_JSON_BODY (1024 * 1024) /* bodies of the buffered routes (JSON, patches) */
#define CONN_LIMIT 256             /* connections, each with its own thread */
#define CONN_TIMEOUT_S 120
/* Per-connection buffer: it bounds the pieces the upload arrives in. With the 64 KiB
 * default a 256 MiB upload cost ~1.1 s of CPU, with 256 KiB ~0.87 s, as the old
 * dedicated daemon (fewer inspector, hash and write calls per byte). */
#define CONN_BUFFER (256 * 1024)

const cl_cfg_key img_config_keys[] = {
    CL_DAEMON_COMMON_KEYS(img_config),
    {"image", "listen", CL_CFG_STR, "127.0.0.1", 0, -1, offsetof(img_config, listen),
     "IPv4 address the Image API listens on."},
    {"image", "port", CL_CFG_INT, "9292", 0, 65535, offsetof(img_config, port),
     "TCP port of the Image API (0 picks a free port)."},
    {"image", "max_image_bytes", CL_CFG_INT, "21474836480", 1, 9e15,
     offsetof(img_config, max_image_bytes), "Largest image upload accepted, in bytes."},
    {"image", "max_virtual_size_gb", CL_CFG_INT, "1024", 1, 1048576,
     offsetof(img_config, max_virtual_size_gb),
     "Largest virtual (guest-visible) disk size an image may declare, in GiB."},
    {"image", "quota_images_per_project", CL_CFG_INT, "100", 0, 1e9,
     offsetof(img_config, quota_images_per_project), "Images a project may own."},
    {"image", "quota_bytes_per_project", CL_CFG_INT, "107374182400", 0, 9e15,
     offsetof(img_config, quota_bytes_per_project),
     "Bytes of image data a project may store; uploads in progress count with what "
     "they have reserved (their Content-Length, or what they received so far)."},
    {"image", "quota_uploads_per_project", CL_CFG_INT, "8", 1, 100000,
     offsetof(img_config, quota_uploads_per_project),
     "Uploads a project may run at the same time (each holds 4 MiB of buffers and 4 "
     "threads); one more is refused with 413 until one ends."},
    {"database", "connection", CL_CFG_STR, "", 0, -1, offsetof(img_config, db_connection),
     "Path of the image database (default <state_dir>/image.db)."},
    {"auth", "admin_token", CL_CFG_STR, "", 0, -1, offsetof(img_config, admin_token),
     "Token that authenticates the administrator (required)."},
    {"auth", "admin_project_id", CL_CFG_STR, "5a0c5e2b9b6f4f3e8d1c2b3a4f5e6d7c", 0, -1,
     offsetof(img_config, admin_project_id), "Project that owns the administrator's images."},
    {"auth", "token_key_file", CL_CFG_STR, "", 0, -1, offsetof(img_config, token_key_file),
     "Shared token key of nube-api ([auth] token_key_file there): tokens it seals are "
     "verified locally with it (empty: <state_dir>/token.key when that file exists, else "
     "only admin_token is accepted)."},
};
const size_t img_config_nkeys = CL_ARRAY_SIZE(img_config_keys);

/**
 * img_auth - who is calling: the static admin token (compared in constant time), or a
 * token sealed by nube-api, opened with the shared key (no round trip to Identity).
 */
int img_auth(const img_service *svc, const char *token, img_identity *out, cl_error *err)
{
    const char *want = svc->cfg->admin_token;
    size_t n = token ? strlen(token) : 0;
    cl_auth a;

    if (!token || !token[0])
        return cl_error_set(err, CL_E_UNAUTHORIZED, "Authentication required: send a token "
                                                    "in X-Auth-Token");
    if (n == strlen(want) && CRYPTO_memcmp(token, want, n) == 0) {
        memset(out, 0, sizeof(*out));
        cl_strlcpy(out->project_id, svc->cfg->admin_project_id, sizeof(out->project_id));
        cl_strlcpy(out->user_id, "admin", sizeof(out->user_id));
        out->is_admin = true;
        return 0;
    }
    if (!svc->have_token_key || strncmp(token, CL_TOKEN_PREFIX, strlen(CL_TOKEN_PREFIX)) != 0)
        return cl_error_set(err, CL_E_UNAUTHORIZED, "The token is not valid; request a new "
                                                    "one");
    if (cl_token_verify(&svc->token_key, token, cl_now_ms(), &a, err) < 0)
        return -EACCES;
    /* Images belong to projects: an unscoped token, or one without a role on its
     * project, has nothing it may see here. */
    if (!a.project_id[0] || a.roles == 0)
        return cl_error_set(err, CL_E_UNAUTHORIZED, "The token is not scoped to a project "
                                                    "with a role; request a project-scoped "
                                                    "token");
    memset(out, 0, sizeof(*out));
    cl_strlcpy(out->project_id, a.project_id, sizeof(out->project_id));
    cl_strlcpy(out->user_id, a.user_id, sizeof(out->user_id));
    out->is_admin = cl_auth_is_admin(&a);
    out->read_only = !out->is_admin && !(a.roles & CL_ROLE_BIT(CL_ROLE_MEMBER));
    return 0;
}

/* The shared token key: the configured file must load; the default path is optional
 * (a deployment without nube-api's key keeps working with the admin token). */
static int load_token_key(img_service *svc, cl_error *err)
{
    const img_config *cfg = svc->cfg;
    char path[600];
    int rc;

    if (cfg->token_key_file && cfg->token_key_file[0]) {
        rc = cl_token_key_load(cfg->token_key_file, false, &svc->token_key, err);
        if (rc < 0)
            return rc;
        svc->have_token_key = true;
        return 0;
    }
    snprintf(path, sizeof(path), "%s/token.key", cfg->common.state_dir);
    if (access(path, F_OK) < 0) {
        cl_info("image", "no token key (%s): only [auth] admin_token is accepted", path);
        return 0;
    }
    rc = cl_token_key_load(path, false, &svc->token_key, err);
    if (rc < 0)
        return rc;
    svc->have_token_key = true;
    return 0;
}

static void sweep_orphan(const char *sha256, void *ud)
{
    img_service *svc = ud;
    int64_t refs = 1;

    if (img_db_blob_refs(svc->db, sha256, &refs) == 0 && refs == 0 &&
        img_blob_remove(&svc->blobs, sha256) == 0)
        cl_info("image.recover", "removed blob %s that no image references", sha256);
}

static int recover(img_service *svc, cl_error *err)
{
    int n = img_blob_remove_temps(&svc->blobs), rc;

    if (n < 0)
        return cl_error_set(err, CL_E_INTERNAL, "Cannot read the blob directory %s: %s",
                            svc->blobs.dir, strerror(-n));
    if (n > 0)
        cl_info("image.recover", "removed %d temp files of interrupted uploads", n);
    rc = cl_db_exec(svc->db,
                    "UPDATE images SET status = 'killed', reason = 'The upload was "
                    "interrupted by a restart of the image service; create the image "
                    "again' WHERE status = 'saving'");
    if (rc < 0)
        return cl_error_set(err, CL_E_INTERNAL, "Cannot recover the image database: %s",
                            cl_db_errmsg(svc->db));
    if (cl_db_changes(svc->db) > 0)
        cl_info("image.recover", "%d images left saving by a crash are now killed",
                cl_db_changes(svc->db));
    img_blob_foreach(&svc->blobs, sweep_orphan, svc);
    return 0;
}

/**
 * img_service_start - open, recover, listen (see img.h).
 */
int img_service_start(const img_config *cfg, img_service **out, cl_error *err)
{
    img_service *svc;
    char dbpath[600];
    int rc;

    if (!cfg->admin_token || !cfg->admin_token[0])
        return cl_error_set(err, CL_E_INTERNAL, "[auth] admin_token must be set");
    svc = calloc(1, sizeof(*svc));
    if (!svc)
        return cl_error_set(err, CL_E_INTERNAL, "Out of memory");
    svc->cfg = cfg;
    svc->max_virtual_size = (uint64_t)cfg->max_virtual_size_gb << 30;
    pthread_mutex_init(&svc->lock, NULL);
    pthread_mutex_init(&svc->quota_lock, NULL);
    rc = load_token_key(svc, err);
    if (rc < 0)
        goto fail;
    rc = img_blob_store_init(&svc->blobs, cfg->common.state_dir);
    if (rc < 0) {
        cl_error_set(err, CL_E_INTERNAL, "Cannot create %s/images/blobs: %s",
                     cfg->common.state_dir, strerror(-rc));
        goto fail;
    }
    if (cfg->db_connection && cfg->db_connection[0])
        cl_strlcpy(dbpath, cfg->db_connection, sizeof(dbpath));
    else
        snprintf(dbpath, sizeof(dbpath), "%s/image.db", cfg->common.state_dir);
    rc = cl_db_open(dbpath, img_db_migrations, img_db_nmigrations, 5000, &svc->db, err);
    if (rc < 0)
        goto fail;
    rc = recover(svc, err);
    if (rc < 0)
        goto fail;
    {
        cl_http_opts ho = {
            .service = "image",
            .bind_addr = cfg->listen,
            .port = (uint16_t)cfg->port,
            .max_body = MAX_JSON_BODY,
            .conn_timeout_s = CONN_TIMEOUT_S,
            .routes = img_api_routes,
            .nroutes = img_api_nroutes,
            .ud = svc,
            .metrics_fn = img_api_metrics,
            .health_fn = img_api_health,
            .stream_routes = img_api_stream_routes,
            .nstream_routes = img_api_nstream_routes,
            .thread_per_connection = true,
            .max_connections = CONN_LIMIT,
            .conn_buffer = CONN_BUFFER,
        };
        rc = cl_http_server_start(&ho, &svc->http, err);
        if (rc < 0)
            goto fail;
    }
    cl_info("image", "listening on %s:%u, blobs in %s", cfg->listen, img_service_port(svc),
            svc->blobs.dir);
    *out = svc;
    return 0;
fail:
    img_service_stop(svc);
    return rc;
}

/**
 * img_service_port - the port the Image API is bound to.
 */
uint16_t img_service_port(const img_service *svc)
{
    return svc->http ? cl_http_server_port(svc->http) : 0;
}

/**
 * img_service_stop - stop the HTTP front (requests in flight get a few seconds to
 * finish; uploads still running then are aborted, their images back to queued and their
 * temp files removed), close the database, free.
 */
void img_service_stop(img_service *svc)
{
    if (!svc)
        return;
    cl_http_server_stop(svc->http);
    cl_db_close(svc->db);
    pthread_mutex_destroy(&svc->lock);
    pthread_mutex_destroy(&svc->quota_lock); /* no upload is left: no entry either */
    OPENSSL_cleanse(&svc->token_key, sizeof(svc->token_key));
    free(svc);
}
