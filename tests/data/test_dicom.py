"""DICOM as archives hold it: pydicom's own test files, read by radixpert.data.images.

The files come with pydicom (MR_small*, JPEG*, JPGExtended) and with the pydicom-data package
(RG1_*/RG3_* MONOCHROME1 radiographs, vlut_04, mlut_18, emri_small*, 693_*, eCT_Supplemental),
resolved locally with ``get_testdata_file(name, download=False)``; a test whose file is absent
is skipped with the reason. Expected values are written two ways: from the DICOM formulas with
the constants pinned here, and from pydicom's own apply_modality_lut / apply_voi_lut /
apply_windowing (the reference implementation), which must agree with ours.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("PIL")

from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing  # noqa: E402

from radixpert.data.images import ImageError, load_image  # noqa: E402

# Every file used below; with pydicom-data installed all of them resolve without a download.
FILES = [
    "MR_small.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",
    "JPEGLSNearLossless_16.dcm",
    "JPEG-LL.dcm",
    "JPGExtended.dcm",
    "JPEG-lossy.dcm",
    "emri_small.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "emri_small_RLE.dcm",
    "RG1_UNCR.dcm",
    "RG1_J2KR.dcm",
    "RG3_UNCR.dcm",
    "RG3_J2KR.dcm",
    "RG3_UNCI.dcm",
    "RG3_J2KI.dcm",
    "vlut_04.dcm",
    "mlut_18.dcm",
    "693_UNCR.dcm",
    "693_J2KR.dcm",
    "eCT_Supplemental.dcm",
]
LIBJPEG = ("pylibjpeg", "libjpeg")  # import names of pylibjpeg, pylibjpeg-libjpeg
OPENJPEG = ("pylibjpeg", "openjpeg")


def datafile(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name}: not in pydicom nor in pydicom-data (pip install pydicom-data)")
    return str(path)


def needs(*modules: str) -> None:
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if absent:
        pytest.skip(f"needs {', '.join(absent)}: pip install 'radixpert[dicom]'")


def pydicom_reference(path: str, lo: float, hi: float, frame: int | None = None) -> np.ndarray:
    """pydicom's pipeline: modality LUT, VOI LUT or window, scaled by [lo, hi], MONOCHROME1
    inverted."""
    ds = pydicom.dcmread(path)
    ds.pixel_array_options(index=frame)
    out = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    out = (out - lo) / (hi - lo)
    return 1.0 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR), as a fraction of the output range."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def test_test_files_are_local():
    try:
        importlib.metadata.distribution("pydicom-data")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data)")
    missing = [name for name in FILES if get_testdata_file(name, download=False) is None]
    assert missing == []


# -- decoding: compressed files equal their uncompressed twins ------------------------------


@pytest.mark.parametrize(
    ("compressed", "plain", "modules"),
    [
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", LIBJPEG),  # JPEG-LS lossless
        ("MR_small_jp2klossless.dcm", "MR_small.dcm", OPENJPEG),  # JPEG 2000 lossless
        ("MR_small_RLE.dcm", "MR_small.dcm", ()),  # RLE, pydicom's own decoder
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm", OPENJPEG),  # MONOCHROME1, 15-bit
        ("RG3_J2KR.dcm", "RG3_UNCR.dcm", OPENJPEG),  # MONOCHROME1, 10-bit
        ("RG3_J2KI.dcm", "RG3_UNCI.dcm", OPENJPEG),  # lossy J2K; UNCI is its decompression
        ("693_J2KR.dcm", "693_UNCR.dcm", OPENJPEG),  # CT with Pixel Padding Value
    ],
)
def test_compressed_equals_uncompressed(compressed, plain, modules):
    needs(*modules)
    img = load_image(datafile(compressed))
    np.testing.assert_array_equal(img, load_image(datafile(plain)))


@pytest.mark.parametrize(
    ("compressed", "modules"),
    [
        ("emri_small_jpeg_ls_lossless.dcm", LIBJPEG),
        ("emri_small_jpeg_2k_lossless.dcm", OPENJPEG),
        ("emri_small_RLE.dcm", ()),
    ],
)
def test_multi_frame_compressed_equals_uncompressed_per_frame(compressed, modules):
    needs(*modules)
    for frame in (0, 4, 9):
        np.testing.assert_array_equal(
            load_image(datafile(compressed), frame=frame),
            load_image(datafile("emri_small.dcm"), frame=frame),
        )


# -- decoding: pinned stored values (pydicom's pixel references) -----------------------------


def test_mr_small_window_pinned_and_as_pydicom():
    # Signed 16-bit, no rescale, window 600/1600: the output range is -32768..32767.
    path = datafile("MR_small.dcm")
    img = load_image(path)
    stored = {(0, 31): 422, (0, 32): 319, (31, 0): 366, (63, 61): 1369, (63, 63): 862}
    for (y, x), s in stored.items():
        assert img[y, x] == pytest.approx(linear_window(np.float64(s), 600, 1600), abs=1e-6)
    np.testing.assert_allclose(img, pydicom_reference(path, -32768, 32767), atol=1e-6)


def test_jpeg_ls_lossless_pinned():
    needs(*LIBJPEG)
    img = load_image(datafile("MR_small_jpeg_ls_lossless.dcm"))
    column = [170, 193, 191, 373, 1293, 2053, 1879, 1683, 1711]  # stored rows 55..63, col 35
    np.testing.assert_allclose(img[55:64, 35], linear_window(np.array(column), 600, 1600),
                               atol=1e-6)  # fmt: skip


def test_jpeg_ls_near_lossless_16_bit():
    needs(*LIBJPEG)
    path = datafile("JPEGLSNearLossless_16.dcm")
    img = load_image(path)
    # No VOI: min-max over the stored 0..65535.
    stored = [65535, 32765, 16385, 4095, 1025, 255, 65, 15, 5]  # rows 0, 5, ..., 40
    np.testing.assert_allclose(img[0:45:5, 0], np.array(stored) / 65535, atol=1e-7)
    np.testing.assert_allclose(img, pydicom_reference(path, 0, 65535), atol=1e-7)


def test_jpeg_lossless_sv1():
    needs(*LIBJPEG)
    img = load_image(datafile("JPEG-LL.dcm"))
    # Signed 16-bit, no VOI: min-max over the stored 0..278.
    np.testing.assert_allclose(img[400, 124:132], np.array([60, 58, 61, 68, 59, 65, 64, 67]) / 278,
                               atol=1e-7)  # fmt: skip
    np.testing.assert_allclose(img[600, 124:132], np.array([3, 1, 2, 0, 2, 1, 2, 0]) / 278,
                               atol=1e-7)  # fmt: skip


def test_jpeg_extended_12_bit():
    needs(*LIBJPEG)
    path = datafile("JPGExtended.dcm")
    img = load_image(path)
    assert img.shape == (1024, 256)  # Number of Frames 1: one frame, read without frame=
    # 12-bit, no VOI: min-max over the stored 0..264.
    assert img[420, 140] == pytest.approx(244 / 264, abs=1e-7)
    assert img[230, 120] == pytest.approx(95 / 264, abs=1e-7)
    np.testing.assert_allclose(img, pydicom_reference(path, 0, 264), atol=1e-7)


def test_broken_jpeg_extended_is_an_image_error():
    # JPEG-lossy.dcm has an invalid scan stop value; no decoder reads it.
    needs(*LIBJPEG)
    with pytest.raises(ImageError, match=r"JPEG-lossy\.dcm: cannot decode pixel data"):
        load_image(datafile("JPEG-lossy.dcm"))


# -- MONOCHROME1 radiographs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "center", "width", "bits", "pixel", "stored"),
    [
        ("RG1_UNCR.dcm", 15000, 30000, 15, (1000, 900), 3606),
        ("RG3_UNCR.dcm", 550, 1024, 10, (880, 870), 383),
    ],
)
def test_monochrome1_inverted_once(name, center, width, bits, pixel, stored):
    path = datafile(name)
    img = load_image(path)
    # Unsigned, no rescale: the window's output range is 0..2**bits - 1; MONOCHROME1 shows
    # the minimum as white, so the output is inverted (bright = dense).
    expected = 1.0 - linear_window(np.float64(stored), center, width)
    assert img[pixel] == pytest.approx(expected, abs=1e-6)
    np.testing.assert_allclose(img, pydicom_reference(path, 0, 2**bits - 1), atol=1e-6)


# -- LUTs ----------------------------------------------------------------------------------


def test_voi_lut_sequence_vlut_04():
    path = datafile("vlut_04.dcm")
    img = load_image(path)
    ds = pydicom.dcmread(path)
    assert list(ds.VOILUTSequence[0].LUTDescriptor) == [256, 0, 16]
    # The LUT maps the 8-bit stored s to 257 s, the full 16-bit range: the output is s / 255.
    np.testing.assert_allclose(img, ds.pixel_array / 255.0, atol=1e-7)
    np.testing.assert_allclose(img, pydicom_reference(path, 0, 65535), atol=1e-7)


def test_modality_lut_sequence_mlut_18():
    path = datafile("mlut_18.dcm")
    img = load_image(path)
    ds = pydicom.dcmread(path)
    assert list(ds.ModalityLUTSequence[0].LUTDescriptor) == [4096, -2048, 16]
    # No VOI: min-max of the Modality LUT's output, which spans 0..65535.
    m = apply_modality_lut(ds.pixel_array, ds)
    assert (int(m.min()), int(m.max())) == (0, 65535)
    np.testing.assert_allclose(img, m / 65535.0, atol=1e-7)


# -- Pixel Padding Value -------------------------------------------------------------------


def test_ct_padding_is_black_and_window_kept():
    path = datafile("693_UNCR.dcm")
    ds = pydicom.dcmread(path)
    assert (ds.PixelPaddingValue, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth) == (
        -2000,
        -1024,
        40,
        100,
    )
    img = load_image(path)
    stored = ds.pixel_array
    pad = stored == -2000
    assert pad.sum() == 55772
    assert (img[pad] == 0).all()
    # Rescale -1024 then window 40/100; the output range is that of signed 14-bit (Bits
    # Stored), rescaled: -8192 - 1024 .. 8191 - 1024.
    hu = stored.astype(np.float64) - 1024
    np.testing.assert_allclose(img[~pad], linear_window(hu, 40, 100)[~pad], atol=1e-6)
    ref = pydicom_reference(path, -8192 - 1024, 8191 - 1024)
    np.testing.assert_allclose(img[~pad], ref[~pad], atol=1e-6)
    assert img[256, 250] == pytest.approx(linear_window(1051.0 - 1024, 40, 100), abs=1e-6)


def test_ct_padding_does_not_stretch_min_max(tmp_path):
    ds = pydicom.dcmread(datafile("693_UNCR.dcm"))
    del ds.WindowCenter, ds.WindowWidth
    path = tmp_path / "nowindow.dcm"
    ds.save_as(path)
    img = load_image(path)
    stored = ds.pixel_array
    pad = stored == -2000
    # Without the padding the stored range is 0..2492 (HU -1024..1468), not -2000..2492.
    np.testing.assert_allclose(img[~pad], stored[~pad] / 2492.0, atol=1e-6)
    assert (img[pad] == 0).all()


# -- multi-frame ---------------------------------------------------------------------------


def test_multi_frame_needs_a_frame():
    path = datafile("emri_small.dcm")
    with pytest.raises(ImageError, match=r"emri_small\.dcm: holds 10 frames; choose one"):
        load_image(path)
    with pytest.raises(ImageError, match=r"emri_small\.dcm: no frame 10 \(the file holds 10\)"):
        load_image(path, frame=10)
    ds = pydicom.dcmread(path)
    for frame in (0, 4, 9):
        stored = ds.pixel_array[frame].astype(np.float64)
        lo, hi = stored.min(), stored.max()
        np.testing.assert_allclose(load_image(path, frame=frame), (stored - lo) / (hi - lo),
                                   atol=1e-7)  # fmt: skip
    # pinned: frame 4, stored (67, 82, 44) at row 0, columns 31..33; the frame spans 1..390
    np.testing.assert_allclose(load_image(path, frame=4)[0, 31:34],
                               (np.array([67, 82, 44]) - 1) / 389, atol=1e-7)  # fmt: skip


def test_enhanced_ct_takes_rescale_and_window_from_shared_functional_groups():
    path = datafile("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    assert "WindowCenter" not in ds and "RescaleIntercept" not in ds
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert shared.FrameVOILUTSequence[0].WindowCenter == 49
    assert shared.PixelValueTransformationSequence[0].RescaleIntercept == -1024
    for frame in (0, 1):
        img = load_image(path, frame=frame)
        hu = ds.pixel_array[frame].astype(np.float64) - 1024
        np.testing.assert_allclose(img, linear_window(hu, 49, 102), atol=1e-6)
        # pydicom, given the frame's values at the top level where its functions look
        flat = pydicom.dcmread(path)
        flat.RescaleSlope, flat.RescaleIntercept = 1, -1024
        flat.WindowCenter, flat.WindowWidth = 49, 102
        out = apply_windowing(apply_modality_lut(flat.pixel_array[frame], flat), flat)
        np.testing.assert_allclose(img, (out + 1024) / 65535, atol=1e-6)


# -- a missing decoder plugin --------------------------------------------------------------


def _load_without_pylibjpeg(path: str) -> str:
    """load_image in a fresh interpreter where the pylibjpeg packages cannot be imported."""
    code = textwrap.dedent(
        f"""
        import sys
        for name in ("pylibjpeg", "libjpeg", "openjpeg", "rle"):
            sys.modules[name] = None  # import fails, as when not installed
        from radixpert.data.images import ImageError, load_image
        try:
            load_image({path!r})
        except ImageError as e:
            print("ImageError:", e)
        else:
            print("loaded")
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("MR_small_jpeg_ls_lossless.dcm", "no decoder for it is installed"),  # JPEG-LS
        ("JPGExtended.dcm", "cannot decode pixel data"),  # Pillow is there, but 8-bit only
    ],
)
def test_missing_plugin_names_file_and_extra(name, what):
    out = _load_without_pylibjpeg(datafile(name))
    assert out.startswith("ImageError:"), out
    assert name in out and what in out
    assert "pylibjpeg and pylibjpeg-libjpeg" in out and "pip install 'radixpert[dicom]'" in out


def test_rle_needs_no_plugin():
    out = _load_without_pylibjpeg(datafile("MR_small_RLE.dcm"))
    assert out.strip() == "loaded"
