"""Tiny random-weight models of the real metric architectures, saved the way the real ones ship.

Tests save these into temporary folders and load them through the library's own loading
code (weights folders, tokenizers, strict state-dict loading), so everything but the
trained numbers is exercised. Nothing here downloads anything.
"""

from __future__ import annotations

import json
import re
import tarfile
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


# -- RadGraph: a random DyGIE++ in the radgraph package's archive layout -------------------

BACKBONE_ID = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext"
NER_LABELS = ["ANAT-DP", "OBS-DP", "OBS-U", "OBS-DA"]  # RadGraph's entity labels
RELATION_LABELS = ["modify", "located_at", "suggestive_of"]
WORDS = [
    "no",
    "acute",
    "cardiopulmonary",
    "process",
    "pleural",
    "effusion",
    "left",
    "right",
    "lung",
    "lungs",
    "clear",
    "heart",
    "size",
    "normal",
    "opacity",
    "base",
    "bases",
    "small",
    "mild",
    "edema",
    "is",
    "are",
    "there",
    "a",
    "the",
    "of",
]


def build_tiny_backbone(folder: Path) -> Path:
    """A BERT with hidden size 16 and a WordPiece vocabulary, saved with its tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-", ":", "(", ")"]
    vocab += sorted(set(WORDS)) + list(letters) + [f"##{c}" for c in letters]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def build_tiny_archive(
    path: Path, backbone: Path, dataset: str, seed: int = 0, legacy_buffers: bool = False
) -> Path:
    """A random DyGIE++ saved as a radgraph package archive (`dataset` = its model type).

    config.json names the backbone by its hub id, as the released archives do; the model is
    built from the local tiny backbone with the package's classes, as `RadGraph` builds it.
    """
    import torch
    from dotmap import DotMap
    from radgraph.allennlp.data import Vocabulary
    from radgraph.allennlp.modules import text_field_embedders, token_embedders
    from radgraph.dygie.models import dygie

    from radixpert.evaluate.clinical import radgraph as rg

    work = path.parent / f"{path.name}.d"
    (work / "vocabulary").mkdir(parents=True, exist_ok=True)
    bert = {
        "type": "pretrained_transformer_mismatched",
        "max_length": 64,
        "model_name": BACKBONE_ID,
    }
    model = {
        "type": "dygie",
        "embedder": {"token_embedders": {"bert": dict(bert)}},
        "initializer": {"regexes": [["_span_width_embedding.weight", {"type": "xavier_normal"}]]},
        "module_initializer": {"regexes": [[".*weight", {"type": "xavier_normal"}]]},
        "loss_weights": {"ner": 0.2, "relation": 1.0, "coref": 0.0, "events": 0.0},
        "feature_size": 4,
        "max_span_width": 3,
        "target_task": "relation",
        "feedforward_params": {"num_layers": 1, "hidden_dims": 8, "dropout": 0.0},
        "modules": {
            "coref": {"spans_per_word": 0.3, "max_antecedents": 10, "coref_prop": 0},
            "ner": {},
            "relation": {"spans_per_word": 0.5},
            "events": {
                "trigger_spans_per_word": 0.3,
                "argument_spans_per_word": 0.8,
                "loss_weights": {"trigger": 1.0, "arguments": 1.0},
            },
        },
    }
    config = {
        "dataset_reader": {"type": "dygie", "max_span_width": 3, "token_indexers": {"bert": bert}},
        "model": model,
    }
    (work / "config.json").write_text(json.dumps(config))
    voc = work / "vocabulary"
    (voc / "non_padded_namespaces.txt").write_text("*tags\n*labels\n")
    # NER: the null label "" first (index 0); relations: the labels only.
    (voc / f"{dataset}__ner_labels.txt").write_text("\n" + "\n".join(NER_LABELS) + "\n")
    (voc / f"{dataset}__relation_labels.txt").write_text("\n".join(RELATION_LABELS) + "\n")

    rg._patch_radgraph_tokenizers()
    embedder = text_field_embedders.BasicTextFieldEmbedder(
        {
            "bert": token_embedders.PretrainedTransformerMismatchedEmbedder(
                str(backbone), max_length=64
            )
        }
    )
    kwargs = DotMap(json.loads(json.dumps(model)))
    for key in ("type", "embedder", "initializer", "module_initializer"):
        del kwargs[key]
    torch.manual_seed(seed)
    net = dygie.DyGIE(vocab=Vocabulary.from_files(str(voc)), embedder=embedder, **kwargs)
    state = net.state_dict()
    if legacy_buffers:  # as saved by transformers < 4.31, where this buffer was persistent
        key = "_embedder.token_embedder_bert.transformer_model.embeddings.position_ids"
        state[key] = torch.arange(128).expand((1, -1))
    torch.save(state, work / "weights.th")
    (voc / ".lock").unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for item in sorted(work.rglob("*")):
            tar.add(item, arcname=str(item.relative_to(work)), recursive=False)
    return path
