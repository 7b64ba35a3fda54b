/*
 * servers.c - POST/GET /v2.1/servers, GET /v2.1/servers/detail, GET/DELETE /v2.1/servers/{id}.
 *
 * Create validates the body as Nova's 2.1 JSON schema does (additionalProperties false,
 * name rules, flavorRef/imageRef, networks, metadata limits), writes the instance row
 * (vm_state building, task scheduling, power nostate) and asks the scheduler to place it
 * with a reliable instance.schedule message carrying the HTTP request id, then answers
 * 202 with the short body the recordings show (reference/openstack-api/server-create.txt).
 * The scheduler and the agents move the states on; this file only reads them back.
 *
 * Delete moves task_state to deleting (unless a delete already runs, which answers 204
 * again without a second message) and sends a reliable instance.delete; the scheduler
 * marks the row deleted once the agent destroyed the domain, and from then on GET
 * answers 404, which is what `openstack server delete --wait` polls for.
 *
 * Bodies are Nova 2.1's whatever the negotiated microversion: later shapes (2.47's
 * embedded flavor, 2.16 host_status, ...) come when a client needs them.
 *
 * key_name and metadata are not part of cl_instance (store.h); nube-api keeps them in a
 * small table of its own in the controller DB (api_server_extra) until the store grows
 * them.
 */
#include <errno.h>
#include <stdarg.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api_int.h"
#include "cleanup.h"
#include "db.h"
#include "json.h"
#include "log.h"
#include "messages.h"
#include "util.h"

#define LOG_MOD "api.servers"

#define METADATA_MAX_ITEMS 128 /* Nova's default metadata_items quota */
#define METADATA_KEY_MAX 255
#define METADATA_VALUE_MAX 255
#define KEY_NAME_MAX 255
#define ADMIN_PASS_LEN 12

/* ---- the API's own table: key_name and metadata ---- */

int api_servers_prepare_db(cl_store *st, cl_error *err)
{
    int rc = cl_db_exec(cl_store_db(st),
                        "CREATE TABLE IF NOT EXISTS api_server_extra ("
                        " uuid TEXT PRIMARY KEY,"
                        " key_name TEXT,"
                        " metadata TEXT NOT NULL DEFAULT '{}')");

    if (rc < 0)
        return cl_error_set(err, CL_E_INTERNAL,
                            "cannot prepare the controller DB for nube-api: %s",
                            cl_db_errmsg(cl_store_db(st)));
    return 0;
}

static int extra_put(cl_store *st, const char *uuid, const char *key_name,
                     const char *metadata_json)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int rc = cl_db_prepare(cl_store_db(st),
                           "INSERT OR REPLACE INTO api_server_extra (uuid, key_name, metadata)"
                           " VALUES (?, ?, ?)", &s);

    if (rc < 0)
        return rc;
    cl_db_bind_text(s, 1, uuid);
    cl_db_bind_text(s, 2, key_name);
    cl_db_bind_text(s, 3, metadata_json);
    return cl_db_step_done(s);
}

typedef struct extra {
    char key_name[KEY_NAME_MAX + 1]; /* "" = none (JSON null) */
    bool has_key;
    json_object *metadata;           /* owned; never NULL after extra_get */
} extra;

static void extra_clear(extra *e)
{
    if (e->metadata)
        json_object_put(e->metadata);
    e->metadata = NULL;
}

/* Missing rows (instances created by someone else) read as no key and no metadata. */
static void extra_get(cl_store *st, const char *uuid, extra *out)
{
    _cleanup_stmt_ sqlite3_stmt *s = NULL;

    out->key_name[0] = '\0';
    out->has_key = false;
    out->metadata = NULL;
    if (cl_db_prepare(cl_store_db(st),
                      "SELECT key_name, metadata FROM api_server_extra WHERE uuid = ?",
                      &s) == 0) {
        cl_db_bind_text(s, 1, uuid);
        if (sqlite3_step(s) == SQLITE_ROW) {
            const char *md = (const char *)sqlite3_column_text(s, 1);

            if (sqlite3_column_type(s, 0) != SQLITE_NULL) {
                cl_db_column_text(s, 0, out->key_name, sizeof(out->key_name));
                out->has_key = true;
            }
            if (md)
                out->metadata = json_tokener_parse(md);
        }
    }
    if (!out->metadata || !json_object_is_type(out->metadata, json_type_object)) {
        if (out->metadata)
            json_object_put(out->metadata);
        out->metadata = json_object_new_object();
    }
}

/* ---- rendering ---- */

/* Nova's hostId: sha224 hex of project_id + host, so tenants can tell whether two of
 * their servers share a host without learning its name. "" before scheduling. */
static void host_id(const cl_instance *inst, char out[EVP_MAX_MD_SIZE * 2 + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    _cleanup_free_ char *data = NULL;

    out[0] = '\0';
    if (!inst->host[0])
        return;
    if (asprintf(&data, "%s%s", inst->project_id, inst->host) < 0) {
        data = NULL;
        return;
    }
    if (EVP_Digest(data, strlen(data), md, &n, EVP_sha224(), NULL) != 1)
        return;
    for (unsigned int i = 0; i < n; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[2 * n] = '\0';
}

static json_object *ref_json(const api_ctx *ctx, const char *coll, const char *id)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "id", json_object_new_string(id));
    json_object_object_add(o, "links", api_links_bookmark(ctx, coll, id));
    return o;
}

static json_object *default_security_groups(void)
{
    json_object *list = json_object_new_array();
    json_object *sg = json_object_new_object();

    json_object_object_add(sg, "name", json_object_new_string("default"));
    json_object_array_add(list, sg);
    return list;
}

static json_object *server_brief(const api_ctx *ctx, const cl_instance *inst)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "id", json_object_new_string(inst->uuid));
    json_object_object_add(o, "name", json_object_new_string(inst->name));
    json_object_object_add(o, "links", api_links_self_bookmark(ctx, "servers", inst->uuid));
    return o;
}

/* The full 2.1 body (server-show.txt). ex is consumed (its metadata moves into the body). */
static json_object *server_detail(const api_ctx *ctx, const cl_instance *inst, extra *ex)
{
    json_object *o = json_object_new_object();
    char hid[EVP_MAX_MD_SIZE * 2 + 1];
    char iname[CL_UUID_LEN + 16];
    bool placed = inst->host[0] != '\0';

    host_id(inst, hid);
    snprintf(iname, sizeof(iname), "instance-%s", inst->uuid);
    json_object_object_add(o, "id", json_object_new_string(inst->uuid));
    json_object_object_add(o, "name", json_object_new_string(inst->name));
    json_object_object_add(o, "status", json_object_new_string(
                                            cl_instance_status(inst->vm_state, inst->task_state)));
    json_object_object_add(o, "tenant_id", json_object_new_string(inst->project_id));
    json_object_object_add(o, "user_id", json_object_new_string(inst->user_id));
    json_object_object_add(o, "metadata", ex->metadata);
    ex->metadata = NULL;
    json_object_object_add(o, "hostId", json_object_new_string(hid));
    json_object_object_add(o, "image", ref_json(ctx, "images", inst->image_ref));
    json_object_object_add(o, "flavor", ref_json(ctx, "flavors", inst->flavor.id));
    json_object_object_add(o, "created", api_time_json(inst->created_ms, true));
    json_object_object_add(o, "updated", api_time_json(inst->updated_ms ? inst->updated_ms
                                                                         : inst->created_ms,
                                                       true));
    /* Addresses arrive with the network issue. */
    json_object_object_add(o, "addresses", json_object_new_object());
    json_object_object_add(o, "accessIPv4", json_object_new_string(""));
    json_object_object_add(o, "accessIPv6", json_object_new_string(""));
    json_object_object_add(o, "links", api_links_self_bookmark(ctx, "servers", inst->uuid));
    json_object_object_add(o, "OS-DCF:diskConfig", json_object_new_string("MANUAL"));
    json_object_object_add(o, "progress", json_object_new_int(0));
    /* Nova shows "" until the instance reached a cell/host, then the zone. */
    json_object_object_add(o, "OS-EXT-AZ:availability_zone",
                           json_object_new_string(placed ? "nova" : ""));
    json_object_object_add(o, "config_drive", json_object_new_string(""));
    json_object_object_add(o, "key_name",
                           ex->has_key ? json_object_new_string(ex->key_name) : NULL);
    json_object_object_add(o, "OS-SRV-USG:launched_at", api_time_json(inst->launched_ms, false));
    json_object_object_add(o, "OS-SRV-USG:terminated_at",
                           api_time_json(inst->deleted_ms, false));
    json_object_object_add(o, "OS-EXT-SRV-ATTR:host",
                           placed ? json_object_new_string(inst->host) : NULL);
    json_object_object_add(o, "OS-EXT-SRV-ATTR:instance_name", json_object_new_string(iname));
    json_object_object_add(o, "OS-EXT-SRV-ATTR:hypervisor_hostname",
                           placed ? json_object_new_string(inst->host) : NULL);
    json_object_object_add(o, "OS-EXT-STS:task_state",
                           inst->task_state == CL_TASK_NONE
                               ? NULL
                               : json_object_new_string(cl_task_state_name(inst->task_state)));
    json_object_object_add(o, "OS-EXT-STS:vm_state",
                           json_object_new_string(cl_vm_state_name(inst->vm_state)));
    json_object_object_add(o, "OS-EXT-STS:power_state",
                           json_object_new_int(cl_power_state_code(inst->power_state)));
    json_object_object_add(o, "os-extended-volumes:volumes_attached", json_object_new_array());
    json_object_object_add(o, "security_groups", default_security_groups());
    if (inst->vm_state == CL_VM_ERROR && inst->fault[0]) {
        json_object *f = json_object_new_object();

        json_object_object_add(f, "code", json_object_new_int(inst->fault_code ? inst->fault_code
                                                                                : 500));
        json_object_object_add(f, "created",
                               api_time_json(inst->fault_at_ms ? inst->fault_at_ms
                                                               : inst->updated_ms,
                                             true));
        json_object_object_add(f, "message", json_object_new_string(inst->fault));
        json_object_object_add(o, "fault", f);
    }
    return o;
}

/* ---- create: validation ---- */

/* Keys Nova's 2.1 create schema allows inside "server". Anything else is a 400, as
 * additionalProperties false makes it; most are accepted and have no effect yet. */
static const char *const server_keys[] = {
    "name", "imageRef", "flavorRef", "networks", "metadata", "key_name", "min_count",
    "max_count", "availability_zone", "OS-DCF:diskConfig", "adminPass", "security_groups",
    "user_data", "config_drive", "accessIPv4", "accessIPv6", "return_reservation_id",
    "block_device_mapping", "block_device_mapping_v2", "personality", "description",
};

static const char *const top_keys[] = {"server", "os:scheduler_hints",
                                       "OS-SCH-HNT:scheduler_hints"};

static bool key_allowed(const char *k, const char *const *keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(k, keys[i]) == 0)
            return true;
    return false;
}

static int bad(cl_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A 400 badRequest with a printf-style message. */
static int bad(cl_error *err, const char *fmt, ...)
{
    char msg[CL_ERROR_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return cl_error_set(err, CL_E_BAD_REQUEST, "%s", msg);
}

static int check_keys(json_object *obj, const char *const *keys, size_t n,
                      const char *where, cl_error *err)
{
    json_object_object_foreach(obj, k, v) {
        (void)v;
        if (!key_allowed(k, keys, n)) {
            char kb[80];

            snprintf(kb, sizeof(kb), "%.64s", k);
            return cl_error_set(err, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute %s. Additional properties "
                                "are not allowed ('%s' was unexpected)", where, kb);
        }
    }
    return 0;
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;

    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' ||
                                      c == '\v' || c == '\f'; }

/* Nova's "name" format: 1..255 printable characters, no leading/trailing whitespace. */
static int check_name(const char *name, cl_error *err)
{
    size_t len = strlen(name);

    if (len == 0 || utf8_chars(name) > 255 || len >= CL_NAME_MAX)
        return bad(err, "Invalid input for field/attribute name. The name must be 1 to 255 "
                        "characters long.");
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return bad(err, "Invalid input for field/attribute name. An invalid 'name' value "
                            "was provided. The name must be: printable characters.");
    if (is_space(name[0]) || is_space(name[len - 1]))
        return bad(err, "Invalid input for field/attribute name. An invalid 'name' value was "
                        "provided. The name must be: printable characters. Can not start or "
                        "end with whitespace.");
    return 0;
}

/* flavorRef / imageRef: an id, or a URL whose last path segment is the id. */
static int ref_id(json_object *v, const char *field, char *out, size_t outlen, cl_error *err)
{
    const char *s, *slash;
    char num[32];

    if (json_object_is_type(v, json_type_int)) {
        snprintf(num, sizeof(num), "%lld", (long long)json_object_get_int64(v));
        s = num;
    } else if (json_object_is_type(v, json_type_string)) {
        s = json_object_get_string(v);
    } else {
        return bad(err, "Invalid input for field/attribute %s: expected a string.", field);
    }
    slash = strrchr(s, '/');
    if (slash)
        s = slash + 1;
    if (!*s || strlen(s) >= outlen)
        return bad(err, "Invalid input for field/attribute %s: expected an id of 1 to 64 "
                        "characters.", field);
    cl_strlcpy(out, s, outlen);
    return 0;
}

static int check_networks(json_object *v, cl_error *err)
{
    if (json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string(v);

        if (strcmp(s, "auto") == 0 || strcmp(s, "none") == 0)
            return 0;
        return bad(err, "Invalid input for field/attribute networks. '%.32s' is not one of "
                        "['none', 'auto'].", s);
    }
    if (!json_object_is_type(v, json_type_array))
        return bad(err, "Invalid input for field/attribute networks: expected a list or "
                        "'auto' or 'none'.");
    for (size_t i = 0; i < json_object_array_length(v); i++) {
        static const char *const net_keys[] = {"uuid", "port", "fixed_ip", "tag"};
        json_object *n = json_object_array_get_idx(v, i);
        int rc;

        if (!json_object_is_type(n, json_type_object))
            return bad(err, "Invalid input for field/attribute networks: each entry must be "
                            "an object.");
        rc = check_keys(n, net_keys, CL_ARRAY_SIZE(net_keys), "networks", err);
        if (rc < 0)
            return rc;
        json_object_object_foreach(n, k, val) {
            if (!json_object_is_type(val, json_type_string))
                return bad(err, "Invalid input for field/attribute networks.%s: expected a "
                                "string.", k);
        }
    }
    return 0;
}

/* metadata: object of string -> string; at most 128 items (Nova's quota answers 403). */
static int check_metadata(json_object *v, cl_error *err)
{
    if (!json_object_is_type(v, json_type_object))
        return bad(err, "Invalid input for field/attribute metadata: expected an object.");
    if (json_object_object_length(v) > METADATA_MAX_ITEMS)
        return cl_error_set(err, CL_E_FORBIDDEN,
                            "Quota exceeded for metadata_items: at most %d items are allowed.",
                            METADATA_MAX_ITEMS);
    json_object_object_foreach(v, k, val) {
        size_t klen = strlen(k);

        if (klen == 0 || klen > METADATA_KEY_MAX)
            return bad(err, "Invalid input for field/attribute metadata: keys must be 1 to "
                            "255 characters.");
        if (!json_object_is_type(val, json_type_string))
            return cl_error_set(err, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute metadata.%.64s: expected "
                                "a string.", k);
        if (strlen(json_object_get_string(val)) > METADATA_VALUE_MAX)
            return cl_error_set(err, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute metadata.%.64s: values "
                                "must be at most 255 characters.", k);
    }
    return 0;
}

/* Optional fields that only need their type checked (they have no effect yet). */
static int check_ignored(json_object *root, int mv, cl_error *err)
{
    json_object *srv = json_object_object_get(root, "server");
    static const char *const strings[] = {"availability_zone", "adminPass", "user_data",
                                          "accessIPv4", "accessIPv6"};
    json_object *v;
    const char *s;
    int rc;

    for (size_t i = 0; i < CL_ARRAY_SIZE(strings); i++) {
        char path[64];

        snprintf(path, sizeof(path), "server.%s", strings[i]);
        rc = cl_json_get_str(root, path, false, &s, err);
        if (rc < 0)
            return rc;
    }
    if (json_object_object_get_ex(srv, "OS-DCF:diskConfig",
                                  &v)) {
        s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
        if (strcmp(s, "AUTO") != 0 && strcmp(s, "MANUAL") != 0)
            return bad(err, "Invalid input for field/attribute OS-DCF:diskConfig. Value must "
                            "be one of ['AUTO', 'MANUAL'].");
    }
    if (json_object_object_get_ex(srv, "security_groups",
                                  &v)) {
        if (!json_object_is_type(v, json_type_array))
            return bad(err, "Invalid input for field/attribute security_groups: expected a "
                            "list.");
        for (size_t i = 0; i < json_object_array_length(v); i++) {
            json_object *g = json_object_array_get_idx(v, i);
            json_object *name;

            if (!json_object_is_type(g, json_type_object) ||
                !json_object_object_get_ex(g, "name", &name) ||
                !json_object_is_type(name, json_type_string))
                return bad(err, "Invalid input for field/attribute security_groups: each "
                                "entry needs a string 'name'.");
        }
    }
    if (json_object_object_get_ex(srv, "description", &v)) {
        if (mv < 19)
            return bad(err, "Invalid input for field/attribute server. Additional properties "
                            "are not allowed ('%s' was unexpected)", "description");
        if (!json_object_is_type(v, json_type_string) && !json_object_is_type(v, json_type_null))
            return bad(err, "Invalid input for field/attribute description: expected a "
                            "string.");
    }
    if (json_object_object_get_ex(srv, "block_device_mapping",
                                  &v) ||
        json_object_object_get_ex(srv,
                                  "block_device_mapping_v2", &v))
        return bad(err, "Block device mappings (boot from volume) are not supported by nube "
                        "yet.");
    if (json_object_object_get_ex(srv, "personality", &v))
        return bad(err, "Personality files are not supported; use user_data or config "
                        "drive.");
    return 0;
}

typedef struct create_req {
    const char *name;
    char flavor_id[CL_ID_MAX];
    char image_ref[CL_ID_MAX];
    const char *key_name;       /* NULL = none */
    json_object *metadata;      /* borrowed, NULL = {} */
    const char *admin_pass;     /* NULL = generate */
} create_req;

static int parse_create(json_object *root, int mv, create_req *out, cl_error *err)
{
    json_object *srv, *v;
    int64_t min_count = 1, max_count = 1;
    int rc;

    rc = check_keys(root, top_keys, CL_ARRAY_SIZE(top_keys), "the request body", err);
    if (rc < 0)
        return rc;
    rc = cl_json_get_object(root, "server", true, &srv, err);
    if (rc < 0)
        return rc;
    rc = check_keys(srv, server_keys, CL_ARRAY_SIZE(server_keys), "server", err);
    if (rc < 0)
        return rc;

    rc = cl_json_get_str(root, "server.name", true, &out->name, err);
    if (rc < 0)
        return rc;
    rc = check_name(out->name, err);
    if (rc < 0)
        return rc;

    if (!json_object_object_get_ex(srv, "flavorRef", &v))
        return bad(err, "Missing required field 'server.flavorRef'");
    rc = ref_id(v, "flavorRef", out->flavor_id, sizeof(out->flavor_id), err);
    if (rc < 0)
        return rc;

    /* Nova allows a missing image only with a boot volume, which nube lacks. */
    if (!json_object_object_get_ex(srv, "imageRef", &v) ||
        (json_object_is_type(v, json_type_string) && !*json_object_get_string(v)))
        return bad(err, "Missing imageRef attribute");
    if (!json_object_is_type(v, json_type_string))
        return bad(err, "Invalid input for field/attribute imageRef: expected a string.");
    rc = ref_id(v, "imageRef", out->image_ref, sizeof(out->image_ref), err);
    if (rc < 0)
        return rc;

    if (json_object_object_get_ex(srv, "networks", &v)) {
        rc = check_networks(v, err);
        if (rc < 0)
            return rc;
    }
    out->metadata = NULL;
    if (json_object_object_get_ex(srv, "metadata", &v)) {
        rc = check_metadata(v, err);
        if (rc < 0)
            return rc;
        out->metadata = v;
    }
    out->key_name = NULL;
    rc = cl_json_get_str(root, "server.key_name", false, &out->key_name, err);
    if (rc < 0)
        return rc;
    if (out->key_name && (!*out->key_name || strlen(out->key_name) > KEY_NAME_MAX))
        return bad(err, "Invalid input for field/attribute key_name: expected 1 to 255 "
                        "characters.");

    rc = cl_json_get_int_range(root, "server.min_count", false, 1, INT32_MAX, &min_count, err);
    if (rc < 0)
        return rc;
    rc = cl_json_get_int_range(root, "server.max_count", false, 1, INT32_MAX, &max_count, err);
    if (rc < 0)
        return rc;
    if (min_count > max_count)
        return bad(err, "min_count must be <= max_count");
    if (min_count != 1 || max_count != 1)
        /* Multi-create needs all-or-nothing claims across hosts; until then one server
         * per request keeps quota and failure handling simple and exact. */
        return bad(err, "nube creates one server per request for now: min_count and "
                        "max_count must be 1.");

    out->admin_pass = NULL;
    rc = check_ignored(root, mv, err);
    if (rc < 0)
        return rc;
    rc = cl_json_get_str(root, "server.adminPass", false, &out->admin_pass, err);
    if (rc < 0)
        return rc;
    return 0;
}

/* 12 characters from Nova's unambiguous alphabet, without modulo bias. */
static int admin_pass(char out[ADMIN_PASS_LEN + 1])
{
    static const char alphabet[] = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    const unsigned n = sizeof(alphabet) - 1;
    const unsigned cut = 256 - 256 % n;
    size_t i = 0;

    while (i < ADMIN_PASS_LEN) {
        unsigned char buf[32];

        if (RAND_bytes(buf, sizeof(buf)) != 1)
            return -EIO;
        for (size_t j = 0; j < sizeof(buf) && i < ADMIN_PASS_LEN; j++)
            if (buf[j] < cut)
                out[i++] = alphabet[buf[j] % n];
    }
    out[ADMIN_PASS_LEN] = '\0';
    return 0;
}

/* POST /v2.1/servers */
void api_servers_create(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    _cleanup_json_ json_object *root = NULL;
    _cleanup_free_ char *loc = NULL;
    create_req cr = {0};
    cl_error err = {0};
    cl_instance inst;
    cl_flavor flavor;
    cl_store *st;
    json_object *body, *srv;
    char pass[ADMIN_PASS_LEN + 1];
    int mv = API_MV_MIN;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, &mv))
        return;
    if (cl_http_req_json(req, &root, &err) < 0 || parse_create(root, mv, &cr, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    st = api_store(ctx, resp);
    if (!st)
        return;
    rc = cl_store_flavor_get(st, cr.flavor_id, &flavor);
    /* By id only, and a disabled flavor reads as missing, as in Nova. */
    if (rc == -ENOENT || (rc == 0 && (strcmp(flavor.id, cr.flavor_id) != 0 || flavor.disabled))) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Flavor %s could not be found.",
                            cr.flavor_id);
        return;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read flavors (%s).", strerror(-rc));
        return;
    }
    if (cr.admin_pass) {
        if (strlen(cr.admin_pass) > ADMIN_PASS_LEN * 20) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute adminPass: too long.");
            return;
        }
    } else if (admin_pass(pass) < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "The random generator failed.");
        return;
    }

    memset(&inst, 0, sizeof(inst));
    cl_uuid_new(inst.uuid);
    cl_strlcpy(inst.name, cr.name, sizeof(inst.name));
    cl_strlcpy(inst.project_id, ctx->cfg->admin_project_id, sizeof(inst.project_id));
    cl_strlcpy(inst.user_id, ctx->cfg->admin_user_id, sizeof(inst.user_id));
    cl_strlcpy(inst.image_ref, cr.image_ref, sizeof(inst.image_ref));
    inst.flavor = flavor;
    inst.vm_state = CL_VM_BUILDING;
    inst.task_state = CL_TASK_SCHEDULING;
    inst.power_state = CL_POWER_NOSTATE;
    cl_strlcpy(inst.request_id, req->request_id ? req->request_id : "",
               sizeof(inst.request_id));

    /* The side row first: an orphan (if the instance insert fails) is harmless. */
    rc = extra_put(st, inst.uuid, cr.key_name,
                   cr.metadata ? json_object_to_json_string_ext(cr.metadata,
                                                                JSON_C_TO_STRING_PLAIN)
                               : "{}");
    if (rc == 0)
        rc = cl_store_instance_create(st, &inst);
    if (rc < 0) {
        cl_http_resp_errorf(resp, rc == -EBUSY ? CL_E_UNAVAILABLE : CL_E_INTERNAL,
                            "Cannot record the server (%s); try again.", strerror(-rc));
        return;
    }
    rc = cl_bus_send(ctx->bus, NULL, CL_MSG_INSTANCE_SCHEDULE, req->request_id,
                     cl_msg_uuid_encode(inst.uuid), true, NULL);
    if (rc < 0) {
        /* Nothing will ever schedule it: fail it now rather than leave it in BUILD. */
        cl_store_instance_fail(st, inst.uuid, "The scheduler could not be reached.", 503);
        cl_http_resp_errorf(resp, CL_E_UNAVAILABLE,
                            "The scheduler queue is full; try again later.");
        return;
    }
    atomic_fetch_add(&ctx->servers_created, 1);
    cl_info(LOG_MOD, "server %s (%s) accepted, flavor %s", inst.uuid, inst.name, flavor.id);

    body = json_object_new_object();
    srv = json_object_new_object();
    json_object_object_add(srv, "id", json_object_new_string(inst.uuid));
    json_object_object_add(srv, "links", api_links_self_bookmark(ctx, "servers", inst.uuid));
    json_object_object_add(srv, "OS-DCF:diskConfig", json_object_new_string("MANUAL"));
    json_object_object_add(srv, "security_groups", default_security_groups());
    json_object_object_add(srv, "adminPass",
                           json_object_new_string(cr.admin_pass ? cr.admin_pass : pass));
    json_object_object_add(body, "server", srv);
    if (asprintf(&loc, "%s/v2.1/servers/%s", ctx->compute_url, inst.uuid) >= 0)
        cl_http_resp_header(resp, "Location", loc);
    else
        loc = NULL;
    cl_http_resp_json(resp, 202, body);
}

/* ---- list ---- */

static bool parse_bool_param(const char *v, bool *out)
{
    static const char *const yes[] = {"", "1", "true", "yes", "on", "t", "y"};
    static const char *const no[] = {"0", "false", "no", "off", "f", "n"};

    for (size_t i = 0; i < CL_ARRAY_SIZE(yes); i++)
        if (strcasecmp(v, yes[i]) == 0) {
            *out = true;
            return true;
        }
    for (size_t i = 0; i < CL_ARRAY_SIZE(no); i++)
        if (strcasecmp(v, no[i]) == 0) {
            *out = false;
            return true;
        }
    return false;
}

/* Percent-encode a query value (RFC 3986 unreserved characters stay). */
static void url_encode(const char *s, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    for (; *s && o + 4 < outlen; s++) {
        unsigned char c = (unsigned char)*s;

        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~') {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
}

/* Append "&name=value" for each filter the client gave, so "next" keeps them. */
static void keep_filters(const cl_http_req *req, char *out, size_t outlen)
{
    static const char *const names[] = {"all_tenants", "name", "status", "host", "project_id",
                                        "tenant_id"};

    out[0] = '\0';
    for (size_t i = 0; i < CL_ARRAY_SIZE(names); i++) {
        const char *v = cl_http_req_query(req, names[i]);
        char enc[3 * CL_NAME_MAX + 1];
        size_t used = strlen(out);

        if (!v)
            continue;
        url_encode(v, enc, sizeof(enc));
        snprintf(out + used, outlen - used, "&%s=%s", names[i], enc);
    }
}

typedef struct list_filter {
    bool all_tenants;
    const char *project;  /* with all_tenants: only this project */
    const char *name;     /* substring */
    const char *status;   /* API status, case-insensitive */
    const char *host;
} list_filter;

static bool parse_filters(const cl_http_req *req, cl_http_resp *resp, list_filter *f)
{
    const char *at = cl_http_req_query(req, "all_tenants");

    memset(f, 0, sizeof(*f));
    if (at && !parse_bool_param(at, &f->all_tenants)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid value '%.32s' for all_tenants", at);
        return false;
    }
    f->project = cl_http_req_query(req, "project_id");
    if (!f->project)
        f->project = cl_http_req_query(req, "tenant_id");
    f->name = cl_http_req_query(req, "name");
    f->status = cl_http_req_query(req, "status");
    f->host = cl_http_req_query(req, "host");
    return true;
}

static bool matches(const list_filter *f, const cl_instance *inst)
{
    /* Nova's name filter is a regular expression; a substring covers the common use. */
    if (f->name && !strstr(inst->name, f->name))
        return false;
    if (f->status &&
        strcasecmp(cl_instance_status(inst->vm_state, inst->task_state), f->status) != 0)
        return false;
    return true;
}

static void list_common(const cl_http_req *req, cl_http_resp *resp, void *ud, bool detail)
{
    api_ctx *ctx = ud;
    _cleanup_free_ cl_instance *rows = NULL;
    size_t n = 0, count = 0, last = 0;
    cl_instance_filter sf = {0};
    list_filter lf;
    int64_t limit;
    const char *marker;
    json_object *body, *list;
    cl_store *st;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, NULL))
        return;
    if (!api_page_params(req, resp, &limit, &marker) || !parse_filters(req, resp, &lf))
        return;
    st = api_store(ctx, resp);
    if (!st)
        return;
    /* The one identity is the admin: its own project unless all_tenants. */
    sf.project_id = lf.all_tenants ? lf.project : ctx->cfg->admin_project_id;
    sf.host = lf.host;
    sf.include_deleted = lf.status && strcasecmp(lf.status, "DELETED") == 0;
    sf.marker = marker;
    /* Name and status are filtered here, so the store may only cut the page when there
     * are none; one row more than the page tells whether a next page exists. */
    sf.limit = (!lf.name && !lf.status && limit > 0) ? limit + 1 : 0;
    rc = cl_store_instance_list(st, &sf, &rows, &n);
    if (rc == -ENOENT && marker) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "marker [%.64s] not found", marker);
        return;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot list servers (%s).", strerror(-rc));
        return;
    }
    body = json_object_new_object();
    list = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        if (!matches(&lf, &rows[i]))
            continue;
        if (limit > 0 && (int64_t)count == limit) {
            json_object *links = json_object_new_array();
            _cleanup_free_ char *href = NULL;
            char keep[1024];

            keep_filters(req, keep, sizeof(keep));
            if (asprintf(&href, "%s/v2.1/servers%s?limit=%lld&marker=%s%s", ctx->compute_url,
                         detail ? "/detail" : "", (long long)limit, rows[last].uuid,
                         keep) < 0)
                href = NULL;
            json_object_array_add(links, api_link("next", href ? href : ""));
            json_object_object_add(body, "servers_links", links);
            break;
        }
        if (detail) {
            extra ex;

            extra_get(st, rows[i].uuid, &ex);
            json_object_array_add(list, server_detail(ctx, &rows[i], &ex));
            extra_clear(&ex);
        } else {
            json_object_array_add(list, server_brief(ctx, &rows[i]));
        }
        last = i; /* the next page starts after the last row shown, not the last read */
        count++;
    }
    json_object_object_add(body, "servers", list);
    cl_http_resp_json(resp, 200, body);
}

/* GET /v2.1/servers */
void api_servers_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    list_common(req, resp, ud, false);
}

/* GET /v2.1/servers/detail */
void api_servers_detail(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    list_common(req, resp, ud, true);
}

/* ---- show / delete ---- */

/* The live (not deleted) instance of the {id} capture, or a 404 answered. */
static bool load(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, cl_store **out_st,
                 cl_instance *out)
{
    const char *id = cl_http_req_param(req, "id");
    cl_store *st;
    int rc;

    st = api_store(ctx, resp);
    if (!st)
        return false;
    rc = (id && strlen(id) < CL_UUID_LEN) ? cl_store_instance_get(st, id, out) : -ENOENT;
    if (rc == -ENOENT || (rc == 0 && out->vm_state == CL_VM_DELETED)) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Instance %.64s could not be found.",
                            id ? id : "");
        return false;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read the server (%s).", strerror(-rc));
        return false;
    }
    *out_st = st;
    return true;
}

/* GET /v2.1/servers/{id} */
void api_servers_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *id = cl_http_req_param(req, "id");
    cl_instance inst;
    cl_store *st;
    json_object *body;
    extra ex;

    if (id && strcmp(id, "detail") == 0) {
        api_servers_detail(req, resp, ud);
        return;
    }
    if (!api_compute_begin(ctx, req, resp, true, NULL) || !load(ctx, req, resp, &st, &inst))
        return;
    extra_get(st, inst.uuid, &ex);
    body = json_object_new_object();
    json_object_object_add(body, "server", server_detail(ctx, &inst, &ex));
    extra_clear(&ex);
    cl_http_resp_json(resp, 200, body);
}

/* DELETE /v2.1/servers/{id} */
void api_servers_delete(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    cl_instance inst;
    cl_store *st;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, NULL) || !load(ctx, req, resp, &st, &inst))
        return;
    rc = cl_store_instance_begin_task(st, inst.uuid, CL_TASK_DELETING);
    if (rc == -EBUSY) {
        /* Already being deleted: the first request's message is still on its way. */
        cl_http_resp_json(resp, 204, NULL);
        return;
    }
    if (rc == -ENOENT) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Instance %s could not be found.", inst.uuid);
        return;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot delete the server (%s).",
                            strerror(-rc));
        return;
    }
    rc = cl_bus_send(ctx->bus, NULL, CL_MSG_INSTANCE_DELETE, req->request_id,
                     cl_msg_uuid_encode(inst.uuid), true, NULL);
    if (rc < 0) {
        /* task_state stays "deleting": a retried DELETE answers 204 without a message, so
         * put the previous task back to let the retry send it. */
        cl_store_instance_set_state(st, inst.uuid, -1, (int)inst.task_state, -1, NULL, 0);
        cl_http_resp_errorf(resp, CL_E_UNAVAILABLE,
                            "The scheduler queue is full; try again later.");
        return;
    }
    atomic_fetch_add(&ctx->servers_deleted, 1);
    cl_info(LOG_MOD, "server %s: delete requested", inst.uuid);
    cl_http_resp_json(resp, 204, NULL);
}
