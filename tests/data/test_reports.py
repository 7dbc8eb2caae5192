"""Report text: sections of real report styles, prior-reference removal, de-id tokens.

The report texts are written in the published formats (MIMIC-CXR free text, IU-Xray Open-I,
ReXrank `Findings: ... Impression: ...`, CheXpert Plus) with invented content.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixpert.data.reports import (
    _HEADER_ALIASES,
    _split_sentences,
    count_deid,
    normalise_deid,
    remove_prior_references,
    section_text,
    split_sections,
)


def mimic(body: str) -> str:
    """Lay `body` out as a MIMIC-CXR `.txt`: every line starts with a space (blank ones too)."""
    return "\n".join(" " + line for line in body.splitlines()) + "\n"


MIMIC_FULL = mimic(
    """\
                                 FINAL REPORT
EXAMINATION:  CHEST (PA AND LAT)

INDICATION:  ___F with new onset cough  // ? pna

TECHNIQUE:  Chest PA and lateral

COMPARISON:  ___

FINDINGS:

The lungs are clear.  There is no pleural effusion or pneumothorax.  The
cardiomediastinal silhouette is normal.

IMPRESSION:

No acute cardiopulmonary process.
"""
)

MIMIC_ADDENDUM = mimic(
    """\
                                 FINAL ADDENDUM
ADDENDUM:  Findings were discussed with Dr. ___ by telephone at 3:15 p.m.

                                 FINAL REPORT
HISTORY:  Shortness of breath.

FINDINGS:  Small left pleural effusion.

IMPRESSION:  Small left effusion.
"""
)

MIMIC_OLD_STYLE = mimic(
    """\
                                 FINAL REPORT
CHEST RADIOGRAPH PERFORMED ON ___

COMPARISON:  Prior exam from ___.

CLINICAL HISTORY:  ___-year-old with fever.

FINDINGS:  PA and lateral views of the chest were provided.  The lungs are
clear.  Heart size is normal.

IMPRESSION:  No acute intrathoracic process.
"""
)

MIMIC_NO_SECTION = mimic(
    """\
                                 FINAL REPORT
PORTABLE CHEST ___ AT 08:30

Comparison is made to the prior study.  Endotracheal tube terminates 4 cm
above the carina.
"""
)

MIMIC_VIEW_HEADER = mimic(
    """\
                                 FINAL REPORT
CHEST, PA AND LATERAL:

INDICATION:  Cough.

CHEST, PA AND LATERAL:  Heart size is normal.  Lungs are clear.
"""
)

# (id, text, expected subset of the result, keys that must be absent)
CASES: list[tuple[str, str, dict[str, str], tuple[str, ...]]] = [
    (
        "mimic-full",
        MIMIC_FULL,
        {
            "examination": "CHEST (PA AND LAT)",
            "indication": "___F with new onset cough // ? pna",
            "technique": "Chest PA and lateral",
            "comparison": "___",
            "findings": "The lungs are clear. There is no pleural effusion or pneumothorax. "
            "The cardiomediastinal silhouette is normal.",
            "impression": "No acute cardiopulmonary process.",
        },
        ("preamble", "other", "last_paragraph"),
    ),
    (
        "mimic-addendum-first",
        MIMIC_ADDENDUM,
        {
            "other": "Findings were discussed with Dr. ___ by telephone at 3:15 p.m.",
            "history": "Shortness of breath.",
            "findings": "Small left pleural effusion.",
            "impression": "Small left effusion.",
        },
        ("preamble",),
    ),
    (
        "mimic-old-style-preamble",
        MIMIC_OLD_STYLE,
        {
            "preamble": "CHEST RADIOGRAPH PERFORMED ON ___",
            "comparison": "Prior exam from ___.",
            "history": "___-year-old with fever.",
            "findings": "PA and lateral views of the chest were provided. The lungs are clear. "
            "Heart size is normal.",
            "impression": "No acute intrathoracic process.",
        },
        (),
    ),
    (
        "mimic-title-only-is-no-header",
        MIMIC_NO_SECTION,
        {
            "other": "PORTABLE CHEST ___ AT 08:30",
            "last_paragraph": "Comparison is made to the prior study. Endotracheal tube "
            "terminates 4 cm above the carina.",
            "findings": "",
            "impression": "",
        },
        ("preamble",),
    ),
    (
        "mimic-view-title-means-findings",
        MIMIC_VIEW_HEADER,
        {"indication": "Cough.", "findings": "Heart size is normal. Lungs are clear."},
        ("other",),
    ),
    (
        "mimic-reason-for-exam-conclusion-bare",
        " REASON FOR EXAM:  Chest pain.\n \n CONCLUSION\n \n Normal chest.\n",
        {"indication": "Chest pain.", "impression": "Normal chest."},
        (),
    ),
    (
        "mimic-impression-recommendations",
        " FINDINGS:  Nodule in the right upper lobe.\n \n IMPRESSION/RECOMMENDATIONS:  "
        "Right upper lobe nodule; CT recommended.\n",
        {
            "findings": "Nodule in the right upper lobe.",
            "impression": "Right upper lobe nodule; CT recommended.",
        },
        (),
    ),
    (
        "mimic-findings-and-impression",
        " INDICATION:  Dyspnea.\n \n FINDINGS AND IMPRESSION:  Mild pulmonary edema.\n",
        {"indication": "Dyspnea.", "findings": "", "impression": "Mild pulmonary edema."},
        (),
    ),
    (
        "mimic-wet-read-and-notification",
        " WET READ: ___ ___ 8:48 AM\n  No pneumothorax.\n \n FINDINGS:  Lungs clear.\n \n"
        " NOTIFICATION:  Dr. ___ was paged.\n",
        {
            "other": "___ ___ 8:48 AM No pneumothorax. Dr. ___ was paged.",
            "findings": "Lungs clear.",
        },
        (),
    ),
    (
        "repeated-findings-merged",
        "FINDINGS: Heart normal.\nIMPRESSION: Normal.\nFINDINGS: Lateral view: no effusion.\n",
        {"findings": "Heart normal. Lateral view: no effusion.", "impression": "Normal."},
        (),
    ),
    (
        "repeated-empty-findings",
        " FINDINGS:\n \n FINDINGS:  Clear lungs.\n",
        {"findings": "Clear lungs."},
        (),
    ),
    (
        "lowercase-headers",
        "indication: cough\nfindings: the lungs are clear.\nimpression: normal study.",
        {"indication": "cough", "findings": "the lungs are clear.", "impression": "normal study."},
        (),
    ),
    (
        "title-case-headers-no-colon-lines",
        "Findings\nThe lungs are clear.\n\nImpression\nNormal chest radiograph.",
        {"findings": "The lungs are clear.", "impression": "Normal chest radiograph."},
        (),
    ),
    (
        "iu-xray-one-line",
        "COMPARISON: None. INDICATION: XXXX-year-old male, chest pain. FINDINGS: The "
        "cardiomediastinal silhouette is within normal limits. IMPRESSION: No acute disease.",
        {
            "comparison": "None.",
            "indication": "XXXX-year-old male, chest pain.",
            "findings": "The cardiomediastinal silhouette is within normal limits.",
            "impression": "No acute disease.",
        },
        (),
    ),
    (
        "iu-xray-findings-only",
        "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
        {
            "other": "The heart is normal in size. The mediastinum is unremarkable. "
            "The lungs are clear.",
            "findings": "",
        },
        ("last_paragraph", "preamble"),
    ),
    (
        "rexrank-report",
        "Findings: Lungs are clear. No effusion. Impression: No acute cardiopulmonary process.",
        {
            "findings": "Lungs are clear. No effusion.",
            "impression": "No acute cardiopulmonary process.",
        },
        ("preamble",),
    ),
    (
        "rexrank-no-space",
        "Findings:Lungs are clear.Impression:Normal.",
        {"findings": "Lungs are clear.", "impression": "Normal."},
        (),
    ),
    (
        "rexrank-no-period",
        "Findings: heart size normal Impression: no acute process",
        {"findings": "heart size normal", "impression": "no acute process"},
        (),
    ),
    (
        "rexrank-glued-to-word",
        "Findings: heart size normalImpression: no acute process",
        {"findings": "heart size normal", "impression": "no acute process"},
        (),
    ),
    (
        "rexrank-empty-findings",
        "Findings: Impression: Stable chest.",
        {"findings": "", "impression": "Stable chest."},
        (),
    ),
    (
        "chexpert-plus",
        "NARRATIVE:\nCHEST 1 VIEW\n\nHISTORY: Fever.\n\nCOMPARISON: None.\n\nIMPRESSION:\n"
        "1. No acute process.\n\nSUMMARY:\n1-NORMAL\n\nACCESSION NUMBER: ___",
        {
            "other": "CHEST 1 VIEW 1-NORMAL ___",
            "history": "Fever.",
            "comparison": "None.",
            "impression": "1. No acute process.",
        },
        (),
    ),
    (
        "header-words-in-prose-stay-prose",
        "FINDINGS: The findings of the prior study are not seen. The history: unknown.\n",
        {"findings": "The findings of the prior study are not seen. The history: unknown."},
        ("history",),
    ),
    (
        "no-header-paragraphs",
        "Heart normal.\n\nLungs clear.\n\nNo effusion.",
        {"other": "Heart normal.", "last_paragraph": "Lungs clear. No effusion."},
        (),
    ),
    (
        "no-findings-with-sections-last-paragraph",
        " INDICATION:  Line placement.\n \n COMPARISON:  ___.\n \n Right PICC ends in the SVC.\n",
        {
            "indication": "Line placement.",
            "comparison": "___.",
            "last_paragraph": "Right PICC ends in the SVC.",
        },
        (),
    ),
    (
        "preamble-before-first-header",
        "Chest x-ray, two views.\nFINDINGS: Normal.",
        {"preamble": "Chest x-ray, two views.", "findings": "Normal."},
        ("other",),
    ),
    (
        "crlf-line-endings",
        "FINDINGS:\r\nLungs clear.\r\nIMPRESSION\r\nNormal.\r\n",
        {"findings": "Lungs clear.", "impression": "Normal."},
        (),
    ),
    ("empty", "", {"indication": "", "findings": "", "impression": "", "comparison": ""}, ()),
    ("whitespace-only", " \n \n ", {"findings": ""}, ("other", "preamble", "last_paragraph")),
]


@pytest.mark.parametrize(
    ("text", "expected", "absent"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_split_sections_cases(text: str, expected: dict[str, str], absent: tuple[str, ...]):
    got = split_sections(text)
    for key in ("indication", "comparison", "findings", "impression"):
        assert key in got
    for key, value in expected.items():
        assert got.get(key) == value, (key, got)
    for key in absent:
        assert key not in got, (key, got)
    assert all(
        v for k, v in got.items() if k not in ("indication", "comparison", "findings", "impression")
    )


@pytest.mark.parametrize(
    ("name", "key"), [(n, k) for n, k in _HEADER_ALIASES.items() if k != "preamble"]
)
def test_every_known_header_in_every_case(name: str, key: str):
    for variant in (name, name.upper(), name.title()):
        for text in (f"Intro.\n {variant}: body text", f"Intro. {variant}:body text"):
            got = split_sections(text)
            assert got[key] == "body text", (text, got)
            assert got["preamble"] == "Intro."


def test_title_lines_are_dropped():
    got = split_sections(" FINAL REPORT\n Intro.\n FINDINGS: Clear.")
    assert got["preamble"] == "Intro."
    assert got["findings"] == "Clear."


def test_mimic_fixture_layout():
    # The official paragraph break is "\n \n": the fixtures must really use it.
    assert "\n \n" in MIMIC_NO_SECTION
    assert all(line.startswith(" ") for line in MIMIC_FULL.splitlines())


def test_section_text():
    s = split_sections(MIMIC_FULL)
    assert section_text(s, "impression") == "No acute cardiopulmonary process."
    assert section_text(s, "findings").startswith("The lungs are clear.")
    both = section_text(s, "findings+impression")
    assert both == s["findings"] + " " + s["impression"]
    assert section_text({"impression": "Normal."}, "findings+impression") == "Normal."
    assert section_text({}, "findings") == ""
    with pytest.raises(ValueError, match="which"):
        section_text(s, "indication")


# ---- the no-silent-loss invariant ---------------------------------------------------------

# Header words: words of the known header names, and (for all-capitals line-start headers such as
# "CHEST, PA AND LATERAL:", found by the official rule) words written in capitals.
HEADER_WORDS = {w for name in _HEADER_ALIASES for w in re.findall(r"\w+", name)}


def words(text: str) -> Counter[str]:
    """Word multiset; a lower->upper case change splits words, as a glued header does."""
    return Counter(re.findall(r"\w+", re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)))


def assert_no_silent_loss(text: str) -> None:
    """Invariant: the returned sections hold every word of the input except header words, and
    no word that the input does not hold."""
    got = split_sections(text)
    # An indication filled from the history is a copy of it.
    copies = {"indication"} if got.get("history") == got["indication"] else set()
    out = words(" ".join(v for k, v in got.items() if k not in copies))
    lost = words(text) - out
    for w in lost:
        # header words, and the underscore rules (a line of ten or more) between report parts
        assert (
            w.lower() in HEADER_WORDS or re.fullmatch(r"[A-Z]+", w) or re.fullmatch(r"_{10,}", w)
        ), (w, text, got)
    assert not out - words(text), (text, got)


@pytest.mark.parametrize("text", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_cases_lose_nothing(text: str):
    assert_no_silent_loss(text)


HEADERISH = st.sampled_from(
    ["FINDINGS:", "Impression:", "\n IMPRESSION: ", "\nfindings\n", " FINAL REPORT\n", ".",
     "\n \n", "Comparison:", "CHEST, PA AND LATERAL:", "\n NOTE: ", "effusionImpression:", "___"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_split_sections_arbitrary_text(text: str):
    assert_no_silent_loss(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(HEADERISH, st.text(max_size=12)), max_size=12).map("".join))
def test_split_sections_header_soup(text: str):
    assert_no_silent_loss(text)


# ---- prior references ---------------------------------------------------------------------

PRIOR_REMOVED = [
    "Compared to prior, the heart size is unchanged.",
    "No new findings.",
    "Lungs are clear as before.",
    "The nodule is unchanged from ___.",
    "A small effusion is again seen.",
    "Interval placement of a right PICC.",
    "The opacity previously noted has resolved.",
    "Since the prior study, the effusion has increased.",
    "Stable cardiomegaly.",
    "No change in the appearance of the chest.",
    "The left effusion has decreased in size.",
    "Increasing bibasilar opacities.",
    "Mild pulmonary edema, improved.",
    "Heart size remains normal.",
    "New right lower lobe consolidation.",
]
PRIOR_KEPT = [
    "The lungs are clear.",
    "Increased interstitial markings.",
    "A 1.2 cm nodule, e.g. a granuloma, in the right upper lobe.",
    "Dr. ___ was notified.",
    "Patient is hemodynamically stable.",
    "New onset shortness of breath.",
    "No pleural effusion or pneumothorax.",
    "Degenerative changes of the spine.",
]


@pytest.mark.parametrize("sentence", PRIOR_REMOVED)
def test_prior_sentence_removed(sentence: str):
    assert remove_prior_references(sentence) == ("", [sentence])


@pytest.mark.parametrize("sentence", PRIOR_KEPT)
def test_non_prior_sentence_kept(sentence: str):
    assert remove_prior_references(sentence) == (sentence, [])


def test_prior_mixed_report():
    text = (
        "PA and lateral views.  Compared to ___, there is\n new left basilar opacity.  "
        "Heart size is normal at 1.5 cm.\n\n1. Stable small effusion.\n2. No pneumothorax."
    )
    kept, removed = remove_prior_references(text)
    assert kept == "PA and lateral views. Heart size is normal at 1.5 cm. 2. No pneumothorax."
    assert removed == [
        "Compared to ___, there is new left basilar opacity.",
        "1. Stable small effusion.",
    ]


def test_sentence_split_keeps_decimals_and_abbreviations():
    assert _split_sentences("Nodule 1.2 cm, i.e. small. Dr. ___ aware! Is it new? Yes") == [
        "Nodule 1.2 cm, i.e. small.",
        "Dr. ___ aware!",
        "Is it new?",
        "Yes",
    ]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_prior_removal_keeps_every_word(text: str):
    kept, removed = remove_prior_references(text)
    assert words(" ".join([kept, *removed])) == words(text)


# ---- de-identification --------------------------------------------------------------------

DEID_CASES = [
    ("___-year-old man, Dr. ___ paged.", "___-year-old man, Dr. ___ paged.", 2),
    ("XXXX-year-old female. Exam x-XXXX.", "___-year-old female. Exam x-___.", 2),
    ("Seen by [**Doctor Last Name 123**] on [**2151-7-16**].", "Seen by ___ on ___.", 2),
    ("Patient **NAME** seen **DATE[Jan 01 2020]**.", "Patient ___ seen ___.", 2),
    ("Study <DATE> at <LOCATION>; token <unk> kept.", "Study ___ at ___; token <unk> kept.", 2),
    ("lowercased xxxx-year-old", "lowercased ___-year-old", 1),
    (
        "Chapter XXXIV and MCXXX are not PHI; T4 is fine.",
        "Chapter XXXIV and MCXXX are not PHI; T4 is fine.",
        0,
    ),
    ("**Findings** in markdown stay.", "**Findings** in markdown stay.", 0),
    ("No placeholders at all.", "No placeholders at all.", 0),
]


@pytest.mark.parametrize(("text", "expected", "count"), DEID_CASES)
def test_normalise_deid(text: str, expected: str, count: int):
    assert normalise_deid(text) == expected
    assert count_deid(text) == count
    assert count_deid(normalise_deid(text)) == count


def test_normalise_deid_custom_token():
    assert (
        normalise_deid("XXXX and ___ and [**Name**]", token="[PHI]") == "[PHI] and [PHI] and [PHI]"
    )


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_normalise_deid_idempotent(text: str):
    once = normalise_deid(text)
    assert normalise_deid(once) == once


# ---- MIMIC-CXR layouts: the official parser's semantics for the four main sections -------------

MIMIC_HISTORY_IN_INDICATION = mimic(
    """\
                                 FINAL REPORT
EXAMINATION:  CHEST (PA AND LAT)

INDICATION:  History: ___F with cough  // ? pna

COMPARISON:  None.

FINDINGS:

The lungs are clear.

IMPRESSION:

No acute process.
"""
)

MIMIC_WET_READ_FIRST = mimic(
    """\
WET READ: ___ ___ ___ 10:12 PM
  Low lung volumes, no focal opacity.
______________________________________________________________________________
                                 FINAL REPORT
INDICATION:  ___M with fever.

COMPARISON:  ___.

FINDINGS:

Lung volumes are low.  No focal consolidation.

IMPRESSION:

No pneumonia.
"""
)

MIMIC_ADDENDUM_RULE = mimic(
    """\
                                 FINAL ADDENDUM
ADDENDUM:
Findings were discussed with Dr. ___ at 10:00.

______________________________________________________________________________
                                 FINAL REPORT
CLINICAL HISTORY:  ___-year-old woman with cough.

PA AND LATERAL VIEWS OF THE CHEST:  The lungs are clear.  Heart size is
normal.

CONCLUSION:  Normal chest.
"""
)

MIMIC_OLD_HEADERS = mimic(
    """\
                                 FINAL REPORT
CLINICAL INFORMATION & QUESTIONS TO BE ANSWERED:  ___-year-old with chest pain.

DATE:  ___

AP UPRIGHT:  No focal consolidation.  No pneumothorax.

IMPRESSSION is not a header here.
"""
)

MIMIC_REASON_AND_HISTORY = mimic(
    """\
                                 FINAL REPORT
HISTORY:  ___-year-old man with CHF.

REASON FOR THE EXAM:  Evaluate for effusion.

COMPARISON:  ___

FINDNINGS:  Small bilateral effusions.

IMPRESSOIN:  Small effusions.
"""
)

MIMIC_CASES = [
    (
        "history-right-after-indication",
        MIMIC_HISTORY_IN_INDICATION,
        {
            "indication": "___F with cough // ? pna",
            "comparison": "None.",
            "findings": "The lungs are clear.",
            "impression": "No acute process.",
        },
        ("history",),
    ),
    (
        "history-on-the-indication-line-is-prose",
        " INDICATION:  ___F with cough. History: smoker.\n \n FINDINGS:  Clear.\n",
        {"indication": "___F with cough. History: smoker.", "findings": "Clear."},
        ("history",),
    ),
    (
        "history-header-on-the-next-line",
        " INDICATION:\n History: ___M with fever.\n \n IMPRESSION:  Normal.\n",
        {"indication": "___M with fever.", "impression": "Normal."},
        ("history",),
    ),
    (
        "old-style-history-only",
        " FINAL REPORT\n HISTORY:  Shortness of breath.\n \n IMPRESSION:  Normal.\n",
        {"indication": "Shortness of breath.", "history": "Shortness of breath."},
        (),
    ),
    (
        "history-and-reason-kept-apart",
        MIMIC_REASON_AND_HISTORY,
        {
            "indication": "Evaluate for effusion.",
            "history": "___-year-old man with CHF.",
            "comparison": "___",
            "findings": "Small bilateral effusions.",
            "impression": "Small effusions.",
        },
        (),
    ),
    (
        "wet-read-first",
        MIMIC_WET_READ_FIRST,
        {
            "other": "___ ___ ___ 10:12 PM Low lung volumes, no focal opacity.",
            "indication": "___M with fever.",
            "comparison": "___.",
            "findings": "Lung volumes are low. No focal consolidation.",
            "impression": "No pneumonia.",
        },
        ("preamble",),
    ),
    (
        "addendum-first-and-old-headers",
        MIMIC_ADDENDUM_RULE,
        {
            "other": "Findings were discussed with Dr. ___ at 10:00.",
            "indication": "___-year-old woman with cough.",
            "findings": "The lungs are clear. Heart size is normal.",
            "impression": "Normal chest.",
        },
        ("preamble", "last_paragraph"),
    ),
    (
        "clinical-information-date-view-title",
        MIMIC_OLD_HEADERS,
        {
            "indication": "___-year-old with chest pain.",
            "other": "___",
            "findings": "No focal consolidation. No pneumothorax. "
            "IMPRESSSION is not a header here.",
            "impression": "",
        },
        (),
    ),
    (
        "unknown-capitals-label-stays-in-its-section",
        " INDICATION:  Line check.\n COR:  ___ tube.\n \n FINDINGS:  Tube in place.\n",
        {"indication": "Line check. COR: ___ tube.", "findings": "Tube in place."},
        (),
    ),
    (
        "report-and-opinion-capitals-only",
        " INDICATION:  Cough.\n \n REPORT:  Lungs clear.\n \n OPINION:  Normal.\n",
        {"indication": "Cough.", "findings": "Lungs clear.", "impression": "Normal."},
        (),
    ),
    (
        "report-word-in-prose-is-no-header",
        " FINDINGS:  As in the CT report: no nodule.\n",
        {"findings": "As in the CT report: no nodule."},
        (),
    ),
    (
        "resident-wet-read-and-typos",
        " RESIDENT WET READ:  No pneumothorax.\n INDCATION:  Chest tube.\n"
        " FINDINGS/ IMPRESSION:  Chest tube in place.\n",
        {
            "other": "No pneumothorax.",
            "indication": "Chest tube.",
            "impression": "Chest tube in place.",
        },
        (),
    ),
]


@pytest.mark.parametrize(
    ("text", "expected", "absent"), [c[1:] for c in MIMIC_CASES], ids=[c[0] for c in MIMIC_CASES]
)
def test_mimic_layouts(text: str, expected: dict[str, str], absent: tuple[str, ...]):
    got = split_sections(text)
    for key, value in expected.items():
        assert got.get(key) == value, (key, got)
    for key in absent:
        assert key not in got, (key, got)
    assert_no_silent_loss(text)


def test_mimic_layout_fixtures_are_mimic_layout():
    for text in (MIMIC_HISTORY_IN_INDICATION, MIMIC_WET_READ_FIRST, MIMIC_ADDENDUM_RULE):
        lines = text.splitlines()
        assert all(line.startswith(" ") and len(line) <= 79 for line in lines)
        assert any(line.strip() == "FINAL REPORT" and line.startswith(" " * 30) for line in lines)
    assert "\n" + " " + "_" * 78 + "\n" in MIMIC_WET_READ_FIRST


def test_underscore_rule_is_a_paragraph_break_and_phi_stays():
    got = split_sections(" FINDINGS:  ___ and ____.\n " + "_" * 78 + "\n Second.\n")
    assert got["findings"] == "___ and ____. Second."
