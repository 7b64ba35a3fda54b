/*
 * bus.h - the nube message bus over ZeroMQ: one envelope, at-least-once delivery.
 *
 * Envelope (one JSON object in the last frame, after the routing frames):
 *   {"v":1, "id":"<uuid>", "type":"<noun.verb>", "ts":<unix ms>, "from":"<sender>",
 *    "req":"<request id>", "body":{...}}
 *
 * Topology: the scheduler (and billing) bind a ROUTER; agents and nube-api connect a
 * DEALER named by their name (host name for agents). Peers are addressed by name in the
 * API, but on the wire each DEALER socket has a routing id of its own,
 * "<name>#<32 random hex digits>" ('#' cannot appear in a name), so two connections
 * never compete for one id: an agent that restarts is a new connection, routed to as
 * soon as it has spoken, whatever became of its old one. The ROUTER learns
 * name -> current routing id only from the messages it accepts: with an allowed-keys
 * directory only from messages whose CURVE key maps to that name (bus_auth.h), without
 * one from the name part of the routing id. A send to a name waits (pending, resent)
 * until such a message has arrived; a DEALER says "hello" (an internal message, acked,
 * never handed to on_msg) as soon as it is connected and again now and then, so it is
 * known before it sends anything else. The route is forgotten when its key is revoked
 * or a message on it comes with a key that may not speak for the name.
 * ROUTER_MANDATORY turns sends to absent peers into errors that the resend timer retries.
 *
 * Delivery: a reliable message stays in the sender's pending set until an "ack" carrying
 * the same id comes back; it is resent every resend_ms (to the same peer) until then, or
 * dropped after max_tries (0 = never), which is logged. A receiver acknowledges after its
 * handler returned (so the handler has persisted what it needed), or with manual_ack when
 * the receiver calls cl_bus_ack() (after a later commit, from another thread), and
 * remembers the last dedup_cap ids: a duplicate is acknowledged again but not handed to
 * the handler.
 * With outbox_path set, pending reliable messages are also kept in a SQLite file and
 * reloaded by cl_bus_new(), so a restart of the sender loses nothing.
 * Unreliable messages (heartbeats) are fire-and-forget.
 *
 * Threads: cl_bus_new() starts one bus thread that owns the socket. on_msg and on_tick
 * run on that thread, one at a time: that thread is the daemon's event loop. cl_bus_send()
 * may be called from any thread (it queues and wakes the loop) including from on_msg.
 *
 * Security: curve_* keys turn on CURVE (encryption, server authentication); on a ROUTER
 * curve_allowed_dir adds client authentication by a ZAP handler (bus_auth.h). Empty means
 * plain TCP, as in most tests.
 */
#ifndef CL_BUS_H
#define CL_BUS_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "errors.h"
#include "util.h"

#define CL_BUS_VERSION 1
#define CL_BUS_MAX_FRAME (1024 * 1024) /* larger frames are dropped and logged */
#define CL_BUS_NAME_MAX 256
/* A DEALER's routing id is "<name>#<32 hex>" and ZeroMQ allows 255 bytes. */
#define CL_BUS_DEALER_NAME_MAX (CL_BUS_NAME_MAX - 1 - 33)

typedef struct cl_bus cl_bus;

/* A decoded message. All strings and body are owned by the message. */
typedef struct cl_bus_msg {
    int v;
    char id[CL_UUID_LEN];
    char type[64];
    int64_t ts;
    char from[CL_BUS_NAME_MAX];
    char req[80];              /* request id, may be "" */
    json_object *body;         /* always an object (empty when absent) */
    char peer[CL_BUS_NAME_MAX]; /* ROUTER side: the sender's name (its routing id up to
                                   '#'), what cl_bus_send/cl_bus_ack take; DEALER: "" */
    char user_id[CL_BUS_NAME_MAX]; /* ROUTER with curve_allowed_dir: the name the sender's
                                      key maps to (== peer, checked); otherwise "" */
    char conn[CL_BUS_NAME_MAX]; /* ROUTER side: the raw routing id of the connection (for
                                   logs and tests; never needed to reply); DEALER: "" */
} cl_bus_msg;

typedef enum { CL_BUS_ROUTER, CL_BUS_DEALER, CL_BUS_ROLE_MAX } cl_bus_role;

typedef void (*cl_bus_handler_fn)(cl_bus *bus, const cl_bus_msg *msg, void *ud);
typedef void (*cl_bus_tick_fn)(cl_bus *bus, void *ud);

typedef struct cl_bus_opts {
    cl_bus_role role;
    const char *endpoint;   /* "tcp://127.0.0.1:5570"; ROUTER binds, DEALER connects */
    const char *name;       /* "from" of sent messages, the peer name the ROUTER sees;
                             * no '#'; a DEALER's at most CL_BUS_DEALER_NAME_MAX bytes */
    int resend_ms;          /* default 2000 */
    int max_tries;          /* 0 = resend until acked */
    size_t dedup_cap;       /* remembered ids, default 4096 */
    size_t pending_cap;     /* max unacked reliable messages, default 10000 (-ENOBUFS) */
    const char *outbox_path;/* optional SQLite file for pending reliable messages */
    int tick_ms;            /* period of on_tick, 0 = none */
    cl_bus_handler_fn on_msg;
    cl_bus_tick_fn on_tick;
    void *ud;
    /* CURVE (optional, z85 keys). Empty = off. */
    const char *curve_public_key;
    const char *curve_secret_key;
    const char *curve_server_key; /* DEALER: the ROUTER's public key */
    /* ROUTER with curve_secret_key: directory of allowed client keys (bus_auth.h). A ZAP
     * handler admits only those keys, a message whose name (routing id up to '#') differs
     * from its key's name or whose key was since revoked is dropped (and forgets the
     * route to that name if it came on it), user_id is filled, and a name is routed to
     * only over the last connection its own, still allowed, key spoke on. */
    const char *curve_allowed_dir;
    /* Manual acknowledgement (default off): the bus does not ack after on_msg returns;
     * the receiver calls cl_bus_ack() once it has made the message durable, from any
     * thread, or never (the sender then resends it after resend_ms). Until it is
     * acked a message is not remembered as handled, so a resend reaches on_msg again:
     * receivers in this mode de-duplicate what they store themselves. */
    bool manual_ack;
} cl_bus_opts;

/* Create the socket, bind/connect, reload the outbox, start the bus thread.
 * Returns 0 and *out, or negative errno with err (e.g. address in use). */
int cl_bus_new(const cl_bus_opts *opts, cl_bus **out, cl_error *err);

/* Stop the thread (pending messages stay in the outbox when there is one) and free.
 * Accepts NULL. Must not be called from the bus thread. */
void cl_bus_free(cl_bus *bus);

/* Queue a message. peer: name to send to (ROUTER side: it goes to the connection that
 * name last spoke on, see Topology) or NULL (DEALER side).
 * req: request id to carry (NULL -> the calling thread's log request id).
 * body: taken over (NULL -> {}). reliable: keep and resend until acked.
 * out_id (may be NULL) receives the message id.
 * Returns 0, -ENOBUFS when the pending set is full, -EINVAL for a bad type/peer
 * ("ack" and "bus.hello" are reserved; a peer name has no '#').
 * Thread-safe. */
int cl_bus_send(cl_bus *bus, const char *peer, const char *type, const char *req,
                json_object *body, bool reliable, char out_id[CL_UUID_LEN]);

/* Acknowledge message id received from peer (ROUTER side: msg->peer, the name; NULL or
 * "" on a DEALER), for
 * a bus in manual_ack mode: the id is remembered as handled (a later copy is acked again
 * without reaching on_msg) and the ack goes out from the bus thread. Returns 0, -EINVAL
 * (not manual_ack, bad id or peer), -ENOBUFS (send queue full: the sender will resend)
 * or -ENOMEM. Thread-safe, callable from on_msg. */
int cl_bus_ack(cl_bus *bus, const char *peer, const char *id);

/* Number of reliable messages still waiting for their ack. Thread-safe. */
size_t cl_bus_pending(cl_bus *bus);

/* Counters for /metrics. Thread-safe snapshot. */
typedef struct cl_bus_stats {
    uint64_t sent, received, acked, resent, duplicates, dropped, bad_frames;
} cl_bus_stats;
void cl_bus_get_stats(cl_bus *bus, cl_bus_stats *out);

/* ---- the codec, shared by both ends (also fuzzed) ---- */

/* Serialise a message into a new string (caller frees). 0 or -ENOMEM. */
int cl_bus_encode(const cl_bus_msg *msg, char **out);

/* Parse and validate an envelope (v == 1, id is a UUID, type/from non-empty and bounded,
 * body an object if present). Fills *out (release with cl_bus_msg_clear).
 * Returns 0 or -EINVAL with err describing the defect. */
int cl_bus_decode(const char *buf, size_t len, cl_bus_msg *out, cl_error *err);

/* Release the body of a decoded message; accepts a zeroed message. */
void cl_bus_msg_clear(cl_bus_msg *msg);

#endif
