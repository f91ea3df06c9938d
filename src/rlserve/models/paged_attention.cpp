// Paged attention on CPU that reads K/V pages in place (no gather): built and loaded by
// rlserve/models/paged_kernel.py with `g++ -O3 -march=native -fopenmp -shared`.
//
// The cache layout is the engine's: [num_blocks, block_size, kv_heads, head_dim]. Each query
// row i attends to the first lens[i] tokens of the pages listed in block table tables[i];
// a prefill over a cached prefix passes one query row per new token, each with its causal
// length, so decode and prefill share this one loop. Work is split over query rows (and kv
// heads when rows are fewer than threads) with OpenMP; each item streams its pages twice (K
// for scores, V for the weighted sum), each K/V row read once for all its query heads.
// Accumulation is fp32 for both fp32 and bf16 caches.
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

inline float to_float(float x) { return x; }
inline float to_float(uint16_t x) {
  uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline void store(float* dst, float x) { *dst = x; }
inline void store(uint16_t* dst, float x) {  // round to nearest even, as torch does
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  if (std::isnan(x)) {
    *dst = 0x7fc0;
    return;
  }
  bits += 0x7fff + ((bits >> 16) & 1);
  *dst = static_cast<uint16_t>(bits >> 16);
}

// Portable loops (any head_dim, any CPU), and AVX-512 ones for head_dim % 16 == 0: gcc
// leaves the portable reduction mostly scalar without -ffast-math.
template <typename T>
inline float dot_portable(const float* a, const T* b, int64_t n) {
  float s = 0.f;
  for (int64_t d = 0; d < n; ++d) s += a[d] * to_float(b[d]);
  return s;
}

template <typename T>
inline void axpy_portable(float* acc, float p, const T* v, int64_t n) {
  for (int64_t d = 0; d < n; ++d) acc[d] += p * to_float(v[d]);
}

// Pages come in block-table order, not address order: touch the next page's row j while
// reading this page's row j, so the hardware never waits at a page jump.
inline void prefetch_row(const void* p, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(static_cast<const char*>(p) + b);
}

#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) {
  __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

template <typename T>
inline float dot(const float* a, const T* b, int64_t n) {
  if (n % 16 != 0) return dot_portable(a, b, n);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t d = 0; d < n; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), load16(b + d), acc);
  return _mm512_reduce_add_ps(acc);
}

template <typename T>
inline void axpy(float* acc, float p, const T* v, int64_t n) {
  if (n % 16 != 0) return axpy_portable(acc, p, v, n);
  const __m512 scale = _mm512_set1_ps(p);
  for (int64_t d = 0; d < n; d += 16)
    _mm512_storeu_ps(acc + d, _mm512_fmadd_ps(scale, load16(v + d), _mm512_loadu_ps(acc + d)));
}
#else
template <typename T>
inline float dot(const float* a, const T* b, int64_t n) { return dot_portable(a, b, n); }
template <typename T>
inline void axpy(float* acc, float p, const T* v, int64_t n) { axpy_portable(acc, p, v, n); }
#endif

struct Shape {
  int64_t heads, kv_heads, head_dim, block_size, table_stride, q_stride, out_stride;
  float scale;
};

// One query row, kv heads [h0, h1) and their grouped query heads, over `len` cached tokens.
// Token rows are read whole ([h1 - h0, head_dim] contiguous), so the pages stream in order.
template <typename T>
void attend(const T* q, const T* kc, const T* vc, const int64_t* table, int64_t len,
            int64_t h0, int64_t h1, const Shape& s, T* out, std::vector<float>& buf) {
  const int64_t groups = s.heads / s.kv_heads, D = s.head_dim, bs = s.block_size;
  const int64_t nq = (h1 - h0) * groups, token_stride = s.kv_heads * D;
  const int64_t row_bytes = (h1 - h0) * D * static_cast<int64_t>(sizeof(T));
  buf.resize(static_cast<size_t>(nq * (2 * D + len + 2)));
  float* qf = buf.data();          // [nq, D] queries in fp32, pre-scaled
  float* acc = qf + nq * D;        // [nq, D]
  float* maxes = acc + nq * D;     // [nq]
  float* sums = maxes + nq;        // [nq]
  float* scores = sums + nq;       // [len, nq]
  const T* q0 = q + h0 * groups * D;
  for (int64_t i = 0; i < nq * D; ++i) qf[i] = to_float(q0[i]) * s.scale;
  for (int64_t i = 0; i < nq; ++i) maxes[i] = -INFINITY;
  for (int64_t t0 = 0; t0 < len; t0 += bs) {
    const T* page = kc + (table[t0 / bs] * bs * s.kv_heads + h0) * D;
    const T* next = t0 + bs < len ? kc + (table[t0 / bs + 1] * bs * s.kv_heads + h0) * D : nullptr;
    const int64_t n = len - t0 < bs ? len - t0 : bs;
    for (int64_t j = 0; j < n; ++j) {
      if (next != nullptr) prefetch_row(next + j * token_stride, row_bytes);
      float* row = scores + (t0 + j) * nq;
      for (int64_t i = 0; i < nq; ++i) {
        const float x = dot(qf + i * D, page + j * token_stride + (i / groups) * D, D);
        row[i] = x;
        if (x > maxes[i]) maxes[i] = x;
      }
    }
  }
  for (int64_t i = 0; i < nq; ++i) sums[i] = 0.f;
  for (int64_t t = 0; t < len; ++t)
    for (int64_t i = 0; i < nq; ++i) {
      const float e = std::exp(scores[t * nq + i] - maxes[i]);
      scores[t * nq + i] = e;
      sums[i] += e;
    }
  std::memset(acc, 0, sizeof(float) * nq * D);
  for (int64_t t0 = 0; t0 < len; t0 += bs) {
    const T* page = vc + (table[t0 / bs] * bs * s.kv_heads + h0) * D;
    const T* next = t0 + bs < len ? vc + (table[t0 / bs + 1] * bs * s.kv_heads + h0) * D : nullptr;
    const int64_t n = len - t0 < bs ? len - t0 : bs;
    for (int64_t j = 0; j < n; ++j) {
      if (next != nullptr) prefetch_row(next + j * token_stride, row_bytes);
      for (int64_t i = 0; i < nq; ++i)
        axpy(acc + i * D, scores[(t0 + j) * nq + i], page + j * token_stride + (i / groups) * D, D);
    }
  }
  T* dst = out + h0 * groups * D;
  for (int64_t i = 0; i < nq; ++i) {
    const float inv = 1.f / sums[i];
    for (int64_t d = 0; d < D; ++d) store(dst + i * D + d, acc[i * D + d] * inv);
  }
}

// Work items: (query row, chunk of kv heads), as many chunks as it takes to give every
// thread work when there are fewer rows than threads (batch-1 decode).
template <typename T>
void run(const T* q, const int64_t* rows, const T* kc, const T* vc, const int64_t* tables,
         const int64_t* lens, int64_t num_rows, const Shape& s, T* out, int threads) {
  if (num_rows <= 0 || threads <= 0) return;
  int64_t chunks = (threads + num_rows - 1) / num_rows;
  if (chunks > s.kv_heads) chunks = s.kv_heads;
  const int64_t per_chunk = (s.kv_heads + chunks - 1) / chunks;
  chunks = (s.kv_heads + per_chunk - 1) / per_chunk;
  const int64_t items = num_rows * chunks;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> buf;
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t i = item / chunks, h0 = (item % chunks) * per_chunk;
      const int64_t h1 = h0 + per_chunk < s.kv_heads ? h0 + per_chunk : s.kv_heads;
      if (lens[i] <= 0) continue;
      attend(q + rows[i] * s.q_stride, kc, vc, tables + i * s.table_stride, lens[i], h0, h1, s,
             out + rows[i] * s.out_stride, buf);
    }
  }
}

}  // namespace

extern "C" {

// q/out: row r at q + r * q_stride, heads contiguous ([heads, head_dim]); rows[i] is the
// q/out row of query i; tables: [num_rows, table_stride]; lens: [num_rows].
// dtype: 0 = float32, 1 = bfloat16. Returns 0, or -1 on an unknown dtype.
int rlserve_paged_attention(int dtype, const void* q, const int64_t* rows, const void* k_cache,
                            const void* v_cache, const int64_t* tables, const int64_t* lens,
                            int64_t num_rows, int64_t heads, int64_t kv_heads, int64_t head_dim,
                            int64_t block_size, int64_t table_stride, int64_t q_stride,
                            int64_t out_stride, float scale, void* out, int threads) {
  const Shape s{heads, kv_heads, head_dim, block_size, table_stride, q_stride, out_stride, scale};
  if (dtype == 0) {
    run(static_cast<const float*>(q), rows, static_cast<const float*>(k_cache),
        static_cast<const float*>(v_cache), tables, lens, num_rows, s, static_cast<float*>(out),
        threads);
  } else if (dtype == 1) {
    run(static_cast<const uint16_t*>(q), rows, static_cast<const uint16_t*>(k_cache),
        static_cast<const uint16_t*>(v_cache), tables, lens, num_rows, s,
        static_cast<uint16_t*>(out), threads);
  } else {
    return -1;
  }
  return 0;
}

}  // extern "C"
