/*
 * DLN-1 portable seeded Gaussian noise, C99 port. See dln1.h for the build rules and
 * docs/noise-dln1.md for the spec; each numbered comment below is the spec step it implements.
 *
 * Only IEEE-754 double + - * / and sqrt (each correctly rounded), exact bit operations and exact
 * conversions are used, in the order the spec gives. No libm log/sin/cos/exp/frexp; sqrt is the only
 * <math.h> function (link with -lm where the platform needs it).
 */
#include "dln1.h"

#include <float.h>
#include <math.h>
#include <string.h>

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "DLN-1 needs FLT_EVAL_METHOD == 0 (double evaluated in double precision, e.g. SSE2 or AArch64)"
#endif

#if defined(__FAST_MATH__)
#error "DLN-1 must not be compiled with -ffast-math"
#endif

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* ---------------------------------------------------------------- Philox4x32-10 */
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u
#define PHILOX_ROUNDS 10

void dln1_philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t x0 = counter[0], x1 = counter[1], x2 = counter[2], x3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    int round;
    for (round = 0; round < PHILOX_ROUNDS; ++round) {
        uint64_t p0, p1;
        if (round > 0) {
            k0 += PHILOX_W0; /* uint32_t wraps modulo 2^32 */
            k1 += PHILOX_W1;
        }
        p0 = (uint64_t)PHILOX_M0 * x0;
        p1 = (uint64_t)PHILOX_M1 * x2;
        x0 = (uint32_t)(p1 >> 32) ^ x1 ^ k0;
        x1 = (uint32_t)p1;
        x2 = (uint32_t)(p0 >> 32) ^ x3 ^ k1;
        x3 = (uint32_t)p0;
    }
    out[0] = x0;
    out[1] = x1;
    out[2] = x2;
    out[3] = x3;
}

/* ---------------------------------------------------------------- constants */
static const double HALF_PI = 0x1.921fb54442d18p+0;   /* nearest double to pi/2 */
static const double LN2 = 0x1.62e42fefa39efp-1;       /* nearest double to ln 2 */
static const double SQRT_HALF = 0x1.6a09e667f3bcdp-1; /* nearest double to sqrt(1/2) */
static const double TWO_POW_M32 = 0x1p-32;
static const double TWO_POW_M30 = 0x1p-30;

typedef struct {
    double ln_c[11];  /* c_k = 1 / (2k + 1) */
    double sin_c[12]; /* (-1)^j * inv[2j + 1] */
    double cos_c[12]; /* (-1)^j * inv[2j] */
} dln1_tables;

/* Coefficient tables by correctly rounded divisions, in the order the spec gives. */
static void dln1_init_tables(dln1_tables *tab) {
    double inv[24];
    int k, n, j;
    for (k = 0; k <= 10; ++k) tab->ln_c[k] = 1.0 / (double)(2 * k + 1);
    inv[0] = 1.0;
    for (n = 1; n <= 23; ++n) inv[n] = inv[n - 1] / (double)n;
    for (j = 0; j <= 11; ++j) {
        tab->sin_c[j] = (j % 2 == 0) ? inv[2 * j + 1] : -inv[2 * j + 1];
        tab->cos_c[j] = (j % 2 == 0) ? inv[2 * j] : -inv[2 * j];
    }
}

/* 4. ln u for u in (0, 1): exact frexp by bits, fold to [sqrt(1/2), sqrt(2)), atanh series. */
static double dln1_ln_unit(const dln1_tables *tab, double u) {
    uint64_t bits;
    double m, s, t, p, ln_m;
    int e, k;
    memcpy(&bits, &u, sizeof bits);
    e = (int)((bits >> 52) & 0x7FFu) - 1022; /* u is normal: u = m * 2^e with m in [0.5, 1) */
    bits = (bits & UINT64_C(0x000FFFFFFFFFFFFF)) | UINT64_C(0x3FE0000000000000);
    memcpy(&m, &bits, sizeof m);
    if (m < SQRT_HALF) {
        m = m * 2.0;
        e = e - 1;
    }
    s = (m - 1.0) / (m + 1.0);
    t = s * s;
    p = tab->ln_c[10];
    for (k = 9; k >= 0; --k) {
        p = p * t;
        p = p + tab->ln_c[k];
    }
    ln_m = 2.0 * (s * p);
    {
        double e_ln2 = (double)e * LN2;
        return e_ln2 + ln_m;
    }
}

/* 3.-6. Two normals from the word pair (a, b): a -> radius, b -> angle. */
static void dln1_pair(const dln1_tables *tab, uint32_t a, uint32_t b, double *z0, double *z1) {
    double u, r, f, x, t, s_acc, c_acc, sin_t, cos_t, c_rot, s_rot;
    uint32_t q;
    int j;
    u = ((double)a + 0.5) * TWO_POW_M32;
    r = sqrt(-2.0 * dln1_ln_unit(tab, u));
    q = b >> 30;
    f = ((double)(b & 0x3FFFFFFFu) + 0.5) * TWO_POW_M30;
    x = f * HALF_PI;
    t = x * x;
    s_acc = tab->sin_c[11];
    c_acc = tab->cos_c[11];
    for (j = 10; j >= 0; --j) {
        s_acc = s_acc * t;
        s_acc = s_acc + tab->sin_c[j];
        c_acc = c_acc * t;
        c_acc = c_acc + tab->cos_c[j];
    }
    sin_t = x * s_acc;
    cos_t = c_acc;
    switch (q) {
        case 0: c_rot = cos_t; s_rot = sin_t; break;
        case 1: c_rot = -sin_t; s_rot = cos_t; break;
        case 2: c_rot = -cos_t; s_rot = -sin_t; break;
        default: c_rot = sin_t; s_rot = -cos_t; break;
    }
    *z0 = r * c_rot;
    *z1 = r * s_rot;
}

/* 1.-2. The four float64 values z of one Philox block, in slot order. */
static void dln1_block(const dln1_tables *tab, const uint32_t key[2], uint32_t stream, uint64_t block,
                       double z[4]) {
    uint32_t counter[4], words[4];
    counter[0] = (uint32_t)block;
    counter[1] = (uint32_t)(block >> 32);
    counter[2] = stream;
    counter[3] = 0;
    dln1_philox4x32_10(counter, key, words);
    dln1_pair(tab, words[0], words[1], &z[0], &z[1]);
    dln1_pair(tab, words[2], words[3], &z[2], &z[3]);
}

/* Elements first .. first + n - 1, as float32 (out32) or float64 (out64); exactly one is non-NULL. */
static void dln1_fill(uint64_t seed, uint32_t stream, uint64_t first, float *out32, double *out64, size_t n) {
    dln1_tables tab;
    uint32_t key[2];
    size_t done = 0;
    dln1_init_tables(&tab);
    key[0] = (uint32_t)seed;
    key[1] = (uint32_t)(seed >> 32);
    while (done < n) {
        uint64_t index = first + (uint64_t)done;
        unsigned slot = (unsigned)(index & 3u);
        double z[4];
        dln1_block(&tab, key, stream, index >> 2, z);
        for (; slot < 4u && done < n; ++slot, ++done) {
            if (out32 != NULL) {
                out32[done] = (float)z[slot]; /* 7. round to nearest even */
            } else {
                out64[done] = z[slot];
            }
        }
    }
}

void dln1_normal_range(uint64_t seed, uint32_t stream, uint64_t first, float *out, size_t n) {
    dln1_fill(seed, stream, first, out, NULL, n);
}

void dln1_normal(uint64_t seed, uint32_t stream, float *out, size_t n) {
    dln1_fill(seed, stream, 0, out, NULL, n);
}

void dln1_normal_f64_range(uint64_t seed, uint32_t stream, uint64_t first, double *out, size_t n) {
    dln1_fill(seed, stream, first, NULL, out, n);
}
