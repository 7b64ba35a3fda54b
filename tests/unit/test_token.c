/*
 * test_token.c - sealed tokens (libcloud/token.c) and password hashes (password.c).
 *
 * Round trips, every single-byte tamper of a token rejected, the wrong key, expiry, the
 * version prefix, base64 garbage, key files (creation mode, hex and raw forms, group
 * readable refused, rotation), PBKDF2 hashes, and the cost of a verification measured
 * over a loop and printed (not asserted tightly: CI machines vary; the bound asserted is
 * generous).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "password.h"
#include "token.h"
#include "util.h"

static const char USER[] = "0f1e2d3c4b5a49687766554433221100";
static const char PROJECT[] = "5a0c5e2b9b6f4f3e8d1c2b3a4f5e6d7c";

static void make_key(cl_token_key *k, unsigned char seed)
{
    for (size_t i = 0; i < sizeof(k->bytes); i++)
        k->bytes[i] = (unsigned char)(seed + i * 7);
}

static void sample_auth(cl_auth *a, int64_t now)
{
    memset(a, 0, sizeof(*a));
    cl_strlcpy(a->user_id, USER, sizeof(a->user_id));
    cl_strlcpy(a->project_id, PROJECT, sizeof(a->project_id));
    cl_strlcpy(a->domain_id, "default", sizeof(a->domain_id));
    a->roles = CL_ROLE_BIT(CL_ROLE_MEMBER) | CL_ROLE_BIT(CL_ROLE_READER);
    a->issued_ms = now;
    a->expires_ms = now + 3600 * 1000;
    cl_token_audit_id_new(a->audit_id);
}

static void test_round_trip(void **state)
{
    cl_token_key k;
    cl_auth a, b;
    char tok[CL_TOKEN_MAX], tok2[CL_TOKEN_MAX];
    cl_error err = {0};
    int64_t now = cl_now_ms();

    (void)state;
    make_key(&k, 1);
    sample_auth(&a, now);
    assert_int_equal(cl_token_issue(&k, &a, tok, sizeof(tok), &err), 0);
    assert_memory_equal(tok, CL_TOKEN_PREFIX, strlen(CL_TOKEN_PREFIX));
    printf("token (%zu chars): %s\n", strlen(tok), tok);
    assert_int_equal(cl_token_verify(&k, tok, now + 1, &b, &err), 0);
    assert_string_equal(b.user_id, USER);
    assert_string_equal(b.project_id, PROJECT);
    assert_string_equal(b.domain_id, "default");
    assert_string_equal(b.audit_id, a.audit_id);
    assert_int_equal(strlen(b.audit_id), CL_AUDIT_ID_LEN);
    assert_int_equal(b.roles, a.roles);
    assert_int_equal(b.issued_ms, a.issued_ms);
    assert_int_equal(b.expires_ms, a.expires_ms);
    assert_string_equal(b.user_name, "");

    /* A fresh nonce: the same claims never give the same string. */
    assert_int_equal(cl_token_issue(&k, &a, tok2, sizeof(tok2), &err), 0);
    assert_string_not_equal(tok, tok2);

    /* Unscoped, text ids (not 32-hex), an empty audit id generated. */
    memset(&a, 0, sizeof(a));
    cl_strlcpy(a.user_id, "some-user@example", sizeof(a.user_id));
    cl_strlcpy(a.domain_id, "dom-1", sizeof(a.domain_id));
    a.issued_ms = now;
    a.expires_ms = now + 1000;
    assert_int_equal(cl_token_issue(&k, &a, tok, sizeof(tok), &err), 0);
    assert_int_equal(cl_token_verify(&k, tok, now, &b, &err), 0);
    assert_string_equal(b.user_id, "some-user@example");
    assert_string_equal(b.project_id, "");
    assert_string_equal(b.domain_id, "dom-1");
    assert_int_equal(b.roles, 0);
    assert_int_equal(strlen(b.audit_id), CL_AUDIT_ID_LEN);

    /* The longest ids still fit in CL_TOKEN_MAX. */
    memset(a.user_id, 'u', CL_ID_MAX - 1);
    a.user_id[CL_ID_MAX - 1] = '\0';
    memset(a.project_id, 'p', CL_ID_MAX - 1);
    a.project_id[CL_ID_MAX - 1] = '\0';
    memset(a.domain_id, 'd', CL_ID_MAX - 1);
    a.domain_id[CL_ID_MAX - 1] = '\0';
    assert_int_equal(cl_token_issue(&k, &a, tok, sizeof(tok), &err), 0);
    assert_int_equal(cl_token_verify(&k, tok, now, &b, &err), 0);
    assert_string_equal(b.project_id, a.project_id);
    /* Too small a buffer is refused, not truncated. */
    assert_true(cl_token_issue(&k, &a, tok, 64, &err) < 0);
}

static void test_tamper_every_byte(void **state)
{
    cl_token_key k;
    cl_auth a, b;
    char tok[CL_TOKEN_MAX], bad[CL_TOKEN_MAX];
    cl_error err = {0};
    int64_t now = cl_now_ms();
    size_t n;

    (void)state;
    make_key(&k, 2);
    sample_auth(&a, now);
    assert_int_equal(cl_token_issue(&k, &a, tok, sizeof(tok), &err), 0);
    n = strlen(tok);
    for (size_t i = 0; i < n; i++) {
        /* Two replacements per position: a neighbour in the alphabet and a character
         * outside it. */
        const char subs[2] = {tok[i] == 'A' ? 'B' : 'A', '!'};

        for (int j = 0; j < 2; j++) {
            memcpy(bad, tok, n + 1);
            bad[i] = subs[j];
            memset(&b, 0x5a, sizeof(b));
            assert_true(cl_token_verify(&k, bad, now, &b, &err) < 0);
            assert_int_equal(err.code, CL_E_UNAUTHORIZED);
            /* Outputs untouched on failure. */
            assert_int_equal(b.roles, 0x5a5a5a5au);
        }
    }
    /* Truncated and extended. */
    for (size_t len = 0; len < n; len += 7) {
        memcpy(bad, tok, len);
        bad[len] = '\0';
        assert_true(cl_token_verify(&k, bad, now, &b, &err) < 0);
    }
    assert_true(snprintf(bad, sizeof(bad), "%sAA", tok) < (int)sizeof(bad));
    assert_true(cl_token_verify(&k, bad, now, &b, &err) < 0);
    assert_int_equal(cl_token_verify(&k, tok, now, &b, &err), 0);
}

static void test_wrong_key_expiry_prefix(void **state)
{
    cl_token_key k, other;
    cl_auth a, b;
    char tok[CL_TOKEN_MAX], bad[CL_TOKEN_MAX];
    cl_error err = {0};
    int64_t now = cl_now_ms();

    (void)state;
    make_key(&k, 3);
    make_key(&other, 4);
    sample_auth(&a, now);
    assert_int_equal(cl_token_issue(&k, &a, tok, sizeof(tok), &err), 0);
    assert_int_equal(cl_token_verify(&other, tok, now, &b, &err), -EINVAL);

    /* Expiry: valid up to the last millisecond, refused from expires_ms on. */
    assert_int_equal(cl_token_verify(&k, tok, a.expires_ms - 1, &b, &err), 0);
    assert_int_equal(cl_token_verify(&k, tok, a.expires_ms, &b, &err), -ETIME);
    assert_int_equal(cl_token_verify(&k, tok, a.expires_ms + 86400000, &b, &err), -ETIME);

    /* Another version prefix, or none. */
    snprintf(bad, sizeof(bad), "nb2_%s", tok + strlen(CL_TOKEN_PREFIX));
    assert_int_equal(cl_token_verify(&k, bad, now, &b, &err), -EINVAL);
    assert_int_equal(cl_token_verify(&k, tok + strlen(CL_TOKEN_PREFIX), now, &b, &err),
                     -EINVAL);
    assert_int_equal(cl_token_verify(&k, NULL, now, &b, &err), -EINVAL);
    assert_int_equal(cl_token_verify(&k, "", now, &b, &err), -EINVAL);
}

static void test_base64_garbage(void **state)
{
    static const char *const garbage[] = {
        "nb1_", "nb1_=", "nb1_A", "nb1_AAAA", "nb1_////", "nb1_++++", "nb1_\xff\xfe",
        "nb1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "nb1_ AAAA", "it-admin-token-0123456789abcdef",
    };
    unsigned char out[16];
    char enc[32];
    cl_token_key k;
    cl_auth b;
    cl_error err = {0};
    char big[CL_TOKEN_MAX + 10];

    (void)state;
    make_key(&k, 5);
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++)
        assert_int_equal(cl_token_verify(&k, garbage[i], 0, &b, &err), -EINVAL);
    memset(big, 'A', sizeof(big) - 1);
    memcpy(big, "nb1_", 4);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(cl_token_verify(&k, big, 0, &b, &err), -EINVAL);

    /* The codec itself: RFC 4648 vectors in the URL alphabet, no padding. */
    assert_int_equal(cl_b64url_encode((const unsigned char *)"foob", 4, enc, sizeof(enc)), 6);
    assert_string_equal(enc, "Zm9vYg");
    assert_int_equal(cl_b64url_encode((const unsigned char *)"\xfb\xff", 2, enc, sizeof(enc)),
                     3);
    assert_string_equal(enc, "-_8");
    assert_int_equal(cl_b64url_decode("Zm9vYg", 6, out, sizeof(out)), 4);
    assert_memory_equal(out, "foob", 4);
    assert_int_equal(cl_b64url_decode("Zm9vYh", 6, out, sizeof(out)), -EINVAL); /* non-canonical */
    assert_int_equal(cl_b64url_decode("Zm9v=", 5, out, sizeof(out)), -EINVAL);
    assert_int_equal(cl_b64url_decode("Zm9vYg", 6, out, 2), -ENOSPC);
    assert_int_equal(cl_b64url_encode((const unsigned char *)"foob", 4, enc, 6), -ENOSPC);
}

static void test_key_files(void **state)
{
    char dir[] = "/tmp/test_token_XXXXXX";
    char path[256], hexpath[256], rawpath[256];
    cl_token_key k1, k2, k3;
    cl_error err = {0};
    struct stat sb;
    cl_auth a, b;
    char tok[CL_TOKEN_MAX];
    int fd;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/token.key", dir);
    snprintf(hexpath, sizeof(hexpath), "%s/hex.key", dir);
    snprintf(rawpath, sizeof(rawpath), "%s/raw.key", dir);

    /* Missing without create: an error; with create: a 0600 file, stable on reload. */
    assert_int_equal(cl_token_key_load(path, false, &k1, &err), -ENOENT);
    assert_int_equal(cl_token_key_load(path, true, &k1, &err), 0);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_int_equal(sb.st_size, 65);
    assert_int_equal(cl_token_key_load(path, true, &k2, &err), 0);
    assert_memory_equal(k1.bytes, k2.bytes, CL_TOKEN_KEY_LEN);

    /* Rotation: a new key; tokens of the old one stop verifying. */
    sample_auth(&a, cl_now_ms());
    assert_int_equal(cl_token_issue(&k1, &a, tok, sizeof(tok), &err), 0);
    assert_int_equal(cl_token_key_generate(path, &err), 0);
    assert_int_equal(cl_token_key_load(path, false, &k3, &err), 0);
    assert_memory_not_equal(k1.bytes, k3.bytes, CL_TOKEN_KEY_LEN);
    assert_int_equal(cl_token_verify(&k3, tok, a.issued_ms, &b, &err), -EINVAL);

    /* Hex (upper case accepted) and raw forms. */
    fd = open(hexpath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "000102030405060708090A0B0C0D0E0F101112131415161718191a1b1c1d1e1f\n",
                           65), 65);
    close(fd);
    assert_int_equal(cl_token_key_load(hexpath, false, &k1, &err), 0);
    for (int i = 0; i < CL_TOKEN_KEY_LEN; i++)
        assert_int_equal(k1.bytes[i], i);
    fd = open(rawpath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, k1.bytes, CL_TOKEN_KEY_LEN), CL_TOKEN_KEY_LEN);
    close(fd);
    assert_int_equal(cl_token_key_load(rawpath, false, &k2, &err), 0);
    assert_memory_equal(k1.bytes, k2.bytes, CL_TOKEN_KEY_LEN);

    /* Group-readable keys are refused; short ones too. */
    assert_int_equal(chmod(hexpath, 0640), 0);
    assert_true(cl_token_key_load(hexpath, false, &k1, &err) < 0);
    assert_non_null(strstr(err.message, "chmod 600"));
    assert_int_equal(chmod(hexpath, 0600), 0);
    assert_int_equal(truncate(hexpath, 20), 0);
    assert_true(cl_token_key_load(hexpath, false, &k1, &err) < 0);

    assert_int_equal(unlink(path), 0);
    assert_int_equal(unlink(hexpath), 0);
    assert_int_equal(unlink(rawpath), 0);
    assert_int_equal(rmdir(dir), 0);
}

static void test_passwords(void **state)
{
    char h1[CL_PASSWORD_HASH_MAX], h2[CL_PASSWORD_HASH_MAX], bad[CL_PASSWORD_HASH_MAX];

    (void)state;
    assert_int_equal(cl_password_hash("s3cret", 1000, h1), 0);
    assert_int_equal(strncmp(h1, "pbkdf2-sha256$1000$", 19), 0);
    assert_true(cl_password_verify("s3cret", h1));
    assert_false(cl_password_verify("s3cret ", h1));
    assert_false(cl_password_verify("", h1));
    assert_false(cl_password_verify(NULL, h1));
    /* Salted: the same password hashes differently. */
    assert_int_equal(cl_password_hash("s3cret", 1000, h2), 0);
    assert_string_not_equal(h1, h2);
    assert_true(cl_password_verify("s3cret", h2));
    /* Iterations below the floor are raised to it. */
    assert_int_equal(cl_password_hash("x", 1, h2), 0);
    assert_int_equal(strncmp(h2, "pbkdf2-sha256$1000$", 19), 0);
    /* Malformed or hostile stored forms never match. */
    assert_false(cl_password_verify("s3cret", ""));
    assert_false(cl_password_verify("s3cret", "plain"));
    assert_false(cl_password_verify("s3cret", "pbkdf2-sha256$99999999999$AAAA$AAAA"));
    assert_false(cl_password_verify("s3cret", "pbkdf2-sha256$1000$$"));
    memcpy(bad, h1, sizeof(bad));
    bad[strlen(bad) - 2] = bad[strlen(bad) - 2] == 'A' ? 'B' : 'A';
    assert_false(cl_password_verify("s3cret", bad));
    memcpy(bad, h1, sizeof(bad));
    bad[14] = '2'; /* 2000 rounds instead of 1000 */
    assert_false(cl_password_verify("s3cret", bad));
}

static double cpu_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void test_verify_cost(void **state)
{
    enum { N = 20000 };
    cl_token_key k;
    cl_auth a, b;
    char tok[CL_TOKEN_MAX];
    cl_error err = {0};
    int64_t now = cl_now_ms();
    double t0, per_us;

    (void)state;
    make_key(&k, 6);
    sample_auth(&a, now);
    assert_int_equal(cl_token_issue(&k, &a, tok, sizeof(tok), &err), 0);
    t0 = cpu_ms();
    for (int i = 0; i < N; i++)
        assert_int_equal(cl_token_verify(&k, tok, now, &b, NULL), 0);
    per_us = (cpu_ms() - t0) * 1000.0 / N;
    printf("token verify: %.2f us CPU per call over %d calls (target < 100 us)\n", per_us, N);
    /* Generous bound (sanitizer builds are several times slower than release). */
    assert_true(per_us < 1000.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_tamper_every_byte),
        cmocka_unit_test(test_wrong_key_expiry_prefix),
        cmocka_unit_test(test_base64_garbage),
        cmocka_unit_test(test_key_files),
        cmocka_unit_test(test_passwords),
        cmocka_unit_test(test_verify_cost),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
