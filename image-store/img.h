/*
 * img.h - the internal interfaces of nube-image, between its files:
 *
 *   blob.c     content-addressed blob store (streamed writes, hashing, dedup, recovery)
 *   image.c    image records in SQLite, visibility rules, Glance JSON rendering
 *   api.c      the Image v2 routes (metadata, streamed upload, download), served by
 *              libcloud's cl_http_server (upload as a streaming route, download from
 *              the blob's file descriptor)
 *   service.c  the config table and the service context: start, recover, stop
 *
 * Tests link all of it through img_lib and drive it over real HTTP on loopback.
 */
#ifndef IMG_H
#define IMG_H

#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "daemon.h"
#include "db.h"
#include "errors.h"
#include "http.h"
#include "image_inspect.h"
#include "token.h"
#include "util.h"

/* ---------------- configuration ---------------- */

typedef struct img_config {
    cl_common_cfg common; /* must stay first (daemon.h) */
    char *listen;
    int64_t port;
    int64_t max_image_bytes;
    int64_t max_virtual_size_gb;
    int64_t quota_images_per_project;
    int64_t quota_bytes_per_project;
    int64_t quota_uploads_per_project;
    char *db_connection;   /* "" = <state_dir>/image.db */
    char *admin_token;
    char *admin_project_id;
    char *token_key_file;  /* "" = <state_dir>/token.key when it exists */
} img_config;

/* The declarative key table of nube-image.conf. */
extern const cl_cfg_key img_config_keys[];
extern const size_t img_config_nkeys;

/* ---------------- blob store ---------------- */

#define IMG_SHA256_HEX 65
#define IMG_MD5_HEX 33
#define IMG_SHA512_HEX 129

typedef struct img_blob_store {
    char dir[512]; /* <state_dir>/images/blobs */
} img_blob_store;

/* An upload being written: a temp file in the blob dir and three running hashes. */
typedef struct img_blob_writer img_blob_writer;

typedef struct img_blob_info {
    uint64_t size;
    char sha256[IMG_SHA256_HEX]; /* the blob's address */
    char md5[IMG_MD5_HEX];       /* Glance "checksum" */
    char sha512[IMG_SHA512_HEX]; /* Glance "os_hash_value" */
} img_blob_info;

/* Create <state_dir>/images/blobs (mode 0700 parents as needed). 0 or -errno. */
int img_blob_store_init(img_blob_store *bs, const char *state_dir);

/* Remove temp files left by uploads interrupted by a crash; returns how many. */
int img_blob_remove_temps(img_blob_store *bs);

/* Start an upload: an O_CLOEXEC temp file in the blob dir. 0 or -errno. */
int img_blob_writer_new(img_blob_store *bs, img_blob_writer **out);

/* Write and hash a chunk. 0 or -errno (-ENOSPC ...). */
int img_blob_writer_write(img_blob_writer *w, const void *data, size_t len);

/* Finish hashing and fsync the temp file (call outside locks: it can be slow).
 * Fills *out. 0 or -errno. */
int img_blob_writer_seal(img_blob_writer *w, img_blob_info *out);

/* Move a sealed temp file to its content address, or drop it when a blob with the same
 * address already exists (de-duplication). 0 or -errno. Call under the service lock so a
 * concurrent delete of the same blob cannot interleave. */
int img_blob_writer_commit(img_blob_writer *w);

/* Abandon: close and unlink the temp file. Accepts NULL. */
void img_blob_writer_free(img_blob_writer *w);

/* Path of a blob by its sha256 hex into out. 0 or -EINVAL (not a sha256). */
int img_blob_path(const img_blob_store *bs, const char *sha256, char *out, size_t len);

/* Unlink a blob. 0, -ENOENT or -errno. */
int img_blob_remove(img_blob_store *bs, const char *sha256);

/* Call fn for every stored blob address (for the orphan sweep). */
int img_blob_foreach(img_blob_store *bs, void (*fn)(const char *sha256, void *ud), void *ud);

/* ---------------- identities and visibility ---------------- */

typedef struct img_identity {
    char project_id[64];
    char user_id[64];
    bool is_admin;
    bool read_only; /* reader role only: may look, not create, change or delete */
} img_identity;

typedef enum {
    IMG_VIS_PRIVATE,
    IMG_VIS_SHARED,
    IMG_VIS_COMMUNITY,
    IMG_VIS_PUBLIC,
    IMG_VIS_MAX
} img_visibility;

const char *img_visibility_name(img_visibility v);
int img_visibility_parse(const char *s, img_visibility *out);

/* May `who` see (show, download) an image of owner/visibility? is_member says whether
 * who's project is a member of the image (shared images; any status for show and
 * download, accepted for lists). Pure function. */
bool img_can_see(const img_identity *who, const char *owner, img_visibility vis,
                 bool is_member);

/* May `who` change or delete it (admin, or a member/admin of the owner project)? */
bool img_can_modify(const img_identity *who, const char *owner);

/* ---------------- image records ---------------- */

typedef struct img_record {
    char id[CL_UUID_LEN];
    char name[256];
    char owner[64];
    char status[16];       /* queued, saving, active, killed, deleted */
    img_visibility visibility;
    char disk_format[16];
    char container_format[16];
    int64_t min_disk, min_ram;
    bool protected_, os_hidden;
    int64_t size;          /* -1 = null */
    int64_t virtual_size;  /* -1 = null */
    char checksum[IMG_MD5_HEX];
    char os_hash_value[IMG_SHA512_HEX];
    char blob[IMG_SHA256_HEX];
    char reason[256];      /* why an upload was refused */
    int64_t created_at, updated_at; /* unix ms */
    json_object *properties; /* owned: free with img_record_clear() */
    json_object *tags;       /* owned array of strings */
} img_record;

void img_record_clear(img_record *r);

/* Schema migrations of image.db. */
extern const cl_db_migration img_db_migrations[];
extern const size_t img_db_nmigrations;

/* Load an image by id: 0, -ENOENT. Caller clears r. */
int img_db_get(cl_db *db, const char *id, img_record *r);
/* Insert a new record (id, created_at set by caller). */
int img_db_insert(cl_db *db, const img_record *r);
/* Write every mutable column of r back (by id). */
int img_db_update(cl_db *db, const img_record *r);
/* Delete a row (and its members). */
int img_db_delete(cl_db *db, const char *id);
/* Compare-and-set the status: 0, or -EBUSY when the current status is not `from`. */
int img_db_set_status(cl_db *db, const char *id, const char *from, const char *to,
                      const char *reason);
/* Number of image rows referencing a blob. */
int img_db_blob_refs(cl_db *db, const char *sha256, int64_t *out);
/* Images and bytes a project holds (quota). */
int img_db_usage(cl_db *db, const char *project, int64_t *out_count, int64_t *out_bytes);
/* Is project an accepted member of image id? */
bool img_db_is_member(cl_db *db, const char *id, const char *project);
/* Add (or replace) a member with a status (pending, accepted, rejected). */
int img_db_add_member(cl_db *db, const char *id, const char *project, const char *status);

/* One membership of a shared image (Glance's member document). */
typedef struct img_member {
    char image_id[CL_UUID_LEN];
    char member[64];
    char status[16];
    int64_t created_at, updated_at; /* unix ms */
} img_member;

/* Load one membership: 0 or -ENOENT. */
int img_db_member_get(cl_db *db, const char *id, const char *member, img_member *out);
/* Insert a new pending membership: 0, -EEXIST. */
int img_db_member_insert(cl_db *db, const char *id, const char *member);
/* Set a membership's status: 0, -ENOENT. */
int img_db_member_set_status(cl_db *db, const char *id, const char *member,
                             const char *status);
/* Remove a membership: 0, -ENOENT. */
int img_db_member_delete(cl_db *db, const char *id, const char *member);
/* The members of image id as a new JSON array of member documents (only `member`'s own
 * entry when member is not NULL). 0 or -errno. */
int img_db_member_list(cl_db *db, const char *id, const char *member, json_object **out);
/* Glance's member document (new reference). */
json_object *img_member_to_json(const img_member *m);

/* A list query (GET /v2/images). */
typedef struct img_list_query {
    const char *name, *status, *visibility, *owner;
    const char *sort_key; /* validated column */
    bool sort_desc;
    const char *marker;   /* image id or NULL */
    int64_t limit;
} img_list_query;

/* Fill *out with a new JSON array of image documents visible to who, at most limit,
 * and *more when further results exist. 0, -ENOENT (marker unknown), -EINVAL. */
int img_db_list(cl_db *db, const img_identity *who, const img_list_query *q,
                json_object **out, bool *more);

/* The Glance document of an image (new reference). */
json_object *img_record_to_json(const img_record *r);

/* ---------------- HTTP requests as the routes see them (api.c) ---------------- */

typedef struct img_service img_service;

/* One request being answered: libcloud's request and response, plus the caller. */
typedef struct img_req {
    const cl_http_req *http;
    cl_http_resp *resp;
    const char *method;
    img_identity who;              /* valid once img_req_auth() succeeded */
    const char *body;              /* buffered body of non-streaming routes, NUL-ended */
    size_t body_len;
} img_req;

/* Request header or query argument, NULL when absent. */
const char *img_req_header(const img_req *req, const char *name);
const char *img_req_query(const img_req *req, const char *name);

/* Authenticate the request (X-Auth-Token); on failure answers 401 and returns <0. */
int img_req_auth(img_service *svc, img_req *req);

/* Answer (once: a later answer is ignored, as with cl_http_resp). Headers may be added
 * before or after the answer. */
void img_resp_json(img_req *req, int status, json_object *body /* owned */);
void img_resp_error(img_req *req, const cl_error *err);
void img_resp_errorf(img_req *req, cl_errcode code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void img_resp_empty(img_req *req, int status);
/* Stream len bytes of fd from offset (takes fd). */
void img_resp_fd(img_req *req, int status, int fd, uint64_t offset, uint64_t len);
void img_resp_text(img_req *req, int status, const char *ctype, const char *text);
void img_resp_header(img_req *req, const char *name, const char *value);

/* The routes of the Image API for cl_http_server (ud: the img_service). The upload
 * (PUT /v2/images/{id}/file) is the one streaming route. */
extern const cl_http_route img_api_routes[];
extern const size_t img_api_nroutes;
extern const cl_http_stream_route img_api_stream_routes[];
extern const size_t img_api_nstream_routes;
/* /healthz and /metrics callbacks (ud: the img_service). */
bool img_api_health(char *reason, size_t len, void *ud);
void img_api_metrics(FILE *out, void *ud);

/* ---------------- the service ---------------- */

struct img_service {
    const img_config *cfg;
    cl_db *db;
    pthread_mutex_t lock; /* the db connection and blob commit/delete */
    img_blob_store blobs;
    cl_http_server *http;
    uint64_t max_virtual_size;
    bool have_token_key; /* sealed tokens verified with token_key */
    cl_token_key token_key;
    /* The byte quota with uploads in flight (api.c): one entry per project that has
     * uploads running, with the bytes they reserved. quota_lock nests inside lock. */
    pthread_mutex_t quota_lock;
    struct img_quota_use *quota_uses;
    /* metrics */
    atomic_uint_fast64_t uploads_ok, uploads_refused, uploads_aborted;
    atomic_uint_fast64_t bytes_in, bytes_out;
};

/* Open the DB, recover from a crash (temp files removed, images left "saving" set to
 * "killed", unreferenced blobs removed) and start listening. cfg must outlive the
 * service. 0 or -errno with err filled. */
int img_service_start(const img_config *cfg, img_service **out, cl_error *err);
/* The bound port (useful with port 0). */
uint16_t img_service_port(const img_service *svc);
/* Stop listening, finish requests, free. Accepts NULL. */
void img_service_stop(img_service *svc);

/* Check an X-Auth-Token and say who it is: the static admin token of the config, or a
 * sealed token (token.h) opened with the shared token key. A sealed token must be
 * project-scoped and carry a role. 0 or -EACCES (err: 401). */
int img_auth(const img_service *svc, const char *token, img_identity *out, cl_error *err);

#endif
