"""Tiny random-weight models of the real metric architectures, saved the way the real ones ship.

Tests save these into temporary folders and load them through the library's own loading
code (weights folders, tokenizers, strict state-dict loading), so everything but the
trained numbers is exercised. Nothing here downloads anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# A few report sentences: enough text for a byte-level BPE and a WordPiece vocabulary.
CORPUS = (
    "No acute cardiopulmonary process.",
    "There is a small left pleural effusion.",
    "Heart size is normal. Lungs are clear.",
    "Mild cardiomegaly with pulmonary edema.",
    "Right lower lobe consolidation concerning for pneumonia.",
    "No pneumothorax. Support devices in place.",
    "Possible atelectasis at the bases, no fracture.",
    "Enlarged cardiomediastinal silhouette and a lung lesion.",
)


def build_tiny_distilroberta(folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny RoBERTa (6 layers, hidden 16) laid out like distilroberta-base.

    The folder holds config.json, model.safetensors, vocab.json and merges.txt (no
    tokenizer_config.json, as in the hub repository), i.e. exactly the files the weights
    registry asks for.

    Args:
        folder: where to write; created if needed.
        seed: torch seed for the random weights.

    Returns:
        The folder.
    """
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        list(CORPUS) * 4,
        vocab_size=400,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    bpe.save_model(str(folder))
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=len(bpe.get_vocab()),
        hidden_size=16,
        num_hidden_layers=6,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    RobertaModel(config).save_pretrained(folder)
    return folder


def _wordpiece_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for s in CORPUS for w in re.findall(r"\w+|[^\w\s]", s.lower())})
    pieces = ["##s", "##ing", "##ed", "##al", "a", "b", "c", "d", "e", "##a", "##e"]
    return specials + [w for w in words + pieces if w not in specials]


def build_tiny_bert_base(folder: str | Path) -> Path:
    """Save a tiny bert-base-uncased stand-in: config.json and a WordPiece vocab.txt.

    Only these two files are needed: the CheXbert backbone is built from the config and
    its weights come from chexbert.pth.

    Returns:
        The folder.
    """
    from transformers import BertConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _wordpiece_vocab()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=512,
        pad_token_id=0,
        # Wide random weights, so that the [CLS] vector (hence labels) varies with the text.
        initializer_range=1.0,
    ).save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return folder


def chexbert_state_dict(bert_folder: str | Path, seed: int = 0) -> dict:
    """A random state dict with the layout of the original CheXbert `bert_labeler`.

    Built independently of the library: a transformers BertModel under "bert.", 13 heads
    of 4 classes and one of 2 (No Finding) under "linear_heads.<i>.", as in
    stanfordmlgroup/CheXbert src/models/bert_labeler.py, then prefixed "module." as
    nn.DataParallel saved it.
    """
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig.from_pretrained(bert_folder)
    state = {f"bert.{k}": v for k, v in BertModel(config).state_dict().items()}
    for i in range(14):
        head = torch.nn.Linear(config.hidden_size, 4 if i < 13 else 2)
        state[f"linear_heads.{i}.weight"] = head.weight.detach()
        state[f"linear_heads.{i}.bias"] = head.bias.detach()
    return {f"module.{k}": v.clone() for k, v in state.items()}


def build_tiny_chexbert(folder: str | Path, bert_folder: str | Path, seed: int = 0) -> Path:
    """Save chexbert.pth as the original training script did (`model_state_dict` + extras).

    Returns:
        The folder holding chexbert.pth.
    """
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"epoch": 3, "model_state_dict": chexbert_state_dict(bert_folder, seed)},
        folder / "chexbert.pth",
    )
    return folder
