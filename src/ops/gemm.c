/* sd_gemm and the bf16 GEMM (see gemm.h): the compute-dtype switch, CPU detection, packing of
 * fp32 operands into bf16 tiles, and two micro-kernels over the same packed layout, AMX tiles
 * (TDPBF16PS) and AVX512-BF16 (VDPBF16PS), both accumulating in fp32. */
#include "ops/gemm.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/scratch.h"

#if defined(__x86_64__) && defined(__GNUC__) && (__GNUC__ >= 11 || defined(__clang__))
#define SD_HAVE_X86_BF16 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* ---- compute dtype and CPU detection ---- */

enum { KERNEL_UNKNOWN = -1, KERNEL_NONE = 0, KERNEL_AVX512 = 1, KERNEL_AMX = 2 };
static int g_kernel = KERNEL_UNKNOWN;
static int g_compute = -1;  /* -1: not decided yet (environment read on first use) */

#ifdef SD_HAVE_X86_BF16
static unsigned long long xgetbv0(void) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#endif

/* avx512_bf16 needs CPUID.(7,1):EAX[5] plus OS-enabled zmm state (XCR0 bits 1,2,5,6,7); AMX
 * needs CPUID.(7,0):EDX[22] (amx-bf16) and [24] (amx-tile) plus Linux's permission for the
 * tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, kernels >= 5.16). */
static int detect_kernel(void) {
#ifdef SD_HAVE_X86_BF16
    unsigned a, b, c, d;
    if (!__get_cpuid_count(1, 0, &a, &b, &c, &d) || !(c & (1u << 27))) return KERNEL_NONE; /* OSXSAVE */
    if ((xgetbv0() & 0xe6) != 0xe6) return KERNEL_NONE;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & (1u << 16))) return KERNEL_NONE; /* avx512f */
    const int amx = (d & (1u << 22)) && (d & (1u << 24));
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) return KERNEL_NONE; /* avx512_bf16 */
    if (amx && !getenv("SVDIFF_NO_AMX") && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18) == 0)
        return KERNEL_AMX;
    return KERNEL_AVX512;
#else
    return KERNEL_NONE;
#endif
}

static int kernel(void) {
    int k = __atomic_load_n(&g_kernel, __ATOMIC_ACQUIRE);
    if (k == KERNEL_UNKNOWN) {
        k = detect_kernel();
        __atomic_store_n(&g_kernel, k, __ATOMIC_RELEASE);
    }
    return k;
}

const char *sd_bf16_kernel(void) {
    const int k = kernel();
    return k == KERNEL_AMX ? "amx" : k == KERNEL_AVX512 ? "avx512_bf16" : "none";
}

int sd_parse_compute_dtype(const char *s, sd_compute_t *out) {
    if (s && !strcmp(s, "fp32")) return *out = SD_COMPUTE_FP32, 0;
    if (s && !strcmp(s, "bf16")) return *out = SD_COMPUTE_BF16, 0;
    return -1;
}

const char *sd_compute_dtype_name(sd_compute_t dt) { return dt == SD_COMPUTE_BF16 ? "bf16" : "fp32"; }

sd_compute_t sd_set_compute_dtype(sd_compute_t dt) {
    if (dt == SD_COMPUTE_BF16 && kernel() == KERNEL_NONE) {
        fprintf(stderr, "svdiff: this CPU has no avx512_bf16; computing in fp32\n");
        dt = SD_COMPUTE_FP32;
    }
    __atomic_store_n(&g_compute, (int)dt, __ATOMIC_RELEASE);
    return dt;
}

sd_compute_t sd_compute_dtype(void) {
    int c = __atomic_load_n(&g_compute, __ATOMIC_ACQUIRE);
    if (c < 0) {
        const char *env = getenv("SVDIFF_COMPUTE");
        sd_compute_t dt = SD_COMPUTE_FP32;
        if (env && *env && sd_parse_compute_dtype(env, &dt))
            fprintf(stderr, "svdiff: SVDIFF_COMPUTE=%s is neither fp32 nor bf16; computing in fp32\n", env);
        c = (int)sd_set_compute_dtype(dt);
    }
    return (sd_compute_t)c;
}

/* ---- packed layout ----
 * K is cut into blocks of 32 (zero-padded); M and N into tiles of 16 rows / columns, padded to
 * an even number of tiles (the micro-kernels work on 32 x 32 blocks of C).
 *   A: tile (mt, kb) = 16 rows x 32 k, row-major, 1 KB:  Ap[((mt*KB + kb)*16 + r)*32 + kk]
 *   B: tile (nt, kb) = 16 k-pairs x 16 columns x 2 (the VNNI layout of TDPBF16PS/VDPBF16PS):
 *      Bp[((nt*KB + kb)*16 + kp)*32 + n*2 + j] = op(B)[kb*32 + 2kp + j][nt*16 + n] */
#define TILE_BYTES 1024
#define TILE_ELEMS 512

#ifdef SD_HAVE_X86_BF16
static int round_up(int x, int m) { return (x + m - 1) / m * m; }

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))


/* In-register transpose of a 16 x 16 matrix of 32-bit words (r[i] = row i): unpacks within
 * 128-bit lanes, then a 4 x 4 transpose of the lanes. Transposed packing (bf16 pairs are
 * 32-bit words) goes through it instead of 16 scattered stores per vector. */
BF16_TARGET static inline void transpose16_epi32(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 4; g++) { /* u[4g + c], lane L = rows 4g..4g+3 of column 4L + c */
        u[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
    for (int c = 0; c < 4; c++) {
        const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xee);
        const __m512i v2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44), v3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xee);
        r[c] = _mm512_shuffle_i32x4(v0, v2, 0x88);
        r[4 + c] = _mm512_shuffle_i32x4(v0, v2, 0xdd);
        r[8 + c] = _mm512_shuffle_i32x4(v1, v3, 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(v1, v3, 0xdd);
    }
}

/* An operand as stored: fp32 (f) or bf16 (h, rounded once when it was made: the factors of a
 * spectral weight), row-major with leading dimension ld; op() transposes it when trans. The
 * packers read both kinds through the loaders below, so a tile packed from bf16 holds the same
 * bits as one packed from the fp32 original. */
typedef struct {
    const float *f;
    const uint16_t *h;
    int ld, trans;
} mat_t;

/* 32 consecutive elements from offset o, in bf16. */
BF16_TARGET static inline __m512i load32(const mat_t *x, size_t o) {
    if (x->h) return _mm512_loadu_si512(x->h + o);
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x->f + o + 16), _mm512_loadu_ps(x->f + o));
}

/* 16 consecutive elements from each of offsets oa and ob, in bf16, interleaved into 16 pair
 * words [a0 b0 a1 b1 ...]. */
BF16_TARGET static inline __m512i pair16(const mat_t *x, size_t oa, size_t ob) {
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                         23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i both =
        x->h ? _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(x->h + oa))),
                                  _mm256_loadu_si256((const __m256i *)(x->h + ob)), 1)
             : (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x->f + ob), _mm512_loadu_ps(x->f + oa));
    return _mm512_permutexvar_epi16(idx, both);
}

static inline uint16_t elem(const mat_t *x, size_t o) { return x->h ? x->h[o] : sd_f32_to_bf16(x->f[o]); }

/* op(A) element (m, k) sits at A[m*lda + k] (no transpose) or A[k*lda + m]. */
BF16_TARGET static void pack_a_tile(uint16_t *dst, const mat_t *a, int M, int K, int m0, int k0) {
    const size_t ld = (size_t)a->ld;
    if (m0 + 16 <= M && k0 + 32 <= K) {
        if (!a->trans) {
            for (int r = 0; r < 16; r++) _mm512_storeu_si512(dst + r * 32, load32(a, (m0 + r) * ld + k0));
            return;
        }
        /* k rows 2j, 2j+1 (16 contiguous m each) -> pair words v[j] indexed by m; transposed,
         * row r holds the 16 pairs of output row m0 + r */
        __m512i v[16];
        for (int j = 0; j < 16; j++) v[j] = pair16(a, (k0 + 2 * j) * ld + m0, (k0 + 2 * j + 1) * ld + m0);
        transpose16_epi32(v);
        for (int r = 0; r < 16; r++) _mm512_storeu_si512(dst + r * 32, v[r]);
        return;
    }
    for (int r = 0; r < 16; r++)
        for (int kk = 0; kk < 32; kk++) {
            const size_t m = m0 + r, k = k0 + kk;
            dst[r * 32 + kk] = (m < (size_t)M && k < (size_t)K) ? elem(a, a->trans ? k * ld + m : m * ld + k) : 0;
        }
}

/* op(B) element (k, n) sits at B[k*ldb + n] (no transpose) or B[n*ldb + k]. */
BF16_TARGET static void pack_b_tile(uint16_t *dst, const mat_t *b, int K, int N, int k0, int n0) {
    const size_t ld = (size_t)b->ld;
    if (n0 + 16 <= N && k0 + 32 <= K) {
        if (!b->trans) {   /* rows k, k+1 (16 columns each) interleaved into 16 pairs */
            for (int kp = 0; kp < 16; kp++)
                _mm512_storeu_si512(dst + kp * 32, pair16(b, (k0 + 2 * kp) * ld + n0, (k0 + 2 * kp + 1) * ld + n0));
            return;
        }
        /* 32 contiguous k per column n = 16 pair words; transposed, row kp holds columns 0..15 */
        __m512i v[16];
        for (int n = 0; n < 16; n++) v[n] = load32(b, (n0 + n) * ld + k0);
        transpose16_epi32(v);
        for (int kp = 0; kp < 16; kp++) _mm512_storeu_si512(dst + kp * 32, v[kp]);
        return;
    }
    for (int kp = 0; kp < 16; kp++)
        for (int n = 0; n < 16; n++)
            for (int j = 0; j < 2; j++) {
                const size_t k = k0 + 2 * kp + j, nn = n0 + n;
                dst[kp * 32 + n * 2 + j] =
                    (k < (size_t)K && nn < (size_t)N) ? elem(b, b->trans ? nn * ld + k : k * ld + nn) : 0;
            }
}

/* The B operand of a convolution, im2col(img)[K = IC*KH*KW, P = OH*OW], packed straight from
 * the image: col(k, p) = img[c, oy*stride + ky - top, ox*stride + kx - left] (0 outside), with
 * k = (c*KH + ky)*KW + kx and p = oy*OW + ox, as im2col() in conv2d.c lays it out. */
BF16_TARGET static void pack_b_tile_im2col(uint16_t *dst, const float *img, const conv2d_shape_t *s, int K, int N,
                                           int k0, int n0) {
    const int OW = conv2d_out_w(s), oy = n0 / OW, ox0 = n0 % OW;
    const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                           23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    if (k0 + 32 <= K && n0 + 16 <= N) {
        const int row_path = s->stride == 1 && ox0 + 16 <= OW;
        /* other tiles (stride 2, output rows narrower than 16 such as the 8 x 8 latents of SD's
         * lowest level, a tile across two rows): per k a gather of the 16 pixels at
         * base[n] + (ky - top) * W + kx - left, base[n] = (oy*W + ox) * stride for p = n0 + n */
        __m512i oys = _mm512_setzero_si512(), oxs = oys, base = oys;
        if (!row_path) {
            int yv[16], xv[16];
            for (int n = 0; n < 16; n++) yv[n] = (n0 + n) / OW * s->stride, xv[n] = (n0 + n) % OW * s->stride;
            oys = _mm512_loadu_si512(yv), oxs = _mm512_loadu_si512(xv);
            base = _mm512_add_epi32(_mm512_mullo_epi32(oys, _mm512_set1_epi32(s->W)), oxs);
        }
        __m512 row[2];
        int c = k0 / (s->KH * s->KW), ky = (k0 / s->KW) % s->KH, kx = k0 % s->KW;   /* of k, stepped below */
        for (int kp = 0; kp < 16; kp++) {
            for (int j = 0; j < 2; j++) {
                const int dy = ky - s->pad[0], dx = kx - s->pad[2];
                const float *plane = img + (size_t)c * s->H * s->W;
                if (++kx == s->KW) {
                    kx = 0;
                    if (++ky == s->KH) ky = 0, c++;
                }
                if (!row_path) {
                    const __m512i iy = _mm512_add_epi32(oys, _mm512_set1_epi32(dy));
                    const __m512i ix = _mm512_add_epi32(oxs, _mm512_set1_epi32(dx));
                    const __mmask16 in = _mm512_cmpge_epi32_mask(iy, _mm512_setzero_si512()) &
                                         _mm512_cmplt_epi32_mask(iy, _mm512_set1_epi32(s->H)) &
                                         _mm512_cmpge_epi32_mask(ix, _mm512_setzero_si512()) &
                                         _mm512_cmplt_epi32_mask(ix, _mm512_set1_epi32(s->W));
                    const __m512i at = _mm512_add_epi32(base, _mm512_set1_epi32(dy * s->W + dx));
                    row[j] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), in, at, plane, 4);
                    continue;
                }
                /* one output row: 16 consecutive input pixels, the out-of-image ones zero */
                const int iy = oy + dy, ix0 = ox0 + dx;
                if (iy < 0 || iy >= s->H) {
                    row[j] = _mm512_setzero_ps();
                    continue;
                }
                const int lo = ix0 < 0 ? -ix0 : 0, hi = s->W - ix0 < 16 ? s->W - ix0 : 16;  /* lanes in the image */
                const float *src = plane + (size_t)iy * s->W + ix0 + lo;
                if (lo == 0 && hi == 16)
                    row[j] = _mm512_loadu_ps(src);
                else if (hi <= lo)
                    row[j] = _mm512_setzero_ps();
                else   /* expand-load reads exactly hi - lo floats from src into lanes [lo, hi) */
                    row[j] = _mm512_maskz_expandloadu_ps((__mmask16)(((1u << (hi - lo)) - 1u) << lo), src);
            }
            _mm512_storeu_si512(dst + kp * 32,
                                _mm512_permutexvar_epi16(pairs, (__m512i)_mm512_cvtne2ps_pbh(row[1], row[0])));
        }
        return;
    }
    for (int kp = 0; kp < 16; kp++)
        for (int j = 0; j < 2; j++) {
            const int k = k0 + 2 * kp + j;
            const int c = k / (s->KH * s->KW), ky = (k / s->KW) % s->KH, kx = k % s->KW;
            for (int n = 0; n < 16; n++) {
                const int p = n0 + n;
                float v = 0.0f;
                if (k < K && p < N) {
                    const int iy = (p / OW) * s->stride + ky - s->pad[0], ix = (p % OW) * s->stride + kx - s->pad[2];
                    if (iy >= 0 && iy < s->H && ix >= 0 && ix < s->W) v = img[((size_t)c * s->H + iy) * s->W + ix];
                }
                dst[kp * 32 + n * 2 + j] = sd_f32_to_bf16(v);
            }
        }
}

/* Where the B operand comes from: a matrix, or the columns of a convolution. */
typedef struct {
    mat_t m;
    const float *img;            /* non-NULL: im2col of this image with shape *cs */
    const conv2d_shape_t *cs;
} bsrc_t;

BF16_TARGET static void pack_b_any(uint16_t *dst, const bsrc_t *b, int K, int N, int k0, int n0) {
    if (b->img) pack_b_tile_im2col(dst, b->img, b->cs, K, N, k0, n0);
    else pack_b_tile(dst, &b->m, K, N, k0, n0);
}

/* Blocking (see gemm_bf16_x86): K in chunks of KCB blocks of 32 (KC = 1024), the streamed
 * operand in steps of up to WMAX rows / columns per thread, so that a thread's packed slice of
 * it (WMAX x KC bf16 = 256 KB) stays in its L2 while every 32-wide block of the shared operand
 * passes it. */
#define KCB 32
#define WMAX 128

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_cfg_t;

AMX_TARGET static void amx_config(void) {
    amx_cfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    _tile_loadconfig(&cfg);
}

AMX_TARGET static void amx_release(void) { _tile_release(); }

/* acc[32 x 32] (row stride ldc floats) (+)= [A tiles a0; a1] x [B tiles b0, b1] over nkb k
 * blocks (the tiles of consecutive k blocks follow each other, TILE_ELEMS apart). first: start
 * from zero instead of acc. */
AMX_TARGET static void amx_block(float *acc, int ldc, const uint16_t *a0, const uint16_t *a1, const uint16_t *b0,
                                 const uint16_t *b1, int nkb, int first) {
    const size_t stride = (size_t)ldc * sizeof(float);
    if (first) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    } else {
        _tile_loadd(0, acc, stride);
        _tile_loadd(1, acc + 16, stride);
        _tile_loadd(2, acc + (size_t)16 * ldc, stride);
        _tile_loadd(3, acc + (size_t)16 * ldc + 16, stride);
    }
    for (int kb = 0; kb < nkb; kb++) {
        const size_t o = (size_t)kb * TILE_ELEMS;
        _tile_loadd(4, a0 + o, 64);
        _tile_loadd(5, a1 + o, 64);
        _tile_loadd(6, b0 + o, 64);
        _tile_loadd(7, b1 + o, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, acc, stride);
    _tile_stored(1, acc + 16, stride);
    _tile_stored(2, acc + (size_t)16 * ldc, stride);
    _tile_stored(3, acc + (size_t)16 * ldc + 16, stride);
}

/* Same contract with VDPBF16PS, for the first mi x nj of the 2 x 2 tiles of C (a tile wholly in
 * the padding below M or right of N is skipped: an M = 1 product does half the work): one
 * 16 x 16 tile at a time, 16 zmm accumulators (one per row), the A pair of row r broadcast
 * against the 16 B pairs of a k-pair row. (At one VDPBF16PS a
 * cycle this loop runs at the instruction's peak on a 2048^3 product: loads are not what
 * limits it.) */
BF16_TARGET static void avx512_block(float *acc, int ldc, const uint16_t *a0, const uint16_t *a1,
                                     const uint16_t *b0, const uint16_t *b1, int nkb, int first, int mi, int nj) {
    for (int i = 0; i < mi; i++)
        for (int j = 0; j < nj; j++) {
            float *c = acc + (size_t)16 * i * ldc + 16 * j;
            const uint16_t *a = i ? a1 : a0, *b = j ? b1 : b0;
            __m512 r[16];
            for (int t = 0; t < 16; t++) r[t] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(c + (size_t)t * ldc);
            for (int kb = 0; kb < nkb; kb++) {
                const uint32_t *at = (const uint32_t *)(a + (size_t)kb * TILE_ELEMS);
                const uint16_t *bt = b + (size_t)kb * TILE_ELEMS;
                for (int kp = 0; kp < 16; kp++) {
                    const __m512bh bv = (__m512bh)_mm512_loadu_si512(bt + kp * 32);
                    for (int t = 0; t < 16; t++)
                        r[t] = _mm512_dpbf16_ps(r[t], (__m512bh)_mm512_set1_epi32((int)at[t * 16 + kp]), bv);
                }
            }
            for (int t = 0; t < 16; t++) _mm512_storeu_ps(c + (size_t)t * ldc, r[t]);
        }
}

/* C = alpha op(A) op(B) + beta C. The operand with fewer rows / columns (padded to 32), the
 * shared one, is packed whole once, all threads helping; the other, the streamed one, is split
 * into one contiguous range per thread (32 rows / columns the unit, so the halves of a 2-thread
 * run differ by at most 32) and each thread packs its own range, WMAX at a time and K chunk by
 * chunk, right before it multiplies it by the shared operand: nothing of it is written to
 * memory and read back, no thread waits for another after the shared packing, and a big
 * streamed operand (an im2col matrix of a 512 px VAE layer is 1.2 GB in fp32) never exists whole.
 * Every element of C is summed over k in the same order (k blocks ascending, VDPBF16PS / TDPBF16PS
 * pairs within), from zero, whichever thread computes it: the bytes do not depend on the thread
 * count. */
static void gemm_bf16_x86(int M, int N, int K, float alpha, const mat_t *a, const bsrc_t *b, float beta, float *C,
                          int ldc, int use_amx) {
    const int KB = (K + 31) / 32, Mp = round_up(M, 32), Np = round_up(N, 32);
    const int stream_b = N >= M;
    const int S = stream_b ? Mp : Np, L = stream_b ? Np : Mp;   /* shared and streamed extents */
    const int units = L / 32;
    const long stiles = (long)S / 16 * KB;
    /* Packing order: k blocks of one row / column of tiles in turn when the operand's memory runs
     * along k, else the tiles of one k block in turn (*_across: a transposed A, a plain B, an
     * image), so that rows are read from start to end, not 32 B of each of a thousand rows and
     * the next 32 B of them later. */
    const int a_across = a->trans, b_across = b->img || !b->m.trans;
    const int s_across = stream_b ? a_across : b_across, l_across = stream_b ? b_across : a_across;
    scratch_mark_t mark = scratch_mark();
    /* bf16 buffers in float units (two bf16 per float) */
    uint16_t *Sp = (uint16_t *)scratch_floats((size_t)stiles * TILE_ELEMS / 2);
#pragma omp parallel if (!omp_in_parallel() && units >= 2)
    {
#pragma omp for schedule(static)
        for (long t = 0; t < stiles; t++) {   /* shared tile (s, kb) at Sp[(s*KB + kb) * TILE_ELEMS] */
            const int s = (int)(s_across ? t % (S / 16) : t / KB), kb = (int)(s_across ? t / (S / 16) : t % KB);
            uint16_t *dst = Sp + ((size_t)s * KB + kb) * TILE_ELEMS;
            if (stream_b) pack_a_tile(dst, a, M, K, s * 16, kb * 32);
            else pack_b_any(dst, b, K, N, kb * 32, s * 16);
        }
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        const int l_lo = (int)((long)units * id / nt) * 32, l_hi = (int)((long)units * (id + 1) / nt) * 32;
        scratch_mark_t tmark = scratch_mark();
        /* this thread's slice of the streamed operand: tile (l, kb - kb0) at Lp[(l*nkb + kb - kb0) * TILE_ELEMS] */
        uint16_t *Lp = (uint16_t *)scratch_floats((size_t)WMAX / 16 * KCB * TILE_ELEMS / 2);
        float *acc = scratch_floats((size_t)WMAX * S);   /* the C block of a step, row-major */
        if (use_amx) amx_config();
        for (int w0 = l_lo; w0 < l_hi; w0 += WMAX) {
            const int w = l_hi - w0 < WMAX ? l_hi - w0 : WMAX;
            const int ldacc = stream_b ? w : S;   /* acc: stream_b ? [Mp rows, w cols] : [w rows, Np cols] */
            for (int kb0 = 0; kb0 < KB; kb0 += KCB) {
                const int nkb = KB - kb0 < KCB ? KB - kb0 : KCB;
                for (int i = 0; i < w / 16 * nkb; i++) {
                    const int l = l_across ? i % (w / 16) : i / nkb, kb = kb0 + (l_across ? i / (w / 16) : i % nkb);
                    uint16_t *dst = Lp + ((size_t)l * nkb + kb - kb0) * TILE_ELEMS;
                    if (stream_b) pack_b_any(dst, b, K, N, kb * 32, w0 + l * 16);
                    else pack_a_tile(dst, a, M, K, w0 + l * 16, kb * 32);
                }
                for (int s0 = 0; s0 < S; s0 += 32) {
                    const uint16_t *s_0 = Sp + ((size_t)s0 / 16 * KB + kb0) * TILE_ELEMS, *s_1 = s_0 + (size_t)KB * TILE_ELEMS;
                    for (int l0 = 0; l0 < w; l0 += 32) {
                        const uint16_t *l_0 = Lp + (size_t)l0 / 16 * nkb * TILE_ELEMS, *l_1 = l_0 + (size_t)nkb * TILE_ELEMS;
                        float *c = stream_b ? acc + (size_t)s0 * ldacc + l0 : acc + (size_t)l0 * ldacc + s0;
                        const uint16_t *a0 = stream_b ? s_0 : l_0, *a1 = stream_b ? s_1 : l_1;
                        const uint16_t *b0 = stream_b ? l_0 : s_0, *b1 = stream_b ? l_1 : s_1;
                        const int mrem = M - (stream_b ? s0 : w0 + l0), nrem = N - (stream_b ? w0 + l0 : s0);
                        if (use_amx) amx_block(c, ldacc, a0, a1, b0, b1, nkb, kb0 == 0);
                        else avx512_block(c, ldacc, a0, a1, b0, b1, nkb, kb0 == 0, mrem > 16 ? 2 : 1, nrem > 16 ? 2 : 1);
                    }
                }
            }
            /* C = alpha acc + beta C over the valid part (beta 0: C is not read, may be garbage) */
            const int m0 = stream_b ? 0 : w0, n0 = stream_b ? w0 : 0;
            const int mv = stream_b ? M : (M - w0 < w ? M - w0 : w), nv = stream_b ? (N - w0 < w ? N - w0 : w) : N;
            for (int i = 0; i < mv; i++) {
                float *crow = C + (size_t)(m0 + i) * ldc + n0;
                const float *arow = acc + (size_t)i * ldacc;
                if (beta == 0.0f)
                    for (int j = 0; j < nv; j++) crow[j] = alpha * arow[j];
                else
                    for (int j = 0; j < nv; j++) crow[j] = alpha * arow[j] + beta * crow[j];
            }
        }
        if (use_amx) amx_release();
        scratch_release(tmark);
    }
    scratch_release(mark);
}
#endif /* SD_HAVE_X86_BF16 */

void gemm_bf16(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
               const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    const int k = kernel();
#ifdef SD_HAVE_X86_BF16
    if (k != KERNEL_NONE && K > 0) {
        const mat_t as = {.f = A, .ld = lda, .trans = ta != CblasNoTrans};
        const bsrc_t bs = {.m = {.f = B, .ld = ldb, .trans = tb != CblasNoTrans}};
        gemm_bf16_x86(M, N, K, alpha, &as, &bs, beta, C, ldc, k == KERNEL_AMX);
        return;
    }
#endif
    (void)k;
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

int sd_gemm_uses_bf16(int M, int N, int K) {
    return sd_compute_dtype() == SD_COMPUTE_BF16 && M >= 16 && N >= 16 && K > 0 && (double)M * N * K >= (double)(1 << 18);
}

void gemm_bf16_im2col(int M, float alpha, const float *A, int lda, const float *img, const conv2d_shape_t *s,
                      float beta, float *C) {
#ifdef SD_HAVE_X86_BF16
    const int K = s->IC * s->KH * s->KW, N = conv2d_out_h(s) * conv2d_out_w(s);
    if (kernel() != KERNEL_NONE) {
        const mat_t as = {.f = A, .ld = lda};
        const bsrc_t bs = {.img = img, .cs = s};
        gemm_bf16_x86(M, N, K, alpha, &as, &bs, beta, C, N, kernel() == KERNEL_AMX);
        return;
    }
#endif
    SD_CHECK(0, "gemm_bf16_im2col needs a bf16 kernel (check sd_gemm_uses_bf16 first)");
}

void gemm_bf16h(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha, const float *A,
                const uint16_t *Ah, int lda, const float *B, const uint16_t *Bh, int ldb, float beta, float *C,
                int ldc) {
    SD_CHECK(!A != !Ah && !B != !Bh, "gemm_bf16h takes each operand in exactly one dtype");
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {   /* C = beta C (beta 0: C is only written) */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
        return;
    }
#ifdef SD_HAVE_X86_BF16
    if (kernel() != KERNEL_NONE) {
        const mat_t as = {.f = A, .h = Ah, .ld = lda, .trans = ta != CblasNoTrans};
        const bsrc_t bs = {.m = {.f = B, .h = Bh, .ld = ldb, .trans = tb != CblasNoTrans}};
        gemm_bf16_x86(M, N, K, alpha, &as, &bs, beta, C, ldc, kernel() == KERNEL_AMX);
        return;
    }
#endif
    SD_CHECK(0, "gemm_bf16h needs a bf16 kernel (operands are only stored in bf16 when there is one)");
}

void gemm_bf16h_im2col(int M, float alpha, const uint16_t *Ah, int lda, const float *img, const conv2d_shape_t *s,
                       float beta, float *C) {
#ifdef SD_HAVE_X86_BF16
    const int K = s->IC * s->KH * s->KW, N = conv2d_out_h(s) * conv2d_out_w(s);
    if (kernel() != KERNEL_NONE) {
        const mat_t as = {.h = Ah, .ld = lda};
        const bsrc_t bs = {.img = img, .cs = s};
        gemm_bf16_x86(M, N, K, alpha, &as, &bs, beta, C, N, kernel() == KERNEL_AMX);
        return;
    }
#endif
    SD_CHECK(0, "gemm_bf16h_im2col needs a bf16 kernel");
}

void sd_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
             const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (sd_gemm_uses_bf16(M, N, K))
        gemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else
        cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
