"""The command line is one language: the same flags everywhere, errors in one line, bugs named.

User errors (a wrong name, a bad option, a missing file) exit 2 with one line that names what
is wrong; an internal error exits 70 with one line naming the exception and where it was
raised, and ``--verbose`` shows its traceback.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from radixpert import cli, vocab
from radixpert.cli import build_parser, main
from tests.data.fixtures import build_iu_r2gen


def _subparser(*names: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize(
    "command",
    [
        ["data", "prepare", "iu-xray", "--root", "r"],
        ["data", "instruct", "studies.jsonl"],
        ["data", "split", "studies.jsonl"],
        ["data", "phantoms", "--n", "1"],
        ["train", "msa_lora"],
        ["demo"],
        ["evaluate", "-r", "a.json", "-c", "b.json"],
        ["label", "reports.csv"],
    ],
)
def test_every_command_that_writes_takes_dash_o(command: list[str]) -> None:
    args = build_parser().parse_args([*command, "-o", "somewhere"])
    assert args.out == "somewhere"


def test_settings_are_key_value_before_or_after_the_options(tmp_path: Path) -> None:
    out = tmp_path / "studies.jsonl"
    root = tmp_path / "iu"
    build_iu_r2gen(root)
    assert main(["data", "prepare", "iu-xray", "layout=r2gen", "--root", str(root), "-o", str(out),
                 "--no-check-images"]) == 0  # fmt: skip
    assert out.is_file()


def test_reader_options_are_typed_and_named_in_errors(tmp_path: Path, capsys) -> None:
    root = tmp_path / "iu"
    build_iu_r2gen(root)
    base = ["data", "prepare", "iu-xray", "--root", str(root), "-o", str(tmp_path / "o.jsonl")]
    assert main([*base, "views=PA"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "iu-xray has no option 'views'" in err
    assert "layout" in err and "keep_without_images" in err
    assert main([*base, "keep_without_images=maybe"]) == 2
    assert "keep_without_images='maybe': expected true or false" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_data_prepare_help_lists_every_reader_and_its_options(capsys) -> None:
    from radixpert.data.prepare import READERS, reader_options

    with pytest.raises(SystemExit):
        main(["data", "prepare", "--help"])
    text = capsys.readouterr().out
    for dataset in READERS:
        assert f"\n  {dataset}\n" in text
        for option in reader_options(dataset):
            assert f"    {option.name}=" in text
    assert "views=list | none (default none)" in text  # mimic-cxr's, with type and default


def test_weights_and_model_sizes_are_two_commands(capsys) -> None:
    assert main(["weights", "list"]) == 0
    assert "chexbert" in capsys.readouterr().out
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    for name, size in vocab.SIZES.items():
        assert name in out and size.family in out
    with pytest.raises(SystemExit):  # the old name is not a command any more
        main(["models", "list"])


def test_config_list_and_path(capsys) -> None:
    assert main(["config", "list"]) == 0
    out = capsys.readouterr().out
    assert "recipes/msa_lora" in out and "accelerate/fsdp" in out
    assert main(["config", "path", "recipes/msa_lora"]) == 0
    assert Path(capsys.readouterr().out.strip()).is_file()
    assert main(["config", "path", "accelerate/nope"]) == 2
    assert "no shipped config 'accelerate/nope'" in capsys.readouterr().err


def test_unknown_names_are_one_line_errors(capsys) -> None:
    assert main(["model", "info", "gpt-17"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("radixpert model: error: unknown model 'gpt-17'")
    assert err.count("\n") == 1 and "Traceback" not in err and not err.endswith("'\n'")
    assert main(["train", "no_such_recipe", "--dry-run"]) == 2
    assert "no such recipe file; shipped recipes" in capsys.readouterr().err


def test_an_internal_error_is_named_and_verbose_shows_the_traceback(monkeypatch, capsys) -> None:
    def broken(args: argparse.Namespace) -> int:
        return {"a": 1}["b"]  # a bug: a KeyError nobody meant

    monkeypatch.setattr(cli, "_run_model", broken)
    assert main(["model", "list"]) == cli.EXIT_BUG
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "internal error (a bug in radixpert): KeyError: 'b' [test_cli.py:" in err
    assert "--verbose" in err
    with pytest.raises(KeyError):
        main(["--verbose", "model", "list"])


def test_non_pair_settings_are_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "msa_lora", "--dry-run", "stray"])
    assert "expected key=value settings, got: stray" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "{dir}"], "--out {dir}: is a folder; give a file name"),
        (["--per-sample", "{dir}"], "--per-sample {dir}: is a folder"),
        (["--seed", "-1"], "--seed -1: a seed is 0 or more"),
        (["--bootstrap", "-5"], "--bootstrap -5: the number of resamples must be 0 (none) to"),
        (["--bootstrap", "100000000"], "--bootstrap 100000000: the number of resamples"),
        (["--text-column", "note", "--section", "findings"], "--text-column and --section"),
    ],
)
def test_evaluate_refuses_bad_options_before_scoring(tmp_path, capsys, extra, message) -> None:
    import json

    r, c = tmp_path / "r.json", tmp_path / "c.json"
    r.write_text(json.dumps({"a": "No effusion.", "b": "Edema."}))
    c.write_text(json.dumps({"a": "Small effusion.", "b": "Mild edema."}))
    folder = tmp_path / "results"
    folder.mkdir()
    args = [a.replace("{dir}", str(folder)) for a in extra]
    assert main(["evaluate", "-r", str(r), "-c", str(c), "-m", "rouge-l", *args]) == 2
    err = capsys.readouterr().err
    assert message.replace("{dir}", str(folder)) in err
    assert "[1/1]" not in err and len(err.strip().splitlines()) == 1  # nothing was scored
    assert list(folder.iterdir()) == []
