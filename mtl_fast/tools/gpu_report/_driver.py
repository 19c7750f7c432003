"""The GPU report's driver: ``python -m mtl_fast.tools.gpu_report --out DIR [--budget S]
[--dry-run]`` (normally through ``bash benchmarks/gpu_report.sh``; docs/gpu.md).

Every stage runs as a subprocess in its own process group with a time slice from the budget
(:mod:`mtl_fast.tools.gpu_report._plan`); its output goes to the log, its status (passed /
failed / timed out / skipped + reason) and duration to the report, and the result files are
rewritten after every stage. A stage that crashes, hangs or cannot start is recorded as such
and the next one runs; the summary is always printed last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mtl_fast.tools.gpu_report import _env, _plan, _summary
from mtl_fast.tools.gpu_report._sanitizer import ERROR_EXIT, parse_summary

REPO = Path(__file__).resolve().parents[3]
LOG_PER_COMMAND = 512 * 1024  # bytes of one command's output kept in the log (head + tail)
LOG_MAX = 4 * 1024 * 1024  # the whole log file
KILL_GRACE_S = 5.0  # SIGINT first (pytest then writes its JUnit file), SIGKILL after this
RESERVE_S = 8.0  # kept back from the budget for writing the files and the summary
PY = sys.executable
# The dry run's verify leaves out min_norm: its check runs the CPU reference's 1000 masked
# iterations (minutes on a loaded 2-core machine); tests/test_cli.py covers it.
DRY_VERIFY_OPS = ("gram", "gram_list", "combine", "multi_adam", "combine_adam", "sign_conflict")


@dataclass
class StageResult:
    name: str
    status: str = "not run"  # passed | failed | timed out | skipped | not run
    seconds: float = 0.0
    timeout_s: float | None = None
    reason: str = ""  # why skipped / failed / timed out, one line
    note: str = ""  # what it did, one line
    # CPU seconds (user + system) of the commands that ended during the stage (a background
    # build's count where it ends): wall ≫ CPU means a busy machine.
    cpu_s: float = 0.0
    commands: list[str] = field(default_factory=list)


@dataclass
class Proc:
    """One finished (or killed) command."""

    rc: int | None
    seconds: float
    timed_out: bool
    output: str  # the tail of its output

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def last_lines(self, n: int = 3) -> str:
        lines = [ln.rstrip() for ln in self.output.splitlines() if ln.strip()]
        return " | ".join(lines[-n:])[:300]


class Background:
    """A command started now and joined later (the CUDA build, the sanitizer probe)."""

    def __init__(self, run: Run, name: str, cmd: list[str], env: dict[str, str]) -> None:
        self.run, self.name, self.cmd = run, name, cmd
        self.start = time.monotonic()
        self.out_path = run.tmp / f"{name}.out"
        self.handle = open(self.out_path, "wb")  # closed in join()
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.result: Proc | None = None
        self.ended: float | None = None  # when it exited (set by the watcher thread)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        self.proc.wait()
        self.ended = time.monotonic()

    def join(self, deadline: float) -> Proc:
        """Wait until it ends or until ``deadline`` (monotonic), then stop it."""
        if self.result is not None:
            return self.result
        timed_out = False
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(self.proc)
        self.handle.close()
        seconds = (self.ended or time.monotonic()) - self.start
        output = self.run.record(self.name, self.cmd, self.out_path, seconds, timed_out)
        self.result = Proc(self.proc.returncode, seconds, timed_out, output)
        return self.result


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to the process group, then SIGKILL after the grace period."""
    for sig, wait in ((signal.SIGINT, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _children_cpu() -> float:
    """User + system CPU seconds of the finished (waited-for) child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _slug(text: str) -> str:
    text = re.sub(r"^nvidia\s+", "", text.strip().lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:32] or "unknown"


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class Run:
    """One report: the budget, the stages' results, the files."""

    def __init__(self, args: argparse.Namespace, console: TextIO = sys.stdout) -> None:
        self.dry_run: bool = args.dry_run
        self.out: Path = args.out
        self.verbose: bool = args.verbose
        self.console = console
        default = _plan.DRY_BUDGET_S if self.dry_run else _plan.GPU_BUDGET_S
        self.budget: float = float(args.budget if args.budget is not None else default)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.budget
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu-report-"))
        self.log_parts: list[str] = []
        self.stages: dict[str, StageResult] = {s.name: StageResult(s.name) for s in _plan.STAGES}
        self.env: dict[str, Any] = {}
        self.data: dict[str, Any] = {"tests": {}, "verify": {}, "sanitizer": {}, "bench": {}}
        self.gpus: list[dict[str, str]] = []
        self.gpu_reason: str | None = "dry run: no GPU is used" if self.dry_run else None
        self.build: Background | None = None
        self.probe: Background | None = None
        self.stem = f"gpu-{self.started:%Y-%m-%d}-" + ("cpu-dry-run" if self.dry_run else "gpu")
        self.files: list[Path] = []
        self.cpus = os.cpu_count() or 1

    # ---- paths, logging -------------------------------------------------------------------

    def path(self, suffix: str) -> Path:
        return self.out / f"{self.stem}-{suffix}"

    def scrub(self, text: str) -> str:
        """Machine paths out: the sources, the temp and result folders, home, the interpreter."""
        pairs = [
            (str(self.tmp), "<tmp>"),
            (str(self.out.resolve()), "<out>"),
            (str(REPO), "<repo>"),
            (os.environ.get("MTL_FAST_GPU_REPORT_SITE", ""), "<wheels>"),
            (PY, "python3"),
            (str(Path.home()), "~"),
        ]
        for old, new in pairs:
            if len(old) > 1:
                text = text.replace(old, new)
        return text

    def show(self, cmd: list[str]) -> str:
        words = [Path(cmd[0]).name if os.sep in cmd[0] else cmd[0], *cmd[1:]]
        return self.scrub(" ".join(words))

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.t0:5.0f} s] {text}"
        print(self.scrub(line), file=self.console, flush=True)
        self.log_parts.append(line + "\n")

    def record(self, name: str, cmd: list[str], out_path: Path, seconds: float, timed: bool) -> str:
        """Add a finished command's output to the log; return its tail."""
        data = out_path.read_bytes() if out_path.exists() else b""
        if len(data) > LOG_PER_COMMAND:
            head, tail = data[: LOG_PER_COMMAND // 8], data[-(LOG_PER_COMMAND * 7 // 8) :]
            cut = len(data) - len(head) - len(tail)
            data = head + f"\n[... {cut} bytes cut ...]\n".encode() + tail
        text = data.decode(errors="replace")
        state = "timed out" if timed else "done"
        self.log_parts.append(
            f"\n===== {name}: {self.show(cmd)}\n{text}\n===== {name}: {state} in {seconds:.1f} s\n"
        )
        if self.verbose:
            print(self.scrub(text), file=self.console, flush=True)
        return text[-20000:]

    def child_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
        if self.dry_run:  # one thread: OpenMP threads on a busy small machine stall each other
            env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        else:  # compiled Triton kernels on the GPU, never the CPU interpreter
            env.pop("TRITON_INTERPRET", None)
        commit = self.env.get("git_commit")
        if isinstance(commit, str) and commit != "unknown":
            env["MTL_FAST_GIT_COMMIT"] = commit
        env.update(extra)
        return env

    def command(
        self, name: str, cmd: list[str], deadline: float, env: dict[str, str] | None = None
    ) -> Proc:
        """Run ``cmd`` until it ends or ``deadline`` (monotonic); never raises for the command's
        own failure."""
        start = time.monotonic()
        out_path = self.tmp / f"{name}-{len(self.log_parts)}.out"
        self.stages_cmd(name, cmd)
        timed_out = False
        try:
            with open(out_path, "wb") as handle:
                proc = subprocess.Popen(
                    cmd,
                    cwd=REPO,
                    env=env or self.child_env(),
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
                try:
                    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    timed_out = True
                    _stop(proc)
                except BaseException:
                    _stop(proc)
                    raise
        except OSError as exc:
            out_path.write_text(f"could not start {cmd[0]}: {exc}\n")
            seconds = time.monotonic() - start
            return Proc(127, seconds, False, self.record(name, cmd, out_path, seconds, False))
        seconds = time.monotonic() - start
        output = self.record(name, cmd, out_path, seconds, timed_out)
        return Proc(proc.returncode, seconds, timed_out, output)

    def stages_cmd(self, name: str, cmd: list[str]) -> None:
        stage = self.stages.get(name.split(":")[0])
        if stage is not None:
            stage.commands.append(self.show(cmd))

    # ---- time ------------------------------------------------------------------------------

    def weight(self, name: str) -> float:
        plan = next(s for s in _plan.STAGES if s.name == name)
        return plan.dry_weight if self.dry_run else plan.gpu_weight

    def slice_for(self, name: str) -> float:
        """The time left × this stage's weight / the weights of the stages still to run."""
        names = list(_plan.STAGE_NAMES)
        later = names[names.index(name) :]
        total = sum(self.weight(n) for n in later) or 1.0
        left = self.deadline - time.monotonic() - RESERVE_S
        return max(5.0, left * self.weight(name) / total)

    # ---- the run ---------------------------------------------------------------------------

    def stage(self, name: str, fn: Callable[[StageResult, float], None]) -> None:
        res = self.stages[name]
        limit = self.slice_for(name)
        res.timeout_s = round(limit)
        start = time.monotonic()
        cpu0 = _children_cpu()
        self.say(f"{name}: started (time slice {limit:.0f} s)")
        try:
            fn(res, start + limit)
        except KeyboardInterrupt:
            res.status, res.reason = "timed out", "interrupted by a signal while running"
            res.seconds = round(time.monotonic() - start, 1)
            raise
        except Exception as exc:  # the stage's own code: record and go on
            res.status = "failed"
            res.reason = f"the report's stage code raised {type(exc).__name__}: {exc}"
            self.log_parts.append(traceback.format_exc())
        if res.status == "not run":
            res.status, res.reason = "failed", res.reason or "the stage set no status"
        res.seconds = round(time.monotonic() - start, 1)
        res.cpu_s = round(_children_cpu() - cpu0, 1)
        why = f": {res.reason}" if res.reason else (f": {res.note}" if res.note else "")
        self.say(f"{name}: {res.status} in {res.seconds:.0f} s ({res.cpu_s:.0f} s CPU){why}"[:400])
        try:
            self.write()
        except Exception:  # e.g. a full disk: the next stage still runs, finish() tries again
            self.log_parts.append(traceback.format_exc())

    def execute(self) -> int:
        self.say(
            f"GPU report{' (dry run)' if self.dry_run else ''}: budget {self.budget:.0f} s, "
            f"out {self.out.resolve()}"
        )
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.dry_run:
            self.gpus, why = _env.nvidia_smi()
            if not self.gpus:
                self.gpu_reason = f"no GPU visible ({why})"
            else:
                self.stem = f"gpu-{self.started:%Y-%m-%d}-{_slug(self.gpus[0].get('name', ''))}"
                self.start_build()
        self.stage("env", self.stage_env)
        if self.gpu_reason is None:
            self.start_probe()
        self.stage("tests-triton", lambda r, d: self.stage_tests("tests-triton", r, d))
        self.stage("tests-cuda", self.stage_tests_cuda)
        self.stage("verify", self.stage_verify)
        self.stage("sanitizer", self.stage_sanitizer)
        self.stage("bench-ops", lambda r, d: self.stage_bench("ops", r, d))
        self.stage("bench-strategies", lambda r, d: self.stage_bench("strategies", r, d))
        return self.finish()

    def finish(self) -> int:
        self.join_build(time.monotonic())  # a build still running is stopped now
        if self.probe is not None:
            self.probe.join(time.monotonic())
        for res in self.stages.values():
            if res.status == "not run":
                res.status, res.reason = "skipped", res.reason or "not reached (interrupted)"
        summary = self.write()
        print("\n" + summary, file=self.console, flush=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        # On a GPU the budget is sized for the machine: a stage that ran out of time is a
        # finding. In the dry run the load of a shared CPU decides, so only failures count.
        bad_states = ("failed",) if self.dry_run else ("failed", "timed out")
        bad = any(r.status in bad_states for r in self.stages.values())
        return 1 if bad or (not self.dry_run and self.gpu_reason is not None) else 0

    # ---- the files -------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        names = [p.name for p in self.files]
        for suffix in ("bench.json", "bench.md", "bench.png"):
            if self.path(suffix).exists():
                names.append(self.path(suffix).name)
        return {
            "schema": _summary.SCHEMA,
            "dry_run": self.dry_run,
            "device": self.gpus[0].get("name") if self.gpus else ("cpu" if self.dry_run else "?"),
            "started": self.started.isoformat(timespec="seconds"),
            "wall_s": round(time.monotonic() - self.t0, 1),
            "budget_s": self.budget,
            "command": "bash benchmarks/gpu_report.sh"
            + (" --dry-run" if self.dry_run else "")
            + f" --budget {self.budget:g}",
            "env": self.env,
            "stages": [asdict(r) for r in self.stages.values()],
            **self.data,
            "bench_file": self.path("bench.json").name,
            "files": sorted(set(names)),
        }

    def write(self) -> str:
        """Rewrite the report JSON, the summary and the log; returns the summary."""
        self.files = [self.path("report.json"), self.path("report.md"), self.path("log.txt")]
        bench = self.path("bench.json")
        if bench.exists():
            try:
                data = json.loads(bench.read_text())
                self.data["bench"] = _summary.bench_headline(data)
                from mtl_fast.tools.gpu_report._preference import suggest

                self.data["auto_preference"] = suggest(data)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self.data["bench"] = {"error": f"could not read {bench.name}: {exc}"}
        report = json.loads(self.scrub(json.dumps(_summary.finite(self.report()), default=str)))
        summary = _summary.write_report(report, self.files[0], self.files[1])
        log = self.scrub("".join(self.log_parts) + "\n" + summary).encode()
        if len(log) > LOG_MAX:
            cut = len(log) - LOG_MAX
            log = (
                log[: LOG_MAX // 4]
                + f"\n[... {cut} bytes cut ...]\n".encode()
                + log[-LOG_MAX * 3 // 4 :]
            )
        self.files[2].write_bytes(log)
        return summary

    # ---- stages ----------------------------------------------------------------------------

    def start_build(self) -> None:
        cap = self.gpus[0].get("compute_cap", "") if self.gpus else ""
        extra = {"MAX_JOBS": str(self.cpus)}
        if re.fullmatch(r"\d+\.\d+", cap) and "TORCH_CUDA_ARCH_LIST" not in os.environ:
            extra["TORCH_CUDA_ARCH_LIST"] = cap
        cmd = [PY, "-m", "mtl_fast.kernels.cuda"]
        self.stages["build"].note = ", ".join(f"{k}={v}" for k, v in extra.items())
        self.stages["build"].commands.append(self.show(cmd))
        self.say(f"build: started in the background ({self.stages['build'].note})")
        self.build = Background(self, "build", cmd, self.child_env(**extra))

    def join_build(self, deadline: float) -> StageResult:
        """Wait for the background build (until ``deadline``, at most until its own cap)."""
        res = self.stages["build"]
        if self.build is None:
            if res.status == "not run":
                res.status = "skipped"
                res.reason = (
                    "dry run: no GPU (CI compiles the extension with .ci/compile_cuda.sh)"
                    if self.dry_run
                    else (self.gpu_reason or "not started")
                )
            return res
        if self.build.result is not None:
            return res
        cap = self.t0 + _plan.BUILD_SHARE * self.budget
        proc = self.build.join(min(deadline, max(cap, time.monotonic())))
        res.seconds = round(proc.seconds, 1)
        res.timeout_s = round(cap - self.t0)
        if proc.timed_out:
            res.status, res.reason = "timed out", f"not finished after {proc.seconds:.0f} s"
        elif proc.rc != 0:
            res.status, res.reason = "failed", f"exit status {proc.rc}: {proc.last_lines()}"
        else:
            res.status = "passed"
            built = re.findall(r"built and loaded .*", proc.output)
            if built:
                res.note = f"{res.note}; {self.scrub(built[-1])}"[:300]
        self.say(f"build: {res.status} after {proc.seconds:.0f} s {res.reason}".rstrip())
        return res

    def start_probe(self) -> None:
        cmd = [PY, "-m", "mtl_fast.tools.gpu_report._sanitizer", "probe"]
        cmd += ["--json", str(self.tmp / "probe.json"), "--timeout", str(_plan.PROBE_TIMEOUT_S)]
        self.stages["sanitizer"].commands.append(self.show(cmd))
        self.probe = Background(self, "sanitizer-probe", cmd, self.child_env())

    def stage_env(self, res: StageResult, deadline: float) -> None:
        out = self.tmp / "env.json"
        cmd = [PY, "-m", "mtl_fast.tools.gpu_report._env", "--json", str(out)]
        proc = self.command("env", cmd, deadline)
        if out.exists():
            self.env = json.loads(out.read_text())
        else:  # what can be read without the subprocess
            self.env = {
                "runtime": _env.runtime_kind(),
                "git_commit": _env.git_commit(),
                "source_digest": _env.source_digest(),
                "nvidia_smi": self.gpus,
            }
        self.env["cpu_count"] = self.cpus
        if not proc.ok:
            res.status = "timed out" if proc.timed_out else "failed"
            res.reason = f"exit status {proc.rc}: {proc.last_lines()}"
            return
        res.status = "passed"
        devices = self.env.get("devices") or []
        if not self.dry_run and self.gpu_reason is None and not self.env.get("cuda_available"):
            self.gpu_reason = f"torch {self.env.get('torch')} sees no CUDA device"
        if devices:
            d = devices[0]
            res.note = (
                f"{d['name']}, {d['sms']} SMs, {d['memory_GiB']} GiB, sm_{d['capability']}, "
                f"runtime {self.env.get('runtime')}"
            )
        else:
            res.note = f"no CUDA device; runtime {self.env.get('runtime')}"

    def _pytest(self, name: str, res: StageResult, deadline: float) -> None:
        sel = _plan.TESTS[name]
        junit = self.tmp / f"{name}.xml"
        cmd = [PY, "-m", "pytest", *(sel.dry_run if self.dry_run else sel.gpu)]
        cmd += ["-q", "-rfE", "--tb=short", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        cmd += ["-o", "junit_family=xunit1"]
        if not self.dry_run and _has_module("xdist") and self.cpus >= 4:
            busy = 5 if self.build is not None and self.build.result is None else 0
            cmd += ["-n", str(max(2, min(8, self.cpus - busy)))]
        if not self.dry_run and _has_module("pytest_timeout"):
            cmd += [f"--timeout={int(max(60, (deadline - time.monotonic()) * 0.8))}"]
        device = "cpu" if self.dry_run else "cuda"
        proc = self.command(name, cmd, deadline, self.child_env(MTL_FAST_TEST_DEVICE=device))
        if junit.exists():
            try:
                self.data["tests"][name] = _summary.parse_junit(junit)
            except Exception as exc:  # a half-written file from a killed run
                self.data["tests"][name] = {"error": f"unreadable JUnit file: {exc}"}
        counts = self.data["tests"].get(name, {}).get("counts", {})
        if proc.timed_out:
            res.status = "timed out"
            res.reason = f"stopped at {proc.seconds:.0f} s; " + (
                f"{counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed before that"
                if counts
                else "no JUnit file"
            )
        elif proc.rc == 0 and not self.dry_run and counts and not counts.get("passed"):
            reasons = self.data["tests"][name].get("skip_reasons", {})
            res.status = "failed"
            res.reason = f"no test ran: {counts.get('skipped', 0)} skipped" + (
                f" ({next(iter(reasons))})" if reasons else ""
            )
        elif proc.rc == 0:
            res.status = "passed"
        elif proc.rc == 1 and counts:
            res.status = "failed"
            fails = self.data["tests"][name].get("failures", [])
            first = fails[0]["test"].split("::")[-1] if fails else ""
            res.reason = (
                f"{counts.get('failed', 0)} failed, {counts.get('errors', 0)} errors, "
                f"{counts.get('passed', 0)} passed; first: {first}"
            )
        else:
            res.status = "failed"
            what = "no tests collected" if proc.rc == 5 else f"pytest exit status {proc.rc}"
            res.reason = f"{what}: {proc.last_lines()}"

    def stage_tests(self, name: str, res: StageResult, deadline: float) -> None:
        if not self.dry_run and self.gpu_reason is not None:
            res.status, res.reason = "skipped", self.gpu_reason
            return
        self._pytest(name, res, deadline)

    def stage_tests_cuda(self, res: StageResult, deadline: float) -> None:
        build = self.join_build(deadline - 10)
        if not self.dry_run and build.status != "passed":
            res.status = "skipped"
            res.reason = f"the CUDA extension build {build.status}: {build.reason}"[:300]
            return
        self.stage_tests("tests-cuda", res, deadline)

    def stage_verify(self, res: StageResult, deadline: float) -> None:
        out = self.tmp / "verify.json"
        cmd = [PY, "-m", "mtl_fast", "verify", "--json", str(out)]
        if self.dry_run:
            cmd += ["--quick", "--backend", "reference", "--device", "cpu"]
            for op in DRY_VERIFY_OPS:
                cmd += ["--op", op]
        elif self.gpu_reason is not None:
            res.status, res.reason = "skipped", self.gpu_reason
            return
        proc = self.command("verify", cmd, deadline)
        if out.exists():
            self.data["verify"] = _summary.summarize_verify(out)
        v = self.data["verify"]
        per = v.get("backends", {})
        res.note = ", ".join(
            f"{b}: {c.get('passed', 0)} passed, {c.get('failed', 0)} failed" for b, c in per.items()
        )
        if v.get("skipped"):
            res.note += "; not run: " + "; ".join(s[:80] for s in v["skipped"])
        if proc.timed_out:
            res.status, res.reason = "timed out", f"stopped at {proc.seconds:.0f} s"
        elif proc.rc == 0:
            res.status = "passed"
        else:
            res.status = "failed"
            nfail = sum(c.get("failed", 0) for c in per.values())
            res.reason = (
                f"{nfail} checks failed ({res.note})"
                if nfail
                else f"exit status {proc.rc}: {proc.last_lines()}"
            )

    def stage_sanitizer(self, res: StageResult, deadline: float) -> None:
        san = self.data["sanitizer"]
        san["runtime"] = self.env.get("runtime") or _env.runtime_kind()
        ops = [PY, "-m", "mtl_fast.tools.gpu_report._sanitizer", "ops"]
        if self.dry_run:
            proc = self.command(
                "sanitizer",
                [*ops, "--backends", "reference", "--device", "cpu", "--quick"],
                deadline,
            )
            san["probe"] = {"works": False, "message": "not probed: dry run (no GPU)"}
            if proc.ok:
                res.status = "skipped"
                res.reason = (
                    "dry run: compute-sanitizer needs a GPU (its op driver ran on the CPU "
                    "reference backend: ok)"
                )
            elif proc.timed_out:
                res.status = "timed out"
                res.reason = f"the op driver did not finish on the CPU in {proc.seconds:.0f} s"
            else:
                res.status = "failed"
                res.reason = f"the op driver failed on the CPU: {proc.last_lines()}"
            return
        if self.gpu_reason is not None or self.probe is None:
            res.status, res.reason = "skipped", self.gpu_reason or "no probe"
            return
        probe = self.probe.join(min(deadline, self.probe.start + _plan.PROBE_TIMEOUT_S + 15))
        path = self.tmp / "probe.json"
        info = json.loads(path.read_text()) if path.exists() else {}
        if not info:
            info = {"works": False, "message": f"the probe gave no answer: {probe.last_lines()}"}
        san["probe"] = info
        self.env["compute_sanitizer_works"] = bool(info.get("works"))
        if not info.get("works"):
            res.status = "skipped"
            res.reason = f"compute-sanitizer unusable on this runtime ({san['runtime']}): {info.get('message')}"
            return
        tool = _env.find_tool("compute-sanitizer") or "compute-sanitizer"
        backends = ["triton"]
        if self.stages["build"].status == "passed":
            backends.insert(0, "cuda")
        san["backends"] = backends
        san["tools"] = {}
        tools = _plan.SANITIZER_TOOLS
        for i, (check, share) in enumerate(tools):
            left = deadline - time.monotonic()
            if check == "synccheck" and left < 15:
                san["tools"][check] = {"status": "skipped", "reason": f"{left:.0f} s left"}
                continue
            rest = sum(sh for _, sh in tools[i:])
            cmd = [tool, "--tool", check, "--error-exitcode", str(ERROR_EXIT)]
            cmd += ["--print-limit", "50", *ops, "--backends", ",".join(backends)]
            env = self.child_env(PYTORCH_NO_CUDA_MEMORY_CACHING="1")
            proc = self.command(
                f"sanitizer:{check}", cmd, time.monotonic() + left * share / rest, env
            )
            parsed = parse_summary(proc.output)
            entry: dict[str, Any] = {"seconds": round(proc.seconds, 1), **parsed}
            if proc.timed_out:
                entry["status"] = "timed out"
            elif proc.rc == 0 and parsed["errors"] == 0:
                entry["status"] = "passed"
            else:
                entry["status"] = "failed"
                errs = [ln.strip(" =") for ln in proc.output.splitlines() if "=========" in ln]
                entry["first_error"] = next(
                    (e for e in errs if e and "SUMMARY" not in e and "COMPUTE-SANITIZER" not in e),
                    proc.last_lines(),
                )[:300]
                entry["exit_status"] = proc.rc
            san["tools"][check] = entry
        statuses = [t["status"] for t in san["tools"].values()]
        if "failed" in statuses:
            res.status = "failed"
        elif "timed out" in statuses:
            res.status = "timed out"
        else:
            res.status = "passed"
        res.note = ", ".join(f"{k} {v['status']}" for k, v in san["tools"].items())
        if res.status != "passed":
            res.reason = res.note + f" (backends {', '.join(backends)})"

    def stage_bench(self, part: str, res: StageResult, deadline: float) -> None:
        if not self.dry_run and self.gpu_reason is not None:
            res.status, res.reason = "skipped", self.gpu_reason
            return
        limit = deadline - time.monotonic()
        cmd = [PY, "-m", "mtl_fast.tools.gpu_report._bench", "--part", part]
        for suffix in ("json", "md", "png"):
            cmd += [f"--{suffix}", str(self.path(f"bench.{suffix}"))]
        # Stop measuring early enough to write the files (and the plot) within the slice.
        margin = 0.35 * limit if self.dry_run else min(25.0, 0.3 * limit)
        cmd += ["--soft-limit-s", f"{max(1.0, limit - margin):.0f}"]
        if self.dry_run:
            cmd.append("--dry-run")
        proc = self.command(f"bench-{part}", cmd, deadline)
        rows = re.findall(rf"{part}: (\d+) rows", proc.output)
        res.note = f"{rows[-1]} rows" if rows else ""
        if proc.rc == 0:
            res.status = "passed"
        elif proc.timed_out or proc.rc == 3:
            res.status = "timed out"
            res.reason = f"stopped at its time slice ({proc.seconds:.0f} s); the rest not measured"
        else:
            res.status = "failed"
            res.reason = f"exit status {proc.rc}: {proc.last_lines()}"


def _seconds(text: str) -> float:
    """``--budget``: a finite number of seconds, more than the reserve kept for the files."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= RESERVE_S:
        raise argparse.ArgumentTypeError(
            f"expected a finite number of seconds above {RESERVE_S:g} (kept back for writing "
            f"the files), got {text}"
        )
    return value


def _folder(text: str) -> Path:
    """``--out``: a folder, or a path where one can be made (not an existing file)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    return path


def _bench_json(text: str) -> Path:
    """``--preference``: an existing file."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu_report",
        description="GPU evidence in one call: env, CUDA build, GPU tests, verify, "
        "compute-sanitizer, benchmarks; result files in --out (docs/gpu.md)",
    )
    parser.add_argument("--out", type=_folder, default=Path("gpu-report-out"), help="result folder")
    parser.add_argument(
        "--budget",
        type=_seconds,
        default=None,
        help=f"seconds for all stages (default {_plan.GPU_BUDGET_S:.0f}; dry run "
        f"{_plan.DRY_BUDGET_S:.0f}); each stage gets a weighted slice",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="the same stages on the CPU with tiny shapes"
    )
    parser.add_argument(
        "--preference",
        type=_bench_json,
        metavar="BENCH_JSON",
        help="print auto's per-op Triton/CUDA order from a GPU bench JSON, and exit",
    )
    parser.add_argument("--verbose", action="store_true", help="echo every command's output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.preference is not None:
        from mtl_fast.tools.gpu_report._preference import main as preference

        return preference(args.preference)
    run = Run(args)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    try:
        return run.execute()
    except KeyboardInterrupt as exc:
        run.say(f"interrupted ({exc or 'SIGINT'}): writing what was done")
        for res in run.stages.values():
            if res.status == "not run":
                res.reason = "not reached: the run was interrupted"
        return run.finish() or 130
