/*
 * keypairs.c - POST/GET /v2.1/os-keypairs, GET/DELETE /v2.1/os-keypairs/{name}.
 *
 * Key pairs belong to users, as in Nova: every call works on the caller's own, and
 * admins may name another user with ?user_id= (2.10). A key is either imported
 * (public_key given: an OpenSSH public key line whose blob we decode to check it and to
 * compute the fingerprint) or generated here: an RSA 2048 key pair with OpenSSL, whose
 * private half is returned once in the create answer and never stored, as Nova does.
 * The fingerprint is Nova's: MD5 of the key blob as colon-separated hex
 * (reference/openstack-api/keypair-create.txt).
 *
 * Readers may list and show but not create or delete. The key_pairs quota (per user) is
 * checked in the insert's transaction.
 */
#include <errno.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/encoder.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "util.h"

#define LOG_MOD "api.keypairs"
#define RSA_BITS 2048
#define BLOB_MAX 8192

/* ---- OpenSSH public key blobs ---- */

static bool b64_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '+' || c == '/';
}

/* Decode standard base64 (padding required). Returns the byte count or -EINVAL. */
static int b64_decode(const char *s, size_t len, unsigned char *out, size_t outcap)
{
    size_t pad = 0;
    int n;

    if (len == 0 || len % 4 != 0 || len / 4 * 3 > outcap)
        return -EINVAL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '=' && i >= len - 2) {
            pad++;
            continue;
        }
        if (!b64_char(s[i]) || pad)
            return -EINVAL;
    }
    n = EVP_DecodeBlock(out, (const unsigned char *)s, (int)len);
    if (n < 0)
        return -EINVAL;
    return n - (int)pad;
}

/* Read a uint32-length-prefixed string of an SSH blob at *off. */
static bool blob_string(const unsigned char *b, size_t n, size_t *off, const unsigned char **out,
                        size_t *out_len)
{
    uint32_t len;

    if (*off + 4 > n)
        return false;
    len = (uint32_t)b[*off] << 24 | (uint32_t)b[*off + 1] << 16 | (uint32_t)b[*off + 2] << 8 |
          b[*off + 3];
    if (len > n - *off - 4)
        return false;
    *out = b + *off + 4;
    *out_len = len;
    *off += 4 + len;
    return true;
}

/* MD5 of the blob as "aa:bb:...". */
static void fingerprint(const unsigned char *blob, size_t n, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    size_t o = 0;

    out[0] = '\0';
    if (EVP_Digest(blob, n, md, &mdlen, EVP_md5(), NULL) != 1)
        return;
    for (unsigned int i = 0; i < mdlen && o + 3 < outlen; i++) {
        if (i)
            out[o++] = ':';
        out[o++] = hex[md[i] >> 4];
        out[o++] = hex[md[i] & 15];
    }
    out[o] = '\0';
}

/* Check an OpenSSH public key line ("<type> <base64> [comment]") and compute its
 * fingerprint. 0 or -EINVAL. */
static int parse_public_key(const char *line, char *fp, size_t fplen)
{
    static const char *const types[] = {"ssh-rsa", "ssh-ed25519", "ssh-dss",
                                        "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                                        "ecdsa-sha2-nistp521"};
    const char *sp = strchr(line, ' ');
    const char *b64, *end;
    const unsigned char *t;
    unsigned char blob[BLOB_MAX];
    size_t off = 0, tlen, tl;
    bool known = false;
    int n;

    if (!sp)
        return -EINVAL;
    tl = (size_t)(sp - line);
    for (size_t i = 0; i < CL_ARRAY_SIZE(types); i++)
        known = known || (strlen(types[i]) == tl && strncmp(line, types[i], tl) == 0);
    if (!known)
        return -EINVAL;
    b64 = sp + 1;
    while (*b64 == ' ')
        b64++;
    end = b64;
    while (*end && *end != ' ' && *end != '\n' && *end != '\r')
        end++;
    n = b64_decode(b64, (size_t)(end - b64), blob, sizeof(blob));
    if (n <= 0)
        return -EINVAL;
    /* The blob names its own type, which must match the line's. */
    if (!blob_string(blob, (size_t)n, &off, &t, &tlen) || tlen != tl || memcmp(t, line, tl))
        return -EINVAL;
    fingerprint(blob, (size_t)n, fp, fplen);
    return 0;
}

/* Append an SSH string/mpint to a blob buffer. */
static bool put_string(unsigned char *b, size_t cap, size_t *off, const unsigned char *s,
                       size_t len)
{
    if (*off + 4 + len > cap)
        return false;
    b[(*off)++] = (unsigned char)(len >> 24);
    b[(*off)++] = (unsigned char)(len >> 16);
    b[(*off)++] = (unsigned char)(len >> 8);
    b[(*off)++] = (unsigned char)len;
    memcpy(b + *off, s, len);
    *off += len;
    return true;
}

static bool put_mpint(unsigned char *b, size_t cap, size_t *off, const BIGNUM *bn)
{
    unsigned char tmp[1 + RSA_BITS / 8 + 8];
    int n = BN_num_bytes(bn);

    if (n <= 0 || (size_t)n + 1 > sizeof(tmp))
        return false;
    tmp[0] = 0;
    BN_bn2bin(bn, tmp + 1);
    /* A leading zero keeps a number with its top bit set positive. */
    if (tmp[1] & 0x80)
        return put_string(b, cap, off, tmp, (size_t)n + 1);
    return put_string(b, cap, off, tmp + 1, (size_t)n);
}

/* Generate an RSA key pair: *out_pub "ssh-rsa <b64> Generated-by-Nube", *out_priv PEM,
 * fingerprint into fp. 0 or -EIO/-ENOMEM. */
static int generate(char **out_pub, char **out_priv, char *fp, size_t fplen)
{
    EVP_PKEY *pkey = NULL;
    BIGNUM *n = NULL, *e = NULL;
    BIO *bio = NULL;
    OSSL_ENCODER_CTX *ectx = NULL;
    unsigned char blob[BLOB_MAX];
    size_t off = 0;
    char *b64 = NULL, *mem;
    long memlen;
    int rc = -EIO;

    *out_pub = *out_priv = NULL;
    pkey = EVP_RSA_gen(RSA_BITS);
    if (!pkey || EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n) != 1 ||
        EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &e) != 1)
        goto out;
    if (!put_string(blob, sizeof(blob), &off, (const unsigned char *)"ssh-rsa", 7) ||
        !put_mpint(blob, sizeof(blob), &off, e) || !put_mpint(blob, sizeof(blob), &off, n))
        goto out;
    b64 = malloc(4 * ((off + 2) / 3) + 1);
    if (!b64) {
        rc = -ENOMEM;
        goto out;
    }
    EVP_EncodeBlock((unsigned char *)b64, blob, (int)off);
    if (asprintf(out_pub, "ssh-rsa %s Generated-by-Nube", b64) < 0) {
        *out_pub = NULL;
        rc = -ENOMEM;
        goto out;
    }
    fingerprint(blob, off, fp, fplen);
    /* PKCS#1 ("BEGIN RSA PRIVATE KEY"), the form Nova hands out and ssh reads. */
    bio = BIO_new(BIO_s_mem());
    ectx = OSSL_ENCODER_CTX_new_for_pkey(pkey, OSSL_KEYMGMT_SELECT_KEYPAIR, "PEM",
                                         "type-specific", NULL);
    if (!bio || !ectx || OSSL_ENCODER_to_bio(ectx, bio) != 1) {
        if (!bio || PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL) != 1)
            goto out;
    }
    memlen = BIO_get_mem_data(bio, &mem);
    if (memlen <= 0)
        goto out;
    *out_priv = strndup(mem, (size_t)memlen);
    rc = *out_priv ? 0 : -ENOMEM;
out:
    if (rc < 0) {
        free(*out_pub);
        *out_pub = NULL;
    }
    free(b64);
    OSSL_ENCODER_CTX_free(ectx);
    BIO_free(bio);
    BN_free(n);
    BN_free(e);
    EVP_PKEY_free(pkey);
    return rc;
}

/* ---- handlers ---- */

/* Nova's key pair names (2.92 also allows '.' and '@'): 1..255 of [A-Za-z0-9 _.@-]. */
static bool valid_name(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 255)
        return false;
    for (; *s; s++) {
        char c = *s;

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == ' ' || c == '_' || c == '-' || c == '.' || c == '@'))
            return false;
    }
    return true;
}

/* The user whose key pairs this request is about: the caller, or ?user_id= for admins
 * (from 2.10). Answers 403 itself. */
static bool target_user(const cl_http_req *req, cl_http_resp *resp, int mv, const char **out)
{
    const cl_auth *a = api_auth_current();
    const char *uid = mv >= 10 ? cl_http_req_query(req, "user_id") : NULL;

    if (!a || !a->user_id[0]) {
        api_respond_policy(resp, "os_compute_api:os-keypairs");
        return false;
    }
    if (uid && strcmp(uid, a->user_id) != 0) {
        if (!cl_auth_is_admin(a) || strlen(uid) >= CL_ID_MAX) {
            api_respond_policy(resp, "os_compute_api:os-keypairs:index");
            return false;
        }
        *out = uid;
        return true;
    }
    *out = a->user_id;
    return true;
}

static json_object *kp_json(const cl_keypair *kp, int mv, bool full)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "name", json_object_new_string(kp->name));
    json_object_object_add(o, "public_key", json_object_new_string(kp->public_key));
    json_object_object_add(o, "fingerprint", json_object_new_string(kp->fingerprint));
    if (mv >= 2)
        json_object_object_add(o, "type", json_object_new_string(kp->type));
    if (full) {
        json_object_object_add(o, "user_id", json_object_new_string(kp->user_id));
        json_object_object_add(o, "created_at", api_time_json(kp->created_ms, false));
        json_object_object_add(o, "deleted", json_object_new_boolean(false));
        json_object_object_add(o, "deleted_at", NULL);
        json_object_object_add(o, "updated_at", NULL);
        json_object_object_add(o, "id", json_object_new_int64(kp->id));
    }
    return o;
}

/* POST /v2.1/os-keypairs {"keypair": {"name", "public_key"?, "type"? (2.2), "user_id"?
 * (2.10, admins)}} */
void api_keypairs_create(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    static const char *const keys[] = {"name", "public_key", "type", "user_id"};
    api_ctx *ctx = ud;
    _cleanup_json_ json_object *root = NULL;
    _cleanup_free_ char *gen_pub = NULL;
    _cleanup_free_ char *priv = NULL;
    const cl_auth *a;
    json_object *kpo, *o, *body;
    const char *name = NULL, *pub = NULL, *type = NULL, *uid = NULL;
    cl_quota_set q;
    cl_keypair kp = {0};
    cl_error err = {0};
    cl_store *st;
    size_t nkeys = 2;
    int mv = API_MV_MIN;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, &mv))
        return;
    a = api_auth_current();
    if (!a || !cl_auth_can_write(a, a->project_id)) {
        api_respond_policy(resp, "os_compute_api:os-keypairs:create");
        return;
    }
    if (mv >= 2)
        nkeys = 3;
    if (mv >= 10)
        nkeys = 4;
    if (cl_http_req_json(req, &root, &err) < 0 ||
        cl_json_get_object(root, "keypair", true, &kpo, &err) < 0 ||
        cl_json_get_str(root, "keypair.name", true, &name, &err) < 0 ||
        cl_json_get_str(root, "keypair.public_key", false, &pub, &err) < 0 ||
        cl_json_get_str(root, "keypair.type", false, &type, &err) < 0 ||
        cl_json_get_str(root, "keypair.user_id", false, &uid, &err) < 0) {
        cl_http_resp_error(resp, &err);
        return;
    }
    json_object_object_foreach(kpo, k, v) {
        bool ok = false;

        (void)v;
        for (size_t i = 0; i < nkeys; i++)
            ok = ok || strcmp(k, keys[i]) == 0;
        if (!ok) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Invalid input for field/attribute keypair. Additional "
                                "properties are not allowed ('%.64s' was unexpected)", k);
            return;
        }
    }
    if (!valid_name(name)) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            "Keypair data is invalid: Keypair name contains unsafe characters");
        return;
    }
    if (type && strcmp(type, "ssh") != 0) {
        cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                            strcmp(type, "x509") == 0
                                ? "Keypair data is invalid: x509 key pairs are not supported "
                                  "by nube."
                                : "Invalid input for field/attribute type. Value must be one "
                                  "of ['ssh', 'x509'].");
        return;
    }
    if (uid && strcmp(uid, a->user_id) != 0 && !cl_auth_is_admin(a)) {
        api_respond_policy(resp, "os_compute_api:os-keypairs:create");
        return;
    }
    cl_strlcpy(kp.user_id, uid ? uid : a->user_id, sizeof(kp.user_id));
    cl_strlcpy(kp.name, name, sizeof(kp.name));
    cl_strlcpy(kp.type, "ssh", sizeof(kp.type));
    if (pub) {
        if (strlen(pub) > CL_PUBKEY_MAX ||
            parse_public_key(pub, kp.fingerprint, sizeof(kp.fingerprint)) < 0) {
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST,
                                "Keypair data is invalid: failed to generate fingerprint");
            return;
        }
        kp.public_key = (char *)pub;
    } else {
        if (generate(&gen_pub, &priv, kp.fingerprint, sizeof(kp.fingerprint)) < 0) {
            cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot generate a key pair.");
            return;
        }
        kp.public_key = gen_pub;
    }
    kp.created_ms = cl_now_ms();
    st = api_store(ctx, resp);
    if (!st)
        return;
    rc = api_quota_limits(ctx, st, a->project_id, &q);
    if (rc == 0)
        rc = cl_store_keypair_create(st, &kp, q.limit[CL_QUOTA_KEY_PAIRS]);
    if (rc == -EDQUOT) {
        cl_http_resp_errorf(resp, CL_E_OVER_LIMIT, "Quota exceeded, too many key pairs.");
        return;
    }
    if (rc == -EEXIST) {
        cl_http_resp_errorf(resp, CL_E_CONFLICT, "Key pair '%s' already exists.", name);
        return;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot store the key pair (%s).",
                            strerror(-rc));
        return;
    }
    cl_info(LOG_MOD, "key pair %s of user %s %s", kp.name, kp.user_id,
            pub ? "imported" : "generated");
    o = kp_json(&kp, mv, false);
    json_object_object_add(o, "user_id", json_object_new_string(kp.user_id));
    if (priv)
        json_object_object_add(o, "private_key", json_object_new_string(priv));
    body = json_object_new_object();
    json_object_object_add(body, "keypair", o);
    /* 2.2 changed the answer from 200 to 201. */
    cl_http_resp_json(resp, mv >= 2 ? 201 : 200, body);
}

/* GET /v2.1/os-keypairs[?user_id=&limit=&marker=] */
void api_keypairs_list(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    cl_keypair *kps = NULL;
    const char *uid, *marker;
    json_object *body, *list;
    size_t n = 0, start = 0, count = 0;
    int64_t limit;
    cl_store *st;
    int mv = API_MV_MIN;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, &mv) || !target_user(req, resp, mv, &uid) ||
        !api_page_params(req, resp, &limit, &marker))
        return;
    st = api_store(ctx, resp);
    if (!st)
        return;
    rc = cl_store_keypair_list(st, uid, &kps, &n);
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot list key pairs (%s).", strerror(-rc));
        return;
    }
    if (marker && mv >= 35) {
        while (start < n && strcmp(kps[start].name, marker) != 0)
            start++;
        if (start == n) {
            cl_keypairs_free(kps, n);
            cl_http_resp_errorf(resp, CL_E_BAD_REQUEST, "marker [%.64s] not found", marker);
            return;
        }
        start++;
    }
    body = json_object_new_object();
    list = json_object_new_array();
    for (size_t i = start; i < n; i++) {
        json_object *w;

        if (mv >= 35 && limit > 0 && (int64_t)count == limit) {
            json_object *links = json_object_new_array();
            _cleanup_free_ char *href = NULL;

            if (asprintf(&href, "%s/v2.1/os-keypairs?limit=%lld&marker=%s", ctx->compute_url,
                         (long long)limit, kps[i - 1].name) < 0)
                href = NULL;
            json_object_array_add(links, api_link("next", href ? href : ""));
            json_object_object_add(body, "keypairs_links", links);
            break;
        }
        w = json_object_new_object();
        json_object_object_add(w, "keypair", kp_json(&kps[i], mv, false));
        json_object_array_add(list, w);
        count++;
    }
    json_object_object_add(body, "keypairs", list);
    cl_keypairs_free(kps, n);
    cl_http_resp_json(resp, 200, body);
}

/* The key pair of the {id} capture for the target user, or a 404 answered. */
static bool load(api_ctx *ctx, const cl_http_req *req, cl_http_resp *resp, int mv,
                 cl_store **out_st, cl_keypair *out)
{
    const char *name = cl_http_req_param(req, "id");
    const char *uid;
    cl_store *st;
    int rc;

    if (!target_user(req, resp, mv, &uid))
        return false;
    st = api_store(ctx, resp);
    if (!st)
        return false;
    rc = name ? cl_store_keypair_get(st, uid, name, out) : -ENOENT;
    if (rc == -ENOENT) {
        cl_http_resp_errorf(resp, CL_E_NOT_FOUND, "Keypair %.64s not found for user %s",
                            name ? name : "", uid);
        return false;
    }
    if (rc < 0) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot read key pairs (%s).", strerror(-rc));
        return false;
    }
    *out_st = st;
    return true;
}

/* GET /v2.1/os-keypairs/{name} */
void api_keypairs_show(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    cl_keypair kp = {0};
    json_object *body;
    cl_store *st;
    int mv = API_MV_MIN;

    if (!api_compute_begin(ctx, req, resp, true, &mv) || !load(ctx, req, resp, mv, &st, &kp))
        return;
    body = json_object_new_object();
    json_object_object_add(body, "keypair", kp_json(&kp, mv, true));
    cl_keypair_clear(&kp);
    cl_http_resp_json(resp, 200, body);
}

/* DELETE /v2.1/os-keypairs/{name} */
void api_keypairs_delete(const cl_http_req *req, cl_http_resp *resp, void *ud)
{
    api_ctx *ctx = ud;
    const cl_auth *a;
    cl_keypair kp = {0};
    cl_store *st;
    int mv = API_MV_MIN;
    int rc;

    if (!api_compute_begin(ctx, req, resp, true, &mv))
        return;
    a = api_auth_current();
    if (!a || !cl_auth_can_write(a, a->project_id)) {
        api_respond_policy(resp, "os_compute_api:os-keypairs:delete");
        return;
    }
    if (!load(ctx, req, resp, mv, &st, &kp))
        return;
    rc = cl_store_keypair_delete(st, kp.user_id, kp.name);
    cl_keypair_clear(&kp);
    if (rc < 0 && rc != -ENOENT) {
        cl_http_resp_errorf(resp, CL_E_INTERNAL, "Cannot delete the key pair (%s).",
                            strerror(-rc));
        return;
    }
    /* 2.2 changed the answer from 202 to 204. */
    cl_http_resp_json(resp, mv >= 2 ? 204 : 202, NULL);
}
