"""Tokenizers trained on the training text, for models that start from random weights.

A model built from a named tiny size (or the demo size) has no pretrained tokenizer; a recipe
that trains one from scratch gets a byte-pair tokenizer trained on its own conversations, laid
out so that every id the model's config fixes (padding, begin and end of text, the image
placeholder) is the id of the right token::

    from radixpert.models.tokenizers import train_tokenizers
    tokenizer, decoder_tokenizer = train_tokenizers(model, texts)   # decoder_tokenizer: RadScribe
    tokenizer.save_pretrained(out / "tokenizer")

Layout per family (the configs of ``radixpert.models.{llava,mllama,onevision}`` and
``encoder_decoder``): llava and Mllama: ``<pad> <s> </s> <unk>``, the BPE merges, then the
image token at ``image_token_index``; OneVision: the same with ``<video>`` and ``<image>`` at
their indices; RadScribe: a joint-encoder tokenizer ``<pad> <unk> ...`` and a decoder tokenizer
``<pad> </s> <unk> ...`` (T5 ids: pad 0, eos 1). When the text is too small for the merges to
fill the space up to a fixed id, ``<unused_N>`` tokens fill it, so the ids never shift.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["train_bpe", "train_tokenizers"]

_NAMES = {"<pad>": "pad_token", "<s>": "bos_token", "</s>": "eos_token", "<unk>": "unk_token"}


def train_bpe(
    texts: Iterable[str], size: int, specials: Sequence[str], added: Sequence[str] = ()
) -> Any:
    """A Metaspace BPE tokenizer of exactly ``size`` tokens, then ``added`` after them.

    Args:
        texts: The training text.
        size: Tokens before ``added`` (specials and merges, filled with ``<unused_N>``).
        specials: Special tokens, given the first ids in this order.
        added: Tokens appended after the first ``size`` ids (image placeholders).

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.

    Raises:
        ValueError: If ``size`` cannot hold the specials.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if size < len(specials) + 1:
        raise ValueError(f"a vocabulary of {size} cannot hold the specials {list(specials)}")
    tok = Tokenizer(models.BPE(unk_token="<unk>" if "<unk>" in specials else None))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    # Every printable ASCII character is in the base alphabet, so no character of a later
    # text (a box's "[", a digit) becomes <unk> because the training text lacked it.
    # A vocabulary too small for that (the tiny test sizes) keeps the most frequent
    # characters that fit; the others become <unk>.
    alphabet = ["\n", *(chr(c) for c in range(33, 127))]
    roomy = size >= len(specials) + len(alphabet) + 1
    alphabet_options: dict[str, Any] = (
        {"initial_alphabet": alphabet} if roomy else {"limit_alphabet": size - len(specials)}
    )
    trainer = trainers.BpeTrainer(
        vocab_size=size, special_tokens=list(specials), show_progress=False, **alphabet_options
    )
    tok.train_from_iterator(texts, trainer)
    if tok.get_vocab_size() > size:
        raise ValueError(f"BPE made {tok.get_vocab_size()} tokens, more than {size}")
    filler = size - tok.get_vocab_size()
    if filler > 0:
        tok.add_special_tokens([AddedToken(f"<unused_{i}>", special=True) for i in range(filler)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, **{_NAMES[s]: s for s in specials if s in _NAMES}
    )
    if added:
        fast.add_special_tokens({"additional_special_tokens": list(added)})
    return fast


def _check(tokenizer: Any, expected: dict[str, int]) -> None:
    for token, index in expected.items():
        got = tokenizer.convert_tokens_to_ids(token)
        if got != index:
            raise ValueError(f"trained tokenizer put {token!r} at {got}, the model expects {index}")


def train_tokenizers(model: Any, texts: Sequence[str]) -> tuple[Any, Any]:
    """Tokenizer(s) for a random-init ``model``, trained on ``texts`` (see the module doc).

    Args:
        model: A llava (plain or HCF), Mllama, OneVision or RadScribe model.
        texts: The training text (reports and prompts).

    Returns:
        ``(tokenizer, decoder_tokenizer)``; ``decoder_tokenizer`` is None but for RadScribe.
    """
    from radixpert.models.families import family_of
    from radixpert.models.processor import MLLAMA_IMAGE_TOKEN

    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    family = family_of(model)
    core = ["<pad>", "<s>", "</s>", "<unk>"]
    if family == "radscribe":
        configs = model.configs
        joint_size = int(configs["joint_config"].vocab_size)
        decoder = configs["decoder_config"]
        joint = train_bpe(texts, joint_size, ["<pad>", "<unk>"])
        dec = train_bpe(texts, int(decoder.vocab_size), ["<pad>", "</s>", "<unk>"])
        if (dec.pad_token_id, dec.eos_token_id) != (decoder.pad_token_id, decoder.eos_token_id):
            raise ValueError(
                f"decoder ids pad/eos {(dec.pad_token_id, dec.eos_token_id)} differ from the "
                f"model's {(decoder.pad_token_id, decoder.eos_token_id)}"
            )
        return joint, dec
    config = model.config
    image = int(config.image_token_index)
    # The chat template's own words (the processor adds them to every example) get merges too.
    from radixpert.models.processor import VICUNA_SYSTEM

    texts = [*texts, *[f"{VICUNA_SYSTEM} USER: ASSISTANT:"] * 20]
    if family == "mllama":
        tokenizer = train_bpe(texts, image, core, [MLLAMA_IMAGE_TOKEN])
        _check(tokenizer, {MLLAMA_IMAGE_TOKEN: image})
    elif family == "llava_onevision":
        video = int(config.video_token_index)
        order = sorted([("<video>", video), ("<image>", image)], key=lambda t: t[1])
        if order[1][1] != order[0][1] + 1:
            raise ValueError(f"video {video} and image {image} tokens are not adjacent")
        tokenizer = train_bpe(texts, order[0][1], core, [t for t, _ in order])
        _check(tokenizer, dict(order))
    else:
        tokenizer = train_bpe(texts, image, core, ["<image>"])
        _check(tokenizer, {"<image>": image})
    text = config.text_config
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        want = getattr(text, name, None)
        got = getattr(tokenizer, name)
        if want is not None and got != want:
            raise ValueError(f"trained tokenizer has {name} {got}, the model's config {want}")
    logger.info("trained a %d-token BPE tokenizer on %d texts", len(tokenizer), len(texts))
    return tokenizer, None
