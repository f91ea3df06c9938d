// One whole decode forward of a small Llama-family model (fp32, CPU) in a single call:
// embedding, every decoder layer (RMSNorm, q/k/v with optional bias, optional per-head
// q/k RMSNorm, rotary, the new token's K/V into its paged-cache slot, attention over the
// sequence's pages, o_proj, MLP), the final norm, the logits head, and each row's greedy
// token with its logprob. For a draft model, whose forward is otherwise mostly per-op
// dispatch cost. Plain loops the compiler vectorises; no torch headers (see
// decode_step.py for the layouts).
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// Pointers per layer, in this order (bias pointers may be null; norms of q/k too). The
// weights (_W) are input-major: [in, out] row-major, the transpose of torch's layout.
enum LayerPtr {
  IN_NORM, QKV_W, QKV_B, Q_NORM, K_NORM, O_W, O_B, POST_NORM, GATE_UP_W, DOWN_W,
  K_CACHE, V_CACHE, NUM_LAYER_PTRS
};

struct Dims {
  int64_t hidden, heads, kv_heads, head_dim, inter, vocab, block_size;
  float eps;
};

float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

constexpr int64_t ROWS = 4;   // rows per tile: each weight load serves all of them
constexpr int64_t COLS = 64;  // outputs per tile: ROWS x COLS accumulators fit the registers

// out[r, :] = x[r, :] @ wt (+ bias) for `rows` rows; wt is the weight input-major,
// [in, out] row-major, so the inner loop runs over outputs (FMAs, no horizontal sums).
template <int64_t NR, int64_t NC>
void tile(const float* x, const float* wt, float* acc, int64_t in, int64_t out_features,
          int64_t nr, int64_t nc) {
  const int64_t rows = NR ? NR : nr, cols = NC ? NC : nc;
  for (int64_t i = 0; i < in; ++i) {
    const float* w = wt + i * out_features;
    for (int64_t r = 0; r < rows; ++r) {
      const float xv = x[r * in + i];
      float* a = acc + r * COLS;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) a[c] += xv * w[c];
    }
  }
}

void matmul(const float* x, const float* wt, const float* bias, float* out, int64_t rows,
            int64_t in, int64_t out_features) {
  alignas(64) float acc[ROWS * COLS];
  for (int64_t r0 = 0; r0 < rows; r0 += ROWS) {
    const int64_t nr = rows - r0 < ROWS ? rows - r0 : ROWS;
    for (int64_t c0 = 0; c0 < out_features; c0 += COLS) {
      const int64_t nc = out_features - c0 < COLS ? out_features - c0 : COLS;
      for (int64_t k = 0; k < ROWS * COLS; ++k) acc[k] = 0.f;
      const float* xr = x + r0 * in;
      if (nr == ROWS && nc == COLS)
        tile<ROWS, COLS>(xr, wt + c0, acc, in, out_features, nr, nc);
      else if (nc == COLS)
        tile<0, COLS>(xr, wt + c0, acc, in, out_features, nr, nc);
      else
        tile<0, 0>(xr, wt + c0, acc, in, out_features, nr, nc);
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t c = 0; c < nc; ++c)
          out[(r0 + r) * out_features + c0 + c] = acc[r * COLS + c] + (bias ? bias[c0 + c] : 0.f);
    }
  }
}

void rms_norm(const float* x, const float* weight, float* out, int64_t n, float eps) {
  const float mean = dot(x, x, n) / static_cast<float>(n);
  const float inv = 1.f / std::sqrt(mean + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = weight[i] * (x[i] * inv);
}

// HF rotate_half rotary on one head: cos/sin rows hold [freqs, freqs].
void rope(float* x, const float* cos, const float* sin, int64_t d) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * cos[i] - b * sin[i];
    x[i + half] = b * cos[i + half] + a * sin[i + half];
  }
}

// One row's attention: q [heads, head_dim] over `ctx` cached tokens -> out [heads, head_dim].
void attend(const float* q, const float* k_cache, const float* v_cache, const int64_t* table,
            int64_t ctx, const Dims& d, float* scores, float* out) {
  const int64_t group = d.heads / d.kv_heads;
  const float scale = 1.f / std::sqrt(static_cast<float>(d.head_dim));
  for (int64_t h = 0; h < d.heads; ++h) {
    const int64_t g = h / group;
    const float* qh = q + h * d.head_dim;
    float best = -INFINITY;
    for (int64_t t = 0; t < ctx; ++t) {
      const int64_t slot = table[t / d.block_size] * d.block_size + t % d.block_size;
      scores[t] = dot(qh, k_cache + (slot * d.kv_heads + g) * d.head_dim, d.head_dim) * scale;
      best = std::fmax(best, scores[t]);
    }
    float total = 0.f;
    for (int64_t t = 0; t < ctx; ++t) total += (scores[t] = std::exp(scores[t] - best));
    float* oh = out + h * d.head_dim;
    for (int64_t i = 0; i < d.head_dim; ++i) oh[i] = 0.f;
    for (int64_t t = 0; t < ctx; ++t) {
      const int64_t slot = table[t / d.block_size] * d.block_size + t % d.block_size;
      const float* v = v_cache + (slot * d.kv_heads + g) * d.head_dim;
      const float p = scores[t] / total;
#pragma omp simd
      for (int64_t i = 0; i < d.head_dim; ++i) oh[i] += p * v[i];
    }
  }
}

}  // namespace

extern "C" int rlserve_decode_step(
    int64_t rows, const int64_t* token_ids, const int64_t* positions, const int64_t* slots,
    const int64_t* block_tables, int64_t max_blocks, const int64_t* context_lens,
    int64_t num_layers, int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim,
    int64_t inter, int64_t vocab, int64_t block_size, float eps, const float* embed,
    const float* head_t, const float* final_norm, const float* const* layer_ptrs,
    const float* cos, const float* sin, int64_t* out_tokens, float* out_logprobs) {
  const Dims d{hidden, heads, kv_heads, head_dim, inter, vocab, block_size, eps};
  if (rows < 1 || heads % kv_heads != 0 || head_dim % 2 != 0) return 1;
  const int64_t q_size = heads * head_dim, kv_size = kv_heads * head_dim;
  const int64_t qkv_size = q_size + 2 * kv_size;
  int64_t max_ctx = 0;
  for (int64_t r = 0; r < rows; ++r) max_ctx = context_lens[r] > max_ctx ? context_lens[r] : max_ctx;
  std::vector<float> residual(rows * hidden), normed(rows * hidden), qkv(rows * qkv_size),
      attn(rows * q_size), proj(rows * hidden), gate_up(rows * 2 * inter), act(rows * inter),
      scores(max_ctx), logits(rows * vocab);
  for (int64_t r = 0; r < rows; ++r) {
    if (token_ids[r] < 0 || token_ids[r] >= vocab) return 2;
    for (int64_t i = 0; i < hidden; ++i) residual[r * hidden + i] = embed[token_ids[r] * hidden + i];
  }
  for (int64_t l = 0; l < num_layers; ++l) {
    const float* const* p = layer_ptrs + l * NUM_LAYER_PTRS;
    float* k_cache = const_cast<float*>(p[K_CACHE]);
    float* v_cache = const_cast<float*>(p[V_CACHE]);
    for (int64_t r = 0; r < rows; ++r)
      rms_norm(&residual[r * hidden], p[IN_NORM], &normed[r * hidden], hidden, eps);
    matmul(normed.data(), p[QKV_W], p[QKV_B], qkv.data(), rows, hidden, qkv_size);
    for (int64_t r = 0; r < rows; ++r) {
      float* q = &qkv[r * qkv_size];
      float* k = q + q_size;
      const float* v = k + kv_size;
      const float* c = cos + positions[r] * head_dim;
      const float* s = sin + positions[r] * head_dim;
      for (int64_t h = 0; h < heads; ++h) {
        float* qh = q + h * head_dim;
        if (p[Q_NORM]) rms_norm(qh, p[Q_NORM], qh, head_dim, eps);
        rope(qh, c, s, head_dim);
      }
      for (int64_t h = 0; h < kv_heads; ++h) {
        float* kh = k + h * head_dim;
        if (p[K_NORM]) rms_norm(kh, p[K_NORM], kh, head_dim, eps);
        rope(kh, c, s, head_dim);
      }
      for (int64_t i = 0; i < kv_size; ++i) {
        k_cache[slots[r] * kv_size + i] = k[i];
        v_cache[slots[r] * kv_size + i] = v[i];
      }
      attend(q, k_cache, v_cache, block_tables + r * max_blocks, context_lens[r], d,
             scores.data(), &attn[r * q_size]);
    }
    matmul(attn.data(), p[O_W], p[O_B], proj.data(), rows, q_size, hidden);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < hidden; ++i) residual[r * hidden + i] += proj[r * hidden + i];
      rms_norm(&residual[r * hidden], p[POST_NORM], &normed[r * hidden], hidden, eps);
    }
    matmul(normed.data(), p[GATE_UP_W], nullptr, gate_up.data(), rows, hidden, 2 * inter);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < inter; ++i) {
        const float g = gate_up[r * 2 * inter + i], u = gate_up[r * 2 * inter + inter + i];
        act[r * inter + i] = g / (1.f + std::exp(-g)) * u;
      }
    matmul(act.data(), p[DOWN_W], nullptr, proj.data(), rows, inter, hidden);
    for (int64_t i = 0; i < rows * hidden; ++i) residual[i] += proj[i];
  }
  for (int64_t r = 0; r < rows; ++r)
    rms_norm(&residual[r * hidden], final_norm, &normed[r * hidden], hidden, eps);
  matmul(normed.data(), head_t, nullptr, logits.data(), rows, hidden, vocab);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = &logits[r * vocab];
    int64_t best = 0;
    for (int64_t v = 1; v < vocab; ++v) best = row[v] > row[best] ? v : best;
    float total = 0.f;
    for (int64_t v = 0; v < vocab; ++v) total += std::exp(row[v] - row[best]);
    out_tokens[r] = best;
    out_logprobs[r] = -std::log(total);
  }
  return 0;
}
