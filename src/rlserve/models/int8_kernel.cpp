// int8 weight-only linear for CPUs with AVX-512: y[M,N] = (x[M,K] . w[N,K]^T) * scale[N] + bias.
//
// Weights stay int8 in memory (a quarter of fp32's bytes, what bounds decode) and are widened
// in registers. rlserve_int8_linear keeps activations and sums in fp32;
// rlserve_int8_linear_vnni (AVX512-VNNI CPUs, 2x faster) quantises activations per row to int16
// and sums exactly in int32. Either way the weights' int8 rounding is the error that counts. Rows of w are split across OpenMP threads (the libgomp torch already
// loaded, so the threads are torch's). Built by rlserve/models/int8_build.py; plain C ABI.
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>

#include <cmath>
#include <vector>

namespace {

inline __m512 widen(const int8_t* w, __mmask16 mask) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, w)));
}

// One block of R output rows for MB activation rows: R x MB accumulators in registers.
// Each widened weight vector feeds MB FMAs, so larger MB amortises the widening.
template <int R, int MB>
void block(const float* x, const int8_t* w, const float* scale, const float* bias, float* y,
           int64_t N, int64_t K, int64_t n0) {
  __m512 acc[R][MB];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mask = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
    __m512 xv[MB];
    for (int m = 0; m < MB; ++m) xv[m] = _mm512_maskz_loadu_ps(mask, x + m * K + k);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = widen(w + (n0 + r) * K + k, mask);
      for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const int64_t n = n0 + r;
    const float b = bias ? bias[n] : 0.0f;
    for (int m = 0; m < MB; ++m) y[m * N + n] = _mm512_reduce_add_ps(acc[r][m]) * scale[n] + b;
  }
}

// Rows left over when N is not a multiple of kRows.
void tail_row(const float* x, const int8_t* w, const float* scale, const float* bias, float* y,
              int64_t M, int64_t N, int64_t K, int64_t n) {
  for (int64_t m = 0; m < M; ++m) {
    float sum = 0.0f;
    for (int64_t k = 0; k < K; ++k) sum += x[m * K + k] * (float)w[n * K + k];
    y[m * N + n] = sum * scale[n] + (bias ? bias[n] : 0.0f);
  }
}


// The VNNI path: activations are quantised per row to int16 (error <= max|row| / 65534, far
// below the weights' int8 step), weights widened int8 -> int16, and vpdpwssd does 32
// multiply-adds per instruction into exact int32 sums: twice fp32 FMA's rate, and an eighth
// of the widening work. int32 sums are flushed to fp32 every kChunk of K, before they could
// overflow (|sum| per lane <= kChunk / 32 * 2 * 127 * 32767 < 2^31).
constexpr int64_t kChunk = 4096;

struct QuantizedRows {
  std::vector<int16_t> q;  // [M, Kp], zero-padded to a multiple of 32
  std::vector<float> scale;  // [M]
  int64_t Kp;
};

QuantizedRows quantize_rows(const float* x, int64_t M, int64_t K) {
  QuantizedRows out{std::vector<int16_t>(), std::vector<float>(M), (K + 31) / 32 * 32};
  out.q.assign(M * out.Kp, 0);
  for (int64_t m = 0; m < M; ++m) {
    float absmax = 0.0f;
    for (int64_t k = 0; k < K; ++k) absmax = std::fmax(absmax, std::fabs(x[m * K + k]));
    const float scale = absmax > 0.0f ? absmax / 32767.0f : 1.0f;
    const float inv = 1.0f / scale;
    for (int64_t k = 0; k < K; ++k)
      out.q[m * out.Kp + k] = (int16_t)std::nearbyint(x[m * K + k] * inv);
    out.scale[m] = scale;
  }
  return out;
}

template <int R, int MB>
__attribute__((target("avx512vnni"))) void vnni_block(const QuantizedRows& xq, int64_t m0,
                                                       const int8_t* w, const float* scale,
                                                       const float* bias, float* y, int64_t N,
                                                       int64_t K, int64_t n0) {
  float sums[R][MB] = {};
  for (int64_t c = 0; c < K; c += kChunk) {
    const int64_t end = c + kChunk < K ? c + kChunk : K;
    __m512i acc[R][MB];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_setzero_si512();
    for (int64_t k = c; k < end; k += 32) {
      const __mmask32 mask = end - k >= 32 ? ~(__mmask32)0 : (__mmask32)((1ull << (end - k)) - 1);
      __m512i xv[MB];
      for (int m = 0; m < MB; ++m)
        xv[m] = _mm512_loadu_si512(xq.q.data() + (m0 + m) * xq.Kp + k);
      for (int r = 0; r < R; ++r) {
        const __m512i wv = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, w + (n0 + r) * K + k));
        for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_dpwssd_epi32(acc[r][m], wv, xv[m]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < MB; ++m) sums[r][m] += _mm512_reduce_add_ps(_mm512_cvtepi32_ps(acc[r][m]));
  }
  for (int r = 0; r < R; ++r) {
    const int64_t n = n0 + r;
    const float b = bias ? bias[n] : 0.0f;
    for (int m = 0; m < MB; ++m)
      y[(m0 + m) * N + n] = sums[r][m] * scale[n] * xq.scale[m0 + m] + b;
  }
}

}  // namespace

extern "C" {

// x [M,K] fp32, w [N,K] int8, scale [N] fp32, bias [N] fp32 or null, y [M,N] fp32.
void rlserve_int8_linear(const float* x, const int8_t* w, const float* scale, const float* bias,
                         float* y, int64_t M, int64_t N, int64_t K, int threads) {
  // Few rows (decode): 4 weight rows at a time keep 4+ FMA chains in flight. More rows:
  // 2 weight rows x 8 activation rows, so each widening feeds 8 FMAs.
  const int64_t R = M <= 4 ? 4 : 2;
  const int64_t blocks = N / R;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t n0 = b * R;
    if (R == 4) {
      switch (M) {
        case 4: block<4, 4>(x, w, scale, bias, y, N, K, n0); break;
        case 3: block<4, 3>(x, w, scale, bias, y, N, K, n0); break;
        case 2: block<4, 2>(x, w, scale, bias, y, N, K, n0); break;
        default: block<4, 1>(x, w, scale, bias, y, N, K, n0); break;
      }
      continue;
    }
    int64_t m = 0;
    for (; m + 8 <= M; m += 8) block<2, 8>(x + m * K, w, scale, bias, y + m * N, N, K, n0);
    for (; m + 4 <= M; m += 4) block<2, 4>(x + m * K, w, scale, bias, y + m * N, N, K, n0);
    for (; m < M; ++m) block<2, 1>(x + m * K, w, scale, bias, y + m * N, N, K, n0);
  }
  for (int64_t n = blocks * R; n < N; ++n) tail_row(x, w, scale, bias, y, M, N, K, n);
}

int rlserve_has_vnni() { return __builtin_cpu_supports("avx512vnni") ? 1 : 0; }

// As rlserve_int8_linear, on CPUs with AVX512-VNNI (activations as per-row int16).
void rlserve_int8_linear_vnni(const float* x, const int8_t* w, const float* scale,
                              const float* bias, float* y, int64_t M, int64_t N, int64_t K,
                              int threads) {
  const QuantizedRows xq = quantize_rows(x, M, K);
  const int64_t R = M <= 4 ? 4 : 2;
  const int64_t blocks = N / R;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t n0 = b * R;
    if (R == 4) {
      switch (M) {
        case 4: vnni_block<4, 4>(xq, 0, w, scale, bias, y, N, K, n0); break;
        case 3: vnni_block<4, 3>(xq, 0, w, scale, bias, y, N, K, n0); break;
        case 2: vnni_block<4, 2>(xq, 0, w, scale, bias, y, N, K, n0); break;
        default: vnni_block<4, 1>(xq, 0, w, scale, bias, y, N, K, n0); break;
      }
      continue;
    }
    int64_t m = 0;
    for (; m + 8 <= M; m += 8) vnni_block<2, 8>(xq, m, w, scale, bias, y, N, K, n0);
    for (; m + 4 <= M; m += 4) vnni_block<2, 4>(xq, m, w, scale, bias, y, N, K, n0);
    for (; m < M; ++m) vnni_block<2, 1>(xq, m, w, scale, bias, y, N, K, n0);
  }
  for (int64_t n = blocks * R; n < N; ++n) tail_row(x, w, scale, bias, y, M, N, K, n);
}

// out [N,K] fp32 = w * scale[:, None]: the dense weight for large batches (prefill).
void rlserve_int8_dequant(const int8_t* w, const float* scale, float* out, int64_t N, int64_t K,
                          int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t n = 0; n < N; ++n) {
    const __m512 s = _mm512_set1_ps(scale[n]);
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 mask = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
      _mm512_mask_storeu_ps(out + n * K + k, mask, _mm512_mul_ps(widen(w + n * K + k, mask), s));
    }
  }
}

// Symmetric per-row quantisation, vectorised: scale = max|row| / 127 (the float32 tiny when
// the row is zero), q = round-half-even(w * (1 / scale)), exactly what quant.py's torch ops
// compute.
void rlserve_int8_quantize(const float* w, int8_t* q, float* scale, int64_t N, int64_t K,
                           int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t n = 0; n < N; ++n) {
    const float* row = w + n * K;
    __m512 vmax = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 mask = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
      vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_maskz_loadu_ps(mask, row + k)));
    }
    const float s = std::fmax(_mm512_reduce_max_ps(vmax) / 127.0f, 1.17549435e-38f);
    const __m512 inv = _mm512_set1_ps(1.0f / s);
    const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 mask = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
      __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, row + k), inv);
      v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v = _mm512_min_ps(hi, _mm512_max_ps(lo, v));
      _mm_mask_storeu_epi8(q + n * K + k, mask, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)));
    }
    scale[n] = s;
  }
}

}  // extern "C"
