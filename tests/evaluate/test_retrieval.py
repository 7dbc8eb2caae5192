"""Image <-> report retrieval: Recall@K and ranks against a brute-force count (ties, identical
reports, K beyond the gallery, non-square matrices), and end to end on a tiny llava whose
contrastive head was trained on phantoms (above chance; an untrained one at chance), a bundle
found through its training checkpoint, and a tiny BiomedCLIP-layout open_clip model."""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from radixpert.errors import InputError
from radixpert.leaderboard.retrieval import (
    HEAD_FILE,
    Embeddings,
    main,
    recall_at_k,
    retrieval_scores,
    score_embeddings,
)

# ---------------------------------------------------------------- brute force


def _brute(sim: np.ndarray, mask: np.ndarray, ties: str) -> np.ndarray:
    """Rank of the first correct item when the gallery is sorted by score, a wrong item of
    equal score before (pessimistic) or after (optimistic) a correct one."""
    ranks = []
    for row, pos in zip(sim, mask, strict=True):
        wrong_first = ties == "pessimistic"
        order = sorted(range(len(row)), key=lambda j: (-row[j], bool(pos[j]) == wrong_first))
        wrong_seen = 0
        for j in order:
            if pos[j]:
                break
            wrong_seen += 1
        ranks.append(wrong_seen + 1)
    return np.array(ranks)


def _brute_chance(g: int, m: int, k: int) -> float:
    """Share of the k-subsets of g positions that hold one of the m correct items."""
    sets = list(combinations(range(g), min(k, g)))
    return sum(any(i < m for i in s) for s in sets) / len(sets)


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("shape", [(7, 7), (5, 9), (9, 4)])
def test_recall_matches_brute_force_with_many_ties(ties: str, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        sim = rng.integers(0, 3, size=shape).astype(float)  # three values: ties everywhere
        if trial % 2:
            mask = rng.random(shape) < 0.3
            mask[np.arange(shape[0]), rng.integers(0, shape[1], shape[0])] = True
            positives: Any = mask
        else:
            positives = rng.integers(0, shape[1], shape[0])
            mask = np.zeros(shape, dtype=bool)
            mask[np.arange(shape[0]), positives] = True
        ks = (1, 2, 3, 20)
        got = recall_at_k(sim, ks, positives=positives, ties=ties)
        want = _brute(sim, mask, ties)
        np.testing.assert_array_equal(got["ranks"], want)
        for k in ks:
            np.testing.assert_array_equal(got["hits"][k], (want <= k).astype(float))
            assert got["recall"][k] == pytest.approx(np.mean(want <= k))
        assert got["median_rank"] == np.median(want) and got["mean_rank"] == want.mean()
        assert got["gallery_size"] == shape[1] and got["trivial_k"] == [20]


def test_hand_made_ranks_ties_and_the_diagonal() -> None:
    sim = np.array(
        [
            [0.9, 0.1, 0.9, 0.0],  # its own item ties with item 2
            [0.2, 0.8, 0.1, 0.3],  # first
            [0.3, 0.3, 0.1, 0.2],  # three wrong items above it
            [0.5, 0.5, 0.5, 0.5],  # all equal
        ]
    )
    pess = recall_at_k(sim, (1, 2, 5))
    assert pess["ranks"].tolist() == [2, 1, 4, 4]
    assert pess["recall"] == {1: 0.25, 2: 0.5, 5: 1.0}
    opt = recall_at_k(sim, (1, 2), ties="optimistic")
    assert opt["ranks"].tolist() == [1, 1, 4, 1]
    # An encoder that maps everything to one point ranks last under the default rule.
    collapsed = recall_at_k(np.ones((6, 6)), (1, 5))
    assert collapsed["ranks"].tolist() == [6] * 6 and collapsed["recall"][1] == 0.0


def test_k_beyond_the_gallery_is_a_hit_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    sim = np.eye(3)[::-1]  # every own item ranked last
    result = recall_at_k(sim, (1, 3, 10))
    assert result["ranks"].tolist() == [3, 1, 3]
    assert result["recall"][10] == 1.0 and result["recall"][3] == 1.0
    assert result["trivial_k"] == [3, 10] and result["chance"][10] == 1.0
    assert "recall is 1 by construction" in caplog.text


def test_chance_is_that_of_a_random_ranking() -> None:
    for g, m, k in [(10, 1, 1), (10, 1, 5), (7, 3, 2), (6, 2, 4), (5, 5, 1)]:
        mask = np.zeros((1, g), dtype=bool)
        mask[0, :m] = True
        got = recall_at_k(np.zeros((1, g)), (k,), positives=mask)["chance"][k]
        assert got == pytest.approx(_brute_chance(g, m, k)), (g, m, k)
    assert recall_at_k(np.eye(20), (1, 5))["chance"] == pytest.approx({1: 0.05, 5: 0.25})


def test_bad_inputs_fail_loudly() -> None:
    with pytest.raises(ValueError, match="not square"):
        recall_at_k(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="no correct gallery item"):
        recall_at_k(np.zeros((2, 3)), positives=np.array([[True, False, False], [False] * 3]))
    with pytest.raises(ValueError, match="outside the gallery"):
        recall_at_k(np.zeros((2, 3)), positives=np.array([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="integers >= 1"):
        recall_at_k(np.eye(2), (0, 1))
    with pytest.raises(ValueError, match="ties"):
        recall_at_k(np.eye(2), ties="random")


# ---------------------------------------------------------------- identical reports


def _duplicate_embeddings() -> Embeddings:
    """Four studies; 0 and 1 have the same report text (one distinct text row)."""
    texts = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # distinct texts A, B, C
    images = np.array([[1.0, 0.0], [0.9, 0.1], [0.1, 0.9], [-1.0, 0.05]])
    images = images / np.linalg.norm(images, axis=1, keepdims=True)
    return Embeddings(images, texts, np.array([0, 0, 1, 2]), kept=[0, 1, 2, 3])


def test_exact_text_counts_an_identical_report_and_none_does_not() -> None:
    emb = _duplicate_embeddings()
    exact = score_embeddings(emb, (1, 2), duplicates="exact-text", bootstrap=0)
    i2t, t2i = exact["image_to_report"], exact["report_to_image"]
    assert i2t["gallery_size"] == 3  # the distinct texts, as CXR-CLIP's evaluator
    assert i2t["per_sample"]["rank"] == [1, 1, 1, 1]
    assert t2i["gallery_size"] == 4
    assert t2i["per_sample"]["rank"] == [1, 1, 1, 1]  # either image of text A is right
    assert i2t["recall@1"]["chance"] == pytest.approx(1 / 3)
    assert t2i["recall@1"]["chance"] == pytest.approx((2 / 4 + 2 / 4 + 1 / 4 + 1 / 4) / 4)

    strict = score_embeddings(emb, (1, 2), duplicates="none", bootstrap=0)
    i2t, t2i = strict["image_to_report"], strict["report_to_image"]
    assert i2t["gallery_size"] == 4
    # Study 0's and 1's reports are one text: each ties with the other, pessimistically above.
    assert i2t["per_sample"]["rank"] == [2, 2, 1, 1]
    assert t2i["per_sample"]["rank"] == [1, 2, 1, 1]  # report A finds image 0 first
    assert i2t["recall@1"]["value"] == 0.5 and i2t["recall@2"]["value"] == 1.0
    with pytest.raises(ValueError, match="duplicates"):
        score_embeddings(emb, duplicates="fuzzy")


def test_bootstrap_interval_resamples_queries() -> None:
    rng = np.random.default_rng(1)
    images = rng.normal(size=(40, 8))
    texts = images + rng.normal(scale=1.5, size=(40, 8))
    norm = np.linalg.norm
    emb = Embeddings(
        images / norm(images, axis=1, keepdims=True),
        texts / norm(texts, axis=1, keepdims=True),
        np.arange(40),
        list(range(40)),
    )
    a = score_embeddings(emb, (1, 5), bootstrap=200, seed=3)
    b = score_embeddings(emb, (1, 5), bootstrap=200, seed=3)
    assert a == b
    r1 = a["image_to_report"]["recall@1"]
    assert 0 < r1["value"] < 1
    assert r1["ci"]["low"] <= r1["value"] <= r1["ci"]["high"]
    assert r1["ci"]["method"] == "bootstrap-percentile"
    hits = a["image_to_report"]["per_sample"]["hit@1"]
    assert len(hits) == 40 and np.mean(hits) == r1["value"]
    ci = a["report_to_image"]["mean_rank"]["ci"]
    assert ci["low"] <= a["report_to_image"]["mean_rank"]["value"] <= ci["high"]


# ---------------------------------------------------------------- end to end, tiny llava


def _fit_bundle(root: Path, steps: int, with_head_file: bool = True) -> tuple[Path, Path, Any]:
    """Phantom studies and a tiny llava bundle whose tower and contrastive head were trained
    ``steps`` AdamW steps on the train split's pairs; returns (bundle, studies, head)."""
    import torch
    from safetensors.torch import save_file

    from radixpert.data.phantoms import generate_phantoms
    from radixpert.models.bundle import save_bundle
    from radixpert.models.llava import tiny_llava
    from radixpert.models.processor import RadProcessor
    from radixpert.models.tokenizers import train_bpe
    from radixpert.train.contrastive import ContrastiveHead, contrastive_batch, contrastive_loss

    torch.manual_seed(0)
    torch.set_num_threads(2)
    studies = generate_phantoms(12, root / "ph", size=64)
    train = [s for s in studies if s.split == "train"]
    reports = [s.findings for s in studies]
    tokenizer = train_bpe(reports * 10, 63, ["<pad>", "<s>", "</s>", "<unk>"], ["<image>"])
    model = tiny_llava("mlp")
    processor = RadProcessor.from_model(model, tokenizer)
    head = ContrastiveHead.for_model(model, embed_dim=32)
    if steps:
        images = [root / "ph" / s.images[0].path for s in train]
        batch = contrastive_batch(processor, images, [s.findings for s in train], max_length=64)
        params = [*model.model.vision_tower.parameters(), *head.parameters()]
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        model.train()
        for _ in range(steps):
            loss = contrastive_loss(model, head, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    bundle = save_bundle(model, processor, root / "bundle")
    if with_head_file:
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, bundle / HEAD_FILE)
    return bundle, root / "ph" / "studies.jsonl", head


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    return _fit_bundle(tmp_path_factory.mktemp("retrieval_fitted"), steps=40)


def test_a_fitted_head_retrieves_above_chance_and_main_writes_json(
    fitted: tuple[Path, Path, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bundle, studies, _ = fitted
    out = tmp_path / "retrieval.json"
    assert (
        main(
            str(bundle),
            str(studies),
            split="train",
            out=str(out),
            bootstrap=100,
            device="cpu",
            batch_size=4,
            quiet=True,
        )
        == 0
    )
    results = json.loads(out.read_text())
    assert "image_to_report" in capsys.readouterr().out
    n = results["data"]["pairs"]
    assert n >= 8 and results["data"]["skipped"]["other_split"] == 12 - n
    assert results["model"]["kind"] == "bundle" and results["model"]["head"].endswith(HEAD_FILE)
    assert results["settings"]["duplicates"] == "exact-text"
    assert results["settings"]["ties"] == "pessimistic" and results["version"] == 1
    assert len(results["ids"]) == n
    for direction in ("image_to_report", "report_to_image"):
        r = results[direction]
        assert r["gallery_size"] == n
        assert r["recall@1"]["chance"] == pytest.approx(1 / n)
        # Trained on these pairs: well above the 1/n of a random ranking.
        assert r["recall@1"]["value"] >= 0.5, (direction, r["recall@1"])
        assert r["recall@1"]["value"] <= r["recall@5"]["value"] <= r["recall@10"]["value"]
        assert len(r["per_sample"]["hit@1"]) == n and len(r["per_sample"]["rank"]) == n
        assert r["mean_rank"]["value"] < (n + 1) / 2


def test_an_untrained_head_is_at_chance(tmp_path: Path) -> None:
    bundle, studies, _ = _fit_bundle(tmp_path, steps=0)
    results = retrieval_scores(bundle, studies, split="train", device="cpu", bootstrap=0)
    n = results["data"]["pairs"]
    for direction in ("image_to_report", "report_to_image"):
        # A random projection ranks like chance (mean rank (n + 1) / 2, give or take).
        assert results[direction]["recall@1"]["value"] <= 3 / n
        assert abs(results[direction]["mean_rank"]["value"] - (n + 1) / 2) < n / 3


def test_a_bundle_without_its_head_is_refused_and_found_in_its_checkpoint(
    fitted: tuple[Path, Path, Any], tmp_path: Path
) -> None:
    """The language-model head's projections are learned: without them there is no encoder.
    A run's bundle finds them in the stage's last checkpoint (accelerate's model_1)."""
    import shutil

    from safetensors.torch import save_file

    bundle, studies, head = fitted
    stage = tmp_path / "00-contrastive"
    shutil.copytree(bundle, stage / "bundle")
    (stage / "bundle" / HEAD_FILE).unlink()
    with pytest.raises(InputError, match="no contrastive head found"):
        retrieval_scores(stage / "bundle", studies, split="train", device="cpu")

    step = stage / "train" / "checkpoints" / "step-000040"
    step.mkdir(parents=True)
    save_file(
        {f"module.{k}": v.contiguous() for k, v in head.state_dict().items()},
        step / "model_1.safetensors",
    )
    position = {"checkpoint": "checkpoints/step-000040", "step": 40, "epoch": 40, "batch": 0}
    (stage / "train" / "checkpoint.json").write_text(json.dumps(position))
    (stage / "result.json").write_text(json.dumps({"steps": 40, "best": None}))
    found = retrieval_scores(stage / "bundle", studies, split="train", device="cpu", bootstrap=0)
    reference = retrieval_scores(bundle, studies, split="train", device="cpu", bootstrap=0)
    assert found["model"]["head"] == str(step / "model_1.safetensors")
    for direction in ("image_to_report", "report_to_image"):
        assert found[direction]["per_sample"] == reference[direction]["per_sample"]

    # Early stopping put an earlier step's tower in the bundle: the checkpoint's head is not its.
    (stage / "result.json").write_text(json.dumps({"steps": 40, "best": {"step": 20}}))
    with pytest.raises(InputError, match="early stopping"):
        retrieval_scores(stage / "bundle", studies, split="train", device="cpu")
    # ... unless the head is named.
    named = retrieval_scores(
        stage / "bundle", studies, split="train", device="cpu", head=stage / "train", bootstrap=0
    )
    assert named["image_to_report"]["per_sample"] == reference["image_to_report"]["per_sample"]


def test_identical_reports_end_to_end(fitted: tuple[Path, Path, Any], tmp_path: Path) -> None:
    """A second study with a train study's report word for word: one distinct text, and both
    studies' images count as right for it under exact-text."""
    import dataclasses

    from radixpert.data.study import Image, read_studies, write_studies

    bundle, studies_path, _ = fitted
    studies = [s for s in read_studies(studies_path) if s.split == "train"]
    other_image = str(studies_path.parent / studies[2].images[0].path)  # absolute
    twin = dataclasses.replace(studies[1], id="twin", images=[Image(other_image)])
    path = tmp_path / "studies.jsonl"
    write_studies([*studies, twin], path)
    root = studies_path.parent
    exact = retrieval_scores(bundle, path, "train", image_root=root, device="cpu", bootstrap=0)
    strict = retrieval_scores(
        bundle, path, "train", image_root=root, device="cpu", bootstrap=0, duplicates="none"
    )
    n = len(studies) + 1
    assert exact["data"]["distinct_reports"] == n - 1
    assert exact["image_to_report"]["gallery_size"] == n - 1
    assert strict["image_to_report"]["gallery_size"] == n
    ranks_exact = exact["image_to_report"]["per_sample"]["rank"]
    ranks_strict = strict["image_to_report"]["per_sample"]["rank"]
    # Studies 1 and "twin" share a text: strictly, each ties with the other's identical report.
    assert ranks_strict[1] >= 2 and ranks_strict[-1] >= 2
    assert all(e <= s for e, s in zip(ranks_exact, ranks_strict, strict=True))


# ---------------------------------------------------------------- open_clip


def test_a_tiny_open_clip_model_runs_and_its_tower_in_a_bundle_matches_it(
    tmp_path: Path,
) -> None:
    """A local open_clip folder is scored with its own transform and tokenizer; a llava with
    that tower and no saved head uses the checkpoint's text tower (frozen in training)."""
    pytest.importorskip("open_clip")
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from radixpert.data.phantoms import generate_phantoms
    from radixpert.leaderboard.retrieval import load_encoder
    from radixpert.models.bundle import save_bundle
    from radixpert.models.llava import TINY_IMAGE_TOKEN, tiny_text_config
    from radixpert.models.open_clip_tower import create_open_clip, load_open_clip_tower
    from radixpert.models.processor import RadProcessor
    from radixpert.models.tokenizers import train_bpe
    from tests.models.test_open_clip_tower import PATCHES, write_tiny_biomedclip
    from tests.train.test_contrastive import _words

    studies = generate_phantoms(8, tmp_path / "ph", size=64)
    reports = [s.findings for s in studies]
    folder = write_tiny_biomedclip(tmp_path, _words(reports))
    results = retrieval_scores(
        folder, tmp_path / "ph" / "studies.jsonl", split=None, device="cpu", bootstrap=0, k=(1, 5)
    )
    assert results["model"]["kind"] == "open_clip"
    assert results["model"]["source"] == f"local-dir:{folder}"
    assert results["image_to_report"]["gallery_size"] == 8
    assert results["report_to_image"]["recall@5"]["chance"] == pytest.approx(5 / 8)

    tower, _ = load_open_clip_tower(folder)
    config = LlavaConfig(
        vision_config=tower.config,
        text_config=tiny_text_config(),
        image_token_index=TINY_IMAGE_TOKEN,
        image_seq_length=PATCHES,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
    tokenizer = train_bpe(reports * 10, 63, ["<pad>", "<s>", "</s>", "<unk>"], ["<image>"])
    bundle = save_bundle(model, RadProcessor.from_model(model, tokenizer), tmp_path / "bundle")
    encoder, record = load_encoder(bundle, device="cpu")
    assert "open_clip text tower" in record["head"]
    clip = create_open_clip(folder).eval()
    with torch.no_grad():
        got = encoder.encode_texts(reports[:3])
        want = clip.encode_text(encoder.head.tokenize(reports[:3], 256)["input_ids"])
    torch.testing.assert_close(got, want)
    scored = retrieval_scores(
        bundle, tmp_path / "ph" / "studies.jsonl", split=None, device="cpu", bootstrap=0
    )
    assert scored["image_to_report"]["gallery_size"] == 8


def test_unknown_models_and_empty_splits_are_errors(
    fitted: tuple[Path, Path, Any], tmp_path: Path
) -> None:
    bundle, studies, _ = fitted
    with pytest.raises(InputError, match="not a radixpert bundle"):
        retrieval_scores(tmp_path, studies, split="train", device="cpu")
    with pytest.raises(InputError, match="no study of split 'nope'"):
        retrieval_scores(bundle, studies, split="nope", device="cpu")
    assert math.isfinite(
        retrieval_scores(bundle, studies, split="train", device="cpu", bootstrap=0, limit=3)[
            "image_to_report"
        ]["mean_rank"]["value"]
    )


# ---------------------------------------------------------------- a real contrastive stage


@pytest.mark.slow
def test_the_head_of_a_real_contrastive_stage_is_found(tmp_path: Path) -> None:
    """``run_recipe``'s contrastive stage leaves no head in its bundle; accelerate's checkpoint
    holds it as model_1.safetensors, which the bundle's retrieval finds and loads strictly."""
    from radixpert.data.phantoms import generate_phantoms
    from radixpert.train.runner import run_recipe
    from tests.train.test_runner import DATASETS, _tiny

    generate_phantoms(30, tmp_path / "phantoms", size=64)
    text = (tmp_path / "phantoms" / "studies.jsonl").read_text(encoding="utf-8")
    for name in DATASETS[:-1]:  # the dataset folders the shipped recipe names
        (tmp_path / name).mkdir()
        (tmp_path / name / "studies.jsonl").write_text(
            text.replace('"path": "images/', '"path": "../phantoms/images/'), encoding="utf-8"
        )
    recipe = _tiny("llava_rad", tmp_path, steps=3)
    summary = run_recipe(
        recipe, tmp_path / "run", only=["contrastive"], log_with=(), progress=False
    )
    bundle = Path(summary["final_bundle"])
    assert (bundle / HEAD_FILE).is_file()  # the stage's bundle carries its head
    results = retrieval_scores(
        bundle, tmp_path / "phantoms" / "studies.jsonl", "train", device="cpu", bootstrap=20
    )
    assert results["model"]["head"] == str(bundle / HEAD_FILE)
    # The saved head is the one of the stage's last checkpoint (accelerate's model_1).
    from safetensors.torch import load_file

    saved = load_file(bundle / HEAD_FILE)
    last = load_file(
        bundle.parent / "train" / "checkpoints" / "step-000003" / "model_1.safetensors"
    )
    assert set(saved) == {k.removeprefix("module.") for k in last}
    assert all(torch.equal(saved[k.removeprefix("module.")], v) for k, v in last.items())
    n = results["data"]["pairs"]
    assert n == len(results["ids"]) and results["image_to_report"]["gallery_size"] == n
    assert 1 <= results["report_to_image"]["mean_rank"]["value"] <= n
