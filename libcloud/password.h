/*
 * password.h - slow, salted password hashes for nube's users.
 *
 * PBKDF2-HMAC-SHA256 (OpenSSL PKCS5_PBKDF2_HMAC, RFC 8018) with a random 16-byte salt and
 * a configurable iteration count, stored as one self-describing string:
 *     pbkdf2-sha256$<iterations>$<salt, base64url>$<32-byte hash, base64url>
 * The iteration count travels with the hash, so raising [auth] password_iterations
 * affects new passwords only and old hashes keep verifying. Comparison is constant-time.
 * Thread-safe.
 */
#ifndef CL_PASSWORD_H
#define CL_PASSWORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CL_PASSWORD_HASH_MAX 128   /* room for the stored form, with the NUL */
#define CL_PASSWORD_ITER_DEFAULT 200000
#define CL_PASSWORD_ITER_MIN 1000
#define CL_PASSWORD_ITER_MAX 10000000
#define CL_PASSWORD_MAX 4096       /* longer passwords are refused (hashing cost is linear) */

/* Hash password with a fresh salt and `iterations` rounds (clamped to the bounds above)
 * into out (CL_PASSWORD_HASH_MAX bytes). 0, -EINVAL (too long / NULL) or -EIO. */
int cl_password_hash(const char *password, int64_t iterations, char out[CL_PASSWORD_HASH_MAX]);

/* True when password matches the stored form. A malformed stored form, an iteration
 * count outside the bounds or a NULL never matches. */
bool cl_password_verify(const char *password, const char *stored);

#endif
