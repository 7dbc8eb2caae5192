"""Tiny checkpoints of the vision-language and language repositories radixpert starts from.

Each builder writes, with the library's own ``save_pretrained``, a random model of the real
repository's architecture class, scaled down, with the real repository's file names, special
tokens, processor classes and chat template (sources in ``tests/hub/README.md``). Tokenizers
are small vocabularies trained offline on phantom report text, laid out like the real ones (the
special tokens at the real positions relative to the vocabulary: Llama 3's 256 specials after
the byte-level BPE and ``<|image|>`` just past them; Llama 2's ``<unk> <s> </s>`` and the 256
byte-fallback pieces first; Qwen2's ``<|endoftext|> <|im_start|> <|im_end|>`` after the BPE).

    from tests.hub import hub_checkpoint
    hub_checkpoint("meta-llama/Llama-3.2-11B-Vision-Instruct")  # then from_pretrained(that id)
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from tests.hub import builder

SEED = 0

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# ----------------------------------------------------------------------------- tokenizers


@functools.cache
def corpus() -> tuple[str, ...]:
    """Report text of 64 seeded phantom studies (findings, impression, indication) plus the
    words the chat templates write, the text every tiny tokenizer is trained on."""
    from radixpert.data.phantoms import generate_phantom

    texts = ["system user assistant You are a helpful assistant. Describe the image."]
    for seed in range(64):
        _, truth = generate_phantom(seed, size=64)
        texts += [truth.findings, truth.impression, truth.indication]
    return tuple(texts)


def _merges(tokenizer: Any) -> list[tuple[str, str]]:
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]


def train_bpe(
    like: Any, size: int, *, byte_level: bool = True, **bpe: Any
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """BPE vocabulary and merges of ``size`` tokens, trained on ``corpus()`` with the normalizer
    and pre-tokenizer of ``like`` (a ``tokenizers.Tokenizer``, e.g. a library tokenizer's
    ``backend_tokenizer``), so the library class rebuilt from them splits text the same way."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(**bpe))
    tok.normalizer = like.normalizer
    tok.pre_tokenizer = like.pre_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    suffix = (
        {"end_of_word_suffix": bpe["end_of_word_suffix"]} if "end_of_word_suffix" in bpe else {}
    )
    trainer = trainers.BpeTrainer(
        vocab_size=size, initial_alphabet=alphabet, show_progress=False, **suffix
    )
    tok.train_from_iterator(corpus(), trainer)
    return tok.get_vocab(), _merges(tok)


def sentencepiece_model(
    size: int, model_type: str, sentences: Iterable[str] | None = None, **options: Any
) -> bytes:
    """A SentencePiece model (``tokenizer.model`` / ``spiece.model``) trained on ``sentences``
    (default ``corpus()``)."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus() if sentences is None else sentences),
        model_writer=out,
        vocab_size=size,
        model_type=model_type,
        character_coverage=1.0,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
        seed_sentencepiece_size=10000,
        **options,
    )
    return out.getvalue()


# Llama 3's pre-tokenizer split, as transformers' convert_mllama_weights_to_hf.py gives it.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
LLAMA3_SPECIALS += [
    f"<|reserved_special_token_{i + 2}|>" for i in range(256 - len(LLAMA3_SPECIALS))
]


def llama3_tokenizer(bpe_size: int, extra: list[str]) -> Any:
    """A Llama 3 tokenizer: byte-level BPE of ``bpe_size`` tokens, the 256 Llama 3 special
    tokens after it, then ``extra`` (Mllama's ``<|image|>``); ``<|begin_of_text|>`` prepended."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    like = Tokenizer(models.BPE())
    like.pre_tokenizer = split
    vocab, merges = train_bpe(like, bpe_size)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tok.pre_tokenizer = split
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in LLAMA3_SPECIALS + extra])
    bos = LLAMA3_SPECIALS[0]
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A",
                pair=f"{bos} $A {bos}:1 $B:1",
                special_tokens=[(bos, tok.token_to_id(bos))],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=131072,
    )


@functools.cache
def _llama2_spm() -> bytes:
    # Llama 2's layout: <unk> 0, <s> 1, </s> 2, the byte-fallback pieces <0x00>..<0xFF>, merges.
    return sentencepiece_model(
        512,
        "bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
    )


def llama2_tokenizer(snapshot: Path, **kwargs: Any) -> Any:
    """Vicuna's (Llama 2's) SentencePiece tokenizer: writes ``tokenizer.model`` into
    ``snapshot`` and returns the ``LlamaTokenizer`` transformers converts from it."""
    from transformers import LlamaTokenizer

    (snapshot / "tokenizer.model").write_bytes(_llama2_spm())
    return LlamaTokenizer.from_pretrained(
        snapshot, add_bos_token=True, add_eos_token=False, legacy=False, **kwargs
    )


QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def qwen2_tokenizer(bpe_size: int, **kwargs: Any) -> Any:
    """Qwen2's tokenizer: byte-level BPE then ``<|endoftext|> <|im_start|> <|im_end|>``."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = train_bpe(Qwen2Tokenizer().backend_tokenizer, bpe_size)
    # Ids fixed here: Qwen2Tokenizer adds its eos and pad tokens itself, in its own order.
    vocab = {**vocab, **{t: len(vocab) + i for i, t in enumerate(QWEN2_SPECIALS)}}
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        split_special_tokens=False,
        model_max_length=131072,
        **kwargs,
    )
    tok.add_tokens([AddedToken(t, special=True) for t in QWEN2_SPECIALS], special_tokens=True)
    return tok


def _pad_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _save(model: Any, snapshot: Path, shards: int = 1) -> None:
    """``save_pretrained`` in ``shards`` safetensors files (the real repository's count), with
    ``model.safetensors.index.json`` when more than one."""
    if shards == 1:
        model.save_pretrained(snapshot)
        return
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    # Greedy packing can give one file more than size / shards suggests: grow the limit until
    # save_pretrained writes exactly ``shards`` files.
    for step in range(50):
        model.save_pretrained(snapshot, max_shard_size=int(size / shards * (1 + step / 25)) + 1)
        written = sorted(snapshot.glob("model-*.safetensors"))
        if len(written) == shards:
            return
        for path in [*written, snapshot / "model.safetensors.index.json"]:
            path.unlink()
    raise AssertionError(f"no shard size splits {type(model).__name__} into {shards} files")


def _save_processor(processor: Any, snapshot: Path) -> None:
    # transformers 5 folds the image processor into processor_config.json; the real
    # repositories also ship preprocessor_config.json, which AutoImageProcessor reads.
    processor.save_pretrained(snapshot)
    processor.image_processor.save_pretrained(snapshot)


# ----------------------------------------------------------------------------- templates

# meta-llama/Llama-3.2-11B-Vision-Instruct chat_template.json (README: sources).
MLLAMA_CHAT_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- Find out if there are any images #}
{% set image_ns = namespace(has_images=false) %}      
{%- for message in messages %}
    {%- for content in message['content'] %}
        {%- if content['type'] == 'image' %}
            {%- set image_ns.has_images = true %}
        {%- endif %}
    {%- endfor %}
{%- endfor %}

{#- Error out if there are images and system message #}
{%- if image_ns.has_images and not system_message == "" %}
    {{- raise_exception("Prompting with images is incompatible with system messages.") }}
{%- endif %}

{#- System message if there are no images #}
{%- if not image_ns.has_images %}
    {{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
    {%- if tools is not none %}
        {{- "Environment: ipython\\n" }}
    {%- endif %}
    {{- "Cutting Knowledge Date: December 2023\\n" }}
    {{- "Today Date: " + date_string + "\\n\\n" }}
    {%- if tools is not none and not tools_in_user_message %}
        {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
        {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
        {{- "Do not use variables.\\n\\n" }}
        {%- for t in tools %}
            {{- t | tojson(indent=4) }}
            {{- "\\n\\n" }}
        {%- endfor %}
    {%- endif %}
    {{- system_message }}
    {{- "<|eot_id|>" }}
{%- endif %}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
        {%- if message['content'] is string %}
            {{- message['content'] }}
        {%- else %}
            {%- for content in message['content'] %}
                {%- if content['type'] == 'image' %}
                    {{- '<|image|>' }}
                {%- elif content['type'] == 'text' %}
                    {{- content['text'] }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""  # noqa: E501, W291

# llava-hf/llava-1.5-7b-hf chat_template.json.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# llava-hf/llava-onevision-qwen2-7b-ov-hf, as transformers' conversion script writes it.
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}"
    "{% endif %}{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen/Qwen2-7B-Instruct tokenizer_config.json "chat_template".
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# ----------------------------------------------------------------------------- Llama 3.2 Vision

MLLAMA_BPE = 512  # byte-level BPE tokens; the real vocabulary has 128000
MLLAMA_TEXT_VOCAB = MLLAMA_BPE + len(LLAMA3_SPECIALS)  # 128256 in the real model
MLLAMA_TILE = 32  # px; 560 in the real model


def _llama3_id(token: str) -> int:
    return MLLAMA_BPE + LLAMA3_SPECIALS.index(token)


@builder("meta-llama/Llama-3.2-11B-Vision-Instruct")
def llama32_vision_instruct(snapshot: Path) -> None:
    """MllamaForConditionalGeneration + MllamaProcessor, 5 shards like the real 11B."""
    from transformers import (
        GenerationConfig,
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessor,
        MllamaProcessor,
        MllamaTextConfig,
        MllamaVisionConfig,
    )

    from radixpert.models.mllama import init_cross_attention_gates

    tokenizer = llama3_tokenizer(MLLAMA_BPE, ["<|image|>"])
    image_token = tokenizer.convert_tokens_to_ids("<|image|>")
    if image_token != MLLAMA_TEXT_VOCAB:
        raise AssertionError(f"<|image|> is {image_token}, not {MLLAMA_TEXT_VOCAB}")
    bos, pad = _llama3_id("<|begin_of_text|>"), _llama3_id("<|finetune_right_pad_id|>")
    eos = [_llama3_id(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
    vision = MllamaVisionConfig(
        hidden_size=16,
        num_hidden_layers=4,
        num_global_layers=1,
        attention_heads=2,
        intermediate_size=32,
        image_size=MLLAMA_TILE,
        patch_size=8,
        max_num_tiles=4,
        intermediate_layers_indices=[0, 2],
        vision_output_dim=16 * 3,
    )
    text = MllamaTextConfig(
        vocab_size=MLLAMA_TEXT_VOCAB,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        cross_attention_layers=[1, 3],
        max_position_embeddings=131072,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=False,
    )
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=image_token)
    torch.manual_seed(SEED)
    model = MllamaForConditionalGeneration(config)
    # Random init leaves the tanh gates at 0, so the text would ignore the image.
    init_cross_attention_gates(model, 0.5)
    _save(model, snapshot, shards=5)
    GenerationConfig(
        do_sample=True,
        temperature=0.6,
        top_p=0.9,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    ).save_pretrained(snapshot)
    image_processor = MllamaImageProcessor(
        do_resize=True,
        size={"height": MLLAMA_TILE, "width": MLLAMA_TILE},
        resample=2,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_pad=True,
        max_image_tiles=4,
        do_convert_rgb=True,
    )
    _save_processor(
        MllamaProcessor(image_processor, tokenizer, chat_template=MLLAMA_CHAT_TEMPLATE), snapshot
    )


# ----------------------------------------------------------------------------- LLaVA-1.5, Vicuna

LLAMA2_VOCAB = 512  # 32000 in Vicuna / Llama 2


@builder("lmsys/vicuna-7b-v1.5")
def vicuna_7b_v15(snapshot: Path) -> None:
    """LlamaForCausalLM + Vicuna's Llama 2 SentencePiece tokenizer, 2 shards."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = llama2_tokenizer(snapshot, pad_token="<unk>", model_max_length=4096)
    tokenizer.padding_side = "right"
    config = LlamaConfig(
        vocab_size=LLAMA2_VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=64,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    _save(LlamaForCausalLM(config), snapshot, shards=2)
    GenerationConfig(
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        do_sample=True,
        temperature=0.9,
        top_p=0.6,
        max_length=4096,
    ).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)


LLAVA_IMAGE = 32  # px; 336 in llava-1.5 (CLIP ViT-L/14-336)


@builder("llava-hf/llava-1.5-7b-hf")
def llava_15_7b(snapshot: Path) -> None:
    """LlavaForConditionalGeneration (CLIP vision + Llama text) + LlavaProcessor, 3 shards.

    As transformers' convert_llava_weights_to_hf.py makes it: Vicuna's tokenizer with
    ``<image>`` then ``<pad>`` appended, the embedding padded to a multiple of 64.
    """
    from tokenizers import AddedToken
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = llama2_tokenizer(snapshot)
    tokenizer.add_tokens(AddedToken("<image>", special=True, normalized=False), special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.padding_side = "left"
    image_token, pad = tokenizer.convert_tokens_to_ids(["<image>", "<pad>"])
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=LLAVA_IMAGE,
        patch_size=8,
        projection_dim=16,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=_pad_to(LLAMA2_VOCAB + 2, 64),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=64,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    config.pad_token_id = pad
    torch.manual_seed(SEED)
    _save(LlavaForConditionalGeneration(config), snapshot, shards=3)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=pad).save_pretrained(snapshot)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": LLAVA_IMAGE},
        crop_size={"height": LLAVA_IMAGE, "width": LLAVA_IMAGE},
        do_center_crop=True,
        resample=3,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    _save_processor(processor, snapshot)


# ----------------------------------------------------------------------------- Qwen2, OneVision

QWEN2_BPE = 512  # 151643 in Qwen2


@builder("Qwen/Qwen2-7B-Instruct")
def qwen2_7b_instruct(snapshot: Path) -> None:
    """Qwen2ForCausalLM + Qwen2 tokenizer with its chat template, 4 shards."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = qwen2_tokenizer(QWEN2_BPE, chat_template=QWEN2_CHAT_TEMPLATE)
    endoftext, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    config = Qwen2Config(
        vocab_size=_pad_to(QWEN2_BPE + len(QWEN2_SPECIALS), 128),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=32768,
        bos_token_id=endoftext,
        eos_token_id=im_end,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    _save(Qwen2ForCausalLM(config), snapshot, shards=4)
    GenerationConfig(
        bos_token_id=endoftext,
        pad_token_id=endoftext,
        eos_token_id=[im_end, endoftext],
        do_sample=True,
        repetition_penalty=1.05,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
    ).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)


ONEVISION_IMAGE = 32  # px; 384 in OneVision (SigLIP so400m/14-384)
# The real grid: multiples 1..6 of the 384 px tile in each direction (36 resolutions).
ONEVISION_PINPOINTS = [
    [ONEVISION_IMAGE * i, ONEVISION_IMAGE * j] for i in range(1, 7) for j in range(1, 7)
]


@builder("llava-hf/llava-onevision-qwen2-7b-ov-hf")
def llava_onevision_qwen2_7b(snapshot: Path) -> None:
    """LlavaOnevisionForConditionalGeneration (SigLIP + Qwen2) + LlavaOnevisionProcessor,
    4 shards; Qwen2's tokenizer with ``<image>`` and ``<video>`` appended."""
    from tokenizers import AddedToken
    from transformers import (
        GenerationConfig,
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tokenizer = qwen2_tokenizer(QWEN2_BPE)
    for token in ("<image>", "<video>"):
        tokenizer.add_tokens(AddedToken(token, special=True, normalized=False), special_tokens=True)
    endoftext, im_end, image, video = tokenizer.convert_tokens_to_ids(
        ["<|endoftext|>", "<|im_end|>", "<image>", "<video>"]
    )
    vision = SiglipVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=ONEVISION_IMAGE,
        patch_size=8,
        vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=_pad_to(len(tokenizer), 128),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=32768,
        bos_token_id=endoftext,
        eos_token_id=im_end,
        tie_word_embeddings=False,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image,
        video_token_index=video,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=ONEVISION_PINPOINTS,
        use_image_newline_parameter=True,
    )
    torch.manual_seed(SEED)
    _save(LlavaOnevisionForConditionalGeneration(config), snapshot, shards=4)
    GenerationConfig(
        bos_token_id=endoftext, eos_token_id=im_end, pad_token_id=endoftext
    ).save_pretrained(snapshot)
    common = {
        "size": {"height": ONEVISION_IMAGE, "width": ONEVISION_IMAGE},
        "resample": 3,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
    }
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            image_grid_pinpoints=ONEVISION_PINPOINTS, do_pad=True, **common
        ),
        video_processor=LlavaOnevisionVideoProcessor(**common),
        tokenizer=tokenizer,
        num_image_tokens=(ONEVISION_IMAGE // vision.patch_size) ** 2,
        vision_feature_select_strategy="full",
        chat_template=ONEVISION_CHAT_TEMPLATE,
    )
    _save_processor(processor, snapshot)


# ----------------------------------------------------------------------------- vision towers

CLIP_IMAGE = 32  # px; 336 in clip-vit-large-patch14-336
CLIP_BPE = 600  # 49406 BPE tokens in CLIP, then <|startoftext|> <|endoftext|>


@builder("openai/clip-vit-large-patch14-336")
def clip_vit_large_336(snapshot: Path) -> None:
    """CLIPModel + CLIPProcessor (CLIPImageProcessor, CLIP's lower-cased ``</w>`` BPE)."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPTokenizer,
        CLIPVisionConfig,
    )

    vocab, merges = train_bpe(
        CLIPTokenizer().backend_tokenizer, CLIP_BPE, end_of_word_suffix="</w>"
    )
    vocab = {**vocab, "<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    text = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=16,
        # The real config keeps CLIP's legacy ids (eos 2), which makes CLIPTextTransformer
        # pool at the highest id, <|endoftext|>.
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
    )
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=CLIP_IMAGE,
        patch_size=8,
        projection_dim=16,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    torch.manual_seed(SEED)
    _save(CLIPModel(config), snapshot)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": CLIP_IMAGE},
        crop_size={"height": CLIP_IMAGE, "width": CLIP_IMAGE},
        do_center_crop=True,
        resample=3,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    )
    _save_processor(CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer), snapshot)


SIGLIP_IMAGE = 32  # px; 384 in siglip-so400m-patch14-384


@builder("google/siglip-so400m-patch14-384")
def siglip_so400m_384(snapshot: Path) -> None:
    """SiglipModel + SiglipProcessor (SiglipImageProcessor, SentencePiece ``spiece.model``)."""
    from transformers import (
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
        SiglipTextConfig,
        SiglipTokenizer,
        SiglipVisionConfig,
    )

    spiece = snapshot / "spiece.model"
    # SigLIP's layout: <pad> 0, </s> 1 (also its padding token), <unk> 2, no <s>.
    spiece.write_bytes(sentencepiece_model(256, "unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1))
    tokenizer = SiglipTokenizer(vocab_file=str(spiece), model_max_length=64)
    text = SiglipTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        pad_token_id=1,
        eos_token_id=1,
    )
    vision = SiglipVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=SIGLIP_IMAGE,
        patch_size=8,
    )
    torch.manual_seed(SEED)
    _save(SiglipModel(SiglipConfig(text_config=text, vision_config=vision)), snapshot)
    image_processor = SiglipImageProcessor(
        size={"height": SIGLIP_IMAGE, "width": SIGLIP_IMAGE},
        resample=3,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    _save_processor(SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer), snapshot)


DINOV2_CROP = 32  # px; 224 in dinov2-base (resized to 256, centre-cropped to 224)


@builder("facebook/dinov2-base")
def dinov2_base(snapshot: Path) -> None:
    """Dinov2Model + BitImageProcessor."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=4,
        image_size=DINOV2_CROP,
        patch_size=8,
    )
    torch.manual_seed(SEED)
    _save(Dinov2Model(config), snapshot)
    BitImageProcessor(
        size={"shortest_edge": DINOV2_CROP * 256 // 224},
        crop_size={"height": DINOV2_CROP, "width": DINOV2_CROP},
        do_center_crop=True,
        resample=3,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_convert_rgb=True,
    ).save_pretrained(snapshot)
