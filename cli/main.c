/*
 * main.c - the `nube` operator command: argument parsing, help, cloud selection.
 *
 * The work lives in libnubecli (clouds.c, commands.c, output.c); this file only turns
 * argv into a command, picks the cloud (--os-cloud, $OS_CLOUD, else OS_* variables),
 * authenticates once and runs the command. Options may come before or after the
 * command words (`nube -f json server list` and `nube server list -f json` are the same),
 * as with the openstack client. The exit codes are an interface: see EXIT STATUS below.
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "billing.h"
#include "cleanup.h"
#include "clouds.h"
#include "commands.h"
#include "host_ops.h"
#include "http.h"
#include "nube-version.h"
#include "output.h"
#include "util.h"

#define DEFAULT_TIMEOUT_S 600
#define MAX_TIMEOUT_S (7 * 24 * 3600)

static const char main_help[] =
    "NAME\n"
    "    nube - operate a nube (OpenStack-compatible) compute cloud\n"
    "\n"
    "SYNOPSIS\n"
    "    nube [--os-cloud NAME] [-f table|json] COMMAND [ARGS...]\n"
    "    nube COMMAND --help\n"
    "    nube --help | --version\n"
    "\n"
    "COMMANDS\n"
    "    server list [--all-projects]\n"
    "        List servers (of every project with --all-projects; needs admin).\n"
    "    server show <id|name>\n"
    "        Show one server.\n"
    "    server create --flavor <id|name> --image <id> [--wait] [--timeout S] <name>\n"
    "        Create a server; with --wait, wait until it is ACTIVE.\n"
    "    server delete [--wait] [--timeout S] <id|name>...\n"
    "        Delete servers; with --wait, wait until they are gone.\n"
    "    server migrate --live [--host H] [--wait] [--timeout S] <id|name>\n"
    "        Live-migrate a server (the scheduler picks the host unless --host; admin).\n"
    "    host list\n"
    "        List hypervisor hosts with their capacity and usage (needs admin).\n"
    "    host disable [--reason TEXT] <host> | host enable <host>\n"
    "        Stop / resume scheduling onto a host (admin).\n"
    "    host drain [--parallel N] [--reason TEXT] [--timeout S] <host>\n"
    "        Disable a host and live-migrate every server off it, N at a time (admin).\n"
    "    flavor list\n"
    "        List flavors.\n"
    "    billing export --format csv|json [--project P] [--start T] [--end T]\n"
    "        Rated usage, one row per hour, project, resource and meter, streamed to\n"
    "        stdout (default window: this month so far).\n"
    "    billing invoice [--project P] [--month YYYY-MM]\n"
    "        The month's invoice with its line items (default: this month).\n"
    "    usage [--project P] [--start T] [--end T]\n"
    "        Metered quantities per resource and meter.\n"
    "\n"
    "    Billing commands use the catalog's billing endpoint ($NUBE_BILLING_URL\n"
    "    overrides it); a project sees its own figures, an admin any with --project.\n"
    "\n"
    "    A server or flavor may be named by ID or by name: nube asks for the ID first and\n"
    "    falls back to an exact name match, like the openstack client.\n"
    "\n"
    "OPTIONS\n"
    "    --os-cloud NAME\n"
    "        Cloud to use from clouds.yaml (default: $OS_CLOUD). Without either, the\n"
    "        OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME, ... variables of an\n"
    "        openrc file are used.\n"
    "    -f, --format table|json\n"
    "        Output format (default table). json prints one JSON document on stdout and\n"
    "        nothing else; progress and errors always go to stderr.\n"
    "    --wait\n"
    "        (server create, server delete) Poll every 0.5 s until done, showing the\n"
    "        status on stderr.\n"
    "    --timeout S\n"
    "        (with --wait) Give up after S seconds (default 600).\n"
    "    -h, --help\n"
    "        Show this help, or a command's help after the command.\n"
    "    --version\n"
    "        Print the version.\n"
    "\n"
    "FILES\n"
    "    clouds.yaml is read from the first of these that exists and defines the cloud:\n"
    "        $OS_CLIENT_CONFIG_FILE\n"
    "        ./clouds.yaml\n"
    "        ~/.config/openstack/clouds.yaml\n"
    "        /etc/openstack/clouds.yaml\n"
    "    Keys used: auth.auth_url, auth.username or auth.user_id, auth.password,\n"
    "    auth.project_name or auth.project_id, auth.user_domain_name,\n"
    "    auth.project_domain_name, region_name, interface (default public).\n"
    "\n"
    "EXIT STATUS\n"
    "    0   success\n"
    "    1   API or network error (the message shows the HTTP status and the OpenStack\n"
    "        fault), or a name that matches more than one resource\n"
    "    2   usage error: bad arguments, or no usable cloud configuration\n"
    "    3   not found: no server or flavor with that name or ID\n"
    "    4   the server went to ERROR while waiting (the fault message is printed)\n"
    "    5   timed out while waiting (--timeout)\n"
    "\n"
    "EXAMPLES\n"
    "    nube --os-cloud prod server list --all-projects\n"
    "    nube server create --flavor m1.small --image 7ad09468-f067-471a-ab1c-2332adf8008d \\\n"
    "        --wait --timeout 300 web1\n"
    "    nube server show web1 -f json | jq -r .status\n"
    "    nube server delete --wait web1 web2\n"
    "    nube host list -f json\n";

enum {
    OPT_OS_CLOUD = 0x100, OPT_VERSION, OPT_ALL_PROJECTS, OPT_FLAVOR, OPT_IMAGE, OPT_WAIT,
    OPT_TIMEOUT, OPT_PROJECT, OPT_START, OPT_END, OPT_MONTH,
    OPT_REASON, OPT_PARALLEL, OPT_LIVE, OPT_HOST, /* host_ops.c */
};

/* Which command-specific options a command accepts. */
#define ALLOW_ALL_PROJECTS (1u << 0)
#define ALLOW_FLAVOR_IMAGE (1u << 1)
#define ALLOW_WAIT (1u << 2)
#define ALLOW_PROJECT (1u << 3)
#define ALLOW_WINDOW (1u << 4) /* --start, --end */
#define ALLOW_MONTH (1u << 5)
#define ALLOW_CSV (1u << 6)    /* --format csv */
#define ALLOW_REASON (1u << 7)   /* --reason (host disable, drain) */
#define ALLOW_PARALLEL (1u << 8) /* --parallel (host drain) */
#define ALLOW_MIGRATE (1u << 9)  /* --live, --host (server migrate) */

typedef struct cli_args {
    const char *cloud;
    cli_format fmt;
    bool fmt_set;
    bool help;
    bool version;
    bool all_projects;
    bool wait;
    const char *flavor;
    const char *image;
    int64_t timeout_s;
    bool timeout_set;
    bool csv;                   /* --format csv (billing export only) */
    cli_billing_args billing;   /* --project, --start, --end, --month */
    const char *reason;         /* --reason */
    int64_t parallel;           /* --parallel */
    bool live;                  /* --live */
    const char *host;           /* --host */
} cli_args;

typedef struct cmd_spec {
    const char *noun;
    const char *verb;
    unsigned allow;
    int min_pos, max_pos; /* positional arguments; max -1 = unbounded */
    const char *help;
} cmd_spec;

static const cmd_spec commands[] = {
    { "server", "list", ALLOW_ALL_PROJECTS, 0, 0,
      "NAME\n    nube server list - list servers\n\n"
      "SYNOPSIS\n    nube server list [--all-projects] [-f table|json]\n\n"
      "OPTIONS\n    --all-projects  list the servers of every project (admin)\n"
      "    -f, --format    table (default) or json: an array of objects with the keys\n"
      "                    ID, Name, Status, Networks, Image, Flavor\n" },
    { "server", "show", 0, 1, 1,
      "NAME\n    nube server show - show one server\n\n"
      "SYNOPSIS\n    nube server show [-f table|json] <id|name>\n\n"
      "OPTIONS\n    -f, --format    table (default) or json: the server object of the API\n\n"
      "EXIT STATUS\n    3 when no server has that ID or name, 1 when several have that name\n" },
    { "server", "create", ALLOW_FLAVOR_IMAGE | ALLOW_WAIT, 1, 1,
      "NAME\n    nube server create - create a server\n\n"
      "SYNOPSIS\n    nube server create --flavor <id|name> --image <id> [--wait] [--timeout S]\n"
      "                       [-f table|json] <name>\n\n"
      "OPTIONS\n    --flavor F      flavor ID or name (required)\n"
      "    --image I       image ID (required)\n"
      "    --wait          wait until the server is ACTIVE, showing progress on stderr\n"
      "    --timeout S     with --wait, give up after S seconds (default 600)\n"
      "    -f, --format    table (default) or json\n\n"
      "EXIT STATUS\n    0 created (ACTIVE with --wait), 3 flavor not found, 4 the server went to\n"
      "    ERROR (its fault is printed), 5 timed out, 1 other API errors\n" },
    { "server", "delete", ALLOW_WAIT, 1, -1,
      "NAME\n    nube server delete - delete servers\n\n"
      "SYNOPSIS\n    nube server delete [--wait] [--timeout S] <id|name>...\n\n"
      "OPTIONS\n    --wait          wait until every server is gone (the API answers 404)\n"
      "    --timeout S     with --wait, give up after S seconds (default 600)\n\n"
      "    Every server is tried; the exit status is that of the first failure.\n" },
    { "host", "disable", ALLOW_REASON, 1, 1,
      "NAME\n    nube host disable - stop scheduling onto a host\n\n"
      "SYNOPSIS\n    nube host disable [--reason TEXT] <host>\n" },
    { "host", "enable", 0, 1, 1,
      "NAME\n    nube host enable - schedule onto a host again\n\n"
      "SYNOPSIS\n    nube host enable <host>\n" },
    { "host", "drain", ALLOW_REASON | ALLOW_PARALLEL | ALLOW_WAIT, 1, 1,
      "NAME\n    nube host drain - disable a host and live-migrate every server off it\n\n"
      "SYNOPSIS\n    nube host drain [--parallel N] [--reason TEXT] [--timeout S] <host>\n\n"
      "OPTIONS\n    --parallel N    migrations at once (default 2)\n"
      "    --reason TEXT   disabled reason (default \"drain\")\n"
      "    --timeout S     give up after S seconds (default 600)\n\n"
      "    Progress goes to stderr, one result line per server to stdout. Exit 0 when\n"
      "    every server moved, 1 when some stayed, 5 on timeout.\n" },
    { "server", "migrate", ALLOW_MIGRATE | ALLOW_WAIT, 1, 1,
      "NAME\n    nube server migrate - move a server to another host\n\n"
      "SYNOPSIS\n    nube server migrate --live [--host H] [--wait] [--timeout S] <id|name>\n\n"
      "OPTIONS\n    --live          live migration (the guest keeps running)\n"
      "    --host H        destination (default: the scheduler picks)\n"
      "    --wait          wait until it finished and print where it runs\n" },
    { "host", "list", 0, 0, 0,
      "NAME\n    nube host list - list hypervisor hosts (GET /os-hypervisors/detail)\n\n"
      "SYNOPSIS\n    nube host list [-f table|json]\n" },
    { "flavor", "list", 0, 0, 0,
      "NAME\n    nube flavor list - list flavors, private ones included for admins\n\n"
      "SYNOPSIS\n    nube flavor list [-f table|json]\n" },
    { "billing", "export", ALLOW_PROJECT | ALLOW_WINDOW | ALLOW_CSV, 0, 0,
      "NAME\n    nube billing export - rated usage as CSV or JSON, streamed to stdout\n\n"
      "SYNOPSIS\n    nube billing export --format csv|json [--project P] [--start T] [--end T]\n\n"
      "OPTIONS\n    --format F      csv or json (required)\n"
      "    --project P     a project id (admin); default the token's project\n"
      "    --start T       ISO 8601 UTC (2026-01-01, 2026-01-01T10:00:00Z) or unix ms;\n"
      "                    default the first day of this month\n"
      "    --end T         exclusive; default now\n\n"
      "    Columns: period, project, resource, meter, quantity, unit, price, cost,\n"
      "    price_unit, currency (price and cost in micro-units of the currency).\n"
      "    An export cut short exits 1.\n" },
    { "billing", "invoice", ALLOW_PROJECT | ALLOW_MONTH, 0, 0,
      "NAME\n    nube billing invoice - a month's invoice with its line items\n\n"
      "SYNOPSIS\n    nube billing invoice [--project P] [--month YYYY-MM] [-f table|json]\n" },
    { "usage", "", ALLOW_PROJECT | ALLOW_WINDOW, 0, 0,
      "NAME\n    nube usage - metered quantities per resource and meter\n\n"
      "SYNOPSIS\n    nube usage [--project P] [--start T] [--end T] [-f table|json]\n" },
};

static const struct option long_opts[] = {
    { "os-cloud", required_argument, NULL, OPT_OS_CLOUD },
    { "format", required_argument, NULL, 'f' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, OPT_VERSION },
    { "all-projects", no_argument, NULL, OPT_ALL_PROJECTS },
    { "flavor", required_argument, NULL, OPT_FLAVOR },
    { "image", required_argument, NULL, OPT_IMAGE },
    { "wait", no_argument, NULL, OPT_WAIT },
    { "timeout", required_argument, NULL, OPT_TIMEOUT },
    { "project", required_argument, NULL, OPT_PROJECT },
    { "start", required_argument, NULL, OPT_START },
    { "end", required_argument, NULL, OPT_END },
    { "month", required_argument, NULL, OPT_MONTH },
    { "reason", required_argument, NULL, OPT_REASON },
    { "parallel", required_argument, NULL, OPT_PARALLEL },
    { "live", no_argument, NULL, OPT_LIVE },
    { "host", required_argument, NULL, OPT_HOST },
    { NULL, 0, NULL, 0 },
};

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs("nube: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'nube --help'.\n", stderr);
    return CLI_EXIT_USAGE;
}

/* Parse options from argv (GNU getopt permutes, so options may follow operands).
 * stop_at_operand: stop at the first word (for the options before the command). */
static int parse_opts(int argc, char **argv, bool stop_at_operand, cli_args *a)
{
    int c;

    optind = 0; /* GNU: 0 also resets getopt's internal state between argv vectors */
    opterr = 0;
    while ((c = getopt_long(argc, argv, stop_at_operand ? "+:f:h" : ":f:h", long_opts,
                            NULL)) != -1) {
        switch (c) {
        case OPT_OS_CLOUD:
            a->cloud = optarg;
            break;
        case 'f':
            /* csv is billing export's; check_allowed() refuses it elsewhere. */
            a->csv = strcmp(optarg, "csv") == 0;
            if (!a->csv && cli_format_parse(optarg, &a->fmt) < 0)
                return usage_error("unknown format '%s' (use table or json)", optarg);
            a->fmt_set = true;
            break;
        case OPT_PROJECT:
            a->billing.project = optarg;
            break;
        case OPT_START:
            a->billing.start = optarg;
            break;
        case OPT_END:
            a->billing.end = optarg;
            break;
        case OPT_REASON:
            a->reason = optarg;
            break;
        case OPT_PARALLEL:
            if (cl_parse_int64(optarg, &a->parallel) < 0 || a->parallel < 1 ||
                a->parallel > 64)
                return usage_error("--parallel wants a number between 1 and 64, not '%s'",
                                   optarg);
            break;
        case OPT_LIVE:
            a->live = true;
            break;
        case OPT_HOST:
            a->host = optarg;
            break;
        case OPT_MONTH:
            a->billing.month = optarg;
            break;
        case 'h':
            a->help = true;
            break;
        case OPT_VERSION:
            a->version = true;
            break;
        case OPT_ALL_PROJECTS:
            a->all_projects = true;
            break;
        case OPT_FLAVOR:
            a->flavor = optarg;
            break;
        case OPT_IMAGE:
            a->image = optarg;
            break;
        case OPT_WAIT:
            a->wait = true;
            break;
        case OPT_TIMEOUT:
            if (cl_parse_int64(optarg, &a->timeout_s) < 0 || a->timeout_s < 1 ||
                a->timeout_s > MAX_TIMEOUT_S)
                return usage_error("--timeout wants seconds between 1 and 604800, not '%s'",
                                   optarg);
            a->timeout_set = true;
            break;
        case ':':
            return usage_error("option '%s' needs a value", argv[optind - 1]);
        default:
            return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    return 0;
}

/* Reject options that belong to other commands, so `server list --wait` is not silently
 * ignored. */
static int check_allowed(const cmd_spec *cmd, const cli_args *a)
{
    char name[64];

    snprintf(name, sizeof(name), "%s %s", cmd->noun, cmd->verb);
    if (a->all_projects && !(cmd->allow & ALLOW_ALL_PROJECTS))
        return usage_error("--all-projects does not apply to '%s'", name);
    if ((a->flavor || a->image) && !(cmd->allow & ALLOW_FLAVOR_IMAGE))
        return usage_error("--flavor and --image do not apply to '%s'", name);
    if ((a->wait || a->timeout_set) && !(cmd->allow & ALLOW_WAIT))
        return usage_error("--wait and --timeout do not apply to '%s'", name);
    if (a->reason && !(cmd->allow & ALLOW_REASON))
        return usage_error("--reason does not apply to '%s'", name);
    if (a->parallel && !(cmd->allow & ALLOW_PARALLEL))
        return usage_error("--parallel does not apply to '%s'", name);
    if ((a->live || a->host) && !(cmd->allow & ALLOW_MIGRATE))
        return usage_error("--live and --host do not apply to '%s'", name);
    /* A drain always waits; its --timeout bounds it. */
    if (a->timeout_set && !a->wait && !(cmd->allow & ALLOW_PARALLEL))
        return usage_error("--timeout needs --wait");
    if ((cmd->allow & ALLOW_FLAVOR_IMAGE) && (!a->flavor || !a->image))
        return usage_error("'%s' needs --flavor and --image", name);
    if (a->csv && !(cmd->allow & ALLOW_CSV))
        return usage_error("unknown format 'csv' (use table or json)");
    if ((cmd->allow & ALLOW_CSV) && !a->fmt_set)
        return usage_error("'%s' needs --format csv or --format json", name);
    if (a->billing.project && !(cmd->allow & ALLOW_PROJECT))
        return usage_error("--project does not apply to '%s'", name);
    if ((a->billing.start || a->billing.end) && !(cmd->allow & ALLOW_WINDOW))
        return usage_error("--start and --end do not apply to '%s'", name);
    if (a->billing.month && !(cmd->allow & ALLOW_MONTH))
        return usage_error("--month does not apply to '%s'", name);
    return 0;
}

/* Pick and load the cloud: --os-cloud, else $OS_CLOUD, else the OS_* variables. */
static int load_cloud(const cli_args *a, cli_cloud *cloud, cl_error *err)
{
    const char *name = a->cloud ? a->cloud : getenv("OS_CLOUD");
    int r;

    if (name && *name)
        r = cli_clouds_load(name, cloud, err);
    else {
        r = cli_cloud_from_env(cloud, err);
        if (r == -ENOENT)
            cl_error_set(err, CL_E_BAD_REQUEST,
                         "no cloud selected: use --os-cloud NAME, set OS_CLOUD, or set "
                         "OS_AUTH_URL and the other OS_* variables");
    }
    return r;
}

static int run(const cmd_spec *cmd, cli_ctx *ctx, const cli_args *a, char **pos, int npos,
               cl_error *err)
{
    int64_t timeout = a->timeout_set ? a->timeout_s : DEFAULT_TIMEOUT_S;

    if (strcmp(cmd->noun, "server") == 0) {
        if (strcmp(cmd->verb, "list") == 0)
            return cli_cmd_server_list(ctx, a->all_projects, err);
        if (strcmp(cmd->verb, "show") == 0)
            return cli_cmd_server_show(ctx, pos[0], err);
        if (strcmp(cmd->verb, "migrate") == 0)
            return cli_cmd_server_migrate(ctx, pos[0], a->live, a->host, a->wait, timeout,
                                          err);
        if (strcmp(cmd->verb, "create") == 0)
            return cli_cmd_server_create(ctx, pos[0], a->flavor, a->image, a->wait, timeout,
                                         err);
        return cli_cmd_server_delete(ctx, (const char *const *)pos, (size_t)npos, a->wait,
                                     timeout, err);
    }
    if (strcmp(cmd->noun, "host") == 0 && strcmp(cmd->verb, "list") != 0) {
        if (strcmp(cmd->verb, "drain") == 0)
            return cli_cmd_host_drain(ctx, pos[0], a->parallel ? a->parallel : 2, a->reason,
                                      timeout, err);
        return cli_cmd_host_set_enabled(ctx, pos[0], strcmp(cmd->verb, "enable") == 0,
                                        a->reason, err);
    }
    if (strcmp(cmd->noun, "host") == 0)
        return cli_cmd_host_list(ctx, err);
    if (strcmp(cmd->noun, "usage") == 0)
        return cli_cmd_usage(ctx, &a->billing, err);
    if (strcmp(cmd->noun, "billing") == 0) {
        cli_billing_args b = a->billing;
        b.csv = a->csv;
        if (strcmp(cmd->verb, "export") == 0)
            return cli_cmd_billing_export(ctx, &b, err);
        return cli_cmd_billing_invoice(ctx, &b, err);
    }
    return cli_cmd_flavor_list(ctx, err);
}

int main(int argc, char **argv)
{
    cli_args a = { .fmt = CLI_FMT_TABLE };
    const cmd_spec *cmd = NULL;
    cli_cloud *cloud = NULL;
    cli_ctx ctx = { .out = stdout, .err = stderr, .poll_ms = CLI_POLL_MS };
    cl_error err = { .code = CL_E_OK, .message = "" };
    char **sub;
    int nsub, r;

    argv[0] = (char *)"nube";
    r = parse_opts(argc, argv, true, &a);
    if (r)
        return r;
    if (a.version) {
        puts("nube " NUBE_VERSION);
        return CLI_EXIT_OK;
    }
    if (optind >= argc || strcmp(argv[optind], "help") == 0) {
        if (!a.help && optind >= argc) {
            fputs(main_help, stderr);
            return CLI_EXIT_USAGE;
        }
        fputs(main_help, stdout);
        return CLI_EXIT_OK;
    }
    for (size_t i = 0; i < CL_ARRAY_SIZE(commands); i++) {
        if (optind + 1 < argc && strcmp(commands[i].noun, argv[optind]) == 0 &&
            strcmp(commands[i].verb, argv[optind + 1]) == 0)
            cmd = &commands[i];
        /* One-word commands (usage) have an empty verb. */
        if (!commands[i].verb[0] && strcmp(commands[i].noun, argv[optind]) == 0)
            cmd = &commands[i];
    }
    if (!cmd) {
        if (a.help) {
            fputs(main_help, stdout);
            return CLI_EXIT_OK;
        }
        return usage_error("unknown command '%s%s'", argv[optind],
                           optind + 1 < argc ? " ..." : "");
    }
    /* Re-parse what follows the two command words, options and operands mixed;
     * sub[0] stands in for the program name as getopt expects. */
    sub = argv + optind + (cmd->verb[0] ? 1 : 0);
    nsub = argc - optind - (cmd->verb[0] ? 1 : 0);
    r = parse_opts(nsub, sub, false, &a);
    if (r)
        return r;
    if (a.help) {
        fputs(cmd->help, stdout);
        return CLI_EXIT_OK;
    }
    if (a.version) {
        puts("nube " NUBE_VERSION);
        return CLI_EXIT_OK;
    }
    r = check_allowed(cmd, &a);
    if (r)
        return r;
    if (nsub - optind < cmd->min_pos ||
        (cmd->max_pos >= 0 && nsub - optind > cmd->max_pos))
        return usage_error("wrong number of arguments for '%s %s'", cmd->noun, cmd->verb);

    cloud = calloc(1, sizeof(*cloud));
    if (!cloud) {
        fputs("nube: out of memory\n", stderr);
        return CLI_EXIT_API;
    }
    r = load_cloud(&a, cloud, &err);
    if (r < 0) {
        fprintf(stderr, "nube: %s\n", err.message);
        free(cloud);
        return CLI_EXIT_USAGE;
    }
    cl_http_client_global_init();
    ctx.fmt = a.fmt;
    ctx.err_tty = isatty(STDERR_FILENO);
    r = cli_authenticate(cloud, CLI_HTTP_TIMEOUT_MS, &ctx.sess, &err);
    /* The password has no further use: do not keep it in memory. */
    explicit_bzero(cloud->password, sizeof(cloud->password));
    free(cloud);
    if (r < 0) {
        fprintf(stderr, "nube: %s\n", err.message);
        return CLI_EXIT_API;
    }
    r = run(cmd, &ctx, &a, sub + optind, nsub - optind, &err);
    if (r != CLI_EXIT_OK && err.message[0])
        fprintf(stderr, "nube: %s\n", err.message);
    cli_session_clear(&ctx.sess);
    if (fflush(stdout) != 0 && r == CLI_EXIT_OK) {
        fprintf(stderr, "nube: writing the output failed\n");
        r = CLI_EXIT_API;
    }
    return r;
}
