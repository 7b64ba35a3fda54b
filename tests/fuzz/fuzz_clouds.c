/*
 * fuzz_clouds.c - clouds.yaml parsing of the nube CLI (cli_clouds_load_file) and
 * cli_auth_url_normalize(). A clouds.yaml is usually the operator's own file, but it is
 * also shared between tools and copied around; the parser must refuse garbage cleanly.
 *
 * The input is written to a memfd and loaded through /proc/self/fd/N for the cloud
 * names "nube" and "a". Invariants beyond "no crash":
 *  - a failure is -EINVAL/-ENOENT (or another negative errno) with err naming the file,
 *    and *out untouched;
 *  - a success has the fields clouds.h promises (auth_url, a user, a password, a
 *    project; interface defaulting to "public"), name and file as asked, every string
 *    terminated;
 *  - cli_auth_url_normalize() of the loaded auth_url (and of the raw input, with small
 *    buffers) returns a terminated http(s) URL that fits, or an error.
 */
#include <errno.h>
#include <string.h>

#include "clouds.h"
#include "fuzz_common.h"

static void check_normalize(const char *url, size_t outlen)
{
    char out[CLI_FIELD_MAX + 16];

    FUZZ_CHECK(outlen <= sizeof(out));
    memset(out, 'Q', sizeof(out));
    int r = cli_auth_url_normalize(url, out, outlen);
    FUZZ_CHECK(r == 0 || r == -EINVAL || r == -ENAMETOOLONG);
    /* Nothing written past outlen, whatever the answer. */
    for (size_t i = outlen; i < sizeof(out); i++)
        FUZZ_CHECK(out[i] == 'Q');
    if (r < 0)
        return;
    FUZZ_CHECK(memchr(out, '\0', outlen) != NULL);
    FUZZ_CHECK(strncmp(out, "http://", 7) == 0 || strncmp(out, "https://", 8) == 0);
    size_t n = strlen(out);
    FUZZ_CHECK(n > 0 && out[n - 1] != '/');
}

static void load(const char *path, const char *name)
{
    cli_cloud *c = malloc(sizeof(*c));
    cli_cloud *sentinel = malloc(sizeof(*sentinel));
    cl_error err = {0};

    FUZZ_CHECK(c && sentinel);
    memset(c, 0x5A, sizeof(*c));
    memcpy(sentinel, c, sizeof(*c));
    int r = cli_clouds_load_file(path, name, c, &err);
    if (r < 0) {
        fuzz_check_error(&err);
        FUZZ_CHECK(strstr(err.message, path) != NULL);
        FUZZ_CHECK(memcmp(c, sentinel, sizeof(*c)) == 0);
        goto out;
    }
    FUZZ_CHECK(r == 0);
    FUZZ_STR_OK(c->name);
    FUZZ_STR_OK(c->file);
    FUZZ_STR_OK(c->auth_url);
    FUZZ_STR_OK(c->username);
    FUZZ_STR_OK(c->user_id);
    FUZZ_STR_OK(c->password);
    FUZZ_STR_OK(c->project_name);
    FUZZ_STR_OK(c->project_id);
    FUZZ_STR_OK(c->user_domain_name);
    FUZZ_STR_OK(c->project_domain_name);
    FUZZ_STR_OK(c->region_name);
    FUZZ_STR_OK(c->interface);
    FUZZ_CHECK(strcmp(c->name, name) == 0 && strcmp(c->file, path) == 0);
    FUZZ_CHECK(c->auth_url[0] && (c->username[0] || c->user_id[0]) && c->password[0] &&
               (c->project_name[0] || c->project_id[0]) && c->interface[0]);
    check_normalize(c->auth_url, CLI_FIELD_MAX);
    check_normalize(c->auth_url, 24);
out:
    free(c);
    free(sentinel);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];

    if (size > 256 * 1024)
        return 0;
    int fd = fuzz_memfd(data, size, path, sizeof(path));
    FUZZ_CHECK(fd >= 0);
    load(path, "nube");
    load(path, "a");
    close(fd);

    /* The raw bytes as an auth_url, up to the first NUL, with a few buffer sizes. */
    char url[CLI_FIELD_MAX];
    size_t n = size < sizeof(url) - 1 ? size : sizeof(url) - 1;
    memcpy(url, data, n);
    url[n] = '\0';
    check_normalize(url, CLI_FIELD_MAX);
    check_normalize(url, 1 + (size ? data[0] % 48 : 0));
    return 0;
}
