"""A tiny checkpoint of the MarianMT translation model PadChest's reports are translated with.

``Helsinki-NLP/opus-mt-es-en`` in the layout transformers' Marian conversion writes
(``convert_marian_to_pytorch.py``): ``source.spm`` (Spanish) and ``target.spm`` (English)
SentencePiece models, one joint ``vocab.json`` with ``</s>`` 0 and ``<unk>`` 1 first and
``<pad>`` appended last, a ``MarianMTModel`` whose pad token is also the decoder start token
and a bad word. The SentencePiece models are real ones, trained here with ``sentencepiece`` on
a few invented PadChest-style Spanish sentences and on the phantom report text; what is
scaled down is listed in ``tests/hub/README.md``.

    from tests.hub import hub_checkpoint
    hub_checkpoint("Helsinki-NLP/opus-mt-es-en")  # then MarianMTModel.from_pretrained(that id)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.hub import builder
from tests.hub.vlm import SEED, _save, sentencepiece_model

OPUS_MT_ES_EN = "Helsinki-NLP/opus-mt-es-en"

# Invented sentences in the style of PadChest's reports (Spanish, some stemmed as the release
# ships them): the source side the tiny SentencePiece model is trained on.
SPANISH = (
    "sin hallazgos patologicos .",
    "sin hallazg patolog edad paciente .",
    "cardiomegalia . derrame pleural derecho .",
    "cardiomegali . derram pleural derech .",
    "aumento del indice cardiotoracico .",
    "elongacion aortica . cambios degenerativos en columna dorsal .",
    "marcapasos bicameral . cambios pulmonares cronicos .",
    "no se identifica neumotorax .",
    "infiltrado alveolar en lobulo inferior izquierdo compatible con neumonia .",
    "nodulo pulmonar en lobulo superior derecho .",
    "engrosamiento pleural apical bilateral .",
    "atelectasia laminar basal .",
    "pinzamiento del seno costofrenico izquierdo .",
    "sonda nasogastrica y tubo endotraqueal .",
    "cateter venoso central via yugular derecha .",
    "escoliosis dorsal . cifosis .",
    "patron intersticial bilateral .",
    "sin cambios respecto al estudio previo .",
    "fractura costal antigua en arco posterior .",
    "hernia de hiato .",
)


def _joint_vocab(models: list[bytes]) -> dict[str, int]:
    """Marian's joint vocabulary: ``</s>`` 0, ``<unk>`` 1, every piece of both SentencePiece
    models once, then ``<pad>`` (added last by the conversion, ``add_special_tokens_to_vocab``)."""
    import sentencepiece as spm

    vocab = {"</s>": 0, "<unk>": 1}
    for blob in models:
        proc = spm.SentencePieceProcessor(model_proto=blob)
        for i in range(proc.get_piece_size()):
            if proc.is_control(i) or proc.is_unknown(i):
                continue
            vocab.setdefault(proc.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    return vocab


@builder(OPUS_MT_ES_EN)
def opus_mt_es_en(snapshot: Path) -> None:
    """MarianMTModel + MarianTokenizer (source.spm, target.spm, vocab.json)."""
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    # Unigram models with the default <unk> <s> </s> control pieces, as the OPUS-MT models have.
    source = sentencepiece_model(160, "unigram", SPANISH)
    target = sentencepiece_model(200, "unigram")
    (snapshot / "source.spm").write_bytes(source)
    (snapshot / "target.spm").write_bytes(target)
    vocab = _joint_vocab([source, target])
    (snapshot / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = MarianTokenizer(
        str(snapshot / "source.spm"),
        str(snapshot / "target.spm"),
        str(snapshot / "vocab.json"),
        source_lang="es",
        target_lang="en",
    )
    pad = vocab["<pad>"]
    config = MarianConfig(
        vocab_size=len(vocab),
        decoder_vocab_size=len(vocab),
        share_encoder_decoder_embeddings=True,
        d_model=16,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        activation_function="swish",
        max_position_embeddings=512,
        scale_embedding=True,
        static_position_embeddings=True,
        pad_token_id=pad,
        eos_token_id=0,
        forced_eos_token_id=0,
        bos_token_id=0,
        decoder_start_token_id=pad,
        tie_word_embeddings=True,
    )
    torch.manual_seed(SEED)
    _save(MarianMTModel(config), snapshot)
    GenerationConfig(
        bad_words_ids=[[pad]],
        bos_token_id=0,
        decoder_start_token_id=pad,
        eos_token_id=0,
        forced_eos_token_id=0,
        pad_token_id=pad,
        max_length=512,
        num_beams=4,
    ).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
