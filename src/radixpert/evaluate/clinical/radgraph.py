"""RadGraph-F1: overlap of the RadGraph entities and relations of reference and candidate.

Annotations come from the radgraph package (0.1.18) and its DyGIE++ model, loaded from
radixpert's weights folder (`radgraph.tar.gz`, or `radgraph-xl.tar.gz`), never downloaded.

Two scores are computed from the same annotations:

* **combined** (the default, RadCliQ's `radgraph_combined`, rajpurkarlab/CXR-Report-Metric
  `CXRMetric/radgraph_evaluate_model.py`): per report, entities are the set of
  `(tokens, label)` and relations the set of `((src tokens, src label), (tgt tokens,
  tgt label), relation type)`; F1 of the reference set against the candidate set, where
  precision or recall with a zero denominator is 0 (so two empty sets give F1 = 0, as
  `compute_f1` there); the score is `(entity F1 + relation F1) / 2`. Reports are fed to the
  original RadGraph model (`model_type="radgraph"`), tokenised as that code and the
  package do (`re.sub` around punctuation, then split on whitespace).
* **rewards** (`F1RadGraph` of the radgraph package): `simple`, `partial` and `complete`
  as `radgraph.rewards.compute_reward` defines them, 0 when either report has no entity.
  The registry's `radgraph-xl-partial` is the partial reward of RadGraph-XL.

An empty (or all-whitespace) report has no entities: every score of its pair is 0 and the
pair is counted in the mean, as CXR-Report-Metric (an empty generated report is a 0 match;
an empty reference would make it fail) and `F1RadGraph` (reward 0) do.

Annotations are cached per text (content hash; scope = model type, archive hash, backbone
tokenizer, package versions), so references shared by many models are annotated once.

transformers 5 removed two tokenizer methods the radgraph package's vendored AllenNLP calls
(`encode_plus`, `build_inputs_with_special_tokens`); this module adds equivalents to the
tokenizers that package loads, and to no other object (see `_patch_radgraph_tokenizers`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import tarfile
import tempfile
import types
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radixpert import weights
from radixpert.evaluate.base import Metric, MetricResult, mean, package_versions, progress
from radixpert.evaluate.cache import TextCache, file_sha256
from radixpert.paths import cache_dir

log = logging.getLogger(__name__)

MODEL_TYPES = ("radgraph", "radgraph-xl")
REWARD_LEVELS = ("combined", "simple", "partial", "complete")
# Weights entry of each model type (weights.REGISTRY) and the archive file it holds.
WEIGHTS = {"radgraph": "radgraph", "radgraph-xl": "radgraph-xl"}
ARCHIVES = {"radgraph": "radgraph.tar.gz", "radgraph-xl": "radgraph-xl.tar.gz"}
# The archives name their BERT backbone by hub id in config.json; only its configuration
# and tokenizer are read (the weights are in weights.th). A weights entry of this name, if
# registered, supplies them offline.
BACKBONE_WEIGHTS = "biomedbert-base-uncased"
BACKBONE_IDS = {
    "microsoft/biomednlp-pubmedbert-base-uncased-abstract-fulltext",
    "microsoft/biomednlp-biomedbert-base-uncased-abstract-fulltext",
}
CACHE_VERSION = 1  # bump when the content of a cached annotation changes
_MARKER = ".radixpert-extracted.json"

Annotation = dict[str, Any]


# -- scoring on annotations (no model) ----------------------------------------------------


def entity_relation_sets(annotation: Annotation) -> tuple[set, set]:
    """Entity and relation sets of one RadGraph annotation, as CXR-Report-Metric builds them.

    Args:
        annotation: `{"entities": {id: {"tokens", "label", "relations": [[type, id], ...]}}}`
            (the radgraph package's output for one report).

    Returns:
        `{(tokens, label)}` and `{((tokens, label), (target tokens, target label), type)}`.
    """
    entities = annotation.get("entities", {})
    ents = {(e["tokens"], e["label"]) for e in entities.values()}
    rels = set()
    for e in entities.values():
        for rel_type, target in e.get("relations", []):
            t = entities[target]
            rels.add(((e["tokens"], e["label"]), (t["tokens"], t["label"]), rel_type))
    return ents, rels


def set_f1(test: set, retrieved: set) -> float:
    """F1 of `retrieved` against `test`; a zero denominator gives 0 (two empty sets: 0)."""
    tp = len(test & retrieved)
    fp = len(retrieved) - tp
    fn = len(test) - tp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def combined_f1(reference: Annotation, candidate: Annotation) -> tuple[float, float, float]:
    """(entity F1, relation F1, their mean) of one report pair (RadCliQ's definition)."""
    ref_e, ref_r = entity_relation_sets(reference)
    cand_e, cand_r = entity_relation_sets(candidate)
    ent = set_f1(ref_e, cand_e)
    rel = set_f1(ref_r, cand_r)
    return ent, rel, (ent + rel) / 2


def rewards(reference: Annotation, candidate: Annotation) -> tuple[float, float, float]:
    """(simple, partial, complete) rewards of the radgraph package for one report pair."""
    from radgraph.rewards import compute_reward

    return tuple(float(x) for x in compute_reward(candidate, reference, "all"))


# -- archive and backbone -----------------------------------------------------------------


def _read_marker(model_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((model_dir / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        return True
    except OSError:
        return False


def extract_archive(archive: Path, model_type: str) -> tuple[Path, dict[str, Any]]:
    """Extract a RadGraph archive once, into the layout `radgraph.RadGraph` reads.

    `RadGraph(model_type=T, model_cache_dir=ROOT)` loads `ROOT/T/{config.json, weights.th,
    vocabulary/}` and downloads only when that folder is missing or empty. ROOT is the
    sibling folder `extracted/` of the archive, or, when the weights folder is read-only,
    `$RADIXPERT_HOME/cache/radgraph/<archive hash>/`. A marker file records the archive's
    size, mtime and SHA-256, so later calls neither hash nor extract again.

    Returns:
        ROOT and the marker (with "sha256" and "backbone": the original model name).
    """
    st = archive.stat()
    sibling = archive.parent / "extracted"
    marker = _read_marker(sibling / model_type)
    if marker and (marker.get("size"), marker.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
        return sibling, marker
    sha = file_sha256(archive)
    fallback = cache_dir("radgraph") / sha[:16]
    marker = _read_marker(fallback / model_type)
    if marker and marker.get("sha256") == sha:
        return fallback, marker
    root = sibling if _writable(sibling) else fallback
    root.mkdir(parents=True, exist_ok=True)
    target = root / model_type
    log.info("radgraph: extracting %s into %s", archive, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_type}-", dir=root))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")  # refuses absolute paths and links out
            else:  # pragma: no cover - Python without PEP 706
                tar.extractall(tmp)
        config_path = tmp / "config.json"
        if not config_path.is_file() or not (tmp / "weights.th").is_file():
            raise weights.WeightsMissing(
                f"{archive} is not a RadGraph model archive: config.json and weights.th "
                "must be at its top level (as in StanfordAIMI/RRG_scorers)"
            )
        config = json.loads(config_path.read_text())
        marker = {
            "archive": archive.name,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256": sha,
            "backbone": _backbone_names(config)[0],
            "dropped_buffers": _drop_legacy_buffers(tmp / "weights.th"),
        }
        (tmp / _MARKER).write_text(json.dumps(marker, indent=1))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root, marker


# Buffers that BERT stopped saving (transformers >= 4.31 registers them non-persistent);
# a state dict saved before keeps them and then fails the package's strict loading.
_LEGACY_BUFFER = re.compile(r"\.embeddings\.(position_ids|token_type_ids)$")


def _drop_legacy_buffers(weights_file: Path) -> list[str]:
    """Remove BERT buffers that current transformers do not expect from an extracted weights.th.

    Their values are fixed (`arange` positions, zero token types) and are rebuilt by the
    model, so dropping them changes nothing; only our extracted copy is rewritten.

    Returns:
        The keys removed (none for an archive saved by a recent transformers).
    """
    import torch

    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    legacy = [k for k in state if _LEGACY_BUFFER.search(k)]
    if legacy:
        log.info("radgraph: dropping %d legacy BERT buffers from %s", len(legacy), weights_file)
        torch.save({k: v for k, v in state.items() if k not in legacy}, weights_file)
    return legacy


def _backbone_names(config: dict[str, Any]) -> tuple[str, str]:
    """Model names of the token indexer and the embedder in a RadGraph config.json."""
    reader = config["dataset_reader"]["token_indexers"]["bert"]["model_name"]
    embedder = config["model"]["embedder"]["token_embedders"]["bert"]["model_name"]
    return reader, embedder


def _set_backbone(model_dir: Path, name: str) -> None:
    """Point both backbone references of the extracted config.json at `name`."""
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    if _backbone_names(config) == (name, name):
        return
    config["dataset_reader"]["token_indexers"]["bert"]["model_name"] = name
    config["model"]["embedder"]["token_embedders"]["bert"]["model_name"] = name
    path.write_text(json.dumps(config, indent=1))


def _complete_backbone(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(
        (folder / f).is_file() for f in ("vocab.txt", "tokenizer.json")
    )


def resolve_backbone(original: str, backbone_dir: str | Path | None) -> tuple[str, str]:
    """Where the backbone's config and tokenizer are read from, and a label for settings.

    Order: `backbone_dir`; the weights entry `biomedbert-base-uncased` (when registered and
    complete, and the archive names a BiomedBERT/PubMedBERT id); a local folder named in the
    archive; the Hugging Face cache (read offline). Nothing is downloaded.

    Raises:
        weights.WeightsMissing: none of these has the backbone.
    """
    if backbone_dir:
        folder = Path(backbone_dir).expanduser()
        if not _complete_backbone(folder):
            raise weights.WeightsMissing(
                f"radgraph backbone folder {folder} lacks config.json and vocab.txt "
                f"(or tokenizer.json) of {original}"
            )
        return str(folder), f"folder {folder.name} (for {original})"
    if original.lower() in BACKBONE_IDS and BACKBONE_WEIGHTS in weights.REGISTRY:
        folder = weights.local_dir(BACKBONE_WEIGHTS)
        if _complete_backbone(folder):
            return str(folder), f"weights {BACKBONE_WEIGHTS} (for {original})"
    if Path(original).expanduser().is_dir():
        return str(Path(original).expanduser()), original
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(original, "config.json")
    except Exception:  # invalid repo id, hub library absent: treat as not cached
        cached = None
    if isinstance(cached, str):
        return original, f"hub cache {original}"
    hint = (
        f"`radixpert weights pull {BACKBONE_WEIGHTS}`"
        if BACKBONE_WEIGHTS in weights.REGISTRY
        else "a folder with its config.json and vocab.txt (backbone_dir=...)"
    )
    raise weights.WeightsMissing(
        f"the RadGraph model needs the configuration and tokenizer of {original}, which is "
        f"neither a local folder nor in the Hugging Face cache; provide {hint}"
    )


def _patch_radgraph_tokenizers() -> None:
    """Give tokenizers loaded by radgraph's AllenNLP the two methods transformers 5 removed.

    `encode_plus(text, pair, **kw)` is `tokenizer(text, pair, **kw)`, which it was in
    transformers 4. `build_inputs_with_special_tokens(ids)` wraps the ids in the special
    tokens the tokenizer itself adds around one sequence (read off `encode("a")`), which
    is what it returned for BERT tokenizers. Only the tokenizer objects returned by
    `radgraph.allennlp.common.cached_transformers.get_tokenizer` are touched, and only
    when the method is missing (a no-op under transformers 4).
    """
    from radgraph.allennlp.common import cached_transformers

    if getattr(cached_transformers.get_tokenizer, "_radixpert_patched", False):
        return
    original = cached_transformers.get_tokenizer

    def encode_plus(self: Any, text: Any, text_pair: Any = None, **kwargs: Any) -> Any:
        return self(text, text_pair, **kwargs)

    def get_tokenizer(model_name: str, **kwargs: Any) -> Any:
        tok = original(model_name, **kwargs)
        if not hasattr(tok, "encode_plus"):
            object.__setattr__(tok, "encode_plus", types.MethodType(encode_plus, tok))
        if not hasattr(tok, "build_inputs_with_special_tokens"):
            probe = tok.encode("a", add_special_tokens=False)
            full = tok.encode("a", add_special_tokens=True)
            at = full.index(probe[0])
            start, end = full[:at], full[at + len(probe) :]

            def build(self: Any, ids: list[int], ids_pair: list[int] | None = None) -> list:
                if ids_pair is not None:
                    raise NotImplementedError("sequence pairs are not used by RadGraph")
                return [*start, *ids, *end]

            object.__setattr__(
                tok, "build_inputs_with_special_tokens", types.MethodType(build, tok)
            )
        return tok

    get_tokenizer._radixpert_patched = True  # type: ignore[attr-defined]
    cached_transformers.get_tokenizer = get_tokenizer


def _cuda_index(device: str | None) -> int:
    """radgraph.RadGraph's `cuda` argument: a GPU index, or -1 for the CPU."""
    import torch

    if device in (None, "auto"):
        return 0 if torch.cuda.is_available() else -1
    if device == "cpu":
        return -1
    if device.startswith("cuda"):
        _, _, index = device.partition(":")
        return int(index or 0)
    raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")


def _is_empty(text: str) -> bool:
    return not text.strip()


class RadGraphF1(Metric):
    """RadGraph-F1 of candidate against reference reports, with the radgraph rewards beside.

    Args:
        model_type: "radgraph" (PhysioNet RadGraph 1.0.0 model, RadCliQ) or "radgraph-xl".
        reward_level: the ranked score: "combined" ((entity F1 + relation F1) / 2, RadCliQ)
            or the radgraph package's "simple", "partial" or "complete" reward.
        model_dir: folder holding the archive; default the weights folder of the model type
            (`$RADIXPERT_HOME/models/radgraph`, or `$RADIXPERT_WEIGHTS_RADGRAPH`).
        backbone_dir: folder with config.json and vocab.txt of the BERT backbone the archive
            names (see `resolve_backbone` for the default search).
        batch_size: reports per call of the package (it runs DyGIE++ one report at a time;
            annotations are cached after each call).
        device: "cpu", "cuda", "cuda:N", or None/"auto" for the first GPU when available.
        cache: cache annotations per text.
    """

    higher_is_better = True
    requires = ("torch", "transformers", "radgraph")
    description = "RadGraph-F1 (entity and relation overlap of RadGraph annotations)"

    def __init__(
        self,
        model_type: str = "radgraph",
        reward_level: str = "combined",
        model_dir: str | Path | None = None,
        backbone_dir: str | Path | None = None,
        batch_size: int = 16,
        device: str | None = None,
        cache: bool = True,
    ) -> None:
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
        if reward_level not in REWARD_LEVELS:
            raise ValueError(f"reward_level must be one of {REWARD_LEVELS}, got {reward_level!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_type = model_type
        self.reward_level = reward_level
        if model_type == "radgraph" and reward_level == "combined":
            self.name = "radgraph-f1"
        elif reward_level == "combined":
            self.name = f"{model_type}-f1"
        else:
            self.name = f"{model_type}-{reward_level}"
        self.model_dir = Path(model_dir).expanduser() if model_dir else None
        self.backbone_dir = backbone_dir
        self.batch_size = int(batch_size)
        self.device = device
        self.cache = cache
        self._model: Any = None
        self._prepared: dict[str, Any] | None = None

    def check(self) -> str | None:
        return super().check() or weights.status(WEIGHTS[self.model_type], self.model_dir)

    # -- loading -------------------------------------------------------------------------

    def _prepare(self) -> dict[str, Any]:
        """Extract the archive and locate the backbone (no model is built here)."""
        if self._prepared is None:
            self.ensure_available()
            folder = weights.resolve(WEIGHTS[self.model_type], self.model_dir)
            archive = folder / ARCHIVES[self.model_type]
            root, marker = extract_archive(archive, self.model_type)
            backbone, backbone_label = resolve_backbone(marker["backbone"], self.backbone_dir)
            _set_backbone(root / self.model_type, backbone)
            vocab = Path(backbone) / "vocab.txt"
            self._prepared = {
                "root": root,
                "archive": archive.name,
                "archive_sha256": marker["sha256"],
                "backbone": marker["backbone"],
                "backbone_source": backbone_label,
                # The tokenizer decides the tokens that the model sees; a local vocabulary
                # is hashed into the cache scope, a hub cache entry is named by its id.
                "backbone_vocab_sha256": file_sha256(vocab)[:16] if vocab.is_file() else None,
            }
        return self._prepared

    def _load(self) -> Any:
        if self._model is None:
            prepared = self._prepare()
            _patch_radgraph_tokenizers()
            import radgraph

            # The package prints the device; keep stdout clean for the CLI's output.
            with contextlib.redirect_stdout(io.StringIO()):
                self._model = radgraph.RadGraph(
                    model_type=self.model_type,
                    model_cache_dir=str(prepared["root"]),
                    cuda=_cuda_index(self.device),
                )
        return self._model

    def settings(self) -> dict[str, Any]:
        """Everything the scores depend on (the cache scope is a subset)."""
        p = self._prepare()
        return {
            "model_type": self.model_type,
            "reward_level": self.reward_level,
            "archive": p["archive"],
            "archive_sha256": p["archive_sha256"],
            "backbone": p["backbone"],
            "backbone_source": p["backbone_source"],
            "backbone_vocab_sha256": p["backbone_vocab_sha256"],
            "combined": "(entity F1 + relation F1) / 2; F1 of two empty sets = 0 "
            "(CXR-Report-Metric compute_f1)",
            "rewards": "radgraph.rewards.compute_reward (simple, partial, complete)",
            "empty_report": "no entities: every score of the pair is 0, counted",
            "preprocessing": f"radgraph package preprocess_reports (model_type={self.model_type})",
            "cache_version": CACHE_VERSION,
        }

    # -- annotation ----------------------------------------------------------------------

    def annotate(self, texts: Sequence[str]) -> tuple[dict[str, Annotation], dict[str, int]]:
        """RadGraph annotation of each distinct text (cached), and counts of what was done.

        Empty texts get `{"text": "", "entities": {}}` without running the model. A text
        the package fails on (it skips it with a printed traceback) gets no entities, is
        counted in "failures" and is not cached.
        """
        p = self._prepare()
        versions = package_versions("radgraph", "transformers", "torch")
        scope = {
            "model_type": self.model_type,
            "archive_sha256": p["archive_sha256"],
            "backbone": p["backbone"],
            "backbone_vocab_sha256": p["backbone_vocab_sha256"],
            "cache_version": CACHE_VERSION,
            **versions,
        }
        distinct = list(dict.fromkeys(t for t in texts if not _is_empty(t)))
        store = TextCache(f"radgraph-{self.model_type}", scope, enabled=self.cache)
        known: dict[str, Annotation] = store.get_many(distinct)
        todo = [t for t in distinct if t not in known]
        counts = {"cached": len(known), "annotated": 0, "failures": 0}
        log.info("%s: %d distinct texts, %d to annotate", self.name, len(distinct), len(todo))
        with progress(len(todo), self.name) as bar:
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start : start + self.batch_size]
                fresh = self._run(batch)
                bar.update(len(batch))
                ok = {t: a for t, a in fresh.items() if a is not None}
                store.put_many(ok)
                known.update(ok)
                counts["annotated"] += len(ok)
                for t, a in fresh.items():
                    if a is None:
                        counts["failures"] += 1
                        known[t] = {"text": t, "entities": {}}
        store.close()
        for t in texts:
            if _is_empty(t):
                known[t] = {"text": "", "entities": {}}
        return known, counts

    def _run(self, batch: list[str]) -> dict[str, Annotation | None]:
        """Annotations of a batch of non-empty texts (None where the package failed)."""
        import torch

        model = self._load()
        # The package runs the model without no_grad; with it, no autograd graph is kept.
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            # One-token reports draw a UserWarning from the DyGIE reader but are annotated.
            warnings.simplefilter("ignore", UserWarning)
            out = model(list(batch))
        result: dict[str, Annotation | None] = {}
        for i, text in enumerate(batch):
            ann = out.get(str(i))
            if ann is None:
                log.warning("%s: the radgraph package failed on text %r", self.name, text[:80])
                result[text] = None
            else:
                result[text] = {"text": ann["text"], "entities": ann["entities"]}
        return result

    # -- scoring -------------------------------------------------------------------------

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        if len(references) != len(candidates):
            raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
        self.ensure_available()
        annotations, counts = self.annotate([*references, *candidates])
        series: dict[str, list[float]] = {
            k: [] for k in ("entity_f1", "relation_f1", "combined", "simple", "partial", "complete")
        }
        for ref, cand in zip(references, candidates):
            a_ref, a_cand = annotations[ref], annotations[cand]
            ent, rel, comb = combined_f1(a_ref, a_cand)
            simple, partial, complete = rewards(a_ref, a_cand)
            for key, value in zip(series, (ent, rel, comb, simple, partial, complete)):
                series[key].append(value)
        per_sample = series[self.reward_level]
        detailed: dict[str, Any] = {
            ("reward_" + k if k in ("simple", "partial", "complete") else k): mean(v)
            for k, v in series.items()
        }
        detailed.update(
            {
                "n": len(references),
                "n_empty_references": sum(_is_empty(t) for t in references),
                "n_empty_candidates": sum(_is_empty(t) for t in candidates),
                "n_texts_annotated": counts["annotated"],
                "n_texts_cached": counts["cached"],
                "n_annotation_failures": counts["failures"],
            }
        )
        return MetricResult(
            name=self.name,
            aggregate=mean(per_sample),
            per_sample=per_sample,
            higher_is_better=True,
            settings=self.settings(),
            detailed=detailed,
            per_sample_detailed={k: v for k, v in series.items() if k != self.reward_level},
            versions=package_versions("radgraph", "transformers", "torch"),
        )
