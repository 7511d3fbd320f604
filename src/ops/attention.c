/* Multi-head scaled dot-product attention, heads interleaved in the channel dim: forward,
 * backward, probabilities. Memory-bounded: scores exist for one block of query rows at a time;
 * forward keeps only the row log-sum-exp, backward recomputes P from it (FlashAttention-style). */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cblas.h>

#include "base/error.h"
#include "base/scratch.h"
#include "ops/attention_bf16.h"
#include "ops/fastmath.h"
#include "ops/ops.h"

/* Query rows per block. A block holds [blk, Tk] scores (backward: two such buffers), so the
 * block shrinks as Tk grows to keep a buffer near 2 MB; 128 rows already give the GEMMs
 * (whose inner dimension is only D for the score products) enough work per call. */
static int query_block(int Tk) {
    int blk = (1 << 19) / (Tk > 0 ? Tk : 1);
    if (blk > 128) blk = 128;
    if (blk < 16) blk = 16;
    return blk;
}

/* Keys visible to query row i: with the causal mask only j <= i. */
static inline int visible_keys(int i, int Tk, int causal) { return causal ? i + 1 : Tk; }

/* s[nq, nk] = scale * q_blk k^T for one head: q_blk and k are strided views (row stride H*D)
 * into the interleaved tensors, so no head is ever copied out. */
static void block_scores(float *s, const float *qb, const float *kb, int nq, int nk, int D,
                         int HD, float scale) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, D, scale, qb, HD, kb, HD,
                0.0f, s, nk);
}

/* Turns a row of scores into probabilities exp(s - lse) over its n visible keys and zeroes
 * the masked tail up to nk (the GEMMs run over all nk columns of the block). */
static void probs_from_lse(float *row, int n, int nk, float lse) {
    for (int j = 0; j < n; j++) row[j] = exp_approx(row[j] - lse);
    for (int j = n; j < nk; j++) row[j] = 0.0f;
}

static void check_shape(int B, int Tq, int Tk, int H, int D, int causal) {
    SD_CHECK(B > 0 && Tq > 0 && Tk > 0 && H > 0 && D > 0,
             "attention: bad shape B=%d Tq=%d Tk=%d H=%d D=%d", B, Tq, Tk, H, D);
    SD_CHECK(!causal || Tq == Tk, "attention: causal mask needs Tq == Tk (got %d, %d)", Tq, Tk);
}

void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                       int B, int Tq, int Tk, int H, int D, float scale, int causal) {
    check_shape(B, Tq, Tk, H, D, causal);
    if (attention_bf16_applies(Tq, Tk, D)) {
        attention_forward_bf16(out, lse, q, k, v, B, Tq, Tk, H, D, scale, causal);
        return;
    }
    const int HD = H * D;
    const int blk = query_block(Tk);
    const int nblocks = (Tq + blk - 1) / blk;
    const long items = (long)B * H * nblocks;

    /* One item = (b, h, query block); items are independent and write disjoint rows of out
     * and lse, so any schedule gives the same bytes. Dynamic because causal blocks differ
     * in cost. BLAS inside the region runs single-threaded (OpenMP OpenBLAS). */
#pragma omp parallel if (items > 1)
    {
        scratch_mark_t mark = scratch_mark();
        float *s = scratch_floats((size_t)blk * Tk);
        float *inv = scratch_floats((size_t)blk);
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; it++) {
            const int bh = (int)(it / nblocks);
            const int b = bh / H, h = bh % H;
            const int i0 = (int)(it % nblocks) * blk;
            const int nq = Tq - i0 < blk ? Tq - i0 : blk;
            /* Causal: no row of this block sees keys past its last row. */
            const int nk = causal ? i0 + nq : Tk;
            const float *qb = q + ((size_t)b * Tq + i0) * HD + (size_t)h * D;
            const float *kb = k + (size_t)b * Tk * HD + (size_t)h * D;
            const float *vb = v + (size_t)b * Tk * HD + (size_t)h * D;
            float *ob = out + ((size_t)b * Tq + i0) * HD + (size_t)h * D;
            float *lrow = lse + ((size_t)b * H + h) * Tq + i0;

            block_scores(s, qb, kb, nq, nk, D, HD, scale);
            for (int r = 0; r < nq; r++) {
                float *row = s + (size_t)r * nk;
                const int n = visible_keys(i0 + r, Tk, causal);
                float mx = row[0];
#pragma omp simd reduction(max : mx)
                for (int j = 1; j < n; j++) mx = row[j] > mx ? row[j] : mx;
                for (int j = 0; j < n; j++) row[j] = exp_approx(row[j] - mx);
                double sum = 0.0;  /* double: thousands of terms, and it costs little here */
#pragma omp simd reduction(+ : sum)
                for (int j = 0; j < n; j++) sum += row[j];
                for (int j = n; j < nk; j++) row[j] = 0.0f;
                lrow[r] = mx + (float)log(sum);
                inv[r] = (float)(1.0 / sum);
            }
            /* out = (exp(S - max) V) / sum: normalising the [nq, D] result is cheaper than
             * normalising the [nq, nk] probabilities. */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, D, nk, 1.0f, s, nk, vb, HD,
                        0.0f, ob, HD);
            for (int r = 0; r < nq; r++)
                for (int d = 0; d < D; d++) ob[(size_t)r * HD + d] *= inv[r];
        }
        scratch_release(mark);
    }
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout,
                        const float *q, const float *k, const float *v,
                        const float *out, const float *lse,
                        int B, int Tq, int Tk, int H, int D, float scale, int causal) {
    check_shape(B, Tq, Tk, H, D, causal);
    if (!dq && !dk && !dv) return;
    if (attention_bf16_applies(Tq, Tk, D)) {
        attention_backward_bf16(dq, dk, dv, dout, q, k, v, out, lse, B, Tq, Tk, H, D, scale, causal);
        return;
    }
    const int HD = H * D;
    const int blk = query_block(Tk);
    const int pairs = B * H;

    /* Parallel over (b, h): each pair owns its dK/dV slice (and its dQ columns), so the
     * query blocks of one pair accumulate into dK/dV serially, race-free and in a fixed
     * order (deterministic). With a single pair the region is inactive and BLAS threads
     * itself instead. */
#pragma omp parallel if (pairs > 1)
    {
        scratch_mark_t mark = scratch_mark();
        float *P = scratch_floats((size_t)blk * Tk);
        float *dS = (dq || dk) ? scratch_floats((size_t)blk * Tk) : NULL;
        float *Di = scratch_floats((size_t)blk);
#pragma omp for schedule(dynamic, 1)
        for (int bh = 0; bh < pairs; bh++) {
            const int b = bh / H, h = bh % H;
            const size_t qoff = (size_t)b * Tq * HD + (size_t)h * D;
            const size_t koff = (size_t)b * Tk * HD + (size_t)h * D;
            const float *kb = k + koff, *vb = v + koff;
            for (int i0 = 0; i0 < Tq; i0 += blk) {
                const int nq = Tq - i0 < blk ? Tq - i0 : blk;
                const int nk = causal ? i0 + nq : Tk;
                const size_t roff = qoff + (size_t)i0 * HD;
                const float *qb = q + roff, *dob = dout + roff, *ob = out + roff;
                const float *lrow = lse + ((size_t)b * H + h) * Tq + i0;

                /* Recompute P = exp(S - lse) with the same score GEMM as the forward. */
                block_scores(P, qb, kb, nq, nk, D, HD, scale);
                for (int r = 0; r < nq; r++)
                    probs_from_lse(P + (size_t)r * nk, visible_keys(i0 + r, Tk, causal), nk, lrow[r]);

                if (dq || dk) {
                    /* dP = dO V^T; dS = P * (dP - Di), Di = rowsum(dO * O) = rowsum(P * dP). */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, D, 1.0f, dob, HD,
                                vb, HD, 0.0f, dS, nk);
                    for (int r = 0; r < nq; r++) {
                        double acc = 0.0;
                        for (int d = 0; d < D; d++)
                            acc += (double)dob[(size_t)r * HD + d] * ob[(size_t)r * HD + d];
                        Di[r] = (float)acc;
                    }
                    for (int r = 0; r < nq; r++) {
                        float *ds = dS + (size_t)r * nk;
                        const float *p = P + (size_t)r * nk;
                        const float di = Di[r];
#pragma omp simd
                        for (int j = 0; j < nk; j++) ds[j] = p[j] * (ds[j] - di);
                    }
                    if (dq)  /* dQ_blk += scale * dS K */
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, D, nk, scale,
                                    dS, nk, kb, HD, 1.0f, dq + roff, HD);
                    if (dk)  /* dK += scale * dS^T Q_blk */
                        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, D, nq, scale,
                                    dS, nk, qb, HD, 1.0f, dk + koff, HD);
                }
                if (dv)  /* dV += P^T dO_blk */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, D, nq, 1.0f, P, nk,
                                dob, HD, 1.0f, dv + koff, HD);
            }
        }
        scratch_release(mark);
    }
}

void attention_probs(float *probs, const float *q, const float *k, const float *lse,
                     int b, int h, int q0, int nq, int Tq, int Tk, int H, int D, float scale, int causal) {
    SD_CHECK(b >= 0 && h >= 0 && h < H && q0 >= 0 && nq >= 0 && q0 + nq <= Tq && Tk > 0 && D > 0,
             "attention_probs: rows [%d, %d) of Tq=%d, head %d of %d", q0, q0 + nq, Tq, h, H);
    SD_CHECK(!causal || Tq == Tk, "attention_probs: causal mask needs Tq == Tk (got %d, %d)", Tq, Tk);
    if (nq == 0) return;
    if (attention_bf16_applies(Tq, Tk, D)) {   /* the scores the bf16 forward's lse comes from */
        attention_probs_bf16(probs, q, k, lse, b, h, q0, nq, Tq, Tk, H, D, scale, causal);
        return;
    }
    const int HD = H * D;
    const float *qb = q + ((size_t)b * Tq + q0) * HD + (size_t)h * D;
    const float *kb = k + (size_t)b * Tk * HD + (size_t)h * D;
    const float *lrow = lse + ((size_t)b * H + h) * Tq + q0;
    block_scores(probs, qb, kb, nq, Tk, D, HD, scale);
#pragma omp parallel for if ((long)nq * Tk > (1L << 16))
    for (int r = 0; r < nq; r++)
        probs_from_lse(probs + (size_t)r * Tk, visible_keys(q0 + r, Tk, causal), Tk, lrow[r]);
}
