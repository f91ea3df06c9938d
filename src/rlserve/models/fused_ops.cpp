// Fused per-token CPU ops of the decoder layer: residual add + RMSNorm, and q/k RMSNorm +
// rotary embedding, each one pass over a row instead of 6-10 torch ops (each op costs
// ~2-5 us of dispatch at decode batch sizes, more than its arithmetic).
//
// Rounding follows transformers op by op, so the results equal the unfused torch ops' bits:
//  - RMSNorm: sum of squares in fp32 in torch's own summation order (`lanes`: floats per
//    vector of torch's sum kernel: 8, its AVX2 build, also on AVX-512), x * rsqrt(mean + eps)
//    rounded to the model dtype,
//    then times the weight, rounded again (bf16: two roundings, as `weight * x.to(dtype)`).
//  - residual add in the model dtype; rope: q * cos and rotate_half(q) * sin each rounded,
//    then their sum. Built with -ffp-contract=off so no FMA merges two roundings into one.
// dtype: 0 = float32, 1 = bfloat16 (raw uint16 storage, round to nearest even).
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

inline float bf16_to_float(uint16_t v) {
    uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline uint16_t float_to_bf16(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    if (std::isnan(f)) return 0x7FC0;
    bits += 0x7FFF + ((bits >> 16) & 1);
    return static_cast<uint16_t>(bits >> 16);
}

inline float round_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

template <typename T> inline float load(const T* p, int64_t i);
template <> inline float load<float>(const float* p, int64_t i) { return p[i]; }
template <> inline float load<uint16_t>(const uint16_t* p, int64_t i) {
    return bf16_to_float(p[i]);
}

template <typename T> inline void store(T* p, int64_t i, float v);
template <> inline void store<float>(float* p, int64_t i, float v) { p[i] = v; }
template <> inline void store<uint16_t>(uint16_t* p, int64_t i, float v) {
    p[i] = float_to_bf16(v);
}

// The value the model dtype holds: identity for fp32, a bf16 rounding for bf16.
template <typename T> inline float as_dtype(float v);
template <> inline float as_dtype<float>(float v) { return v; }
template <> inline float as_dtype<uint16_t>(float v) { return round_bf16(v); }

// sum(x^2) of one row in exactly the order torch's CPU sum kernel adds (SumKernel.cpp:
// vectorized_inner_sum -> row_sum -> multi_row_sum, `lanes` floats per vector, 4 vectors of
// ILP, a 4-level cascade), so RMSNorm rounds bit for bit as x.pow(2).mean() does.
inline float sum_squares(const float* x, int64_t n, int lanes) {
    constexpr int ILP = 4, LEVELS = 4, MAXL = 16;
    const int64_t vecs = n / lanes, rows = vecs / ILP;
    int64_t level_power = 4, bits = 0;
    while ((int64_t(1) << bits) < rows) ++bits;  // CeilLog2(rows)
    if (bits / LEVELS > level_power) level_power = bits / LEVELS;
    const int64_t step = int64_t(1) << level_power, mask = step - 1;
    float acc[LEVELS][ILP][MAXL] = {};
    auto add_row = [&](int64_t r) {
        for (int k = 0; k < ILP; ++k) {
            const float* v = x + (r * ILP + k) * lanes;
            for (int l = 0; l < lanes; ++l) acc[0][k][l] += v[l] * v[l];
        }
    };
    auto add_level = [&](int j) {
        for (int k = 0; k < ILP; ++k)
            for (int l = 0; l < lanes; ++l) {
                acc[j][k][l] += acc[j - 1][k][l];
                acc[j - 1][k][l] = 0.f;
            }
    };
    int64_t i = 0;
    while (i + step <= rows) {
        for (int64_t j = 0; j < step; ++j, ++i) add_row(i);
        for (int j = 1; j < LEVELS; ++j) {
            add_level(j);
            if ((i & (mask << (j * level_power))) != 0) break;
        }
    }
    for (; i < rows; ++i) add_row(i);
    for (int j = 1; j < LEVELS; ++j)
        for (int k = 0; k < ILP; ++k)
            for (int l = 0; l < lanes; ++l) acc[0][k][l] += acc[j][k][l];
    float* vec = acc[0][0];  // row_sum: the ILP partial vectors, then the leftover vectors
    for (int64_t r = rows * ILP; r < vecs; ++r)
        for (int l = 0; l < lanes; ++l) vec[l] += x[r * lanes + l] * x[r * lanes + l];
    for (int k = 1; k < ILP; ++k)
        for (int l = 0; l < lanes; ++l) vec[l] += acc[0][k][l];
    float total = 0.f;  // vectorized_inner_sum: scalar tail first, then the lanes in order
    for (int64_t t = vecs * lanes; t < n; ++t) total += x[t] * x[t];
    for (int l = 0; l < lanes; ++l) total += vec[l];
    return total;
}

// torch's rsqrt(x.pow(2).mean() + eps): mean is sum / n, rsqrt is 1 / sqrt.
inline float inv_rms(const float* x, int64_t dim, float eps, int lanes) {
    return 1.0f / std::sqrt(sum_squares(x, dim, lanes) / static_cast<float>(dim) + eps);
}

// out[i] = w[i] * dtype(x[i] * r), with the product rounded to the dtype.
template <typename T>
inline void scale_row(const float* x, float r, const T* w, float* out, int64_t dim) {
    for (int64_t i = 0; i < dim; ++i) out[i] = as_dtype<T>(load(w, i) * as_dtype<T>(x[i] * r));
}

template <typename T>
void add_rms_norm(T* x, T* residual, const T* weight, int64_t rows, int64_t dim, float eps,
                  int lanes) {
#pragma omp parallel for if (rows * dim >= (1 << 18))
    for (int64_t t = 0; t < rows; ++t) {
        float row[dim], normed[dim];
        T* xr = x + t * dim;
        for (int64_t i = 0; i < dim; ++i) row[i] = load(xr, i);
        if (residual != nullptr) {
            T* rr = residual + t * dim;
            for (int64_t i = 0; i < dim; ++i) row[i] = as_dtype<T>(row[i] + load(rr, i));
            for (int64_t i = 0; i < dim; ++i) store(rr, i, row[i]);
        }
        scale_row(row, inv_rms(row, dim, eps, lanes), weight, normed, dim);
        for (int64_t i = 0; i < dim; ++i) store(xr, i, normed[i]);
    }
}

// One head in place: optional RMSNorm (weight w), then rotary with this token's cos/sin.
template <typename T>
inline void norm_rope_head(T* h, const T* w, const T* cos, const T* sin, int64_t d, float eps,
                           int lanes) {
    float v[d];
    for (int64_t i = 0; i < d; ++i) v[i] = load(h, i);
    if (w != nullptr) scale_row(v, inv_rms(v, d, eps, lanes), w, v, d);
    const int64_t half = d / 2;
    for (int64_t i = 0; i < d; ++i) {
        float rotated = i < half ? -v[i + half] : v[i - half];
        float a = as_dtype<T>(v[i] * load(cos, i));
        float b = as_dtype<T>(rotated * load(sin, i));
        store(h, i, a + b);
    }
}

template <typename T>
void qk_norm_rope(T* qkv, int64_t rows, int64_t row_stride, int64_t q_heads, int64_t kv_heads,
                  int64_t d, const T* q_w, const T* k_w, const T* cos, const T* sin, float eps,
                  int lanes) {
#pragma omp parallel for if (rows * (q_heads + kv_heads) * d >= (1 << 18))
    for (int64_t t = 0; t < rows; ++t) {
        T* row = qkv + t * row_stride;
        const T* c = cos + t * d;
        const T* s = sin + t * d;
        for (int64_t h = 0; h < q_heads + kv_heads; ++h)
            norm_rope_head(row + h * d, h < q_heads ? q_w : k_w, c, s, d, eps, lanes);
    }
}

}  // namespace

extern "C" {

// x [rows, dim] <- RMSNorm(residual + x) * weight; residual <- residual + x (when given).
int rlserve_add_rms_norm(int dtype, void* x, void* residual, const void* weight, int64_t rows,
                         int64_t dim, float eps, int lanes) {
    if (lanes != 8 && lanes != 16) return 2;
    if (dtype == 0)
        add_rms_norm(static_cast<float*>(x), static_cast<float*>(residual),
                     static_cast<const float*>(weight), rows, dim, eps, lanes);
    else if (dtype == 1)
        add_rms_norm(static_cast<uint16_t*>(x), static_cast<uint16_t*>(residual),
                     static_cast<const uint16_t*>(weight), rows, dim, eps, lanes);
    else
        return 1;
    return 0;
}

// In place on the q heads then the k heads of every row of qkv (row t starts at
// t * row_stride): RMSNorm per head (q_w / k_w; null = none), then rope with cos/sin
// [rows, d] in the model dtype.
int rlserve_qk_norm_rope(int dtype, void* qkv, int64_t rows, int64_t row_stride,
                         int64_t q_heads, int64_t kv_heads, int64_t d, const void* q_w,
                         const void* k_w, const void* cos, const void* sin, float eps,
                         int lanes) {
    if (lanes != 8 && lanes != 16) return 2;
    if (dtype == 0)
        qk_norm_rope(static_cast<float*>(qkv), rows, row_stride, q_heads, kv_heads, d,
                     static_cast<const float*>(q_w), static_cast<const float*>(k_w),
                     static_cast<const float*>(cos), static_cast<const float*>(sin), eps, lanes);
    else if (dtype == 1)
        qk_norm_rope(static_cast<uint16_t*>(qkv), rows, row_stride, q_heads, kv_heads, d,
                     static_cast<const uint16_t*>(q_w), static_cast<const uint16_t*>(k_w),
                     static_cast<const uint16_t*>(cos), static_cast<const uint16_t*>(sin), eps,
                     lanes);
    else
        return 1;
    return 0;
}
}
