"""Corpus BLEU-1..4 exactly as pycocoevalcap's `Bleu(4)` computes it, vectorised.

pycocoevalcap (the COCO caption evaluation code most report-generation papers use)
computes corpus BLEU from summed clipped n-gram matches and guesses, with the
"closest" reference length, and guards divisions with two constants: ``tiny = 1e-15``
added to numerators and ``small = 1e-9`` to denominators. Its per-sentence scores use
the same formula on one sentence's statistics. Both are reproduced here from the same
sufficient statistics, counted with numpy instead of Python dictionaries.

One reference per candidate, so the "closest" reference length is the reference length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from radixpert.evaluate.base import Metric, MetricResult
from radixpert.evaluate.lexical._ngrams import get_corpus
from radixpert.evaluate.lexical.tokenize import check_tokenizer, iter_tokenize

# pycocoevalcap/bleu/bleu_scorer.py guards
TINY = 1e-15
SMALL = 1e-9


def bleu_from_stats(
    correct: np.ndarray, guess: np.ndarray, testlen: np.ndarray, reflen: np.ndarray
) -> np.ndarray:
    """pycocoevalcap's BLEU-1..n formula applied row by row.

    Args:
        correct: clipped n-gram matches, shape [M, n] (orders 1..n).
        guess: candidate n-gram counts, shape [M, n].
        testlen: candidate lengths, shape [M].
        reflen: (closest) reference lengths, shape [M].

    Returns:
        BLEU-1..n per row, shape [M, n].
    """
    correct = np.asarray(correct, dtype=np.float64)
    guess = np.asarray(guess, dtype=np.float64)
    # The running product over orders, then the k-th root, as the reference code does.
    prod = np.cumprod((correct + TINY) / (guess + SMALL), axis=1)
    roots = 1.0 / np.arange(1, correct.shape[1] + 1, dtype=np.float64)
    bleu = prod**roots
    ratio = (np.asarray(testlen, dtype=np.float64) + TINY) / (
        np.asarray(reflen, dtype=np.float64) + SMALL
    )
    short = ratio < 1
    if short.any():
        with np.errstate(over="ignore", under="ignore"):
            bp = np.exp(1 - 1 / ratio[short])
        bleu[short] *= bp[:, None]
    return bleu


def corpus_bleu_from_stats(
    correct: np.ndarray, guess: np.ndarray, testlen: np.ndarray, reflen: np.ndarray
) -> list[float]:
    """Corpus BLEU-1..n from per-sample statistics (summed, then pycocoevalcap's formula).

    Args:
        correct: clipped n-gram matches per sample, shape [M, n].
        guess: candidate n-gram counts per sample, shape [M, n].
        testlen: candidate lengths, shape [M].
        reflen: reference lengths, shape [M].

    Returns:
        Corpus BLEU-1..n.
    """
    n = correct.shape[1]
    tc = [int(x) for x in np.asarray(correct).sum(axis=0)]
    tg = [int(x) for x in np.asarray(guess).sum(axis=0)]
    t_len = int(np.sum(testlen))
    r_len = int(np.sum(reflen))
    out = []
    bleu = 1.0
    for k in range(n):
        bleu *= float(tc[k] + TINY) / (tg[k] + SMALL)
        out.append(bleu ** (1.0 / (k + 1)))
    ratio = (t_len + TINY) / (r_len + SMALL)
    if ratio < 1:
        bp = math.exp(1 - 1 / ratio)
        out = [b * bp for b in out]
    return out


def bleu_statistics(
    references: Sequence[str], candidates: Sequence[str], tokenizer: str = "basic", max_n: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sufficient statistics of BLEU for text pairs.

    Args:
        references: reference texts.
        candidates: candidate texts, same length.
        tokenizer: tokeniser name ("basic", "ptb", "none").
        max_n: highest n-gram order.

    Returns:
        (correct [N, max_n], guess [N, max_n], candidate length [N], reference length [N]).
    """
    corpus = get_corpus(references, candidates, tokenizer, lambda t: iter_tokenize(t, tokenizer))
    enc = corpus.enc
    correct = corpus.ngram_stats(max_n).correct
    orders = np.arange(1, max_n + 1, dtype=np.int64)
    guess = np.maximum(0, enc.cand_len[:, None] - orders[None, :] + 1)
    return correct, guess, enc.cand_len, enc.ref_len


class CorpusBleu(Metric):
    """Corpus BLEU-4 with BLEU-1..3 companions, as pycocoevalcap's `Bleu(4)`.

    The aggregate is the corpus BLEU (summed statistics), not the mean of the
    per-sentence scores; `corpus_fn` recomputes it on a bootstrap resample.
    """

    name = "bleu"
    higher_is_better = True
    description = "corpus BLEU-1..4 as pycocoevalcap computes it (closest reference length)"

    def __init__(self, tokenizer: str = "basic", max_n: int = 4) -> None:
        """Set the tokeniser and highest order.

        Args:
            tokenizer: "basic", "ptb" or "none" (see `radixpert.evaluate.lexical.tokenize`).
            max_n: highest n-gram order; the primary result is BLEU-max_n.
        """
        if max_n < 1:
            raise ValueError("max_n must be at least 1")
        self.tokenizer = tokenizer
        self.max_n = max_n

    def check(self) -> str | None:
        return check_tokenizer(self.tokenizer)

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        """Score each candidate against its reference; BLEU-max_n with lower orders as extras.

        Args:
            references: reference reports.
            candidates: candidate reports, same length.

        Returns:
            BLEU-max_n result whose `extra` holds BLEU-1..max_n-1.
        """
        self.ensure_available()
        correct, guess, testlen, reflen = bleu_statistics(
            references, candidates, self.tokenizer, self.max_n
        )
        per_sample = bleu_from_stats(correct, guess, testlen, reflen)
        corpus = corpus_bleu_from_stats(correct, guess, testlen, reflen)
        settings = {
            "tokenizer": self.tokenizer,
            "implementation": "pycocoevalcap Bleu (reimplemented, vectorised)",
            "max_n": self.max_n,
            "reference_length": "closest",
            "tiny": TINY,
            "small": SMALL,
            "aggregate": "corpus BLEU from summed statistics",
            "per_sample": "pycocoevalcap per-sentence BLEU",
        }
        # A reimplementation: no third-party package shapes these numbers.
        versions: dict[str, str] = {}

        def result(k: int) -> MetricResult:
            def corpus_fn(idx: np.ndarray, k: int = k) -> float:
                return corpus_bleu_from_stats(correct[idx], guess[idx], testlen[idx], reflen[idx])[
                    k - 1
                ]

            return MetricResult(
                name=f"bleu-{k}",
                aggregate=corpus[k - 1],
                per_sample=per_sample[:, k - 1].tolist(),
                higher_is_better=True,
                settings=dict(settings, n=k),
                detailed={
                    "candidate_length": int(testlen.sum()),
                    "reference_length": int(reflen.sum()),
                    "length_ratio": (float(testlen.sum()) + TINY) / (float(reflen.sum()) + SMALL),
                    "precisions": [
                        (int(correct[:, j].sum()) + TINY) / (int(guess[:, j].sum()) + SMALL)
                        for j in range(k)
                    ],
                },
                corpus_fn=corpus_fn,
                versions=versions,
            )

        main = result(self.max_n)
        main.extra = [result(k) for k in range(1, self.max_n)]
        return main
