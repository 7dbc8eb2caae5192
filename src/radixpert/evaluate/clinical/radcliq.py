"""RadCliQ-v1: the composite of RadGraph-F1, BERTScore, SembScore and BLEU-2 (lower is better).

Per report, the four features are standardised with the fitted scaler of
CXR-Report-Metric (CXRMetric/radcliq-v1.pkl) and combined linearly:

    score_i = sum_k coefficients[k] * (x_ik - scaler_mean[k]) / scaler_scale[k] + intercept

with the constants shipped in radixpert/evaluate/data/radcliq_v1.json. The per-report
score is kept raw; leaderboards (ReXrank) show 1 / mean over reports. A set of
near-perfect reports has a negative mean, where 1/mean means nothing: then no display
value is given, and the raw mean is what to report.

The features are the registry metrics "radgraph-f1", "bertscore" (idf off),
"semb-score" and the per-report BLEU-2 of RadCliQ (`bleu2_radcliq`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from radixpert.evaluate import registry
from radixpert.evaluate.base import Metric, MetricResult

log = logging.getLogger(__name__)

FEATURES: tuple[str, ...] = ("radgraph", "bertscore", "semb_score", "bleu_score")
# Registry metric of each model-based feature (BLEU-2 comes from bleu2_radcliq).
SUB_METRICS: dict[str, str] = {
    "radgraph": "radgraph-f1",
    "bertscore": "bertscore",
    "semb_score": "semb-score",
}
NEGATIVE_MEAN_NOTE = "mean <= 0: 1/mean is undefined; report the raw mean"


@functools.cache
def constants() -> dict[str, Any]:
    """The shipped RadCliQ-v1 constants (scaler, coefficients, intercept, check values)."""
    text = resources.files("radixpert.evaluate").joinpath("data/radcliq_v1.json").read_text()
    data = json.loads(text)
    if tuple(data["features"]) != FEATURES:
        raise ValueError(f"radcliq_v1.json: features {data['features']} != {FEATURES}")
    return data


def radcliq_v1(features: np.ndarray) -> np.ndarray:
    """Raw RadCliQ-v1 of each report.

    Args:
        features: (N, 4) array, columns radgraph, bertscore, semb_score, bleu_score.

    Returns:
        (N,) array of scores; lower is better.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(FEATURES):
        raise ValueError(f"features must have shape (N, {len(FEATURES)}), got {x.shape}")
    c = constants()
    z = (x - np.asarray(c["scaler_mean"])) / np.asarray(c["scaler_scale"])
    return z @ np.asarray(c["coefficients"]) + float(c["intercept"])


def display_value(raw_mean: float) -> float | None:
    """1 / mean, as leaderboards show RadCliQ-v1; None when the mean is not positive."""
    if math.isnan(raw_mean) or raw_mean <= 0:
        return None
    return 1.0 / raw_mean


class RadCliQV1(Metric):
    """RadCliQ-v1 per report (raw, lower is better), displayed as 1 / mean.

    Args:
        device: passed to the model-based sub-metrics.
        batch_size: passed to the model-based sub-metrics.
        cache: passed to the sub-metrics (their per-text / per-pair caches).
        bertscore_model_dir: distilroberta-base folder (BertScore's `model_dir`).
        chexbert_dir: folder with chexbert.pth (SembScore).
        bert_dir: bert-base-uncased folder (SembScore).
        radgraph_model_dir: RadGraph model folder (RadGraph-F1's `model_dir`).
    """

    name = "radcliq-v1"
    higher_is_better = False
    description = "RadCliQ-v1 composite; raw per report (lower is better), shown as 1/mean"

    def __init__(
        self,
        device: str | None = None,
        batch_size: int | None = None,
        cache: bool = True,
        bertscore_model_dir: str | Path | None = None,
        chexbert_dir: str | Path | None = None,
        bert_dir: str | Path | None = None,
        radgraph_model_dir: str | Path | None = None,
    ) -> None:
        # Only these options reach the sub-metrics: anything else (idf, another RadGraph
        # model, ...) would change what RadCliQ-v1 was fitted on.
        common: dict[str, Any] = {"cache": cache}
        if device is not None:
            common["device"] = device
        if batch_size is not None:
            common["batch_size"] = batch_size
        self._options = {
            "radgraph": {**common, "model_dir": radgraph_model_dir},
            "bertscore": {**common, "model_dir": bertscore_model_dir},
            "semb_score": {**common, "chexbert_dir": chexbert_dir, "bert_dir": bert_dir},
        }

    def _sub_metric(self, feature: str) -> Metric:
        opts = {k: v for k, v in self._options[feature].items() if v is not None}
        return registry.create(SUB_METRICS[feature], **opts)

    def check(self) -> str | None:
        import importlib.util

        reasons = []
        if importlib.util.find_spec("radixpert.evaluate.lexical.sentence_bleu") is None:
            reasons.append("needs radixpert.evaluate.lexical.sentence_bleu (BLEU-2 of RadCliQ)")
        for feature in SUB_METRICS:
            reason = self._sub_metric(feature).check()
            if reason:
                reasons.append(f"{SUB_METRICS[feature]}: {reason}")
        return "; ".join(reasons) or None

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        from radixpert.evaluate.lexical.sentence_bleu import bleu2_radcliq

        if len(references) != len(candidates):
            raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
        self.ensure_available()
        columns: dict[str, list[float]] = {}
        sub_settings: dict[str, Any] = {}
        versions: dict[str, str] = {}
        for feature, metric_name in SUB_METRICS.items():
            result = self._sub_metric(feature).compute(references, candidates)
            columns[feature] = list(result.per_sample)
            sub_settings[metric_name] = result.settings
            versions.update(result.versions)
        columns["bleu_score"] = [float(x) for x in bleu2_radcliq(references, candidates)]
        sub_settings["bleu-2-radcliq"] = "per-report BLEU-2 of RadCliQ (bleu2_radcliq)"
        for feature, values in columns.items():
            if len(values) != len(references):
                raise RuntimeError(
                    f"radcliq-v1: {feature} gave {len(values)} scores for {len(references)} pairs"
                )
        x = np.column_stack([columns[f] for f in FEATURES]) if references else np.zeros((0, 4))
        scores = radcliq_v1(x)
        raw_mean = float(scores.mean()) if scores.size else math.nan
        display = display_value(raw_mean)
        detailed: dict[str, Any] = {
            f: float(np.mean(columns[f])) if references else math.nan for f in FEATURES
        }
        if display is None:
            detailed["note"] = (
                "mean is nan: a feature is undefined for some report"
                if math.isnan(raw_mean)
                else NEGATIVE_MEAN_NOTE
            )
            log.warning("radcliq-v1: %s (mean %.4f)", detailed["note"], raw_mean)
        c = constants()
        return MetricResult(
            name=self.name,
            aggregate=raw_mean,
            per_sample=scores.tolist(),
            higher_is_better=False,
            settings={
                "formula": c["formula"],
                "features": list(FEATURES),
                "scaler_mean": c["scaler_mean"],
                "scaler_scale": c["scaler_scale"],
                "coefficients": c["coefficients"],
                "intercept": c["intercept"],
                "constants_source": c["_source"],
                "display": "1 / mean of raw per-report scores (ReXrank)",
                "sub_metrics": sub_settings,
            },
            detailed=detailed,
            per_sample_detailed={f: columns[f] for f in FEATURES},
            display=display,
            display_transform="inverse",
            versions=versions,
        )
