/*
 * clouds.c - clouds.yaml and OS_* environment variables -> one cli_cloud.
 *
 * The file format is openstacksdk's: a top-level "clouds" mapping from cloud names to
 * entries with an "auth" mapping and a few top-level keys (region_name, interface).
 * We parse with libyaml's document API, so anchors, aliases, flow style and quoting all
 * work as the Python client reads them, and errors carry libyaml's line and column.
 * Only the keys nube uses are read; others (identity_api_version, verify, ...) are
 * ignored, as a clouds.yaml is shared with other tools.
 */
#include "clouds.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#include "cleanup.h"
#include "util.h"

static void yaml_parser_freep(yaml_parser_t *p) { yaml_parser_delete(p); }
static void fclosep(FILE **f)
{
    if (*f)
        fclose(*f);
}

/* ---- search path ---- */

size_t cli_clouds_search_path(char paths[][CLI_PATH_MAX], size_t max)
{
    const char *env = getenv("OS_CLIENT_CONFIG_FILE");
    const char *home = getenv("HOME");
    size_t n = 0;

    /* openstacksdk (openstack/config/loader.py) inserts $OS_CLIENT_CONFIG_FILE at the
     * front of its list: an explicit override beats whatever clouds.yaml happens to lie
     * in the current directory. */
    if (env && *env && n < max)
        snprintf(paths[n++], CLI_PATH_MAX, "%s", env);
    if (n < max)
        snprintf(paths[n++], CLI_PATH_MAX, "%s", "clouds.yaml");
    if (home && *home && n < max)
        snprintf(paths[n++], CLI_PATH_MAX, "%s/.config/openstack/clouds.yaml", home);
    if (n < max)
        snprintf(paths[n++], CLI_PATH_MAX, "%s", "/etc/openstack/clouds.yaml");
    return n;
}

/* ---- YAML document helpers ---- */

static bool scalar_is(const yaml_node_t *n, const char *s)
{
    size_t len = strlen(s);

    return n && n->type == YAML_SCALAR_NODE && n->data.scalar.length == len &&
           memcmp(n->data.scalar.value, s, len) == 0;
}

/* Value node of key in a mapping node, or NULL. */
static yaml_node_t *map_get(yaml_document_t *doc, yaml_node_t *map, const char *key)
{
    if (!map || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start;
         p < map->data.mapping.pairs.top; p++) {
        if (scalar_is(yaml_document_get_node(doc, p->key), key))
            return yaml_document_get_node(doc, p->value);
    }
    return NULL;
}

/* Copy the scalar at map[key] into out (size CLI_FIELD_MAX). Absent keys and YAML nulls
 * leave out empty. libyaml's document API does not resolve tags, so a plain "~" or
 * "null" is recognised here as the null Python's yaml.safe_load would produce. */
static int get_field(yaml_document_t *doc, yaml_node_t *map, const char *key,
                     const char *where, const char *path, char *out, cl_error *err)
{
    yaml_node_t *n = map_get(doc, map, key);
    const char *v;
    size_t len;

    out[0] = '\0';
    if (!n)
        return 0;
    if (n->type != YAML_SCALAR_NODE)
        return cl_error_set(err, CL_E_BAD_REQUEST, "%s: line %zu: %s%s must be a string",
                            path, n->start_mark.line + 1, where, key);
    v = (const char *)n->data.scalar.value;
    len = n->data.scalar.length;
    if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
        (len == 0 || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
         strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0))
        return 0;
    if (memchr(v, '\0', len))
        return cl_error_set(err, CL_E_BAD_REQUEST, "%s: line %zu: %s%s contains a NUL byte",
                            path, n->start_mark.line + 1, where, key);
    if (len >= CLI_FIELD_MAX)
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "%s: line %zu: %s%s is too long (%zu bytes, at most %d)", path,
                            n->start_mark.line + 1, where, key, len, CLI_FIELD_MAX - 1);
    memcpy(out, v, len + 1);
    return 0;
}

/* The fields every entry needs before we can ask for a project-scoped token. */
static int validate_cloud(const cli_cloud *c, const char *origin, cl_error *err)
{
    const char *missing = NULL;

    if (!c->auth_url[0])
        missing = "auth.auth_url";
    else if (!c->username[0] && !c->user_id[0])
        missing = "auth.username (or auth.user_id)";
    else if (!c->password[0])
        missing = "auth.password";
    else if (!c->project_name[0] && !c->project_id[0])
        missing = "auth.project_name (or auth.project_id)";
    if (missing)
        return cl_error_set(err, CL_E_BAD_REQUEST, "%s: cloud '%s' has no %s", origin,
                            c->name, missing);
    return 0;
}

static int read_entry(yaml_document_t *doc, yaml_node_t *entry, const char *path,
                      cli_cloud *c, cl_error *err)
{
    static const struct {
        const char *key;
        size_t off;
    } auth_keys[] = {
        { "auth_url", offsetof(cli_cloud, auth_url) },
        { "username", offsetof(cli_cloud, username) },
        { "user_id", offsetof(cli_cloud, user_id) },
        { "password", offsetof(cli_cloud, password) },
        { "project_name", offsetof(cli_cloud, project_name) },
        { "project_id", offsetof(cli_cloud, project_id) },
        { "user_domain_name", offsetof(cli_cloud, user_domain_name) },
        { "project_domain_name", offsetof(cli_cloud, project_domain_name) },
    };
    yaml_node_t *auth;
    int r;

    if (entry->type != YAML_MAPPING_NODE)
        return cl_error_set(err, CL_E_BAD_REQUEST, "%s: line %zu: cloud '%s' is not a mapping",
                            path, entry->start_mark.line + 1, c->name);
    auth = map_get(doc, entry, "auth");
    if (auth && auth->type != YAML_MAPPING_NODE)
        return cl_error_set(err, CL_E_BAD_REQUEST, "%s: line %zu: clouds.%s.auth is not a mapping",
                            path, auth->start_mark.line + 1, c->name);
    for (size_t i = 0; i < CL_ARRAY_SIZE(auth_keys); i++) {
        r = get_field(doc, auth, auth_keys[i].key, "auth.", path,
                      (char *)c + auth_keys[i].off, err);
        if (r < 0)
            return r;
    }
    r = get_field(doc, entry, "region_name", "", path, c->region_name, err);
    if (r < 0)
        return r;
    r = get_field(doc, entry, "interface", "", path, c->interface, err);
    if (r < 0)
        return r;
    if (!c->interface[0])
        cl_strlcpy(c->interface, "public", sizeof(c->interface));
    return validate_cloud(c, path, err);
}

/* Open path for reading, refusing anything but a regular file of sane size, so a FIFO or
 * /dev/zero named by OS_CLIENT_CONFIG_FILE cannot hang or exhaust the CLI. */
static int open_clouds_file(const char *path, FILE **out, cl_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat st;
    FILE *f;

    if (fd < 0) {
        int e = errno;

        if (e == ENOENT || e == ENOTDIR)
            return -ENOENT;
        return cl_error_set(err, CL_E_BAD_REQUEST, "%s: %s", path, strerror(e)), -e;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return cl_error_set(err, CL_E_BAD_REQUEST, "%s: not a regular file", path);
    }
    if (st.st_size > CLI_CLOUDS_FILE_MAX) {
        close(fd);
        return cl_error_set(err, CL_E_BAD_REQUEST, "%s: larger than %d bytes", path,
                            CLI_CLOUDS_FILE_MAX);
    }
    f = fdopen(fd, "r");
    if (!f) {
        int e = errno;

        close(fd);
        return cl_error_set(err, CL_E_BAD_REQUEST, "%s: %s", path, strerror(e)), -e;
    }
    *out = f;
    return 0;
}

int cli_clouds_load_file(const char *path, const char *name, cli_cloud *out,
                         cl_error *err)
{
    _cleanup_(fclosep) FILE *f = NULL;
    _cleanup_free_ cli_cloud *c = NULL;
    yaml_document_t doc;
    yaml_node_t *root, *clouds, *entry;
    int r;

    r = open_clouds_file(path, &f, err);
    if (r == -ENOENT)
        return cl_error_set(err, CL_E_NOT_FOUND, "%s: no such file", path), -ENOENT;
    if (r < 0)
        return r;
    /* yaml_parser_initialize() zeroes the parser before anything can fail, so the
     * cleanup is safe on every path from here. */
    _cleanup_(yaml_parser_freep) yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        return cl_error_set(err, CL_E_INTERNAL, "%s: out of memory", path), -ENOMEM;
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc))
        return cl_error_set(err, CL_E_BAD_REQUEST, "%s: line %zu column %zu: %s%s%s", path,
                            parser.problem_mark.line + 1, parser.problem_mark.column + 1,
                            parser.problem ? parser.problem : "malformed YAML",
                            parser.context ? " " : "", parser.context ? parser.context : "");

    c = calloc(1, sizeof(*c));
    if (!c) {
        r = -ENOMEM;
        cl_error_set(err, CL_E_INTERNAL, "out of memory");
        goto out;
    }
    if (cl_strlcpy(c->name, name, sizeof(c->name)) >= sizeof(c->name) ||
        cl_strlcpy(c->file, path, sizeof(c->file)) >= sizeof(c->file)) {
        r = cl_error_set(err, CL_E_BAD_REQUEST, "cloud name or path too long");
        goto out;
    }
    root = yaml_document_get_root_node(&doc);
    if (root && root->type != YAML_MAPPING_NODE) {
        r = cl_error_set(err, CL_E_BAD_REQUEST, "%s: the top level is not a mapping", path);
        goto out;
    }
    clouds = map_get(&doc, root, "clouds");
    if (clouds && clouds->type != YAML_MAPPING_NODE) {
        r = cl_error_set(err, CL_E_BAD_REQUEST, "%s: line %zu: 'clouds' is not a mapping",
                         path, clouds->start_mark.line + 1);
        goto out;
    }
    entry = map_get(&doc, clouds, name);
    if (!entry) {
        r = -ENOENT;
        cl_error_set(err, CL_E_NOT_FOUND, "%s: no cloud named '%s'", path, name);
        goto out;
    }
    r = read_entry(&doc, entry, path, c, err);
    if (r < 0)
        goto out;
    *out = *c;
out:
    yaml_document_delete(&doc);
    return r;
}

int cli_clouds_load(const char *name, cli_cloud *out, cl_error *err)
{
    char paths[CLI_SEARCH_MAX][CLI_PATH_MAX];
    char tried[1024] = "";
    size_t n = cli_clouds_search_path(paths, CLI_SEARCH_MAX);
    size_t used = 0;

    for (size_t i = 0; i < n; i++) {
        int r = cli_clouds_load_file(paths[i], name, out, err);

        if (r != -ENOENT)
            return r;
        if (used < sizeof(tried))
            used += (size_t)snprintf(tried + used, sizeof(tried) - used, "%s%s",
                                     i ? ", " : "", paths[i]);
    }
    return cl_error_set(err, CL_E_NOT_FOUND, "Cloud '%s' was not found in %s", name, tried),
           -ENOENT;
}

static int env_field(const char *var, char *out, cl_error *err)
{
    const char *v = getenv(var);

    out[0] = '\0';
    if (!v)
        return 0;
    if (cl_strlcpy(out, v, CLI_FIELD_MAX) >= CLI_FIELD_MAX)
        return cl_error_set(err, CL_E_BAD_REQUEST, "$%s is too long", var);
    return 0;
}

int cli_cloud_from_env(cli_cloud *out, cl_error *err)
{
    static const struct {
        const char *var;
        size_t off;
    } vars[] = {
        { "OS_AUTH_URL", offsetof(cli_cloud, auth_url) },
        { "OS_USERNAME", offsetof(cli_cloud, username) },
        { "OS_USER_ID", offsetof(cli_cloud, user_id) },
        { "OS_PASSWORD", offsetof(cli_cloud, password) },
        { "OS_PROJECT_NAME", offsetof(cli_cloud, project_name) },
        { "OS_PROJECT_ID", offsetof(cli_cloud, project_id) },
        { "OS_USER_DOMAIN_NAME", offsetof(cli_cloud, user_domain_name) },
        { "OS_PROJECT_DOMAIN_NAME", offsetof(cli_cloud, project_domain_name) },
        { "OS_REGION_NAME", offsetof(cli_cloud, region_name) },
        { "OS_INTERFACE", offsetof(cli_cloud, interface) },
    };
    _cleanup_free_ cli_cloud *c = calloc(1, sizeof(*c));
    int r;

    if (!c)
        return cl_error_set(err, CL_E_INTERNAL, "out of memory");
    if (!getenv("OS_AUTH_URL") || !*getenv("OS_AUTH_URL"))
        return cl_error_set(err, CL_E_NOT_FOUND, "OS_AUTH_URL is not set"), -ENOENT;
    cl_strlcpy(c->name, "envvars", sizeof(c->name)); /* openstacksdk's name for it */
    for (size_t i = 0; i < CL_ARRAY_SIZE(vars); i++) {
        r = env_field(vars[i].var, (char *)c + vars[i].off, err);
        if (r < 0)
            return r;
    }
    if (!c->interface[0])
        cl_strlcpy(c->interface, "public", sizeof(c->interface));
    r = validate_cloud(c, "environment (OS_*)", err);
    if (r < 0)
        return r;
    *out = *c;
    return 0;
}

/* True when seg (length len) looks like an API version: "v3", "v2.0", "v3.14". */
static bool is_version_segment(const char *seg, size_t len)
{
    bool digits = false;

    if (len < 2 || (seg[0] != 'v' && seg[0] != 'V'))
        return false;
    for (size_t i = 1; i < len; i++) {
        if (seg[i] >= '0' && seg[i] <= '9')
            digits = true;
        else if (seg[i] != '.' || !digits)
            return false;
    }
    return digits && seg[len - 1] != '.';
}

int cli_auth_url_normalize(const char *auth_url, char *out, size_t outlen)
{
    const char *host, *path, *seg;
    size_t len;
    int n;

    if (!auth_url || !*auth_url)
        return -EINVAL;
    if (strncmp(auth_url, "http://", 7) == 0)
        host = auth_url + 7;
    else if (strncmp(auth_url, "https://", 8) == 0)
        host = auth_url + 8;
    else
        return -EINVAL;
    if (strpbrk(auth_url, "?#"))
        return -EINVAL; /* a query or fragment cannot be extended with /auth/tokens */
    len = strlen(auth_url);
    while (len > (size_t)(host - auth_url) && auth_url[len - 1] == '/')
        len--;
    if (len == (size_t)(host - auth_url))
        return -EINVAL; /* no host */
    path = memchr(host, '/', len - (size_t)(host - auth_url));
    seg = NULL;
    if (path) {
        seg = auth_url + len;
        while (seg[-1] != '/')
            seg--;
    }
    if (seg && is_version_segment(seg, (size_t)(auth_url + len - seg)))
        n = snprintf(out, outlen, "%.*s", (int)len, auth_url);
    else
        n = snprintf(out, outlen, "%.*s/v3", (int)len, auth_url);
    if (n < 0 || (size_t)n >= outlen)
        return -ENAMETOOLONG;
    return 0;
}
