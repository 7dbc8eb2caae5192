"""``radixpert demo`` end to end at a toy size: every step runs, writes, and is skipped again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def image_name(record: dict) -> str:
    """The image file a study record points at."""
    return Path(record["images"][0]["path"]).name


QUICK = [
    "stages.see.max_steps=2",
    "stages.foundation.max_steps=3",
    "stages.alignment.max_steps=1",
    "stages.msa1.max_steps=1",
    "stages.msa2.max_steps=1",
    "stages.msa3.max_steps=1",
    "stages.rl.max_steps=1",
    "stages.rl.grpo.group_size=2",
    "stages.rl.grpo.max_new_tokens=4",
    "stages.foundation.eval_every=3",
]


@pytest.mark.slow
def test_demo_runs_every_step_and_resumes(tmp_path: Path) -> None:
    from radixpert.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--phantoms", "40", *QUICK]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for who in ("model", "control"):
        for key in ("findings_f1", "grounding_map50", "laterality_acc", "bleu-4", "rouge-l"):
            assert key in summary[who], (who, key)
        f1 = summary[who]["findings_f1"]
        assert f1 is None or 0.0 <= f1 <= 1.0
    assert summary["phantoms"] == 40 and summary["train_seconds"] > 0
    assert summary["train_steps"] == 2 + 3 + 1 + 1 + 1 + 1 + 1
    page = (out / "index.html").read_text()
    assert "radixpert demo" in page and "data:image/png;base64," in page
    assert "<polyline" in page  # the training curves
    assert "Reinforcement stage: rewards" in page and 'data-finding="Pneumothorax"' in page
    for name in ("model", "control"):
        predictions = json.loads((out / "predictions" / f"{name}.json").read_text())
        assert len(predictions["reports"]) == summary["test_studies"]
    control = (out / "control" / "data" / "phantoms" / "studies.jsonl").read_text().splitlines()
    original = (out / "data" / "phantoms" / "studies.jsonl").read_text().splitlines()
    # The control's training studies have each other's images (the same files, permuted);
    # its held-out studies keep their own, so both models are scored on the same pairs.
    pairs = [(json.loads(a), json.loads(b)) for a, b in zip(control, original)]
    train = [(image_name(c), image_name(o)) for c, o in pairs if o["split"] == "train"]
    held_out = [(image_name(c), image_name(o)) for c, o in pairs if o["split"] != "train"]
    assert sorted(c for c, _ in train) == sorted(o for _, o in train)
    assert sum(c != o for c, o in train) > len(train) // 2
    assert all(c == o for c, o in held_out)
    for record, _ in pairs:  # every rewritten path still points at the real image
        assert (out / "control" / "data" / "phantoms" / record["images"][0]["path"]).is_file()

    # A second run trains and generates nothing again.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    stamps[out / "predictions" / "model.json"] = (
        (out / "predictions" / "model.json").stat().st_mtime_ns
    )
    assert main(["demo", "--out", str(out), "--phantoms", "40", *QUICK]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert json.loads((out / "summary.json").read_text())["model"] == summary["model"]

    # Other settings in the same folder are refused, not mixed with the stale steps.
    assert main(["demo", "--out", str(out), "--phantoms", "50", *QUICK]) == 2
