"""Lazy metric registry: names map to "module:attr" strings, imported only when used.

`radixpert evaluate --list` and `radixpert --help` therefore import no torch and no model.
A name selects one metric object; a metric may produce companions (BLEU-1..3 beside BLEU-4).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from radixpert.errors import UnknownName
from radixpert.evaluate.base import Metric


@dataclass(frozen=True)
class Entry:
    target: str  # "module:attr" of a Metric subclass
    family: str  # lexical | clinical-rules | model | judge
    summary: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    variant_of: str | None = None  # the base name, for named variants


_L = "radixpert.evaluate.lexical"
_C = "radixpert.evaluate.clinical"
_S = "radixpert.evaluate.semantic"
_J = "radixpert.evaluate.judges"

REGISTRY: dict[str, Entry] = {
    # --- lexical, no model -------------------------------------------------------------
    "bleu": Entry(
        f"{_L}.bleu:CorpusBleu",
        "lexical",
        "corpus BLEU-1..4 as pycocoevalcap computes it (closest reference length)",
    ),
    "bleu-2-radcliq": Entry(
        f"{_L}.sentence_bleu:RadCliQBleu2",
        "lexical",
        "per-report BLEU-2 of RadCliQ/ReXrank (lower-case, '.' split off, "
        "space split, NLTK method1 smoothing), averaged",
    ),
    "rouge-l": Entry(f"{_L}.rouge:RougeL", "lexical", "ROUGE-L F (beta 1.2) as pycocoevalcap"),
    "rouge-l-radeval": Entry(
        f"{_L}.rouge:RougeScore",
        "lexical",
        "ROUGE-L F (beta 1) as RadEval: rouge_score, Porter stemmer, mean per report",
        kwargs={"rouge_type": "rougeL"},
        variant_of="rouge-l",
    ),
    "rouge-1": Entry(
        f"{_L}.rouge:RougeScore",
        "lexical",
        "ROUGE-1 F as RadEval: rouge_score, Porter stemmer, mean per report",
        kwargs={"rouge_type": "rouge1"},
    ),
    "rouge-2": Entry(
        f"{_L}.rouge:RougeScore",
        "lexical",
        "ROUGE-2 F as RadEval: rouge_score, Porter stemmer, mean per report",
        kwargs={"rouge_type": "rouge2"},
    ),
    "cider-d": Entry(
        f"{_L}.cider:CiderD",
        "lexical",
        "CIDEr-D (sigma 6, x10, clipped, length penalty) as pycocoevalcap",
    ),
    "meteor": Entry(
        f"{_L}.meteor:Meteor15",
        "lexical",
        "METEOR 1.5, the Java jar shipped in pycocoevalcap (needs Java)",
    ),
    # --- clinical, rule-based, no model ------------------------------------------------
    "f1-chexpert": Entry(
        f"{_C}.f1_chexpert:F1CheXpert",
        "clinical-rules",
        "F1 over the 14 / 5 CheXpert observations from radixpert's rule-based "
        "labeler (not CheXbert); micro and macro",
    ),
    # --- model-based (weights needed) --------------------------------------------------
    "bertscore": Entry(
        f"{_S}.bertscore:BertScore",
        "model",
        "BERTScore F1, distilroberta-base layer 5, baseline-rescaled, idf off (ReXrank / RadCliQ)",
    ),
    "bertscore-idf": Entry(
        f"{_S}.bertscore:BertScore",
        "model",
        "BERTScore F1 with idf weights from the references (RadEval)",
        kwargs={"idf": True},
        variant_of="bertscore",
    ),
    "chexbert": Entry(
        f"{_C}.chexbert:CheXbertF1",
        "model",
        "F1-CheXbert-14 / -5 (micro, macro) from the CheXbert labeler",
    ),
    "semb-score": Entry(
        f"{_C}.chexbert:SembScore", "model", "SembScore: cosine of CheXbert [CLS] embeddings"
    ),
    "radgraph-f1": Entry(
        f"{_C}.radgraph:RadGraphF1",
        "model",
        "RadGraph-F1 'combined' = (entity F1 + relation F1)/2 of the original "
        "RadGraph model (as RadCliQ)",
    ),
    "radgraph-xl-partial": Entry(
        f"{_C}.radgraph:RadGraphF1",
        "model",
        "RadGraph-XL F1, partial reward (radgraph package)",
        kwargs={"model_type": "radgraph-xl", "reward_level": "partial"},
        variant_of="radgraph-f1",
    ),
    "radcliq-v1": Entry(
        f"{_C}.radcliq:RadCliQV1",
        "model",
        "RadCliQ-v1 composite of RadGraph-F1, BERTScore, SembScore, BLEU-2; "
        "raw per report (lower is better), shown as 1/mean",
    ),
    "ratescore": Entry(
        f"{_C}.ratescore:RaTEScoreMetric",
        "model",
        "RaTEScore (RaTE-NER-DeBERTa entities + BioLORD embeddings)",
    ),
    "green": Entry(
        f"{_J}.green:Green",
        "judge",
        "GREEN: GREEN-RadLlama2-7b counts clinically significant errors",
    ),
    # --- LLM judges through --judge-url / --judge-local (docs/judges.md) -------------------
    "chexprompt": Entry(
        f"{_J}.errors:CheXprompt",
        "judge",
        "CheXprompt-style LLM judge: clinically significant errors per report (six error "
        "types; total and insignificant as companions); lower is better",
    ),
    "crimson-weighted": Entry(
        f"{_J}.errors:CrimsonWeighted",
        "judge",
        "CheXprompt-style error counts weighted by clinical significance with CRIMSON's "
        "weights (finding errors 1/0.25, attribute errors 0.5/0); not the CRIMSON score; "
        "lower is better",
    ),
    "fineradscore": Entry(
        f"{_J}.fineradscore:FineRadScore",
        "judge",
        "FineRadScore-style LLM judge: line-by-line corrections with severity 1-4; total "
        "severity per report (corrections, per-line mean as companions); lower is better",
    ),
    "radfact": Entry(
        f"{_J}.radfact:RadFact",
        "judge",
        "RadFact-style: LLM entailment of each sentence both ways, boxes checked against the "
        "evidence; logical F1 with logical / grounding / spatial precision and recall",
    ),
    "conversation-judge": Entry(
        f"{_J}.conversation:ConversationJudge",
        "judge",
        "RadVLM-style LLM judge, 0-10 per answer against the true answer "
        "(pairs only: no question, agreement only)",
    ),
}

# What `radixpert evaluate` runs when --metrics is not given: everything that needs no weights.
DEFAULT = ("bleu", "bleu-2-radcliq", "rouge-l", "cider-d", "meteor", "f1-chexpert")
# The ReXrank set, for `--metrics rexrank`.
GROUPS: dict[str, tuple[str, ...]] = {
    "lexical": ("bleu", "bleu-2-radcliq", "rouge-l", "cider-d", "meteor"),
    "default": DEFAULT,
    "rexrank": (
        "bleu-2-radcliq",
        "bertscore",
        "semb-score",
        "radgraph-f1",
        "radcliq-v1",
        "ratescore",
        "green",
    ),
    "all": tuple(REGISTRY),
}


def names() -> list[str]:
    return list(REGISTRY)


def expand(requested: list[str]) -> list[str]:
    """Expand group names ("lexical", "rexrank", "all") and check every name exists."""
    out: list[str] = []
    for name in requested:
        for n in GROUPS.get(name, (name,)):
            if n not in REGISTRY:
                raise UnknownName(
                    f"unknown metric {n!r}; known: {', '.join(REGISTRY)}; "
                    f"groups: {', '.join(GROUPS)}"
                )
            if n not in out:
                out.append(n)
    return out


def load_class(name: str) -> type[Metric]:
    entry = REGISTRY[name]
    module, _, attr = entry.target.partition(":")
    return getattr(importlib.import_module(module), attr)


def create(name: str, **options: Any) -> Metric:
    """Instantiate the metric `name` with its registered kwargs plus `options`.

    Options the metric's constructor does not accept are dropped, so one set of CLI
    options (tokenizer, batch size, device, weight overrides) can be offered to all.
    """
    import inspect

    cls = load_class(name)
    # A metric without its own __init__ inherits object's (*args, **kwargs): it takes nothing.
    own_init = cls.__init__ is not object.__init__
    params = inspect.signature(cls.__init__).parameters if own_init else {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = dict(REGISTRY[name].kwargs)
    kwargs.update({k: v for k, v in options.items() if takes_any or k in params})
    metric = cls(**kwargs)
    metric.name = metric.name or name
    return metric
