/* What the native CPU kernels share. model/cpu_kernels.py compiles every .c file here into one library.
 *
 * The "_ws" functions are OpenMP worksharing parts: called inside a parallel region, each splits its loop over the
 * team and returns without waiting for the others (the caller synchronizes: the region's end, or `team_sync`), so
 * decode_step.c runs a whole step in one region without forking threads per product. Outside a region they run
 * on the calling thread alone.
 */
#ifndef GPTSERVE_KERNELS_H
#define GPTSERVE_KERNELS_H

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#define PANEL 32 /* output columns per weight panel; model/cpu_kernels.py's PANEL */
#define GROUP 8  /* rows of x multiplied per pass over a panel */
#define ALL ((__mmask16)0xFFFF)

/* What a product does with each finished output: store it, add it to y (a residual), or store its GELU. */
enum { STORE = 0, ADD = 1, GELU_TANH = 2, GELU_ERF = 3 };

static inline __mmask16 tail_mask(int n) {
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n > 0 ? n : 0)) - 1u);
}

/* e^x: 2^n * e^r with |r| <= ln2/2, e^r by its Taylor polynomial to r^6 (rel. error < 3e-7). */
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

/* A barrier for a team that is busy on both sides of it: waiters spin, briefly, then yield. libgomp's own barrier
 * sleeps in the kernel under OMP_WAIT_POLICY=PASSIVE (gptserve's default, which keeps idle threads off the CPU
 * between steps), and a decode step has six per layer: spinning makes the step ~3% faster (0-7%). With more threads
 * than CPUs spinning only delays the thread being waited for (0.76-0.84x), so there libgomp's barrier is used. */
typedef struct {
    atomic_int arrived;
    atomic_int phase;
    int spin; /* the team fits the CPUs */
} TeamBarrier;

static inline void team_sync(TeamBarrier *b, int *phase) {
    if (!b->spin) {
#pragma omp barrier
        return;
    }
    int next = *phase + 1;
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == omp_get_num_threads() - 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&b->phase, next, memory_order_release);
    } else {
        for (int spins = 0; atomic_load_explicit(&b->phase, memory_order_acquire) != next; spins++) {
            if (spins < 4096) _mm_pause();
            else sched_yield(); /* the thread being waited for lost its CPU: do not hold ours */
        }
    }
    *phase = next;
}

static inline __m512 load_f32(const float *p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }

/* bfloat16 is the top half of a float32. Storing needs AVX512-BF16 at run time; the caller checks. */
static inline __m512 load_bf16(const uint16_t *p, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

static inline void store_f32(float *p, __mmask16 m, __m512 v) { _mm512_mask_storeu_ps(p, m, v); }
static inline void store_bf16(uint16_t *p, __mmask16 m, __m512 v) {
    _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v));
}

void gs_matmul_f32_ws(const float *x, int64_t M, int64_t K, const float *wp, int64_t N, const float *bias, float *y,
                      int epilogue);
void gs_matmul_bf16_ws(const uint16_t *x, int64_t M, int64_t K, const uint16_t *wp, int64_t N, const uint16_t *bias,
                       uint16_t *y, int epilogue);
void gs_attend_f32(const float *q, const float *k, const float *v, int64_t len, int64_t D, float scale, float *out);
void gs_attend_bf16(const uint16_t *q, const uint16_t *k, const uint16_t *v, int64_t len, int64_t D, float scale,
                    uint16_t *out);

#endif
