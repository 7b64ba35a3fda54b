/*
 * output.h - how the nube CLI prints: box-drawn tables for people, JSON for scripts.
 *
 * Tables look like the openstack client's (cliff + prettytable): "+---+" borders,
 * columns as wide as their widest cell, numbers right-aligned, everything else left.
 * JSON output is one pretty-printed document on stdout and nothing else, so
 * `nube server list -f json | jq` always parses. These functions are pure: they only
 * write to the FILE they are given, which lets tests compare exact text.
 */
#ifndef CLI_OUTPUT_H
#define CLI_OUTPUT_H

#include <json-c/json.h>
#include <stddef.h>
#include <stdio.h>

typedef enum { CLI_FMT_TABLE, CLI_FMT_JSON, CLI_FMT_MAX } cli_format;

/* Parse "table" / "json"; 0 or -EINVAL. */
int cli_format_parse(const char *s, cli_format *out);

/* Text of one cell: strings as they are, null as "", booleans "True"/"False" (as the
 * openstack client), numbers in decimal, arrays and objects as compact JSON. Control
 * characters other than newline become '?', so a server name cannot smuggle terminal
 * escape sequences onto an operator's screen. Returns a malloc'd string (caller frees)
 * or NULL on allocation failure. */
char *cli_cell_text(json_object *v);

/* Print a list. headers[0..ncols) name the columns; rows is a json array whose elements
 * are json arrays of ncols values (missing trailing values print as empty).
 *   table: the box-drawn table (header, rows, closing border; an empty list prints the
 *          header box only);
 *   json:  an array of objects keyed by the headers, values kept as JSON types.
 * Returns 0, -EINVAL (rows not an array of arrays) or -ENOMEM. */
int cli_print_list(FILE *out, cli_format fmt, const char *const *headers, size_t ncols,
                   json_object *rows);

/* Print one object. table: two columns "Field" / "Value", one row per key in the
 * object's order; json: the object itself. Returns 0, -EINVAL or -ENOMEM. */
int cli_print_show(FILE *out, cli_format fmt, json_object *obj);

/* Print any JSON value pretty-printed with a trailing newline (the -f json form). */
int cli_print_json(FILE *out, json_object *v);

#endif
