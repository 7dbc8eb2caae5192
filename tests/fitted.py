"""A demo-size llava fitted in seconds so that its greedy answers are known conversations.

Tests of chat, the server and the page need a model whose answers are predictable (the boxes
the instruction builders wrote, a phantom's findings) and are produced by the real
``generate``: ``fit_llava`` trains the demo-size llava (random init, MLP connector, a
tokenizer trained on the texts) on whole conversations about one image until every answer
turn comes back word for word, and fails the test if one does not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Turns = Sequence[dict[str, str]]


def fit_llava(
    image: Path,
    conversations: Sequence[Turns],
    *,
    vocabulary: Iterable[str] | None = None,
    max_steps: int = 250,
    max_new_tokens: int = 80,
) -> tuple[Any, Any]:
    """(model, processor) whose greedy answer to each conversation's turns before an answer
    turn is that answer.

    Args:
        image: The one image every conversation is about.
        conversations: Alternating human / gpt turns (the first human turn holds ``<image>``).
        vocabulary: The texts the tokenizer is trained on (default: the conversations'); the
            answers and prompts to come must be spelt well by it.
        max_steps: Most AdamW steps (lr 5e-3, full batch) before giving up.
        max_new_tokens: Token limit of the checking generation.
    """
    import torch

    from radixpert.infer.generate import generate_answers
    from radixpert.models.llava import demo_llava
    from radixpert.models.processor import RadProcessor
    from radixpert.models.tokenizers import train_tokenizers

    torch.manual_seed(0)
    model = demo_llava("mlp")
    texts = (
        [t["value"] for c in conversations for t in c] if vocabulary is None else list(vocabulary)
    )
    tokenizer, _ = train_tokenizers(model, texts)
    processor = RadProcessor.from_model(model, tokenizer)
    batch = processor([[image]] * len(conversations), [list(c) for c in conversations])
    optimiser = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(max_steps):
        loss = model(**batch).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        if loss.item() < 0.03:
            break
    model.eval()
    asked = [
        (list(c[:k]), c[k]["value"])
        for c in conversations
        for k in range(1, len(c))
        if c[k]["from"] == "gpt"
    ]
    prompts = [{"image": [str(image)], "conversations": turns} for turns, _ in asked]
    answers = generate_answers(
        model, processor, prompts, progress=False, max_new_tokens=max_new_tokens
    )
    wanted = [answer for _, answer in asked]
    assert answers == wanted, f"the model did not learn its answers (loss {loss.item():.3f})"
    return model, processor
