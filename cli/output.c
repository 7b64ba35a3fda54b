/*
 * output.c - table and JSON rendering for the nube CLI.
 *
 * A table is drawn in two passes: first every cell is turned into text and measured
 * (width in UTF-8 code points, the widest line of a multi-line cell), then the borders
 * and padded cells are written. That matches what prettytable does for the openstack
 * client, so operators see the same shape from both tools. A column is right-aligned
 * when every non-empty value in it is a number, as cliff aligns numeric columns.
 */
#include "output.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "json.h"

int cli_format_parse(const char *s, cli_format *out)
{
    if (!s)
        return -EINVAL;
    if (strcmp(s, "table") == 0)
        *out = CLI_FMT_TABLE;
    else if (strcmp(s, "json") == 0)
        *out = CLI_FMT_JSON;
    else
        return -EINVAL;
    return 0;
}

/* Replace control characters (C0 except '\n', and DEL) in place. */
static void sanitize(char *s)
{
    for (unsigned char *p = (unsigned char *)s; *p; p++)
        if ((*p < 0x20 && *p != '\n') || *p == 0x7f)
            *p = '?';
}

char *cli_cell_text(json_object *v)
{
    char *s;

    switch (json_object_get_type(v)) {
    case json_type_null:
        s = strdup("");
        break;
    case json_type_boolean:
        s = strdup(json_object_get_boolean(v) ? "True" : "False");
        break;
    case json_type_int:
        if (asprintf(&s, "%" PRId64, json_object_get_int64(v)) < 0)
            s = NULL;
        break;
    case json_type_string:
        s = strndup(json_object_get_string(v), (size_t)json_object_get_string_len(v));
        break;
    default: /* double, array, object: json-c's own compact text */
        s = strdup(json_object_to_json_string_ext(
            v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        break;
    }
    if (s)
        sanitize(s);
    return s;
}

/* Display width of s[0..len): code points, counting UTF-8 continuation bytes as none. */
static size_t text_width(const char *s, size_t len)
{
    size_t w = 0;

    for (size_t i = 0; i < len; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            w++;
    return w;
}

/* Width of the widest line and number of lines of a cell. */
static void measure(const char *s, size_t *width, size_t *lines)
{
    size_t w = 0, n = 1;

    for (;;) {
        const char *nl = strchr(s, '\n');
        size_t len = nl ? (size_t)(nl - s) : strlen(s);
        size_t lw = text_width(s, len);

        if (lw > w)
            w = lw;
        if (!nl)
            break;
        n++;
        s = nl + 1;
    }
    *width = w;
    *lines = n;
}

/* Line number `line` of s (empty past the end), into *start / *len. */
static void nth_line(const char *s, size_t line, const char **start, size_t *len)
{
    for (size_t i = 0; i < line; i++) {
        const char *nl = strchr(s, '\n');

        if (!nl) {
            *start = "";
            *len = 0;
            return;
        }
        s = nl + 1;
    }
    *start = s;
    *len = strchrnul(s, '\n') - s;
}

static void print_border(FILE *out, const size_t *widths, size_t ncols)
{
    fputc('+', out);
    for (size_t c = 0; c < ncols; c++) {
        for (size_t i = 0; i < widths[c] + 2; i++)
            fputc('-', out);
        fputc('+', out);
    }
    fputc('\n', out);
}

/* One logical row (possibly several physical lines). */
static void print_row(FILE *out, char *const *cells, const size_t *widths,
                      const bool *right, size_t ncols)
{
    size_t height = 1;

    for (size_t c = 0; c < ncols; c++) {
        size_t w, n;

        measure(cells[c], &w, &n);
        if (n > height)
            height = n;
    }
    for (size_t line = 0; line < height; line++) {
        fputc('|', out);
        for (size_t c = 0; c < ncols; c++) {
            const char *s;
            size_t len, pad;

            nth_line(cells[c], line, &s, &len);
            pad = widths[c] - text_width(s, len);
            fputc(' ', out);
            if (right[c])
                fprintf(out, "%*s", (int)pad, "");
            fwrite(s, 1, len, out);
            if (!right[c])
                fprintf(out, "%*s", (int)pad, "");
            fputs(" |", out);
        }
        fputc('\n', out);
    }
}

static void free_cells(char **cells, size_t n)
{
    if (!cells)
        return;
    for (size_t i = 0; i < n; i++)
        free(cells[i]);
    free(cells);
}

static int print_table(FILE *out, const char *const *headers, size_t ncols, json_object *rows)
{
    size_t nrows = json_object_array_length(rows);
    size_t ncells = (nrows + 1) * ncols;
    char **cells = calloc(ncells, sizeof(*cells));
    _cleanup_free_ size_t *widths = calloc(ncols, sizeof(*widths));
    _cleanup_free_ bool *right = calloc(ncols, sizeof(*right));
    _cleanup_free_ bool *numeric_seen = calloc(ncols, sizeof(*numeric_seen));
    int r = -ENOMEM;

    if (!cells || !widths || !right || !numeric_seen)
        goto out;
    for (size_t c = 0; c < ncols; c++) {
        cells[c] = strdup(headers[c]);
        if (!cells[c])
            goto out;
        sanitize(cells[c]);
        right[c] = true; /* until a non-number shows up */
    }
    for (size_t i = 0; i < nrows; i++) {
        json_object *row = json_object_array_get_idx(rows, i);

        if (!json_object_is_type(row, json_type_array)) {
            r = -EINVAL;
            goto out;
        }
        for (size_t c = 0; c < ncols; c++) {
            json_object *v = c < json_object_array_length(row)
                                 ? json_object_array_get_idx(row, c) : NULL;
            json_type t = json_object_get_type(v);
            char **cell = &cells[(i + 1) * ncols + c];

            if (t == json_type_int || t == json_type_double)
                numeric_seen[c] = true;
            else if (t != json_type_null)
                right[c] = false;
            *cell = cli_cell_text(v);
            if (!*cell)
                goto out;
        }
    }
    for (size_t c = 0; c < ncols; c++) {
        right[c] = right[c] && numeric_seen[c];
        for (size_t i = 0; i <= nrows; i++) {
            size_t w, n;

            measure(cells[i * ncols + c], &w, &n);
            if (w > widths[c])
                widths[c] = w;
        }
    }
    print_border(out, widths, ncols);
    print_row(out, cells, widths, right, ncols);
    print_border(out, widths, ncols);
    for (size_t i = 1; i <= nrows; i++)
        print_row(out, cells + i * ncols, widths, right, ncols);
    if (nrows > 0)
        print_border(out, widths, ncols);
    r = 0;
out:
    free_cells(cells, cells ? ncells : 0);
    return r;
}

int cli_print_json(FILE *out, json_object *v)
{
    const char *s = json_object_to_json_string_ext(
        v, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE);

    if (!s)
        return -ENOMEM;
    fputs(s, out);
    fputc('\n', out);
    return 0;
}

int cli_print_list(FILE *out, cli_format fmt, const char *const *headers, size_t ncols,
                   json_object *rows)
{
    _cleanup_json_ json_object *list = NULL;

    if (!json_object_is_type(rows, json_type_array))
        return -EINVAL;
    if (fmt == CLI_FMT_TABLE)
        return print_table(out, headers, ncols, rows);

    list = json_object_new_array();
    if (!list)
        return -ENOMEM;
    for (size_t i = 0; i < json_object_array_length(rows); i++) {
        json_object *row = json_object_array_get_idx(rows, i);
        json_object *o;

        if (!json_object_is_type(row, json_type_array))
            return -EINVAL;
        o = json_object_new_object();
        if (!o || json_object_array_add(list, o) < 0) {
            json_object_put(o);
            return -ENOMEM;
        }
        for (size_t c = 0; c < ncols; c++) {
            json_object *v = c < json_object_array_length(row)
                                 ? json_object_array_get_idx(row, c) : NULL;

            json_object_object_add(o, headers[c], json_object_get(v));
        }
    }
    return cli_print_json(out, list);
}

int cli_print_show(FILE *out, cli_format fmt, json_object *obj)
{
    static const char *const headers[] = { "Field", "Value" };
    _cleanup_json_ json_object *rows = NULL;

    if (!json_object_is_type(obj, json_type_object))
        return -EINVAL;
    if (fmt == CLI_FMT_JSON)
        return cli_print_json(out, obj);

    rows = json_object_new_array();
    if (!rows)
        return -ENOMEM;
    json_object_object_foreach(obj, key, val) {
        json_object *row = json_object_new_array();

        if (!row || json_object_array_add(rows, row) < 0) {
            json_object_put(row);
            return -ENOMEM;
        }
        json_object_array_add(row, json_object_new_string(key));
        /* Show values as text so a numeric field does not right-align the whole Value
         * column, as the openstack client prints them. */
        {
            _cleanup_free_ char *text = cli_cell_text(val);

            if (!text)
                return -ENOMEM;
            json_object_array_add(row, json_object_new_string(text));
        }
    }
    return print_table(out, headers, 2, rows);
}
