package com.dreamlite.noise;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Locale;

/**
 * Prints the DLN-1 candidate vector file (JSON, the golden file's format) computed by {@link Dln1}.
 *
 * <pre>
 *   javac -d out com/dreamlite/noise/Dln1.java com/dreamlite/noise/Dln1Vectors.java
 *   java -cp out com.dreamlite.noise.Dln1Vectors &gt; my_port_output.json
 *   dreamlite parity vectors --file my_port_output.json
 * </pre>
 */
public final class Dln1Vectors {
    private static final int LISTED_VALUES_MAX = 64;
    private static final int CHUNK = 3; // small cases are drawn in chunks of 3 to exercise the range API

    private static final String[] KAT_NAMES = {"zeros", "ones", "pi"};
    private static final int[][] KAT_COUNTERS = {
        {0, 0, 0, 0},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
    };
    private static final int[][] KAT_KEYS = {{0, 0}, {0xffffffff, 0xffffffff}, {0xa4093822, 0x299f31d0}};

    /** One normal case: name, seed (uint64 bit pattern), stream (uint32 bit pattern), shape. */
    private static final class Case {
        final String name;
        final long seed;
        final int stream;
        final int[] shape;

        Case(String name, long seed, int stream, int... shape) {
            this.name = name;
            this.seed = seed;
            this.stream = stream;
            this.shape = shape;
        }
    }

    private static final Case[] CASES = {
        new Case("seed0_first16", 0L, 0, 16),
        new Case("seed1_first16", 1L, 0, 16),
        new Case("seed42_first16", 42L, 0, 16),
        new Case("seedmax_first16", -1L, 0, 16),
        new Case("seed0123456789abcdef_first16", 0x0123456789ABCDEFL, 0, 16),
        new Case("seed0_stream1_first16", 0L, 1, 16),
        new Case("seed42_shape3x5", 42L, 0, 3, 5),
        new Case("seedmax_streammax_shape7", -1L, 0xFFFFFFFF, 7),
        new Case("seed0_1x4x64x64", 0L, 0, 1, 4, 64, 64),
        new Case("seed42_1x4x64x64", 42L, 0, 1, 4, 64, 64),
        new Case("seed0_1x4x128x128", 0L, 0, 1, 4, 128, 128),
        new Case("seed42_1x4x128x128", 42L, 0, 1, 4, 128, 128),
    };

    private Dln1Vectors() {}

    private static String words(int[] w) {
        StringBuilder sb = new StringBuilder("[");
        for (int i = 0; i < w.length; i++) {
            sb.append(i > 0 ? ", " : "").append('"').append(String.format(Locale.ROOT, "%08x", w[i])).append('"');
        }
        return sb.append(']').toString();
    }

    private static String hex(byte[] digest) {
        StringBuilder sb = new StringBuilder();
        for (byte b : digest) {
            sb.append(String.format(Locale.ROOT, "%02x", b & 0xFF));
        }
        return sb.toString();
    }

    public static void main(String[] args) throws NoSuchAlgorithmException {
        StringBuilder out = new StringBuilder();
        out.append("{\n  \"spec_version\": \"").append(Dln1.SPEC_VERSION).append("\",\n");
        out.append("  \"generated_by\": \"ports/dln1/java (com.dreamlite.noise.Dln1Vectors)\",\n");
        out.append("  \"philox4x32_10_kat\": [\n");
        for (int c = 0; c < KAT_NAMES.length; c++) {
            int[] result = Dln1.philox4x32_10(KAT_COUNTERS[c], KAT_KEYS[c]);
            out.append("    {\"name\": \"").append(KAT_NAMES[c]).append("\", \"counter\": ")
                    .append(words(KAT_COUNTERS[c])).append(", \"key\": ").append(words(KAT_KEYS[c]))
                    .append(", \"output\": ").append(words(result)).append('}')
                    .append(c + 1 < KAT_NAMES.length ? ",\n" : "\n");
        }
        out.append("  ],\n  \"normal\": [\n");
        for (int c = 0; c < CASES.length; c++) {
            Case nc = CASES[c];
            int n = 1;
            StringBuilder shape = new StringBuilder("[");
            for (int i = 0; i < nc.shape.length; i++) {
                n *= nc.shape[i];
                shape.append(i > 0 ? ", " : "").append(nc.shape[i]);
            }
            shape.append(']');
            float[] values = new float[n];
            double[] wide = new double[n];
            if (n <= LISTED_VALUES_MAX) {
                for (int done = 0; done < n; done += CHUNK) {
                    int len = Math.min(CHUNK, n - done);
                    Dln1.normal(nc.seed, nc.stream, done, values, done, len);
                    Dln1.normalDouble(nc.seed, nc.stream, done, wide, done, len);
                }
            } else {
                values = Dln1.normal(nc.seed, nc.stream, n);
                Dln1.normalDouble(nc.seed, nc.stream, 0L, wide, 0, n);
            }
            ByteBuffer le32 = ByteBuffer.allocate(4 * n).order(ByteOrder.LITTLE_ENDIAN);
            ByteBuffer le64 = ByteBuffer.allocate(8 * n).order(ByteOrder.LITTLE_ENDIAN);
            for (int k = 0; k < n; k++) {
                le32.putInt(Float.floatToRawIntBits(values[k]));
                le64.putLong(Double.doubleToRawLongBits(wide[k]));
            }
            String sha32 = hex(MessageDigest.getInstance("SHA-256").digest(le32.array()));
            String sha64 = hex(MessageDigest.getInstance("SHA-256").digest(le64.array()));
            out.append("    {\"name\": \"").append(nc.name).append("\", \"seed\": \"")
                    .append(Long.toUnsignedString(nc.seed)).append("\", \"stream\": ")
                    .append(Integer.toUnsignedString(nc.stream)).append(", \"shape\": ").append(shape);
            if (n <= LISTED_VALUES_MAX) {
                out.append(", \"float32_hex\": [");
                for (int k = 0; k < n; k++) {
                    out.append(k > 0 ? ", " : "").append('"')
                            .append(String.format(Locale.ROOT, "%08x", Float.floatToRawIntBits(values[k]))).append('"');
                }
                out.append("], \"float64_hex\": [");
                for (int k = 0; k < n; k++) {
                    out.append(k > 0 ? ", " : "").append('"')
                            .append(String.format(Locale.ROOT, "%016x", Double.doubleToRawLongBits(wide[k]))).append('"');
                }
                out.append(']');
            }
            out.append(", \"sha256\": \"").append(sha32).append("\", \"sha256_float64\": \"").append(sha64)
                    .append("\"}").append(c + 1 < CASES.length ? ",\n" : "\n");
        }
        out.append("  ]\n}\n");
        System.out.print(out);
    }
}
