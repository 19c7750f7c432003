// The core's fp32 FMA rate on one instruction set's vectors: included by dense.cpp once per set,
// inside that set's namespace, after dense_gram.h (the same definitions: vzero, vloadu, vstoreu,
// vfma, kVecBytes, MTL_TARGET). No include guard, on purpose.
//
// kPeakChains independent chains of dependent FMAs on registers, no memory touched: enough chains
// to cover the FMA latency on every pipe (4 cycles × 2 pipes on Zen 4 and recent Intel cores need
// 8), so the loop runs at the pipes' rate. It is the ceiling of any fp32 Gram on this core, which
// needs T(T+1)/2 FMAs per column (the bench's bound on MGDA's step).
constexpr int kPeakChains = 12;

// Runs `steps` rounds of kPeakChains vector FMAs; returns the scalar FMAs done and writes the sum
// of the accumulators to *sum (so that the compiler keeps the loop). acc ← acc · ½ + ¼ stays at
// ½: no overflow, no subnormals.
MTL_TARGET inline int64_t fma_burst(int64_t steps, double* sum) {
  constexpr int64_t kLanes = kVecBytes / int64_t(sizeof(float));
  float half[kLanes], quarter[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) {
    half[l] = 0.5f;
    quarter[l] = 0.25f;
  }
  const float* tag = half;
  using V = decltype(vzero(tag));
  const V a = vloadu(half);
  const V b = vloadu(quarter);
  V acc[kPeakChains];
  for (int c = 0; c < kPeakChains; ++c) acc[c] = vzero(tag);
  for (int64_t s = 0; s < steps; ++s) {
    for (int c = 0; c < kPeakChains; ++c) acc[c] = vfma(acc[c], a, b);
  }
  double total = 0.0;
  for (int c = 0; c < kPeakChains; ++c) {
    float lanes[kLanes];
    vstoreu(lanes, acc[c]);
    for (int64_t l = 0; l < kLanes; ++l) total += lanes[l];
  }
  *sum = total;
  return steps * kPeakChains * kLanes;
}
