"""``RadProcessor``: the image transform, tokenizer and chat template a model was trained with.

One object turns radiographs and LLaVA/ShareGPT conversations into model inputs, and the same
object (saved beside the weights) is used by training, generation and serving, so they cannot
drift apart (STYLE.md rule 5)::

    processor = RadProcessor.from_model(model, tokenizer, template="vicuna")
    batch = processor([image], [[{"from": "human", "value": "<image>\\nFindings?"},
                                 {"from": "gpt", "value": "No acute process."}]])
    loss = model(**batch).loss
    prompt = processor([image], [[{"from": "human", "value": "<image>\\nFindings?"}]],
                       add_generation_prompt=True)       # left-padded, for generate()
    processor.save_pretrained(path); processor = RadProcessor.from_pretrained(path)

Image transform: a grayscale radiograph (2-D array in [0, 1] or uint8, a PIL image, or a path
read by ``data.images.load_image``) is letterboxed to the tower's ``image_size`` by
``data.images.resize_letterbox``, normalised with the tower's mean/std, and either replicated
to 3 channels (towers pretrained on RGB: CLIP, SigLIP, ViT, DINOv2) or kept as 1 channel
(towers built with ``num_channels=1``); ``channels`` records which.

Chat templates: ``"vicuna"`` (LLaVA-1.5: ``"<system> USER: <image>\\n... ASSISTANT: ...</s>"``)
and ``"llama3"`` (header/eot markup). Each ``<image>`` in the text becomes
``image_seq_length`` image tokens. Labels are -100 everywhere except the assistant's answers
(and the end-of-turn marker after each), so the prompt and image tokens never count in the
loss.

Families (``ProcessorConfig.family``, set by ``from_model``): ``"llava"`` as above;
``"mllama"`` (llama3 template, one ``<|image|>`` token per image, ``pixel_values`` (batch,
images, tiles, C, H, W) with the letterboxed image in tile 0, ``aspect_ratio_ids`` = 1,
``aspect_ratio_mask`` and ``cross_attention_mask``); ``"llava_onevision"`` (``image_seq_length``
read from the model by ``onevision.image_token_count``; ``pixel_values`` (images, 1 + tiles,
C, H, W) and ``image_sizes``); ``"radscribe"`` (``pixel_values``, the human turns as
``input_ids`` in the joint encoder's vocabulary, the report as ``labels`` in the decoder's,
whose tokenizer is ``decoder_tokenizer``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radixpert.data.images import load_image, resize_letterbox
from radixpert.models.connectors import IGNORE_INDEX
from radixpert.vocab import FAMILIES

logger = logging.getLogger(__name__)

PROCESSOR_FILE = "radixpert_processor.json"
IMAGE_PLACEHOLDER = "<image>"
VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
TEMPLATES: tuple[str, ...] = ("vicuna", "llama3", "native")
IMAGE_TRANSFORMS: tuple[str, ...] = ("letterbox", "native")
# End-of-turn markers of the chat templates in use (Llama 3, ChatML/Qwen2, Gemma).
END_OF_TURN: tuple[str, ...] = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>")
MLLAMA_IMAGE_TOKEN = "<|image|>"
DECODER_TOKENIZER_DIR = "decoder_tokenizer"

# Per vision-config model_type: (mean, std) used in pretraining.
_CLIP_STATS = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HALF_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
TOWER_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "clip_vision_model": _CLIP_STATS,
    "siglip_vision_model": _HALF_STATS,
    "siglip2_vision_model": _HALF_STATS,
    "vit": _HALF_STATS,
    "dinov2": _IMAGENET_STATS,
}
# Text model_type -> chat template, when none is given.
_FAMILY_TEMPLATE = {"llama": "vicuna", "mistral": "vicuna", "qwen2": "vicuna"}

Turn = Mapping[str, str]
Conversation = Sequence[Turn] | Mapping[str, Any]


@dataclass
class ProcessorConfig:
    """The settings a ``RadProcessor`` saves (everything except the tokenizer).

    Args:
        image_size: Square side the letterbox produces (the tower's ``image_size``).
        image_mean: Per-channel mean (one value per output channel, or one for all).
        image_std: Per-channel std, as ``image_mean``.
        channels: 3 (grey replicated, for RGB-pretrained towers) or 1.
        image_seq_length: Image tokens per ``<image>`` in the model's input.
        image_token: The tokenizer's image placeholder token.
        template: ``"vicuna"`` or ``"llama3"``.
        system: System prompt; None uses the template's default (Vicuna's) or none.
        resample: Resampling filter for the letterbox.
        max_length: Truncate sequences longer than this (None: no limit).
        family: The model family the inputs are for: ``"llava"``, ``"mllama"`` (6-D tiled
            ``pixel_values``, ``aspect_ratio_ids``/``_mask``, ``cross_attention_mask``),
            ``"llava_onevision"`` (base view + anyres tiles, ``image_sizes``) or
            ``"radscribe"`` (prompt ids for the joint encoder, report labels for the decoder).
        max_num_tiles: Mllama's tiles per image (the image fills tile 0, the rest are zero).
        grid_pinpoint: OneVision's (height, width) grid the letterboxed image is tiled on.
        image_transform: ``"letterbox"`` (the grayscale letterbox above) or ``"native"``: the
            checkpoint's own image processor (``RadProcessor.image_processor``, saved as
            ``preprocessor_config.json``) on the radiograph replicated to RGB: Llama 3.2
            Vision's tiling, LLaVA's CLIP resize, crop and normalisation, ... (OneVision's is
            given the image letterboxed to a square first, so every image has the same number
            of image tokens).
        chat_template: With ``template="native"``: the checkpoint's Jinja chat template,
            rendered with the tokenizer's ``apply_chat_template``.
        chat_content: How a native template wants a user turn: ``"parts"`` (a list of
            ``{"type": "image"}`` / ``{"type": "text"}`` items, the processors' templates) or
            ``"text"`` (a string with the image placeholder in it, text-model templates).
        prompt_mask: Return ``prompt_mask`` with each batch: True at the tokens outside the
            answers (the prompt an HCF connector reads); set for HCF models, whose forward
            takes it (the other families' do not).
    """

    image_size: int
    image_mean: list[float] = field(default_factory=lambda: list(_CLIP_STATS[0]))
    image_std: list[float] = field(default_factory=lambda: list(_CLIP_STATS[1]))
    channels: int = 3
    image_seq_length: int = 576
    image_token: str = IMAGE_PLACEHOLDER
    template: str = "vicuna"
    system: str | None = None
    resample: str = "bicubic"
    max_length: int | None = None
    family: str = "llava"
    max_num_tiles: int = 4
    grid_pinpoint: list[int] | None = None
    image_transform: str = "letterbox"
    chat_template: str | None = None
    chat_content: str = "parts"
    prompt_mask: bool = False

    def __post_init__(self) -> None:
        if self.image_transform not in IMAGE_TRANSFORMS:
            raise ValueError(
                f"image_transform must be one of {IMAGE_TRANSFORMS}, got {self.image_transform!r}"
            )
        if (self.template == "native") != (self.chat_template is not None):
            raise ValueError("template 'native' goes with a chat_template, and only it")
        if self.chat_content not in ("parts", "text"):
            raise ValueError(f"chat_content must be 'parts' or 'text', got {self.chat_content!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {self.template!r}")
        for name in ("image_mean", "image_std"):
            values = list(getattr(self, name))
            if len(values) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values, got {values}")
            setattr(self, name, [float(v) for v in values])


class RadProcessor:
    """Image transform + tokenizer + chat template of one model.

    Args:
        tokenizer: A transformers tokenizer that knows ``config.image_token`` as one token.
        config: The image and template settings.

    Raises:
        ValueError: If the tokenizer does not have the image token.
    """

    def __init__(
        self,
        tokenizer: Any,
        config: ProcessorConfig,
        decoder_tokenizer: Any = None,
        image_processor: Any = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.decoder_tokenizer = decoder_tokenizer
        self.image_processor = image_processor
        if (config.image_transform == "native") != (image_processor is not None):
            raise ValueError("image_transform 'native' needs the checkpoint's image_processor")
        if config.family == "radscribe":
            if decoder_tokenizer is None:
                raise ValueError("a radscribe processor needs a decoder_tokenizer")
            self.image_token_id = None
            return
        token_id = tokenizer.convert_tokens_to_ids(config.image_token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {config.image_token!r} token")
        self.image_token_id = int(token_id)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        template: str | None = None,
        decoder_tokenizer: Any = None,
        native: Any = None,
        **overrides: Any,
    ) -> RadProcessor:
        """Reads the image settings a model needs from its config.

        Args:
            model: A llava, mllama (plain or HCF), llava-onevision or RadScribe model (a
                ``peft.PeftModel`` around one is unwrapped).
            tokenizer: Its tokenizer, holding the image token (``<image>``; Mllama's
                ``<|image|>``); for RadScribe the joint encoder's (prompt) tokenizer.
            template: Chat template; None picks by the family (Mllama: ``"llama3"``).
            decoder_tokenizer: RadScribe only: the decoder's (report) tokenizer.
            native: The checkpoint's own HF processor (or image processor): its image
                processor and chat template are used (``image_transform="native"``,
                ``template="native"``) instead of the letterbox and the built-in templates.
            **overrides: Any ``ProcessorConfig`` field.
        """
        from radixpert.models.families import connector_of, family_of, unwrap

        model = unwrap(model)
        family = family_of(model)
        if family == "radscribe":
            return cls._from_radscribe(model, tokenizer, decoder_tokenizer, overrides)
        config = model.config
        vision = config.vision_config
        mean, std = TOWER_STATS.get(vision.model_type, _CLIP_STATS)
        if getattr(vision, "image_mean", None) and getattr(vision, "image_std", None):
            mean, std = tuple(vision.image_mean), tuple(vision.image_std)  # open_clip towers
        channels = int(getattr(vision, "num_channels", 3))
        text_type = config.text_config.model_type
        seq_length = int(getattr(config, "image_seq_length", 1))
        if family == "llava" and hasattr(vision, "patch_size"):
            # What the tower gives (Llava's feature selection), whatever the config records.
            from radixpert.models.llava import _image_seq_length

            seq_length = _image_seq_length(vision, config.vision_feature_select_strategy)
        settings: dict[str, Any] = {
            "image_size": int(vision.image_size),
            "image_mean": list(mean[:channels]),
            "image_std": list(std[:channels]),
            "channels": channels,
            "image_seq_length": seq_length,
            "template": template or _FAMILY_TEMPLATE.get(text_type, "vicuna"),
            "family": family,
            "prompt_mask": connector_of(model) == "hcf",
        }
        if family == "mllama":
            settings.update(
                image_seq_length=1,
                image_token=MLLAMA_IMAGE_TOKEN,
                template=template or "llama3",
                max_num_tiles=int(vision.max_num_tiles),
            )
        elif family == "llava_onevision":
            from transformers.image_processing_utils import select_best_resolution

            size = int(vision.image_size)
            pinpoints = [tuple(p) for p in config.image_grid_pinpoints]
            settings["grid_pinpoint"] = [
                int(v) for v in select_best_resolution((size, size), pinpoints)
            ]
        image_processor = None
        if native is not None:
            image_processor = getattr(native, "image_processor", native)
            settings.update(_native_settings(image_processor, family, settings))
            chat_template = getattr(native, "chat_template", None)
            content = "parts"
            if not chat_template and getattr(tokenizer, "chat_template", None) and not template:
                chat_template, content = tokenizer.chat_template, "text"
            if chat_template and not template:
                settings.update(template="native", chat_template=chat_template,
                                chat_content=content)  # fmt: skip
        settings.update(overrides)
        processor = cls(tokenizer, ProcessorConfig(**settings), image_processor=image_processor)
        if family == "llava_onevision" and "image_seq_length" not in overrides:
            from radixpert.models.onevision import image_token_count

            pixels, sizes = processor._onevision_views(np.zeros((size, size), np.float32))
            param = next(model.parameters())
            pixels = pixels[None].to(device=param.device, dtype=param.dtype)
            count = image_token_count(model, pixels, sizes[None].to(param.device))[0]
            processor.config.image_seq_length = count
        return processor

    @classmethod
    def _from_radscribe(
        cls, model: Any, tokenizer: Any, decoder_tokenizer: Any, overrides: dict[str, Any]
    ) -> RadProcessor:
        """RadScribe settings: ViT's size and (0.5, 0.5) stats, ImageNet stats for ResNet (which
        has no fixed size: 224 unless ``image_size`` is overridden)."""
        image = model.image_settings()  # the backbone's own pretraining statistics
        channels = int(image["channels"])
        settings: dict[str, Any] = {
            "image_size": int(image["image_size"]),
            "image_mean": list(image["image_mean"])[:channels],
            "image_std": list(image["image_std"])[:channels],
            "channels": channels,
            "image_seq_length": 0,
            "family": "radscribe",
        }
        settings.update(overrides)
        if "max_length" not in overrides:
            # The joint encoder reads [CLS] image [SEP] prompt within its position table: the
            # prompt is cut to the room the image leaves (a long indication is truncated).
            size = int(settings["image_size"])
            param = next(model.parameters())
            with torch.no_grad():
                probe = torch.zeros(1, channels, size, size, device=param.device, dtype=param.dtype)
                n_image = int(model.image_tokens(probe).shape[1])
            room = int(model.joint.config.max_position_embeddings) - n_image - 2
            settings["max_length"] = max(0, room)
        return cls(tokenizer, ProcessorConfig(**settings), decoder_tokenizer=decoder_tokenizer)

    # ------------------------------------------------------------------ images

    def preprocess_image(self, image: Any) -> torch.Tensor:
        """One radiograph -> (channels, image_size, image_size) float tensor, normalised.

        Args:
            image: 2-D array (float in [0, 1] or uint8), an (H, W, 3) array (converted to grey
                by luma), a PIL image, or a path.
        """
        arr = _as_gray(image)
        if self.config.image_transform == "native":
            return self._native_pixels(arr)["pixel_values"][0]
        size = self.config.image_size
        boxed, _ = resize_letterbox(arr, size, resample=self.config.resample)
        return self._normalise(boxed)

    def _native_pixels(self, gray: np.ndarray, nested: bool = False) -> dict[str, Any]:
        """The checkpoint's image processor on one grayscale image in [0, 1], replicated to
        RGB as float (no 8-bit rounding of a 16-bit radiograph)."""
        rgb = np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=-1).astype(np.float32)
        images: Any = [[rgb]] if nested else [rgb]
        return self.image_processor(
            images=images, return_tensors="pt", do_rescale=False, input_data_format="channels_last"
        )

    def _normalise(self, boxed: np.ndarray) -> torch.Tensor:
        """(H, W) in [0, 1] -> (channels, H, W) normalised."""
        mean = np.asarray(self.config.image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.config.image_std, dtype=np.float32)[:, None, None]
        stacked = np.broadcast_to(boxed[None], (self.config.channels, *boxed.shape))
        return torch.from_numpy(np.ascontiguousarray((stacked - mean) / std, dtype=np.float32))

    def _onevision_views(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """OneVision's anyres input of one image: the letterboxed base view followed by the
        tiles of ``grid_pinpoint``, (1 + tiles, channels, size, size), and its image size.

        The image is first letterboxed to a square of ``image_size``; that square is what
        ``image_sizes`` reports, so the image-token count is the same for every image.
        """
        size = self.config.image_size
        boxed, _ = resize_letterbox(_as_gray(image), size, resample=self.config.resample)
        if self.config.image_transform == "native":
            out = self._native_pixels(boxed)
            return out["pixel_values"][0], out["image_sizes"][0].to(torch.long)
        grid_h, grid_w = self.config.grid_pinpoint or [size, size]
        grid, _ = resize_letterbox(boxed, (grid_h, grid_w), resample=self.config.resample)
        views = [self._normalise(boxed)]
        for top in range(0, grid_h, size):
            for left in range(0, grid_w, size):
                views.append(self._normalise(grid[top : top + size, left : left + size]))
        return torch.stack(views), torch.tensor([size, size], dtype=torch.long)

    # ------------------------------------------------------------------ text

    def _segments(
        self, conversation: Conversation, add_generation_prompt: bool
    ) -> list[tuple[str, bool]]:
        """The conversation as (text, is_target) pieces in template order."""
        turns = _turns(conversation)
        tok = self.tokenizer
        pieces: list[tuple[str, bool]] = []
        if self.config.template == "native":
            return self._native_segments(turns, add_generation_prompt)
        if self.config.template == "vicuna":
            eos = tok.eos_token or "</s>"
            system = self.config.system if self.config.system is not None else VICUNA_SYSTEM
            pieces.append((f"{system} " if system else "", False))
            for turn in turns:
                if turn["from"] == "human":
                    pieces.append((f"USER: {turn['value']} ASSISTANT:", False))
                else:
                    pieces.append((f" {turn['value']}{eos}", True))
            open_prompt = turns[-1]["from"] == "human"
        else:
            pieces.append(("<|begin_of_text|>", False))
            if self.config.system:
                pieces.append((_llama3_header("system") + f"{self.config.system}<|eot_id|>", False))
            for turn in turns:
                if turn["from"] == "human":
                    pieces.append((_llama3_header("user") + f"{turn['value']}<|eot_id|>", False))
                    pieces.append((_llama3_header("assistant"), False))
                else:
                    pieces.append((f"{turn['value']}<|eot_id|>", True))
            open_prompt = turns[-1]["from"] == "human"
        if open_prompt and not add_generation_prompt:
            raise ValueError("conversation ends with a human turn: use add_generation_prompt")
        if add_generation_prompt and not open_prompt:
            raise ValueError("add_generation_prompt needs a conversation ending with a human turn")
        return pieces

    def _messages(self, turns: Sequence[Turn]) -> list[dict[str, Any]]:
        """ShareGPT turns as chat-template messages (system prompt first, if one is set)."""
        messages: list[dict[str, Any]] = []
        if self.config.system:
            messages.append({"role": "system", "content": self.config.system})
        for turn in turns:
            role = "user" if turn["from"] == "human" else "assistant"
            text = turn["value"]
            content: Any
            if self.config.chat_content == "text":
                content = text
            elif role == "assistant":
                content = [{"type": "text", "text": text}]
            else:
                content = []
                for i, part in enumerate(text.split(self.config.image_token)):
                    if i:
                        content.append({"type": "image"})
                    if part.strip():
                        content.append({"type": "text", "text": part.strip("\n")})
            messages.append({"role": role, "content": content})
        return messages

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.config.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def _native_segments(
        self, turns: Sequence[Turn], add_generation_prompt: bool
    ) -> list[tuple[str, bool]]:
        """(text, is_target) pieces from the checkpoint's own chat template.

        Each answer is what rendering the conversation up to and including it adds to the
        rendering up to the open assistant turn before it (``add_generation_prompt``), so the
        targets are exactly the answers and the template's end-of-turn markup after them.
        """
        open_prompt = turns[-1]["from"] == "human"
        if open_prompt != add_generation_prompt:
            raise ValueError(
                "add_generation_prompt needs a conversation ending with a human turn, and a "
                "training conversation must end with an answer"
            )
        messages = self._messages(turns)
        offset = len(messages) - len(turns)
        pieces: list[tuple[str, bool]] = []
        done = ""
        for i, turn in enumerate(turns):
            if turn["from"] != "gpt":
                continue
            before = self._render(messages[: offset + i], True)
            after = self._render(messages[: offset + i + 1], False)
            if not before.startswith(done) or not after.startswith(before):
                raise ValueError(
                    "the checkpoint's chat template does not render a conversation as a "
                    "prefix of its continuation; give model.preprocessing: letterbox and a "
                    "built-in template"
                )
            answer = after[len(before) :]
            # Some checkpoints' templates end an answer with no end-of-turn token (LLaVA-1.5's
            # renders "ASSISTANT: text "): a model trained so would never stop. As LLaVA's
            # own training does, the tokenizer's eos then follows the answer, as a target.
            eos = self.tokenizer.eos_token
            if eos and not any(m in answer for m in (eos, *END_OF_TURN)):
                answer += eos
            pieces += [(before[len(done) :], False), (answer, True)]
            done = after
        final = self._render(messages, add_generation_prompt)
        if not final.startswith(done):
            raise ValueError("the checkpoint's chat template is not prefix-stable")
        if final[len(done) :]:
            pieces.append((final[len(done) :], False))
        return pieces

    def encode_conversation(
        self, conversation: Conversation, add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one conversation, unpadded.

        The rendered conversation is tokenised once, as a whole, exactly as a serving engine
        or the checkpoint's own processor tokenises the chat template's output (tokenising it
        piece by piece would add tokens at the boundaries, e.g. a Metaspace tokenizer's "▁"):
        the ids of training and serving are the same. Targets are the tokens that start inside
        an answer's characters; each image placeholder then becomes ``image_seq_length``
        image tokens.
        """
        ids: list[int] = []
        labels: list[int] = []
        bos = self.tokenizer.bos_token_id
        if self.config.template == "vicuna" and bos is not None:
            ids.append(int(bos))
            labels.append(IGNORE_INDEX)
        text, spans, position = "", [], 0
        for piece, target in self._segments(conversation, add_generation_prompt):
            if target and piece:
                spans.append((position, position + len(piece)))
            text += piece
            position += len(piece)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        span = 0
        for token, (start, _) in zip(encoded["input_ids"], encoded["offset_mapping"]):
            while span < len(spans) and start >= spans[span][1]:
                span += 1
            target = span < len(spans) and spans[span][0] <= start
            if token == self.image_token_id:
                ids.extend([token] * self.config.image_seq_length)
                labels.extend([IGNORE_INDEX] * self.config.image_seq_length)
                continue
            ids.append(int(token))
            labels.append(int(token) if target else IGNORE_INDEX)
        if self.config.max_length is not None:
            ids, labels = ids[: self.config.max_length], labels[: self.config.max_length]
        return ids, labels

    # ------------------------------------------------------------------ batch

    def __call__(
        self,
        images: Sequence[Any] | None,
        conversations: Sequence[Conversation],
        add_generation_prompt: bool = False,
        padding_side: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Builds a padded batch.

        Args:
            images: One entry per conversation: an image or a list of images, one per
                ``<image>`` in that conversation (in order); None for text-only batches. A
                conversation with images but no ``<image>`` gets ``"<image>\\n"`` before its
                first human turn, as in LLaVA.
            conversations: LLaVA/ShareGPT turns ``{"from": "human"|"gpt", "value": ...}`` or
                records holding them under ``"conversations"``.
            add_generation_prompt: End with the open assistant turn (for ``generate``).
            padding_side: ``"left"`` or ``"right"``; default left with
                ``add_generation_prompt``, right otherwise.

        Returns:
            ``input_ids``, ``attention_mask``, ``labels`` (batch, length), ``prompt_mask``
            (batch, length) when ``config.prompt_mask``, and, with images, ``pixel_values``
            (images, channels, size, size).

        Raises:
            ValueError: Mismatched image and placeholder counts, or malformed conversations.
        """
        if images is not None and len(images) != len(conversations):
            raise ValueError(f"{len(images)} image entries for {len(conversations)} conversations")
        if self.config.family == "radscribe":
            return self._radscribe_batch(images, conversations, add_generation_prompt)
        pixels: list[Any] = []
        per_sample: list[list[Any]] = []
        encoded: list[tuple[list[int], list[int]]] = []
        for i, conv in enumerate(conversations):
            turns = [dict(t) for t in _turns(conv)]
            if self.config.image_token != IMAGE_PLACEHOLDER:  # LLaVA-style "<image>" works too
                for turn in turns:
                    turn["value"] = turn["value"].replace(
                        IMAGE_PLACEHOLDER, self.config.image_token
                    )
            entry = images[i] if images is not None else None
            sample_images = [] if entry is None else _as_list(entry)
            placeholders = sum(t["value"].count(self.config.image_token) for t in turns)
            if sample_images and placeholders == 0:
                first = next(t for t in turns if t["from"] == "human")
                first["value"] = (
                    f"{self.config.image_token}\n" * len(sample_images) + first["value"]
                )
                placeholders = len(sample_images)
            if placeholders != len(sample_images):
                raise ValueError(
                    f"conversation {i}: {placeholders} {self.config.image_token} placeholders "
                    f"but {len(sample_images)} images"
                )
            per_sample.append(sample_images)
            encoded.append(self.encode_conversation(turns, add_generation_prompt))
        side = padding_side or ("left" if add_generation_prompt else "right")
        batch = self._pad(encoded, side)
        family = self.config.family
        if family == "mllama":
            if any(per_sample):
                batch.update(self._mllama_images(per_sample, batch["input_ids"]))
            return batch
        for sample_images in per_sample:
            if family == "llava_onevision":
                pixels.extend(self._onevision_views(img) for img in sample_images)
            else:
                pixels.extend(self.preprocess_image(img) for img in sample_images)
        if pixels and family == "llava_onevision":
            batch["pixel_values"] = torch.stack([views for views, _ in pixels])
            batch["image_sizes"] = torch.stack([size for _, size in pixels])
        elif pixels:
            batch["pixel_values"] = torch.stack(pixels)
        return batch

    def _mllama_images(
        self, per_sample: list[list[Any]], input_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Mllama's image inputs: each image letterboxed into tile 0 of ``max_num_tiles``.

        Returns ``pixel_values`` (batch, images, tiles, C, size, size), ``aspect_ratio_ids``
        (batch, images; 1 = one tile, 0 = padding image), ``aspect_ratio_mask`` (batch, images,
        tiles) and ``cross_attention_mask`` (batch, length, images, tiles): text from an image's
        ``<|image|>`` token up to the next one (the last: to the end) attends to its tile.
        """
        size, tiles, channels = (
            self.config.image_size,
            self.config.max_num_tiles,
            self.config.channels,
        )
        batch, length = input_ids.shape
        count = max(len(sample) for sample in per_sample)
        pixel_values = torch.zeros(batch, count, tiles, channels, size, size)
        ratio_ids = torch.zeros(batch, count, dtype=torch.long)
        ratio_mask = torch.zeros(batch, count, tiles, dtype=torch.long)
        ratio_mask[:, :, 0] = 1
        cross = torch.zeros(batch, length, count, tiles, dtype=torch.long)
        for row, sample in enumerate(per_sample):
            positions = (input_ids[row] == self.image_token_id).nonzero().flatten().tolist()
            for k, image in enumerate(sample):
                used = 1
                if self.config.image_transform == "native":
                    # The checkpoint's tiling: the image over 1-4 tiles by its aspect ratio.
                    out = self._native_pixels(_as_gray(image), nested=True)
                    tiles_in = out["pixel_values"][0, 0]
                    used = int(out["num_tiles"][0][0])
                    pixel_values[row, k, : tiles_in.shape[0]] = tiles_in
                    ratio_ids[row, k] = out["aspect_ratio_ids"][0, 0]
                    ratio_mask[row, k] = out["aspect_ratio_mask"][0, 0, :tiles]
                else:
                    pixel_values[row, k, 0] = self.preprocess_image(image)
                    ratio_ids[row, k] = 1
                end = positions[k + 1] if k + 1 < len(positions) else length
                if k < len(positions):  # truncated away by max_length otherwise
                    cross[row, positions[k] : end, k, :used] = 1
        return {
            "pixel_values": pixel_values,
            "aspect_ratio_ids": ratio_ids,
            "aspect_ratio_mask": ratio_mask,
            "cross_attention_mask": cross,
        }

    def _radscribe_batch(
        self,
        images: Sequence[Any] | None,
        conversations: Sequence[Conversation],
        add_generation_prompt: bool,
    ) -> dict[str, torch.Tensor]:
        """RadScribe inputs: ``pixel_values`` (batch, C, size, size), the human turns as
        ``input_ids``/``attention_mask`` in the joint encoder's vocabulary (right-padded), and
        the assistant turns (the report, then the decoder's eos) as ``labels`` in the decoder's
        vocabulary, -100 padded; no ``labels`` with ``add_generation_prompt``."""
        if images is None:
            raise ValueError("RadScribe needs one image per conversation")
        pixels, prompts, reports = [], [], []
        for i, conv in enumerate(conversations):
            entry = _as_list(images[i])
            if len(entry) != 1:
                raise ValueError(f"conversation {i}: RadScribe takes one image, got {len(entry)}")
            pixels.append(self.preprocess_image(entry[0]))
            turns = _turns(conv)
            human = [t["value"] for t in turns if t["from"] == "human"]
            prompt = " ".join(
                v.replace(self.config.image_token, " ").replace(IMAGE_PLACEHOLDER, " ").strip()
                for v in human
            ).strip()
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
            prompts.append([int(t) for t in ids])
            answer = " ".join(t["value"].strip() for t in turns if t["from"] == "gpt")
            open_prompt = turns[-1]["from"] == "human"
            if open_prompt != add_generation_prompt:
                raise ValueError(
                    "add_generation_prompt needs a conversation ending with a human turn, "
                    "and a training conversation must end with the report"
                )
            if not add_generation_prompt:
                dec = self.decoder_tokenizer
                report = dec(answer, add_special_tokens=False)["input_ids"]
                eos = dec.eos_token_id
                reports.append([int(t) for t in report] + ([int(eos)] if eos is not None else []))
        if self.config.max_length is not None:
            prompts = [p[: self.config.max_length] for p in prompts]
        pad = self.tokenizer.pad_token_id
        pad = int(pad if pad is not None else 0)
        length = max(len(p) for p in prompts)
        batch = {
            "pixel_values": torch.stack(pixels),
            "input_ids": torch.tensor(
                [p + [pad] * (length - len(p)) for p in prompts], dtype=torch.long
            ),
            "attention_mask": torch.tensor(
                [[1] * len(p) + [0] * (length - len(p)) for p in prompts], dtype=torch.long
            ),
        }
        if reports:
            longest = max(len(r) for r in reports)
            batch["labels"] = torch.tensor(
                [r + [IGNORE_INDEX] * (longest - len(r)) for r in reports], dtype=torch.long
            )
        return batch

    def _pad(self, encoded: list[tuple[list[int], list[int]]], side: str) -> dict[str, Any]:
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        pad = self.tokenizer.pad_token_id
        pad = int(pad if pad is not None else self.tokenizer.eos_token_id or 0)
        length = max(len(ids) for ids, _ in encoded)
        rows_ids, rows_mask, rows_labels = [], [], []
        for ids, labels in encoded:
            n = length - len(ids)
            fill, mask = [pad] * n, [1] * len(ids)
            if side == "right":
                rows_ids.append(ids + fill)
                rows_mask.append(mask + [0] * n)
                rows_labels.append(labels + [IGNORE_INDEX] * n)
            else:
                rows_ids.append(fill + ids)
                rows_mask.append([0] * n + mask)
                rows_labels.append([IGNORE_INDEX] * n + labels)
        batch = {
            "input_ids": torch.tensor(rows_ids, dtype=torch.long),
            "attention_mask": torch.tensor(rows_mask, dtype=torch.long),
            "labels": torch.tensor(rows_labels, dtype=torch.long),
        }
        if self.config.prompt_mask:
            # The labels are exactly the answers' tokens (encode_conversation), so every other
            # attended token is prompt; the model leaves out the image tokens itself.
            batch["prompt_mask"] = (batch["labels"] == IGNORE_INDEX) & batch[
                "attention_mask"
            ].bool()
        return batch

    def decode(self, ids: Sequence[int] | torch.Tensor, **kwargs: Any) -> str:
        """Decodes generated ids (RadScribe: with the decoder's tokenizer), skipping special
        tokens by default."""
        kwargs.setdefault("skip_special_tokens", True)
        tokenizer = self.decoder_tokenizer if self.decoder_tokenizer is not None else self.tokenizer
        return tokenizer.decode(ids, **kwargs)

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, path: str | Path) -> None:
        """Writes ``radixpert_processor.json`` and the tokenizer's files into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        payload = {"format": "radixpert.processor", "format_version": 1, **asdict(self.config)}
        (path / PROCESSOR_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        self.tokenizer.save_pretrained(path)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(path)
        if self.decoder_tokenizer is not None:
            self.decoder_tokenizer.save_pretrained(path / DECODER_TOKENIZER_DIR)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> RadProcessor:
        """Loads a processor written by ``save_pretrained``.

        Raises:
            FileNotFoundError: If ``path`` has no ``radixpert_processor.json``.
        """
        from transformers import AutoTokenizer

        path = Path(path)
        payload = json.loads((path / PROCESSOR_FILE).read_text(encoding="utf-8"))
        payload.pop("format", None)
        payload.pop("format_version", None)
        tokenizer = AutoTokenizer.from_pretrained(path)
        decoder_tokenizer = None
        if (path / DECODER_TOKENIZER_DIR).is_dir():
            decoder_tokenizer = AutoTokenizer.from_pretrained(path / DECODER_TOKENIZER_DIR)
        config = ProcessorConfig(**payload)
        image_processor = None
        if config.image_transform == "native":
            from transformers import AutoImageProcessor

            image_processor = AutoImageProcessor.from_pretrained(path)
        return cls(tokenizer, config, decoder_tokenizer=decoder_tokenizer,
                   image_processor=image_processor)  # fmt: skip


def _native_settings(
    image_processor: Any, family: str, settings: Mapping[str, Any]
) -> dict[str, Any]:
    """Processor settings read from a checkpoint's image processor."""
    size = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None)
    side = settings["image_size"]
    if isinstance(size, Mapping):
        side = int(size.get("height") or size.get("shortest_edge") or side)
    out: dict[str, Any] = {"image_transform": "native", "channels": 3, "image_size": side}
    mean = getattr(image_processor, "image_mean", None)
    std = getattr(image_processor, "image_std", None)
    if mean is not None and std is not None:
        out.update(image_mean=list(mean), image_std=list(std))
    if family == "mllama":
        out["max_num_tiles"] = int(getattr(image_processor, "max_image_tiles", 4))
    return out


def _llama3_header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def _turns(conversation: Conversation) -> list[Turn]:
    turns = conversation["conversations"] if isinstance(conversation, Mapping) else conversation
    turns = list(turns)
    if not turns:
        raise ValueError("empty conversation")
    for turn in turns:
        if turn.get("from") not in ("human", "gpt"):
            raise ValueError(f"turn 'from' must be 'human' or 'gpt', got {turn.get('from')!r}")
    if turns[0]["from"] != "human":
        raise ValueError("a conversation starts with a human turn")
    return turns


def _as_list(entry: Any) -> list[Any]:
    if isinstance(entry, (list, tuple)):
        return list(entry)
    return [entry]


def _as_gray(image: Any) -> np.ndarray:
    """A 2-D float32 image in [0, 1] from an array, a PIL image or a path."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        image = np.asarray(image.convert("L"))
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        luma = np.array([0.299, 0.587, 0.114], dtype=np.float64)
        arr = (arr[..., :3].astype(np.float64) @ luma).astype(arr.dtype)
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"expected a grayscale image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return arr.astype(np.float32)


__all__ = [
    "DECODER_TOKENIZER_DIR",
    "IGNORE_INDEX",
    "PROCESSOR_FILE",
    "TEMPLATES",
    "TOWER_STATS",
    "ProcessorConfig",
    "RadProcessor",
]
