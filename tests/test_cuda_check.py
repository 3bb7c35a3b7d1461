"""The CUDA check script: without a GPU it runs what a CPU can and says plainly what it skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the check runs for minutes: run it by hand")
def test_without_a_gpu_the_check_runs_the_cpu_parts_and_names_every_skip(tmp_path: Path) -> None:
    script = REPO / "benchmarks" / "cuda_check.py"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--note", "why this run", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads((tmp_path / "cuda-check-cpu-only.json").read_text())
    assert data["gpu"] is None and data["note"] == "why this run"
    steps = data["steps"]
    skipped = {name for name, step in steps.items() if step["status"] == "skipped"}
    assert skipped == {"tests", "streams", "syncs", "overhead", "transfer", "cli", "fit", "mixtral"}
    assert all(steps[name]["reason"].startswith("no CUDA device") for name in skipped)
    kernels = steps["kernels"]
    assert kernels["status"] == "passed" and kernels["device"] == "cpu"
    formats = {row["format"]: row for row in kernels["rows"]}
    assert {"bf16", "int4", "int8", "hqq2 (unfused)"} <= set(formats)
    assert all(row["median_s_1"] > 0 and row["bound_s"] > 0 for row in formats.values())
    assert "no step failed" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's steps are the ones this times")
def test_a_deadline_cuts_off_the_step_running_then_and_skips_the_rest(tmp_path: Path) -> None:
    """A lent GPU machine's limit ends a run; --deadline ends it first, with every step's report written."""
    script = REPO / "benchmarks" / "cuda_check.py"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--deadline", "2", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    steps = json.loads((tmp_path / "cuda-check-cpu-only.json").read_text())["steps"]
    assert steps["kernels"]["status"] == "failed"  # the CPU's one long step, running when the deadline passed
    assert steps["kernels"]["error"].startswith("cut off by the run's --deadline after")
    assert steps["mixtral"] == {**steps["mixtral"], "status": "skipped"}
    assert steps["mixtral"]["reason"].startswith("out of time")
    assert steps["tests"]["reason"].startswith("no CUDA device")  # steps before it ran as usual


def test_decode_speed_counts_misses_the_host_computed_apart_from_copies() -> None:
    """The mixtral step's measure, run on the CPU: misses left to the host are neither hits nor copies."""
    cuda_check = _cuda_check()
    from moe_tui.offload import OffloadConfig, offload_model

    om = offload_model(cuda_check.small_mixtral(), OffloadConfig(cache_size=2, prefetch=0, device="cpu"))
    try:
        copied = cuda_check.decode_speed(om, 4)
        assert copied["tokens_per_s"] > 0 and copied["host_per_token"] == 0
        assert copied["copied_bytes_per_token"] > 0 and 0 <= copied["hit_rate"] < 1
        om.set_miss("host")
        on_host = cuda_check.decode_speed(om, 4)
        assert on_host["host_per_token"] > 0 and on_host["copied_bytes_per_token"] == 0
        assert on_host["host_per_token"] <= 4 * 2  # four MoE layers, top-2
    finally:
        om.close()


def test_results_name_each_cuda_run_by_its_time_the_steps_it_ran_and_its_note() -> None:
    results = _benchmark("results")
    run = {"gpu": "NVIDIA H200", "when": "2026-12-04 14:39 UTC", "torch": "2.11", "cuda": "13.0", "quick": False}
    steps = {
        "tests": {"status": "passed", "summary": "29 passed", "seconds": 24.0},
        "fit": {"status": "skipped", "reason": "--skip"},
    }
    lines = results.cuda_section({**run, "note": "After the fix.", "steps": steps}, "cuda-nvidia-h200-tests.json")
    assert lines[0] == "## 9. CUDA check: NVIDIA H200, 2026-12-04 14:39 UTC (steps run: tests)"
    assert lines[2].endswith("`benchmarks/results/cuda-nvidia-h200-tests.json`. After the fix.")
    assert "| fit | skipped | - | --skip |" in "\n".join(lines).splitlines()
    older = results.cuda_section({**run, "steps": {"tests": steps["tests"]}}, "cuda-nvidia-h200.json")
    assert older[0] == "## 9. CUDA check: NVIDIA H200, 2026-12-04 14:39 UTC"  # every step ran; no note was kept
    assert older[2].endswith("`benchmarks/results/cuda-nvidia-h200.json`.")


def _cuda_check():
    return _benchmark("cuda_check")


def _benchmark(name: str):
    """A script of benchmarks/ imported as a module."""
    import importlib

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_a_failed_step_keeps_what_it_had_measured() -> None:
    """A step cut off half-way (the first GPU run lost four configurations' numbers so) reports what it filled."""
    cuda_check = _cuda_check()
    kept: dict = {}

    def work() -> dict:
        kept["configurations"] = [{"k": 8, "tokens_per_s": 13.8}]
        raise RuntimeError("the next configuration failed")

    report = cuda_check.run_step("mixtral", work, None, kept)
    assert report["status"] == "failed" and report["error"] == "RuntimeError: the next configuration failed"
    assert report["configurations"] == [{"k": 8, "tokens_per_s": 13.8}]
    assert cuda_check.run_step("mixtral", lambda: {"passed": True}, None, kept)["status"] == "passed"


def test_past_the_deadline_a_step_stuck_in_native_code_ends_the_process_after_the_report() -> None:
    """The deadline's alarm cannot interrupt one long native call; the watchdog writes the report and exits."""
    code = (
        "import sys, threading; sys.path.insert(0, 'benchmarks'); import cuda_check; "
        "cuda_check.stop_at_deadline(0.3, lambda: print('report written', flush=True)); "
        "threading.Event().wait()"  # blocks without ever returning to Python code
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "inside native code" in done.stdout and done.stdout.rstrip().endswith("report written")


def test_decode_cost_times_transformers_model_and_the_engine_alike() -> None:
    """The overhead step's measure, run on the CPU (it counts GPU kernels only where there is a GPU)."""
    cuda_check = _cuda_check()
    from moe_tui.offload import OffloadConfig, offload_model
    from moe_tui.probes import miniature_mixtral

    model = miniature_mixtral(4, 8, 2)
    cpu = torch.device("cpu")
    resident = cuda_check.decode_cost(model, cpu, tokens=4)
    om = offload_model(model, OffloadConfig(cache_size=8, prefetch=0, device="cpu"))
    try:
        engine = cuda_check.decode_cost(om.model, cpu, tokens=4)
    finally:
        om.close()
    assert resident["ms_per_token"] > 0 and engine["ms_per_token"] > 0
    assert resident["kernels_per_token"] is None and engine["kernels_per_token"] is None
