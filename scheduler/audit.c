/*
 * audit.c - nube-placement-audit: report (and with --repair, fix) placement records
 * that disagree with each other.
 *
 *   nube-placement-audit [--config /etc/nube/nube-scheduler.conf] [--repair] [--json]
 *
 * It reads [database] connection from the scheduler's config and runs
 * cl_store_placement_audit(): allocations without a live instance, live instances on a
 * host without an allocation, allocations on another host than the instance row,
 * allocations of another size than the flavor (host usage is the sum of allocations, so
 * this is where usage and reality disagree), allocations on unknown hosts, and source
 * halves of migrations that ended. Each finding is one line (or one JSON object);
 * --repair fixes them all in one transaction, safe while the daemons run (the claim
 * takes the same write lock).
 *
 * Exit status: 0 nothing found (or everything repaired), 1 findings left, 2 error.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "config.h"
#include "errors.h"
#include "json.h"
#include "log.h"
#include "sched.h"
#include "store.h"
#include "store_placement.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: nube-placement-audit [--config FILE] [--repair] [--json]\n"
                 "Report placement inconsistencies (allocations vs instances vs hosts);\n"
                 "--repair fixes them. Exit 0 clean/repaired, 1 findings, 2 error.\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"repair", no_argument, NULL, 'r'},
        {"json", no_argument, NULL, 'j'},         {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *conf = "/etc/nube/nube-scheduler.conf";
    bool repair = false, json = false;
    _cleanup_free_ cl_audit_item *items = NULL;
    sched_cfg cfg;
    cl_error err = {0};
    cl_store *st = NULL;
    size_t n = 0;
    int c, r;

    while ((c = getopt_long(argc, argv, "c:rjh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            conf = optarg;
            break;
        case 'r':
            repair = true;
            break;
        case 'j':
            json = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    memset(&cfg, 0, sizeof(cfg));
    r = cl_config_load(conf, sched_cfg_keys, sched_cfg_nkeys, &cfg, &err);
    if (r < 0) {
        fprintf(stderr, "nube-placement-audit: %s: %s\n", conf,
                err.message[0] ? err.message : strerror(-r));
        cl_config_free(sched_cfg_keys, sched_cfg_nkeys, &cfg);
        return 2;
    }
    r = cl_store_open(cfg.db_connection, &st, &err);
    if (r == 0)
        r = cl_store_placement_audit(st, repair, &items, &n);
    if (r < 0) {
        fprintf(stderr, "nube-placement-audit: %s\n", err.message[0] ? err.message : strerror(-r));
        cl_store_free(st);
        cl_config_free(sched_cfg_keys, sched_cfg_nkeys, &cfg);
        return 2;
    }
    for (size_t i = 0; i < n; i++) {
        if (json) {
            _cleanup_json_ json_object *o = json_object_new_object();

            json_object_object_add(o, "kind",
                                   json_object_new_string(cl_audit_kind_name(items[i].kind)));
            json_object_object_add(o, "consumer", json_object_new_string(items[i].consumer));
            json_object_object_add(o, "host", json_object_new_string(items[i].host));
            json_object_object_add(o, "detail", json_object_new_string(items[i].detail));
            json_object_object_add(o, "repaired", json_object_new_boolean(repair));
            printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        } else {
            printf("%-28s %-36s %-20s %s%s\n", cl_audit_kind_name(items[i].kind),
                   items[i].consumer, items[i].host, items[i].detail,
                   repair ? " [repaired]" : "");
        }
    }
    if (!json)
        printf("%zu %s%s\n", n, n == 1 ? "finding" : "findings", repair && n ? " repaired" : "");
    cl_store_free(st);
    cl_config_free(sched_cfg_keys, sched_cfg_nkeys, &cfg);
    return n > 0 && !repair ? 1 : 0;
}
