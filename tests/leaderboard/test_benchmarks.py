"""Benchmarks as data: the shipped protocols, ReXrank's reference building, result files.

The ReXrank records are the real-layout fixture of ``tests/data/fixtures/rexrank`` (the
release's field names, bare ``NaN`` included); the reference strings are pinned to what
ReXrank's evaluation script (rajpurkarlab/ReXrank, ``example_files/evaluation_script.md``)
builds from them: ``f"Findings: {findings} Impression: {impression}"`` after
``x if pd.notna(x) else None``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radixpert.errors import InputError, UsageError
from radixpert.leaderboard.benchmarks import (
    build_candidates,
    build_references,
    list_benchmarks,
    load_benchmark,
    read_records,
)
from radixpert.leaderboard.run import RESULT_FORMAT, run_benchmark

REX = Path(__file__).parents[1] / "data" / "fixtures" / "rexrank"
MIMIC = REX / "mimic-cxr" / "ReXRank_MIMICCXR_test.json"
CHEXPERT = REX / "chexpert_plus" / "ReXRank_CheXpertPlus.json"


def test_every_shipped_benchmark_loads_and_is_named_as_its_file() -> None:
    names = list_benchmarks()
    sets = ("mimic-cxr", "iu-xray", "chexpert-plus", "rexgradient")
    tracks = ("findings", "findings-impression")
    wanted = {f"rexrank-{d}-{t}{v}" for d in sets for t in tracks for v in ("", "-clean")}
    radvlm = {"radvlm-classification-mimic-cxr", "radvlm-grounding-anatomy-chest-imagenome",
              "radvlm-grounding-abnormality-vindr-cxr", "radvlm-grounding-phrase-ms-cxr",
              "radvlm-conversation-mimic-cxr"}  # fmt: skip
    phantoms = {"phantoms-findings", "phantoms-classification", "phantoms-grounding"}
    assert wanted | radvlm | phantoms == set(names)
    for name in names:
        bench = load_benchmark(name)
        assert bench.name == name == bench.path.stem and bench.version >= 1
        assert bench.rank_by in bench.metrics and len(bench.sha256) == 64
    mimic = load_benchmark("rexrank-mimic-cxr-findings-impression")
    assert mimic.dataset.file == "mimic-cxr/ReXRank_MIMICCXR_test.json"
    assert mimic.dataset.studies == 2347 and mimic.reference == "rexrank"
    assert mimic.rank_by == "radcliq-v1" and mimic.offline_rank_by == "bleu-2-radcliq"


def test_rexrank_reference_keeps_the_scripts_quirks() -> None:
    bench = load_benchmark("rexrank-mimic-cxr-findings-impression")
    records = read_records(MIMIC, "rexrank")
    refs, excluded = build_references(bench, records)
    assert excluded == [] and set(refs) == set(records)
    nan_impression = [
        i for i, r in records.items() if r["section_impression"] != r["section_impression"]
    ]
    assert len(nan_impression) == 1
    rid = nan_impression[0]
    assert refs[rid] == f"Findings: {records[rid]['section_findings']} Impression: None"
    # Not the test file's own report field, which ends "Impression: None." there.
    assert (
        records[rid]["report"].endswith("Impression: None.") and refs[rid] != records[rid]["report"]
    )
    other = next(i for i in records if i != rid)
    rec = records[other]
    assert refs[other] == (
        f"Findings: {rec['section_findings']} Impression: {rec['section_impression']}"
    )
    chex = read_records(CHEXPERT, "rexrank")  # bare NaN findings in all three records
    refs, _ = build_references(load_benchmark("rexrank-chexpert-plus-findings-impression"), chex)
    assert all(r.startswith("Findings: None Impression: ") for r in refs.values())
    findings_only, _ = build_references(load_benchmark("rexrank-chexpert-plus-findings"), chex)
    assert set(findings_only.values()) == {"None"}


def test_clean_reference_leaves_missing_sections_out_and_counts_them() -> None:
    records = read_records(MIMIC, "rexrank")
    refs, excluded = build_references(
        load_benchmark("rexrank-mimic-cxr-findings-impression-clean"), records
    )
    rid = next(i for i, r in records.items() if r["section_impression"] != r["section_impression"])
    assert refs[rid] == f"Findings: {records[rid]['section_findings'].strip()}" and not excluded
    chex = read_records(CHEXPERT, "rexrank")
    refs, excluded = build_references(load_benchmark("rexrank-chexpert-plus-findings-clean"), chex)
    assert refs == {} and sorted(excluded) == sorted(chex)


def test_candidates_from_either_prediction_layout() -> None:
    bench = load_benchmark("rexrank-iu-xray-findings-impression")
    got = build_candidates(
        bench,
        {
            "a": {"model_prediction": "No acute disease.", "section_findings": "x"},
            "b": {"findings": "Clear lungs.", "impression": "Normal."},
            "c": {"findings": "Clear lungs."},
            "d": {"report": "Whole report."},
            "e": "bare text",
        },
    )
    assert got == {
        "a": "No acute disease.",
        "b": "Findings: Clear lungs. Impression: Normal.",
        "c": "Findings: Clear lungs.",
        "d": "Whole report.",
        "e": "bare text",
    }
    with pytest.raises(InputError, match=r"prediction 'z': no prediction text .* has answer"):
        build_candidates(bench, {"z": {"answer": "?"}})


def _predictions(tmp_path: Path, records: dict, drop: int = 0) -> Path:
    preds = {
        rid: {"findings": f"{rec['section_findings']} extra words", "impression": "Stable."}
        for rid, rec in list(records.items())[drop:]
    }
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(preds), encoding="utf-8")
    return path


def test_run_writes_one_result_per_model_and_benchmark(tmp_path: Path) -> None:
    bench = load_benchmark("rexrank-mimic-cxr-findings-impression")
    records = read_records(MIMIC, "rexrank")
    preds = _predictions(tmp_path, records)
    (tmp_path / "preds.meta.json").write_text(json.dumps({"settings": {"seed": 3}}))
    result = run_benchmark(
        bench, preds, data=REX, model="my model/v1", out_dir=tmp_path / "out", bootstrap=50
    )
    path = tmp_path / "out" / "my_model_v1" / f"{bench.name}.json"
    assert result["_path"] == str(path)
    written = json.loads(path.read_text())
    assert written["format"] == RESULT_FORMAT and written["benchmark"]["sha256"] == bench.sha256
    assert written["model"] == {
        "name": "my model/v1",
        "predictions": written["model"]["predictions"],
        "generation": {"settings": {"seed": 3}},
    }
    assert written["references"]["scored"] == len(records) == len(written["ids"])
    # The metrics that need weights are skipped with the reason; the ranking says which ran.
    assert "radcliq-v1" in written["skipped_metrics"]
    assert "weights" in written["skipped_metrics"]["bertscore"]
    assert written["ranking"]["metric"] == "bleu-2-radcliq"
    assert written["ranking"]["from"] == "offline_rank_by"
    bleu2 = written["metrics"]["bleu-2-radcliq"]
    assert written["ranking"]["value"] == bleu2["aggregate"] and 0 < bleu2["aggregate"] < 1
    assert len(bleu2["per_sample"]) == len(records)
    assert bleu2["ci95_bootstrap"]["resamples"] == 50


def test_gold_from_the_prediction_file_and_missing_predictions(tmp_path: Path) -> None:
    bench = load_benchmark("rexrank-mimic-cxr-findings-impression")
    records = read_records(MIMIC, "rexrank")
    own = tmp_path / "rexrank_layout.json"  # ReXrank's prediction layout: gold beside output
    own.write_text(
        json.dumps({i: {**r, "model_prediction": "No change."} for i, r in records.items()}),
        encoding="utf-8",
    )
    result = run_benchmark(bench, own, bootstrap=0)
    assert result["references"]["path"] == str(own) and len(result["ids"]) == len(records)
    generated = _predictions(tmp_path, records)
    with pytest.raises(InputError, match=r"no gold sections .* give --data"):
        run_benchmark(bench, generated)
    partial = _predictions(tmp_path, records, drop=1)
    with pytest.raises(InputError, match=r"no prediction for 1 of 4 reference ids"):
        run_benchmark(bench, partial, data=REX)
    result = run_benchmark(bench, partial, data=REX, allow_missing=True, bootstrap=0)
    assert result["references"]["without_prediction"]["count"] == 1


def test_bad_benchmark_files_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no-such: no such benchmark .* shipped: phantoms"):
        load_benchmark("no-such")
    text = load_benchmark("phantoms-findings").path.read_text()
    for old, new, message in (
        ("track: findings", "track: impression", r"track 'impression' is not one of"),
        ("reference: clean", "reference: tidy", r"reference 'tidy' is not one of"),
        ("rank_by: f1-chexpert", "rank_by: bleu-9", r"unknown metric\(s\) bleu-9"),
        ("version: 1", "version: one", r"version must be an integer"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text.replace(old, new))
        with pytest.raises(InputError, match=rf"bad\.yaml: {message}"):
            load_benchmark(bad)


def test_benchmark_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from radixpert.cli import main

    assert main(["benchmark", "list"]) == 0
    assert "rexrank-mimic-cxr-findings-impression-clean" in capsys.readouterr().out
    assert main(["benchmark", "show", "rexrank-iu-xray-findings"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"]["file"].endswith("IUXray_test.json")
    preds = _predictions(tmp_path, read_records(REX / "iu_xray" / "ReXRank_IUXray_test.json",
                                                "rexrank"))  # fmt: skip
    argv = ["benchmark", "run", "rexrank-iu-xray-findings", "rexrank-iu-xray-findings-clean",
            "--predictions", str(preds), "--data", str(REX), "--out", str(tmp_path / "r"),
            "--bootstrap", "20", "-q"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "rexrank-iu-xray-findings: 4 studies, bleu-2-radcliq = " in out
    assert sorted(p.name for p in (tmp_path / "r" / "preds").iterdir()) == [
        "rexrank-iu-xray-findings-clean.json", "rexrank-iu-xray-findings.json",
    ]  # fmt: skip
    assert main(["benchmark", "run", "nope", "--predictions", str(preds), "-o", "x"]) == 2


def test_run_with_a_model_generates_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from radixpert.cli import main
    from radixpert.data.phantoms import generate_phantoms
    from tests.serve import tiny_bundle

    studies = generate_phantoms(12, tmp_path / "data" / "phantoms", size=64)
    test_ids = sorted(s.id for s in studies if s.split == "test")
    assert test_ids, "the phantoms should hold held-out studies"
    bundle = tiny_bundle(tmp_path / "model" / "bundle")
    data, out = str(tmp_path / "data"), str(tmp_path / "r")
    argv = ["benchmark", "run", "phantoms-findings", "--model", str(bundle), "--data", data,
            "--out", out, "--bootstrap", "10", "-q"]  # fmt: skip
    assert main(argv) == 0
    folder = tmp_path / "r" / "model"  # the bundle's parent folder names the model
    result = json.loads((folder / "phantoms-findings.json").read_text())
    assert result["ids"] == test_ids and result["ranking"]["metric"] == "f1-chexpert"
    generation = result["model"]["generation"]
    assert generation["settings"]["track"] == "findings"
    assert generation["input"]["split"] == "test"
    predictions = json.loads((folder / "phantoms-findings.predictions.json").read_text())
    assert sorted(predictions) == test_ids
    assert main([*argv[:3], "--model", str(bundle), "--out", "x"]) == 2  # --data is needed
    assert "--model needs --data" in capsys.readouterr().err


def test_run_with_a_model_on_a_rexrank_set_reads_its_images(tmp_path: Path) -> None:
    """The ReXrank tree as its README lays it out (``iu_xray/images/<study>/<n>.png`` beside
    the test JSON): the rexrank reader turns it into Study records, generate answers them."""
    import shutil

    import numpy as np
    from PIL import Image

    from tests.serve import tiny_bundle

    data = tmp_path / "ReXrank-data"
    shutil.copytree(REX / "iu_xray", data / "iu_xray")
    records = read_records(data / "iu_xray" / "ReXRank_IUXray_test.json", "rexrank")
    rng = np.random.default_rng(0)
    for rec in records.values():
        for rel in rec["image_path"]:
            png = data / "iu_xray" / "images" / rel
            png.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8)).save(png)
    bundle = tiny_bundle(tmp_path / "tiny" / "bundle")
    bench = load_benchmark("rexrank-iu-xray-findings")
    from radixpert.leaderboard.run import generate_for

    preds = generate_for(bench, bundle, data, tmp_path / "r", "tiny", progress=False)
    assert sorted(json.loads(preds.read_text())) == sorted(records)
    studies = preds.parent / "iu-xray.studies.jsonl"
    assert len(studies.read_text().splitlines()) == len(records)
    result = run_benchmark(bench, preds, data=data, model="tiny", bootstrap=0)
    assert result["references"]["scored"] == len(records)
    assert result["model"]["generation"]["counts"]["predictions"] == len(records)
