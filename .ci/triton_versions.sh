#!/usr/bin/env bash
# CI: the Triton interpreter tests (tests/ops, Triton parameters) under the newest Triton release, beside
# the release that torch pins, which the main environment of .ci/run tests. A throwaway virtual
# environment gets torch==$TORCH_VERSION (its CPU build pins no Triton) and
# triton==$TRITON_VERSION and the few test dependencies; the package runs from the checkout.
# Pytest's exit 5 (no test collected) fails, and so does a Triton that does not import.
#
# Measured with triton 3.9.0 on the 2-core machine while other jobs loaded it, pip's cache warm:
# 9 min wall (115 s to install, 423 s for the tests: 115 passed, 3 GPU-only skipped), from
# 2 min 53 s of CPU time, so less on a quiet machine. A run with the environment on disk, under
# heavier load, took 12 min; deleting a tree like it took 4 min on its own (hence /dev/shm).
#
# Usage: bash .ci/triton_versions.sh [REPOSITORY_ROOT]   (default: the folder above this one)
set -euo pipefail

TRITON_VERSION=3.9.0 # the newest release checked; move it up once the next one passes
TORCH_VERSION=2.13.0

root="$(cd "${1:-$(dirname "$0")/..}" && pwd)"
# The environment is ≈ 2 GB in ≈ 29,000 files, which a busy disk takes minutes to write and as
# long to delete: it goes to memory (/dev/shm) when that has room and allows executables.
base="${TMPDIR:-/tmp}"
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ] &&
    ! awk '$2 == "/dev/shm" && $4 ~ /(^|,)noexec(,|$)/ { found = 1 } END { exit !found }' /proc/mounts &&
    [ "$(df -Pk /dev/shm | awk 'NR == 2 { print $4 }')" -gt $((4 * 1024 * 1024)) ]; then
    base=/dev/shm
fi
venv="$(mktemp -d "$base/mtl-fast-triton-XXXXXX")"
trap 'rm -rf "$venv"' EXIT

quiet_pip() {
    # pip warns about every local index location it skips; keep the log readable, keep the status.
    "$venv/bin/python" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}

start=$(date +%s)
python3 -m venv "$venv"
quiet_pip install -q "torch==$TORCH_VERSION" "triton==$TRITON_VERSION" pytest numpy scipy
# No install of the package: it runs from the checkout (pytest puts the root on sys.path), so
# this job builds nothing in the tree that the main environment builds in at the same time.
installed=$(date +%s)

cd "$root"
export TRITON_INTERPRET=1 # the interpreter, also where a GPU is visible
PYTHONPATH="$root" "$venv/bin/python" - "$TRITON_VERSION" <<'EOF'
import sys

import triton

import mtl_fast

if triton.__version__ != sys.argv[1]:
    sys.exit(f"triton {triton.__version__} installed, {sys.argv[1]} wanted")
status = mtl_fast.backends()["triton"]
if not status.available:
    sys.exit(f"the Triton backend is unavailable: {status.reason}")
print(f"triton {triton.__version__}, mtl_fast from {mtl_fast.__file__}")
EOF

set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/ops -k triton
code=$?
set -e
echo "triton_versions: triton $TRITON_VERSION, install $((installed - start)) s," \
    "tests $(($(date +%s) - installed)) s"
# pytest exits 5 when it collected no test: that is a failure of this suite, not a pass.
if [ "$code" -eq 5 ]; then echo "no tests were collected"; exit 1; fi
exit "$code"
