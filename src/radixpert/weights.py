"""Model weights the metrics (and later the models) need: where they come from, where they live.

Every model has one folder, `$RADIXPERT_HOME/models/<name>/`. `radixpert weights pull NAME`
fills it from its Hugging Face repository on a connected machine; everything else only
reads it, so offline machines work from a copied folder. A metric whose weights are absent
raises `WeightsMissing`, naming the files, the folder and the command that fetches them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from radixpert.errors import MetricUnavailable, UnknownName
from radixpert.paths import models_dir, offline

log = logging.getLogger(__name__)


class WeightsMissing(MetricUnavailable):
    """Model weights are not on this machine."""


@dataclass(frozen=True)
class WeightSpec:
    """One downloadable model.

    Attributes:
        repo_id: Hugging Face repository.
        files: files that must be present after a pull (relative to the model folder);
            any entry may be a `|`-separated list of alternatives.
        allow_patterns: what `pull` downloads (None: exactly `files`).
        revision: repository revision to pull.
        used_by: the metrics (or models) that read it.
    """

    repo_id: str
    files: tuple[str, ...]
    allow_patterns: tuple[str, ...] | None = None
    revision: str = "main"
    used_by: str = ""
    note: str = ""


_HF_MODEL_FILES = ("config.json", "model.safetensors|pytorch_model.bin")

REGISTRY: dict[str, WeightSpec] = {
    "distilroberta-base": WeightSpec(
        "distilbert/distilroberta-base",
        (*_HF_MODEL_FILES, "vocab.json", "merges.txt"),
        allow_patterns=("*.json", "*.txt", "model.safetensors"),
        used_by="bertscore, radcliq-v1",
    ),
    "bert-base-uncased": WeightSpec(
        "google-bert/bert-base-uncased",
        ("config.json", "vocab.txt"),
        allow_patterns=("config.json", "vocab.txt", "tokenizer_config.json", "tokenizer.json"),
        used_by="chexbert, semb-score (tokenizer and configuration of the CheXbert backbone)",
    ),
    "chexbert": WeightSpec(
        "StanfordAIMI/RRG_scorers",
        ("chexbert.pth",),
        used_by="chexbert, semb-score, radcliq-v1",
        note="the CheXbert checkpoint of Smit et al. 2020, as redistributed for RRG scorers",
    ),
    "radgraph": WeightSpec(
        "StanfordAIMI/RRG_scorers",
        ("radgraph.tar.gz",),
        used_by="radgraph-f1, radcliq-v1",
        note="the PhysioNet RadGraph 1.0.0 DyGIE++ model, as the radgraph package loads it",
    ),
    "radgraph-xl": WeightSpec(
        "StanfordAIMI/RRG_scorers",
        ("radgraph-xl.tar.gz",),
        used_by="radgraph-xl-partial",
    ),
    "rate-ner-deberta": WeightSpec(
        "Angelakeke/RaTE-NER-Deberta",
        (*_HF_MODEL_FILES,),
        allow_patterns=("*.json", "*.txt", "*.model", "model.safetensors", "pytorch_model.bin"),
        used_by="ratescore",
    ),
    "biolord-2023-c": WeightSpec(
        "FremyCompany/BioLORD-2023-C",
        (*_HF_MODEL_FILES,),
        allow_patterns=("*.json", "*.txt", "model.safetensors"),
        used_by="ratescore",
    ),
    "green-radllama2-7b": WeightSpec(
        "StanfordAIMI/GREEN-RadLlama2-7b",
        (
            "config.json",
            "model.safetensors.index.json|model.safetensors",
            "tokenizer.model|tokenizer.json",
            "tokenizer_config.json",
        ),
        allow_patterns=("*.json", "*.model", "*.safetensors"),
        used_by="green",
        note="about 13.5 GB in shards; a GPU is strongly advised",
    ),
    "biomedbert-base-uncased": WeightSpec(
        "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext",
        ("config.json", "vocab.txt"),
        allow_patterns=("config.json", "vocab.txt", "tokenizer_config.json"),
        used_by="radgraph-f1, radgraph-xl-partial, radcliq-v1 (tokenizer and configuration "
        "of the DyGIE++ backbone)",
    ),
}


def local_dir(name: str) -> Path:
    """The folder that holds model `name` (may not exist)."""
    override = os.environ.get(f"RADIXPERT_WEIGHTS_{name.upper().replace('-', '_')}")
    return Path(override).expanduser() if override else models_dir() / name


def missing_files(name: str, folder: Path | None = None) -> list[str]:
    """Files of model `name` that are absent from `folder` (default: its local folder)."""
    spec = REGISTRY[name]
    folder = folder or local_dir(name)
    return [f for f in spec.files if not any((folder / alt).is_file() for alt in f.split("|"))]


def status(name: str, folder: Path | None = None) -> str | None:
    """None when model `name` is complete, else a sentence naming what is missing and where."""
    folder = folder or local_dir(name)
    absent = missing_files(name, folder)
    if not absent:
        return None
    return (
        f"weights '{name}' ({REGISTRY[name].repo_id}) missing in {folder}: "
        f"{', '.join(absent)}; fetch them on a connected machine with "
        f"`radixpert weights pull {name}` (RADIXPERT_HOME={models_dir().parent}) "
        f"or point RADIXPERT_WEIGHTS_{name.upper().replace('-', '_')} at a copy"
    )


def resolve(name: str, folder: str | Path | None = None) -> Path:
    """The folder of model `name`, complete, or WeightsMissing with the reason."""
    path = Path(folder).expanduser() if folder else local_dir(name)
    reason = status(name, path)
    if reason:
        raise WeightsMissing(reason)
    return path


def pull(name: str, force: bool = False) -> Path:
    """Download model `name` into its folder (needs the network; refused in offline mode)."""
    if name not in REGISTRY:
        raise UnknownName(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    spec = REGISTRY[name]
    dest = local_dir(name)
    if not force and status(name, dest) is None:
        log.info("%s already complete in %s", name, dest)
        return dest
    if offline():
        raise WeightsMissing(
            f"cannot pull '{name}': HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set; unset it on a "
            "machine that can reach the Hugging Face hub, or copy the folder here by hand"
        )
    from radixpert._optional import require

    require("huggingface_hub", purpose="radixpert weights pull")
    from huggingface_hub import snapshot_download

    patterns = list(spec.allow_patterns or [f.split("|")[0] for f in spec.files])
    snapshot_download(
        repo_id=spec.repo_id, revision=spec.revision, local_dir=dest, allow_patterns=patterns
    )
    reason = status(name, dest)
    if reason:
        raise WeightsMissing(f"pull of {name} finished but files are still missing: {reason}")
    return dest
