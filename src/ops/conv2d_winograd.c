/* Winograd F(2x2, 3x3) convolution: 3x3 kernel, stride 1, padding 1, NCHW.
 *
 * Each 2x2 block of outputs ("tile") is computed from the 4x4 input patch around it as
 *   Y = A^T [ sum_c (G g_oc G^T) .* (B^T d_c B) ] A
 * so the 16 positions of the transformed tile are 16 independent GEMMs over the channels,
 *   M_k[OC, tiles] = U_k[OC, IC] @ V_k[IC, tiles],   k = 0..15,
 * with U = G g G^T (the kernel transform, once per call) and V = B^T d B (the input transform).
 * That is 16 multiplies per tile and channel pair instead of 36: 2.25x fewer than im2col.
 * The transforms only add and halve (exact in binary), so fp32 results differ from im2col by
 * rounding only.
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
    return s->KH == 3 && s->KW == 3 && s->stride == 1 && s->pad[0] == 1 && s->pad[1] == 1 && s->pad[2] == 1 &&
           s->pad[3] == 1;
}

/* U[k, row, col] = (G g G^T)[k] for the 3x3 kernel g of (row, col), k = 4 i + j, where
 * G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1].
 * Not flipped: rows = output channels o, cols = input channels c, g = w[o, c].
 * flipped (the input gradient): rows = c, cols = o, g = w[o, c] rotated by 180 degrees.
 * w is fp32 or bf16 (wh), row o holding IC * 9 values; round_in rounds fp32 w to bf16 first. */
static void kernel_transform(float *U, const float *w, const uint16_t *wh, int OC, int IC, int flipped,
                             int round_in) {
    const size_t plane = (size_t)OC * IC;
#pragma omp parallel for schedule(static) if (plane * 16 > 65536)
    for (int o = 0; o < OC; o++)
        for (int c = 0; c < IC; c++) {
            const size_t base = ((size_t)o * IC + c) * 9;
            float g[9];
            for (int k = 0; k < 9; k++) {
                const size_t src = base + (flipped ? 8 - k : k);
                g[k] = wh ? sd_bf16_to_f32(wh[src]) : round_in ? sd_bf16_to_f32(sd_f32_to_bf16(w[src])) : w[src];
            }
            float t[4][3];   /* G g */
            for (int q = 0; q < 3; q++) {
                const float a = g[q], b = g[3 + q], d = g[6 + q];
                t[0][q] = a;
                t[1][q] = 0.5f * (a + b + d);
                t[2][q] = 0.5f * (a - b + d);
                t[3][q] = d;
            }
            const size_t at = flipped ? (size_t)c * OC + o : (size_t)o * IC + c;
            for (int i = 0; i < 4; i++) {   /* (G g) G^T */
                const float a = t[i][0], b = t[i][1], d = t[i][2];
                U[(4 * i + 0) * plane + at] = a;
                U[(4 * i + 1) * plane + at] = 0.5f * (a + b + d);
                U[(4 * i + 2) * plane + at] = 0.5f * (a - b + d);
                U[(4 * i + 3) * plane + at] = d;
            }
        }
}

/* V[k, c, j] = (B^T d B)[k] for tile t0 + j of channel c, d the 4x4 input patch (zero outside
 * the image), B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. ldv = block width. */
static void input_transform(float *V, const float *x, int C, int H, int W, int TW, long TT, long t0, int nt,
                            int ldv) {
    const size_t plane = (size_t)C * ldv;
#pragma omp parallel for schedule(static) if ((long)C * nt * 16 > 65536)
    for (int c = 0; c < C; c++)
        for (int j = 0; j < nt; j++) {
            const long t = t0 + j, b = t / TT, tile = t % TT;
            const int y0 = (int)(tile / TW) * 2 - 1, x0 = (int)(tile % TW) * 2 - 1;
            const float *img = x + ((size_t)b * C + c) * H * W;
            float d[4][4];
            if (y0 >= 0 && x0 >= 0 && y0 + 4 <= H && x0 + 4 <= W) {
                for (int r = 0; r < 4; r++)
                    for (int q = 0; q < 4; q++) d[r][q] = img[(size_t)(y0 + r) * W + x0 + q];
            } else {
                for (int r = 0; r < 4; r++)
                    for (int q = 0; q < 4; q++) {
                        const int iy = y0 + r, ix = x0 + q;
                        d[r][q] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? img[(size_t)iy * W + ix] : 0.0f;
                    }
            }
            float e[4][4];   /* B^T d */
            for (int q = 0; q < 4; q++) {
                e[0][q] = d[0][q] - d[2][q];
                e[1][q] = d[1][q] + d[2][q];
                e[2][q] = d[2][q] - d[1][q];
                e[3][q] = d[1][q] - d[3][q];
            }
            float *v = V + (size_t)c * ldv + j;
            for (int r = 0; r < 4; r++) {   /* (B^T d) B */
                v[(4 * r + 0) * plane] = e[r][0] - e[r][2];
                v[(4 * r + 1) * plane] = e[r][1] + e[r][2];
                v[(4 * r + 2) * plane] = e[r][2] - e[r][1];
                v[(4 * r + 3) * plane] = e[r][1] - e[r][3];
            }
        }
}

/* out[b, o, 2 ty + i, 2 tx + q] (+)= (A^T m A)[i, q] (+ bias[o]) for each tile of the block,
 * m[k] = M[k, o, j], A^T = [1 1 1 0; 0 1 -1 -1]; edge tiles of odd sizes write what fits. */
static void output_transform(float *out, const float *M, const float *bias, int accumulate, int OC, int H, int W,
                             int TW, long TT, long t0, int nt, int ldm) {
    const size_t plane = (size_t)OC * ldm;
#pragma omp parallel for schedule(static) if ((long)OC * nt * 16 > 65536)
    for (int o = 0; o < OC; o++) {
        const float bo = bias ? bias[o] : 0.0f;
        for (int j = 0; j < nt; j++) {
            const long t = t0 + j, b = t / TT, tile = t % TT;
            const int y0 = (int)(tile / TW) * 2, x0 = (int)(tile % TW) * 2;
            const float *m = M + (size_t)o * ldm + j;
            float s[2][4];   /* A^T m */
            for (int q = 0; q < 4; q++) {
                const float m0 = m[q * plane], m1 = m[(4 + q) * plane], m2 = m[(8 + q) * plane],
                            m3 = m[(12 + q) * plane];
                s[0][q] = m0 + m1 + m2;
                s[1][q] = m1 - m2 - m3;
            }
            float *img = out + ((size_t)b * OC + o) * H * W;
            for (int i = 0; i < 2 && y0 + i < H; i++) {
                const float y[2] = {s[i][0] + s[i][1] + s[i][2], s[i][1] - s[i][2] - s[i][3]};
                float *row = img + (size_t)(y0 + i) * W + x0;
                for (int q = 0; q < 2 && x0 + q < W; q++) row[q] = (accumulate ? row[q] : 0.0f) + y[q] + bo;
            }
        }
    }
}

/* Tiles per block: the transformed input and output of a block ([16, C, block] each) take at
 * most about 4 MB, a multiple of 16 columns (the GEMM's tile width), at least 32. */
static int block_tiles(int IC, int OC, long tiles) {
    const int C = IC > OC ? IC : OC;
    long nt = (1L << 20) / (16L * C) / 16 * 16;
    if (nt < 32) nt = 32;
    return (int)(tiles < nt ? tiles : nt);
}

/* out[B, OC, H, W] (+)= conv3x3(x[B, IC, H, W]) with the transformed kernel U / Uh [16, OC, IC]
 * (exactly one given; Uh takes the bf16 kernel). */
static void winograd_run(float *out, const float *x, const float *U, const uint16_t *Uh, const float *bias,
                         int accumulate, int B, int IC, int OC, int H, int W) {
    const int TW = (W + 1) / 2;
    const long TT = (long)((H + 1) / 2) * TW, tiles = (long)B * TT;
    const int nt = block_tiles(IC, OC, tiles);
    const size_t uplane = (size_t)OC * IC;
    scratch_mark_t mark = scratch_mark();
    float *V = scratch_floats((size_t)16 * IC * nt);
    float *M = scratch_floats((size_t)16 * OC * nt);
    for (long t0 = 0; t0 < tiles; t0 += nt) {
        const int n = (int)(tiles - t0 < nt ? tiles - t0 : nt);
        input_transform(V, x, IC, H, W, TW, TT, t0, n, nt);
        for (int k = 0; k < 16; k++) {
            const float *Vk = V + (size_t)k * IC * nt;
            float *Mk = M + (size_t)k * OC * nt;
            if (Uh)
                gemm_bf16h(CblasNoTrans, CblasNoTrans, OC, n, IC, 1.0f, NULL, Uh + k * uplane, IC, Vk, NULL, nt,
                           0.0f, Mk, nt);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, OC, n, IC, 1.0f, U + k * uplane, IC, Vk, nt,
                            0.0f, Mk, nt);
        }
        output_transform(out, M, bias, accumulate, OC, H, W, TW, TT, t0, n, nt);
    }
    scratch_release(mark);
}

/* The conv of kernel w / wh [OC, IC*9] as rows x cols = OC x IC (flipped: IC x OC, the
 * transposed conv): transforms the kernel and runs it. The bf16 GEMM is taken for bf16-stored
 * weights, and in bf16 compute where the im2col product [rows, B*H*W, cols*9] would take it.
 * fp32 weights are then rounded to bf16 before the transform as well as after, so that they
 * give the bits of the same weights stored in bf16 (spectral factors stored once, or rounded
 * per call). */
static void winograd_conv(float *out, const float *x, const float *w, const uint16_t *wh, const float *bias,
                          int accumulate, int flipped, const conv2d_shape_t *s) {
    const int rows = flipped ? s->IC : s->OC, cols = flipped ? s->OC : s->IC;
    const size_t n = (size_t)16 * rows * cols;
    const int bf16 = wh || sd_gemm_uses_bf16(rows, s->B * s->H * s->W, cols * 9);
    scratch_mark_t mark = scratch_mark();
    float *U = scratch_floats(n);
    kernel_transform(U, w, wh, s->OC, s->IC, flipped, bf16);
    uint16_t *Uh = NULL;
    if (bf16) {   /* rounded once here rather than packed from fp32 by each block's GEMMs */
        Uh = (uint16_t *)scratch_floats((n + 1) / 2);
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) Uh[i] = sd_f32_to_bf16(U[i]);
    }
    winograd_run(out, x, bf16 ? NULL : U, Uh, bias, accumulate, s->B, cols, rows, s->H, s->W);
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

int conv2d_winograd_pays(const conv2d_shape_t *s) {
    if (g_mode == CONV_WINOGRAD_OFF || !conv2d_winograd_fits(s)) return 0;
    if (g_mode == CONV_WINOGRAD_ALWAYS) return 1;
    return s->IC >= 16 && s->OC >= 16;
}
