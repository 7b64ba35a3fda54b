/*
 * api_fixture.h - the nube-api test fixture shared by the test_api_*.c files.
 *
 * Each of those tests runs one real nube-api (api_start) per group on a temporary
 * controller DB with port 0 for both listeners, usually with a real cl_bus ROUTER
 * playing the scheduler, and talks to it through cl_http_request on loopback. What they
 * had in common - the temporary directory, the bus, the config every test sets, start
 * and stop with the removal of every file, and one request with its parsed reply - lives
 * here once; what differs (workers, tokens, extra settings, the headers of a call) stays
 * in each test.
 *
 * Usage: api_fx_prepare(), then api_fx_set() for the test's own settings, then
 * api_fx_start(); api_fx_stop() in the group teardown.
 */
#ifndef TEST_API_FIXTURE_H
#define TEST_API_FIXTURE_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "api.h"
#include "bus.h"
#include "http.h"
#include "store.h"

typedef struct api_fx {
    char dir[256];
    char db[300];
    char endpoint[64]; /* the scheduler's bus endpoint */
    api_cfg cfg;
    api_ctx *api;
    cl_bus *sched; /* the fake scheduler; NULL when the test needs none */
    cl_store *st;  /* the test thread's own connection to the controller DB */
    char compute[128];
    char identity[128];
} api_fx;

/* One answer: status, body parsed as JSON (NULL when it is not JSON) and the raw result. */
typedef struct api_reply {
    long status;
    json_object *json;
    cl_http_result raw;
} api_reply;

/* A free TCP port on 127.0.0.1 (bound and released). */
int api_fx_free_port(void);

/* Logs at warning level for name, makes /tmp/<name>_XXXXXX with the controller DB path in
 * it and, when on_msg is non-NULL, a ROUTER bus named nube-scheduler on a free port that
 * calls on_msg(ud) (without one, the endpoint is a port nobody listens on: ZeroMQ
 * connects lazily). Then config defaults and what every test sets: the database, the
 * scheduler endpoint (resend 200 ms when there is a bus), both listeners on port 0, the
 * static admin token and the admin password. Fails the test on error. */
void api_fx_prepare(api_fx *fx, const char *name, cl_bus_handler_fn on_msg, void *ud,
                    const char *admin_token, const char *admin_password);

/* One config setting; fails the test when refused. */
void api_fx_set(api_fx *fx, const char *section, const char *name, const char *value);

/* api_start, the compute and identity base URLs, and fx->st. Fails the test on error. */
void api_fx_start(api_fx *fx);

/* Stops what api_fx_start and api_fx_prepare started, removes the DB with its WAL side
 * files, then each of extra_files (names inside fx->dir, NULL-terminated, may be NULL;
 * each must exist) and the directory, asserting it is empty. */
void api_fx_stop(api_fx *fx, const char *const *extra_files);

/* One request to url with the given headers (NULL-terminated), the body (may be NULL)
 * and a timeout; a transport failure fails the test. */
api_reply api_fx_request(const char *method, const char *url, const char *const *headers,
                         const char *body, long timeout_ms);

void api_reply_free(api_reply *r);

/* The string at a dotted path (cl_json_path) of any JSON type, or NULL. */
const char *api_jget(json_object *root, const char *path);

#endif
