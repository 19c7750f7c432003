// CPU Gram K = J Jᵀ and combination d = Jᵀw for the few-rows, very-long-rows shape of MTL
// (T ≤ ~100 tasks, P up to 10⁸ parameters).
//
// Why not BLAS: sgemm/ssyrk with M = N = T and K = P spend their time packing panels for a tiny
// output. Measured on one thread of an AMD EPYC (T = 10, P = 11.2 M fp32, 447 MB): torch.mm
// (MKL) 300-400 ms, OpenBLAS 180 ms, ssyrk 290 ms, against 19-24 ms to merely read J once.
// Here J is read once, in blocks of columns that stay in L2 while every tile of K that needs
// them is updated; each tile keeps MI × MJ × L accumulators in registers, and the next block is
// prefetched while the current one is summed (dense_gram.h).
//
// Vector code: the kernels are written over small fixed-size lane arrays that the compiler
// turns into SIMD. They are compiled twice: for the baseline ISA of the build (no -march: the
// library must run on any CPU of the platform) and, on x86-64 with GCC or Clang, for AVX2+FMA
// and (the Gram) AVX-512, picked at run time with __builtin_cpu_supports.

#include "dense.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

// The portable and AVX2 Gram's fp32-sum span (flush_columns), and the alignment of the threads'
// column ranges.
constexpr int64_t kBlock = 512;
// The combination's block: its partial sum (16 KB) stays in L1 while the rows stream, and the
// next block's rows are prefetched into L2 meanwhile. Measured on one thread of an AMD EPYC
// (Zen 4, thread CPU time, medians of 15 alternating runs, T = 10, P = 21.6 M fp32, into a kept
// buffer): 59-61 ms for blocks of 1,024 columns without the prefetch (the kernel before), 50-52
// ms with it (1,024 to 8,192 columns alike), in two runs; 42 ms both in a third. T = 40,
// P = 11.2 M: 129 ms and 99 ms. One plain read of J takes 33-37 ms at T = 10.
constexpr int64_t kBlockCombBytes = 16 * 1024;

#if defined(__GNUC__)
#define MTL_INLINE inline __attribute__((always_inline))
#define MTL_PREFETCH_L2(p) __builtin_prefetch((p), 0, 2)
#else
#define MTL_INLINE inline
#define MTL_PREFETCH_L2(p) ((void)(p))
#endif

// The Gram's blocks: about this many bytes of J (T rows), so that the block being summed and the
// next one, prefetched meanwhile, fit in a 1 MB L2 together. Measured on one thread of an AMD
// EPYC (Zen 4, quiet machine, thread CPU time, medians of 7 to 15 alternating runs), T = 10,
// P = 21.6 M fp32: 70-90 ms without the prefetch (blocks of 2,048 columns: 8 KB runs per row,
// which the hardware prefetcher follows badly; a mere read of T rows in such blocks takes twice
// as long as one of 128 KB runs), 58-68 ms with it, 47-58 ms with the diagonal tiles too
// (dense_gram.h), against 33-37 ms for a plain read of J; T = 40, P = 11.2 M: 318-336 ms,
// 265-286 ms, 249-277 ms, where 820 vector FMAs per 16 columns bound the Gram at about 157 ms
// (this core's fp32 FMA rate: 57-59 G per second, dense_peak.h). The AVX2 kernel (4 × 3 tiles:
// half the arithmetic per step) at T = 40: 412-481 ms without the prefetch, 485-515 ms with it,
// within this machine's run-to-run noise (identical code measured 15 % apart); a rule that
// turned the prefetch off there was not kept for want of a clear gain.
constexpr int64_t kPrefetchBytes = 320 * 1024;

// Prefetches into L2 the cache lines of the block that follows the one being worked on: rows
// 0..rows-1 of a (·, ld) matrix J, columns [end, min(end + block, p1)), row after row, `per`
// lines on each step(), `per` chosen so that `steps` calls cover them all.
class PrefetchCursor {
 public:
  template <typename S>
  PrefetchCursor(const S* J, int64_t ld, int64_t rows, int64_t end, int64_t p1, int64_t block,
                 int64_t steps)
      : base_(reinterpret_cast<const char*>(J + end)),
        ld_bytes_(ld * int64_t(sizeof(S))),
        row_bytes_(std::min(block, std::max<int64_t>(0, p1 - end)) * int64_t(sizeof(S))),
        rows_(row_bytes_ > 0 ? rows : 0) {
    const int64_t lines = rows_ * ((row_bytes_ + 63) / 64);
    per_ = steps > 0 ? (lines + steps - 1) / steps : 0;
  }
  MTL_INLINE void step() {
    for (int64_t k = 0; k < per_ && row_ < rows_; ++k) {
      MTL_PREFETCH_L2(base_ + row_ * ld_bytes_ + offset_);
      offset_ += 64;
      if (offset_ >= row_bytes_) {
        offset_ = 0;
        ++row_;
      }
    }
  }

 private:
  const char* base_;
  int64_t ld_bytes_, row_bytes_, rows_, per_ = 0, row_ = 0, offset_ = 0;
};

// The portable kernels: vectors as small lane arrays (8 fp32 or 4 fp64 lanes, independent: no
// reassociation, so the compiler may vectorise across lanes without -ffast-math), tiles of up to
// 2 × 4 rows.
namespace portable {

template <typename S>
struct Lanes {
  S l[32 / sizeof(S)];
};
template <typename S>
MTL_INLINE Lanes<S> vzero(const S*) {
  return {};
}
template <typename S>
MTL_INLINE Lanes<S> vloadu(const S* p) {
  Lanes<S> v;
  for (size_t i = 0; i < 32 / sizeof(S); ++i) v.l[i] = p[i];
  return v;
}
template <typename S>
MTL_INLINE void vstoreu(S* p, const Lanes<S>& v) {
  for (size_t i = 0; i < 32 / sizeof(S); ++i) p[i] = v.l[i];
}
template <typename S>
MTL_INLINE Lanes<S> vfma(const Lanes<S>& a, const Lanes<S>& b, Lanes<S> c) {
  for (size_t i = 0; i < 32 / sizeof(S); ++i) c.l[i] += a.l[i] * b.l[i];
  return c;
}

constexpr int64_t kVecBytes = 32;
constexpr int kMI = 2;
constexpr int kMJ = 4;
inline int64_t flush_columns(int64_t, int64_t) { return kBlock; }
#define MTL_TARGET
#include "dense_gram.h"
#include "dense_peak.h"
#undef MTL_TARGET

}  // namespace portable

template <int L, typename In>
MTL_INLINE void combine_range(const In* J, const In* w, int64_t T, int64_t ld, int64_t p0,
                              int64_t p1, In* d) {
  In buf[kBlock];
  for (int64_t c0 = p0; c0 < p1; c0 += kBlock) {
    const int64_t n = std::min(kBlock, p1 - c0);
    for (int64_t p = 0; p < n; ++p) buf[p] = In(0);
    for (int64_t t = 0; t < T; ++t) {
      const In wt = w[t];
      const In* row = J + t * ld + c0;
      for (int64_t p = 0; p < n; ++p) buf[p] += wt * row[p];
    }
    for (int64_t p = 0; p < n; ++p) d[c0 + p] = buf[p];
  }
}

template <typename S>
void comb_base(const S* J, const S* w, int64_t T, int64_t ld, int64_t p0, int64_t p1, S* d) {
  combine_range<32 / sizeof(S), S>(J, w, T, ld, p0, p1, d);
}

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
#define MTL_HAVE_AVX2 1
#include <immintrin.h>

#define MTL_AVX2 __attribute__((target("avx2,fma")))

// One instruction set's intrinsics as overloads on the element type, declared once for AVX2 and
// AVX-512: TARGET the function attribute, PS and PD the fp32 and fp64 vector types, MM the
// intrinsics' prefix (_mm256, _mm512). Each is one inline intrinsic, as if written out.
#define MTL_VECTOR_OVERLOADS(TARGET, PS, PD, MM)                                               \
  TARGET inline PS vzero(const float*) { return MM##_setzero_ps(); }                           \
  TARGET inline PD vzero(const double*) { return MM##_setzero_pd(); }                          \
  TARGET inline PS vset1(float x) { return MM##_set1_ps(x); }                                  \
  TARGET inline PD vset1(double x) { return MM##_set1_pd(x); }                                 \
  TARGET inline PS vload(const float* p) { return MM##_load_ps(p); }                           \
  TARGET inline PD vload(const double* p) { return MM##_load_pd(p); }                          \
  TARGET inline PS vloadu(const float* p) { return MM##_loadu_ps(p); }                         \
  TARGET inline PD vloadu(const double* p) { return MM##_loadu_pd(p); }                        \
  TARGET inline void vstore(float* p, PS v) { MM##_store_ps(p, v); }                           \
  TARGET inline void vstore(double* p, PD v) { MM##_store_pd(p, v); }                          \
  TARGET inline void vstoreu(float* p, PS v) { MM##_storeu_ps(p, v); }                         \
  TARGET inline void vstoreu(double* p, PD v) { MM##_storeu_pd(p, v); }                        \
  TARGET inline PS vfma(PS a, PS b, PS c) { return MM##_fmadd_ps(a, b, c); }                   \
  TARGET inline PD vfma(PD a, PD b, PD c) { return MM##_fmadd_pd(a, b, c); }

// The lane arrays above are not turned into SIMD reliably (measured: scalar speed, 200 ms for
// T = 10, P = 11.2 M), hence explicit AVX2 for the x86-64 path: 8 fp32 or 4 fp64 lanes, an
// MI × MJ tile of accumulators in registers. The overloads below pick the intrinsic per element
// type, so that one template (dense_gram.h) serves fp32 and fp64.
namespace avx2 {

MTL_VECTOR_OVERLOADS(MTL_AVX2, __m256, __m256d, _mm256)

constexpr int64_t kVecBytes = 32;
// Tiles of up to 4 × 3 rows (12 accumulators + 4 row loads + 1 column load of the 16 AVX2
// registers, 12 FMAs per 7 loads). Measured on one thread (T = 10, P = 11.2 M fp32, loaded
// machine): 2 × 4 tiles 53-57 ms; 4 × 3 tiles 50 ms against 45 ms for J.sum() in the same run,
// i.e. about the time of one read of J.
constexpr int kMI = 4;
constexpr int kMJ = 3;
inline int64_t flush_columns(int64_t, int64_t) { return kBlock; }
#define MTL_TARGET MTL_AVX2
#include "dense_gram.h"
#include "dense_peak.h"
#undef MTL_TARGET

// M rows at a time (their weights in registers): one load and one store of the partial sum per
// M rows instead of per row. The rows are added in order t = 0, 1, …, T - 1, one fma each, as in
// the portable kernel (the same rounding).
template <typename S, int M>
MTL_AVX2 inline void comb_rows(const S* J, const S* w, int64_t ld, int64_t t0, int64_t c0,
                               int64_t n, bool first, bool last, S* buf, S* d,
                               PrefetchCursor& pf) {
  using V = decltype(vzero(J));
  constexpr int64_t kLanes = 32 / sizeof(S);
  const S* row[M];
  V wt[M];
  for (int r = 0; r < M; ++r) {
    row[r] = J + (t0 + r) * ld + c0;
    wt[r] = vset1(w[t0 + r]);
  }
  int64_t p = 0;
  for (; p + kLanes <= n; p += kLanes) {
    pf.step();
    V acc = first ? vzero(J) : vload(buf + p);
    for (int r = 0; r < M; ++r) acc = vfma(wt[r], vloadu(row[r] + p), acc);
    if (last) {
      vstoreu(d + c0 + p, acc);
    } else {
      vstore(buf + p, acc);
    }
  }
  for (; p < n; ++p) {
    S acc = first ? S(0) : buf[p];
    for (int r = 0; r < M; ++r) acc = std::fma(w[t0 + r], row[r][p], acc);
    if (last) {
      d[c0 + p] = acc;
    } else {
      buf[p] = acc;
    }
  }
}

template <typename S>
MTL_AVX2 void comb(const S* J, const S* w, int64_t T, int64_t ld, int64_t p0, int64_t p1,
                        S* d) {
  constexpr int kGroup = 8;
  constexpr int64_t kLanes = 32 / sizeof(S);
  constexpr int64_t kBlockComb = kBlockCombBytes / sizeof(S);
  alignas(32) S buf[kBlockComb];
  const int64_t passes = (T + kGroup - 1) / kGroup;
  for (int64_t c0 = p0; c0 < p1; c0 += kBlockComb) {
    const int64_t n = std::min(kBlockComb, p1 - c0);
    PrefetchCursor pf(J, ld, T, c0 + n, p1, kBlockComb, passes * (n / kLanes));
    for (int64_t t0 = 0; t0 < T; t0 += kGroup) {
      const bool first = t0 == 0;
      const bool last = t0 + kGroup >= T;
      switch (std::min<int64_t>(kGroup, T - t0)) {
        case 8: comb_rows<S, 8>(J, w, ld, t0, c0, n, first, last, buf, d, pf); break;
        case 7: comb_rows<S, 7>(J, w, ld, t0, c0, n, first, last, buf, d, pf); break;
        case 6: comb_rows<S, 6>(J, w, ld, t0, c0, n, first, last, buf, d, pf); break;
        case 5: comb_rows<S, 5>(J, w, ld, t0, c0, n, first, last, buf, d, pf); break;
        case 4: comb_rows<S, 4>(J, w, ld, t0, c0, n, first, last, buf, d, pf); break;
        case 3: comb_rows<S, 3>(J, w, ld, t0, c0, n, first, last, buf, d, pf); break;
        case 2: comb_rows<S, 2>(J, w, ld, t0, c0, n, first, last, buf, d, pf); break;
        default: comb_rows<S, 1>(J, w, ld, t0, c0, n, first, last, buf, d, pf); break;
      }
    }
  }
}

}  // namespace avx2

#define MTL_AVX512 __attribute__((target("avx512f,avx512dq,avx2,fma")))

namespace avx512 {

MTL_VECTOR_OVERLOADS(MTL_AVX512, __m512, __m512d, _mm512)

constexpr int64_t kVecBytes = 64;
// Tiles of up to 4 × 6 rows (24 accumulators + 4 row loads + 1 column load of the 32 AVX-512
// registers, 24 FMAs per 10 loads), summed in fp32 over up to 2048 columns (T rows of them within
// 512 KB). Measured before the prefetch on one thread of a loaded AMD EPYC (Zen 4, T = 40,
// P = 11.2 M fp32): 450-460 ms with the AVX2 kernel, 305-335 ms with this one; T = 10,
// P = 21.6 M: 86-87 ms, 73-83 ms (about a read of J: 41-50 ms).
constexpr int kMI = 4;
constexpr int kMJ = 6;
inline int64_t flush_columns(int64_t T, int64_t size) {
  return std::clamp<int64_t>((int64_t{1} << 19) / (T * size) / 64 * 64, kBlock, 4 * kBlock);
}
#define MTL_TARGET MTL_AVX512
#include "dense_gram.h"
#include "dense_peak.h"
#undef MTL_TARGET

}  // namespace avx512
#endif

// The instruction set of the kernels: the portable ones always; on x86-64 AVX2+FMA, and AVX-512
// for the Gram (the combination is bandwidth-bound: AVX2 there). The best the processor has
// unless set lower (mtl_dense_set_isa: the tests run every kernel the machine can).
enum Isa : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

int best_isa() {
#ifdef MTL_HAVE_AVX2
  static const int best = !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
                              ? kPortable
                          : (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
                              ? kAvx512
                              : kAvx2;
  return best;
#else
  return kPortable;
#endif
}

std::atomic<int> g_isa{-1};  // -1: the best

int current_isa() {
  const int isa = g_isa.load(std::memory_order_relaxed);
  return isa < 0 ? best_isa() : isa;
}

// The variant of a kernel for the current instruction set, among those this build has (the AVX2
// and AVX-512 ones only with MTL_HAVE_AVX2): one rule for every kernel of this file.
#ifdef MTL_HAVE_AVX2
#define MTL_PICK(on_avx512, on_avx2, fallback) \
  (current_isa() == kAvx512 ? (on_avx512) : current_isa() == kAvx2 ? (on_avx2) : (fallback))
#else
#define MTL_PICK(on_avx512, on_avx2, fallback) (fallback)
#endif

template <typename S>
auto pick_gram() {
  return MTL_PICK(avx512::gram<S>, avx2::gram<S>, portable::gram<S>);
}

// The combination is bandwidth-bound: AVX2 on an AVX-512 processor too.
template <typename S>
auto pick_comb() {
  return MTL_PICK(avx2::comb<S>, avx2::comb<S>, comb_base<S>);
}

// Column ranges of at least kMinPerThread columns per thread, block-aligned.
constexpr int64_t kMinPerThread = 1 << 16;

template <typename Work>
void split(int64_t P, int64_t threads, const Work& work) {
  int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, P / kMinPerThread));
  if (parts == 1) {
    work(0, P, 0);
    return;
  }
  int64_t per = (P + parts - 1) / parts;
  per = (per + kBlock - 1) / kBlock * kBlock;
  std::vector<std::thread> pool;
  for (int64_t k = 1; k < parts; ++k) {
    const int64_t p0 = std::min(P, k * per);
    const int64_t p1 = std::min(P, p0 + per);
    if (p0 < p1) pool.emplace_back(work, p0, p1, k);
  }
  work(0, std::min(P, per), 0);
  for (auto& th : pool) th.join();
}

template <typename In, typename Fn>
int gram_impl(const In* J, int64_t batch, int64_t T, int64_t P, int64_t ld, In* K,
              int64_t threads, Fn fn) {
  if (batch < 0 || T < 1 || P < 0 || ld < P || threads < 1) return MTL_DENSE_BAD_ARGUMENT;
  if (batch == 0) return MTL_DENSE_OK;
  if (J == nullptr || K == nullptr) return MTL_DENSE_BAD_ARGUMENT;
  for (int64_t b = 0; b < batch; ++b) {
    const In* Jb = J + b * T * ld;
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, P / kMinPerThread));
    std::vector<double> Kd(static_cast<size_t>(parts * T * T), 0.0);
    split(P, threads, [&](int64_t p0, int64_t p1, int64_t k) {
      fn(Jb, T, ld, p0, p1, Kd.data() + k * T * T);
    });
    In* Kb = K + b * T * T;
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t j = i; j < T; ++j) {
        double s = 0.0;
        for (int64_t k = 0; k < parts; ++k) s += Kd[k * T * T + i * T + j];
        Kb[i * T + j] = static_cast<In>(s);
        Kb[j * T + i] = static_cast<In>(s);
      }
    }
  }
  return MTL_DENSE_OK;
}

template <typename In, typename Fn>
int combine_impl(const In* J, const In* w, int64_t batch, int64_t T, int64_t P, int64_t ld,
                 In* d, int64_t threads, Fn fn) {
  if (batch < 0 || T < 1 || P < 0 || ld < P || threads < 1) return MTL_DENSE_BAD_ARGUMENT;
  if (batch == 0) return MTL_DENSE_OK;
  if (J == nullptr || w == nullptr || d == nullptr) return MTL_DENSE_BAD_ARGUMENT;
  for (int64_t b = 0; b < batch; ++b) {
    const In* Jb = J + b * T * ld;
    split(P, threads, [&](int64_t p0, int64_t p1, int64_t) {
      fn(Jb, w + b * T, T, ld, p0, p1, d + b * P);
    });
  }
  return MTL_DENSE_OK;
}

}  // namespace

extern "C" {

int mtl_dense_abi_version(void) { return MTL_DENSE_ABI_VERSION; }

int mtl_dense_isa(void) { return current_isa(); }

int mtl_dense_best_isa(void) { return best_isa(); }

int mtl_dense_set_isa(int isa) {
  g_isa.store(isa < 0 ? -1 : std::min(isa, best_isa()), std::memory_order_relaxed);
  return current_isa();
}

int mtl_gram_f32(const float* J, int64_t batch, int64_t T, int64_t P, int64_t ld, float* K,
                 int64_t threads) {
  return gram_impl(J, batch, T, P, ld, K, threads, pick_gram<float>());
}

int mtl_gram_f64(const double* J, int64_t batch, int64_t T, int64_t P, int64_t ld, double* K,
                 int64_t threads) {
  return gram_impl(J, batch, T, P, ld, K, threads, pick_gram<double>());
}

int mtl_combine_f32(const float* J, const float* w, int64_t batch, int64_t T, int64_t P,
                    int64_t ld, float* d, int64_t threads) {
  return combine_impl(J, w, batch, T, P, ld, d, threads, pick_comb<float>());
}

int mtl_combine_f64(const double* J, const double* w, int64_t batch, int64_t T, int64_t P,
                    int64_t ld, double* d, int64_t threads) {
  return combine_impl(J, w, batch, T, P, ld, d, threads, pick_comb<double>());
}

int mtl_fma_burst_f32(int64_t steps, double* out) {
  if (steps < 0 || out == nullptr) return MTL_DENSE_BAD_ARGUMENT;
  double sum = 0.0;
  const auto burst = MTL_PICK(avx512::fma_burst, avx2::fma_burst, portable::fma_burst);
  out[0] = static_cast<double>(burst(steps, &sum));
  out[1] = sum;
  return MTL_DENSE_OK;
}

}  // extern "C"
