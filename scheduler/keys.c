/*
 * keys.c - nube-keys: make and manage the CURVE keys of the bus.
 *
 *   nube-keys gen    --name NAME --out DIR     DIR/NAME.key (secret, 0600) + DIR/NAME.pub
 *   nube-keys allow  --dir ALLOWED PUBFILE     admit a public key (copied into ALLOWED)
 *   nube-keys list   --dir ALLOWED             one line per admitted key: name key file
 *   nube-keys revoke --dir ALLOWED NAME|KEY    remove a key (or every key of a name)
 *   nube-keys rotate --name NAME --out DIR --dir ALLOWED
 *                                              new pair next to the old one, admitted at once
 *
 * The scheduler (and billing) read ALLOWED on every handshake and message when it changed
 * (bus_auth.h), so allow/revoke need no restart. Rotation without downtime: `rotate`
 * writes NAME.key.new and admits its public key beside the old one; install it as the
 * agent's curve_secret_key_file, restart the agent, then `revoke` the old key.
 * Files in ALLOWED are named NAME-<first 8 key characters sanitised>.pub so two keys of
 * one host can live side by side.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus.h"
#include "bus_auth.h"
#include "util.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nube-keys gen --name NAME --out DIR\n"
            "       nube-keys allow --dir ALLOWED PUBFILE\n"
            "       nube-keys list --dir ALLOWED\n"
            "       nube-keys revoke --dir ALLOWED NAME|KEY\n"
            "       nube-keys rotate --name NAME --out DIR --dir ALLOWED\n"
            "CURVE keys of the nube bus: NAME is a host name (agents) or nube-api,\n"
            "nube-scheduler, nube-billing (no blanks, '/' or '#'). ALLOWED is [bus]\n"
            "allowed_keys_dir (billing: [billing] allowed_keys_dir).\n");
}

/* The file name a key gets in ALLOWED: NAME-xxxxxxxx.pub, key characters that are not
 * safe in a file name replaced by '_'. */
static int allowed_path(const char *dir, const char *name, const char *key, char *out,
                        size_t len)
{
    char tag[9];
    for (size_t i = 0; i < 8; i++) {
        char c = key[i];
        tag[i] = ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
                     ? c
                     : '_';
    }
    tag[8] = '\0';
    return (size_t)snprintf(out, len, "%s/%s-%s.pub", dir, name, tag) >= len ? -ENAMETOOLONG
                                                                             : 0;
}

static int allow_key(const char *dir, const char *pub, const char *name)
{
    char path[4096];
    cl_error err = {0};
    if (allowed_path(dir, name, pub, path, sizeof path) < 0)
        return -ENAMETOOLONG;
    FILE *f = fopen(path, "wxe");
    if (!f) {
        fprintf(stderr, "nube-keys: cannot create %s: %s\n", path, strerror(errno));
        return -errno;
    }
    fprintf(f, "%s %s\n", pub, name);
    if (fclose(f) != 0)
        return -EIO;
    (void)err;
    printf("allowed %s as %s (%s)\n", pub, name, path);
    return 0;
}

static int cmd_gen(const char *name, const char *out, const char *suffix)
{
    char pub[CL_BUS_KEY_LEN], sec[CL_BUS_KEY_LEN], kp[4096], pp[4096];
    cl_error err = {0};
    if (!name || !out)
        return usage(stderr), 2;
    if (cl_bus_keypair(pub, sec) < 0) {
        fprintf(stderr, "nube-keys: libzmq has no CURVE support\n");
        return 1;
    }
    if ((size_t)snprintf(kp, sizeof kp, "%s/%s.key%s", out, name, suffix) >= sizeof kp ||
        (size_t)snprintf(pp, sizeof pp, "%s/%s.pub%s", out, name, suffix) >= sizeof pp)
        return 2;
    int r = cl_bus_key_write(kp, pp, name, pub, sec, false, &err);
    explicit_bzero(sec, sizeof sec);
    if (r < 0) {
        fprintf(stderr, "nube-keys: %s\n", err.message);
        return 1;
    }
    printf("%s %s\nsecret key: %s (0600)\npublic key: %s\n", pub, name, kp, pp);
    return 0;
}

static int cmd_allow(const char *dir, const char *file)
{
    char pub[CL_BUS_KEY_LEN], name[CL_BUS_NAME_MAX];
    cl_error err = {0};
    if (!dir || !file)
        return usage(stderr), 2;
    if (cl_bus_key_read_public(file, pub, name, sizeof name, &err) < 0 || !name[0]) {
        fprintf(stderr, "nube-keys: %s\n", err.message[0] ? err.message : "no name in file");
        return 1;
    }
    return allow_key(dir, pub, name) < 0 ? 1 : 0;
}

/* List (match NULL) or revoke (match = name or key) the keys of dir. */
static int walk(const char *dir, const char *match)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "nube-keys: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char path[4096], pub[CL_BUS_KEY_LEN], name[CL_BUS_NAME_MAX];
        cl_error err = {0};
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= sizeof path ||
            cl_bus_key_read_public(path, pub, name, sizeof name, &err) < 0)
            continue;
        if (!match) {
            printf("%-24s %s %s\n", name, pub, de->d_name);
            n++;
        } else if (strcmp(match, name) == 0 || strcmp(match, pub) == 0) {
            if (unlink(path) < 0) {
                fprintf(stderr, "nube-keys: cannot remove %s: %s\n", path, strerror(errno));
                closedir(d);
                return 1;
            }
            printf("revoked %s (%s)\n", pub, name);
            n++;
        }
    }
    closedir(d);
    if (match && n == 0) {
        fprintf(stderr, "nube-keys: no key matches '%s'\n", match);
        return 1;
    }
    return 0;
}

static int cmd_rotate(const char *name, const char *out, const char *dir)
{
    if (!name || !out || !dir)
        return usage(stderr), 2;
    int r = cmd_gen(name, out, ".new");
    if (r != 0)
        return r;
    char pp[4096], pub[CL_BUS_KEY_LEN];
    cl_error err = {0};
    snprintf(pp, sizeof pp, "%s/%s.pub.new", out, name);
    if (cl_bus_key_read_public(pp, pub, NULL, 0, &err) < 0 || allow_key(dir, pub, name) < 0)
        return 1;
    printf("next: install %s/%s.key.new as the curve_secret_key_file of %s, restart it,\n"
           "then revoke the old key: nube-keys revoke --dir %s <old key>\n",
           out, name, name, dir);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"name", required_argument, NULL, 'n'}, {"out", required_argument, NULL, 'o'},
        {"dir", required_argument, NULL, 'd'},  {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    const char *name = NULL, *out = NULL, *dir = NULL;
    int c;
    optind = 2;
    while ((c = getopt_long(argc, argv, "n:o:d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'n': name = optarg; break;
        case 'o': out = optarg; break;
        case 'd': dir = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    const char *arg = optind < argc ? argv[optind] : NULL;
    if (strcmp(cmd, "gen") == 0)
        return cmd_gen(name, out, "");
    if (strcmp(cmd, "allow") == 0)
        return cmd_allow(dir, arg);
    if (strcmp(cmd, "list") == 0)
        return dir ? walk(dir, NULL) : (usage(stderr), 2);
    if (strcmp(cmd, "revoke") == 0)
        return dir && arg ? walk(dir, arg) : (usage(stderr), 2);
    if (strcmp(cmd, "rotate") == 0)
        return cmd_rotate(name, out, dir);
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    usage(stderr);
    return 2;
}
