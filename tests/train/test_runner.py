"""The recipe runner: every shipped recipe starts (tiny sizes), stages chain, runs resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from radixpert.train.recipe import load_recipe, shipped_recipes_dir
from radixpert.train.runner import STAGE_RESULT, run_recipe, stage_conversations, stage_dir

# The tiny family standing in for each recipe's real-size model.
TINY = {
    "msa_lora": "tiny-mllama",
    "llava_rad": "tiny-llava",
    "radvlm": "tiny-onevision",
    "radscribe": "tiny-encoder-decoder",
    "demo": "tiny-llava-hcf",
}
DATASETS = (
    "roco_v2",
    "padchest",
    "mimic_cxr",
    "chexpert_plus",
    "ms_cxr",
    "vindr_cxr",
    "padchest_gr",
    "imagenome",
    "phantoms",
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every dataset folder a shipped recipe names, each holding the same 30 phantoms."""
    from radixpert.data.phantoms import generate_phantoms

    root = tmp_path_factory.mktemp("recipe_data")
    generate_phantoms(30, root / "phantoms", size=64)
    for name in DATASETS[:-1]:
        (root / name).mkdir()
        text = (root / "phantoms" / "studies.jsonl").read_text(encoding="utf-8")
        (root / name / "studies.jsonl").write_text(
            text.replace('"path": "images/', '"path": "../phantoms/images/'), encoding="utf-8"
        )
    return root


def _tiny(name: str, data_root: Path, steps: int = 1) -> object:
    path = shipped_recipes_dir() / f"{name}.yaml"
    return load_recipe(path, overrides=_tiny_overrides(name, data_root, steps),
                       data_root=str(data_root))  # fmt: skip


def _tiny_overrides(name: str, data_root: Path, steps: int) -> list[str]:
    """Overrides that turn shipped recipe ``name`` into a tiny run of ``steps`` per stage."""
    path = shipped_recipes_dir() / f"{name}.yaml"
    raw = load_recipe(path, data_root=str(data_root))
    overrides = [f"model.size={TINY[name]}", "model.pretrained=null", "model.parts=null"]
    if raw.model.connector == "hcf" and TINY[name] == "tiny-llava":
        overrides.append("model.size=tiny-llava-hcf")
    if raw.model.hcf is not None and TINY[name] == "tiny-mllama":
        overrides.append("model.hcf.num_heads=4")
    for i, stage in enumerate(raw.stages):
        overrides += [
            f"stages.{i}.epochs=null",
            f"stages.{i}.max_steps={steps}",
            f"stages.{i}.batch_size=2",
            f"stages.{i}.grad_accum=1",
            f"stages.{i}.mixed_precision=no",
            f"stages.{i}.eval_every=null",
            f"stages.{i}.save_every=null",
        ]
        if stage.early_stopping is not None:
            overrides.append(f"stages.{i}.early_stopping=null")
        if stage.objective == "grpo":  # two answers of four tokens per prompt
            overrides += [f"stages.{i}.grpo.group_size=2", f"stages.{i}.grpo.max_new_tokens=4"]
    return overrides


@pytest.mark.slow
def test_same_recipe_same_seed_same_model_in_two_processes(data_root: Path, tmp_path: Path) -> None:
    """Two fresh runs of the demo recipe (random init, HCF, three LoRA stages), each in its own
    process with its own hash seed, give equal losses and weights; another seed does not; a run
    stopped between stages and started again ends as the uninterrupted one."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    def run(out: Path, hash_seed: str, *extra: str) -> tuple[list, dict]:
        cmd = [sys.executable, "-m", "radixpert", "train", "demo", "--data-root", str(data_root),
               "-o", str(out), "--log-with", "none", *_tiny_overrides("demo", data_root, 3),
               *extra]  # fmt: skip
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        losses = [json.loads(p.read_text())["losses"] for p in sorted(out.glob("*/result.json"))]
        bundle = sorted(out.glob("*/bundle"))[-1]
        weights = {}
        for f in sorted(bundle.rglob("*.safetensors")):
            weights.update({f"{f.relative_to(bundle)}:{k}": v for k, v in load_file(f).items()})
        return losses, weights

    losses_a, weights_a = run(tmp_path / "a", "1")
    losses_b, weights_b = run(tmp_path / "b", "2")
    assert len(losses_a) == 7 and all(len(stage) == 3 for stage in losses_a)
    assert losses_a == losses_b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    losses_c, _ = run(tmp_path / "c", "1", "seed=1")
    assert losses_c[0] != losses_a[0]
    # Stopped after two stages, then run again: the later stages start from the saved bundle
    # with the same fresh adapters, so the losses are the uninterrupted run's.
    run(tmp_path / "d", "3", "--stages", "see,foundation")
    losses_d, weights_d = run(tmp_path / "d", "4")
    assert losses_d == losses_a
    assert all(torch.equal(weights_a[k], weights_d[k]) for k in weights_a)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_every_shipped_recipe_starts_at_tiny_size(
    name: str, data_root: Path, tmp_path: Path
) -> None:
    from radixpert.models.bundle import load_bundle, read_manifest

    torch.manual_seed(0)
    recipe = _tiny(name, data_root)
    summary = run_recipe(recipe, tmp_path / "run", log_with=(), progress=False, max_val=4)
    assert list(summary["stages"]) == [s.name for s in recipe.stages]
    for index, stage in enumerate(recipe.stages):
        result = summary["stages"][stage.name]
        assert result["steps"] == 1, stage.name
        assert result["final_loss"] is not None and torch.isfinite(
            torch.tensor(result["final_loss"])
        )
        folder = stage_dir(tmp_path / "run", index, stage)
        assert (folder / STAGE_RESULT).is_file()
        assert read_manifest(folder / "bundle")["family"] == recipe.model.family
    _, processor = load_bundle(summary["final_bundle"])
    assert processor.config.family == recipe.model.family
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["final_bundle"] == summary["final_bundle"]


@pytest.mark.slow
def test_msa_lora_ranks_follow_the_stages(data_root: Path, tmp_path: Path) -> None:
    """Stage k's adapter has the stage's rank; the previous adapter is merged, not lost."""
    recipe = _tiny("msa_lora", data_root, steps=2)
    summary = run_recipe(recipe, tmp_path / "run", log_with=(), progress=False, max_val=4)
    ranks = []
    for index, stage in enumerate(recipe.stages):
        adapter = stage_dir(tmp_path / "run", index, stage) / "bundle" / "adapter"
        ranks.append(json.loads((adapter / "adapter_config.json").read_text())["r"])
    assert ranks == [64, 32, 16]
    assert summary["stages"]["stage3"]["steps"] == 2


@pytest.mark.slow
def test_finished_stages_are_skipped_and_only_runs_named_stages(
    data_root: Path, tmp_path: Path
) -> None:
    recipe = _tiny("llava_rad", data_root)
    out = tmp_path / "run"
    first = run_recipe(recipe, out, only=["contrastive"], log_with=(), progress=False)
    assert list(first["stages"]) == ["contrastive"] and first["final_bundle"].endswith(
        "00-contrastive/bundle"
    )
    with pytest.raises(ValueError, match="must run before"):
        run_recipe(recipe, out, only=["finetune"], log_with=(), progress=False)
    done = stage_dir(out, 0, recipe.stages[0]) / STAGE_RESULT
    stamp = done.stat().st_mtime_ns
    full = run_recipe(recipe, out, log_with=(), progress=False)
    assert done.stat().st_mtime_ns == stamp  # not trained again
    assert list(full["stages"]) == ["contrastive", "alignment", "finetune"]
    again = run_recipe(recipe, out, log_with=(), progress=False)
    assert again["stages"] == full["stages"] or all(
        again["stages"][k]["steps"] == full["stages"][k]["steps"] for k in full["stages"]
    )


def test_stage_conversations_follow_the_prompt_settings(data_root: Path) -> None:
    from radixpert.instruct.conversation import IMAGE_TOKEN

    recipe = load_recipe(shipped_recipes_dir() / "llava_rad.yaml", data_root=str(data_root))
    alignment = stage_conversations(recipe.stage("alignment"))
    assert alignment and all(c.conversations[0]["value"] == IMAGE_TOKEN for c in alignment)
    finetune = stage_conversations(recipe.stage("finetune"))
    assert all(
        c.conversations[0]["value"].startswith(f"{IMAGE_TOKEN}\nIndication:") for c in finetune
    )
    assert all(Path(c.image[0]).is_absolute() and Path(c.image[0]).is_file() for c in finetune)
    held_out = stage_conversations(recipe.stage("finetune"), "validate")
    train_ids = {c.study_id for c in finetune}
    assert held_out and not train_ids & {c.study_id for c in held_out}


def test_missing_source_is_named(data_root: Path, tmp_path: Path) -> None:
    shutil.copytree(data_root / "phantoms", tmp_path / "phantoms")
    recipe = load_recipe(shipped_recipes_dir() / "msa_lora.yaml", data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"roco_v2/studies\.jsonl"):
        run_recipe(recipe, tmp_path / "run", log_with=(), progress=False)


def test_cli_train_reports_a_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from radixpert.cli import main

    code = main(["train", "demo", "stages.foundation.optimizer.lrr=1", "--data-root", "x"])
    assert code == 2
    assert "stages.1.optimizer.lrr: unknown key" in capsys.readouterr().err
    code = main(["train", "nonexistent_recipe", "--dry-run"])
    assert code == 2
    assert "shipped recipes" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_metric_is_computed_on_generated_reports(data_root: Path, tmp_path: Path) -> None:
    recipe = load_recipe(
        shipped_recipes_dir() / "demo.yaml",
        overrides=[
            "model.size=tiny-llava-hcf",
            "stages.see.max_steps=1",
            "stages.foundation.max_steps=2",
            "stages.foundation.eval_every=2",
            "stages.foundation.eval_metric=rouge-l",
            "stages.foundation.data.tasks={report: 1.0}",
        ],
        data_root=str(data_root),
    )
    summary = run_recipe(
        recipe, tmp_path / "run", only=["see", "foundation"], log_with=(), progress=False
    )
    validation = summary["stages"]["foundation"]["validation"]
    assert set(validation) == {"val_loss", "val_rouge-l"}
    assert 0.0 <= validation["val_rouge-l"] <= 1.0
    with pytest.raises(Exception, match="eval_metric"):
        load_recipe(
            shipped_recipes_dir() / "demo.yaml",
            overrides=["stages.see.objective=contrastive", "stages.see.eval_metric=bleu"],
            data_root=str(data_root),
        )
