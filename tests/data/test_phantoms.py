"""Phantom chest radiographs: deterministic, findings visible inside their boxes, labels and
report consistent with the drawing, and written sets that round-trip.

    pytest tests/data/test_phantoms.py
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from radixpert.data.phantoms import (
    FINDINGS,
    NEGATION_CUES,
    OBSERVATION_KEYWORDS,
    generate_phantom,
    generate_phantoms,
    main,
)
from radixpert.data.study import read_studies
from radixpert.vocab import OBSERVATIONS

PIL = pytest.importorskip("PIL.Image")

# One explicit case per finding (and per device): the image against the same seed without it.
CASES = {
    "Cardiomegaly": {"ctr": 0.62},
    "Pleural Effusion": {"side": "right", "size": "moderate"},
    "Pneumothorax": {"side": "left", "size": "moderate"},
    "Consolidation": {"zone": "right lower lobe", "size": "moderate"},
    "Lung Lesion": {"zone": "left upper lobe", "diameter_cm": 2.5},
    "Support Devices": {
        "devices": ["endotracheal tube", "central venous catheter", "enteric tube"]
    },
}


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=\.)\s+", text) if s]


def test_same_seed_same_bytes_and_record():
    a, ta = generate_phantom(11)
    b, tb = generate_phantom(11)
    assert a.dtype == np.uint8 and a.shape == (256, 256)
    assert a.tobytes() == b.tobytes()
    assert ta == tb
    c, _ = generate_phantom(12)
    assert a.tobytes() != c.tobytes()


@pytest.mark.parametrize("name", FINDINGS)
def test_finding_changes_pixels_inside_its_box_only(name):
    seed = 5
    base, t0 = generate_phantom(seed, findings={})
    img, t1 = generate_phantom(seed, findings={name: CASES[name]})
    assert t0.boxes == [] and t0.labels["No Finding"] == 1
    boxes = [b for b in t1.boxes if b.label == name]
    assert len(boxes) == (3 if name == "Support Devices" else 1)
    diff = np.abs(img.astype(np.int16) - base.astype(np.int16)).astype(np.float32)
    h, w = diff.shape
    outside = np.ones_like(diff, dtype=bool)
    for b in boxes:
        x1, y1, x2, y2 = (
            int(b.x1 * w),
            int(b.y1 * h),
            int(np.ceil(b.x2 * w)),
            int(np.ceil(b.y2 * h)),
        )
        inside = diff[y1:y2, x1:x2]
        if name in ("Pneumothorax", "Support Devices"):
            # Thin structures (a pleural crescent, a tube): a share of the box changes clearly.
            assert (inside > 8).mean() > 0.06, (b, (inside > 8).mean())
        else:  # space-filling findings move the whole box's mean
            assert inside.mean() > 8, (b, inside.mean())
        outside[max(0, y1 - 3) : y2 + 3, max(0, x1 - 3) : x2 + 3] = False  # blur spills ~2 px
    assert diff[outside].mean() < 0.05
    assert np.percentile(diff[outside], 99.9) <= 3
    assert t1.labels[name] == 1
    # Devices are no pathology: a chest with only a tube is still "No Finding" (CheXpert).
    assert t1.labels["No Finding"] == (1 if name == "Support Devices" else None)


def test_cardiomegaly_sets_the_cardiothoracic_ratio():
    _, t = generate_phantom(3, findings={"Cardiomegaly": {"ctr": 0.6}})
    assert t.ctr == 0.6
    heart = next(b for b in t.boxes if b.label == "Cardiomegaly")
    # Heart box width over the drawn thoracic width (about 0.74–0.81 of the image).
    assert 0.6 * 0.72 < heart.x2 - heart.x1 < 0.6 * 0.84
    _, normal = generate_phantom(3, findings={})
    assert normal.ctr < 0.5


def test_labels_boxes_and_report_agree_over_many_seeds():
    n_normal = 0
    for seed in range(300):
        _, t = generate_phantom(seed, size=64)
        assert set(t.labels) == set(OBSERVATIONS)
        assert all(v in (1, 0, None) for v in t.labels.values())
        text = f"{t.findings} {t.impression}".lower()
        sents = sentences(text)
        for b in t.boxes:
            assert 0 <= b.x1 < b.x2 <= 1 and 0 <= b.y1 < b.y2 <= 1, b
            assert t.labels[b.label] == 1
        for obs in FINDINGS:  # every drawn finding: label 1 and at least one box
            assert (t.labels[obs] == 1) == (obs in t.spec), (seed, obs)
            assert (obs in t.spec) == any(b.label == obs for b in t.boxes), (seed, obs)
        for obs, words in OBSERVATION_KEYWORDS.items():
            mentions = [s for s in sents if any(k in s for k in words)]
            label = t.labels[obs]
            if label is None:
                assert not mentions, (seed, obs, text)
            elif label == 0:  # negated: every mention is a negation
                assert mentions and all(NEGATION_CUES.search(s) for s in mentions), (seed, obs)
            else:  # positive: stated without a negation
                assert any(not NEGATION_CUES.search(s) for s in mentions), (seed, obs, text)
        pathologies = [o for o in OBSERVATIONS if o not in ("No Finding", "Support Devices")]
        positive = any(t.labels[o] == 1 for o in pathologies)
        assert t.labels["No Finding"] == (None if positive else 1)
        n_normal += not positive
        assert t.view in ("PA", "AP") and t.indication
    assert 0.3 < n_normal / 300 < 0.6  # realistic mix, not all-normal nor all-abnormal


def test_unknown_finding_or_bad_parameters_are_errors():
    with pytest.raises(ValueError, match="unknown finding"):
        generate_phantom(0, findings={"Edema": True})
    with pytest.raises(ValueError, match="side"):
        generate_phantom(0, findings={"Pneumothorax": {"side": "up"}})
    with pytest.raises(ValueError, match="size"):
        generate_phantom(0, size=16)


def test_written_set_round_trips_and_reruns_identically(tmp_path):
    studies = generate_phantoms(12, tmp_path / "a", size=96, seed=3)
    again = generate_phantoms(12, tmp_path / "b", size=96, seed=3)
    jsonl = (tmp_path / "a" / "studies.jsonl").read_bytes()
    assert jsonl == (tmp_path / "b" / "studies.jsonl").read_bytes()
    read = list(read_studies(tmp_path / "a" / "studies.jsonl"))
    assert read == studies == again
    assert [s.id for s in read] == [f"phantom-{i:06d}" for i in range(12)]
    for s in read:
        assert s.dataset == "phantoms" and s.patient_id == s.id and s.report_source == "phantom"
        assert s.split in ("train", "validate", "test")
        assert s.images[0].path == f"images/{s.id}.png" and s.images[0].view in ("PA", "AP")
        path = tmp_path / "a" / s.images[0].path
        with PIL.open(path) as im:
            assert im.size == (96, 96) and im.mode == "L"
            pixels, truth = generate_phantom(s.extra["phantom_seed"], size=96)
            assert np.array_equal(np.asarray(im), pixels)
        assert (tmp_path / "b" / s.images[0].path).read_bytes() == path.read_bytes()
        assert truth.labels == s.labels and truth.boxes == s.boxes
    # A re-run over the same folder leaves the images untouched.
    mtimes = [p.stat().st_mtime_ns for p in sorted((tmp_path / "a" / "images").iterdir())]
    generate_phantoms(12, tmp_path / "a", size=96, seed=3)
    assert mtimes == [p.stat().st_mtime_ns for p in sorted((tmp_path / "a" / "images").iterdir())]


def test_splits_are_roughly_80_10_10():
    from radixpert.data.phantoms import _split

    splits = [_split(0, f"phantom-{i:06d}") for i in range(2000)]
    assert 0.76 < splits.count("train") / 2000 < 0.84
    assert 0.07 < splits.count("test") / 2000 < 0.13


def test_cli_writes_a_set_and_prints_a_summary(tmp_path, capsys):
    assert main(["--n", "3", "--out", str(tmp_path), "--size", "64", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "wrote 3 phantoms" in out and out.count("\n") == 1
    assert len(list(read_studies(tmp_path / "studies.jsonl"))) == 3
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        f"phantom-{i:06d}.png" for i in range(3)
    ]


def test_spec_reproduces_the_phantom():
    for seed in (1, 2, 9):
        a, ta = generate_phantom(seed, size=96)
        b, tb = generate_phantom(seed, size=96, findings=ta.spec)
        assert a.tobytes() == b.tobytes() and ta == tb


def test_jpeg_output(tmp_path):
    studies = generate_phantoms(2, tmp_path, size=64, fmt="jpg")
    for s in studies:
        assert s.images[0].path.endswith(".jpg")
        with PIL.open(tmp_path / s.images[0].path) as im:
            assert im.format == "JPEG" and im.size == (64, 64)
    with pytest.raises(ValueError, match="fmt"):
        generate_phantoms(1, tmp_path, fmt="bmp")
