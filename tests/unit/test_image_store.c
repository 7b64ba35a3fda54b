/*
 * test_image_store.c - nube-image through real HTTP on loopback.
 *
 * Each test starts its own service (port 0, a mkdtemp state dir, its own image.db) and
 * talks to it with libcloud's HTTP client or a raw socket (for uploads cut off half-way):
 * upload/download round trip with checksums and ranges, malicious uploads ending killed
 * with their reason, interrupted uploads leaving nothing behind, restart after a crash
 * mid-upload, listing with pagination, PATCH, tags, delete, blob de-duplication, auth,
 * quotas (also with uploads in parallel, which must not overshoot the byte quota), and
 * the visibility rules (called directly and through img_db_list with
 * non-admin identities, and through HTTP with tokens sealed for two projects with the
 * shared key, as nube-api issues them), including the members API.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "http.h"
#include "img.h"
#include "json.h"
#include "log.h"
#include "token.h"

#define TOKEN "test-admin-token"

typedef struct fixture {
    char dir[64];
    img_config cfg;
    img_service *svc;
    char base[64];
} fixture;

static void start(fixture *f)
{
    cl_error err = {0};

    assert_int_equal(img_service_start(&f->cfg, &f->svc, &err), 0);
    snprintf(f->base, sizeof(f->base), "http://127.0.0.1:%u", img_service_port(f->svc));
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    cl_error err = {0};

    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/nube-image-test-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(cl_config_defaults(img_config_keys, img_config_nkeys, &f->cfg, &err), 0);
    assert_int_equal(cl_config_set(img_config_keys, img_config_nkeys, &f->cfg, "DEFAULT",
                                   "state_dir", f->dir, &err), 0);
    assert_int_equal(cl_config_set(img_config_keys, img_config_nkeys, &f->cfg, "image",
                                   "port", "0", &err), 0);
    assert_int_equal(cl_config_set(img_config_keys, img_config_nkeys, &f->cfg, "auth",
                                   "admin_token", TOKEN, &err), 0);
    start(f);
    *state = f;
    return 0;
}

static void rm_rf(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;

    if (!d) {
        unlink(path);
        return;
    }
    while ((e = readdir(d))) {
        char sub[1024];
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
        rm_rf(sub);
    }
    closedir(d);
    rmdir(path);
}

static int teardown(void **state)
{
    fixture *f = *state;

    img_service_stop(f->svc);
    cl_config_free(img_config_keys, img_config_nkeys, &f->cfg);
    rm_rf(f->dir);
    free(f);
    return 0;
}

/* ---- helpers ---- */

static long http(fixture *f, const char *method, const char *path, const char *ctype,
                 const void *body, size_t len, const char *extra, cl_http_result *res)
{
    char url[512], ct[128];
    const char *hdrs[4] = {"X-Auth-Token: " TOKEN, NULL, NULL, NULL};
    cl_error err = {0};
    int n = 1;

    if (ctype) {
        snprintf(ct, sizeof(ct), "Content-Type: %s", ctype);
        hdrs[n++] = ct;
    }
    if (extra)
        hdrs[n++] = extra;
    snprintf(url, sizeof(url), "%s%s", f->base, path);
    memset(res, 0, sizeof(*res));
    assert_int_equal(cl_http_request(method, url, hdrs, body, len, 10000, res, &err), 0);
    return res->status;
}

static json_object *http_json(fixture *f, const char *method, const char *path,
                              const char *ctype, const char *body, long want)
{
    cl_http_result res;
    json_object *o = NULL;
    long st = http(f, method, path, ctype, body, body ? strlen(body) : 0, NULL, &res);

    if (st != want)
        fail_msg("%s %s: status %ld, want %ld: %s", method, path, st, want, res.body);
    if (res.body_len)
        assert_int_equal(cl_json_parse(res.body, res.body_len, &o, NULL), 0);
    cl_http_result_free(&res);
    return o;
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v = cl_json_path(o, key);
    return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

/* Create an image; returns its id in out. */
static void create(fixture *f, const char *name, const char *disk_format, char *out)
{
    char body[256];
    json_object *o;

    snprintf(body, sizeof(body), "{\"name\": \"%s\", \"disk_format\": \"%s\","
             " \"container_format\": \"bare\"}", name, disk_format);
    o = http_json(f, "POST", "/v2/images", "application/json", body, 201);
    assert_string_equal(jstr(o, "status"), "queued");
    cl_strlcpy(out, jstr(o, "id"), CL_UUID_LEN);
    json_object_put(o);
}

static long upload(fixture *f, const char *id, const void *data, size_t len,
                   cl_http_result *res)
{
    char path[128];

    snprintf(path, sizeof(path), "/v2/images/%s/file", id);
    return http(f, "PUT", path, "application/octet-stream", data, len, NULL, res);
}

static json_object *show(fixture *f, const char *id)
{
    char path[256];

    snprintf(path, sizeof(path), "/v2/images/%s", id);
    return http_json(f, "GET", path, NULL, NULL, 200);
}

static void digest_hex(const EVP_MD *md, const void *data, size_t len, char *out)
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;

    assert_int_equal(EVP_Digest(data, len, d, &n, md, NULL), 1);
    for (unsigned int i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* Files under the blob dir: temp files and blobs. */
static void count_files(fixture *f, int *temps, int *blobs)
{
    char dir[256];
    DIR *d;
    struct dirent *e;

    *temps = *blobs = 0;
    snprintf(dir, sizeof(dir), "%s/images/blobs", f->dir);
    d = opendir(dir);
    assert_non_null(d);
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, ".tmp-", 5) == 0)
            (*temps)++;
        else if (strlen(e->d_name) == 2 && e->d_name[0] != '.') {
            char sub[300];
            DIR *s;
            struct dirent *g;
            assert_true(snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name) <
                        (int)sizeof(sub));
            s = opendir(sub);
            assert_non_null(s);
            while ((g = readdir(s)))
                if (g->d_name[0] != '.')
                    (*blobs)++;
            closedir(s);
        }
    }
    closedir(d);
}

static unsigned char *random_bytes(size_t len, unsigned seed)
{
    unsigned char *b = malloc(len);

    assert_non_null(b);
    for (size_t i = 0; i < len; i++) {
        seed = seed * 1103515245u + 12345u;
        b[i] = (unsigned char)(seed >> 16);
    }
    b[0] = 0; /* never a compression magic */
    return b;
}

/* ---- tests ---- */

static void test_versions_and_auth(void **state)
{
    fixture *f = *state;
    cl_http_result res;
    char url[128];
    cl_error err = {0};
    json_object *o;

    snprintf(url, sizeof(url), "%s/", f->base);
    assert_int_equal(cl_http_request("GET", url, NULL, NULL, 0, 5000, &res, &err), 0);
    assert_int_equal(res.status, 300);
    assert_non_null(strstr(res.body, "\"v2.15\""));
    cl_http_result_free(&res);

    snprintf(url, sizeof(url), "%s/v2/images", f->base);
    assert_int_equal(cl_http_request("GET", url, NULL, NULL, 0, 5000, &res, &err), 0);
    assert_int_equal(res.status, 401);
    cl_http_result_free(&res);
    const char *bad[] = {"X-Auth-Token: " TOKEN "x", NULL};
    assert_int_equal(cl_http_request("GET", url, bad, NULL, 0, 5000, &res, &err), 0);
    assert_int_equal(res.status, 401);
    cl_http_result_free(&res);

    o = http_json(f, "GET", "/v2/schemas/image", NULL, NULL, 200);
    assert_string_equal(jstr(o, "name"), "image");
    json_object_put(o);
    o = http_json(f, "GET", "/v2/images/8b0d1c54-9b1d-4ac5-9d2f-000000000000", NULL, NULL,
                  404);
    assert_non_null(cl_json_path(o, "itemNotFound"));
    json_object_put(o);

    snprintf(url, sizeof(url), "%s/healthz", f->base);
    assert_int_equal(cl_http_request("GET", url, NULL, NULL, 0, 5000, &res, &err), 0);
    assert_int_equal(res.status, 200);
    cl_http_result_free(&res);
    snprintf(url, sizeof(url), "%s/metrics", f->base);
    assert_int_equal(cl_http_request("GET", url, NULL, NULL, 0, 5000, &res, &err), 0);
    assert_non_null(strstr(res.body, "nube_image_uploads_total"));
    cl_http_result_free(&res);
}

static void test_round_trip(void **state)
{
    fixture *f = *state;
    /* Over twice the blob writer's 4 MiB ring, past its 8 MiB writeback step, and ending
     * in a partial slot. */
    size_t len = 9 * 1024 * 1024 + 123;
    unsigned char *data = random_bytes(len, 7);
    char id[CL_UUID_LEN], md5[33], sha256[65], sha512[129], path[128], hdr[128];
    char blob[512];
    struct stat st;
    cl_http_result res;
    json_object *o;
    int temps, blobs;

    create(f, "round-trip", "raw", id);
    assert_int_equal(upload(f, id, data, len, &res), 204);
    cl_http_result_free(&res);

    digest_hex(EVP_md5(), data, len, md5);
    digest_hex(EVP_sha512(), data, len, sha512);
    o = show(f, id);
    assert_string_equal(jstr(o, "status"), "active");
    assert_string_equal(jstr(o, "checksum"), md5);
    assert_string_equal(jstr(o, "os_hash_algo"), "sha512");
    assert_string_equal(jstr(o, "os_hash_value"), sha512);
    assert_int_equal(json_object_get_int64(cl_json_path(o, "size")), len);
    assert_int_equal(json_object_get_int64(cl_json_path(o, "virtual_size")), len);
    json_object_put(o);

    snprintf(path, sizeof(path), "/v2/images/%s/file", id);
    assert_int_equal(http(f, "GET", path, NULL, NULL, 0, NULL, &res), 200);
    assert_int_equal(res.body_len, len);
    assert_memory_equal(res.body, data, len);
    assert_int_equal(cl_http_result_header(&res, "Content-MD5", hdr, sizeof(hdr)), 0);
    assert_string_equal(hdr, md5);
    cl_http_result_free(&res);

    assert_int_equal(http(f, "GET", path, NULL, NULL, 0, "Range: bytes=100-199", &res), 206);
    assert_int_equal(res.body_len, 100);
    assert_memory_equal(res.body, data + 100, 100);
    assert_int_equal(cl_http_result_header(&res, "Content-Range", hdr, sizeof(hdr)), 0);
    snprintf(path, sizeof(path), "bytes 100-199/%zu", len);
    assert_string_equal(hdr, path);
    cl_http_result_free(&res);
    snprintf(path, sizeof(path), "/v2/images/%s/file", id);
    assert_int_equal(http(f, "GET", path, NULL, NULL, 0, "Range: bytes=-10", &res), 206);
    assert_memory_equal(res.body, data + len - 10, 10);
    cl_http_result_free(&res);
    assert_int_equal(http(f, "GET", path, NULL, NULL, 0, "Range: bytes=999999999-", &res),
                     416);
    cl_http_result_free(&res);

    /* A second upload to an active image is a conflict. */
    assert_int_equal(upload(f, id, data, 10, &res), 409);
    cl_http_result_free(&res);
    count_files(f, &temps, &blobs);
    assert_int_equal(temps, 0);
    assert_int_equal(blobs, 1);
    /* The blob is stored under the sha256 of the bytes, with all of them. */
    digest_hex(EVP_sha256(), data, len, sha256);
    snprintf(blob, sizeof(blob), "%s/images/blobs/%.2s/%s", f->dir, sha256, sha256 + 2);
    assert_int_equal(stat(blob, &st), 0);
    assert_int_equal(st.st_size, len);
    free(data);
}

/* A qcow2 header with a backing file pointing at a host file. */
static unsigned char *backing_qcow2(size_t len)
{
    unsigned char *b = calloc(1, len);

    assert_non_null(b);
    memcpy(b, "QFI\xfb\0\0\0\3", 8);
    b[15] = 0x80;       /* backing_file_offset = 0x80 */
    b[19] = 11;         /* backing_file_size */
    b[23] = 16;         /* cluster_bits */
    b[28] = 0x40;       /* size = 1 GiB (0x40000000) */
    memcpy(b + 0x80, "/etc/shadow", 11);
    return b;
}

static void assert_killed(fixture *f, const char *id, const char *needle)
{
    json_object *o = show(f, id);
    const char *reason = jstr(o, "nube_status_reason");

    assert_string_equal(jstr(o, "status"), "killed");
    if (!reason || !strstr(reason, needle))
        fail_msg("reason '%s' lacks '%s'", reason ? reason : "(none)", needle);
    json_object_put(o);
}

static void test_malicious_uploads_killed(void **state)
{
    fixture *f = *state;
    size_t len = 256 * 1024;
    unsigned char *q = backing_qcow2(len);
    char id[CL_UUID_LEN];
    cl_http_result res;
    int temps, blobs;

    create(f, "evil-backing", "qcow2", id);
    assert_int_equal(upload(f, id, q, len, &res), 400);
    assert_non_null(strstr(res.body, "backing file"));
    cl_http_result_free(&res);
    assert_killed(f, id, "backing file");

    /* CVE-2024-40767: qcow2 bytes declared raw. */
    q[15] = 0; /* no backing file: a genuine qcow2 otherwise */
    create(f, "qcow2-as-raw", "raw", id);
    assert_int_equal(upload(f, id, q, len, &res), 400);
    assert_non_null(strstr(res.body, "declared disk_format 'raw'"));
    cl_http_result_free(&res);
    assert_killed(f, id, "qcow2");

    /* Short image: refused only at the end of the body. */
    create(f, "short-aki", "aki", id);
    assert_int_equal(upload(f, id, "not a kernel", 12, &res), 400);
    cl_http_result_free(&res);
    assert_killed(f, id, "no Linux kernel header");

    /* And the genuine one passes. */
    create(f, "good-qcow2", "qcow2", id);
    assert_int_equal(upload(f, id, q, len, &res), 204);
    cl_http_result_free(&res);
    json_object *o = show(f, id);
    assert_string_equal(jstr(o, "status"), "active");
    assert_int_equal(json_object_get_int64(cl_json_path(o, "virtual_size")), 1 << 30);
    json_object_put(o);

    count_files(f, &temps, &blobs);
    assert_int_equal(temps, 0);
    assert_int_equal(blobs, 1);
    free(q);
}

static int connect_port(fixture *f)
{
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons(img_service_port(f->svc))};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    return fd;
}

static void write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        assert_true(n > 0);
        p += n;
        len -= (size_t)n;
    }
}

/* Poll (with a deadline) until the image leaves "saving". */
static void wait_not_saving(fixture *f, const char *id, char *status, size_t len)
{
    int64_t deadline = cl_mono_ms() + 5000;

    for (;;) {
        json_object *o = show(f, id);
        cl_strlcpy(status, jstr(o, "status"), len);
        json_object_put(o);
        if (strcmp(status, "saving") != 0 || cl_mono_ms() > deadline)
            return;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void test_cut_off_upload(void **state)
{
    fixture *f = *state;
    char id[CL_UUID_LEN], req[512], status[16];
    unsigned char *data = random_bytes(300 * 1024, 3);
    int fd, temps, blobs;
    cl_http_result res;

    create(f, "cut", "raw", id);
    fd = connect_port(f);
    snprintf(req, sizeof(req),
             "PUT /v2/images/%s/file HTTP/1.1\r\nHost: x\r\nX-Auth-Token: " TOKEN "\r\n"
             "Content-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n",
             id);
    write_all(fd, req, strlen(req));
    write_all(fd, data, 300 * 1024);
    /* Wait until the server has started saving, then hang up half-way. */
    {
        int64_t deadline = cl_mono_ms() + 5000;
        do {
            json_object *o = show(f, id);
            cl_strlcpy(status, jstr(o, "status"), sizeof(status));
            json_object_put(o);
        } while (strcmp(status, "saving") != 0 && cl_mono_ms() < deadline);
        assert_string_equal(status, "saving");
    }
    close(fd);
    wait_not_saving(f, id, status, sizeof(status));
    assert_string_equal(status, "queued");
    count_files(f, &temps, &blobs);
    assert_int_equal(temps, 0);
    assert_int_equal(blobs, 0);

    /* The client may simply upload again. */
    assert_int_equal(upload(f, id, data, 300 * 1024, &res), 204);
    cl_http_result_free(&res);
    free(data);
}

static void test_restart_mid_upload(void **state)
{
    fixture *f = *state;
    char id[CL_UUID_LEN], path[512];
    cl_db *db = NULL;
    cl_error err = {0};
    int temps, blobs, fd;
    const char *orphan = "ab00000000000000000000000000000000000000000000000000000000000001";

    create(f, "crashed", "raw", id);
    img_service_stop(f->svc);
    f->svc = NULL;
    /* What a crash mid-upload leaves: the row in saving, a temp file, and (crash between
     * rename and row update) a blob no row references. */
    snprintf(path, sizeof(path), "%s/image.db", f->dir);
    assert_int_equal(cl_db_open(path, img_db_migrations, img_db_nmigrations, 1000, &db, &err),
                     0);
    assert_int_equal(img_db_set_status(db, id, "queued", "saving", NULL), 0);
    cl_db_close(db);
    snprintf(path, sizeof(path), "%s/images/blobs/.tmp-abc123", f->dir);
    fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "partial", 7), 7);
    close(fd);
    snprintf(path, sizeof(path), "%s/images/blobs/ab", f->dir);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof(path), "%s/images/blobs/ab/%s", f->dir, orphan + 2);
    fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    close(fd);
    count_files(f, &temps, &blobs);
    assert_int_equal(temps, 1);
    assert_int_equal(blobs, 1);

    start(f);
    assert_killed(f, id, "restart");
    count_files(f, &temps, &blobs);
    assert_int_equal(temps, 0);
    assert_int_equal(blobs, 0);
}

static void test_list_pagination(void **state)
{
    fixture *f = *state;
    char id[CL_UUID_LEN], path[512];
    const char *names[] = {"d", "b", "e", "a", "c"};
    const char *want = "abcde";
    size_t got = 0;
    json_object *o;

    for (size_t i = 0; i < 5; i++)
        create(f, names[i], "raw", id);
    cl_strlcpy(path, "/v2/images?limit=2&sort_key=name&sort_dir=asc", sizeof(path));
    for (int page = 0; page < 3; page++) {
        o = http_json(f, "GET", path, NULL, NULL, 200);
        json_object *imgs = cl_json_path(o, "images");
        for (size_t i = 0; i < json_object_array_length(imgs); i++) {
            const char *n = jstr(json_object_array_get_idx(imgs, i), "name");
            assert_int_equal(n[0], want[got]);
            got++;
        }
        if (page < 2) {
            assert_non_null(jstr(o, "next"));
            cl_strlcpy(path, jstr(o, "next"), sizeof(path));
        } else {
            assert_null(jstr(o, "next"));
        }
        json_object_put(o);
    }
    assert_int_equal(got, 5);

    o = http_json(f, "GET", "/v2/images?name=c", NULL, NULL, 200);
    assert_int_equal(json_object_array_length(cl_json_path(o, "images")), 1);
    json_object_put(o);
    o = http_json(f, "GET", "/v2/images?sort_key=name&sort_dir=desc&limit=1", NULL, NULL, 200);
    assert_string_equal(jstr(json_object_array_get_idx(cl_json_path(o, "images"), 0), "name"),
                        "e");
    json_object_put(o);
    o = http_json(f, "GET", "/v2/images?sort_key=bogus", NULL, NULL, 400);
    json_object_put(o);
    o = http_json(f, "GET", "/v2/images?marker=8b0d1c54-9b1d-4ac5-9d2f-000000000000", NULL,
                  NULL, 400);
    json_object_put(o);
}

static void test_patch_and_tags(void **state)
{
    fixture *f = *state;
    char id[CL_UUID_LEN], path[128];
    const char *ct = "application/openstack-images-v2.1-json-patch";
    json_object *o;

    create(f, "old", "qcow2", id);
    snprintf(path, sizeof(path), "/v2/images/%s", id);
    o = http_json(f, "PATCH", path, ct,
                  "[{\"op\": \"replace\", \"path\": \"/name\", \"value\": \"new\"},"
                  " {\"op\": \"add\", \"path\": \"/os_distro\", \"value\": \"cirros\"},"
                  " {\"op\": \"add\", \"path\": \"/hw~1x\", \"value\": \"1\"},"
                  " {\"op\": \"replace\", \"path\": \"/min_ram\", \"value\": 512},"
                  " {\"op\": \"replace\", \"path\": \"/visibility\", \"value\": \"public\"}]",
                  200);
    assert_string_equal(jstr(o, "name"), "new");
    assert_string_equal(jstr(o, "os_distro"), "cirros");
    assert_string_equal(jstr(o, "hw/x"), "1");
    assert_string_equal(jstr(o, "visibility"), "public");
    assert_int_equal(json_object_get_int(cl_json_path(o, "min_ram")), 512);
    json_object_put(o);
    o = http_json(f, "PATCH", path, ct, "[{\"op\": \"remove\", \"path\": \"/os_distro\"}]", 200);
    assert_null(cl_json_path(o, "os_distro"));
    json_object_put(o);
    /* Read-only attributes, wrong media type, bad values. */
    json_object_put(http_json(f, "PATCH", path, ct,
                              "[{\"op\": \"replace\", \"path\": \"/status\", \"value\": "
                              "\"active\"}]", 403));
    json_object_put(http_json(f, "PATCH", path, "application/json", "[]", 415));
    json_object_put(http_json(f, "PATCH", path, ct,
                              "[{\"op\": \"replace\", \"path\": \"/disk_format\", \"value\": "
                              "\"vhd\"}]", 400));
    o = show(f, id);
    assert_string_equal(jstr(o, "status"), "queued");
    assert_string_equal(jstr(o, "disk_format"), "qcow2");
    json_object_put(o);

    snprintf(path, sizeof(path), "/v2/images/%s/tags/gold", id);
    json_object_put(http_json(f, "PUT", path, NULL, NULL, 204));
    json_object_put(http_json(f, "PUT", path, NULL, NULL, 204)); /* idempotent */
    o = show(f, id);
    assert_int_equal(json_object_array_length(cl_json_path(o, "tags")), 1);
    json_object_put(o);
    json_object_put(http_json(f, "DELETE", path, NULL, NULL, 204));
    json_object_put(http_json(f, "DELETE", path, NULL, NULL, 404));

    /* Create-time validation. */
    json_object_put(http_json(f, "POST", "/v2/images", "application/json",
                              "{\"disk_format\": \"vhd\"}", 400));
    json_object_put(http_json(f, "POST", "/v2/images", "application/json",
                              "{\"status\": \"active\"}", 403));
}

static void test_dedup_and_delete(void **state)
{
    fixture *f = *state;
    size_t len = 200 * 1024;
    unsigned char *data = random_bytes(len, 11);
    char a[CL_UUID_LEN], b[CL_UUID_LEN], path[128];
    cl_http_result res;
    int temps, blobs;

    create(f, "a", "raw", a);
    create(f, "b", "raw", b);
    assert_int_equal(upload(f, a, data, len, &res), 204);
    cl_http_result_free(&res);
    assert_int_equal(upload(f, b, data, len, &res), 204);
    cl_http_result_free(&res);
    count_files(f, &temps, &blobs);
    assert_int_equal(blobs, 1); /* one blob for two images */

    snprintf(path, sizeof(path), "/v2/images/%s", a);
    json_object_put(http_json(f, "DELETE", path, NULL, NULL, 204));
    json_object_put(http_json(f, "GET", path, NULL, NULL, 404));
    count_files(f, &temps, &blobs);
    assert_int_equal(blobs, 1); /* b still uses it */
    snprintf(path, sizeof(path), "/v2/images/%s/file", b);
    assert_int_equal(http(f, "GET", path, NULL, NULL, 0, NULL, &res), 200);
    assert_memory_equal(res.body, data, len);
    cl_http_result_free(&res);

    /* Protected images cannot be deleted. */
    snprintf(path, sizeof(path), "/v2/images/%s", b);
    json_object_put(http_json(f, "PATCH", path, "application/openstack-images-v2.1-json-patch",
                              "[{\"op\":\"replace\",\"path\":\"/protected\",\"value\":true}]",
                              200));
    json_object_put(http_json(f, "DELETE", path, NULL, NULL, 403));
    json_object_put(http_json(f, "PATCH", path, "application/openstack-images-v2.1-json-patch",
                              "[{\"op\":\"replace\",\"path\":\"/protected\",\"value\":false}]",
                              200));
    json_object_put(http_json(f, "DELETE", path, NULL, NULL, 204));
    count_files(f, &temps, &blobs);
    assert_int_equal(blobs, 0);
    free(data);
}

static void test_quota(void **state)
{
    fixture *f = *state;
    char id[CL_UUID_LEN];
    unsigned char *data = random_bytes(100 * 1024, 5);
    cl_http_result res;

    f->cfg.quota_images_per_project = 2;
    f->cfg.quota_bytes_per_project = 150 * 1024;
    create(f, "q1", "raw", id);
    assert_int_equal(upload(f, id, data, 100 * 1024, &res), 204);
    cl_http_result_free(&res);
    create(f, "q2", "raw", id);
    /* 100 KiB stored, 100 KiB more does not fit in 150 KiB. */
    assert_int_equal(upload(f, id, data + 1, 100 * 1024 - 1, &res), 413);
    assert_non_null(strstr(res.body, "Quota"));
    cl_http_result_free(&res);
    json_object_put(http_json(f, "POST", "/v2/images", "application/json",
                              "{\"name\": \"q3\"}", 403));
    free(data);
}

static void test_visibility_rules(void **state)
{
    fixture *f = *state;
    img_identity admin = {.project_id = "p-admin", .is_admin = true};
    img_identity alice = {.project_id = "p-alice"}, bob = {.project_id = "p-bob"};
    const img_visibility all[] = {IMG_VIS_PRIVATE, IMG_VIS_SHARED, IMG_VIS_COMMUNITY,
                                  IMG_VIS_PUBLIC};
    const char *ids[4] = {"00000000-0000-4000-8000-000000000001",
                          "00000000-0000-4000-8000-000000000002",
                          "00000000-0000-4000-8000-000000000003",
                          "00000000-0000-4000-8000-000000000004"};
    img_list_query q = {.sort_key = "id", .limit = 100};
    cl_db *db = NULL;
    cl_error err = {0};
    json_object *arr;
    bool more;
    char path[256];

    /* The pure rule. */
    for (size_t i = 0; i < 4; i++) {
        assert_true(img_can_see(&admin, "p-alice", all[i], false));
        assert_true(img_can_see(&alice, "p-alice", all[i], false));
    }
    assert_false(img_can_see(&bob, "p-alice", IMG_VIS_PRIVATE, false));
    assert_false(img_can_see(&bob, "p-alice", IMG_VIS_SHARED, false));
    assert_true(img_can_see(&bob, "p-alice", IMG_VIS_SHARED, true));
    assert_true(img_can_see(&bob, "p-alice", IMG_VIS_COMMUNITY, false));
    assert_true(img_can_see(&bob, "p-alice", IMG_VIS_PUBLIC, false));
    assert_false(img_can_modify(&bob, "p-alice"));
    assert_true(img_can_modify(&alice, "p-alice"));
    assert_true(img_can_modify(&admin, "p-alice"));

    /* The same rule in the list query: alice owns one image of each visibility. */
    snprintf(path, sizeof(path), "%s/vis.db", f->dir);
    assert_int_equal(cl_db_open(path, img_db_migrations, img_db_nmigrations, 1000, &db, &err),
                     0);
    for (size_t i = 0; i < 4; i++) {
        img_record r = {.visibility = all[i], .size = -1, .virtual_size = -1,
                        .created_at = 1, .updated_at = 1};
        cl_strlcpy(r.id, ids[i], sizeof(r.id));
        cl_strlcpy(r.owner, "p-alice", sizeof(r.owner));
        cl_strlcpy(r.status, "queued", sizeof(r.status));
        assert_int_equal(img_db_insert(db, &r), 0);
    }
    assert_int_equal(img_db_list(db, &alice, &q, &arr, &more), 0);
    assert_int_equal(json_object_array_length(arr), 3); /* community unlisted by default */
    json_object_put(arr);
    assert_int_equal(img_db_list(db, &bob, &q, &arr, &more), 0);
    assert_int_equal(json_object_array_length(arr), 1); /* public only */
    assert_string_equal(jstr(json_object_array_get_idx(arr, 0), "id"), ids[3]);
    json_object_put(arr);
    assert_int_equal(img_db_add_member(db, ids[1], "p-bob", "accepted"), 0);
    assert_true(img_db_is_member(db, ids[1], "p-bob"));
    assert_int_equal(img_db_list(db, &bob, &q, &arr, &more), 0);
    assert_int_equal(json_object_array_length(arr), 2); /* + the shared one */
    json_object_put(arr);
    q.visibility = "community";
    assert_int_equal(img_db_list(db, &bob, &q, &arr, &more), 0);
    assert_int_equal(json_object_array_length(arr), 1);
    assert_string_equal(jstr(json_object_array_get_idx(arr, 0), "id"), ids[2]);
    json_object_put(arr);
    q.visibility = NULL;
    /* A marker bob may not see is unknown to him. */
    q.marker = ids[0];
    assert_int_equal(img_db_list(db, &bob, &q, &arr, &more), -ENOENT);
    cl_db_close(db);
}

static void test_concurrent_uploads(void **state)
{
    fixture *f = *state;
    enum { N = 4 };
    char ids[N][CL_UUID_LEN], req[512], status[16];
    size_t len = 512 * 1024;
    unsigned char *data[N];
    int fds[N];

    /* Open N uploads at once over raw sockets, interleave their bodies, then finish. */
    for (int i = 0; i < N; i++) {
        char name[8];
        snprintf(name, sizeof(name), "c%d", i);
        create(f, name, "raw", ids[i]);
        data[i] = random_bytes(len, 100 + (unsigned)i);
        fds[i] = connect_port(f);
        snprintf(req, sizeof(req),
                 "PUT /v2/images/%s/file HTTP/1.1\r\nHost: x\r\nX-Auth-Token: " TOKEN "\r\n"
                 "Connection: close\r\nContent-Length: %zu\r\n\r\n", ids[i], len);
        write_all(fds[i], req, strlen(req));
    }
    for (size_t off = 0; off < len; off += 64 * 1024)
        for (int i = 0; i < N; i++)
            write_all(fds[i], data[i] + off, 64 * 1024);
    for (int i = 0; i < N; i++) {
        char resp[256] = "";
        ssize_t n = read(fds[i], resp, sizeof(resp) - 1);
        assert_true(n > 0);
        assert_non_null(strstr(resp, " 204 "));
        close(fds[i]);
        wait_not_saving(f, ids[i], status, sizeof(status));
        assert_string_equal(status, "active");
        free(data[i]);
    }
}

/* Read an HTTP response head from a raw socket (10 s deadline); returns its status. */
static int read_status(int fd)
{
    char resp[1024];
    size_t got = 0;
    struct timeval tv = {.tv_sec = 10};
    int status = 0;

    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
    while (got < sizeof(resp) - 1) {
        ssize_t n = read(fd, resp + got, sizeof(resp) - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
        resp[got] = '\0';
        if (strstr(resp, "\r\n\r\n"))
            break;
    }
    resp[got] = '\0';
    assert_int_equal(sscanf(resp, "HTTP/1.1 %d", &status), 1);
    return status;
}

/* Bytes the images ids hold, and how many are active / queued. */
static int64_t stored_bytes(fixture *f, char ids[][CL_UUID_LEN], int n, int *active,
                            int *queued)
{
    int64_t sum = 0;
    char status[16];

    *active = *queued = 0;
    for (int i = 0; i < n; i++) {
        json_object *o;
        wait_not_saving(f, ids[i], status, sizeof(status));
        o = show(f, ids[i]);
        if (strcmp(jstr(o, "status"), "active") == 0) {
            (*active)++;
            sum += json_object_get_int64(cl_json_path(o, "size"));
        } else if (strcmp(jstr(o, "status"), "queued") == 0) {
            (*queued)++;
        }
        json_object_put(o);
    }
    return sum;
}

/* The byte quota holds with uploads in parallel: each upload reserves its bytes (all of
 * Content-Length at the start, or piece by piece when chunked), so of 4 parallel 4 MiB
 * uploads against a 10 MiB quota exactly 2 succeed and the others get 413 and go back to
 * queued, nothing is leaked, and a client that hangs up frees its reservation. */
static void test_quota_concurrent_uploads(void **state)
{
    fixture *f = *state;
    enum { N = 4 };
    const size_t mib = 1024 * 1024, len = 4 * mib, piece = 64 * 1024;
    char ids[N][CL_UUID_LEN], req[512], path[256];
    unsigned char *data[N];
    int fds[N], temps, blobs, active, queued;
    cl_http_result res;

    f->cfg.quota_bytes_per_project = 10 * (int64_t)mib;
    for (int i = 0; i < N; i++)
        data[i] = random_bytes(len, 200 + (unsigned)i);
    for (int chunked = 0; chunked < 2; chunked++) {
        int ok = 0, refused = 0;
        for (int i = 0; i < N; i++) {
            char name[16];
            snprintf(name, sizeof(name), "qc%d-%d", chunked, i);
            create(f, name, "raw", ids[i]);
            fds[i] = connect_port(f);
            snprintf(req, sizeof(req),
                     "PUT /v2/images/%s/file HTTP/1.1\r\nHost: x\r\nX-Auth-Token: " TOKEN
                     "\r\nConnection: close\r\nContent-Type: application/octet-stream\r\n"
                     "%s%s\r\n\r\n", ids[i],
                     chunked ? "Transfer-Encoding: chunked" : "Content-Length: ",
                     chunked ? "" : "4194304");
            write_all(fds[i], req, strlen(req));
        }
        /* Interleave the bodies piece by piece. */
        for (size_t off = 0; off < len; off += piece) {
            for (int i = 0; i < N; i++) {
                if (chunked) {
                    snprintf(req, sizeof(req), "%zx\r\n", piece);
                    write_all(fds[i], req, strlen(req));
                }
                write_all(fds[i], data[i] + off, piece);
                if (chunked)
                    write_all(fds[i], "\r\n", 2);
            }
        }
        for (int i = 0; i < N; i++) {
            int st;
            if (chunked)
                write_all(fds[i], "0\r\n\r\n", 5);
            st = read_status(fds[i]);
            close(fds[i]);
            if (st == 204)
                ok++;
            else if (st == 413)
                refused++;
            else
                fail_msg("upload %d (%s): status %d", i, chunked ? "chunked" : "length", st);
        }
        assert_int_equal(ok, 2);
        assert_int_equal(refused, 2);
        assert_true(stored_bytes(f, ids, N, &active, &queued) <=
                    f->cfg.quota_bytes_per_project);
        assert_int_equal(active, 2);
        assert_int_equal(queued, 2); /* refused for quota: queued again, as Glance */
        count_files(f, &temps, &blobs);
        assert_int_equal(temps, 0);
        assert_int_equal(blobs, 2);
        for (int i = 0; i < N; i++) {
            snprintf(path, sizeof(path), "/v2/images/%s", ids[i]);
            json_object_put(http_json(f, "DELETE", path, NULL, NULL, 204));
        }
        count_files(f, &temps, &blobs);
        assert_int_equal(blobs, 0);
    }

    /* An upload declaring 8 MiB holds them while it runs: 4 MiB more do not fit... */
    create(f, "holder", "raw", ids[0]);
    create(f, "other", "raw", ids[1]);
    fds[0] = connect_port(f);
    snprintf(req, sizeof(req),
             "PUT /v2/images/%s/file HTTP/1.1\r\nHost: x\r\nX-Auth-Token: " TOKEN "\r\n"
             "Content-Length: 8388608\r\n\r\n", ids[0]);
    write_all(fds[0], req, strlen(req));
    write_all(fds[0], data[0], mib);
    {
        char status[16] = "";
        int64_t deadline = cl_mono_ms() + 5000;
        do {
            json_object *o = show(f, ids[0]);
            cl_strlcpy(status, jstr(o, "status"), sizeof(status));
            json_object_put(o);
        } while (strcmp(status, "saving") != 0 && cl_mono_ms() < deadline);
        assert_string_equal(status, "saving");
    }
    assert_int_equal(upload(f, ids[1], data[1], len, &res), 413);
    assert_non_null(strstr(res.body, "Quota"));
    cl_http_result_free(&res);
    assert_int_equal(http(f, "GET", "/metrics", NULL, NULL, 0, NULL, &res), 200);
    assert_non_null(strstr(res.body, "nube_image_quota_reserved_bytes 8388608\n"));
    assert_non_null(strstr(res.body, "nube_image_uploads_in_progress 1\n"));
    cl_http_result_free(&res);
    /* With one upload allowed per project, a second one is refused whatever its size,
     * and the image stays queued. */
    f->cfg.quota_uploads_per_project = 1;
    assert_int_equal(upload(f, ids[1], data[1], 1024, &res), 413);
    assert_non_null(strstr(res.body, "uploads in progress, the limit is 1"));
    cl_http_result_free(&res);
    f->cfg.quota_uploads_per_project = 8;
    /* ...until its client hangs up: the reservation goes with it. */
    close(fds[0]);
    stored_bytes(f, ids, 1, &active, &queued);
    assert_int_equal(queued, 1);
    assert_int_equal(upload(f, ids[1], data[1], len, &res), 204);
    cl_http_result_free(&res);
    count_files(f, &temps, &blobs);
    assert_int_equal(temps, 0);
    assert_int_equal(blobs, 1);
    assert_int_equal(http(f, "GET", "/metrics", NULL, NULL, 0, NULL, &res), 200);
    assert_non_null(strstr(res.body, "nube_image_quota_reserved_bytes 0\n"));
    assert_non_null(strstr(res.body, "nube_image_uploads_in_progress 0\n"));
    cl_http_result_free(&res);
    for (int i = 0; i < N; i++)
        free(data[i]);
}

/* ---- sealed tokens from nube-api's key, two projects, members ---- */

#define P_ALICE "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define P_BOB "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

static void seal(const cl_token_key *key, const char *project, unsigned roles, int64_t ttl_ms,
                 char *out)
{
    cl_auth a = {.roles = roles, .issued_ms = cl_now_ms(), .expires_ms = cl_now_ms() + ttl_ms};
    cl_error err = {0};

    cl_strlcpy(a.user_id, "0123456789abcdef0123456789abcdef", sizeof(a.user_id));
    cl_strlcpy(a.domain_id, "default", sizeof(a.domain_id));
    cl_strlcpy(a.project_id, project, sizeof(a.project_id));
    assert_int_equal(cl_token_issue(key, &a, out, CL_TOKEN_MAX, &err), 0);
}

/* One request with a given token; returns the status, *out the parsed body (or NULL). */
static long as(fixture *f, const char *token, const char *method, const char *path,
               const char *body, json_object **out)
{
    char url[512], hdr[CL_TOKEN_MAX + 32];
    const char *hdrs[3] = {hdr, "Content-Type: application/json", NULL};
    cl_http_result res;
    cl_error err = {0};
    long st;

    snprintf(hdr, sizeof(hdr), "X-Auth-Token: %s", token);
    snprintf(url, sizeof(url), "%s%s", f->base, path);
    memset(&res, 0, sizeof(res));
    assert_int_equal(cl_http_request(method, url, hdrs, body, body ? strlen(body) : 0, 10000,
                                     &res, &err), 0);
    st = res.status;
    if (out) {
        *out = NULL;
        if (res.body_len)
            assert_int_equal(cl_json_parse(res.body, res.body_len, out, NULL), 0);
    }
    cl_http_result_free(&res);
    return st;
}

static size_t list_len(fixture *f, const char *token, const char *path)
{
    json_object *o;
    size_t n;

    assert_int_equal(as(f, token, "GET", path, NULL, &o), 200);
    n = json_object_array_length(cl_json_path(o, "images"));
    json_object_put(o);
    return n;
}

static void test_sealed_tokens_and_members(void **state)
{
    fixture *f = *state;
    char keypath[128], alice[CL_TOKEN_MAX], bob[CL_TOKEN_MAX], bob_reader[CL_TOKEN_MAX],
        admin[CL_TOKEN_MAX], expired[CL_TOKEN_MAX], other[CL_TOKEN_MAX], id[CL_UUID_LEN],
        path[256];
    cl_token_key key, wrong;
    cl_error err = {0};
    json_object *o;
    const unsigned member = CL_ROLE_BIT(CL_ROLE_MEMBER) | CL_ROLE_BIT(CL_ROLE_READER);

    /* nube-api's key at the default path (<state_dir>/token.key): restart to load it. */
    snprintf(keypath, sizeof(keypath), "%s/token.key", f->dir);
    assert_int_equal(cl_token_key_load(keypath, true, &key, &err), 0);
    img_service_stop(f->svc);
    start(f);
    seal(&key, P_ALICE, member, 60000, alice);
    seal(&key, P_BOB, member, 60000, bob);
    seal(&key, P_BOB, CL_ROLE_BIT(CL_ROLE_READER), 60000, bob_reader);
    seal(&key, "5a0c5e2b9b6f4f3e8d1c2b3a4f5e6d7c", CL_ROLE_BIT(CL_ROLE_ADMIN) | member, 60000,
         admin);
    seal(&key, P_ALICE, member, -1000, expired);
    memset(&wrong, 0x5a, sizeof(wrong));
    seal(&wrong, P_ALICE, member, 60000, other);

    /* Bad tokens: expired, sealed with another key, garbage. */
    assert_int_equal(as(f, expired, "GET", "/v2/images", NULL, NULL), 401);
    assert_int_equal(as(f, other, "GET", "/v2/images", NULL, NULL), 401);
    assert_int_equal(as(f, "nb1_AAAA", "GET", "/v2/images", NULL, NULL), 401);

    /* Alice creates and uploads an image: it is hers (owner = her project). */
    assert_int_equal(as(f, alice, "POST", "/v2/images", "{\"name\": \"a\", \"disk_format\": "
                        "\"raw\", \"container_format\": \"bare\", \"visibility\": "
                        "\"private\"}", &o), 201);
    assert_string_equal(jstr(o, "owner"), P_ALICE);
    cl_strlcpy(id, jstr(o, "id"), sizeof(id));
    json_object_put(o);
    snprintf(path, sizeof(path), "/v2/images/%s", id);

    /* Private: bob neither lists nor sees it (404, not 403); admin sees everything. */
    assert_int_equal(list_len(f, alice, "/v2/images"), 1);
    assert_int_equal(list_len(f, bob, "/v2/images"), 0);
    assert_int_equal(list_len(f, admin, "/v2/images"), 1);
    assert_int_equal(as(f, bob, "GET", path, NULL, NULL), 404);
    assert_int_equal(as(f, admin, "GET", path, NULL, NULL), 200);
    assert_int_equal(as(f, bob, "DELETE", path, NULL, NULL), 404);
    /* A reader may not create; a member may not make an image public. */
    assert_int_equal(as(f, bob_reader, "POST", "/v2/images", "{\"name\": \"r\"}", NULL), 403);
    assert_int_equal(as(f, bob, "POST", "/v2/images", "{\"name\": \"p\", \"visibility\": "
                        "\"public\"}", NULL), 403);

    /* Members only on shared images. */
    snprintf(path, sizeof(path), "/v2/images/%s/members", id);
    assert_int_equal(as(f, alice, "POST", path, "{\"member\": \"" P_BOB "\"}", NULL), 403);
    snprintf(path, sizeof(path), "/v2/images/%s", id);
    {
        char hdr[CL_TOKEN_MAX + 32], url[512];
        const char *hdrs[3] = {hdr, "Content-Type: application/openstack-images-v2.1-json-"
                                    "patch", NULL};
        const char *patch = "[{\"op\": \"replace\", \"path\": \"/visibility\", "
                            "\"value\": \"shared\"}]";
        cl_http_result res = {0};
        snprintf(hdr, sizeof(hdr), "X-Auth-Token: %s", alice);
        snprintf(url, sizeof(url), "%s%s", f->base, path);
        assert_int_equal(cl_http_request("PATCH", url, hdrs, patch, strlen(patch), 10000, &res,
                                         &err), 0);
        assert_int_equal(res.status, 200);
        cl_http_result_free(&res);
    }
    snprintf(path, sizeof(path), "/v2/images/%s/members", id);
    /* Bob cannot add himself; alice adds bob: pending, not listed for bob yet. */
    assert_int_equal(as(f, bob, "POST", path, "{\"member\": \"" P_BOB "\"}", NULL), 404);
    assert_int_equal(as(f, alice, "POST", path, "{\"member\": \"" P_BOB "\"}", &o), 200);
    assert_string_equal(jstr(o, "status"), "pending");
    assert_string_equal(jstr(o, "member_id"), P_BOB);
    assert_string_equal(jstr(o, "image_id"), id);
    json_object_put(o);
    assert_int_equal(as(f, alice, "POST", path, "{\"member\": \"" P_BOB "\"}", NULL), 409);
    assert_int_equal(as(f, alice, "POST", path, "{\"member\": 7}", NULL), 400);
    assert_int_equal(list_len(f, bob, "/v2/images"), 0);
    snprintf(path, sizeof(path), "/v2/images/%s", id);
    assert_int_equal(as(f, bob, "GET", path, NULL, NULL), 200); /* by id, as in Glance */
    snprintf(path, sizeof(path), "/v2/images/%s/members", id);
    assert_int_equal(as(f, alice, "GET", path, NULL, &o), 200);
    assert_int_equal(json_object_array_length(cl_json_path(o, "members")), 1);
    json_object_put(o);
    /* Bob (pending) sees his own entry, and only he decides. */
    assert_int_equal(as(f, bob, "GET", path, NULL, &o), 200);
    assert_int_equal(json_object_array_length(cl_json_path(o, "members")), 1);
    json_object_put(o);
    snprintf(path, sizeof(path), "/v2/images/%s/members/%s", id, P_BOB);
    assert_int_equal(as(f, alice, "PUT", path, "{\"status\": \"accepted\"}", NULL), 403);
    assert_int_equal(as(f, bob, "PUT", path, "{\"status\": \"maybe\"}", NULL), 400);
    assert_int_equal(as(f, bob_reader, "PUT", path, "{\"status\": \"accepted\"}", NULL), 403);
    assert_int_equal(as(f, bob, "PUT", path, "{\"status\": \"accepted\"}", &o), 200);
    assert_string_equal(jstr(o, "status"), "accepted");
    json_object_put(o);
    assert_int_equal(as(f, bob, "GET", path, NULL, &o), 200);
    assert_string_equal(jstr(o, "status"), "accepted");
    json_object_put(o);
    /* Accepted: bob lists and shows it, but cannot change it or its member list. */
    assert_int_equal(list_len(f, bob, "/v2/images"), 1);
    snprintf(path, sizeof(path), "/v2/images/%s", id);
    assert_int_equal(as(f, bob, "GET", path, NULL, NULL), 200);
    assert_int_equal(as(f, bob, "DELETE", path, NULL, NULL), 403);
    snprintf(path, sizeof(path), "/v2/images/%s/members/%s", id, P_BOB);
    assert_int_equal(as(f, bob, "DELETE", path, NULL, NULL), 403);
    /* Rejected: gone from bob's list again. */
    assert_int_equal(as(f, bob, "PUT", path, "{\"status\": \"rejected\"}", NULL), 200);
    assert_int_equal(list_len(f, bob, "/v2/images"), 0);
    /* Alice removes him: he no longer sees anything of it. */
    assert_int_equal(as(f, alice, "DELETE", path, NULL, NULL), 204);
    assert_int_equal(as(f, alice, "DELETE", path, NULL, NULL), 404);
    assert_int_equal(as(f, bob, "GET", path, NULL, NULL), 404);
    snprintf(path, sizeof(path), "/v2/images/%s", id);
    assert_int_equal(as(f, bob, "GET", path, NULL, NULL), 404);
    /* The static admin token still works next to sealed tokens. */
    assert_int_equal(list_len(f, TOKEN, "/v2/images"), 1);
    assert_int_equal(as(f, TOKEN, "GET", "/v2/schemas/member", NULL, &o), 200);
    assert_string_equal(jstr(o, "name"), "member");
    json_object_put(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_versions_and_auth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malicious_uploads_killed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_off_upload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_mid_upload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_pagination, setup, teardown),
        cmocka_unit_test_setup_teardown(test_patch_and_tags, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dedup_and_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quota, setup, teardown),
        cmocka_unit_test_setup_teardown(test_visibility_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_uploads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quota_concurrent_uploads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sealed_tokens_and_members, setup, teardown),
    };
    cl_log_init("test_image_store", CL_LOG_WARN, false);
    cl_http_client_global_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
