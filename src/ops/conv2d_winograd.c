/* Winograd F(2x2, 3x3) convolution: 3x3 kernel, stride 1, padding 0 to 2 on each side (1 for
 * SD's convs; the VAE's bands of rows pad 0 at their inner edges), NCHW.
 *
 * Each 2x2 block of outputs ("tile") is computed from the 4x4 input patch around it as
 *   Y = A^T [ sum_c (G g_oc G^T) .* (B^T d_c B) ] A
 * so the 16 positions of the transformed tile are 16 independent GEMMs over the channels,
 *   M_k[OC, tiles] = U_k[OC, IC] @ V_k[IC, tiles],   k = 0..15,
 * with U = G g G^T (the kernel transform, once per call) and V = B^T d B (the input transform).
 * That is 16 multiplies per tile and channel pair instead of 36: 2.25x fewer than im2col.
 * The transforms only add, subtract and halve, so fp32 results differ from im2col by rounding
 * only (bench/conv.c: 2e-7 to 9e-7 of the largest output on the SD 1.5 UNet and VAE shapes).
 *
 * Tiles of all images of the batch are numbered together (t = b * tiles_per_image + tile) and
 * processed in blocks, so the transformed buffers [16, C, block] stay bounded whatever the image
 * size, and small images still give the GEMMs a wide N. The GEMMs are the threaded ones
 * (cblas_sgemm, the own bf16 kernel); the transforms are parallel over channels. Every output
 * value is formed by the same operations in the same order whatever the thread count of the
 * transforms, so the bytes depend only on the inputs and the GEMMs' own determinism. */
#include <cblas.h>
#include <string.h>

#include "base/scratch.h"
#include "ops/gemm.h"
#include "ops/ops.h"

int conv2d_winograd_fits(const conv2d_shape_t *s) {
    if (s->KH != 3 || s->KW != 3 || s->stride != 1) return 0;
    for (int i = 0; i < 4; i++)
        if (s->pad[i] < 0 || s->pad[i] > 2) return 0;
    return conv2d_out_h(s) > 0 && conv2d_out_w(s) > 0;
}

/* U[k, row, col] = (G g G^T)[k] for the 3x3 kernel g of (row, col), k = 4 i + j, where
 * G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1].
 * Not flipped: rows = output channels o, cols = input channels c, g = w[o, c].
 * flipped (the input gradient): rows = c, cols = o, g = w[o, c] rotated by 180 degrees.
 * w is fp32 or bf16 (wh), row o holding IC * 9 values; round_in rounds fp32 w to bf16 first.
 * Only rows r0 .. r1-1, into U (fp32) or Uh (bf16) [16, r1 - r0, cols]. */
static void kernel_transform(float *U, uint16_t *Uh, const float *w, const uint16_t *wh, int OC, int IC, int flipped,
                             int round_in, int r0, int r1) {
    const int cols = flipped ? OC : IC;
    const size_t plane = (size_t)(r1 - r0) * cols;
    /* One row of U at a time: its kernels gathered into g[9][cols] first, so that the
     * transform runs along contiguous memory in both g and U. */
#pragma omp parallel if (plane * 16 > 65536)
    {
        scratch_mark_t mark = scratch_mark();
        float *g = scratch_floats((size_t)9 * cols), *t = scratch_floats((size_t)6 * cols);
        float *u = scratch_floats((size_t)4 * cols);
#pragma omp for schedule(static)
        for (int row = r0; row < r1; row++) {
            for (int col = 0; col < cols; col++) {
                const int o = flipped ? col : row, c = flipped ? row : col;
                const size_t base = ((size_t)o * IC + c) * 9;
                for (int k = 0; k < 9; k++) {
                    const size_t src = base + (flipped ? 8 - k : k);
                    g[(size_t)k * cols + col] = wh ? sd_bf16_to_f32(wh[src])
                                                   : round_in ? sd_bf16_to_f32(sd_f32_to_bf16(w[src])) : w[src];
                }
            }
            /* rows 1 and 2 of G g into t[0..2] and t[3..5]; rows 0 and 3 are rows 0 and 2 of g */
            for (int q = 0; q < 3; q++) {
                const float *a = g + (size_t)q * cols, *b = g + (size_t)(3 + q) * cols, *d = g + (size_t)(6 + q) * cols;
                float *t1 = t + (size_t)q * cols, *t2 = t + (size_t)(3 + q) * cols;
                for (int col = 0; col < cols; col++) {
                    t1[col] = 0.5f * (a[col] + b[col] + d[col]);
                    t2[col] = 0.5f * (a[col] - b[col] + d[col]);
                }
            }
            for (int i = 0; i < 4; i++) {   /* (G g) G^T */
                const float *ti = i == 0 ? g : i == 1 ? t : i == 2 ? t + (size_t)3 * cols : g + (size_t)6 * cols;
                const float *a = ti, *b = ti + cols, *d = ti + (size_t)2 * cols;
                const size_t at = (size_t)(row - r0) * cols;
                float *u0 = Uh ? u : U + (4 * i + 0) * plane + at, *u1 = Uh ? u + cols : U + (4 * i + 1) * plane + at;
                float *u2 = Uh ? u + 2 * cols : U + (4 * i + 2) * plane + at;
                float *u3 = Uh ? u + 3 * cols : U + (4 * i + 3) * plane + at;
                for (int col = 0; col < cols; col++) {
                    u0[col] = a[col];
                    u1[col] = 0.5f * (a[col] + b[col] + d[col]);
                    u2[col] = 0.5f * (a[col] - b[col] + d[col]);
                    u3[col] = d[col];
                }
                if (Uh)   /* rounded once here rather than packed from fp32 by each block's GEMMs */
                    for (int j = 0; j < 4; j++)
                        for (int col = 0; col < cols; col++)
                            Uh[(4 * i + j) * plane + at + col] = sd_f32_to_bf16(u[(size_t)j * cols + col]);
            }
        }
        scratch_release(mark);
    }
}

/* V[k, c, j] = (B^T d B)[k] for tile t0 + j of channel c, d the 4x4 input patch at rows
 * 2 ty - pt .., columns 2 tx - pl .. (zero outside the image x[C, H, W]),
 * B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. ldv = block width.
 * Done a row of tiles at a time so that every loop runs along contiguous memory: B^T d over
 * the 4 input rows of the tile row (zero-padded to x = -pl .. 2 TW + 1 - pl), split into the
 * even and odd padded columns (tile tx starts at padded column 2 tx), then the row transform,
 * whose results for consecutive tiles are consecutive in V. */
static void input_transform(float *V, const float *x, int C, int H, int W, int pt, int pl, int TW, int TH, long t0,
                            int nt, int ldv) {
    const size_t plane = (size_t)C * ldv;
    const int PW = 2 * TW + 2;   /* padded row */
    const int ncopy = W < PW - pl ? W : PW - pl;
#pragma omp parallel if ((long)C * nt * 16 > 65536)
    {
        scratch_mark_t mark = scratch_mark();
        float *d = scratch_floats((size_t)4 * PW), *e = scratch_floats((size_t)PW);
        float *ev = scratch_floats((size_t)4 * (TW + 1)), *od = scratch_floats((size_t)4 * (TW + 1));
#pragma omp for schedule(static)
        for (int c = 0; c < C; c++)
            for (long t = t0; t < t0 + nt;) {
                const long row = t / TW;   /* b * TH + ty */
                const int b = (int)(row / TH), ty = (int)(row % TH), lo = (int)(t % TW);
                const int hi = (int)(t0 + nt - row * TW < TW ? t0 + nt - row * TW : TW);
                const float *img = x + ((size_t)b * C + c) * H * W;
                for (int r = 0; r < 4; r++) {
                    const int iy = 2 * ty - pt + r;
                    float *dr = d + (size_t)r * PW;
                    memset(dr, 0, sizeof(float) * PW);
                    if (iy >= 0 && iy < H) memcpy(dr + pl, img + (size_t)iy * W, sizeof(float) * ncopy);
                }
                const float *d0 = d, *d1 = d + PW, *d2 = d + 2 * PW, *d3 = d + 3 * PW;
                for (int r = 0; r < 4; r++) {   /* row r of B^T d, split even / odd */
                    for (int p = 0; p < PW; p++)
                        e[p] = r == 0 ? d0[p] - d2[p] : r == 1 ? d1[p] + d2[p] : r == 2 ? d2[p] - d1[p] : d1[p] - d3[p];
                    float *E = ev + (size_t)r * (TW + 1), *O = od + (size_t)r * (TW + 1);
                    for (int k = 0; k <= TW; k++) E[k] = e[2 * k], O[k] = e[2 * k + 1];
                }
                float *v = V + (size_t)c * ldv + (t - t0) - lo;
                for (int r = 0; r < 4; r++) {   /* (B^T d) B for the tiles lo .. hi-1 of the row */
                    const float *E = ev + (size_t)r * (TW + 1), *O = od + (size_t)r * (TW + 1);
                    float *v0 = v + (4 * r + 0) * plane, *v1 = v + (4 * r + 1) * plane;
                    float *v2 = v + (4 * r + 2) * plane, *v3 = v + (4 * r + 3) * plane;
                    for (int tx = lo; tx < hi; tx++) {
                        v0[tx] = E[tx] - E[tx + 1];
                        v1[tx] = O[tx] + E[tx + 1];
                        v2[tx] = E[tx + 1] - O[tx];
                        v3[tx] = O[tx] - O[tx + 1];
                    }
                }
                t += hi - lo;
            }
        scratch_release(mark);
    }
}

/* out[b, o, 2 ty + i, 2 tx + q] (+)= (A^T m A)[i, q] (+ bias[o]) for each tile of the block,
 * m[k] = M[k, o, j], A^T = [1 1 1 0; 0 1 -1 -1]; edge tiles of odd sizes write what fits.
 * A row of tiles at a time, as the input transform. */
static void output_transform(float *out, const float *M, const float *bias, int accumulate, int OC, int H, int W,
                             int TW, int TH, long t0, int nt, int ldm) {
    const size_t plane = (size_t)OC * ldm;
#pragma omp parallel if ((long)OC * nt * 16 > 65536)
    {
        scratch_mark_t mark = scratch_mark();
        float *y = scratch_floats((size_t)2 * TW + 2);   /* one output row, both columns of each tile */
#pragma omp for schedule(static)
        for (int o = 0; o < OC; o++) {
            const float bo = bias ? bias[o] : 0.0f;
            for (long t = t0; t < t0 + nt;) {
                const long row = t / TW;
                const int b = (int)(row / TH), ty = (int)(row % TH), lo = (int)(t % TW);
                const int hi = (int)(t0 + nt - row * TW < TW ? t0 + nt - row * TW : TW);
                const float *m = M + (size_t)o * ldm + (t - t0) - lo;
                float *img = out + ((size_t)b * OC + o) * H * W;
                for (int i = 0; i < 2 && 2 * ty + i < H; i++) {
                    for (int tx = lo; tx < hi; tx++) {
                        float s[4];   /* row i of A^T m */
                        for (int q = 0; q < 4; q++) {
                            const float m0 = m[q * plane + tx], m1 = m[(4 + q) * plane + tx],
                                        m2 = m[(8 + q) * plane + tx], m3 = m[(12 + q) * plane + tx];
                            s[q] = i == 0 ? m0 + m1 + m2 : m1 - m2 - m3;
                        }
                        y[2 * tx] = s[0] + s[1] + s[2];
                        y[2 * tx + 1] = s[1] - s[2] - s[3];
                    }
                    float *dst = img + (size_t)(2 * ty + i) * W;
                    const int x1 = 2 * hi < W ? 2 * hi : W;
                    if (accumulate)
                        for (int xx = 2 * lo; xx < x1; xx++) dst[xx] = dst[xx] + y[xx] + bo;
                    else
                        for (int xx = 2 * lo; xx < x1; xx++) dst[xx] = y[xx] + bo;
                }
                t += hi - lo;
            }
        }
        scratch_release(mark);
    }
}

/* Tiles per block: the transformed input and output of a block ([16, C, block] each) take at
 * most 16 MB (or 128 tiles for over 2048 channels), a multiple of 16 columns (the GEMM's tile
 * width). Measured on 320 -> 320 @ 64x64: blocks of 4 MB ran 1.6x faster than im2col, of
 * 16 MB 1.8x, of 64 MB 1.9x (one thread); wider blocks read the transformed kernel fewer times
 * and make the GEMMs' packing cheaper per flop. */
static int block_tiles(int IC, int OC, long tiles) {
    const int C = IC > OC ? IC : OC;
    long nt = (1L << 22) / (16L * C) / 16 * 16;
    if (nt < 128) nt = 128;
    return (int)(tiles < nt ? tiles : nt);
}

/* The conv of kernel w / wh [OC, IC*9] as rows x cols = OC x IC (flipped: IC x OC, the
 * transposed conv): out[B, rows, H, W] (+)= conv3x3(x[B, cols, H, W]).
 * The bf16 GEMM is taken for bf16-stored weights, and in bf16 compute where the im2col product
 * [rows, B*H*W, cols*9] would take it. fp32 weights are then rounded to bf16 before the
 * transform as well as after, so that they give the bits of the same weights stored in bf16
 * (spectral factors stored once, or rounded per call).
 * The transformed kernel [16, rows, cols] is 16/9 the size of the kernel (210 MB in fp32 for
 * 2560 -> 1280 channels): when all the tiles fit one block (small images, where the big
 * channel counts are) it is made and used in chunks of rows of at most 32 MB instead. */
static void winograd_conv(float *out, const float *x, const float *w, const uint16_t *wh, const float *bias,
                          int accumulate, int flipped, const conv2d_shape_t *s) {
    const int rows = flipped ? s->IC : s->OC, cols = flipped ? s->OC : s->IC;
    /* input x[B, cols, IH, IW] padded by (pt, pl) top and left -> out[B, rows, OH, OW]; the
     * transposed conv pads by 2 - pad (its input is the output of the forward one) */
    const int OHf = conv2d_out_h(s), OWf = conv2d_out_w(s);
    const int IH = flipped ? OHf : s->H, IW = flipped ? OWf : s->W, OH = flipped ? s->H : OHf,
              OW = flipped ? s->W : OWf;
    const int pt = flipped ? 2 - s->pad[0] : s->pad[0], pl = flipped ? 2 - s->pad[2] : s->pad[2];
    const int bf16 = wh || sd_gemm_uses_bf16(rows, s->B * OH * OW, cols * 9);
    const int TW = (OW + 1) / 2, TH = (OH + 1) / 2;
    const long tiles = (long)s->B * TH * TW;
    const int nt = block_tiles(cols, rows, tiles);
    const size_t esz = bf16 ? sizeof(uint16_t) : sizeof(float);
    int R = rows;
    if (tiles <= nt) {
        const long fit = (32L << 20) / (16L * cols * (long)esz) / 16 * 16;
        R = fit < 16 ? 16 : fit < rows ? (int)fit : rows;
    }
    scratch_mark_t mark = scratch_mark();
    float *ubuf = scratch_floats(((size_t)16 * R * cols * esz + 3) / 4);
    float *U = bf16 ? NULL : ubuf;
    uint16_t *Uh = bf16 ? (uint16_t *)ubuf : NULL;
    float *V = scratch_floats((size_t)16 * cols * nt);
    float *M = scratch_floats((size_t)16 * rows * nt);
    for (long t0 = 0; t0 < tiles; t0 += nt) {
        const int n = (int)(tiles - t0 < nt ? tiles - t0 : nt);
        input_transform(V, x, cols, IH, IW, pt, pl, TW, TH, t0, n, nt);
        for (int r0 = 0; r0 < rows; r0 += R) {
            const int r1 = r0 + R < rows ? r0 + R : rows;
            const size_t uplane = (size_t)(r1 - r0) * cols;
            if (R < rows || t0 == 0)   /* chunked: one block only, so each chunk is made once */
                kernel_transform(U, Uh, w, wh, s->OC, s->IC, flipped, bf16, r0, r1);
            for (int k = 0; k < 16; k++) {   /* M_k[rows r0..r1-1] = U_k @ V_k */
                const float *Vk = V + (size_t)k * cols * nt;
                float *Mk = M + ((size_t)k * rows + r0) * nt;
                if (Uh)
                    gemm_bf16h(CblasNoTrans, CblasNoTrans, r1 - r0, n, cols, 1.0f, NULL, Uh + k * uplane, cols, Vk,
                               NULL, nt, 0.0f, Mk, nt);
                else
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, n, cols, 1.0f, U + k * uplane,
                                cols, Vk, nt, 0.0f, Mk, nt);
            }
        }
        output_transform(out, M, bias, accumulate, rows, OH, OW, TW, TH, t0, n, nt);
    }
    scratch_release(mark);
}

void conv2d_winograd_forward(float *out, const float *inp, const float *weight, const uint16_t *weight_h,
                             const float *bias, const conv2d_shape_t *s) {
    winograd_conv(out, inp, weight, weight_h, bias, 0, 0, s);
}

void conv2d_winograd_backward_input(float *dinp, const float *dout, const float *weight, const uint16_t *weight_h,
                                    const conv2d_shape_t *s) {
    winograd_conv(dinp, dout, weight, weight_h, NULL, 1, 1, s);
}

static conv_winograd_mode_t g_mode = CONV_WINOGRAD_AUTO;

void conv2d_set_winograd(conv_winograd_mode_t mode) { g_mode = mode; }

/* Measured with bench/conv.c on the SD 1.5 shapes (2-core EPYC): in fp32 Winograd is 1.5-2.2x
 * faster than im2col from 32x32 images up and at 16x16 batch 2, about even at 16x16 batch 1
 * (256 pixels: the kernel transform, 16 IC OC values, and reading it back weigh as much as the
 * saved multiplies) and 0.5x at 8x8; in bf16 1.1-1.5x from 32x32 up, about even at 16x16
 * batch 2. With 4 channels on the input side (conv_in; conv_out's input gradient) the
 * transforms of so few channels are slower than im2col's GEMM (0.1-0.3x).
 * Not in bf16 compute by default: there the transformed operands are rounded to bf16 (the
 * kernel twice), which doubles the error of a conv against fp32 (4e-3 against 2e-3) and, over
 * the steps of a sampler, tripled that of generated latents (scripts/golden-outputs.sh: 0.18
 * against 0.06 relative to fp32), for a gain of 1.1-1.5x per conv that the whole UNet forward
 * did not show (fwd64 bf16 slower in 2 of 2 rounds on a loaded machine). */
int conv2d_winograd_pays(const conv2d_shape_t *s) {
    if (g_mode == CONV_WINOGRAD_OFF || !conv2d_winograd_fits(s)) return 0;
    if (g_mode == CONV_WINOGRAD_ALWAYS) return 1;
    return sd_compute_dtype() == SD_COMPUTE_FP32 && s->IC >= 16 && s->OC >= 16 &&
           (long)s->B * s->H * s->W >= 512;
}
