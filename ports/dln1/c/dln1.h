/*
 * DLN-1: the DreamLite portable seeded Gaussian noise (C99 port).
 *
 * Spec: docs/noise-dln1.md in the dreamlite-serve repository. Golden vectors:
 * model_runtime/assets/dln1_golden.json; dln1_vectors.c prints them from this code.
 *
 * Build rules (the bits depend on them):
 *   - compile with -ffp-contract=off (clang on AArch64 fuses a*b+c into FMA otherwise);
 *   - never -ffast-math, -Ofast, -funsafe-math-optimizations or -freciprocal-math;
 *   - the target must evaluate double in double (FLT_EVAL_METHOD == 0; true on AArch64, x86-64 SSE2,
 *     ARMv7 with VFP); the code refuses to compile otherwise;
 *   - leave the floating-point rounding mode at round-to-nearest-even.
 *
 * Thread safety: every function is pure; no global state.
 */
#ifndef DLN1_H
#define DLN1_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DLN1_SPEC_VERSION "DLN-1"

/*
 * Philox4x32-10 block function (Random123): out = philox(counter, key).
 * counter[0] is the least significant word; key[0] = k0, key[1] = k1.
 */
void dln1_philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

/*
 * Elements first, first + 1, ..., first + n - 1 (row-major flat indices) of the DLN-1 noise for
 * (seed, stream), written to out[0..n-1]. Element i depends only on (seed, stream, i), so a tensor may be
 * filled in any number of chunks.
 */
void dln1_normal_range(uint64_t seed, uint32_t stream, uint64_t first, float *out, size_t n);

/* The first n elements: dln1_normal_range(seed, stream, 0, out, n). */
void dln1_normal(uint64_t seed, uint32_t stream, float *out, size_t n);

/*
 * Conformance aid: the same elements as dln1_normal_range before the final float32 cast. The golden
 * vectors list these too; a build that breaks a rule above (an FMA, excess precision) differs here in
 * the last bit of many values while its float32 output differs only in about one value in 2^28.
 */
void dln1_normal_f64_range(uint64_t seed, uint32_t stream, uint64_t first, double *out, size_t n);

#ifdef __cplusplus
}
#endif

#endif /* DLN1_H */
