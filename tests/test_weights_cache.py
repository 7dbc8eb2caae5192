"""Weights folders under RADIXPERT_HOME, their error messages, and the per-text cache."""

from __future__ import annotations

import pytest

from radixpert import weights
from radixpert.cli import main
from radixpert.evaluate.cache import TextCache


def test_missing_weights_message_names_files_folder_and_command(_radixpert_home):
    reason = weights.status("chexbert")
    assert "chexbert.pth" in reason
    assert str(_radixpert_home / "models" / "chexbert") in reason
    assert "radixpert weights pull chexbert" in reason
    with pytest.raises(weights.WeightsMissing, match="radixpert weights pull chexbert"):
        weights.resolve("chexbert")


def test_alternative_files_and_env_override(tmp_path, monkeypatch):
    folder = tmp_path / "roberta"
    folder.mkdir()
    for f in ("config.json", "vocab.json", "merges.txt", "pytorch_model.bin"):
        (folder / f).write_text("{}")
    assert weights.status("distilroberta-base", folder) is None
    monkeypatch.setenv("RADIXPERT_WEIGHTS_DISTILROBERTA_BASE", str(folder))
    assert weights.resolve("distilroberta-base") == folder
    (folder / "pytorch_model.bin").unlink()
    assert "model.safetensors|pytorch_model.bin" in weights.status("distilroberta-base")


def test_pull_is_refused_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(weights.WeightsMissing, match="HF_HUB_OFFLINE"):
        weights.pull("chexbert")
    with pytest.raises(KeyError, match="unknown model"):
        weights.pull("no-such-model")


def test_weights_list_cli(capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "chexbert" in out and "absent" in out and "StanfordAIMI/RRG_scorers" in out


def test_text_cache_roundtrip_and_scopes(tmp_path):
    path = tmp_path / "c.sqlite"
    a = TextCache("m", {"layer": 5}, path=path)
    a.put_many({"no effusion": [1, 2.5], "edema": {"x": 1}})
    assert a.get_many(["no effusion", "edema", "other"]) == {
        "no effusion": [1, 2.5],
        "edema": {"x": 1},
    }
    # other settings never read these values
    assert TextCache("m", {"layer": 6}, path=path).get_many(["no effusion"]) == {}
    assert TextCache("m", {"layer": 5}, path=path, enabled=False).get_many(["edema"]) == {}
    many = {f"text {i}": i for i in range(1200)}  # more than one SQL chunk
    a.put_many(many)
    assert a.get_many(list(many)) == many
    a.close()
