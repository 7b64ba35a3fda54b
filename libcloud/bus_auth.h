/*
 * bus_auth.h - who may speak on the bus: CURVE key files and the ZAP handler.
 *
 * Every bus peer has a CURVE key pair. The secret key lives in a file of its own (one
 * line, the 40-character Z85 secret key) that must not be readable by group or others;
 * the public key is derived from it. A public key file is one line "<z85 public key>
 * <name>": the scheduler's (or billing's) allowed-keys directory holds one such file per
 * key it admits, and the name is the host name (or "nube-api") that key may speak as.
 *
 * Rotation: put the new key's file next to the old one (two keys for one name are fine),
 * switch the agent to the new secret key, delete the old file. Revocation: delete the
 * file. The directory is re-read when its modification time changes (at most once a
 * second), both at connection time (ZAP) and for every message received, so a revoked
 * key stops being heard on a connection that was already up.
 *
 * The ZAP handler (ZeroMQ RFC 27) is a REP socket on inproc://zeromq.zap.01 in the bus's
 * own ZeroMQ context, served by a thread of its own. It admits a CURVE client only when
 * the domain is CL_BUS_ZAP_DOMAIN and its key is in the directory; it answers with the
 * key's name as User-Id and the key itself as the X-Key property, which the bus reads
 * back from each message (zmq_msg_gets) to fill cl_bus_msg.user_id.
 */
#ifndef CL_BUS_AUTH_H
#define CL_BUS_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "errors.h"

#define CL_BUS_KEY_LEN 41 /* 40 Z85 characters and the NUL */
#define CL_BUS_ZAP_DOMAIN "nube"
#define CL_BUS_AUTH_KEY_PROP "X-Key"

/* Generate a new key pair. 0, -ENOTSUP (libzmq without CURVE) or -EIO. */
int cl_bus_keypair(char pub[CL_BUS_KEY_LEN], char sec[CL_BUS_KEY_LEN]);

/* Write sec to path (created 0600, O_EXCL unless overwrite) and "<pub> <name>" to
 * pub_path (0644) when pub_path is not NULL. 0 or negative errno with err. */
int cl_bus_key_write(const char *path, const char *pub_path, const char *name,
                     const char pub[CL_BUS_KEY_LEN], const char sec[CL_BUS_KEY_LEN],
                     bool overwrite, cl_error *err);

/* Read a secret key file: refused (-EPERM) when group or others may read it. Fills sec
 * and the derived pub. 0 or negative errno with err. */
int cl_bus_key_read_secret(const char *path, char pub[CL_BUS_KEY_LEN],
                           char sec[CL_BUS_KEY_LEN], cl_error *err);

/* Read a public key file ("<key>" or "<key> <name>"); name may be NULL, gets "" when the
 * file has none. 0 or negative errno with err. */
int cl_bus_key_read_public(const char *path, char pub[CL_BUS_KEY_LEN], char *name,
                           size_t name_len, cl_error *err);

/* True when s is a 40-character Z85 string. */
bool cl_bus_key_valid(const char *s);

/* A daemon's keys, loaded from the files its config names. */
typedef struct cl_bus_keys {
    char pub[CL_BUS_KEY_LEN];
    char sec[CL_BUS_KEY_LEN];
    char server[CL_BUS_KEY_LEN]; /* DEALER: the ROUTER's public key, else "" */
} cl_bus_keys;

struct cl_bus_opts;

/* Load secret_file (and server_pub_file, a public key file, when not NULL/empty) and
 * point opts' curve_* at k (which must outlive cl_bus_new). Nothing to do (0) when
 * secret_file is NULL or empty: CURVE stays off. A DEALER (server_pub_file expected)
 * with a secret key but no server key is an error. 0 or negative errno with err. */
int cl_bus_keys_apply(cl_bus_keys *k, const char *secret_file, const char *server_pub_file,
                      bool dealer, struct cl_bus_opts *opts, cl_error *err);

/* The handler for one ZeroMQ context. */
typedef struct cl_bus_auth cl_bus_auth;

/* Bind the ZAP socket in zctx and start its thread. The directory must exist (it may be
 * empty: then nobody gets in). 0 or negative errno with err. */
int cl_bus_auth_start(void *zctx, const char *allowed_dir, cl_bus_auth **out, cl_error *err);

/* Stop the thread and close the socket (before zmq_ctx_term). Accepts NULL. */
void cl_bus_auth_stop(cl_bus_auth *a);

/* Is key still allowed to speak as name? Re-reads the directory when it changed.
 * Thread-safe. */
bool cl_bus_auth_allowed(cl_bus_auth *a, const char *key, const char *name);

/* Counters: handshakes admitted and refused, messages refused after a revocation. */
typedef struct cl_bus_auth_stats {
    unsigned long admitted, refused, revoked_msgs;
} cl_bus_auth_stats;
void cl_bus_auth_get_stats(cl_bus_auth *a, cl_bus_auth_stats *out);

/* Count a message dropped because its key was revoked (the bus calls this). */
void cl_bus_auth_count_revoked(cl_bus_auth *a);

/* True at most once per CL_BUS_AUTH_WARN_MS: refusals are logged at warning level that
 * often, at debug level otherwise, so a peer resending every few hundred ms cannot flood
 * the log. Thread-safe. */
#define CL_BUS_AUTH_WARN_MS 10000
bool cl_bus_auth_warn_due(cl_bus_auth *a);

#endif
