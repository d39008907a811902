package com.dreamlite.noise;

/**
 * DLN-1: the DreamLite portable seeded Gaussian noise (Java port, usable from Kotlin).
 *
 * <p>Spec: {@code docs/noise-dln1.md} in the dreamlite-serve repository; golden vectors:
 * {@code model_runtime/assets/dln1_golden.json}; {@link Dln1Vectors} prints them from this code.
 *
 * <p>Unsigned words live in {@code int} (uint32 bit patterns) and {@code long} (the uint64 seed and element
 * index); they are widened with {@code & 0xFFFFFFFFL} wherever the unsigned value matters. The float layer
 * uses only plain {@code double} {@code + - * /} and {@link Math#sqrt} (correctly rounded), in the order the
 * spec gives; never {@code Math.log/sin/cos/exp/fma} or {@code StrictMath}. Java 17+ evaluates all
 * floating-point strictly; on older language levels the results are the same on ARM and x86-64 SSE2.
 *
 * <p>All methods are pure and thread-safe.
 */
public final class Dln1 {
    /** Value of {@code spec_version} in the vector files. */
    public static final String SPEC_VERSION = "DLN-1";

    private static final int PHILOX_M0 = 0xD2511F53;
    private static final int PHILOX_M1 = 0xCD9E8D57;
    private static final int PHILOX_W0 = 0x9E3779B9;
    private static final int PHILOX_W1 = 0xBB67AE85;
    private static final int PHILOX_ROUNDS = 10;
    private static final long MASK32 = 0xFFFFFFFFL;

    private static final double HALF_PI = 0x1.921fb54442d18p+0; // nearest double to pi/2
    private static final double LN2 = 0x1.62e42fefa39efp-1; // nearest double to ln 2
    private static final double SQRT_HALF = 0x1.6a09e667f3bcdp-1; // nearest double to sqrt(1/2)
    private static final double TWO_POW_M32 = 0x1p-32;
    private static final double TWO_POW_M30 = 0x1p-30;

    /** c_k = 1 / (2k + 1), k = 0..10. */
    private static final double[] LN_C = new double[11];
    /** (-1)^j * inv[2j + 1], j = 0..11. */
    private static final double[] SIN_C = new double[12];
    /** (-1)^j * inv[2j], j = 0..11. */
    private static final double[] COS_C = new double[12];

    static {
        for (int k = 0; k <= 10; k++) {
            LN_C[k] = 1.0 / (double) (2 * k + 1);
        }
        double[] inv = new double[24];
        inv[0] = 1.0;
        for (int n = 1; n <= 23; n++) {
            inv[n] = inv[n - 1] / (double) n;
        }
        for (int j = 0; j <= 11; j++) {
            SIN_C[j] = (j % 2 == 0) ? inv[2 * j + 1] : -inv[2 * j + 1];
            COS_C[j] = (j % 2 == 0) ? inv[2 * j] : -inv[2 * j];
        }
    }

    private Dln1() {}

    /**
     * Philox4x32-10 block function (Random123).
     *
     * @param counter four uint32 words, word 0 first
     * @param key (k0, k1) as uint32 words
     * @return the four output words
     */
    public static int[] philox4x32_10(int[] counter, int[] key) {
        if (counter.length != 4 || key.length != 2) {
            throw new IllegalArgumentException("counter must have 4 words and key 2 words");
        }
        int x0 = counter[0], x1 = counter[1], x2 = counter[2], x3 = counter[3];
        int k0 = key[0], k1 = key[1];
        for (int round = 0; round < PHILOX_ROUNDS; round++) {
            if (round > 0) {
                k0 += PHILOX_W0; // int addition wraps modulo 2^32
                k1 += PHILOX_W1;
            }
            long p0 = (PHILOX_M0 & MASK32) * (x0 & MASK32); // full 64-bit product (bit pattern)
            long p1 = (PHILOX_M1 & MASK32) * (x2 & MASK32);
            x0 = (int) (p1 >>> 32) ^ x1 ^ k0;
            x1 = (int) p1;
            x2 = (int) (p0 >>> 32) ^ x3 ^ k1;
            x3 = (int) p0;
        }
        return new int[] {x0, x1, x2, x3};
    }

    /** Step 4: ln u for u in (0, 1) with basic operations only. */
    private static double lnUnit(double u) {
        long bits = Double.doubleToRawLongBits(u);
        int e = (int) ((bits >>> 52) & 0x7FFL) - 1022; // u is normal: u = m * 2^e, m in [0.5, 1)
        double m = Double.longBitsToDouble((bits & 0x000FFFFFFFFFFFFFL) | 0x3FE0000000000000L);
        if (m < SQRT_HALF) {
            m = m * 2.0;
            e = e - 1;
        }
        double s = (m - 1.0) / (m + 1.0);
        double t = s * s;
        double p = LN_C[10];
        for (int k = 9; k >= 0; k--) {
            p = p * t;
            p = p + LN_C[k];
        }
        double lnM = 2.0 * (s * p);
        double eLn2 = (double) e * LN2;
        return eLn2 + lnM;
    }

    /** Steps 3-6: the two normals of the word pair (a, b), written to z[at] and z[at + 1]. */
    private static void pair(int a, int b, double[] z, int at) {
        double u = ((double) (a & MASK32) + 0.5) * TWO_POW_M32;
        double r = Math.sqrt(-2.0 * lnUnit(u));
        int q = b >>> 30;
        double f = ((double) (b & 0x3FFFFFFF) + 0.5) * TWO_POW_M30;
        double x = f * HALF_PI;
        double t = x * x;
        double sAcc = SIN_C[11];
        double cAcc = COS_C[11];
        for (int j = 10; j >= 0; j--) {
            sAcc = sAcc * t;
            sAcc = sAcc + SIN_C[j];
            cAcc = cAcc * t;
            cAcc = cAcc + COS_C[j];
        }
        double sinT = x * sAcc;
        double cosT = cAcc;
        double cRot;
        double sRot;
        switch (q) {
            case 0: cRot = cosT; sRot = sinT; break;
            case 1: cRot = -sinT; sRot = cosT; break;
            case 2: cRot = -cosT; sRot = -sinT; break;
            default: cRot = sinT; sRot = -cosT; break;
        }
        z[at] = r * cRot;
        z[at + 1] = r * sRot;
    }

    /** Steps 1-2: the four float64 values of Philox block {@code block}, in slot order. */
    private static void block(int[] key, int stream, long block, double[] z) {
        int[] words = philox4x32_10(new int[] {(int) block, (int) (block >>> 32), stream, 0}, key);
        pair(words[0], words[1], z, 0);
        pair(words[2], words[3], z, 2);
    }

    private static void fill(long seed, int stream, long first, float[] out32, double[] out64, int offset, int length) {
        int[] key = {(int) seed, (int) (seed >>> 32)};
        double[] z = new double[4];
        int done = 0;
        while (done < length) {
            long index = first + done;
            int slot = (int) (index & 3L);
            block(key, stream, index >>> 2, z);
            for (; slot < 4 && done < length; slot++, done++) {
                if (out32 != null) {
                    out32[offset + done] = (float) z[slot]; // step 7: round to nearest even
                } else {
                    out64[offset + done] = z[slot];
                }
            }
        }
    }

    /**
     * Elements {@code first .. first + length - 1} (row-major flat indices) of the DLN-1 noise.
     *
     * <p>Element i depends only on (seed, stream, i), so a tensor may be filled in any number of chunks.
     *
     * @param seed uint64 seed as its bit pattern (2^64 - 1 is {@code -1L})
     * @param stream uint32 stream as its bit pattern (0 = initial latent)
     * @param first flat index of the first element to produce
     * @param out destination
     * @param offset where in {@code out} to write the first element
     * @param length number of elements
     */
    public static void normal(long seed, int stream, long first, float[] out, int offset, int length) {
        fill(seed, stream, first, out, null, offset, length);
    }

    /**
     * The first {@code n} elements of the DLN-1 noise.
     *
     * @param seed uint64 seed as its bit pattern
     * @param stream uint32 stream as its bit pattern
     * @param n number of elements (the product of the shape)
     * @return the values, row-major
     */
    public static float[] normal(long seed, int stream, int n) {
        float[] out = new float[n];
        fill(seed, stream, 0L, out, null, 0, n);
        return out;
    }

    /**
     * Conformance aid: the same elements as {@link #normal(long, int, long, float[], int, int)} before the
     * float32 cast. A port that breaks a build rule differs here in the last bit of many values while its
     * float32 output differs only in about one value in 2^28.
     *
     * @param seed uint64 seed as its bit pattern
     * @param stream uint32 stream as its bit pattern
     * @param first flat index of the first element to produce
     * @param out destination
     * @param offset where in {@code out} to write the first element
     * @param length number of elements
     */
    public static void normalDouble(long seed, int stream, long first, double[] out, int offset, int length) {
        fill(seed, stream, first, null, out, offset, length);
    }
}
