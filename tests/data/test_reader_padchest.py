"""PadChest: the release's label CSV (tests/data/fixtures/padchest/, sources in its README.md)
read to the Study records a careful reader would write, every known irregularity counted, and
the optional MarianMT translation (a tiny Helsinki-NLP/opus-mt-es-en from tests/hub)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from radixpert.data.prepare import parse_options, reader_options
from radixpert.data.readers import SkipLog, padchest
from radixpert.data.study import Image, Study
from radixpert.data.translate import Translator
from radixpert.errors import ReaderError
from radixpert.vocab import OBSERVATIONS

FIXTURE = Path(__file__).parent / "fixtures" / "padchest"
CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"

S1 = "84852605747938092752530931856100831671"  # PA + L, labels with leading spaces
S2 = "93214064759087535477732785233904523080"  # AP_horizontal, ImageDir 13.0, 'unchanged'
S3 = "99940669163985569202001683615344879913"  # normal PA + L, the PA row twice
S4 = "47703686870189450575422738247065469469"  # COSTAL + AP, rib fractures
S5 = "28026874756680402751686951250316100301"  # PA by resnet-50.t7 + UNK
S6 = "66119725829994654555897129635959524556"  # EXCLUDE, Report ' nan', Labels []
S7 = "30146472869524660207184323186874913236"  # Labels empty
S8 = "28944346486810454511012192288228536024"  # Labels empty on one image, '' entry on the other
S9 = "216840111366964012989926673512011083134050913"  # only image unreadable
S10 = "216840111366964012819207061112010307142602253"  # one image absent from the release
S11 = "96611297274843003576852216219560574514"  # bad Labels, unknown Projection, bad ImageDir


def labels(**positive: int) -> dict[str, int | None]:
    out: dict[str, int | None] = dict.fromkeys(OBSERVATIONS)
    out.update({k.replace("_", " "): v for k, v in positive.items()})
    return out


def release(tmp_path: Path, gz: bool = True) -> Path:
    """The fixture as BIMCV ships it: the CSV gzip-compressed (or plain) in the root."""
    root = tmp_path / "padchest"
    root.mkdir()
    if gz:
        with (FIXTURE / CSV).open("rb") as src, gzip.open(root / f"{CSV}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        shutil.copy(FIXTURE / CSV, root / CSV)
    return root


def read_all(root: Path, **options) -> tuple[dict[str, Study], SkipLog]:
    log = SkipLog()
    return {s.id: s for s in log.studies(padchest.read(root, **options))}, log


def test_release_reads_to_the_expected_studies(tmp_path):
    studies, _ = read_all(release(tmp_path))
    assert list(studies) == [
        f"padchest-{s}" for s in (S1, S2, S3, S4, S5, S6, S7, S8, S10, S11)
    ]  # S9 (its only image is unreadable) is left out
    assert studies[f"padchest-{S1}"] == Study(
        id=f"padchest-{S1}",
        dataset="padchest",
        patient_id="72859820828169697796801345564143555898",
        images=[Image(f"0/{S1}_lby1c7.png", "PA"), Image(f"0/{S1}_o1cyng.png", "LATERAL")],
        findings="cambi pulmonar cronic . cifosi dorsal . fibrosis pulmonar .",
        labels=labels(),  # none of its three labels is a CheXpert observation
        language="es",
        extra={
            "padchest_labels": ["chronic changes", "kyphosis", "pulmonary fibrosis"],
            "padchest_localizations": ["loc dorsal"],
            "report_es": "cambi pulmonar cronic . cifosi dorsal . fibrosis pulmonar .",
            "projections": ["PA", "L"],
            "method_projection": ["Manual review of DICOM fields"] * 2,
            "report_id": "4811203",
            "method_label": "Physician",
            "study_date": "20140915",
            "patient_sex": "F",
            "patient_birth": "1930",
            "pediatric": "No",
        },
    )
    s2 = studies[f"padchest-{S2}"]
    assert s2.images == [Image(f"13/{S2}_0ipm14.png", "AP")]  # ImageDir 13.0; AP_horizontal
    assert s2.labels == labels(Lung_Opacity=1, Pneumonia=1)
    assert s2.extra["padchest_labels"] == ["infiltrates", "pneumonia", "unchanged"]
    assert (s2.extra["method_label"], s2.extra["patient_sex"]) == ("RNN_model", "M")
    s3 = studies[f"padchest-{S3}"]
    assert s3.images == [Image(f"7/{S3}_m1so7j.png", "PA"), Image(f"7/{S3}_vk63y6.png", "LATERAL")]
    assert s3.labels == labels(No_Finding=1)
    s4 = studies[f"padchest-{S4}"]
    assert [(i.view, p) for i, p in zip(s4.images, s4.extra["projections"], strict=True)] == [
        ("OTHER", "COSTAL"),
        ("AP", "AP"),
    ]
    assert s4.labels == labels(Fracture=1)
    s5 = studies[f"padchest-{S5}"]
    assert [i.view for i in s5.images] == ["PA", ""]  # UNK is an unknown view
    assert s5.extra["method_projection"] == ["resnet-50.t7", "Manual review of DICOM fields"]
    assert s5.extra["padchest_labels"] == ["COPD signs"] and s5.labels == labels()
    s6 = studies[f"padchest-{S6}"]
    assert (s6.findings, s6.extra["report_es"], s6.labels) == ("", "", {})  # ' nan'; []
    assert s6.images == [Image(f"40/{S6}_756vwz.png", "")]  # EXCLUDE
    assert studies[f"padchest-{S7}"].labels == {}  # the only row has no Labels
    s8 = studies[f"padchest-{S8}"]
    assert s8.labels == labels(Cardiomegaly=1, Support_Devices=1)
    assert s8.extra["padchest_labels"] == ["cardiomegaly", "pacemaker"]  # the ' ' entry dropped
    assert studies[f"padchest-{S10}"].images == [Image(f"49/{S10}_04-014-090.png", "LATERAL")]
    s11 = studies[f"padchest-{S11}"]
    assert s11.images == [Image(f"51/{S11}_5v1glj.png", "PA"), Image(f"51/{S11}_2hdb4d.png", "")]
    assert s11.findings == "cardiomegali ." and s11.labels == labels(Cardiomegaly=1)
    assert s11.extra["projections"] == ["PA", "OBLICUA"]


def test_every_irregularity_is_counted(tmp_path):
    _, log = read_all(release(tmp_path))
    assert dict(log.counts) == {
        ("image", "image listed twice"): 1,
        ("label", "Labels empty"): 2,
        ("image", "image file known to be unreadable"): 1,
        ("image", "image known to be absent from the release"): 1,
        ("study", "row without StudyID"): 1,
        ("label", "Labels is not a Python list"): 1,
        ("view", "unknown Projection"): 1,
        ("field", "images of one study disagree on Report"): 1,
        ("image", "ImageDir is not a folder number"): 1,
        ("field", "no report text"): 1,
        ("study", "no usable image"): 1,
    }
    places = log.examples[("image", "image file known to be unreadable")]
    assert places == [f"{tmp_path}/padchest/{CSV}.gz:16: image left out: image file known to be "
                      f"unreadable ({S9}_00-168-009.png (torchxrayvision))"]  # fmt: skip


def test_plain_csv_flat_folder_and_known_bad_kept(tmp_path):
    root = release(tmp_path, gz=False)
    studies, log = read_all(root, images="png", flat=True, skip_known_bad=False)
    assert studies[f"padchest-{S2}"].images == [Image(f"png/{S2}_0ipm14.png", "AP")]
    assert studies[f"padchest-{S9}"].images == [Image(f"png/{S9}_00-168-009.png", "PA")]
    assert [i.path for i in studies[f"padchest-{S10}"].images] == [
        f"png/{S10}_04-014-084.png",
        f"png/{S10}_04-014-090.png",
    ]
    # flat ignores ImageDir, so the row with an empty ImageDir keeps its image
    assert len(studies[f"padchest-{S11}"].images) == 3
    assert ("image", "image known to be absent from the release") not in log.counts


def test_missing_file_and_missing_column_are_errors(tmp_path):
    with pytest.raises(ReaderError, match=r"no PADCHEST_chest_x_ray_images_labels"):
        list(padchest.read(tmp_path))
    (tmp_path / CSV).write_text("ImageID,StudyID\nx.png,1\n")
    with pytest.raises(ReaderError, match=r"missing column\(s\) 'ImageDir'"):
        list(padchest.read(tmp_path))


def test_options_on_the_command_line():
    names = [o.name for o in reader_options("padchest")]
    assert names == [
        "csv_file",
        "images",
        "flat",
        "skip_known_bad",
        "translate",
        "translation_model",
        "translation_batch",
        "translation_device",
    ]
    assert parse_options("padchest", ["translate=true", "translation_batch=8"]) == {
        "translate": True,
        "translation_batch": 8,
    }


# ------------------------------------------------------------------------------ translation


@pytest.fixture
def marian(hub_checkpoint, tmp_path, monkeypatch):
    """The tiny opus-mt-es-en in the session's hub cache; a translation cache of this test's."""
    hub_checkpoint("Helsinki-NLP/opus-mt-es-en")
    monkeypatch.setenv("RADIXPERT_HOME", str(tmp_path / "home"))
    return "Helsinki-NLP/opus-mt-es-en"


def test_translation_is_local_cached_and_marked(tmp_path, marian, monkeypatch):
    root = release(tmp_path)
    studies, _ = read_all(root, translate=True, translation_batch=4)
    spanish = [s.extra["report_es"] for s in studies.values() if s.extra["report_es"]]
    expected = Translator(marian)(spanish)  # reads the cache the reader just wrote
    for s, english in zip((s for s in studies.values() if s.extra["report_es"]), expected):
        assert s.findings == english and s.findings != s.extra["report_es"]
        assert (s.language, s.report_source) == ("en", "translated")
        assert s.extra["translation"] == {
            "method": "machine translation",
            "engine": "MarianMT (transformers)",
            "model": marian,
            "source_language": "es",
            "target_language": "en",
        }
    no_report = studies[f"padchest-{S6}"]
    assert (no_report.findings, no_report.report_source) == ("", "original")
    assert "translation" not in no_report.extra
    assert studies[f"padchest-{S1}"].extra["report_es"] == (
        "cambi pulmonar cronic . cifosi dorsal . fibrosis pulmonar ."
    )

    def no_model(self):
        raise AssertionError("a cached translation reached the model")

    monkeypatch.setattr(Translator, "_load", no_model)
    again, _ = read_all(root, translate=True)
    assert [s.findings for s in again.values()] == [s.findings for s in studies.values()]
