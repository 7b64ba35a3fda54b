/*
 * token.h - nube's stateless tokens: who the caller is, sealed with the shared token key.
 *
 * A token is "nb1_" followed by base64url (no padding) of
 *     nonce (12 random bytes) || AES-256-GCM(payload) || GCM tag (16 bytes)
 * with the prefix "nb1" as additional authenticated data. The payload is a compact
 * binary record (version byte, role bits, issued and expiry in unix ms, a 16-byte audit
 * id, then user id, project id and domain id: 32-hex ids packed as 16 bytes, other ids
 * as length-prefixed text). Nothing in it is readable without the key, and changing any
 * byte fails the tag check, so every nube HTTP service can trust a token after one local
 * AES-GCM decryption (no round trip to Identity, a few microseconds of CPU).
 *
 * The key file ([auth] token_key_file, default <state_dir>/token.key) holds 32 random
 * bytes, as 64 hex characters (or raw); it is created with mode 0600 and refused when
 * group or others may read it. Rotating the key (nube-manage token-key generate)
 * invalidates every outstanding token.
 *
 * Revocation is not in the token: a revoked token's audit id is recorded with its expiry
 * (controller DB, revoked_tokens) and nube-api checks that list after cl_token_verify().
 * Services without the controller DB (nube-image, nube-billing) honour expiry only, until
 * the revocation list is distributed to them (a later issue).
 *
 * Thread-safety: all functions are reentrant; a loaded cl_token_key is read-only.
 */
#ifndef CL_TOKEN_H
#define CL_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "errors.h"

#define CL_TOKEN_KEY_LEN 32
#define CL_TOKEN_PREFIX "nb1_"
/* Largest token string cl_token_issue() writes (with the NUL), for ids up to
 * CL_ID_MAX - 1 characters. */
#define CL_TOKEN_MAX 512
/* Audit ids: 16 random bytes in base64url without padding (22 characters), as Keystone. */
#define CL_AUDIT_ID_LEN 22

typedef struct cl_token_key {
    unsigned char bytes[CL_TOKEN_KEY_LEN];
} cl_token_key;

/* Load the key at path (64 hex characters, optionally followed by a newline, or 32 raw
 * bytes). With create=true a missing file is created first with a fresh random key, mode
 * 0600, without replacing a file another process created at the same moment. Refuses a
 * file readable by group or others (-EACCES). Returns 0 or negative errno with err. */
int cl_token_key_load(const char *path, bool create, cl_token_key *out, cl_error *err);

/* Write a new random key to path (mode 0600), atomically replacing any previous one
 * (write to a temporary file, fsync, rename). Every token sealed with the old key stops
 * verifying. Returns 0 or negative errno with err. */
int cl_token_key_generate(const char *path, cl_error *err);

/* Seal a token for a (user_id, project_id or "", domain_id, roles, issued_ms,
 * expires_ms, audit_id). When a->audit_id is empty a fresh one is generated (the chosen
 * value is not reported back: pass one to know it, see cl_token_audit_id_new). Names in
 * a are not carried (verify leaves them empty). out receives the NUL-terminated token
 * (CL_TOKEN_MAX is always enough). Returns 0, -EINVAL (ids too long, bad audit id),
 * -ENOSPC (outlen too small) or -EIO (OpenSSL failure). */
int cl_token_issue(const cl_token_key *key, const cl_auth *a, char *out, size_t outlen,
                   cl_error *err);

/* Open a token: check prefix, size, GCM tag (key), payload version and expiry against
 * now_ms. On success fills *out (user_id, project_id, domain_id, roles, issued_ms,
 * expires_ms, audit_id; names empty) and returns 0. Otherwise returns -EINVAL (not a
 * token: garbage, tampered, other key), -EPROTO (unknown payload version) or -ETIME
 * (expired), with err (CL_E_UNAUTHORIZED) and *out untouched. Does not consult the
 * revocation list. */
int cl_token_verify(const cl_token_key *key, const char *token, int64_t now_ms, cl_auth *out,
                    cl_error *err);

/* A fresh random audit id (CL_AUDIT_ID_LEN characters + NUL). */
void cl_token_audit_id_new(char out[CL_AUDIT_ID_LEN + 1]);

/* base64url without padding (RFC 4648 section 5). encode: writes NUL-terminated text,
 * returns its length or -ENOSPC. decode: returns the number of bytes or -EINVAL
 * (bad character / length) / -ENOSPC. */
int cl_b64url_encode(const unsigned char *in, size_t len, char *out, size_t outlen);
int cl_b64url_decode(const char *in, size_t len, unsigned char *out, size_t outlen);

#endif
