"""The plan of a run: exact state bytes, sharding, activations, and `radixpert train --dry-run`."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml

from radixpert.cli import main
from radixpert.errors import UsageError
from radixpert.models.families import components_of
from radixpert.models.info import _tiny
from radixpert.models.llava import TINY_IMAGE_TOKEN
from radixpert.models.trainability import apply_trainability
from radixpert.train import plan as planning
from radixpert.train.loop import build_optimizer
from radixpert.train.recipe import (
    ComponentTraining,
    DataMixture,
    DataSource,
    Stage,
    Trainability,
    load_recipe,
)
from radixpert.train.runner import stage_conversations

MIXED = Trainability(
    vision_tower=ComponentTraining("frozen"),
    connector=ComponentTraining("full"),
    language_model=ComponentTraining("lora", rank=4),
)


def _stage(**options) -> Stage:
    data = DataMixture(sources=(DataSource("unused.jsonl"),))
    return Stage(name="s", data=data, trainability=MIXED, max_steps=1, **options)


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_weights_gradients_and_adamw_state_are_exact_to_the_byte() -> None:
    """Frozen bf16 vision tower, full fp32 connector, fp32 LoRA on a bf16 language model: the
    estimate equals what one backward and one AdamW step of the loop's optimiser allocate."""
    torch.manual_seed(0)
    stage = _stage(batch_size=2, mixed_precision="bf16")
    model = _tiny("tiny-llava-hcf").to(torch.bfloat16)  # the model holds its weights in bf16
    prefixes = components_of(model)
    model = apply_trainability(model, stage.component_specs(), prefixes)
    estimate = planning.estimate_memory(
        model, stage, gpus=1, strategy="ddp", seq_len=8, images_per_sample=1
    )
    for p in model.parameters():  # the precision policy: what trains is kept in fp32
        if p.requires_grad:
            p.data = p.data.float()
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}

    n_image = model.config.image_seq_length
    ids = torch.randint(3, 60, (2, 8 + n_image))
    ids[:, 1 : 1 + n_image] = TINY_IMAGE_TOKEN
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(
            input_ids=ids,
            pixel_values=torch.randn(2, 3, 32, 32),
            labels=ids,
            prompt_mask=torch.zeros_like(ids, dtype=torch.bool),  # the HCF's prompt
        )
    out.loss.backward()
    optimizer = build_optimizer(model, stage, prefixes)
    optimizer.step()

    params = list(model.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    assert len(grads) == sum(p.requires_grad for p in params) > 0
    assert estimate.weights == _tensor_bytes(params)
    assert estimate.gradients == _tensor_bytes(grads)
    assert estimate.optimizer == _tensor_bytes(state)
    assert estimate.buffers == _tensor_bytes(model.buffers())
    assert estimate.communication == 0  # one process: accelerate wraps no DDP


def test_sharding_divides_what_each_strategy_shards() -> None:
    stage = _stage(batch_size=1)
    tiny = _tiny("tiny-llava-hcf")
    model = apply_trainability(tiny, stage.component_specs(), components_of(tiny))
    one = planning.estimate_memory(
        model, stage, gpus=1, strategy="ddp", seq_len=16, images_per_sample=1
    )
    est = {
        s: planning.estimate_memory(
            model, stage, gpus=3, strategy=s, seq_len=16, images_per_sample=1
        )
        for s in planning.STRATEGIES
    }
    third = lambda n: -(-n // 3)  # noqa: E731
    assert (est["ddp"].weights, est["ddp"].gradients, est["ddp"].optimizer) == (
        one.weights,
        one.gradients,
        one.optimizer,
    )
    assert est["ddp"].communication == one.gradients  # DDP's buckets: a copy of the grads
    assert est["zero2"].weights == one.weights
    assert (est["zero2"].gradients, est["zero2"].optimizer) == (
        third(one.gradients),
        third(one.optimizer),
    )
    for s in ("fsdp", "zero3"):
        assert est[s].weights == third(one.weights)
        assert est[s].gradients == third(one.gradients)
        assert est[s].optimizer == third(one.optimizer)
        # one layer (or the unwrapped remainder) gathered in full, its gradients reduced
        assert one.weights / 3 > est[s].communication - est["zero2"].communication > 0
    assert {e.activations for e in est.values()} == {one.activations}
    assert {e.buffers for e in est.values()} == {one.buffers}
    assert est["zero3"].peak < est["zero2"].peak < est["ddp"].peak
    with pytest.raises(UsageError, match="--strategy"):
        planning.estimate_memory(
            model, stage, gpus=1, strategy="zero1", seq_len=1, images_per_sample=1
        )


def test_activations_follow_korthikanti() -> None:
    """s*b*h*(34 + 5*a*s/h) per layer at 16-bit; 2*s*b*h per layer plus one recomputed layer
    with full checkpointing; fp32 doubles it; SDPA drops the attention-matrix term."""
    s, b, h, a, layers = 10, 3, 32, 4, 2
    eager = planning._Stack(layers, h, a, s, b, quadratic=True)
    sdpa = planning._Stack(layers, h, a, s, b, quadratic=False)
    per_layer = s * b * h * 34 + 5 * a * s * s * b  # 32640 + 6000
    assert planning._korthikanti(eager, 2) == (2 * per_layer, 2 * s * b * h * layers + per_layer)
    assert planning._korthikanti(sdpa, 2) == (65280, 3840 + 32640)
    assert planning._korthikanti(sdpa, 4) == (2 * 65280, 2 * (3840 + 32640))

    tiny = _tiny("tiny-llava")
    model = apply_trainability(tiny, _stage().component_specs(), components_of(tiny))
    short, long = (
        planning.estimate_memory(
            model, _stage(gradient_checkpointing=True), gpus=1, strategy="ddp",
            seq_len=n, images_per_sample=1,
        )
        for n in (16, 64)
    )  # fmt: skip
    assert long.activations > short.activations > short.activations_checkpointed
    assert short.peak == short.peak_with(True) < short.peak_with(False)

    # A trained vision tower keeps its activations: CLIP's 4 layers, 16 patches + CLS, width 32.
    tiny = _tiny("tiny-llava")
    full = dataclasses.replace(MIXED, vision_tower=ComponentTraining("full"))
    stage = dataclasses.replace(_stage(), trainability=full)
    model = apply_trainability(tiny, stage.component_specs(), components_of(tiny))
    trained = planning.estimate_memory(
        model, stage, gpus=1, strategy="ddp", seq_len=16, images_per_sample=1
    )
    vision = planning._Stack(4, 32, 2, 17, 1, quadratic=False)
    assert trained.activations - short.activations == planning._korthikanti(vision, 4)[0]


def test_image_tokens_are_read_from_the_config() -> None:
    assert planning.image_tokens_per_image(_tiny("tiny-llava")) == 16
    assert planning.image_tokens_per_image(_tiny("tiny-mllama")) == 0  # cross-attention
    onevision = _tiny("tiny-onevision")
    from radixpert.models.onevision import image_token_count

    pixels = torch.zeros(1, 2, 3, 32, 32)
    (count,) = image_token_count(onevision, pixels, torch.tensor([[32, 32]]))
    assert planning.image_tokens_per_image(onevision) == count


def test_memory_sizes_parse_and_print() -> None:
    assert planning.parse_memory("80GB") == 80 * 10**9
    assert planning.parse_memory("80GiB") == 80 * 2**30
    assert planning.parse_memory("141GB") == 141 * 10**9
    assert planning.parse_memory("1MB") == 10**6
    assert planning.parse_memory("0.5 GiB") == 2**29
    with pytest.raises(UsageError, match="--gpu-memory: '80 bananas'"):
        planning.parse_memory("80 bananas")
    assert planning.human_bytes(3 * 2**30) == "3.00 GiB"
    assert planning.human_bytes(512) == "512 B"
    assert planning.strategy_from_env({"ACCELERATE_USE_FSDP": "true"}) == "fsdp"
    zero3 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
    assert planning.strategy_from_env(zero3) == "zero3"
    assert planning.strategy_from_env({}) == "ddp"


# --------------------------------------------------------------------------------------------
# Recipes and the CLI
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from radixpert.data.phantoms import generate_phantoms

    root = tmp_path_factory.mktemp("plan_data")
    generate_phantoms(8, root / "phantoms", size=64)
    return root


def _component(mode: str, rank: int | None = None) -> dict:
    return {"mode": mode} if rank is None else {"mode": mode, "rank": rank}


def _recipe(tmp_path: Path, source: str = "${data}/phantoms/studies.jsonl") -> Path:
    """A tiny two-stage MSA-LoRA recipe: LoRA rank 8, then rank 4 on the merged weights."""

    def stage(name: str, rank: int, **length) -> dict:
        return {
            "name": name,
            "data": {"sources": [{"studies": source}], "tasks": {"report": 1.0}},
            "trainability": {
                "vision_tower": _component("frozen"),
                "connector": _component("full"),
                "language_model": _component("lora", rank),
            },
            "batch_size": 2,
            **length,
        }

    data = {
        "name": "tiny_plan",
        "version": 1,
        "model": {"family": "llava", "size": "tiny-llava-hcf", "connector": "hcf"},
        "stages": [stage("first", 8, epochs=1), stage("second", 4, max_steps=3)],
    }
    path = tmp_path / "tiny_plan.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _tiny_factory(spec) -> torch.nn.Module:
    return _tiny(spec.size)


def test_plan_chains_lora_stages_and_counts_steps(data_root: Path, tmp_path: Path) -> None:
    recipe = load_recipe(_recipe(tmp_path), data_root=str(data_root))
    plan = planning.plan_recipe(recipe, gpus=2, model_factory=_tiny_factory)
    first, second = plan.stages
    rows = [{r["component"]: r for r in s.parameters} for s in plan.stages]
    lora8, lora4 = (r["language_model"]["trainable"] for r in rows)
    assert lora8 == 2 * lora4 > 0  # a fresh adapter of half the rank
    lm_total = [r["language_model"]["total"] for r in rows]
    assert lm_total[1] == lm_total[0] - lora8 + lora4  # rank 8 merged, rank 4 added
    assert rows[0]["vision_tower"]["trainable"] == 0
    assert rows[0]["connector"]["trainable"] == rows[0]["connector"]["total"] > 0

    n = len(stage_conversations(recipe.stages[0], seed=recipe.seed))
    assert first.conversations == n
    assert first.steps == math.ceil(n / (2 * 2))  # one epoch, global batch 2 x 2 GPUs
    assert second.steps == 3
    assert first.image_tokens == 16 and first.images_per_sample == 1
    assert first.tokens_per_step == pytest.approx(first.mean_tokens * 2 * 2)
    assert plan.peak == max(s.memory["ddp"].peak for s in plan.stages)
    assert not plan.missing


def test_dry_run_prints_the_plan(data_root: Path, tmp_path: Path, capsys) -> None:
    path = _recipe(tmp_path)
    code = main(["train", str(path), "--data-root", str(data_root), "--dry-run",
                 "--gpus", "2", "--gpu-memory", "80GB", "--strategy", "zero3"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "plan of tiny_plan v1: 2 GPU, strategy zero3, card 74.51 GiB (80.0 GB)" in out
    assert "stage 1/2 first" in out and "stage 2/2 second" in out
    for word in ("vision_tower", "connector", "language_model", "AdamW state", "zero3*"):
        assert word in out
    assert "activations (ckpt)" in out and "tokens per step" in out
    assert "peak per GPU (zero3)" in out and "- fits" in out


def test_dry_run_names_a_missing_data_file(data_root: Path, tmp_path: Path, capsys) -> None:
    path = _recipe(tmp_path, source="${data}/nowhere/studies.jsonl")
    code = main(["train", str(path), "--data-root", str(data_root), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 2
    missing = data_root / "nowhere" / "studies.jsonl"
    assert f"stage first: studies file {missing} does not exist" in captured.err
    assert f"stage second: studies file {missing} does not exist" in captured.err
    assert "assumed: data missing" in captured.out  # the plan still prints, assumption named


def test_a_launch_that_exceeds_the_card_is_refused_before_training(
    data_root: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import radixpert.train.runner as runner

    calls: list = []

    def fake_run(recipe, out, **kwargs) -> dict:
        calls.append(recipe.name)
        return {"stages": {}, "final_bundle": str(out)}

    monkeypatch.setattr(runner, "run_recipe", fake_run)
    path = _recipe(tmp_path)
    args = ["train", str(path), "--data-root", str(data_root), "-o", str(tmp_path / "run"),
            "--gpu-memory", "1MB", "--log-with", "none"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("radixpert train: error: stage ")
    assert "but the card has 976.56 KiB" in err
    for knob in ("batch_size", "gradient_checkpointing", "ZeRO", "FSDP", "QLoRA", "--gpus"):
        assert knob in err
    assert "--force" in err
    assert calls == []  # refused before the runner was called

    assert main([*args, "--force"]) == 0
    assert calls == ["tiny_plan"]
    assert main([*args[:-4], "--gpu-memory", "80GB", "--log-with", "none"]) == 0  # fits
    assert calls == ["tiny_plan"] * 2


@pytest.fixture(scope="module")
def recipe_data(data_root: Path) -> Path:
    """Every dataset folder a shipped recipe names, each holding the same phantoms."""
    from tests.train.test_runner import DATASETS

    text = (data_root / "phantoms" / "studies.jsonl").read_text(encoding="utf-8")
    for name in DATASETS[:-1]:
        (data_root / name).mkdir(exist_ok=True)
        (data_root / name / "studies.jsonl").write_text(
            text.replace('"path": "images/', '"path": "../phantoms/images/'), encoding="utf-8"
        )
    return data_root


@pytest.mark.parametrize("name", ["msa_lora", "llava_rad", "radvlm", "radscribe", "demo"])
def test_every_shipped_recipe_plans_at_a_tiny_size(name: str, recipe_data: Path) -> None:
    """Each family's stacks, widths and image tokens are read from its config."""
    from radixpert.train.recipe import shipped_recipes_dir
    from tests.train.test_runner import _tiny_overrides

    overrides = _tiny_overrides(name, recipe_data, 1)
    recipe = load_recipe(shipped_recipes_dir() / f"{name}.yaml", overrides, str(recipe_data))
    plan = planning.plan_recipe(
        recipe, gpus=2, gpu_memory=10**12, strategy="zero2", model_factory=_tiny_factory
    )
    assert len(plan.stages) == len(recipe.stages) and not plan.missing
    for sp in plan.stages:
        est = sp.memory["zero2"]
        assert est.weights > 0 and est.activations > est.activations_checkpointed > 0
        trainable = sum(r["trainable"] for r in sp.parameters if r["component"] != "all")
        assert sp.parameters[-1]["trainable"] == trainable > 0
        assert est.gradients == -(-trainable * 4 // 2)
    planning.check_fits(plan)  # 1 TB holds a tiny model
    assert "peak per GPU (zero2)" in planning.format_plan(plan)
