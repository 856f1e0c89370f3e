// Ternary × int8 matrix multiply on CPU for BitNet layers (services/bitnet/core/kernel.py builds and calls it).
//
// Weight layout (KernelWeight.data, uint8 (out, row_bytes)), one row per output feature, 2 bits per weight
// holding c = w + 1 ∈ {0, 1, 2}:
//   - main blocks: q = in / 128 blocks of 32 bytes; byte j of block t holds weights 128t + j + 32k at bits
//     2k..2k+1 (k = 0..3), so (byte >> 2k) & 3 over the 32 bytes is the 32 consecutive weights 128t+32k...
//   - tail: r = in % 128 weights in ns = ceil(r / 32) sub-blocks of 8 bytes; byte j of sub-block s holds
//     weights 128q + 32s + j + 8k at bits 2k; codes past `in` are 1 (w = 0).
//   row_bytes = 32q + 8ns, less than ceil(in/4) + 8 (the tail's last sub-block is padded to 8 bytes).
//
// Arithmetic: acc[b,o] = Σ_i c[o,i]·x[b,i] − Σ_i x[b,i] = Σ_i w[o,i]·x[b,i], exact in int32 for every int8
// x (−128 included) while in ≤ 2^24 (intermediates wrap modulo 2^32, see wrap_sub). The AVX2 path multiplies
// the unsigned codes by signed activations with vpmaddubsw (pairs ≤ 2·2·128 = 512 in magnitude, never
// saturating), sums 16 main blocks in int16 (≤ 16·4·512 = 32768 in magnitude; the positive bound is 32512
// and −32768 is representable), then widens to int32 with vpmaddwd; 8 output rows are reduced together
// (vphaddd) and get a vector epilogue. The AVX-512 VNNI path (vpdpbusd: unsigned codes × signed activations,
// groups of 4 products added straight into int32 lanes, wrapping like every other sum here) loads two
// consecutive 32-byte weight blocks per 512-bit register and reads the activations in the matching "pair
// order" (Activations::pairs, built once per call); at batch 1 it computes eight output rows at once, sharing
// the activation loads. The portable path sums the same blocks in int16 (≤ 16·4·2·128 = 16384) and lets the
// compiler vectorise.
// Weights are decoded in registers; a call allocates its (B, out) output and O(B) bookkeeping, nothing
// of size out×in. Output rows are split over torch's intra-op threads with at::parallel_for.
//
// Float epilogue (identical in every backend and in the torch reference):
//   y = (float(acc) * x_scale[b]) * w_scale, two separately rounded float32 multiplies.
//
// linear_f32 first quantizes float32 activations per token (row of x) into a per-call scratch buffer,
// bit-identical to services.bitnet.core.quant.activation_quant: amax = max_i |x[b,i]| in float32, clamped
// below at 1e-6f; scale = amax / 127.0f; q = clamp(nearbyint(x / scale), −127, 127) with round half to even.
// True IEEE divisions throughout (this file must not be built with -ffast-math / -freciprocal-math).
// Rows holding NaN or ±inf are rejected (ValueError) rather than given torch's undefined NaN → int8 cast.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define AF_X86 1
#endif

namespace {

constexpr int64_t kBlock = 128;      // weights per main block
constexpr int64_t kBlockBytes = 32;
constexpr int64_t kSub = 32;         // weights per tail sub-block
constexpr int64_t kSubBytes = 8;
constexpr int64_t kFlush = 16;       // main blocks summed in int16 before widening (see the bound above)
constexpr int64_t kRowTile = 64;     // output rows kept hot in cache while all batch tiles pass over them

struct Geometry {
  int64_t in, q, r, ns, row_bytes;
  explicit Geometry(int64_t in_) : in(in_), q(in_ / kBlock), r(in_ % kBlock), ns((in_ % kBlock + kSub - 1) / kSub) {
    row_bytes = q * kBlockBytes + ns * kSubBytes;
  }
};

// a − b modulo 2^32. Σ c·x can pass 2^31 for long rows (c ≤ 2) while Σ w·x = Σ c·x − Σ x fits int32 for
// in ≤ 2^24, so the wrap cancels; SIMD adds wrap by definition, scalar code goes through uint32 here.
inline int32_t wrap_sub(int32_t a, int32_t b) {
  return static_cast<int32_t>(static_cast<uint32_t>(a) - static_cast<uint32_t>(b));
}

// Where results go: raw int32 accumulators, or the float epilogue.
struct Sink {
  int32_t* acc = nullptr;
  float* y = nullptr;
  const float* x_scale = nullptr;
  float w_scale = 1.0f;
  int64_t ld = 0;  // out_features
  inline void put(int64_t b, int64_t o, int32_t v) const {
    if (y) {
      float r = static_cast<float>(v);
      r = r * x_scale[b];
      r = r * w_scale;
      y[b * ld + o] = r;
    } else {
      acc[b * ld + o] = v;
    }
  }
};

// Per-call activation data shared by all output rows: the row sums and each row's zero-padded tail.
struct Activations {
  const int8_t* x;
  int64_t B;
  std::vector<int32_t> sum;
  std::vector<int8_t> tail;  // (B, 128): x[b, 128q:] followed by zeros
  // VNNI path only: per row, the main blocks' activations in pair order — for block pair p (blocks 2p, 2p+1)
  // and k = 0..3, 64 bytes: x[256p + 32k + j] (j < 32) then x[256p + 128 + 32k + j] — so one 64-byte load
  // lines up with the 4th-of-a-byte codes of a 64-byte load of two consecutive weight blocks.
  std::vector<int8_t> pairs;
  int64_t pair_stride = 0;
  Activations(const int8_t* x_, int64_t B_, const Geometry& g, bool pair_order = false)
      : x(x_), B(B_), sum(B_), tail(B_ * kBlock, 0) {
    if (pair_order) {
      pair_stride = (g.q / 2) * 2 * kBlock;
      pairs.resize(static_cast<size_t>(B * pair_stride));
    }
    for (int64_t b = 0; b < B; ++b) {
      const int8_t* xr = x + b * g.in;
      int32_t s = 0;
      for (int64_t i = 0; i < g.in; ++i) s += xr[i];
      sum[b] = s;
      if (g.r) std::memcpy(tail.data() + b * kBlock, xr + g.q * kBlock, g.r);
      for (int64_t p = 0; pair_order && p < g.q / 2; ++p)
        for (int64_t k = 0; k < 4; ++k) {
          int8_t* dst = pairs.data() + b * pair_stride + p * 2 * kBlock + k * 64;
          std::memcpy(dst, xr + 2 * p * kBlock + 32 * k, 32);
          std::memcpy(dst + 32, xr + (2 * p + 1) * kBlock + 32 * k, 32);
        }
    }
  }
  const int8_t* row(int64_t b, int64_t in) const { return x + b * in; }
  const int8_t* tail_row(int64_t b) const { return tail.data() + b * kBlock; }
  const int8_t* pair_row(int64_t b) const { return pairs.data() + b * pair_stride; }
};

// ---------------------------------------------------------------------------------------------------------
// Portable path: plain C++, no intrinsics (the compiler may auto-vectorise it for the baseline ISA).
uint32_t dot_portable(const uint8_t* wrow, const int8_t* x, const int8_t* xtail, const Geometry& g) {
  uint32_t acc = 0;  // modulo 2^32, see wrap_sub
  for (int64_t t0 = 0; t0 < g.q; t0 += kFlush) {
    const int64_t t1 = std::min(g.q, t0 + kFlush);
    int16_t s[32] = {0};  // |s| ≤ 16 blocks · 4 · 2 · 128 = 16384: exact in int16
    for (int64_t t = t0; t < t1; ++t) {
      const uint8_t* wb = wrow + t * kBlockBytes;
      const int8_t* xb = x + t * kBlock;
      for (int j = 0; j < 32; ++j) {
        const int16_t v = wb[j];
        s[j] = static_cast<int16_t>(s[j] + (v & 3) * xb[j] + ((v >> 2) & 3) * xb[32 + j] +
                                    ((v >> 4) & 3) * xb[64 + j] + (v >> 6) * xb[96 + j]);
      }
    }
    for (int j = 0; j < 32; ++j) acc += static_cast<uint32_t>(static_cast<int32_t>(s[j]));
  }
  const uint8_t* wt = wrow + g.q * kBlockBytes;
  for (int64_t s = 0; s < g.ns; ++s) {
    for (int j = 0; j < 8; ++j) {
      const int32_t v = wt[s * kSubBytes + j];
      const int8_t* xs = xtail + s * kSub + j;
      acc += static_cast<uint32_t>((v & 3) * xs[0] + ((v >> 2) & 3) * xs[8] + ((v >> 4) & 3) * xs[16] +
                                   (v >> 6) * xs[24]);
    }
  }
  return acc;
}

void rows_portable(const uint8_t* w, const Activations& a, const Geometry& g, int64_t o0, int64_t o1,
                   const Sink& sink) {
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t* wrow = w + o * g.row_bytes;
    for (int64_t b = 0; b < a.B; ++b)
      sink.put(b, o, wrap_sub(static_cast<int32_t>(dot_portable(wrow, a.row(b, g.in), a.tail_row(b), g)), a.sum[b]));
  }
}

constexpr float kActEps = 1e-6f;   // quant.EPS as float32 (torch's clamp(min=1e-6) on a float32 tensor)
constexpr float kActMax = 127.0f;  // quant.ACT_MAX

inline int8_t quant_one(float v, float scale) {
  float r = std::nearbyint(v / scale);  // the default rounding mode: to nearest, ties to even (torch.round)
  r = std::min(std::max(r, -kActMax), kActMax);
  return static_cast<int8_t>(static_cast<int32_t>(r));
}

// One row of per-token absmax quantization (see the header); false when the row holds NaN or ±inf.
bool quant_row_portable(const float* x, int64_t n, int8_t* q, float* scale_out) {
  float amax = 0.0f;
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    finite &= a <= FLT_MAX;  // false for inf and NaN
    amax = a > amax ? a : amax;
  }
  if (!finite) return false;
  const float scale = std::max(amax, kActEps) / kActMax;
  for (int64_t i = 0; i < n; ++i) q[i] = quant_one(x[i], scale);
  *scale_out = scale;
  return true;
}

// ---------------------------------------------------------------------------------------------------------
// AVX2 path (compiled for AVX2 via the target attribute only; called only when the CPU has it).
#ifdef AF_X86
#define AF_AVX2 __attribute__((target("avx2")))

AF_AVX2 inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

AF_AVX2 inline __m256i loadu(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// The r = in % 128 tail (ns ≤ 4 sub-blocks: ≤ 4·512 in int16), added to acc32[b] (AVX2, any NB).
template <int NB>
AF_AVX2 inline void tail_avx2(const uint8_t* wrow, const int8_t* const* xt, const Geometry& g, __m256i* acc32) {
  const __m256i m3 = _mm256_set1_epi8(3);
  const __m256i ones16 = _mm256_set1_epi16(1);
  const uint8_t* wt = wrow + g.q * kBlockBytes;
  const __m256i shifts = _mm256_set_epi64x(6, 4, 2, 0);
  __m256i acc16[NB];
  for (int b = 0; b < NB; ++b) acc16[b] = _mm256_setzero_si256();
  for (int64_t s = 0; s < g.ns; ++s) {
    long long v;
    std::memcpy(&v, wt + s * kSubBytes, sizeof v);
    // 64-bit lane k = the 8 bytes >> 2k; & 3 per byte leaves weight 8k + j in byte j of lane k
    const __m256i c = _mm256_and_si256(_mm256_srlv_epi64(_mm256_set1_epi64x(v), shifts), m3);
    for (int b = 0; b < NB; ++b)
      acc16[b] = _mm256_add_epi16(acc16[b], _mm256_maddubs_epi16(c, loadu(xt[b] + s * kSub)));
  }
  for (int b = 0; b < NB; ++b) acc32[b] = _mm256_add_epi32(acc32[b], _mm256_madd_epi16(acc16[b], ones16));
}

// One output row × NB batch rows starting at b0: the lanes of res[b] sum to Σ_i c[i]·x[b0+b,i] (before the
// −Σx correction).
template <int NB>
AF_AVX2 void tile_avx2(const uint8_t* wrow, const Activations& a, int64_t b0, const Geometry& g, __m256i* res) {
  const __m256i m3 = _mm256_set1_epi8(3);
  const __m256i ones16 = _mm256_set1_epi16(1);
  const int8_t* xr[NB];
  const int8_t* xt[NB];
  for (int b = 0; b < NB; ++b) {
    xr[b] = a.row(b0 + b, g.in);
    xt[b] = a.tail_row(b0 + b);
  }
  __m256i acc32[NB];
  for (int b = 0; b < NB; ++b) acc32[b] = _mm256_setzero_si256();
  for (int64_t t0 = 0; t0 < g.q; t0 += kFlush) {
    const int64_t t1 = std::min(g.q, t0 + kFlush);
    __m256i acc16[NB];
    for (int b = 0; b < NB; ++b) acc16[b] = _mm256_setzero_si256();
    for (int64_t t = t0; t < t1; ++t) {
      const __m256i v = loadu(wrow + t * kBlockBytes);
      const __m256i c0 = _mm256_and_si256(v, m3);
      const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(v, 2), m3);
      const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m3);
      const __m256i c3 = _mm256_and_si256(_mm256_srli_epi16(v, 6), m3);
      for (int b = 0; b < NB; ++b) {
        const int8_t* xp = xr[b] + t * kBlock;
        __m256i s0 = _mm256_maddubs_epi16(c0, loadu(xp));
        __m256i s1 = _mm256_maddubs_epi16(c1, loadu(xp + 32));
        __m256i s2 = _mm256_maddubs_epi16(c2, loadu(xp + 64));
        __m256i s3 = _mm256_maddubs_epi16(c3, loadu(xp + 96));
        acc16[b] = _mm256_add_epi16(acc16[b], _mm256_add_epi16(_mm256_add_epi16(s0, s1), _mm256_add_epi16(s2, s3)));
      }
    }
    for (int b = 0; b < NB; ++b) acc32[b] = _mm256_add_epi32(acc32[b], _mm256_madd_epi16(acc16[b], ones16));
  }
  if (g.ns) tail_avx2<NB>(wrow, xt, g, acc32);
  for (int b = 0; b < NB; ++b) res[b] = acc32[b];
}

// Lane r of the result = the sum of the 8 lanes of v[r].
AF_AVX2 inline __m256i hsum8_epi32(const __m256i* v) {
  const __m256i s01 = _mm256_hadd_epi32(v[0], v[1]);
  const __m256i s23 = _mm256_hadd_epi32(v[2], v[3]);
  const __m256i s45 = _mm256_hadd_epi32(v[4], v[5]);
  const __m256i s67 = _mm256_hadd_epi32(v[6], v[7]);
  const __m256i s0123 = _mm256_hadd_epi32(s01, s23);  // 128-bit halves: sums of v0..v3 over low / high lanes
  const __m256i s4567 = _mm256_hadd_epi32(s45, s67);
  return _mm256_add_epi32(_mm256_permute2x128_si256(s0123, s4567, 0x20),
                          _mm256_permute2x128_si256(s0123, s4567, 0x31));
}

// Results for outputs o..o+7 of batch row b; the same float ops and order as Sink::put.
AF_AVX2 inline void put8(const Sink& sink, int64_t b, int64_t o, __m256i v) {
  if (sink.y) {
    __m256 r = _mm256_cvtepi32_ps(v);
    r = _mm256_mul_ps(r, _mm256_set1_ps(sink.x_scale[b]));
    r = _mm256_mul_ps(r, _mm256_set1_ps(sink.w_scale));
    _mm256_storeu_ps(sink.y + b * sink.ld + o, r);
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sink.acc + b * sink.ld + o), v);
  }
}

// AVX-512 VNNI tile: vpdpbusd multiplies the unsigned codes by signed activations and adds groups of 4
// products straight into int32 lanes (no int16 stage, no saturation). Two weight blocks per 64-byte load,
// matched by the pair-ordered activations (Activations::pairs); an odd last block and the tail use 256-bit
// vectors. Sums wrap modulo 2^32 like every other path, so the result is bit-identical.
#define AF_VNNI __attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512vnni")))
template <int NB>
AF_VNNI void tile_vnni(const uint8_t* wrow, const Activations& a, int64_t b0, const Geometry& g, __m256i* res) {
  const __m512i m3 = _mm512_set1_epi8(3);
  const int8_t* xp[NB];
  const int8_t* xt[NB];
  for (int b = 0; b < NB; ++b) {
    xp[b] = a.pair_row(b0 + b);
    xt[b] = a.tail_row(b0 + b);
  }
  __m512i acc[NB][4];  // one chain per k: four independent vpdpbusd dependency chains
  for (int b = 0; b < NB; ++b)
    for (int k = 0; k < 4; ++k) acc[b][k] = _mm512_setzero_si512();
  const int64_t np = g.q / 2;
  for (int64_t p = 0; p < np; ++p) {
    const __m512i v = _mm512_loadu_si512(wrow + p * 2 * kBlockBytes);
    const __m512i c0 = _mm512_and_si512(v, m3);
    const __m512i c1 = _mm512_and_si512(_mm512_srli_epi16(v, 2), m3);
    const __m512i c2 = _mm512_and_si512(_mm512_srli_epi16(v, 4), m3);
    const __m512i c3 = _mm512_and_si512(_mm512_srli_epi16(v, 6), m3);
    for (int b = 0; b < NB; ++b) {
      const int8_t* x = xp[b] + p * 2 * kBlock;
      acc[b][0] = _mm512_dpbusd_epi32(acc[b][0], c0, _mm512_loadu_si512(x));
      acc[b][1] = _mm512_dpbusd_epi32(acc[b][1], c1, _mm512_loadu_si512(x + 64));
      acc[b][2] = _mm512_dpbusd_epi32(acc[b][2], c2, _mm512_loadu_si512(x + 128));
      acc[b][3] = _mm512_dpbusd_epi32(acc[b][3], c3, _mm512_loadu_si512(x + 192));
    }
  }
  __m256i acc32[NB];
  for (int b = 0; b < NB; ++b) {
    const __m512i s = _mm512_add_epi32(_mm512_add_epi32(acc[b][0], acc[b][1]), _mm512_add_epi32(acc[b][2], acc[b][3]));
    acc32[b] = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
  }
  if (g.q % 2) {  // the odd last main block, 256 bits wide, activations from the plain row
    const int64_t t = g.q - 1;
    const __m256i m3y = _mm256_set1_epi8(3);
    const __m256i v = loadu(wrow + t * kBlockBytes);
    const __m256i c[4] = {_mm256_and_si256(v, m3y), _mm256_and_si256(_mm256_srli_epi16(v, 2), m3y),
                          _mm256_and_si256(_mm256_srli_epi16(v, 4), m3y), _mm256_and_si256(_mm256_srli_epi16(v, 6), m3y)};
    for (int b = 0; b < NB; ++b) {
      const int8_t* x = a.row(b0 + b, g.in) + t * kBlock;
      for (int k = 0; k < 4; ++k) acc32[b] = _mm256_dpbusd_epi32(acc32[b], c[k], loadu(x + 32 * k));
    }
  }
  if (g.ns) tail_avx2<NB>(wrow, xt, g, acc32);
  for (int b = 0; b < NB; ++b) res[b] = acc32[b];
}

// Eight output rows × one batch row (the decode case, B = 1): the activation loads are shared by the eight
// rows and each row keeps one accumulator, so the per-row fixed cost (zeroing, reductions) is one register
// instead of four; eight independent dependency chains keep vpdpbusd busy. Lane sums of res[r] as tile_vnni.
AF_VNNI void tile8_vnni(const uint8_t* w0, const Activations& a, int64_t b0, const Geometry& g, __m256i* res) {
  const __m512i m3 = _mm512_set1_epi8(3);
  const int8_t* xp = a.pair_row(b0);
  __m512i acc[8];
  for (int r = 0; r < 8; ++r) acc[r] = _mm512_setzero_si512();
  const int64_t np = g.q / 2;
  for (int64_t p = 0; p < np; ++p) {
    const int8_t* x = xp + p * 2 * kBlock;
    const __m512i x0 = _mm512_loadu_si512(x), x1 = _mm512_loadu_si512(x + 64);
    const __m512i x2 = _mm512_loadu_si512(x + 128), x3 = _mm512_loadu_si512(x + 192);
    for (int r = 0; r < 8; ++r) {
      const __m512i v = _mm512_loadu_si512(w0 + r * g.row_bytes + p * 2 * kBlockBytes);
      __m512i s = _mm512_dpbusd_epi32(acc[r], _mm512_and_si512(v, m3), x0);
      s = _mm512_dpbusd_epi32(s, _mm512_and_si512(_mm512_srli_epi16(v, 2), m3), x1);
      s = _mm512_dpbusd_epi32(s, _mm512_and_si512(_mm512_srli_epi16(v, 4), m3), x2);
      acc[r] = _mm512_dpbusd_epi32(s, _mm512_and_si512(_mm512_srli_epi16(v, 6), m3), x3);
    }
  }
  for (int r = 0; r < 8; ++r) res[r] = _mm256_add_epi32(_mm512_castsi512_si256(acc[r]), _mm512_extracti64x4_epi64(acc[r], 1));
  if (g.q % 2) {
    const int64_t t = g.q - 1;
    const __m256i m3y = _mm256_set1_epi8(3);
    const int8_t* x = a.row(b0, g.in) + t * kBlock;
    const __m256i x0 = loadu(x), x1 = loadu(x + 32), x2 = loadu(x + 64), x3 = loadu(x + 96);
    for (int r = 0; r < 8; ++r) {
      const __m256i v = loadu(w0 + r * g.row_bytes + t * kBlockBytes);
      __m256i s = _mm256_dpbusd_epi32(res[r], _mm256_and_si256(v, m3y), x0);
      s = _mm256_dpbusd_epi32(s, _mm256_and_si256(_mm256_srli_epi16(v, 2), m3y), x1);
      s = _mm256_dpbusd_epi32(s, _mm256_and_si256(_mm256_srli_epi16(v, 4), m3y), x2);
      res[r] = _mm256_dpbusd_epi32(s, _mm256_and_si256(_mm256_srli_epi16(v, 6), m3y), x3);
    }
  }
  if (g.ns) {
    const int8_t* xt = a.tail_row(b0);
    for (int r = 0; r < 8; ++r) tail_avx2<1>(w0 + r * g.row_bytes, &xt, g, &res[r]);
  }
}

AF_VNNI void single_row_vnni(const uint8_t* w, const Activations& a, const Geometry& g, int64_t b0, int64_t o0,
                             int64_t o1, const Sink& sink) {
  __m256i acc[8];
  int64_t o = o0;
  for (; o + 8 <= o1; o += 8) {
    tile8_vnni(w + o * g.row_bytes, a, b0, g, acc);
    put8(sink, b0, o, _mm256_sub_epi32(hsum8_epi32(acc), _mm256_set1_epi32(a.sum[b0])));
  }
  for (; o < o1; ++o) {
    tile_vnni<1>(w + o * g.row_bytes, a, b0, g, acc);
    sink.put(b0, o, wrap_sub(hsum_epi32(acc[0]), a.sum[b0]));
  }
}

// Row loops for one ISA: 8 output rows at a time (one transposing reduction, vector epilogue), batch rows in
// tiles of ≤ 4, output rows in tiles of kRowTile kept hot in cache while the batch tiles pass over them.
#define AF_DEFINE_ROWS(ISA, ATTR)                                                                              \
  template <int NB>                                                                                            \
  ATTR void batch_tile_##ISA(const uint8_t* w, const Activations& a, const Geometry& g, int64_t b0, int64_t o0, \
                             int64_t o1, const Sink& sink) {                                                   \
    __m256i acc[8][NB];                                                                                        \
    int64_t o = o0;                                                                                            \
    for (; o + 8 <= o1; o += 8) {                                                                              \
      for (int r = 0; r < 8; ++r) tile_##ISA<NB>(w + (o + r) * g.row_bytes, a, b0, g, acc[r]);                \
      for (int b = 0; b < NB; ++b) {                                                                           \
        __m256i v[8];                                                                                          \
        for (int r = 0; r < 8; ++r) v[r] = acc[r][b];                                                          \
        put8(sink, b0 + b, o, _mm256_sub_epi32(hsum8_epi32(v), _mm256_set1_epi32(a.sum[b0 + b])));             \
      }                                                                                                        \
    }                                                                                                          \
    for (; o < o1; ++o) {                                                                                      \
      tile_##ISA<NB>(w + o * g.row_bytes, a, b0, g, acc[0]);                                                   \
      for (int b = 0; b < NB; ++b) sink.put(b0 + b, o, wrap_sub(hsum_epi32(acc[0][b]), a.sum[b0 + b]));       \
    }                                                                                                          \
  }                                                                                                            \
  ATTR void rows_##ISA(const uint8_t* w, const Activations& a, const Geometry& g, int64_t o0, int64_t o1,       \
                       const Sink& sink) {                                                                     \
    for (int64_t r0 = o0; r0 < o1; r0 += kRowTile) {                                                           \
      const int64_t r1 = std::min(o1, r0 + kRowTile);                                                          \
      int64_t b = 0;                                                                                           \
      for (; b + 4 <= a.B; b += 4) batch_tile_##ISA<4>(w, a, g, b, r0, r1, sink);                              \
      switch (a.B - b) {                                                                                       \
        case 3: batch_tile_##ISA<3>(w, a, g, b, r0, r1, sink); break;                                          \
        case 2: batch_tile_##ISA<2>(w, a, g, b, r0, r1, sink); break;                                          \
        case 1: single_row_##ISA(w, a, g, b, r0, r1, sink); break;                                             \
        default: break;                                                                                        \
      }                                                                                                        \
    }                                                                                                          \
  }

AF_AVX2 void single_row_avx2(const uint8_t* w, const Activations& a, const Geometry& g, int64_t b0, int64_t o0,
                             int64_t o1, const Sink& sink);
AF_DEFINE_ROWS(avx2, AF_AVX2)
AF_AVX2 void single_row_avx2(const uint8_t* w, const Activations& a, const Geometry& g, int64_t b0, int64_t o0,
                             int64_t o1, const Sink& sink) {
  batch_tile_avx2<1>(w, a, g, b0, o0, o1, sink);
}
AF_DEFINE_ROWS(vnni, AF_VNNI)

AF_AVX2 inline __m256i quant8_avx2(const float* p, __m256 scale) {
  const __m256 lim = _mm256_set1_ps(kActMax);
  __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(p), scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  v = _mm256_min_ps(_mm256_max_ps(v, _mm256_sub_ps(_mm256_setzero_ps(), lim)), lim);
  return _mm256_cvtps_epi32(v);  // exact: v is integral
}

// quant_row_portable with 8-wide abs-max, division and rounding (same float ops, same results).
AF_AVX2 bool quant_row_avx2(const float* x, int64_t n, int8_t* q, float* scale_out) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 fmax = _mm256_set1_ps(FLT_MAX);
  __m256 m[4], bad = _mm256_setzero_ps();
  for (auto& v : m) v = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (int k = 0; k < 4; ++k) {
      const __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + i + 8 * k), absmask);
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ));  // > FLT_MAX or unordered: inf, NaN
      m[k] = _mm256_max_ps(m[k], a);
    }
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + i), absmask);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ));
    m[0] = _mm256_max_ps(m[0], a);
  }
  if (_mm256_movemask_ps(bad)) return false;
  float lanes[8];
  _mm256_storeu_ps(lanes, _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3])));
  float amax = 0.0f;
  for (float a : lanes) amax = a > amax ? a : amax;
  for (; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (!(a <= FLT_MAX)) return false;
    amax = a > amax ? a : amax;
  }
  const float scale = std::max(amax, kActEps) / kActMax;
  const __m256 vs = _mm256_set1_ps(scale);
  // 4 × 8 int32 → 32 int8: the two saturating packs interleave 128-bit lanes; the permute restores order
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m256i ab = _mm256_packs_epi32(quant8_avx2(x + j, vs), quant8_avx2(x + j + 8, vs));
    const __m256i cd = _mm256_packs_epi32(quant8_avx2(x + j + 16, vs), quant8_avx2(x + j + 24, vs));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + j),
                        _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order));
  }
  for (; j < n; ++j) q[j] = quant_one(x[j], scale);
  *scale_out = scale;
  return true;
}
#endif  // AF_X86

bool cpu_has_avx2() {
#ifdef AF_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

bool cpu_has_avx512vnni() {
#ifdef AF_X86
  __builtin_cpu_init();
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

enum Backend : int64_t { kPortable = 0, kAvx2 = 1, kVnni = 2 };

void check_weight(const torch::Tensor& w, int64_t in_features, int64_t backend) {
  const Geometry g(in_features);
  TORCH_CHECK(w.dtype() == torch::kUInt8 && w.dim() == 2 && w.is_contiguous() && w.device().is_cpu(),
              "weight must be a contiguous CPU uint8 (out, row_bytes) tensor");
  TORCH_CHECK(w.size(1) == g.row_bytes, "weight shape (", w.size(0), ", ", w.size(1), ") does not match in=",
              in_features, " (row_bytes ", g.row_bytes, ")");
  TORCH_CHECK(in_features <= (int64_t(1) << 24), "in_features > 2^24 could overflow the int32 accumulators");
  TORCH_CHECK(backend == kPortable || backend == kAvx2 || backend == kVnni, "unknown backend id ", backend);
  TORCH_CHECK(backend != kAvx2 || cpu_has_avx2(), "the avx2 backend needs a CPU with AVX2");
  TORCH_CHECK(backend != kVnni || cpu_has_avx512vnni(), "the avx512vnni backend needs AVX-512 F/BW/VL/VNNI");
}

void check_x(const torch::Tensor& x, c10::ScalarType dtype, int64_t in_features, const char* what) {
  TORCH_CHECK(x.dtype() == dtype && x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(),
              "x must be a contiguous CPU ", what, " (B, in) tensor");
  TORCH_CHECK(x.size(1) == in_features, "x has ", x.size(1), " features, the weight expects ", in_features);
}

// The matmul over B rows of int8 activations x (B, in), results into sink; arguments already checked.
void run(const int8_t* x, int64_t B, const torch::Tensor& w, int64_t in_features, int64_t backend, const Sink& sink) {
  const Geometry g(in_features);
  const int64_t out_features = w.size(0);
  if (B == 0 || out_features == 0) return;
  const Activations a(x, B, g, backend == kVnni);
  const uint8_t* wp = w.data_ptr<uint8_t>();
  // ≥ 2^17 weight·activation products (~2 µs) per task: a second thread costs ~1 µs to start here
  const int64_t work_per_row = std::max<int64_t>(1, B * std::max<int64_t>(in_features, 1));
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 17) / work_per_row);
  at::parallel_for(0, out_features, grain, [&](int64_t o0, int64_t o1) {
#ifdef AF_X86
    if (backend == kVnni) {
      rows_vnni(wp, a, g, o0, o1, sink);
      return;
    }
    if (backend == kAvx2) {
      rows_avx2(wp, a, g, o0, o1, sink);
      return;
    }
#endif
    rows_portable(wp, a, g, o0, o1, sink);
  });
}

torch::Tensor matmul_int(const torch::Tensor& x, const torch::Tensor& w, int64_t in_features, int64_t backend) {
  check_weight(w, in_features, backend);
  check_x(x, torch::kInt8, in_features, "int8");
  const int64_t out_features = w.size(0);
  auto acc = torch::empty({x.size(0), out_features}, torch::dtype(torch::kInt32));
  Sink sink;
  sink.acc = acc.data_ptr<int32_t>();
  sink.ld = out_features;
  run(x.data_ptr<int8_t>(), x.size(0), w, in_features, backend, sink);
  return acc;
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& x_scale, const torch::Tensor& w, int64_t in_features,
                     double w_scale, int64_t backend) {
  check_weight(w, in_features, backend);
  check_x(x, torch::kInt8, in_features, "int8");
  TORCH_CHECK(x_scale.dtype() == torch::kFloat32 && x_scale.dim() == 1 && x_scale.is_contiguous() &&
                  x_scale.device().is_cpu() && x_scale.size(0) == x.size(0),
              "x_scale must be a contiguous float32 (B,) tensor");
  const int64_t out_features = w.size(0);
  auto y = torch::empty({x.size(0), out_features}, torch::dtype(torch::kFloat32));
  Sink sink;
  sink.y = y.data_ptr<float>();
  sink.x_scale = x_scale.data_ptr<float>();
  sink.w_scale = static_cast<float>(w_scale);
  sink.ld = out_features;
  run(x.data_ptr<int8_t>(), x.size(0), w, in_features, backend, sink);
  return y;
}

// Per-token absmax quantization of float32 x (B, in) into scratch (see the header), then `linear`.
torch::Tensor linear_f32(const torch::Tensor& x, const torch::Tensor& w, int64_t in_features, double w_scale,
                         int64_t backend) {
  check_weight(w, in_features, backend);
  check_x(x, torch::kFloat32, in_features, "float32");
  const int64_t B = x.size(0), out_features = w.size(0);
  std::vector<int8_t> q(static_cast<size_t>(B * in_features));
  std::vector<float> scale(static_cast<size_t>(B));
  std::vector<uint8_t> ok(static_cast<size_t>(B), 1);
  const float* xp = x.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(in_features, 1));
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float* xr = xp + b * in_features;
      int8_t* qr = q.data() + b * in_features;
#ifdef AF_X86
      if (backend == kAvx2 || backend == kVnni) {
        ok[b] = quant_row_avx2(xr, in_features, qr, &scale[b]);
        continue;
      }
#endif
      ok[b] = quant_row_portable(xr, in_features, qr, &scale[b]);
    }
  });
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK_VALUE(ok[b], "x row ", b, " holds NaN or inf: absmax int8 quantization is undefined for it");
  auto y = torch::empty({B, out_features}, torch::dtype(torch::kFloat32));
  Sink sink;
  sink.y = y.data_ptr<float>();
  sink.x_scale = scale.data();
  sink.w_scale = static_cast<float>(w_scale);
  sink.ld = out_features;
  run(q.data(), B, w, in_features, backend, sink);
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Ternary (2-bit packed) × int8 matmul kernels for BitNet layers";
  m.def("has_avx2", &cpu_has_avx2, "whether this CPU supports AVX2");
  m.def("has_avx512vnni", &cpu_has_avx512vnni, "whether this CPU supports AVX-512 F/BW/VL and VNNI");
  m.def("row_bytes", [](int64_t in) { return Geometry(in).row_bytes; }, "bytes per weight row for in features");
  m.def("matmul_int", &matmul_int, "int32 accumulators Σ x·w", py::arg("x"), py::arg("w"), py::arg("in_features"),
        py::arg("backend"));
  m.def("linear", &linear, "(float(acc) * x_scale[b]) * w_scale", py::arg("x"), py::arg("x_scale"), py::arg("w"),
        py::arg("in_features"), py::arg("w_scale"), py::arg("backend"));
  m.def("linear_f32", &linear_f32, "per-token absmax int8 quantization of float32 x, then linear", py::arg("x"),
        py::arg("w"), py::arg("in_features"), py::arg("w_scale"), py::arg("backend"));
}
