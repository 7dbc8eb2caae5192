"""Per-report BLEU-2 as RadCliQ-v1 and ReXrank compute it.

RadCliQ-v1 (Yu et al., 2023, CXR-Report-Metric) scores each report with BLEU-2 on a
deliberately simple tokenisation: the text is lower-cased, every "." becomes " .", the
result is split on single spaces and empty strings are dropped (other punctuation stays
attached to words, and newlines or tabs stay inside tokens). The score is sentence BLEU
with weights (1/2, 1/2) and NLTK's ``SmoothingFunction().method1`` (epsilon 0.1 added to
a zero numerator; fast-bleu's default, which CXR-Report-Metric calls, is the same), with
NLTK's brevity penalty. The leaderboard number is the mean over reports.

This module reproduces ``nltk.translate.bleu_score.sentence_bleu([ref], cand,
weights=(0.5, 0.5), smoothing_function=SmoothingFunction().method1)`` exactly, with the
n-gram counting vectorised (see `_ngrams`) and the final formula in plain floats.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from radixpert.evaluate.base import Metric, MetricResult, mean
from radixpert.evaluate.lexical._ngrams import get_corpus

WEIGHTS = (0.5, 0.5)
EPSILON = 0.1  # nltk SmoothingFunction(epsilon=0.1).method1
TOKENIZATION = "radcliq-v1"  # cache key of this tokenisation


def radcliq_tokenize(text: str) -> list[str]:
    """RadCliQ-v1's report preprocessing for BLEU.

    Args:
        text: report text.

    Returns:
        Lower-cased text with "." split off, split on single spaces, empties dropped.
    """
    return [t for t in str(text).lower().replace(".", " .").split(" ") if t]


def _iter_tokens(texts: Sequence[str]) -> Iterator[list[str]]:
    return (radcliq_tokenize(t) for t in texts)


def _sentence_bleu2(num1: int, num2: int, hyp_len: int, ref_len: int) -> float:
    """NLTK sentence BLEU with weights (1/2, 1/2) and method1, from the counts."""
    if num1 == 0:  # no unigram match: nltk returns 0 before smoothing
        return 0.0
    den1 = max(1, hyp_len)
    den2 = max(1, hyp_len - 1)
    p1 = num1 / den1
    p2 = num2 / den2 if num2 else (num2 + EPSILON) / den2
    if hyp_len > ref_len:
        bp = 1.0
    elif hyp_len == 0:
        bp = 0.0
    else:
        bp = math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(math.fsum((WEIGHTS[0] * math.log(p1), WEIGHTS[1] * math.log(p2))))


def bleu2_radcliq(references: Sequence[str], candidates: Sequence[str]) -> list[float]:
    """RadCliQ-v1's per-report BLEU-2 of each candidate against its reference.

    Args:
        references: reference reports.
        candidates: candidate reports, same length.

    Returns:
        One score per pair, in input order.
    """
    corpus = get_corpus(references, candidates, TOKENIZATION, _iter_tokens)
    if corpus.enc.n_pairs == 0:
        return []
    correct = corpus.ngram_stats(2).correct
    return [
        _sentence_bleu2(int(a), int(b), int(c), int(r))
        for (a, b), c, r in zip(correct.tolist(), corpus.enc.cand_len, corpus.enc.ref_len)
    ]


class RadCliQBleu2(Metric):
    """Per-report BLEU-2 of RadCliQ-v1 / ReXrank, averaged (its own fixed tokenisation)."""

    name = "bleu-2-radcliq"
    higher_is_better = True
    description = (
        "per-report BLEU-2 of RadCliQ/ReXrank (lower-case, '.' split off, space split, "
        "NLTK method1 smoothing), averaged"
    )

    def __init__(self) -> None:
        """Take no options: the tokenisation is part of the metric's definition, so the
        runner's `tokenizer` option does not apply (the registry drops it)."""

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        """Score each candidate against its reference.

        Args:
            references: reference reports.
            candidates: candidate reports, same length.

        Returns:
            BLEU-2 per pair and their mean.
        """
        scores = bleu2_radcliq(references, candidates)
        return MetricResult(
            name="bleu-2-radcliq",
            aggregate=mean(scores),
            per_sample=scores,
            higher_is_better=True,
            settings={
                "tokenizer": "radcliq-v1: lower(), '.' -> ' .', split(' '), drop empty",
                "weights": list(WEIGHTS),
                "smoothing": f"nltk SmoothingFunction().method1 (epsilon {EPSILON})",
                "brevity_penalty": "nltk (closest reference length)",
                "reference_implementation": "nltk.translate.bleu_score.sentence_bleu",
                "aggregate": "mean of per-report scores",
            },
            versions={},  # a reimplementation; no third-party package shapes the numbers
        )
