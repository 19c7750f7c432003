#!/usr/bin/env bash
# GPU evidence in one call (docs/gpu.md): environment, CUDA extension build, GPU tests,
# `mtl-fast verify`, compute-sanitizer, op and strategy benchmarks, with every stage in its own
# time slice; at most 8 result files in --out DIR, a one-screen summary printed last.
#
#   bash benchmarks/gpu_report.sh --out DIR [--budget SECONDS]   # on an H100/H200, ≤ 8 min
#   bash benchmarks/gpu_report.sh --dry-run --out DIR            # the same stages on the CPU
#
# Nothing is installed from a network. The package is used from this source tree (PYTHONPATH);
# wheels in .whl/ (e.g. torchjd, quadprog, qpsolvers for the peer benchmarks) are installed
# into a temporary folder first, without an index and without dependencies.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2

py="${PYTHON:-}"
if [ -z "$py" ]; then
    for candidate in python3 python; do
        if command -v "$candidate" >/dev/null 2>&1; then py="$candidate"; break; fi
    done
fi
if [ -z "$py" ]; then
    echo "gpu_report: no python3 found (set PYTHON)" >&2
    exit 2
fi

dry_run=0
for arg in "$@"; do
    if [ "$arg" = "--dry-run" ]; then dry_run=1; fi
done

export PYTHONUNBUFFERED=1
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
site=""
if [ "$dry_run" = 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
    site="$(mktemp -d "${TMPDIR:-/tmp}/gpu-report-wheels.XXXXXX")"
    if "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl; then
        export PYTHONPATH="$site:$PYTHONPATH"
        export MTL_FAST_GPU_REPORT_SITE="$site"
        echo "gpu_report: installed $(find .whl -maxdepth 1 -type f -name '*.whl' | wc -l) wheels from .whl/"
    else
        echo "gpu_report: installing .whl/*.whl failed; going on without them" >&2
    fi
fi

"$py" -m mtl_fast.tools.gpu_report "$@"
code=$?
if [ -n "$site" ]; then rm -rf "$site"; fi
if [ "$code" -gt 1 ] && [ "$code" -ne 130 ]; then
    echo "gpu_report: the driver exited with status $code before it could write its summary" >&2
fi
exit "$code"
