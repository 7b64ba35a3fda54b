/*
 * actions.h - server actions of nube-api (actions.c): POST /v2.1/servers/{id}/action and
 * the addresses block of a server's representation.
 */
#ifndef API_ACTIONS_H
#define API_ACTIONS_H

#include <json-c/json.h>

#include "http.h"
#include "store.h"

/* POST /v2.1/servers/{id}/action (ud is the api_ctx). */
void api_servers_action(const cl_http_req *req, cl_http_resp *resp, void *ud);

/* The server's "addresses" object as Nova shows it: {"nube": [{"addr", "version",
 * "OS-EXT-IPS:type": "fixed"}]} from the addresses its host reported, {} when none.
 * New reference (never NULL unless out of memory). */
json_object *api_actions_addresses_json(cl_store *st, const char *uuid);

#endif
