/*
 * servers.c - POST/GET /v2.1/servers, GET /v2.1/servers/detail,
 * GET/PUT/DELETE /v2.1/servers/{id}.
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
 * Server bodies follow the negotiated microversion (mv_fields: 2.3 extended attributes,
 * 2.9 locked, 2.16 host_status, 2.19 description, 2.26 tags, 2.47 embedded flavor, 2.63,
 * 2.71 server_groups, 2.73 locked_reason): openstacksdk looks servers up at 2.73.
 *
 * Policy (libcloud/auth.h): a member creates and changes its own project's servers, a
 * reader only reads them, an admin does everything; another project's server answers
 * 404 exactly like a missing one, and all_tenants / host filters are the admin's. Tenants
 * see a plain fault message on ERROR servers; the details (which hosts had room) are for
 * admins.
 *
 * Create checks instances/cores/ram against the project's quota inside the transaction
 * that inserts the rows (cl_store_instances_create_quota), so parallel creates cannot
 * exceed it. key_name, user_data and metadata live in the compute schema's side tables
 * (store_compute.h).
 */
#include <errno.h>
#include <stdarg.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "actions.h"
#include "api_int.h"
#include "cleanup.h"
#include "db.h"
#include "json.h"
#include "log.h"
#include "messages.h"
#include "store_placement.h"
#include "util.h"

#define LOG_MOD "api.servers"

#define METADATA_MAX_ITEMS 128 /* Nova's default metadata_items quota */
#define METADATA_KEY_MAX 255
#define METADATA_VALUE_MAX 255
#define KEY_NAME_MAX 255
#define ADMIN_PASS_LEN 12
#define USER_DATA_MAX 65535 /* Nova's MAX_USERDATA_SIZE, of the base64 text */
#define MULTI_CREATE_MAX 100 /* more than any quota default allows anyway */

/* ---- extras: key name and metadata ---- */

/* Databases written before the compute schema kept key_name and metadata in a table of
 * nube-api's own (api_server_extra): move them into the schema's tables once. */
int api_servers_prepare_db(cl_store *st, cl_error *err)
{
    cl_db *db = cl_store_db(st);
    _cleanup_stmt_ sqlite3_stmt *s = NULL;
    int rc;

    rc = cl_db_prepare(db, "SELECT 1 FROM sqlite_master WHERE type = 'table'"
                           " AND name = 'api_server_extra'", &s);
    if (rc < 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot read the database schema: %s",
                            cl_db_errmsg(db));
    if (sqlite3_step(s) != SQLITE_ROW)
        return 0;
    /* A statement still open on sqlite_master would make the DROP TABLE below fail
     * ("database table is locked"). */
    sqlite3_finalize(TAKE_PTR(s));
    rc = cl_db_begin_immediate(db);
    if (rc == 0)
        rc = cl_db_exec(db, "INSERT OR IGNORE INTO instance_extra (instance_uuid, key_name)"
                            " SELECT uuid, key_name FROM api_server_extra"
                            " WHERE uuid IN (SELECT uuid FROM instances)");
    if (rc == 0)
        rc = cl_db_exec(db, "INSERT OR IGNORE INTO instance_metadata (instance_uuid, meta_key,"
                            " meta_value) SELECT e.uuid, j.key, j.value FROM api_server_extra e,"
                            " json_each(e.metadata) j WHERE e.uuid IN (SELECT uuid FROM instances)"
                            " AND j.type = 'text'");
    if (rc == 0)
        rc = cl_db_exec(db, "DROP TABLE api_server_extra");
    if (rc == 0)
        rc = cl_db_commit(db);
    if (rc < 0) {
        /* The message first: the rollback would replace it. */
        rc = cl_error_set(err, CL_E_INTERNAL,
                          "cannot move nube-api's server extras into the compute schema: %s",
                          cl_db_errmsg(db));
        cl_db_rollback(db);
        return rc;
    }
    return 0;
}

typedef struct extra {
    char key_name[KEY_NAME_MAX + 1]; /* "" = none (JSON null) */
    bool has_key;
    json_object *metadata;           /* owned; never NULL after extra_get */
    json_object *addresses;          /* owned; reported by the host (actions.c) */
} extra;

static void extra_clear(extra *e)
{
    if (e->metadata)
        json_object_put(e->metadata);
    e->metadata = NULL;
    if (e->addresses)
        json_object_put(e->addresses);
    e->addresses = NULL;
}

/* Instances without extras read as no key and no metadata. */
static void extra_get(cl_store *st, const char *uuid, extra *out)
{
    _cleanup_free_ cl_kv *md = NULL;
    size_t n = 0;

    out->metadata = json_object_new_object();
    out->addresses = api_actions_addresses_json(st, uuid);
    if (cl_store_instance_extra_get(st, uuid, out->key_name, sizeof(out->key_name),
                                    &out->has_key, NULL) < 0) {
        out->key_name[0] = '\0';
        out->has_key = false;
    }
    if (cl_store_metadata_list(st, uuid, &md, &n) == 0)
        for (size_t i = 0; i < n; i++)
            json_object_object_add(out->metadata, md[i].key,
                                   json_object_new_string(md[i].value));
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

/* The fault as a tenant may see it: Nova keeps the details of server-side (500) faults
 * for admins; nube's scheduler explains which hosts lacked what, which is such a detail. */
static void plain_fault(const char *fault, int code, char *out, size_t outlen)
{
    static const char novalid[] = "No valid host was found.";
    const char *dot;

    if (code > 0 && code < 500) {
        cl_strlcpy(out, fault, outlen);
        return;
    }
    if (strncmp(fault, novalid, sizeof(novalid) - 1) == 0) {
        cl_strlcpy(out, "No valid host was found. There are not enough hosts available.",
                   outlen);
        return;
    }
    /* The first sentence only: what follows names hosts and internals. */
    dot = strpbrk(fault, ".:;");
    snprintf(out, outlen, "%.*s.", dot ? (int)(dot - fault) : 200, fault);
}

/* What later microversions add to a server (Nova's api-ref, checked against
 * reference/openstack-api/server-show-mv2.79.txt). The stock client sends 2.1 for the
 * server commands it runs through novaclient, but the ones it runs through openstacksdk
 * (pause, unpause, suspend, resume, console log show, ...) look the server up at the
 * highest version both sides know, up to 2.73; Terraform and the SDKs do the same.
 * show: fields Nova returns from GET /servers/{id} only (2.71 server_groups). */
static void mv_fields(json_object *o, cl_store *st, const cl_instance *inst, int mv,
                      bool admin, bool show)
{
    if (mv >= 3 && admin) {
        _cleanup_free_ char *ud = NULL;
        char key[256];
        bool has_key = false;

        if (cl_store_instance_extra_get(st, inst->uuid, key, sizeof(key), &has_key, &ud) < 0)
            ud = NULL;
        json_object_object_add(o, "OS-EXT-SRV-ATTR:reservation_id",
                               json_object_new_string(""));
        json_object_object_add(o, "OS-EXT-SRV-ATTR:launch_index", json_object_new_int(0));
        json_object_object_add(o, "OS-EXT-SRV-ATTR:hostname", json_object_new_string(inst->name));
        json_object_object_add(o, "OS-EXT-SRV-ATTR:kernel_id", json_object_new_string(""));
        json_object_object_add(o, "OS-EXT-SRV-ATTR:ramdisk_id", json_object_new_string(""));
        json_object_object_add(o, "OS-EXT-SRV-ATTR:root_device_name",
                               json_object_new_string("/dev/vda"));
        json_object_object_add(o, "OS-EXT-SRV-ATTR:user_data",
                               ud ? json_object_new_string(ud) : NULL);
    }
    if (mv >= 9)
        json_object_object_add(o, "locked", json_object_new_boolean(false));
    if (mv >= 16 && admin) {
        /* Nova: UP, DOWN, MAINTENANCE (service disabled), UNKNOWN; "" before a host. */
        cl_host h;
        const char *hs = "";

        if (inst->host[0])
            hs = cl_store_host_get(st, inst->host, &h) < 0 ? "UNKNOWN"
                 : !h.enabled                                ? "MAINTENANCE"
                 : h.up                                      ? "UP"
                                                             : "DOWN";
        json_object_object_add(o, "host_status", json_object_new_string(hs));
    }
    if (mv >= 19) /* Nova's default description is the name (the recording shows it) */
        json_object_object_add(o, "description", json_object_new_string(inst->name));
    if (mv >= 26)
        json_object_object_add(o, "tags", json_object_new_array());
    if (mv >= 47) {
        /* The flavor as the server holds it, instead of a link to the flavor. */
        _cleanup_free_ cl_kv *specs = NULL;
        json_object *f = json_object_new_object();
        json_object *es = json_object_new_object();
        size_t n = 0;

        json_object_object_add(f, "vcpus", json_object_new_int64(inst->flavor.vcpus));
        json_object_object_add(f, "ram", json_object_new_int64(inst->flavor.ram_mb));
        json_object_object_add(f, "disk", json_object_new_int64(inst->flavor.disk_gb));
        json_object_object_add(f, "ephemeral", json_object_new_int64(inst->flavor.ephemeral_gb));
        json_object_object_add(f, "swap", json_object_new_int64(inst->flavor.swap_mb));
        json_object_object_add(f, "original_name", json_object_new_string(inst->flavor.name));
        if (cl_store_flavor_specs(st, inst->flavor.id, &specs, &n) == 0)
            for (size_t i = 0; i < n; i++)
                json_object_object_add(es, specs[i].key,
                                       json_object_new_string(specs[i].value));
        json_object_object_add(f, "extra_specs", es);
        json_object_object_add(o, "flavor", f);
    }
    if (mv >= 63)
        json_object_object_add(o, "trusted_image_certificates", NULL);
    if (mv >= 71 && show) {
        json_object *groups = json_object_new_array();
        cl_server_group g;

        if (cl_store_group_of(st, inst->uuid, &g) == 0)
            json_object_array_add(groups, json_object_new_string(g.uuid));
        json_object_object_add(o, "server_groups", groups);
    }
    if (mv >= 73)
        json_object_object_add(o, "locked_reason", NULL);
}

/* The full 2.1 body (server-show.txt) plus what microversion mv adds (mv_fields). ex is
 * consumed (its metadata moves into the body). admin adds what Nova shows admins only
 * (host attributes, fault details). */
static json_object *server_detail(const api_ctx *ctx, cl_store *st, const cl_instance *inst,
                                  extra *ex, bool admin, int mv, bool show)
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
    /* The fixed IPs the guest's host reported (api-server/actions.c). */
    json_object_object_add(o, "addresses",
                           ex->addresses ? ex->addresses : json_object_new_object());
    ex->addresses = NULL;
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
    if (admin) {
        json_object_object_add(o, "OS-EXT-SRV-ATTR:host",
                               placed ? json_object_new_string(inst->host) : NULL);
        json_object_object_add(o, "OS-EXT-SRV-ATTR:instance_name",
                               json_object_new_string(iname));
        json_object_object_add(o, "OS-EXT-SRV-ATTR:hypervisor_hostname",
                               placed ? json_object_new_string(inst->host) : NULL);
    }
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
        if (admin) {
            json_object_object_add(f, "message", json_object_new_string(inst->fault));
            json_object_object_add(f, "details", json_object_new_string(inst->fault));
        } else {
            char msg[CL_FAULT_MAX];

            plain_fault(inst->fault, inst->fault_code, msg, sizeof(msg));
            json_object_object_add(f, "message", json_object_new_string(msg));
        }
        json_object_object_add(o, "fault", f);
    }
    mv_fields(o, st, inst, mv, admin, show);
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
    static const char *const strings[] = {"availability_zone", "adminPass", "accessIPv4",
                                          "accessIPv6"};
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
    const char *user_data;      /* base64, NULL = none */
    int64_t min_count, max_count;
    bool return_reservation_id;
} create_req;

/* user_data: standard base64 (padding required, no whitespace), at most 65535 bytes
 * encoded, as Nova's schema and MAX_USERDATA_SIZE. */
static int check_user_data(const char *s, cl_error *err)
{
    size_t len = strlen(s), pad = 0;

    if (len > USER_DATA_MAX)
        return bad(err, "User data too large. User data must be no larger than %d bytes once "
                        "base64 encoded. Your data is %zu bytes", USER_DATA_MAX, len);
    if (len % 4 != 0)
        return bad(err, "Invalid input for field/attribute user_data. Value is not a valid "
                        "base64 string.");
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '+' || c == '/';

        if (c == '=' && i >= len - 2) {
            pad++;
            continue;
        }
        if (!ok || pad)
            return bad(err, "Invalid input for field/attribute user_data. Value is not a "
                            "valid base64 string.");
    }
    return 0;
}

static int parse_create(json_object *root, int mv, create_req *out, cl_error *err)
{
    json_object *srv, *v;
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
    out->user_data = NULL;
    rc = cl_json_get_str(root, "server.user_data", false, &out->user_data, err);
    if (rc < 0)
        return rc;
    if (out->user_data) {
        rc = check_user_data(out->user_data, err);
        if (rc < 0)
            return rc;
    }

    out->min_count = out->max_count = 1;
    rc = cl_json_get_int_range(root, "server.min_count", false, 1, MULTI_CREATE_MAX,
                               &out->min_count, err);
    if (rc < 0)
        return rc;
    out->max_count = out->min_count;
    rc = cl_json_get_int_range(root, "server.max_count", false, 1, MULTI_CREATE_MAX,
                               &out->max_count, err);
    if (rc < 0)
        return rc;
    if (out->min_count > out->max_count)
        return bad(err, "min_count must be <= max_count");
    out->return_reservation_id = false;
    rc = cl_json_get_bool(root, "server.return_reservation_id", false,
                          &out->return_reservation_id, err);
    if (rc < 0)
        return rc;

    out->admin_pass = NULL;
    rc = check_ignored(root, mv, err);
    if (rc < 0)
        return rc;
    rc = cl_json_get_str(root, "server.adminPass", false, &out->admin_pass, err);
    if (rc < 0)
        return rc;
    return 0;
}

/* n characters from Nova's unambiguous alphabet, without modulo bias. */
static int random_chars(char *out, size_t n)
{
    static const char alphabet[] = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    const unsigned nal = sizeof(alphabet) - 1;
    const unsigned cut = 256 - 256 % nal;
    size_t i = 0;

    while (i < n) {
        unsigned char buf[32];

        if (RAND_bytes(buf, sizeof(buf)) != 1)
            return -EIO;
        for (size_t j = 0; j < sizeof(buf) && i < n; j++)
            if (buf[j] < cut)
                out[i++] = alphabet[buf[j] % nal];
    }
    out[n] = '\0';
    return 0;
}

/* The metadata object as key/value items (validated by check_metadata). */
static cl_kv *metadata_items(json_object *md, size_t *out_n)
{
    size_t n = md ? (size_t)json_object_object_length(md) : 0, i = 0;
    cl_kv *items;

    *out_n = 0;
    if (n == 0)
        return NULL;
    items = calloc(n, sizeof(*items));
    if (!items)
        return NULL;
    json_object_object_foreach(md, k, v) {
        cl_strlcpy(items[i].key, k, sizeof(items[i].key));
        cl_strlcpy(items[i].value, json_object_get_string(v), sizeof(items[i].value));
        i++;
    }
    *out_n = n;
    return items;
}

/* The flavor of a create request as the caller may use it: by id, enabled, and public
 * or shared with the caller's project. Answers 400 itself. */
static bool create_flavor(cl_store *st, const cl_auth *a, const char *id, cl_flavor *out,
                          cl_http_resp *resp)
{
    bool allowed = false;
    int rc = cl_store_flavor_get(st, id, out);

    if (rc == 0 && (strcmp(out->id, id) != 0 || out->disabled))
        rc = -ENOENT;
    if (rc == 0 && !cl_auth_is_admin(a))
        rc = cl_store_flavor_access_allowed(st, out, a->project_id, &allowed);
    if (rc == 0 && !cl_auth_is_admin(a) && !allowed)
        rc = -ENOENT;
    if (rc == -ENOENT) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Flavor %s could not be found.", id);
        return false;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read flavors (%s).", strerror(-rc));
        return false;
    }
    return true;
}

/* [quota] max_concurrent_builds: refuse (403 overLimit) when the project already has
 * that many servers in BUILD. Checked before the create transaction, so a burst of
 * parallel creates may overshoot by the number of API workers: a cheap bound on what one
 * tenant can queue, not an exact quota. True when resp was answered. */
static bool over_build_cap(api_ctx *ctx, cl_store *st, const char *project, int64_t want,
                           cl_http_resp *resp)
{
    int64_t cap = ctx->cfg->max_concurrent_builds, building = 0;
    _cleanup_stmt_ sqlite3_stmt *q = NULL;

    if (cap <= 0)
        return false;
    if (cl_db_prepare(cl_store_db(st), "SELECT count(*) FROM instances WHERE project_id = ?1"
                      " AND vm_state = 'building'", &q) < 0)
        return false; /* the create itself reports a broken database */
    cl_db_bind_text(q, 1, project);
    if (sqlite3_step(q) == SQLITE_ROW)
        building = sqlite3_column_int64(q, 0);
    if (building + want <= cap)
        return false;
    cl_http_resp_errorf(resp, CL_E_OVER_LIMIT,
                        "Too many servers building in this project: %lld building, %lld "
                        "requested, at most %lld at once; retry when some are ACTIVE.",
                        (long long)building, (long long)want, (long long)cap);
    return true;
}

/* POST /v2.1/servers */
void api_servers_create(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    _cleanup_json_ json_object *root = NULL;
    _cleanup_free_ char *loc = NULL;
    _cleanup_free_ cl_instance *insts = NULL;
    _cleanup_free_ cl_kv *md = NULL;
    create_req cr = {0};
    cl_error err = {0};
    cl_instance_extra ex = {0};
    cl_quota_set q;
    cl_quota_excess over = {0};
    cl_keypair kp = {0};
    cl_flavor flavor;
    cl_store *st;
    const cl_auth *a;
    json_object *body, *srv;
    char pass[ADMIN_PASS_LEN + 1];
    char resv[16] = "r-";
    size_t n, created = 0, sent = 0;
    int mv = API_MV_MIN;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, &mv))
        return;
    a = api_auth_current();
    if (!a || !cl_auth_can_write(a, a->project_id)) {
        api_respond_policy(resp, "os_compute_api:servers:create");
        return;
    }
    if (cl_http_req_json(req, &root, &err) < 0 || parse_create(root, mv, &cr, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    st = api_store(ctx, resp);
    if (!st || !create_flavor(st, a, cr.flavor_id, &flavor, resp))
        return;
    if (cr.key_name) {
        /* Key pairs belong to users: the caller's own, as Nova looks them up. */
        rc = cl_store_keypair_get(st, a->user_id, cr.key_name, &kp);
        cl_keypair_clear(&kp);
        if (rc == -ENOENT) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid key_name provided.");
            return;
        }
        if (rc < 0) {
            cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read key pairs (%s).",
                                strerror(-rc));
            return;
        }
    }
    if (cr.admin_pass) {
        if (strlen(cr.admin_pass) > ADMIN_PASS_LEN * 20) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute adminPass: too long.");
            return;
        }
    } else if (random_chars(pass, ADMIN_PASS_LEN) < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "The random generator failed.");
        return;
    }
    if (random_chars(resv + 2, 8) < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "The random generator failed.");
        return;
    }

    n = (size_t)cr.max_count;
    insts = calloc(n, sizeof(*insts));
    md = metadata_items(cr.metadata, &ex.n_metadata);
    if (!insts || (cr.metadata && json_object_object_length(cr.metadata) > 0 && !md)) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Out of memory.");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        cl_instance *inst = &insts[i];

        cl_uuid_new(inst->uuid);
        /* Nova's multi_instance_display_name_template: "%(name)s-%(count)d". */
        if (n > 1)
            snprintf(inst->name, sizeof(inst->name), "%.240s-%u", cr.name,
                     (unsigned)((i + 1) % 1000));
        else
            cl_strlcpy(inst->name, cr.name, sizeof(inst->name));
        cl_strlcpy(inst->project_id, a->project_id, sizeof(inst->project_id));
        cl_strlcpy(inst->user_id, a->user_id, sizeof(inst->user_id));
        cl_strlcpy(inst->image_ref, cr.image_ref, sizeof(inst->image_ref));
        inst->flavor = flavor;
        inst->vm_state = CL_VM_BUILDING;
        inst->task_state = CL_TASK_SCHEDULING;
        inst->power_state = CL_POWER_NOSTATE;
        cl_strlcpy(inst->request_id, req->request_id ? req->request_id : "",
                   sizeof(inst->request_id));
    }
    ex.key_name = cr.key_name;
    ex.user_data = cr.user_data;
    ex.metadata = md;

    /* Placement (issue 4, store_placement.h): AZ, scheduler hints, server-group member. */
    for (size_t i = 0; i < n; i++)
        if (cl_store_placement_hints_record(st, insts[i].uuid, root, &err) < 0) {
            cl_http_resp_error(resp, &err);
            return;
        }
    if (over_build_cap(ctx, st, a->project_id, (int64_t)cr.min_count, resp))
        return;
    rc = api_quota_limits(ctx, st, a->project_id, &q);
    if (rc == 0)
        rc = cl_store_instances_create_quota(st, insts, n, (size_t)cr.min_count, &ex, &q,
                                             &created, &over);
    if (rc == -EDQUOT) {
        const char *res = cl_quota_res_name(over.res);

        cl_http_resp_errorf(resp, CL_E_OVER_LIMIT,
                            "Quota exceeded for %s: Requested %lld, but already used %lld of "
                            "%lld %s", res, (long long)over.requested, (long long)over.used,
                            (long long)over.limit, res);
        return;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, rc == -EBUSY ? CL_E_UNAVAILABLE : CL_E_INTERNAL,
                            "Cannot record the server (%s); try again.", strerror(-rc));
        return;
    }
    for (size_t i = 0; i < created; i++) {
        rc = cl_bus_send(ctx->bus, NULL, CL_MSG_INSTANCE_SCHEDULE, req->request_id,
                         cl_msg_uuid_encode(insts[i].uuid), true, NULL);
        if (rc < 0) {
            /* Nothing will ever schedule it: fail it now rather than leave it in BUILD. */
            cl_store_instance_fail(st, insts[i].uuid, "The scheduler could not be reached.",
                                   503);
            continue;
        }
        sent++;
        atomic_fetch_add(&ctx->servers_created, 1);
        cl_info(LOG_MOD, "server %s (%s) accepted, flavor %s", insts[i].uuid, insts[i].name,
                flavor.id);
    }
    if (sent == 0) {
        cl_http_resp_errorf(resp, CL_E_UNAVAILABLE,
                            "The scheduler queue is full; try again later.");
        return;
    }

    body = json_object_new_object();
    if (cr.return_reservation_id) {
        json_object_object_add(body, "reservation_id", json_object_new_string(resv));
        cl_http_resp_json(resp, 202, body);
        return;
    }
    /* Several servers: Nova answers with the first one. */
    srv = json_object_new_object();
    json_object_object_add(srv, "id", json_object_new_string(insts[0].uuid));
    json_object_object_add(srv, "links", api_links_self_bookmark(ctx, "servers", insts[0].uuid));
    json_object_object_add(srv, "OS-DCF:diskConfig", json_object_new_string("MANUAL"));
    json_object_object_add(srv, "security_groups", default_security_groups());
    json_object_object_add(srv, "adminPass",
                           json_object_new_string(cr.admin_pass ? cr.admin_pass : pass));
    json_object_object_add(body, "server", srv);
    if (asprintf(&loc, "%s/v2.1/servers/%s", ctx->compute_url, insts[0].uuid) >= 0)
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
                                        "tenant_id", "changes-since"};

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
    int64_t since_ms;     /* changes-since: updated at or after (deleted included), 0 = none */
} list_filter;

static bool parse_filters(const cl_http_req *req, cl_http_resp *resp, const cl_auth *a,
                          list_filter *f)
{
    const char *at = cl_http_req_query(req, "all_tenants");
    const char *cs = cl_http_req_query(req, "changes-since");

    memset(f, 0, sizeof(*f));
    if (at && !parse_bool_param(at, &f->all_tenants)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "Invalid value '%.32s' for all_tenants", at);
        return false;
    }
    if (f->all_tenants && !cl_auth_is_admin(a)) {
        api_respond_policy(resp, "os_compute_api:servers:detail:get_all_tenants");
        return false;
    }
    if (cs && (api_parse_time(cs, &f->since_ms) < 0 || f->since_ms <= 0)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "Invalid input for query parameters changes-since. Value: %.64s. "
                            "'%.64s' is not a 'date-time'", cs, cs);
        return false;
    }
    f->project = cl_http_req_query(req, "project_id");
    if (!f->project)
        f->project = cl_http_req_query(req, "tenant_id");
    f->name = cl_http_req_query(req, "name");
    f->status = cl_http_req_query(req, "status");
    /* Nova drops filters tenants may not use rather than refusing them. */
    f->host = cl_auth_is_admin(a) ? cl_http_req_query(req, "host") : NULL;
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
    if (f->since_ms && inst->updated_ms < f->since_ms)
        return false;
    return true;
}

/* Extras of a page of servers (cl_store_instance_extras_many). */
typedef struct page_extras {
    char (*keys)[256];
    bool *has_key;
    cl_indexed_kv *md;
    size_t n_md;
} page_extras;

static void extras_clear(page_extras *ex)
{
    free(ex->keys);
    free(ex->has_key);
    free(ex->md);
    memset(ex, 0, sizeof(*ex));
}

static bool load_extras(cl_store *st, const cl_instance *rows, const size_t *shown,
                        size_t count, page_extras *ex)
{
    _cleanup_free_ const char **uuids = calloc(count ? count : 1, sizeof(*uuids));

    ex->keys = calloc(count ? count : 1, sizeof(*ex->keys));
    ex->has_key = calloc(count ? count : 1, sizeof(*ex->has_key));
    if (!uuids || !ex->keys || !ex->has_key) {
        extras_clear(ex);
        return false;
    }
    for (size_t c = 0; c < count; c++)
        uuids[c] = rows[shown[c]].uuid;
    if (cl_store_instance_extras_many(st, uuids, count, ex->keys, ex->has_key, &ex->md,
                                      &ex->n_md) < 0) {
        extras_clear(ex);
        return false;
    }
    return true;
}

/* ---- list: rendering without a whole-page tree, and a per-thread answer cache ----
 *
 * A page of 1,000 detailed servers is ~1.3 MB of JSON. Building it as one json-c tree
 * and freeing that tree cost more than the rendering (malloc consolidation of ~40,000
 * small objects), so each server is rendered, appended to a flat buffer and freed at
 * once, while it is still hot in the cache.
 *
 * Clients poll lists (`server list`, `--wait`, dashboards); between two polls the data
 * rarely changes. Each worker thread keeps its last answer, keyed by everything the
 * answer depends on: the query values read here, the caller's project and admin view,
 * and the state of the database as its own connection sees it — PRAGMA data_version
 * (changes committed by any other connection, other processes included) and
 * sqlite3_total_changes64 (changes made by this connection). Policy checks run before
 * the lookup, so a hit never skips them.
 *
 * Any write to the database moves those versions — host heartbeats too, which arrive
 * all the time — so when they moved, the page's rows and extras are read again (cheap)
 * and hashed: if they are what the kept answer was rendered from, it is still the
 * answer (the render reads nothing else below microversion 2.3). */
#define LIST_CACHE_BODY_MAX (32u << 20) /* answers larger than this are not kept */

typedef struct list_cache {
    cl_store *st;        /* the connection whose versions these are */
    int64_t data_version;
    int64_t changes;
    uint64_t sig;        /* page_sig of the rows rendered (when sig_ok) */
    bool sig_ok;
    char *key;
    char *body;
    size_t len;
} list_cache;

static pthread_key_t list_cache_key;
static bool list_cache_ok;
static pthread_once_t list_cache_once = PTHREAD_ONCE_INIT;

static void list_cache_free(void *p)
{
    list_cache *c = p;

    if (!c)
        return;
    free(c->key);
    free(c->body);
    free(c);
}

static void list_cache_init(void)
{
    /* The destructor frees a worker's entry when MHD joins the thread. */
    list_cache_ok = pthread_key_create(&list_cache_key, list_cache_free) == 0;
}

/* The database's version as st's connection sees it; false when it cannot tell (then
 * nothing is cached). */
static bool db_version(cl_store *st, int64_t *data_version, int64_t *changes)
{
    cl_db *db = cl_store_db(st);
    _cleanup_stmt_ sqlite3_stmt *s = NULL;

    if (cl_db_prepare(db, "PRAGMA data_version", &s) < 0 || sqlite3_step(s) != SQLITE_ROW)
        return false;
    *data_version = sqlite3_column_int64(s, 0);
    *changes = (int64_t)sqlite3_total_changes64(cl_db_handle(db));
    return true;
}

/* A growable text buffer; oom latches so callers check once at the end. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        char *p;

        while (cap < b->len + n + 1)
            cap *= 2;
        p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

/* Serialize obj onto b and release it. */
static void sb_json(sbuf *b, json_object *obj)
{
    size_t n = 0;
    const char *t = obj ? json_object_to_json_string_length(
                              obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n)
                        : NULL;

    if (t)
        sb_put(b, t, n);
    else
        b->oom = true;
    json_object_put(obj);
}

/* "len:value" for each part, so no value can imitate a separator. */
static void key_part(sbuf *b, const char *v)
{
    char n[32];

    snprintf(n, sizeof(n), "%zu:", v ? strlen(v) + 1 : 0);
    sb_str(b, n);
    if (v)
        sb_str(b, v);
}

static char *list_cache_make_key(const cl_http_req *req, const cl_auth *a, bool detail,
                                 int mv)
{
    static const char *const params[] = {"all_tenants", "changes-since", "project_id",
                                         "tenant_id", "name", "status", "host", "limit",
                                         "marker"};
    sbuf b = {0};

    char mvs[16];

    snprintf(mvs, sizeof(mvs), "%d", mv);
    key_part(&b, detail ? "detail" : "list");
    key_part(&b, mvs);
    key_part(&b, cl_auth_is_admin(a) ? "admin" : "user");
    key_part(&b, a->project_id);
    for (size_t i = 0; i < CL_ARRAY_SIZE(params); i++)
        key_part(&b, cl_http_req_query(req, params[i]));
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* FNV-1a over what a page renders from: every shown row's fields and extras. */
static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t fnv_str(uint64_t h, const char *s)
{
    return fnv(h, s, strlen(s) + 1);
}

static uint64_t fnv_int(uint64_t h, int64_t v)
{
    return fnv(h, &v, sizeof(v));
}

static uint64_t page_sig(const cl_instance *rows, const size_t *shown, size_t count,
                         const page_extras *ex, bool detail, bool more)
{
    uint64_t h = fnv_int(0xcbf29ce484222325ull, (int64_t)count * 2 + more);

    for (size_t c = 0; c < count; c++) {
        const cl_instance *i = &rows[shown[c]];

        h = fnv_str(h, i->uuid);
        h = fnv_str(h, i->name);
        h = fnv_str(h, i->project_id);
        h = fnv_str(h, i->user_id);
        h = fnv_str(h, i->image_ref);
        h = fnv_str(h, i->flavor.id);
        h = fnv_str(h, i->flavor.name);
        h = fnv_str(h, i->host);
        h = fnv_str(h, i->fault);
        h = fnv_int(h, i->flavor.vcpus);
        h = fnv_int(h, i->flavor.ram_mb);
        h = fnv_int(h, i->flavor.disk_gb);
        h = fnv_int(h, i->flavor.ephemeral_gb);
        h = fnv_int(h, i->flavor.swap_mb);
        h = fnv_int(h, i->vm_state);
        h = fnv_int(h, i->task_state);
        h = fnv_int(h, i->power_state);
        h = fnv_int(h, i->fault_code);
        h = fnv_int(h, i->fault_at_ms);
        h = fnv_int(h, i->created_ms);
        h = fnv_int(h, i->updated_ms);
        h = fnv_int(h, i->launched_ms);
        h = fnv_int(h, i->deleted_ms);
        if (detail) {
            h = fnv_int(h, ex->has_key[c]);
            h = fnv_str(h, ex->keys[c]);
        }
    }
    for (size_t m = 0; detail && m < ex->n_md; m++) {
        h = fnv_int(h, (int64_t)ex->md[m].idx);
        h = fnv_str(h, ex->md[m].kv.key);
        h = fnv_str(h, ex->md[m].kv.value);
    }
    return h;
}

/* The thread's kept answer for key when it was rendered from rows hashing to sig; it
 * is then marked current at the new versions. NULL otherwise. */
static const list_cache *list_cache_same_rows(cl_store *st, const char *key, uint64_t sig,
                                              int64_t dv, int64_t ch)
{
    list_cache *c;

    if (!list_cache_ok || !key)
        return NULL;
    c = pthread_getspecific(list_cache_key);
    if (!c || c->st != st || !c->sig_ok || c->sig != sig || !c->key || strcmp(c->key, key) != 0)
        return NULL;
    c->data_version = dv;
    c->changes = ch;
    return c;
}

/* The thread's cached answer for key at the current database version, or NULL. */
static const list_cache *list_cache_find(cl_store *st, const char *key, int64_t dv,
                                         int64_t ch)
{
    const list_cache *c;

    if (!list_cache_ok || !key)
        return NULL;
    c = pthread_getspecific(list_cache_key);
    if (c && c->st == st && c->data_version == dv && c->changes == ch && c->key &&
        strcmp(c->key, key) == 0)
        return c;
    return NULL;
}

/* Keep body (taken) as the thread's answer for key; frees it when it cannot. */
static void list_cache_store(cl_store *st, char *key, char *body, size_t len, int64_t dv,
                             int64_t ch, uint64_t sig, bool sig_ok)
{
    list_cache *c;

    if (!list_cache_ok || !key || len > LIST_CACHE_BODY_MAX) {
        free(key);
        free(body);
        return;
    }
    c = pthread_getspecific(list_cache_key);
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (!c || pthread_setspecific(list_cache_key, c) != 0) {
            free(c);
            free(key);
            free(body);
            return;
        }
    }
    free(c->key);
    free(c->body);
    *c = (list_cache){.st = st, .data_version = dv, .changes = ch, .sig = sig, .sig_ok = sig_ok,
                      .key = key, .body = body, .len = len};
}

static void list_common(const cl_http_req *req, cl_http_resp *resp, void *ud, bool detail)
{
    api_ctx *ctx = ud;
    _cleanup_free_ cl_instance *rows = NULL;
    _cleanup_free_ size_t *shown = NULL;
    page_extras ex = {0};
    _cleanup_free_ char *key = NULL;
    sbuf out = {0};
    int mv = API_MV_MIN;
    int64_t dv = 0, ch = 0;
    uint64_t sig;
    bool versioned, sig_ok;
    bool more = false;
    size_t n = 0, count = 0;
    cl_instance_filter sf = {0};
    list_filter lf;
    int64_t limit;
    const char *marker;
    const cl_auth *a;
    cl_store *st;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, &mv))
        return;
    a = api_auth_current();
    if (!a || !cl_auth_can_read(a, a->project_id)) {
        api_respond_policy(resp, "os_compute_api:servers:index");
        return;
    }
    if (!api_page_params(req, resp, &limit, &marker) || !parse_filters(req, resp, a, &lf))
        return;
    st = api_store(ctx, resp);
    if (!st)
        return;
    pthread_once(&list_cache_once, list_cache_init);
    versioned = db_version(st, &dv, &ch);
    key = versioned ? list_cache_make_key(req, a, detail, mv) : NULL;
    const list_cache *hit = list_cache_find(st, key, dv, ch);
    if (hit) {
        cl_http_resp_raw(resp, 200, "application/json", hit->body, hit->len);
        return;
    }
    /* The caller's project unless an admin asked for all_tenants. */
    sf.project_id = lf.all_tenants ? lf.project : a->project_id;
    sf.host = lf.host;
    sf.include_deleted = (lf.status && strcasecmp(lf.status, "DELETED") == 0) || lf.since_ms;
    sf.marker = marker;
    /* Name, status and changes-since are filtered here, so the store may only cut the
     * page when there are none; one row more than the page tells whether a next page
     * exists. */
    sf.limit = (!lf.name && !lf.status && !lf.since_ms && limit > 0) ? limit + 1 : 0;
    rc = cl_store_instance_list(st, &sf, &rows, &n);
    if (rc == -ENOENT && marker) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "marker [%.64s] not found", marker);
        return;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot list servers (%s).", strerror(-rc));
        return;
    }
    /* Which rows make the page; then their extras in two queries, not two per row. */
    shown = calloc(n ? n : 1, sizeof(*shown));
    if (!shown) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Out of memory.");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (!matches(&lf, &rows[i]))
            continue;
        if (limit > 0 && (int64_t)count == limit) {
            more = true;
            break;
        }
        shown[count++] = i;
    }
    if (detail && !load_extras(st, rows, shown, count, &ex)) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read server extras.");
        return;
    }
    /* From 2.3 on the render reads more than these rows (mv_fields): versions only. */
    sig_ok = mv < 3;
    sig = sig_ok ? page_sig(rows, shown, count, &ex, detail, more) : 0;
    const list_cache *same = sig_ok ? list_cache_same_rows(st, key, sig, dv, ch) : NULL;
    if (same) {
        extras_clear(&ex);
        cl_http_resp_raw(resp, 200, "application/json", same->body, same->len);
        return;
    }
    sb_str(&out, "{\"servers\":[");
    for (size_t c = 0, m = 0; c < count; c++) {
        const cl_instance *inst = &rows[shown[c]];

        if (c > 0)
            sb_put(&out, ",", 1);
        if (detail) {
            extra e = {.has_key = ex.has_key[c], .metadata = json_object_new_object()};

            cl_strlcpy(e.key_name, ex.keys[c], sizeof(e.key_name));
            for (; m < ex.n_md && ex.md[m].idx == c; m++)
                json_object_object_add(e.metadata, ex.md[m].kv.key,
                                       json_object_new_string(ex.md[m].kv.value));
            sb_json(&out, server_detail(ctx, st, inst, &e, cl_auth_is_admin(a), mv, false));
            extra_clear(&e);
        } else {
            sb_json(&out, server_brief(ctx, inst));
        }
    }
    sb_put(&out, "]", 1);
    if (more && count > 0) {
        json_object *links = json_object_new_array();
        _cleanup_free_ char *href = NULL;
        char keep[1024];

        /* The next page starts after the last row shown, not the last read. */
        keep_filters(req, keep, sizeof(keep));
        if (asprintf(&href, "%s/v2.1/servers%s?limit=%lld&marker=%s%s", ctx->compute_url,
                     detail ? "/detail" : "", (long long)limit, rows[shown[count - 1]].uuid,
                     keep) < 0)
            href = NULL;
        json_object_array_add(links, api_link("next", href ? href : ""));
        sb_str(&out, ",\"servers_links\":");
        sb_json(&out, links);
    }
    sb_put(&out, "}", 1);
    extras_clear(&ex);
    if (out.oom) {
        free(out.p);
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Out of memory.");
        return;
    }
    cl_http_resp_raw(resp, 200, "application/json", out.p, out.len);
    list_cache_store(st, TAKE_PTR(key), out.p, out.len, dv, ch, sig, sig_ok);
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

/* ---- policy helpers, show / update / delete ---- */

void api_respond_policy(cl_http_resp *resp, const char *rule)
{
    cl_http_resp_errorf(resp, CL_E_FORBIDDEN, "Policy doesn't allow %s to be performed.", rule);
}

bool api_require_admin(cl_http_resp *resp, const char *rule)
{
    const cl_auth *a = api_auth_current();

    if (a && cl_auth_is_admin(a))
        return true;
    api_respond_policy(resp, rule);
    return false;
}

bool api_server_load(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, bool write,
                     const char *rule, cl_store **out_st, cl_instance *out)
{
    const char *id = cl_http_req_param(req, "id");
    const cl_auth *a = api_auth_current();
    cl_store *st;
    int rc;

    if (!a) {
        api_respond_policy(resp, rule);
        return false;
    }
    st = api_store(ctx, resp);
    if (!st)
        return false;
    rc = (id && strlen(id) < CL_UUID_LEN) ? cl_store_instance_get(st, id, out) : -ENOENT;
    /* Another project's server reads exactly as a missing one. */
    if (rc == -ENOENT || (rc == 0 && (out->vm_state == CL_VM_DELETED ||
                                      !cl_auth_can_read(a, out->project_id)))) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Instance %.64s could not be found.",
                            id ? id : "");
        return false;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read the server (%s).", strerror(-rc));
        return false;
    }
    if (write && !cl_auth_can_write(a, out->project_id)) {
        api_respond_policy(resp, rule);
        return false;
    }
    *out_st = st;
    return true;
}

static void respond_server(api_ctx *ctx, cl_store *st, const cl_instance *inst, int mv,
                           cl_http_resp *resp)
{
    const cl_auth *a = api_auth_current();
    json_object *body = json_object_new_object();
    extra ex;

    extra_get(st, inst->uuid, &ex);
    json_object_object_add(body, "server",
                           server_detail(ctx, st, inst, &ex, a && cl_auth_is_admin(a), mv, true));
    extra_clear(&ex);
    cl_http_resp_json(resp, 200, body);
}

/* GET /v2.1/servers/{id} */
void api_servers_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const char *id = cl_http_req_param(req, "id");
    cl_instance inst;
    cl_store *st;
    int mv = API_MV_MIN;

    if (id && strcmp(id, "detail") == 0) {
        api_servers_detail(req, resp, ud);
        return;
    }
    if (!api_compute_begin(ctx, req, resp, true, &mv) ||
        !api_server_load(ctx, req, resp, false, "os_compute_api:servers:show", &st, &inst))
        return;
    respond_server(ctx, st, &inst, mv, resp);
}

/* PUT /v2.1/servers/{id}: rename (accessIPv4/6 and diskConfig are accepted and kept as
 * nube has them; description from 2.19). */
void api_servers_update(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    static const char *const keys[] = {"name", "accessIPv4", "accessIPv6", "OS-DCF:diskConfig",
                                       "description"};
    api_ctx *ctx = ud;
    _cleanup_json_ json_object *root = NULL;
    json_object *srv;
    const char *name = NULL;
    cl_error err = {0};
    cl_instance inst;
    cl_store *st;
    int mv = API_MV_MIN;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, &mv) ||
        !api_server_load(ctx, req, resp, true, "os_compute_api:servers:update", &st, &inst))
        return;
    if (cl_http_req_json(req, &root, &err) < 0 ||
        check_keys(root, (const char *const[]){"server"}, 1, "the request body", &err) < 0 ||
        cl_json_get_object(root, "server", true, &srv, &err) < 0 ||
        check_keys(srv, keys, CL_ARRAY_SIZE(keys) - (mv < 19 ? 1 : 0), "server", &err) < 0 ||
        cl_json_get_str(root, "server.name", false, &name, &err) < 0 ||
        (name && check_name(name, &err) < 0)) {
        cl_http_resp_error(resp, &err);
        return;
    }
    if (name) {
        rc = cl_store_instance_rename(st, inst.uuid, name);
        if (rc == -ENOENT) {
            cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Instance %s could not be found.",
                                inst.uuid);
            return;
        }
        if (rc < 0) {
            cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot rename the server (%s).",
                                strerror(-rc));
            return;
        }
        if (cl_store_instance_get(st, inst.uuid, &inst) < 0)
            cl_strlcpy(inst.name, name, sizeof(inst.name));
    }
    respond_server(ctx, st, &inst, mv, resp);
}

/* DELETE /v2.1/servers/{id} */
void api_servers_delete(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    cl_instance inst;
    cl_store *st;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, NULL) ||
        !api_server_load(ctx, req, resp, true, "os_compute_api:servers:delete", &st, &inst))
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
