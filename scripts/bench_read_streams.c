/* How fast T threads (2 unless given) read a buffer (500 MB unless given, in MB) again and again when each reads its
 * share as S interleaved sequential streams: why the panel products in model/kernels/skinny_gemm.c read each panel
 * as several runs of rows, what a smaller (cache-resident) working set would gain, and whether one core alone can
 * use the memory bandwidth. For docs/BENCHMARKS.md.
 * Build and run: cc -O2 -mavx512f -fopenmp scripts/bench_read_streams.c -o /tmp/read_streams
 *                for s in 1 2 4 8; do /tmp/read_streams $s; done;  for mb in 16 128 256; do /tmp/read_streams 4 $mb; done
 *                /tmp/read_streams 8 500 1   (S MB T)
 */
#define _POSIX_C_SOURCE 199309L
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int streams = argc > 1 ? atoi(argv[1]) : 1;
    if (streams < 1 || streams > 8) return 2;
    int64_t n = (argc > 2 ? atoll(argv[2]) : 500) * 1024 * 1024 / 4;
    int threads = argc > 3 ? atoi(argv[3]) : 2;
    if (threads < 1) return 2;
    float *a = aligned_alloc(64, n * 4);
    memset(a, 1, n * 4);
    double best = 0;
    float sink = 0;
    for (int rep = 0; rep < 6; rep++) {
        double start = now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        {
            int64_t share = n / threads, run = share / streams, base = omp_get_thread_num() * share;
            __m512 acc[8];
            for (int s = 0; s < 8; s++) acc[s] = _mm512_setzero_ps();
            for (int64_t i = 0; i + 32 <= run; i += 32)
                for (int s = 0; s < streams; s++) {
                    const float *p = a + base + s * run + i;
                    acc[s] = _mm512_add_ps(acc[s], _mm512_add_ps(_mm512_load_ps(p), _mm512_load_ps(p + 16)));
                }
            for (int s = 0; s < 8; s++) sink += _mm512_reduce_add_ps(acc[s]);
        }
        double gbs = n * 4 / (now() - start) / 1e9;
        if (rep && gbs > best) best = gbs; /* the first pass warms up */
    }
    printf("%lld MB, %d stream(s) per thread, %d thread(s): %.1f GB/s (best of 5; %g)\n", (long long)(n * 4 >> 20),
           streams, threads, best, sink);
    free(a);
    return 0;
}
