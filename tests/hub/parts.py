"""Tiny checkpoints of the encoders and text models LLaVA-Rad and RadScribe are built from.

BiomedCLIP in open_clip's hub layout (``open_clip_config.json`` + ``open_clip_pytorch_model.bin``,
its text tower an HF BERT repository of its own), DenseNet-121 in timm's hub layout
(``config.json`` with ``pretrained_cfg`` + ``model.safetensors``), and the transformers
repositories of ViT, ResNet-50, BERT and T5. Written with each library's own save functions
(open_clip's and timm's ``save_for_hf``, transformers' ``save_pretrained``); what is scaled down
is listed in ``tests/hub/README.md``.

    from tests.hub import hub_checkpoint
    hub_checkpoint("timm/densenet121.tv_in1k")  # then timm.create_model("hf-hub:...", True)
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.hub import builder, hub_checkpoint
from tests.hub.vlm import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SEED,
    _pad_to,
    _save,
    corpus,
    sentencepiece_model,
)

BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
BIOMEDCLIP = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
# A real, smaller timm ViT in place of vit_base_patch16_224 (86 M parameters): timm's own test
# ViT (patch 16, width 64, 6 blocks), built at BiomedCLIP's 224 px.
BIOMEDCLIP_TIMM = "test_vit"

# BERT vocabularies: bert-base-uncased keeps [unused0..98] between [PAD] and [UNK];
# PubMedBERT (BiomedBERT) starts with the five specials.
BERT_SPECIALS = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BIOMEDBERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def bert_tokenizer(specials: list[str], size: int) -> object:
    """A lower-cased WordPiece ``BertTokenizer`` of ``size`` tokens, ``specials`` first."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import BertTokenizer

    like = BertTokenizer().backend_tokenizer
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = like.normalizer
    tok.pre_tokenizer = like.pre_tokenizer
    trainer = trainers.WordPieceTrainer(
        vocab_size=size,
        special_tokens=specials,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    return BertTokenizer(vocab=tok.get_vocab(), do_lower_case=True, model_max_length=512)


def _write_vocab_txt(tokenizer: object, snapshot: Path) -> None:
    # The real BERT repositories ship vocab.txt; transformers 5 writes tokenizer.json only.
    vocab = tokenizer.get_vocab()
    lines = sorted(vocab, key=vocab.__getitem__)
    (snapshot / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _tiny_bert(vocab_size: int, max_positions: int = 512) -> object:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        type_vocab_size=2,
        pad_token_id=0,
    )


# ----------------------------------------------------------------------------- BiomedCLIP


@builder(BIOMEDBERT)
def biomedbert_abstract(snapshot: Path) -> None:
    """BertForMaskedLM + uncased PubMed WordPiece vocabulary (BiomedCLIP's text tower)."""
    from transformers import BertForMaskedLM

    tokenizer = bert_tokenizer(BIOMEDBERT_SPECIALS, 400)
    torch.manual_seed(SEED)
    _save(BertForMaskedLM(_tiny_bert(len(tokenizer))), snapshot)
    tokenizer.save_pretrained(snapshot)
    _write_vocab_txt(tokenizer, snapshot)


@builder(BIOMEDCLIP)
def biomedclip(snapshot: Path) -> None:
    """open_clip CustomTextCLIP (timm ViT + HF BERT), saved by open_clip's own ``save_for_hf``
    as the real repository is: open_clip_config.json, open_clip_pytorch_model.bin, tokenizer."""
    from open_clip import CustomTextCLIP
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.push_to_hf_hub import save_for_hf
    from open_clip.tokenizer import HFTokenizer

    from tests.hub.vlm import CLIP_MEAN, CLIP_STD

    hub_checkpoint(BIOMEDBERT)  # the text tower's config and tokenizer are read from it
    model_cfg = {
        "embed_dim": 512,
        "vision_cfg": {
            "timm_model_name": BIOMEDCLIP_TIMM,
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": {
            "hf_model_name": BIOMEDBERT,
            "hf_tokenizer_name": BIOMEDBERT,
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 256,
        },
    }
    torch.manual_seed(SEED)
    model = CustomTextCLIP(**model_cfg)
    # The real preprocess_cfg: OpenAI CLIP's mean and std, nothing else.
    set_model_preprocess_cfg(model, {"mean": CLIP_MEAN, "std": CLIP_STD})
    tokenizer = HFTokenizer(BIOMEDBERT, context_length=256)
    save_for_hf(model, tokenizer, model_cfg, str(snapshot), safe_serialization=False)


# ----------------------------------------------------------------------------- timm


@builder("timm/densenet121.tv_in1k")
def densenet121_tv(snapshot: Path) -> None:
    """timm DenseNet-121 (full size, 8 M parameters), saved by timm's ``save_for_hf``."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(SEED)
    model = timm.create_model("densenet121.tv_in1k", pretrained=False)
    save_for_hf(model, str(snapshot), safe_serialization=True)


# ----------------------------------------------------------------------------- vision encoders


@builder("google/vit-base-patch16-224-in21k")
def vit_base_in21k(snapshot: Path) -> None:
    """ViTModel (with pooler) + ViTImageProcessor, 32 px (224 in the real one)."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(SEED)
    _save(ViTModel(config), snapshot)
    ViTImageProcessor(
        size={"height": 32, "width": 32}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(snapshot)


@builder("microsoft/resnet-50")
def resnet50(snapshot: Path) -> None:
    """ResNetForImageClassification (bottleneck blocks, 1000 classes) + ConvNextImageProcessor."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[16, 16, 32, 32],
        depths=[1, 1, 1, 1],
        layer_type="bottleneck",
        num_labels=1000,
    )
    torch.manual_seed(SEED)
    _save(ResNetForImageClassification(config), snapshot)
    ConvNextImageProcessor(
        size={"shortest_edge": 32},
        crop_pct=0.875,
        resample=3,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ).save_pretrained(snapshot)


# ----------------------------------------------------------------------------- text models


@builder("google-bert/bert-base-uncased")
def bert_base_uncased(snapshot: Path) -> None:
    """BERT with both pre-training heads (as the real checkpoint holds them: the pooler that
    BertModel loads, masked-LM and next-sentence) + uncased WordPiece, [unused*] kept."""
    from transformers import BertForPreTraining

    tokenizer = bert_tokenizer(BERT_SPECIALS, 500)
    torch.manual_seed(SEED)
    _save(BertForPreTraining(_tiny_bert(len(tokenizer))), snapshot)
    tokenizer.save_pretrained(snapshot)
    _write_vocab_txt(tokenizer, snapshot)


def _t5(snapshot: Path, *, d_model: int) -> None:
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration, T5Tokenizer

    # T5's SentencePiece layout: <pad> 0, </s> 1, <unk> 2, then the Unigram pieces; the
    # tokenizer appends <extra_id_99>..<extra_id_0> and the embedding is padded to 128.
    (snapshot / "spiece.model").write_bytes(
        sentencepiece_model(256, "unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    )
    tokenizer = T5Tokenizer.from_pretrained(snapshot, extra_ids=100, model_max_length=512)
    config = T5Config(
        vocab_size=_pad_to(len(tokenizer), 128),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(SEED)
    _save(T5ForConditionalGeneration(config), snapshot)
    GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0).save_pretrained(
        snapshot
    )
    tokenizer.save_pretrained(snapshot)


@builder("google-t5/t5-small")
def t5_small(snapshot: Path) -> None:
    """T5ForConditionalGeneration + T5 tokenizer (spiece.model and tokenizer.json)."""
    _t5(snapshot, d_model=16)


@builder("luqh/ClinicalT5-base")
def clinical_t5_base(snapshot: Path) -> None:
    """Clinical-T5 (a T5 pre-trained on MIMIC notes): the same layout, a wider tiny model."""
    _t5(snapshot, d_model=32)
