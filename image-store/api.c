/*
 * api.c - the Image API v2 routes of nube-image (the Glance dialect python-openstackclient
 * and openstacksdk speak; shapes follow the recorded exchanges in
 * shared/reference/openstack-api/image-*.txt).
 *
 *   GET  /                          version document (300 Multiple Choices, as Glance)
 *   GET  /v2/schemas/image(s)       JSON schemas
 *   GET  /v2/images                 list: filters, sort, limit/marker, next link
 *   POST /v2/images                 create (201, status queued)
 *   GET|PATCH|DELETE /v2/images/{id}
 *   PUT  /v2/images/{id}/file       streamed upload: queued -> saving -> active | killed
 *   GET  /v2/images/{id}/file       streamed download, Content-MD5, single Range
 *   PUT|DELETE /v2/images/{id}/tags/{tag}
 *   POST|GET /v2/images/{id}/members, GET|PUT|DELETE /v2/images/{id}/members/{member}
 *                                   sharing: the owner offers (pending), only the member
 *                                   accepts or rejects; a member sees the image by id,
 *                                   and lists it once accepted
 *   GET  /v2/schemas/member(s)
 *   GET  /healthz, /metrics         (cl_http_server built-ins, with our callbacks)
 *
 * Callers are who img_auth() says (service.c): the static admin token, or a token sealed
 * by nube-api (project, roles). Admin sees all; a member of the owner project changes its
 * images; a reader only looks; other projects see public, community and accepted shared
 * images, and get 404 for the rest.
 *
 * The routes are served by libcloud's cl_http_server: every route but the upload gets a
 * buffered body (up to 1 MiB); the upload is a streaming route whose begin/chunk/end/
 * abort callbacks are the pipeline below, and downloads are answered from the blob's
 * file descriptor (sendfile). The server runs a thread per connection: uploads block on
 * disk and must not stall other clients.
 *
 * The upload pipeline: each chunk is counted against the size limit and the project's
 * byte quota (reserved as it arrives, see img_quota_use), fed to the format inspector,
 * then handed to the blob writer (written and hashed by its workers, blob.c). The first
 * refusal kills the image at once with its reason (visible to `image show` as
 * nube_status_reason; a quota refusal puts it back to queued instead, as Glance) and drops
 * the temp file; the rest of the body is discarded by cl_http_server. Only after the last byte,
 * the final inspection verdict and an fsync does the blob get its address and the image
 * turn active, in one step under the service lock. A connection lost mid-upload puts the
 * image back to queued (as Glance does) so the client can retry; nothing partial is kept.
 *
 * Every handler takes the service lock only around database and blob-namespace steps,
 * never around network or bulk disk I/O.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "img.h"
#include "json.h"
#include "log.h"
#include "util.h"

#define DEFAULT_LIMIT 25
#define MAX_LIMIT 1000
#define MAX_TAGS 128
#define MAX_PROPERTIES 128
#define MAX_TAG_LEN 255
#define MAX_PROP_VALUE 65535
/* A 413 decided from the headers is answered after the body when the body is at most
 * this long (below libcloud's discard cap of 64 MiB), see upload_begin(). */
#define EARLY_413_DRAIN_MAX (32ULL * 1024 * 1024)

typedef struct img_upload {
    img_service *svc;
    char id[CL_UUID_LEN];
    char owner[64];
    img_blob_writer *w;
    cl_img_inspector *insp;
    uint64_t received;
    struct img_quota_use *quse; /* the owner's quota entry while the upload runs */
    uint64_t reserved;          /* bytes this upload holds in quse */
    bool refused;
    cl_error err;            /* the answer once refused */
} img_upload;

/*
 * The byte quota with uploads running in parallel. Each upload reserves its bytes before
 * it accepts them: all of Content-Length when the request starts (so the uploads that
 * cannot fit get 413 at once, before sending their data), else each piece as it
 * arrives; a project never has stored + reserved bytes over its quota, so whatever the
 * interleaving, what ends stored fits. Reservations live in memory, one entry per project
 * with uploads in flight: a restart or a crash ends every upload and so every
 * reservation (the images left saving are killed by recovery).
 *
 * An entry's `stored` is the project's stored bytes as read from the database, kept as
 * an upper bound: an upload that completes adds its size in the same step, under the
 * service lock, as its row turns active; a delete (which lowers the truth) leaves it high.
 * So a reservation that fits is granted without touching the database, and one that does
 * not fit is decided again on a fresh count under the service lock: refusals are exact.
 */
struct img_quota_use {
    struct img_quota_use *next;
    char project[64];
    int64_t stored;   /* bytes of the project's images (upper bound, see above) */
    int64_t reserved; /* bytes held by its uploads in flight */
    int uploads;      /* uploads in flight; the entry goes with the last */
};

static const char *const disk_formats_known[] = {"ami", "ari", "aki", "vhd", "vhdx", "vmdk",
                                                 "raw", "qcow2", "vdi", "iso", "ploop"};
static const char *const container_formats_ok[] = {"bare", "ami", "aki", "ari"};
static const char *const container_formats_known[] = {"ovf", "ova", "docker", "compressed"};
/* Attributes the server owns: a client may not set them. */
static const char *const read_only_attrs[] = {
    "id", "status", "checksum", "size", "virtual_size", "owner", "created_at",
    "updated_at", "file", "self", "schema", "os_hash_algo", "os_hash_value", "location",
    "locations", "direct_url", "nube_status_reason"};

static void lock(img_service *svc) { pthread_mutex_lock(&svc->lock); }
static void unlock(img_service *svc) { pthread_mutex_unlock(&svc->lock); }

static bool in_list(const char *s, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, list[i]) == 0)
            return true;
    return false;
}

/* ---------------------------------------------------------------- request glue */

/**
 * img_req_header - a request header (case-insensitive name) or NULL.
 */
const char *img_req_header(const img_req *req, const char *name)
{
    return cl_http_req_header(req->http, name);
}

/**
 * img_req_query - a query argument (decoded) or NULL.
 */
const char *img_req_query(const img_req *req, const char *name)
{
    return cl_http_req_query(req->http, name);
}

/**
 * img_resp_json - answer with a JSON document (takes ownership of body).
 */
void img_resp_json(img_req *req, int status, json_object *body)
{
    cl_http_resp_json(req->resp, status, body);
}

/**
 * img_resp_error - answer with the OpenStack error body of err.
 */
void img_resp_error(img_req *req, const cl_error *err)
{
    cl_http_resp_error(req->resp, err);
}

/**
 * img_resp_errorf - format and answer an error of the catalogue.
 */
void img_resp_errorf(img_req *req, cl_errcode code, const char *fmt, ...)
{
    cl_error err = {.code = code};
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err.message, sizeof(err.message), fmt, ap);
    va_end(ap);
    cl_http_resp_error(req->resp, &err);
}

/**
 * img_resp_empty - answer with no body (204, 201 ...).
 */
void img_resp_empty(img_req *req, int status)
{
    cl_http_resp_raw(req->resp, status, NULL, NULL, 0);
}

/**
 * img_resp_fd - stream len bytes of fd from offset; takes fd.
 */
void img_resp_fd(img_req *req, int status, int fd, uint64_t offset, uint64_t len)
{
    cl_http_resp_fd(req->resp, status, fd, offset, len);
}

/**
 * img_resp_text - answer with a text body (copied).
 */
void img_resp_text(img_req *req, int status, const char *ctype, const char *text)
{
    cl_http_resp_raw(req->resp, status, ctype, text, strlen(text));
}

/**
 * img_resp_header - add a response header (before or after the answer).
 */
void img_resp_header(img_req *req, const char *name, const char *value)
{
    cl_http_resp_header(req->resp, name, value);
}

/**
 * img_req_auth - authenticate; answers 401 itself on failure.
 */
int img_req_auth(img_service *svc, img_req *req)
{
    cl_error err = {0};
    int rc = img_auth(svc, img_req_header(req, "X-Auth-Token"), &req->who, &err);

    if (rc < 0)
        img_resp_error(req, &err);
    return rc;
}

static void req_init(img_req *req, const cl_http_req *hr, cl_http_resp *resp)
{
    memset(req, 0, sizeof(*req));
    req->http = hr;
    req->resp = resp;
    req->method = hr->method;
    req->body = hr->body;
    req->body_len = hr->body_len;
}

/* ---------------------------------------------------------------- versions, schemas */

static void base_url(const img_service *svc, const img_req *req, char *out, size_t len)
{
    const char *host = img_req_header(req, "Host");

    if (host && host[0] && !strpbrk(host, " \t\r\n\"/"))
        snprintf(out, len, "http://%s", host);
    else
        snprintf(out, len, "http://%s:%u", svc->cfg->listen, img_service_port(svc));
}

static void api_versions(img_service *svc, img_req *req, int status)
{
    static const char *const ids[] = {"v2.15", "v2.9", "v2.7", "v2.6", "v2.5",
                                      "v2.4",  "v2.3", "v2.2", "v2.1", "v2.0"};
    json_object *arr = json_object_new_array(), *doc = json_object_new_object();
    char base[300], href[320];

    base_url(svc, req, base, sizeof(base));
    snprintf(href, sizeof(href), "%s/v2/", base);
    for (size_t i = 0; i < CL_ARRAY_SIZE(ids); i++) {
        json_object *v = json_object_new_object(), *links = json_object_new_array(),
                    *l = json_object_new_object();
        json_object_object_add(v, "id", json_object_new_string(ids[i]));
        json_object_object_add(v, "status",
                               json_object_new_string(i == 0 ? "CURRENT" : "SUPPORTED"));
        json_object_object_add(l, "rel", json_object_new_string("self"));
        json_object_object_add(l, "href", json_object_new_string(href));
        json_object_array_add(links, l);
        json_object_object_add(v, "links", links);
        json_object_array_add(arr, v);
    }
    json_object_object_add(doc, "versions", arr);
    img_resp_json(req, status, doc);
}

static json_object *schema_prop(const char *type, const char *descr)
{
    json_object *p = json_object_new_object();

    if (strchr(type, ',')) {
        json_object *types = json_object_new_array();
        char buf[64];
        cl_strlcpy(buf, type, sizeof(buf));
        for (char *save = NULL, *t = strtok_r(buf, ",", &save); t;
             t = strtok_r(NULL, ",", &save))
            json_object_array_add(types, json_object_new_string(t));
        json_object_object_add(p, "type", types);
    } else {
        json_object_object_add(p, "type", json_object_new_string(type));
    }
    json_object_object_add(p, "description", json_object_new_string(descr));
    return p;
}

static json_object *image_schema(void)
{
    static const struct {
        const char *name, *type, *descr;
    } props[] = {
        {"id", "string", "An identifier for the image"},
        {"name", "string,null", "Descriptive name for the image"},
        {"status", "string", "Status of the image"},
        {"visibility", "string", "Scope of image accessibility"},
        {"protected", "boolean", "If true, image will not be deletable."},
        {"os_hidden", "boolean", "If true, image will not appear in default image list"},
        {"checksum", "string,null", "md5 hash of image contents."},
        {"os_hash_algo", "string,null", "Algorithm of os_hash_value"},
        {"os_hash_value", "string,null", "Hexdigest of the image contents (sha512)"},
        {"owner", "string,null", "Owner of the image"},
        {"size", "integer,null", "Size of image file in bytes"},
        {"virtual_size", "integer,null", "Virtual size of image in bytes"},
        {"container_format", "string,null", "Format of the container"},
        {"disk_format", "string,null", "Format of the disk"},
        {"created_at", "string", "Date and time of image registration"},
        {"updated_at", "string", "Date and time of the last image modification"},
        {"tags", "array", "List of strings related to the image"},
        {"min_ram", "integer", "Amount of ram (in MB) required to boot image."},
        {"min_disk", "integer", "Amount of disk space (in GB) required to boot image."},
        {"self", "string", "An image self url"},
        {"file", "string", "An image file url"},
        {"schema", "string", "An image schema url"},
        {"kernel_id", "string,null", "ID of image stored in Glance used as the kernel"},
        {"ramdisk_id", "string,null", "ID of image stored in Glance used as the ramdisk"},
        {"architecture", "string", "Operating system architecture"},
        {"os_distro", "string", "Common name of operating system distribution"},
        {"hypervisor_type", "string", "Hypervisor type required by the image"},
    };
    json_object *s = json_object_new_object(), *p = json_object_new_object(),
                *add = json_object_new_object(), *links = json_object_new_array();

    for (size_t i = 0; i < CL_ARRAY_SIZE(props); i++)
        json_object_object_add(p, props[i].name, schema_prop(props[i].type, props[i].descr));
    json_object_object_add(s, "name", json_object_new_string("image"));
    json_object_object_add(s, "properties", p);
    json_object_object_add(add, "type", json_object_new_string("string"));
    json_object_object_add(s, "additionalProperties", add);
    {
        const char *rels[][2] = {{"self", "{self}"}, {"enclosure", "{file}"},
                                 {"describedby", "{schema}"}};
        for (size_t i = 0; i < 3; i++) {
            json_object *l = json_object_new_object();
            json_object_object_add(l, "rel", json_object_new_string(rels[i][0]));
            json_object_object_add(l, "href", json_object_new_string(rels[i][1]));
            json_object_array_add(links, l);
        }
    }
    json_object_object_add(s, "links", links);
    return s;
}

static void api_schema(img_req *req, bool plural)
{
    json_object *img = image_schema();
    json_object *s, *p, *items, *links;

    if (!plural) {
        img_resp_json(req, 200, img);
        return;
    }
    s = json_object_new_object();
    p = json_object_new_object();
    items = json_object_new_object();
    json_object_object_add(items, "type", json_object_new_string("array"));
    json_object_object_add(items, "items", img);
    json_object_object_add(p, "images", items);
    json_object_object_add(p, "first", schema_prop("string", "first page"));
    json_object_object_add(p, "next", schema_prop("string", "next page"));
    json_object_object_add(p, "schema", schema_prop("string", "schema url"));
    json_object_object_add(s, "name", json_object_new_string("images"));
    json_object_object_add(s, "properties", p);
    links = json_object_new_array();
    json_object_object_add(s, "links", links);
    img_resp_json(req, 200, s);
}

/* The member schema the stock client reads before `image add project` and friends. */
static void api_member_schema(img_req *req, bool plural)
{
    json_object *m = json_object_new_object(), *p = json_object_new_object();
    json_object *st = schema_prop("string", "The status of this image member"), *en;

    json_object_object_add(p, "created_at", schema_prop("string", "Date and time of image "
                                                                  "member creation"));
    json_object_object_add(p, "updated_at", schema_prop("string", "Date and time of last "
                                                                  "modification of image "
                                                                  "member"));
    json_object_object_add(p, "image_id", schema_prop("string", "An identifier for the "
                                                                "image"));
    json_object_object_add(p, "member_id", schema_prop("string", "An identifier for the "
                                                                 "image member (tenantId)"));
    en = json_object_new_array();
    json_object_array_add(en, json_object_new_string("pending"));
    json_object_array_add(en, json_object_new_string("accepted"));
    json_object_array_add(en, json_object_new_string("rejected"));
    json_object_object_add(st, "enum", en);
    json_object_object_add(p, "status", st);
    json_object_object_add(p, "schema", schema_prop("string", "schema url"));
    json_object_object_add(m, "name", json_object_new_string("member"));
    json_object_object_add(m, "properties", p);
    if (plural) {
        json_object *s = json_object_new_object(), *pp = json_object_new_object(),
                    *items = json_object_new_object();
        json_object_object_add(items, "type", json_object_new_string("array"));
        json_object_object_add(items, "items", m);
        json_object_object_add(pp, "members", items);
        json_object_object_add(pp, "schema", schema_prop("string", "schema url"));
        json_object_object_add(s, "name", json_object_new_string("members"));
        json_object_object_add(s, "properties", pp);
        m = s;
    }
    img_resp_json(req, 200, m);
}

/* ---------------------------------------------------------------- load helpers */

/* Load an image the caller may see, or answer 404 (also for invisible ones, so ids of
 * other projects' private images are not disclosed). As in Glance, a member of a shared
 * image sees it by id whatever its membership status (a pending member must be able to
 * look before accepting; the stock client's `image set --accept` does); only the list
 * waits for "accepted". Call under the lock. */
static int load_visible(img_service *svc, img_req *req, const char *id, img_record *r)
{
    int rc = cl_uuid_valid(id) ? img_db_get(svc->db, id, r) : -ENOENT;
    img_member m;

    if (rc == 0 && !img_can_see(&req->who, r->owner, r->visibility,
                                r->visibility == IMG_VIS_SHARED &&
                                    img_db_member_get(svc->db, id, req->who.project_id,
                                                      &m) == 0)) {
        img_record_clear(r);
        rc = -ENOENT;
    }
    if (rc == -ENOENT)
        img_resp_errorf(req, CL_E_NOT_FOUND, "No image found with ID %s", id);
    else if (rc < 0)
        img_resp_errorf(req, CL_E_INTERNAL, "The image database failed (%s)", strerror(-rc));
    return rc;
}

static int load_modifiable(img_service *svc, img_req *req, const char *id, img_record *r)
{
    int rc = load_visible(svc, req, id, r);

    if (rc == 0 && !img_can_modify(&req->who, r->owner)) {
        img_record_clear(r);
        img_resp_errorf(req, CL_E_FORBIDDEN, "You are not permitted to modify image %s", id);
        return -EPERM;
    }
    return rc;
}

static void answer_image(img_req *req, int status, const img_record *r)
{
    img_resp_json(req, status, img_record_to_json(r));
}

/* ---------------------------------------------------------------- attribute setters */

/* Apply one attribute (create body member or PATCH value) to r. value NULL = remove. */
static int set_attr(img_service *svc, img_req *req, img_record *r, const char *key,
                    json_object *value, bool creating, cl_error *err)
{
    const char *s = value && json_object_is_type(value, json_type_string)
                        ? json_object_get_string(value) : NULL;

    if (in_list(key, read_only_attrs, CL_ARRAY_SIZE(read_only_attrs)) &&
        !(creating && strcmp(key, "id") == 0))
        return cl_error_set(err, CL_E_FORBIDDEN, "Attribute '%s' is read-only.", key);
    if (strcmp(key, "id") == 0) {
        if (!s || !cl_uuid_valid(s))
            return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid id: expected a UUID");
        cl_strlcpy(r->id, s, sizeof(r->id));
        for (char *p = r->id; *p; p++)
            if (*p >= 'A' && *p <= 'F')
                *p = (char)(*p - 'A' + 'a');
        return 0;
    }
    if (strcmp(key, "name") == 0) {
        if (value && !s)
            return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid name: expected a string");
        if (s && strlen(s) > 255)
            return cl_error_set(err, CL_E_BAD_REQUEST, "Image name is longer than 255 "
                                                       "characters");
        cl_strlcpy(r->name, s ? s : "", sizeof(r->name));
        return 0;
    }
    if (strcmp(key, "disk_format") == 0 || strcmp(key, "container_format") == 0) {
        bool disk = key[0] == 'd';
        if (!creating && strcmp(r->status, "queued") != 0)
            return cl_error_set(err, CL_E_FORBIDDEN, "Attribute '%s' can only be changed "
                                "while the image is queued", key);
        if (!s)
            return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid %s: expected a string", key);
        if (disk) {
            cl_img_format f;
            int rc = cl_img_format_parse(s, &f);
            if (rc == -ENOTSUP)
                return cl_error_set(err, CL_E_BAD_REQUEST, "disk_format '%s' is not "
                                    "accepted by this cloud; convert the image with "
                                    "'qemu-img convert -O qcow2' and upload it as qcow2", s);
            if (rc < 0 || !in_list(s, disk_formats_known, CL_ARRAY_SIZE(disk_formats_known)))
                return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid disk_format '%s'; use "
                                    "raw, qcow2, vmdk, iso, aki, ari or ami", s);
            cl_strlcpy(r->disk_format, s, sizeof(r->disk_format));
        } else {
            if (in_list(s, container_formats_known, CL_ARRAY_SIZE(container_formats_known)))
                return cl_error_set(err, CL_E_BAD_REQUEST, "container_format '%s' is not "
                                    "accepted by this cloud; use bare", s);
            if (!in_list(s, container_formats_ok, CL_ARRAY_SIZE(container_formats_ok)))
                return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid container_format '%s'; "
                                    "use bare, ami, aki or ari", s);
            cl_strlcpy(r->container_format, s, sizeof(r->container_format));
        }
        return 0;
    }
    if (strcmp(key, "visibility") == 0) {
        img_visibility v;
        if (!s || img_visibility_parse(s, &v) < 0)
            return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid visibility; use private, "
                                "shared, community or public");
        if (v == IMG_VIS_PUBLIC && !req->who.is_admin)
            return cl_error_set(err, CL_E_FORBIDDEN, "Only administrators can make an "
                                "image public; use 'community' to share it with everyone");
        r->visibility = v;
        return 0;
    }
    if (strcmp(key, "min_disk") == 0 || strcmp(key, "min_ram") == 0) {
        if (!value || !json_object_is_type(value, json_type_int) ||
            json_object_get_int64(value) < 0 || json_object_get_int64(value) > INT32_MAX)
            return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid %s: expected a "
                                "non-negative integer", key);
        *(key[4] == 'd' ? &r->min_disk : &r->min_ram) = json_object_get_int64(value);
        return 0;
    }
    if (strcmp(key, "protected") == 0 || strcmp(key, "os_hidden") == 0) {
        if (!value || !json_object_is_type(value, json_type_boolean))
            return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid %s: expected true or "
                                "false", key);
        *(key[0] == 'p' ? &r->protected_ : &r->os_hidden) = json_object_get_boolean(value);
        return 0;
    }
    if (strcmp(key, "tags") == 0) {
        json_object *tags = json_object_new_array();
        if (!value || !json_object_is_type(value, json_type_array) ||
            json_object_array_length(value) > MAX_TAGS) {
            json_object_put(tags);
            return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid tags: expected a list of "
                                "at most %d strings", MAX_TAGS);
        }
        for (size_t i = 0; i < json_object_array_length(value); i++) {
            json_object *t = json_object_array_get_idx(value, i);
            if (!json_object_is_type(t, json_type_string) ||
                json_object_get_string_len(t) > MAX_TAG_LEN) {
                json_object_put(tags);
                return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid tag: expected a string "
                                    "of at most %d characters", MAX_TAG_LEN);
            }
            json_object_array_add(tags, json_object_get(t));
        }
        json_object_put(r->tags);
        r->tags = tags;
        return 0;
    }
    /* Anything else is a free-form property: string values, as Glance requires. */
    if (strlen(key) == 0 || strlen(key) > 255)
        return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid property name");
    if (!value) {
        if (!json_object_object_get_ex(r->properties, key, NULL))
            return cl_error_set(err, CL_E_CONFLICT, "Property %s does not exist.", key);
        json_object_object_del(r->properties, key);
        return 0;
    }
    if (!s || strlen(s) > MAX_PROP_VALUE)
        return cl_error_set(err, CL_E_BAD_REQUEST, "Invalid value for property '%s': "
                            "expected a string", key);
    if (!json_object_object_get_ex(r->properties, key, NULL) &&
        json_object_object_length(r->properties) >= MAX_PROPERTIES)
        return cl_error_set(err, CL_E_OVER_LIMIT, "An image can have at most %d properties",
                            MAX_PROPERTIES);
    json_object_object_add(r->properties, key, json_object_new_string(s));
    (void)svc;
    return 0;
}

/* ---------------------------------------------------------------- create, show, list */

static void api_create(img_service *svc, img_req *req)
{
    _cleanup_json_ json_object *body = NULL;
    img_record r = {0};
    cl_error err = {0};
    int64_t count = 0, bytes = 0;
    char loc[400], base[300];
    int rc;

    if (req->who.read_only) {
        img_resp_errorf(req, CL_E_FORBIDDEN, "A reader cannot create images");
        return;
    }
    if (cl_json_parse_object(req->body ? req->body : "", req->body_len, &body, &err) < 0) {
        img_resp_error(req, &err);
        return;
    }
    cl_uuid_new(r.id);
    cl_strlcpy(r.owner, req->who.project_id, sizeof(r.owner));
    cl_strlcpy(r.status, "queued", sizeof(r.status));
    r.visibility = IMG_VIS_SHARED; /* Glance's default since Ocata */
    r.size = r.virtual_size = -1;
    r.properties = json_object_new_object();
    r.tags = json_object_new_array();
    json_object_object_foreach(body, key, val) {
        if (set_attr(svc, req, &r, key, val, true, &err) < 0) {
            img_record_clear(&r);
            img_resp_error(req, &err);
            return;
        }
    }
    r.created_at = r.updated_at = cl_now_ms();

    lock(svc);
    rc = img_db_usage(svc->db, r.owner, &count, &bytes);
    if (rc == 0 && count >= svc->cfg->quota_images_per_project)
        rc = cl_error_set(&err, CL_E_OVER_LIMIT, "Quota exceeded: project %s already has "
                          "%" PRId64 " images (limit %" PRId64 "); delete some first",
                          r.owner, count, svc->cfg->quota_images_per_project);
    else if (rc == 0 && (rc = img_db_insert(svc->db, &r)) == -EEXIST)
        cl_error_set(&err, CL_E_CONFLICT, "An image with ID %s already exists", r.id);
    else if (rc < 0)
        cl_error_set(&err, CL_E_INTERNAL, "The image database failed (%s)", strerror(-rc));
    unlock(svc);
    if (rc < 0) {
        img_record_clear(&r);
        img_resp_error(req, &err);
        return;
    }
    cl_info("image.api", "image %s created by project %s", r.id, r.owner);
    answer_image(req, 201, &r);
    base_url(svc, req, base, sizeof(base));
    snprintf(loc, sizeof(loc), "%s/v2/images/%s", base, r.id);
    img_resp_header(req, "Location", loc);
    img_record_clear(&r);
}

static void api_show(img_service *svc, img_req *req, const char *id)
{
    img_record r = {0};
    int rc;

    lock(svc);
    rc = load_visible(svc, req, id, &r);
    unlock(svc);
    if (rc < 0)
        return;
    answer_image(req, 200, &r);
    img_record_clear(&r);
}

/* Append "&name=value" (URL-encoded) to a link. */
static void link_arg(char *out, size_t len, const char *name, const char *value)
{
    size_t n = strlen(out);

    if (!value || n + 1 >= len)
        return;
    n += (size_t)snprintf(out + n, len - n, "%s%s=", strchr(out, '?') ? "&" : "?", name);
    for (const unsigned char *p = (const unsigned char *)value; *p && n + 4 < len; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~')
            out[n++] = (char)*p;
        else
            n += (size_t)snprintf(out + n, len - n, "%%%02X", *p);
    }
    out[n < len ? n : len - 1] = '\0';
}

static void api_list(img_service *svc, img_req *req)
{
    img_list_query q = {.sort_key = "created_at", .sort_desc = true, .limit = DEFAULT_LIMIT};
    const char *limit = img_req_query(req, "limit"), *dir = img_req_query(req, "sort_dir");
    const char *sort = img_req_query(req, "sort"), *key = img_req_query(req, "sort_key");
    char sortbuf[64], link[1200];
    json_object *images = NULL, *doc;
    bool more = false;
    int rc;

    if (limit && (cl_parse_int64(limit, &q.limit) < 0 || q.limit < 0)) {
        img_resp_errorf(req, CL_E_BAD_REQUEST, "limit must be a non-negative integer");
        return;
    }
    if (q.limit > MAX_LIMIT)
        q.limit = MAX_LIMIT;
    if (sort) { /* new-style "sort=key:dir" (first key only) */
        cl_strlcpy(sortbuf, sort, sizeof(sortbuf));
        char *c = strchr(sortbuf, ','), *colon;
        if (c)
            *c = '\0';
        colon = strchr(sortbuf, ':');
        if (colon) {
            *colon = '\0';
            dir = colon + 1;
        }
        key = sortbuf;
    }
    if (key)
        q.sort_key = key;
    if (dir && strcmp(dir, "asc") != 0 && strcmp(dir, "desc") != 0) {
        img_resp_errorf(req, CL_E_BAD_REQUEST, "sort_dir must be 'asc' or 'desc'");
        return;
    }
    if (dir)
        q.sort_desc = strcmp(dir, "desc") == 0;
    q.name = img_req_query(req, "name");
    q.status = img_req_query(req, "status");
    q.visibility = img_req_query(req, "visibility");
    q.owner = img_req_query(req, "owner");
    q.marker = img_req_query(req, "marker");
    if (q.visibility && strcmp(q.visibility, "all") != 0) {
        img_visibility v;
        if (img_visibility_parse(q.visibility, &v) < 0) {
            img_resp_errorf(req, CL_E_BAD_REQUEST, "Invalid visibility filter '%s'",
                            q.visibility);
            return;
        }
    }

    lock(svc);
    rc = img_db_list(svc->db, &req->who, &q, &images, &more);
    unlock(svc);
    if (rc == -EINVAL) {
        img_resp_errorf(req, CL_E_BAD_REQUEST, "Invalid sort key '%s'", q.sort_key);
        return;
    }
    if (rc == -ENOENT) {
        img_resp_errorf(req, CL_E_BAD_REQUEST, "marker %s could not be found", q.marker);
        return;
    }
    if (rc < 0) {
        img_resp_errorf(req, CL_E_INTERNAL, "The image database failed (%s)", strerror(-rc));
        return;
    }
    doc = json_object_new_object();
    json_object_object_add(doc, "images", images);
    cl_strlcpy(link, "/v2/images", sizeof(link));
    link_arg(link, sizeof(link), "name", q.name);
    link_arg(link, sizeof(link), "status", q.status);
    link_arg(link, sizeof(link), "visibility", q.visibility);
    link_arg(link, sizeof(link), "owner", q.owner);
    if (key)
        link_arg(link, sizeof(link), "sort_key", q.sort_key);
    if (dir)
        link_arg(link, sizeof(link), "sort_dir", dir);
    if (limit) {
        char lim[24];
        snprintf(lim, sizeof(lim), "%" PRId64, q.limit);
        link_arg(link, sizeof(link), "limit", lim);
    }
    json_object_object_add(doc, "first", json_object_new_string(link));
    if (more && json_object_array_length(images) > 0) {
        json_object *last = json_object_array_get_idx(images, json_object_array_length(images) - 1);
        json_object *idv = NULL;
        json_object_object_get_ex(last, "id", &idv);
        link_arg(link, sizeof(link), "marker", json_object_get_string(idv));
        json_object_object_add(doc, "next", json_object_new_string(link));
    }
    json_object_object_add(doc, "schema", json_object_new_string("/v2/schemas/images"));
    img_resp_json(req, 200, doc);
}

/* ---------------------------------------------------------------- patch, delete, tags */

/* JSON pointer "/a~1b" -> "a/b" (RFC 6901); only single-level paths exist here. */
static int pointer_key(const char *path, char *out, size_t len)
{
    size_t n = 0;

    if (!path || path[0] != '/' || strchr(path + 1, '/'))
        return -EINVAL;
    for (const char *p = path + 1; *p && n + 1 < len; p++) {
        if (p[0] == '~' && p[1] == '1') {
            out[n++] = '/';
            p++;
        } else if (p[0] == '~' && p[1] == '0') {
            out[n++] = '~';
            p++;
        } else {
            out[n++] = *p;
        }
    }
    out[n] = '\0';
    return n ? 0 : -EINVAL;
}

static void api_patch(img_service *svc, img_req *req, const char *id)
{
    const char *ct = img_req_header(req, "Content-Type");
    _cleanup_json_ json_object *ops = NULL;
    img_record r = {0};
    cl_error err = {0};
    int rc;

    if (!ct || (strncasecmp(ct, "application/openstack-images-v2.1-json-patch", 44) != 0 &&
                strncasecmp(ct, "application/openstack-images-v2.0-json-patch", 44) != 0)) {
        img_resp_errorf(req, CL_E_UNSUPPORTED_MEDIA, "PATCH needs Content-Type "
                        "application/openstack-images-v2.1-json-patch");
        return;
    }
    if (cl_json_parse(req->body ? req->body : "", req->body_len, &ops, &err) < 0 ||
        !json_object_is_type(ops, json_type_array)) {
        if (!err.message[0])
            cl_error_set(&err, CL_E_BAD_REQUEST, "The PATCH body must be a list of "
                                                 "operations");
        img_resp_error(req, &err);
        return;
    }
    lock(svc);
    rc = load_modifiable(svc, req, id, &r);
    if (rc < 0) {
        unlock(svc);
        return;
    }
    for (size_t i = 0; rc == 0 && i < json_object_array_length(ops); i++) {
        json_object *op = json_object_array_get_idx(ops, i), *value = NULL;
        const char *opname = NULL, *path = NULL;
        char key[256];

        if (cl_json_get_str(op, "op", true, &opname, &err) < 0 ||
            cl_json_get_str(op, "path", true, &path, &err) < 0) {
            rc = -EINVAL;
            break;
        }
        if (pointer_key(path, key, sizeof(key)) < 0) {
            rc = cl_error_set(&err, CL_E_BAD_REQUEST, "Invalid JSON pointer '%s'", path);
            break;
        }
        if (strcmp(opname, "add") == 0 || strcmp(opname, "replace") == 0) {
            if (!json_object_object_get_ex(op, "value", &value)) {
                rc = cl_error_set(&err, CL_E_BAD_REQUEST, "Operation '%s' needs a value",
                                  opname);
                break;
            }
            rc = set_attr(svc, req, &r, key, value, false, &err);
        } else if (strcmp(opname, "remove") == 0) {
            if (strcmp(key, "name") == 0 || strcmp(key, "tags") == 0)
                rc = set_attr(svc, req, &r, key,
                              key[0] == 't' ? json_object_new_array() : NULL, false, &err);
            else if (!in_list(key, read_only_attrs, CL_ARRAY_SIZE(read_only_attrs)) &&
                     strcmp(key, "visibility") && strcmp(key, "protected") &&
                     strcmp(key, "disk_format") && strcmp(key, "container_format") &&
                     strcmp(key, "min_disk") && strcmp(key, "min_ram") &&
                     strcmp(key, "os_hidden"))
                rc = set_attr(svc, req, &r, key, NULL, false, &err);
            else
                rc = cl_error_set(&err, CL_E_FORBIDDEN, "Attribute '%s' cannot be removed",
                                  key);
        } else {
            rc = cl_error_set(&err, CL_E_BAD_REQUEST, "Unsupported PATCH operation '%s'; "
                                                      "use add, replace or remove", opname);
        }
    }
    if (rc == 0) {
        r.updated_at = cl_now_ms();
        rc = img_db_update(svc->db, &r);
        if (rc < 0)
            cl_error_set(&err, CL_E_INTERNAL, "The image database failed (%s)",
                         strerror(-rc));
    }
    unlock(svc);
    if (rc < 0)
        img_resp_error(req, &err);
    else
        answer_image(req, 200, &r);
    img_record_clear(&r);
}

/* Remove a blob no image references any more. Call under the lock. */
static void drop_blob_if_unused(img_service *svc, const char *sha256)
{
    int64_t refs = 1;

    if (sha256[0] && img_db_blob_refs(svc->db, sha256, &refs) == 0 && refs == 0 &&
        img_blob_remove(&svc->blobs, sha256) == 0)
        cl_debug("image.blob", "blob %s removed (no image uses it)", sha256);
}

static void api_delete(img_service *svc, img_req *req, const char *id)
{
    img_record r = {0};
    int rc;

    lock(svc);
    rc = load_modifiable(svc, req, id, &r);
    if (rc == 0 && r.protected_) {
        img_resp_errorf(req, CL_E_FORBIDDEN, "Image %s is protected and cannot be deleted; "
                        "unset 'protected' first", id);
        rc = -EPERM;
    } else if (rc == 0) {
        rc = img_db_delete(svc->db, id);
        if (rc == 0)
            drop_blob_if_unused(svc, r.blob);
        else
            img_resp_errorf(req, CL_E_INTERNAL, "The image database failed (%s)",
                            strerror(-rc));
    }
    unlock(svc);
    img_record_clear(&r);
    if (rc == 0) {
        cl_info("image.api", "image %s deleted", id);
        img_resp_empty(req, 204);
    }
}

static void api_tag(img_service *svc, img_req *req, const char *id, const char *tag, bool add)
{
    img_record r = {0};
    int rc;
    size_t n, i;
    bool found = false;

    if (strlen(tag) == 0 || strlen(tag) > MAX_TAG_LEN) {
        img_resp_errorf(req, CL_E_BAD_REQUEST, "A tag has 1 to %d characters", MAX_TAG_LEN);
        return;
    }
    lock(svc);
    rc = load_modifiable(svc, req, id, &r);
    if (rc < 0) {
        unlock(svc);
        return;
    }
    n = json_object_array_length(r.tags);
    for (i = 0; i < n && !found; i++)
        found = strcmp(json_object_get_string(json_object_array_get_idx(r.tags, i)), tag) == 0;
    if (add && !found && n >= MAX_TAGS) {
        img_resp_errorf(req, CL_E_OVER_LIMIT, "An image can have at most %d tags", MAX_TAGS);
        rc = -EDQUOT;
    } else if (!add && !found) {
        img_resp_errorf(req, CL_E_NOT_FOUND, "Tag %s not found on image %s", tag, id);
        rc = -ENOENT;
    } else if (add != found) {
        if (add)
            json_object_array_add(r.tags, json_object_new_string(tag));
        else
            json_object_array_del_idx(r.tags, i - 1, 1);
        r.updated_at = cl_now_ms();
        rc = img_db_update(svc->db, &r);
        if (rc < 0)
            img_resp_errorf(req, CL_E_INTERNAL, "The image database failed");
    }
    unlock(svc);
    img_record_clear(&r);
    if (rc == 0)
        img_resp_empty(req, 204);
}

/* ---------------------------------------------------------------- members */

/* How the caller stands towards a shared image's member list. */
typedef enum { MEMB_NONE, MEMB_MEMBER, MEMB_OWNER } memb_role;

#define MAX_MEMBER_ID 63

/* Load image id for the members routes: its owner (or an admin) manages the list; a
 * project on the list (whatever its status: a pending member must be able to accept)
 * sees and answers its own entry; anyone else gets 404, as for an invisible image.
 * Call under the lock. */
static int load_for_members(img_service *svc, img_req *req, const char *id, img_record *r,
                            memb_role *role)
{
    img_member m;
    int rc = cl_uuid_valid(id) ? img_db_get(svc->db, id, r) : -ENOENT;

    if (rc == 0) {
        if (req->who.is_admin || strcmp(req->who.project_id, r->owner) == 0)
            *role = MEMB_OWNER;
        else if (img_db_member_get(svc->db, id, req->who.project_id, &m) == 0)
            *role = MEMB_MEMBER;
        else if (img_can_see(&req->who, r->owner, r->visibility, false))
            *role = MEMB_NONE;
        else
            rc = -ENOENT;
    }
    if (rc == -ENOENT)
        img_resp_errorf(req, CL_E_NOT_FOUND, "No image found with ID %s", id);
    else if (rc < 0)
        img_resp_errorf(req, CL_E_INTERNAL, "The image database failed (%s)", strerror(-rc));
    if (rc < 0)
        img_record_clear(r);
    return rc;
}

static void answer_member(img_service *svc, img_req *req, int status, const char *id,
                          const char *member)
{
    img_member m;
    int rc = img_db_member_get(svc->db, id, member, &m);

    if (rc == 0)
        img_resp_json(req, status, img_member_to_json(&m));
    else
        img_resp_errorf(req, CL_E_INTERNAL, "The image database failed (%s)", strerror(-rc));
}

static void api_member_create(img_service *svc, img_req *req, const char *id)
{
    _cleanup_json_ json_object *body = NULL;
    img_record r = {0};
    cl_error err = {0};
    memb_role role = MEMB_NONE;
    const char *member;
    json_object *v;
    int rc;

    if (cl_json_parse_object(req->body ? req->body : "", req->body_len, &body, &err) < 0) {
        img_resp_error(req, &err);
        return;
    }
    v = json_object_object_get(body, "member");
    member = v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
    if (!member || !member[0] || strlen(member) > MAX_MEMBER_ID) {
        img_resp_errorf(req, CL_E_BAD_REQUEST, "Give the member project as {\"member\": "
                        "\"<project id>\"} (1 to %d characters)", MAX_MEMBER_ID);
        return;
    }
    lock(svc);
    if (load_for_members(svc, req, id, &r, &role) < 0)
        goto out;
    if (role != MEMB_OWNER || !img_can_modify(&req->who, r.owner)) {
        img_resp_errorf(req, CL_E_FORBIDDEN, "Only the owner of image %s can add members", id);
    } else if (r.visibility != IMG_VIS_SHARED) {
        img_resp_errorf(req, CL_E_FORBIDDEN, "Only shared images have members; image %s is "
                        "%s (set visibility to shared first)", id,
                        img_visibility_name(r.visibility));
    } else if (strcmp(member, r.owner) == 0) {
        img_resp_errorf(req, CL_E_BAD_REQUEST, "The owner of an image cannot be a member "
                        "of it");
    } else if ((rc = img_db_member_insert(svc->db, id, member)) == -EEXIST) {
        img_resp_errorf(req, CL_E_CONFLICT, "Project %s is already a member of image %s",
                        member, id);
    } else if (rc < 0) {
        img_resp_errorf(req, CL_E_INTERNAL, "The image database failed (%s)", strerror(-rc));
    } else {
        cl_info("image.api", "image %s shared with project %s (pending)", id, member);
        answer_member(svc, req, 200, id, member);
    }
out:
    unlock(svc);
    img_record_clear(&r);
}

static void api_member_list(img_service *svc, img_req *req, const char *id)
{
    img_record r = {0};
    memb_role role = MEMB_NONE;
    json_object *arr = NULL, *doc;
    int rc;

    lock(svc);
    if (load_for_members(svc, req, id, &r, &role) < 0)
        goto out;
    if (r.visibility != IMG_VIS_SHARED) {
        img_resp_errorf(req, CL_E_FORBIDDEN, "Only shared images have members; image %s is "
                        "%s", id, img_visibility_name(r.visibility));
        goto out;
    }
    /* A member sees its own entry only: who else an image is shared with is the
     * owner's business. */
    rc = img_db_member_list(svc->db, id, role == MEMB_OWNER ? NULL : req->who.project_id,
                            &arr);
    if (rc < 0) {
        img_resp_errorf(req, CL_E_INTERNAL, "The image database failed (%s)", strerror(-rc));
        goto out;
    }
    doc = json_object_new_object();
    json_object_object_add(doc, "members", arr);
    json_object_object_add(doc, "schema", json_object_new_string("/v2/schemas/members"));
    img_resp_json(req, 200, doc);
out:
    unlock(svc);
    img_record_clear(&r);
}

/* The member route's caller may look at entry `member`: the owner, or that member. */
static bool may_see_member(const img_req *req, memb_role role, const char *member)
{
    return role == MEMB_OWNER || strcmp(req->who.project_id, member) == 0;
}

static void api_member_show(img_service *svc, img_req *req, const char *id,
                            const char *member)
{
    img_record r = {0};
    img_member m;
    memb_role role = MEMB_NONE;

    lock(svc);
    if (load_for_members(svc, req, id, &r, &role) < 0)
        goto out;
    if (!may_see_member(req, role, member) || img_db_member_get(svc->db, id, member, &m) < 0)
        img_resp_errorf(req, CL_E_NOT_FOUND, "Project %s is not a member of image %s",
                        member, id);
    else
        img_resp_json(req, 200, img_member_to_json(&m));
out:
    unlock(svc);
    img_record_clear(&r);
}

static void api_member_update(img_service *svc, img_req *req, const char *id,
                              const char *member)
{
    _cleanup_json_ json_object *body = NULL;
    img_record r = {0};
    img_member m;
    cl_error err = {0};
    memb_role role = MEMB_NONE;
    const char *status;
    json_object *v;
    int rc;

    if (cl_json_parse_object(req->body ? req->body : "", req->body_len, &body, &err) < 0) {
        img_resp_error(req, &err);
        return;
    }
    v = json_object_object_get(body, "status");
    status = v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
    if (strcmp(status, "accepted") != 0 && strcmp(status, "rejected") != 0 &&
        strcmp(status, "pending") != 0) {
        img_resp_errorf(req, CL_E_BAD_REQUEST, "Invalid member status '%s'; use accepted, "
                        "rejected or pending", status);
        return;
    }
    lock(svc);
    if (load_for_members(svc, req, id, &r, &role) < 0)
        goto out;
    if (!may_see_member(req, role, member) || img_db_member_get(svc->db, id, member, &m) < 0) {
        img_resp_errorf(req, CL_E_NOT_FOUND, "Project %s is not a member of image %s",
                        member, id);
    } else if (strcmp(req->who.project_id, member) != 0 && !req->who.is_admin) {
        /* Glance's rule: the owner offers, only the member decides. */
        img_resp_errorf(req, CL_E_FORBIDDEN, "Only project %s can accept or reject its "
                        "membership of image %s", member, id);
    } else if (req->who.read_only) {
        img_resp_errorf(req, CL_E_FORBIDDEN, "A reader cannot change a membership");
    } else if ((rc = img_db_member_set_status(svc->db, id, member, status)) < 0) {
        img_resp_errorf(req, CL_E_INTERNAL, "The image database failed (%s)", strerror(-rc));
    } else {
        cl_info("image.api", "project %s %s image %s", member, status, id);
        answer_member(svc, req, 200, id, member);
    }
out:
    unlock(svc);
    img_record_clear(&r);
}

static void api_member_delete(img_service *svc, img_req *req, const char *id,
                              const char *member)
{
    img_record r = {0};
    memb_role role = MEMB_NONE;
    int rc;

    lock(svc);
    if (load_for_members(svc, req, id, &r, &role) < 0)
        goto out;
    if (!may_see_member(req, role, member)) {
        img_resp_errorf(req, CL_E_NOT_FOUND, "Project %s is not a member of image %s",
                        member, id);
    } else if (role != MEMB_OWNER || !img_can_modify(&req->who, r.owner)) {
        img_resp_errorf(req, CL_E_FORBIDDEN, "Only the owner of image %s can remove members",
                        id);
    } else if ((rc = img_db_member_delete(svc->db, id, member)) == -ENOENT) {
        img_resp_errorf(req, CL_E_NOT_FOUND, "Project %s is not a member of image %s",
                        member, id);
    } else if (rc < 0) {
        img_resp_errorf(req, CL_E_INTERNAL, "The image database failed (%s)", strerror(-rc));
    } else {
        cl_info("image.api", "project %s removed from image %s", member, id);
        img_resp_empty(req, 204);
    }
out:
    unlock(svc);
    img_record_clear(&r);
}

/* ---------------------------------------------------------------- download */

/* Parse a single "bytes=a-b" / "bytes=a-" / "bytes=-n" range. 0 ok, -EINVAL ignore the
 * header (malformed: serve everything, RFC 9110 14.2), -ERANGE unsatisfiable. */
static int parse_range(const char *h, uint64_t size, uint64_t *off, uint64_t *len)
{
    char a[24] = "", b[24] = "";
    const char *dash;
    int64_t x = -1, y = -1;

    if (strncmp(h, "bytes=", 6) != 0 || strchr(h, ','))
        return -EINVAL;
    h += 6;
    dash = strchr(h, '-');
    if (!dash || (size_t)(dash - h) >= sizeof(a) || strlen(dash + 1) >= sizeof(b))
        return -EINVAL;
    memcpy(a, h, (size_t)(dash - h));
    cl_strlcpy(b, dash + 1, sizeof(b));
    if ((a[0] && (cl_parse_int64(a, &x) < 0 || x < 0)) ||
        (b[0] && (cl_parse_int64(b, &y) < 0 || y < 0)) || (!a[0] && !b[0]))
        return -EINVAL;
    if (!a[0]) { /* suffix: last y bytes */
        if (y == 0 || size == 0)
            return -ERANGE;
        *len = (uint64_t)y < size ? (uint64_t)y : size;
        *off = size - *len;
        return 0;
    }
    if ((uint64_t)x >= size)
        return -ERANGE;
    if (b[0] && y < x)
        return -EINVAL;
    *off = (uint64_t)x;
    *len = (!b[0] || (uint64_t)y >= size ? size - 1 : (uint64_t)y) - (uint64_t)x + 1;
    return 0;
}

static void api_download(img_service *svc, img_req *req, const char *id)
{
    img_record r = {0};
    char path[600], hdr[128];
    const char *range = img_req_header(req, "Range");
    struct stat st;
    uint64_t off = 0, len;
    int fd, rc;

    lock(svc);
    rc = load_visible(svc, req, id, &r);
    if (rc == 0 && strcmp(r.status, "active") == 0 &&
        img_blob_path(&svc->blobs, r.blob, path, sizeof(path)) == 0)
        fd = open(path, O_RDONLY | O_CLOEXEC); /* under the lock: a delete cannot race */
    else
        fd = -2;
    unlock(svc);
    if (rc < 0)
        return;
    if (fd == -2) {
        /* Glance answers 204 when an image has no data (yet). */
        img_record_clear(&r);
        img_resp_empty(req, 204);
        return;
    }
    if (fd < 0 || fstat(fd, &st) < 0) {
        if (fd >= 0)
            close(fd);
        img_resp_errorf(req, CL_E_INTERNAL, "The data of image %s cannot be read", id);
        img_record_clear(&r);
        return;
    }
    len = (uint64_t)st.st_size;
    rc = range ? parse_range(range, (uint64_t)st.st_size, &off, &len) : -EINVAL;
    if (rc == -ERANGE) {
        /* No catalogue code is 416: the body keeps the OpenStack error shape. */
        json_object *inner = json_object_new_object(), *doc = json_object_new_object();
        close(fd);
        json_object_object_add(inner, "code", json_object_new_int(416));
        json_object_object_add(inner, "message",
                               json_object_new_string("Requested range not satisfiable"));
        json_object_object_add(doc, "requestedRangeNotSatisfiable", inner);
        img_resp_json(req, 416, doc);
        snprintf(hdr, sizeof(hdr), "bytes */%jd", (intmax_t)st.st_size);
        img_resp_header(req, "Content-Range", hdr);
        len = 0;
    } else if (rc == 0) {
        img_resp_fd(req, 206, fd, off, len);
        snprintf(hdr, sizeof(hdr), "bytes %" PRIu64 "-%" PRIu64 "/%jd", off, off + len - 1,
                 (intmax_t)st.st_size);
        img_resp_header(req, "Content-Range", hdr);
    } else {
        img_resp_fd(req, 200, fd, 0, len);
        img_resp_header(req, "Content-MD5", r.checksum);
    }
    img_resp_header(req, "Accept-Ranges", "bytes");
    atomic_fetch_add(&svc->bytes_out, len);
    img_record_clear(&r);
}

/* ---------------------------------------------------------------- upload */

/* The entry of project with its fresh stored bytes, one more upload counted in it (created
 * when absent). Call under svc->lock. NULL when out of memory. */
static struct img_quota_use *quota_attach(img_service *svc, const char *project,
                                          int64_t stored)
{
    struct img_quota_use *u;

    pthread_mutex_lock(&svc->quota_lock);
    for (u = svc->quota_uses; u; u = u->next)
        if (strcmp(u->project, project) == 0)
            break;
    if (!u && (u = calloc(1, sizeof(*u)))) {
        cl_strlcpy(u->project, project, sizeof(u->project));
        u->next = svc->quota_uses;
        svc->quota_uses = u;
    }
    if (u) {
        u->stored = stored;
        u->uploads++;
    }
    pthread_mutex_unlock(&svc->quota_lock);
    return u;
}

/* Bytes the project may still take. Under quota_lock. */
static int64_t quota_left(const img_service *svc, const struct img_quota_use *u)
{
    return svc->cfg->quota_bytes_per_project - u->stored - u->reserved;
}

/* Take n bytes for up if they fit. Under quota_lock. */
static bool quota_take(img_service *svc, img_upload *up, uint64_t n)
{
    int64_t left = quota_left(svc, up->quse);

    if (left < 0 || n > (uint64_t)left)
        return false;
    up->quse->reserved += (int64_t)n;
    up->reserved += n;
    return true;
}

/* Reserve n more bytes for a running upload: 0, or -EDQUOT when they do not fit even
 * on a fresh count of the stored bytes. */
static int quota_reserve(img_service *svc, img_upload *up, uint64_t n)
{
    int64_t count = 0, used = 0;
    bool ok;
    int rc;

    pthread_mutex_lock(&svc->quota_lock);
    ok = quota_take(svc, up, n);
    pthread_mutex_unlock(&svc->quota_lock);
    if (ok)
        return 0;
    lock(svc);
    rc = img_db_usage(svc->db, up->owner, &count, &used);
    pthread_mutex_lock(&svc->quota_lock);
    if (rc == 0)
        up->quse->stored = used;
    ok = rc == 0 && quota_take(svc, up, n);
    if (!ok) {
        /* Refused: its bytes go in the same step, so an upload deciding next sees
         * them free (else parallel uploads refused together could all fail, each
         * counting the others' doomed reservations). */
        up->quse->reserved -= (int64_t)up->reserved;
        up->reserved = 0;
    }
    pthread_mutex_unlock(&svc->quota_lock);
    unlock(svc);
    return ok ? 0 : -EDQUOT;
}

/* The upload no longer runs: `committed` bytes (its size when its row just turned
 * active, under svc->lock; else 0) become stored, the rest of its reservation is freed,
 * and the project's entry goes with its last upload. */
static void quota_release(img_service *svc, img_upload *up, uint64_t committed)
{
    struct img_quota_use *u = up->quse, **pp;

    if (!u)
        return;
    pthread_mutex_lock(&svc->quota_lock);
    u->stored += (int64_t)committed;
    u->reserved -= (int64_t)up->reserved;
    up->reserved = 0;
    up->quse = NULL;
    if (--u->uploads == 0) {
        for (pp = &svc->quota_uses; *pp != u; pp = &(*pp)->next)
            ;
        *pp = u->next;
        free(u);
    }
    pthread_mutex_unlock(&svc->quota_lock);
}

static void upload_free(img_upload *up)
{
    if (!up)
        return;
    quota_release(up->svc, up, 0);
    img_blob_writer_free(up->w);
    cl_img_inspector_free(up->insp);
    free(up);
}

/* The upload is refused: the image ends `to` (killed, or queued when only the quota
 * stood in the way, as Glance restores it) with the reason; the temp file and the
 * reservation go at once. */
static int upload_refuse_to(img_service *svc, img_upload *up, cl_errcode code,
                            const char *msg, const char *to)
{
    up->refused = true;
    up->err.code = code;
    cl_strlcpy(up->err.message, msg, sizeof(up->err.message));
    img_blob_writer_free(up->w);
    up->w = NULL;
    quota_release(svc, up, 0);
    lock(svc);
    img_db_set_status(svc->db, up->id, "saving", to, msg);
    unlock(svc);
    atomic_fetch_add(&svc->uploads_refused, 1);
    cl_info("image.upload", "image %s %s: %s", up->id, to, msg);
    return -EINVAL;
}

static int upload_refuse(img_service *svc, img_upload *up, cl_errcode code, const char *msg)
{
    return upload_refuse_to(svc, up, code, msg, "killed");
}

/* Does the client wait for "100 Continue" before it sends the body? */
static bool wants_continue(const img_req *req)
{
    const char *e = img_req_header(req, "Expect");

    return e && strcasecmp(e, "100-continue") == 0;
}

/* Authorise the upload, reserve its declared length in the quota and move the image to
 * saving; answers itself and returns < 0 when the upload cannot start. */
static int upload_begin(img_service *svc, img_req *req, const char *id,
                        uint64_t content_length, bool has_length, img_upload **out)
{
    img_upload *up;
    img_record r = {0};
    cl_img_format declared;
    cl_error too_large = {0};
    int64_t count = 0, used = 0;
    int rc;

    if (img_req_auth(svc, req) < 0)
        return -EACCES;
    up = calloc(1, sizeof(*up));
    if (!up) {
        img_resp_errorf(req, CL_E_INTERNAL, "Out of memory");
        return -ENOMEM;
    }
    up->svc = svc;
    cl_strlcpy(up->id, id, sizeof(up->id));
    lock(svc);
    rc = load_modifiable(svc, req, id, &r);
    if (rc < 0) {
        unlock(svc);
        free(up);
        return rc;
    }
    cl_strlcpy(up->owner, r.owner, sizeof(up->owner));
    if (!r.disk_format[0] || !r.container_format[0] ||
        cl_img_format_parse(r.disk_format, &declared) < 0) {
        img_resp_errorf(req, CL_E_BAD_REQUEST, "Set disk_format and container_format on "
                        "image %s before uploading its data", id);
        rc = -EINVAL;
    } else if (strcmp(r.status, "queued") != 0) {
        img_resp_errorf(req, CL_E_CONFLICT, "Image %s is %s; data can only be uploaded to a "
                        "queued image", id, r.status);
        rc = -EBUSY;
    } else if (has_length && content_length > (uint64_t)svc->cfg->max_image_bytes) {
        rc = cl_error_set(&too_large, CL_E_TOO_LARGE, "The image is larger than the limit "
                          "of %" PRId64 " bytes", svc->cfg->max_image_bytes);
    } else if ((rc = img_db_usage(svc->db, r.owner, &count, &used)) < 0) {
        img_resp_errorf(req, CL_E_INTERNAL, "The image database failed");
    } else if (!(up->quse = quota_attach(svc, r.owner, used))) {
        img_resp_errorf(req, CL_E_INTERNAL, "Out of memory");
        rc = -ENOMEM;
    } else {
        /* The whole declared length now, or (chunked) at least some room left. */
        int64_t reserved, left;
        bool fits;
        int uploads;
        pthread_mutex_lock(&svc->quota_lock);
        reserved = up->quse->reserved;
        left = quota_left(svc, up->quse);
        /* This upload is counted in uploads already. Each costs a ring of chunks and
         * digest threads, so one project cannot take them all (Glance's limit
         * image_count_uploading). */
        uploads = up->quse->uploads;
        fits = uploads <= svc->cfg->quota_uploads_per_project &&
               (has_length ? quota_take(svc, up, content_length) : left > 0);
        pthread_mutex_unlock(&svc->quota_lock);
        if (uploads > svc->cfg->quota_uploads_per_project) {
            rc = cl_error_set(&too_large, CL_E_TOO_LARGE, "Quota exceeded: project %s has "
                              "%d uploads in progress, the limit is %" PRId64, r.owner,
                              uploads - 1, svc->cfg->quota_uploads_per_project);
        } else if (!fits) {
            rc = cl_error_set(&too_large, CL_E_TOO_LARGE, "Quota exceeded: project %s stores "
                              "%" PRId64 " of %" PRId64 " bytes and uploads in progress hold "
                              "%" PRId64 " more; this upload does not fit", r.owner, used,
                              svc->cfg->quota_bytes_per_project, reserved);
        } else if (img_db_set_status(svc->db, id, "queued", "saving", NULL) < 0) {
            img_resp_errorf(req, CL_E_CONFLICT, "Another upload to image %s is in progress",
                            id);
            rc = -EBUSY;
        }
    }
    unlock(svc);
    if (rc < 0 && too_large.code && !wants_continue(req) &&
        content_length <= EARLY_413_DRAIN_MAX) {
        /* 413 from the headers while the client is already sending: the server would
         * close the connection with the body unread, and the client would likely see a
         * reset instead of the reason. Refuse at the first piece instead: the body is
         * read and dropped, and end() answers the 413. The image stays queued. */
        quota_release(svc, up, 0);
        up->refused = true;
        up->err = too_large;
        atomic_fetch_add(&svc->uploads_refused, 1);
        cl_info("image.upload", "image %s: %s", id, too_large.message);
        img_record_clear(&r);
        *out = up;
        return 0;
    }
    if (too_large.code)
        img_resp_error(req, &too_large);
    if (rc < 0) {
        img_record_clear(&r);
        upload_free(up);
        return rc;
    }

    up->insp = cl_img_inspector_new(declared, svc->max_virtual_size);
    rc = up->insp ? img_blob_writer_new(&svc->blobs, &up->w) : -ENOMEM;
    if (rc < 0) {
        upload_free(up);
        lock(svc);
        img_db_set_status(svc->db, id, "saving", "queued", NULL);
        unlock(svc);
        img_resp_errorf(req, CL_E_INTERNAL, "The image store cannot accept data now (%s)",
                        strerror(-rc));
        img_record_clear(&r);
        return -EIO;
    }
    *out = up;
    cl_info("image.upload", "upload to image %s started (%s)", id, r.disk_format);
    img_record_clear(&r);
    return 0;
}

/* One piece of the body: limits, inspection, write+hash, in that order. */
static int upload_chunk(img_upload *up, const char *data, size_t len)
{
    img_service *svc = up->svc;
    char msg[CL_ERROR_MSG_MAX];
    int rc;

    if (up->refused)
        return -EINVAL;
    up->received += len;
    atomic_fetch_add(&svc->bytes_in, len);
    if (up->received > (uint64_t)svc->cfg->max_image_bytes) {
        snprintf(msg, sizeof(msg), "The image is larger than the limit of %" PRId64 " bytes",
                 svc->cfg->max_image_bytes);
        return upload_refuse(svc, up, CL_E_TOO_LARGE, msg);
    }
    /* Bytes beyond the declared length (chunked uploads): reserve before accepting. */
    if (up->received > up->reserved &&
        quota_reserve(svc, up, up->received - up->reserved) < 0) {
        snprintf(msg, sizeof(msg), "Quota exceeded: the upload goes beyond the storage quota "
                 "of project %s (%" PRId64 " bytes, counting the uploads in progress); "
                 "upload the data again when there is room", up->owner,
                 svc->cfg->quota_bytes_per_project);
        return upload_refuse_to(svc, up, CL_E_TOO_LARGE, msg, "queued");
    }
    if (cl_img_inspector_feed(up->insp, data, len) < 0)
        return upload_refuse(svc, up, CL_E_BAD_REQUEST, cl_img_inspector_reason(up->insp));
    rc = img_blob_writer_write(up->w, data, len);
    if (rc < 0) {
        snprintf(msg, sizeof(msg), "The image store could not write the data (%s)",
                 strerror(-rc));
        return upload_refuse(svc, up, rc == -ENOSPC ? CL_E_UNAVAILABLE : CL_E_INTERNAL, msg);
    }
    return 0;
}

/* Last byte in: final verdict, seal, address, activate, answer. Frees up. */
static void upload_end(img_upload *up, img_req *req)
{
    img_service *svc = up->svc;
    img_blob_info info;
    cl_img_format fmt;
    uint64_t vsize = 0;
    img_record r = {0};
    char msg[CL_ERROR_MSG_MAX];
    int rc;

    if (!up->refused && cl_img_inspector_finish(up->insp, &fmt, &vsize) < 0)
        upload_refuse(svc, up, CL_E_BAD_REQUEST, cl_img_inspector_reason(up->insp));
    if (!up->refused && (rc = img_blob_writer_seal(up->w, &info)) < 0) {
        snprintf(msg, sizeof(msg), "The image store could not store the data (%s)",
                 strerror(-rc));
        upload_refuse(svc, up, CL_E_INTERNAL, msg);
    }
    if (up->refused) {
        img_resp_error(req, &up->err);
        goto out;
    }

    lock(svc);
    rc = img_db_get(svc->db, up->id, &r);
    if (rc == 0 && strcmp(r.status, "saving") != 0)
        rc = -ESTALE;
    if (rc == 0)
        rc = img_blob_writer_commit(up->w);
    if (rc == 0) {
        cl_strlcpy(r.status, "active", sizeof(r.status));
        r.size = (int64_t)info.size;
        r.virtual_size = (int64_t)vsize;
        cl_strlcpy(r.checksum, info.md5, sizeof(r.checksum));
        cl_strlcpy(r.os_hash_value, info.sha512, sizeof(r.os_hash_value));
        cl_strlcpy(r.blob, info.sha256, sizeof(r.blob));
        r.reason[0] = '\0';
        r.updated_at = cl_now_ms();
        rc = img_db_update(svc->db, &r);
        if (rc < 0) /* the row could not point at the blob: don't leak it */
            drop_blob_if_unused(svc, info.sha256);
        else /* reserved -> stored, in the same step as the row (see quota_reserve) */
            quota_release(svc, up, info.size);
    }
    img_record_clear(&r);
    unlock(svc);
    if (rc == -ENOENT || rc == -ESTALE) {
        img_resp_errorf(req, CL_E_CONFLICT, "Image %s was deleted or changed during the "
                        "upload; the data was discarded", up->id);
    } else if (rc < 0) {
        snprintf(msg, sizeof(msg), "The image store could not store the data (%s)",
                 strerror(-rc));
        upload_refuse(svc, up, CL_E_INTERNAL, msg);
        img_resp_error(req, &up->err);
    } else {
        atomic_fetch_add(&svc->uploads_ok, 1);
        cl_info("image.upload", "image %s active: %" PRIu64 " bytes, %s, sha256 %s", up->id,
                info.size, cl_img_format_name(fmt), info.sha256);
        img_resp_empty(req, 204);
    }
out:
    upload_free(up);
}

/* The client went away mid-upload (or the service is stopping): back to queued (as
 * Glance), temp file removed. Frees up. */
static void upload_abort(img_upload *up)
{
    img_service *svc = up->svc;

    /* Temp file and reservation first: once the image shows queued, nothing is left. */
    img_blob_writer_free(up->w);
    up->w = NULL;
    quota_release(svc, up, 0);
    if (!up->refused) {
        char msg[160];
        snprintf(msg, sizeof(msg), "The upload was interrupted after %" PRIu64 " bytes; "
                 "upload the data again", up->received);
        lock(svc);
        img_db_set_status(svc->db, up->id, "saving", "queued", msg);
        unlock(svc);
        atomic_fetch_add(&svc->uploads_aborted, 1);
        cl_info("image.upload", "image %s: %s", up->id, msg);
    }
    upload_free(up);
}

/* The streaming route's callbacks (http.h): headers in, body pieces, end, hang-up. */
static void s_upload_begin(const cl_http_req *hr, cl_http_resp *resp, void *ud,
                           void **stream)
{
    img_service *svc = ud;
    const char *cl = cl_http_req_header(hr, "Content-Length");
    img_upload *up = NULL;
    int64_t len = -1;
    img_req req;

    req_init(&req, hr, resp);
    if (cl && (cl_parse_int64(cl, &len) < 0 || len < 0)) {
        img_resp_errorf(&req, CL_E_BAD_REQUEST, "Invalid Content-Length");
        return;
    }
    if (upload_begin(svc, &req, cl_http_req_param(hr, "id"), len < 0 ? 0 : (uint64_t)len,
                     len >= 0, &up) == 0)
        *stream = up;
}

static int s_upload_chunk(void *stream, const char *data, size_t len)
{
    return upload_chunk(stream, data, len);
}

static void s_upload_end(void *stream, const cl_http_req *hr, cl_http_resp *resp)
{
    img_req req;

    req_init(&req, hr, resp);
    upload_end(stream, &req);
}

static void s_upload_abort(void *stream)
{
    upload_abort(stream);
}

/* ---------------------------------------------------------------- health, metrics */

/**
 * img_api_health - /healthz: healthy while the image database answers.
 */
bool img_api_health(char *reason, size_t len, void *ud)
{
    img_service *svc = ud;
    int64_t c = 0, b = 0;
    int rc;

    lock(svc);
    rc = img_db_usage(svc->db, "", &c, &b);
    unlock(svc);
    if (rc < 0)
        snprintf(reason, len, "image database unavailable");
    return rc == 0;
}

/**
 * img_api_metrics - the image service's lines of /metrics (cl_http_server adds the
 * request counters).
 */
void img_api_metrics(FILE *f, void *ud)
{
    img_service *svc = ud;

    fprintf(f, "# TYPE nube_image_uploads_total counter\n"
               "nube_image_uploads_total{result=\"active\"} %" PRIuFAST64 "\n"
               "nube_image_uploads_total{result=\"refused\"} %" PRIuFAST64 "\n"
               "nube_image_uploads_total{result=\"aborted\"} %" PRIuFAST64 "\n"
               "# TYPE nube_image_bytes_received_total counter\n"
               "nube_image_bytes_received_total %" PRIuFAST64 "\n"
               "# TYPE nube_image_bytes_sent_total counter\n"
               "nube_image_bytes_sent_total %" PRIuFAST64 "\n",
            (uint_fast64_t)atomic_load(&svc->uploads_ok),
            (uint_fast64_t)atomic_load(&svc->uploads_refused),
            (uint_fast64_t)atomic_load(&svc->uploads_aborted),
            (uint_fast64_t)atomic_load(&svc->bytes_in),
            (uint_fast64_t)atomic_load(&svc->bytes_out));

    /* Uploads in flight and the quota bytes they hold (all projects together). */
    int64_t reserved = 0;
    int uploads = 0;
    pthread_mutex_lock(&svc->quota_lock);
    for (const struct img_quota_use *u = svc->quota_uses; u; u = u->next) {
        reserved += u->reserved;
        uploads += u->uploads;
    }
    pthread_mutex_unlock(&svc->quota_lock);
    fprintf(f, "# TYPE nube_image_uploads_in_progress gauge\n"
               "nube_image_uploads_in_progress %d\n"
               "# TYPE nube_image_quota_reserved_bytes gauge\n"
               "nube_image_quota_reserved_bytes %" PRId64 "\n", uploads, reserved);
}

/* ---------------------------------------------------------------- routing */

/* The handlers of the route table: the img_req of the request, authenticated where the
 * route needs it (401 answered by img_req_auth), then the api_* function. */

static void r_root(const cl_http_req *hr, cl_http_resp *resp, void *ud)
{
    img_req req;

    req_init(&req, hr, resp);
    api_versions(ud, &req, 300);
}

static void r_versions(const cl_http_req *hr, cl_http_resp *resp, void *ud)
{
    img_req req;

    req_init(&req, hr, resp);
    api_versions(ud, &req, 200);
}

static void r_schema_image(const cl_http_req *hr, cl_http_resp *resp, void *ud)
{
    img_req req;

    req_init(&req, hr, resp);
    if (img_req_auth(ud, &req) == 0)
        api_schema(&req, false);
}

static void r_schema_images(const cl_http_req *hr, cl_http_resp *resp, void *ud)
{
    img_req req;

    req_init(&req, hr, resp);
    if (img_req_auth(ud, &req) == 0)
        api_schema(&req, true);
}

static void r_schema_member(const cl_http_req *hr, cl_http_resp *resp, void *ud)
{
    img_req req;

    req_init(&req, hr, resp);
    if (img_req_auth(ud, &req) == 0)
        api_member_schema(&req, strcmp(hr->path, "/v2/schemas/members") == 0);
}

static void r_list(const cl_http_req *hr, cl_http_resp *resp, void *ud)
{
    img_req req;

    req_init(&req, hr, resp);
    if (img_req_auth(ud, &req) == 0)
        api_list(ud, &req);
}

static void r_create(const cl_http_req *hr, cl_http_resp *resp, void *ud)
{
    img_req req;

    req_init(&req, hr, resp);
    if (img_req_auth(ud, &req) == 0)
        api_create(ud, &req);
}

static void r_show(const cl_http_req *hr, cl_http_resp *resp, void *ud)
{
    img_req req;

    req_init(&req, hr, resp);
    if (img_req_auth(ud, &req) == 0)
        api_show(ud, &req, cl_http_req_param(hr, "id"));
}

static void r_patch(const cl_http_req *hr, cl_http_resp *resp, void *ud)
{
    img_req req;

    req_init(&req, hr, resp);
    if (img_req_auth(ud, &req) == 0)
        api_patch(ud, &req, cl_http_req_param(hr, "id"));
}

static void r_delete(const cl_http_req *hr, cl_http_resp *resp, void *ud)
{
    img_req req;

    req_init(&req, hr, resp);
    if (img_req_auth(ud, &req) == 0)
        api_delete(ud, &req, cl_http_req_param(hr, "id"));
}

static void r_download(const cl_http_req *hr, cl_http_resp *resp, void *ud)
{
    img_req req;

    req_init(&req, hr, resp);
    if (img_req_auth(ud, &req) == 0)
        api_download(ud, &req, cl_http_req_param(hr, "id"));
}

static void r_tag(const cl_http_req *hr, cl_http_resp *resp, void *ud)
{
    img_req req;

    req_init(&req, hr, resp);
    if (img_req_auth(ud, &req) == 0)
        api_tag(ud, &req, cl_http_req_param(hr, "id"), cl_http_req_param(hr, "tag"),
                strcmp(hr->method, "PUT") == 0);
}

static void r_members(const cl_http_req *hr, cl_http_resp *resp, void *ud)
{
    img_req req;

    req_init(&req, hr, resp);
    if (img_req_auth(ud, &req) < 0)
        return;
    if (strcmp(hr->method, "POST") == 0)
        api_member_create(ud, &req, cl_http_req_param(hr, "id"));
    else
        api_member_list(ud, &req, cl_http_req_param(hr, "id"));
}

static void r_member(const cl_http_req *hr, cl_http_resp *resp, void *ud)
{
    img_req req;
    const char *id = cl_http_req_param(hr, "id"), *member = cl_http_req_param(hr, "member");

    req_init(&req, hr, resp);
    if (img_req_auth(ud, &req) < 0)
        return;
    if (strcmp(hr->method, "PUT") == 0)
        api_member_update(ud, &req, id, member);
    else if (strcmp(hr->method, "DELETE") == 0)
        api_member_delete(ud, &req, id, member);
    else
        api_member_show(ud, &req, id, member);
}

const cl_http_route img_api_routes[] = {
    {"GET", "/", r_root},
    {"GET", "/versions", r_versions},
    {"GET", "/v2/schemas/image", r_schema_image},
    {"GET", "/v2/schemas/images", r_schema_images},
    {"GET", "/v2/images", r_list},
    {"POST", "/v2/images", r_create},
    {"GET", "/v2/images/{id}", r_show},
    {"PATCH", "/v2/images/{id}", r_patch},
    {"DELETE", "/v2/images/{id}", r_delete},
    {"GET", "/v2/images/{id}/file", r_download},
    {"PUT", "/v2/images/{id}/tags/{tag}", r_tag},
    {"DELETE", "/v2/images/{id}/tags/{tag}", r_tag},
    {"POST", "/v2/images/{id}/members", r_members},
    {"GET", "/v2/images/{id}/members", r_members},
    {"GET", "/v2/images/{id}/members/{member}", r_member},
    {"PUT", "/v2/images/{id}/members/{member}", r_member},
    {"DELETE", "/v2/images/{id}/members/{member}", r_member},
    {"GET", "/v2/schemas/member", r_schema_member},
    {"GET", "/v2/schemas/members", r_schema_member},
};
const size_t img_api_nroutes = CL_ARRAY_SIZE(img_api_routes);

const cl_http_stream_route img_api_stream_routes[] = {
    {"PUT", "/v2/images/{id}/file", s_upload_begin, s_upload_chunk, s_upload_end,
     s_upload_abort},
};
const size_t img_api_nstream_routes = CL_ARRAY_SIZE(img_api_stream_routes);
