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
* DICOM (pydicom): the Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence) is
  applied, then the first VOI LUT Sequence item that has LUT data, else the first Window
  Center/Width pair; the output is scaled by the full output range of that VOI transform (for
  a VOI LUT, the width of its largest entry, since devices misstate the descriptor's bits).
  Without any VOI the image is min-max scaled. MONOCHROME1, or Presentation LUT Shape
  INVERSE, inverts last (once, when both are set), so that bright always means dense. Pixel
  Padding Value (and Range Limit) pixels are left out of the min-max range and come out 0.
  Enhanced multi-frame images take rescale and window from their frame's functional groups.
* Compressed DICOM decodes through pydicom's plugins: RLE natively, 8-bit JPEG and JPEG 2000
  with Pillow, JPEG-LS, JPEG Lossless, 12-bit JPEG and JPEG 2000 with the `dicom` extra
  (pylibjpeg + pylibjpeg-libjpeg, GPLv3, + pylibjpeg-openjpeg). A missing plugin is an
  `ImageError` that names the file and the package to install.

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


def load_image(
    path: str | Path, *, dtype: Dtype = "float32", frame: int | None = None
) -> np.ndarray:
    """Read one PNG/JPEG or DICOM image as a 2-D grayscale array.

    Args:
        path: The image file. DICOM is recognised by a `.dcm`/`.dicom` suffix or by the
            "DICM" marker after the 128-byte preamble; anything else goes to Pillow.
        dtype: "float32" for values in [0, 1], or "uint8" for round(255 * value).
        frame: For a multi-frame DICOM file, the frame to read (0-based); only that frame
            is decoded. None reads single-frame files and refuses multi-frame ones, since
            several frames are rarely one radiograph (a series, a tomosynthesis stack).

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
    if _is_dicom(path):
        img = _load_dicom(path, frame)
    elif frame not in (None, 0):
        raise ImageError(f"{path}: no frame {frame} (not a DICOM file: one frame)")
    else:
        img = _load_raster(path)
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


class ImageTooLarge(ImageError):
    """An image whose header declares more pixels than allowed (refused before decoding)."""


def read_image_bytes(
    data: bytes, *, name: str = "image", max_pixels: int | None = None
) -> np.ndarray:
    """``load_image`` for an image held in memory (an upload, a request body).

    The same formats and intensity rules as ``load_image``: DICOM is recognised by the "DICM"
    marker after the 128-byte preamble, anything else must be PNG or JPEG. Single-frame only.

    Args:
        data: The file's bytes.
        name: What error messages call it (a request field, an upload's file name).
        max_pixels: Refuse, before decoding anything, an image whose header declares more
            pixels (rows x columns x frames x samples) than this: a decompression-bomb guard.

    Returns:
        A C-contiguous float32 array of shape (rows, columns), values in [0, 1].

    Raises:
        ImageTooLarge: The header declares more than ``max_pixels`` pixels.
        ImageError: Not a PNG, JPEG or DICOM image, or corrupt or truncated data.
    """
    import io

    if not data:
        raise ImageError(f"{name}: empty image")
    if data[128:132] == b"DICM":
        require("pydicom", purpose="reading DICOM images")
        import pydicom

        if max_pixels is not None:
            try:
                head = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                dims = [int(head.get(k) or 1) for k in ("Rows", "Columns")]
                extra = [int(head.get(k) or 1) for k in ("NumberOfFrames", "SamplesPerPixel")]
            except Exception as e:  # pydicom raises many kinds on garbage
                raise ImageError(
                    f"{name}: not a readable DICOM file ({type(e).__name__})"
                ) from None
            pixels = math.prod(dims) * math.prod(max(v, 1) for v in extra)
            if pixels > max_pixels:
                raise ImageTooLarge(_too_large(name, pixels, max_pixels))
        img = _load_dicom(io.BytesIO(data), None, name=name)
    else:
        img = _open_raster_formats(io.BytesIO(data), name, max_pixels)
    return np.ascontiguousarray(np.clip(img, 0.0, 1.0).astype(np.float32))


_RASTER_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # PNG, JPEG


def _open_raster_formats(source: Any, name: str, max_pixels: int | None) -> np.ndarray:
    """``_open_raster`` limited to PNG and JPEG by their signatures (what an upload may be)."""
    head = source.read(8)
    source.seek(0)
    if not head.startswith(_RASTER_MAGIC):
        raise ImageError(f"{name}: not a PNG, JPEG or DICOM image")
    return _open_raster(source, name, max_pixels)


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
    return _open_raster(path, path, None)


def _open_raster(source: Any, name: Any, max_pixels: int | None) -> np.ndarray:
    """PNG/JPEG (or anything Pillow reads) from a path or a file object, as gray in [0, 1]."""
    require("PIL", purpose="reading PNG/JPEG images")
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(source) as im:
            width, height = im.size  # from the header: nothing is decoded yet
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLarge(_too_large(name, width * height, max_pixels))
            # load() decodes everything now, so a truncated file fails here, inside the try.
            im.load()
            return _raster_to_gray(im, name)
    except UnidentifiedImageError as e:
        # Pillow's message names its file object; the name is said already.
        raise ImageError(f"{name}: not a readable image (no decoder recognises it)") from e
    except PILImage.DecompressionBombError as e:
        raise ImageTooLarge(f"{name}: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        # Pillow reports truncated or corrupt data as OSError or SyntaxError.
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"{name}: corrupt or truncated image ({e})") from e


def _too_large(name: Any, pixels: int, limit: int) -> str:
    return (
        f"{name}: the image declares {pixels} pixels, over the limit of {limit} "
        "(refused before decoding: a decompression-bomb guard)"
    )


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


# --------------------------------------------------------------------------------------------
# DICOM

# Compressed transfer syntaxes and the decoder plugins of the `dicom` extra that pydicom uses
# for them. pydicom decodes native, deflated and RLE data itself (pylibjpeg-rle, also in the
# extra, only does it faster), and Pillow (the `data` extra) 8-bit JPEG and JPEG 2000;
# JPEG-LS, JPEG Lossless and 12-bit JPEG need libjpeg.
_LIBJPEG = ("pylibjpeg", "pylibjpeg-libjpeg")
_OPENJPEG = ("pylibjpeg", "pylibjpeg-openjpeg")
_PLUGINS: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2.4.50": _LIBJPEG,  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": _LIBJPEG,  # JPEG Extended (Process 2 and 4), 12-bit
    "1.2.840.10008.1.2.4.57": _LIBJPEG,  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70": _LIBJPEG,  # JPEG Lossless, First-Order Prediction (SV1)
    "1.2.840.10008.1.2.4.80": _LIBJPEG,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": _LIBJPEG,  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": _OPENJPEG,  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.91": _OPENJPEG,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": _OPENJPEG,  # HTJ2K (Lossless Only)
    "1.2.840.10008.1.2.4.202": _OPENJPEG,  # HTJ2K with RPCL Options (Lossless Only)
    "1.2.840.10008.1.2.4.203": _OPENJPEG,  # HTJ2K
}
# Frame functional groups (enhanced multi-frame images) that hold what single-frame images
# keep at the top level: rescale in Pixel Value Transformation, windows in Frame VOI LUT.
_FRAME_GROUPS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
}


def _load_dicom(source: Any, frame: int | None, name: Any = None) -> np.ndarray:
    """A DICOM file (a path, or a file object named by ``name`` in errors) as gray in [0, 1]."""
    require("pydicom", purpose="reading DICOM images")
    import pydicom

    path = source if name is None else name  # what error messages call it
    try:
        ds = pydicom.dcmread(source)
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
    index = _frame_index(ds, frame, path)
    stored = _decode(ds, index, path)
    if stored.ndim != 2:
        raise ImageError(f"{path}: expected a 2-D frame, got pixel array of shape {stored.shape}")
    _use_frame_groups(ds, index or 0)
    padding = _padding(stored, ds)
    try:
        arr = _grayscale_0_1(stored, ds, padding)
    except ImageError as e:
        raise ImageError(f"{path}: {e}") from e
    except Exception as e:  # malformed rescale, LUT or window attributes
        raise ImageError(f"{path}: cannot apply rescale/VOI ({type(e).__name__}: {e})") from e
    if not np.all(np.isfinite(arr)):
        raise ImageError(f"{path}: non-finite values after rescale/VOI")
    arr = np.clip(arr, 0.0, 1.0)
    # MONOCHROME1 shows its minimum as white. Presentation LUT Shape INVERSE asks for the same
    # inversion: the DX IOD requires INVERSE exactly when the image is MONOCHROME1 (PS3.3
    # C.8.11.7), so the two together mean one inversion, not two.
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        arr = 1.0 - arr
    if padding is not None:
        # Padding is no image content; PS3.3 C.7.5.1.1.2 recommends padding with black.
        arr[padding] = 0.0
    return arr


def _frame_index(ds: Any, frame: int | None, path: Path) -> int | None:
    """The frame to decode (None: the only one), checked against Number of Frames."""
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as e:
        raise ImageError(f"{path}: unreadable NumberOfFrames {ds.get('NumberOfFrames')!r}") from e
    if frame is None:
        if frames > 1:
            raise ImageError(
                f"{path}: holds {frames} frames; choose one with frame=0..{frames - 1}"
            )
        return None
    if not 0 <= frame < max(frames, 1):
        raise ImageError(f"{path}: no frame {frame} (the file holds {frames})")
    return frame if frames > 1 else None


def _decode(ds: Any, index: int | None, path: Path) -> np.ndarray:
    """The stored values of one frame, or an ImageError that names the missing decoder."""
    from pydicom.pixels import get_decoder

    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    decoder = None
    if tsyntax is not None and _is_compressed(tsyntax):
        what = f"{tsyntax.name} ({tsyntax})"
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError as e:
            raise ImageError(f"{path}: pixel data is {what}, which pydicom cannot decode") from e
        if not decoder.is_available:
            hint = _install_hint(tsyntax) or "pydicom's plugins for it: " + ", ".join(
                decoder.missing_dependencies
            )
            raise ImageError(
                f"{path}: pixel data is {what} and no decoder for it is installed; {hint}"
            )
    try:
        ds.pixel_array_options(index=index)
        return np.asarray(ds.pixel_array)
    except Exception as e:  # truncated pixel data, corrupt stream, a plugin that cannot
        msg = f"{path}: cannot decode pixel data ({type(e).__name__}: {e})"
        hint = _install_hint(tsyntax) if decoder is not None else ""
        if hint and "pylibjpeg" not in decoder.available_plugins:
            # e.g. 12-bit JPEG with only Pillow, which decodes 8-bit JPEG alone
            msg += f"; {hint}"
        raise ImageError(msg) from e


def _is_compressed(tsyntax: Any) -> bool:
    try:
        return bool(tsyntax.is_compressed)
    except ValueError:  # not a transfer syntax UID that pydicom knows
        return True


def _install_hint(tsyntax: Any) -> str:
    """What to install for `tsyntax`; "" where the `dicom` extra has nothing for it."""
    plugins = _PLUGINS.get(str(tsyntax))
    if plugins is None:
        return ""
    return f"it needs {' and '.join(plugins)}: pip install 'radixpert[dicom]'" + (
        " (pylibjpeg-libjpeg is GPLv3)" if "pylibjpeg-libjpeg" in plugins else ""
    )


def _use_frame_groups(ds: Any, index: int) -> None:
    """Copy one frame's rescale and window from its functional groups to the top level.

    Enhanced multi-frame images keep them per frame (Per-Frame Functional Groups) or for
    all frames (Shared Functional Groups), per-frame winning; pydicom's LUT functions read
    the top level only.
    """
    groups = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    for group in groups:
        for sequence, keywords in _FRAME_GROUPS.items():
            items = group.get(sequence)
            if not items:
                continue
            for keyword in keywords:
                if keyword in items[0]:
                    setattr(ds, keyword, items[0][keyword].value)


def _padding(stored: np.ndarray, ds: Any) -> np.ndarray | None:
    """Where the stored values are Pixel Padding (a value, or a range with its limit)."""
    if not _has_value(ds, "PixelPaddingValue"):
        return None
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    ends = [_stored_int(ds.PixelPaddingValue, signed)]
    if _has_value(ds, "PixelPaddingRangeLimit"):
        ends.append(_stored_int(ds.PixelPaddingRangeLimit, signed))
    lo, hi = min(ends), max(ends)
    mask = (stored >= lo) & (stored <= hi)
    return mask if mask.any() else None


def _stored_int(value: Any, signed: bool) -> int:
    # US or SS by Pixel Representation; a file that wrote SS data as US holds e.g. 63536
    # for -2000.
    v = int(_first(value))
    return v - 65536 if signed and v >= 32768 else v


def _grayscale_0_1(stored: np.ndarray, ds: Any, padding: np.ndarray | None) -> np.ndarray:
    """Modality LUT, then VOI LUT or window (or min-max), scaled to [0, 1]."""
    from pydicom.pixels import apply_modality_lut, apply_windowing

    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword in ds and not _has_value(ds, keyword):
            del ds[keyword]  # an empty rescale is no rescale
    arr = np.asarray(apply_modality_lut(stored, ds))
    lut = _voi_lut_item(ds)
    if lut is not None:
        return _apply_voi_lut(arr, lut, ds)
    if _has_value(ds, "WindowCenter") and _has_value(ds, "WindowWidth"):
        return _window_0_1(arr.astype(np.float64), ds, apply_windowing)
    return _min_max(arr.astype(np.float64), padding)


def _voi_lut_item(ds: Any) -> Any:
    """The first VOI LUT Sequence item, if it has both a descriptor and data.

    As in pydicom's `apply_voi_lut`, an item without LUT Data is no VOI LUT: the window (or
    min-max) applies instead.
    """
    items = ds.get("VOILUTSequence")
    if not items:
        return None
    item = items[0]
    if not (_has_value(item, "LUTDescriptor") and _has_value(item, "LUTData")):
        logger.debug("VOI LUT Sequence item without LUT Descriptor/Data; using the window")
        return None
    return item


def _apply_voi_lut(arr: np.ndarray, item: Any, ds: Any) -> np.ndarray:
    """Map through the LUT and scale by its output range.

    The range is 2**bits - 1 for `bits` the width of the LUT's largest entry (at least 8),
    not the third LUT Descriptor value taken at face value: some devices (Agfa CR among
    them) declare 16 bits for 12-bit entries, and some declare 8 bits for 16-bit words.
    For a LUT that uses its declared width, the two agree.
    """
    descriptor = [int(v) for v in item.LUTDescriptor]
    if len(descriptor) != 3:
        raise ImageError(f"VOI LUT Descriptor has {len(descriptor)} values, 3 expected")
    entries, first, bits = descriptor
    entries = entries % 65536 or 65536  # 0 means 2**16; an SS-read count wraps negative
    if first >= 32768 and (int(ds.get("PixelRepresentation", 0)) == 1 or arr.min() < 0):
        # The first value mapped is SS for signed input (PS3.3 C.11.2.1.1); written as US it
        # reads e.g. 63488 for -2048, above every input, which would leave a blank image.
        first -= 65536
    table = _lut_entries(item, entries, bits, ds)
    need = int(table.max()).bit_length()
    out_bits = max(need, min(bits, 8), 1)
    if out_bits != bits:
        logger.debug("VOI LUT declares %d bits, its entries use %d", bits, need)
    if arr.dtype.kind == "f":
        arr = np.rint(arr)
    idx = np.clip(arr.astype(np.int64) - first, 0, entries - 1)
    return table[idx].astype(np.float64) / float(2**out_bits - 1)


def _lut_entries(item: Any, entries: int, bits: int, ds: Any) -> np.ndarray:
    value = item.LUTData
    if isinstance(value, (bytes, bytearray)):
        if len(value) >= 2 * entries:  # 16-bit words, one entry each
            little = getattr(ds, "original_encoding", (None, True))[1] is not False
            table = np.frombuffer(value, dtype="<u2" if little else ">u2", count=entries)
        elif bits <= 8 and len(value) >= entries:  # 8-bit entries, two to a word
            table = np.frombuffer(value, dtype=np.uint8, count=entries)
        else:
            raise ImageError(
                f"VOI LUT Data holds {len(value)} bytes, too few for {entries} entries"
            )
    else:
        values = [value] if isinstance(value, int) else list(value)
        if len(values) < entries:
            raise ImageError(f"VOI LUT Data holds {len(values)} entries, {entries} declared")
        table = np.asarray(values[:entries], dtype=np.int64) % 65536  # SS data wraps to US
    return table.astype(np.int64)


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
    if value is None or value == "" or value == b"":
        return False
    return not (
        hasattr(value, "__len__") and not isinstance(value, (str, bytes)) and len(value) == 0
    )


def _first(value: Any) -> float:
    if isinstance(value, (list, tuple)) or (
        hasattr(value, "__len__") and not isinstance(value, (str, bytes))
    ):
        value = value[0]
    return float(value)


def _min_max(arr: np.ndarray, padding: np.ndarray | None = None) -> np.ndarray:
    """Scale to [0, 1] by the range of the image's values, padding left out of the range."""
    content = arr if padding is None else arr[~padding]
    if content.size == 0:
        return np.zeros_like(arr)
    lo, hi = float(content.min()), float(content.max())
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
    "ImageTooLarge",
    "LetterboxTransform",
    "LoadResult",
    "frontal_images",
    "is_frontal",
    "load_image",
    "load_images",
    "read_image_bytes",
    "resize",
    "resize_letterbox",
]
