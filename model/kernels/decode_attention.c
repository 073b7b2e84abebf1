/* Attention of one new token per sequence over its own cached positions (a decode step).
 *
 * out[b, h] = softmax(scale * q[b, h] . K[slot_b, h, :len_b]) V[slot_b, h, :len_b], for one layer's cache laid
 * out [slots, H, block, D] with D a multiple of 16. Each sequence reads only its own `len_b` positions: no mask,
 * no gather, every key and value row read once. Everything in float32; T is float or uint16_t (bfloat16).
 */
#include "kernels.h"

/* One head: q [D] over k, v [len, D] -> out [D]. */
#define DEFINE_ATTEND(name, T, load, store)                                                                   \
    void name(const T *q, const T *k, const T *v, int64_t len, int64_t D, float scale, T *out) {             \
        float scores[len + 16];                                                                               \
        int64_t l = 0;                                                                                        \
        for (; l + 4 <= len; l += 4) { /* four keys at a time: independent sums keep the FMA units busy */    \
            __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                                       \
            for (int64_t d = 0; d < D; d += 16) {                                                             \
                __m512 qd = load(q + d, ALL);                                                                 \
                s0 = _mm512_fmadd_ps(qd, load(k + l * D + d, ALL), s0);                                       \
                s1 = _mm512_fmadd_ps(qd, load(k + (l + 1) * D + d, ALL), s1);                                 \
                s2 = _mm512_fmadd_ps(qd, load(k + (l + 2) * D + d, ALL), s2);                                 \
                s3 = _mm512_fmadd_ps(qd, load(k + (l + 3) * D + d, ALL), s3);                                 \
            }                                                                                                 \
            scores[l] = _mm512_reduce_add_ps(s0) * scale;                                                     \
            scores[l + 1] = _mm512_reduce_add_ps(s1) * scale;                                                 \
            scores[l + 2] = _mm512_reduce_add_ps(s2) * scale;                                                 \
            scores[l + 3] = _mm512_reduce_add_ps(s3) * scale;                                                 \
        }                                                                                                     \
        for (; l < len; l++) {                                                                                \
            __m512 s = _mm512_setzero_ps();                                                                   \
            for (int64_t d = 0; d < D; d += 16) s = _mm512_fmadd_ps(load(q + d, ALL), load(k + l * D + d, ALL), s); \
            scores[l] = _mm512_reduce_add_ps(s) * scale;                                                      \
        }                                                                                                     \
        __m512 top = _mm512_set1_ps(-INFINITY), total = _mm512_setzero_ps();                                  \
        for (l = 0; l < len; l += 16)                                                                         \
            top = _mm512_max_ps(top, _mm512_mask_loadu_ps(top, tail_mask((int)(len - l)), scores + l));       \
        __m512 max = _mm512_set1_ps(_mm512_reduce_max_ps(top));                                               \
        for (l = 0; l < len; l += 16) {                                                                       \
            __mmask16 m = tail_mask((int)(len - l));                                                          \
            __m512 e = _mm512_maskz_mov_ps(m, exp_ps(_mm512_sub_ps(_mm512_loadu_ps(scores + l), max)));       \
            _mm512_storeu_ps(scores + l, e);                                                                  \
            total = _mm512_add_ps(total, e);                                                                  \
        }                                                                                                     \
        __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));                                      \
        for (int64_t d = 0; d < D; d += 16) { /* two running sums per 16 outputs, over even and odd rows */   \
            __m512 a0 = _mm512_setzero_ps(), a1 = a0;                                                         \
            for (l = 0; l + 2 <= len; l += 2) {                                                               \
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(scores[l]), load(v + l * D + d, ALL), a0);                \
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(scores[l + 1]), load(v + (l + 1) * D + d, ALL), a1);      \
            }                                                                                                 \
            if (l < len) a0 = _mm512_fmadd_ps(_mm512_set1_ps(scores[l]), load(v + l * D + d, ALL), a0);       \
            store(out + d, ALL, _mm512_mul_ps(_mm512_add_ps(a0, a1), inv));                                   \
        }                                                                                                     \
    }

/* Every sequence and head of a batch, threads splitting the (sequence, head) pairs. */
#define DEFINE_DECODE_ATTENTION(name, T, attend)                                                              \
    void name(const T *q, const T *k, const T *v, const int64_t *slots, const int64_t *lens, int64_t B,       \
              int64_t H, int64_t block, int64_t D, float scale, T *out, int threads) {                        \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                                     \
        for (int64_t bh = 0; bh < B * H; bh++) {                                                              \
            int64_t at = (slots[bh / H] * H + bh % H) * block * D;                                            \
            attend(q + bh * D, k + at, v + at, lens[bh / H], D, scale, out + bh * D);                         \
        }                                                                                                     \
    }

DEFINE_ATTEND(gs_attend_f32, float, load_f32, store_f32)
DEFINE_DECODE_ATTENTION(gs_decode_attention_f32, float, gs_attend_f32)
/* Needs AVX512-BF16 at run time (the store); the caller checks. */
DEFINE_ATTEND(gs_attend_bf16, uint16_t, load_bf16, store_bf16)
DEFINE_DECODE_ATTENTION(gs_decode_attention_bf16, uint16_t, gs_attend_bf16)
