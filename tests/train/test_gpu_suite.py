"""``benchmarks/gpu_suite.py``: the GPU suite's logic, and its CPU dry run at tiny sizes.

The suite's numbers need a GPU (docs/benchmarks.md); what is checked here is that every path
(the project's step, the Trainer baseline, batched against looped generation, the memory
plan beside it, the sweep that stops at the first batch that does not fit) runs and reports.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_suite", None)


def _fake_run(suite, limit: int, tried: list):
    def run(batch: int, checkpointing: bool) -> dict:
        tried.append((batch, checkpointing))
        if batch > limit * (2 if checkpointing else 1):
            raise suite.DoesNotFit("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"samples_per_s": float(batch), "tokens_per_s": 100.0 * batch}

    return run


def test_sweep_stops_at_the_first_batch_that_does_not_fit(suite):
    case = suite.Case("c", "train", "tiny-llava", batches=(1, 2, 4, 8), checkpointing=(False, True))
    rows, tried = [], []
    suite.sweep(case, _fake_run(suite, 2, tried), rows.append)
    # without checkpointing 4 does not fit (8 is not tried); with it 4 fits, 8 does not
    assert tried == [(1, False), (2, False), (4, False), (1, True), (2, True), (4, True),
                     (8, True)]  # fmt: skip
    assert [(r["batch"], r["checkpointing"], r["fits"]) for r in rows] == [
        (1, False, True), (2, False, True), (4, False, False),
        (1, True, True), (2, True, True), (4, True, True), (8, True, False),
    ]  # fmt: skip
    assert "out of memory" in rows[2]["error"]


def test_largest_only_reports_the_largest_batch_that_fits(suite):
    case = suite.Case("full", "train", "tiny-llava", batches=(1, 2, 4, 8), checkpointing=(True,),
                      largest_only=True)  # fmt: skip
    rows = []
    suite.sweep(case, _fake_run(suite, 2, []), rows.append)
    assert [(r["batch"], r["fits"]) for r in rows] == [(4, True)]
    rows = []
    suite.sweep(case, _fake_run(suite, 0, []), rows.append)
    assert [(r["batch"], r["fits"]) for r in rows] == [(1, False)]


def test_table_gives_ratios_to_the_best_trainer_row_and_mfu(suite):
    rows = [
        {"case": "m", "batch": 2, "checkpointing": False, "fits": True, "samples_per_s": 3.0,
         "tokens_per_s": 1000.0, "peak_gib": 40.0, "plan_gib": 38.5, "tflop_per_sample": 10.0,
         "mfu": 0.41},
        {"case": "m", "batch": 4, "checkpointing": False, "fits": False},
        {"case": "trainer-m", "batch": 1, "checkpointing": False, "fits": True,
         "samples_per_s": 1.5, "tokens_per_s": 500.0, "peak_gib": 45.0},
        {"case": "trainer-m", "batch": 2, "checkpointing": False, "fits": True,
         "samples_per_s": 2.0, "tokens_per_s": 700.0, "peak_gib": 60.0},
        {"case": "g", "mode": "loop", "batch": 1, "cache": "dynamic", "samples_per_s": 1.0,
         "tokens_per_s": 64.0, "speedup": 1.0},
        {"case": "g", "mode": "batched", "batch": 16, "cache": "static", "samples_per_s": 12.0,
         "tokens_per_s": 768.0, "speedup": 12.0},
    ]  # fmt: skip
    text = suite.table(rows)
    assert "| m | 2 | off | 3.00 | 1000 | 40.0 | 38.5 | 10.00 | 41% | 1.50x |" in text
    assert "| m | 4 | off | does not fit |" in text
    assert "| trainer-m | 2 | off | 2.00 | 700 | 60.0 | - | - | - | - |" in text
    assert "| batched | 16 | static | 12.00 | 768 | 12.0x |" in text


def test_peak_flops_from_the_device_name_or_given(suite, monkeypatch):
    assert suite.peak_flops(torch.device("cpu"), None) is None
    assert suite.peak_flops(torch.device("cpu"), 500.0) == 500e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 PCIe")
    assert suite.peak_flops(torch.device("cuda"), None) == 756e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 80GB HBM3")
    assert suite.peak_flops(torch.device("cuda"), None) == 989e12


def test_refuses_to_run_real_sizes_without_a_gpu(suite, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as err:
        suite.main(["--out", str(tmp_path)])
    assert err.value.code == 2
    assert "--dry-run" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_measures_every_path_at_tiny_size(suite, tmp_path, capsys):
    only = ["llava-7b-lora64", "llava-7b-full", "trainer-mllama-11b-hcf-lora64",
            "generate-llava-7b"]  # fmt: skip
    assert suite.main(["--dry-run", "--out", str(tmp_path), "--warmup", "0", "--only", *only]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    rows = result["rows"]
    assert {r["case"] for r in rows} == set(only)
    train = [r for r in rows if "mode" not in r]
    assert all(r["fits"] and r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 for r in train)
    ours = [r for r in train if not r["case"].startswith("trainer-")]
    # the memory plan's estimate and the counted model FLOPs come with each of our rows
    assert all(r["plan_gib"] > 0 and r["tflop_per_sample"] > 0 for r in ours)
    assert [r["batch"] for r in ours if r["case"] == "llava-7b-lora64"] == [1, 2]
    full = [r for r in ours if r["case"] == "llava-7b-full"]
    assert [(r["batch"], r["checkpointing"]) for r in full] == [(2, True)]  # largest that fits
    trainer = [r for r in train if r["case"].startswith("trainer-")]
    assert [r["batch"] for r in trainer] == [1, 2]
    generation = {(r["mode"], r["cache"]): r for r in rows if "mode" in r}
    assert set(generation) == {("loop", "dynamic"), ("batched", "dynamic"), ("batched", "static")}
    assert all(r["samples_per_s"] > 0 for r in generation.values())
    table = (tmp_path / "table.md").read_text()
    assert capsys.readouterr().out.endswith(table)  # printed last
    assert "| llava-7b-full | 2 | on |" in table and "| loop | 1 | dynamic |" in table
    assert result["environment"]["torch"] == torch.__version__


def test_out_of_memory_becomes_does_not_fit_without_holding_the_error(suite):
    with suite.Fits() as guard:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB\nmore")
    with pytest.raises(suite.DoesNotFit, match=r"Tried to allocate 9\.00 GiB$") as err:
        guard.check()
    # raised outside the block: the out-of-memory error (and the step's frames) is let go
    assert err.value.__context__ is None
    with suite.Fits() as fine:
        pass
    fine.check()  # nothing raised
    with pytest.raises(ValueError), suite.Fits():  # other errors pass through
        raise ValueError("not memory")
