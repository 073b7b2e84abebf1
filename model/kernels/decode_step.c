/* Every transformer block of a decode step in one call: B sequences, one new token each.
 *
 * The same arithmetic as model/gpt.py's Block.forward, with the products, the cache write and the attention of
 * the other kernels; what this adds is that the whole step runs in one OpenMP region, one C call, instead of
 * ~25 torch operations and ~5 thread wake-ups per layer (about a fifth of a batch-1 float32 step, measured in
 * docs/BENCHMARKS.md). The residual additions and the GELU ride in the products' epilogues. T is float or
 * uint16_t (bfloat16: activations rounded to bfloat16 between operations, as torch does, arithmetic in float32).
 */
#include <stdlib.h>

#include "kernels.h"

/* One block's weights, of the step's dtype: projections as model/cpu_kernels.py's `pack` lays them out; a NULL
 * bias or LayerNorm shift is a model without them. */
typedef struct {
    const void *ln1_w, *ln1_b, *qkv, *qkv_b, *proj, *proj_b, *ln2_w, *ln2_b, *fc, *fc_b, *out, *out_b;
} Block;

/* LayerNorm of each of B rows of x [B, C] into out, threads splitting the rows (no barrier at the end). */
#define DEFINE_LAYER_NORM(name, T, load, store)                                                               \
    static void name(const T *x, int64_t B, int64_t C, const T *w, const T *b, float eps, T *out) {           \
        _Pragma("omp for schedule(static) nowait")                                                            \
        for (int64_t r = 0; r < B; r++) {                                                                     \
            const T *xr = x + r * C;                                                                          \
            __m512 sum = _mm512_setzero_ps(), squares = sum;                                                  \
            for (int64_t c = 0; c < C; c += 16) sum = _mm512_add_ps(sum, load(xr + c, tail_mask((int)(C - c)))); \
            __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / (float)C);                               \
            for (int64_t c = 0; c < C; c += 16) {                                                             \
                __mmask16 m = tail_mask((int)(C - c));                                                        \
                __m512 d = _mm512_maskz_sub_ps(m, load(xr + c, m), mean);                                     \
                squares = _mm512_fmadd_ps(d, d, squares);                                                     \
            }                                                                                                 \
            __m512 rstd = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(squares) / (float)C + eps));       \
            for (int64_t c = 0; c < C; c += 16) {                                                             \
                __mmask16 m = tail_mask((int)(C - c));                                                        \
                __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(load(xr + c, m), mean), rstd), load(w + c, m)); \
                store(out + r * C + c, m, b ? _mm512_add_ps(v, load(b + c, m)) : v);                          \
            }                                                                                                 \
        }                                                                                                     \
    }

/* x [B, C] (the embeddings in, the last block's output out) through n_layer blocks. Sequence b's new token is at
 * position pos[b] of cache slot slots[b]; its key and value go there in each layer's k, v ([n_layer, n_slots, H,
 * block, D], D a multiple of 16). gelu: GELU_TANH or GELU_ERF. Returns 0, or -1 when out of memory. */
#define DEFINE_DECODE_BLOCKS(name, T, matmul_ws, attend, layer_norm)                                          \
    int name(T *x, int64_t B, int64_t C, int64_t H, int64_t hidden, int64_t n_layer, const Block *blocks, T *k, \
             T *v, int64_t n_slots, int64_t block, const int64_t *slots, const int64_t *pos, float eps, int gelu, \
             int threads) {                                                                                   \
        int64_t D = C / H, layer_size = n_slots * H * block * D;                                              \
        float scale = 1.0f / sqrtf((float)D);                                                                 \
        T *ln = malloc(sizeof(T) * B * (5 * C + hidden));                                                     \
        if (!ln) return -1;                                                                                   \
        T *qkv = ln + B * C, *att = qkv + B * 3 * C, *h = att + B * C;                                        \
        TeamBarrier barrier = {0, 0, threads <= omp_get_num_procs()};                                         \
        _Pragma("omp parallel num_threads(threads)")                                                          \
        {                                                                                                     \
            int phase = 0;                                                                                    \
            for (int64_t l = 0; l < n_layer; l++) {                                                           \
                const Block *w = blocks + l;                                                                  \
                layer_norm(x, B, C, w->ln1_w, w->ln1_b, eps, ln);                                             \
                team_sync(&barrier, &phase);                                                                  \
                matmul_ws(ln, B, C, w->qkv, 3 * C, w->qkv_b, qkv, STORE);                                     \
                team_sync(&barrier, &phase);                                                                  \
                _Pragma("omp for schedule(static) nowait")                                                    \
                for (int64_t bh = 0; bh < B * H; bh++) {                                                      \
                    int64_t b = bh / H, at = l * layer_size + (slots[b] * H + bh % H) * block * D;            \
                    const T *q = qkv + b * 3 * C + bh % H * D;                                                \
                    memcpy(k + at + pos[b] * D, q + C, sizeof(T) * D);                                        \
                    memcpy(v + at + pos[b] * D, q + 2 * C, sizeof(T) * D);                                    \
                    attend(q, k + at, v + at, pos[b] + 1, D, scale, att + b * C + bh % H * D);                \
                }                                                                                             \
                team_sync(&barrier, &phase);                                                                  \
                matmul_ws(att, B, C, w->proj, C, w->proj_b, x, ADD);                                          \
                team_sync(&barrier, &phase);                                                                  \
                layer_norm(x, B, C, w->ln2_w, w->ln2_b, eps, ln);                                             \
                team_sync(&barrier, &phase);                                                                  \
                matmul_ws(ln, B, C, w->fc, hidden, w->fc_b, h, gelu);                                         \
                team_sync(&barrier, &phase);                                                                  \
                matmul_ws(h, B, hidden, w->out, C, w->out_b, x, ADD);                                         \
                team_sync(&barrier, &phase);                                                                  \
            }                                                                                                 \
        }                                                                                                     \
        free(ln);                                                                                             \
        return 0;                                                                                             \
    }

DEFINE_LAYER_NORM(layer_norm_f32, float, load_f32, store_f32)
DEFINE_DECODE_BLOCKS(gs_decode_blocks_f32, float, gs_matmul_f32_ws, gs_attend_f32, layer_norm_f32)
/* Needs AVX512-BF16 at run time; C and hidden even (the products take pairs). The caller checks. */
DEFINE_LAYER_NORM(layer_norm_bf16, uint16_t, load_bf16, store_bf16)
DEFINE_DECODE_BLOCKS(gs_decode_blocks_bf16, uint16_t, gs_matmul_bf16_ws, gs_attend_bf16, layer_norm_bf16)
