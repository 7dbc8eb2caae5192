"""``radixpert generate`` on a tiny random-init llava bundle and phantom studies: the output
layout, batching, resume after an interruption, sharding and merging, bad inputs, the static
cache, and the end-to-end path into ``radixpert evaluate``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from radixpert.errors import ImageError, UsageError
from radixpert.infer import batch as engine
from radixpert.infer import generate as gen

N_STUDIES = 10
FAST = ["--max-new-tokens", "6", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Phantom studies (images beside their studies file) and a saved tiny llava bundle
    whose tokenizer was trained on their reports."""
    from radixpert.data.phantoms import generate_phantoms
    from radixpert.instruct.tasks import ReportTask
    from radixpert.models.bundle import save_bundle
    from radixpert.models.llava import tiny_llava
    from radixpert.models.processor import RadProcessor
    from radixpert.models.tokenizers import train_tokenizers

    root = tmp_path_factory.mktemp("generate")
    studies = generate_phantoms(N_STUDIES, root / "phantoms", size=64)
    torch.manual_seed(0)
    model = tiny_llava("mlp").eval()
    prompts = [p.format(what="findings") for p in ReportTask.PROMPTS]
    tokenizer, _ = train_tokenizers(model, [s.findings for s in studies] + prompts * 5)
    save_bundle(model, RadProcessor.from_model(model, tokenizer), root / "bundle")
    return {"root": root, "studies": root / "phantoms" / "studies.jsonl", "bundle": root / "bundle"}


def _run(world: dict[str, Path], out: Path, *extra: str) -> int:
    from radixpert.cli import main

    args = ["generate", "--model", str(world["bundle"]), "--data", str(world["studies"])]
    return main([*args, "--out", str(out), *FAST, *extra])


def _study_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def reference(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One uninterrupted, unsharded run: what every other way of running must equal."""
    out = tmp_path_factory.mktemp("reference") / "preds.json"
    assert _run(world, out) == 0
    return json.loads(out.read_text())


def test_output_layout_meta_and_batching(world: dict[str, Path], reference: dict) -> None:
    from radixpert.models.bundle import load_bundle

    assert list(reference) == _study_ids(world["studies"])  # every study, in input order
    assert all(set(rec) == {"findings"} and isinstance(rec["findings"], str)
               for rec in reference.values())  # fmt: skip
    assert any(rec["findings"] for rec in reference.values())
    # Batched, length-grouped generation gives each study the text it gets alone.
    model, processor = load_bundle(world["bundle"])
    settings = engine.GenerateSettings()
    _, items = engine.read_items(world["studies"], settings)
    from radixpert.data.images import load_image

    for item in items[:3]:
        alone = gen.generate_batch(
            model, processor, [[load_image(item.images[0])]], [item.prompt], max_new_tokens=6
        )
        assert alone == [reference[item.id]["findings"]]


def test_meta_records_model_settings_and_versions(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "preds.json"
    assert _run(world, out, "--limit", "3") == 0
    meta = json.loads((tmp_path / "preds.meta.json").read_text())
    assert meta["counts"] == {"records": 3, "predictions": 3, "skipped": 0, "unsplit": 0}
    assert meta["settings"]["max_new_tokens"] == 6 and meta["settings"]["track"] == "findings"
    assert meta["model"]["manifest"]["family"] == "llava"
    assert "model.safetensors" in meta["model"]["weight_bytes"]
    import transformers

    assert meta["versions"]["transformers"] == transformers.__version__
    assert len(meta["input"]["sha256"]) == 64


def test_interrupted_run_resumes_without_generating_again(
    world: dict[str, Path], reference: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = gen.generate_batch
    calls: list[list[str]] = []

    def counting(model: Any, processor: Any, images: Any, prompts: Any, **kw: Any) -> list[str]:
        if calls and fail[0]:
            raise RuntimeError("killed after the first batch")
        texts = real(model, processor, images, prompts, **kw)
        calls.append([p[0]["value"] for p in prompts])
        return texts

    seen: list[list[str]] = []
    real_append = engine.Journal.append

    def recording(self: Any, entries: Any) -> None:
        seen.append([e["id"] for e in entries])
        real_append(self, entries)

    fail = [True]
    monkeypatch.setattr(gen, "generate_batch", counting)
    monkeypatch.setattr(engine.Journal, "append", recording)
    out = tmp_path / "preds.json"
    with pytest.raises(RuntimeError, match="killed"):
        engine.run_generate(
            world["bundle"], world["studies"], out,
            engine.GenerateSettings(max_new_tokens=6, batch_size=4), progress=False,
        )  # fmt: skip
    assert not out.exists() and len(seen) == 1 and len(seen[0]) == 4
    first_batch = set(seen[0])
    fail[0] = False
    seen.clear()
    result = engine.run_generate(
        world["bundle"], world["studies"], out,
        engine.GenerateSettings(max_new_tokens=6, batch_size=4), progress=False,
    )  # fmt: skip
    again = {i for ids in seen for i in ids}
    assert not again & first_batch  # never generated twice
    assert result["resumed"] == 4 and result["generated"] == N_STUDIES - 4
    assert json.loads(out.read_text()) == reference
    # A finished run generates nothing and writes the same file.
    seen.clear()
    assert engine.run_generate(
        world["bundle"], world["studies"], out,
        engine.GenerateSettings(max_new_tokens=6, batch_size=4), progress=False,
    )["generated"] == 0  # fmt: skip
    assert not seen and json.loads(out.read_text()) == reference


def test_torn_journal_line_is_dropped_and_redone(
    world: dict[str, Path], reference: dict, tmp_path: Path
) -> None:
    out = tmp_path / "preds.json"
    assert _run(world, out, "--limit", "4") == 0
    journal = engine.journal_path(out)
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a crash
    out.unlink()
    assert _run(world, out, "--limit", "4") == 0
    assert json.loads(out.read_text()) == dict(list(reference.items())[:4])


def test_other_settings_refuse_the_journal(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "preds.json"
    assert _run(world, out, "--limit", "2") == 0
    with pytest.raises(UsageError, match="other settings"):
        engine.run_generate(
            world["bundle"], world["studies"], out,
            engine.GenerateSettings(max_new_tokens=7, batch_size=4), limit=2, progress=False,
        )  # fmt: skip


def test_two_shards_then_merge_equal_one_process(
    world: dict[str, Path], reference: dict, tmp_path: Path
) -> None:
    out = tmp_path / "preds.json"
    assert _run(world, out, "--shard", "0/2") == 0
    assert not out.exists()  # shard 1 is not done yet
    shard0 = engine.journal_path(out, 0, 2).read_text().splitlines()[1:]
    assert sorted(json.loads(line)["index"] for line in shard0) == list(range(0, N_STUDIES, 2))
    from radixpert.cli import main

    assert main(["generate", "--merge", "--out", str(out)]) == 2  # unfinished: refused
    assert _run(world, out, "--shard", "1/2") == 0  # the last shard merges
    assert json.loads(out.read_text()) == reference
    out.unlink()
    assert main(["generate", "--merge", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == reference
    assert json.loads((tmp_path / "preds.meta.json").read_text())["shards"] == 2


def test_missing_image_names_file_and_record_or_is_skipped(
    world: dict[str, Path], tmp_path: Path
) -> None:
    data = tmp_path / "phantoms"
    shutil.copytree(world["studies"].parent, data)
    records = [json.loads(line) for line in (data / "studies.jsonl").read_text().splitlines()]
    missing = data / records[1]["images"][0]["path"]
    missing.unlink()
    settings = engine.GenerateSettings(max_new_tokens=4, batch_size=4)
    out = tmp_path / "preds.json"
    with pytest.raises(ImageError, match=rf"{records[1]['id']}.*{missing.name}"):
        engine.run_generate(world["bundle"], data / "studies.jsonl", out, settings, limit=3,
                            progress=False)  # fmt: skip
    result = engine.run_generate(
        world["bundle"], data / "studies.jsonl", out, settings, limit=3, skip_bad=True,
        progress=False,
    )  # fmt: skip
    assert result["skipped"] == 1 and result["generated"] == 2
    assert list(json.loads(out.read_text())) == [records[0]["id"], records[2]["id"]]
    meta = json.loads((tmp_path / "preds.meta.json").read_text())
    assert meta["counts"]["skipped"] == 1 and meta["skipped"][0]["id"] == records[1]["id"]


def test_findings_impression_track_splits_by_headers() -> None:
    item = engine.Item("s1", 0, [], [], "here")
    rec, unsplit = engine._prediction(
        "studies", "findings+impression", item,
        "FINDINGS: Small left effusion. IMPRESSION: Effusion.",
    )  # fmt: skip
    assert rec == {"findings": "Small left effusion.", "impression": "Effusion."} and not unsplit
    rec, unsplit = engine._prediction("studies", "findings+impression", item, "Lungs clear.")
    assert rec == {"report": "Lungs clear."} and unsplit
    assert engine._prediction("studies", "findings", item, "x") == ({"findings": "x"}, False)


def test_report_prompt_is_the_report_tasks(world: dict[str, Path], tmp_path: Path) -> None:
    from radixpert.data.study import read_studies
    from radixpert.instruct.tasks import ReportTask

    study = next(read_studies(world["studies"]))
    study.indication = "Cough."
    turn = engine.report_prompt(study, "findings+impression")[0]
    what = "findings and impression"
    assert (
        turn["value"] == f"<image>\nIndication: Cough.\n{ReportTask.PROMPTS[0].format(what=what)}"
    )
    assert engine.report_prompt(study, "findings", with_indication=False)[0]["value"] == (
        "<image>\n" + ReportTask.PROMPTS[0].format(what="findings")
    )
    bundle = tmp_path / "run" / "02-lora" / "bundle"
    bundle.mkdir(parents=True)
    stages = [{"name": "align", "input": "image_only"}, {"name": "lora", "prompt_fields": ["x"]}]
    (bundle / "recipe.json").write_text(json.dumps({"stages": stages}))
    assert engine.prompt_style(bundle) == {"with_indication": False, "image_only": False}
    (bundle.parent.parent / "01-align" / "bundle").mkdir(parents=True)
    (bundle.parent.parent / "01-align" / "bundle" / "recipe.json").write_text(
        json.dumps({"stages": stages})
    )
    assert engine.prompt_style(bundle.parent.parent / "01-align" / "bundle")["image_only"]


def test_conversations_answered_at_their_last_question(
    world: dict[str, Path], tmp_path: Path
) -> None:
    import random

    from radixpert.data.study import read_studies
    from radixpert.instruct.conversation import write_conversations
    from radixpert.instruct.tasks import create

    task = create("classification")
    convs = [c for s in list(read_studies(world["studies"]))[:3]
             for c in task.build(s, random.Random(0))]  # fmt: skip
    data = world["studies"].parent / "conversations.jsonl"
    write_conversations(convs, data)
    out = tmp_path / "answers.json"
    result = engine.run_generate(
        world["bundle"], data, out, engine.GenerateSettings(max_new_tokens=4), progress=False
    )
    assert result["generated"] == len(convs)
    got = json.loads(out.read_text())
    assert list(got) == [c.id for c in convs]
    for c in convs:
        rec = got[c.id]
        assert rec["report"] == c.conversations[1]["value"] and rec["task"] == "classification"
        assert isinstance(rec["model_prediction"], str) and rec["study_id"] == c.study_id


def test_static_cache_where_the_family_allows(world: dict[str, Path], reference: dict,
                                               tmp_path: Path) -> None:  # fmt: skip
    from radixpert.models.bundle import load_bundle
    from radixpert.models.llava import tiny_llava

    out = tmp_path / "preds.json"
    assert _run(world, out, "--cache", "static", "--limit", "4") == 0
    assert json.loads(out.read_text()) == dict(list(reference.items())[:4])
    _, processor = load_bundle(world["bundle"])
    with pytest.raises(UsageError, match="static"):
        gen.check_decoding(tiny_llava("hcf"), processor, {"cache_implementation": "static"})
    processor.config.family = "radscribe"  # RadScribe's own greedy decoder
    with pytest.raises(UsageError, match="beam search"):
        gen.check_decoding(None, processor, {"num_beams": 2})


def test_beam_and_sampling_settings_run(world: dict[str, Path], tmp_path: Path) -> None:
    assert _run(world, tmp_path / "beam.json", "--num-beams", "2", "--limit", "2") == 0
    for name in ("s1.json", "s2.json"):
        assert _run(world, tmp_path / name, "--temperature", "1.0", "--seed", "3",
                    "--limit", "2") == 0  # fmt: skip
    assert (tmp_path / "s1.json").read_text() == (tmp_path / "s2.json").read_text()  # seeded
    assert _run(world, tmp_path / "x.json", "--num-beams", "2", "--temperature", "1") == 2


def test_generate_then_evaluate_scores_it(world: dict[str, Path], tmp_path: Path) -> None:
    from radixpert.cli import main

    out = tmp_path / "preds.json"
    assert _run(world, out) == 0
    results = tmp_path / "results.json"
    assert main(["evaluate", "-r", str(world["studies"]), "-c", str(out), "--section",
                 "findings", "-m", "bleu", "rouge-l", "--bootstrap", "0", "-q",
                 "-o", str(results)]) == 0  # fmt: skip
    scored = json.dumps(json.loads(results.read_text()))
    assert "rouge-l" in scored and "bleu-4" in scored
