"""Optional LLM passes over report text, behind explicit flags (see `radixpert.llm`).

`llm_prior_sentences` asks a local model which numbered sentences of a report refer to a
prior examination. The model only returns sentence numbers, so it can drop sentences but never
add or alter text; everything it drops is returned. An answer that does not parse is an
`LLMError`, and the caller decides (and counts) what to do: nothing falls back silently.
"""

from __future__ import annotations

import json
import re

from radixpert.data.reports import _split_sentences
from radixpert.errors import LLMError
from radixpert.llm import ChatClient

PROMPT = (
    "Below are the numbered sentences of a radiology report. Which sentences refer to a prior "
    "examination or to change over time (comparison, unchanged, improved, new, interval, as "
    'before)? Answer with JSON only, of the form {{"prior": [numbers]}}.\n\n{sentences}'
)


def llm_prior_sentences(text: str, client: ChatClient) -> tuple[str, list[str]]:
    """(kept text, removed sentences) with the model choosing what refers to prior studies."""
    sentences = _split_sentences(text)
    if not sentences:
        return text, []
    numbered = "\n".join(f"{i + 1}. {s}" for i, s in enumerate(sentences))
    answer = client.complete([{"role": "user", "content": PROMPT.format(sentences=numbered)}])
    m = re.search(r"\{.*\}", answer, re.S)
    try:
        prior = json.loads(m.group(0))["prior"] if m else None
        picks = {int(n) for n in prior}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise LLMError(
            f'prior-reference answer is not {{"prior": [numbers]}}: {answer[:200]!r}'
        ) from None
    if not picks <= set(range(1, len(sentences) + 1)):
        raise LLMError(f"prior-reference answer names sentences that do not exist: {sorted(picks)}")
    kept = [s for i, s in enumerate(sentences, 1) if i not in picks]
    removed = [s for i, s in enumerate(sentences, 1) if i in picks]
    return " ".join(kept), removed
