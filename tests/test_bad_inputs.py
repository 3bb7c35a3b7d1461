"""Every file moe-tui reads, fed broken: a clear one-line message (exit code 2, or the app's warning), never a
traceback, and the user's file left exactly as it was.

Each input below is spoiled six ways: empty, truncated, corrupt (bytes that are not the format), the wrong
type (a well-formed file of another kind), unreadable (no read permission; as root the check runs in a child
process that drops to the ``nobody`` user, since root reads any file), and a directory where the file should
be. The quantized-store cache is the engine's own file rather than the user's: a broken entry must be detected
and rebuilt, never trusted.
"""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import signal
import stat
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from moe_tui import cli, config, paths
from moe_tui.errors import UserError

VARIANTS = ("empty", "truncated", "corrupt", "wrong type", "unreadable", "directory")
ROOT = os.geteuid() == 0
NOBODY = 65534
CHILD_TIMEOUT_S = 120
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
GARBAGE = bytes(range(256)) * 4


def spoil(path: Path, variant: str, good: bytes, wrong: bytes) -> None:
    """Replace ``path`` by its ``variant`` of broken."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if variant == "directory":
        path.mkdir()
        (path / "inside.txt").write_text("not the file you are looking for")
        return
    content = {
        "empty": b"",
        "truncated": good[: max(len(good) // 2, 1)],
        "corrupt": GARBAGE,
        "wrong type": wrong,
        "unreadable": good,
    }[variant]
    path.write_bytes(content)
    if variant == "unreadable":
        path.chmod(0)


def fingerprint(path: Path) -> object:
    """What the user has at ``path``: its bytes and mode, or a directory's listing."""
    if path.is_dir():
        return ("dir", sorted(p.name for p in path.iterdir()))
    return ("file", stat.S_IMODE(path.stat().st_mode), _read_as_root(path))


def _read_as_root(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & stat.S_IRUSR or ROOT:
        return path.read_bytes()
    return b"<unreadable>"


def assert_one_line_error(code: int, err: str) -> None:
    """Exit code 2 and one line on stderr, no traceback."""
    assert "Traceback" not in err, err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("... ")]  # bench's progress
    assert len(lines) == 1 and lines[0].startswith("moe-tui: error: "), err


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str], variant: str) -> tuple[int, str]:
    """``moe-tui ARGV`` in this process, or, for an unreadable file as root, in a forked child that runs as nobody."""
    if variant == "unreadable" and ROOT:
        return as_nobody(lambda: _captured_main(argv))
    code = cli.main(argv)
    return code, capsys.readouterr().err


def _captured_main(argv: list[str]) -> tuple[int, str]:
    buffer, stderr = io.StringIO(), sys.stderr
    sys.stderr = buffer
    try:
        return cli.main(argv), buffer.getvalue()
    finally:
        sys.stderr = stderr


def open_up(path: Path) -> None:
    """Let other users reach ``path`` (pytest's temporary directories are private to root): only the file's own
    permission is then in the way."""
    for directory in path.parents:
        if directory == Path("/tmp") or directory == Path("/"):
            break
        directory.chmod(directory.stat().st_mode | 0o005)


def as_nobody(work: Callable[[], object]) -> object:
    """``work()`` in a forked copy of this process that has given up root (so file permissions apply).

    Forked, not started anew: the interpreter and the modules already imported come along, so nothing has to be
    read from directories only root may enter. The caller warms the code path up before (same imports).
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, run, send the result back as JSON, leave without cleanup
        result: object
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = work()
        except BaseException as error:
            result = ["child failed", "".join(traceback.format_exception(error))]
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    data = b""
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while True:
        ready, _, _ = select.select([read], [], [], max(deadline - time.monotonic(), 0))
        if not ready:  # a child that reached torch's thread pool after the fork can wait forever: end it
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            pytest.fail(f"the child running as nobody gave no answer in {CHILD_TIMEOUT_S} s")
        if not (chunk := os.read(read, 1 << 16)):
            break
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    result = json.loads(data)
    assert result[0] != "child failed", result[1]
    return tuple(result)


def check_cli_input(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    variant: str,
    target: Path,
    good: bytes,
    wrong: bytes,
    argv: Callable[[Path], list[str]],
    expect_note: bool = False,
) -> str:
    """Spoil ``target``, run the command, check the one-line error and the untouched file; returns stderr."""
    if variant == "unreadable" and ROOT:  # warm up the same code path (imports) before the forked child runs it
        spoil(target, "directory", good, wrong)
        run_cli(argv(target), capsys, "directory")
    spoil(target, variant, good, wrong)
    open_up(target)
    before = fingerprint(target)
    code, err = run_cli(argv(target), capsys, variant)
    if expect_note and variant == "truncated":  # readable up to the cut, and said so
        assert code == 0 and "is cut off" in err and "Traceback" not in err, err
    else:
        assert_one_line_error(code, err)
    assert fingerprint(target) == before
    return err


# ----------------------------------------------------------------------------------------------- traces
TRACE = paths.SAMPLES_DIR / "traces" / "demo-python-builtins.jsonl"


@pytest.mark.parametrize("variant", VARIANTS)
def test_trace_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], variant: str) -> None:
    good = "".join(TRACE.read_text().splitlines(keepends=True)[:40]).encode()
    wrong = json.dumps({"model": "not a trace", "layers": [1, 2]}).encode()
    target = tmp_path / "t.jsonl"
    check_cli_input(tmp_path, capsys, variant, target, good, wrong, lambda p: ["lab", str(p)], expect_note=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_trace_for_plan_and_bench_routing(tmp_path: Path, capsys: pytest.CaptureFixture[str], variant: str) -> None:
    good = "".join(TRACE.read_text().splitlines(keepends=True)[:40]).encode()
    target = tmp_path / "t.jsonl"
    measured = ["--bandwidth", "10", "--compute-bandwidth", "10", "--overhead-ms", "1", "--vram", "2GiB"]
    plan = ["plan", str(paths.DEMO_MODEL_DIR), *measured, "--trace"]
    check_cli_input(tmp_path, capsys, variant, target, good, PNG, lambda p: [*plan, str(p)], expect_note=True)


# ----------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("variant", VARIANTS)
def test_model_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], variant: str) -> None:
    good = (paths.CONFIGS_DIR / "mixtral-8x7b.json").read_bytes()
    wrong = b'{"model_type": "not-a-model", "hidden_size": "big"}'
    check_cli_input(tmp_path, capsys, variant, tmp_path / "config.json", good, wrong, lambda p: ["params", str(p)])


# ----------------------------------------------------------------------------------------------- prompt files
@pytest.mark.parametrize("variant", VARIANTS)
def test_prompt_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], variant: str) -> None:
    good = ("é" * 21 + "\n").encode()  # cut in half (byte 22 of 43), it ends in the middle of a character
    wrong = PNG
    bench = ["bench", "--tokens", "2", "--runs", "1", "--config", "k=1", "--prompts"]
    check_cli_input(tmp_path, capsys, variant, tmp_path / "prompts.txt", good, wrong, lambda p: [*bench, str(p)])


# ----------------------------------------------------------------------------------------------- model directories
def demo_copy(tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    shutil.copytree(paths.DEMO_MODEL_DIR, directory)
    return directory


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_model_directory_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], variant: str, name: str) -> None:
    directory = demo_copy(tmp_path)
    target = directory / name
    good = target.read_bytes()
    wrong = b'{"model_type": "llama"}' if name == "config.json" else PNG
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is a list?\n")
    argv = ["bench", "--model", str(directory), "--prompts", str(prompts), "--tokens", "2", "--runs", "1"]
    check_cli_input(tmp_path, capsys, variant, target, good, wrong, lambda p: [*argv, "--config", "k=1"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_tokenizer_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], variant: str) -> None:
    """``ask`` needs the tokenizer (``bench`` reads prompts as bytes without one); the message names the file,
    which the library's own JSON error did not."""
    directory = demo_copy(tmp_path)
    target = directory / "tokenizer.json"
    argv = ["ask", "--model", str(directory), "--max-new-tokens", "2", "hi"]
    config.settings_path().parent.mkdir(parents=True, exist_ok=True)
    open_up(config.settings_path())  # ask reads the settings too: only the tokenizer may be out of reach
    err = check_cli_input(tmp_path, capsys, variant, target, target.read_bytes(), PNG, lambda p: argv)
    said = {"unreadable": "cannot read tokenizer.json: Permission denied", "directory": "tokenizer of model"}
    assert said.get(variant, "cannot load the tokenizer of model: tokenizer.json is not valid JSON") in err


def test_a_model_directory_without_a_tokenizer_is_refused_before_its_weights_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """transformers' own message for this began "Couldn't instantiate the backend tokenizer from one of:" and
    the line ended there."""
    directory = demo_copy(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).unlink()
    code, err = run_cli(["ask", "--model", str(directory), "hello"], capsys, "missing")
    assert_one_line_error(code, err)
    assert f"{directory} has no tokenizer (tokenizer.json, tokenizer.model" in err


# ----------------------------------------------------------------------------------------------- settings, themes
@pytest.mark.parametrize("variant", VARIANTS)
def test_settings_file(tmp_path: Path, variant: str) -> None:
    path = tmp_path / "settings.toml"
    good = config.to_toml(config.Settings(theme="moe-light")).encode()
    spoil(path, variant, good, PNG if variant == "wrong type" else b"")
    before = fingerprint(path)
    if variant == "unreadable" and ROOT:
        open_up(path)
        theme, warning = as_nobody(lambda: _theme_and_warning(path))
        settings = config.Settings(theme=theme)
    else:
        settings, warning = config.load_settings(path)
    if variant == "empty":
        assert (settings, warning) == (config.Settings(), "")  # an empty settings file means the defaults
    elif variant == "truncated" and not warning:
        assert settings.theme == "moe-light"  # the cut fell after the first complete value: nothing lost
    else:
        assert str(path) in warning and "\n" not in warning and "using the defaults" in warning
    assert fingerprint(path) == before


def _theme_and_warning(path: Path) -> list[str]:
    settings, warning = config.load_settings(path)
    return [settings.theme, warning]


@pytest.mark.parametrize("variant", VARIANTS)
def test_theme_file(tmp_path: Path, variant: str) -> None:
    from moe_tui.themes import load_theme

    path = tmp_path / "mine.toml"
    good = (paths.THEMES_DIR / "dark.toml").read_bytes()
    spoil(path, variant, good, b'name = "x"\nprimary = 7\n' if variant == "wrong type" else b"")
    before = fingerprint(path)
    if variant == "unreadable" and ROOT:
        pytest.skip("root reads any file; the app's handling of a skipped theme is tested in test_tui_app")
    if variant == "truncated":
        spoil(path, variant, good[: good.index(b"[heatmap]")], b"")
        before = fingerprint(path)
    with pytest.raises(UserError) as caught:
        load_theme(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert fingerprint(path) == before


# ----------------------------------------------------------------------------------------------- history database
@pytest.mark.parametrize("variant", VARIANTS)
def test_history_database(tmp_path: Path, variant: str) -> None:
    from moe_tui.chat.history import HistoryStore

    good_path = tmp_path / "good.sqlite3"
    with HistoryStore(good_path) as store:
        chat = store.create_conversation(model="m")
        store.add_message(chat.id, "user", "hello " * 500)
    good = good_path.read_bytes()
    path = tmp_path / "history.sqlite3"
    spoil(path, variant, good, PNG)
    before = fingerprint(path)
    if variant == "unreadable" and ROOT:
        pytest.skip("root opens any file; the error screen for an unusable history is tested in test_tui_errors")
    if variant == "empty":  # an empty file is an empty database: usable, with no conversations
        with HistoryStore(path) as store:
            assert store.list_conversations() == []
        return
    with pytest.raises(UserError) as caught:
        HistoryStore(path).close()
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert fingerprint(path) == before


# ----------------------------------------------------------------------------------------------- quantized store
# Quantized without HQQ's optimiser (quick), computing in bfloat16: the demo's own float32 would give its experts
# HQQ's unfused layout and a load note saying so, and the notes these tests read are the store's own.
QUICK_BF16 = {"quant_optimize": False, "dtype": "bf16"}


@pytest.mark.parametrize("name", ["store.json", "experts.bin"])
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "unreadable"] + ["unreadable"])
def test_quantized_store_cache_entry_is_rebuilt_never_trusted(tmp_path: Path, variant: str, name: str) -> None:
    import torch

    from moe_tui.offload import OffloadConfig, load_offloaded

    settings = OffloadConfig(cache_size=2, expert_bits=4, quant_cache_dir=tmp_path / "q", **QUICK_BF16)
    first = load_offloaded(paths.DEMO_MODEL_DIR, settings, progress=lambda *_: None)
    entry = Path(first.load_info["store_dir"])
    rows = [first.store.row(0, e).clone() for e in range(4)]
    first.close()
    target = entry / name
    spoil(target, variant, target.read_bytes(), b'{"layers": 6}' if name == "store.json" else b"\0" * 1000)
    again = load_offloaded(paths.DEMO_MODEL_DIR, settings, progress=lambda *_: None)
    assert again.load_info["store"] in ("built", "reused")
    if variant != "unreadable" or not ROOT:
        assert again.load_info["store"] == "built"
        (note,) = again.load_info["notes"]
        assert note.startswith(f"the saved quantized store in {entry} is ") and "discarded, quantizing again" in note
    assert all(torch.equal(again.store.row(0, e), rows[e]) for e in range(4))
    again.close()


# ----------------------------------------------------------------------------------------------- pre-quantized
@pytest.mark.parametrize("method", ["fp8 without a weight_block_size", "hqq", "gptq", "awq", "bitsandbytes", "x"])
def test_a_pre_quantized_checkpoint_is_refused_before_any_weight_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moe_tui.offload import OffloadConfig, load_offloaded
    from moe_tui.offload import checkpoint as checkpoint_module

    directory = demo_copy(tmp_path)
    config_path = directory / "config.json"
    data = json.loads(config_path.read_text())
    data["quantization_config"] = {"quant_method": method.split()[0]}
    config_path.write_text(json.dumps(data))

    def no_reading(*args, **kwargs):
        raise AssertionError("a shard was opened")

    monkeypatch.setattr(checkpoint_module.Checkpoint, "__init__", no_reading)
    with pytest.raises(UserError, match=f"pre-quantized with {method} "):
        load_offloaded(directory, OffloadConfig(cache_size=2))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is a list?\n")
    code = cli.main(["bench", "--model", str(directory), "--prompts", str(prompts), "--tokens", "2", "--config", "k=1"])
    assert_one_line_error(code, capsys.readouterr().err)


@pytest.mark.parametrize("store", ["ram", "mmap"])
def test_a_cache_directory_that_cannot_be_written_costs_the_cache_not_the_model(tmp_path: Path, store: str) -> None:
    from moe_tui.offload import OffloadConfig, load_offloaded

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should be")
    settings = OffloadConfig(cache_size=2, expert_bits=2, store=store, quant_cache_dir=blocker, **QUICK_BF16)
    om = load_offloaded(paths.DEMO_MODEL_DIR, settings, progress=lambda *_: None)
    assert om.load_info["store"] == "built" and "store_dir" not in om.load_info
    (note,) = om.load_info["notes"]
    assert note.startswith(f"could not keep the quantized store in {blocker}") and "quantized again next time" in note
    assert blocker.read_text() == "a file where the cache directory should be"
    om.close()


def test_a_disk_that_fills_while_the_cache_is_written_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from moe_tui.offload import OffloadConfig, load_offloaded
    from moe_tui.offload import store as store_module

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.os, "fsync", full)  # the first sync of the data file finds the disk full
    settings = OffloadConfig(cache_size=2, expert_bits=2, quant_cache_dir=tmp_path / "q", **QUICK_BF16)
    om = load_offloaded(paths.DEMO_MODEL_DIR, settings, progress=lambda *_: None)
    (note,) = om.load_info["notes"]
    assert "No space left on device" in note
    leftovers = [p.name for p in (tmp_path / "q").rglob("*") if p.is_file()]
    assert leftovers == []  # no partial file, no description that could be trusted later
    om.close()
    monkeypatch.undo()
    again = load_offloaded(paths.DEMO_MODEL_DIR, settings, progress=lambda *_: None)
    assert again.load_info["store"] == "built" and again.load_info["notes"] == []
    again.close()


@pytest.mark.parametrize(("store", "stage"), [("mmap", "quantizing"), ("ram", "quantizing"), ("ram", "saving")])
def test_a_load_stopped_while_the_store_is_built_or_saved_leaves_no_entry(
    tmp_path: Path, store: str, stage: str
) -> None:
    """A cancelled load in the app, or ctrl+c on a command, stops at a progress report: the mmap store's partial
    file (the whole store's size) and a half-saved entry are removed, and the next start builds it afresh."""
    from moe_tui.offload import OffloadConfig, load_offloaded

    class Stopped(Exception):
        pass

    def stop_in_stage(name: str, done: int, total: int) -> None:
        if name.startswith(stage) and done >= 1:
            raise Stopped

    root = tmp_path / "q"
    settings = OffloadConfig(cache_size=2, expert_bits=2, store=store, quant_cache_dir=root, **QUICK_BF16)
    with pytest.raises(Stopped):
        load_offloaded(paths.DEMO_MODEL_DIR, settings, progress=stop_in_stage)
    assert list(root.iterdir()) == []  # no entry, no partial file, no lock file
    again = load_offloaded(paths.DEMO_MODEL_DIR, settings, progress=lambda *_: None)
    assert again.load_info["store"] == "built" and again.load_info["notes"] == []
    again.close()
    stage = "loading saved expert store"  # a start stopped while reading a saved store leaves it as it was
    with pytest.raises(Stopped):
        load_offloaded(paths.DEMO_MODEL_DIR, settings, progress=stop_in_stage)
    third = load_offloaded(paths.DEMO_MODEL_DIR, settings, progress=lambda *_: None)
    assert third.load_info["store"] == "reused"
    third.close()
