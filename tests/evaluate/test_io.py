"""Input layouts, pairing by id and the bad-input messages of `radixpert evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radixpert.errors import InputError
from radixpert.evaluate.io import pair_reports, read_reports
from radixpert.io import atomic_write


def write(tmp_path, name, content):
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return p


def test_layouts_agree(tmp_path):
    mapping = write(tmp_path, "a.json", {"s1": "No effusion.", "s2": "Cardiomegaly."})
    nested = write(
        tmp_path,
        "b.json",
        {"s1": {"report": "No effusion."}, "s2": {"findings": "Cardiomegaly.", "impression": ""}},
    )
    records = write(
        tmp_path,
        "c.json",
        [
            {"study_id": "s1", "findings": "No effusion."},
            {"study_id": "s2", "findings": "Cardiomegaly."},
        ],
    )
    jsonl = write(
        tmp_path,
        "d.jsonl",
        '{"id": "s1", "report": "No effusion."}\n\n{"id": "s2", "report": "Cardiomegaly."}\n',
    )
    csvf = write(tmp_path, "e.csv", 'id,report\ns1,No effusion.\ns2,"Cardiomegaly."\n')
    texts = [read_reports(p).texts for p in (mapping, nested, records, jsonl, csvf)]
    assert all(t == {"s1": "No effusion.", "s2": "Cardiomegaly."} for t in texts)


def test_sections(tmp_path):
    p = write(tmp_path, "r.json", [{"id": 1, "findings": "Lungs clear.", "impression": "Normal."}])
    assert read_reports(p).texts == {"1": "Lungs clear. Normal."}
    assert read_reports(p, "findings").texts == {"1": "Lungs clear."}
    assert read_reports(p, "impression").texts == {"1": "Normal."}
    with pytest.raises(InputError, match=r"r\.json: id 1: no report text: expected one of report"):
        read_reports(p, "report")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("x.json", "[1, 2]", r"x\.json: record 0: expected an object"),
        ("x.json", '{"a": 3}', r"x\.json: id 'a': expected a report text or an object"),
        ("x.json", "{not json", r"x\.json: not valid JSON"),
        ("x.json", '[{"report": "a"}]', r"x\.json: record 0: no id field"),
        ("x.json", '[{"id": "a", "report": 5}]', r"x\.json: id 'a': field 'report' must be text"),
        ("x.jsonl", '{"id": "a", "report": "x"}\n[1]\n', r"x\.jsonl: line 2: expected an object"),
        ("x.csv", "name,report\na,b\n", r"x\.csv: no id column"),
        ("x.csv", "id,report\na,b,c\n", r"x\.csv: line 2, id 'a': more fields"),
        ("x.txt", "hello", r"x\.txt: unknown extension"),
        ("x.json", '{"a": "x", "b": {"id": 1}}', r"x\.json: id 'b': no report text"),
        ("x.json", "[]", r"x\.json: no records"),
    ],
)
def test_malformed_files_name_file_and_record(tmp_path, name, content, message):
    with pytest.raises(InputError, match=message):
        read_reports(write(tmp_path, name, content))


def test_duplicate_ids(tmp_path):
    p = write(tmp_path, "d.jsonl", '{"id": "a", "report": "x"}\n{"id": "a", "report": "y"}\n')
    with pytest.raises(InputError, match=r"d\.jsonl: 1 duplicate id\(s\), e\.g\. 'a'"):
        read_reports(p)


def test_non_utf8_names_line_and_id(tmp_path):
    p = write(tmp_path, "bad.csv", b"id,report\ns1,fine\ns2,caf\xe9 effusion\n")
    with pytest.raises(
        InputError,
        match=r"bad\.csv: line 3, record id 's2': bytes that are not "
        "UTF-8",
    ):
        read_reports(p)
    p = write(tmp_path, "bad.jsonl", b'{"id": "k9", "report": "\xff"}\n')
    with pytest.raises(InputError, match=r"line 1, record id 'k9'"):
        read_reports(p)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_reports(tmp_path / "nope.json")


def _pair(tmp_path, refs, cands, **kw):
    return pair_reports(
        read_reports(write(tmp_path, "r.json", refs)),
        read_reports(write(tmp_path, "c.json", cands)),
        **kw,
    )


def test_pairing_by_id_and_missing_ids(tmp_path):
    refs = {"a": "No effusion.", "b": "Edema.", "c": "Clear."}
    cands = {"c": "Clear lungs.", "a": "Small effusion.", "z": "Other."}
    with pytest.raises(
        InputError,
        match=r"1 id\(s\) only in the references .*'b'.*1 id\(s\) "
        r"only in the candidates .*'z'.*--allow-missing",
    ):
        _pair(tmp_path, refs, cands)
    pairs = _pair(tmp_path, refs, cands, allow_missing=True)
    assert pairs.ids == ["a", "c"]
    assert pairs.candidates == ["Small effusion.", "Clear lungs."]
    assert (pairs.only_references, pairs.only_candidates) == (["b"], ["z"])


def test_empty_candidates_are_counted_not_dropped(tmp_path):
    pairs = _pair(tmp_path, {"a": "No effusion.", "b": "Edema."}, {"a": "", "b": "Edema x."})
    assert pairs.ids == ["a", "b"] and pairs.empty_candidates == ["a"]


def test_empty_reference_is_an_error(tmp_path):
    with pytest.raises(InputError, match=r"r\.json: 1 empty reference report\(s\), e\.g\. 'a'"):
        _pair(tmp_path, {"a": " ", "b": "Edema."}, {"a": "x", "b": "y"})


def test_references_passed_as_candidates(tmp_path):
    refs = {"a": "No effusion.", "b": "Edema."}
    with pytest.raises(InputError, match="was the references file passed as --candidates"):
        _pair(tmp_path, refs, dict(refs))
    p = write(tmp_path, "same.json", refs)
    with pytest.raises(InputError, match="references file passed"):
        pair_reports(read_reports(p), read_reports(p))


def test_no_common_ids(tmp_path):
    with pytest.raises(InputError, match="no id in common"):
        _pair(tmp_path, {"a": "x"}, {"b": "y"})


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "results.json"
    with atomic_write(target) as f:
        f.write("first")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]


# The layouts of ReXrank's own files (rajpurkarlab/ReXrank: data/iu_xray/ReXRank_IUXray_*.json
# and example_files/prediction.json), with made-up texts.
REXRANK_DATA = {
    "CXR1_IM-1": {
        "key_image_path": "CXR1_IM-1/0.png",
        "image_path": ["CXR1_IM-1/0.png", "CXR1_IM-1/1.png"],
        "report": "Findings: Heart size is enlarged. Impression: Cardiomegaly.",
        "section_findings": "Heart size is enlarged.",
        "section_impression": "Cardiomegaly.",
        "split": "test",
        "context": "Indication: dyspnea.",
    },
    "CXR2_IM-2": {
        "report": "Findings: Lungs are clear. Impression: Normal.",
        "section_findings": "Lungs are clear.",
        "section_impression": "Normal.",
    },
}
REXRANK_PREDICTIONS = {
    "50051329": {
        "dicom_id": ["427446c1"],
        "findings": "The lungs are low in volume.\nNo pneumothorax.",
        "impression": "No acute process.",
        "subject_id": 10046166,
        "model_prediction": "Findings:Low lung volumes.Impression:No acute process.",
    },
    "53492798": {
        "findings": "Calcified nodule at the right base.",
        "impression": "No acute process.",
        "model_prediction": "Findings:The lungs are clear.Impression:No acute process.",
    },
}


def test_rexrank_test_set_layout(tmp_path):
    p = write(tmp_path, "ReXRank_IUXray_test.json", REXRANK_DATA)
    assert read_reports(p, role="references").texts["CXR1_IM-1"].startswith("Findings: Heart")
    assert read_reports(p, "findings").texts == {
        "CXR1_IM-1": "Heart size is enlarged.",
        "CXR2_IM-2": "Lungs are clear.",
    }
    assert read_reports(p, "findings+impression").texts["CXR2_IM-2"] == "Lungs are clear. Normal."


def test_one_rexrank_prediction_file_serves_both_sides(tmp_path):
    p = write(tmp_path, "prediction.json", REXRANK_PREDICTIONS)
    refs = read_reports(p, "findings", role="references")
    cands = read_reports(p, "findings", role="candidates")
    assert refs.texts["50051329"] == "The lungs are low in volume.\nNo pneumothorax."
    assert cands.texts["50051329"].startswith("Findings:Low lung volumes")
    pairs = pair_reports(refs, cands)
    assert pairs.ids == ["50051329", "53492798"]


def test_reference_never_read_from_a_model_output(tmp_path):
    p = write(tmp_path, "preds.json", {"a": {"model_prediction": "x"}, "b": {"prediction": "y"}})
    with pytest.raises(InputError, match="read only on the --candidates side"):
        read_reports(p, role="references")
    assert read_reports(p, role="candidates").texts == {"a": "x", "b": "y"}


def test_split_keeps_one_split_of_a_study_file(tmp_path):
    studies = [
        {"id": "a", "split": "train", "findings": "Clear lungs."},
        {"id": "b", "split": "test", "findings": "Small left effusion."},
        {"id": "c", "split": "test", "findings": "No pneumothorax."},
    ]
    path = write(tmp_path, "studies.jsonl", "\n".join(json.dumps(s) for s in studies))
    refs = read_reports(path, "findings", role="references", split="test")
    assert refs.texts == {"b": "Small left effusion.", "c": "No pneumothorax."}
    assert refs.notes == ["split 'test': 2 of 3 records"]
    with pytest.raises(InputError, match=r"studies\.jsonl: no record of split 'validate'"):
        read_reports(path, "findings", split="validate")
    flat = write(tmp_path, "flat.json", {"b": "x"})
    with pytest.raises(InputError, match=r"flat\.json.*no split field"):
        read_reports(flat, split="test")


def test_split_from_the_command_line(tmp_path, capsys):
    from radixpert.cli import main

    studies = [
        {"id": "a", "split": "train", "findings": "Clear lungs."},
        {"id": "b", "split": "test", "findings": "Small left pleural effusion."},
    ]
    refs = write(tmp_path, "studies.jsonl", "\n".join(json.dumps(s) for s in studies))
    cands = write(tmp_path, "preds.json", {"b": {"findings": "Small left pleural effusion."}})
    out = tmp_path / "results.json"
    argv = ["evaluate", "-r", str(refs), "-c", str(cands), "--section", "findings", "-m", "bleu"]
    assert main([*argv, "--bootstrap", "0"]) == 2  # 'a' has no prediction
    assert "only in the references" in capsys.readouterr().err
    assert main([*argv, "--split", "test", "--bootstrap", "0", "-o", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["pairs"] == 1 and results["split"] == "test"
    assert results["metrics"]["bleu-1"]["aggregate"] == pytest.approx(1.0)


def test_named_id_and_text_columns(tmp_path):
    csvf = write(tmp_path, "r.csv", "dicom,note,report\nd1,No effusion.,ignored\nd2,Edema.,x\n")
    jsonl = write(
        tmp_path,
        "c.jsonl",
        '{"dicom": "d1", "id": "other", "note": "Small effusion."}\n'
        '{"dicom": "d2", "id": "other2", "note": "Mild edema."}\n',
    )
    records = write(tmp_path, "c.json", [{"dicom": "d1", "note": "Effusion."}])
    refs = read_reports(csvf, id_column="dicom", text_column="note")
    assert refs.texts == {"d1": "No effusion.", "d2": "Edema."}
    cands = read_reports(jsonl, role="candidates", id_column="dicom", text_column="note")
    assert cands.texts == {"d1": "Small effusion.", "d2": "Mild edema."}
    assert read_reports(records, id_column="dicom", text_column="note").texts == {"d1": "Effusion."}
    # without the names the usual columns are read
    assert read_reports(csvf, id_column="dicom").texts["d1"] == "ignored"


@pytest.mark.parametrize(
    ("name", "content", "kw", "message"),
    [
        ("r.csv", "id,report\na,b\n", {"id_column": "dicom"}, r"r\.csv: no column 'dicom' "
         r"\(--id-column; header: id, report\)"),
        ("r.csv", "id,report\na,b\n", {"text_column": "note"}, r"r\.csv: no column 'note' "
         r"\(--text-column; header: id, report\)"),
        ("r.jsonl", '{"id": "a", "report": "x"}\n', {"id_column": "dicom"},
         r"r\.jsonl: line 1: no 'dicom' field \(--id-column; fields: id, report\)"),
        ("r.json", '[{"id": "a", "report": "x"}]', {"text_column": "note"},
         r"r\.json: id 'a': no 'note' field \(--text-column; fields: id, report\)"),
        ("r.json", '{"a": {"report": "x"}}', {"text_column": "note"},
         r"r\.json: id 'a': no 'note' field \(--text-column; fields: report\)"),
    ],
)  # fmt: skip
def test_a_named_column_that_is_absent_is_an_error(tmp_path, name, content, kw, message):
    with pytest.raises(InputError, match=message):
        read_reports(write(tmp_path, name, content), **kw)


def test_id_column_in_the_id_mapping_layout_is_noted(tmp_path):
    p = write(tmp_path, "c.json", {"a": "Edema.", "b": "Clear."})
    reports = read_reports(p, id_column="dicom", text_column="note")
    assert reports.texts == {"a": "Edema.", "b": "Clear."}
    assert reports.notes == [
        "--id-column 'dicom' and --text-column 'note' not used: the ids are the object's keys"
    ]


def test_skip_empty_references_counts_and_lists_them(tmp_path):
    refs = {"a": " ", "b": "Edema.", "c": "", "d": "Clear."}
    cands = {"a": "x", "b": "Mild edema.", "c": "y", "d": "Clear lungs."}
    with pytest.raises(InputError, match=r"2 empty reference report\(s\), e\.g\. 'a', 'c'.*"
                       r"--skip-empty-references"):  # fmt: skip
        _pair(tmp_path, refs, cands)
    pairs = _pair(tmp_path, refs, cands, skip_empty_references=True)
    assert pairs.ids == ["b", "d"] and pairs.candidates == ["Mild edema.", "Clear lungs."]
    assert pairs.skipped_empty_references == ["a", "c"]
    with pytest.raises(InputError, match=r"all 2 references of the common ids are empty"):
        _pair(tmp_path, {"a": "", "b": " "}, {"a": "x", "b": "y"}, skip_empty_references=True)


def test_ids_match_in_nfc_and_keep_their_spelling(tmp_path):
    decomposed, composed = "rene\u0301-1", "ren\u00e9-1"
    pairs = _pair(
        tmp_path,
        {decomposed: "No effusion.", "b": "Edema."},
        {composed: "Small effusion.", "b": "Mild edema."},
    )
    assert pairs.ids == [decomposed, "b"]  # as the references file spells it
    assert pairs.candidates == ["Small effusion.", "Mild edema."]
    assert pairs.only_references == pairs.only_candidates == []
    p = write(
        tmp_path, "d.json", [{"id": decomposed, "report": "a"}, {"id": composed, "report": "b"}]
    )
    with pytest.raises(InputError, match=r"1 duplicate id\(s\).*also spelled"):
        read_reports(p)


@pytest.mark.parametrize(
    "path",
    [
        "mimic-cxr/ReXRank_MIMICCXR_test.json",
        "chexpert_plus/ReXRank_CheXpertPlus.json",
    ],
)
def test_rexrank_section_builds_rexranks_reference_study_by_study(path):
    """`--section findings+impression-rexrank` gives, for every study, the text that ReXrank's
    evaluation script builds (as the benchmark's rexrank reference building: "None" for a
    missing section included), read from the real-layout fixtures."""
    from radixpert.evaluate.io import REXRANK_SECTION, read_reports
    from radixpert.leaderboard.benchmarks import (
        build_references,
        load_benchmark,
        read_records,
    )

    file = Path(__file__).parents[1] / "data" / "fixtures" / "rexrank" / path
    reports = read_reports(file, REXRANK_SECTION, role="references")
    bench = load_benchmark("rexrank-mimic-cxr-findings-impression")
    expected, excluded = build_references(bench, read_records(file, "rexrank"))
    assert not excluded
    assert reports.texts == expected
    assert any(
        t.endswith("Impression: None") or t.startswith("Findings: None") for t in expected.values()
    )
