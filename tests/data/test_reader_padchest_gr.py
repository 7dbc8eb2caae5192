"""PadChest-GR: grounded sentences with boxes (layout as read by RadVLM's loader; see the
reader's docstring), in 0–1 or pixel units."""

from __future__ import annotations

import json

import pytest
from PIL import Image as PILImage

from radixpert.data.readers import padchest_gr
from radixpert.errors import ReaderError

ENTRY = {
    "ImageID": "2168_02-094.png",
    "findings": [
        {"sentence_en": "Cardiomegaly.", "sentence_es": "Cardiomegalia.",
         "boxes": [[0.3, 0.4, 0.7, 0.8]], "labels": ["cardiomegaly"]},
        {"sentence_en": "Right pleural effusion.", "sentence_es": "Derrame pleural derecho.",
         "boxes": [[0.05, 0.6, 0.3, 0.9], [0.1, 0.5, 0.2, 0.6]], "labels": ["pleural effusion"]},
        {"sentence_en": "No pneumothorax.", "sentence_es": "Sin neumotorax.", "boxes": []},
    ],
}  # fmt: skip


def make(root, entries):
    (root / "grounded_reports_20240819.json").write_text(json.dumps(entries))
    (root / "master_table.csv").write_text(
        "ImageID,PatientID,Projection,split\n2168_02-094.png,p1,PA,validation\npx.png,p2,AP,train\n"
    )
    return root


def test_grounded_sentences(tmp_path):
    (s,) = padchest_gr.read(make(tmp_path, [ENTRY]))
    assert (s.id, s.split, s.patient_id, s.images[0].view) == (
        "padchest-gr-2168_02-094", "validate", "p1", "PA")  # fmt: skip
    assert s.findings == "Cardiomegaly. Right pleural effusion. No pneumothorax."
    assert [(b.label, b.phrase) for b in s.boxes] == [
        ("cardiomegaly", "Cardiomegaly."),
        ("pleural effusion", "Right pleural effusion."),
        ("pleural effusion", "Right pleural effusion.")]  # fmt: skip
    assert s.extra["sentences_es"][1] == "Derrame pleural derecho."


def test_pixel_boxes_use_the_image_size(tmp_path):
    (tmp_path / "images_grounding").mkdir()
    PILImage.new("L", (200, 100)).save(tmp_path / "images_grounding" / "px.png")
    entry = {
        "ImageID": "px.png",
        "findings": [{"sentence_en": "Nodule.", "boxes": [[20, 10, 60, 50]]}],
    }
    (s,) = padchest_gr.read(make(tmp_path, [entry]))
    b = s.boxes[0]
    assert (b.x1, b.y1, b.x2, b.y2, b.label) == (0.1, 0.1, 0.3, 0.5, "finding")
    assert s.extra["box_units"] == "pixels"


def test_unknown_image_id(tmp_path):
    with pytest.raises(ReaderError, match=r"entry 0: ImageID 'zz.png' is not in"):
        list(padchest_gr.read(make(tmp_path, [{"ImageID": "zz.png", "findings": []}])))
