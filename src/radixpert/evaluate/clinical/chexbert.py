"""The CheXbert labeler and its two metrics: F1-CheXbert and SembScore, from one encoder pass.

CheXbert (Smit et al. 2020) is bert-base-uncased with, on the final-layer [CLS] vector,
dropout and 14 linear heads: 13 of 4 classes (blank, positive, negative, uncertain) for
the observations below, in this order, and one of 2 classes (blank, positive) for
No Finding. The model here has exactly the modules and state-dict names of the original
`bert_labeler` (stanfordmlgroup/CheXbert src/models/bert_labeler.py), so `chexbert.pth`
(saved from nn.DataParallel: keys prefixed "module.", under "model_state_dict") loads
strictly.

Input as the original prepares it (src/bert_tokenizer.py): the report stripped, newlines
to spaces, runs of whitespace to one space; WordPiece tokens of bert-base-uncased,
[CLS] ... [SEP], cut to 512 tokens by keeping the first 511 and [SEP]; an empty report is
[CLS] [SEP]. Labels are the argmax of each head, mapped as label.py's save_preds does:
blank -> None, positive -> 1, negative -> 0, uncertain -> -1.

SembScore is the cosine similarity of the reference's and the candidate's final-layer
[CLS] vectors (before dropout), as CXR-Report-Metric computes it (run_eval.py
`add_semb_col`, vectors from CheXbert/src/encode.py with `bert_encoder(logits=False)`).

Each distinct text is encoded once: labels and [CLS] vector are cached per text, keyed by
content hash and by a hash of the checkpoint, so both metrics (and later runs) share them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
from radixpert.evaluate.cache import TextCache, file_sha256
from radixpert.vocab import OBSERVATIONS

log = logging.getLogger(__name__)

# Head order of chexbert.pth (CheXbert src/constants.py CONDITIONS).
CONDITIONS: tuple[str, ...] = (*OBSERVATIONS[1:], "No Finding")  # No Finding head last
# Class index of a head -> CheXpert value (label.py: 0 blank -> NaN, 3 -> -1, 2 -> 0).
CLASS_VALUES: tuple[int | None, ...] = (None, 1, 0, -1)
MAX_TOKENS = 512
CACHE_VERSION = 1  # bump when the computation of a cached value changes
# A buffer that transformers 3.x wrote into state dicts and later versions do not keep.
_POSITION_IDS = "bert.embeddings.position_ids"

_WS = re.compile(r"\s+")


def clean_report(text: str) -> str:
    """Whitespace as CheXbert's get_impressions_from_csv leaves it: single spaces, stripped."""
    return _WS.sub(" ", text.strip().replace("\n", " ")).strip()


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """CheXbert's input ids of a cleaned report (bert_tokenizer.tokenize)."""
    tokens = tokenizer.tokenize(text)
    if not tokens:
        return [tokenizer.cls_token_id, tokenizer.sep_token_id]
    ids = [tokenizer.cls_token_id, *tokenizer.convert_tokens_to_ids(tokens)]
    ids.append(tokenizer.sep_token_id)
    if len(ids) > MAX_TOKENS:
        ids = [*ids[: MAX_TOKENS - 1], tokenizer.sep_token_id]
    return ids


def labels_to_values(classes: Sequence[int]) -> dict[str, int | None]:
    """Head argmaxes (in CONDITIONS order) -> {observation: 1 / 0 / -1 / None}."""
    if len(classes) != len(CONDITIONS):
        raise ValueError(f"expected {len(CONDITIONS)} head outputs, got {len(classes)}")
    return {name: CLASS_VALUES[int(c)] for name, c in zip(CONDITIONS, classes)}


@functools.cache
def _labeler_class() -> type:
    """The CheXbert module class (defined lazily: this module imports without torch)."""
    import torch
    from transformers import BertModel

    class CheXbertLabeler(torch.nn.Module):
        """bert_labeler of CheXbert: BertModel, dropout, 13 four-class heads, one two-class."""

        def __init__(self, config: Any, p: float = 0.1) -> None:
            super().__init__()
            self.bert = BertModel(config)  # with its pooler: chexbert.pth holds it
            self.dropout = torch.nn.Dropout(p)
            hidden = config.hidden_size
            heads = [torch.nn.Linear(hidden, 4) for _ in range(len(CONDITIONS) - 1)]
            self.linear_heads = torch.nn.ModuleList([*heads, torch.nn.Linear(hidden, 2)])

        def forward(self, input_ids: Any, attention_mask: Any) -> tuple[Any, list[Any]]:
            """Final-layer [CLS] vectors (B, H) and the 14 heads' logits."""
            cls = self.bert(input_ids, attention_mask=attention_mask)[0][:, 0, :]
            dropped = self.dropout(cls)
            return cls, [head(dropped) for head in self.linear_heads]

    return CheXbertLabeler


def build_labeler(config: Any) -> Any:
    """A randomly initialised CheXbert labeler for a BertConfig (weights come from load)."""
    return _labeler_class()(config)


def load_checkpoint(model: Any, path: Path) -> None:
    """Load chexbert.pth into `model` strictly, naming every missing or unexpected key.

    Raises:
        ValueError: the file is not a CheXbert checkpoint for this backbone.
    """
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure: say which file
        raise ValueError(f"{path}: cannot be read as a torch checkpoint: {e}") from e
    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt:
        raise ValueError(f"{path}: no 'model_state_dict' (not a CheXbert training checkpoint)")
    # nn.DataParallel saved every key as "module.<name>"; label.py strips it.
    state = {k.removeprefix("module."): v for k, v in ckpt["model_state_dict"].items()}
    pos = state.pop(_POSITION_IDS, None)
    if pos is not None and not torch.equal(
        pos.flatten(), torch.arange(pos.numel(), dtype=pos.dtype)
    ):
        raise ValueError(f"{path}: {_POSITION_IDS} is not 0..n-1")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path} does not fit the backbone configuration: {e}") from e
    missing = [k for k in missing if k != _POSITION_IDS]
    if missing or unexpected:
        raise ValueError(
            f"{path} is not a CheXbert checkpoint: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )


@dataclass
class Encoded:
    """Encoder outputs for N texts: head argmaxes (N, 14) and [CLS] vectors (N, H)."""

    classes: np.ndarray
    cls: np.ndarray


class CheXbertEncoder:
    """CheXbert loaded once; labels and [CLS] vectors per text, cached.

    Args:
        chexbert_dir: folder holding chexbert.pth (weights "chexbert").
        bert_dir: bert-base-uncased folder with config.json and vocab.txt.
        device: "cpu", "cuda", "cuda:N", or None/"auto".
        batch_size: texts per forward pass (texts are batched by length).
    """

    def __init__(
        self,
        chexbert_dir: str | Path | None = None,
        bert_dir: str | Path | None = None,
        device: str | None = None,
        batch_size: int = 32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.chexbert_dir = weights.resolve("chexbert", chexbert_dir)
        self.bert_dir = weights.resolve("bert-base-uncased", bert_dir)
        self.checkpoint = self.chexbert_dir / "chexbert.pth"
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._tokenizer: Any = None
        self._device: str | None = None

    @functools.cached_property
    def settings(self) -> dict[str, Any]:
        """What the outputs depend on; also the cache scope."""
        return {
            "model": "CheXbert (Smit et al. 2020), bert-base-uncased backbone",
            "checkpoint_sha256": file_sha256(self.checkpoint),
            "backbone_files_sha256": hashlib.sha256(
                "|".join(
                    file_sha256(self.bert_dir / f) for f in ("config.json", "vocab.txt")
                ).encode()
            ).hexdigest()[:16],
            "max_tokens": MAX_TOKENS,
            "preprocessing": "strip, newlines to spaces, whitespace runs to one space",
            "truncation": "first 511 tokens + [SEP]",
            "cache_version": CACHE_VERSION,
        }

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import BertConfig, BertTokenizer

        self._tokenizer = BertTokenizer.from_pretrained(str(self.bert_dir))
        model = build_labeler(BertConfig.from_pretrained(str(self.bert_dir)))
        load_checkpoint(model, self.checkpoint)
        self._device = resolve_device(self.device)
        self._model = model.to(self._device).eval()
        log.info("CheXbert loaded from %s on %s", self.checkpoint, self._device)

    def encode(self, texts: Sequence[str], cache: bool = True) -> Encoded:
        """Labels and [CLS] vectors of each text, in order (each distinct text run once)."""
        cleaned = [clean_report(t) for t in texts]
        versions = package_versions("transformers")
        store = TextCache("chexbert", {**self.settings, **versions}, enabled=cache)
        known = store.get_many(cleaned)
        todo = [t for t in dict.fromkeys(cleaned) if t not in known]
        log.info("chexbert: %d texts, %d to encode", len(set(cleaned)), len(todo))
        if todo:
            fresh = self._run(todo)
            store.put_many(fresh)
            known.update(fresh)
        store.close()
        return Encoded(
            classes=np.array([known[t]["classes"] for t in cleaned], dtype=np.int64).reshape(
                len(cleaned), len(CONDITIONS)
            ),
            cls=np.stack([_unpack(known[t]["cls"]) for t in cleaned])
            if cleaned
            else np.zeros((0, 0), np.float32),
        )

    def _run(self, texts: list[str]) -> dict[str, dict[str, Any]]:
        import torch

        self._load()
        ids = {t: token_ids(self._tokenizer, t) for t in texts}
        cut = sum(len(v) == MAX_TOKENS for v in ids.values())
        if cut:
            log.warning("chexbert: %d text(s) reach %d tokens and may be cut", cut, MAX_TOKENS)
        order = sorted(texts, key=lambda t: len(ids[t]))  # batches of similar length
        pad = self._tokenizer.pad_token_id
        out: dict[str, dict[str, Any]] = {}
        with torch.no_grad(), progress(len(order), "chexbert") as bar:
            for i in range(0, len(order), self.batch_size):
                batch = order[i : i + self.batch_size]
                bar.update(len(batch))
                lens = [len(ids[t]) for t in batch]
                x = torch.full((len(batch), max(lens)), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), max(lens)), dtype=torch.float)
                for j, t in enumerate(batch):
                    x[j, : lens[j]] = torch.tensor(ids[t])
                    mask[j, : lens[j]] = 1
                cls, logits = self._model(x.to(self._device), mask.to(self._device))
                classes = torch.stack([lg.argmax(dim=1) for lg in logits], dim=1).cpu()
                cls = cls.float().cpu().numpy()
                for j, t in enumerate(batch):
                    out[t] = {"classes": classes[j].tolist(), "cls": _pack(cls[j])}
        return out


def _pack(vector: np.ndarray) -> str:
    """float32 vector -> base64 (exact, and a quarter of the size of a JSON list)."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()


def _unpack(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").copy()


_ENCODERS: dict[tuple[Any, ...], CheXbertEncoder] = {}


def shared_encoder(
    chexbert_dir: str | Path | None = None,
    bert_dir: str | Path | None = None,
    device: str | None = None,
    batch_size: int = 32,
) -> CheXbertEncoder:
    """One loaded encoder per (weights, device, batch size) in this process."""
    enc = CheXbertEncoder(chexbert_dir, bert_dir, device, batch_size)
    key = (str(enc.checkpoint.resolve()), str(enc.bert_dir.resolve()), device, batch_size)
    key += (enc.settings["checkpoint_sha256"], enc.settings["backbone_files_sha256"])
    return _ENCODERS.setdefault(key, enc)


class _CheXbertMetric(Metric):
    """Shared options and checks of the two CheXbert metrics."""

    higher_is_better = True
    requires = ("torch", "transformers")

    def __init__(
        self,
        chexbert_dir: str | Path | None = None,
        bert_dir: str | Path | None = None,
        device: str | None = None,
        batch_size: int = 32,
        cache: bool = True,
    ) -> None:
        self.chexbert_dir = Path(chexbert_dir).expanduser() if chexbert_dir else None
        self.bert_dir = Path(bert_dir).expanduser() if bert_dir else None
        self.device = device
        self.batch_size = batch_size
        self.cache = cache

    def check(self) -> str | None:
        return (
            super().check()
            or weights.status("bert-base-uncased", self.bert_dir)
            or weights.status("chexbert", self.chexbert_dir)
        )

    def ensure_available(self) -> None:
        """MetricUnavailable for missing packages; WeightsMissing (a subclass) for weights."""
        reason = super().check()
        if reason:
            raise MetricUnavailable(f"{self.name}: {reason}")
        reason = weights.status("bert-base-uncased", self.bert_dir) or weights.status(
            "chexbert", self.chexbert_dir
        )
        if reason:
            raise weights.WeightsMissing(f"{self.name}: {reason}")

    def _encoder(self) -> CheXbertEncoder:
        self.ensure_available()
        return shared_encoder(self.chexbert_dir, self.bert_dir, self.device, self.batch_size)

    def _encode_pairs(
        self, references: Sequence[str], candidates: Sequence[str]
    ) -> tuple[CheXbertEncoder, Encoded]:
        """The encoder and the outputs of references then candidates, in one pass."""
        if len(references) != len(candidates):
            raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
        encoder = self._encoder()
        return encoder, encoder.encode([*references, *candidates], cache=self.cache)


class CheXbertF1(_CheXbertMetric):
    """F1-CheXbert: CheXbert labels of reference and candidate compared per observation.

    The scoring (14 and 5 observations, micro and macro) is `label_f1_results` of
    radixpert.evaluate.clinical.label_f1; this class supplies the labels.

    Args:
        chexbert_dir: folder with chexbert.pth; default the "chexbert" weights folder.
        bert_dir: bert-base-uncased folder (config.json, vocab.txt).
        device: "cpu", "cuda", or None/"auto".
        batch_size: texts per forward pass.
        cache: read and write the per-text cache.
    """

    name = "chexbert"
    description = "F1-CheXbert-14 / -5 from the CheXbert labeler"

    def label(self, texts: Sequence[str]) -> list[dict[str, int | None]]:
        """CheXbert labels {observation: 1/0/-1/None} of each text."""
        encoded = self._encoder().encode(texts, cache=self.cache)
        return [labels_to_values(row) for row in encoded.classes]

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        from radixpert.evaluate.clinical.label_f1 import label_f1_results

        encoder, enc = self._encode_pairs(references, candidates)
        values = [labels_to_values(row) for row in enc.classes]
        n = len(references)
        settings = {
            **encoder.settings,
            "labeler": "CheXbert",
            "label_values": "blank None, positive 1, negative 0, uncertain -1 (label.py)",
        }
        result = label_f1_results("f1-chexbert", values[:n], values[n:], settings)
        versions = package_versions("torch", "transformers")
        for r in result.flatten():
            r.versions = {**versions, **r.versions}
        return result


class SembScore(_CheXbertMetric):
    """SembScore: cosine similarity of CheXbert final-layer [CLS] vectors per pair.

    Computed in float64 from the float32 vectors (CXR-Report-Metric uses float32 numpy;
    the two agree to float32 rounding). A zero vector, which a LayerNorm output cannot
    be, would score 0.

    Args: as `CheXbertF1`.
    """

    name = "semb-score"
    description = "cosine of CheXbert [CLS] embeddings"

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        encoder, enc = self._encode_pairs(references, candidates)
        n = len(references)
        ref, cand = enc.cls[:n].astype(np.float64), enc.cls[n:].astype(np.float64)
        scores = []
        for a, b in zip(ref, cand):
            norm = float(np.linalg.norm(a) * np.linalg.norm(b))
            scores.append(float(a @ b) / norm if norm > 0 else 0.0)
        settings = {**encoder.settings, "similarity": "cosine of final-layer [CLS]"}
        return MetricResult(
            name=self.name,
            aggregate=mean(scores),
            per_sample=scores,
            higher_is_better=True,
            settings=settings,
            versions=package_versions("torch", "transformers"),
        )
