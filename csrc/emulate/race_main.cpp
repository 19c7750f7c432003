// Driver for running the emulated kernels under ThreadSanitizer (g++ -fsanitize=thread): any
// shared-memory access between two CUDA threads that no __syncthreads/__syncwarp/warp
// operation orders is reported as a data race. Caveat: the emulator's shuffles and ballots are
// full barriers, stronger than on a GPU, so a race "ordered" only by a shuffle is not caught;
// the kernels put an explicit __syncwarp wherever they rely on ordering.
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

extern "C" {
int mtl_fast_min_norm_emulated_f64(const double*, double*, int64_t, int, int64_t, double);
int mtl_fast_gram_emulated_f32(const float*, float*, int64_t, int64_t, int64_t, int, int);
int mtl_fast_sign_conflict_emulated_f64(const double*, double*, int64_t, int64_t, int64_t, int);
int mtl_fast_multi_adam_emulated_f32(float*, const float*, const int64_t*, float*, float*, float*,
                                     const int64_t*, const double*, int64_t, int64_t,
                                     const double*, double, double, double, double, double);
}

int main() {
  std::mt19937 rng(0);
  std::normal_distribution<double> normal;
  for (int T : {3, 40}) {  // one and two entries per lane
    const int P = 2 * T + 5;
    std::vector<double> J(T * P), K(T * T), W(T);
    for (auto& x : J) x = normal(rng);
    for (int i = 0; i < T; ++i)
      for (int j = 0; j < T; ++j) {
        double s = 0;
        for (int p = 0; p < P; ++p) s += J[i * P + p] * J[j * P + p];
        K[i * T + j] = s;
      }
    mtl_fast_min_norm_emulated_f64(K.data(), W.data(), 1, T, 200, 1e-9);
    double sum = 0;
    for (double w : W) sum += w;
    std::printf("min_norm T=%d sum(w)=%.12f\n", T, sum);
  }
  for (int T : {5, 20, 40}) {  // the three tile shapes
    const int P = 700;
    std::vector<float> J(T * P), K(T * T);
    for (auto& x : J) x = static_cast<float>(normal(rng));
    mtl_fast_gram_emulated_f32(J.data(), K.data(), 1, T, P, 4, 0);
    std::vector<double> Jd(J.begin(), J.end()), C(T * T);
    mtl_fast_sign_conflict_emulated_f64(Jd.data(), C.data(), 1, T, P, 4);
    std::printf("gram T=%d K[0,0]=%f C[0,1]=%f\n", T, K[0], C[1]);
  }
  const int T = 3, P = 500;
  std::vector<float> p(P, 1.f), G(T * P, 0.5f), m(T * P), v(T * P), step(T);
  std::vector<int64_t> tasks{0, 2};
  std::vector<double> w{1.0, 0.5};
  mtl_fast_multi_adam_emulated_f32(p.data(), G.data(), tasks.data(), m.data(), v.data(),
                                   step.data(), tasks.data(), w.data(), 2, P, nullptr, 1e-3, 0.9,
                                   0.999, 1e-8, 0.01);
  std::printf("multi_adam p[0]=%f steps=%g %g %g\n", p[0], step[0], step[1], step[2]);
  return 0;
}
