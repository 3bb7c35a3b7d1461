"""One process at a time works on a saved expert store: a second start waits, then reads what the first saved;
``moe-tui cache`` neither removes nor counts as unused an entry another process is writing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from moe_tui import cli, paths
from moe_tui.offload.store_lock import WAITING, is_locked, lock_path, store_lock, working_on_a_store

TESTS = Path(__file__).parent

HOLD = """
import sys
from pathlib import Path
from moe_tui.offload.store_lock import store_lock
with store_lock(Path(sys.argv[1]), lambda *a: None):
    print("locked", flush=True)
    sys.stdin.readline()  # held until the test writes a line
"""


class Holder:
    """Another process holding the lock of ``entry`` until :meth:`release`."""

    def __init__(self, entry: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(entry)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        self.process.wait(timeout=30)

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_a_second_start_waits_for_the_lock_and_the_lock_file_goes_with_the_last_holder(tmp_path: Path) -> None:
    entry = tmp_path / "quantized" / "mixtral-hqq4-0123"
    reports: list[tuple[str, int, int]] = []
    with Holder(entry) as holder:
        assert is_locked(entry) and lock_path(entry).is_file()
        released: list[float] = []

        def release() -> None:
            released.append(time.monotonic())
            holder.release()

        threading.Timer(0.6, release).start()
        with store_lock(entry, lambda *report: reports.append(report)):
            assert released and time.monotonic() >= released[0], "taken before the other process let it go"
            assert lock_path(entry).is_file() and is_locked(entry)  # this process's own hold counts too
    assert reports[0] == (WAITING, 0, 1) and reports[-1] == (WAITING, 1, 1) and len(set(reports)) == 2
    assert not lock_path(entry).exists() and not is_locked(entry)
    quiet: list[tuple[str, int, int]] = []
    with store_lock(entry, lambda *report: quiet.append(report)):  # nobody else: no waiting stage
        pass
    assert quiet == []


def test_a_wait_for_the_lock_can_be_given_up_by_the_progress_callback(tmp_path: Path) -> None:
    """A load cancelled in the app (its progress callback raises) while another process builds the store stops
    waiting at the next poll, not when the other process is done, and leaves that process's lock alone."""
    entry = tmp_path / "quantized" / "entry"

    class GivenUp(Exception):
        pass

    polls: list[float] = []

    def report(stage: str, done: int, total: int) -> None:
        polls.append(time.monotonic())
        if len(polls) == 3:
            raise GivenUp

    with Holder(entry) as holder:
        safety = threading.Timer(8, holder.release)  # a wait that cannot be given up ends anyway, and fails below
        safety.start()
        start = time.monotonic()
        try:
            with pytest.raises(GivenUp), store_lock(entry, report):
                pass
            assert time.monotonic() - start < 5 and is_locked(entry)
        finally:
            safety.cancel()


BUILD = """
import sys, time
sys.path.insert(0, sys.argv[2])
from offload_models import build, mixtral_config
from moe_tui.offload import OffloadConfig, offload_model

slowed = []

def progress(stage, done, total):
    if stage.startswith("quantizing") and not slowed:
        slowed.append(stage)
        print("building", flush=True)
        time.sleep(1.5)  # the other start arrives while this one holds the lock

settings = OffloadConfig(cache_size=2, expert_bits=4, group_size=16, quant_cache_dir=sys.argv[1])
om = offload_model(build(mixtral_config(), seed=31), settings, progress=progress)
print(om.load_info["store"], om.load_info["store_dir"], flush=True)
"""


def test_two_starts_of_one_store_build_it_once_and_the_second_reads_what_the_first_saved(tmp_path: Path) -> None:
    from offload_models import build, mixtral_config

    from moe_tui.offload import OffloadConfig, offload_model

    root = tmp_path / "q"
    first = subprocess.Popen([sys.executable, "-c", BUILD, str(root), str(TESTS)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "building"
        stages: list[tuple[str, int, int]] = []
        settings = OffloadConfig(cache_size=2, expert_bits=4, group_size=16, quant_cache_dir=root)
        second = offload_model(build(mixtral_config(), seed=31), settings, progress=lambda *a: stages.append(a))
        outcome, store_dir = first.stdout.readline().split()
        assert first.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert outcome == "built" and second.load_info["store"] == "reused"
    assert (WAITING, 0, 1) in stages and not any(stage.startswith("quantizing") for stage, *_ in stages)
    assert second.load_info["store_dir"] == store_dir
    assert sorted(path.name for path in root.iterdir()) == [Path(store_dir).name]  # no lock file left behind
    fresh = offload_model(build(mixtral_config(), seed=31), OffloadConfig(cache_size=2, expert_bits=4, group_size=16))
    for layer in range(len(second.moe.layers)):
        for expert in range(second.moe.num_experts):
            assert torch.equal(second.store.row(layer, expert), fresh.store.row(layer, expert))


def test_cache_command_leaves_an_entry_being_written_alone(capsys: pytest.CaptureFixture[str]) -> None:
    root = paths.quant_cache_dir()
    for name in ("being-built", "half-written"):
        (root / name).mkdir(parents=True)
    with Holder(root / "being-built") as holder:
        assert cli.main(["cache", "--json"]) == 0
        entries = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)["entries"]}
        assert entries["being-built"]["writing"] and not entries["being-built"]["unused"]
        assert not entries["half-written"]["writing"] and entries["half-written"]["unused"]
        assert cli.main(["cache"]) == 0
        table = capsys.readouterr().out.splitlines()
        assert any(line.startswith("being-built") and line.endswith("being written") for line in table)
        assert cli.main(["cache", "--remove", "being-built"]) == 2
        assert "being-built: a running moe-tui is writing it" in capsys.readouterr().err
        assert cli.main(["cache", "--remove-outdated"]) == 0
        assert "removed 1 entry" in capsys.readouterr().out
        assert cli.main(["cache", "--clear"]) == 0
        assert "removed 0 entries, 0 B freed; kept being-built" in capsys.readouterr().out
        assert (root / "being-built").is_dir() and not (root / "half-written").exists()
        holder.release()
    assert cli.main(["cache", "--remove", "being-built"]) == 0
    assert sorted(root.iterdir()) == []


def test_a_file_system_without_locks_works_unlocked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where flock fails outright (ENOLCK on some network mounts), a start neither waits forever nor fails: it
    works on the store unlocked, as before there was a lock."""
    import errno

    from moe_tui.offload import store_lock as module

    def no_locks(handle: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(module.fcntl, "flock", no_locks)
    entry = tmp_path / "quantized" / "entry"
    reports: list[tuple[str, int, int]] = []
    with store_lock(entry, lambda *report: reports.append(report)):
        assert not is_locked(entry)
    assert reports == [] and not lock_path(entry).exists()


def test_the_process_knows_while_one_of_its_threads_works_on_an_entry(tmp_path: Path) -> None:
    """Quitting the app ends the process at once unless a store is being written (run_until_quit)."""
    assert not working_on_a_store()
    with store_lock(None, lambda *report: None):  # no saved store: nothing on disk
        assert not working_on_a_store()
    with store_lock(tmp_path / "entry", lambda *report: None):
        assert working_on_a_store()
    assert not working_on_a_store()
