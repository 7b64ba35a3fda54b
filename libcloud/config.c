/*
 * config.c - INI files into a daemon's config struct, driven by a declarative key table.
 *
 * Each daemon lists its keys once (cl_cfg_key: section, name, type, bounds, default,
 * offset, help). From that table this file applies defaults, loads a file, checks every
 * value, prints the --help reference and writes a sample file, so the documentation
 * cannot drift from what the parser accepts.
 *
 * Parsing is inih's (ini_parse_stream). inih's handler is not told the line number, so we
 * feed it through our own reader that wraps getline(3) and counts lines; the handler reads
 * the count from the shared context. The reader also does three things inih cannot:
 *  - it strips leading blanks, so an indented "key = value" is a key and not (as inih's
 *    multi-line mode would have it) a silent continuation of the previous value;
 *  - it rejects lines longer than inih's fixed buffer, which inih would otherwise cut in
 *    two and parse the tail as a separate line;
 *  - it checks section headers, so an unknown "[sektion]" with no keys is still an error.
 * The first problem wins and is reported as "<file>:<line>: [section] key: <problem>".
 * Keys before any section header belong to [DEFAULT]. A key given twice: the last wins.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <ini.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cleanup.h"
#include "util.h"

#define SECTION_MAX 64

static const char *const type_names[CL_CFG_TYPE_MAX] = {
    [CL_CFG_STR] = "string",
    [CL_CFG_INT] = "integer",
    [CL_CFG_BOOL] = "boolean",
    [CL_CFG_DOUBLE] = "number",
};

static void *field(void *cfg, const cl_cfg_key *k) { return (char *)cfg + k->offset; }

static bool has_bounds(const cl_cfg_key *k)
{
    return (k->type == CL_CFG_INT || k->type == CL_CFG_DOUBLE) && k->min <= k->max;
}

static const cl_cfg_key *find_key(const cl_cfg_key *keys, size_t nkeys, const char *section,
                                  const char *name)
{
    for (size_t i = 0; i < nkeys; i++)
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

static bool section_known(const cl_cfg_key *keys, size_t nkeys, const char *section)
{
    if (strcmp(section, "DEFAULT") == 0)
        return true;
    for (size_t i = 0; i < nkeys; i++)
        if (strcmp(keys[i].section, section) == 0)
            return true;
    return false;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};

    for (size_t i = 0; i < CL_ARRAY_SIZE(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

static int parse_double(const char *s, double *out)
{
    char *end = NULL;
    double v;

    if (*s == '\0' || strchr(" \t\n", *s))
        return -EINVAL;
    errno = 0;
    v = strtod(s, &end);
    /* strtod also takes "nan", "inf" and hex floats; none is a sane config value. */
    if (*end != '\0' || errno == ERANGE || !isfinite(v) || strpbrk(s, "xX"))
        return -EINVAL;
    *out = v;
    return 0;
}

/*
 * Check value against key k and store it into cfg. Writes the problem (without the
 * "[section] key: " prefix) into problem on failure. Strings: the old value is freed,
 * so the field must hold NULL or a malloc'd string (cl_config_defaults sees to that).
 */
static int apply(const cl_cfg_key *k, void *cfg, const char *value, char *problem,
                 size_t plen)
{
    int64_t iv;
    double dv;
    bool bv;

    switch (k->type) {
    case CL_CFG_STR: {
        char **p = field(cfg, k);
        char *copy = strdup(value);
        if (!copy) {
            snprintf(problem, plen, "out of memory");
            return -ENOMEM;
        }
        free(*p);
        *p = copy;
        return 0;
    }
    case CL_CFG_INT:
        if (cl_parse_int64(value, &iv) < 0) {
            snprintf(problem, plen, "'%s' is not an integer", value);
            return -EINVAL;
        }
        if (has_bounds(k) && (double)iv < k->min) {
            snprintf(problem, plen, "%" PRId64 " is below the minimum %" PRId64, iv,
                     (int64_t)k->min);
            return -EINVAL;
        }
        if (has_bounds(k) && (double)iv > k->max) {
            snprintf(problem, plen, "%" PRId64 " is above the maximum %" PRId64, iv,
                     (int64_t)k->max);
            return -EINVAL;
        }
        *(int64_t *)field(cfg, k) = iv;
        return 0;
    case CL_CFG_BOOL:
        if (parse_bool(value, &bv) < 0) {
            snprintf(problem, plen,
                     "'%s' is not a boolean (true/false, yes/no, on/off, 1/0)", value);
            return -EINVAL;
        }
        *(bool *)field(cfg, k) = bv;
        return 0;
    case CL_CFG_DOUBLE:
        if (parse_double(value, &dv) < 0) {
            snprintf(problem, plen, "'%s' is not a number", value);
            return -EINVAL;
        }
        if (has_bounds(k) && dv < k->min) {
            snprintf(problem, plen, "%g is below the minimum %g", dv, k->min);
            return -EINVAL;
        }
        if (has_bounds(k) && dv > k->max) {
            snprintf(problem, plen, "%g is above the maximum %g", dv, k->max);
            return -EINVAL;
        }
        *(double *)field(cfg, k) = dv;
        return 0;
    case CL_CFG_TYPE_MAX:
        break;
    }
    snprintf(problem, plen, "key has no valid type");
    return -EINVAL;
}

/* The value a default stands for: NULL means empty / 0 / false. */
static const char *default_text(const cl_cfg_key *k)
{
    if (k->def)
        return k->def;
    switch (k->type) {
    case CL_CFG_INT:
    case CL_CFG_DOUBLE:
        return "0";
    case CL_CFG_BOOL:
        return "false";
    default:
        return "";
    }
}

/*
 * Apply every default. String fields are first set to NULL so a failure half-way leaves
 * cfg safe for cl_config_free(); string fields always end up non-NULL ("" when the
 * default is NULL), so daemons can test *s without a NULL check.
 */
int cl_config_defaults(const cl_cfg_key *keys, size_t nkeys, void *cfg, cl_error *err)
{
    char problem[CL_ERROR_MSG_MAX / 2];

    for (size_t i = 0; i < nkeys; i++)
        if (keys[i].type == CL_CFG_STR)
            *(char **)field(cfg, &keys[i]) = NULL;
    for (size_t i = 0; i < nkeys; i++) {
        int r = apply(&keys[i], cfg, default_text(&keys[i]), problem, sizeof(problem));
        if (r < 0) {
            cl_error_set(err, CL_E_INTERNAL, "[%s] %s: bad default: %s", keys[i].section,
                         keys[i].name, problem);
            return r == -ENOMEM ? r : -EINVAL;
        }
    }
    return 0;
}

/*
 * Set one key from text. Unknown section or key: -ENOENT; bad value: -EINVAL; err says
 * "[section] key: problem". cfg must have had its defaults applied (old strings freed).
 */
int cl_config_set(const cl_cfg_key *keys, size_t nkeys, void *cfg, const char *section,
                  const char *name, const char *value, cl_error *err)
{
    const cl_cfg_key *k;
    char problem[CL_ERROR_MSG_MAX / 2];
    int r;

    if (!section_known(keys, nkeys, section)) {
        cl_error_set(err, CL_E_BAD_REQUEST, "[%s]: unknown section", section);
        return -ENOENT;
    }
    k = find_key(keys, nkeys, section, name);
    if (!k) {
        cl_error_set(err, CL_E_BAD_REQUEST, "[%s] %s: unknown key", section, name);
        return -ENOENT;
    }
    r = apply(k, cfg, value ? value : "", problem, sizeof(problem));
    if (r < 0)
        cl_error_set(err, CL_E_BAD_REQUEST, "[%s] %s: %s", section, name, problem);
    return r;
}

typedef struct {
    const char *path;
    const cl_cfg_key *keys;
    size_t nkeys;
    void *cfg;
    FILE *fp;
    char *buf; /* getline buffer */
    size_t cap;
    int line;     /* number of the line inih is working on */
    int err_line; /* first line with a problem we found, 0 = none */
    int err_rc;
    cl_error err;
} load_ctx;

/* Record the first problem only; later ones are usually consequences of it. */
static void record(load_ctx *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void record(load_ctx *c, int rc, const char *fmt, ...)
{
    char msg[CL_ERROR_MSG_MAX];
    va_list ap;

    if (c->err_line)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    c->err_line = c->line;
    c->err_rc = rc;
    cl_error_set(&c->err, CL_E_BAD_REQUEST, "%s:%d: %s", c->path, c->line, msg);
}

/* "[name]" (after blanks were stripped): check the name, as inih reads it. */
static void check_section_line(load_ctx *c, const char *s)
{
    const char *close = strchr(s, ']');
    char name[SECTION_MAX];
    size_t n;

    if (!close)
        return; /* inih reports the syntax error */
    s++;
    while (*s == ' ' || *s == '\t')
        s++;
    n = (size_t)(close - s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n >= sizeof(name)) {
        record(c, -EINVAL, "[%.*s...]: unknown section", (int)(sizeof(name) - 1), s);
        return;
    }
    memcpy(name, s, n);
    name[n] = '\0';
    if (!section_known(c->keys, c->nkeys, name))
        record(c, -EINVAL, "[%s]: unknown section", name);
}

/* inih's fgets-style reader: one line per call, counted (see the file comment). */
static char *reader(char *str, int num, void *stream)
{
    load_ctx *c = stream;
    ssize_t n = getline(&c->buf, &c->cap, c->fp);
    char *s;
    size_t len;

    if (n < 0)
        return NULL;
    c->line++;
    s = c->buf;
    /* A UTF-8 BOM at the start of the file; inih would skip it, but only at column 0. */
    if (c->line == 1 && n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
        s += 3;
    while (*s == ' ' || *s == '\t')
        s++;
    len = strlen(s);
    /* num includes room for "\r\n" and the NUL, which inih documents as needed. */
    if (num < 3 || len > (size_t)num - 1) {
        record(c, -EINVAL, "line is longer than %d characters", num - 3);
        len = num > 0 ? (size_t)num - 1 : 0;
    }
    if (*s == '[')
        check_section_line(c, s);
    if (num > 0) {
        memcpy(str, s, len);
        str[len] = '\0';
    }
    return str;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
    load_ctx *c = user;
    const char *sec = section[0] ? section : "DEFAULT";
    const cl_cfg_key *k;
    char problem[CL_ERROR_MSG_MAX / 2];
    int r;

    k = find_key(c->keys, c->nkeys, sec, name);
    if (!k) {
        if (section_known(c->keys, c->nkeys, sec))
            record(c, -EINVAL, "[%s] %s: unknown key", sec, name);
        else
            record(c, -EINVAL, "[%s]: unknown section", sec);
        return 1;
    }
    r = apply(k, c->cfg, value ? value : "", problem, sizeof(problem));
    if (r < 0)
        record(c, r == -ENOMEM ? r : -EINVAL, "[%s] %s: %s", sec, name, problem);
    /* Always 1: we keep our own (more precise) errors; inih's return then only counts
     * syntax errors. */
    return 1;
}

/*
 * Defaults, then the file. Returns 0; -ENOENT when the file does not exist; another
 * negative errno when it cannot be read; -EINVAL with err naming file and line.
 * Not thread-safe with respect to cfg (call at start-up).
 */
int cl_config_load(const char *path, const cl_cfg_key *keys, size_t nkeys, void *cfg,
                   cl_error *err)
{
    load_ctx c;
    int r;

    r = cl_config_defaults(keys, nkeys, cfg, err);
    if (r < 0)
        return r;

    memset(&c, 0, sizeof(c));
    c.path = path;
    c.keys = keys;
    c.nkeys = nkeys;
    c.cfg = cfg;
    c.fp = fopen(path, "re");
    if (!c.fp) {
        r = -errno;
        if (r == -ENOENT)
            cl_error_set(err, CL_E_NOT_FOUND, "%s: configuration file not found", path);
        else
            cl_error_set(err, CL_E_INTERNAL, "%s: cannot open: %s", path, strerror(-r));
        return r;
    }
    r = ini_parse_stream(reader, &c, handler, &c);
    if (ferror(c.fp)) {
        cl_error_set(err, CL_E_INTERNAL, "%s: read error", path);
        r = -EIO;
    } else if (r > 0 && (c.err_line == 0 || r < c.err_line)) {
        cl_error_set(err, CL_E_BAD_REQUEST,
                     "%s:%d: syntax error (expected '[section]' or 'key = value')", path, r);
        r = -EINVAL;
    } else if (c.err_line) {
        if (err)
            *err = c.err;
        r = c.err_rc;
    } else if (r < 0) {
        cl_error_set(err, CL_E_INTERNAL, "%s: out of memory", path);
        r = -ENOMEM;
    }
    fclose(c.fp);
    free(c.buf);
    return r;
}

void cl_config_free(const cl_cfg_key *keys, size_t nkeys, void *cfg)
{
    for (size_t i = 0; i < nkeys; i++) {
        if (keys[i].type == CL_CFG_STR) {
            char **p = field(cfg, &keys[i]);
            free(*p);
            *p = NULL;
        }
    }
}

static void describe_type(const cl_cfg_key *k, char *out, size_t len)
{
    const char *t = (unsigned)k->type < CL_CFG_TYPE_MAX ? type_names[k->type] : "?";

    if (!has_bounds(k))
        snprintf(out, len, "%s", t);
    else if (k->type == CL_CFG_INT)
        snprintf(out, len, "%s, %" PRId64 "..%" PRId64, t, (int64_t)k->min, (int64_t)k->max);
    else
        snprintf(out, len, "%s, %g..%g", t, k->min, k->max);
}

/* One line per key: "[section] name = default  (type, bounds) help". */
void cl_config_print_help(FILE *out, const cl_cfg_key *keys, size_t nkeys)
{
    char type[96];

    for (size_t i = 0; i < nkeys; i++) {
        describe_type(&keys[i], type, sizeof(type));
        fprintf(out, "[%s] %s = %s  (%s) %s\n", keys[i].section, keys[i].name,
                default_text(&keys[i]), type, keys[i].help ? keys[i].help : "");
    }
}

/* Help text as "# " comment lines of at most ~78 columns (inih's line limit is 197). */
static void print_wrapped_comment(FILE *out, const char *text)
{
    const size_t width = 76;

    while (*text) {
        size_t len = strlen(text);
        size_t cut = len;

        if (len > width) {
            cut = width;
            while (cut > 0 && text[cut] != ' ')
                cut--;
            if (cut == 0)
                cut = width; /* one long word: hard cut */
        }
        fprintf(out, "# %.*s\n", (int)cut, text);
        text += cut;
        while (*text == ' ')
            text++;
    }
}

/*
 * A complete file: sections in the order they first appear in the table ([DEFAULT]
 * first, as the daemon tables put the common keys first), every key with its help as a
 * comment and its default as the value, so the sample loads back unchanged.
 */
void cl_config_print_sample(FILE *out, const cl_cfg_key *keys, size_t nkeys)
{
    char type[96];
    bool first = true;

    for (size_t i = 0; i < nkeys; i++) {
        bool seen = false;
        for (size_t j = 0; j < i; j++)
            seen |= strcmp(keys[j].section, keys[i].section) == 0;
        if (seen)
            continue;
        fprintf(out, "%s[%s]\n", first ? "" : "\n", keys[i].section);
        first = false;
        for (size_t j = i; j < nkeys; j++) {
            if (strcmp(keys[j].section, keys[i].section) != 0)
                continue;
            fprintf(out, "\n");
            if (keys[j].help)
                print_wrapped_comment(out, keys[j].help);
            describe_type(&keys[j], type, sizeof(type));
            fprintf(out, "# (%s)\n%s = %s\n", type, keys[j].name, default_text(&keys[j]));
        }
    }
}
