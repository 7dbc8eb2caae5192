"""CIDEr-D exactly as pycocoevalcap's `Cider` computes it (its scorer is CIDEr-D), vectorised.

For each n = 1..4, candidate and reference become tf-idf vectors over n-grams with
idf = log(number of pairs) - log(max(1, df)), df being the number of pairs whose
reference contains the n-gram (document frequency from the references of the whole
corpus). The similarity is the clipped cosine sum(min(c, r) * r) / (|c| |r|), times a
Gaussian length penalty exp(-delta^2 / (2 sigma^2)) with sigma = 6; the score is the
mean over n, times 10. The aggregate is the mean of the per-pair scores.

Two details of pycocoevalcap are kept on purpose, so numbers match published ones:
the "length" in the penalty is the number of bigrams (its loop adds term frequencies
when the n-gram index equals 1), i.e. max(tokens - 1, 0); and the reference-length
constant is log of the number of pairs (one reference per pair here).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from radixpert.evaluate.base import Metric, MetricResult
from radixpert.evaluate.lexical._ngrams import get_corpus
from radixpert.evaluate.lexical.tokenize import check_tokenizer, iter_tokenize

N_MAX = 4
SIGMA = 6.0
SCALE = 10.0


def cider_d_scores(
    references: Sequence[str],
    candidates: Sequence[str],
    tokenizer: str = "basic",
    n: int = N_MAX,
    sigma: float = SIGMA,
) -> np.ndarray:
    """Per-pair CIDEr-D of text pairs (one reference each), as pycocoevalcap.

    Args:
        references: reference texts.
        candidates: candidate texts, same length.
        tokenizer: tokeniser name ("basic", "ptb", "none").
        n: highest n-gram order.
        sigma: standard deviation of the length penalty.

    Returns:
        float64 array [N] of CIDEr-D scores.
    """
    corpus = get_corpus(references, candidates, tokenizer, lambda t: iter_tokenize(t, tokenizer))
    enc = corpus.enc
    if enc.n_pairs == 0:
        return np.zeros(0)
    sims = corpus.ngram_stats(n, cider=True).cider
    assert sims is not None
    # pycocoevalcap's "length" is the bigram count (see the module docstring).
    delta = (np.maximum(enc.cand_len - 1, 0) - np.maximum(enc.ref_len - 1, 0)).astype(float)
    penalty = np.e ** (-(delta**2) / (2 * sigma**2))
    # Summed order by order, as pycocoevalcap does, then mean over orders and x10.
    total = np.zeros(enc.n_pairs)
    for k in range(n):
        total += sims[:, k] * penalty
    return total / n * SCALE


class CiderD(Metric):
    """CIDEr-D (n 1..4, sigma 6, x10, clipped, length penalty) as pycocoevalcap's `Cider`."""

    name = "cider-d"
    higher_is_better = True
    description = "CIDEr-D (sigma 6, x10, clipped, length penalty) as pycocoevalcap"

    def __init__(self, tokenizer: str = "basic") -> None:
        """Set the tokeniser.

        Args:
            tokenizer: "basic", "ptb" or "none".
        """
        self.tokenizer = tokenizer

    def check(self) -> str | None:
        return check_tokenizer(self.tokenizer)

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        """Score each candidate against its reference; idf from all references.

        Args:
            references: reference reports.
            candidates: candidate reports, same length.

        Returns:
            CIDEr-D per pair and their mean.
        """
        self.ensure_available()
        scores = cider_d_scores(references, candidates, self.tokenizer)
        return MetricResult(
            name="cider-d",
            aggregate=float(scores.mean()) if len(scores) else float("nan"),
            per_sample=scores.tolist(),
            higher_is_better=True,
            settings={
                "tokenizer": self.tokenizer,
                "implementation": "pycocoevalcap Cider (CIDEr-D; reimplemented, vectorised)",
                "n": N_MAX,
                "sigma": SIGMA,
                "scale": SCALE,
                "clipping": True,
                "length_penalty": "gaussian on bigram-count difference (as pycocoevalcap)",
                "document_frequency": "references of the evaluated corpus",
                "ref_len": "log(number of pairs)",
                "aggregate": "mean of per-sample scores (idf fixed from the full corpus)",
            },
            versions={},
        )
