/*
 * migrate_actions.h - live migration in the Compute API (migrate_actions.c): the
 * os-migrateLive server action and the server migrations sub-resource (list, show,
 * abort, force_complete).
 */
#ifndef API_MIGRATE_ACTIONS_H
#define API_MIGRATE_ACTIONS_H

#include <json-c/json.h>

#include "api_int.h"

/* POST /servers/{id}/action {"os-migrateLive": {...}} (called by actions.c with the
 * loaded server): admin only; 202, or 400/403/409 as Nova. */
void api_migrate_live(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, cl_store *st,
                      const cl_instance *inst, json_object *arg);

/* POST /servers/{id}/action {"evacuate": {"host"?}}: admin; the server's host must be
 * down (400 "still in use" otherwise); 200. The scheduler rebuilds it from its image on
 * another host. */
/* POST action {"migrate": null | {"host": H}} (admin): cold migration to H or the
 * scheduler's choice, ending in VERIFY_RESIZE. Only between "test" hypervisor hosts for
 * now (501 otherwise: the real-QEMU disk copy is not written). */
void api_migrate_cold(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, cl_store *st,
                      const cl_instance *cur, json_object *arg);

/* resize to flavor fl when the server's host has no room for it: a cold migration with
 * the new flavor to another host (scheduler's choice), ending in VERIFY_RESIZE. false
 * (nothing answered) when the host's hypervisor cannot do that yet (not "test"). */
bool api_resize_other_host(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp,
                           cl_store *st, const cl_instance *cur, const cl_flavor *fl);

/* confirmResize / revertResize of a cold migration. false (nothing answered) when the
 * server has no cold migration waiting: the caller handles a same-host resize. */
bool api_migrate_cold_end(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp,
                          cl_store *st, const cl_instance *cur, bool confirm);

void api_evacuate(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, cl_store *st,
                  const cl_instance *inst, json_object *arg);

/* GET /v2.1/servers/{id}/migrations and /{mid}: live migrations with their progress. */
void api_server_migrations_list(const cl_http_req *req, cl_http_resp *resp, void *ud);
void api_server_migration_show(const cl_http_req *req, cl_http_resp *resp, void *ud);
/* DELETE /v2.1/servers/{id}/migrations/{mid}: abort (202). */
void api_server_migration_delete(const cl_http_req *req, cl_http_resp *resp, void *ud);
/* POST /v2.1/servers/{id}/migrations/{mid}/action {"force_complete": null} (202). */
void api_server_migration_action(const cl_http_req *req, cl_http_resp *resp, void *ud);

#endif
