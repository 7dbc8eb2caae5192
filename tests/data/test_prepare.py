"""`radixpert data prepare`'s own work around the readers: skips counted per reason and
written beside the output, --strict, the image-file check, typed options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radixpert.cli import main
from radixpert.data import prepare as prepare_module
from radixpert.data.prepare import ImageCheck, parse_options, prepare, skips_path
from radixpert.data.readers import Skip, SkipLog
from radixpert.data.study import Box, Image, Study, read_studies
from radixpert.errors import ReaderError, UnknownName, UsageError


def _reader(root: Path, *, views: tuple[str, ...] = ("PA", "AP"), limit: int = 3):
    """A stand-in reader: three studies, one record skipped, one view left out."""
    images = [Image("a.png", "PA"), Image("gone.png", "LATERAL")]
    boxes = [Box("heart", 0.1, 0.1, 0.5, 0.5, image=1), Box("lung", 0, 0, 1, 1)]
    yield Study(id="a", dataset="x", images=images, boxes=boxes)
    yield Skip("no report", f"{root}/x.csv: line 3", "empty 'report'")
    yield Skip("unknown view spelling", f"{root}/x.csv: line 4", "'Erect'", part="view")
    yield Study(id="b", dataset="x", images=[Image("missing.png", "PA")])
    yield Study(id="c", dataset="x", images=[Image(str(root / "c.png"), "AP")])  # absolute


@pytest.fixture
def fake_reader(monkeypatch, tmp_path):
    monkeypatch.setitem(prepare_module.READERS, "fake", "tests.data.test_prepare:_reader")
    for name in ("a.png", "c.png"):
        (tmp_path / name).write_bytes(b"not read: only existence is checked")
    return tmp_path


def test_skips_are_counted_printed_and_written(fake_reader, tmp_path, capsys):
    out = tmp_path / "out" / "x.jsonl"
    out.parent.mkdir()
    assert main(["data", "prepare", "fake", "--root", str(fake_reader), "-o", str(out)]) == 0
    studies = list(read_studies(out))
    assert [s.id for s in studies] == ["a", "c"]
    a = studies[0]
    assert [im.path for im in a.images] == ["a.png"]
    assert [(b.label, b.image) for b in a.boxes] == [("lung", 0)]  # the heart was on gone.png
    report = json.loads(skips_path(out).read_text())
    assert report["studies_written"] == 2 and report["images_checked"] is True
    assert report["skipped"] == {
        "study": {"no report": 1, "no image file found": 1},
        "image": {"image file missing": 2},
        "box": {"box on a missing image": 1},
        "view": {"unknown view spelling": 1},
    }
    assert "line 3" in report["examples"]["study"]["no report"][0]
    err = capsys.readouterr().err
    assert "records skipped: no report" in err and "images left out: image file missing" in err


def test_no_check_images_keeps_every_path(fake_reader, tmp_path):
    out = tmp_path / "x.jsonl"
    argv = ["data", "prepare", "fake", "--root", str(fake_reader), "-o", str(out)]
    assert main([*argv, "--no-check-images"]) == 0
    assert [len(s.images) for s in read_studies(out)] == [2, 1, 1]
    assert "image" not in json.loads(skips_path(out).read_text())["skipped"]


def test_strict_names_the_file_and_line(fake_reader, tmp_path):
    out = tmp_path / "x.jsonl"
    with pytest.raises(ReaderError, match=r"x\.csv: line 3: record skipped: no report"):
        prepare("fake", fake_reader, out, strict=True, check_images=False)
    assert not out.exists()  # nothing half-written


def test_image_check_alone(tmp_path):
    log = SkipLog()
    (tmp_path / "p.png").write_bytes(b"x")
    kept = ImageCheck(tmp_path, log)(Study(id="s", dataset="x", images=[Image("p.png")]))
    assert kept is not None and log.total == 0
    assert ImageCheck(tmp_path, log)(Study(id="t", dataset="x", images=[])) is not None


def test_options_are_typed(fake_reader):
    assert parse_options("fake", ["views=PA,AP", "limit=2"]) == {"views": ("PA", "AP"), "limit": 2}
    assert parse_options("fake", ["views=PA"]) == {"views": ("PA",)}  # a list, not "P", "A"
    with pytest.raises(UnknownName, match=r"no option 'view'.*views, limit"):
        parse_options("fake", ["view=PA"])
    with pytest.raises(UnknownName, match=r"'check_images' \(the command's flag --no-check-images"):
        parse_options("fake", ["check_images=false"])
    with pytest.raises(UsageError, match="limit='two'"):
        parse_options("fake", ["limit=two"])


def test_a_typo_in_an_option_is_one_line_not_a_traceback(fake_reader, tmp_path, capsys):
    argv = ["data", "prepare", "fake", "--root", str(fake_reader), "-o", str(tmp_path / "x.jsonl")]
    assert main([*argv, "veiws=PA"]) != 0
    err = capsys.readouterr().err
    assert "no option 'veiws'" in err and "Traceback" not in err


def test_skip_summary_names_each_part():
    from radixpert.data.readers import Skip, SkipLog

    log = SkipLog()
    for part in ("study", "box", "box", "image"):
        log.add(Skip("why", "f.csv:2", part=part))
    assert [line.split(":")[0].strip() for line in log.summary()] == [
        "2  boxes left out", "1  images left out", "1  records skipped"]  # fmt: skip
