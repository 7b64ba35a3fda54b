/*
 * billing.h - the nube CLI's billing commands (cli/billing.c), over the nube-billing API
 * (the "billing" endpoint of the service catalog, default :8889).
 */
#ifndef CLI_BILLING_H
#define CLI_BILLING_H

#include <stdbool.h>

#include "commands.h"

/* Options of the billing commands; NULL = not given. */
typedef struct cli_billing_args {
    const char *project; /* --project: another project's id (admin), default the token's */
    const char *start;   /* --start: ISO 8601 UTC or unix ms; default the month's start */
    const char *end;     /* --end: default now */
    const char *month;   /* --month YYYY-MM (invoice); default this month */
    bool csv;            /* export --format csv (else json) */
} cli_billing_args;

/* The billing endpoint: $NUBE_BILLING_URL when set (tests, a proxy), else the catalog's.
 * Copies it without trailing slashes. 0 or -ENOENT with err. */
int cli_billing_url(const cli_session *s, char *out, size_t outlen, cl_error *err);

/* nube billing export: GET /v1/export streamed to ctx->out as it arrives (CSV or JSON,
 * flat memory whatever its size). A body cut short is an error (exit 1). */
int cli_cmd_billing_export(cli_ctx *ctx, const cli_billing_args *a, cl_error *err);
/* nube billing invoice: the month's invoice(s), line items as a table or the API JSON. */
int cli_cmd_billing_invoice(cli_ctx *ctx, const cli_billing_args *a, cl_error *err);
/* nube usage: quantities per resource and meter over [start, end). */
int cli_cmd_usage(cli_ctx *ctx, const cli_billing_args *a, cl_error *err);

#endif
