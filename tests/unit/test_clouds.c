/*
 * test_clouds.c - the nube CLI's logic: clouds.yaml, auth_url, output, and the
 * conversation with Identity/Compute against a real loopback HTTP server.
 *
 * clouds.yaml cases run on real files in a mkdtemp directory (with HOME, the current
 * directory and OS_CLIENT_CONFIG_FILE pointed into it, restored afterwards). The API
 * cases start a tiny cl_http_server playing Keystone and Nova: it answers
 * POST /v3/auth/tokens with a catalog and serves a few canned servers and flavors, so
 * token and endpoint extraction, name lookups, 404 handling and --wait are exercised
 * over real HTTP.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "clouds.h"
#include "commands.h"
#include "http.h"
#include "json.h"
#include "output.h"
#include "util.h"

/* ---- temp-dir helpers ---- */

typedef struct tmpenv {
    char dir[PATH_MAX];
    char oldcwd[PATH_MAX];
    char *old_home, *old_cfg;
} tmpenv;

static char *dup_env(const char *name)
{
    const char *v = getenv(name);

    return v ? strdup(v) : NULL;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "we");

    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static void path_join(char *out, const tmpenv *t, const char *rel)
{
    int n = snprintf(out, PATH_MAX, "%s/%s", t->dir, rel);

    assert_true(n > 0 && n < PATH_MAX);
}

static int tmpenv_setup(void **state)
{
    tmpenv *t = calloc(1, sizeof(*t));

    assert_non_null(t);
    snprintf(t->dir, sizeof(t->dir), "/tmp/nube-clouds-XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    assert_non_null(getcwd(t->oldcwd, sizeof(t->oldcwd)));
    t->old_home = dup_env("HOME");
    t->old_cfg = dup_env("OS_CLIENT_CONFIG_FILE");
    /* Isolate the search path from the machine running the tests. */
    setenv("HOME", t->dir, 1);
    unsetenv("OS_CLIENT_CONFIG_FILE");
    assert_int_equal(chdir(t->dir), 0);
    *state = t;
    return 0;
}

static void restore_env(const char *name, char *old)
{
    if (old)
        setenv(name, old, 1);
    else
        unsetenv(name);
    free(old);
}

static int tmpenv_teardown(void **state)
{
    tmpenv *t = *state;
    static const char *const files[] = {
        "clouds.yaml", "env.yaml", "bad.yaml", ".config/openstack/clouds.yaml",
    };
    static const char *const dirs[] = { ".config/openstack", ".config" };
    char p[PATH_MAX];

    assert_int_equal(chdir(t->oldcwd), 0);
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        path_join(p, t, files[i]);
        unlink(p);
    }
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        path_join(p, t, dirs[i]);
        rmdir(p);
    }
    assert_int_equal(rmdir(t->dir), 0);
    restore_env("HOME", t->old_home);
    restore_env("OS_CLIENT_CONFIG_FILE", t->old_cfg);
    free(t);
    return 0;
}

static const char full_yaml[] =
    "# a clouds.yaml as the openstack client reads it\n"
    "common: &auth\n"
    "  user_domain_name: Default\n"
    "clouds:\n"
    "  other:\n"
    "    auth: {auth_url: 'http://other:5000', username: u, password: p, project_id: x}\n"
    "  nube:\n"
    "    region_name: RegionOne\n"
    "    identity_api_version: 3\n"
    "    auth:\n"
    "      <<: *auth\n"
    "      auth_url: http://keystone.example:5000/v3/\n"
    "      username: admin\n"
    "      password: \"s3cr:et #1\"\n"
    "      project_name: admin\n"
    "      project_domain_name: Default\n"
    "      user_domain_name: Default\n";

static void test_clouds_full_entry(void **state)
{
    tmpenv *t = *state;
    char path[PATH_MAX];
    cli_cloud *c = calloc(1, sizeof(*c));
    cl_error err;

    assert_non_null(c);
    path_join(path, t, "clouds.yaml");
    write_file(path, full_yaml);
    assert_int_equal(cli_clouds_load_file(path, "nube", c, &err), 0);
    assert_string_equal(c->name, "nube");
    assert_string_equal(c->file, path);
    assert_string_equal(c->auth_url, "http://keystone.example:5000/v3/");
    assert_string_equal(c->username, "admin");
    assert_string_equal(c->user_id, "");
    assert_string_equal(c->password, "s3cr:et #1");
    assert_string_equal(c->project_name, "admin");
    assert_string_equal(c->project_id, "");
    assert_string_equal(c->user_domain_name, "Default");
    assert_string_equal(c->project_domain_name, "Default");
    assert_string_equal(c->region_name, "RegionOne");
    assert_string_equal(c->interface, "public"); /* the default */

    /* Flow style and ids work too. */
    assert_int_equal(cli_clouds_load_file(path, "other", c, &err), 0);
    assert_string_equal(c->auth_url, "http://other:5000");
    assert_string_equal(c->project_id, "x");
    assert_string_equal(c->region_name, "");
    free(c);
}

static void test_clouds_missing_cloud(void **state)
{
    tmpenv *t = *state;
    char path[PATH_MAX];
    cli_cloud c;
    cl_error err;

    path_join(path, t, "clouds.yaml");
    write_file(path, full_yaml);
    assert_int_equal(cli_clouds_load_file(path, "nosuch", &c, &err), -ENOENT);
    assert_non_null(strstr(err.message, "no cloud named 'nosuch'"));
    /* Along the search path, the message lists every file tried. */
    assert_int_equal(cli_clouds_load("nosuch", &c, &err), -ENOENT);
    assert_non_null(strstr(err.message, "Cloud 'nosuch' was not found in"));
    assert_non_null(strstr(err.message, "/etc/openstack/clouds.yaml"));
    /* A file that does not exist is not an error of its own. */
    assert_int_equal(cli_clouds_load_file("/nonexistent/clouds.yaml", "nube", &c, &err),
                     -ENOENT);
}

static void test_clouds_missing_auth_url(void **state)
{
    tmpenv *t = *state;
    char path[PATH_MAX];
    cli_cloud c;
    cl_error err;

    path_join(path, t, "clouds.yaml");
    write_file(path, "clouds:\n  nube:\n    auth:\n      username: admin\n"
                     "      password: x\n      project_name: admin\n");
    assert_int_equal(cli_clouds_load_file(path, "nube", &c, &err), -EINVAL);
    assert_non_null(strstr(err.message, path));
    assert_non_null(strstr(err.message, "auth.auth_url"));

    /* A non-scalar value is named with its line. */
    write_file(path, "clouds:\n  nube:\n    auth:\n      auth_url: [a, b]\n");
    assert_int_equal(cli_clouds_load_file(path, "nube", &c, &err), -EINVAL);
    assert_non_null(strstr(err.message, "line 4"));
    assert_non_null(strstr(err.message, "auth.auth_url must be a string"));
}

static void test_clouds_malformed(void **state)
{
    tmpenv *t = *state;
    char path[PATH_MAX];
    cli_cloud c;
    cl_error err;

    path_join(path, t, "bad.yaml");
    write_file(path, "clouds:\n  nube:\n    auth: {auth_url: x\n  other: [\n");
    assert_int_equal(cli_clouds_load_file(path, "nube", &c, &err), -EINVAL);
    assert_non_null(strstr(err.message, path));
    assert_non_null(strstr(err.message, "line "));

    /* A malformed file on the search path stops the search with its error. */
    setenv("OS_CLIENT_CONFIG_FILE", path, 1);
    assert_int_equal(cli_clouds_load("nube", &c, &err), -EINVAL);
    assert_non_null(strstr(err.message, "bad.yaml"));

    /* Top level must be a mapping. */
    write_file(path, "- just\n- a list\n");
    assert_int_equal(cli_clouds_load_file(path, "nube", &c, &err), -EINVAL);
    assert_non_null(strstr(err.message, "not a mapping"));
}

static void test_clouds_search_precedence(void **state)
{
    tmpenv *t = *state;
    char cwd_file[PATH_MAX], env_file[PATH_MAX], home_file[PATH_MAX], p[PATH_MAX];
    char paths[CLI_SEARCH_MAX][CLI_PATH_MAX];
    cli_cloud c;
    cl_error err;

    path_join(cwd_file, t, "clouds.yaml");
    path_join(env_file, t, "env.yaml");
    path_join(p, t, ".config");
    assert_int_equal(mkdir(p, 0700), 0);
    path_join(p, t, ".config/openstack");
    assert_int_equal(mkdir(p, 0700), 0);
    path_join(home_file, t, ".config/openstack/clouds.yaml");
    write_file(cwd_file, "clouds:\n"
                         "  c: {auth: {auth_url: 'http://cwd', username: u, password: p, project_name: x}}\n"
                         "  only_cwd: {auth: {auth_url: 'http://cwd2', username: u, password: p, project_name: x}}\n");
    write_file(env_file, "clouds:\n"
                         "  c: {auth: {auth_url: 'http://env', username: u, password: p, project_name: x}}\n");
    write_file(home_file, "clouds:\n"
                          "  c: {auth: {auth_url: 'http://home', username: u, password: p, project_name: x}}\n"
                          "  only_home: {auth: {auth_url: 'http://home2', username: u, password: p, project_name: x}}\n");

    /* Without the variable: ./clouds.yaml beats ~/.config. */
    assert_int_equal(cli_clouds_load("c", &c, &err), 0);
    assert_string_equal(c.auth_url, "http://cwd");

    /* OS_CLIENT_CONFIG_FILE goes to the front, as openstacksdk inserts it. */
    setenv("OS_CLIENT_CONFIG_FILE", env_file, 1);
    assert_int_equal(cli_clouds_search_path(paths, CLI_SEARCH_MAX), 4);
    assert_string_equal(paths[0], env_file);
    assert_string_equal(paths[1], "clouds.yaml");
    assert_string_equal(paths[2], home_file);
    assert_string_equal(paths[3], "/etc/openstack/clouds.yaml");
    assert_int_equal(cli_clouds_load("c", &c, &err), 0);
    assert_string_equal(c.auth_url, "http://env");
    assert_string_equal(c.file, env_file);

    /* A file that exists but lacks the cloud passes the search on. */
    assert_int_equal(cli_clouds_load("only_cwd", &c, &err), 0);
    assert_string_equal(c.auth_url, "http://cwd2");
    assert_int_equal(cli_clouds_load("only_home", &c, &err), 0);
    assert_string_equal(c.auth_url, "http://home2");
    assert_string_equal(c.file, home_file);

    /* A variable naming a missing file is skipped. */
    setenv("OS_CLIENT_CONFIG_FILE", "/nonexistent/x.yaml", 1);
    assert_int_equal(cli_clouds_load("c", &c, &err), 0);
    assert_string_equal(c.auth_url, "http://cwd");
}

static void test_cloud_from_env(void **state)
{
    static const char *const vars[] = { "OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD",
                                        "OS_PROJECT_NAME", "OS_INTERFACE" };
    char *old[5];
    cli_cloud c;
    cl_error err;

    (void)state;
    for (size_t i = 0; i < 5; i++) {
        old[i] = dup_env(vars[i]);
        unsetenv(vars[i]);
    }
    assert_int_equal(cli_cloud_from_env(&c, &err), -ENOENT);
    setenv("OS_AUTH_URL", "http://k:5000/v3", 1);
    setenv("OS_USERNAME", "admin", 1);
    assert_int_equal(cli_cloud_from_env(&c, &err), -EINVAL);
    assert_non_null(strstr(err.message, "auth.password"));
    setenv("OS_PASSWORD", "pw", 1);
    setenv("OS_PROJECT_NAME", "admin", 1);
    assert_int_equal(cli_cloud_from_env(&c, &err), 0);
    assert_string_equal(c.name, "envvars");
    assert_string_equal(c.password, "pw");
    assert_string_equal(c.interface, "public");
    for (size_t i = 0; i < 5; i++)
        restore_env(vars[i], old[i]);
}

static void test_auth_url_normalize(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        { "http://k:5000", "http://k:5000/v3" },
        { "http://k:5000/", "http://k:5000/v3" },
        { "http://k:5000/v3", "http://k:5000/v3" },
        { "http://k:5000/v3/", "http://k:5000/v3" },
        { "https://k/identity", "https://k/identity/v3" },
        { "https://k/identity/v3//", "https://k/identity/v3" },
        { "http://k:5000/v2.0", "http://k:5000/v2.0" },
        { "http://k/v3x", "http://k/v3x/v3" },
        { "http://k/v", "http://k/v/v3" },
    };
    char out[256];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(cli_auth_url_normalize(cases[i].in, out, sizeof(out)), 0);
        assert_string_equal(out, cases[i].out);
    }
    assert_int_equal(cli_auth_url_normalize("", out, sizeof(out)), -EINVAL);
    assert_int_equal(cli_auth_url_normalize("ftp://k", out, sizeof(out)), -EINVAL);
    assert_int_equal(cli_auth_url_normalize("http://", out, sizeof(out)), -EINVAL);
    assert_int_equal(cli_auth_url_normalize("http://k:5000?x=1", out, sizeof(out)), -EINVAL);
    assert_int_equal(cli_auth_url_normalize("http://k:5000", out, 10), -ENAMETOOLONG);
}

/* ---- output ---- */

static char *render(cli_format fmt, const char *const *headers, size_t ncols,
                    const char *rows_json)
{
    json_object *rows = json_tokener_parse(rows_json);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    assert_non_null(rows);
    assert_non_null(f);
    assert_int_equal(cli_print_list(f, fmt, headers, ncols, rows), 0);
    assert_int_equal(fclose(f), 0);
    json_object_put(rows);
    return buf;
}

static void test_table_render(void **state)
{
    static const char *const headers[] = { "ID", "Name", "RAM", "Public" };
    char *text;

    (void)state;
    text = render(CLI_FMT_TABLE, headers, 4,
                  "[[\"a1\", \"web\", 512, true], [\"b2\", \"longer-name\", 16384, null]]");
    assert_string_equal(text,
                        "+----+-------------+-------+--------+\n"
                        "| ID | Name        |   RAM | Public |\n"
                        "+----+-------------+-------+--------+\n"
                        "| a1 | web         |   512 | True   |\n"
                        "| b2 | longer-name | 16384 |        |\n"
                        "+----+-------------+-------+--------+\n");
    free(text);

    /* UTF-8 counts as characters, escapes are defused, multi-line cells grow the row. */
    text = render(CLI_FMT_TABLE, headers, 2,
                  "[[\"\\u00e9t\\u00e9\", \"evil\\u001b[31m\"], [\"x\", \"two\\nlines\"]]");
    assert_string_equal(text,
                        "+-----+-----------+\n"
                        "| ID  | Name      |\n"
                        "+-----+-----------+\n"
                        "| \xc3\xa9t\xc3\xa9 | evil?[31m |\n"
                        "| x   | two       |\n"
                        "|     | lines     |\n"
                        "+-----+-----------+\n");
    free(text);

    /* An empty list is the header box only. */
    text = render(CLI_FMT_TABLE, headers, 2, "[]");
    assert_string_equal(text, "+----+------+\n| ID | Name |\n+----+------+\n");
    free(text);
}

static void test_json_render(void **state)
{
    static const char *const headers[] = { "ID", "Name", "RAM", "Public" };
    char *text;
    json_object *doc, *row, *v;
    cl_error err;

    (void)state;
    text = render(CLI_FMT_JSON, headers, 4,
                  "[[\"a1\", \"web/1\", 512, true], [\"b2\", \"x\", 16384, null]]");
    assert_int_equal(cl_json_parse(text, strlen(text), &doc, &err), 0);
    assert_true(json_object_is_type(doc, json_type_array));
    assert_int_equal(json_object_array_length(doc), 2);
    row = json_object_array_get_idx(doc, 0);
    assert_true(json_object_object_get_ex(row, "Name", &v));
    assert_string_equal(json_object_get_string(v), "web/1");
    assert_true(json_object_object_get_ex(row, "RAM", &v));
    assert_true(json_object_is_type(v, json_type_int)); /* types survive */
    assert_int_equal(json_object_get_int(v), 512);
    assert_true(json_object_object_get_ex(row, "Public", &v));
    assert_true(json_object_get_boolean(v));
    assert_true(json_object_object_get_ex(json_object_array_get_idx(doc, 1), "Public", &v));
    assert_null(v);
    assert_null(strstr(text, "\\/")); /* no needless slash escapes */
    assert_int_equal(text[strlen(text) - 1], '\n');
    json_object_put(doc);
    free(text);

    /* A show: Field/Value table, or the object itself. */
    doc = json_tokener_parse("{\"id\": \"a1\", \"ram\": 512}");
    {
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);

        assert_int_equal(cli_print_show(f, CLI_FMT_TABLE, doc), 0);
        assert_int_equal(fclose(f), 0);
        assert_string_equal(buf, "+-------+-------+\n"
                                 "| Field | Value |\n"
                                 "+-------+-------+\n"
                                 "| id    | a1    |\n"
                                 "| ram   | 512   |\n"
                                 "+-------+-------+\n");
        free(buf);
    }
    json_object_put(doc);
}

/* ---- a fake Keystone + Nova on loopback ---- */

typedef struct fake_api {
    cl_http_server *srv;
    uint16_t port;
    pthread_mutex_t lock;
    int auth_calls;
    int slow_polls;      /* GETs of the server that stays in BUILD */
    int dying_polls;     /* GETs of the server being deleted */
    char last_version_header[32];
} fake_api;

static json_object *make_server(const char *id, const char *name, const char *status,
                                const char *fault)
{
    json_object *s = json_object_new_object();
    json_object *flavor = json_object_new_object();
    json_object *addrs = json_object_new_object();
    json_object *net = json_object_new_array();
    json_object *a = json_object_new_object();

    json_object_object_add(s, "id", json_object_new_string(id));
    json_object_object_add(s, "name", json_object_new_string(name));
    json_object_object_add(s, "status", json_object_new_string(status));
    json_object_object_add(flavor, "id", json_object_new_string("f1"));
    json_object_object_add(s, "flavor", flavor);
    json_object_object_add(s, "image", json_object_new_string(""));
    json_object_object_add(a, "addr", json_object_new_string("10.0.0.5"));
    json_object_array_add(net, a);
    json_object_object_add(addrs, "private", net);
    json_object_object_add(s, "addresses", addrs);
    json_object_object_add(s, "OS-EXT-STS:task_state",
                           strcmp(status, "BUILD") == 0 ? json_object_new_string("spawning")
                                                        : NULL);
    if (fault) {
        json_object *f = json_object_new_object();

        json_object_object_add(f, "code", json_object_new_int(500));
        json_object_object_add(f, "message", json_object_new_string(fault));
        json_object_object_add(s, "fault", f);
    }
    return s;
}

#define ID_WEB "11111111-1111-4111-8111-111111111111"
#define ID_DUP1 "22222222-2222-4222-8222-222222222222"
#define ID_DUP2 "33333333-3333-4333-8333-333333333333"
#define ID_BAD "44444444-4444-4444-8444-444444444444"
#define ID_SLOW "55555555-5555-4555-8555-555555555555"
#define ID_DYING "66666666-6666-4666-8666-666666666666"

static json_object *all_servers(void)
{
    json_object *list = json_object_new_array();

    json_object_array_add(list, make_server(ID_WEB, "web1", "ACTIVE", NULL));
    json_object_array_add(list, make_server(ID_DUP1, "dup", "ACTIVE", NULL));
    json_object_array_add(list, make_server(ID_DUP2, "dup", "ACTIVE", NULL));
    json_object_array_add(list, make_server(ID_BAD, "bad", "ERROR",
                                            "No valid host was found. There are not enough hosts available."));
    json_object_array_add(list, make_server(ID_SLOW, "slow", "BUILD", NULL));
    return list;
}

static bool authorised(const cl_http_req *req, cl_http_resp *resp, fake_api *api)
{
    const char *tok = cl_http_req_header(req, "X-Auth-Token");
    const char *mv = cl_http_req_header(req, "X-OpenStack-Nova-API-Version");

    pthread_mutex_lock(&api->lock);
    cl_strlcpy(api->last_version_header, mv ? mv : "", sizeof(api->last_version_header));
    pthread_mutex_unlock(&api->lock);
    if (tok && strcmp(tok, "tok-123") == 0)
        return true;
    cl_http_resp_errorf(resp, CL_E_UNAUTHORIZED, "bad token");
    return false;
}

static void h_tokens(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    fake_api *api = ud;
    json_object *body = NULL;
    const char *user = NULL, *pass = NULL, *dom = NULL, *proj = NULL;
    char text[2048];

    pthread_mutex_lock(&api->lock);
    api->auth_calls++;
    pthread_mutex_unlock(&api->lock);
    if (cl_http_req_json(req, &body, NULL) < 0) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "no body");
        return;
    }
    cl_json_get_str(body, "auth.identity.password.user.name", false, &user, NULL);
    cl_json_get_str(body, "auth.identity.password.user.password", false, &pass, NULL);
    cl_json_get_str(body, "auth.identity.password.user.domain.name", false, &dom, NULL);
    cl_json_get_str(body, "auth.scope.project.name", false, &proj, NULL);
    if (!user || strcmp(user, "admin") != 0 || !pass || strcmp(pass, "secret") != 0 ||
        !dom || strcmp(dom, "Default") != 0 || !proj || strcmp(proj, "admin") != 0) {
        json_object_put(body);
        cl_http_resp_raw(resp, 401, "application/json",
                         "{\"error\": {\"code\": 401, \"message\": \"The request you have made "
                         "requires authentication.\", \"title\": \"Unauthorized\"}}",
                         strlen("{\"error\": {\"code\": 401, \"message\": \"The request you have made "
                                "requires authentication.\", \"title\": \"Unauthorized\"}}"));
        return;
    }
    json_object_put(body);
    snprintf(text, sizeof(text),
             "{\"token\": {\"methods\": [\"password\"], \"catalog\": ["
             "{\"type\": \"identity\", \"name\": \"keystone\", \"endpoints\": ["
             "{\"interface\": \"public\", \"region_id\": \"RegionOne\", \"url\": \"http://127.0.0.1:%u/v3/\"}]},"
             "{\"type\": \"compute\", \"name\": \"nova\", \"endpoints\": ["
             "{\"interface\": \"internal\", \"region_id\": \"RegionOne\", \"url\": \"http://internal:8774/v2.1\"},"
             "{\"interface\": \"public\", \"region_id\": \"RegionTwo\", \"region\": \"RegionTwo\", \"url\": \"http://two:8774/v2.1\"},"
             "{\"interface\": \"public\", \"region_id\": \"RegionOne\", \"url\": \"http://127.0.0.1:%u/v2.1/\"}]}]}}",
             api->port, api->port);
    cl_http_resp_header(resp, "X-Subject-Token", "tok-123");
    cl_http_resp_raw(resp, 201, "application/json", text, strlen(text));
}

static void h_server(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    fake_api *api = ud;
    const char *id = cl_http_req_param(req, "id");
    json_object *list, *wrap;

    if (!authorised(req, resp, api))
        return;
    if (strcmp(id, ID_DYING) == 0) {
        int n;

        pthread_mutex_lock(&api->lock);
        n = ++api->dying_polls;
        pthread_mutex_unlock(&api->lock);
        if (n < 3) {
            wrap = json_object_new_object();
            json_object_object_add(wrap, "server", make_server(ID_DYING, "dying", "ACTIVE", NULL));
            cl_http_resp_json(resp, 200, wrap);
            return;
        }
    }
    if (strcmp(id, ID_SLOW) == 0) {
        pthread_mutex_lock(&api->lock);
        api->slow_polls++;
        pthread_mutex_unlock(&api->lock);
    }
    list = all_servers();
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *s = json_object_array_get_idx(list, i);
        json_object *v;

        if (json_object_object_get_ex(s, "id", &v) &&
            strcmp(json_object_get_string(v), id) == 0) {
            wrap = json_object_new_object();
            json_object_object_add(wrap, "server", json_object_get(s));
            json_object_put(list);
            cl_http_resp_json(resp, 200, wrap);
            return;
        }
    }
    json_object_put(list);
    cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Instance %s could not be found.", id);
}

static void h_servers_detail(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    json_object *wrap;

    if (!authorised(req, resp, ud))
        return;
    wrap = json_object_new_object();
    json_object_object_add(wrap, "servers", all_servers());
    cl_http_resp_json(resp, 200, wrap);
}

static void h_flavors_detail(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    static const char text[] =
        "{\"flavors\": [{\"id\": \"f1\", \"name\": \"m1.tiny\", \"ram\": 512, \"disk\": 1,"
        " \"vcpus\": 1, \"OS-FLV-EXT-DATA:ephemeral\": 0, \"os-flavor-access:is_public\": true}]}";

    if (!authorised(req, resp, ud))
        return;
    cl_http_resp_raw(resp, 200, "application/json", text, strlen(text));
}

static void h_flavor(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    if (!authorised(req, resp, ud))
        return;
    cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Flavor %s could not be found.",
                        cl_http_req_param(req, "id"));
}

static const cl_http_route fake_routes[] = {
    { "POST", "/v3/auth/tokens", h_tokens },
    { "GET", "/v2.1/servers/detail", h_servers_detail },
    { "GET", "/v2.1/servers/{id}", h_server },
    { "GET", "/v2.1/flavors/detail", h_flavors_detail },
    { "GET", "/v2.1/flavors/{id}", h_flavor },
};

static int api_setup(void **state)
{
    fake_api *api = calloc(1, sizeof(*api));
    cl_http_opts o = {
        .service = "fake", .bind_addr = "127.0.0.1", .port = 0, .threads = 2,
        .routes = fake_routes, .nroutes = sizeof(fake_routes) / sizeof(fake_routes[0]),
    };
    cl_error err;

    assert_non_null(api);
    pthread_mutex_init(&api->lock, NULL);
    o.ud = api;
    cl_http_client_global_init();
    assert_int_equal(cl_http_server_start(&o, &api->srv, &err), 0);
    api->port = cl_http_server_port(api->srv);
    assert_true(api->port > 0);
    *state = api;
    return 0;
}

static int api_teardown(void **state)
{
    fake_api *api = *state;

    cl_http_server_stop(api->srv);
    pthread_mutex_destroy(&api->lock);
    free(api);
    return 0;
}

static void fill_cloud(cli_cloud *c, const fake_api *api)
{
    memset(c, 0, sizeof(*c));
    cl_strlcpy(c->name, "test", sizeof(c->name));
    snprintf(c->auth_url, sizeof(c->auth_url), "http://127.0.0.1:%u/", api->port);
    cl_strlcpy(c->username, "admin", sizeof(c->username));
    cl_strlcpy(c->password, "secret", sizeof(c->password));
    cl_strlcpy(c->project_name, "admin", sizeof(c->project_name));
    cl_strlcpy(c->interface, "public", sizeof(c->interface));
}

static void test_auth_catalog(void **state)
{
    fake_api *api = *state;
    cli_cloud *c = malloc(sizeof(*c));
    cli_session s = { 0 };
    char want[128];
    cl_error err;

    assert_non_null(c);
    fill_cloud(c, api);
    assert_int_equal(cli_authenticate(c, 5000, &s, &err), 0);
    assert_string_equal(s.token, "tok-123");
    /* Without a region the first public compute endpoint is taken (RegionTwo's). */
    assert_string_equal(s.compute_url, "http://two:8774/v2.1");
    cli_session_clear(&s);

    cl_strlcpy(c->region_name, "RegionOne", sizeof(c->region_name));
    assert_int_equal(cli_authenticate(c, 5000, &s, &err), 0);
    snprintf(want, sizeof(want), "http://127.0.0.1:%u/v2.1", api->port); /* slash trimmed */
    assert_string_equal(s.compute_url, want);
    cli_session_clear(&s);

    cl_strlcpy(c->interface, "internal", sizeof(c->interface));
    assert_int_equal(cli_authenticate(c, 5000, &s, &err), 0);
    assert_string_equal(s.compute_url, "http://internal:8774/v2.1");
    cli_session_clear(&s);

    cl_strlcpy(c->interface, "admin", sizeof(c->interface));
    assert_true(cli_authenticate(c, 5000, &s, &err) < 0);
    assert_non_null(strstr(err.message, "No compute endpoint with interface 'admin'"));
    assert_null(s.token);

    /* Wrong password: the HTTP status and Keystone's message reach the user. */
    cl_strlcpy(c->interface, "public", sizeof(c->interface));
    cl_strlcpy(c->password, "wrong", sizeof(c->password));
    assert_int_equal(cli_authenticate(c, 5000, &s, &err), -EACCES);
    assert_non_null(strstr(err.message, "HTTP 401"));
    assert_non_null(strstr(err.message, "requires authentication"));
    assert_null(s.token);

    pthread_mutex_lock(&api->lock);
    assert_int_equal(api->auth_calls, 5);
    pthread_mutex_unlock(&api->lock);
    free(c);
}

/* A ctx logged in to the fake API with output captured in memory. */
typedef struct captured {
    cli_ctx ctx;
    char *out, *err;
    size_t out_len, err_len;
} captured;

static void capture_start(captured *cap, fake_api *api, cli_format fmt)
{
    cli_cloud *c = malloc(sizeof(*c));
    cl_error err;

    assert_non_null(c);
    memset(cap, 0, sizeof(*cap));
    fill_cloud(c, api);
    cl_strlcpy(c->region_name, "RegionOne", sizeof(c->region_name));
    assert_int_equal(cli_authenticate(c, 5000, &cap->ctx.sess, &err), 0);
    free(c);
    cap->ctx.fmt = fmt;
    cap->ctx.out = open_memstream(&cap->out, &cap->out_len);
    cap->ctx.err = open_memstream(&cap->err, &cap->err_len);
    assert_non_null(cap->ctx.out);
    assert_non_null(cap->ctx.err);
    cap->ctx.poll_ms = 20;
}

static void capture_end(captured *cap)
{
    assert_int_equal(fclose(cap->ctx.out), 0);
    assert_int_equal(fclose(cap->ctx.err), 0);
    cap->ctx.out = cap->ctx.err = NULL;
}

static void capture_free(captured *cap)
{
    cli_session_clear(&cap->ctx.sess);
    free(cap->out);
    free(cap->err);
}

static void test_server_show_lookup(void **state)
{
    fake_api *api = *state;
    captured cap;
    cl_error err;

    capture_start(&cap, api, CLI_FMT_TABLE);
    /* By name: GET /servers/web1 answers 404, the list finds it. */
    assert_int_equal(cli_cmd_server_show(&cap.ctx, "web1", &err), CLI_EXIT_OK);
    assert_int_equal(cli_cmd_server_show(&cap.ctx, "nope", &err), CLI_EXIT_NOT_FOUND);
    assert_string_equal(err.message, "No server with a name or ID of 'nope' exists.");
    assert_int_equal(cli_cmd_server_show(&cap.ctx, "dup", &err), CLI_EXIT_API);
    assert_string_equal(err.message, "More than one server exists with the name 'dup'.");
    capture_end(&cap);
    assert_non_null(strstr(cap.out, "| id                    | " ID_WEB " |"));
    assert_non_null(strstr(cap.out, "| addresses             | private=10.0.0.5"));
    assert_non_null(strstr(cap.out, "| flavor                | f1 "));
    assert_null(strstr(cap.out, "dup")); /* failures print nothing on stdout */
    pthread_mutex_lock(&api->lock);
    assert_string_equal(api->last_version_header, "2.1");
    pthread_mutex_unlock(&api->lock);
    capture_free(&cap);
}

static void test_server_list_json(void **state)
{
    fake_api *api = *state;
    captured cap;
    cl_error err;
    json_object *doc, *v;

    capture_start(&cap, api, CLI_FMT_JSON);
    assert_int_equal(cli_cmd_server_list(&cap.ctx, false, &err), CLI_EXIT_OK);
    capture_end(&cap);
    assert_int_equal(cl_json_parse(cap.out, cap.out_len, &doc, &err), 0);
    assert_int_equal(json_object_array_length(doc), 5);
    assert_true(json_object_object_get_ex(json_object_array_get_idx(doc, 0), "Flavor", &v));
    assert_string_equal(json_object_get_string(v), "m1.tiny"); /* id resolved to name */
    assert_true(json_object_object_get_ex(json_object_array_get_idx(doc, 0), "Networks", &v));
    assert_string_equal(json_object_get_string(v), "private=10.0.0.5");
    assert_int_equal(cap.err_len, 0);
    json_object_put(doc);
    capture_free(&cap);
}

static void test_wait_states(void **state)
{
    fake_api *api = *state;
    captured cap;
    cl_error err;
    int64_t t0;

    capture_start(&cap, api, CLI_FMT_TABLE);
    /* ERROR: exit 4 with the fault message. */
    assert_int_equal(cli_wait_server(&cap.ctx, ID_BAD, "bad", false, cl_mono_ms() + 5000, &err),
                     CLI_EXIT_ERROR);
    assert_non_null(strstr(err.message, "No valid host was found"));
    /* ACTIVE at once. */
    assert_int_equal(cli_wait_server(&cap.ctx, ID_WEB, "web1", false, cl_mono_ms() + 5000, &err),
                     CLI_EXIT_OK);
    /* Stuck in BUILD: exit 5 at the deadline, after several polls. */
    t0 = cl_mono_ms();
    assert_int_equal(cli_wait_server(&cap.ctx, ID_SLOW, "slow", false, t0 + 300, &err),
                     CLI_EXIT_TIMEOUT);
    assert_true(cl_mono_ms() - t0 >= 300);
    assert_true(cl_mono_ms() - t0 < 3000);
    assert_non_null(strstr(err.message, "Timed out"));
    assert_non_null(strstr(err.message, "BUILD"));
    /* Delete: ACTIVE twice, then 404 = gone. */
    assert_int_equal(cli_wait_server(&cap.ctx, ID_DYING, "dying", true, cl_mono_ms() + 5000, &err),
                     CLI_EXIT_OK);
    capture_end(&cap);
    pthread_mutex_lock(&api->lock);
    assert_true(api->slow_polls >= 3);
    assert_int_equal(api->dying_polls, 3);
    pthread_mutex_unlock(&api->lock);
    /* Not a tty: one line per state change, not one per poll. */
    {
        const char *first = strstr(cap.err, "Waiting for server slow: BUILD (spawning)");

        assert_non_null(first);
        assert_null(strstr(first + 1, "Waiting for server slow:"));
    }
    assert_non_null(strstr(cap.err, "Waiting for server dying: ACTIVE ... 0s\n"));
    assert_non_null(strstr(cap.err, "Waiting for server dying: DELETED"));
    assert_int_equal(cap.out_len, 0);
    capture_free(&cap);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_clouds_full_entry, tmpenv_setup, tmpenv_teardown),
        cmocka_unit_test_setup_teardown(test_clouds_missing_cloud, tmpenv_setup, tmpenv_teardown),
        cmocka_unit_test_setup_teardown(test_clouds_missing_auth_url, tmpenv_setup,
                                        tmpenv_teardown),
        cmocka_unit_test_setup_teardown(test_clouds_malformed, tmpenv_setup, tmpenv_teardown),
        cmocka_unit_test_setup_teardown(test_clouds_search_precedence, tmpenv_setup,
                                        tmpenv_teardown),
        cmocka_unit_test(test_cloud_from_env),
        cmocka_unit_test(test_auth_url_normalize),
        cmocka_unit_test(test_table_render),
        cmocka_unit_test(test_json_render),
        cmocka_unit_test_setup_teardown(test_auth_catalog, api_setup, api_teardown),
        cmocka_unit_test_setup_teardown(test_server_show_lookup, api_setup, api_teardown),
        cmocka_unit_test_setup_teardown(test_server_list_json, api_setup, api_teardown),
        cmocka_unit_test_setup_teardown(test_wait_states, api_setup, api_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
