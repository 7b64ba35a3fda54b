/*
 * test_bus_auth.c - CURVE key files and the ZAP handler, over real ZeroMQ on loopback.
 *
 * Each test makes a temporary allowed-keys directory, a CURVE ROUTER with a ZAP handler
 * reading it, and DEALERs with keys the directory knows or does not know. What must hold:
 * an unknown key never gets a message delivered, a known key does and the handler sees
 * its name as user_id, a key for hostA cannot speak as hostB, deleting a key file revokes
 * it (also on a connection that is already up), and two keys for one host both work
 * (rotation). Key files: a secret key readable by others is refused.
 *
 * Routing ids: another admitted key connecting as "hostA" while hostA is away holds
 * nothing: a command for hostA waits until hostA's own key speaks and then reaches the
 * real hostA (who can connect beside the impostor); a restarted hostA is served at once
 * even while its old connection is still up, without waiting for a resend.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "bus.h"
#include "bus_auth.h"
#include "util.h"

#define WAIT_MS 5000
/* How long "nothing arrives" is watched: several resends at RESEND_MS. */
#define QUIET_MS 800
#define RESEND_MS 100

static void nap(void)
{
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

#define WAIT_UNTIL(expr)                                                                   \
    ({                                                                                     \
        int64_t _deadline = cl_mono_ms() + WAIT_MS;                                        \
        bool _ok;                                                                          \
        while (!(_ok = (expr)) && cl_mono_ms() < _deadline)                                \
            nap();                                                                         \
        _ok;                                                                               \
    })

static void quiet(void)
{
    int64_t end = cl_mono_ms() + QUIET_MS;
    while (cl_mono_ms() < end)
        nap();
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

typedef struct seen {
    pthread_mutex_t lock;
    int count;
    char last_user[CL_BUS_NAME_MAX];
    char last_peer[CL_BUS_NAME_MAX];
    char last_conn[CL_BUS_NAME_MAX];
} seen;

static void on_msg(cl_bus *bus, const cl_bus_msg *msg, void *ud)
{
    (void)bus;
    seen *s = ud;
    pthread_mutex_lock(&s->lock);
    s->count++;
    cl_strlcpy(s->last_user, msg->user_id, sizeof s->last_user);
    cl_strlcpy(s->last_peer, msg->peer, sizeof s->last_peer);
    cl_strlcpy(s->last_conn, msg->conn, sizeof s->last_conn);
    pthread_mutex_unlock(&s->lock);
}

static int seen_count(seen *s)
{
    pthread_mutex_lock(&s->lock);
    int n = s->count;
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* One server: its keys, its allowed directory, its bus. */
typedef struct fixture {
    char dir[256];
    char allowed[300];
    char ep[64];
    char srv_pub[CL_BUS_KEY_LEN], srv_sec[CL_BUS_KEY_LEN];
    cl_bus *router;
    seen rs;
} fixture;

static int setup(void **state)
{
    if (!zmq_has("curve"))
        return -1;
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    pthread_mutex_init(&f->rs.lock, NULL);
    snprintf(f->dir, sizeof f->dir, "/tmp/nube-bus-auth-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->allowed, sizeof f->allowed, "%s/allowed", f->dir);
    assert_int_equal(mkdir(f->allowed, 0700), 0);
    snprintf(f->ep, sizeof f->ep, "tcp://127.0.0.1:%d", free_port());
    assert_int_equal(cl_bus_keypair(f->srv_pub, f->srv_sec), 0);
    cl_bus_opts ro = {.role = CL_BUS_ROUTER, .endpoint = f->ep, .name = "sched",
                      .resend_ms = RESEND_MS, .on_msg = on_msg, .ud = &f->rs,
                      .curve_public_key = f->srv_pub, .curve_secret_key = f->srv_sec,
                      .curve_allowed_dir = f->allowed};
    cl_error err = {0};
    assert_int_equal(cl_bus_new(&ro, &f->router, &err), 0);
    *state = f;
    return 0;
}

static void rm_dir(const char *dir)
{
    char cmd[512];
    /* The test made every file in it; remove them one by one (no shell). */
    const char *names[] = {"hostA.pub", "hostA.2.pub", "hostB.pub", "secret", "secret.pub",
                           "open.secret"};
    snprintf(cmd, sizeof cmd, "%s/allowed", dir);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char p[600];
        snprintf(p, sizeof p, "%s/%s", cmd, names[i]);
        unlink(p);
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(cmd);
    rmdir(dir);
}

static int teardown(void **state)
{
    fixture *f = *state;
    cl_bus_free(f->router);
    rm_dir(f->dir);
    pthread_mutex_destroy(&f->rs.lock);
    free(f);
    return 0;
}

/* Allow pub as name with a key file called file in the allowed directory. */
static void allow(fixture *f, const char *file, const char *pub, const char *name)
{
    char p[600];
    snprintf(p, sizeof p, "%s/%s", f->allowed, file);
    FILE *fp = fopen(p, "we");
    assert_non_null(fp);
    fprintf(fp, "%s %s\n", pub, name);
    assert_int_equal(fclose(fp), 0);
}

static void revoke_key(fixture *f, const char *file)
{
    char p[600];
    snprintf(p, sizeof p, "%s/%s", f->allowed, file);
    assert_int_equal(unlink(p), 0);
}

static cl_bus *client(fixture *f, const char *name, const char *pub, const char *sec)
{
    cl_bus_opts o = {.role = CL_BUS_DEALER, .endpoint = f->ep, .name = name,
                     .resend_ms = RESEND_MS, .curve_public_key = pub,
                     .curve_secret_key = sec, .curve_server_key = f->srv_pub};
    cl_bus *b = NULL;
    cl_error err = {0};
    assert_int_equal(cl_bus_new(&o, &b, &err), 0);
    return b;
}

static void test_unknown_key_refused(void **state)
{
    fixture *f = *state;
    char pub[CL_BUS_KEY_LEN], sec[CL_BUS_KEY_LEN];
    assert_int_equal(cl_bus_keypair(pub, sec), 0);
    cl_bus *c = client(f, "hostA", pub, sec);
    assert_int_equal(cl_bus_send(c, NULL, "host.register", NULL, NULL, true, NULL), 0);
    quiet();
    assert_int_equal(seen_count(&f->rs), 0);
    assert_int_equal(cl_bus_pending(c), 1); /* never acknowledged either */
    cl_bus_free(c);
}

static void test_known_key_works(void **state)
{
    fixture *f = *state;
    char pub[CL_BUS_KEY_LEN], sec[CL_BUS_KEY_LEN];
    assert_int_equal(cl_bus_keypair(pub, sec), 0);
    allow(f, "hostA.pub", pub, "hostA");
    cl_bus *c = client(f, "hostA", pub, sec);
    assert_int_equal(cl_bus_send(c, NULL, "host.register", NULL, NULL, true, NULL), 0);
    assert_true(WAIT_UNTIL(seen_count(&f->rs) == 1));
    assert_true(WAIT_UNTIL(cl_bus_pending(c) == 0));
    pthread_mutex_lock(&f->rs.lock);
    assert_string_equal(f->rs.last_user, "hostA");
    assert_string_equal(f->rs.last_peer, "hostA");
    /* The connection's routing id: the name and a per-socket 128-bit nonce. */
    assert_int_equal(strlen(f->rs.last_conn), strlen("hostA#") + 32);
    assert_memory_equal(f->rs.last_conn, "hostA#", 6);
    pthread_mutex_unlock(&f->rs.lock);
    cl_bus_free(c);
}

static void test_key_cannot_pose_as_other_host(void **state)
{
    fixture *f = *state;
    char pub[CL_BUS_KEY_LEN], sec[CL_BUS_KEY_LEN];
    assert_int_equal(cl_bus_keypair(pub, sec), 0);
    allow(f, "hostA.pub", pub, "hostA");
    /* hostA's key, but the routing id (what commands are addressed to) says hostB. */
    cl_bus *c = client(f, "hostB", pub, sec);
    assert_int_equal(cl_bus_send(c, NULL, "host.heartbeat", NULL, NULL, true, NULL), 0);
    quiet();
    assert_int_equal(seen_count(&f->rs), 0);
    cl_bus_stats st;
    cl_bus_get_stats(f->router, &st);
    assert_true(st.bad_frames > 0);
    cl_bus_free(c);
}

/* A connection calling itself hostA with another host's key gets no command: hostB's
 * key connects as "hostA" and speaks (refused); a command for hostA waits (resent) and
 * reaches the real hostA, which connects while the impostor is still there. */
static void test_no_command_to_foreign_key(void **state)
{
    fixture *f = *state;
    char apub[CL_BUS_KEY_LEN], asec[CL_BUS_KEY_LEN], bpub[CL_BUS_KEY_LEN],
        bsec[CL_BUS_KEY_LEN];
    seen is = {.lock = PTHREAD_MUTEX_INITIALIZER}, as = {.lock = PTHREAD_MUTEX_INITIALIZER};
    cl_error err = {0};
    assert_int_equal(cl_bus_keypair(apub, asec), 0);
    assert_int_equal(cl_bus_keypair(bpub, bsec), 0);
    allow(f, "hostA.pub", apub, "hostA");
    allow(f, "hostB.pub", bpub, "hostB");

    cl_bus_opts o = {.role = CL_BUS_DEALER, .endpoint = f->ep, .name = "hostA",
                     .resend_ms = RESEND_MS, .on_msg = on_msg, .ud = &is,
                     .curve_public_key = bpub, .curve_secret_key = bsec,
                     .curve_server_key = f->srv_pub};
    cl_bus *imp = NULL;
    assert_int_equal(cl_bus_new(&o, &imp, &err), 0);
    assert_int_equal(cl_bus_send(imp, NULL, "host.heartbeat", NULL, NULL, true, NULL), 0);
    cl_bus_stats st;
    assert_true(WAIT_UNTIL((cl_bus_get_stats(f->router, &st), st.bad_frames > 0)));
    assert_int_equal(cl_bus_send(f->router, "hostA", "instance.create", NULL, NULL, true,
                                 NULL), 0);
    quiet();
    assert_int_equal(seen_count(&is), 0);
    assert_int_equal(seen_count(&f->rs), 0);
    assert_int_equal(cl_bus_pending(f->router), 1);

    o.ud = &as;
    o.curve_public_key = apub;
    o.curve_secret_key = asec;
    cl_bus *real = NULL;
    assert_int_equal(cl_bus_new(&o, &real, &err), 0);
    assert_int_equal(cl_bus_send(real, NULL, "host.register", NULL, NULL, true, NULL), 0);
    assert_true(WAIT_UNTIL(seen_count(&as) >= 1));
    assert_true(WAIT_UNTIL(cl_bus_pending(f->router) == 0));
    assert_int_equal(seen_count(&is), 0);
    cl_bus_free(imp);
    cl_bus_free(real);
    pthread_mutex_destroy(&is.lock);
    pthread_mutex_destroy(&as.lock);
}

/* A raw CURVE DEALER with routing id rid: it says only what the test makes it say. */
static void *raw_client(void *ctx, fixture *f, const char *rid, const char *pub,
                        const char *sec)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(s);
    int zero = 0;
    assert_int_equal(zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_ROUTING_ID, rid, strlen(rid)), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, f->srv_pub, CL_BUS_KEY_LEN), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, pub, CL_BUS_KEY_LEN), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, sec, CL_BUS_KEY_LEN), 0);
    assert_int_equal(zmq_connect(s, f->ep), 0);
    return s;
}

/* Send one valid envelope of type from name on a raw socket. */
static void raw_say(void *s, const char *name, const char *type)
{
    cl_bus_msg m;
    memset(&m, 0, sizeof m);
    m.v = CL_BUS_VERSION;
    cl_uuid_new(m.id);
    cl_strlcpy(m.type, type, sizeof m.type);
    cl_strlcpy(m.from, name, sizeof m.from);
    char *frame = NULL;
    assert_int_equal(cl_bus_encode(&m, &frame), 0);
    assert_int_equal(zmq_send(s, frame, strlen(frame), 0), (int)strlen(frame));
    free(frame);
}

/* True when something arrived on s within ms. */
static bool raw_got_something(void *s, int ms)
{
    zmq_pollitem_t it = {.socket = s, .events = ZMQ_POLLIN};
    return zmq_poll(&it, 1, ms) > 0;
}

/* hostA goes away; hostB's (admitted) key connects with routing ids "hostA" and
 * "hostA#<a nonce>" and stays silent. A command for hostA goes to neither: it waits. The
 * real hostA comes back beside them (its own nonce: nothing to take back) and gets it. */
static void test_silent_impostor_gets_nothing(void **state)
{
    fixture *f = *state;
    char apub[CL_BUS_KEY_LEN], asec[CL_BUS_KEY_LEN], bpub[CL_BUS_KEY_LEN],
        bsec[CL_BUS_KEY_LEN];
    seen as = {.lock = PTHREAD_MUTEX_INITIALIZER};
    assert_int_equal(cl_bus_keypair(apub, asec), 0);
    assert_int_equal(cl_bus_keypair(bpub, bsec), 0);
    allow(f, "hostA.pub", apub, "hostA");
    allow(f, "hostB.pub", bpub, "hostB");

    cl_bus *real = client(f, "hostA", apub, asec);
    assert_int_equal(cl_bus_send(real, NULL, "host.register", NULL, NULL, true, NULL), 0);
    assert_true(WAIT_UNTIL(seen_count(&f->rs) == 1));
    assert_true(WAIT_UNTIL(cl_bus_pending(real) == 0));
    cl_bus_free(real); /* hostA is disconnected */

    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    void *imp1 = raw_client(ctx, f, "hostA", bpub, bsec);
    void *imp2 = raw_client(ctx, f, "hostA#00000000000000000000000000000000", bpub, bsec);
    /* Both connect and are admitted (hostB's key is allowed) while the command waits:
     * QUIET_MS is several resends. */
    assert_int_equal(cl_bus_send(f->router, "hostA", "instance.create", NULL, NULL, true,
                                 NULL), 0);
    assert_false(raw_got_something(imp1, QUIET_MS));
    assert_false(raw_got_something(imp2, 1));
    assert_int_equal(cl_bus_pending(f->router), 1);

    cl_bus_opts o = {.role = CL_BUS_DEALER, .endpoint = f->ep, .name = "hostA",
                     .resend_ms = RESEND_MS, .on_msg = on_msg, .ud = &as,
                     .curve_public_key = apub, .curve_secret_key = asec,
                     .curve_server_key = f->srv_pub};
    cl_error err = {0};
    assert_int_equal(cl_bus_new(&o, &real, &err), 0);
    /* It sends nothing itself: its bus's hello is what makes it known. */
    assert_true(WAIT_UNTIL(seen_count(&as) == 1));
    assert_true(WAIT_UNTIL(cl_bus_pending(f->router) == 0));
    assert_false(raw_got_something(imp1, 1));
    assert_false(raw_got_something(imp2, 1));
    assert_int_equal(seen_count(&f->rs), 1); /* hellos are not handed to on_msg */

    cl_bus_free(real);
    zmq_close(imp1);
    zmq_close(imp2);
    zmq_ctx_term(ctx);
    pthread_mutex_destroy(&as.lock);
}

/* hostA's old process hangs with its connection up (a raw socket that spoke once and
 * reads nothing more; libzmq keeps answering heartbeats, so it never times out). A
 * command sent to it is lost there. hostA restarts: the new process is served at once,
 * by the route change, not by the next resend (30 s away). */
static void test_restart_served_at_once(void **state)
{
    fixture *f = *state;
    char apub[CL_BUS_KEY_LEN], asec[CL_BUS_KEY_LEN], ep[64];
    seen rs = {.lock = PTHREAD_MUTEX_INITIALIZER}, as = {.lock = PTHREAD_MUTEX_INITIALIZER};
    assert_int_equal(cl_bus_keypair(apub, asec), 0);
    allow(f, "hostA.pub", apub, "hostA");
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", free_port());
    cl_bus_opts ro = {.role = CL_BUS_ROUTER, .endpoint = ep, .name = "sched",
                      .resend_ms = 30000, .on_msg = on_msg, .ud = &rs,
                      .curve_public_key = f->srv_pub, .curve_secret_key = f->srv_sec,
                      .curve_allowed_dir = f->allowed};
    cl_bus *router = NULL;
    cl_error err = {0};
    assert_int_equal(cl_bus_new(&ro, &router, &err), 0);
    char fep[64];
    memcpy(fep, f->ep, sizeof fep);
    memcpy(f->ep, ep, sizeof f->ep); /* raw_client and the options below connect here */

    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    void *old = raw_client(ctx, f, "hostA#11111111111111111111111111111111", apub, asec);
    raw_say(old, "hostA", "host.heartbeat");
    assert_true(WAIT_UNTIL(seen_count(&rs) == 1));
    assert_int_equal(cl_bus_send(router, "hostA", "instance.create", NULL, NULL, true,
                                 NULL), 0);
    assert_true(raw_got_something(old, WAIT_MS)); /* the hung process "got" it */

    int64_t t0 = cl_mono_ms();
    cl_bus_opts o = {.role = CL_BUS_DEALER, .endpoint = ep, .name = "hostA",
                     .resend_ms = RESEND_MS, .on_msg = on_msg, .ud = &as,
                     .curve_public_key = apub, .curve_secret_key = asec,
                     .curve_server_key = f->srv_pub};
    cl_bus *fresh = NULL;
    assert_int_equal(cl_bus_new(&o, &fresh, &err), 0);
    assert_true(WAIT_UNTIL(seen_count(&as) == 1));
    assert_true(WAIT_UNTIL(cl_bus_pending(router) == 0));
    assert_true(cl_mono_ms() - t0 < WAIT_MS); /* far less than resend_ms */

    cl_bus_free(fresh);
    zmq_close(old);
    zmq_ctx_term(ctx);
    cl_bus_free(router);
    memcpy(f->ep, fep, sizeof f->ep);
    pthread_mutex_destroy(&rs.lock);
    pthread_mutex_destroy(&as.lock);
}

static void test_revocation(void **state)
{
    fixture *f = *state;
    char pub[CL_BUS_KEY_LEN], sec[CL_BUS_KEY_LEN];
    assert_int_equal(cl_bus_keypair(pub, sec), 0);
    allow(f, "hostA.pub", pub, "hostA");
    cl_bus *c = client(f, "hostA", pub, sec);
    assert_int_equal(cl_bus_send(c, NULL, "host.heartbeat", NULL, NULL, true, NULL), 0);
    assert_true(WAIT_UNTIL(seen_count(&f->rs) == 1));
    assert_int_equal(cl_bus_send(f->router, "hostA", "x.y", NULL, NULL, true, NULL), 0);
    assert_true(WAIT_UNTIL(cl_bus_pending(f->router) == 0)); /* delivered and acked */

    /* Revoked while connected and silent: nothing more is sent to it... */
    revoke_key(f, "hostA.pub");
    assert_int_equal(cl_bus_send(f->router, "hostA", "x.y", NULL, NULL, true, NULL), 0);
    quiet();
    assert_int_equal(cl_bus_pending(f->router), 1);
    /* ...and its next message is not heard. */
    assert_int_equal(cl_bus_send(c, NULL, "host.heartbeat", NULL, NULL, true, NULL), 0);
    quiet();
    assert_int_equal(seen_count(&f->rs), 1);
    cl_bus_free(c);

    /* And a new connection with that key is refused at the handshake. */
    c = client(f, "hostA", pub, sec);
    assert_int_equal(cl_bus_send(c, NULL, "host.heartbeat", NULL, NULL, true, NULL), 0);
    quiet();
    assert_int_equal(seen_count(&f->rs), 1);
    cl_bus_free(c);
}

static void test_rotation(void **state)
{
    fixture *f = *state;
    char pub1[CL_BUS_KEY_LEN], sec1[CL_BUS_KEY_LEN], pub2[CL_BUS_KEY_LEN],
        sec2[CL_BUS_KEY_LEN];
    assert_int_equal(cl_bus_keypair(pub1, sec1), 0);
    assert_int_equal(cl_bus_keypair(pub2, sec2), 0);
    allow(f, "hostA.pub", pub1, "hostA");
    cl_bus *old = client(f, "hostA", pub1, sec1);
    assert_int_equal(cl_bus_send(old, NULL, "host.heartbeat", NULL, NULL, true, NULL), 0);
    assert_true(WAIT_UNTIL(seen_count(&f->rs) == 1));
    /* The new key is added beside the old one, the agent restarts with it... */
    allow(f, "hostA.2.pub", pub2, "hostA");
    cl_bus_free(old);
    cl_bus *cur = client(f, "hostA", pub2, sec2);
    assert_int_equal(cl_bus_send(cur, NULL, "host.heartbeat", NULL, NULL, true, NULL), 0);
    assert_true(WAIT_UNTIL(seen_count(&f->rs) == 2));
    /* ...then the old one is removed, and the new one keeps working. */
    revoke_key(f, "hostA.pub");
    assert_int_equal(cl_bus_send(cur, NULL, "host.heartbeat", NULL, NULL, true, NULL), 0);
    assert_true(WAIT_UNTIL(seen_count(&f->rs) == 3));
    assert_true(WAIT_UNTIL(cl_bus_pending(cur) == 0));
    cl_bus_free(cur);
}

static void test_key_files(void **state)
{
    fixture *f = *state;
    char pub[CL_BUS_KEY_LEN], sec[CL_BUS_KEY_LEN], pub2[CL_BUS_KEY_LEN],
        sec2[CL_BUS_KEY_LEN], name[64];
    char path[600], pub_path[600];
    cl_error err = {0};
    snprintf(path, sizeof path, "%s/secret", f->dir);
    snprintf(pub_path, sizeof pub_path, "%s/secret.pub", f->dir);
    assert_int_equal(cl_bus_keypair(pub, sec), 0);
    assert_int_equal(cl_bus_key_write(path, pub_path, "hostA", pub, sec, false, &err), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* No silent overwrite of an existing key. */
    assert_int_equal(cl_bus_key_write(path, NULL, "hostA", pub, sec, false, &err), -EEXIST);
    assert_int_equal(cl_bus_key_read_secret(path, pub2, sec2, &err), 0);
    assert_string_equal(pub2, pub);
    assert_string_equal(sec2, sec);
    assert_int_equal(cl_bus_key_read_public(pub_path, pub2, name, sizeof name, &err), 0);
    assert_string_equal(pub2, pub);
    assert_string_equal(name, "hostA");
    /* A secret key others can read is refused. */
    assert_int_equal(chmod(path, 0644), 0);
    assert_int_equal(cl_bus_key_read_secret(path, pub2, sec2, &err), -EPERM);
    /* Bad names and keys. */
    assert_int_equal(cl_bus_key_write(path, NULL, "a b", pub, sec, true, &err), -EINVAL);
    assert_false(cl_bus_key_valid("short"));
    assert_true(cl_bus_key_valid(pub));
}

static void test_allowed_dir_needs_secret(void **state)
{
    fixture *f = *state;
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", free_port());
    cl_bus_opts ro = {.role = CL_BUS_ROUTER, .endpoint = ep, .name = "x",
                      .curve_allowed_dir = f->allowed};
    cl_bus *b = NULL;
    cl_error err = {0};
    assert_int_equal(cl_bus_new(&ro, &b, &err), -EINVAL);
    ro.curve_secret_key = f->srv_sec;
    ro.curve_allowed_dir = "/nonexistent/nube-keys";
    assert_int_equal(cl_bus_new(&ro, &b, &err), -ENOENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_unknown_key_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_known_key_works, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_cannot_pose_as_other_host, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_command_to_foreign_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_silent_impostor_gets_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_served_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revocation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allowed_dir_needs_secret, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
