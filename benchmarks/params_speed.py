"""How long ``moe-tui params`` takes, end to end, next to the floor it cannot go under.

Runs, each in a fresh interpreter pinned to at most 2 CPU cores, ``--runs`` times, the two commands
interleaved (median reported):

* ``params``: ``python -m moe_tui params samples/configs/mixtral-8x7b.json`` (output discarded);
* ``floor``: ``python -c "import torch; import transformers.models.mixtral.modeling_mixtral"``, the imports
  any meta-device build of Mixtral needs;

then, in this process after those imports, the tree build alone for every shipped config (cache cleared).
Wall time depends on what else the machine runs, so CPU time (user + sys of the child) and the load
average are printed too. Usage: ``python benchmarks/params_speed.py [--runs 7]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "samples" / "configs"
COMMANDS = {
    "params": [sys.executable, "-m", "moe_tui", "params", str(CONFIGS / "mixtral-8x7b.json")],
    "floor": [sys.executable, "-c", "import torch; import transformers.models.mixtral.modeling_mixtral"],
}


def _pin_to_two_cores() -> None:
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cores[:2])


def time_command(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``command`` in a fresh process on at most 2 cores."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, preexec_fn=_pin_to_two_cores)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def build_times(runs: int) -> dict[str, float]:
    """Median seconds of ``build_tree`` per shipped config, imports already done, cache cleared each time."""
    sys.path.insert(0, str(REPO))
    from moe_tui.params import build_tree, load_config
    from moe_tui.params.build import _cached_tree

    results = {}
    for path in sorted(CONFIGS.glob("*.json")):
        config = load_config(path)
        build_tree(config)  # first build imports the family's modeling module
        samples = []
        for _ in range(runs):
            _cached_tree.cache_clear()
            start = time.perf_counter()
            build_tree(config)
            samples.append(time.perf_counter() - start)
        results[path.stem] = statistics.median(samples)
    return results


def main() -> None:
    """Run the measurements and print a small report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per measurement (median reported)")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):  # interleaved, so that both commands see the same background load
        for name, command in COMMANDS.items():
            samples[name].append(time_command(command))
    medians = {}
    for name, runs in samples.items():
        walls, cpus = zip(*runs, strict=True)
        medians[name] = statistics.median(walls)
        print(
            f"{name:>6}: median wall {medians[name]:.2f} s (min {min(walls):.2f}, max {max(walls):.2f}), "
            f"median CPU {statistics.median(cpus):.2f} s over {args.runs} runs"
        )
    print(f"params / floor = {medians['params'] / medians['floor']:.2f}  (5 s budget: {medians['params']:.2f} s)")
    for name, seconds in build_times(args.runs).items():
        print(f"  build_tree {name:<20} {1000 * seconds:7.1f} ms")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
