"""METEOR 1.5 as report-generation papers report it: the jar shipped inside pycocoevalcap.

The jar runs as pycocoevalcap runs it (``java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en
-norm``, in the jar's directory so that it finds its paraphrase table). For every pair
it is sent ``SCORE ||| reference ||| candidate`` and answers a line of 23 sufficient
statistics; one ``EVAL`` line with all statistics then returns the per-segment scores
and the corpus score. The corpus score is computed from statistics summed over
segments (the chunks of perfect segments left out, as METEOR 1.5 does), so it is not the
mean of the per-segment scores.

Unlike pycocoevalcap, which waits for each answer before sending the next line, all
lines are streamed from a writer thread while the answers are read, and "|||" is
removed from references as well as candidates (pycocoevalcap only cleans the candidate,
so a reference containing "|||" corrupts its protocol line).

For the bootstrap, `corpus_fn` recomputes the corpus score in Python from the
aggregated statistics of a resample, with METEOR 1.5's English parameters (alpha 0.85, beta 0.2,
gamma 0.6, delta 0.75; module weights exact 1.0, stem 0.6, synonym 0.8, paraphrase
0.6); on the full index it matches the jar's corpus score (checked in the tests).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from radixpert.errors import MetricUnavailable
from radixpert.evaluate.base import Metric, MetricResult, package_versions
from radixpert.evaluate.lexical.tokenize import _pycocoevalcap_dir, check_tokenizer, tokenize

logger = logging.getLogger(__name__)

JAR_NAME = "meteor-1.5.jar"
PARAPHRASE = Path("data") / "paraphrase-en.gz"
JAVA_OPTIONS = ("-Xmx2G",)
METEOR_ARGS = ("-", "-", "-stdio", "-l", "en", "-norm")

# METEOR 1.5 "en" defaults (edu.cmu.meteor.util.Constants): alpha, beta, gamma, delta and
# the weights of the exact, stem, synonym and paraphrase modules.
ALPHA, BETA, GAMMA, DELTA = 0.85, 0.20, 0.60, 0.75
MODULE_WEIGHTS = (1.0, 0.6, 0.8, 0.6)
N_STATS = 23  # tstLen refLen tstFunc refFunc, 4 x (tc rc tf rf), chunks, tstWM, refWM


def meteor_jar() -> Path | None:
    """Path of pycocoevalcap's meteor-1.5.jar, or None when pycocoevalcap lacks it."""
    root = _pycocoevalcap_dir()
    if root is None:
        return None
    jar = root / "meteor" / JAR_NAME
    return jar if jar.is_file() else None


def aggregate_stats(stats: np.ndarray) -> np.ndarray:
    """Corpus statistics from segment statistics, as the jar's MeteorStats.addStats.

    Every field is summed, except that the chunks of a perfect segment (all words
    matched in one chunk) are left out, as METEOR 1.5 does.

    Args:
        stats: array [M, 23] of segment statistics.

    Returns:
        Array [23].
    """
    s = np.asarray(stats, dtype=np.float64)
    out = s.sum(axis=0)
    stage = s[:, 4:20].reshape(-1, 4, 4)
    perfect = (
        (stage[:, :, 0].sum(axis=1) + stage[:, :, 2].sum(axis=1) == s[:, 0])
        & (stage[:, :, 1].sum(axis=1) + stage[:, :, 3].sum(axis=1) == s[:, 1])
        & (s[:, 20] == 1.0)
    )
    out[20] = s[~perfect, 20].sum()
    return out


def meteor_from_stats(stats: np.ndarray) -> np.ndarray:
    """METEOR scores from rows of the jar's 23 sufficient statistics.

    Mirrors the jar's MeteorScorer.computeMetrics, including its guards: a NaN score
    (0/0) becomes 0 and negative scores are clipped to 0.

    Args:
        stats: array [M, 23] (or [23]) of statistics, e.g. from `aggregate_stats`.

    Returns:
        Scores, shape [M] (or a 0-d array for a single row).
    """
    s = np.asarray(stats, dtype=np.float64)
    tst_len, ref_len, tst_fn, ref_fn = s[..., 0], s[..., 1], s[..., 2], s[..., 3]
    stage = s[..., 4:20].reshape(*s.shape[:-1], 4, 4)  # [..., stage, (tc, rc, tf, rf)]
    chunks, tst_words, ref_words = s[..., 20], s[..., 21], s[..., 22]
    w = np.asarray(MODULE_WEIGHTS)
    with np.errstate(divide="ignore", invalid="ignore"):
        tst_wlen = DELTA * (tst_len - tst_fn) + (1.0 - DELTA) * tst_fn
        ref_wlen = DELTA * (ref_len - ref_fn) + (1.0 - DELTA) * ref_fn
        tst_wmatch = np.zeros_like(tst_len)
        ref_wmatch = np.zeros_like(ref_len)
        # Same accumulation order as the jar: content matches, then function matches.
        for i in range(4):
            tst_wmatch = tst_wmatch + stage[..., i, 0] * w[i] * DELTA
        for i in range(4):
            ref_wmatch = ref_wmatch + stage[..., i, 1] * w[i] * DELTA
        for i in range(4):
            tst_wmatch = tst_wmatch + stage[..., i, 2] * w[i] * (1.0 - DELTA)
        for i in range(4):
            ref_wmatch = ref_wmatch + stage[..., i, 3] * w[i] * (1.0 - DELTA)
        precision = tst_wmatch / tst_wlen
        recall = ref_wmatch / ref_wlen
        fmean = 1.0 / (((1.0 - ALPHA) / precision) + (ALPHA / recall))
        tst_total = stage[..., :, 0].sum(axis=-1) + stage[..., :, 2].sum(axis=-1)
        ref_total = stage[..., :, 1].sum(axis=-1) + stage[..., :, 3].sum(axis=-1)
        identical = (tst_total == tst_len) & (ref_total == ref_len) & (chunks == 1)
        frag = np.where(identical, 0.0, chunks / ((tst_words + ref_words) / 2))
        score = fmean * (1.0 - GAMMA * frag**BETA)
    score = np.where(np.isnan(score), 0.0, score)
    return np.maximum(score, 0.0)


def _protocol_text(tokens: list[str]) -> str:
    """One side of a SCORE line: tokens joined by spaces, the field separator removed."""
    text = " ".join(t.replace("|||", "") for t in tokens)
    return " ".join(text.split())  # no empty tokens left behind, no line breaks


def _java_version() -> str:
    try:
        out = subprocess.run(
            ["java", "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    first = (out.stderr or out.stdout).strip().splitlines()
    return first[0] if first else "unknown"


def run_meteor(
    references: Sequence[str], candidates: Sequence[str]
) -> tuple[np.ndarray, list[float], float]:
    """Score pre-tokenised, space-joined texts with the METEOR 1.5 jar.

    Args:
        references: one reference line per pair (no line breaks, no "|||").
        candidates: one candidate line per pair.

    Returns:
        (statistics [N, 23], per-segment scores, corpus score).

    Raises:
        MetricUnavailable: Java or the jar is missing.
        RuntimeError: the jar failed or answered something unexpected.
    """
    jar = meteor_jar()
    java = shutil.which("java")
    if jar is None or java is None:
        raise MetricUnavailable("meteor: needs Java and pycocoevalcap's meteor-1.5.jar")
    n = len(candidates)
    if n == 0:
        return np.zeros((0, N_STATS)), [], float("nan")
    cmd = [java, "-jar", *JAVA_OPTIONS, str(jar), *METEOR_ARGS]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cmd, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
        )
        assert proc.stdin is not None and proc.stdout is not None
        failure: list[BaseException] = []

        def write_scores() -> None:
            # Written from a thread: the jar answers while we send, and a full pipe in
            # either direction would otherwise block both sides.
            try:
                for ref, cand in zip(references, candidates):
                    proc.stdin.write(f"SCORE ||| {ref} ||| {cand}\n".encode())
                proc.stdin.flush()
            except (BrokenPipeError, OSError) as e:
                failure.append(e)

        def read_line() -> str:
            line = proc.stdout.readline()
            if not line:
                proc.wait(timeout=60)
                err.seek(0)
                tail = err.read().decode("utf-8", "replace")[-2000:]
                raise RuntimeError(
                    f"METEOR jar stopped (exit {proc.returncode}) after {' '.join(cmd)}: {tail}"
                )
            return line.decode("utf-8").strip()

        try:
            writer = threading.Thread(target=write_scores, daemon=True)
            writer.start()
            stat_lines = [read_line() for _ in range(n)]
            writer.join()
            if failure:
                raise RuntimeError(f"could not write to the METEOR jar: {failure[0]}")
            proc.stdin.write(("EVAL ||| " + " ||| ".join(stat_lines) + "\n").encode())
            proc.stdin.flush()
            seg = [float(read_line()) for _ in range(n)]
            final = float(read_line())
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    stats = np.array([[float(x) for x in line.split()] for line in stat_lines])
    if stats.shape != (n, N_STATS):
        raise RuntimeError(f"unexpected METEOR statistics shape {stats.shape}")
    return stats, seg, final


class Meteor15(Metric):
    """METEOR 1.5 (pycocoevalcap's jar, ``-l en -norm``); corpus score from summed stats."""

    name = "meteor"
    higher_is_better = True
    requires = ("pycocoevalcap",)
    description = "METEOR 1.5, the Java jar shipped in pycocoevalcap (needs Java)"

    def __init__(self, tokenizer: str = "basic") -> None:
        """Set the tokeniser applied before the jar (which then applies its own -norm).

        Args:
            tokenizer: "basic", "ptb" or "none".
        """
        self.tokenizer = tokenizer

    def check(self) -> str | None:
        reason = super().check()
        if reason:
            return reason
        root = _pycocoevalcap_dir()
        jar = meteor_jar()
        if jar is None:
            return f"{JAR_NAME} not found in the installed pycocoevalcap ({root})"
        if not (jar.parent / PARAPHRASE).is_file():
            return f"METEOR's paraphrase table {jar.parent / PARAPHRASE} is missing"
        if shutil.which("java") is None:
            return "needs Java (a `java` executable on PATH), e.g. OpenJDK 11 or newer"
        return check_tokenizer(self.tokenizer)

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        """Score each candidate against its reference with the jar.

        Args:
            references: reference reports.
            candidates: candidate reports, same length.

        Returns:
            Per-segment METEOR and the jar's corpus score (from summed statistics).
        """
        self.ensure_available()
        if len(references) != len(candidates):
            raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
        refs = [_protocol_text(t) for t in tokenize(references, self.tokenizer)]
        cands = [_protocol_text(t) for t in tokenize(candidates, self.tokenizer)]
        stats, seg, final = run_meteor(refs, cands)
        check = meteor_from_stats(aggregate_stats(stats)) if len(seg) else np.nan
        if len(seg) and abs(float(check) - final) > 1e-9:
            logger.warning(
                "METEOR corpus score recomputed from statistics (%r) differs from the jar's "
                "(%r); bootstrap resamples use the recomputation",
                float(check),
                final,
            )

        def corpus_fn(idx: np.ndarray) -> float:
            return float(meteor_from_stats(aggregate_stats(stats[idx])))

        versions = package_versions("pycocoevalcap")
        versions["java"] = _java_version()
        return MetricResult(
            name="meteor",
            aggregate=final,
            per_sample=seg,
            higher_is_better=True,
            settings={
                "tokenizer": self.tokenizer,
                "implementation": f"pycocoevalcap {JAR_NAME}",
                "command": " ".join(["java", "-jar", *JAVA_OPTIONS, JAR_NAME, *METEOR_ARGS]),
                "language": "en",
                "normalize": True,
                "parameters": {"alpha": ALPHA, "beta": BETA, "gamma": GAMMA, "delta": DELTA},
                "module_weights": {
                    "exact": MODULE_WEIGHTS[0],
                    "stem": MODULE_WEIGHTS[1],
                    "synonym": MODULE_WEIGHTS[2],
                    "paraphrase": MODULE_WEIGHTS[3],
                },
                "aggregate": "jar corpus score from summed segment statistics",
            },
            detailed={"corpus_statistics": aggregate_stats(stats).tolist()},
            corpus_fn=corpus_fn,
            versions=versions,
        )
