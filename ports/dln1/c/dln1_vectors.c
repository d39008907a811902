/*
 * Prints the DLN-1 candidate vector file (JSON, the golden file's format) computed by this C port.
 * Check it with:  dreamlite parity vectors --file my_port_output.json
 *
 * Build:  cc -std=c99 -O2 -ffp-contract=off dln1.c dln1_vectors.c -o dln1_vectors -lm
 *
 * The SHA-256 below is a small self-contained implementation of FIPS 180-4 written for this file
 * (public domain); it is checked against the "abc" test vector at start-up.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dln1.h"

/* ---------------------------------------------------------------- SHA-256 (FIPS 180-4) */
typedef struct {
    uint32_t h[8];
    uint64_t length; /* bytes hashed so far */
    unsigned char block[64];
    size_t used; /* bytes waiting in block */
} sha256_ctx;

/* First 32 bits of the fractional parts of the cube roots of the first 64 primes. */
static const uint32_t SHA256_K[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};

static uint32_t rotr32(uint32_t x, unsigned n) { return (x >> n) | (x << (32u - n)); }

static void sha256_compress(sha256_ctx *ctx, const unsigned char *p) {
    uint32_t w[64], a, b, c, d, e, f, g, h;
    int i;
    for (i = 0; i < 16; ++i) {
        w[i] = ((uint32_t)p[4 * i] << 24) | ((uint32_t)p[4 * i + 1] << 16) | ((uint32_t)p[4 * i + 2] << 8) |
               (uint32_t)p[4 * i + 3];
    }
    for (i = 16; i < 64; ++i) {
        uint32_t s0 = rotr32(w[i - 15], 7) ^ rotr32(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr32(w[i - 2], 17) ^ rotr32(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = ctx->h[0]; b = ctx->h[1]; c = ctx->h[2]; d = ctx->h[3];
    e = ctx->h[4]; f = ctx->h[5]; g = ctx->h[6]; h = ctx->h[7];
    for (i = 0; i < 64; ++i) {
        uint32_t big_s1 = rotr32(e, 6) ^ rotr32(e, 11) ^ rotr32(e, 25);
        uint32_t choose = (e & f) ^ (~e & g);
        uint32_t t1 = h + big_s1 + choose + SHA256_K[i] + w[i];
        uint32_t big_s0 = rotr32(a, 2) ^ rotr32(a, 13) ^ rotr32(a, 22);
        uint32_t majority = (a & b) ^ (a & c) ^ (b & c);
        uint32_t t2 = big_s0 + majority;
        h = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    ctx->h[0] += a; ctx->h[1] += b; ctx->h[2] += c; ctx->h[3] += d;
    ctx->h[4] += e; ctx->h[5] += f; ctx->h[6] += g; ctx->h[7] += h;
}

static void sha256_init(sha256_ctx *ctx) {
    /* First 32 bits of the fractional parts of the square roots of the first 8 primes. */
    static const uint32_t h0[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                   0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    memcpy(ctx->h, h0, sizeof h0);
    ctx->length = 0;
    ctx->used = 0;
}

static void sha256_update(sha256_ctx *ctx, const unsigned char *data, size_t len) {
    ctx->length += len;
    while (len > 0) {
        size_t take = 64 - ctx->used;
        if (take > len) take = len;
        memcpy(ctx->block + ctx->used, data, take);
        ctx->used += take;
        data += take;
        len -= take;
        if (ctx->used == 64) {
            sha256_compress(ctx, ctx->block);
            ctx->used = 0;
        }
    }
}

static void sha256_final_hex(sha256_ctx *ctx, char hex[65]) {
    uint64_t bit_length = ctx->length * 8u;
    unsigned char pad = 0x80, zero = 0, len_be[8];
    int i;
    sha256_update(ctx, &pad, 1);
    while (ctx->used != 56) sha256_update(ctx, &zero, 1);
    for (i = 0; i < 8; ++i) len_be[i] = (unsigned char)(bit_length >> (56 - 8 * i));
    sha256_update(ctx, len_be, 8);
    for (i = 0; i < 8; ++i) sprintf(hex + 8 * i, "%08" PRIx32, ctx->h[i]);
    hex[64] = '\0';
}

/* ---------------------------------------------------------------- vectors */
typedef struct {
    const char *name;
    uint32_t counter[4];
    uint32_t key[2];
} kat_case;

static const kat_case KATS[] = {
    {"zeros", {0u, 0u, 0u, 0u}, {0u, 0u}},
    {"ones", {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, {0xffffffffu, 0xffffffffu}},
    {"pi", {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, {0xa4093822u, 0x299f31d0u}},
};

typedef struct {
    const char *name;
    uint64_t seed;
    uint32_t stream;
    int ndim;
    size_t shape[4];
} normal_case;

static const normal_case CASES[] = {
    {"seed0_first16", UINT64_C(0), 0u, 1, {16, 0, 0, 0}},
    {"seed1_first16", UINT64_C(1), 0u, 1, {16, 0, 0, 0}},
    {"seed42_first16", UINT64_C(42), 0u, 1, {16, 0, 0, 0}},
    {"seedmax_first16", UINT64_C(0xFFFFFFFFFFFFFFFF), 0u, 1, {16, 0, 0, 0}},
    {"seed0123456789abcdef_first16", UINT64_C(0x0123456789ABCDEF), 0u, 1, {16, 0, 0, 0}},
    {"seed0_stream1_first16", UINT64_C(0), 1u, 1, {16, 0, 0, 0}},
    {"seed42_shape3x5", UINT64_C(42), 0u, 2, {3, 5, 0, 0}},
    {"seedmax_streammax_shape7", UINT64_C(0xFFFFFFFFFFFFFFFF), 0xFFFFFFFFu, 1, {7, 0, 0, 0}},
    {"seed0_1x4x64x64", UINT64_C(0), 0u, 4, {1, 4, 64, 64}},
    {"seed42_1x4x64x64", UINT64_C(42), 0u, 4, {1, 4, 64, 64}},
    {"seed0_1x4x128x128", UINT64_C(0), 0u, 4, {1, 4, 128, 128}},
    {"seed42_1x4x128x128", UINT64_C(42), 0u, 4, {1, 4, 128, 128}},
};

#define LISTED_VALUES_MAX 64
#define CHUNK 3 /* small cases are drawn in chunks of 3 elements to exercise dln1_normal_range */

static uint32_t float_bits(float v) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    return bits;
}

static uint64_t double_bits(double v) {
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    return bits;
}

/* Hash `width` low bytes of `bits`, least significant first (little-endian, whatever the host order). */
static void sha256_update_le(sha256_ctx *ctx, uint64_t bits, int width) {
    unsigned char le[8];
    int i;
    for (i = 0; i < width; ++i) le[i] = (unsigned char)(bits >> (8 * i));
    sha256_update(ctx, le, (size_t)width);
}

static void print_words(const uint32_t *words, int n) {
    int i;
    printf("[");
    for (i = 0; i < n; ++i) printf("%s\"%08" PRIx32 "\"", i ? ", " : "", words[i]);
    printf("]");
}

static int sha256_selftest(void) {
    sha256_ctx ctx;
    char hex[65];
    sha256_init(&ctx);
    sha256_update(&ctx, (const unsigned char *)"abc", 3);
    sha256_final_hex(&ctx, hex);
    return strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0;
}

int main(void) {
    size_t c;
    int i;
    if (!sha256_selftest()) {
        fprintf(stderr, "dln1_vectors: SHA-256 self-test failed\n");
        return 1;
    }
    printf("{\n  \"spec_version\": \"%s\",\n", DLN1_SPEC_VERSION);
    printf("  \"generated_by\": \"ports/dln1/c (dln1_vectors.c)\",\n");
    printf("  \"philox4x32_10_kat\": [\n");
    for (c = 0; c < sizeof KATS / sizeof KATS[0]; ++c) {
        uint32_t out[4];
        dln1_philox4x32_10(KATS[c].counter, KATS[c].key, out);
        printf("    {\"name\": \"%s\", \"counter\": ", KATS[c].name);
        print_words(KATS[c].counter, 4);
        printf(", \"key\": ");
        print_words(KATS[c].key, 2);
        printf(", \"output\": ");
        print_words(out, 4);
        printf("}%s\n", c + 1 < sizeof KATS / sizeof KATS[0] ? "," : "");
    }
    printf("  ],\n  \"normal\": [\n");
    for (c = 0; c < sizeof CASES / sizeof CASES[0]; ++c) {
        const normal_case *nc = &CASES[c];
        size_t n = 1, done, k;
        float *values;
        double *wide;
        sha256_ctx ctx32, ctx64;
        char hex32[65], hex64[65];
        for (i = 0; i < nc->ndim; ++i) n *= nc->shape[i];
        values = (float *)malloc(n * sizeof *values);
        wide = (double *)malloc(n * sizeof *wide);
        if (values == NULL || wide == NULL) {
            fprintf(stderr, "dln1_vectors: out of memory\n");
            return 1;
        }
        if (n <= LISTED_VALUES_MAX) {
            for (done = 0; done < n; done += CHUNK) {
                size_t len = n - done < CHUNK ? n - done : CHUNK;
                dln1_normal_range(nc->seed, nc->stream, (uint64_t)done, values + done, len);
                dln1_normal_f64_range(nc->seed, nc->stream, (uint64_t)done, wide + done, len);
            }
        } else {
            dln1_normal(nc->seed, nc->stream, values, n);
            dln1_normal_f64_range(nc->seed, nc->stream, 0, wide, n);
        }
        sha256_init(&ctx32);
        sha256_init(&ctx64);
        for (k = 0; k < n; ++k) {
            sha256_update_le(&ctx32, float_bits(values[k]), 4);
            sha256_update_le(&ctx64, double_bits(wide[k]), 8);
        }
        sha256_final_hex(&ctx32, hex32);
        sha256_final_hex(&ctx64, hex64);
        printf("    {\"name\": \"%s\", \"seed\": \"%" PRIu64 "\", \"stream\": %" PRIu32 ", \"shape\": [", nc->name,
               nc->seed, nc->stream);
        for (i = 0; i < nc->ndim; ++i) printf("%s%lu", i ? ", " : "", (unsigned long)nc->shape[i]);
        printf("]");
        if (n <= LISTED_VALUES_MAX) {
            printf(", \"float32_hex\": [");
            for (k = 0; k < n; ++k) printf("%s\"%08" PRIx32 "\"", k ? ", " : "", float_bits(values[k]));
            printf("], \"float64_hex\": [");
            for (k = 0; k < n; ++k) printf("%s\"%016" PRIx64 "\"", k ? ", " : "", double_bits(wide[k]));
            printf("]");
        }
        printf(", \"sha256\": \"%s\", \"sha256_float64\": \"%s\"}%s\n", hex32, hex64,
               c + 1 < sizeof CASES / sizeof CASES[0] ? "," : "");
        free(values);
        free(wide);
    }
    printf("  ]\n}\n");
    return 0;
}
