#!/usr/bin/env bash
# CI: compile and link the CUDA extension (csrc/) for sm_90 on a machine without a GPU, then load
# it so that the op registrations are checked too (no kernel runs). The toolkit (CUDA_HOME) and the
# architectures (TORCH_CUDA_ARCH_LIST; default: the visible GPU's, else 9.0) are found as for every
# build, by mtl_fast/kernels/cuda/settings.py; without nvcc the build says so and fails. The build
# lands in the default just-in-time build directory (one per torch/CUDA/Python version), where the
# test suite finds it: tests/test_cuda_backend.py then checks the schemas and fake implementations.
# Cost from scratch on 2 cores: ≈ 100 s of CPU, 70 s wall on a quiet machine, up to ≈ 200 s when
# other jobs load it (docs/cuda.md); ninja rebuilds only what changed when the
# directory survives between runs.
#
# Set MTL_FAST_SKIP_CUDA_COMPILE=1 to skip (e.g. a machine without nvcc); CI must not.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${MTL_FAST_SKIP_CUDA_COMPILE:-0}" = "1" ]; then
    echo "compile_cuda: skipped (MTL_FAST_SKIP_CUDA_COMPILE=1)"
    exit 0
fi
export MAX_JOBS="${MAX_JOBS:-2}"
start=$(date +%s)
python -m mtl_fast.kernels.cuda
echo "compile_cuda: compiled, linked and loaded in $(( $(date +%s) - start )) s"
