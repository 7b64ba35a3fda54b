/*
 * config.h - INI configuration files parsed into a declarative table (inih underneath).
 *
 * A daemon describes every key once: section, name, type, bounds, default and help.
 * cl_config_load() fills the daemon's config struct through the offsets in that table.
 * Unknown sections or keys, values of the wrong type and values out of bounds are errors
 * naming the file and line ("nube-api.conf:12: [api] port: 70000 is above the maximum
 * 65535"), so a typo never silently falls back to a default. The same table prints the
 * config reference for --help and the README.
 */
#ifndef CL_CONFIG_H
#define CL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "errors.h"

typedef enum {
    CL_CFG_STR,    /* char *   (malloc'd, freed by cl_config_free) */
    CL_CFG_INT,    /* int64_t  (bounds min/max) */
    CL_CFG_BOOL,   /* bool     (true/false/yes/no/on/off/1/0) */
    CL_CFG_DOUBLE, /* double   (bounds min/max) */
    CL_CFG_TYPE_MAX
} cl_cfg_type;

typedef struct cl_cfg_key {
    const char *section; /* "DEFAULT" for the unnamed/[DEFAULT] section */
    const char *name;
    cl_cfg_type type;
    const char *def;     /* default, written as it would be in the file; NULL = empty/0 */
    double min, max;     /* bounds for INT and DOUBLE; ignored when min > max */
    size_t offset;       /* offsetof(the daemon's struct, field) */
    const char *help;
} cl_cfg_key;

/* Apply every default of keys to cfg. Returns 0 or -EINVAL (a default violates its own
 * type or bounds: a programmer error, reported in err). */
int cl_config_defaults(const cl_cfg_key *keys, size_t nkeys, void *cfg, cl_error *err);

/* Apply defaults, then the INI file at path. Returns 0, -ENOENT (file missing), or
 * -EINVAL with err->message naming file, line, section and key. On failure the string
 * fields already set stay owned by cfg (free with cl_config_free). */
int cl_config_load(const char *path, const cl_cfg_key *keys, size_t nkeys, void *cfg,
                   cl_error *err);

/* Set one key from a string, as the file would ("section", "name", "value").
 * Used by the loader and by tests. Returns 0 or -EINVAL/-ENOENT with err filled. */
int cl_config_set(const cl_cfg_key *keys, size_t nkeys, void *cfg, const char *section,
                  const char *name, const char *value, cl_error *err);

/* Free the string fields of cfg (the struct itself is the caller's). */
void cl_config_free(const cl_cfg_key *keys, size_t nkeys, void *cfg);

/* Print a reference of all keys: "[section] name = default  (type, bounds) help". */
void cl_config_print_help(FILE *out, const cl_cfg_key *keys, size_t nkeys);

/* Write a complete sample INI file (every key, commented help, default values). */
void cl_config_print_sample(FILE *out, const cl_cfg_key *keys, size_t nkeys);

#endif
