"""Tests for radixpert.data.images: loading (PNG/JPEG/DICOM), letterboxing, frontal views."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")
pydicom = pytest.importorskip("pydicom")

from PIL import Image as PILImage  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from radixpert.data.images import (  # noqa: E402
    ImageError,
    ImageTooLarge,
    LetterboxTransform,
    frontal_images,
    is_frontal,
    load_image,
    load_images,
    read_image_bytes,
    resize,
    resize_letterbox,
)
from radixpert.data.study import Image, Study  # noqa: E402

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def write_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    slope: float | None = None,
    intercept: float | None = None,
    center: object = None,
    width: object = None,
    voi_lut: tuple[list[int], list[int]] | Dataset | None = None,
    signed: bool = False,
    padding: tuple[int, ...] = (),
    shape: str | None = None,
    groups: tuple[dict, list[dict]] | None = None,
) -> Path:
    """Write a real DICOM file (explicit VR little endian, 16-bit pixels).

    A 3-D `stored` is a multi-frame image. `voi_lut` is (descriptor, data), written as OW,
    or a ready VOI LUT item. `padding` is (Pixel Padding Value[, Range Limit]); `shape` the
    Presentation LUT Shape; `groups` (shared, per-frame) functional groups, each a dict of
    sequence keyword -> attributes of its one item.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.RescaleType = "US"
    if center is not None:
        ds.WindowCenter = center
        ds.WindowWidth = width
    if isinstance(voi_lut, Dataset):
        ds.VOILUTSequence = [voi_lut]
    elif voi_lut is not None:
        descriptor, data = voi_lut
        ds.VOILUTSequence = [lut_item(descriptor, np.asarray(data, dtype="<u2").tobytes())]
    vr = "SS" if signed else "US"
    if padding:
        ds.add_new(0x00280120, vr, padding[0])  # Pixel Padding Value
    if len(padding) > 1:
        ds.add_new(0x00280121, vr, padding[1])  # Pixel Padding Range Limit
    if shape is not None:
        ds.PresentationLUTShape = shape
    if groups is not None:
        shared, per_frame = groups
        ds.SharedFunctionalGroupsSequence = [_group(shared)]
        ds.PerFrameFunctionalGroupsSequence = [_group(g) for g in per_frame]
    ds.PixelData = stored.astype("<i2" if signed else "<u2").tobytes()
    try:
        ds.save_as(path, enforce_file_format=True)  # pydicom 3
    except TypeError:  # pydicom 2.x spells it differently
        ds.save_as(path, write_like_original=False)
    return path


def lut_item(descriptor: list[int], data: bytes | list[int] | None, vr: str = "OW") -> Dataset:
    """A VOI LUT Sequence item: LUT Data as OW bytes or US values, or none at all."""
    item = Dataset()
    item.add_new(0x00283002, "SS" if min(descriptor) < 0 else "US", descriptor)
    item.LUTExplanation = "test"
    if data is not None:
        item.add_new(0x00283006, vr, data)
    return item


def _group(attrs: dict) -> Dataset:
    group = Dataset()
    for sequence, values in attrs.items():
        item = Dataset()
        for keyword, value in values.items():
            setattr(item, keyword, value)
        setattr(group, sequence, [item])
    return group


# Stored values s; modality value m = 2 s - 1000 gives -1000, -100, 0, 100, 200, 7190.
STORED = np.array([[0, 450, 500], [550, 600, 4095]], dtype=np.uint16)
# Window centre 0.5, width 401, LINEAR (DICOM PS3.3 C.11.2.1.2.1): with c' = c - 0.5 = 0 and
# w' = w - 1 = 400, values <= -200 go to the bottom, > 200 to the top, others to
# (m - c') / w' + 0.5 of the range: -1000 -> 0, -100 -> 0.25, 0 -> 0.5, 100 -> 0.75,
# 200 -> 1.0, 7190 -> 1.
WINDOWED = np.array([[0.0, 0.25, 0.5], [0.75, 1.0, 1.0]], dtype=np.float32)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_rescale_then_window(tmp_path, photometric):
    path = write_dicom(
        tmp_path / "a.dcm",
        STORED,
        photometric=photometric,
        slope=2,
        intercept=-1000,
        center="0.5",
        width="401",
    )
    img = load_image(path)
    assert img.dtype == np.float32 and img.shape == (2, 3)
    expected = WINDOWED if photometric == "MONOCHROME2" else 1.0 - WINDOWED
    np.testing.assert_array_equal(img, expected)


def test_dicom_uses_first_of_several_windows(tmp_path):
    path = write_dicom(
        tmp_path / "multi.dcm",
        STORED,
        slope=2,
        intercept=-1000,
        center=["0.5", "3000"],
        width=["401", "10"],
    )
    np.testing.assert_array_equal(load_image(path), WINDOWED)


def test_dicom_signed_pixels_windowed(tmp_path):
    # No rescale: the window's output range is that of signed 12-bit data, -2048..2047.
    stored = np.array([[-2048, -100, 0], [100, 200, 2047]], dtype=np.int16)
    path = write_dicom(tmp_path / "s.dcm", stored, signed=True, center="0.5", width="401")
    np.testing.assert_array_equal(load_image(path), WINDOWED)


def test_dicom_empty_window_falls_back_to_min_max(tmp_path):
    stored = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    path = write_dicom(tmp_path / "e.dcm", stored, center="", width="")
    np.testing.assert_array_equal(load_image(path), [[0.0, 0.25], [0.5, 1.0]])


def test_dicom_uint8_option(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", STORED, slope=2, intercept=-1000, center=0.5,
                       width=401)  # fmt: skip
    out = load_image(path, dtype="uint8")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 64, 128], [191, 255, 255]])


def test_dicom_without_window_is_min_max_scaled(tmp_path):
    stored = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    path = write_dicom(tmp_path / "nowin", stored, slope=1, intercept=0)  # no suffix: sniffed
    np.testing.assert_array_equal(load_image(path), [[0.0, 0.25], [0.5, 1.0]])


def test_dicom_voi_lut_sequence_preferred(tmp_path):
    stored = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "lut.dcm",
        stored,
        center="100",
        width="10",  # ignored: a VOI LUT Sequence takes precedence
        slope=1,
        intercept=0,
        voi_lut=([4, 0, 8], [0, 51, 102, 255]),
    )
    np.testing.assert_allclose(load_image(path), [[0.0, 0.2], [0.4, 1.0]], atol=1e-7)


# -- VOI LUT: the descriptor's bits against the data ---------------------------------------


def test_dicom_voi_lut_declared_16_bits_holding_12_bit_entries(tmp_path):
    # Agfa CR and others declare 16 bits for entries that go up to 4095: the output range is
    # the entries' own (0..4095), not 0..65535, which would leave the image nearly black.
    stored = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    path = write_dicom(tmp_path / "agfa.dcm", stored, voi_lut=([4, 0, 16], [0, 1365, 2730, 4095]))
    img = load_image(path)
    np.testing.assert_allclose(img, [[0.0, 1 / 3], [2 / 3, 1.0]], atol=1e-7)
    ds = pydicom.dcmread(path)
    from pydicom.pixels import apply_voi

    np.testing.assert_allclose(img, apply_voi(ds.pixel_array, ds) / 4095.0, atol=1e-7)


def test_dicom_voi_lut_declared_8_bits_holding_16_bit_words(tmp_path):
    stored = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    path = write_dicom(tmp_path / "w.dcm", stored, voi_lut=([4, 0, 8], [0, 1000, 3000, 4095]))
    np.testing.assert_allclose(load_image(path), [[0, 1000 / 4095], [3000 / 4095, 1]], atol=1e-7)


def test_dicom_voi_lut_8_bit_entries_two_to_a_word(tmp_path):
    stored = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    item = lut_item([4, 0, 8], bytes([0, 51, 102, 255]))  # 4 bytes: one byte per entry
    path = write_dicom(tmp_path / "b.dcm", stored, voi_lut=item)
    np.testing.assert_allclose(load_image(path), [[0.0, 0.2], [0.4, 1.0]], atol=1e-7)


def test_dicom_voi_lut_us_data_first_mapped_negative_and_clipping(tmp_path):
    # Inputs below the first mapped value take the first entry, above the last the last.
    stored = np.array([[-5, -2, -1], [0, 1, 100]], dtype=np.int16)
    item = lut_item([4, -2, 12], [0, 1365, 2730, 4095], vr="US")
    path = write_dicom(tmp_path / "s.dcm", stored, signed=True, voi_lut=item)
    img = load_image(path)
    np.testing.assert_allclose(img, [[0.0, 0.0, 1 / 3], [2 / 3, 1.0, 1.0]], atol=1e-7)
    from pydicom.pixels import apply_voi

    ds = pydicom.dcmread(path)
    np.testing.assert_allclose(img, apply_voi(ds.pixel_array, ds) / 4095.0, atol=1e-7)
    # the same descriptor written as US, first value mapped 65534 for -2
    item = lut_item([4, 65534, 12], [0, 1365, 2730, 4095], vr="US")
    path = write_dicom(tmp_path / "us.dcm", stored, signed=True, voi_lut=item)
    np.testing.assert_allclose(load_image(path), img, atol=0)


def test_dicom_voi_lut_item_without_data_falls_back_to_window(tmp_path):
    # As pydicom's apply_voi_lut: an item without LUT Data is no VOI LUT; the window applies.
    path = write_dicom(tmp_path / "nodata.dcm", STORED, slope=2, intercept=-1000, center="0.5",
                       width="401", voi_lut=lut_item([4096, 0, 12], None))  # fmt: skip
    np.testing.assert_array_equal(load_image(path), WINDOWED)
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    out = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    lo, hi = -1000, 2 * 4095 - 1000  # the window's output range: 12-bit unsigned, rescaled
    np.testing.assert_allclose(load_image(path), (out - lo) / (hi - lo), atol=1e-7)
    # ... and without a window, min-max
    stored = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    path = write_dicom(tmp_path / "nowin.dcm", stored, voi_lut=lut_item([4096, 0, 12], None))
    np.testing.assert_array_equal(load_image(path), [[0.0, 0.25], [0.5, 1.0]])


def test_dicom_voi_lut_shorter_than_its_descriptor_raises(tmp_path):
    stored = np.zeros((2, 2), dtype=np.uint16)
    path = write_dicom(tmp_path / "short.dcm", stored, voi_lut=([8, 0, 16], [0, 1, 2, 3]))
    with pytest.raises(ImageError, match=r"short\.dcm: VOI LUT Data holds 8 bytes, too few"):
        load_image(path)


# -- Presentation LUT Shape ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted"),
    [
        ("MONOCHROME2", None, False),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME2", "INVERSE", True),
        ("MONOCHROME1", None, True),
        ("MONOCHROME1", "INVERSE", True),  # DX: INVERSE goes with MONOCHROME1, one inversion
        ("MONOCHROME1", "IDENTITY", True),
    ],
)
def test_dicom_presentation_lut_shape(tmp_path, photometric, shape, inverted):
    path = write_dicom(tmp_path / "p.dcm", STORED, photometric=photometric, shape=shape,
                       slope=2, intercept=-1000, center="0.5", width="401")  # fmt: skip
    np.testing.assert_array_equal(load_image(path), 1.0 - WINDOWED if inverted else WINDOWED)


# -- Pixel Padding Value -------------------------------------------------------------------


def test_dicom_padding_left_out_of_min_max_and_black(tmp_path):
    stored = np.array([[4095, 100], [300, 500]], dtype=np.uint16)
    path = write_dicom(tmp_path / "pad.dcm", stored, padding=(4095,))
    np.testing.assert_array_equal(load_image(path), [[0.0, 0.0], [0.5, 1.0]])
    # a range: Pixel Padding Value to Range Limit, inclusive, in either order
    stored = np.array([[4000, 4095, 100], [4050, 300, 500]], dtype=np.uint16)
    path = write_dicom(tmp_path / "range.dcm", stored, padding=(4095, 4000))
    np.testing.assert_array_equal(load_image(path), [[0.0, 0.0, 0.0], [0.0, 0.5, 1.0]])
    # MONOCHROME1: padding is black too, after the inversion
    stored = np.array([[4095, 100], [300, 500]], dtype=np.uint16)
    path = write_dicom(tmp_path / "m1.dcm", stored, padding=(4095,), photometric="MONOCHROME1")
    np.testing.assert_array_equal(load_image(path), [[0.0, 1.0], [0.5, 0.0]])


def test_dicom_padding_signed_with_window(tmp_path):
    stored = np.array([[-2000, -100, 0], [100, 200, 2047]], dtype=np.int16)
    path = write_dicom(tmp_path / "s.dcm", stored, signed=True, center="0.5", width="401",
                       padding=(-2000,))  # fmt: skip
    expected = WINDOWED.copy()
    expected[0, 0] = 0.0
    np.testing.assert_array_equal(load_image(path), expected)


def test_dicom_padding_value_absent_from_the_image_changes_nothing(tmp_path):
    stored = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    path = write_dicom(tmp_path / "np.dcm", stored, padding=(0,))
    np.testing.assert_array_equal(load_image(path), [[0.0, 0.25], [0.5, 1.0]])


# -- multi-frame ---------------------------------------------------------------------------


def test_dicom_multi_frame_reads_the_chosen_frame(tmp_path):
    frames = np.stack([STORED, STORED[::-1], STORED * 0 + 7]).astype(np.uint16)
    path = write_dicom(tmp_path / "mf.dcm", frames, slope=2, intercept=-1000, center="0.5",
                       width="401")  # fmt: skip
    with pytest.raises(ImageError, match=r"mf\.dcm: holds 3 frames; choose one with frame=0\.\.2"):
        load_image(path)
    np.testing.assert_array_equal(load_image(path, frame=0), WINDOWED)
    np.testing.assert_array_equal(load_image(path, frame=1), WINDOWED[::-1])
    for bad in (3, -1):
        with pytest.raises(ImageError, match=rf"mf\.dcm: no frame {bad}"):
            load_image(path, frame=bad)
    # a single-frame file reads with frame=0 too, and a PNG has only frame 0
    single = write_dicom(tmp_path / "sf.dcm", STORED, slope=2, intercept=-1000, center="0.5",
                         width="401")  # fmt: skip
    np.testing.assert_array_equal(load_image(single, frame=0), WINDOWED)
    PILImage.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", frame=0).shape == (2, 2)
    with pytest.raises(ImageError, match=r"a\.png: no frame 1"):
        load_image(tmp_path / "a.png", frame=1)


def test_dicom_functional_groups_per_frame_over_shared(tmp_path):
    # Enhanced images: rescale and window in functional groups; a frame's own group wins.
    frames = np.stack([STORED, STORED]).astype(np.uint16)
    shared = {
        "PixelValueTransformationSequence": {"RescaleSlope": 2, "RescaleIntercept": -1000,
                                             "RescaleType": "US"},
        "FrameVOILUTSequence": {"WindowCenter": 0.5, "WindowWidth": 401},
    }  # fmt: skip
    per_frame = [{}, {"FrameVOILUTSequence": {"WindowCenter": 100.5, "WindowWidth": 201}}]
    path = write_dicom(tmp_path / "enh.dcm", frames, groups=(shared, per_frame))
    np.testing.assert_array_equal(load_image(path, frame=0), WINDOWED)
    # frame 1: window 100.5/201 over m = -1000, -100, 0, 100, 200, 7190 -> c' = 100, w' = 200
    np.testing.assert_array_equal(load_image(path, frame=1), [[0.0, 0.0, 0.0], [0.5, 1.0, 1.0]])


# -- rescale with empty values, transfer syntaxes without a decoder ---------------------------


def test_dicom_empty_rescale_is_no_rescale(tmp_path):
    stored = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    path = write_dicom(tmp_path / "er.dcm", stored, slope="", intercept="")
    np.testing.assert_array_equal(load_image(path), [[0.0, 0.25], [0.5, 1.0]])


def test_dicom_transfer_syntax_pydicom_cannot_decode(tmp_path):
    from pydicom.encaps import encapsulate

    path = write_dicom(tmp_path / "mpeg.dcm", STORED)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path)
    with pytest.raises(ImageError, match=r"mpeg\.dcm: pixel data is MPEG2 .* which pydicom cannot"):
        load_image(path)


def test_png_8bit_16bit_rgb_rgba(tmp_path):
    gray8 = np.array([[0, 51], [102, 255]], dtype=np.uint8)
    PILImage.fromarray(gray8).save(tmp_path / "g8.png")
    np.testing.assert_allclose(load_image(tmp_path / "g8.png"), gray8 / 255.0, atol=1e-7)

    gray16 = np.array([[0, 13107], [32768, 65535]], dtype=np.uint16)
    PILImage.fromarray(gray16).save(tmp_path / "g16.png")
    np.testing.assert_allclose(load_image(tmp_path / "g16.png"), gray16 / 65535.0, atol=1e-7)

    rgb = np.zeros((1, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (100, 100, 100)
    PILImage.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(
        load_image(tmp_path / "rgb.png"), [[0.299, 0.587, 100 / 255]], atol=1e-6
    )

    rgba = np.concatenate([rgb, np.full((1, 3, 1), 7, dtype=np.uint8)], axis=2)
    PILImage.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_allclose(
        load_image(tmp_path / "rgba.png"), load_image(tmp_path / "rgb.png"), atol=0
    )
    assert load_image(tmp_path / "g8.png", dtype="uint8").tolist() == gray8.tolist()


def test_jpeg_gray(tmp_path):
    arr = np.full((8, 8), 128, dtype=np.uint8)
    PILImage.fromarray(arr).save(tmp_path / "a.jpg", quality=100)
    img = load_image(tmp_path / "a.jpg")
    assert img.shape == (8, 8)
    np.testing.assert_allclose(img, 128 / 255.0, atol=2 / 255)


def test_missing_truncated_and_garbage_files_raise(tmp_path):
    with pytest.raises(ImageError, match=r"nope\.png: no such file"):
        load_image(tmp_path / "nope.png")

    PILImage.fromarray(np.arange(4096, dtype=np.uint16).reshape(64, 64) % 251).convert("L").save(
        tmp_path / "full.png"
    )
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.png: corrupt or truncated"):
        load_image(tmp_path / "cut.png")

    (tmp_path / "junk.dcm").write_bytes(b"this is not a dicom file" * 20)
    with pytest.raises(ImageError, match=r"junk\.dcm: not a readable DICOM"):
        load_image(tmp_path / "junk.dcm")

    (tmp_path / "junk.jpg").write_bytes(b"\x00" * 300)
    with pytest.raises(ImageError, match=r"junk\.jpg"):
        load_image(tmp_path / "junk.jpg")


def test_image_bytes_read_as_their_files(tmp_path):
    """An upload decodes to exactly what ``load_image`` gives for the same file."""
    PILImage.fromarray(np.array([[0, 13107], [32768, 65535]], dtype=np.uint16)).save(
        tmp_path / "g16.png"
    )
    PILImage.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(tmp_path / "a.jpg")
    dcm = write_dicom(tmp_path / "a.dcm", STORED, photometric="MONOCHROME1", slope=2,
                      intercept=-1000, center="0.5", width="401")  # fmt: skip
    for path in (tmp_path / "g16.png", tmp_path / "a.jpg", dcm):
        got = read_image_bytes(path.read_bytes(), name="upload")
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, load_image(path))


def test_image_bytes_guard_and_errors_name_the_input(tmp_path):
    PILImage.fromarray(np.zeros((40, 50), dtype=np.uint8)).save(tmp_path / "big.png")
    data = (tmp_path / "big.png").read_bytes()
    assert read_image_bytes(data, max_pixels=2000).shape == (40, 50)
    with pytest.raises(ImageTooLarge, match=r"^field: the image declares 2000 pixels, over the"):
        read_image_bytes(data, name="field", max_pixels=1999)
    dcm = write_dicom(tmp_path / "a.dcm", np.zeros((30, 40), dtype=np.uint16), slope=1,
                      intercept=0)  # fmt: skip
    with pytest.raises(ImageTooLarge, match=r"declares 1200 pixels"):
        read_image_bytes(dcm.read_bytes(), name="field", max_pixels=1000)
    with pytest.raises(ImageError, match=r"^field: empty image"):
        read_image_bytes(b"", name="field")
    with pytest.raises(ImageError, match=r"^field: not a PNG, JPEG or DICOM image"):
        read_image_bytes(b"GIF89a" + bytes(100), name="field")
    noise = np.arange(4096, dtype=np.uint16).reshape(64, 64) % 251
    PILImage.fromarray(noise.astype(np.uint8)).save(tmp_path / "full.png")
    full = (tmp_path / "full.png").read_bytes()
    with pytest.raises(ImageError, match=r"^field: corrupt or truncated"):
        read_image_bytes(full[: len(full) // 2], name="field")
    with pytest.raises(ImageError, match=r"^field: DICOM file has no pixel data"):
        read_image_bytes(bytes(128) + b"DICM" + b"garbage" * 10, name="field", max_pixels=10)


def test_truncated_dicom_pixel_data_raises(tmp_path):
    path = write_dicom(tmp_path / "t.dcm", np.zeros((32, 32), dtype=np.uint16), slope=1,
                       intercept=0)  # fmt: skip
    data = path.read_bytes()
    path.write_bytes(data[:-500])
    with pytest.raises(ImageError, match=r"t\.dcm"):
        load_image(path)


def test_load_images_skip_bad_counts(tmp_path, caplog):
    PILImage.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.dcm").write_bytes(b"garbage")
    paths = [tmp_path / "ok.png", tmp_path / "bad.dcm", tmp_path / "gone.png"]
    with pytest.raises(ImageError, match=r"bad\.dcm"):
        load_images(paths)
    with caplog.at_level(logging.WARNING, logger="radixpert.data.images"):
        res = load_images(paths, skip_bad=True)
    assert len(res.images) == 1 and res.paths == [str(tmp_path / "ok.png")]
    assert [p for p, _ in res.skipped] == [str(paths[1]), str(paths[2])]
    assert "no such file" in res.skipped[1][1]
    assert "skipped 2 of 3" in caplog.text


# -- resizing ------------------------------------------------------------------------------


def _extent(img: np.ndarray) -> tuple[int, int, int, int]:
    """Pixel extent (x1, y1, x2, y2) of the nonzero region, end-exclusive."""
    ys, xs = np.nonzero(img > 0.5)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _rect_image(h: int, w: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    img = np.zeros((h, w), dtype=np.float32)
    img[y1:y2, x1:x2] = 1.0
    return img


def test_letterbox_box_matches_drawn_rectangle_exactly():
    # 100 x 50 (h x w) into 200 x 200: scale 2, content 200 x 100, padded 50 left and right.
    img = _rect_image(100, 50, 10, 20, 30, 70)
    box = (10 / 50, 20 / 100, 30 / 50, 70 / 100)
    out, tf = resize_letterbox(img, 200, resample="nearest")
    assert out.shape == (200, 200)
    assert tf == LetterboxTransform(100, 50, 200, 200, 200, 100, 0, 50)
    x1, y1, x2, y2 = tf.apply_box(box)
    assert (x1 * 200, y1 * 200, x2 * 200, y2 * 200) == pytest.approx(_extent(out), abs=1e-9)
    assert out[:, :50].max() == 0 and out[:, 150:].max() == 0  # padding


@pytest.mark.parametrize(("shape", "size"), [((97, 61), (128, 128)), ((300, 512), (224, 320)),
                                             ((41, 173), 256)])  # fmt: skip
def test_letterbox_box_within_a_pixel_and_round_trip(shape, size):
    h, w = shape
    rect = (w // 5, h // 4, w // 2, (3 * h) // 4)
    img = _rect_image(h, w, *rect)
    box = (rect[0] / w, rect[1] / h, rect[2] / w, rect[3] / h)
    out, tf = resize_letterbox(img, size, resample="nearest")
    oh, ow = out.shape
    mapped = tf.apply_box(box)
    px = (mapped[0] * ow, mapped[1] * oh, mapped[2] * ow, mapped[3] * oh)
    assert np.allclose(px, _extent(out), atol=1.0)
    assert np.allclose(tf.invert_box(mapped), box, atol=1e-9, rtol=0)
    # the aspect ratio is kept to within rounding of one pixel
    assert abs(tf.new_w / tf.new_h - w / h) <= 1.0 / min(tf.new_h, tf.new_w) * (w / h + 1)


def test_letterbox_round_trip_random_boxes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w, oh, ow = (int(v) for v in rng.integers(1, 300, size=4))
        _, tf = resize_letterbox(np.zeros((h, w), dtype=np.float32), (oh, ow))
        assert tf.new_h <= oh and tf.new_w <= ow and (tf.new_h == oh or tf.new_w == ow)
        x, y = np.sort(rng.random(2)), np.sort(rng.random(2))
        box = (float(x[0]), float(y[0]), float(x[1]), float(y[1]))
        assert np.allclose(tf.invert_box(tf.apply_box(box)), box, atol=1e-9, rtol=0)


def test_letterbox_uint8_and_fill():
    img = np.full((10, 20), 200, dtype=np.uint8)
    out, tf = resize_letterbox(img, (20, 20), fill=7)
    assert out.dtype == np.uint8 and out.shape == (20, 20)
    assert (tf.new_h, tf.new_w, tf.pad_top, tf.pad_left) == (10, 20, 5, 0)
    assert (out[:5] == 7).all() and (out[15:] == 7).all() and (out[5:15] == 200).all()


def test_invert_box_clips_padding():
    tf = LetterboxTransform(100, 50, 200, 200, 200, 100, 0, 50)
    assert tf.invert_box((0.0, 0.0, 1.0, 1.0)) == (0.0, 0.0, 1.0, 1.0)
    assert tf.invert_box((0.0, 0.0, 1.0, 1.0), clip=False) == (-0.5, 0.0, 1.5, 1.0)


def test_plain_resize_keeps_0_1_boxes():
    img = _rect_image(60, 80, 20, 15, 60, 45)
    box = (20 / 80, 15 / 60, 60 / 80, 45 / 60)
    out = resize(img, (120, 40), resample="nearest")  # x 2 vertically, / 2 horizontally
    assert out.shape == (120, 40)
    x1, y1, x2, y2 = _extent(out)
    assert (x1 / 40, y1 / 120, x2 / 40, y2 / 120) == pytest.approx(box, abs=1e-12)
    # bilinear keeps values within the input's range
    smooth = resize(np.linspace(0, 1, 35, dtype=np.float32).reshape(5, 7), 64, resample="bicubic")
    assert smooth.min() >= 0.0 and smooth.max() <= 1.0


# -- views ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "view",
    ["PA", "AP", "AP AXIAL", "ap", " pa ", "Frontal", "FRONTAL", "AP_horizontal",
     "POSTEROANTERIOR", "ap-supine", "antero-posterior", "postero-anterior"],
)  # fmt: skip
def test_frontal_views(view):
    assert is_frontal(view)


@pytest.mark.parametrize(
    "view",
    ["LATERAL", "Lateral", "LL", "RL", "L", "XTABLE LATERAL", "LAO", "RAO", "LPO", "SWIMMERS",
     "COSTAL", "EXCLUDE", "UNK", "", "PA-L", "weird", "AP LLD", "PA RLD", "Erect", "nan"],
)  # fmt: skip
def test_non_frontal_and_unknown_views(view):
    assert not is_frontal(view)


def test_frontal_images():
    s = Study(
        id="s1",
        dataset="x",
        images=[Image("a.dcm", "LATERAL"), Image("b.dcm", "PA"), Image("c.dcm", ""),
                Image("d.dcm", "AP")],
    )  # fmt: skip
    assert [im.path for im in frontal_images(s)] == ["b.dcm", "d.dcm"]
