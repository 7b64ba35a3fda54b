/*
 * manage.c - nube-manage: one-shot operator commands against nube-api's configuration
 * and controller database (the role keystone-manage plays for Keystone).
 *
 *   nube-manage [--config FILE] bootstrap [--password PW]
 *       Create what a cloud needs before anyone can log in: the Default domain, the admin
 *       project and user of [auth] (password from --password, $OS_BOOTSTRAP_PASSWORD or
 *       [auth] admin_password), the roles admin/member/reader, the admin role
 *       assignment, and the token key file when missing. Idempotent: run it again to
 *       reset the admin password.
 *   nube-manage [--config FILE] token-key generate
 *       Write a new random token key ([auth] token_key_file), replacing the old one:
 *       every outstanding token stops verifying. Restart the nube HTTP services.
 *
 * nube-api runs the same bootstrap at start when the admin user is missing, so a fresh
 * install works without this tool; it exists for explicit, scripted set-ups and key
 * rotation. The code is api_identity_bootstrap() in identity.c, shared with nube-api.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "api_int.h"
#include "config.h"
#include "errors.h"
#include "log.h"
#include "token.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: nube-manage [--config FILE] bootstrap [--password PW]\n"
            "       nube-manage [--config FILE] token-key generate\n"
            "\n"
            "  --config FILE   nube-api configuration (default /etc/nube/nube-api.conf)\n"
            "  --password PW   admin password for bootstrap (default: $OS_BOOTSTRAP_PASSWORD,\n"
            "                  then [auth] admin_password)\n");
}

static int cmd_bootstrap(const api_cfg *cfg, const char *password)
{
    cl_error err = {0};
    bool changed = false;
    char key[4096];

    if (!password || !*password)
        password = getenv("OS_BOOTSTRAP_PASSWORD");
    if ((!password || !*password) && (!cfg->admin_password || !*cfg->admin_password)) {
        fprintf(stderr, "nube-manage: no admin password: pass --password, set "
                        "OS_BOOTSTRAP_PASSWORD or [auth] admin_password\n");
        return 1;
    }
    if (api_identity_bootstrap(cfg, password && *password ? password : NULL, &changed,
                               &err) < 0) {
        fprintf(stderr, "nube-manage: bootstrap failed: %s\n", err.message);
        return 1;
    }
    api_token_key_path(cfg, key, sizeof(key));
    printf("bootstrap %s: domain Default, project %s (%s), user %s (%s) with role admin; "
           "token key %s\n", changed ? "done" : "already complete", cfg->admin_project_name,
           cfg->admin_project_id, cfg->admin_user, cfg->admin_user_id, key);
    return 0;
}

static int cmd_token_key_generate(const api_cfg *cfg)
{
    cl_error err = {0};
    char key[4096];

    api_token_key_path(cfg, key, sizeof(key));
    if (cl_token_key_generate(key, &err) < 0) {
        fprintf(stderr, "nube-manage: %s\n", err.message);
        return 1;
    }
    printf("new token key written to %s; restart the nube HTTP services (outstanding tokens "
           "are no longer valid)\n", key);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"password", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = "/etc/nube/nube-api.conf";
    const char *password = NULL;
    api_cfg cfg;
    cl_error err = {0};
    int c, rc;

    while ((c = getopt_long(argc, argv, "c:p:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 'p': password = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    cl_log_init("nube-manage", CL_LOG_WARN, false);
    memset(&cfg, 0, sizeof(cfg));
    if (cl_config_load(config, api_cfg_keys, api_cfg_nkeys, &cfg, &err) < 0) {
        fprintf(stderr, "nube-manage: %s: %s\n", config, err.message);
        cl_config_free(api_cfg_keys, api_cfg_nkeys, &cfg);
        return 1;
    }
    if (strcmp(argv[optind], "bootstrap") == 0 && optind + 1 == argc) {
        rc = cmd_bootstrap(&cfg, password);
    } else if (strcmp(argv[optind], "token-key") == 0 && optind + 2 == argc &&
               strcmp(argv[optind + 1], "generate") == 0) {
        rc = cmd_token_key_generate(&cfg);
    } else {
        usage(stderr);
        rc = 2;
    }
    cl_config_free(api_cfg_keys, api_cfg_nkeys, &cfg);
    return rc;
}
