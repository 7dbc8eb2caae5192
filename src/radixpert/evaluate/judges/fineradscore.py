"""FineRadScore-style judge: line-by-line corrections of the candidate, each with a severity.

    radixpert evaluate -r refs.json -c cands.json -m fineradscore \\
        --judge-url http://127.0.0.1:8000/v1 --judge-model NAME

What is measured follows FineRadScore (Huang et al., "FineRadScore: A Radiology Report
Line-by-Line Evaluation Technique Generating Corrections with Severity Scores", MLHC 2024,
arXiv 2405.20613; rajpurkarlab/FineRadScore ``few_shot_prompt.py`` and
``run_rexval_experiments.py``, commit c678cc2): the candidate is split into numbered lines
(sentences); the judge gives the fewest line corrections that turn it into the reference
(rewrite a line, delete it, or insert a missing one), and a clinical severity for each:

    1 not actionable       would not change management
    2 actionable nonurgent may affect care if not acted on in time
    3 urgent               needs attention soon, or the patient may be harmed
    4 emergent             needs immediate intervention

The prompt (`PROMPT_VERSION`) is written for this project (not FineRadScore's prompt or
examples) and asks for a JSON array with one entry per candidate line (``correction`` null and
severity 0 for a correct line) plus one entry per insertion (``line`` null); `parse_corrections`
checks that every line is there exactly once and every value is in range, so a truncated or
malformed answer is asked again and, after the retries, counted as a failure (NaN).

Aggregation. FineRadScore's repository ships the prompts and the generation loop but no code
that turns corrections into one number per report, and the report-level formula could not be
read from the sources available here. ReXrank shows a "FineRadScore (lower is better)" column
for MIMIC-CXR only (rajpurkarlab/ReXrank ``results/result_mimic-cxr.csv``, July 2024, values
2.84-3.14) and says it "follows the FineRadScore repository", without a formula; so no
ReXrank variant is offered, and none of these numbers should be compared with its column. One
judgement gives three named scores per report (lower is better, 0 for a perfect report):

* ``fineradscore``: total severity, the sum of the severities of all corrections;
* ``fineradscore-corrections``: the number of corrections (the abstract's "minimum number of
  line-by-line corrections");
* ``fineradscore-line-mean``: total severity divided by the number of lines judged (candidate
  lines plus insertions), which does not grow with report length (0 when there are none).

Each is the mean over the pairs whose answer parsed; failures are counted in ``detailed``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from radixpert.evaluate.base import MetricResult
from radixpert.evaluate.judges.backend import (
    Judgement,
    JudgeMetric,
    JudgeParseError,
    Messages,
    json_answer,
    mean_over_judged,
)

log = logging.getLogger(__name__)

PROMPT_VERSION = "radixpert-fineradscore-v1"
MAX_TOKENS = 2048
DELETE = "[delete]"
SEVERITIES = {
    1: "not actionable",
    2: "actionable nonurgent",
    3: "urgent",
    4: "emergent",
}
KEYS = ("line", "correction", "severity")
SOURCE = "rajpurkarlab/FineRadScore@c678cc2 few_shot_prompt.py (task and severity scale)"

SYSTEM = (
    "You are a board-certified radiologist who corrects machine-written chest X-ray reports "
    "so that they agree with a radiologist's reference report. You answer with one JSON "
    "array and nothing else."
)

INSTRUCTIONS = """The CANDIDATE report below is split into numbered lines. Correct it line by line so that its clinical content agrees with the REFERENCE report, with as few corrections as possible. The reference is correct; wording and style do not matter, only clinical content.

Give one entry for every candidate line, in order:
- {"line": N, "correction": null, "severity": 0} when line N is clinically correct;
- {"line": N, "correction": "<the corrected line>", "severity": S} when line N must be rewritten;
- {"line": N, "correction": "[delete]", "severity": S} when line N must be removed.
Then add {"line": null, "correction": "<the line to insert>", "severity": S} for each finding of the reference that no candidate line covers.

Severity S of a correction, by what the error could mean for the patient:
1 = not actionable: would not change management (for example an old healed rib fracture, or a comparison with a prior study that does not exist when the findings are otherwise right).
2 = actionable nonurgent: may affect care if not acted on in time (for example a lung nodule that needs follow-up imaging).
3 = urgent: needs attention soon or the patient may be harmed (for example a missed pneumonia, or a tube slightly out of position).
4 = emergent: needs immediate intervention (for example a missed tension pneumothorax, or a tube in the wrong airway).

Example. Reference: "Small right pleural effusion. No pneumothorax." Candidate lines: [1] Small left pleural effusion. [2] No pneumothorax. [3] Mild cardiomegaly. Answer:
[{"line": 1, "correction": "Small right pleural effusion.", "severity": 2}, {"line": 2, "correction": null, "severity": 0}, {"line": 3, "correction": "[delete]", "severity": 2}]

Answer with the JSON array only, nothing before or after it. Every entry has exactly the keys "line", "correction" and "severity"."""  # noqa: E501 - prompt text

_ENUMERATION = re.compile(r"\A\(?\d{1,2}[.)]\Z")


def report_lines(text: str) -> list[str]:
    """The candidate's lines as the judge sees them: sentences, one per line.

    Split at line breaks and after ".", "!" or "?" followed by a space (so "2.2 cm" stays
    whole); a list number ("1.", "2)") stays with the sentence it opens; blank pieces dropped.
    """
    lines: list[str] = []
    for block in text.splitlines():
        pending = ""
        for piece in re.split(r"(?<=[.!?])\s+", block.strip()):
            if not piece:
                continue
            if _ENUMERATION.match(piece):
                pending = f"{pending}{piece} "
                continue
            lines.append(pending + piece)
            pending = ""
        if pending.strip():
            lines.append(pending.strip())
    return lines


def fineradscore_messages(reference: str, candidate: str) -> Messages:
    """The conversation asking for the line corrections of one report pair."""
    lines = report_lines(candidate)
    numbered = "\n".join(f"[{i}] {line}" for i, line in enumerate(lines, 1)) or "(no lines)"
    user = (
        f"{INSTRUCTIONS}\n\nREFERENCE:\n<<<\n{reference.strip()}\n>>>\n\n"
        f"CANDIDATE ({len(lines)} lines):\n{numbered}"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_corrections(text: str, n_lines: int) -> list[dict[str, Any]]:
    """The entries of an answer for a candidate of `n_lines` lines, or JudgeParseError.

    Every line 1..n_lines must have exactly one entry; a correct line has correction null and
    severity 0, a corrected or deleted one a non-empty correction and severity 1-4; an
    insertion has line null, a non-empty correction (not "[delete]") and severity 1-4.
    """
    value = json_answer(text)
    if not isinstance(value, list):
        raise JudgeParseError("the answer must be a JSON array of entries")
    seen: set[int] = set()
    out: list[dict[str, Any]] = []
    for k, entry in enumerate(value, 1):
        where = f"entry {k}"
        if not isinstance(entry, dict):
            raise JudgeParseError(
                f"{where} must be an object with the keys line, correction, severity"
            )
        missing = [key for key in KEYS if key not in entry]
        if missing:
            raise JudgeParseError(f'{where} lacks the key "{missing[0]}"')
        extra = [key for key in entry if key not in KEYS]
        if extra:
            raise JudgeParseError(f'{where} has a key "{extra[0]}" that was not asked for')
        line, correction, severity = entry["line"], entry["correction"], entry["severity"]
        if type(severity) is not int or not 0 <= severity <= 4:
            raise JudgeParseError(f"{where}: severity must be a whole number 0 to 4")
        if correction is not None and (not isinstance(correction, str) or not correction.strip()):
            raise JudgeParseError(f"{where}: correction must be null or a non-empty string")
        if line is None:
            if correction is None or correction.strip() == DELETE:
                raise JudgeParseError(f"{where}: an insertion (line null) needs the line to insert")
            if severity == 0:
                raise JudgeParseError(f"{where}: an insertion needs a severity 1 to 4")
        else:
            if type(line) is not int or not 1 <= line <= n_lines:
                raise JudgeParseError(
                    f"{where}: line must be a candidate line number 1 to {n_lines} or null"
                    if n_lines
                    else f"{where}: the candidate has no lines; only insertions (line null)"
                )
            if line in seen:
                raise JudgeParseError(f"line {line} has two entries; give one per line")
            seen.add(line)
            if (correction is None) != (severity == 0):
                raise JudgeParseError(
                    f"line {line}: a correct line has correction null and severity 0, a "
                    "corrected one a correction and severity 1 to 4"
                )
        out.append({"line": line, "correction": correction, "severity": severity})
    absent = [i for i in range(1, n_lines + 1) if i not in seen]
    if absent:
        raise JudgeParseError(
            f"line {absent[0]} has no entry; give one entry for each of the {n_lines} lines"
        )
    return out


def summarise(entries: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per-report numbers of one judgement (all three scores and their parts)."""
    fixes = [e for e in entries if e["severity"] > 0]
    total = float(sum(e["severity"] for e in fixes))
    judged_lines = len(entries)
    out = {
        "total_severity": total,
        "corrections": float(len(fixes)),
        "line_mean": total / judged_lines if judged_lines else 0.0,
        "lines": float(sum(e["line"] is not None for e in entries)),
        "rewrites": float(
            sum(e["line"] is not None and e["correction"].strip() != DELETE for e in fixes)
        ),
        "deletions": float(
            sum(e["line"] is not None and e["correction"].strip() == DELETE for e in fixes)
        ),
        "insertions": float(sum(e["line"] is None for e in entries)),
        "max_severity": float(max((e["severity"] for e in entries), default=0)),
    }
    for s in SEVERITIES:
        out[f"severity_{s}"] = float(sum(e["severity"] == s for e in fixes))
    return out


class FineRadScore(JudgeMetric):
    """FineRadScore-style line corrections with severities 1-4: total severity per report
    (lower is better), with the number of corrections and the per-line mean as companions."""

    name = "fineradscore"
    higher_is_better = False
    description = (
        "FineRadScore-style LLM judge: line-by-line corrections with severity 1-4; total "
        "severity per report (corrections, per-line mean as companions); lower is better"
    )
    prompt_version = PROMPT_VERSION
    max_tokens = MAX_TOKENS

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        if len(references) != len(candidates):
            raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
        self.ensure_available()
        conversations = [fineradscore_messages(r, c) for r, c in zip(references, candidates)]
        # What is a complete answer depends on the candidate's number of lines.
        parsers = [_parser(len(report_lines(c))) for c in candidates]
        results = self.judge(conversations, parsers)
        return score_corrections(results, self.name, self.judge_settings(results))


def _parser(n_lines: int) -> Any:
    def parse(text: str) -> list[dict[str, Any]]:
        return parse_corrections(text, n_lines)

    return parse


def score_corrections(
    results: Sequence[Judgement], name: str = "fineradscore", settings: dict[str, Any] | None = None
) -> MetricResult:
    """The three FineRadScore-style results of parsed judgements (NaN where one failed)."""
    keys = [
        "total_severity",
        "corrections",
        "line_mean",
        "lines",
        "rewrites",
        "deletions",
        "insertions",
        "max_severity",
    ] + [f"severity_{s}" for s in SEVERITIES]
    rows = {k: np.full(len(results), math.nan) for k in keys}
    for i, r in enumerate(results):
        if r.ok:
            for k, v in summarise(r.value).items():
                rows[k][i] = v
    failed = [i for i, r in enumerate(results) if not r.ok]
    if failed:
        log.warning("%s: %d of %d answers never parsed (NaN)", name, len(failed), len(results))
    judged = ~np.isnan(rows["total_severity"])
    n_fix = float(np.nansum(rows["corrections"]))
    base = {
        "n": len(results),
        "judged": int(judged.sum()),
        "failed": len(failed),
        "failed_indices": failed,
        "failure_reasons": sorted({str(results[i].error) for i in failed})[:10],
    }
    detailed = {
        **base,
        "mean_severity_of_corrections": float(np.nansum(rows["total_severity"]) / n_fix)
        if n_fix
        else math.nan,
        "corrections_by_severity": {
            SEVERITIES[s]: int(np.nansum(rows[f"severity_{s}"])) for s in SEVERITIES
        },
        "share_without_correction": float((rows["corrections"][judged] == 0).mean())
        if judged.any()
        else math.nan,
    }
    common = {
        **(settings or {}),
        "severity_scale": {str(k): v for k, v in SEVERITIES.items()},
        "task_source": SOURCE,
        "lines": "sentences of the candidate (report_lines)",
        "failed_pairs": "NaN per sample, left out of the mean, counted in detailed",
    }

    def result(suffix: str, key: str, score: str, extra: dict[str, Any]) -> MetricResult:
        aggregate, corpus_fn = mean_over_judged(rows[key])
        return MetricResult(
            name=name + suffix,
            aggregate=aggregate,
            per_sample=[float(v) for v in rows[key]],
            higher_is_better=False,
            settings={**common, "score": score},
            detailed=extra,
            corpus_fn=corpus_fn,
            bounds=(0.0, 4.0) if key == "line_mean" else (0.0, math.inf),
            versions={"numpy": np.__version__},
        )

    head = result("", "total_severity", "sum of the severities of all corrections", detailed)
    head.per_sample_detailed = {k: [float(v) for v in rows[k]] for k in keys[3:]}
    head.extra = [
        result("-corrections", "corrections", "number of corrections", dict(base)),
        result(
            "-line-mean",
            "line_mean",
            "total severity / (candidate lines + insertions); 0 when there are none",
            dict(base),
        ),
    ]
    return head
