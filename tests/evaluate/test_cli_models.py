"""`radixpert evaluate` end to end with the model-based ReXrank metrics on tiny models.

Every weights folder is a tiny random-weight model of the real architecture, found through
the RADIXPERT_WEIGHTS_<NAME> variables exactly as a copied folder would be. The numbers are
noise; what is checked is the whole path: CLI options, weights lookup, RadCliQ-v1 built from
the other metrics' per-sample scores, the per-text cache, and the results file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("radgraph")
pytest.importorskip("bert_score")

from radixpert.cli import main
from radixpert.evaluate.clinical.radcliq import radcliq_v1
from radixpert.evaluate.lexical.sentence_bleu import bleu2_radcliq
from tests.evaluate.tiny_models import (
    build_tiny_archive,
    build_tiny_backbone,
    build_tiny_bert_base,
    build_tiny_chexbert,
    build_tiny_distilroberta,
)

REFS = {
    "s1": "No acute cardiopulmonary process.",
    "s2": "Small left pleural effusion. Lungs are clear.",
    "s3": "Heart size is normal. No pneumothorax.",
    "s4": "Mild pulmonary edema.",
}
CANDS = {
    "s1": "No acute cardiopulmonary process.",
    "s2": "Right pleural effusion.",
    "s3": "",
    "s4": "Mild edema at the bases.",
}


@pytest.fixture(scope="module")
def weights_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    bert = build_tiny_bert_base(root / "bert-base-uncased")
    backbone = build_tiny_backbone(root / "biomedbert")
    return {
        "DISTILROBERTA_BASE": build_tiny_distilroberta(root / "distilroberta-base"),
        "BERT_BASE_UNCASED": bert,
        "CHEXBERT": build_tiny_chexbert(root / "chexbert", bert),
        "RADGRAPH": build_tiny_archive(
            root / "radgraph" / "radgraph.tar.gz", backbone, "radgraph"
        ).parent,
        "BIOMEDBERT_BASE_UNCASED": backbone,
    }


@pytest.mark.slow
def test_rexrank_metrics_through_the_cli(weights_env, tmp_path, monkeypatch, capsys):
    for name, folder in weights_env.items():
        monkeypatch.setenv(f"RADIXPERT_WEIGHTS_{name}", str(folder))
    r, c = tmp_path / "refs.json", tmp_path / "cands.jsonl"
    r.write_text(json.dumps(REFS))
    c.write_text("".join(json.dumps({"id": k, "report": v}) + "\n" for k, v in CANDS.items()))
    out = tmp_path / "results.json"
    args = ["evaluate", "-r", str(r), "-c", str(c), "--device", "cpu", "--batch-size", "2"]
    args += ["-m", "bertscore", "semb-score", "chexbert", "radgraph-f1", "radcliq-v1"]
    assert main([*args, "--out", str(out), "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    assert "1/radcliq-v1" in printed
    res = json.loads(out.read_text())
    m = res["metrics"]
    for name in ("bertscore", "semb-score", "f1-chexbert-14-micro", "radgraph-f1", "radcliq-v1"):
        assert len(m[name]["per_sample"]) == 4, name
    assert res["empty_candidates"]["ids"] == ["s3"]
    # RadCliQ-v1 is the fitted linear model of the other metrics' own per-sample scores
    feats = np.column_stack(
        [
            m["radgraph-f1"]["per_sample"],
            m["bertscore"]["per_sample"],
            m["semb-score"]["per_sample"],
            bleu2_radcliq(list(REFS.values()), list(CANDS.values())),
        ]
    )
    assert m["radcliq-v1"]["per_sample"] == pytest.approx(radcliq_v1(feats).tolist(), abs=1e-6)
    assert m["radcliq-v1"]["higher_is_better"] is False
    assert m["bertscore"]["settings"]["num_layers"] == 5
    # identical pair: SembScore is exactly 1 whatever the weights
    assert m["semb-score"]["per_sample"][0] == pytest.approx(1.0, abs=1e-6)

    # a second run reads every model output from the per-text cache: same numbers
    out2 = tmp_path / "again.json"
    assert main([*args, "--out", str(out2), "--bootstrap", "50", "-q"]) == 0
    again = json.loads(out2.read_text())["metrics"]
    for name in m:
        assert again[name]["per_sample"] == pytest.approx(m[name]["per_sample"], abs=1e-7), name
