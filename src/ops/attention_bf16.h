/* Attention with bf16 products (attention_bf16.c): the contract of attention_forward /
 * attention_backward / attention_probs (ops.h), which take these when attention_bf16_applies(). */
#ifndef SVDIFF_OPS_ATTENTION_BF16_H
#define SVDIFF_OPS_ATTENTION_BF16_H

/* Is the compute dtype bf16, with a bf16 kernel, and the shape big enough to pay off? */
int attention_bf16_applies(int Tq, int Tk, int D);
void attention_forward_bf16(float *out, float *lse, const float *q, const float *k, const float *v,
                            int B, int Tq, int Tk, int H, int D, float scale, int causal);
void attention_backward_bf16(float *dq, float *dk, float *dv, const float *dout,
                             const float *q, const float *k, const float *v,
                             const float *out, const float *lse,
                             int B, int Tq, int Tk, int H, int D, float scale, int causal);
/* attention_probs (ops.h) with the scores the bf16 forward computes, for its lse. */
void attention_probs_bf16(float *probs, const float *q, const float *k, const float *lse,
                          int b, int h, int q0, int nq, int Tq, int Tk, int H, int D, float scale, int causal);

#endif
