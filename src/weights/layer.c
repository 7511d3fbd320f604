/* Layer states and the layer registry (layer.h). */
#include "weights/layer.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"

layer_state_t layer_state(const weight_t *w) {
    if (w->kind == WEIGHT_SPECTRAL) return LAYER_STATE_SPECTRAL;
    if (w->kind == WEIGHT_LORA) return LAYER_STATE_LORA;
    return w->baked ? LAYER_STATE_DELTA : LAYER_STATE_DENSE;
}

const char *layer_state_name(layer_state_t s) {
    static const char *const names[4] = {"dense", "spectral", "lora", "delta"};
    return (unsigned)s < 4 ? names[s] : "?";
}

static layer_spec_t *grow(layer_registry_t *r) {
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 64;
        layer_spec_t *v = realloc(r->v, sizeof *v * (size_t)r->cap);
        SD_CHECK(v, "out of memory");
        r->v = v;
    }
    return &r->v[r->n++];
}

void layer_registry_append(layer_registry_t *r, const layer_spec_t *s) { *grow(r) = *s; }

layer_spec_t *layer_registry_add(layer_registry_t *r, layer_kind_t kind, int out, int in, int k, int bias,
                                 const char *fmt, ...) {
    layer_spec_t *s = grow(r);
    memset(s, 0, sizeof *s);
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    SD_CHECK(len >= 0 && len < (int)sizeof s->name, "layer name too long: %s", s->name);
    s->kind = kind, s->out = out, s->in = in, s->k = k, s->bias = bias || kind == LAYER_NORM;
    return s;
}

void layer_registry_free(layer_registry_t *r) {
    free(r->v);
    memset(r, 0, sizeof *r);
}

const layer_spec_t *layer_registry_find(const layer_registry_t *r, const char *name) {
    for (int i = 0; i < r->n; i++)
        if (!strcmp(r->v[i].name, name)) return &r->v[i];
    return NULL;
}

int layer_registry_tensors(const layer_registry_t *r, layer_tensor_fn fn, void *ctx) {
    char name[LAYER_NAME_MAX + 8];
    for (int i = 0; i < r->n; i++) {
        const layer_spec_t *s = &r->v[i];
        int64_t shape[4] = {s->out, s->in, s->k, s->k};
        int ndim = s->kind == LAYER_CONV ? 4 : s->kind == LAYER_NORM ? 1 : 2;
        snprintf(name, sizeof name, "%s.weight", s->name);
        int rc = fn(ctx, s, 0, name, ndim, shape);
        if (!rc && s->bias) {
            snprintf(name, sizeof name, "%s.bias", s->name);
            rc = fn(ctx, s, 1, name, 1, shape);
        }
        if (rc) return rc;
    }
    return 0;
}
