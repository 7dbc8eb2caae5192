"""GREEN (Ostmeier et al. 2024): an LLM judge counts clinically significant errors.

GREEN-RadLlama2-7b (`StanfordAIMI/GREEN-RadLlama2-7b`) reads a prompt holding the
reference and the candidate report and writes an explanation, the counts of clinically
significant and insignificant errors in six categories (a)-(f), and the number of matched
findings. Per pair:

    GREEN = matched / (matched + sum of the six clinically significant error counts)

The prompt, the chat template, generation and parsing follow the official implementation
(Stanford-AIMI/GREEN, `green_score/green.py` and `green_score/utils.py`, commit d72c195;
the green-score package is not on PyPI):

* prompt: `make_prompt` (each report cut to its first 300 whitespace-separated words),
  wrapped in the official chat template as a human turn plus an empty assistant turn, with
  the generation prompt `<|assistant|>`; the tokenizer adds BOS and EOS
  (`add_eos_token=True`), pads on the left with EOS;
* generation: greedy, `max_length=2048` (prompt and answer together, as there; a batch's
  longest prompt leaves the same budget to every row of the batch), batches of 8;
* response: the whole sequence decoded without special tokens, then `clean_responses`
  (the text after the last `<|assistant|>`, then after `[Explanation]:`);
* parsing: `parse_error_counts` (the section up to the next blank line; "(a) ...: N." lines,
  or "(1) ...: N." when no lettered line exists; "No ..." means none; the matched count is
  the number that opens the section);
* score: 0 when the matched count is 0 (whether or not errors were found: the denominator
  may be 0 too); a missing section counts as 0 of everything, so an unparsable response
  scores 0.

All of that is kept, and made explicit: each response's parse status is recorded and the
counts of unparsable responses, of responses without a matched-findings or
significant-errors section and of zero-matched responses are reported in `detailed`.
Nothing is dropped: the aggregate is the mean over all pairs, as the official `mean`.

Two things differ from the official code. The tokenizer: the official one loads the
repository's remote-code `CheXagentTokenizer` (a copy of the transformers 4 slow Llama
tokenizer); here transformers' own `LlamaTokenizer` reads the same `tokenizer.model`
(transformers 5 converts it with sentencepiece and protobuf), with BOS and EOS added as
there, unless `trust_remote_code=True`. And on CPU the model runs in float32 (the official
code asks for float16 everywhere); on GPU in float16 as there. Responses are cached per
prompt (scope: model files, dtype, generation settings, prompt version).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from radixpert.evaluate.cache import TextCache

log = logging.getLogger(__name__)

WEIGHTS = "green-radllama2-7b"
PROMPT_VERSION = "Stanford-AIMI/GREEN@d72c195 green_score/utils.py make_prompt"
CACHE_VERSION = 1  # bump when the generation or cleaning of a cached response changes
MAX_WORDS = 300  # make_prompt(max_len=300)
BATCH_SIZE = 8  # GREEN.batch_size
MAX_LENGTH = 2048  # GREEN.max_length, also generate(max_length=2048)

SIGNIFICANT = "Clinically Significant Errors"
INSIGNIFICANT = "Clinically Insignificant Errors"
MATCHED = "Matched Findings"
SUB_CATEGORIES = (
    "(a) False report of a finding in the candidate",
    "(b) Missing a finding present in the reference",
    "(c) Misidentification of a finding's anatomic location/position",
    "(d) Misassessment of the severity of a finding",
    "(e) Mentioning a comparison that isn't in the reference",
    "(f) Omitting a comparison detailing a change from a prior study",
)

# The official chat template (GREEN.__init__), verbatim.
CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['from'] == 'human' %}\n"
    "{{ '<|user|>\n' + message['value'] + eos_token }}\n"
    "{% elif message['from'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['value'] + eos_token }}\n"
    "{% elif message['from'] == 'gpt' %}\n"
    "{{ '<|assistant|>\n'  + message['value'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)

_PROMPT_HEAD = """Objective: Evaluate the accuracy of a candidate radiology report in comparison to a reference radiology report composed by expert radiologists.

    Process Overview: You will be presented with:

    1. The criteria for making a judgment.
    2. The reference radiology report.
    3. The candidate radiology report.
    4. The desired format for your assessment.

    1. Criteria for Judgment:

    For each candidate report, determine:

    The count of clinically significant errors.
    The count of clinically insignificant errors.

    Errors can fall into one of these categories:

    a) False report of a finding in the candidate.
    b) Missing a finding present in the reference.
    c) Misidentification of a finding's anatomic location/position.
    d) Misassessment of the severity of a finding.
    e) Mentioning a comparison that isn't in the reference.
    f) Omitting a comparison detailing a change from a prior study.
    Note: Concentrate on the clinical findings rather than the report's writing style. Evaluate only the findings that appear in both reports.

    2. Reference Report:
    """  # noqa: E501 - the official prompt, byte for byte

_PROMPT_MIDDLE = """

    3. Candidate Report:
    """

_PROMPT_TAIL = """

    4. Reporting Your Assessment:

    Follow this specific format for your output, even if no errors are found:
    ```
    [Explanation]:
    <Explanation>

    [Clinically Significant Errors]:
    (a) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>
    ....
    (f) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>

    [Clinically Insignificant Errors]:
    (a) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>
    ....
    (f) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>

    [Matched Findings]:
    <The number of matched findings>. <Finding 1>; <Finding 2>; ...; <Finding n>
    ```
"""


def make_prompt(reference: str, candidate: str, max_words: int = MAX_WORDS) -> str:
    """The official GREEN prompt; each report is cut to its first `max_words` words."""
    reference = " ".join(reference.split()[:max_words])
    candidate = " ".join(candidate.split()[:max_words])
    return _PROMPT_HEAD + reference + _PROMPT_MIDDLE + candidate + _PROMPT_TAIL


def clean_response(decoded: str) -> str:
    """The official `clean_responses` applied to a decoded prompt + answer sequence."""
    if "[Explanation]:" in decoded:
        if "<|assistant|>" in decoded:
            decoded = decoded.split("<|assistant|>")[-1]
        # The official test is `("[Explanation]:\n    <Explanation>\n" or ...) in response`,
        # i.e. only its first operand: the template line echoed in the answer.
        if "[Explanation]:\n    <Explanation>\n" in decoded:
            decoded = decoded.split("[Explanation]:")[1]
        else:
            decoded = decoded.split("[Explanation]:")[-1]
    if "<|assistant|>" in decoded:
        decoded = decoded.split("<|assistant|>")[-1]
    return decoded.replace("</s>", "").replace("<unk>", "")


def _section(text: str, category: str) -> str | None:
    """The text of a `[category]:` section up to the next blank line (official regex)."""
    found = re.search(rf"\[{category}\]:\s*(.*?)(?:\n\s*\n|\Z)", text, re.DOTALL)
    return found.group(1) if found else None


def _error_counts(body: str) -> list[int]:
    """Counts of (a)-(f) in an errors section, as the official `parse_error_counts`."""
    counts = [0] * len(SUB_CATEGORIES)
    prefixes = [s.split(" ", 1)[0] + " " for s in SUB_CATEGORIES]
    lines = sorted(re.findall(r"\([a-f]\) .*", body))
    if not lines:  # the model numbered the categories instead of lettering them
        lines = sorted(re.findall(r"\([1-6]\) .*", body))
        prefixes = [f"({i}) " for i in range(1, len(SUB_CATEGORIES) + 1)]
    for position, prefix in enumerate(prefixes):
        for line in lines:
            if line.startswith(prefix):
                number = re.findall(r"(?<=: )\b\d+\b(?=\.)", line)
                if number:
                    counts[position] = int(number[0])
    return counts


@dataclass
class GreenParse:
    """One parsed GREEN response.

    Attributes:
        significant: counts of clinically significant errors (a)-(f).
        insignificant: counts of clinically insignificant errors (a)-(f).
        matched: number of matched findings.
        has_significant: the "[Clinically Significant Errors]:" section was found.
        has_matched: the "[Matched Findings]:" section was found.
    """

    significant: list[int] = field(default_factory=lambda: [0] * 6)
    insignificant: list[int] = field(default_factory=lambda: [0] * 6)
    matched: int = 0
    has_significant: bool = False
    has_matched: bool = False

    @property
    def parsable(self) -> bool:
        """False when neither scored section was found (the official score is then 0)."""
        return self.has_significant or self.has_matched

    @property
    def score(self) -> float:
        """GREEN of this response, with the official rule: 0 when nothing matched."""
        if self.matched == 0:
            return 0.0
        return self.matched / (self.matched + sum(self.significant))


def parse_response(response: str) -> GreenParse:
    """Counts of a cleaned GREEN response, as the official `parse_error_counts` reads them."""
    out = GreenParse()
    for category, attr in ((SIGNIFICANT, "significant"), (INSIGNIFICANT, "insignificant")):
        body = _section(response, category)
        if category == SIGNIFICANT:
            out.has_significant = body is not None
        if body is not None and not body.startswith("No"):
            setattr(out, attr, _error_counts(body))
    body = _section(response, MATCHED)
    out.has_matched = body is not None
    if body is not None and not body.startswith("No"):
        number = re.findall(r"^\b\d+\b(?=\.)", body)
        if number:
            out.matched = int(number[0])
    return out


def _small_files_fingerprint(folder: Path) -> str:
    """Hash of a model folder's small files plus the sizes of its weight files.

    Hashing 13 GB of shards on every run is too slow; their names and sizes, with the
    hashes of config, index, generation config and tokenizer files, identify a checkpoint.
    """
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            h.update(f"{path.name}:{path.stat().st_size}|".encode())
        elif path.suffix in (".json", ".model", ".txt", ".py"):
            h.update(f"{path.name}:{hashlib.sha256(path.read_bytes()).hexdigest()}|".encode())
    return h.hexdigest()[:16]


def tokenizer_options(folder: Path) -> dict[str, Any]:
    """BOS/EOS and legacy options that reproduce the official tokenizer call.

    The official code passes `add_eos_token=True` to the repository's tokenizer, a copy of
    the transformers 4 slow Llama tokenizer, whose defaults are `add_bos_token=True` and
    legacy SentencePiece handling unless tokenizer_config.json says otherwise; transformers
    5's LlamaTokenizer defaults differ (no BOS unless asked), so they are passed explicitly.
    """
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        config = {}
    legacy = config.get("legacy")
    return {
        "add_bos_token": bool(config.get("add_bos_token", True)),
        "add_eos_token": True,
        "legacy": True if legacy is None else bool(legacy),
    }


class Green(Metric):
    """GREEN of candidate against reference reports (higher is better, 0 to 1).

    Args:
        model_dir: folder with GREEN-RadLlama2-7b (config, safetensors shards,
            tokenizer.model, tokenizer_config.json); default the `green-radllama2-7b`
            weights folder.
        batch_size: prompts per `generate` call (official: 8).
        max_length: total length of prompt and answer in tokens (official: 2048).
        max_new_tokens: if set, bounds the answer instead of `max_length` (not official;
            for quick checks).
        device: "cpu", "cuda", "cuda:N", or None/"auto" for cuda when available.
        dtype: "float16", "bfloat16" or "float32"; default float16 on GPU (official),
            float32 on CPU.
        trust_remote_code: load the repository's own tokenizer class (CheXagentTokenizer)
            as the official code does; needs its Python file in the folder and its
            dependencies.
        cache: cache responses per prompt.
    """

    name = "green"
    higher_is_better = True
    requires = ("torch", "transformers")
    description = "GREEN: GREEN-RadLlama2-7b counts clinically significant errors"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        batch_size: int = BATCH_SIZE,
        max_length: int = MAX_LENGTH,
        max_new_tokens: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        cache: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dtype not in (None, "float16", "bfloat16", "float32"):
            raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype!r}")
        self.model_dir = Path(model_dir).expanduser() if model_dir else None
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.cache = cache
        self._loaded: tuple[Any, Any, str] | None = None

    def check(self) -> str | None:
        reason = super().check() or weights.status(WEIGHTS, self.model_dir)
        if reason:
            return reason
        folder = weights.local_dir(WEIGHTS) if self.model_dir is None else self.model_dir
        if not (folder / "tokenizer.json").is_file():
            # transformers 5 converts tokenizer.model with these two packages.
            from radixpert._optional import install_hint, missing

            absent = missing("sentencepiece", "google.protobuf")
            if absent:
                return (
                    f"the tokenizer in {folder} is tokenizer.model only, which needs "
                    f"{', '.join(absent)}: {install_hint(absent)}"
                )
        return None

    # -- loading -------------------------------------------------------------------------

    def _torch_dtype(self, device: str) -> Any:
        import torch

        name = self.dtype or ("float16" if device.startswith("cuda") else "float32")
        return getattr(torch, name)

    def _load(self) -> tuple[Any, Any, str]:
        if self._loaded is None:
            self.ensure_available()
            from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaTokenizer

            folder = weights.resolve(WEIGHTS, self.model_dir)
            device = resolve_device(self.device)
            if self.trust_remote_code:  # the official call, verbatim
                tokenizer = AutoTokenizer.from_pretrained(
                    folder,
                    add_eos_token=True,
                    use_fast=True,
                    trust_remote_code=True,
                    padding_side="left",
                )
            else:
                tokenizer = LlamaTokenizer.from_pretrained(
                    folder, padding_side="left", **tokenizer_options(folder)
                )
            tokenizer.chat_template = CHAT_TEMPLATE
            tokenizer.pad_token = tokenizer.eos_token
            tokenizer.clean_up_tokenization_spaces = True
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=self._torch_dtype(device))
            model.to(device).eval()
            self._loaded = (tokenizer, model, device)
        return self._loaded

    def settings(self) -> dict[str, Any]:
        """Everything the scores depend on (also the cache scope)."""
        folder = weights.resolve(WEIGHTS, self.model_dir)
        device = resolve_device(self.device)
        return {
            "model": folder.name,
            "weights_fingerprint": _small_files_fingerprint(folder),
            "prompt_version": PROMPT_VERSION,
            "max_words_per_report": MAX_WORDS,
            "chat_template": "official GREEN template, human turn + empty assistant turn",
            "tokenizer": "remote CheXagentTokenizer (add_eos_token=True)"
            if self.trust_remote_code
            else f"transformers LlamaTokenizer {tokenizer_options(folder)}, left padding",
            "decoding": "greedy",
            "max_length": self.max_length,
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
            "dtype": str(self._torch_dtype(device)).replace("torch.", ""),
            "score": "matched / (matched + significant errors); 0 when matched is 0",
            "unparsable": "scored 0 (official), counted in detailed",
            "cache_version": CACHE_VERSION,
        }

    # -- generation ----------------------------------------------------------------------

    def render(self, prompts: Sequence[str]) -> list[str]:
        """The chat-formatted model inputs of the given prompts (before tokenisation)."""
        tokenizer, _, _ = self._load()
        return [
            tokenizer.apply_chat_template(
                [{"from": "human", "value": p}, {"from": "gpt", "value": ""}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for p in prompts
        ]

    def _generate(self, prompts: list[str]) -> list[str]:
        """Cleaned responses to a batch of prompts."""
        import torch

        tokenizer, model, device = self._load()
        batch = tokenizer(
            self.render(prompts),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
        ).to(device)
        limit = (
            {"max_new_tokens": self.max_new_tokens}
            if self.max_new_tokens
            else {"max_length": self.max_length}
        )
        with torch.inference_mode():
            outputs = model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                do_sample=False,
                temperature=None,
                top_p=None,
                **limit,
            )
        decoded = tokenizer.batch_decode(outputs, skip_special_tokens=True)
        return [clean_response(d) for d in decoded]

    def responses(self, references: Sequence[str], candidates: Sequence[str]) -> list[str]:
        """The judge's cleaned response for each pair (cached per prompt)."""
        if len(references) != len(candidates):
            raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
        self.ensure_available()
        prompts = [make_prompt(r, c) for r, c in zip(references, candidates)]
        scope = {**self.settings(), **package_versions("transformers", "torch")}
        store = TextCache("green", scope, enabled=self.cache)
        known = store.get_many(prompts)
        todo = list(dict.fromkeys(p for p in prompts if p not in known))
        log.info("green: %d pairs, %d to judge, %d cached", len(prompts), len(todo), len(known))
        with progress(len(todo), "green", unit="pairs") as bar:
            for start in range(0, len(todo), self.batch_size):
                part = todo[start : start + self.batch_size]
                fresh = dict(zip(part, self._generate(part)))
                bar.update(len(part))
                store.put_many(fresh)
                known.update(fresh)
        store.close()
        return [known[p] for p in prompts]

    # -- scoring -------------------------------------------------------------------------

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        texts = self.responses(references, candidates)
        return score_responses(texts, self.name, self.settings())


def score_responses(
    responses: Sequence[str], name: str = "green", settings: dict[str, Any] | None = None
) -> MetricResult:
    """GREEN scores and error statistics of cleaned responses (no model involved).

    `detailed` holds the official summary numbers (mean, population std, and per
    sub-category the fraction of responses without such an error) and the counts of
    responses that could not be parsed or have no matched findings.
    """
    import numpy as np

    parsed = [parse_response(r) for r in responses]
    scores = [p.score for p in parsed]
    n = len(parsed)
    sig = np.array([p.significant for p in parsed], dtype=float).reshape(n, 6)
    insig = np.array([p.insignificant for p in parsed], dtype=float).reshape(n, 6)
    matched = [float(p.matched) for p in parsed]
    unparsable = [i for i, p in enumerate(parsed) if not p.parsable]
    bad = set(unparsable)
    letters = "abcdef"
    detailed: dict[str, Any] = {
        "n": n,
        "std": float(np.std(scores)) if n else math.nan,
        "n_unparsable": len(unparsable),
        "unparsable_indices": unparsable,
        "n_without_matched_section": sum(not p.has_matched for p in parsed),
        "n_without_significant_section": sum(not p.has_significant for p in parsed),
        "n_zero_matched": sum(p.matched == 0 for p in parsed),
        "mean_excluding_unparsable": mean([scores[i] for i in range(n) if i not in bad]),
        "mean_matched_findings": mean(matched),
        "mean_significant_errors": float(sig.sum(axis=1).mean()) if n else math.nan,
        "mean_insignificant_errors": float(insig.sum(axis=1).mean()) if n else math.nan,
    }
    for j, label in enumerate(SUB_CATEGORIES):
        key = letters[j]
        detailed[f"significant_{key}_mean"] = float(sig[:, j].mean()) if n else math.nan
        # The official summary's "accuracy": share of responses with none of this error.
        detailed[f"significant_{key}_accuracy"] = float((sig[:, j] == 0).mean()) if n else math.nan
        detailed[f"label_{key}"] = label
    per_sample_detailed = {
        "matched_findings": matched,
        "significant_errors": [float(x) for x in sig.sum(axis=1)],
        "insignificant_errors": [float(x) for x in insig.sum(axis=1)],
        "parsable": [float(p.parsable) for p in parsed],
    }
    for j in range(6):
        per_sample_detailed[f"significant_{letters[j]}"] = [float(x) for x in sig[:, j]]
    return MetricResult(
        name=name,
        aggregate=mean(scores),
        per_sample=scores,
        higher_is_better=True,
        settings=dict(settings or {}),
        detailed=detailed,
        per_sample_detailed=per_sample_detailed,
        versions=package_versions("transformers", "torch"),
    )
