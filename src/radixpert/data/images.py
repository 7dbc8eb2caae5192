"""Image loading, resizing with box bookkeeping, and frontal-view selection.

Every image comes out as a 2-D grayscale array, float32 in [0, 1] (or uint8 in [0, 255]):

    img = load_image("p10/s5/abc.dcm")               # DICOM: rescale, VOI/window, MONOCHROME1
    out, tf = resize_letterbox(img, 512)             # aspect kept, padded to 512 x 512
    box_out = tf.apply_box((0.1, 0.2, 0.4, 0.5))     # 0-1 box on `img` -> 0-1 box on `out`

Intensity rules:

* PNG/JPEG (Pillow): values are divided by the full range of their bit depth (255 for 8-bit,
  65535 for 16-bit), so stored intensities keep their meaning across images; colour is turned
  into luma with the ITU-R BT.601 weights (0.299 R + 0.587 G + 0.114 B) in float, and an alpha
  channel is dropped (radiographs saved with alpha are opaque).
* DICOM (pydicom): the Modality LUT (Rescale Slope/Intercept) is applied, then the VOI LUT
  Sequence if present, else the first Window Center/Width pair; the output is scaled by the
  full output range of that VOI transform. Without any VOI the image is min-max scaled.
  MONOCHROME1 is inverted last, so that bright always means dense.

A missing, truncated or corrupt file raises `ImageError` naming the file and what failed;
nothing is ever replaced by a substitute image. `load_images(..., skip_bad=True)` reports
each skipped file with its reason.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from radixpert._optional import require
from radixpert.data.views import FRONTAL_VIEWS, is_frontal
from radixpert.errors import ImageError

if TYPE_CHECKING:
    from radixpert.data.study import Image, Study

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
Dtype = Literal["float32", "uint8"]
BoxTuple = tuple[float, float, float, float]

# ITU-R BT.601 luma weights, the same ones Pillow's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Loading


def load_image(path: str | Path, *, dtype: Dtype = "float32") -> np.ndarray:
    """Read one PNG/JPEG or DICOM image as a 2-D grayscale array.

    Args:
        path: The image file. DICOM is recognised by a `.dcm`/`.dicom` suffix or by the
            "DICM" marker after the 128-byte preamble; anything else goes to Pillow.
        dtype: "float32" for values in [0, 1], or "uint8" for round(255 * value).

    Returns:
        A C-contiguous array of shape (rows, columns).

    Raises:
        ImageError: The file is missing, truncated, corrupt or of an unsupported kind.
    """
    if dtype not in ("float32", "uint8"):
        raise ValueError(f"dtype must be 'float32' or 'uint8', got {dtype!r}")
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    img = _load_dicom(path) if _is_dicom(path) else _load_raster(path)
    img = np.clip(img, 0.0, 1.0)
    if dtype == "uint8":
        return np.ascontiguousarray(np.round(img * 255.0).astype(np.uint8))
    return np.ascontiguousarray(img.astype(np.float32))


class LoadResult(NamedTuple):
    """What `load_images` read: the images with their paths, and the files it skipped."""

    images: list[np.ndarray]
    paths: list[str]
    skipped: list[tuple[str, str]]


def load_images(
    paths: Iterable[str | Path], *, skip_bad: bool = False, dtype: Dtype = "float32"
) -> LoadResult:
    """Read many images with `load_image`.

    Args:
        paths: The files, read in order.
        skip_bad: If False, the first bad file raises `ImageError`. If True, bad files are
            left out and listed as (path, reason) in `skipped`, and the count is logged as
            a warning, so that dropping images is never silent.
        dtype: As for `load_image`.

    Returns:
        A `LoadResult`; `paths[i]` is the file of `images[i]`.
    """
    images: list[np.ndarray] = []
    loaded: list[str] = []
    skipped: list[tuple[str, str]] = []
    for p in paths:
        try:
            images.append(load_image(p, dtype=dtype))
        except ImageError as e:
            if not skip_bad:
                raise
            skipped.append((str(p), str(e)))
            continue
        loaded.append(str(p))
    if skipped:
        logger.warning(
            "load_images: skipped %d of %d image(s); first: %s",
            len(skipped),
            len(skipped) + len(images),
            skipped[0][1],
        )
    return LoadResult(images, loaded, skipped)


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from e
    return head[128:132] == b"DICM"


def _load_raster(path: Path) -> np.ndarray:
    require("PIL", purpose="reading PNG/JPEG images")
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(path) as im:
            # load() decodes everything now, so a truncated file fails here, inside the try.
            im.load()
            return _raster_to_gray(im, path)
    except UnidentifiedImageError as e:
        raise ImageError(f"{path}: not a readable image ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        # Pillow reports truncated or corrupt data as OSError or SyntaxError.
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"{path}: corrupt or truncated image ({e})") from e


def _raster_to_gray(im: Any, path: Path) -> np.ndarray:
    mode = im.mode
    if mode in ("1", "L", "LA"):
        arr = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    elif mode.startswith("I;16") or mode == "I":
        # 16-bit grayscale PNG opens as I;16 (or I in older Pillow); PNG has no deeper gray.
        arr = np.asarray(im, dtype=np.float64) / 65535.0
    elif mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
        arr = rgb @ _LUMA
    else:
        raise ImageError(f"{path}: unsupported image mode {mode!r}")
    if arr.ndim != 2:
        raise ImageError(f"{path}: expected a 2-D image, got shape {arr.shape}")
    return arr


def _pydicom_pixels() -> tuple[Any, Any, Any]:
    """apply_modality_lut, apply_windowing, apply_voi from pydicom 3 (or 2.4)."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import (  # type: ignore[no-redef]
            apply_modality_lut,
            apply_voi,
            apply_windowing,
        )
    return apply_modality_lut, apply_windowing, apply_voi


def _load_dicom(path: Path) -> np.ndarray:
    require("pydicom", purpose="reading DICOM images")
    import pydicom

    apply_modality_lut, apply_windowing, apply_voi = _pydicom_pixels()
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises many kinds on garbage; all mean "unreadable"
        raise ImageError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from e
    if "PixelData" not in ds:
        raise ImageError(f"{path}: DICOM file has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageError(
            f"{path}: unsupported PhotometricInterpretation {photometric!r} "
            "(MONOCHROME1 or MONOCHROME2 expected)"
        )
    try:
        stored = ds.pixel_array
    except Exception as e:  # truncated pixel data, unknown compression, missing decoder
        raise ImageError(f"{path}: cannot decode pixel data ({type(e).__name__}: {e})") from e
    if stored.ndim != 2:
        raise ImageError(
            f"{path}: expected a single-frame 2-D image, got pixel array of shape {stored.shape}"
        )
    try:
        arr = np.asarray(apply_modality_lut(stored, ds))
        if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            # A LUT is indexed by integers; rescaled values are floats that are integral in
            # practice, and passing them as such avoids pydicom's float-input warning.
            if arr.dtype.kind == "f" and np.array_equal(arr, np.round(arr)):
                arr = arr.astype(np.int64)
            out = np.asarray(apply_voi(arr, ds, index=0), dtype=np.float64)
            arr = out / float(2**bits - 1)
        elif _has_value(ds, "WindowCenter") and _has_value(ds, "WindowWidth"):
            arr = _window_0_1(arr.astype(np.float64), ds, apply_windowing)
        else:
            arr = _min_max(arr.astype(np.float64))
    except ImageError:
        raise
    except Exception as e:  # malformed LUT or window attributes
        raise ImageError(f"{path}: cannot apply rescale/VOI ({type(e).__name__}: {e})") from e
    if not np.all(np.isfinite(arr)):
        raise ImageError(f"{path}: non-finite values after rescale/VOI")
    arr = np.clip(arr, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        arr = 1.0 - arr
    return arr


def _window_0_1(arr: np.ndarray, ds: Any, apply_windowing: Any) -> np.ndarray:
    """Window with pydicom, then scale by the window's output range to [0, 1]."""
    out = np.asarray(apply_windowing(arr, ds, index=0), dtype=np.float64)
    # The output range (y_min, y_max) depends on bits stored, signedness and rescale; rather
    # than re-deriving pydicom's rule, window two values far outside the window, which map
    # to y_min and y_max (exactly for LINEAR, to the limit for SIGMOID).
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    far = 1e6 * max(abs(width), 1.0) + abs(center)
    with np.errstate(over="ignore"):
        lo, hi = np.asarray(
            apply_windowing(np.array([center - far, center + far]), ds, index=0),
            dtype=np.float64,
        )
    if not hi > lo:
        raise ValueError(f"window output range is empty ({lo}, {hi})")
    return (out - lo) / (hi - lo)


def _has_value(ds: Any, keyword: str) -> bool:
    """Whether `ds` has the element with a non-empty value (scanners write empty windows)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return False
    return not (hasattr(value, "__len__") and not isinstance(value, str) and len(value) == 0)


def _first(value: Any) -> float:
    if isinstance(value, (list, tuple)) or (
        hasattr(value, "__len__") and not isinstance(value, (str, bytes))
    ):
        value = value[0]
    return float(value)


def _min_max(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr)
    return (arr - lo) / (hi - lo)


# --------------------------------------------------------------------------------------------
# Resizing


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(h), int(w)


def _resample(img: np.ndarray, h: int, w: int, resample: str) -> np.ndarray:
    require("PIL", purpose="resizing images")
    from PIL import Image as PILImage

    filters = {
        "nearest": PILImage.Resampling.NEAREST,
        "bilinear": PILImage.Resampling.BILINEAR,
        "bicubic": PILImage.Resampling.BICUBIC,
        "lanczos": PILImage.Resampling.LANCZOS,
        "box": PILImage.Resampling.BOX,
    }
    if resample not in filters:
        raise ValueError(f"resample must be one of {', '.join(filters)}, got {resample!r}")
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {img.shape}")
    if img.dtype == np.uint8:
        src = PILImage.fromarray(img, mode="L")
        return np.asarray(src.resize((w, h), filters[resample]), dtype=np.uint8)
    # Float images are resized in Pillow's 32-bit float mode, so no precision is lost.
    src = PILImage.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F")
    out = np.asarray(src.resize((w, h), filters[resample]), dtype=np.float32)
    # Bicubic/Lanczos overshoot at edges; clipping to the input's range keeps [0, 1] images
    # in [0, 1] without assuming that every float image is one.
    return np.clip(out, float(img.min()), float(img.max()))


def resize(
    img: np.ndarray, size: int | tuple[int, int], *, resample: str = "bilinear"
) -> np.ndarray:
    """Stretch an image to `size` (an int for a square, or (height, width)).

    Boxes in 0–1 coordinates need no change: they are fractions of the image extent, which
    a plain resize scales along with the pixels.
    """
    h, w = _size_hw(size)
    return _resample(img, h, w, resample)


@dataclass(frozen=True)
class LetterboxTransform:
    """Where `resize_letterbox` put the original image inside the output.

    The original (src_h x src_w) fills the content rectangle of new_h x new_w pixels whose top
    left corner is at (pad_top, pad_left) in the out_h x out_w output; the rest is padding.
    """

    src_h: int
    src_w: int
    out_h: int
    out_w: int
    new_h: int
    new_w: int
    pad_top: int
    pad_left: int

    def apply_box(self, box: BoxTuple) -> BoxTuple:
        """Map (x1, y1, x2, y2) in 0–1 coordinates of the original to those of the output."""
        x1, y1, x2, y2 = box
        return (
            (self.pad_left + x1 * self.new_w) / self.out_w,
            (self.pad_top + y1 * self.new_h) / self.out_h,
            (self.pad_left + x2 * self.new_w) / self.out_w,
            (self.pad_top + y2 * self.new_h) / self.out_h,
        )

    def invert_box(self, box: BoxTuple, *, clip: bool = True) -> BoxTuple:
        """Map (x1, y1, x2, y2) in 0–1 coordinates of the output back to the original.

        Args:
            box: A box on the letterboxed image (e.g. a model's prediction).
            clip: Clip to [0, 1], since parts of a predicted box may lie on the padding.
        """
        x1, y1, x2, y2 = box
        out = (
            (x1 * self.out_w - self.pad_left) / self.new_w,
            (y1 * self.out_h - self.pad_top) / self.new_h,
            (x2 * self.out_w - self.pad_left) / self.new_w,
            (y2 * self.out_h - self.pad_top) / self.new_h,
        )
        if clip:
            return tuple(min(max(v, 0.0), 1.0) for v in out)  # type: ignore[return-value]
        return out


def resize_letterbox(
    img: np.ndarray,
    size: int | tuple[int, int],
    *,
    resample: str = "bilinear",
    fill: float = 0.0,
) -> tuple[np.ndarray, LetterboxTransform]:
    """Resize keeping the aspect ratio, centred and padded with `fill` to `size`.

    Args:
        img: A 2-D image (float in [0, 1] or uint8).
        size: An int for a square output, or (height, width).
        resample: "nearest", "bilinear", "bicubic", "lanczos" or "box".
        fill: The padding value (in the image's own units: 0-1 for float, 0-255 for uint8).

    Returns:
        The output image and the `LetterboxTransform` that maps boxes onto it and back. The
        mapping uses the rounded content size, so it matches the pixels exactly.
    """
    out_h, out_w = _size_hw(size)
    if img.ndim != 2 or min(img.shape) == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {img.shape}")
    src_h, src_w = img.shape
    scale = min(out_h / src_h, out_w / src_w)
    new_h = min(out_h, max(1, math.floor(src_h * scale + 0.5)))
    new_w = min(out_w, max(1, math.floor(src_w * scale + 0.5)))
    pad_top, pad_left = (out_h - new_h) // 2, (out_w - new_w) // 2
    content = _resample(img, new_h, new_w, resample)
    out = np.full((out_h, out_w), fill, dtype=content.dtype)
    out[pad_top : pad_top + new_h, pad_left : pad_left + new_w] = content
    tf = LetterboxTransform(src_h, src_w, out_h, out_w, new_h, new_w, pad_top, pad_left)
    return out, tf


# --------------------------------------------------------------------------------------------
# Views

# The vocabulary, its spellings and the frontal rule live in radixpert.data.views.


def frontal_images(study: Study) -> list[Image]:
    """The study's images whose view is frontal (``radixpert.data.views.is_frontal``: PA, AP,
    FRONTAL), in their order."""
    return [im for im in study.images if is_frontal(im.view)]


__all__ = [
    "FRONTAL_VIEWS",
    "ImageError",
    "LetterboxTransform",
    "LoadResult",
    "frontal_images",
    "is_frontal",
    "load_image",
    "load_images",
    "resize",
    "resize_letterbox",
]
