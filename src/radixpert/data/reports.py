"""Radiology report text: sections, references to prior studies, de-identification tokens.

Rule-based and dependency-free, so every dataset reader can use it:

    sections = split_sections(report_text)
    target = section_text(sections, "findings+impression")
    kept, removed = remove_prior_references(target)
    clean = normalise_deid(kept)

Sectioning follows the official MIMIC-CXR rules (MIT-LCP/mimic-cxr `txt/section_parser.py` and
`txt/create_section_files.py`, reimplemented here, not copied) and widens them to the other
datasets' header styles. Where this module differs from the official parser it says so in
`split_sections`.
"""

from __future__ import annotations

import logging
import re

__all__ = [
    "count_deid",
    "normalise_deid",
    "remove_prior_references",
    "section_text",
    "split_sections",
]

logger = logging.getLogger(__name__)

# Keys `split_sections` always returns; the optional ones appear only when they have text.
_MAIN_SECTIONS = ("indication", "comparison", "findings", "impression")
_OPTIONAL_SECTIONS = ("technique", "history", "examination", "preamble", "other", "last_paragraph")
_WHICH = ("findings", "impression", "findings+impression")

# Header name (lower case, single spaces) -> section key. Built from the official
# `normalize_section_names` table (the frequent MIMIC-CXR headers and their typos), the MIMIC-CXR
# header spellings a third-party parser collected from the whole release (PabloMessina/MedVQA
# `medvqa/datasets/mimiccxr/preprocessing.py`: `REASON FOR THE EXAM`, `INDCATION`, `FINDNINGS`,
# `RESIDENT WET READ`, ...) plus the headers of IU-Xray (Open-I labels), CheXpert Plus and ReXrank.
# "preamble" marks a report title line (`FINAL REPORT`), which holds no text of its own.
_HEADER_ALIASES: dict[str, str] = {
    "indication": "indication",
    "indications": "indication",
    "clinical indication": "indication",
    "clinic indication": "indication",
    "clincal indication": "indication",
    "reason for exam": "indication",
    "reason for the exam": "indication",
    "reason fore exam": "indication",
    "reason for examination": "indication",
    "reason for the examination": "indication",
    "reason for study": "indication",
    "reason for indication": "indication",
    "questions to be answered": "indication",
    "idication": "indication",
    "indcation": "indication",
    # The official table sends "ndication" (one report) to impression; the name is indication's.
    "ndication": "indication",
    "history": "history",
    "clinical history": "history",
    "clinical information": "history",
    "clinical information & questions to be answered": "history",
    "additional clinical history provided": "history",
    "patient history": "history",
    "comparison": "comparison",
    "comparisons": "comparison",
    "comparison exam": "comparison",
    "comparison film": "comparison",
    "reference exam": "comparison",
    "comparision": "comparison",
    "comparisions": "comparison",
    "comparsion": "comparison",
    "comparrison": "comparison",
    "findings": "findings",
    "finding": "findings",
    "reference findings": "findings",
    "findngs": "findings",
    "finidngs": "findings",
    "findnings": "findings",
    "findins": "findings",
    "findindgs": "findings",
    "findgings": "findings",
    "fingdings": "findings",
    "finsings": "findings",
    "findigns": "findings",
    # The official table maps the combined header to impression, and so does this module.
    "findings and impression": "impression",
    "findings/impression": "impression",
    "findings/ impression": "impression",
    "impression": "impression",
    "impressions": "impression",
    "impression/recommendations": "impression",
    "impression and recommendations": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "impresson": "impression",
    "impession": "impression",
    "imprression": "impression",
    "imoression": "impression",
    "impressoin": "impression",
    "imprssion": "impression",
    "impresion": "impression",
    "imperssion": "impression",
    "mpression": "impression",
    "technique": "technique",
    "examination": "examination",
    "exam": "examination",
    "type of examination": "examination",
    "type of the examination": "examination",
    "addendum": "other",
    "notification": "other",
    "recommendation": "other",
    "recommendations": "other",
    "recommendation(s)": "other",
    "wet read": "other",
    "wetread": "other",
    "resident wet read": "other",
    "preliminary resident wet read": "other",
    "preliminary report": "other",
    "comment": "other",
    "comments": "other",
    "note": "other",
    "narrative": "other",
    "summary": "other",
    "accession number": "other",
    "final report": "preamble",
    "final addendum": "preamble",
}
# Headers that are only headers when written in capitals at the start of a line (the official
# rule's form, `_CAPS_HEADER`): as words they are common in prose ("date:", "report:"). The
# official parser makes each its own section; "report" and "opinion" hold the radiologist's
# reading (MedVQA reads them as report text), "pfi" is in the official table as history.
_CAPS_ONLY: dict[str, str] = {
    "date": "other",
    "report": "findings",
    "opinion": "impression",
    "pfi": "history",
}
# Sections whose header may also be found mid-line after a space or glued to a word
# ("... effusion Impression: ...", "effusion.Impression:"): the ones model outputs actually use.
_INLINE_KEYS = frozenset(_MAIN_SECTIONS) | {"technique", "history", "examination"}

# Official fallback for unlisted all-capitals headers: a main section name inside the header
# wins, then a view description (`CHEST, PA AND LATERAL:`) means findings. "indication", "wet
# read", "reason for" and "prior" are this module's additions (`RESIDENT WET READ`, `REASON FOR
# THE EXAM`, `PRIOR STUDIES`); the official parser keeps "addendum" as its own name, here it is
# "other".
_CONTAINS_ORDER = (
    ("impression", "impression"),
    ("findings", "findings"),
    ("history", "history"),
    ("comparison", "comparison"),
    ("indication", "indication"),
    ("addendum", "other"),
    ("wet read", "other"),
    ("reason for", "indication"),
    ("prior", "comparison"),
)
# The official substrings, then whole words of view descriptions that the official list misses
# (`AP UPRIGHT:`, `SINGLE VIEW:`, `SUPINE RADIOGRAPH:`; MedVQA lists them as report text).
_FINDINGS_TITLES = re.compile(
    r"chest|portable|pa and lat|lateral and pa|ap and lateral|lateral and ap|frontal and|"
    r"two views|frontal view|pa view|ap view|one view|lateral view|bone window|frontal upright|"
    r"frontal semi-upright|ribs|"
    r"\b(?:ap|pa|single view|radiographs?|upright|supine|erect|semi-?erect|semi-?upright)\b"
)

# ASCII: case-insensitive matching must not let "ſ" or "K" (Kelvin) stand for s or k.
_NAMES = "|".join(
    re.escape(n).replace(r"\ ", r"[ \t]+") for n in sorted(_HEADER_ALIASES, key=len, reverse=True)
)
# Lookahead so that overlapping candidates are all seen; validity is decided in code.
_COLON_HEADER = re.compile(rf"(?=(?P<name>{_NAMES})[ \t]*:)", re.IGNORECASE | re.ASCII)
_BARE_HEADER = re.compile(
    rf"^[ \t]*(?P<name>{_NAMES})[ \t]*\r?$", re.IGNORECASE | re.ASCII | re.MULTILINE
)
# The official pattern `\n ([A-Z ()/,-]+):\s`, with any indentation and at the text start too.
_CAPS_HEADER = re.compile(
    r"^[ \t]*(?P<name>[A-Z][A-Z ()/,&-]*[A-Z)])[ \t]*:(?=\s|$)", re.ASCII | re.MULTILINE
)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r]*\n")
# MIMIC-CXR's line of underscores between an addendum (or wet read) and the report it amends; a
# de-identified value is exactly three underscores, so ten or more alone on a line are a rule.
_SEPARATOR = re.compile(r"^[ \t]*_{10,}[ \t]*$", re.MULTILINE)


def _normalise_space(text: str) -> str:
    return " ".join(text.split())


def _header_key(name: str) -> str | None:
    """Section key of a header name, or None when the name is not a section header."""
    name = " ".join(name.lower().split())
    if name in _HEADER_ALIASES:
        return _HEADER_ALIASES[name]
    if name in _CAPS_ONLY:
        return _CAPS_ONLY[name]
    for part, key in _CONTAINS_ORDER:
        if part in name:
            return key
    return "findings" if _FINDINGS_TITLES.search(name) else None


def _find_headers(text: str) -> list[tuple[int, int, str]]:
    """Header spans `(start, end, key)` in text order, without overlaps."""
    # (start, end, key, mid_line): mid_line marks a header found after other text on its line.
    candidates: list[tuple[int, int, str, bool]] = []
    for m in _COLON_HEADER.finditer(text):
        start, name = m.start("name"), m.group("name")
        key = _HEADER_ALIASES[" ".join(name.lower().split())]
        i = start
        while i > 0 and text[i - 1] in " \t":  # walk back locally: no O(n) slice per candidate
            i -= 1
        prev = text[i - 1] if i else ""
        line_start = prev in ("", "\n", "\r")
        spaced = i < start
        if line_start:
            ok = True
        elif key == "preamble":
            ok = False  # a report title only ever stands on its own line
        elif prev in ".!?;:)":
            ok = True
        else:
            # After a word ("... effusion Impression:") or glued to one ("effusionImpression:"),
            # only a capitalised main header counts: "the history: of" stays prose.
            glued_ok = spaced or ("a" <= prev <= "z")
            ok = glued_ok and name[0].isupper() and key in _INLINE_KEYS
        if ok:
            colon = text.index(":", m.start("name") + len(name))
            mid_line = not line_start and not name.isupper()
            candidates.append((start, colon + 1, key, mid_line))
    for m in _BARE_HEADER.finditer(text):
        key = _HEADER_ALIASES[" ".join(m.group("name").lower().split())]
        candidates.append((m.start("name"), m.end("name"), key, False))
    for m in _CAPS_HEADER.finditer(text):
        key = _header_key(m.group("name"))
        if key is not None:
            candidates.append((m.start("name"), m.end(), key, False))
    # Earliest first, longest first at one start; a candidate inside an accepted one is dropped.
    candidates.sort(key=lambda c: (c[0], -c[1]))
    headers: list[tuple[int, int, str]] = []
    for start, end, key, mid_line in candidates:
        if headers and start < headers[-1][1]:
            continue
        if key == "history" and headers and headers[-1][2] == "indication":
            # MIMIC-CXR's `INDICATION:  History: ___F with ...`: a History: right after the
            # indication header is part of that header, and a mixed-case History: later on the
            # indication's line is its prose (the official parser sees neither as a header).
            if not text[headers[-1][1] : start].strip():
                headers[-1] = (headers[-1][0], end, "indication")
                continue
            if mid_line:
                continue
        headers.append((start, end, key))
    return headers


def split_sections(text: str) -> dict[str, str]:
    """Split a radiology report into named sections by its headers.

    Headers are recognised in these forms (any letter case unless stated):

    - a known header name followed by a colon at the start of a line, after any indentation
      (MIMIC-CXR lines start with a space): `FINDINGS:`, ` INDICATION:`, `impression:`;
    - a known header name alone on its line without a colon (`CONCLUSION`, `FINAL REPORT`);
    - a known header name with a colon after sentence punctuation on the same line
      (IU-Xray and ReXrank one-line reports: `... None. FINDINGS: ...`, `...effusion.Impression:`);
    - a capitalised main header (`Findings`, `IMPRESSION`, ...) with a colon after a space or
      glued to a lower-case word (`Findings: ... normal Impression: ...`, `normalImpression:`);
    - the official MIMIC-CXR rule for other all-capitals line-start headers
      (`CHEST, PA AND LATERAL:`), named as the official parser names them: a main section name
      inside the header wins, a view description means findings (`AP UPRIGHT:` and
      `SINGLE VIEW:` too, which the official list misses), `DATE:` is other, `REPORT:` findings,
      `OPINION:` impression.

    Header names are normalised with the official table and the MIMIC-CXR typos
    (`REASON FOR EXAM`, `REASON FOR THE EXAM`, `INDCATION` -> indication; `CLINICAL HISTORY`,
    `CLINICAL INFORMATION`, `PFI` -> history; `CONCLUSION`, `IMPRESSION/RECOMMENDATIONS`,
    `FINDINGS AND IMPRESSION`, `IMPRESSOIN` -> impression); addenda, notifications,
    recommendations and wet reads go to "other". `FINAL REPORT` / `FINAL ADDENDUM` title lines
    are dropped and the text after them, up to the next header, is preamble; a line of ten or
    more underscores (MIMIC-CXR's rule under an addendum or a wet read) is a paragraph break.

    Choices, and where they differ from the official parser:

    - Text before the first header is "preamble" (official).
    - A report with no section header at all goes whole to "other" (the official parser calls
      it `full report`); it is not guessed to be findings, because for a headerless text the
      official rules do not know which section it is either.
    - "last_paragraph" follows the official fallback: only when the report has neither findings
      nor impression, the last section (the whole report if headerless) keeps its first
      paragraph and the rest of it is "last_paragraph" (` COMPARISON:  ___.` followed by the
      report's body gives comparison `___.`). The official create_section_files takes it as
      the report's conclusion; this module names it and leaves that choice to the caller.
    - Repeated sections are merged in text order, joined with a space (the official parser keeps
      only the last one, which loses text such as a findings addendum).
    - Whitespace inside each section is collapsed to single spaces.
    - An all-capitals line-start header the tables do not know (`COR:`, `CC:`, a structured
      report's `LUNGS:`) is not a header: its line stays in the section it is in. The official
      parser makes each its own section, which takes such lines out of the findings.
    - MIMIC-CXR's `INDICATION:  History: ___F with ...`: a `History:` header right after the
      indication header (nothing but blanks between) is part of it, so the text is the
      indication; a mixed-case `History:` later on the indication's line is prose of the
      indication. Both as the official parser, which only knows all-capitals line-start headers.
    - A report without an indication but with a history gives its history as the indication
      too (the "history" key keeps it): old MIMIC-CXR reports have `HISTORY:` (or `CLINICAL
      HISTORY:`) where newer ones have `INDICATION:`. ReXrank's MIMIC test set calls both
      "Indication". With both, the indication is the indication and the history stays apart.

    Nothing is lost silently: every word of `text` is in some returned section, except the words
    of the headers themselves and the underscore rules; the indication taken from the history
    is a copy.

    Args:
        text: The report, in any of the supported styles.

    Returns:
        "indication", "comparison", "findings" and "impression" always ("" when absent), plus
        "technique", "history", "examination", "preamble", "other" and "last_paragraph" when
        they have text.
    """
    text = _SEPARATOR.sub("", text)
    headers = _find_headers(text)
    has_section = any(key != "preamble" for _, _, key in headers)
    # (key, raw text) in text order; title lines start a preamble piece.
    pieces: list[tuple[str, str]] = []
    first = headers[0][0] if headers else len(text)
    pieces.append(("preamble", text[:first]))
    for i, (_, end, key) in enumerate(headers):
        stop = headers[i + 1][0] if i + 1 < len(headers) else len(text)
        pieces.append((key, text[end:stop]))
    if not has_section:
        logger.debug("no section header: the whole report goes to 'other'")
        pieces = [("other", raw) for _, raw in pieces]
    if not any(k in ("findings", "impression") and raw.strip() for k, raw in pieces):
        # Official fallback: the last section keeps its first paragraph, the rest of it is the
        # last paragraph (the report's body, written under the wrong header or under none).
        key, raw = pieces[-1]
        head, *tail = _PARAGRAPH_BREAK.split(raw.lstrip(), maxsplit=1)
        if tail and tail[0].strip():
            pieces[-1:] = [(key, head), ("last_paragraph", tail[0])]

    merged: dict[str, list[str]] = {}
    for key, raw in pieces:
        norm = _normalise_space(raw)
        if norm:
            merged.setdefault(key, []).append(norm)
    # Fixed key order (main keys first), whatever order the report uses.
    sections = {key: " ".join(merged.get(key, [])) for key in _MAIN_SECTIONS}
    sections.update({k: " ".join(merged[k]) for k in _OPTIONAL_SECTIONS if k in merged})
    if not sections["indication"] and sections.get("history"):
        sections["indication"] = sections["history"]
    return sections


def section_text(sections: dict[str, str], which: str) -> str:
    """The text a caller wants from `split_sections` output.

    Args:
        sections: As returned by `split_sections` (missing keys count as empty).
        which: "findings", "impression" or "findings+impression" (both, joined by a space,
            skipping an empty one).

    Returns:
        The text, "" when the section is absent. No fallback to other sections: a caller who
        wants the official one reads `sections["last_paragraph"]` itself.

    Raises:
        ValueError: `which` is not one of the three names.
    """
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, not {which!r}")
    names = ("findings", "impression") if which == "findings+impression" else (which,)
    return " ".join(t for t in (sections.get(n, "").strip() for n in names) if t)


# ---------------------------------------------------------------------------------------------
# Sentences and references to prior studies

# Words that end in a full stop without ending the sentence (compared lower case, without the
# final stop). Units such as "cm." are left out on purpose: they usually end a sentence.
_ABBREVIATIONS = frozenset(
    {
        "e.g",
        "i.e",
        "dr",
        "drs",
        "mr",
        "mrs",
        "ms",
        "vs",
        "approx",
        "fig",
        "cf",
        "al",
        "incl",
        "resp",
        "p.o",
        "a.m",
        "p.m",
    }
)
_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)|\n[ \t\r]*\n")


def _split_sentences(text: str) -> list[str]:
    """Sentences of `text`, whitespace-normalised; together they hold every word of `text`.

    A sentence ends at `.`, `!` or `?` followed by whitespace or the end, or at a blank line. A
    stop inside a token never splits ("1.2 cm", "e.g."), nor does one after an abbreviation
    ("Dr. ___") or after a list number at a sentence start ("1. Small effusion.").
    """
    sentences: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        if m.group().startswith("."):
            current = text[start : m.start()]
            tokens = current.split()
            last = tokens[-1].lower().lstrip("([\"'") if tokens else ""
            if last in _ABBREVIATIONS or (len(tokens) == 1 and last.isdigit()):
                continue
        piece = _normalise_space(text[start : m.end()])
        if piece:
            sentences.append(piece)
        start = m.end()
    tail = _normalise_space(text[start:])
    if tail:
        sentences.append(tail)
    return sentences


# Phrases that use a comparative word without comparing with a prior study; they are blanked
# before the comparative patterns run.
_NON_COMPARATIVE = re.compile(
    r"\b(?:hemodynamically|haemodynamically|clinically|medically|neurologically)\s+stable\b|"
    r"\bstable\s+(?:vital\s+signs|vitals|patient)\b|"
    r"\bnew[- ]onset\b|\bnew\s+york\b",
    re.IGNORECASE,
)
_COMPARATIVE = re.compile(
    r"\bcompar(?:ed|ison|isons|ing|e)\b|\bprior\b|\bprevious(?:ly)?\b|\bearlier\b|"
    r"\bas\s+before\b|\bunchanged\b|\bchanged\b|\bagain\b|\binterval(?:ly)?\b|"
    r"\bsince\s+(?:the\s+)?(?:prior|previous|last|most\s+recent|recent|earlier|yesterday|"
    r"___|\d)|"
    r"\bstable\b|\bstability\b|\bstably\b|"
    r"\b(?:no|not|without|little|minimal|slight)\s+(?:\w+\s+){0,2}?change\b|"
    r"\bnew(?:ly)?\b|"
    r"\b(?:has|have|had)\s+(?:\w+ly\s+)?(?:increased|decreased)\b|"
    r"\b(?:increas|decreas)(?:ed|ing)\s+in\s+(?:size|extent|number|conspicuity|volume|"
    r"severity|prominence|amount)\b|"
    r"\b(?:an?\s+)?(?:increase|decrease)\s+in\b|\b(?:increasing|decreasing)\b|"
    r"\b(?:increased|decreased)\s+(?:since|from|compared|relative)\b|"
    r"\b(?:improv|worsen|progress|resolv|regress|re-?demonstrat|persist)\w*|"
    r"\bworse\b|\bbetter\b|\bno\s+longer\b|\bremain(?:s|ed|ing)?\b|\bsimilar\b",
    re.IGNORECASE,
)


def remove_prior_references(text: str) -> tuple[str, list[str]]:
    """Drop the sentences of a report that refer to a prior examination.

    A sentence is removed when it holds a comparative cue: comparison words ("compared to
    prior", "since the prior study", "as before", "again seen", "interval", "previously",
    "unchanged", "no change", "stable", "remains", "similar", "persistent", "re-demonstrated",
    "improved", "worsening", "resolved", "no longer"), "new" in any use ("No new findings"
    compares), and "increased"/"decreased" only in comparative uses ("has increased",
    "increased in size", "an increase in", "increasing", "decreased since"). The idea of
    removing such sentences from generation targets follows CXR-PRO (Ramesh et al., 2022); the
    cue list is this module's own.

    Limits, by design of a rule list: "increased interstitial markings" (an adjective meaning
    "more than normal") is kept; "hemodynamically stable", "clinically stable", "stable vital
    signs" and "new onset" are recognised as non-comparative and kept; other non-comparative
    uses of the cue words ("a stable fracture fixation", "better seen on the lateral view") are
    removed anyway. Whole sentences are removed, so a sentence that mixes a current finding
    with a comparison loses both; the removed sentences are returned so nothing is lost
    silently.

    Args:
        text: Report text (one section or a whole report).

    Returns:
        The kept sentences joined by single spaces, and the removed sentences in text order.
    """
    kept: list[str] = []
    removed: list[str] = []
    for sentence in _split_sentences(text):
        masked = _NON_COMPARATIVE.sub(" ", sentence)
        (removed if _COMPARATIVE.search(masked) else kept).append(sentence)
    return " ".join(kept), removed


# ---------------------------------------------------------------------------------------------
# De-identification tokens

# Order matters: `[**...**]` before `**NAME**`, whose stars it contains.
_DEID = re.compile(
    r"\[\*\*.*?\*\*\]"  # MIMIC-II/III: [**Hospital1 18**], [**2151-7-16**]
    r"|\*\*[A-Z][A-Z0-9_ -]*(?:\[[^\]\n]*\])?\*\*"  # **NAME**, **DATE[Jan 01 2020]**
    r"|<[A-Z][A-Z_-]*>"  # <DATE>, <NAME>, <LOCATION>; lower case (<unk>) is a tokeniser's
    r"|_{3,}"  # MIMIC-CXR ___
    # IU-Xray XXXX, also in "x-XXXX" and "XXXX-year-old"; not inside capitals (Roman numerals).
    r"|(?<![A-Z])X{3,}(?![A-Z])"
    r"|(?<![A-Za-z])x{4,}(?![A-Za-z])"  # lower-cased IU-Xray text
)


def normalise_deid(text: str, token: str = "___") -> str:
    """Replace every dataset's de-identification placeholder with one token.

    Recognised: MIMIC-CXR `___` (any run of three or more underscores), IU-Xray `XXXX` (also
    inside hyphenated words, "x-XXXX"; lower-case `xxxx` too), MIMIC-II/III `[**...**]`,
    `**NAME**`-style and `<DATE>`-style (upper-case) tags. Adjacent placeholders stay separate
    tokens.

    Args:
        text: Any report text.
        token: The replacement; the default is MIMIC-CXR's, so MIMIC text is unchanged.

    Returns:
        The text with each placeholder replaced by `token`.
    """
    return _DEID.sub(lambda _m: token, text)


def count_deid(text: str) -> int:
    """Number of de-identification placeholders in `text`, as `normalise_deid` finds them."""
    return sum(1 for _ in _DEID.finditer(text))
