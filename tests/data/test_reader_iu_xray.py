"""IU-Xray views: from the projections CSV (Kaggle layout, or beside Open-I's XML), never
guessed from R2Gen's image order (tests/data/fixtures/iu-xray/README.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

from radixpert.data.readers import SkipLog, iu_xray
from radixpert.data.study import Image
from radixpert.data.views import is_frontal
from tests.data import fixtures as fx

KAGGLE = Path(__file__).parent / "fixtures" / "iu-xray" / "kaggle"


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


def test_openi_views_from_the_projections_file(tmp_path):
    fx.build_openi(tmp_path)
    images = [
        i for s in SkipLog().studies(iu_xray.read(tmp_path, layout="openi")) for i in s.images
    ]
    rows = ["uid,filename,projection"]
    for k, image in enumerate(images):
        uid, _, rest = Path(image.path).stem.removeprefix("CXR").partition("_")
        rows.append(
            f"{uid},{uid}_{rest.partition('_')[2]}.dcm.png,{'Lateral' if k % 2 else 'Frontal'}"
        )
    rows.pop()  # one image is missing from the file
    (tmp_path / "indiana_projections.csv").write_text("\n".join(rows) + "\n")
    log = SkipLog()
    got = list(log.studies(iu_xray.read(tmp_path, layout="openi",
                                        projections="indiana_projections.csv")))  # fmt: skip
    views = [i.view for s in got for i in s.images]
    assert views[:-1] == ["LATERAL" if k % 2 else "FRONTAL" for k in range(len(views) - 1)]
    assert views[-1] == "" and log.counts == {("view", "image not in the projections file"): 1}
    # Without the file each study with images is counted once: no view in this layout.
    plain = SkipLog()
    list(plain.studies(iu_xray.read(tmp_path, layout="openi")))
    assert plain.counts[("view", "no view in the Open-I layout (give projections=)")] == len(got)


def test_r2gen_views_stay_unknown_and_are_counted(tmp_path):
    fx.build_iu_r2gen(tmp_path)
    log = SkipLog()
    studies = list(log.studies(iu_xray.read(tmp_path)))
    assert {i.view for s in studies for i in s.images} == {""}
    assert log.counts[("view", "no view in the R2Gen layout")] == len(studies)


def test_the_kaggle_copy_prepares_through_the_cli(tmp_path, capsys):
    from radixpert.cli import main

    root = tmp_path / "iu"
    shutil.copytree(KAGGLE, root)
    out = tmp_path / "iu.jsonl"
    argv = ["data", "prepare", "iu-xray", "--root", str(root), "-o", str(out), "layout=kaggle"]
    assert main([*argv, "--no-check-images"]) == 0
    assert "1  records skipped: images without a report" in capsys.readouterr().err
