"""RaTEScore (Zhao et al. 2024): entity-aware similarity of radiology reports.

Computed with the RaTEScore package (0.6.0) and its two models, read from radixpert's
weights folders: RaTE-NER-DeBERTa (`rate-ner-deberta`, token classification over
ABNORMALITY, NON-ABNORMALITY, DISEASE, NON-DISEASE and ANATOMY in B-/I- tags plus O) and
BioLORD-2023-C (`biolord-2023-c`, entity embeddings: the [CLS] vector of the last layer).

Per report: sentences from medspacy's PyRuSH splitter, entities from the NER model, one
embedding per entity; then for a pair, the package's `compute` in both directions (each
entity matched to its most similar entity of the other report, weighted by the affinity
matrix of the two entity types and by `neg_weight` for a negated/non-negated type pair)
and the harmonic mean of the two. A pair where either report has no entity scores 0.5,
the package's rule. The "long" affinity matrix is the package default.

The package is used for everything it does (models, sentence splitting, NER decoding,
embedding, matching); this module only calls its functions per distinct text instead of
per list, for three reasons:

* A report with no sentence left after the package's splitter (empty, blank, or only
  fragments shorter than 3 characters) yields no NER entry in `RaTEScore.compute_score`,
  which then pairs every later candidate with the wrong reference. Here such a report has
  no entities, so its pair scores 0.5 (the package's rule for entity-less reports), and
  such reports are counted.
* NER output is cached per text (content hash; scope = NER weights, package versions), so
  references shared by many models are tagged once.
* NER runs in batches of `batch_size` sentences (the package default is 1); padding is
  masked, so a sentence's tags do not depend on its batch.

Dependencies: RaTEScore 0.6.0 declares none (its setup.py has `install_requires=[]`) but
imports torch, transformers, medspacy (with PyRuSH and context), pandas and numpy when
loaded, and loads a medspacy pipeline at import (a few seconds). RaTE-NER-DeBERTa ships a
tokenizer.json, so no sentencepiece is needed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radixpert import weights
from radixpert.evaluate.base import (
    Metric,
    MetricResult,
    mean,
    package_versions,
    progress,
    resolve_device,
)
from radixpert.evaluate.cache import TextCache, file_sha256, files_fingerprint

log = logging.getLogger(__name__)

NER_WEIGHTS = "rate-ner-deberta"
EMBEDDING_WEIGHTS = "biolord-2023-c"
MATRICES = ("long", "short")
NO_ENTITY_SCORE = 0.5  # RaTEScore.compute_score: "if the length of gt or pred is 0"
CACHE_VERSION = 1  # bump when the content of a cached NER result changes
_MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "tokenizer.json",
    "spm.model",
    "vocab.txt",
    "tokenizer_config.json",
)


def folder_fingerprint(folder: Path) -> str:
    """One hash over the files of a model folder that decide its outputs."""
    return files_fingerprint(folder, _MODEL_FILES)


def _quiet_pyrush() -> None:
    """Silence PyRuSH's loguru DEBUG lines (one per token) printed on every report."""
    try:
        from loguru import logger
    except ImportError:  # medspacy without loguru: nothing to silence
        return
    logger.disable("PyRuSH")


class RaTEScoreMetric(Metric):
    """RaTEScore of candidate against reference reports (higher is better, 0 to 1).

    Args:
        ner_model_dir: RaTE-NER-DeBERTa folder; default the `rate-ner-deberta` weights
            folder (`$RADIXPERT_HOME/models/rate-ner-deberta`).
        embedding_model_dir: BioLORD-2023-C folder; default the `biolord-2023-c` folder.
        affinity_matrix: "long" (package default), "short", or a JSON file in the
            package's format (`"<type>_<type>": weight`, plus `"neg_weight"`).
        batch_size: sentences per NER forward pass.
        device: "cpu", "cuda", "cuda:N", or None/"auto" for cuda when available.
        cache: cache NER entities per text.
    """

    name = "ratescore"
    higher_is_better = True
    requires = ("torch", "transformers", "RaTEScore", "medspacy", "pandas")
    description = "RaTEScore (RaTE-NER-DeBERTa entities + BioLORD-2023-C embeddings)"

    def __init__(
        self,
        ner_model_dir: str | Path | None = None,
        embedding_model_dir: str | Path | None = None,
        affinity_matrix: str = "long",
        batch_size: int = 16,
        device: str | None = None,
        cache: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if affinity_matrix.lower() not in MATRICES and not Path(affinity_matrix).is_file():
            raise ValueError(
                f"affinity_matrix must be one of {MATRICES} or a JSON file, got {affinity_matrix!r}"
            )
        self.ner_model_dir = Path(ner_model_dir).expanduser() if ner_model_dir else None
        self.embedding_model_dir = (
            Path(embedding_model_dir).expanduser() if embedding_model_dir else None
        )
        self.affinity_matrix = affinity_matrix
        self.batch_size = int(batch_size)
        self.device = device
        self.cache = cache
        self._scorer: Any = None

    def check(self) -> str | None:
        return (
            super().check()
            or weights.status(NER_WEIGHTS, self.ner_model_dir)
            or weights.status(EMBEDDING_WEIGHTS, self.embedding_model_dir)
        )

    # -- loading -------------------------------------------------------------------------

    def _folders(self) -> tuple[Path, Path]:
        return (
            weights.resolve(NER_WEIGHTS, self.ner_model_dir),
            weights.resolve(EMBEDDING_WEIGHTS, self.embedding_model_dir),
        )

    def _load(self) -> Any:
        """The package's `RaTEScore` scorer, built from the local folders on our device."""
        if self._scorer is None:
            self.ensure_available()
            import torch

            _quiet_pyrush()
            from RaTEScore import RaTEScore

            ner, emb = self._folders()
            device = resolve_device(self.device)
            scorer = RaTEScore(
                bert_model=str(ner),
                eval_model=str(emb),
                batch_size=self.batch_size,
                use_gpu=device.startswith("cuda"),
                affinity_matrix=self.affinity_matrix,
            )
            if device not in ("cpu", "cuda"):  # a GPU index: the package only knows "cuda"
                scorer.device = torch.device(device)
                scorer.model.to(scorer.device)
                scorer.eval_model.to(scorer.device)
            self._scorer = scorer
        return self._scorer

    def settings(self) -> dict[str, Any]:
        """Everything the scores depend on."""
        ner, emb = self._folders()
        matrix = self.affinity_matrix
        if matrix.lower() in MATRICES:
            matrix_label = f"{matrix.lower()} (RaTEScore DEFAULT_MATRIX_{matrix.upper()})"
        else:
            matrix_label = f"{Path(matrix).name} sha256 {file_sha256(Path(matrix))[:16]}"
        return {
            "ner_model": ner.name,
            "ner_weights_sha256": folder_fingerprint(ner),
            "embedding_model": emb.name,
            "embedding_weights_sha256": folder_fingerprint(emb),
            "affinity_matrix": matrix_label,
            "ner_batch_size": self.batch_size,
            "sentence_splitter": "medspacy PyRuSH (RaTEScore.utils.sentence_split)",
            "no_entity_score": NO_ENTITY_SCORE,
            "report_without_sentences": "no entities (pair scores 0.5), counted",
            "cache_version": CACHE_VERSION,
        }

    # -- entities ------------------------------------------------------------------------

    def entities(self, texts: Sequence[str]) -> dict[str, dict[str, Any]]:
        """NER result of each distinct text: {"sentences": n, "entities": [(text, type)]}."""
        from RaTEScore.score import run_ner
        from RaTEScore.utils import sentence_split

        scorer = self._load()
        ner, _ = self._folders()
        scope = {
            "ner_weights_sha256": folder_fingerprint(ner),
            "cache_version": CACHE_VERSION,
            **package_versions("RaTEScore", "medspacy", "transformers", "torch"),
        }
        distinct = list(dict.fromkeys(texts))
        store = TextCache("ratescore-ner", scope, enabled=self.cache)
        known = store.get_many(distinct)
        todo = [t for t in distinct if t not in known]
        log.info("ratescore: %d distinct texts, %d to tag", len(distinct), len(todo))
        # See the module docstring: reports without a sentence must not reach run_ner.
        n_sentences = {t: len(sentence_split([t])[0]) for t in todo}
        empty = {t: {"sentences": 0, "entities": []} for t in todo if not n_sentences[t]}
        store.put_many(empty)
        known.update(empty)
        tagged = [t for t in todo if n_sentences[t]]
        chunk = max(64, 4 * self.batch_size)
        with progress(len(tagged), "ratescore") as bar:
            for start in range(0, len(tagged), chunk):
                part = tagged[start : start + chunk]
                pairs = run_ner(
                    part,
                    scorer.idx2label,
                    scorer.tokenizer,
                    scorer.model,
                    scorer.device,
                    scorer.batch_size,
                )
                if len(pairs) != len(part):  # the package's alignment assumption broke
                    raise RuntimeError(
                        f"RaTEScore NER returned {len(pairs)} reports for {len(part)}"
                    )
                fresh = {
                    t: {"sentences": n_sentences[t], "entities": [list(x) for x in ps]}
                    for t, ps in zip(part, pairs)
                }
                store.put_many(fresh)
                known.update(fresh)
                bar.update(len(part))
        store.close()
        return {
            t: {"sentences": v["sentences"], "entities": [tuple(x) for x in v["entities"]]}
            for t, v in known.items()
        }

    # -- scoring -------------------------------------------------------------------------

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        if len(references) != len(candidates):
            raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
        self.ensure_available()
        import torch
        from RaTEScore.score import process_embedding
        from RaTEScore.utils import compute as directed_score

        scorer = self._load()
        tagged = self.entities([*references, *candidates])
        with torch.no_grad():
            embedded = {
                t: process_embedding(
                    v["entities"], scorer.eval_tokenizer, scorer.eval_model, scorer.device
                )
                for t, v in tagged.items()
            }
        scores, precision, recall = [], [], []
        n_ref, n_cand = [], []
        for ref, cand in zip(references, candidates):
            gt_emb, gt_types = embedded[ref]
            pred_emb, pred_types = embedded[cand]
            n_ref.append(float(len(gt_types)))
            n_cand.append(float(len(pred_types)))
            if len(gt_emb) == 0 or len(pred_emb) == 0:
                scores.append(NO_ENTITY_SCORE)
                precision.append(math.nan)
                recall.append(math.nan)
                continue
            # Named as in RaTEScore.compute_score: "precision" matches reference entities.
            p = float(
                directed_score(gt_emb, pred_emb, gt_types, pred_types, scorer.affinity_matrix)
            )
            r = float(
                directed_score(pred_emb, gt_emb, pred_types, gt_types, scorer.affinity_matrix)
            )
            precision.append(p)
            recall.append(r)
            scores.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
        with_entities = [i for i, x in enumerate(precision) if not math.isnan(x)]
        return MetricResult(
            name=self.name,
            aggregate=mean(scores),
            per_sample=scores,
            higher_is_better=True,
            settings=self.settings(),
            detailed={
                "n": len(scores),
                "n_pairs_without_entities": len(scores) - len(with_entities),
                "n_texts_without_sentences": sum(not v["sentences"] for v in tagged.values()),
                "mean_entities_reference": mean(n_ref),
                "mean_entities_candidate": mean(n_cand),
                "precision": mean([precision[i] for i in with_entities]),
                "recall": mean([recall[i] for i in with_entities]),
            },
            per_sample_detailed={
                "precision": precision,
                "recall": recall,
                "entities_reference": n_ref,
                "entities_candidate": n_cand,
            },
            versions=package_versions("RaTEScore", "medspacy", "transformers", "torch"),
        )
