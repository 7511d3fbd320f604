/* Attention in the bf16 compute mode: the contract of attention_forward / attention_backward
 * (ops.h: heads interleaved in the channel dim, lse kept, P recomputed in the backward), with
 * every product on bf16 operands accumulated in fp32 (VDPBF16PS) and the softmax, lse, Di and
 * dS = P * (dP - Di) in fp32.
 *
 * Why its own kernel rather than gemm_bf16: measured on SD 1.5's 40-wide heads, the GEMM
 * entry points made attention 1.8x slower than fp32 sgemm: each query block re-packed K and V
 * into tiles, and the GEMM pads its k blocks to 32 (40 -> 64) and its columns to 32. Here K
 * and V are packed once per head, the score product runs over D/2 bf16 pairs with no padding,
 * and the probabilities are written in bf16 by the softmax loop, already in the layout the next
 * product broadcasts from.
 *
 * One product shape serves all seven products, a "pair GEMM":
 *   C[m, n] (=|+=) alpha * sum_p A[m, p] . B(p, n)
 * where A[m, p] is a pair of bf16 (one 32-bit word, row stride lda words) and B(p, n) is the
 * matching pair for column n, stored as 16-column tiles: the tile of column block t at pair p
 * is 32 bf16 at B + t * tstride + p * pstride. Scores S = Q K^T take A = Q's pairs along D and
 * B = K in tiles of 16 keys (tstride = P * 32, pstride = 32); P V takes A = the probability rows
 * (pairs of keys) and B = V pairs of keys by D (tstride = 32, pstride = 2 * Dp). */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/error.h"
#include "base/scratch.h"
#include "ops/attention_bf16.h"
#include "ops/gemm.h"

#if defined(__x86_64__) && defined(__GNUC__) && (__GNUC__ >= 11 || defined(__clang__))
#define ATT_HAVE_BF16 1
#include <immintrin.h>
#endif

static inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

/* Query rows per block, a multiple of 8 (the kernel's row group), for a [QB, Tk] fp32 score
 * buffer of about `bytes`: 256 KB in the forward, so it stays in L2 next to the packed K and V;
 * 512 KB in the backward (32 rows at 4096 keys: 16 pairs of rows per dK / dV sum, measured a
 * little faster than 16 or 64 rows). */
static inline int query_block(int Tk, int bytes) {
    int qb = bytes / (4 * (Tk > 0 ? Tk : 1));
    qb = qb / 8 * 8;
    if (qb < 16) qb = 16;
    if (qb > 128) qb = 128;
    return qb;
}

int attention_bf16_applies(int Tq, int Tk, int D) {
#ifdef ATT_HAVE_BF16
    if (sd_compute_dtype() != SD_COMPUTE_BF16 || !strcmp(sd_bf16_kernel(), "none")) return 0;
    /* Small products (CLIP's 77 tokens, cross-attention of tiny fixtures) stay on the fp32
     * path, where rounding would cost accuracy for no time (the threshold sd_gemm uses). */
    return (double)Tq * Tk * D >= (double)(1 << 22);
#else
    (void)Tq, (void)Tk, (void)D;
    return 0;
#endif
}

#ifdef ATT_HAVE_BF16
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* 8 rows x NT column tiles of the pair GEMM (see the top of the file): 8 * NT accumulators,
 * per pair NT tile loads and 8 broadcasts. Inlined with a constant NT so the accumulators stay
 * in registers. */
BF16_TARGET static inline __attribute__((always_inline)) void
pair_block(float *C, int ldc, int accumulate, float alpha, const uint32_t *A, int lda, const uint16_t *B,
           size_t tstride, size_t pstride, int npairs, const int NT) {
    __m512 acc[8][3];
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < NT; j++) acc[i][j] = _mm512_setzero_ps();
    for (int p = 0; p < npairs; p++) {
        __m512bh b[3];
        for (int j = 0; j < NT; j++) b[j] = (__m512bh)_mm512_loadu_si512(B + j * tstride + p * pstride);
        for (int i = 0; i < 8; i++) {
            const __m512bh a = (__m512bh)_mm512_set1_epi32((int)A[(size_t)i * lda + p]);
            for (int j = 0; j < NT; j++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], a, b[j]);
        }
    }
    const __m512 va = _mm512_set1_ps(alpha);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < NT; j++) {
            float *c = C + (size_t)i * ldc + 16 * j;
            __m512 r = _mm512_mul_ps(acc[i][j], va);
            if (accumulate) r = _mm512_add_ps(r, _mm512_loadu_ps(c));
            _mm512_storeu_ps(c, r);
        }
}

/* C[M, 16 * ntiles] (=|+=) alpha * A B, M a multiple of 8. Deterministic: each element is one
 * accumulation over the pairs in order, whatever the blocking. */
BF16_TARGET static void pair_gemm(float *C, int ldc, int accumulate, float alpha, const uint32_t *A, int lda,
                                  int M, const uint16_t *B, size_t tstride, size_t pstride, int ntiles,
                                  int npairs) {
    for (int t0 = 0; t0 < ntiles; t0 += 3) {
        const int nt = ntiles - t0 < 3 ? ntiles - t0 : 3;
        const uint16_t *bt = B + (size_t)t0 * tstride;
        for (int m0 = 0; m0 < M; m0 += 8) {
            float *c = C + (size_t)m0 * ldc + 16 * t0;
            const uint32_t *a = A + (size_t)m0 * lda;
            if (nt == 3) pair_block(c, ldc, accumulate, alpha, a, lda, bt, tstride, pstride, npairs, 3);
            else if (nt == 2) pair_block(c, ldc, accumulate, alpha, a, lda, bt, tstride, pstride, npairs, 2);
            else pair_block(c, ldc, accumulate, alpha, a, lda, bt, tstride, pstride, npairs, 1);
        }
    }
}

/* e^x on 16 lanes for the softmax, whose arguments are s - max <= 0 (or s - lse): x = n + f
 * in base 2, |f| <= 1/2, 2^f by its degree-7 Taylor polynomial (relative error < 2e-8), scaled by
 * 2^n with VSCALEFPS (which flushes to 0 below the float range). Arguments under -200 give 0;
 * NaN stays NaN. Every bf16 path (forward, backward, probs) uses it, so P recomputed from lse
 * matches the forward's. */
BF16_TARGET static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-200.0f), x);   /* NaN in x is returned (second operand) */
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* f = x log2(e) - n with log2(e) in two parts, the product exact inside the FMAs */
    __m512 f = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504f), _mm512_sub_ps(_mm512_setzero_ps(), n));
    f = _mm512_fmadd_ps(x, _mm512_set1_ps(1.92596299e-8f), f);
    __m512 p = _mm512_set1_ps(1.52527338e-5f);               /* ln2^7 / 7! */
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.54035304e-4f)); /* ln2^6 / 6! */
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.33335581e-3f)); /* ln2^5 / 5! */
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.61812911e-3f)); /* ln2^4 / 4! */
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.55041087e-2f)); /* ln2^3 / 3! */
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.40226507e-1f)); /* ln2^2 / 2 */
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.93147181e-1f)); /* ln2 */
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* lanes [j, j + 16) of a row with n valid entries */
static inline __mmask16 valid_mask(int j, int n) {
    return j + 16 <= n ? (__mmask16)0xffff : j < n ? (__mmask16)((1u << (n - j)) - 1) : (__mmask16)0;
}

/* A score row s[0, nkp) with n valid entries -> p[0, nkp) = bf16 exp(s - max) (0 past n);
 * returns the fp32 sum of the unrounded exponentials, *mx the max. */
BF16_TARGET static float softmax_row(uint16_t *p, const float *s, int n, int nkp, float *mx) {
    __m512 vm = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < n; j += 16) vm = _mm512_mask_max_ps(vm, valid_mask(j, n), vm, _mm512_loadu_ps(s + j));
    const float m = _mm512_reduce_max_ps(vm);
    const __m512 vmx = _mm512_set1_ps(m);
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < nkp; j += 16) {
        const __m512 e = _mm512_maskz_mov_ps(valid_mask(j, n), exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), vmx)));
        sum = _mm512_add_ps(sum, e);
        _mm256_storeu_si256((__m256i *)(p + j), (__m256i)_mm512_cvtneps_pbh(e));
    }
    *mx = m;
    return _mm512_reduce_add_ps(sum);
}

/* s[0, nkp) (=) exp(s - l) over the n valid entries, 0 past them: the probabilities from lse. */
BF16_TARGET static void probs_row(float *s, int n, int nkp, float l) {
    const __m512 vl = _mm512_set1_ps(l);
    for (int j = 0; j < nkp; j += 16)
        _mm512_storeu_ps(s + j, _mm512_maskz_mov_ps(valid_mask(j, n), exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), vl))));
}

/* dst[0, n) = bf16 of src (round to nearest even, as sd_f32_to_bf16), n a multiple of 16. */
BF16_TARGET static void row_to_bf16(uint16_t *dst, const float *src, int n) {
    for (int j = 0; j < n; j += 16)
        _mm256_storeu_si256((__m256i *)(dst + j), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + j)));
}

/* Rows r0 and r1 (n floats, a multiple of 16) as the B operand of a product over pairs of
 * rows: tile t of pair p at dst + (t * np + p) * 32 holds (r0[16t + i], r1[16t + i]) for i < 16. */
BF16_TARGET static void rows_to_pair_tiles(uint16_t *dst, const float *r0, const float *r1, int n, int np, int p) {
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int t = 0; t < n / 16; t++) {
        const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(r1 + 16 * t), _mm512_loadu_ps(r0 + 16 * t));
        _mm512_storeu_si512(dst + ((size_t)t * np + p) * 32, _mm512_permutexvar_epi16(idx, v));
    }
}

/* ---- packing ----
 * D is padded to 2 * P (pairs) for the products over D and to Dp (multiple of 16) where D is
 * the column dimension; keys to Tkp (multiple of 16); the padding is zero. */

/* dst[0, n2) = bf16 of src[0, n) then zeros (n <= n2); src is not read past n. */
BF16_TARGET static void row_to_bf16_pad(uint16_t *dst, const float *src, int n, int n2) {
    for (int j = 0; j < n2; j += 16) {
        const __m512 x = _mm512_maskz_loadu_ps(valid_mask(j, n), src + j);
        _mm256_mask_storeu_epi16(dst + j, valid_mask(j, n2), (__m256i)_mm512_cvtneps_pbh(x));
    }
}

/* Rows of x (row stride ld) as bf16 pairs along D: dst[r, p] (row stride P words); rows n..nrows-1
 * zero. */
static void pack_rows_pairs(uint16_t *dst, int nrows, const float *x, size_t ld, int n, int D, int P) {
    for (int r = 0; r < nrows; r++) {
        if (r < n) row_to_bf16_pad(dst + (size_t)r * 2 * P, x + (size_t)r * ld, D, 2 * P);
        else memset(dst + (size_t)r * 2 * P, 0, sizeof(uint16_t) * 2 * P);
    }
}

/* The B operand with columns = rows of x (keys) and pairs along D: tiles of 16 rows, word
 * (t * P + p) * 16 + nn = (x[t*16 + nn, 2p], x[t*16 + nn, 2p + 1]); rows >= n zero. */
static void pack_cols_tiles(uint16_t *dst, int nrowsp, const float *x, size_t ld, int n, int D, int P) {
    uint32_t *w = (uint32_t *)dst;
    scratch_mark_t mark = scratch_mark();
    uint32_t *row = (uint32_t *)scratch_floats((size_t)P);   /* one row's pairs */
    for (int r = 0; r < nrowsp; r++) {
        const int t = r / 16, nn = r % 16;
        if (r < n) row_to_bf16_pad((uint16_t *)row, x + (size_t)r * ld, D, 2 * P);
        else memset(row, 0, sizeof(uint32_t) * P);
        for (int p = 0; p < P; p++) w[((size_t)t * P + p) * 16 + nn] = row[p];
    }
    scratch_release(mark);
}

/* The B operand with pairs along the rows of x (keys or query rows) and columns = D:
 * dst[p * 2 * Dp + d * 2 + j] = x[2p + j, d]; rows >= n and columns >= D zero. */
BF16_TARGET static void pack_pairs_cols(uint16_t *dst, int nrowsp, const float *x, size_t ld, int n, int D, int Dp) {
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int p = 0; p < nrowsp / 2; p++) {
        const float *r0 = x + (size_t)(2 * p) * ld, *r1 = r0 + ld;
        const int n0 = 2 * p < n ? D : 0, n1 = 2 * p + 1 < n ? D : 0;
        for (int c = 0; c < Dp; c += 16) {
            const __m512 a = _mm512_maskz_loadu_ps(valid_mask(c, n0), r0 + c);
            const __m512 b = _mm512_maskz_loadu_ps(valid_mask(c, n1), r1 + c);
            const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(b, a);
            _mm512_storeu_si512(dst + (size_t)p * 2 * Dp + 2 * c, _mm512_permutexvar_epi16(idx, v));
        }
    }
}

/* The A operand Q^T (or dO^T) of a product over pairs of query rows: dst[d, p] (row stride
 * nrowsp / 2 words) = (x[2p, d], x[2p + 1, d]) for d < mrows (a multiple of 8); rows >= n and
 * d >= D zero. */
static void pack_pairs_cols_t(uint16_t *dst, int mrows, const float *x, size_t ld, int n, int nrowsp, int D) {
    for (int d = 0; d < mrows; d++)
        for (int r = 0; r < nrowsp; r++)
            dst[(size_t)d * nrowsp + r] = (r < n && d < D) ? sd_f32_to_bf16(x[(size_t)r * ld + d]) : 0;
}

static uint16_t *scratch_bf16(size_t n) { return (uint16_t *)scratch_floats((n + 1) / 2); }
#endif

void attention_forward_bf16(float *out, float *lse, const float *q, const float *k, const float *v,
                            int B, int Tq, int Tk, int H, int D, float scale, int causal) {
#ifdef ATT_HAVE_BF16
    const int HD = H * D, P = (D + 1) / 2, Dp = round_up(D, 16), Tkp = round_up(Tk, 16);
    const int qb = query_block(Tkp, 1 << 18);
    const int nblocks = (Tq + qb - 1) / qb;
    const long items = (long)B * H * nblocks;
    const int pairs = B * H;
    scratch_mark_t outer = scratch_mark();
    /* K in score tiles and V in pairs of keys, once per (b, h) for all query blocks */
    const size_t kstride = (size_t)Tkp * 2 * P, vstride = (size_t)Tkp * Dp;
    uint16_t *kp = scratch_bf16(kstride * pairs), *vp = scratch_bf16(vstride * pairs);
#pragma omp parallel for schedule(static) if (pairs > 1)
    for (int bh = 0; bh < pairs; bh++) {
        const size_t off = (size_t)(bh / H) * Tk * HD + (size_t)(bh % H) * D;
        pack_cols_tiles(kp + bh * kstride, Tkp, k + off, HD, Tk, D, P);
        pack_pairs_cols(vp + bh * vstride, Tkp, v + off, HD, Tk, D, Dp);
    }

    /* One item = (b, h, query block): disjoint rows of out and lse, any schedule gives the
     * same bytes. */
#pragma omp parallel if (items > 1)
    {
        scratch_mark_t mark = scratch_mark();
        uint16_t *qa = scratch_bf16((size_t)qb * 2 * P);
        float *s = scratch_floats((size_t)qb * Tkp);
        uint16_t *ph = scratch_bf16((size_t)qb * Tkp);
        float *o = scratch_floats((size_t)qb * Dp);
        float *inv = scratch_floats((size_t)qb);
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; it++) {
            const int bh = (int)(it / nblocks);
            const int b = bh / H, h = bh % H;
            const int i0 = (int)(it % nblocks) * qb;
            const int nq = Tq - i0 < qb ? Tq - i0 : qb, nqp = round_up(nq, 8);
            const int nk = causal ? i0 + nq : Tk, nkp = round_up(nk, 16);
            const float *qb_ = q + ((size_t)b * Tq + i0) * HD + (size_t)h * D;
            float *ob = out + ((size_t)b * Tq + i0) * HD + (size_t)h * D;
            float *lrow = lse + ((size_t)b * H + h) * Tq + i0;

            pack_rows_pairs(qa, nqp, qb_, HD, nq, D, P);
            pair_gemm(s, nkp, 0, scale, (const uint32_t *)qa, P, nqp, kp + bh * kstride, (size_t)P * 32, 32,
                      nkp / 16, P);
            for (int r = 0; r < nqp; r++) {
                float *row = s + (size_t)r * nkp;
                uint16_t *prow = ph + (size_t)r * nkp;
                if (r >= nq) {
                    memset(prow, 0, sizeof(uint16_t) * nkp);
                    continue;
                }
                const int n = causal ? i0 + r + 1 : Tk;
                float mx;
                const float sum = softmax_row(prow, row, n, nkp, &mx);
                lrow[r] = mx + logf(sum);
                inv[r] = 1.0f / sum;
            }
            /* out = (exp(S - max) V) / sum */
            pair_gemm(o, Dp, 0, 1.0f, (const uint32_t *)ph, nkp / 2, nqp, vp + bh * vstride, 32, (size_t)2 * Dp,
                      Dp / 16, nkp / 2);
            for (int r = 0; r < nq; r++)
                for (int d = 0; d < D; d++) ob[(size_t)r * HD + d] = o[(size_t)r * Dp + d] * inv[r];
        }
        scratch_release(mark);
    }
    scratch_release(outer);
#else
    (void)out, (void)lse, (void)q, (void)k, (void)v, (void)B, (void)Tq, (void)Tk, (void)H, (void)D, (void)scale,
        (void)causal;
    SD_CHECK(0, "attention_forward_bf16 needs avx512_bf16 (check attention_bf16_applies first)");
#endif
}

void attention_backward_bf16(float *dq, float *dk, float *dv, const float *dout,
                             const float *q, const float *k, const float *v,
                             const float *out, const float *lse,
                             int B, int Tq, int Tk, int H, int D, float scale, int causal) {
#ifdef ATT_HAVE_BF16
    const int HD = H * D, P = (D + 1) / 2, Dp = round_up(D, 16), D8 = round_up(D, 8), Tkp = round_up(Tk, 16);
    const int qb = query_block(Tkp, 1 << 19);
    const int pairs = B * H;

    /* Parallel over (b, h): each pair owns its dK / dV slice (and its dQ columns); the query
     * blocks of a pair run in order, so the sums have a fixed order (same bytes whatever the
     * thread count). dK and dV are summed transposed, dK^T[d, key] += Q^T dS, so that the
     * wide dimension (keys) is the vector one and the operands are the small Q / dO blocks
     * transposed plus P and dS interleaved by pairs of rows as the softmax writes them. */
#pragma omp parallel if (pairs > 1)
    {
        scratch_mark_t mark = scratch_mark();
        uint16_t *kt = scratch_bf16((size_t)Tkp * 2 * P), *vt = scratch_bf16((size_t)Tkp * 2 * P);
        uint16_t *kc = scratch_bf16((size_t)Tkp * Dp);
        uint16_t *qa = scratch_bf16((size_t)qb * 2 * P), *doa = scratch_bf16((size_t)qb * 2 * P);
        uint16_t *qT = scratch_bf16((size_t)D8 * qb), *doT = scratch_bf16((size_t)D8 * qb);
        float *Pm = scratch_floats((size_t)qb * Tkp), *dS = scratch_floats((size_t)qb * Tkp);
        uint16_t *dsh = scratch_bf16((size_t)qb * Tkp);
        uint16_t *pI = scratch_bf16((size_t)qb * Tkp), *dsI = scratch_bf16((size_t)qb * Tkp);
        float *dqb = scratch_floats((size_t)qb * Dp);
        float *dkT = scratch_floats((size_t)D8 * Tkp), *dvT = scratch_floats((size_t)D8 * Tkp);
#pragma omp for schedule(dynamic, 1)
        for (int bh = 0; bh < pairs; bh++) {
            const int b = bh / H, h = bh % H;
            const size_t qoff = (size_t)b * Tq * HD + (size_t)h * D;
            const size_t koff = (size_t)b * Tk * HD + (size_t)h * D;
            pack_cols_tiles(kt, Tkp, k + koff, HD, Tk, D, P);
            pack_cols_tiles(vt, Tkp, v + koff, HD, Tk, D, P);
            pack_pairs_cols(kc, Tkp, k + koff, HD, Tk, D, Dp);
            memset(dkT, 0, sizeof(float) * D8 * Tkp);
            memset(dvT, 0, sizeof(float) * D8 * Tkp);
            for (int i0 = 0; i0 < Tq; i0 += qb) {
                const int nq = Tq - i0 < qb ? Tq - i0 : qb, nqp = round_up(nq, 8), np = nqp / 2;
                const int nk = causal ? i0 + nq : Tk, nkp = round_up(nk, 16);
                const size_t roff = qoff + (size_t)i0 * HD;
                const float *qb_ = q + roff, *dob = dout + roff, *ob = out + roff;
                const float *lrow = lse + ((size_t)b * H + h) * Tq + i0;

                pack_rows_pairs(qa, nqp, qb_, HD, nq, D, P);
                pack_rows_pairs(doa, nqp, dob, HD, nq, D, P);
                /* P = exp(S - lse), the forward's scores (same kernel, same bytes) */
                pair_gemm(Pm, nkp, 0, scale, (const uint32_t *)qa, P, nqp, kt, (size_t)P * 32, 32, nkp / 16, P);
                for (int r = 0; r < nqp; r++) {
                    const int n = r >= nq ? 0 : causal ? i0 + r + 1 : Tk;
                    probs_row(Pm + (size_t)r * nkp, n, nkp, r < nq ? lrow[r] : 0.0f);
                }
                if (dv) {   /* dV^T += dO^T P */
                    for (int r = 0; r < nqp; r += 2)
                        rows_to_pair_tiles(pI, Pm + (size_t)r * nkp, Pm + (size_t)(r + 1) * nkp, nkp, np, r / 2);
                    pack_pairs_cols_t(doT, D8, dob, HD, nq, nqp, D);
                    pair_gemm(dvT, Tkp, 1, 1.0f, (const uint32_t *)doT, np, D8, pI, (size_t)np * 32, 32, nkp / 16,
                              np);
                }
                if (!dq && !dk) continue;
                /* dP = dO V^T; dS = P * (dP - Di), Di = rowsum(dO * O) */
                pair_gemm(dS, nkp, 0, 1.0f, (const uint32_t *)doa, P, nqp, vt, (size_t)P * 32, 32, nkp / 16, P);
                for (int r = 0; r < nqp; r++) {
                    double acc = 0.0;
                    if (r < nq)
                        for (int d = 0; d < D; d++) acc += (double)dob[(size_t)r * HD + d] * ob[(size_t)r * HD + d];
                    const float di = (float)acc;
                    float *ds = dS + (size_t)r * nkp;
                    const float *p = Pm + (size_t)r * nkp;
#pragma omp simd
                    for (int j = 0; j < nkp; j++) ds[j] = p[j] * (ds[j] - di);
                }
                if (dq) {   /* dQ_blk += scale * dS K */
                    for (int r = 0; r < nqp; r++) row_to_bf16(dsh + (size_t)r * nkp, dS + (size_t)r * nkp, nkp);
                    pair_gemm(dqb, Dp, 0, scale, (const uint32_t *)dsh, nkp / 2, nqp, kc, 32, (size_t)2 * Dp,
                              Dp / 16, nkp / 2);
                    for (int r = 0; r < nq; r++)
                        for (int d = 0; d < D; d++) dq[roff + (size_t)r * HD + d] += dqb[(size_t)r * Dp + d];
                }
                if (dk) {   /* dK^T += scale * Q^T dS */
                    for (int r = 0; r < nqp; r += 2)
                        rows_to_pair_tiles(dsI, dS + (size_t)r * nkp, dS + (size_t)(r + 1) * nkp, nkp, np, r / 2);
                    pack_pairs_cols_t(qT, D8, qb_, HD, nq, nqp, D);
                    pair_gemm(dkT, Tkp, 1, scale, (const uint32_t *)qT, np, D8, dsI, (size_t)np * 32, 32, nkp / 16,
                              np);
                }
            }
            for (int j = 0; j < Tk; j++)
                for (int d = 0; d < D; d++) {
                    if (dk) dk[koff + (size_t)j * HD + d] += dkT[(size_t)d * Tkp + j];
                    if (dv) dv[koff + (size_t)j * HD + d] += dvT[(size_t)d * Tkp + j];
                }
        }
        scratch_release(mark);
    }
#else
    (void)dq, (void)dk, (void)dv, (void)dout, (void)q, (void)k, (void)v, (void)out, (void)lse, (void)B, (void)Tq,
        (void)Tk, (void)H, (void)D, (void)scale, (void)causal;
    SD_CHECK(0, "attention_backward_bf16 needs avx512_bf16 (check attention_bf16_applies first)");
#endif
}

void attention_probs_bf16(float *probs, const float *q, const float *k, const float *lse,
                          int b, int h, int q0, int nq, int Tq, int Tk, int H, int D, float scale, int causal) {
#ifdef ATT_HAVE_BF16
    /* The forward's scores, from the same packing and kernel (so the same bytes), then
     * exp(s - lse): a row sums to 1 with the lse the bf16 forward stored. Called per (b, h)
     * and row block, often inside a parallel region: plain serial code. */
    const int HD = H * D, P = (D + 1) / 2, Tkp = round_up(Tk, 16), nqp = round_up(nq, 8);
    scratch_mark_t mark = scratch_mark();
    uint16_t *kt = scratch_bf16((size_t)Tkp * 2 * P), *qa = scratch_bf16((size_t)nqp * 2 * P);
    float *s = scratch_floats((size_t)nqp * Tkp);
    pack_cols_tiles(kt, Tkp, k + (size_t)b * Tk * HD + (size_t)h * D, HD, Tk, D, P);
    pack_rows_pairs(qa, nqp, q + ((size_t)b * Tq + q0) * HD + (size_t)h * D, HD, nq, D, P);
    pair_gemm(s, Tkp, 0, scale, (const uint32_t *)qa, P, nqp, kt, (size_t)P * 32, 32, Tkp / 16, P);
    const float *lrow = lse + ((size_t)b * H + h) * Tq + q0;
    for (int r = 0; r < nq; r++) {
        float *row = s + (size_t)r * Tkp;
        probs_row(row, causal ? q0 + r + 1 : Tk, Tkp, lrow[r]);
        memcpy(probs + (size_t)r * Tk, row, sizeof(float) * Tk);
    }
    scratch_release(mark);
#else
    (void)probs, (void)q, (void)k, (void)lse, (void)b, (void)h, (void)q0, (void)nq, (void)Tq, (void)Tk, (void)H, (void)D,
        (void)scale, (void)causal;
    SD_CHECK(0, "attention_probs_bf16 needs avx512_bf16 (check attention_bf16_applies first)");
#endif
}
