// CPU Gram K = J Jᵀ and combination d = Jᵀw for the few-rows, very-long-rows shape of MTL
// (T ≤ ~100 tasks, P up to 10⁸ parameters).
//
// Why not BLAS: sgemm/ssyrk with M = N = T and K = P spend their time packing panels for a tiny
// output. Measured on one thread of an AMD EPYC (T = 10, P = 11.2 M fp32, 447 MB): torch.mm
// (MKL) 300-400 ms, OpenBLAS 180 ms, ssyrk 290 ms, against 19-24 ms to merely read J once.
// Here J is read once, in blocks of kBlock columns that stay in L1/L2 while every tile of K
// that needs them is updated; each tile keeps MI × MJ × L accumulators in registers.
//
// Vector code: the kernels are written over small fixed-size lane arrays that the compiler
// turns into SIMD. They are compiled twice: for the baseline ISA of the build (no -march: the
// library must run on any CPU of the platform) and, on x86-64 with GCC or Clang, for AVX2+FMA,
// picked at run time with __builtin_cpu_supports.

#include "dense.h"

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

constexpr int64_t kBlock = 512;  // columns per block: T = 10 rows × 512 × 4 B = 20 KB

#if defined(__GNUC__)
#define MTL_INLINE inline __attribute__((always_inline))
#else
#define MTL_INLINE inline
#endif

// acc[a][b][l] += x_a[p + l] · y_b[p + l] over the block, lanes independent (no reassociation:
// the compiler may vectorise across l without -ffast-math).
template <int MI, int MJ, int L, typename In, typename Acc>
MTL_INLINE void tile_block(const In* const* x, const In* const* y, int64_t n,
                           Acc (&acc)[MI][MJ][L]) {
  int64_t p = 0;
  for (; p + L <= n; p += L) {
    for (int a = 0; a < MI; ++a) {
      for (int b = 0; b < MJ; ++b) {
        for (int l = 0; l < L; ++l) {
          acc[a][b][l] += static_cast<Acc>(x[a][p + l]) * static_cast<Acc>(y[b][p + l]);
        }
      }
    }
  }
  for (; p < n; ++p) {
    for (int a = 0; a < MI; ++a) {
      for (int b = 0; b < MJ; ++b) {
        acc[a][b][0] += static_cast<Acc>(x[a][p]) * static_cast<Acc>(y[b][p]);
      }
    }
  }
}

// Adds the (i0.., j0..) tile of one column block [c0, c0 + n) into Kd (fp64, T × T).
template <int MI, int MJ, int L, typename In, typename Acc>
MTL_INLINE void tile(const In* J, int64_t ld, int64_t T, int64_t i0, int64_t j0, int64_t c0,
                     int64_t n, double* Kd) {
  const In* x[MI];
  const In* y[MJ];
  for (int a = 0; a < MI; ++a) x[a] = J + (i0 + a) * ld + c0;
  for (int b = 0; b < MJ; ++b) y[b] = J + (j0 + b) * ld + c0;
  Acc acc[MI][MJ][L] = {};
  tile_block<MI, MJ, L, In, Acc>(x, y, n, acc);
  for (int a = 0; a < MI; ++a) {
    for (int b = 0; b < MJ; ++b) {
      double s = 0.0;
      for (int l = 0; l < L; ++l) s += static_cast<double>(acc[a][b][l]);
      Kd[(i0 + a) * T + (j0 + b)] += s;
    }
  }
}

// Tiles of MI × MJ rows; edges with smaller tiles. Only tiles with j ≥ i (the upper triangle,
// diagonal tiles whole) are computed; the caller mirrors.
template <int L, typename In, typename Acc>
MTL_INLINE void gram_range(const In* J, int64_t T, int64_t ld, int64_t p0, int64_t p1,
                           double* Kd) {
  constexpr int MI = 2;
  constexpr int MJ = 4;
  for (int64_t c0 = p0; c0 < p1; c0 += kBlock) {
    const int64_t n = std::min(kBlock, p1 - c0);
    for (int64_t i0 = 0; i0 < T; i0 += MI) {
      const int64_t mi = std::min<int64_t>(MI, T - i0);
      for (int64_t j0 = i0; j0 < T; j0 += MJ) {
        const int64_t mj = std::min<int64_t>(MJ, T - j0);
        if (mi == 2) {
          switch (mj) {
            case 4: tile<2, 4, L, In, Acc>(J, ld, T, i0, j0, c0, n, Kd); break;
            case 3: tile<2, 3, L, In, Acc>(J, ld, T, i0, j0, c0, n, Kd); break;
            case 2: tile<2, 2, L, In, Acc>(J, ld, T, i0, j0, c0, n, Kd); break;
            default: tile<2, 1, L, In, Acc>(J, ld, T, i0, j0, c0, n, Kd); break;
          }
        } else {
          switch (mj) {
            case 4: tile<1, 4, L, In, Acc>(J, ld, T, i0, j0, c0, n, Kd); break;
            case 3: tile<1, 3, L, In, Acc>(J, ld, T, i0, j0, c0, n, Kd); break;
            case 2: tile<1, 2, L, In, Acc>(J, ld, T, i0, j0, c0, n, Kd); break;
            default: tile<1, 1, L, In, Acc>(J, ld, T, i0, j0, c0, n, Kd); break;
          }
        }
      }
    }
  }
}

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

using GramFn32 = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, double*);
using GramFn64 = void (*)(const double*, int64_t, int64_t, int64_t, int64_t, double*);
using CombFn32 = void (*)(const float*, const float*, int64_t, int64_t, int64_t, int64_t, float*);
using CombFn64 = void (*)(const double*, const double*, int64_t, int64_t, int64_t, int64_t,
                          double*);

void gram32_base(const float* J, int64_t T, int64_t ld, int64_t p0, int64_t p1, double* Kd) {
  gram_range<8, float, float>(J, T, ld, p0, p1, Kd);
}
void gram64_base(const double* J, int64_t T, int64_t ld, int64_t p0, int64_t p1, double* Kd) {
  gram_range<4, double, double>(J, T, ld, p0, p1, Kd);
}
void comb32_base(const float* J, const float* w, int64_t T, int64_t ld, int64_t p0, int64_t p1,
                 float* d) {
  combine_range<8, float>(J, w, T, ld, p0, p1, d);
}
void comb64_base(const double* J, const double* w, int64_t T, int64_t ld, int64_t p0, int64_t p1,
                 double* d) {
  combine_range<4, double>(J, w, T, ld, p0, p1, d);
}

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
#define MTL_HAVE_AVX2 1
#include <immintrin.h>

#define MTL_AVX2 __attribute__((target("avx2,fma")))

// The lane arrays above are not turned into SIMD reliably (measured: scalar speed, 200 ms for
// T = 10, P = 11.2 M), hence explicit AVX2 for the x86-64 path: 8 fp32 or 4 fp64 lanes, an
// MI × MJ tile of accumulators in registers.
template <int MI, int MJ>
MTL_AVX2 inline void tile32_avx2(const float* J, int64_t ld, int64_t T, int64_t i0, int64_t j0,
                                 int64_t c0, int64_t n, double* Kd) {
  const float* x[MI];
  const float* y[MJ];
  for (int a = 0; a < MI; ++a) x[a] = J + (i0 + a) * ld + c0;
  for (int b = 0; b < MJ; ++b) y[b] = J + (j0 + b) * ld + c0;
  __m256 acc[MI][MJ];
  for (int a = 0; a < MI; ++a)
    for (int b = 0; b < MJ; ++b) acc[a][b] = _mm256_setzero_ps();
  int64_t p = 0;
  for (; p + 8 <= n; p += 8) {
    __m256 xv[MI];
    for (int a = 0; a < MI; ++a) xv[a] = _mm256_loadu_ps(x[a] + p);
    for (int b = 0; b < MJ; ++b) {
      const __m256 yv = _mm256_loadu_ps(y[b] + p);
      for (int a = 0; a < MI; ++a) acc[a][b] = _mm256_fmadd_ps(xv[a], yv, acc[a][b]);
    }
  }
  for (int a = 0; a < MI; ++a) {
    for (int b = 0; b < MJ; ++b) {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, acc[a][b]);
      double s = 0.0;
      for (int l = 0; l < 8; ++l) s += static_cast<double>(lanes[l]);
      for (int64_t q = p; q < n; ++q) s += static_cast<double>(x[a][q]) * y[b][q];
      Kd[(i0 + a) * T + (j0 + b)] += s;
    }
  }
}

template <int MI, int MJ>
MTL_AVX2 inline void tile64_avx2(const double* J, int64_t ld, int64_t T, int64_t i0, int64_t j0,
                                 int64_t c0, int64_t n, double* Kd) {
  const double* x[MI];
  const double* y[MJ];
  for (int a = 0; a < MI; ++a) x[a] = J + (i0 + a) * ld + c0;
  for (int b = 0; b < MJ; ++b) y[b] = J + (j0 + b) * ld + c0;
  __m256d acc[MI][MJ];
  for (int a = 0; a < MI; ++a)
    for (int b = 0; b < MJ; ++b) acc[a][b] = _mm256_setzero_pd();
  int64_t p = 0;
  for (; p + 4 <= n; p += 4) {
    __m256d xv[MI];
    for (int a = 0; a < MI; ++a) xv[a] = _mm256_loadu_pd(x[a] + p);
    for (int b = 0; b < MJ; ++b) {
      const __m256d yv = _mm256_loadu_pd(y[b] + p);
      for (int a = 0; a < MI; ++a) acc[a][b] = _mm256_fmadd_pd(xv[a], yv, acc[a][b]);
    }
  }
  for (int a = 0; a < MI; ++a) {
    for (int b = 0; b < MJ; ++b) {
      alignas(32) double lanes[4];
      _mm256_store_pd(lanes, acc[a][b]);
      double s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
      for (int64_t q = p; q < n; ++q) s += x[a][q] * y[b][q];
      Kd[(i0 + a) * T + (j0 + b)] += s;
    }
  }
}

// Tiles of up to kMI × kMJ rows (4 × 3: 12 accumulators + 4 row loads + 1 column load of the
// 16 AVX2 registers, 12 FMAs per 7 loads); edges with smaller tiles. Only tiles with j ≥ i (the
// upper triangle, diagonal tiles whole) are computed; the caller mirrors. Measured on one thread
// (T = 10, P = 11.2 M fp32, loaded machine): 2 × 4 tiles 53-57 ms; 4 × 3 tiles 50 ms against
// 45 ms for J.sum() in the same run, i.e. about the time of one read of J.
#define MTL_TILE_CASES(TILE)                                                             \
  switch (mi * 4 + mj) {                                                                 \
    case 4 * 4 + 3: TILE<4, 3>(J, ld, T, i0, j0, c0, n, Kd); break;                      \
    case 4 * 4 + 2: TILE<4, 2>(J, ld, T, i0, j0, c0, n, Kd); break;                      \
    case 4 * 4 + 1: TILE<4, 1>(J, ld, T, i0, j0, c0, n, Kd); break;                      \
    case 3 * 4 + 3: TILE<3, 3>(J, ld, T, i0, j0, c0, n, Kd); break;                      \
    case 3 * 4 + 2: TILE<3, 2>(J, ld, T, i0, j0, c0, n, Kd); break;                      \
    case 3 * 4 + 1: TILE<3, 1>(J, ld, T, i0, j0, c0, n, Kd); break;                      \
    case 2 * 4 + 3: TILE<2, 3>(J, ld, T, i0, j0, c0, n, Kd); break;                      \
    case 2 * 4 + 2: TILE<2, 2>(J, ld, T, i0, j0, c0, n, Kd); break;                      \
    case 2 * 4 + 1: TILE<2, 1>(J, ld, T, i0, j0, c0, n, Kd); break;                      \
    case 1 * 4 + 3: TILE<1, 3>(J, ld, T, i0, j0, c0, n, Kd); break;                      \
    case 1 * 4 + 2: TILE<1, 2>(J, ld, T, i0, j0, c0, n, Kd); break;                      \
    default: TILE<1, 1>(J, ld, T, i0, j0, c0, n, Kd); break;                             \
  }

#define MTL_GRAM_AVX2(NAME, IN, TILE)                                                     \
  MTL_AVX2 void NAME(const IN* J, int64_t T, int64_t ld, int64_t p0, int64_t p1,         \
                     double* Kd) {                                                        \
    for (int64_t c0 = p0; c0 < p1; c0 += kBlock) {                                        \
      const int64_t n = std::min(kBlock, p1 - c0);                                        \
      for (int64_t i0 = 0; i0 < T; i0 += 4) {                                             \
        const int64_t mi = std::min<int64_t>(4, T - i0);                                  \
        for (int64_t j0 = i0; j0 < T; j0 += 3) {                                          \
          const int64_t mj = std::min<int64_t>(3, T - j0);                                \
          MTL_TILE_CASES(TILE)                                                            \
        }                                                                                 \
      }                                                                                   \
    }                                                                                     \
  }

MTL_GRAM_AVX2(gram32_avx2, float, tile32_avx2)
MTL_GRAM_AVX2(gram64_avx2, double, tile64_avx2)

MTL_AVX2 void comb32_avx2(const float* J, const float* w, int64_t T, int64_t ld, int64_t p0,
                          int64_t p1, float* d) {
  alignas(32) float buf[kBlock];
  for (int64_t c0 = p0; c0 < p1; c0 += kBlock) {
    const int64_t n = std::min(kBlock, p1 - c0);
    const int64_t nv = n / 8 * 8;
    for (int64_t p = 0; p < nv; p += 8) _mm256_store_ps(buf + p, _mm256_setzero_ps());
    for (int64_t p = nv; p < n; ++p) buf[p] = 0.0f;
    for (int64_t t = 0; t < T; ++t) {
      const __m256 wt = _mm256_set1_ps(w[t]);
      const float* row = J + t * ld + c0;
      for (int64_t p = 0; p < nv; p += 8) {
        _mm256_store_ps(buf + p,
                        _mm256_fmadd_ps(wt, _mm256_loadu_ps(row + p), _mm256_load_ps(buf + p)));
      }
      for (int64_t p = nv; p < n; ++p) buf[p] += w[t] * row[p];
    }
    for (int64_t p = 0; p < nv; p += 8) _mm256_storeu_ps(d + c0 + p, _mm256_load_ps(buf + p));
    for (int64_t p = nv; p < n; ++p) d[c0 + p] = buf[p];
  }
}

MTL_AVX2 void comb64_avx2(const double* J, const double* w, int64_t T, int64_t ld, int64_t p0,
                          int64_t p1, double* d) {
  alignas(32) double buf[kBlock];
  for (int64_t c0 = p0; c0 < p1; c0 += kBlock) {
    const int64_t n = std::min(kBlock, p1 - c0);
    const int64_t nv = n / 4 * 4;
    for (int64_t p = 0; p < nv; p += 4) _mm256_store_pd(buf + p, _mm256_setzero_pd());
    for (int64_t p = nv; p < n; ++p) buf[p] = 0.0;
    for (int64_t t = 0; t < T; ++t) {
      const __m256d wt = _mm256_set1_pd(w[t]);
      const double* row = J + t * ld + c0;
      for (int64_t p = 0; p < nv; p += 4) {
        _mm256_store_pd(buf + p,
                        _mm256_fmadd_pd(wt, _mm256_loadu_pd(row + p), _mm256_load_pd(buf + p)));
      }
      for (int64_t p = nv; p < n; ++p) buf[p] += w[t] * row[p];
    }
    for (int64_t p = 0; p < nv; p += 4) _mm256_storeu_pd(d + c0 + p, _mm256_load_pd(buf + p));
    for (int64_t p = nv; p < n; ++p) d[c0 + p] = buf[p];
  }
}

bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#endif

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

int mtl_gram_f32(const float* J, int64_t batch, int64_t T, int64_t P, int64_t ld, float* K,
                 int64_t threads) {
  GramFn32 fn = gram32_base;
#ifdef MTL_HAVE_AVX2
  if (has_avx2()) fn = gram32_avx2;
#endif
  return gram_impl(J, batch, T, P, ld, K, threads, fn);
}

int mtl_gram_f64(const double* J, int64_t batch, int64_t T, int64_t P, int64_t ld, double* K,
                 int64_t threads) {
  GramFn64 fn = gram64_base;
#ifdef MTL_HAVE_AVX2
  if (has_avx2()) fn = gram64_avx2;
#endif
  return gram_impl(J, batch, T, P, ld, K, threads, fn);
}

int mtl_combine_f32(const float* J, const float* w, int64_t batch, int64_t T, int64_t P,
                    int64_t ld, float* d, int64_t threads) {
  CombFn32 fn = comb32_base;
#ifdef MTL_HAVE_AVX2
  if (has_avx2()) fn = comb32_avx2;
#endif
  return combine_impl(J, w, batch, T, P, ld, d, threads, fn);
}

int mtl_combine_f64(const double* J, const double* w, int64_t batch, int64_t T, int64_t P,
                    int64_t ld, double* d, int64_t threads) {
  CombFn64 fn = comb64_base;
#ifdef MTL_HAVE_AVX2
  if (has_avx2()) fn = comb64_avx2;
#endif
  return combine_impl(J, w, batch, T, P, ld, d, threads, fn);
}

}  // extern "C"
