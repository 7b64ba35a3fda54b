/*
 * token.c - sealing and opening nube tokens (see token.h for the format and the reasons).
 *
 * Why AES-256-GCM and not a signature: the token carries who the caller is and what it
 * may do, which is nobody else's business (Keystone's Fernet tokens are encrypted for the
 * same reason), and one AEAD pass both hides and authenticates it. A random 96-bit nonce
 * per token is safe for far more tokens than one key will ever seal (the birthday bound
 * at 2^32 tokens is the usual NIST limit for random GCM nonces).
 *
 * The payload is versioned in its first byte, and the string in its prefix, so a later
 * format can be introduced while the old one still verifies during a rollover.
 *
 * Key files are written through a temporary file in the same directory: creation
 * publishes it with link() (never replacing a key another process just created), key
 * rotation with rename() (replacing it atomically); readers never see a half-written
 * key.
 */
#include "token.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "log.h"
#include "util.h"

#define TK_LOG "token"
#define TK_AAD "nb1"
#define TK_NONCE 12
#define TK_TAG 16
#define TK_PAYLOAD_V1 1
#define TK_FIXED 34           /* version, roles, issued, expires, audit */
#define TK_PAYLOAD_MAX (TK_FIXED + 3 * (2 + CL_ID_MAX))
#define TK_RAW_MAX (TK_NONCE + TK_PAYLOAD_MAX + TK_TAG)

/* Id field tags: an empty id, a 32-hex id packed in 16 bytes (all of nube's and
 * Keystone's generated ids), or any other id as length-prefixed text. */
enum { ID_EMPTY = 0, ID_HEX16 = 1, ID_TEXT = 2 };

static inline void ctx_freep(EVP_CIPHER_CTX **c)
{
    if (*c)
        EVP_CIPHER_CTX_free(*c);
}
#define _cleanup_cipher_ _cleanup_(ctx_freep)

/* ---- base64url ---- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int cl_b64url_encode(const unsigned char *in, size_t len, char *out, size_t outlen)
{
    size_t need = len / 3 * 4 + (len % 3 ? len % 3 + 1 : 0);
    size_t o = 0;

    if (need + 1 > outlen)
        return -ENOSPC;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        size_t n = len - i < 3 ? len - i : 3;

        if (n > 1)
            v |= (uint32_t)in[i + 1] << 8;
        if (n > 2)
            v |= in[i + 2];
        out[o++] = b64_alphabet[(v >> 18) & 63];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        if (n > 1)
            out[o++] = b64_alphabet[(v >> 6) & 63];
        if (n > 2)
            out[o++] = b64_alphabet[v & 63];
    }
    out[o] = '\0';
    return (int)o;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

int cl_b64url_decode(const char *in, size_t len, unsigned char *out, size_t outlen)
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;

    /* A single leftover character cannot encode a byte. */
    if (len % 4 == 1)
        return -EINVAL;
    if (len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0) > outlen)
        return -ENOSPC;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value((unsigned char)in[i]);

        if (v < 0)
            return -EINVAL;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* Canonical form only: the unused low bits of the last character must be zero, so
     * one token has exactly one spelling. */
    if (acc != 0)
        return -EINVAL;
    return (int)o;
}

void cl_token_audit_id_new(char out[CL_AUDIT_ID_LEN + 1])
{
    unsigned char raw[16];

    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        /* The CSPRNG failing is not something a caller can handle; a uuid is still
         * unique enough for an audit trail. */
        char u[CL_UUID_LEN];

        cl_uuid_new(u);
        memcpy(raw, u, sizeof(raw));
    }
    cl_b64url_encode(raw, sizeof(raw), out, CL_AUDIT_ID_LEN + 1);
}

/* ---- payload ---- */

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;

    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static bool is_hex32(const char *s, size_t n)
{
    if (n != 32)
        return false;
    for (size_t i = 0; i < n; i++)
        if (hexval(s[i]) < 0)
            return false;
    return true;
}

/* Append one id field at p; returns bytes written or -EINVAL. */
static int put_id(unsigned char *p, const char *id)
{
    size_t n = strnlen(id, CL_ID_MAX);

    if (n == 0) {
        p[0] = ID_EMPTY;
        return 1;
    }
    if (n >= CL_ID_MAX)
        return -EINVAL;
    if (is_hex32(id, n)) {
        p[0] = ID_HEX16;
        for (size_t i = 0; i < 16; i++)
            p[1 + i] = (unsigned char)(hexval(id[2 * i]) << 4 | hexval(id[2 * i + 1]));
        return 17;
    }
    p[0] = ID_TEXT;
    p[1] = (unsigned char)n;
    memcpy(p + 2, id, n);
    return (int)(n + 2);
}

/* Read one id field from p[0..len) into out; returns bytes consumed or -EINVAL. */
static int get_id(const unsigned char *p, size_t len, char out[CL_ID_MAX])
{
    static const char hex[] = "0123456789abcdef";

    if (len < 1)
        return -EINVAL;
    switch (p[0]) {
    case ID_EMPTY:
        out[0] = '\0';
        return 1;
    case ID_HEX16:
        if (len < 17)
            return -EINVAL;
        for (size_t i = 0; i < 16; i++) {
            out[2 * i] = hex[p[1 + i] >> 4];
            out[2 * i + 1] = hex[p[1 + i] & 15];
        }
        out[32] = '\0';
        return 17;
    case ID_TEXT:
        if (len < 2 || p[1] == 0 || p[1] >= CL_ID_MAX || len < (size_t)p[1] + 2u)
            return -EINVAL;
        memcpy(out, p + 2, p[1]);
        out[p[1]] = '\0';
        /* A NUL inside would make two different payloads read as one id. */
        if (strlen(out) != p[1])
            return -EINVAL;
        return p[1] + 2;
    default:
        return -EINVAL;
    }
}

int cl_token_issue(const cl_token_key *key, const cl_auth *a, char *out, size_t outlen,
                   cl_error *err)
{
    unsigned char payload[TK_PAYLOAD_MAX];
    unsigned char raw[TK_RAW_MAX];
    char audit[CL_AUDIT_ID_LEN + 1];
    _cleanup_cipher_ EVP_CIPHER_CTX *c = NULL;
    size_t n = TK_FIXED;
    int len, r;

    payload[0] = TK_PAYLOAD_V1;
    payload[1] = (unsigned char)(a->roles & 0xff);
    put_u64(payload + 2, (uint64_t)a->issued_ms);
    put_u64(payload + 10, (uint64_t)a->expires_ms);
    if (a->audit_id[0])
        cl_strlcpy(audit, a->audit_id, sizeof(audit));
    else
        cl_token_audit_id_new(audit);
    if (strlen(a->audit_id) > CL_AUDIT_ID_LEN ||
        cl_b64url_decode(audit, strlen(audit), payload + 18, 16) != 16)
        return cl_error_set(err, CL_E_BAD_REQUEST, "invalid audit id");
    for (int i = 0; i < 3; i++) {
        const char *id = i == 0 ? a->user_id : i == 1 ? a->project_id : a->domain_id;

        r = put_id(payload + n, id);
        if (r < 0)
            return cl_error_set(err, CL_E_BAD_REQUEST, "id too long for a token");
        n += (size_t)r;
    }

    if (RAND_bytes(raw, TK_NONCE) != 1)
        return cl_error_set(err, CL_E_INTERNAL, "no randomness for the token nonce");
    c = EVP_CIPHER_CTX_new();
    if (!c || EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key->bytes, raw) != 1 ||
        EVP_EncryptUpdate(c, NULL, &len, (const unsigned char *)TK_AAD, 3) != 1 ||
        EVP_EncryptUpdate(c, raw + TK_NONCE, &len, payload, (int)n) != 1 ||
        EVP_EncryptFinal_ex(c, raw + TK_NONCE + len, &len) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TK_TAG, raw + TK_NONCE + n) != 1)
        return cl_error_set(err, CL_E_INTERNAL, "token encryption failed");
    OPENSSL_cleanse(payload, sizeof(payload));

    if (outlen < sizeof(CL_TOKEN_PREFIX))
        return cl_error_set(err, CL_E_INTERNAL, "token buffer too small");
    memcpy(out, CL_TOKEN_PREFIX, sizeof(CL_TOKEN_PREFIX) - 1);
    r = cl_b64url_encode(raw, TK_NONCE + n + TK_TAG, out + sizeof(CL_TOKEN_PREFIX) - 1,
                         outlen - (sizeof(CL_TOKEN_PREFIX) - 1));
    if (r < 0) {
        out[0] = '\0';
        return cl_error_set(err, CL_E_INTERNAL, "token buffer too small");
    }
    return 0;
}

static int reject(cl_error *err, int rc, const char *why)
{
    cl_debug(TK_LOG, "token rejected: %s", why);
    cl_error_set(err, CL_E_UNAUTHORIZED, "The request you have made requires authentication.");
    return rc;
}

int cl_token_verify(const cl_token_key *key, const char *token, int64_t now_ms, cl_auth *out,
                    cl_error *err)
{
    unsigned char raw[TK_RAW_MAX];
    unsigned char payload[TK_PAYLOAD_MAX];
    const size_t plen = sizeof(CL_TOKEN_PREFIX) - 1;
    _cleanup_cipher_ EVP_CIPHER_CTX *c = NULL;
    size_t tlen, n, p;
    int rawlen, len;
    cl_auth a;

    if (!token)
        return reject(err, -EINVAL, "no token");
    tlen = strnlen(token, CL_TOKEN_MAX);
    if (tlen >= CL_TOKEN_MAX || tlen < plen || memcmp(token, CL_TOKEN_PREFIX, plen) != 0)
        return reject(err, -EINVAL, "not a nube token");
    rawlen = cl_b64url_decode(token + plen, tlen - plen, raw, sizeof(raw));
    if (rawlen < TK_NONCE + TK_FIXED + 3 + TK_TAG)
        return reject(err, -EINVAL, "malformed token");
    n = (size_t)rawlen - TK_NONCE - TK_TAG;

    c = EVP_CIPHER_CTX_new();
    if (!c || EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key->bytes, raw) != 1 ||
        EVP_DecryptUpdate(c, NULL, &len, (const unsigned char *)TK_AAD, 3) != 1 ||
        EVP_DecryptUpdate(c, payload, &len, raw + TK_NONCE, (int)n) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TK_TAG, raw + TK_NONCE + n) != 1 ||
        EVP_DecryptFinal_ex(c, payload + len, &len) != 1)
        return reject(err, -EINVAL, "authentication tag mismatch");

    if (payload[0] != TK_PAYLOAD_V1)
        return reject(err, -EPROTO, "unknown payload version");
    memset(&a, 0, sizeof(a));
    a.roles = payload[1];
    a.issued_ms = (int64_t)get_u64(payload + 2);
    a.expires_ms = (int64_t)get_u64(payload + 10);
    cl_b64url_encode(payload + 18, 16, a.audit_id, sizeof(a.audit_id));
    p = TK_FIXED;
    for (int i = 0; i < 3; i++) {
        char *dst = i == 0 ? a.user_id : i == 1 ? a.project_id : a.domain_id;
        int r = get_id(payload + p, n - p, dst);

        if (r < 0)
            return reject(err, -EINVAL, "malformed payload");
        p += (size_t)r;
    }
    OPENSSL_cleanse(payload, sizeof(payload));
    if (p != n || !a.user_id[0])
        return reject(err, -EINVAL, "malformed payload");
    if (now_ms >= a.expires_ms)
        return reject(err, -ETIME, "expired");
    *out = a;
    return 0;
}

/* ---- key files ---- */

static int parse_key(const unsigned char *buf, size_t n, cl_token_key *out)
{
    /* The text form: 64 hex digits, maybe with a trailing newline. */
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        n--;
    if (n == 2 * CL_TOKEN_KEY_LEN) {
        unsigned char k[CL_TOKEN_KEY_LEN];
        bool ok = true;

        for (size_t i = 0; i < CL_TOKEN_KEY_LEN && ok; i++) {
            int hi = hexval((char)(buf[2 * i] | 0x20)), lo = hexval((char)(buf[2 * i + 1] | 0x20));

            ok = hi >= 0 && lo >= 0;
            k[i] = (unsigned char)(hi << 4 | lo);
        }
        if (ok) {
            memcpy(out->bytes, k, sizeof(k));
            OPENSSL_cleanse(k, sizeof(k));
            return 0;
        }
    }
    return -EINVAL;
}

static int read_key(const char *path, cl_token_key *out, cl_error *err)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    unsigned char buf[130];
    struct stat sb;
    ssize_t n;
    size_t have = 0;

    if (fd < 0) {
        int e = errno;

        cl_error_set(err, CL_E_INTERNAL, "cannot open token key %s: %s", path, strerror(e));
        return -e;
    }
    if (fstat(fd, &sb) < 0)
        return cl_error_set(err, CL_E_INTERNAL, "cannot stat token key %s", path);
    if (sb.st_mode & 077)
        return cl_error_set(err, CL_E_FORBIDDEN,
                            "token key %s is readable by group or others (mode %03o); run "
                            "chmod 600 %s", path, (unsigned)(sb.st_mode & 0777), path);
    while (have < sizeof(buf) && (n = read(fd, buf + have, sizeof(buf) - have)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return cl_error_set(err, CL_E_INTERNAL, "cannot read token key %s", path);
        }
        have += (size_t)n;
    }
    if (have == CL_TOKEN_KEY_LEN) {
        memcpy(out->bytes, buf, CL_TOKEN_KEY_LEN);
        OPENSSL_cleanse(buf, sizeof(buf));
        return 0;
    }
    if (parse_key(buf, have, out) != 0) {
        OPENSSL_cleanse(buf, sizeof(buf));
        return cl_error_set(err, CL_E_BAD_REQUEST,
                            "token key %s must hold 64 hex characters (32 bytes); create one "
                            "with nube-manage token-key generate", path);
    }
    OPENSSL_cleanse(buf, sizeof(buf));
    return 0;
}

/* Write a fresh key into a new temporary file next to path; its name goes to tmp. */
static int write_temp_key(const char *path, char *tmp, size_t tmplen, cl_error *err)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char k[CL_TOKEN_KEY_LEN];
    char text[2 * CL_TOKEN_KEY_LEN + 1];
    _cleanup_close_ int fd = -1;
    ssize_t w;

    if ((size_t)snprintf(tmp, tmplen, "%s.tmp.XXXXXX", path) >= tmplen)
        return cl_error_set(err, CL_E_BAD_REQUEST, "token key path too long");
    if (RAND_bytes(k, sizeof(k)) != 1)
        return cl_error_set(err, CL_E_INTERNAL, "no randomness for a token key");
    for (size_t i = 0; i < sizeof(k); i++) {
        text[2 * i] = hex[k[i] >> 4];
        text[2 * i + 1] = hex[k[i] & 15];
    }
    text[2 * CL_TOKEN_KEY_LEN] = '\n';
    OPENSSL_cleanse(k, sizeof(k));
    fd = mkostemp(tmp, O_CLOEXEC); /* mode 0600 */
    if (fd < 0) {
        int e = errno;

        OPENSSL_cleanse(text, sizeof(text));
        cl_error_set(err, CL_E_INTERNAL, "cannot create token key in %s: %s", path,
                     strerror(e));
        return -e;
    }
    w = write(fd, text, sizeof(text));
    OPENSSL_cleanse(text, sizeof(text));
    if (w != (ssize_t)sizeof(text) || fchmod(fd, 0600) < 0 || fsync(fd) < 0) {
        unlink(tmp);
        return cl_error_set(err, CL_E_INTERNAL, "cannot write token key %s", tmp);
    }
    return 0;
}

int cl_token_key_generate(const char *path, cl_error *err)
{
    char tmp[4096];
    int rc = write_temp_key(path, tmp, sizeof(tmp), err);

    if (rc < 0)
        return rc;
    if (rename(tmp, path) < 0) {
        int e = errno;

        unlink(tmp);
        cl_error_set(err, CL_E_INTERNAL, "cannot install token key %s: %s", path, strerror(e));
        return -e;
    }
    return 0;
}

int cl_token_key_load(const char *path, bool create, cl_token_key *out, cl_error *err)
{
    char tmp[4096];
    int rc;

    if (!path || !*path)
        return cl_error_set(err, CL_E_BAD_REQUEST, "no token key file configured");
    if (access(path, F_OK) == 0 || !create || errno != ENOENT)
        return read_key(path, out, err);
    rc = write_temp_key(path, tmp, sizeof(tmp), err);
    if (rc < 0)
        return rc;
    /* link() fails with EEXIST when another process published its key first: then
     * that key is the one everyone uses. */
    if (link(tmp, path) < 0 && errno != EEXIST) {
        int e = errno;

        unlink(tmp);
        cl_error_set(err, CL_E_INTERNAL, "cannot create token key %s: %s", path, strerror(e));
        return -e;
    }
    unlink(tmp);
    cl_debug(TK_LOG, "token key ready at %s", path);
    return read_key(path, out, err);
}
