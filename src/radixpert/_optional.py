"""Optional dependencies in one place: availability checks without importing, and clear errors.

`missing(...)` uses `importlib.util.find_spec`, so checking what can run (for
`radixpert evaluate --list`) imports no torch and no model code.
"""

from __future__ import annotations

import importlib.util
import shutil

from radixpert.errors import MissingDependency

# import name -> (pip requirement, the extra that carries it). The versions the project tests
# are the lock's (requirements.lock.txt); the ranges are pyproject.toml's.
PACKAGES: dict[str, tuple[str, str]] = {
    "torch": ("torch", "models"),
    "torchvision": ("torchvision", "models"),
    "open_clip": ("open_clip_torch", "models"),
    "timm": ("timm", "models"),
    "transformers": ("transformers", "metrics"),
    "huggingface_hub": ("huggingface_hub", "metrics"),
    "bert_score": ("bert-score==0.3.13", "metrics"),
    "radgraph": ("radgraph==0.1.18", "metrics"),
    "RaTEScore": ("RaTEScore==0.6.0", "metrics"),
    "medspacy": ("medspacy", "metrics"),
    "pycocoevalcap": ("pycocoevalcap==1.2", "coco"),
    "rouge_score": ("rouge-score==0.1.2", "coco"),
    "sklearn": ("scikit-learn", "metrics"),
    "pandas": ("pandas", "metrics"),
    "sentencepiece": ("sentencepiece", "metrics"),
    "peft": ("peft", "models"),
    "bitsandbytes": ("bitsandbytes", "models"),
    "yaml": ("pyyaml", "train"),
    "accelerate": ("accelerate", "train"),
    "pyarrow": ("pyarrow", "data"),
    "pydicom": ("pydicom", "data"),
    "PIL": ("pillow", "data"),
    "google.protobuf": ("protobuf", "metrics"),
    "matplotlib": ("matplotlib", "leaderboard"),
}


def missing(*modules: str) -> list[str]:
    """The subset of `modules` that cannot be imported here (checked without importing)."""
    out = []
    for m in modules:
        try:
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(m)
    return out


def install_hint(modules: list[str]) -> str:
    reqs = [PACKAGES.get(m, (m, ""))[0] for m in modules]
    extras = sorted({PACKAGES[m][1] for m in modules if m in PACKAGES and PACKAGES[m][1]})
    hint = f"pip install {' '.join(reqs)}"
    if extras:
        hint += f"  (or: pip install 'radixpert[{','.join(extras)}]')"
    return hint


def require(*modules: str, purpose: str) -> None:
    """Raise MissingDependency naming the packages and the install command, if any is absent."""
    absent = missing(*modules)
    if absent:
        raise MissingDependency(
            f"{purpose} needs {', '.join(absent)}, which is not installed: {install_hint(absent)}"
        )


def java() -> str | None:
    """Path of the `java` executable, or None."""
    return shutil.which("java")
