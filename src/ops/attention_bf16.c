/* Attention in the bf16 compute mode: the contract of attention_forward / attention_backward
 * (attention.c: heads interleaved in the channel dim, query blocks, lse kept, P recomputed in
 * the backward), with every product on the bf16 GEMM (bf16 operands, fp32 accumulation) and the
 * softmax, lse and the dS = P * (dP - Di) step in fp32.
 * K and V (and in the backward Q and dO) are rounded to bf16 once per call, not once per query
 * block, and the probabilities and dS are written straight in bf16 by the fp32 loops that make
 * them, so the GEMMs only copy their operands into tiles (gemm_bf16h). */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/error.h"
#include "base/scratch.h"
#include "ops/attention_bf16.h"
#include "ops/fastmath.h"
#include "ops/gemm.h"

/* Query rows per block: as attention.c (a [blk, Tk] score buffer near 2 MB). */
static int query_block(int Tk) {
    int blk = (1 << 19) / (Tk > 0 ? Tk : 1);
    if (blk > 128) blk = 128;
    if (blk < 16) blk = 16;
    return blk;
}

int attention_bf16_applies(int Tq, int Tk, int D) {
    if (sd_compute_dtype() != SD_COMPUTE_BF16 || !strcmp(sd_bf16_kernel(), "none")) return 0;
    /* the score product of one query block must be big enough for the bf16 GEMM to pay off
     * (the threshold sd_gemm uses) */
    const int blk = query_block(Tk) < Tq ? query_block(Tk) : Tq;
    return sd_gemm_uses_bf16(blk, Tk, D) && sd_gemm_uses_bf16(blk, D, Tk);
}

/* dst[rows, cols] (row stride ld) = bf16 of src (same layout); the tensors are [B*T, H*D]. */
static void to_bf16(uint16_t *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static) if (n > (1u << 16))
    for (size_t i = 0; i < n; i++) dst[i] = sd_f32_to_bf16(src[i]);
}

static uint16_t *scratch_bf16(size_t n) { return (uint16_t *)scratch_floats((n + 1) / 2); }

void attention_forward_bf16(float *out, float *lse, const float *q, const float *k, const float *v,
                            int B, int Tq, int Tk, int H, int D, float scale, int causal) {
    const int HD = H * D;
    const int blk = query_block(Tk);
    const int nblocks = (Tq + blk - 1) / blk;
    const long items = (long)B * H * nblocks;
    scratch_mark_t outer = scratch_mark();
    const size_t nkv = (size_t)B * Tk * HD;
    uint16_t *kh = scratch_bf16(nkv), *vh = scratch_bf16(nkv);
    to_bf16(kh, k, nkv);
    to_bf16(vh, v, nkv);

    /* One item = (b, h, query block), as in attention.c: disjoint rows of out and lse. */
#pragma omp parallel if (items > 1)
    {
        scratch_mark_t mark = scratch_mark();
        float *s = scratch_floats((size_t)blk * Tk);
        uint16_t *ph = scratch_bf16((size_t)blk * Tk);
        float *inv = scratch_floats((size_t)blk);
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; it++) {
            const int bh = (int)(it / nblocks);
            const int b = bh / H, h = bh % H;
            const int i0 = (int)(it % nblocks) * blk;
            const int nq = Tq - i0 < blk ? Tq - i0 : blk;
            const int nk = causal ? i0 + nq : Tk;
            const size_t koff = (size_t)b * Tk * HD + (size_t)h * D;
            const float *qb = q + ((size_t)b * Tq + i0) * HD + (size_t)h * D;
            float *ob = out + ((size_t)b * Tq + i0) * HD + (size_t)h * D;
            float *lrow = lse + ((size_t)b * H + h) * Tq + i0;

            gemm_bf16h(CblasNoTrans, CblasTrans, nq, nk, D, scale, qb, NULL, HD, NULL, kh + koff, HD, 0.0f, s, nk);
            for (int r = 0; r < nq; r++) {
                const float *row = s + (size_t)r * nk;
                uint16_t *prow = ph + (size_t)r * nk;
                const int n = causal ? i0 + r + 1 : Tk;
                float mx = row[0];
#pragma omp simd reduction(max : mx)
                for (int j = 1; j < n; j++) mx = row[j] > mx ? row[j] : mx;
                double sum = 0.0;
#pragma omp simd reduction(+ : sum)
                for (int j = 0; j < n; j++) {
                    const float e = exp_approx(row[j] - mx);
                    prow[j] = sd_f32_to_bf16(e);
                    sum += e;
                }
                for (int j = n; j < nk; j++) prow[j] = 0;
                lrow[r] = mx + (float)log(sum);
                inv[r] = (float)(1.0 / sum);
            }
            gemm_bf16h(CblasNoTrans, CblasNoTrans, nq, D, nk, 1.0f, NULL, ph, nk, NULL, vh + koff, HD, 0.0f, ob, HD);
            for (int r = 0; r < nq; r++)
                for (int d = 0; d < D; d++) ob[(size_t)r * HD + d] *= inv[r];
        }
        scratch_release(mark);
    }
    scratch_release(outer);
}

void attention_backward_bf16(float *dq, float *dk, float *dv, const float *dout,
                             const float *q, const float *k, const float *v,
                             const float *out, const float *lse,
                             int B, int Tq, int Tk, int H, int D, float scale, int causal) {
    const int HD = H * D;
    const int blk = query_block(Tk);
    const int pairs = B * H;
    scratch_mark_t outer = scratch_mark();
    const size_t nkv = (size_t)B * Tk * HD, nq_all = (size_t)B * Tq * HD;
    uint16_t *kh = scratch_bf16(nkv), *vh = scratch_bf16(nkv);
    uint16_t *qh = scratch_bf16(nq_all), *doh = scratch_bf16(nq_all);
    to_bf16(kh, k, nkv);
    to_bf16(vh, v, nkv);
    to_bf16(qh, q, nq_all);
    to_bf16(doh, dout, nq_all);

    /* Parallel over (b, h) as in attention.c: each pair owns its dK / dV slice, accumulated
     * over the query blocks in a fixed order. */
#pragma omp parallel if (pairs > 1)
    {
        scratch_mark_t mark = scratch_mark();
        float *P = scratch_floats((size_t)blk * Tk);
        float *dP = scratch_floats((size_t)blk * Tk);
        uint16_t *ph = scratch_bf16((size_t)blk * Tk), *dsh = scratch_bf16((size_t)blk * Tk);
        float *Di = scratch_floats((size_t)blk);
#pragma omp for schedule(dynamic, 1)
        for (int bh = 0; bh < pairs; bh++) {
            const int b = bh / H, h = bh % H;
            const size_t qoff = (size_t)b * Tq * HD + (size_t)h * D;
            const size_t koff = (size_t)b * Tk * HD + (size_t)h * D;
            for (int i0 = 0; i0 < Tq; i0 += blk) {
                const int nq = Tq - i0 < blk ? Tq - i0 : blk;
                const int nk = causal ? i0 + nq : Tk;
                const size_t roff = qoff + (size_t)i0 * HD;
                const float *dob = dout + roff, *ob = out + roff;
                const float *lrow = lse + ((size_t)b * H + h) * Tq + i0;

                gemm_bf16h(CblasNoTrans, CblasTrans, nq, nk, D, scale, NULL, qh + roff, HD, NULL, kh + koff, HD, 0.0f,
                           P, nk);
                for (int r = 0; r < nq; r++) {
                    float *p = P + (size_t)r * nk;
                    uint16_t *prow = ph + (size_t)r * nk;
                    const int n = causal ? i0 + r + 1 : Tk;
                    const float l = lrow[r];
#pragma omp simd
                    for (int j = 0; j < n; j++) {
                        p[j] = exp_approx(p[j] - l);
                        prow[j] = sd_f32_to_bf16(p[j]);
                    }
                    for (int j = n; j < nk; j++) p[j] = 0.0f, prow[j] = 0;
                }
                if (dq || dk) {
                    gemm_bf16h(CblasNoTrans, CblasTrans, nq, nk, D, 1.0f, NULL, doh + roff, HD, NULL, vh + koff, HD,
                               0.0f, dP, nk);
                    for (int r = 0; r < nq; r++) {
                        double acc = 0.0;
                        for (int d = 0; d < D; d++) acc += (double)dob[(size_t)r * HD + d] * ob[(size_t)r * HD + d];
                        Di[r] = (float)acc;
                    }
                    for (int r = 0; r < nq; r++) {
                        const float *p = P + (size_t)r * nk, *dp = dP + (size_t)r * nk;
                        uint16_t *ds = dsh + (size_t)r * nk;
                        const float di = Di[r];
#pragma omp simd
                        for (int j = 0; j < nk; j++) ds[j] = sd_f32_to_bf16(p[j] * (dp[j] - di));
                    }
                    if (dq)
                        gemm_bf16h(CblasNoTrans, CblasNoTrans, nq, D, nk, scale, NULL, dsh, nk, NULL, kh + koff, HD,
                                   1.0f, dq + roff, HD);
                    if (dk)
                        gemm_bf16h(CblasTrans, CblasNoTrans, nk, D, nq, scale, NULL, dsh, nk, NULL, qh + roff, HD,
                                   1.0f, dk + koff, HD);
                }
                if (dv)
                    gemm_bf16h(CblasTrans, CblasNoTrans, nk, D, nq, 1.0f, NULL, ph, nk, NULL, doh + roff, HD, 1.0f,
                               dv + koff, HD);
            }
        }
        scratch_release(mark);
    }
    scratch_release(outer);
}
