"""GREEN: prompt, cleaning and parsing pinned on canned responses; plumbing on a tiny model.

The canned responses follow the output format the official prompt asks for. Their counts
and scores were checked once against the official `GREEN.parse_error_counts` and
`GREEN.compute_green` (Stanford-AIMI/GREEN d72c195), then pinned here.
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path

import pytest

from radixpert.errors import MetricUnavailable
from radixpert.evaluate.judges import green as g

FULL = """
The candidate misses two findings and invents one.

[Clinically Significant Errors]:
(a) False report of a finding in the candidate: 2. Low lung volumes; Interstitial edema.
(b) Missing a finding present in the reference: 3. Cardiomegaly; Effusion; Opacity.
(c) Misidentification of a finding's anatomic location/position: 0.
(d) Misassessment of the severity of a finding: 1. Effusion described as resolved.
(e) Mentioning a comparison that isn't in the reference: 0.
(f) Omitting a comparison detailing a change from a prior study: 0.

[Clinically Insignificant Errors]:
(a) False report of a finding in the candidate: 1. Mild scoliosis.
(b) Missing a finding present in the reference: 0.
(c) Misidentification of a finding's anatomic location/position: 0.
(d) Misassessment of the severity of a finding: 0.
(e) Mentioning a comparison that isn't in the reference: 0.
(f) Omitting a comparison detailing a change from a prior study: 0.

[Matched Findings]:
2. Small left effusion; Stable cardiomediastinal silhouette."""

CASES = {
    # name: (response, significant (a)-(f), matched, score, parsable)
    "full": (FULL, [2, 3, 0, 1, 0, 0], 2, 2 / 8, True),
    "zero matched": (
        FULL.replace("2. Small left effusion; Stable", "0. Stable"),
        [2, 3, 0, 1, 0, 0],
        0,
        0.0,
        True,
    ),
    "no errors": (
        "\nAll findings agree.\n\n[Clinically Significant Errors]:\nNo clinically significant "
        "errors.\n\n[Matched Findings]:\n3. Effusion; Edema; Cardiomegaly.",
        [0] * 6,
        3,
        1.0,
        True,
    ),
    "numbered categories": (
        "\n[Clinically Significant Errors]:\n(1) False report: 1. Nodule.\n(2) Missing: 2. A; B."
        "\n(6) Omitting a comparison: 1. Change.\n\n[Matched Findings]:\n1. Effusion.",
        [1, 2, 0, 0, 0, 1],
        1,
        0.2,
        True,
    ),
    "matched section missing": (
        FULL.split("[Matched Findings]")[0],
        [2, 3, 0, 1, 0, 0],
        0,
        0.0,
        True,
    ),
    "errors section missing": ("\n[Matched Findings]:\n4. A; B; C; D.", [0] * 6, 4, 1.0, True),
    "matched count without period": (
        FULL.replace("2. Small left effusion; Stable", "2 Small left effusion; Stable"),
        [2, 3, 0, 1, 0, 0],
        0,
        0.0,
        True,
    ),
    "error count without period": (
        FULL.replace(
            "present in the reference: 3. Cardiomegaly", "present in the reference: 3 Cardiomegaly"
        ),
        [2, 0, 0, 1, 0, 0],
        2,
        2 / 5,
        True,
    ),
    "repeated category: the last line wins": (
        FULL.replace(
            "(e) Mentioning a comparison that isn't in the reference: 0.",
            "(a) False report of a finding in the candidate: 5. Again.",
        ),
        [5, 3, 0, 1, 0, 0],
        2,
        2 / 11,
        True,
    ),
    "garbage": ("asdf qwer 12. zz <s> ]]", [0] * 6, 0, 0.0, False),
    "empty": ("", [0] * 6, 0, 0.0, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_parse_canned_responses(name):
    text, significant, matched, score, parsable = CASES[name]
    parsed = g.parse_response(text)
    assert parsed.significant == significant
    assert parsed.matched == matched
    assert parsed.score == pytest.approx(score)
    assert parsed.parsable is parsable


def test_insignificant_errors_are_parsed_but_not_scored():
    parsed = g.parse_response(FULL)
    assert parsed.insignificant == [1, 0, 0, 0, 0, 0]
    assert parsed.score == pytest.approx(0.25)


def test_score_responses_counts_everything():
    texts = [
        CASES[k][0] for k in ("full", "no errors", "garbage", "matched section missing", "empty")
    ]
    res = g.score_responses(texts)
    assert res.per_sample == pytest.approx([0.25, 1.0, 0.0, 0.0, 0.0])
    assert res.aggregate == pytest.approx(1.25 / 5)  # unparsable responses count as 0
    d = res.detailed
    assert d["n_unparsable"] == 2 and d["unparsable_indices"] == [2, 4]
    assert d["n_without_matched_section"] == 3
    assert d["n_without_significant_section"] == 2
    assert d["n_zero_matched"] == 3
    assert d["mean_excluding_unparsable"] == pytest.approx(1.25 / 3)
    assert d["significant_a_accuracy"] == pytest.approx(3 / 5)  # official summary accuracy
    assert d["significant_b_mean"] == pytest.approx(6 / 5)
    assert res.per_sample_detailed["parsable"] == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert res.per_sample_detailed["significant_errors"] == [6.0, 0.0, 0.0, 6.0, 0.0]


def test_prompt_is_the_official_one():
    prompt = g.make_prompt("REF", "CAND")
    # Digest of the official make_prompt("REF", "CAND"), checked against Stanford-AIMI/GREEN.
    digest = hashlib.sha256(prompt.encode()).hexdigest()
    assert digest == "4e621f21f3a8802263136333c20f59e6b103d87179c675cea196e36e81cf6eb0"
    assert prompt.startswith("Objective: Evaluate the accuracy of a candidate radiology report")
    assert "2. Reference Report:\n    REF\n\n    3. Candidate Report:\n    CAND\n\n    4." in prompt
    long = " ".join(f"w{i}" for i in range(400))
    cut = g.make_prompt(long, "a  b\n c")
    assert "w299 " not in cut and "w299\n" in cut and "w300" not in cut
    assert "Candidate Report:\n    a b c\n" in cut


def test_clean_response():
    decoded = (
        "<|user|>\nObjective ... [Explanation]:\n    <Explanation>\n ...\n<|assistant|>\n\n"
        "<|assistant|>\n[Explanation]:\nThe reports agree.\n\n[Matched Findings]:\n1. Effusion.</s>"
    )
    assert g.clean_response(decoded) == "\nThe reports agree.\n\n[Matched Findings]:\n1. Effusion."
    assert g.clean_response("x<|assistant|>garbage<unk>") == "garbage"
    assert g.clean_response("plain") == "plain"


# -- plumbing with a tiny Llama --------------------------------------------------------------


def build_tiny_green(folder: Path, seed: int = 0) -> Path:
    """A random LlamaForCausalLM (hidden 16) and a Llama BPE tokenizer with byte fallback."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    bpe = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    bpe.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    alphabet = [c for c in string.printable if c not in " \t\n\r\x0b\x0c"] + ["▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    bpe.train_from_iterator([g.make_prompt("No effusion.", "Small effusion.")] * 3, trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    LlamaTokenizer(vocab=state["vocab"], merges=merges).save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(state["vocab"]),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("transformers")
    return build_tiny_green(tmp_path_factory.mktemp("green") / "green-radllama2-7b")


@pytest.mark.slow
def test_tiny_model_output_is_counted_as_unparsable(tiny, monkeypatch):
    m = g.Green(model_dir=tiny, device="cpu", batch_size=2, max_new_tokens=6)
    refs = ["No acute process.", "Small left pleural effusion.", "No acute process."]
    cands = [
        "Normal chest.",
        "Effusion on the left, unchanged since the prior study.",
        "Normal chest.",
    ]
    res = m.compute(refs, cands)
    assert res.name == "green"
    assert res.per_sample == [0.0, 0.0, 0.0]
    assert res.detailed["n_unparsable"] == 3
    assert res.detailed["unparsable_indices"] == [0, 1, 2]
    s = res.settings
    assert s["prompt_version"] == g.PROMPT_VERSION and s["dtype"] == "float32"
    assert s["max_length"] == 2048 and s["max_new_tokens"] == 6 and s["decoding"] == "greedy"

    # The model input: official chat layout, BOS first, EOS last, left padding.
    tokenizer, _, _ = m._load()
    rendered = m.render([g.make_prompt(refs[1], cands[1])])[0]
    assert rendered.startswith("<|user|>\nObjective: Evaluate")
    assert rendered.endswith("</s>\n<|assistant|>\n</s>\n<|assistant|>\n")
    batch = tokenizer(
        m.render([g.make_prompt(r, c) for r, c in zip(refs[:2], cands[:2])]), padding=True
    )
    short, long = batch["input_ids"]
    assert long[0] == tokenizer.bos_token_id and long[-1] == tokenizer.eos_token_id
    assert short[-1] == tokenizer.eos_token_id and short[0] == tokenizer.pad_token_id
    assert batch["attention_mask"][0][0] == 0

    # Responses are cached per prompt: the same pairs need no generation.
    def fail(prompts):
        raise AssertionError("responses should come from the cache")

    again = g.Green(model_dir=tiny, device="cpu", batch_size=2, max_new_tokens=6)
    monkeypatch.setattr(again, "_generate", fail)
    assert again.responses(refs, cands) == m.responses(refs, cands)


def test_check_and_missing_weights(tmp_path):
    m = g.Green(model_dir=tmp_path / "none")
    reason = m.check()
    assert "green-radllama2-7b" in reason and "radixpert weights pull green-radllama2-7b" in reason
    with pytest.raises(MetricUnavailable):
        m.compute(["a"], ["b"])
    # A folder with tokenizer.model only needs sentencepiece and protobuf under transformers 5.
    folder = tmp_path / "spm"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"):
        (folder / name).write_bytes(b"{}")
    from radixpert._optional import missing

    reason = g.Green(model_dir=folder).check()
    if missing("sentencepiece", "google.protobuf"):
        assert "sentencepiece" in reason
    else:
        assert reason is None


def test_bad_arguments():
    with pytest.raises(ValueError):
        g.Green(batch_size=0)
    with pytest.raises(ValueError):
        g.Green(dtype="int8")
