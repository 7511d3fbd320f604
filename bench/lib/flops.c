#include "flops.h"

#include <string.h>

#include "weights/spectral.h"

/* walk_layers calls `layer` for every conv / linear the forward applies, with the number of
 * output positions n (pixels x batch or tokens) and whether the training backward needs that
 * layer's input gradient (not for conv_in, the time / added embeddings' first linear and the
 * context's to_k / to_v: their inputs are data), and `attn` for every attention with S queries
 * and Tk keys over D channels (heads together). */
typedef struct {
    void (*layer)(void *ctx, const layer_t *l, double n, int needs_dinp, int is_conv);
    void (*attn)(void *ctx, double B, double S, double Tk, double D);
    void *ctx;
} walk_t;

static void walk_layers(const walk_t *w, const unet_t *m, int B, int H, int W, int T) {
#define L(l, n, d, c) w->layer(w->ctx, (l), (double)(n), (d), (c))
    L(&m->time_linear_1, B, 0, 0), L(&m->time_linear_2, B, 1, 0);
    if (m->cfg.addition_text_time) L(&m->add_linear_1, B, 0, 0), L(&m->add_linear_2, B, 1, 0);
    for (int s = 0; s < m->n_stages; s++) {
        const unet_stage_t *st = &m->stages[s];
        const double S = (double)(H >> st->level) * (W >> st->level);
        const double So = (double)(H >> st->out_level) * (W >> st->out_level);
        switch (st->kind) {
        case UNET_STAGE_CONV_IN: L(&m->conv_in, B * S, 0, 1); break;
        case UNET_STAGE_OUT: L(&m->conv_out, B * S, 1, 1); break;
        case UNET_STAGE_DOWNSAMPLE:
        case UNET_STAGE_UPSAMPLE: L(&m->samplers[st->index], B * So, 1, 1); break;
        case UNET_STAGE_RESNET: {
            const unet_resnet_t *r = &m->resnets[st->index];
            L(&r->conv1, B * S, 1, 1), L(&r->conv2, B * S, 1, 1);
            if (r->has_shortcut) L(&r->conv_shortcut, B * S, 1, 1);
            L(&r->time_emb_proj, B, 1, 0);
            break;
        }
        case UNET_STAGE_TRANSFORMER: {
            const unet_transformer_t *t = &m->transformers[st->index];
            const double N = B * S;
            L(&t->proj_in, N, 1, 0), L(&t->proj_out, N, 1, 0);   /* counted as linears (1x1) */
            for (int i = 0; i < t->n_blocks; i++) {
                const unet_tblock_t *b = &t->blocks[i];
                L(&b->attn1.to_q, N, 1, 0), L(&b->attn1.to_k, N, 1, 0), L(&b->attn1.to_v, N, 1, 0);
                L(&b->attn1.to_out, N, 1, 0);
                L(&b->attn2.to_q, N, 1, 0), L(&b->attn2.to_k, (double)B * T, 0, 0);
                L(&b->attn2.to_v, (double)B * T, 0, 0), L(&b->attn2.to_out, N, 1, 0);
                L(&b->ff1, N, 1, 0), L(&b->ff2, N, 1, 0);
                w->attn(w->ctx, B, S, S, t->D);
                w->attn(w->ctx, B, S, T, t->D);
            }
            break;
        }
        }
    }
#undef L
}

/* Multiply-adds x 2 of a dense layer applied at n output positions. */
static double layer_flops(const layer_t *l, double n) { return 2.0 * n * l->out * (double)l->in * l->k * l->k; }

static void dense_layer(void *ctx, const layer_t *l, double n, int needs_dinp, int is_conv) {
    (void)needs_dinp;
    flops_t *f = ctx;
    *(is_conv ? &f->conv : &f->linear) += layer_flops(l, n);
}
static void dense_attn(void *ctx, double B, double S, double Tk, double D) {
    ((flops_t *)ctx)->attn += 4.0 * B * S * Tk * D;   /* QK^T and PV */
}

void count_flops(flops_t *f, const unet_t *m, int B, int H, int W, int T) {
    memset(f, 0, sizeof *f);
    const walk_t w = {dense_layer, dense_attn, f};
    walk_layers(&w, m, B, H, W, T);
}

double flops_total(const flops_t *f) { return f->conv + f->linear + f->attn; }

static void train_layer(void *ctx, const layer_t *l, double n, int needs_dinp, int is_conv) {
    (void)is_conv;
    train_flops_t *f = ctx;
    const int rows = l->out, cols = l->in * l->k * l->k;
    const spectral_t shape = {.rows = rows, .cols = cols, .rank = rows < cols ? rows : cols};
    const double r = shape.rank, bake = 2.0 * rows * r * cols, dense = 2.0 * n * rows * (double)cols;
    const int baked = spectral_prefer_baked(&shape, (long)n, 0);
    f->n_baked += baked, f->n_factored += !baked;
    f->fwd += baked ? bake + dense : 2.0 * n * r * (rows + cols);
    f->bake += baked ? bake * (needs_dinp ? 2 : 1) : 0.0;
    f->bwd += 2.0 * n * rows * r + 2.0 * n * r * cols;   /* g and z for d delta */
    if (needs_dinp) f->bwd += baked ? bake + dense : 2.0 * n * r * cols;
}
static void train_attn(void *ctx, double B, double S, double Tk, double D) {
    train_flops_t *f = ctx;
    f->attn_fwd += 4.0 * B * S * Tk * D;
    f->attn_bwd += 10.0 * B * S * Tk * D;
}

void count_train_flops(train_flops_t *f, const unet_t *m, int B, int H, int W, int T) {
    memset(f, 0, sizeof *f);
    const walk_t w = {train_layer, train_attn, f};
    walk_layers(&w, m, B, H, W, T);
}

double train_flops_total(const train_flops_t *f) { return f->fwd + f->bwd + f->attn_fwd + f->attn_bwd; }
