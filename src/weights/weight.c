/* Weight kinds (see weight.h): dense base in its stored dtype, or spectral with shifts;
 * dispatch of linear / conv / embedding through whichever kind a layer holds. */
#include "weights/weight.h"

#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/scratch.h"

weight_t weight_dense(const void *data, st_dtype_t dtype, int rows, int cols) {
    SD_CHECK(dtype == ST_F32 || dtype == ST_F16 || dtype == ST_BF16,
             "weight_dense: dtype %s is not a float type", st_dtype_name(dtype));
    weight_t w = {.kind = WEIGHT_DENSE, .rows = rows, .cols = cols, .dtype = dtype, .data = data};
    return w;
}

const float *weight_base_f32(const weight_t *w) {
    if (!w->data) return NULL;
    if (w->dtype == ST_F32) return w->data;
    float *f = scratch_floats((size_t)w->rows * w->cols);
    st_to_f32(f, w->data, w->dtype, (size_t)w->rows * w->cols);
    return f;
}

int weight_make_spectral(weight_t *w, int keep_base) {
    SD_CHECK(w->kind == WEIGHT_DENSE && w->data, "weight_make_spectral needs a dense weight with data");
    scratch_mark_t mark = scratch_mark();
    const float *W = weight_base_f32(w);
    spectral_t *sp = sd_xcalloc(1, sizeof *sp);
    int rc = spectral_init(sp, W, w->rows, w->cols);
    scratch_release(mark);
    if (rc) {
        free(sp);
        return rc;
    }
    w->kind = WEIGHT_SPECTRAL;
    w->sp = sp;
    if (!keep_base) w->data = NULL;
    free(w->baked);
    w->baked = NULL;
    return SD_OK;
}

int weight_make_spectral_many(weight_t *const *w, int n, int keep_base) {
    for (int j = 0; j < n; j++)
        SD_CHECK(w[j]->kind == WEIGHT_DENSE && w[j]->data, "weight_make_spectral_many needs dense weights with data");
    int *rc = sd_xcalloc((size_t)(n > 0 ? n : 1), sizeof *rc);
    char (*msg)[256] = sd_xcalloc((size_t)(n > 0 ? n : 1), sizeof *msg);
    /* One single-threaded SVD per thread. sgesdd's bidiagonal reduction is thousands of small
     * matrix-vector products. With threads inside one SVD, each product wakes the other threads
     * from the passive wait sd_runtime_init sets: a 1280 x 1280 matrix took 1.06 s on 2 threads
     * and 0.42 s on 1 (bench/README.md, "One-time SVD against PyTorch"). Inside the parallel loop
     * OpenBLAS runs each call on the calling thread, so a matrix's factors are the same bytes
     * however many threads there are and whichever one takes it. Largest first, dynamic: the
     * small ones fill in behind the big ones. */
    int *order = sd_xmalloc(sizeof *order * (size_t)(n > 0 ? n : 1));
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++) {   /* insertion sort by size, descending, stable */
        const int k = order[i];
        const double sz = (double)w[k]->rows * w[k]->cols;
        int j = i;
        for (; j > 0 && (double)w[order[j - 1]]->rows * w[order[j - 1]]->cols < sz; j--) order[j] = order[j - 1];
        order[j] = k;
    }
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
    for (int j = 0; j < n; j++) {
        const int i = order[j];
        rc[i] = weight_make_spectral(w[i], keep_base);
        if (rc[i]) {   /* the message is this thread's: keep it for the caller's thread */
            snprintf(msg[i], sizeof msg[i], "%s", sd_last_error());
            sd_clear_error();
        }
    }
    int first = -1;
    for (int i = 0; i < n && first < 0; i++)
        if (rc[i]) first = i;
    const int out = first < 0 ? SD_OK : sd_error(rc[first], "%s", msg[first]);
    free(order), free(rc), free(msg);
    return out;
}

void weight_make_spectral_from(weight_t *w, const float *U, const float *S, const float *Vt, int rank,
                               int keep_base) {
    SD_CHECK(w->kind == WEIGHT_DENSE, "weight_make_spectral_from needs a dense weight");
    spectral_t *sp = sd_xcalloc(1, sizeof *sp);
    spectral_init_factors(sp, U, S, Vt, w->rows, w->cols, rank);
    w->kind = WEIGHT_SPECTRAL;
    w->sp = sp;
    if (!keep_base) w->data = NULL;
    free(w->baked);
    w->baked = NULL;
}

void weight_free(weight_t *w) {
    if (w->sp) spectral_free(w->sp), free(w->sp);
    if (w->lora) lora_free(w->lora), free(w->lora);
    w->lora = NULL;
    free(w->baked);
    w->sp = NULL, w->baked = NULL;
}

int weight_shift_count(const weight_t *w) {
    if (w->kind == WEIGHT_LORA) return (int)lora_numel(w->lora);
    return w->kind == WEIGHT_SPECTRAL ? w->sp->rank : 0;
}

/* Effective matrix into `dst` [rows, cols]. */
static void effective_into(float *dst, const weight_t *w) {
    if (w->kind == WEIGHT_DENSE) {
        if (w->dtype == ST_F32) memcpy(dst, w->data, sizeof(float) * w->rows * w->cols);
        else st_to_f32(dst, w->data, w->dtype, (size_t)w->rows * w->cols);
        return;
    }
    if (w->kind == WEIGHT_LORA) {   /* W + s B A */
        if (w->dtype == ST_F32) memcpy(dst, w->data, sizeof(float) * w->rows * w->cols);
        else st_to_f32(dst, w->data, w->dtype, (size_t)w->rows * w->cols);
        lora_merge(dst, w->lora, 1.0f);
        return;
    }
    scratch_mark_t mark = scratch_mark();
    spectral_bake(dst, weight_base_f32(w), w->sp);
    scratch_release(mark);
}

void weight_bake(weight_t *w) {
    if (!w->baked) w->baked = sd_xmalloc(sizeof(float) * w->rows * w->cols);
    effective_into(w->baked, w);
}

const float *weight_effective_f32(const weight_t *w, long N) {
    if (w->baked) return w->baked;
    if (w->kind == WEIGHT_DENSE) return weight_base_f32(w);
    if (w->kind == WEIGHT_SPECTRAL && !spectral_prefer_baked(w->sp, N, w->data != NULL)) return NULL;
    float *f = scratch_floats((size_t)w->rows * w->cols);
    effective_into(f, w);
    return f;
}

void weight_linear_forward(float *out, const float *inp, const weight_t *w, const float *bias, int N) {
    scratch_mark_t mark = scratch_mark();
    if (w->kind == WEIGHT_LORA && !w->baked) {   /* through the factors (training form) */
        lora_linear_forward(out, inp, weight_base_f32(w), w->lora, bias, N);
        scratch_release(mark);
        return;
    }
    const float *Weff = weight_effective_f32(w, N);
    if (Weff)
        linear_forward(out, inp, Weff, bias, N, w->cols, w->rows);
    else
        spectral_linear_forward(out, inp, weight_base_f32(w), w->sp, NULL, bias, N);
    scratch_release(mark);
}

void weight_linear_backward(float *dinp, float *dparam, float *dbias, const float *dout,
                            const float *inp, const weight_t *w, int N) {
    scratch_mark_t mark = scratch_mark();
    if (w->kind == WEIGHT_LORA) {   /* dparam = [dA; dB] */
        lora_linear_backward(dinp, dparam, dbias, dout, inp, dinp ? weight_base_f32(w) : NULL, w->lora, N);
    } else if (w->kind == WEIGHT_DENSE) {
        linear_backward(dinp, dparam, dbias, dout, inp, dinp ? weight_base_f32(w) : NULL, N, w->cols, w->rows);
    } else {
        /* dinp through the baked matrix when that is cheaper; d(delta) always factored. */
        const float *Weff = dinp ? weight_effective_f32(w, N) : NULL;
        spectral_linear_backward(dinp, dparam, dbias, dout, inp, Weff ? NULL : weight_base_f32(w), w->sp, Weff, N);
    }
    scratch_release(mark);
}

void weight_conv2d_forward(float *out, const float *inp, const weight_t *w, const float *bias,
                           const conv2d_shape_t *s) {
    SD_CHECK(w->rows == s->OC && w->cols == s->IC * s->KH * s->KW, "conv weight %dx%d vs shape %dx%dx%dx%d",
             w->rows, w->cols, s->OC, s->IC, s->KH, s->KW);
    scratch_mark_t mark = scratch_mark();
    const long N = (long)s->B * conv2d_out_h(s) * conv2d_out_w(s);
    if (w->kind == WEIGHT_LORA && !w->baked) {
        lora_conv2d_forward(out, inp, weight_base_f32(w), w->lora, bias, s);
        scratch_release(mark);
        return;
    }
    const float *Weff = weight_effective_f32(w, N);
    if (Weff)
        conv2d_forward(out, inp, Weff, bias, s);
    else
        spectral_conv2d_forward(out, inp, weight_base_f32(w), w->sp, NULL, bias, s);
    scratch_release(mark);
}

void weight_conv2d_backward(float *dinp, float *dparam, float *dbias, const float *dout,
                            const float *inp, const weight_t *w, const conv2d_shape_t *s) {
    scratch_mark_t mark = scratch_mark();
    if (w->kind == WEIGHT_LORA) {
        lora_conv2d_backward(dinp, dparam, dbias, dout, inp, dinp ? weight_base_f32(w) : NULL, w->lora, s);
    } else if (w->kind == WEIGHT_DENSE) {
        conv2d_backward(dinp, dparam, dbias, dout, inp, dinp ? weight_base_f32(w) : NULL, s);
    } else {
        const long N = (long)s->B * conv2d_out_h(s) * conv2d_out_w(s);
        const float *Weff = dinp ? weight_effective_f32(w, N) : NULL;
        spectral_conv2d_backward(dinp, dparam, dbias, dout, inp, Weff ? NULL : weight_base_f32(w), w->sp, Weff, s);
    }
    scratch_release(mark);
}

/* One row of the base matrix as float. */
static void base_row(float *dst, const weight_t *w, int row) {
    const size_t off = (size_t)row * w->cols;
    if (w->dtype == ST_F32) memcpy(dst, (const float *)w->data + off, sizeof(float) * w->cols);
    else st_to_f32(dst, (const uint16_t *)w->data + off, w->dtype, (size_t)w->cols);
}

void weight_embedding_forward(float *out, const int *ids, const weight_t *w, int N) {
    for (int n = 0; n < N; n++)
        SD_CHECK(ids[n] >= 0 && ids[n] < w->rows, "embedding id %d outside [0, %d)", ids[n], w->rows);
    SD_CHECK(w->kind != WEIGHT_LORA || w->baked, "an embedding has no LoRA training form (bake it first)");
    if (w->baked || w->kind == WEIGHT_DENSE) {
        for (int n = 0; n < N; n++) {
            if (w->baked) memcpy(out + (size_t)n * w->cols, w->baked + (size_t)ids[n] * w->cols, sizeof(float) * w->cols);
            else base_row(out + (size_t)n * w->cols, w, ids[n]);
        }
        return;
    }
    /* row i of W_eff = [W_i +] (U_i * c) V^T: only the looked-up rows are formed */
    const spectral_t *sp = w->sp;
    scratch_mark_t mark = scratch_mark();
    float *c = scratch_floats(sp->rank), *uc = scratch_floats((size_t)N * sp->rank);
    spectral_coeffs(c, sp, w->data != NULL);
    for (int n = 0; n < N; n++) {
        if (w->data) base_row(out + (size_t)n * w->cols, w, ids[n]);
        for (int i = 0; i < sp->rank; i++) uc[(size_t)n * sp->rank + i] = sp->U[(size_t)ids[n] * sp->rank + i] * c[i];
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, w->cols, sp->rank, 1.0f, uc, sp->rank, sp->Vt,
                w->cols, w->data ? 1.0f : 0.0f, out, w->cols);
    scratch_release(mark);
}

void weight_embedding_backward(float *dparam, const float *dout, const int *ids, const weight_t *w, int N) {
    if (!dparam) return;
    if (w->kind == WEIGHT_DENSE) {
        for (int n = 0; n < N; n++) {
            float *row = dparam + (size_t)ids[n] * w->cols;
            for (int j = 0; j < w->cols; j++) row[j] += dout[(size_t)n * w->cols + j];
        }
        return;
    }
    /* d delta_i = s [sigma_i + s delta_i > 0] sum_n U[id_n, i] (V^T dout_n)_i */
    const spectral_t *sp = w->sp;
    scratch_mark_t mark = scratch_mark();
    float *g = scratch_floats((size_t)N * sp->rank);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, sp->rank, w->cols, 1.0f, dout, w->cols, sp->Vt,
                w->cols, 0.0f, g, sp->rank);
    for (int i = 0; i < sp->rank; i++) {
        if (!(sp->S[i] + sp->scale * sp->delta[i] > 0.0f)) continue;
        double acc = 0.0;
        for (int n = 0; n < N; n++) acc += (double)sp->U[(size_t)ids[n] * sp->rank + i] * g[(size_t)n * sp->rank + i];
        dparam[i] += (float)(sp->scale * acc);
    }
    scratch_release(mark);
}
