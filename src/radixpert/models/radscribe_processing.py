"""The transformers processor of an exported RadScribe, in one self-contained module.

This file imports only numpy, Pillow, torch and transformers, never radixpert, so that
``radixpert model export`` can copy it into an exported folder (as
``processing_radixpert_radscribe.py``, named by ``auto_map``) and plain transformers loads it::

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor(images=[radiograph], text=["Indication: cough."])        # generate
    batch = processor(images=[radiograph], text=["..."], reports=["No acute process."])  # train
    prompt = processor.apply_chat_template(messages)          # the human turns, as RadProcessor

It reproduces ``radixpert.models.processor.RadProcessor`` for the ``radscribe`` family exactly
(a test compares them), so it is not a standard image processor configured to match: the
RadProcessor letterboxes a *grayscale* radiograph (the longer side to ``image_size``, centred,
padded with black) in 32-bit float, which no transformers image processor does (they pad with
the mean colour or stretch, and resize 8-bit images in 8 bits), and a 1-channel tower needs
1-channel pixels.

- ``RadScribeImageProcessor``: grey (a PIL image by ``convert("L")``, an (H, W, 3) array by
  luma, a uint8 array / 255, a 16-bit PNG path / 65535), letterbox with Pillow's float mode
  (``resample``), clipped to the input's range, ``(x - mean) / std``, replicated to
  ``channels``.
- ``RadScribeProcessor``: the prompt (``<image>`` and the image token removed, stripped) in the
  joint encoder's tokenizer without special tokens, cut to ``max_length`` and right-padded;
  the report in the decoder's tokenizer plus its eos, -100 padded, as ``labels``. Its chat
  template joins the user turns' text with spaces (system and assistant turns are not part of
  RadScribe's prompt; the assistant's is the report).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin

IMAGE_PLACEHOLDER = "<image>"
IGNORE_INDEX = -100
RESAMPLING = ("nearest", "bilinear", "bicubic", "lanczos", "box")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
_DICOM_SUFFIXES = (".dcm", ".dicom")


def _gray_from_path(path: Path) -> np.ndarray:
    """A PNG/JPEG read as radixpert reads it: 8-bit / 255, 16-bit / 65535, colour by luma."""
    from PIL import Image

    if path.suffix.lower() in _DICOM_SUFFIXES:
        raise ValueError(
            f"{path}: DICOM is not read here; pass the pixel array (windowed, in [0, 1])"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    with Image.open(path) as image:
        image.load()
        mode = image.mode
        if mode in ("1", "L", "LA"):
            arr = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
        elif mode.startswith("I;16") or mode == "I":
            arr = np.asarray(image, dtype=np.float64) / 65535.0
        elif mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
            arr = (np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0) @ _LUMA
        else:
            raise ValueError(f"{path}: unsupported image mode {mode!r}")
    return np.ascontiguousarray(np.clip(arr, 0.0, 1.0).astype(np.float32))


def to_gray(image: Any) -> np.ndarray:
    """One image as a 2-D float32 array in [0, 1], as the RadProcessor makes it.

    Args:
        image: A path (PNG/JPEG), a PIL image (``convert("L")``), or a 2-D / (H, W, 1|3|4)
            array or tensor (uint8 in 0-255, float in [0, 1]; colour by luma).

    Raises:
        ValueError: For any other shape.
    """
    if isinstance(image, (str, Path)):
        return _gray_from_path(Path(image))
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        image = np.asarray(image.convert("L"))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = (arr[..., :3].astype(np.float64) @ _LUMA).astype(arr.dtype)
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"expected a grayscale (H, W) or channels-last image, got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return arr.astype(np.float32)


def letterbox(gray: np.ndarray, size: int, resample: str) -> np.ndarray:
    """``gray`` resized (aspect kept, float mode) into a black ``size`` x ``size`` square."""
    from PIL import Image

    if gray.ndim != 2 or min(gray.shape) == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {gray.shape}")
    if resample not in RESAMPLING:
        raise ValueError(f"resample must be one of {', '.join(RESAMPLING)}, got {resample!r}")
    src_h, src_w = gray.shape
    scale = min(size / src_h, size / src_w)
    new_h = min(size, max(1, math.floor(src_h * scale + 0.5)))
    new_w = min(size, max(1, math.floor(src_w * scale + 0.5)))
    top, left = (size - new_h) // 2, (size - new_w) // 2
    source = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F")
    filters = {name: getattr(Image.Resampling, name.upper()) for name in RESAMPLING}
    content = np.asarray(source.resize((new_w, new_h), filters[resample]), dtype=np.float32)
    # Bicubic/Lanczos overshoot at edges: clip to the input's range.
    content = np.clip(content, float(gray.min()), float(gray.max()))
    out = np.zeros((size, size), dtype=np.float32)
    out[top : top + new_h, left : left + new_w] = content
    return out


class RadScribeImageProcessor(BaseImageProcessor):
    """Grayscale letterbox + normalisation of RadScribe's training (see the module docstring).

    Args:
        image_size: Square side fed to the backbone.
        image_mean: Mean per output channel (or one for all).
        image_std: Std per output channel (or one for all).
        channels: 3 (grey replicated) or 1.
        resample: Pillow filter of the letterbox.
    """

    model_input_names = ["pixel_values"]  # noqa: RUF012 (transformers' class attribute)

    def __init__(
        self,
        image_size: int = 224,
        image_mean: Sequence[float] = (0.5,),
        image_std: Sequence[float] = (0.5,),
        channels: int = 3,
        resample: str = "bicubic",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        for name, values in (("image_mean", image_mean), ("image_std", image_std)):
            if len(values) not in (1, channels):
                raise ValueError(f"{name} needs 1 or {channels} values, got {list(values)}")
        if resample not in RESAMPLING:
            raise ValueError(f"resample must be one of {', '.join(RESAMPLING)}, got {resample!r}")
        self.image_size = int(image_size)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.channels = int(channels)
        self.resample = resample

    def preprocess_one(self, image: Any) -> torch.Tensor:
        """One image -> (channels, image_size, image_size) float32 tensor."""
        boxed = letterbox(to_gray(image), self.image_size, self.resample)
        mean = np.asarray(self.image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.image_std, dtype=np.float32)[:, None, None]
        stacked = np.broadcast_to(boxed[None], (self.channels, *boxed.shape))
        return torch.from_numpy(np.ascontiguousarray((stacked - mean) / std, dtype=np.float32))

    def preprocess(
        self, images: Any, return_tensors: str | None = "pt", **kwargs: Any
    ) -> BatchFeature:
        """``pixel_values`` (batch, channels, size, size) of one image or a list of images.

        Raises:
            ValueError: For settings this processor does not have (``kwargs``).
        """
        if kwargs:
            raise ValueError(f"RadScribeImageProcessor takes no {sorted(kwargs)}")
        if not isinstance(images, (list, tuple)):
            images = [images]
        pixels = torch.stack([self.preprocess_one(image) for image in images])
        return BatchFeature({"pixel_values": pixels}, tensor_type=return_tensors)

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)


# Joins the user turns' text (an image part and "<image>" count as a space), each stripped, with
# spaces: the RadProcessor's RadScribe prompt. System and assistant turns are not in it.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(prompt='', first=true) -%}"
    "{%- for message in messages -%}"
    "{%- if message.role not in ('system', 'user', 'assistant') -%}"
    "{{ raise_exception('unknown role ' ~ message.role) }}{%- endif -%}"
    "{%- if message.role == 'user' -%}"
    "{%- set turn = namespace(text='') -%}"
    "{%- if message.content is string -%}{%- set turn.text = message.content -%}"
    "{%- else -%}{%- for part in message.content -%}"
    "{%- if part.type == 'text' -%}{%- set turn.text = turn.text ~ part.text -%}"
    "{%- elif part.type == 'image' -%}{%- set turn.text = turn.text ~ ' ' -%}"
    "{%- else -%}{{ raise_exception('unsupported content part ' ~ part.type) }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- set value = turn.text | replace('<image>', ' ') | trim -%}"
    "{%- if ns.first -%}{%- set ns.prompt = value -%}"
    "{%- else -%}{%- set ns.prompt = ns.prompt ~ ' ' ~ value -%}{%- endif -%}"
    "{%- set ns.first = false -%}"
    "{%- endif -%}{%- endfor -%}"
    "{{- ns.prompt | trim -}}"
)


class RadScribeProcessor(ProcessorMixin):
    """Images, prompts and reports -> RadScribe inputs (see the module docstring).

    Args:
        image_processor: A `RadScribeImageProcessor`.
        tokenizer: The joint encoder's (prompt) tokenizer.
        decoder_tokenizer: The decoder's (report) tokenizer.
        chat_template: Jinja template rendering messages as the prompt (`CHAT_TEMPLATE`).
        max_length: Most prompt tokens (the room the image leaves in the joint encoder).
        image_token: A placeholder removed from prompts besides ``<image>``.
    """

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        decoder_tokenizer: Any = None,
        chat_template: str | None = None,
        max_length: int | None = None,
        image_token: str = IMAGE_PLACEHOLDER,
        **kwargs: Any,
    ) -> None:
        self.max_length = None if max_length is None else int(max_length)
        self.image_token = image_token
        super().__init__(
            image_processor,
            tokenizer,
            decoder_tokenizer,
            chat_template=CHAT_TEMPLATE if chat_template is None else chat_template,
            **kwargs,
        )

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask"]

    def prompt_ids(self, text: str) -> list[int]:
        """A prompt's joint-encoder ids: placeholders removed, stripped, no special tokens,
        cut to ``max_length``."""
        prompt = text.replace(self.image_token, " ").replace(IMAGE_PLACEHOLDER, " ").strip()
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        ids = [int(t) for t in ids]
        return ids if self.max_length is None else ids[: self.max_length]

    def report_ids(self, report: str) -> list[int]:
        """A report's decoder ids (stripped, no special tokens) followed by the decoder's eos."""
        tokenizer = self.decoder_tokenizer
        ids = [int(t) for t in tokenizer(report.strip(), add_special_tokens=False)["input_ids"]]
        return ids + ([] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)])

    def __call__(
        self,
        images: Any = None,
        text: str | Sequence[str] | None = None,
        reports: str | Sequence[str] | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """``pixel_values``, ``input_ids``, ``attention_mask`` and, with ``reports``, ``labels``.

        Args:
            images: One image per sample (a list of one is accepted too).
            text: One prompt per sample (None: no prompt).
            reports: One report per sample, for training (teacher forcing) or scoring.
            return_tensors: "pt" (default), "np" or None.
            **kwargs: What ``apply_chat_template`` passes on (padding, truncation, ...); they
                change nothing here, as the padding and cut are the RadProcessor's.

        Raises:
            ValueError: Missing images, counts that disagree, a sample with several images.
        """
        ignored = {"padding", "truncation", "add_special_tokens", "return_mm_token_type_ids"}
        unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in ignored)
        if unknown:
            raise ValueError(f"RadScribeProcessor takes no {unknown}")
        if images is None:
            raise ValueError("RadScribe needs one image per sample")
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        flat = []
        for i, entry in enumerate(images):
            entry = list(entry) if isinstance(entry, (list, tuple)) else [entry]
            if len(entry) != 1:
                raise ValueError(f"sample {i}: RadScribe takes one image, got {len(entry)}")
            flat.append(entry[0])
        texts = [text] if isinstance(text, str) else list(text or [""] * len(flat))
        if len(texts) != len(flat):
            raise ValueError(f"{len(texts)} prompts for {len(flat)} images")
        prompts = [self.prompt_ids(t) for t in texts]
        pad = self.tokenizer.pad_token_id
        pad = int(pad if pad is not None else 0)
        length = max(len(p) for p in prompts)
        data: dict[str, Any] = {
            "pixel_values": self.image_processor(flat, return_tensors="pt")["pixel_values"],
            "input_ids": torch.tensor(
                [p + [pad] * (length - len(p)) for p in prompts], dtype=torch.long
            ),
            "attention_mask": torch.tensor(
                [[1] * len(p) + [0] * (length - len(p)) for p in prompts], dtype=torch.long
            ),
        }
        if reports is not None:
            reports = [reports] if isinstance(reports, str) else list(reports)
            if len(reports) != len(flat):
                raise ValueError(f"{len(reports)} reports for {len(flat)} images")
            encoded = [self.report_ids(r) for r in reports]
            longest = max(len(r) for r in encoded)
            data["labels"] = torch.tensor(
                [r + [IGNORE_INDEX] * (longest - len(r)) for r in encoded], dtype=torch.long
            )
        return BatchFeature(data, tensor_type=return_tensors)

    def decode(self, ids: Any, **kwargs: Any) -> str:
        """Generated ids -> report text, with the decoder's tokenizer (special tokens skipped
        by default)."""
        kwargs.setdefault("skip_special_tokens", True)
        return self.decoder_tokenizer.decode(ids, **kwargs)

    def batch_decode(self, ids: Any, **kwargs: Any) -> list[str]:
        """`decode` of each row."""
        kwargs.setdefault("skip_special_tokens", True)
        return self.decoder_tokenizer.batch_decode(ids, **kwargs)


__all__ = [
    "CHAT_TEMPLATE",
    "RadScribeImageProcessor",
    "RadScribeProcessor",
    "letterbox",
    "to_gray",
]
