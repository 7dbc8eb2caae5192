"""IU-Xray in its three layouts, from real records (tests/data/fixtures/iu-xray/README.md):
R2Gen's annotation.json, Open-I's ecgen-radiology XML, and the Kaggle CSV copy. Views come from
the projections CSV (Kaggle layout, or beside Open-I's XML), never from R2Gen's image order."""

from __future__ import annotations

import shutil
from pathlib import Path

from radixpert.data.readers import SkipLog, iu_xray
from radixpert.data.splits import patient_key
from radixpert.data.study import Image
from radixpert.data.views import is_frontal

FIXTURES = Path(__file__).parent / "fixtures" / "iu-xray"
KAGGLE = FIXTURES / "kaggle"


def tree(name: str, tmp_path: Path, images: str) -> Path:
    """The fixture `name` under tmp_path, with the (empty) image folder the reader checks."""
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    (root / images).mkdir(parents=True)
    return root


def test_r2gen_real_records(tmp_path):
    root = tree("r2gen", tmp_path, "images")
    log = SkipLog()
    got = {s.id: s for s in log.studies(iu_xray.read(root))}
    assert [(sid, s.split) for sid, s in got.items()] == [
        ("iu-CXR2384_IM-0942", "train"), ("iu-CXR1_1_IM-0001", "train"),
        ("iu-CXR1810_IM-0524", "validate"), ("iu-CXR3030_IM-1405", "test"),
        ("iu-CXR3646_IM-1808-0001", "test"), ("iu-CXR3359_IM-1612", "test"),
        ("iu-CXR2_IM-0652", "test"),
    ]  # fmt: skip
    s = got["iu-CXR1_1_IM-0001"]  # report 1's id has the extra "1_"
    assert (s.patient_id, s.extra) == ("CXR1", {"r2gen_id": "CXR1_1_IM-0001",
                                                "publisher_split": "train"})  # fmt: skip
    assert s.images == [Image("images/CXR1_1_IM-0001/0.png", ""),
                        Image("images/CXR1_1_IM-0001/1.png", "")]  # fmt: skip
    # R2Gen's report is Open-I's FINDINGS (report 1's, as in the Kaggle copy)
    kaggle = {st.id: st for st in SkipLog().studies(iu_xray.read(KAGGLE, layout="kaggle"))}
    assert s.findings == kaggle["iu-CXR1"].findings and s.impression == ""
    assert got["iu-CXR2_IM-0652"].findings == kaggle["iu-CXR2"].findings
    assert patient_key(s) == patient_key(kaggle["iu-CXR1"]) == ("iu-xray", "CXR1")
    assert got["iu-CXR3646_IM-1808-0001"].patient_id == "CXR3646"
    assert log.counts == {("view", "no view in the R2Gen layout"): 7}


def test_openi_real_reports_with_views_from_the_projections_file(tmp_path):
    root = tree("openi", tmp_path, "NLMCXR_png")
    log = SkipLog()
    got = {
        s.id: s
        for s in log.studies(
            iu_xray.read(root, layout="openi", projections="indiana_projections.csv")
        )
    }
    assert list(got) == ["iu-CXR1", "iu-CXR2", "iu-CXR1098", "iu-CXR1810"]  # numeric order
    s = got["iu-CXR1"]
    assert s.images == [Image("NLMCXR_png/CXR1_1_IM-0001-3001.png", "LATERAL"),
                        Image("NLMCXR_png/CXR1_1_IM-0001-4001.png", "FRONTAL")]  # fmt: skip
    assert (s.indication, s.comparison) == ("Positive TB test", "None.")
    assert s.impression == "Normal chest x-XXXX." and s.patient_id == "CXR1"
    assert s.extra == {"xml": "1.xml", "caption": "Xray Chest PA and Lateral",
                       "mesh_major": ["normal"], "mesh_automatic": []}  # fmt: skip
    assert [i.view for i in got["iu-CXR2"].images] == ["FRONTAL", "LATERAL"]
    s = got["iu-CXR1098"]  # one image, no comparison (self-closing AbstractText)
    assert [i.view for i in s.images] == ["FRONTAL"] and s.comparison == ""
    assert s.extra["mesh_major"][3] == "Pulmonary Disease, Chronic Obstructive"
    assert [i.view for i in got["iu-CXR1810"].images] == ["FRONTAL", ""]
    assert log.counts == {("study", "report lists no image"): 1,  # 109.xml
                          ("view", "image not in the projections file"): 1}  # fmt: skip
    # the same reports as the Kaggle copy's
    kaggle = {st.id: st for st in SkipLog().studies(iu_xray.read(KAGGLE, layout="kaggle"))}
    for field in ("indication", "comparison", "findings", "impression"):
        assert getattr(got["iu-CXR2"], field) == getattr(kaggle["iu-CXR2"], field)
    kept = list(SkipLog().studies(iu_xray.read(root, layout="openi", keep_without_images=True)))
    assert [s.id for s in kept][2] == "iu-CXR109" and kept[2].images == []


def test_openi_without_projections_counts_each_study(tmp_path):
    root = tree("openi", tmp_path, "NLMCXR_png")
    log = SkipLog()
    got = list(log.studies(iu_xray.read(root, layout="openi")))
    assert {i.view for s in got for i in s.images} == {""}
    assert log.counts[("view", "no view in the Open-I layout (give projections=)")] == 4


def test_kaggle_layout_real_reports_with_their_projections():
    log = SkipLog()
    studies = {s.id: s for s in log.studies(iu_xray.read(KAGGLE, layout="kaggle"))}
    assert sorted(studies) == ["iu-CXR1", "iu-CXR2", "iu-CXR3"]
    s = studies["iu-CXR1"]
    assert s.images == [
        Image("images/images_normalized/1_IM-0001-4001.dcm.png", "FRONTAL"),
        Image("images/images_normalized/1_IM-0001-3001.dcm.png", "LATERAL"),
    ]
    assert (s.indication, s.comparison) == ("Positive TB test", "None.")
    assert s.findings.startswith("The cardiac silhouette and mediastinum size")
    assert s.impression == "Normal chest x-XXXX."
    assert s.patient_id == "CXR1" and s.extra["MeSH"] == "normal"
    assert studies["iu-CXR3"].findings == ""  # the empty cell
    assert studies["iu-CXR3"].impression.startswith("No displaced rib fractures")
    assert log.counts == {
        ("study", "report without images in the projections file"): 1,  # uid 4
        ("study", "images without a report"): 1,  # uid 9
    }
    assert sum(is_frontal(i.view) for st in studies.values() for i in st.images) == 3
    kept = list(SkipLog().studies(iu_xray.read(KAGGLE, layout="kaggle", keep_without_images=True)))
    assert [s.id for s in kept][-1] == "iu-CXR4" and kept[-1].images == []


def test_the_kaggle_copy_prepares_through_the_cli(tmp_path, capsys):
    from radixpert.cli import main

    root = tmp_path / "iu"
    shutil.copytree(KAGGLE, root)
    out = tmp_path / "iu.jsonl"
    argv = ["data", "prepare", "iu-xray", "--root", str(root), "-o", str(out), "layout=kaggle"]
    assert main([*argv, "--no-check-images"]) == 0
    assert "1  records skipped: images without a report" in capsys.readouterr().err
