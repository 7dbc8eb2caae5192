"""ROUGE-L as pycocoevalcap's `Rouge` computes it, and ROUGE-1/-2/-L as RadEval does.

`RougeL` (`rouge-l`) is pycocoevalcap's: LCS-based F-measure with beta = 1.2.
`RougeScore` (`rouge-1`, `rouge-2`, `rouge-l-radeval`) is RadEval's: Google's `rouge_score`
package, see its docstring.

pycocoevalcap's ROUGE-L, as `RougeL` computes it:

Per pair: precision = LCS / candidate length, recall = LCS / reference length, and
F = (1 + beta^2) P R / (R + beta^2 P), 0 when P or R is 0; the aggregate is the mean.
The longest common subsequence comes from rapidfuzz's bit-parallel C++ `LCSseq`,
run on token ids mapped to code points (one character per token), which gives the
same length as the dynamic programme over tokens.

One difference from pycocoevalcap, by design: an empty candidate scores 0 even when
the reference is empty too (pycocoevalcap splits "" into one empty token and so scores
an empty/empty pair 1.0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from radixpert.evaluate.base import Metric, MetricResult
from radixpert.evaluate.lexical._ngrams import get_corpus
from radixpert.evaluate.lexical.tokenize import check_tokenizer, iter_tokenize

BETA = 1.2  # pycocoevalcap/rouge/rouge.py


def lcs_lengths(
    references: Sequence[str], candidates: Sequence[str], tokenizer: str = "basic"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LCS length of each (candidate, reference) after tokenisation, with the lengths.

    Args:
        references: reference texts.
        candidates: candidate texts, same length.
        tokenizer: tokeniser name ("basic", "ptb", "none").

    Returns:
        (LCS [N], candidate length [N], reference length [N]), int64.
    """
    corpus = get_corpus(references, candidates, tokenizer, lambda t: iter_tokenize(t, tokenizer))
    return corpus.lcs(), corpus.enc.cand_len, corpus.enc.ref_len


def lcs_reference(a: Sequence[object], b: Sequence[object]) -> int:
    """Longest common subsequence length by the textbook dynamic programme (for tests).

    Args:
        a: first sequence.
        b: second sequence.

    Returns:
        LCS length.
    """
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_from_lcs(
    lcs: np.ndarray, cand_len: np.ndarray, ref_len: np.ndarray, beta: float = BETA
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROUGE-L precision, recall and F per pair from LCS and lengths.

    Args:
        lcs: LCS lengths [N].
        cand_len: candidate lengths [N].
        ref_len: reference lengths [N].
        beta: recall weight.

    Returns:
        (precision, recall, f) arrays [N]; 0 where a length is 0.
    """
    lcs = lcs.astype(np.float64)
    prec = np.divide(lcs, cand_len, out=np.zeros_like(lcs), where=cand_len > 0)
    rec = np.divide(lcs, ref_len, out=np.zeros_like(lcs), where=ref_len > 0)
    f = np.zeros_like(lcs)
    ok = (prec != 0) & (rec != 0)
    b2 = beta**2
    f[ok] = ((1 + b2) * prec[ok] * rec[ok]) / (rec[ok] + b2 * prec[ok])
    return prec, rec, f


class RougeL(Metric):
    """ROUGE-L F (beta 1.2) per pair, averaged, as pycocoevalcap's `Rouge`."""

    name = "rouge-l"
    higher_is_better = True
    description = "ROUGE-L F (beta 1.2) as pycocoevalcap"

    def __init__(self, tokenizer: str = "basic") -> None:
        """Set the tokeniser.

        Args:
            tokenizer: "basic", "ptb" or "none".
        """
        self.tokenizer = tokenizer

    def check(self) -> str | None:
        from radixpert._optional import install_hint, missing

        if missing("rapidfuzz"):
            return f"needs rapidfuzz: {install_hint(['rapidfuzz'])}"
        return check_tokenizer(self.tokenizer)

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        """Score each candidate against its reference.

        Args:
            references: reference reports.
            candidates: candidate reports, same length.

        Returns:
            ROUGE-L F per pair and their mean; precision and recall in per_sample_detailed.
        """
        self.ensure_available()
        lcs, cand_len, ref_len = lcs_lengths(references, candidates, self.tokenizer)
        prec, rec, f = rouge_l_from_lcs(lcs, cand_len, ref_len)
        return MetricResult(
            bounds=(0.0, 1.0),
            name="rouge-l",
            aggregate=float(f.mean()) if len(f) else float("nan"),
            per_sample=f.tolist(),
            higher_is_better=True,
            settings={
                "tokenizer": self.tokenizer,
                "implementation": "pycocoevalcap Rouge (reimplemented; LCS by rapidfuzz)",
                "beta": BETA,
                "aggregate": "mean of per-sample F",
            },
            per_sample_detailed={"precision": prec.tolist(), "recall": rec.tolist()},
            versions={},  # a reimplementation; the LCS length does not depend on versions
        )


# rouge_score's names of the ROUGE types RadEval reports, by radixpert's metric name.
RADEVAL_TYPES = {"rouge-1": "rouge1", "rouge-2": "rouge2", "rouge-l-radeval": "rougeL"}


class RougeScore(Metric):
    """ROUGE-1, ROUGE-2 or ROUGE-L F-measure as RadEval computes it.

    RadEval (github.com/jbdel/RadEval, ``radeval/metrics/rouge/adapter.py``, ``RougeMetric``)
    builds ``rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)``,
    calls ``score(ref, hyp)`` per pair and reports the mean of the per-pair ``fmeasure``
    (beta 1, the harmonic mean of P and R). rouge_score's tokeniser lower-cases, replaces
    every character outside ``[a-z0-9]`` by a space and Porter-stems words longer than 3
    letters; ROUGE-L is the LCS over the whole report (not ``rougeLsum``'s per sentence).
    `--tokenizer` does not apply. An empty candidate or reference scores 0.

    Unlike `RougeL` (pycocoevalcap, beta 1.2, its own tokeniser) this uses the package
    itself, so the numbers are RadEval's for the same rouge-score version.
    """

    higher_is_better = True
    requires = ("rouge_score",)
    description = "ROUGE F (beta 1) as RadEval: rouge_score with the Porter stemmer"

    def __init__(self, rouge_type: str = "rougeL") -> None:
        """Choose the ROUGE type.

        Args:
            rouge_type: "rouge1", "rouge2" or "rougeL" (rouge_score's names).
        """
        names = {v: k for k, v in RADEVAL_TYPES.items()}
        if rouge_type not in names:
            raise ValueError(f"rouge_type {rouge_type!r}: choose from {', '.join(names)}")
        self.rouge_type = rouge_type
        self.name = names[rouge_type]

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        """Score each candidate against its reference with rouge_score.

        Args:
            references: reference reports.
            candidates: candidate reports, same length.

        Returns:
            F per pair and their mean; precision and recall in per_sample_detailed.
        """
        self.ensure_available()
        from rouge_score import rouge_scorer

        from radixpert.evaluate.base import package_versions

        scorer = rouge_scorer.RougeScorer([self.rouge_type], use_stemmer=True)
        scores = [scorer.score(r, c)[self.rouge_type] for r, c in zip(references, candidates)]
        f = [s.fmeasure for s in scores]
        return MetricResult(
            name=self.name,
            aggregate=float(np.mean(f)) if f else float("nan"),
            per_sample=f,
            higher_is_better=True,
            settings={
                "implementation": "rouge_score.rouge_scorer.RougeScorer, as RadEval",
                "rouge_type": self.rouge_type,
                "use_stemmer": True,
                "beta": 1.0,
                "score": "fmeasure",
                "tokenizer": "rouge_score default (lower-case, [a-z0-9] words, Porter stemmer)",
                "aggregate": "mean of per-sample F",
            },
            per_sample_detailed={
                "precision": [s.precision for s in scores],
                "recall": [s.recall for s in scores],
            },
            versions=package_versions("rouge-score", "nltk"),
            bounds=(0.0, 1.0),
        )
