/*
 * test_image_cache.c - the agent's image cache against a real nube-image on loopback.
 *
 * The test starts nube-image in-process (port 0, a mkdtemp state dir holding the shared
 * token key), uploads an AMI-style set through HTTP (a "kernel" with the bzImage magic, a
 * gzip "ramdisk", a raw disk naming both), then resolves it as the agent does: first
 * resolve downloads the three files, a second instance reuses them (no download), a
 * project that may not see a private image gets -ENOENT (the cache mints tokens for the
 * instance's project), a corrupted blob in the store fails with a sha512 mismatch, and the
 * sweep keeps what instances use and removes the rest once idle.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "http.h"
#include "image_cache.h"
#include "img.h"
#include "json.h"
#include "token.h"

#define TOKEN "cache-test-admin-token"
#define ADMIN_PROJECT "5a0c5e2b9b6f4f3e8d1c2b3a4f5e6d7c"
#define OTHER_PROJECT "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define DISK_LEN (256 * 1024)

typedef struct fixture {
    char dir[64], base[64], keyfile[128], cache[128], inst[128];
    img_config cfg;
    img_service *svc;
    char kernel[CL_UUID_LEN], ramdisk[CL_UUID_LEN], disk[CL_UUID_LEN];
    unsigned char *disk_data;
} fixture;

static long req(fixture *f, const char *method, const char *path, const char *ctype,
                const void *body, size_t len, json_object **out)
{
    char url[512], ct[128];
    const char *hdrs[3] = {"X-Auth-Token: " TOKEN, ct, NULL};
    cl_http_result res = {0};
    cl_error err = {0};
    long st;

    snprintf(ct, sizeof(ct), "Content-Type: %s", ctype);
    snprintf(url, sizeof(url), "%s%s", f->base, path);
    assert_int_equal(cl_http_request(method, url, hdrs, body, len, 10000, &res, &err), 0);
    st = res.status;
    if (out)
        assert_int_equal(cl_json_parse(res.body, res.body_len, out, NULL), 0);
    cl_http_result_free(&res);
    return st;
}

/* Create and upload an image; its id into id. extra: more JSON members (or ""). */
static void add_image(fixture *f, const char *name, const char *fmt, const char *extra,
                      const void *data, size_t len, char *id)
{
    char body[1024], path[128];
    json_object *o;

    snprintf(body, sizeof(body), "{\"name\": \"%s\", \"disk_format\": \"%s\", "
             "\"container_format\": \"bare\"%s}", name, fmt, extra);
    assert_int_equal(req(f, "POST", "/v2/images", "application/json", body, strlen(body), &o),
                     201);
    cl_strlcpy(id, json_object_get_string(cl_json_path(o, "id")), CL_UUID_LEN);
    json_object_put(o);
    snprintf(path, sizeof(path), "/v2/images/%s/file", id);
    assert_int_equal(req(f, "PUT", path, "application/octet-stream", data, len, NULL), 204);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    cl_error err = {0};
    cl_token_key key;
    unsigned char kernel[4096] = {0}, ramdisk[2048];
    char extra[256];

    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/nube-imgcache-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->keyfile, sizeof(f->keyfile), "%s/token.key", f->dir);
    snprintf(f->cache, sizeof(f->cache), "%s/image-cache", f->dir);
    snprintf(f->inst, sizeof(f->inst), "%s/instances", f->dir);
    assert_int_equal(mkdir(f->inst, 0700), 0);
    assert_int_equal(cl_token_key_load(f->keyfile, true, &key, &err), 0);
    assert_int_equal(cl_config_defaults(img_config_keys, img_config_nkeys, &f->cfg, &err), 0);
    assert_int_equal(cl_config_set(img_config_keys, img_config_nkeys, &f->cfg, "DEFAULT",
                                   "state_dir", f->dir, &err), 0);
    assert_int_equal(cl_config_set(img_config_keys, img_config_nkeys, &f->cfg, "image",
                                   "port", "0", &err), 0);
    assert_int_equal(cl_config_set(img_config_keys, img_config_nkeys, &f->cfg, "auth",
                                   "admin_token", TOKEN, &err), 0);
    assert_int_equal(img_service_start(&f->cfg, &f->svc, &err), 0);
    snprintf(f->base, sizeof(f->base), "http://127.0.0.1:%u", img_service_port(f->svc));

    memcpy(kernel + 0x202, "HdrS", 4);
    memset(ramdisk, 0x42, sizeof(ramdisk));
    memcpy(ramdisk, "\x1f\x8b\x08\x00", 4);
    f->disk_data = malloc(DISK_LEN);
    assert_non_null(f->disk_data);
    for (size_t i = 0; i < DISK_LEN; i++)
        f->disk_data[i] = (unsigned char)('a' + i % 23);
    add_image(f, "k", "aki", "", kernel, sizeof(kernel), f->kernel);
    add_image(f, "r", "ari", "", ramdisk, sizeof(ramdisk), f->ramdisk);
    snprintf(extra, sizeof(extra), ", \"kernel_id\": \"%s\", \"ramdisk_id\": \"%s\", "
             "\"os_command_line\": \"console=ttyS0 quiet\", \"visibility\": \"private\"",
             f->kernel, f->ramdisk);
    add_image(f, "disk", "raw", extra, f->disk_data, DISK_LEN, f->disk);
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
    free(f->disk_data);
    free(f);
    return 0;
}

static agent_image_cache *open_cache(fixture *f, int64_t idle_s)
{
    agent_image_cache_opts o = {.endpoint = f->base, .token_key_file = f->keyfile,
                                .cache_dir = f->cache, .instances_dir = f->inst,
                                .max_idle_s = idle_s};
    agent_image_cache *c = NULL;
    cl_error err = {0};

    assert_int_equal(agent_image_cache_open(&o, &c, &err), 0);
    return c;
}

static void instance(fixture *f, cl_msg_instance *inst, const char *uuid, const char *project,
                     const char *image)
{
    char path[256];

    memset(inst, 0, sizeof(*inst));
    cl_strlcpy(inst->uuid, uuid, sizeof(inst->uuid));
    cl_strlcpy(inst->project_id, project, sizeof(inst->project_id));
    cl_strlcpy(inst->image_ref, image, sizeof(inst->image_ref));
    snprintf(path, sizeof(path), "%s/%s", f->inst, uuid);
    mkdir(path, 0700);
}

static int count_entries(fixture *f)
{
    DIR *d = opendir(f->cache);
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    while ((e = readdir(d)))
        n += strlen(e->d_name) == 64;
    closedir(d);
    return n;
}

static void test_download_reuse_sweep(void **state)
{
    fixture *f = *state;
    agent_image_cache *c = open_cache(f, 0);
    agent_image_files files;
    cl_msg_instance a, b;
    cl_error err = {0};
    char path[256];
    struct stat sb;

    instance(f, &a, "11111111-1111-4111-8111-111111111111", ADMIN_PROJECT, f->disk);
    assert_int_equal(agent_image_cache_resolve(c, &a, &files, &err), 0);
    assert_int_equal(agent_image_cache_downloads(c), 3);
    assert_string_equal(files.disk_format, "raw");
    assert_string_equal(files.cmdline, "console=ttyS0 quiet");
    assert_int_equal(stat(files.disk, &sb), 0);
    assert_int_equal(sb.st_size, DISK_LEN);
    assert_int_equal(sb.st_mode & 0777, 0444);
    assert_int_equal(stat(files.kernel, &sb), 0);
    assert_int_equal(stat(files.ramdisk, &sb), 0);
    assert_int_equal(count_entries(f), 3);

    /* A second instance: everything from the cache, nothing downloaded. */
    instance(f, &b, "22222222-2222-4222-8222-222222222222", ADMIN_PROJECT, f->disk);
    assert_int_equal(agent_image_cache_resolve(c, &b, &files, &err), 0);
    assert_int_equal(agent_image_cache_downloads(c), 3);
    assert_int_equal(agent_image_cache_hits(c), 3);

    /* Idle limit 0, but both instances use the files: the sweep keeps them. */
    assert_int_equal(agent_image_cache_sweep(c, cl_now_ms() + 10000), 0);
    snprintf(path, sizeof(path), "%s/%s", f->inst, a.uuid);
    assert_int_equal(rmdir(path), 0);
    assert_int_equal(agent_image_cache_sweep(c, cl_now_ms() + 10000), 0);
    snprintf(path, sizeof(path), "%s/%s", f->inst, b.uuid);
    assert_int_equal(rmdir(path), 0);
    /* The last user went: removed once idle (now + 10 s > 0 s). */
    assert_int_equal(agent_image_cache_sweep(c, cl_now_ms() + 10000), 3);
    assert_int_equal(count_entries(f), 0);
    agent_image_cache_free(c);

    /* A fresh cache with a long idle limit keeps released files. */
    c = open_cache(f, 3600);
    instance(f, &a, "33333333-3333-4333-8333-333333333333", ADMIN_PROJECT, f->disk);
    assert_int_equal(agent_image_cache_resolve(c, &a, &files, &err), 0);
    assert_int_equal(agent_image_cache_downloads(c), 3);
    snprintf(path, sizeof(path), "%s/%s", f->inst, a.uuid);
    assert_int_equal(rmdir(path), 0);
    assert_int_equal(agent_image_cache_sweep(c, cl_now_ms()), 0);
    assert_int_equal(count_entries(f), 3);
    assert_int_equal(agent_image_cache_sweep(c, cl_now_ms() + 3601 * 1000LL), 3);
    agent_image_cache_free(c);
}

static void test_unknown_and_invisible(void **state)
{
    fixture *f = *state;
    agent_image_cache *c = open_cache(f, 60);
    agent_image_files files;
    cl_msg_instance a;
    cl_error err = {0};

    /* Not a UUID (a local image_dir name) or unknown: -ENOENT, the caller looks locally. */
    instance(f, &a, "44444444-4444-4444-8444-444444444444", ADMIN_PROJECT, "cirros");
    assert_int_equal(agent_image_cache_resolve(c, &a, &files, &err), -ENOENT);
    instance(f, &a, "44444444-4444-4444-8444-444444444444", ADMIN_PROJECT,
             "00000000-0000-4000-8000-00000000beef");
    assert_int_equal(agent_image_cache_resolve(c, &a, &files, &err), -ENOENT);
    /* Another project may not boot the admin project's private image. */
    instance(f, &a, "44444444-4444-4444-8444-444444444444", OTHER_PROJECT, f->disk);
    assert_int_equal(agent_image_cache_resolve(c, &a, &files, &err), -ENOENT);
    assert_int_equal(agent_image_cache_downloads(c), 0);
    agent_image_cache_free(c);
}

static void test_corrupt_blob(void **state)
{
    fixture *f = *state;
    agent_image_cache *c = open_cache(f, 60);
    agent_image_files files;
    cl_msg_instance a;
    cl_error err = {0};
    unsigned char md[32];
    unsigned n = 0;
    char sha[65], path[1024];
    int fd;

    /* Flip a byte of the disk's blob in the store, behind nube-image's back. */
    EVP_Digest(f->disk_data, DISK_LEN, md, &n, EVP_sha256(), NULL);
    for (unsigned i = 0; i < n; i++)
        snprintf(sha + 2 * i, 3, "%02x", md[i]);
    assert_int_equal(img_blob_path(&f->svc->blobs, sha, path, sizeof(path)), 0);
    chmod(path, 0600);
    fd = open(path, O_WRONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "Z", 1, 1000), 1);
    close(fd);

    instance(f, &a, "55555555-5555-4555-8555-555555555555", ADMIN_PROJECT, f->disk);
    assert_true(agent_image_cache_resolve(c, &a, &files, &err) < 0);
    assert_non_null(strstr(err.message, "sha512 mismatch"));
    assert_int_equal(agent_image_cache_downloads(c), 0);
    assert_int_equal(count_entries(f), 0); /* nothing unverified got a name */
    agent_image_cache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_download_reuse_sweep, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_and_invisible, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_blob, setup, teardown),
    };

    cl_http_client_global_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
