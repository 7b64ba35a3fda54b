/*
 * password.c - PBKDF2-HMAC-SHA256 password hashes (see password.h).
 *
 * The cost of verification is the point: at 200000 rounds one guess costs about as much
 * CPU as a token issue is allowed to, which is what makes a stolen database expensive to
 * attack. The stored iteration count is bounded on read too, so a row edited to claim
 * 2^31 rounds cannot turn a login into a denial of service.
 */
#include "password.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#include "token.h"
#include "util.h"

#define PW_PREFIX "pbkdf2-sha256$"
#define PW_SALT 16
#define PW_HASH 32

static int derive(const char *password, const unsigned char *salt, size_t saltlen,
                  int64_t iterations, unsigned char out[PW_HASH])
{
    if (PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, (int)saltlen,
                          (int)iterations, EVP_sha256(), PW_HASH, out) != 1)
        return -EIO;
    return 0;
}

int cl_password_hash(const char *password, int64_t iterations, char out[CL_PASSWORD_HASH_MAX])
{
    unsigned char salt[PW_SALT], dk[PW_HASH];
    char s64[32], h64[48];

    if (!password || strnlen(password, CL_PASSWORD_MAX + 1) > CL_PASSWORD_MAX)
        return -EINVAL;
    if (iterations < CL_PASSWORD_ITER_MIN)
        iterations = CL_PASSWORD_ITER_MIN;
    if (iterations > CL_PASSWORD_ITER_MAX)
        iterations = CL_PASSWORD_ITER_MAX;
    if (RAND_bytes(salt, sizeof(salt)) != 1 || derive(password, salt, sizeof(salt),
                                                      iterations, dk) < 0)
        return -EIO;
    cl_b64url_encode(salt, sizeof(salt), s64, sizeof(s64));
    cl_b64url_encode(dk, sizeof(dk), h64, sizeof(h64));
    OPENSSL_cleanse(dk, sizeof(dk));
    snprintf(out, CL_PASSWORD_HASH_MAX, PW_PREFIX "%" PRId64 "$%s$%s", iterations, s64, h64);
    return 0;
}

bool cl_password_verify(const char *password, const char *stored)
{
    unsigned char salt[PW_SALT + 8], want[PW_HASH + 8], got[PW_HASH];
    char iter_s[16];
    const char *p, *d1, *d2;
    int64_t iterations;
    int saltlen, wantlen;
    bool ok;

    if (!password || !stored || strnlen(password, CL_PASSWORD_MAX + 1) > CL_PASSWORD_MAX ||
        strncmp(stored, PW_PREFIX, sizeof(PW_PREFIX) - 1) != 0)
        return false;
    p = stored + sizeof(PW_PREFIX) - 1;
    d1 = strchr(p, '$');
    if (!d1 || (size_t)(d1 - p) >= sizeof(iter_s))
        return false;
    memcpy(iter_s, p, (size_t)(d1 - p));
    iter_s[d1 - p] = '\0';
    if (cl_parse_int64(iter_s, &iterations) < 0 || iterations < CL_PASSWORD_ITER_MIN ||
        iterations > CL_PASSWORD_ITER_MAX)
        return false;
    d2 = strchr(d1 + 1, '$');
    if (!d2)
        return false;
    saltlen = cl_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), salt, sizeof(salt));
    wantlen = cl_b64url_decode(d2 + 1, strlen(d2 + 1), want, sizeof(want));
    if (saltlen <= 0 || wantlen != PW_HASH)
        return false;
    if (derive(password, salt, (size_t)saltlen, iterations, got) < 0)
        return false;
    ok = CRYPTO_memcmp(got, want, PW_HASH) == 0;
    OPENSSL_cleanse(got, sizeof(got));
    return ok;
}
