"""BERTScore as ReXrank and RadCliQ-v1 compute it: distilroberta-base, layer 5, rescaled.

The definition is that of the bert-score package (0.3.13, the version the reference
implementations used is 0.3.11; the scoring code is unchanged): tokens of candidate and
reference embedded by the first `num_layers` layers, greedy cosine matching, precision,
recall and F1 with idf weights (1 for every token but <s> and </s> when idf is off), then
`(x - b) / (1 - b)` with the package's own baseline `b` for distilroberta-base, layer 5.
Texts first have runs of spaces collapsed, as CXR-Report-Metric's `add_bertscore_col`
does (`re.sub(r" +", " ", text)`; newlines and tabs are kept, as there).

The package supplies the model loading and layer cut (`get_model`), padding, the
forward pass (`bert_encode`) and the baseline file. Some things differ from calling
`bert_score.score` on a batch, on purpose:

* The tokenizer is loaded with `add_prefix_space=True` and `model_max_length=512`.
  bert-score asks for both at encode time, but transformers 5 ignores the per-call
  `add_prefix_space` and no longer knows distilroberta-base's 512-token limit, which would
  change every score (first word without its leading-space token) or fail outright.
* Token ids (`encode`) and the idf table are made here as bert-score's `sent_encode` and
  `get_idf_dict` make them: under transformers 5 `sent_encode` fails on an empty text.
* Each pair is matched on its own. bert-score pads the pairs of one batch together and
  lets padded positions take part in the max with similarity 0, so a pair's score can
  depend on its neighbours when all of a token's similarities are negative. Here a pair's
  score is what `bert_score.score([candidate], [reference])` returns for it alone.
* Pairs are scored in chunks, embeddings are computed in length-sorted batches (which
  moves a score by float rounding at most, ~1e-7), and, with idf off, each
  (reference, candidate) pair is cached by content hash.

With `idf=True` the idf weights come from the references passed to `compute`, as RadEval
does (`idf_sents=refs`): `idf(t) = log((N + 1) / (df(t) + 1))`. With very few references
these weights degenerate: for a single reference every token it contains gets
`log(2/2) = 0`, so an exact match has all-zero weights, precision and recall 0/0 (nan)
and F1 0, rescaled to about -5.5. Per-report scores then depend on the idf corpus, by
definition; use idf off (the RadCliQ / ReXrank setting) to compare single reports.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radixpert import weights
from radixpert.errors import MetricUnavailable
from radixpert.evaluate.base import (
    Metric,
    MetricResult,
    mean,
    package_versions,
    progress,
    resolve_device,
)
from radixpert.evaluate.cache import TextCache, files_fingerprint

log = logging.getLogger(__name__)

MODEL = "distilroberta-base"
NUM_LAYERS = 5  # bert-score's model2layers["distilroberta-base"]
MAX_TOKENS = 512  # distilroberta-base's limit (514 positions, offset by the padding index)
CACHE_VERSION = 1  # bump when the computation of a cached value changes

_SPACES = re.compile(r" +")


def collapse_spaces(text: str) -> str:
    """Collapse runs of spaces to one, as CXR-Report-Metric does before BERTScore."""
    return _SPACES.sub(" ", text)


def _weights_fingerprint(folder: Path) -> str:
    """One hash over the files that define the embeddings: weights, config, vocab, merges."""
    weights_file = "model.safetensors"  # what transformers reads when both are present
    if not (folder / weights_file).is_file():
        weights_file = "pytorch_model.bin"
    return files_fingerprint(folder, (weights_file, "config.json", "vocab.json", "merges.txt"))


def baseline_file() -> Path:
    """The rescale baseline that bert-score ships for distilroberta-base (lang en)."""
    spec = importlib.util.find_spec("bert_score")
    if spec is None or not spec.submodule_search_locations:
        raise MetricUnavailable("bertscore: the bert-score package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "rescale_baseline/en/"
    return path / f"{MODEL}.tsv"


def read_baseline(path: Path, num_layers: int) -> tuple[float, float, float]:
    """(P, R, F) baseline of layer `num_layers` from a bert-score `LAYER,P,R,F` file.

    bert-score selects the row by position (`iloc[num_layers]`); the LAYER column is
    checked to agree.
    """
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    row = rows[num_layers]
    if int(row["LAYER"]) != num_layers:
        raise ValueError(f"{path}: row {num_layers} is layer {row['LAYER']}")
    return float(row["P"]), float(row["R"]), float(row["F"])


class BertScore(Metric):
    """BERTScore F1 (ReXrank / RadCliQ-v1 variant); precision and recall alongside.

    Args:
        idf: weight tokens by idf computed from the references of each `compute` call
            (RadEval's choice); off in ReXrank and CXR-Report-Metric. See the module
            docstring for how idf degenerates with few references.
        model_dir: folder with distilroberta-base (config.json, model weights, vocab.json,
            merges.txt); default `$RADIXPERT_HOME/models/distilroberta-base` or
            `$RADIXPERT_WEIGHTS_DISTILROBERTA_BASE`.
        batch_size: texts per forward pass.
        device: "cpu", "cuda", "cuda:N", or None/"auto" for cuda when available.
        cache: cache scores per (reference, candidate) pair (idf off only).
    """

    name = "bertscore"
    higher_is_better = True
    requires = ("torch", "transformers", "bert_score")
    description = "BERTScore F1, distilroberta-base layer 5, baseline-rescaled"

    def __init__(
        self,
        idf: bool = False,
        model_dir: str | Path | None = None,
        batch_size: int = 64,
        device: str | None = None,
        cache: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.idf = bool(idf)
        self.name = "bertscore-idf" if self.idf else "bertscore"
        self.model_dir = Path(model_dir).expanduser() if model_dir else None
        self.batch_size = int(batch_size)
        self.device = device
        self.cache = cache
        self._loaded: tuple[Any, Any, str] | None = None  # tokenizer, model, device

    def check(self) -> str | None:
        return super().check() or weights.status(MODEL, self.model_dir)

    def ensure_available(self) -> None:
        """MetricUnavailable for missing packages; WeightsMissing (a subclass) for weights."""
        reason = super().check()
        if reason:
            raise MetricUnavailable(f"{self.name}: {reason}")
        reason = weights.status(MODEL, self.model_dir)
        if reason:
            raise weights.WeightsMissing(f"{self.name}: {reason}")

    # -- loading -------------------------------------------------------------------------

    def _load(self) -> tuple[Any, Any, str]:
        if self._loaded is None:
            self.ensure_available()
            from bert_score.utils import get_model
            from transformers import AutoTokenizer

            folder = weights.resolve(MODEL, self.model_dir)
            # See the module docstring: both settings are what bert-score expected of the
            # tokenizer of its era and must be fixed at load time with transformers 5.
            tokenizer = AutoTokenizer.from_pretrained(str(folder), add_prefix_space=True)
            tokenizer.model_max_length = MAX_TOKENS
            model = get_model(str(folder), NUM_LAYERS, all_layers=False)
            device = resolve_device(self.device)
            model.to(device)
            self._loaded = (tokenizer, model, device)
        return self._loaded

    def settings(self) -> dict[str, Any]:
        """Everything the scores depend on (also the cache scope)."""
        folder = weights.resolve(MODEL, self.model_dir)
        base = baseline_file()
        return {
            "model": MODEL,
            "weights_sha256": _weights_fingerprint(folder),
            "num_layers": NUM_LAYERS,
            "idf": self.idf,
            "idf_corpus": "references of the call" if self.idf else None,
            "rescale_with_baseline": True,
            "baseline": f"bert_score/rescale_baseline/en/{base.name}",
            "baseline_prf": list(read_baseline(base, NUM_LAYERS)),
            "lang": "en",
            "max_tokens": MAX_TOKENS,
            "tokenizer": "byte-level BPE, prefix space added (bert-score sent_encode)",
            "preprocessing": "runs of spaces collapsed (re.sub(' +', ' ', text))",
            "matching": "greedy cosine per pair (no cross-pair padding)",
            "cache_version": CACHE_VERSION,
        }

    # -- scoring -------------------------------------------------------------------------

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        if len(references) != len(candidates):
            raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
        self.ensure_available()
        refs = [collapse_spaces(r) for r in references]
        cands = [collapse_spaces(c) for c in candidates]
        settings = self.settings()
        versions = package_versions("bert-score", "transformers", "torch")
        # The transformers version is part of the scope: it changed tokenisation before.
        store = TextCache(
            "bertscore", {**settings, **versions}, enabled=self.cache and not self.idf
        )
        keys = [json.dumps([r, c], ensure_ascii=False) for r, c in zip(refs, cands)]
        known = store.get_many(keys)
        todo = list(dict.fromkeys(k for k in keys if k not in known))
        log.info("bertscore: %d pairs, %d to score, %d cached", len(keys), len(todo), len(known))
        if todo:
            scored = self._score_pairs([json.loads(k) for k in todo], refs)
            fresh = dict(zip(todo, scored))
            store.put_many(fresh)
            known.update(fresh)
        store.close()
        # rescaled precision, recall and F1 of each pair, in input order
        p = [known[k][0] for k in keys]
        r = [known[k][1] for k in keys]
        f = [known[k][2] for k in keys]
        return MetricResult(
            name=self.name,
            aggregate=mean(f),
            per_sample=f,
            higher_is_better=True,
            settings=settings,
            detailed={"precision": _nanmean(p), "recall": _nanmean(r), "f1": mean(f)},
            per_sample_detailed={"precision": p, "recall": r},
            versions=versions,
        )

    def _idf_dict(self, tokenizer: Any, refs: list[str]) -> Any:
        """bert-score's idf table: from the references, or 1 for all but <s> and </s>."""
        if not self.idf:
            idf = defaultdict(lambda: 1.0)
            idf[tokenizer.sep_token_id] = 0
            idf[tokenizer.cls_token_id] = 0
            return idf
        if len(refs) < 10:
            # A token found in every reference gets log((n+1)/(n+1)) = 0; with one
            # reference that is every token of it (see the module docstring).
            log.warning(
                "bertscore-idf: idf weights from only %d reference(s) are degenerate; "
                "per-report scores depend on this corpus; prefer idf off",
                len(refs),
            )
        # get_idf_dict of bert-score, with our encoder (its sent_encode fails on empty
        # texts with transformers 5): document frequency over the references as given.
        counts = Counter(i for ref in refs for i in set(encode(tokenizer, ref)))
        n = len(refs)
        idf = defaultdict(lambda: math.log((n + 1) / 1))
        idf.update({i: math.log((n + 1) / (c + 1)) for i, c in counts.items()})
        return idf

    def _score_pairs(
        self, pairs: list[list[str]], idf_refs: list[str]
    ) -> list[tuple[float, float, float]]:
        """Rescaled (P, R, F) of each [reference, candidate] pair."""
        import torch

        tokenizer, model, device = self._load()
        idf_dict = self._idf_dict(tokenizer, idf_refs)
        base = torch.tensor(read_baseline(baseline_file(), NUM_LAYERS), dtype=torch.float32)
        out: list[tuple[float, float, float]] = []
        # Chunks bound the memory held by token embeddings (a pair's score does not depend
        # on its chunk); within a chunk, texts are embedded in length-sorted batches and
        # pairs matched batch_size at a time.
        chunk = max(256, 4 * self.batch_size)
        with progress(len(pairs), "bertscore", unit="pairs") as bar:
            for start in range(0, len(pairs), chunk):
                part = pairs[start : start + chunk]
                emb = self._embed({t for pair in part for t in pair}, tokenizer, model, device)
                for i in range(0, len(part), self.batch_size):
                    sub = part[i : i + self.batch_size]
                    raw = _match(
                        [emb[r] for r, _ in sub], [emb[c] for _, c in sub], idf_dict, device
                    )
                    scaled = (raw - base) / (1 - base)
                    out.extend(tuple(float(x) for x in row) for row in scaled.tolist())
                bar.update(len(part))
        return out

    def _embed(
        self, texts: set[str], tokenizer: Any, model: Any, device: str
    ) -> dict[str, tuple[Any, list[int]]]:
        """Layer-5 token embeddings (on CPU) and token ids of each text."""
        from bert_score.utils import bert_encode, padding

        ids = {t: encode(tokenizer, t) for t in texts}
        truncated = sum(len(v) >= MAX_TOKENS for v in ids.values())
        if truncated:
            log.warning("bertscore: %d text(s) cut to %d tokens", truncated, MAX_TOKENS)
        order = sorted(ids, key=lambda t: len(ids[t]))
        out = {}
        for i in range(0, len(order), self.batch_size):
            batch = order[i : i + self.batch_size]
            padded, lens, mask = padding([ids[t] for t in batch], tokenizer.pad_token_id)
            emb = bert_encode(model, padded.to(device), attention_mask=mask.to(device)).cpu()
            for j, t in enumerate(batch):
                out[t] = (emb[j, : lens[j]], ids[t])
        return out


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids as bert-score's `sent_encode` makes them for RoBERTa.

    Stripped text, <s> ... </s>, cut to the tokenizer's `model_max_length`; an empty text
    is `<s></s>`. The tokenizer must add the prefix space itself (see `BertScore._load`).
    """
    text = text.strip()
    if not text:
        return [tokenizer.cls_token_id, tokenizer.sep_token_id]
    return tokenizer.encode(
        text, add_special_tokens=True, max_length=tokenizer.model_max_length, truncation=True
    )


def _match(refs: list[Any], hyps: list[Any], idf_dict: Any, device: str) -> Any:
    """bert-score's greedy_cos_idf, each pair over its own tokens only.

    Args:
        refs, hyps: per pair, (token embeddings [L, d], token ids).
        idf_dict: token id -> idf weight.

    Returns:
        Tensor [N, 3] of raw (P, R, F).
    """
    import torch
    from torch.nn.utils.rnn import pad_sequence

    def side(items: list[Any]) -> tuple[Any, Any, Any, Any]:
        emb = [e / torch.norm(e, dim=-1, keepdim=True) for e, _ in items]
        idf = [torch.tensor([idf_dict[i] for i in ids], dtype=torch.float) for _, ids in items]
        lens = torch.tensor([len(ids) for _, ids in items])
        mask = torch.arange(int(lens.max()))[None, :] < lens[:, None]
        return (
            pad_sequence(emb, batch_first=True).to(device),
            pad_sequence(idf, batch_first=True).to(device),
            mask.to(device),
            lens.to(device),
        )

    r_emb, r_idf, r_mask, r_len = side(refs)
    h_emb, h_idf, h_mask, h_len = side(hyps)
    with torch.no_grad():
        sim = torch.bmm(h_emb, r_emb.transpose(1, 2))
        # Padding must never win the max (bert-score lets it, with value 0).
        sim = sim.masked_fill(~(h_mask[:, :, None] & r_mask[:, None, :]), -math.inf)
        word_p = sim.max(dim=2).values.masked_fill(~h_mask, 0.0)
        word_r = sim.max(dim=1).values.masked_fill(~r_mask, 0.0)
        p = (word_p * (h_idf / h_idf.sum(dim=1, keepdim=True))).sum(dim=1)
        r = (word_r * (r_idf / r_idf.sum(dim=1, keepdim=True))).sum(dim=1)
        f = 2 * p * r / (p + r)
        # As bert-score: a text of only <s></s> (empty) scores P = R = 0, and F is 0
        # wherever it is undefined.
        empty = h_len.eq(2) | r_len.eq(2)
        if bool(empty.any()):
            log.warning("bertscore: %d pair(s) with an empty text score 0", int(empty.sum()))
        p = p.masked_fill(empty, 0.0)
        r = r.masked_fill(empty, 0.0)
        f = f.masked_fill(torch.isnan(f), 0.0)
    return torch.stack((p, r, f), dim=-1).cpu()


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return mean(finite) if finite else math.nan
