"""Vectorised n-gram statistics over (reference, candidate) pairs, shared by the lexical metrics.

The COCO implementations count n-grams with Python dictionaries, one sentence at a time.
Here every token of the corpus is integer-encoded once, laid out pair by pair
(candidate then reference), and for each order n the n-gram starting at every position
gets an exact integer id. Sorting the (id, position) keys puts the occurrences of the
same n-gram in the same pair next to each other (positions already run pair by pair,
candidate before reference), so counts, clipped matches, document frequencies and
tf-idf norms all follow from run boundaries and `np.bincount`, with no Python loop over
pairs. Positions are first grouped into cache-sized buckets by their first token (every
occurrence of an n-gram starts with the same token, so an n-gram never spans buckets),
which keeps the sorts and gathers in cache and the cost linear in the number of pairs.

Gram identities are exact (no hashing): the n-gram id is a dense id of the pair
((n-1)-gram id, last token), built order by order.

BLEU, CIDEr-D and ROUGE-L on the same texts share the work through a small cache of
the most recent corpora (`get_corpus`), keyed by the tokeniser and the texts themselves.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

# Token ids become code points for rapidfuzz; the UTF-16 surrogate block must be skipped.
_SURROGATE_START = 0xD800
_SURROGATE_SIZE = 0x800
_MAX_CODE_POINTS = 0x110000 - _SURROGATE_SIZE
# Bits available for a packed (gram id, index) sort key; a constant so tests can force the
# argsort path taken with huge vocabularies.
_PACK_BITS = 63
_ENCODE_CHUNK = 2048  # pairs encoded per step, bounding the memory held as Python strings


@dataclass
class EncodedPairs:
    """Integer-encoded token sequences of N (candidate, reference) pairs.

    Tokens are laid out flat, pair by pair: candidate 0, reference 0, candidate 1, ...

    Attributes:
        ids: token id of every token, int32.
        cand_len: tokens per candidate, int64 [N].
        ref_len: tokens per reference, int64 [N].
        vocab_size: number of distinct tokens.
    """

    ids: np.ndarray
    cand_len: np.ndarray
    ref_len: np.ndarray
    vocab_size: int

    @property
    def n_pairs(self) -> int:
        return len(self.cand_len)

    def doc_lengths(self) -> np.ndarray:
        """Lengths of the 2N documents in flat order (candidate, reference, candidate, ...)."""
        out = np.empty(2 * self.n_pairs, dtype=np.int64)
        out[0::2] = self.cand_len
        out[1::2] = self.ref_len
        return out

    def _split(self, flat: Sequence) -> tuple[list, list]:
        ends = np.cumsum(self.doc_lengths()).tolist()
        starts = [0, *ends[:-1]]
        docs = [flat[a:b] for a, b in zip(starts, ends)]
        return docs[0::2], docs[1::2]

    def as_strings(self) -> tuple[list[str], list[str]] | None:
        """Each document as a string with one code point per token (for rapidfuzz).

        Returns:
            (candidates, references), or None when the vocabulary is too large to map
            tokens to distinct code points.
        """
        if self.vocab_size > _MAX_CODE_POINTS:
            return None
        cps = self.ids.astype(np.uint32)
        cps[cps >= _SURROGATE_START] += _SURROGATE_SIZE
        return self._split(cps.astype("<u4").tobytes().decode("utf-32-le"))

    def as_id_lists(self) -> tuple[list[list[int]], list[list[int]]]:
        """Each document as a list of token ids."""
        return self._split(self.ids.tolist())


def encode_pairs(
    references: Iterable[Sequence[str]], candidates: Iterable[Sequence[str]]
) -> EncodedPairs:
    """Integer-encode tokenised references and candidates with one shared vocabulary.

    Args:
        references: one token list per pair (any iterable, e.g. a generator).
        candidates: one token list per pair, as many as `references`.

    Returns:
        The encoded corpus.
    """
    vocab: dict[str, int] = {}
    chunks: list[np.ndarray] = []
    lengths: list[int] = []
    # Interleave candidate and reference of each pair; a missing partner shows as a
    # sentinel so that unequal lengths are detected.
    missing = object()
    docs = itertools.chain.from_iterable(
        itertools.zip_longest(candidates, references, fillvalue=missing)
    )
    while True:
        block = list(itertools.islice(docs, 2 * _ENCODE_CHUNK))
        if not block:
            break
        if any(d is missing for d in block):
            raise ValueError("references and candidates differ in number")
        lengths.extend(map(len, block))
        flat = list(itertools.chain.from_iterable(block))
        # dict.fromkeys and map(dict.__getitem__) keep the per-token work in C; only
        # distinct tokens of the block pass through Python.
        for tok in dict.fromkeys(flat):
            if tok not in vocab:
                vocab[tok] = len(vocab)
        if len(vocab) >= 1 << 31:
            raise ValueError("more than 2**31 distinct tokens")
        chunks.append(np.fromiter(map(vocab.__getitem__, flat), dtype=np.int32, count=len(flat)))
    lens = np.asarray(lengths, dtype=np.int64)
    return EncodedPairs(
        ids=np.concatenate(chunks) if chunks else np.zeros(0, np.int32),
        cand_len=lens[0::2].copy(),
        ref_len=lens[1::2].copy(),
        vocab_size=len(vocab),
    )


@dataclass
class NgramStats:
    """Per-pair n-gram statistics of orders 1..max_n.

    Attributes:
        correct: clipped matches, sum over n-grams of min(candidate count, reference
            count), int64 [N, max_n] (BLEU's numerators).
        cider: per order, pycocoevalcap's clipped tf-idf cosine of candidate and
            reference (before the length penalty), float64 [N, max_n]; None when not
            asked for. idf uses document frequencies over the references of all pairs.
    """

    correct: np.ndarray
    cider: np.ndarray | None = None


def _new_flags(a: np.ndarray) -> np.ndarray:
    """Boolean array, True where a sorted array starts a new value."""
    flags = np.empty(len(a), dtype=bool)
    if len(a):
        flags[0] = True
        np.not_equal(a[1:], a[:-1], out=flags[1:])
    return flags


class _PairSums:
    """Per-pair sums of row weights, taken in batches: few bincounts, bounded memory."""

    def __init__(self, n_pairs: int, names: tuple[str, ...], batch_rows: int = 1 << 22):
        self.n_pairs = n_pairs
        self.batch_rows = batch_rows
        self.totals = {k: np.zeros(n_pairs) for k in names}
        self.pending: dict[str, list[np.ndarray]] = {k: [] for k in names}
        self.pairs: list[np.ndarray] = []
        self.rows = 0

    def add(self, pair: np.ndarray, **weights: np.ndarray) -> None:
        self.pairs.append(pair)
        for k, w in weights.items():
            self.pending[k].append(w)
        self.rows += len(pair)
        if self.rows >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if not self.pairs:
            return
        pair = np.concatenate(self.pairs)
        for k, ws in self.pending.items():
            if ws:
                self.totals[k] += np.bincount(
                    pair, weights=np.concatenate(ws), minlength=self.n_pairs
                )
            ws.clear()
        self.pairs.clear()
        self.rows = 0

    def result(self) -> dict[str, np.ndarray]:
        self.flush()
        return self.totals


def _buckets(ids: np.ndarray, vocab: int, target: int) -> np.ndarray:
    """Bucket of every token id: tokens in frequency order, cut into ~`target` occurrences.

    An n-gram's bucket is that of its first token, so every occurrence of an n-gram (of
    any order) lands in one bucket and buckets can be processed independently.
    """
    freq = np.bincount(ids, minlength=vocab)
    by_freq = np.argsort(freq, kind="stable")
    bucket_sorted = np.cumsum(freq[by_freq]) // target  # monotone, so buckets are contiguous
    out = np.empty(vocab, dtype=np.int64)
    out[by_freq] = bucket_sorted
    return out


def ngram_stats(
    enc: EncodedPairs, max_n: int, cider: bool = False, bucket_size: int = 1 << 17
) -> NgramStats:
    """Clipped n-gram matches (and optionally CIDEr-D cosines) per pair and order.

    Positions are split into buckets by their first token (roughly `bucket_size`
    positions each), so each sort and gather works on cache-sized arrays and the cost
    stays linear in the corpus size; all occurrences of an n-gram share a bucket, so
    document frequencies are complete within it.

    Args:
        enc: the encoded corpus.
        max_n: highest n-gram order.
        cider: also compute the per-order CIDEr-D similarities.
        bucket_size: target number of token positions per bucket.

    Returns:
        The statistics, one column per order 1..max_n.
    """
    n_pairs = enc.n_pairs
    correct = np.zeros((n_pairs, max_n), dtype=np.int64)
    cider_val = np.zeros((n_pairs, max_n)) if cider else None
    n_tok = len(enc.ids)
    if n_pairs == 0 or n_tok == 0:
        return NgramStats(correct, cider_val)
    ids = enc.ids
    vocab = max(enc.vocab_size, 1)
    lengths = enc.doc_lengths()
    small = np.int32 if 2 * n_pairs < 1 << 31 and int(lengths.max()) < 1 << 31 else np.int64
    remaining = (np.repeat(np.cumsum(lengths), lengths) - np.arange(n_tok)).astype(small)
    doc = np.repeat(np.arange(2 * n_pairs, dtype=small), lengths)  # 2 * pair + side
    log_docs = np.log(float(n_pairs))

    bucket = _buckets(ids, vocab, bucket_size)[ids]
    n_buckets = int(bucket.max()) + 1
    # Few buckets: a radix sort on small integers groups positions by bucket, in order.
    by_bucket = np.argsort(
        bucket.astype(np.uint16 if n_buckets < 1 << 16 else np.int64), kind="stable"
    )
    bounds = np.concatenate([[0], np.cumsum(np.bincount(bucket, minlength=n_buckets))])
    del bucket

    # Per order: per-pair sums of the rows' weights over all buckets.
    names = ("match", "vc2", "vr2", "dot") if cider_val is not None else ("match",)
    sums = [_PairSums(n_pairs, names) for _ in range(max_n)]
    for b in range(n_buckets):
        pos = by_bucket[bounds[b] : bounds[b + 1]]  # ascending positions
        if len(pos) == 0:
            continue
        rem = remaining[pos]
        bdoc = doc[pos]
        size = len(pos)
        idx_bits = max(int(size - 1).bit_length(), 1)
        local = np.arange(size, dtype=np.int64)
        gram = ids[pos].astype(np.int64)
        gram_count = vocab
        for n in range(1, max_n + 1):
            valid = rem >= n
            m = int(np.count_nonzero(valid))
            if m == 0:
                break  # no n-gram starts here; higher orders neither
            if n > 1:
                # Extend each (n-1)-gram by its next token: an exact id < count * vocab.
                nxt = np.take(ids, pos + (n - 1), mode="clip")  # clipped: too short anyway
                gram = gram * vocab + nxt
                gram_count *= vocab
            if int(gram_count - 1).bit_length() + idx_bits <= _PACK_BITS:
                # Sort (gram, index) packed in one int64: a plain sort is much faster than
                # an argsort; indices follow positions, i.e. pair by pair, candidate first.
                packed = gram << idx_bits
                packed |= local
                packed[~valid] = np.iinfo(np.int64).max  # too short: sorts last, dropped
                packed.sort()
                packed = packed[:m]
                sidx = packed & ((1 << idx_bits) - 1)
                sgram = packed >> idx_bits
                del packed
            else:
                # Ids too large to pack (huge vocabularies): stable argsort instead.
                vidx = np.flatnonzero(valid)
                sidx = vidx[np.argsort(gram[vidx], kind="stable")]
                sgram = gram[sidx]
            sdoc = bdoc[sidx]
            # Rows: one per distinct (gram, pair); the candidate's occurrences are the
            # row's positions with side bit 0.
            new_gram = _new_flags(sgram)
            del sgram
            new_row = _new_flags(sdoc >> 1)
            new_row |= new_gram
            row_start = np.flatnonzero(new_row)
            row_len = np.diff(np.append(row_start, m))
            cand = np.add.reduceat((sdoc & 1) == 0, row_start, dtype=np.int64)
            ref = row_len - cand
            row_pair = sdoc[row_start] >> 1
            dense = np.cumsum(new_gram)
            dense -= 1
            if cider_val is None:
                sums[n - 1].add(row_pair, match=np.minimum(cand, ref))
            else:
                row_gram = dense[row_start]
                df = np.bincount(row_gram, weights=ref > 0)
                idf = (log_docs - np.log(np.maximum(1.0, df)))[row_gram]
                vc = cand * idf
                vr = ref * idf
                sums[n - 1].add(
                    row_pair,
                    match=np.minimum(cand, ref),
                    vc2=vc * vc,
                    vr2=vr * vr,
                    # Clipped dot product; rows absent from the candidate add min(0, r) r = 0.
                    dot=np.minimum(vc, vr) * vr,
                )
            if n < max_n:
                # Dense ids of this order's n-grams, per position, for order n + 1.
                gram = np.zeros(size, dtype=np.int64)
                gram[sidx] = dense
                gram_count = int(dense[-1]) + 1
    for n, acc in enumerate(sums):
        tot = acc.result()
        correct[:, n] = tot["match"].astype(np.int64)
        if cider_val is not None:
            norm_c = np.sqrt(tot["vc2"])
            norm_r = np.sqrt(tot["vr2"])
            dot = tot["dot"]
            both = (norm_c != 0) & (norm_r != 0)
            cider_val[:, n] = np.divide(dot, norm_c * norm_r, out=dot, where=both)
    return NgramStats(correct, cider_val)


# ---------------------------------------------------------------------------------------
# shared work between metrics on the same texts
# ---------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """One tokenised, encoded corpus and the statistics computed on it so far."""

    enc: EncodedPairs
    _stats: dict[tuple[int, bool], NgramStats] = field(default_factory=dict)
    _lcs: np.ndarray | None = None

    def ngram_stats(self, max_n: int, cider: bool = False) -> NgramStats:
        """`ngram_stats` of this corpus, computed once (BLEU and CIDEr-D share one pass)."""
        for (n, has_cider), st in self._stats.items():
            if n >= max_n and (has_cider or not cider):
                return NgramStats(st.correct[:, :max_n], st.cider[:, :max_n] if cider else None)
        # Counting dominates; the CIDEr arithmetic on top is cheap, so always do both
        # for the standard 4 orders.
        st = ngram_stats(self.enc, max_n, cider=cider or max_n >= 4)
        self._stats[(max_n, st.cider is not None)] = st
        return NgramStats(st.correct, st.cider if cider else None)

    def lcs(self) -> np.ndarray:
        """LCS length of each (candidate, reference), computed once."""
        if self._lcs is None:
            from rapidfuzz.distance import LCSseq
            from rapidfuzz.process import cpdist

            if self.enc.n_pairs == 0:
                self._lcs = np.zeros(0, dtype=np.int64)
            else:
                docs = self.enc.as_strings()
                if docs is None:  # more distinct tokens than code points: use id lists
                    docs = self.enc.as_id_lists()
                cands, refs = docs
                out = cpdist(cands, refs, scorer=LCSseq.similarity, dtype=np.int64, workers=1)
                self._lcs = np.asarray(out, dtype=np.int64).reshape(-1)
        return self._lcs


_CACHE: OrderedDict[tuple, Corpus] = OrderedDict()
_CACHE_SIZE = 2
_LOCK = threading.Lock()


def get_corpus(
    references: Sequence[str],
    candidates: Sequence[str],
    tokenizer: str,
    tokenize_fn: Callable[[Sequence[str]], Iterable[Sequence[str]]],
) -> Corpus:
    """The encoded corpus of these texts under this tokeniser, from cache when possible.

    Args:
        references: reference texts.
        candidates: candidate texts, same length.
        tokenizer: name of the tokenisation (part of the cache key).
        tokenize_fn: maps a sequence of texts to token lists (may be lazy).

    Returns:
        The corpus; metrics on the same texts and tokeniser share it.
    """
    if len(references) != len(candidates):
        raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
    key = (tokenizer, tuple(references), tuple(candidates))
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    corpus = Corpus(encode_pairs(tokenize_fn(references), tokenize_fn(candidates)))
    with _LOCK:
        _CACHE[key] = corpus
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return corpus


def clear_cache() -> None:
    """Forget cached corpora (they hold token ids and per-pair statistics)."""
    with _LOCK:
        _CACHE.clear()
