/* Every transformer block of a float32 decode step in one call: B sequences, one new token each.
 *
 * The same arithmetic as model/gpt.py's Block.forward, with the products, the cache write and the attention of
 * the other kernels; what this adds is that the whole step runs in one OpenMP region, one C call, instead of
 * ~25 torch operations and ~5 thread wake-ups per layer (about a fifth of a batch-1 step in Python, measured
 * in docs/BENCHMARKS.md). The residual additions and the GELU ride in the products' epilogues.
 */
#include <stdlib.h>

#include "kernels.h"

/* One block's weights: projections as model/cpu_kernels.py's `pack` lays them out; a NULL bias or LayerNorm shift
 * is a model without them. */
typedef struct {
    const float *ln1_w, *ln1_b, *qkv, *qkv_b, *proj, *proj_b, *ln2_w, *ln2_b, *fc, *fc_b, *out, *out_b;
} Block;

static void layer_norm(const float *x, int64_t C, const float *w, const float *b, float eps, float *out) {
    float mean = 0.0f, var = 0.0f;
    for (int64_t c = 0; c < C; c++) mean += x[c];
    mean /= (float)C;
    for (int64_t c = 0; c < C; c++) var += (x[c] - mean) * (x[c] - mean);
    float rstd = 1.0f / sqrtf(var / (float)C + eps);
    for (int64_t c = 0; c < C; c++) out[c] = (x[c] - mean) * rstd * w[c] + (b ? b[c] : 0.0f);
}

static void layer_norm_rows_ws(const float *x, int64_t B, int64_t C, const float *w, const float *b, float eps,
                               float *out) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < B; r++) layer_norm(x + r * C, C, w, b, eps, out + r * C);
}

/* x [B, C] (the embeddings in, the last block's output out) through n_layer blocks. Sequence b's new token is at
 * position pos[b] of cache slot slots[b]; its key and value go there in each layer's k, v ([n_layer, n_slots, H,
 * block, D], D a multiple of 16). gelu: GELU_TANH or GELU_ERF. Returns 0, or -1 when out of memory. */
int gs_decode_blocks_f32(float *x, int64_t B, int64_t C, int64_t H, int64_t hidden, int64_t n_layer,
                         const Block *blocks, float *k, float *v, int64_t n_slots, int64_t block, const int64_t *slots,
                         const int64_t *pos, float eps, int gelu, int threads) {
    int64_t D = C / H, layer_size = n_slots * H * block * D;
    float scale = 1.0f / sqrtf((float)D);
    float *ln = malloc(sizeof(float) * B * (5 * C + hidden));
    if (!ln) return -1;
    float *qkv = ln + B * C, *att = qkv + B * 3 * C, *h = att + B * C;
#pragma omp parallel num_threads(threads)
    for (int64_t l = 0; l < n_layer; l++) {
        const Block *w = blocks + l;
        layer_norm_rows_ws(x, B, C, w->ln1_w, w->ln1_b, eps, ln);
        gs_matmul_f32_ws(ln, B, C, w->qkv, 3 * C, w->qkv_b, qkv, STORE);
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            int64_t b = bh / H, at = l * layer_size + (slots[b] * H + bh % H) * block * D;
            const float *q = qkv + b * 3 * C + bh % H * D;
            memcpy(k + at + pos[b] * D, q + C, sizeof(float) * D);
            memcpy(v + at + pos[b] * D, q + 2 * C, sizeof(float) * D);
            gs_attend_f32(q, k + at, v + at, pos[b] + 1, D, scale, att + b * C + bh % H * D);
        }
        gs_matmul_f32_ws(att, B, C, w->proj, C, w->proj_b, x, ADD);
        layer_norm_rows_ws(x, B, C, w->ln2_w, w->ln2_b, eps, ln);
        gs_matmul_f32_ws(ln, B, C, w->fc, hidden, w->fc_b, h, gelu);
        gs_matmul_f32_ws(h, B, hidden, w->out, C, w->out_b, x, ADD);
    }
    free(ln);
    return 0;
}
