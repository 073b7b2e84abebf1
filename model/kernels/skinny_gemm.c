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
