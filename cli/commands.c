/*
 * commands.c - the nube CLI's conversation with Identity v3 and Compute v2.1.
 *
 * The shape of every exchange follows the recorded openstack client sessions in
 * shared/reference/openstack-api/: a password token request scoped to a project, the
 * compute endpoint taken from the token's catalog, then Compute calls carrying
 * X-Auth-Token and "X-OpenStack-Nova-API-Version: 2.1" (the microversion the client
 * sends for server and hypervisor commands, so field names are those of 2.1).
 * Name lookups rely on the API answering 404 for an unknown id and then list, as
 * the client does. Everything printed goes through output.c.
 */
#include "commands.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "http.h"
#include "json.h"
#include "nube-version.h"
#include "util.h"

#define USER_AGENT "User-Agent: nube/" NUBE_VERSION
#define LIST_MAX_PAGES 1000    /* a server that keeps sending "next" cannot loop us */
#define LIST_MAX_ITEMS 100000

static void http_result_freep(cl_http_result *r) { cl_http_result_free(r); }
#define _cleanup_result_ _cleanup_(http_result_freep)

void cli_session_clear(cli_session *s)
{
    if (!s)
        return;
    free(s->token);
    free(s->compute_url);
    free(s->billing_url);
    s->token = NULL;
    s->compute_url = NULL;
    s->billing_url = NULL;
}

int cli_exit_code(int neg_errno)
{
    if (neg_errno >= 0)
        return CLI_EXIT_OK;
    return neg_errno == -ENOENT ? CLI_EXIT_NOT_FOUND : CLI_EXIT_API;
}

/* ---- authentication ---- */

/* {"name": ..., "domain": {"name": ...}} or {"id": ...}. */
static json_object *named_ref(const char *id, const char *name, const char *domain)
{
    json_object *o = json_object_new_object();
    json_object *d;

    if (!o)
        return NULL;
    if (id[0]) {
        json_object_object_add(o, "id", json_object_new_string(id));
        return o;
    }
    json_object_object_add(o, "name", json_object_new_string(name));
    d = json_object_new_object();
    json_object_object_add(d, "name", json_object_new_string(domain[0] ? domain : "Default"));
    json_object_object_add(o, "domain", d);
    return o;
}

json_object *cli_auth_body(const cli_cloud *c)
{
    json_object *root, *auth, *identity, *methods, *password, *user, *scope, *project;

    /* json-c's constructors return NULL only when malloc fails; adding NULL values is
     * harmless, so one check of the leaves at the end keeps this readable. */
    user = named_ref(c->user_id, c->username, c->user_domain_name);
    project = named_ref(c->project_id, c->project_name, c->project_domain_name);
    if (!user || !project) {
        json_object_put(user);
        json_object_put(project);
        return NULL;
    }
    json_object_object_add(user, "password", json_object_new_string(c->password));
    root = json_object_new_object();
    auth = json_object_new_object();
    identity = json_object_new_object();
    methods = json_object_new_array();
    password = json_object_new_object();
    scope = json_object_new_object();
    json_object_array_add(methods, json_object_new_string("password"));
    json_object_object_add(password, "user", user);
    json_object_object_add(identity, "methods", methods);
    json_object_object_add(identity, "password", password);
    json_object_object_add(scope, "project", project);
    json_object_object_add(auth, "identity", identity);
    json_object_object_add(auth, "scope", scope);
    json_object_object_add(root, "auth", auth);
    if (!cl_json_path(root, "auth.identity.password.user.password") ||
        !cl_json_path(root, "auth.scope.project")) {
        json_object_put(root);
        return NULL;
    }
    return root;
}

static const char *str_or(json_object *o, const char *key, const char *dflt)
{
    json_object *v;

    if (json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string))
        return json_object_get_string(v);
    return dflt;
}

int cli_catalog_endpoint(json_object *token_body, const char *type, const char *interface,
                         const char *region, char *out, size_t outlen, cl_error *err)
{
    json_object *catalog = cl_json_path(token_body, "token.catalog");
    size_t n;

    if (!json_object_is_type(catalog, json_type_array))
        return cl_error_set(err, CL_E_NOT_FOUND,
                            "The token has no service catalog (is the project scope right?)");
    for (size_t i = 0; i < json_object_array_length(catalog); i++) {
        json_object *svc = json_object_array_get_idx(catalog, i);
        json_object *eps;

        if (strcmp(str_or(svc, "type", ""), type) != 0 ||
            !json_object_object_get_ex(svc, "endpoints", &eps) ||
            !json_object_is_type(eps, json_type_array))
            continue;
        for (size_t j = 0; j < json_object_array_length(eps); j++) {
            json_object *ep = json_object_array_get_idx(eps, j);
            const char *url = str_or(ep, "url", NULL);

            if (!url || strcmp(str_or(ep, "interface", ""), interface) != 0)
                continue;
            if (region && region[0] && strcmp(str_or(ep, "region_id", ""), region) != 0 &&
                strcmp(str_or(ep, "region", ""), region) != 0)
                continue;
            n = strlen(url);
            while (n > 0 && url[n - 1] == '/')
                n--;
            if (n >= outlen)
                return cl_error_set(err, CL_E_BAD_REQUEST, "The %s endpoint URL is too long",
                                    type), -ENAMETOOLONG;
            memcpy(out, url, n);
            out[n] = '\0';
            return 0;
        }
    }
    if (region && region[0])
        return cl_error_set(err, CL_E_NOT_FOUND,
                            "No %s endpoint with interface '%s' in region '%s' in the "
                            "service catalog", type, interface, region);
    return cl_error_set(err, CL_E_NOT_FOUND,
                        "No %s endpoint with interface '%s' in the service catalog", type,
                        interface);
}

/* Turn a non-2xx answer into "HTTP <status> <fault>: <message> (Request-ID: ...)".
 * Nova wraps errors as {"itemNotFound": {"message": ...}}, Keystone as
 * {"error": {"message": ..., "title": ...}}: both are one object holding "message". */
static void describe_http_error(const cl_http_result *res, cl_error *err)
{
    _cleanup_json_ json_object *body = NULL;
    const char *fault = NULL, *message = NULL;
    char reqid[128];
    char rid_text[160] = "";

    if (res->body_len > 0)
        cl_json_parse(res->body, res->body_len, &body, NULL);
    if (json_object_is_type(body, json_type_object)) {
        json_object_object_foreach(body, key, val) {
            const char *m = json_object_is_type(val, json_type_object)
                                ? str_or(val, "message", NULL) : NULL;

            if (m) {
                fault = strcmp(key, "error") == 0 ? str_or(val, "title", key) : key;
                message = m;
                break;
            }
        }
    }
    if (cl_http_result_header(res, "x-openstack-request-id", reqid, sizeof(reqid)) == 0)
        snprintf(rid_text, sizeof(rid_text), " (Request-ID: %s)", reqid);
    if (message)
        cl_error_set(err, CL_E_INTERNAL, "HTTP %ld %s: %s%s", res->status, fault, message,
                     rid_text);
    else
        cl_error_set(err, CL_E_INTERNAL, "HTTP %ld%s", res->status, rid_text);
    if (err && res->status == 404)
        err->code = CL_E_NOT_FOUND;
}

/* A header value from the network must not smuggle extra header lines into our next
 * request. */
static bool header_safe(const char *s)
{
    return s[0] && !strpbrk(s, "\r\n");
}

int cli_authenticate(const cli_cloud *cloud, long timeout_ms, cli_session *out,
                     cl_error *err)
{
    static const char *const headers[] = {
        "Content-Type: application/json", "Accept: application/json", USER_AGENT, NULL,
    };
    _cleanup_json_ json_object *req = NULL;
    _cleanup_json_ json_object *resp = NULL;
    _cleanup_result_ cl_http_result res = { 0 };
    _cleanup_free_ char *token = NULL;
    char base[CLI_URL_MAX], url[CLI_URL_MAX + 16], compute[CLI_URL_MAX];
    const char *body;
    int r;

    if (cli_auth_url_normalize(cloud->auth_url, base, sizeof(base)) < 0)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "auth_url '%s' of cloud '%s' is not an http(s) URL",
                            cloud->auth_url, cloud->name);
    snprintf(url, sizeof(url), "%s/auth/tokens", base);
    req = cli_auth_body(cloud);
    if (!req)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    body = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
    r = cl_http_request("POST", url, headers, body, strlen(body),
                        timeout_ms > 0 ? timeout_ms : CLI_HTTP_TIMEOUT_MS, &res, err);
    if (r < 0)
        return r;
    if (res.status < 200 || res.status > 299) {
        describe_http_error(&res, err);
        if (err) {
            char msg[CL_ERROR_MSG_MAX];

            cl_strlcpy(msg, err->message, sizeof(msg));
            cl_error_set(err, CL_E_UNAUTHORIZED, "Authentication at %s failed: %s", url, msg);
        }
        return -EACCES;
    }
    token = malloc(CLI_TOKEN_MAX);
    if (!token)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    if (cl_http_result_header(&res, "X-Subject-Token", token, CLI_TOKEN_MAX) < 0 ||
        !header_safe(token))
        return cl_error_set(err, CL_E_INTERNAL,
                            "%s answered %ld without a usable X-Subject-Token header", url,
                            res.status), -EPROTO;
    r = cl_json_parse_object(res.body, res.body_len, &resp, NULL);
    if (r < 0)
        return cl_error_set(err, CL_E_INTERNAL, "%s answered %ld with a body that is not "
                            "a JSON object", url, res.status), -EPROTO;
    r = cli_catalog_endpoint(resp, "compute", cloud->interface[0] ? cloud->interface : "public",
                             cloud->region_name, compute, sizeof(compute), err);
    if (r < 0)
        return r;
    out->compute_url = strdup(compute);
    if (!out->compute_url)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    /* Optional: only the billing commands need it, and they say so when it is missing. */
    if (cli_catalog_endpoint(resp, "billing",
                             cloud->interface[0] ? cloud->interface : "public",
                             cloud->region_name, compute, sizeof(compute), NULL) == 0)
        out->billing_url = strdup(compute);
    out->token = TAKE_PTR(token);
    out->timeout_ms = timeout_ms;
    return 0;
}

/* ---- Compute calls ---- */

int cli_compute_call(const cli_session *s, const char *method, const char *path,
                     json_object *body, long *out_status, json_object **out_json,
                     cl_error *err)
{
    _cleanup_result_ cl_http_result res = { 0 };
    _cleanup_free_ char *auth = NULL;
    _cleanup_free_ char *url = NULL;
    const char *headers[] = {
        NULL, "X-OpenStack-Nova-API-Version: 2.1", "Accept: application/json", USER_AGENT,
        body ? "Content-Type: application/json" : NULL, NULL,
    };
    const char *text = body ? json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN)
                            : NULL;
    int r;

    if (out_status)
        *out_status = 0;
    if (asprintf(&auth, "X-Auth-Token: %s", s->token) < 0) {
        auth = NULL;
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    }
    if (asprintf(&url, "%s%s", s->compute_url, path) < 0) {
        url = NULL;
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    }
    headers[0] = auth;
    r = cl_http_request(method, url, headers, text, text ? strlen(text) : 0,
                        s->timeout_ms > 0 ? s->timeout_ms : CLI_HTTP_TIMEOUT_MS, &res, err);
    if (r < 0)
        return r;
    if (out_status)
        *out_status = res.status;
    if (res.status < 200 || res.status > 299) {
        describe_http_error(&res, err);
        return res.status == 404 ? -ENOENT : -EIO;
    }
    if (out_json) {
        *out_json = NULL;
        if (res.body_len > 0 &&
            cl_json_parse(res.body, res.body_len, out_json, NULL) < 0)
            return cl_error_set(err, CL_E_INTERNAL, "%s %s answered %ld with a body that "
                                "is not JSON", method, url, res.status), -EPROTO;
    }
    return 0;
}

/* Percent-encode everything but RFC 3986 unreserved characters, so a name with
 * spaces, '/' or '?' stays one path segment. */
static char *url_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *out = malloc(n * 3 + 1), *p = out;

    if (!out)
        return NULL;
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if ((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') ||
            (*c >= '0' && *c <= '9') || strchr("-._~", *c)) {
            *p++ = (char)*c;
        } else {
            *p++ = '%';
            *p++ = hex[*c >> 4];
            *p++ = hex[*c & 15];
        }
    }
    *p = '\0';
    return out;
}

/* The query string of a "next" link of body[key_links], or NULL. */
static const char *next_query(json_object *body, const char *key)
{
    char lkey[64];
    json_object *links;

    snprintf(lkey, sizeof(lkey), "%s_links", key);
    if (!json_object_object_get_ex(body, lkey, &links) ||
        !json_object_is_type(links, json_type_array))
        return NULL;
    for (size_t i = 0; i < json_object_array_length(links); i++) {
        json_object *l = json_object_array_get_idx(links, i);
        const char *href = str_or(l, "href", NULL);

        if (href && strcmp(str_or(l, "rel", ""), "next") == 0)
            return strchr(href, '?');
    }
    return NULL;
}

int cli_list_all(const cli_session *s, const char *path, const char *key,
                 json_object **out, cl_error *err)
{
    _cleanup_json_ json_object *all = json_object_new_array();
    _cleanup_free_ char *page = strdup(path);
    _cleanup_free_ char *base = strndup(path, strcspn(path, "?"));

    if (!all || !page || !base)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    for (int pages = 0; pages < LIST_MAX_PAGES; pages++) {
        _cleanup_json_ json_object *body = NULL;
        json_object *items;
        const char *q;
        char *nextp;
        int r = cli_compute_call(s, "GET", page, NULL, NULL, &body, err);

        if (r < 0)
            return r;
        if (!json_object_object_get_ex(body, key, &items) ||
            !json_object_is_type(items, json_type_array))
            return cl_error_set(err, CL_E_INTERNAL, "GET %s: the answer has no '%s' list",
                                page, key), -EPROTO;
        for (size_t i = 0; i < json_object_array_length(items); i++) {
            if (json_object_array_length(all) >= LIST_MAX_ITEMS)
                return cl_error_set(err, CL_E_INTERNAL, "GET %s: more than %d %s", path,
                                    LIST_MAX_ITEMS, key), -E2BIG;
            json_object_array_add(all, json_object_get(json_object_array_get_idx(items, i)));
        }
        q = next_query(body, key);
        /* An empty page with a next link would loop forever on a broken server. */
        if (!q || json_object_array_length(items) == 0) {
            *out = TAKE_PTR(all);
            return 0;
        }
        if (asprintf(&nextp, "%s%s", base, q) < 0)
            return cl_error_set(err, CL_E_INTERNAL, "out of memory");
        free(page);
        page = nextp;
    }
    return cl_error_set(err, CL_E_INTERNAL, "GET %s: more than %d pages", path,
                        LIST_MAX_PAGES), -E2BIG;
}

int cli_find(const cli_session *s, const char *kind, const char *ref, json_object **out,
             cl_error *err)
{
    bool server = strcmp(kind, "server") == 0;
    const char *key = server ? "servers" : "flavors";
    _cleanup_free_ char *esc = url_escape(ref);
    _cleanup_free_ char *path = NULL;
    _cleanup_json_ json_object *body = NULL;
    _cleanup_json_ json_object *list = NULL;
    json_object *found = NULL, *obj;
    size_t matches = 0;
    int r;

    if (!esc || asprintf(&path, "/%s/%s", key, esc) < 0) {
        path = NULL;
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    }
    /* "." and ".." would be resolved away by URL normalisation and hit the collection. */
    if (ref[0] && strcmp(ref, ".") != 0 && strcmp(ref, "..") != 0) {
        r = cli_compute_call(s, "GET", path, NULL, NULL, &body, err);
        if (r == 0 && json_object_object_get_ex(body, kind, &obj) &&
            json_object_is_type(obj, json_type_object)) {
            *out = json_object_get(obj);
            return 0;
        }
        if (r < 0 && r != -ENOENT)
            return r;
    }
    r = cli_list_all(s, server ? "/servers/detail" : "/flavors/detail?is_public=None", key,
                     &list, err);
    if (r < 0)
        return r;
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *it = json_object_array_get_idx(list, i);

        if (strcmp(str_or(it, "name", ""), ref) == 0) {
            found = it;
            matches++;
        }
    }
    if (matches == 0)
        return cl_error_set(err, CL_E_NOT_FOUND, "No %s with a name or ID of '%s' exists.",
                            kind, ref);
    if (matches > 1)
        return cl_error_set(err, CL_E_CONFLICT, "More than one %s exists with the name '%s'.",
                            kind, ref), -ENOTUNIQ;
    *out = json_object_get(found);
    return 0;
}

/* ---- formatting helpers ---- */

/* "net1=10.0.0.5, fd00::5; net2=..." from a server's addresses, as the openstack client
 * shows Networks. */
static char *format_addresses(json_object *addrs)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    bool first_net = true;

    if (!f)
        return NULL;
    if (json_object_is_type(addrs, json_type_object)) {
        json_object_object_foreach(addrs, net, list) {
            fprintf(f, "%s%s=", first_net ? "" : "; ", net);
            first_net = false;
            for (size_t i = 0; json_object_is_type(list, json_type_array) &&
                               i < json_object_array_length(list); i++)
                fprintf(f, "%s%s", i ? ", " : "",
                        str_or(json_object_array_get_idx(list, i), "addr", ""));
        }
    }
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* The "id" inside {"id": ..., "links": [...]} (image and flavor at 2.1), or "". */
static const char *ref_id(json_object *server, const char *key)
{
    json_object *o;

    if (!json_object_object_get_ex(server, key, &o) || !json_object_is_type(o, json_type_object))
        return "";
    return str_or(o, "id", "");
}

/* Flavor id -> name map from one list call; NULL when it cannot be had (the list then
 * shows ids, which is still correct). */
static json_object *flavor_names(const cli_session *s)
{
    _cleanup_json_ json_object *list = NULL;
    json_object *map;
    cl_error ignored;

    if (cli_list_all(s, "/flavors/detail?is_public=None", "flavors", &list, &ignored) < 0)
        return NULL;
    map = json_object_new_object();
    for (size_t i = 0; map && i < json_object_array_length(list); i++) {
        json_object *f = json_object_array_get_idx(list, i);
        const char *id = str_or(f, "id", NULL);

        if (id)
            json_object_object_add(map, id, json_object_new_string(str_or(f, "name", id)));
    }
    return map;
}

static json_object *field(json_object *o, const char *key)
{
    json_object *v = NULL;

    json_object_object_get_ex(o, key, &v);
    return json_object_get(v);
}

static int finish_output(int r, cl_error *err)
{
    if (r == -ENOMEM)
        cl_error_set(err, CL_E_INTERNAL, "out of memory");
    else if (r < 0)
        cl_error_set(err, CL_E_INTERNAL, "could not write the output: %s", strerror(-r));
    return r < 0 ? CLI_EXIT_API : CLI_EXIT_OK;
}

/* ---- commands ---- */

int cli_cmd_server_list(cli_ctx *ctx, bool all_projects, cl_error *err)
{
    static const char *const headers[] = { "ID", "Name", "Status", "Networks", "Image",
                                           "Flavor" };
    _cleanup_json_ json_object *list = NULL;
    _cleanup_json_ json_object *rows = json_object_new_array();
    _cleanup_json_ json_object *flavors = NULL;
    int r;

    if (!rows)
        return finish_output(-ENOMEM, err);
    r = cli_list_all(&ctx->sess, all_projects ? "/servers/detail?all_tenants=1"
                                              : "/servers/detail", "servers", &list, err);
    if (r < 0)
        return cli_exit_code(r) == CLI_EXIT_NOT_FOUND ? CLI_EXIT_API : cli_exit_code(r);
    if (json_object_array_length(list) > 0)
        flavors = flavor_names(&ctx->sess);
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *srv = json_object_array_get_idx(list, i);
        json_object *row = json_object_new_array();
        _cleanup_free_ char *nets = format_addresses(cl_json_path(srv, "addresses"));
        const char *fid = ref_id(srv, "flavor");
        json_object *fname = NULL;

        if (!row || !nets || json_object_array_add(rows, row) < 0) {
            json_object_put(row);
            return finish_output(-ENOMEM, err);
        }
        if (flavors)
            json_object_object_get_ex(flavors, fid, &fname);
        json_object_array_add(row, field(srv, "id"));
        json_object_array_add(row, field(srv, "name"));
        json_object_array_add(row, field(srv, "status"));
        json_object_array_add(row, json_object_new_string(nets));
        json_object_array_add(row, json_object_new_string(ref_id(srv, "image")));
        json_object_array_add(row, fname ? json_object_get(fname) : json_object_new_string(fid));
    }
    return finish_output(cli_print_list(ctx->out, ctx->fmt, headers, CL_ARRAY_SIZE(headers),
                                           rows), err);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The Field/Value view of a server: every attribute sorted by name as the openstack
 * client shows them, links dropped, references and addresses made readable. JSON output
 * keeps the API's own object (minus links) so scripts get real types. */
static int print_server(cli_ctx *ctx, json_object *srv, const char *admin_pass, cl_error *err)
{
    _cleanup_json_ json_object *view = json_object_new_object();
    _cleanup_free_ const char **keys = NULL;
    size_t n = 0;

    if (!view)
        return finish_output(-ENOMEM, err);
    if (ctx->fmt == CLI_FMT_JSON) {
        json_object_object_foreach(srv, k, v) {
            if (strcmp(k, "links") != 0)
                json_object_object_add(view, k, json_object_get(v));
        }
        if (admin_pass)
            json_object_object_add(view, "adminPass", json_object_new_string(admin_pass));
        return finish_output(cli_print_json(ctx->out, view), err);
    }
    keys = calloc((size_t)json_object_object_length(srv) + 1, sizeof(*keys));
    if (!keys)
        return finish_output(-ENOMEM, err);
    json_object_object_foreach(srv, key, unused) {
        (void)unused;
        if (strcmp(key, "links") != 0)
            keys[n++] = key;
    }
    if (admin_pass)
        keys[n++] = "adminPass";
    qsort(keys, n, sizeof(*keys), cmp_str);
    for (size_t i = 0; i < n; i++) {
        json_object *v = NULL;

        if (admin_pass && strcmp(keys[i], "adminPass") == 0) {
            json_object_object_add(view, keys[i], json_object_new_string(admin_pass));
            continue;
        }
        json_object_object_get_ex(srv, keys[i], &v);
        if (strcmp(keys[i], "addresses") == 0) {
            _cleanup_free_ char *a = format_addresses(v);

            json_object_object_add(view, keys[i], json_object_new_string(a ? a : ""));
        } else if (strcmp(keys[i], "flavor") == 0 || strcmp(keys[i], "image") == 0) {
            json_object_object_add(view, keys[i],
                                   json_object_new_string(ref_id(srv, keys[i])));
        } else if (strcmp(keys[i], "fault") == 0) {
            json_object_object_add(view, keys[i],
                                   json_object_new_string(str_or(v, "message", "")));
        } else {
            json_object_object_add(view, keys[i], json_object_get(v));
        }
    }
    return finish_output(cli_print_show(ctx->out, CLI_FMT_TABLE, view), err);
}

int cli_cmd_server_show(cli_ctx *ctx, const char *ref, cl_error *err)
{
    _cleanup_json_ json_object *srv = NULL;
    int r = cli_find(&ctx->sess, "server", ref, &srv, err);

    if (r < 0)
        return cli_exit_code(r);
    return print_server(ctx, srv, NULL, err);
}

/* Sleep until the next poll, or less when the deadline comes first. poll(2) with no
 * descriptors is a plain timed wait that signals (Ctrl-C) still interrupt. */
static void wait_until(int64_t when_ms)
{
    int64_t left = when_ms - cl_mono_ms();

    if (left > 0)
        poll(NULL, 0, (int)(left > 60000 ? 60000 : left));
}

static void progress(cli_ctx *ctx, const char *label, const char *status, const char *task,
                     int64_t elapsed_ms, bool changed)
{
    char state[128];

    if (task && task[0])
        snprintf(state, sizeof(state), "%s (%s)", status, task);
    else
        snprintf(state, sizeof(state), "%s", status);
    if (ctx->err_tty) {
        /* Redraw the line in place: carriage return, text, clear to end of line. */
        fprintf(ctx->err, "\rWaiting for server %s: %s ... %" PRId64 "s\033[K", label, state,
                elapsed_ms / 1000);
        fflush(ctx->err);
    } else if (changed) {
        fprintf(ctx->err, "Waiting for server %s: %s ... %" PRId64 "s\n", label, state,
                elapsed_ms / 1000);
        fflush(ctx->err);
    }
}

int cli_wait_server(cli_ctx *ctx, const char *id, const char *label, bool want_gone,
                    int64_t deadline_ms, cl_error *err)
{
    _cleanup_free_ char *path = NULL;
    char last[128] = "";
    int64_t start = cl_mono_ms();
    long interval = ctx->poll_ms > 0 ? ctx->poll_ms : CLI_POLL_MS;
    int code;

    if (asprintf(&path, "/servers/%s", id) < 0) {
        path = NULL;
        cl_error_set(err, CL_E_INTERNAL, "out of memory");
        return CLI_EXIT_API;
    }
    for (;;) {
        _cleanup_json_ json_object *body = NULL;
        int64_t next = cl_mono_ms() + interval;
        const char *status, *task;
        char now[128];
        long http = 0;
        int r = cli_compute_call(&ctx->sess, "GET", path, NULL, &http, &body, err);

        if (r == -ENOENT && want_gone) {
            progress(ctx, label, "DELETED", NULL, cl_mono_ms() - start, true);
            code = CLI_EXIT_OK;
            break;
        }
        if (r < 0) {
            code = CLI_EXIT_API;
            break;
        }
        status = str_or(cl_json_path(body, "server"), "status", "UNKNOWN");
        task = str_or(cl_json_path(body, "server"), "OS-EXT-STS:task_state", NULL);
        snprintf(now, sizeof(now), "%s/%s", status, task ? task : "");
        progress(ctx, label, status, task, cl_mono_ms() - start, strcmp(now, last) != 0);
        cl_strlcpy(last, now, sizeof(last));
        if (strcmp(status, "ERROR") == 0) {
            const char *fault = str_or(cl_json_path(body, "server.fault"), "message", NULL);

            cl_error_set(err, CL_E_NO_VALID_HOST, "Server %s went to ERROR: %s", label,
                         fault ? fault : "(no fault recorded)");
            code = CLI_EXIT_ERROR;
            break;
        }
        if (!want_gone && strcmp(status, "ACTIVE") == 0) {
            code = CLI_EXIT_OK;
            break;
        }
        if (cl_mono_ms() >= deadline_ms) {
            cl_error_set(err, CL_E_UNAVAILABLE,
                         "Timed out after %" PRId64 "s waiting for server %s (last status %s)",
                         (cl_mono_ms() - start + 500) / 1000, label, status);
            code = CLI_EXIT_TIMEOUT;
            break;
        }
        wait_until(next < deadline_ms ? next : deadline_ms);
    }
    if (ctx->err_tty) {
        fputc('\n', ctx->err);
        fflush(ctx->err);
    }
    return code;
}

int cli_cmd_server_create(cli_ctx *ctx, const char *name, const char *flavor,
                          const char *image, bool wait, int64_t timeout_s, cl_error *err)
{
    _cleanup_json_ json_object *flv = NULL;
    _cleanup_json_ json_object *req = json_object_new_object();
    _cleanup_json_ json_object *resp = NULL;
    _cleanup_json_ json_object *body = NULL;
    _cleanup_free_ char *path = NULL;
    _cleanup_free_ char *admin_pass = NULL;
    json_object *server = json_object_new_object();
    const char *id;
    int64_t deadline = cl_mono_ms() + timeout_s * 1000;
    int r;

    if (!req || !server || json_object_object_add(req, "server", server) < 0) {
        json_object_put(server);
        return finish_output(-ENOMEM, err);
    }
    r = cli_find(&ctx->sess, "flavor", flavor, &flv, err);
    if (r < 0)
        return cli_exit_code(r);
    json_object_object_add(server, "name", json_object_new_string(name));
    json_object_object_add(server, "imageRef", json_object_new_string(image));
    json_object_object_add(server, "flavorRef", field(flv, "id"));
    json_object_object_add(server, "min_count", json_object_new_int(1));
    json_object_object_add(server, "max_count", json_object_new_int(1));
    r = cli_compute_call(&ctx->sess, "POST", "/servers", req, NULL, &resp, err);
    if (r < 0)
        return CLI_EXIT_API; /* a 404 here is about the image or flavor, not a lookup */
    id = str_or(cl_json_path(resp, "server"), "id", NULL);
    if (!id || !cl_uuid_valid(id)) {
        cl_error_set(err, CL_E_INTERNAL, "POST /servers answered without a server id");
        return CLI_EXIT_API;
    }
    if (str_or(cl_json_path(resp, "server"), "adminPass", NULL))
        admin_pass = strdup(str_or(cl_json_path(resp, "server"), "adminPass", ""));
    if (wait) {
        r = cli_wait_server(ctx, id, name, false, deadline, err);
        if (r != CLI_EXIT_OK)
            return r;
    }
    if (asprintf(&path, "/servers/%s", id) < 0) {
        path = NULL;
        return finish_output(-ENOMEM, err);
    }
    r = cli_compute_call(&ctx->sess, "GET", path, NULL, NULL, &body, err);
    if (r < 0)
        return CLI_EXIT_API;
    if (!json_object_is_type(cl_json_path(body, "server"), json_type_object)) {
        cl_error_set(err, CL_E_INTERNAL, "GET %s answered without a server", path);
        return CLI_EXIT_API;
    }
    return print_server(ctx, cl_json_path(body, "server"), admin_pass, err);
}

int cli_cmd_server_delete(cli_ctx *ctx, const char *const *refs, size_t nrefs, bool wait,
                          int64_t timeout_s, cl_error *err)
{
    _cleanup_free_ char **ids = calloc(nrefs ? nrefs : 1, sizeof(*ids));
    int64_t deadline = cl_mono_ms() + timeout_s * 1000;
    size_t failed = 0;
    int code = CLI_EXIT_OK;
    cl_error one;

    if (!ids)
        return finish_output(-ENOMEM, err);
    /* Like the openstack client: try every server and report each failure as it
     * happens; the exit code is that of the first failure. */
    for (size_t i = 0; i < nrefs; i++) {
        _cleanup_json_ json_object *srv = NULL;
        _cleanup_free_ char *path = NULL;
        int r = cli_find(&ctx->sess, "server", refs[i], &srv, &one);

        if (r == 0 && asprintf(&path, "/servers/%s", str_or(srv, "id", "")) < 0) {
            path = NULL;
            r = cl_error_set(&one, CL_E_INTERNAL, "out of memory");
        }
        if (r == 0)
            r = cli_compute_call(&ctx->sess, "DELETE", path, NULL, NULL, NULL, &one);
        if (r == -ENOENT && path)
            r = 0; /* gone between lookup and delete: what was asked for */
        if (r == 0) {
            ids[i] = strdup(str_or(srv, "id", ""));
            continue;
        }
        failed++;
        fprintf(ctx->err, "nube: %s\n", one.message);
        if (code == CLI_EXIT_OK)
            code = path ? CLI_EXIT_API : cli_exit_code(r);
    }
    for (size_t i = 0; wait && i < nrefs; i++) {
        int r;

        if (!ids[i])
            continue;
        r = cli_wait_server(ctx, ids[i], refs[i], true, deadline, &one);
        if (r != CLI_EXIT_OK) {
            failed++;
            fprintf(ctx->err, "nube: %s\n", one.message);
            if (code == CLI_EXIT_OK)
                code = r;
        }
    }
    for (size_t i = 0; i < nrefs; i++)
        free(ids[i]);
    /* Each failure is on stderr already; leave the caller only a summary to print. */
    if (err && failed > 1)
        cl_error_set(err, CL_E_INTERNAL, "%zu of %zu servers could not be deleted", failed,
                     nrefs);
    else if (err)
        err->message[0] = '\0';
    return code;
}

int cli_cmd_host_list(cli_ctx *ctx, cl_error *err)
{
    static const char *const headers[] = {
        "ID", "Hypervisor Hostname", "Hypervisor Type", "Host IP", "State", "Status",
        "vCPUs Used", "vCPUs", "Memory MB Used", "Memory MB", "Running VMs",
    };
    static const char *const keys[] = {
        "id", "hypervisor_hostname", "hypervisor_type", "host_ip", "state", "status",
        "vcpus_used", "vcpus", "memory_mb_used", "memory_mb", "running_vms",
    };
    _cleanup_json_ json_object *list = NULL;
    _cleanup_json_ json_object *rows = json_object_new_array();
    int r;

    if (!rows)
        return finish_output(-ENOMEM, err);
    r = cli_list_all(&ctx->sess, "/os-hypervisors/detail", "hypervisors", &list, err);
    if (r < 0)
        return CLI_EXIT_API;
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *h = json_object_array_get_idx(list, i);
        json_object *row = json_object_new_array();

        if (!row || json_object_array_add(rows, row) < 0) {
            json_object_put(row);
            return finish_output(-ENOMEM, err);
        }
        for (size_t k = 0; k < CL_ARRAY_SIZE(keys); k++)
            json_object_array_add(row, field(h, keys[k]));
    }
    return finish_output(cli_print_list(ctx->out, ctx->fmt, headers, CL_ARRAY_SIZE(headers),
                                           rows), err);
}

int cli_cmd_flavor_list(cli_ctx *ctx, cl_error *err)
{
    static const char *const headers[] = { "ID", "Name", "RAM", "Disk", "Ephemeral", "VCPUs",
                                           "Is Public" };
    static const char *const keys[] = { "id", "name", "ram", "disk",
                                        "OS-FLV-EXT-DATA:ephemeral", "vcpus",
                                        "os-flavor-access:is_public" };
    _cleanup_json_ json_object *list = NULL;
    _cleanup_json_ json_object *rows = json_object_new_array();
    int r;

    if (!rows)
        return finish_output(-ENOMEM, err);
    /* is_public=None: an operator sees private flavors too (Nova lists them for admins). */
    r = cli_list_all(&ctx->sess, "/flavors/detail?is_public=None", "flavors", &list, err);
    if (r < 0)
        return CLI_EXIT_API;
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *f = json_object_array_get_idx(list, i);
        json_object *row = json_object_new_array();

        if (!row || json_object_array_add(rows, row) < 0) {
            json_object_put(row);
            return finish_output(-ENOMEM, err);
        }
        for (size_t k = 0; k < CL_ARRAY_SIZE(keys); k++)
            json_object_array_add(row, field(f, keys[k]));
    }
    return finish_output(cli_print_list(ctx->out, ctx->fmt, headers, CL_ARRAY_SIZE(headers),
                                           rows), err);
}
