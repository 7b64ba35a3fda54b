/*
 * fuzz_config.c - cl_config_load() on arbitrary file contents (the bytes go to a memfd,
 * loaded through /proc/self/fd/N), with a key table that has every type, bounded and
 * unbounded numbers and keys in [DEFAULT] and in named sections.
 *
 * Invariants beyond "no crash" (and no leak: cl_config_free runs on every path):
 *  - a failure is -EINVAL (or -ENOMEM/-EIO) with err naming the file;
 *  - a success leaves every value within its type and bounds, every string non-NULL;
 *  - the loaded values, written back as "[section]\nname=value" lines, load again to the
 *    same values (what the loader accepts, it can read back).
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "config.h"
#include "fuzz_common.h"

typedef struct fcfg {
    bool debug;
    char *name;
    int64_t port;
    int64_t workers;
    char *url;
    double ratio;
    double timeout;
    int64_t offset;
    char *path;
    bool enabled;
} fcfg;

static const cl_cfg_key keys[] = {
    {"DEFAULT", "debug", CL_CFG_BOOL, "false", 0, 0, offsetof(fcfg, debug), "debug"},
    {"DEFAULT", "name", CL_CFG_STR, "nube", 0, 0, offsetof(fcfg, name), "name"},
    {"api", "port", CL_CFG_INT, "8774", 1, 65535, offsetof(fcfg, port), "port"},
    {"api", "workers", CL_CFG_INT, "4", 1, 64, offsetof(fcfg, workers), "workers"},
    {"api", "url", CL_CFG_STR, NULL, 0, 0, offsetof(fcfg, url), "url"},
    {"api", "ratio", CL_CFG_DOUBLE, "1.5", 0, 16, offsetof(fcfg, ratio), "ratio"},
    {"db", "timeout", CL_CFG_DOUBLE, "2", 1, 0, offsetof(fcfg, timeout), "unbounded"},
    {"db", "offset", CL_CFG_INT, "0", 1, 0, offsetof(fcfg, offset), "unbounded"},
    {"db", "path", CL_CFG_STR, "/var/lib/nube/nube.db", 0, 0, offsetof(fcfg, path), "path"},
    {"db", "enabled", CL_CFG_BOOL, "yes", 0, 0, offsetof(fcfg, enabled), "enabled"},
};
#define NKEYS CL_ARRAY_SIZE(keys)

static void check_values(const fcfg *c)
{
    FUZZ_CHECK(c->name && c->url && c->path);
    FUZZ_CHECK(c->port >= 1 && c->port <= 65535);
    FUZZ_CHECK(c->workers >= 1 && c->workers <= 64);
    FUZZ_CHECK(isfinite(c->ratio) && c->ratio >= 0 && c->ratio <= 16);
    FUZZ_CHECK(isfinite(c->timeout));
    const unsigned char *b1 = (const unsigned char *)&c->debug;
    const unsigned char *b2 = (const unsigned char *)&c->enabled;
    FUZZ_CHECK(*b1 <= 1 && *b2 <= 1);
}

static bool same(const fcfg *a, const fcfg *b)
{
    return a->debug == b->debug && strcmp(a->name, b->name) == 0 && a->port == b->port &&
           a->workers == b->workers && strcmp(a->url, b->url) == 0 && a->ratio == b->ratio &&
           a->timeout == b->timeout && a->offset == b->offset &&
           strcmp(a->path, b->path) == 0 && a->enabled == b->enabled;
}

/* The loaded values as an INI file, in a new memfd. */
static int write_back(const fcfg *c, char *path, size_t pathlen)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    FUZZ_CHECK(f != NULL);
    fprintf(f, "[DEFAULT]\ndebug=%s\nname=%s\n", c->debug ? "true" : "false", c->name);
    fprintf(f, "[api]\nport=%lld\nworkers=%lld\nurl=%s\nratio=%.17g\n", (long long)c->port,
            (long long)c->workers, c->url, c->ratio);
    fprintf(f, "[db]\ntimeout=%.17g\noffset=%lld\npath=%s\nenabled=%s\n", c->timeout,
            (long long)c->offset, c->path, c->enabled ? "on" : "off");
    FUZZ_CHECK(fclose(f) == 0);
    int fd = fuzz_memfd((const uint8_t *)text, len, path, pathlen);
    free(text);
    return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fcfg c, c2;
    cl_error err = {0};
    char path[64], path2[64];

    if (size > 64 * 1024)
        return 0;
    int fd = fuzz_memfd(data, size, path, sizeof(path));
    FUZZ_CHECK(fd >= 0);
    memset(&c, 0, sizeof(c));
    int r = cl_config_load(path, keys, NKEYS, &c, &err);
    close(fd);
    if (r < 0) {
        FUZZ_CHECK(r == -EINVAL || r == -ENOMEM || r == -EIO);
        fuzz_check_error(&err);
        FUZZ_CHECK(strncmp(err.message, path, strlen(path)) == 0);
        cl_config_free(keys, NKEYS, &c);
        return 0;
    }
    FUZZ_CHECK(r == 0);
    check_values(&c);

    fd = write_back(&c, path2, sizeof(path2));
    FUZZ_CHECK(fd >= 0);
    memset(&c2, 0, sizeof(c2));
    memset(&err, 0, sizeof(err));
    r = cl_config_load(path2, keys, NKEYS, &c2, &err);
    close(fd);
    if (r != 0)
        fprintf(stderr, "reloading the written-back config failed: %s\n", err.message);
    FUZZ_CHECK(r == 0);
    FUZZ_CHECK(same(&c, &c2));
    cl_config_free(keys, NKEYS, &c);
    cl_config_free(keys, NKEYS, &c2);
    return 0;
}
