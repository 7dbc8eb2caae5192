"""The leaderboard site, built from real result files of ``run_benchmark``.

Four fake models are scored on two shipped benchmarks: ``copy`` returns the reference,
``truncated`` its first sentence, ``normal`` one constant normal report, and a model named
``<script>...`` (for the escaping) the next study's findings. The IU-Xray benchmark reads the
real-layout fixture (4 studies, too few for any paired test to reach p < 0.05); the MIMIC-CXR
one reads 30 studies in ReXrank's layout built from the fixture's records (ids, fields, a NaN
impression every fifth study) with sentences of the IU-Xray reports. Then the HTML, CSV,
Markdown and settings are parsed back and checked against the result files themselves.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import shutil
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from radixpert.errors import InputError, UsageError
from radixpert.evaluate import compare
from radixpert.leaderboard.benchmarks import load_benchmark, read_records
from radixpert.leaderboard.run import run_benchmark
from radixpert.leaderboard.site import SITE_FORMAT, add_parser, build_site, rank_board, read_results

REX = Path(__file__).parents[1] / "data" / "fixtures" / "rexrank"
MIMIC, IU = "rexrank-mimic-cxr-findings-impression", "rexrank-iu-xray-findings"
XSS = "<script>window.pwned=1</script>"
MODELS = ("copy", "truncated", "normal", XSS)
RESAMPLES, RANK_RESAMPLES = 2000, 200


def _nan(x: Any) -> bool:
    return isinstance(x, float) and x != x


def _mimic_like(folder: Path, n: int = 30) -> Path:
    """``folder/mimic-cxr/ReXRank_MIMICCXR_test.json`` with n studies (see module doc)."""
    iu = read_records(REX / "iu_xray" / "ReXRank_IUXray_test.json", "rexrank")
    mimic = list(read_records(REX / "mimic-cxr" / "ReXRank_MIMICCXR_test.json", "rexrank").items())
    sentences = sorted(
        {
            f"{s.strip()}."
            for r in iu.values()
            for s in r["section_findings"].split(".")
            if s.strip()
        }
    )
    impressions = [r["section_impression"] for r in iu.values()]
    rng = random.Random(0)
    records = {}
    for k in range(n):
        rid, rec = mimic[k % len(mimic)]
        records[rid if k < len(mimic) else f"{rid}-{k:02d}"] = {
            **rec,
            "section_findings": " ".join(rng.sample(sentences, 3)),
            "section_impression": float("nan") if k % 5 == 0 else impressions[k % 4],
        }
    path = folder / "mimic-cxr" / "ReXRank_MIMICCXR_test.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(records), encoding="utf-8")  # NaN written bare, as ReXrank's
    return folder


def _predictions(records: dict[str, dict], how: str) -> dict[str, dict]:
    out = {}
    values = list(records.values())
    for i, (rid, r) in enumerate(records.items()):
        findings = r["section_findings"]
        impression = None if _nan(r["section_impression"]) else r["section_impression"]
        if how == "copy":
            out[rid] = {"findings": findings, "impression": impression}
        elif how == "truncated":
            out[rid] = {"findings": findings.split(".")[0] + ".", "impression": impression}
        elif how == "normal":
            out[rid] = {"findings": "The lungs are clear. Heart size is normal.",
                        "impression": "No acute cardiopulmonary abnormality."}  # fmt: skip
        else:
            out[rid] = {"findings": values[(i + 1) % len(values)]["section_findings"]}
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("leaderboard")
    data = _mimic_like(base / "data")
    sets = {
        MIMIC: (read_records(data / "mimic-cxr" / "ReXRank_MIMICCXR_test.json", "rexrank"), data),
        IU: (read_records(REX / "iu_xray" / "ReXRank_IUXray_test.json", "rexrank"), REX),
    }
    results, preds = base / "results", base / "preds"
    preds.mkdir()
    files: dict[tuple[str, str], Path] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RADIXPERT_HOME", str(base / "home"))
        for k, model in enumerate(MODELS):
            how = model if model in MODELS[:3] else "shifted"
            for bench, (records, folder) in sets.items():
                path = preds / f"m{k}-{bench}.json"
                path.write_text(json.dumps(_predictions(records, how)), encoding="utf-8")
                if model == "copy":  # what `radixpert generate` writes beside its predictions
                    meta = {"settings": {"seed": 7, "max_new_tokens": 64}}
                    path.with_name(path.stem + ".meta.json").write_text(json.dumps(meta))
                doc = run_benchmark(load_benchmark(bench), path, data=folder, model=model,
                                    out_dir=results, bootstrap=200)  # fmt: skip
                files[(model, bench)] = Path(doc["_path"])
    # `benchmark run --model` leaves its predictions beside the results: not results.
    (results / "copy" / f"{MIMIC}.predictions.json").write_text("{}")
    (results / "copy" / f"{MIMIC}.predictions.meta.json").write_text("{}")
    site = base / "site"
    summary = build_site(results, site, resamples=RESAMPLES, rank_resamples=RANK_RESAMPLES)
    return SimpleNamespace(base=base, results=results, preds=preds, files=files, site=site,
                           summary=summary, docs={k: json.loads(p.read_text()) for k, p in
                                                  files.items()})  # fmt: skip


class _Tables(HTMLParser):
    """Every <table> of a page: rows of cells, each (text, classes, bold)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[dict[str, Any]]]] = []
        self.headings: list[str] = []
        self._cell: dict[str, Any] | None = None
        self._h2: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = {"text": "", "class": dict(attrs).get("class") or "", "bold": False}
        elif tag == "b" and self._cell is not None:
            self._cell["bold"] = True
        elif tag == "h2":
            self._h2 = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(self._cell)
            self._cell = None
        elif tag == "h2" and self._h2 is not None:
            self.headings.append("".join(self._h2))
            self._h2 = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data
        if self._h2 is not None:
            self._h2.append(data)


def _page(site: Path) -> dict[str, list[dict[str, dict[str, Any]]]]:
    """benchmark -> rows of {column header: cell}."""
    parser = _Tables()
    parser.feed((site / "index.html").read_text(encoding="utf-8"))
    boards = [h for h in parser.headings if h != "Per-sample scores"]
    assert len(boards) == len(parser.tables)
    out = {}
    for name, table in zip(boards, parser.tables):
        # A corpus column tested on per-sample means is marked " †" (its note says why).
        head = [c["text"].removesuffix(" †") for c in table[0]]
        out[name] = [dict(zip(head, row)) for row in table[1:]]
    return out


def _value(text: str) -> float:
    return float(text.split()[0])


def _csv_rows(site: Path) -> list[dict[str, str]]:
    with open(site / "leaderboard.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------ the tables


def test_rank_order_follows_the_ranking_metric(made: SimpleNamespace) -> None:
    page = _page(made.site)
    assert list(page) == sorted([MIMIC, IU])  # benchmarks sorted by name
    for bench, rows in page.items():
        summary = made.summary["benchmarks"][bench]
        # radcliq-v1 needs weights absent here: the offline metric ranks, and the page says so.
        assert summary["ranking_metric"] == "bleu-2-radcliq"
        assert summary["ranking_from"] == "offline_rank_by"
        truth = {m: made.docs[(m, bench)]["metrics"]["bleu-2-radcliq"]["aggregate"] for m in
                 MODELS}  # fmt: skip
        assert [r["model"]["text"] for r in rows] == sorted(truth, key=lambda m: -truth[m])
        assert [int(r["rank"]["text"]) for r in rows] == [1, 2, 3, 4]
        shown = [_value(r["bleu-2-radcliq"]["text"]) for r in rows]
        assert shown == sorted(shown, reverse=True)
        assert rows[0]["model"]["text"] == "copy"
    html = (made.site / "index.html").read_text(encoding="utf-8")
    assert "offline_rank_by: its rank_by radcliq-v1 is not in every result" in html
    assert "against the leader on the per-sample scores of bleu-2-radcliq" in html


def test_every_shared_metric_has_its_interval_and_the_best_is_bold(made: SimpleNamespace) -> None:
    page = _page(made.site)
    md = (made.site / "leaderboard.md").read_text(encoding="utf-8")
    for bench, rows in page.items():
        docs = {m: made.docs[(m, bench)] for m in MODELS}
        metrics = list(docs["copy"]["metrics"])
        assert [k for k in rows[0] if k in metrics] == metrics  # ranking metric first, all shown
        for key in metrics:
            truth = {m: d["metrics"][key]["aggregate"] for m, d in docs.items()}
            best = max(truth.values())
            bold = {r["model"]["text"] for r in rows if r[key]["bold"]}
            assert bold == {m for m, v in truth.items() if v == best}, (bench, key)
            for r in rows:
                m = r["model"]["text"]
                ci = docs[m]["metrics"][key]["ci95_bootstrap"]
                assert r[key]["text"] == (f"{truth[m]:.4f} [{ci['low']:.4f}, {ci['high']:.4f}]"), (
                    bench,
                    key,
                    m,
                )
        # The Markdown table marks the same cells.
        section = md.split(f"## {bench}", 1)[1].split("\n## ", 1)[0]
        lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
        head = [c.strip() for c in lines[0].strip("|").split("|")]
        col = head.index("rouge-l")
        marked = [ln.split(" | ")[col].startswith("**") for ln in lines[2:]]
        truth = [made.docs[(r["model"]["text"], bench)]["metrics"]["rouge-l"]["aggregate"] for r
                 in rows]  # fmt: skip
        assert marked == [v == max(truth) for v in truth]


def test_tests_against_the_leader(made: SimpleNamespace) -> None:
    rows = _csv_rows(made.site)
    assert len(rows) == 8 and {(r["benchmark"], r["model"]) for r in rows} == {
        (b, m) for b in (MIMIC, IU) for m in MODELS
    }
    for bench in (MIMIC, IU):
        board = [r for r in rows if r["benchmark"] == bench]
        leader, others = board[0], board[1:]
        assert leader["rank"] == "1" and leader["p_value"] == leader["p_adjusted"] == ""
        assert leader["differs_from_leader"] == ""
        raw = [float(r["p_value"]) for r in others]
        adjusted = [float(r["p_adjusted"]) for r in others]
        assert all(a >= p for a, p in zip(adjusted, raw))
        assert adjusted == pytest.approx(compare.correct(raw, "holm"))
        # The test is the one of evaluate.compare on the per-sample scores, aligned by id.
        lead = made.docs[(leader["model"], bench)]["metrics"]["bleu-2-radcliq"]["per_sample"]
        for r in others:
            scores = made.docs[(r["model"], bench)]["metrics"]["bleu-2-radcliq"]["per_sample"]
            direct = compare.approximate_randomization(lead, scores, resamples=RESAMPLES, seed=0)
            assert float(r["p_value"]) == direct.p_value
            assert float(r["difference"]) == pytest.approx(direct.difference)
    mimic = {r["model"]: r for r in rows if r["benchmark"] == MIMIC}
    assert mimic["copy"]["rank"] == "1"
    assert mimic["normal"]["differs_from_leader"] == "true"
    assert float(mimic["normal"]["p_adjusted"]) < 0.05
    iu = [r for r in rows if r["benchmark"] == IU and r["rank"] != "1"]
    assert all(r["differs_from_leader"] == "false" for r in iu)  # 4 studies: p >= 1/8
    page = _page(made.site)
    assert page[MIMIC][0]["p"]["text"] == "–"
    assert [r["differs from leader"]["text"] for r in page[MIMIC]] == ["leader", *["yes"] * 3]


def test_rank_stability(made: SimpleNamespace) -> None:
    results = [r for r in read_results(made.results) if r.bench == MIMIC]
    board = rank_board(MIMIC, results, resamples=100, rank_resamples=RANK_RESAMPLES, seed=0)
    for row in board.rows:
        assert len(row.rank_probs) == len(MODELS) and sum(row.rank_probs) == pytest.approx(1)
    assert board.rows[0].model == "copy" and board.rows[0].rank_probs[0] == 1.0
    again = rank_board(MIMIC, results, resamples=100, rank_resamples=RANK_RESAMPLES, seed=0)
    assert [r.rank_probs for r in again.rows] == [r.rank_probs for r in board.rows]
    page = _page(made.site)
    shown = {r["model"]["text"]: float(r["P(rank 1)"]["text"]) for r in page[MIMIC]}
    assert shown == {r.model: round(r.rank_probs[0], 2) for r in board.rows}


def test_images_are_files_beside_the_page(made: SimpleNamespace) -> None:
    from PIL import Image

    html = (made.site / "index.html").read_text(encoding="utf-8")
    metrics = {k for d in made.docs.values() for k in d["metrics"]}
    boxes = sorted(made.site.glob("box-*.png"))
    ranks = sorted(made.site.glob("rank-*.png"))
    assert len(boxes) == len(metrics) and len(ranks) == 2
    for png in [*boxes, *ranks]:
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
        assert f'src="{png.name}"' in html
    # Self-contained: no script, no external address, links relative.
    assert "<script" not in html.lower() and "http" not in html and "//" not in html


def test_names_are_escaped(made: SimpleNamespace) -> None:
    html = (made.site / "index.html").read_text(encoding="utf-8")
    assert XSS not in html and "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html
    assert XSS in [r["model"]["text"] for r in _page(made.site)[MIMIC]]
    md = (made.site / "leaderboard.md").read_text(encoding="utf-8")
    assert XSS not in md and "&lt;script&gt;" in md
    assert XSS in {r["model"] for r in _csv_rows(made.site)}  # data, kept as given


def test_settings_record_every_digest(made: SimpleNamespace) -> None:
    settings = json.loads((made.site / "settings.json").read_text(encoding="utf-8"))
    assert settings["format"] == SITE_FORMAT
    assert settings["test"] | {"method": "approximate-randomization", "correction": "holm",
                               "resamples": RESAMPLES, "seed": 0} == settings["test"]  # fmt: skip
    assert settings["rank_stability"]["resamples"] == RANK_RESAMPLES
    for bench in (MIMIC, IU):
        entry = settings["benchmarks"][bench]
        assert entry["version"] == 1 and entry["sha256"] == load_benchmark(bench).sha256
        assert entry["ranking"]["metric"] == "bleu-2-radcliq"
        for k, model in enumerate(MODELS):
            m = entry["models"][model]
            pred = made.preds / f"m{k}-{bench}.json"
            assert m["predictions_sha256"] == hashlib.sha256(pred.read_bytes()).hexdigest()
            assert m["metrics"]["bleu-2-radcliq"]["settings"]["weights"] == [0.5, 0.5]
            assert "radcliq-v1" in m["skipped_metrics"]
        assert entry["models"]["copy"]["generation"] == {
            "settings": {"seed": 7, "max_new_tokens": 64}
        }
        assert entry["models"]["normal"]["generation"] is None


# ------------------------------------------------------------------------------ RadCliQ-v1


def _with_radcliq(made: SimpleNamespace, folder: Path, models: tuple[str, ...] = MODELS) -> Path:
    """Copies of the MIMIC results, with a RadCliQ-v1 entry (lower is better, shown as
    1/mean) in the given models': ``truncated`` best, then ``copy``; other metrics cut to
    two, to keep the plots few."""
    raw = {"copy": 0.8, "truncated": 0.5, "normal": 1.6, XSS: 2.0}
    for model in MODELS:
        doc = json.loads(json.dumps(made.docs[(model, MIMIC)]))
        n = len(doc["ids"])
        doc["metrics"] = {k: doc["metrics"][k] for k in ("bleu-2-radcliq", "rouge-l")}
        if model in models:
            per = [raw[model] + 0.1 * ((i % 3) - 1) for i in range(n)]
            mean = sum(per) / n
            doc["metrics"]["radcliq-v1"] = {
                "aggregate": mean, "mean": mean, "higher_is_better": False, "n": n,
                "ci95_bootstrap": {"low": mean - 0.05, "high": mean + 0.05, "resamples": 200,
                                   "seed": 0, "method": "bootstrap-percentile"},
                "display": 1 / mean, "display_transform": "inverse (1/mean), higher is better",
                "display_ci95_bootstrap": {"low": 1 / (mean + 0.05), "high": 1 / (mean - 0.05)},
                "per_sample": per, "settings": {"composite": "radcliq-v1"},
                "registry_name": "radcliq-v1",
            }  # fmt: skip
            doc["skipped_metrics"].pop("radcliq-v1", None)
        path = folder / f"m{MODELS.index(model)}" / f"{MIMIC}.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(doc), encoding="utf-8")
    return folder


def test_radcliq_ranks_by_its_inverse_and_shows_it(made: SimpleNamespace, tmp_path: Path) -> None:
    results = _with_radcliq(made, tmp_path / "results")
    summary = build_site(results, tmp_path / "site", resamples=500, rank_resamples=50)
    board = summary["benchmarks"][MIMIC]
    assert (board["ranking_metric"], board["ranking_from"]) == ("radcliq-v1", "rank_by")
    assert [m["model"] for m in board["models"]] == ["truncated", "copy", "normal", XSS]
    assert board["models"][0]["value"] == pytest.approx(1 / 0.5)
    rows = _page(tmp_path / "site")[MIMIC]
    assert "1/radcliq-v1" in rows[0] and "radcliq-v1" not in rows[0]
    shown = [_value(r["1/radcliq-v1"]["text"]) for r in rows]
    assert shown == sorted(shown, reverse=True)
    assert [r["1/radcliq-v1"]["bold"] for r in rows] == [True, False, False, False]
    assert rows[0]["1/radcliq-v1"]["text"] == f"{2:.4f} [{1 / 0.55:.4f}, {1 / 0.45:.4f}]"
    assert [r["bleu-2-radcliq"]["bold"] for r in rows] == [False, True, False, False]
    html = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "raw radcliq-v1, lower is better, while the table shows 1/mean" in html
    header = next(r for r in _csv_rows(tmp_path / "site"))
    assert "1/radcliq-v1" in header and "1/radcliq-v1_ci95_low" in header


def test_ranking_falls_back_and_can_be_chosen(made: SimpleNamespace, tmp_path: Path) -> None:
    # One model without RadCliQ-v1: the benchmark's offline_rank_by ranks them all.
    results = _with_radcliq(made, tmp_path / "r", models=MODELS[:3])
    board = rank_board(MIMIC, read_results(results), resamples=100, rank_resamples=20)
    assert (board.ranking.key, board.ranking_from) == ("bleu-2-radcliq", "offline_rank_by")
    assert f"the results of {XSS} lack it" in board.why
    assert "radcliq-v1" in board.partial_metrics
    chosen = rank_board(MIMIC, read_results(results), metric="rouge-l", resamples=100,
                        rank_resamples=20)  # fmt: skip
    assert (chosen.ranking.key, chosen.ranking_from) == ("rouge-l", "--metric")
    assert chosen.columns[0].key == "rouge-l"
    with pytest.raises(InputError, match=rf"{MIMIC}.*--metric 'radcliq-v1' is not in the "
                       rf"results of '{XSS}'"):  # fmt: skip
        rank_board(MIMIC, read_results(results), metric="radcliq-v1")


# ------------------------------------------------------------------------------ bad inputs


def _copy_results(made: SimpleNamespace, folder: Path, bench: str = IU) -> Path:
    for (_, b), path in made.files.items():
        if b == bench:
            target = folder / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    return folder


def _edit(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_bad_result_files_are_named(made: SimpleNamespace, tmp_path: Path) -> None:
    res = _copy_results(made, tmp_path / "a")
    (res / "other.json").write_text(json.dumps({"format": "radixpert.evaluation"}))
    with pytest.raises(InputError, match=r"other\.json: not a benchmark result \(format "
                       r"'radixpert\.evaluation'"):  # fmt: skip
        read_results(res)
    (res / "other.json").write_text("{not json")
    with pytest.raises(InputError, match=r"other\.json: not valid JSON"):
        read_results(res)
    (res / "other.json").unlink()
    shutil.copytree(res / "copy", res / "copy-again")
    with pytest.raises(InputError, match=rf"two results for model 'copy' on benchmark '{IU}': "
                       rf".*/copy/{IU}\.json and .*/copy-again/{IU}\.json"):  # fmt: skip
        read_results(res)
    shutil.rmtree(res / "copy-again")
    normal = res / "normal" / f"{IU}.json"
    _edit(normal, lambda d: d["benchmark"].update(version=2))
    with pytest.raises(InputError, match=rf"benchmark '{IU}' are not comparable: .*\.json has "
                       r"version 1 .*normal/.*\.json version 2"):  # fmt: skip
        read_results(res)
    _edit(normal, lambda d: d["benchmark"].update(version=1, sha256="0" * 64))
    with pytest.raises(InputError, match=r"not comparable: .*sha256 000000000000"):
        read_results(res)
    with pytest.raises(InputError, match=r"no such folder"):
        read_results(tmp_path / "nowhere")


def test_different_ids_are_refused(made: SimpleNamespace, tmp_path: Path) -> None:
    res = _copy_results(made, tmp_path / "b")

    def drop_last(doc: dict) -> None:
        doc["ids"] = doc["ids"][:-1]
        for m in doc["metrics"].values():
            m["per_sample"] = m["per_sample"][:-1]

    _edit(res / "normal" / f"{IU}.json", drop_last)
    with pytest.raises(InputError, match=rf"benchmark '{IU}': models '.*' .* and 'normal' .* "
                       r"scored different ids \(1 only in the first"):  # fmt: skip
        build_site(res, tmp_path / "site", resamples=10, rank_resamples=10)
    assert not (tmp_path / "site").exists()


def test_the_site_replaces_only_a_site(made: SimpleNamespace, tmp_path: Path) -> None:
    res = _copy_results(made, tmp_path / "c")
    with pytest.raises(UsageError, match=r"would replace the results folder"):
        build_site(res, res)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UsageError, match=r"exists and is not a leaderboard site"):
        build_site(res, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(UsageError, match=r"unknown correction 'sidak'"):
        build_site(res, tmp_path / "s", correction="sidak")


def test_command_line(made: SimpleNamespace, tmp_path: Path, capsys: Any) -> None:
    res = _with_radcliq(made, tmp_path / "r")
    parser = argparse.ArgumentParser(prog="radixpert")
    add_parser(parser.add_subparsers(dest="command", required=True))
    site = tmp_path / "site"
    argv = ["leaderboard", str(res), "--out", str(site), "--test", "paired-bootstrap",
            "--correction", "bonferroni", "--resamples", "300", "--rank-resamples", "30",
            "--seed", "3"]  # fmt: skip
    for _ in range(2):  # the second run replaces the first site
        args = parser.parse_args(argv)
        assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"{MIMIC}: 4 models by radcliq-v1; leader truncated (2.0000)" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "site"]  # no temporary left
    settings = json.loads((site / "settings.json").read_text())
    assert settings["test"]["method"] == "paired-bootstrap"
    assert settings["test"]["correction"] == "bonferroni" and settings["test"]["seed"] == 3
    rows = _csv_rows(site)
    raw = [float(r["p_value"]) for r in rows[1:]]
    assert [float(r["p_adjusted"]) for r in rows[1:]] == pytest.approx(
        compare.correct(raw, "bonferroni")
    )
    assert "adjusted p (bonferroni)" in (site / "index.html").read_text()


# ------------------------------------------------------------------------------ in a browser


def test_the_page_renders_in_a_browser(made: SimpleNamespace, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get((made.site / "index.html").as_uri())
    tables = browser.find_elements(By.CSS_SELECTOR, "table.leaderboard")
    assert len(tables) == 2
    for table in tables:
        assert len(table.find_elements(By.CSS_SELECTOR, "tbody tr")) == len(MODELS)
        assert table.size["width"] > 300 and table.size["height"] > 50
    cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "td.model")]
    assert XSS in cells  # shown as text, never run
    assert browser.execute_script("return window.pwned === undefined")
    bold = browser.find_elements(By.CSS_SELECTOR, "td.best b")
    assert bold and all(int(b.value_of_css_property("font-weight")) >= 700 for b in bold)
    images = browser.find_elements(By.CSS_SELECTOR, "img.plot")
    assert len(images) == len(list(made.site.glob("*.png")))
    loaded = browser.execute_script(
        "return Array.from(document.images).map(i => i.complete && i.naturalWidth)"
    )
    assert all(w and w > 0 for w in loaded), loaded
