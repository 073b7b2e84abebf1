/* y[M, N] = x[M, K] @ W[K, N] + bias for inference on AVX-512 CPUs, W read once per call.
 *
 * W is stored as column panels of 32 outputs, each panel contiguous over K ([P][K][32] for float32,
 * [P][K/2][32][2] for bfloat16, the pairs AVX512-BF16's dot instruction takes). A thread streams whole
 * panels in address order, so a decode step reads the weights at memory bandwidth, and every group of
 * up to 8 rows of x is multiplied while the panel is still in L2. Threads: torch's own OpenMP pool
 * (this library links the libgomp that torch has already loaded), as many as torch.get_num_threads()
 * says: the caller passes it, since OpenMP's own count is per thread and the engine runs in its own.
 * Built by model/cpu_kernels.py.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#define PANEL 32
#define GROUP 8

/* y = x @ W + bias for any M: threads split the panels; each panel is used for all rows, GROUP at a time.
 * The switch turns the row count into a literal, so each panel function is compiled for 1..GROUP rows. */
#define DEFINE_MATMUL(name, T, panel_fn)                                                                    \
    void name(const T *x, int64_t M, int64_t K, const T *wp, int64_t N, const T *bias, T *y, int threads) { \
        int64_t panels = (N + PANEL - 1) / PANEL;                                                          \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                                  \
        for (int64_t p = 0; p < panels; p++) {                                                             \
            const T *w = wp + p * K * PANEL, *b = bias ? bias + p * PANEL : 0;                             \
            int cols = (int)(N - p * PANEL < PANEL ? N - p * PANEL : PANEL);                               \
            for (int64_t m = 0; m < M; m += GROUP) {                                                       \
                const T *xr = x + m * K;                                                                   \
                T *yr = y + m * N + p * PANEL;                                                             \
                switch (M - m < GROUP ? M - m : GROUP) {                                                   \
                    case 1: panel_fn(xr, K, w, b, yr, N, cols, 1); break;                                  \
                    case 2: panel_fn(xr, K, w, b, yr, N, cols, 2); break;                                  \
                    case 3: panel_fn(xr, K, w, b, yr, N, cols, 3); break;                                  \
                    case 4: panel_fn(xr, K, w, b, yr, N, cols, 4); break;                                  \
                    case 5: panel_fn(xr, K, w, b, yr, N, cols, 5); break;                                  \
                    case 6: panel_fn(xr, K, w, b, yr, N, cols, 6); break;                                  \
                    case 7: panel_fn(xr, K, w, b, yr, N, cols, 7); break;                                  \
                    default: panel_fn(xr, K, w, b, yr, N, cols, 8); break;                                 \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
    }

static inline __mmask16 tail_mask(int n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n > 0 ? n : 0)) - 1u); }

/* `rows` is a literal at every call site, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void panel_f32(
    const float *x, int64_t K, const float *wp, const float *bias, float *y, int64_t N, int cols, int rows) {
    __m512 acc[GROUP][2];
    __mmask16 m0 = tail_mask(cols), m1 = tail_mask(cols - 16);
    __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    __m512 b1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
    for (int r = 0; r < rows; r++) { acc[r][0] = b0; acc[r][1] = b1; }
    for (int64_t k = 0; k < K; k++) {
        _mm_prefetch((const char *)(wp + (k + K) * PANEL), _MM_HINT_T1); /* the next panel, into L2 */
        _mm_prefetch((const char *)(wp + (k + K) * PANEL + 16), _MM_HINT_T1);
        __m512 w0 = _mm512_loadu_ps(wp + k * PANEL), w1 = _mm512_loadu_ps(wp + k * PANEL + 16);
        for (int r = 0; r < rows; r++) {
            __m512 xv = _mm512_set1_ps(x[r * K + k]);
            acc[r][0] = _mm512_fmadd_ps(xv, w0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(xv, w1, acc[r][1]);
        }
    }
    for (int r = 0; r < rows; r++) {
        _mm512_mask_storeu_ps(y + r * N, m0, acc[r][0]);
        _mm512_mask_storeu_ps(y + r * N + 16, m1, acc[r][1]);
    }
}

DEFINE_MATMUL(gs_matmul_f32, float, panel_f32)

/* Needs AVX512-BF16 at run time; the caller checks. */
static inline __m512 load_bf16(const uint16_t *p, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

static inline __attribute__((always_inline)) void panel_bf16(
    const uint16_t *x, int64_t K, const uint16_t *wp, const uint16_t *bias, uint16_t *y, int64_t N, int cols, int rows) {
    __m512 acc[GROUP][2];
    __mmask16 m0 = tail_mask(cols), m1 = tail_mask(cols - 16);
    __m512 b0 = bias ? load_bf16(bias, m0) : _mm512_setzero_ps();
    __m512 b1 = bias ? load_bf16(bias + 16, m1) : _mm512_setzero_ps();
    for (int r = 0; r < rows; r++) { acc[r][0] = b0; acc[r][1] = b1; }
    for (int64_t k = 0; k < K / 2; k++) {
        _mm_prefetch((const char *)(wp + (k + K / 2) * 2 * PANEL), _MM_HINT_T1); /* the next panel */
        _mm_prefetch((const char *)(wp + (k + K / 2) * 2 * PANEL + PANEL), _MM_HINT_T1);
        __m512bh w0 = (__m512bh)_mm512_loadu_si512(wp + k * 2 * PANEL);
        __m512bh w1 = (__m512bh)_mm512_loadu_si512(wp + k * 2 * PANEL + PANEL);
        for (int r = 0; r < rows; r++) {
            int32_t pair;
            memcpy(&pair, x + r * K + 2 * k, sizeof pair);
            __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xv, w0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xv, w1);
        }
    }
    for (int r = 0; r < rows; r++) {
        _mm256_mask_storeu_epi16(y + r * N, m0, (__m256i)_mm512_cvtneps_pbh(acc[r][0]));
        _mm256_mask_storeu_epi16(y + r * N + 16, m1, (__m256i)_mm512_cvtneps_pbh(acc[r][1]));
    }
}

/* K must be even (the caller pads x and W with a zero column). */
DEFINE_MATMUL(gs_matmul_bf16, uint16_t, panel_bf16)

/* ---- attention of one new token per sequence over its own cached positions (a decode step) ----
 * out[b, h] = softmax(scale * q[b, h] . K[slot_b, h, :len_b]) V[slot_b, h, :len_b], for one layer's cache laid
 * out [slots, H, block, D] with D a multiple of 16. Each sequence reads only its own `len_b` positions: no mask,
 * no gather, every key and value row read once. Everything in float32; T is float or uint16_t (bfloat16). */

/* e^x for the softmax: 2^n * e^r with |r| <= ln2/2, e^r by its Taylor polynomial to r^6 (rel. error < 3e-7). */
static inline __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline void store_f32(float *p, __m512 v) { _mm512_storeu_ps(p, v); }
static inline void store_bf16(uint16_t *p, __m512 v) { _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(v)); }

#define DEFINE_DECODE_ATTENTION(name, T, load, store)                                                      \
    void name(const T *q, const T *k, const T *v, const int64_t *slots, const int64_t *lens, int64_t B,    \
              int64_t H, int64_t block, int64_t D, float scale, T *out, int threads) {                     \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                                  \
        for (int64_t bh = 0; bh < B * H; bh++) {                                                           \
            int64_t b = bh / H, len = lens[b];                                                             \
            const T *kb = k + (slots[b] * H + bh % H) * block * D, *vb = v + (slots[b] * H + bh % H) * block * D; \
            float scores[len + 16];                                                                        \
            int64_t l = 0;                                                                                 \
            for (; l + 4 <= len; l += 4) { /* four keys at a time: independent sums keep the FMA units busy */ \
                __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                                \
                for (int64_t d = 0; d < D; d += 16) {                                                      \
                    __m512 qd = load(q + bh * D + d, ALL);                                                 \
                    s0 = _mm512_fmadd_ps(qd, load(kb + l * D + d, ALL), s0);                               \
                    s1 = _mm512_fmadd_ps(qd, load(kb + (l + 1) * D + d, ALL), s1);                         \
                    s2 = _mm512_fmadd_ps(qd, load(kb + (l + 2) * D + d, ALL), s2);                         \
                    s3 = _mm512_fmadd_ps(qd, load(kb + (l + 3) * D + d, ALL), s3);                         \
                }                                                                                          \
                scores[l] = _mm512_reduce_add_ps(s0) * scale;                                              \
                scores[l + 1] = _mm512_reduce_add_ps(s1) * scale;                                          \
                scores[l + 2] = _mm512_reduce_add_ps(s2) * scale;                                          \
                scores[l + 3] = _mm512_reduce_add_ps(s3) * scale;                                          \
            }                                                                                              \
            for (; l < len; l++) {                                                                         \
                __m512 s = _mm512_setzero_ps();                                                            \
                for (int64_t d = 0; d < D; d += 16)                                                        \
                    s = _mm512_fmadd_ps(load(q + bh * D + d, ALL), load(kb + l * D + d, ALL), s);          \
                scores[l] = _mm512_reduce_add_ps(s) * scale;                                               \
            }                                                                                              \
            __m512 top = _mm512_set1_ps(-INFINITY), total = _mm512_setzero_ps();                           \
            for (l = 0; l < len; l += 16)                                                                  \
                top = _mm512_max_ps(top, _mm512_mask_loadu_ps(top, tail_mask((int)(len - l)), scores + l)); \
            __m512 max = _mm512_set1_ps(_mm512_reduce_max_ps(top));                                        \
            for (l = 0; l < len; l += 16) {                                                                \
                __mmask16 m = tail_mask((int)(len - l));                                                   \
                __m512 e = _mm512_maskz_mov_ps(m, exp_ps(_mm512_sub_ps(_mm512_loadu_ps(scores + l), max))); \
                _mm512_storeu_ps(scores + l, e);                                                           \
                total = _mm512_add_ps(total, e);                                                           \
            }                                                                                              \
            __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));                               \
            for (int64_t d = 0; d < D; d += 16) { /* two running sums per 16 outputs, over even and odd rows */ \
                __m512 a0 = _mm512_setzero_ps(), a1 = a0;                                                  \
                for (l = 0; l + 2 <= len; l += 2) {                                                        \
                    a0 = _mm512_fmadd_ps(_mm512_set1_ps(scores[l]), load(vb + l * D + d, ALL), a0);        \
                    a1 = _mm512_fmadd_ps(_mm512_set1_ps(scores[l + 1]), load(vb + (l + 1) * D + d, ALL), a1); \
                }                                                                                          \
                if (l < len) a0 = _mm512_fmadd_ps(_mm512_set1_ps(scores[l]), load(vb + l * D + d, ALL), a0); \
                store(out + bh * D + d, _mm512_mul_ps(_mm512_add_ps(a0, a1), inv));                        \
            }                                                                                              \
        }                                                                                                  \
    }

#define ALL ((__mmask16)0xFFFF)
static inline __m512 load_f32(const float *p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
DEFINE_DECODE_ATTENTION(gs_decode_attention_f32, float, load_f32, store_f32)
/* Needs AVX512-BF16 at run time (the store); the caller checks. */
DEFINE_DECODE_ATTENTION(gs_decode_attention_bf16, uint16_t, load_bf16, store_bf16)
