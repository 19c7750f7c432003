"""GPU evidence in one call: ``bash benchmarks/gpu_report.sh --out DIR`` (docs/gpu.md).

``python -m mtl_fast.tools.gpu_report`` is the driver behind that script. It runs every stage
(environment, CUDA extension build, GPU tests, ``mtl-fast verify``, compute-sanitizer, op and
strategy benchmarks) as a subprocess with its own time slice, records each stage's status,
duration and reason, and rewrites its result files after every stage, so a run that is killed
still leaves what was done. ``--dry-run`` runs the same stages on the CPU with tiny shapes.

- ``_plan``: the tables (stages and their time weights, the pytest selections);
- ``_driver``: the command line, the stage runner and the stages;
- ``_env``: what the run ran on (device, driver, versions, commit, runtime kind);
- ``_sanitizer``: the compute-sanitizer probe and the program that calls every kernel once;
- ``_bench``: the headline benchmark configuration, written in the benchmark result format;
- ``_summary``: JUnit and verify parsing, the report JSON and the one-screen summary;
- ``_preference``: ``auto``'s per-op order between Triton and CUDA from a bench JSON.
"""
