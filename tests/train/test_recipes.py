"""Training recipes: every shipped YAML validates; errors name the key; overrides; paper values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from radixpert.errors import RecipeError
from radixpert.paths import configs_dir
from radixpert.train.recipe import apply_overrides, describe, load_recipe
from radixpert.vocab import TASKS

RECIPES = configs_dir("recipes")
SHIPPED = sorted(RECIPES.rglob("*.yaml"))
MSA = RECIPES / "msa_lora.yaml"


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _msa_data() -> dict:
    return yaml.safe_load(MSA.read_text(encoding="utf-8"))


def test_the_shipped_recipes_are_found() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"msa_lora", "llava_rad", "radvlm", "radscribe", "demo"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_recipe_loads_and_describes_every_stage(path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(path, data_root=tmp_path)
    assert recipe.name == path.stem
    text = describe(recipe)
    lines = text.splitlines()
    assert len(lines) == 1 + len(recipe.stages)
    for stage, line in zip(recipe.stages, lines[1:], strict=True):
        assert stage.name in line
        for component in ("vision_tower", "connector", "language_model"):
            assert component in line
    for stage in recipe.stages:
        for source in stage.data.sources:
            assert source.studies.startswith(str(tmp_path))
            assert "${" not in source.studies


def test_msa_lora_follows_the_paper(tmp_path: Path) -> None:
    recipe = load_recipe(MSA, data_root=tmp_path)
    lm = [s.trainability.language_model for s in recipe.stages]
    assert [c.mode for c in lm] == ["lora"] * 3
    assert [c.rank for c in lm] == [64, 32, 16]
    assert [c.dropout for c in lm] == [0.1] * 3
    assert [s.lr("language_model") for s in recipe.stages] == [2e-4, 1e-4, 5e-5]
    assert recipe.model.pretrained == "meta-llama/Llama-3.2-11B-Vision-Instruct"
    assert recipe.model.connector == "hcf"
    assert recipe.model.hcf is not None and recipe.model.hcf.levels == 3
    for i, stage in enumerate(recipe.stages):
        assert stage.trainability.connector.mode == "full"
        assert stage.trainability.vision_tower.mode == "frozen"
        assert stage.optimizer.name == "adamw"
        assert stage.optimizer.betas == (0.9, 0.999)
        assert stage.optimizer.weight_decay == 0.01
        assert stage.grad_clip == 1.0
        assert stage.schedule.name == "cosine"
        assert stage.early_stopping is not None and stage.early_stopping.patience == 3
        assert stage.mixed_precision == "bf16"
        sources = [Path(s.studies).parent.name for s in stage.data.sources]
        assert sources == (["roco_v2"] if i == 0 else ["roco_v2", "padchest"])
    specs = recipe.stages[0].component_specs()
    assert specs["language_model"].rank == 64 and specs["language_model"].lora_alpha == 128


def test_other_recipes_follow_their_papers(tmp_path: Path) -> None:
    rad = load_recipe(RECIPES / "llava_rad.yaml", data_root=tmp_path)
    assert [s.objective for s in rad.stages] == ["contrastive", "lm", "lm"]
    assert rad.stages[1].input == "image_only"
    assert rad.stages[1].trainability.connector.mode == "full"
    assert rad.stages[1].trainability.language_model.mode == "frozen"
    assert rad.stages[2].trainability.language_model.mode == "lora"
    assert rad.stages[2].prompt_fields == ("indication",)
    # microsoft/LLaVA-Rad scripts/pretrain.sh and finetune_lora.sh (see the recipe's header)
    assert rad.stages[1].optimizer.lr == 1e-3 and rad.stages[1].epochs == 1
    lora = rad.stages[2].trainability.language_model
    assert (lora.rank, lora.alpha, lora.dropout) == (64, 128.0, 0.05)
    assert rad.stages[2].optimizer.lr == 1e-4 and rad.stages[2].epochs == 3
    # LLaVA-Rad's parts: BiomedCLIP's image encoder (open_clip) and Vicuna-7B v1.5.
    assert dict(rad.model.parts) == {
        "vision": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        "language": "lmsys/vicuna-7b-v1.5",
    }

    vlm = load_recipe(RECIPES / "radvlm.yaml", data_root=tmp_path)
    (stage,) = vlm.stages
    assert set(stage.data.tasks) == set(TASKS)
    assert stage.epochs == 1
    assert vlm.model.pretrained == "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    assert {c.mode for c in stage.trainability.components().values()} == {"full"}
    assert stage.lr("vision_tower") == 2e-6
    assert stage.lr("connector") == stage.lr("language_model") == 1e-5

    scribe = load_recipe(RECIPES / "radscribe.yaml", data_root=tmp_path)
    decoder, end = scribe.stages
    assert decoder.family_stage == "decoder" and decoder.epochs == 3
    assert end.schedule.name == "cosine" and end.schedule.warmup_ratio == 0.1
    assert end.early_stopping is not None
    # Nouvelle-Lune/RadScribe configs/base.yaml: encoder side 5e-5, decoder 1e-4
    assert (end.lr("vision_tower"), end.lr("connector"), end.lr("language_model")) == (
        5e-5,
        5e-5,
        1e-4,
    )
    assert decoder.epochs + end.epochs == 20

    demo = load_recipe(RECIPES / "demo.yaml", data_root=tmp_path)
    assert demo.model.size == "demo-llava-hcf" and demo.model.connector == "hcf"
    assert [s.name for s in demo.stages][:3] == ["see", "foundation", "alignment"]
    assert set(demo.stages[0].data.tasks) == {"classification"}
    assert [s.trainability.language_model.rank for s in demo.stages[3:6]] == [64, 32, 16]
    assert [s.optimizer.lr for s in demo.stages[3:6]] == [2e-4, 1e-4, 5e-5]
    rl = demo.stages[6]  # the reinforcement stage after the curriculum
    assert rl.objective == "grpo" and rl.grpo is not None and rl.grpo.group_size == 8
    assert set(rl.grpo.rewards) == {"findings-f1", "box-iou", "format"}
    assert all(s.max_steps is not None for s in demo.stages)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d["stages"][1]["optimizer"].update(momentum=0.9), "stages.1.optimizer.momentum"),
        (lambda d: d.update(sead=1), "sead"),
        (lambda d: d["model"]["hcf"].update(levles=2), "model.hcf.levles"),
        (lambda d: d["stages"][0].update(batch_size="four"), "stages.0.batch_size"),
        (lambda d: d["stages"][2]["optimizer"].update(lr="fast"), "stages.2.optimizer.lr"),
        (lambda d: d["stages"][0].update(epochs=True), "stages.0.epochs"),
        (lambda d: d["stages"][0]["optimizer"].update(betas=[0.9]), "stages.0.optimizer.betas"),
        (lambda d: d["stages"][0]["schedule"].update(name="step"), "stages.0.schedule.name"),
        (lambda d: d["stages"][0].update(mixed_precision="fp8"), "stages.0.mixed_precision"),
        (
            lambda d: d["stages"][1]["trainability"]["language_model"].update(mode="qlora"),
            "stages.1.trainability.language_model.mode",
        ),
        (lambda d: d["stages"][0]["data"]["tasks"].update(vqa=1.0), "stages.0.data"),
        (lambda d: d["stages"][0].pop("data"), "stages.0.data"),
        (lambda d: d["model"].update(size="llama99"), "model"),
        (lambda d: d["stages"][0].update(max_steps=10), "stages.0"),
    ],
)
def test_invalid_values_name_the_file_and_key(tmp_path: Path, edit, key: str) -> None:
    data = _msa_data()
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, data_root=tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert f": {key}" in message


def test_data_root_is_required_and_paths_relative(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"stages\.0\.data\.sources\.0\.studies.*data_root"):
        load_recipe(MSA)
    recipe = load_recipe(MSA, overrides=[f"data_root={tmp_path}"])
    assert recipe.data_root == str(tmp_path)
    assert recipe.stages[0].data.sources[0].studies == f"{tmp_path}/roco_v2/studies.jsonl"
    data = _msa_data()
    data["stages"][0]["data"]["sources"][0]["studies"] = "/home/someone/roco.jsonl"
    with pytest.raises(RecipeError, match="absolute path"):
        load_recipe(_write(tmp_path, data), data_root=tmp_path)
    data["stages"][0]["data"]["sources"][0]["studies"] = "${home}/roco.jsonl"
    with pytest.raises(RecipeError, match="unknown variable"):
        load_recipe(_write(tmp_path, data), data_root=tmp_path)


def test_overrides_by_index_and_by_stage_name(tmp_path: Path) -> None:
    recipe = load_recipe(
        MSA,
        overrides=[
            "stages.0.optimizer.lr=3e-4",
            "stages.stage2.trainability.language_model.rank=8",
            "stages.stage3.max_steps=5",
            "stages.stage3.epochs=null",
            "stages.-1.batch_size=2",
            "stages.0.optimizer.betas=[0.9, 0.95]",
            "stages.stage1.early_stopping.metric=bleu",
            "seed=7",
        ],
        data_root=tmp_path,
    )
    assert recipe.stages[0].optimizer.lr == 3e-4
    assert recipe.stages[0].optimizer.betas == (0.9, 0.95)
    assert recipe.stages[0].early_stopping.metric == "bleu"
    assert recipe.stages[1].trainability.language_model.rank == 8
    assert recipe.stages[2].max_steps == 5 and recipe.stages[2].epochs is None
    assert recipe.stages[2].batch_size == 2
    assert recipe.seed == 7


def test_override_creates_a_missing_mapping() -> None:
    data = {"stages": [{"name": "a"}]}
    apply_overrides(data, ["stages.a.early_stopping.patience=5"])
    assert data["stages"][0]["early_stopping"] == {"patience": 5}


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("stages.0.optimizer.lr", "dotted.key=value"),
        ("stages..lr=1", "dotted.key=value"),
        ("stages.9.batch_size=2", "out of range"),
        ("stages.stage9.batch_size=2", "no item named 'stage9'"),
        ("stages.0.optimizer.lr=fast", r"stages\.0\.optimizer\.lr"),
        ("stages.0.optimiser.lr=1e-4", r"stages\.0\.optimiser"),
        ("stages.stage1.schedule.name=step", r"stages\.0\.schedule\.name"),
        ("seed.value=1", "cannot index"),
        ("stages.0.batch_size=__import__('os')", r"stages\.0\.batch_size"),
    ],
)
def test_bad_overrides_are_errors(tmp_path: Path, override: str, match: str) -> None:
    with pytest.raises(RecipeError, match=match) as info:
        load_recipe(MSA, overrides=[override], data_root=tmp_path)
    assert str(MSA) in str(info.value)


def test_recipe_objects_are_frozen(tmp_path: Path) -> None:
    recipe = load_recipe(MSA, data_root=tmp_path)
    with pytest.raises(AttributeError):
        recipe.seed = 1  # type: ignore[misc]
    assert recipe.stage("stage2") is recipe.stages[1]
    with pytest.raises(KeyError):
        recipe.stage("nope")


def test_unreadable_files_are_recipe_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"missing\.yaml: no such recipe file; shipped recipes"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(bad)
