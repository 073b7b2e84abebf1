/* y[M, N] = x[M, K] @ W[K, N] + bias for inference on AVX-512 CPUs, W read once per call.
 *
 * W is stored as column panels of 32 outputs, each panel contiguous over K ([P][K][32] for float32,
 * [P][K/2][32][2] for bfloat16, the pairs AVX512-BF16's dot instruction takes). A thread streams whole
 * panels in address order, so a decode step reads the weights at memory bandwidth, and every group of
 * up to 8 rows of x is multiplied while the panel is still in L2. Threads: torch's own OpenMP pool
 * (this library links the libgomp that torch has already loaded), as many as torch.get_num_threads()
 * says: the caller passes it, since OpenMP's own count is per thread and the engine runs in its own.
 */
#include "kernels.h"

/* GELU, as GPT-2 (tanh form: x * sigmoid(2u)) and nanoGPT (exact: erf by Abramowitz-Stegun 7.1.26, abs. error
 * below 1.5e-7) define it. */
static inline __m512 gelu_tanh(__m512 x) {
    __m512 u = _mm512_mul_ps(_mm512_set1_ps(-1.5957691216f), /* -2 * sqrt(2 / pi) */
                             _mm512_fmadd_ps(_mm512_mul_ps(_mm512_mul_ps(x, x), x), _mm512_set1_ps(0.044715f), x));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), exp_ps(u)));
}

static inline __m512 gelu_erf(__m512 x) {
    __m512 z = _mm512_abs_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.70710678f)));
    __m512 one = _mm512_set1_ps(1.0f);
    __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(z, _mm512_set1_ps(0.3275911f), one));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    __m512 minus_z2 = _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), z), z);
    __m512 erf_abs = _mm512_fnmadd_ps(_mm512_mul_ps(p, t), exp_ps(minus_z2), one);
    __m512 half_x = _mm512_mul_ps(x, _mm512_set1_ps(0.5f));
    return _mm512_fmadd_ps(half_x, _mm512_mask_sub_ps(erf_abs, _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ),
                                                      _mm512_setzero_ps(), erf_abs), half_x);
}

/* The epilogue of one finished 16-column vector (see the enum in kernels.h), `old` being y's present value. */
static inline __m512 finish(__m512 v, __m512 old, int epilogue) {
    switch (epilogue) {
        case ADD: return _mm512_add_ps(v, old);
        case GELU_TANH: return gelu_tanh(v);
        case GELU_ERF: return gelu_erf(v);
        default: return v;
    }
}

/* y = x @ W + bias for any M: threads split the panels; each panel is used for all rows, GROUP at a time.
 * The switch turns the row count into a literal, so each panel function is compiled for 1..GROUP rows. */
#define DEFINE_MATMUL(name, T, panel_fn)                                                                         \
    void name##_ws(const T *x, int64_t M, int64_t K, const T *wp, int64_t N, const T *bias, T *y, int epilogue) { \
        int64_t panels = (N + PANEL - 1) / PANEL;                                                               \
        _Pragma("omp for schedule(static) nowait")                                                              \
        for (int64_t p = 0; p < panels; p++) {                                                                  \
            const T *w = wp + p * K * PANEL, *b = bias ? bias + p * PANEL : 0;                                  \
            int cols = (int)(N - p * PANEL < PANEL ? N - p * PANEL : PANEL);                                    \
            for (int64_t m = 0; m < M; m += GROUP) {                                                            \
                const T *xr = x + m * K;                                                                        \
                T *yr = y + m * N + p * PANEL;                                                                  \
                switch (M - m < GROUP ? M - m : GROUP) {                                                        \
                    case 1: panel_fn(xr, K, w, b, yr, N, cols, 1, epilogue); break;                             \
                    case 2: panel_fn(xr, K, w, b, yr, N, cols, 2, epilogue); break;                             \
                    case 3: panel_fn(xr, K, w, b, yr, N, cols, 3, epilogue); break;                             \
                    case 4: panel_fn(xr, K, w, b, yr, N, cols, 4, epilogue); break;                             \
                    case 5: panel_fn(xr, K, w, b, yr, N, cols, 5, epilogue); break;                             \
                    case 6: panel_fn(xr, K, w, b, yr, N, cols, 6, epilogue); break;                             \
                    case 7: panel_fn(xr, K, w, b, yr, N, cols, 7, epilogue); break;                             \
                    default: panel_fn(xr, K, w, b, yr, N, cols, 8, epilogue); break;                            \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
    }                                                                                                           \
    void name(const T *x, int64_t M, int64_t K, const T *wp, int64_t N, const T *bias, T *y, int threads) {     \
        _Pragma("omp parallel num_threads(threads)") name##_ws(x, M, K, wp, N, bias, y, STORE);                 \
    }

/* One panel (32 output columns) for `rows` rows of x, from bias through the epilogue. `rows` is a literal at every
 * call site, so the accumulators stay in registers. `step` multiplies one row (float32) or row pair (bfloat16) of
 * the panel, of which there are `steps`. The panel is read as interleaved runs of those: one sequential stream per
 * core reads at ~21 GB/s here, four at ~27 and eight at ~31 (the hardware prefetcher keeps more lines in flight):
 * four runs are 7-13% of a whole decode step, eight 2-3% more for one or two rows but slower for more, whose
 * extra arithmetic per byte already hides the latency (docs/BENCHMARKS.md). */
#define DEFINE_PANEL(name, T, step, steps, load, store)                                                         \
    static inline __attribute__((always_inline)) void name(const T *x, int64_t K, const T *wp, const T *bias,   \
                                                           T *y, int64_t N, int cols, int rows, int epilogue) { \
        __m512 acc[GROUP][2];                                                                                   \
        __mmask16 m0 = tail_mask(cols), m1 = tail_mask(cols - 16);                                             \
        __m512 b0 = bias ? load(bias, m0) : _mm512_setzero_ps();                                               \
        __m512 b1 = bias ? load(bias + 16, m1) : _mm512_setzero_ps();                                          \
        for (int r = 0; r < rows; r++) { acc[r][0] = b0; acc[r][1] = b1; }                                      \
        int streams = rows <= 2 ? 8 : 4;                                                                        \
        int64_t run = (steps) / streams;                                                                        \
        for (int64_t k = 0; k < run; k++)                                                                       \
            for (int s = 0; s < streams; s++) step(acc, x, K, wp, s * run + k, rows);                           \
        for (int64_t k = streams * run; k < (steps); k++) step(acc, x, K, wp, k, rows);                         \
        for (int r = 0; r < rows; r++) {                                                                        \
            T *yr = y + r * N;                                                                                  \
            store(yr, m0, finish(acc[r][0], load(yr, epilogue == ADD ? m0 : 0), epilogue));                     \
            store(yr + 16, m1, finish(acc[r][1], load(yr + 16, epilogue == ADD ? m1 : 0), epilogue));           \
        }                                                                                                       \
    }

/* Row k of a float32 panel times x[., k] for every row, into the accumulators. */
static inline __attribute__((always_inline)) void step_f32(__m512 acc[][2], const float *x, int64_t K, const float *wp,
                                                           int64_t k, int rows) {
    __m512 w0 = _mm512_loadu_ps(wp + k * PANEL), w1 = _mm512_loadu_ps(wp + k * PANEL + 16);
    for (int r = 0; r < rows; r++) {
        __m512 xv = _mm512_set1_ps(x[r * K + k]);
        acc[r][0] = _mm512_fmadd_ps(xv, w0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(xv, w1, acc[r][1]);
    }
}

DEFINE_PANEL(panel_f32, float, step_f32, K, load_f32, store_f32)
DEFINE_MATMUL(gs_matmul_f32, float, panel_f32)

/* Row pair k of a bfloat16 panel times the pair x[., 2k..2k+1] for every row. */
static inline __attribute__((always_inline)) void step_bf16(__m512 acc[][2], const uint16_t *x, int64_t K,
                                                            const uint16_t *wp, int64_t k, int rows) {
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

DEFINE_PANEL(panel_bf16, uint16_t, step_bf16, K / 2, load_bf16, store_bf16)
/* K must be even (the caller pads x and W with a zero column). Needs AVX512-BF16 at run time; the caller checks. */
DEFINE_MATMUL(gs_matmul_bf16, uint16_t, panel_bf16)
