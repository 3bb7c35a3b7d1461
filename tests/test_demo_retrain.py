"""Retraining the demo model from scratch reproduces the shipped one (slow: about half an hour on 2 cores)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from moe_tui.demo.train import Settings, train
from moe_tui.paths import DEMO_MODEL_DIR

# Settings that change how fast training runs or how much it prints, not what it computes (beyond float noise).
RUNTIME_ONLY = {"threads", "log_every"}


@pytest.mark.slow
@pytest.mark.timeout(3 * 3600)  # about 30 minutes on 2 idle cores
def test_retraining_reproduces_the_shipped_validation_loss(tmp_path) -> None:
    shipped = json.loads((DEMO_MODEL_DIR / "training_report.json").read_text())
    shaping = {k: v for k, v in shipped["settings"].items() if k not in RUNTIME_ONLY}
    assert shaping == {k: v for k, v in asdict(Settings()).items() if k not in RUNTIME_ONLY}, (
        "the shipped model was trained with settings other than the script's defaults"
    )
    report = train(Settings(), tmp_path / "demo")
    print(f"\nshipped val loss {shipped['val_loss']:.4f}, retrained {report['val_loss']:.4f}")
    assert abs(report["val_loss"] - shipped["val_loss"]) <= 0.05 * shipped["val_loss"]
    assert (tmp_path / "demo" / "model.safetensors").is_file()
