/* LDM (CompVis / Stability single-file) names -> diffusers / transformers names: fixed renames
 * in small tables, block indices by arithmetic on layers_per_block (UNet) and the level count
 * (VAE decoder, stored in reverse). Unknown keys come back as NAMES_UNKNOWN so the loader can
 * name them; the loader's shape validation catches anything that maps but does not belong. */
#include "io/names.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const char *from, *to;
} rename_t;

/* UNet names outside the numbered blocks. */
static const rename_t UNET_FIXED[] = {
    {"time_embed.0.", "time_embedding.linear_1."},
    {"time_embed.2.", "time_embedding.linear_2."},
    {"label_emb.0.0.", "add_embedding.linear_1."},   /* SDXL's text_time embedding */
    {"label_emb.0.2.", "add_embedding.linear_2."},
    {"input_blocks.0.0.", "conv_in."},
    {"out.0.", "conv_norm_out."},
    {"out.2.", "conv_out."},
};
/* Inside a UNet ResBlock (ldm/modules/diffusionmodules/openaimodel.py -> ResnetBlock2D). */
static const rename_t UNET_RESNET[] = {
    {"in_layers.0.", "norm1."},       {"in_layers.2.", "conv1."},
    {"emb_layers.1.", "time_emb_proj."}, {"out_layers.0.", "norm2."},
    {"out_layers.3.", "conv2."},      {"skip_connection.", "conv_shortcut."},
};
/* SpatialTransformer and Transformer2DModel share their inner names. */
static const char *const TRANSFORMER_PARTS[] = {"norm.", "proj_in.", "proj_out.", "transformer_blocks."};

static const rename_t VAE_FIXED[] = {
    {"encoder.conv_in.", "encoder.conv_in."},   {"encoder.conv_out.", "encoder.conv_out."},
    {"encoder.norm_out.", "encoder.conv_norm_out."},
    {"decoder.conv_in.", "decoder.conv_in."},   {"decoder.conv_out.", "decoder.conv_out."},
    {"decoder.norm_out.", "decoder.conv_norm_out."},
    {"quant_conv.", "quant_conv."},             {"post_quant_conv.", "post_quant_conv."},
};
static const rename_t VAE_RESNET[] = {
    {"norm1.", "norm1."}, {"conv1.", "conv1."}, {"norm2.", "norm2."}, {"conv2.", "conv2."},
    {"nin_shortcut.", "conv_shortcut."},
};
/* VAE mid attention: q/k/v/proj_out are 1x1 convs in LDM files, linears in diffusers. */
static const rename_t VAE_ATTN[] = {
    {"norm.", "group_norm."}, {"q.", "to_q."}, {"k.", "to_k."}, {"v.", "to_v."},
    {"proj_out.", "to_out.0."},
};

/* OpenCLIP resblock parts (the fused in_proj is handled apart). */
static const rename_t OPENCLIP_LAYER[] = {
    {"ln_1.", "layer_norm1."}, {"ln_2.", "layer_norm2."}, {"attn.out_proj.", "self_attn.out_proj."},
    {"mlp.c_fc.", "mlp.fc1."}, {"mlp.c_proj.", "mlp.fc2."},
};

/* Training-time buffers of LatentDiffusion (DDPM schedule, learned logvar). */
static const char *const LDM_BUFFERS[] = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights",
};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

static const char *after(const char *s, const char *prefix) {
    size_t n = strlen(prefix);
    return strncmp(s, prefix, n) == 0 ? s + n : NULL;
}

/* "12.rest" -> 12 and "rest"; NULL unless digits then a dot. */
static const char *number(const char *s, int *v) {
    if (!s || !isdigit((unsigned char)*s)) return NULL;
    long x = 0;
    while (isdigit((unsigned char)*s)) {
        x = 10 * x + (*s++ - '0');
        if (x > 1000000) return NULL;
    }
    if (*s != '.') return NULL;
    *v = (int)x;
    return s + 1;
}

static int is_leaf(const char *s) { return s && (!strcmp(s, "weight") || !strcmp(s, "bias")); }

static void put(names_map_t *m, names_target_t t, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void put(names_map_t *m, names_target_t t, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(m->name[m->n], NAMES_MAX, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= NAMES_MAX) {   /* too long to be a real name */
        m->target = NAMES_UNKNOWN;
        m->n = 0;
        return;
    }
    m->target = t;
    m->n++;
}

/* tail "X.weight" through a rename table: returns the entry and sets *leaf, or NULL. */
static const rename_t *table_match(const rename_t *tab, int n, const char *s, const char **leaf) {
    for (int i = 0; i < n; i++) {
        const char *r = after(s, tab[i].from);
        if (is_leaf(r)) {
            *leaf = r;
            return &tab[i];
        }
    }
    return NULL;
}

static int transformer_part(const char *s) {
    for (int i = 0; i < COUNT(TRANSFORMER_PARTS); i++)
        if (after(s, TRANSFORMER_PARTS[i])) return 1;
    return 0;
}

static void unet_resnet(names_map_t *m, const char *dst, const char *tail) {
    const char *leaf;
    const rename_t *r = table_match(UNET_RESNET, COUNT(UNET_RESNET), tail, &leaf);
    if (r) put(m, NAMES_UNET, "%s.%s%s", dst, r->to, leaf);
}

static void map_unet(names_map_t *m, const char *s, const names_geom_t *g) {
    const char *leaf, *r;
    const rename_t *fx = table_match(UNET_FIXED, COUNT(UNET_FIXED), s, &leaf);
    if (fx) {
        put(m, NAMES_UNET, "%s%s", fx->to, leaf);
        return;
    }
    int k, part, per = g->unet_layers_per_block + 1;
    char dst[NAMES_MAX];
    if (g->unet_layers_per_block < 1) return;
    if ((r = number(after(s, "input_blocks."), &k)) && k >= 1 && (r = number(r, &part))) {
        int level = (k - 1) / per, j = (k - 1) % per;
        if (j == per - 1) {   /* the level's downsampler slot */
            const char *lf = after(r, "op.");
            if (part == 0 && is_leaf(lf))
                put(m, NAMES_UNET, "down_blocks.%d.downsamplers.0.conv.%s", level, lf);
            return;
        }
        if (part == 0) {
            snprintf(dst, sizeof dst, "down_blocks.%d.resnets.%d", level, j);
            unet_resnet(m, dst, r);
        } else if (part == 1 && transformer_part(r)) {
            put(m, NAMES_UNET, "down_blocks.%d.attentions.%d.%s", level, j, r);
        }
    } else if ((r = number(after(s, "middle_block."), &part))) {
        if (part == 0 || part == 2) {
            snprintf(dst, sizeof dst, "mid_block.resnets.%d", part / 2);
            unet_resnet(m, dst, r);
        } else if (part == 1 && transformer_part(r)) {
            put(m, NAMES_UNET, "mid_block.attentions.0.%s", r);
        }
    } else if ((r = number(after(s, "output_blocks."), &k)) && (r = number(r, &part))) {
        int level = k / per, j = k % per;
        const char *lf = after(r, "conv.");
        if (part == 0) {
            snprintf(dst, sizeof dst, "up_blocks.%d.resnets.%d", level, j);
            unet_resnet(m, dst, r);
        } else if ((part == 1 || part == 2) && is_leaf(lf)) {
            /* the upsampler follows the resnet (and the attention, if any) of the level's last slot */
            if (j == per - 1) put(m, NAMES_UNET, "up_blocks.%d.upsamplers.0.conv.%s", level, lf);
        } else if (part == 1 && transformer_part(r)) {
            put(m, NAMES_UNET, "up_blocks.%d.attentions.%d.%s", level, j, r);
        }
    }
}

static void vae_resnet(names_map_t *m, const char *dst, const char *tail) {
    const char *leaf;
    const rename_t *r = table_match(VAE_RESNET, COUNT(VAE_RESNET), tail, &leaf);
    if (r) put(m, NAMES_VAE, "%s.%s%s", dst, r->to, leaf);
}

static void map_vae(names_map_t *m, const char *s, const names_geom_t *g) {
    const char *leaf, *r;
    if (after(s, "loss.")) {   /* the autoencoder's training loss (LPIPS, discriminator) */
        m->target = NAMES_IGNORE;
        return;
    }
    const rename_t *fx = table_match(VAE_FIXED, COUNT(VAE_FIXED), s, &leaf);
    if (fx) {
        put(m, NAMES_VAE, "%s%s", fx->to, leaf);
        return;
    }
    const char *side = after(s, "encoder.") ? "encoder" : after(s, "decoder.") ? "decoder" : NULL;
    if (!side) return;
    s += strlen(side) + 1;
    int k, j;
    char dst[NAMES_MAX];
    if ((r = after(s, "mid.block_1.")) || (r = after(s, "mid.block_2."))) {
        snprintf(dst, sizeof dst, "%s.mid_block.resnets.%d", side, r[-2] - '1');
        vae_resnet(m, dst, r);
    } else if ((r = after(s, "mid.attn_1."))) {
        const rename_t *a = table_match(VAE_ATTN, COUNT(VAE_ATTN), r, &leaf);
        if (!a) return;
        put(m, NAMES_VAE, "%s.mid_block.attentions.0.%s%s", side, a->to, leaf);
        if (strcmp(a->from, "norm.") != 0 && !strcmp(leaf, "weight")) m->xform = NAMES_SQUEEZE;
    } else if (!strcmp(side, "encoder") && (r = number(after(s, "down."), &k))) {
        const char *rr;
        if ((rr = number(after(r, "block."), &j)) != NULL) {
            snprintf(dst, sizeof dst, "encoder.down_blocks.%d.resnets.%d", k, j);
            vae_resnet(m, dst, rr);
        } else if (is_leaf(rr = after(r, "downsample.conv."))) {
            put(m, NAMES_VAE, "encoder.down_blocks.%d.downsamplers.0.conv.%s", k, rr);
        }
    } else if (!strcmp(side, "decoder") && (r = number(after(s, "up."), &k)) && k < g->vae_levels) {
        int level = g->vae_levels - 1 - k;   /* LDM numbers decoder levels from the bottom */
        const char *rr;
        if ((rr = number(after(r, "block."), &j)) != NULL) {
            snprintf(dst, sizeof dst, "decoder.up_blocks.%d.resnets.%d", level, j);
            vae_resnet(m, dst, rr);
        } else if (is_leaf(rr = after(r, "upsample.conv."))) {
            put(m, NAMES_VAE, "decoder.up_blocks.%d.upsamplers.0.conv.%s", level, rr);
        }
    }
}

static void map_clip(names_map_t *m, const char *s) {
    size_t n = strlen(s);
    if (n >= 12 && !strcmp(s + n - 12, "position_ids")) {   /* transformers' int64 buffer */
        m->target = NAMES_IGNORE;
        return;
    }
    if (after(s, "text_model."))
        put(m, NAMES_TEXT, "%s", s);
    else if (after(s, "embeddings.") || after(s, "encoder.") || after(s, "final_layer_norm."))
        put(m, NAMES_TEXT, "text_model.%s", s);   /* older transformers without the text_model level */
}

/* OpenCLIP text tower -> CLIPTextModel names. sdxl: SDXL's second encoder (target NAMES_TEXT2),
 * which keeps every layer and its text_projection (CLIPTextModelWithProjection); SD 2 drops both. */
static void map_openclip(names_map_t *m, const char *s, const names_geom_t *g, int sdxl) {
    const char *leaf, *r;
    const names_target_t to = sdxl ? NAMES_TEXT2 : NAMES_TEXT;
    const int layers = sdxl ? g->openclip2_layers : g->openclip_layers;
    int k;
    if (!strcmp(s, "token_embedding.weight")) {
        put(m, to, "text_model.embeddings.token_embedding.weight");
    } else if (!strcmp(s, "positional_embedding")) {
        put(m, to, "text_model.embeddings.position_embedding.weight");
    } else if (is_leaf(r = after(s, "ln_final."))) {
        put(m, to, "text_model.final_layer_norm.%s", r);
    } else if (sdxl && !strcmp(s, "text_projection")) {
        put(m, to, "text_projection.weight");   /* stored [hidden, projection]: x @ P */
        m->xform = NAMES_TRANSPOSE;
    } else if (!strcmp(s, "text_projection") || !strcmp(s, "logit_scale") || !strcmp(s, "attn_mask")) {
        m->target = NAMES_IGNORE;   /* CLIP's contrastive head: SD uses the hidden states */
    } else if ((r = number(after(s, "transformer.resblocks."), &k)) && k < layers) {
        if (!sdxl && k == layers - 1) {
            m->target = NAMES_IGNORE;   /* SD 2 conditions on the penultimate layer */
            return;
        }
        const rename_t *t = table_match(OPENCLIP_LAYER, COUNT(OPENCLIP_LAYER), r, &leaf);
        if (t) {
            put(m, to, "text_model.encoder.layers.%d.%s%s", k, t->to, leaf);
        } else if (!strcmp(r, "attn.in_proj_weight") || !strcmp(r, "attn.in_proj_bias")) {
            const char *what = strcmp(r, "attn.in_proj_weight") == 0 ? "weight" : "bias";
            for (int q = 0; q < 3; q++)
                put(m, to, "text_model.encoder.layers.%d.self_attn.%c_proj.%s", k, "qkv"[q], what);
            if (m->n == 3) m->xform = NAMES_SPLIT_QKV;
        }
    }
}

void names_ldm_to_diffusers(names_map_t *out, const char *ldm, const names_geom_t *g) {
    memset(out, 0, sizeof *out);
    const char *r;
    if ((r = after(ldm, "model.diffusion_model.")))
        map_unet(out, r, g);
    else if ((r = after(ldm, "first_stage_model.")))
        map_vae(out, r, g);
    else if ((r = after(ldm, "cond_stage_model.transformer.")))
        map_clip(out, r);
    else if ((r = after(ldm, "cond_stage_model.model.")))
        map_openclip(out, r, g, 0);
    else if ((r = after(ldm, "conditioner.embedders.0.transformer.")))
        map_clip(out, r);
    else if ((r = after(ldm, "conditioner.embedders.1.model.")))
        map_openclip(out, r, g, 1);
    else if (after(ldm, "model_ema.") || after(ldm, "denoiser."))
        /* EMA copy of the UNet (flattened names); sgm's denoiser buffers (its sigmas) */
        out->target = NAMES_IGNORE;   /* EMA copy of the UNet (flattened names) */
    else
        for (int i = 0; i < COUNT(LDM_BUFFERS); i++)
            if (!strcmp(ldm, LDM_BUFFERS[i])) out->target = NAMES_IGNORE;
    if (out->target == NAMES_UNKNOWN) out->n = 0;
}

void names_ldm_geometry(names_geom_t *g, const st_set_t *s) {
    memset(g, 0, sizeof *g);
    int first_op = -1, max_input = -1, max_up = -1, max_res = -1, max_res2 = -1, k, part;
    for (int i = 0; i < s->n_tensors; i++) {
        const char *name = s->tensors[i]->name, *r;
        if ((r = number(after(name, "model.diffusion_model.input_blocks."), &k))) {
            if (k > max_input) max_input = k;
            if ((r = number(r, &part)) && part == 0 && after(r, "op.") && (first_op < 0 || k < first_op))
                first_op = k;
        } else if (number(after(name, "first_stage_model.decoder.up."), &k)) {
            if (k > max_up) max_up = k;
        } else if (number(after(name, "cond_stage_model.model.transformer.resblocks."), &k)) {
            if (k > max_res) max_res = k;
        } else if (number(after(name, "conditioner.embedders.1.model.transformer.resblocks."), &k)) {
            if (k > max_res2) max_res2 = k;
        }
    }
    /* input_blocks: 0 = conv_in, then per level lpb resnets and (but the last level) a downsampler */
    g->unet_layers_per_block = first_op > 0 ? first_op - 1 : max_input > 0 ? max_input : 0;
    g->vae_levels = max_up + 1;
    g->openclip_layers = max_res + 1;
    g->openclip2_layers = max_res2 + 1;
}
