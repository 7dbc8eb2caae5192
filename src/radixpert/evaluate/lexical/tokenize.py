"""Tokenisers for the lexical metrics, selected by name.

Every lexical metric (BLEU, ROUGE-L, CIDEr-D, METEOR) scores token sequences, and the
number it reports depends on how text becomes tokens as much as on the metric itself.
The COCO caption pipeline (pycocoevalcap), which most report-generation papers use,
runs Stanford's PTBTokenizer (Java) with ``-lowerCase`` and then drops a fixed list of
punctuation tokens. Three tokenisers are offered:

``"basic"`` (default)
    Pure Python and fast. Lower-cases, splits punctuation off words and drops the
    punctuation tokens that pycocoevalcap's PTBTokenizer removes, approximating the COCO
    PTB pipeline without Java. It follows PTB on what matters in reports: hyphenated
    words (``x-ray``, ``t12-l1``), slashed words (``ap/lateral``, ``s/p``), numbers
    (``1.5``, ``1,000``, ``10:30``, ``01/02/2003``), a decimal number glued to a unit is
    split (``2.5cm`` -> ``2.5 cm``) while an integer is not (``5cm``), a period between
    letters with no space after it stays inside the token (``apex.there``), English
    contractions are split (``can't`` -> ``ca n't``, ``patient's`` -> ``patient 's``),
    ``%``, ``$``, ``+``, ``/``, ``=`` and other symbols become tokens of their own, and
    brackets become ``-lrb-``/``-rrb-``/``-lsb-``/``-rsb-``/``-lcb-``/``-rcb-``, which
    the COCO pipeline keeps (its punctuation list has the upper-case forms, but
    ``-lowerCase`` has already lower-cased them). Abbreviations that PTB keeps with
    their period (``dr.``, ``vs.``, ``etc.``, ``ct.``, ``e.g.``, single letters, ...)
    keep it here too.

    Known differences from PTB (rare in reports): PTB's full abbreviation lexicon and
    its context rules are only approximated (PTB keeps or splits the period of a
    sentence-final single letter, "represent a.", depending on the words before it;
    here a single letter always keeps it); ``v1.2`` (PTB: ``v1 .2``) and
    ``4.5x5.0cm`` (PTB: ``4.5 x5 .0 cm``) and ``1.0-2.0`` (PTB: ``1.0-2 .0``) are
    split differently, as are ``rock'n'roll`` and ``'tis``; PTB's
    British/American spelling and Unicode normalisations beyond curly quotes, dashes
    and the ellipsis are not applied.

``"ptb"``
    Exactly pycocoevalcap's PTBTokenizer: the Stanford CoreNLP 3.4.1 jar shipped in
    pycocoevalcap, ``-preserveLines -lowerCase``, then pycocoevalcap's punctuation
    filter. Needs Java and pycocoevalcap. All texts go to the jar in one call. Unlike
    pycocoevalcap, line breaks inside a text are replaced by spaces (pycocoevalcap only
    replaces ``\\n``; a ``\\r`` would shift every later text), the temporary file is
    written to a temporary directory rather than into site-packages, and blank texts
    are not sent to the jar (they become empty token lists).

``"none"``
    Split on whitespace only, for input that is already tokenised.

Empty or blank text always gives an empty token list.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

TOKENIZERS: tuple[str, ...] = ("basic", "ptb", "none")

# pycocoevalcap's tokenizer/ptbtokenizer.py removes exactly these tokens after PTB.
PTB_PUNCTUATIONS: frozenset[str] = frozenset(
    {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":"}
    | {"-", "--", "...", ";"}
)

PTB_JAR_NAME = "stanford-corenlp-3.4.1.jar"

# ---------------------------------------------------------------------------------------
# "basic": a regular-expression approximation of PTB + the COCO punctuation filter
# ---------------------------------------------------------------------------------------

# Abbreviations PTB 3.4.1 keeps together with their period whatever follows
# (checked against the jar, any letter case).
_ABBREV_ANY = (
    "mr|mrs|ms|dr|drs|prof|jr|sr|st|vs|etc|cf|al|lt|rt|mt|ft|sq|est|ext|tel|ph|mo|ave|gen"
    "|col|rev|sgt|capt|sen|rep|gov|adm|maj|pres|hon|det|bros|blvd|rd|esq|mme|inc|co|corp"
    "|ltd|univ|intl|sys|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|mon|tue|wed|thu"
    "|fri|dept|ct|md|va|ga|ky|ind|conn|vt|mich|mont|neb|nev|okla|tenn|wis|wisc|wyo|ariz|calif"
    "|colo|fla|kan|kans|dak|penn"
)
# ... only when written with a capital (lower-case "pa." or "mass." is split by PTB).
_ABBREV_CAPITAL = "Pa|PA|La|LA|Mass|Miss|Ill|Del|Tex|Wash|Ore|Ark"
# ... only before a number ("No. 5", "Fig. 2").
_ABBREV_BEFORE_NUMBER = "no|nos|fig|ca"

_L = r"[^\W\d_]"  # a letter
_A = r"[^\W_]"  # a letter or digit

_ABBREV_ANY_SET = frozenset(_ABBREV_ANY.split("|"))
_ABBREV_CAPITAL_SET = frozenset(_ABBREV_CAPITAL.split("|"))
_ABBREV_BEFORE_NUMBER_SET = frozenset(_ABBREV_BEFORE_NUMBER.split("|"))

# Applied to one whitespace-free chunk at a time (see `basic_tokenize`). Alternatives are
# tried in order at each position; characters no alternative matches (the punctuation
# the COCO pipeline drops: . , ; : ! ? - ' " `) are skipped.
_TOKEN_RE = re.compile(
    rf"""
      -[lr][rsc]b-                                   # bracket tokens of PTB output
    | n't(?!{_A}) | '(?:s|re|ve|ll|d|m)(?!{_A})        # contraction suffixes
    | {_L}(?:\.{_L})+\.                              # e.g. i.e. u.s.a. a.m.
    | (?:{_ABBREV_ANY})\.$
    | (?-i:{_ABBREV_CAPITAL})\.$
    | {_L}\.$                                        # single letters keep their period
    | \d+(?:[.,:]\d+)+                               # 1.5  1,000  10:30 (unit split off)
    | {_L}+(?:\.{_L}+)+                              # apex.there (no space after period)
    | {_A}+(?:[-/&']{_A}+)*                          # words, x-ray, ap/pa, a&p, o'clock
    | </?{_A}+>                                      # SGML-like tags: <xxxx>
    | [^\s\w.,;:!?\-'"`]|_                           # any other symbol on its own
    """,
    re.VERBOSE | re.IGNORECASE,
)
# Contraction suffixes are split off before matching so that "can't" -> "ca n't".
_CONTRACTION_RE = re.compile(rf"(?<={_A})(n't|'(?:s|re|ve|ll|d|m))(?!{_A})", re.IGNORECASE)
# Unicode quotes, dashes and the ellipsis become the ASCII forms PTB normalises them to.
_NORMALISE = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": " -- ", "\u2014": " -- "}
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_BRACKET_CHARS = frozenset(_BRACKETS)
_SIMPLE_TRAIL = frozenset(".,;:!?")
_NON_ASCII_PUNCT = frozenset("\u2018\u2019\u201c\u201d\u2013\u2014\u2026")


def _keeps_period(word: str, chunks: list[str], i: int) -> bool:
    """Whether PTB keeps the period after `word` (chunk i is `word` + ".")."""
    if len(word) == 1:
        return word.isalpha()
    low = word.lower()
    if low in _ABBREV_ANY_SET or word in _ABBREV_CAPITAL_SET:
        return True
    return low in _ABBREV_BEFORE_NUMBER_SET and i + 1 < len(chunks) and chunks[i + 1][:1].isdigit()


def basic_tokenize(text: str) -> list[str]:
    """Tokenise one text the "basic" way (a pure-Python approximation of COCO's PTB step).

    Args:
        text: raw report text.

    Returns:
        Lower-cased tokens, COCO-dropped punctuation removed.
    """
    if not text:
        return []
    if not text.isascii() and any(c in _NON_ASCII_PUNCT for c in text):
        text = text.translate(_NORMALISE).replace("\u2026", "...")
    if "'" in text:
        text = _CONTRACTION_RE.sub(r" \1", text)
    chunks = text.split()
    out: list[str] = []
    # Most chunks are a plain word, or a word with one trailing punctuation mark; only
    # the rest go through the (slower) regular expression.
    for i, chunk in enumerate(chunks):
        if chunk.isalnum():
            out.append(chunk)
            continue
        head = chunk[:-1]
        if chunk[-1] in _SIMPLE_TRAIL and head.isalnum():
            out.append(chunk if chunk[-1] == "." and _keeps_period(head, chunks, i) else head)
            continue
        out.extend(_TOKEN_RE.findall(chunk))
    if not out:
        return out
    # Lower-casing after matching keeps the case-sensitive abbreviation rules above.
    tokens = " ".join(out).lower().split(" ")
    if not _BRACKET_CHARS.isdisjoint(text):
        tokens = [_BRACKETS.get(t, t) for t in tokens]
    return tokens


def whitespace_tokenize(text: str) -> list[str]:
    """Split pre-tokenised text on whitespace ("none" tokeniser).

    Args:
        text: text whose tokens are separated by whitespace.

    Returns:
        The whitespace-separated tokens, unchanged.
    """
    return text.split()


# ---------------------------------------------------------------------------------------
# "ptb": pycocoevalcap's PTBTokenizer
# ---------------------------------------------------------------------------------------


def _pycocoevalcap_dir() -> Path | None:
    """Directory of the installed pycocoevalcap package, found without importing it."""
    try:
        spec = importlib.util.find_spec("pycocoevalcap")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def ptb_jar() -> Path | None:
    """Path of the Stanford CoreNLP 3.4.1 jar shipped in pycocoevalcap, or None."""
    root = _pycocoevalcap_dir()
    if root is None:
        return None
    jar = root / "tokenizer" / PTB_JAR_NAME
    return jar if jar.is_file() else None


def check_tokenizer(name: str) -> str | None:
    """Say why tokeniser `name` cannot run here, or None when it can.

    Args:
        name: one of `TOKENIZERS`.

    Returns:
        None when usable, else a sentence naming what is missing.
    """
    if name not in TOKENIZERS:
        return f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZERS)}"
    if name != "ptb":
        return None
    if _pycocoevalcap_dir() is None:
        return (
            "tokenizer 'ptb' needs pycocoevalcap (pip install pycocoevalcap==1.2) "
            "for its Stanford PTBTokenizer jar"
        )
    if ptb_jar() is None:
        return f"tokenizer 'ptb': {PTB_JAR_NAME} not found in the installed pycocoevalcap"
    if shutil.which("java") is None:
        return "tokenizer 'ptb' needs Java (a `java` executable on PATH), e.g. OpenJDK 11+"
    return None


def ptb_tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Tokenise texts exactly as pycocoevalcap's PTBTokenizer does, in one Java call.

    Args:
        texts: raw report texts.

    Returns:
        One token list per text: PTB tokens, lower-cased, COCO punctuation removed.

    Raises:
        RuntimeError: Java, pycocoevalcap or its jar is missing, or the jar failed.
    """
    reason = check_tokenizer("ptb")
    if reason:
        raise RuntimeError(reason)
    jar = ptb_jar()
    assert jar is not None
    out: list[list[str]] = [[] for _ in texts]
    # A line break inside a text would split it into two PTB lines and shift all later
    # texts; blank texts are kept out because PTB may drop trailing empty lines.
    lines = [" ".join(t.splitlines()) for t in texts]
    todo = [i for i, line in enumerate(lines) if line.strip()]
    if not todo:
        return out
    with tempfile.TemporaryDirectory(prefix="radixpert-ptb-") as tmp:
        path = os.path.join(tmp, "input.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines[i] for i in todo))
        cmd = [
            "java",
            "-cp",
            str(jar),
            "edu.stanford.nlp.process.PTBTokenizer",
            "-preserveLines",
            "-lowerCase",
            "-encoding",
            "utf-8",
            path,
        ]
        proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"PTBTokenizer failed (exit {proc.returncode}): "
            f"{proc.stderr.decode('utf-8', 'replace')[-2000:]}"
        )
    result = proc.stdout.decode("utf-8").split("\n")
    if result and result[-1] == "":
        result.pop()
    if len(result) != len(todo):
        raise RuntimeError(
            f"PTBTokenizer returned {len(result)} lines for {len(todo)} texts; "
            "a text probably contains characters PTB treats as line breaks"
        )
    for i, line in zip(todo, result):
        kept = [w for w in line.rstrip().split(" ") if w not in PTB_PUNCTUATIONS]
        # The COCO metrics split the joined text with str.split(), which also splits on
        # the non-breaking space PTB puts inside "1 1/2"; do the same once, here.
        out[i] = " ".join(kept).split()
    return out


# ---------------------------------------------------------------------------------------
# selection by name
# ---------------------------------------------------------------------------------------

_PER_TEXT: dict[str, Callable[[str], list[str]]] = {
    "basic": basic_tokenize,
    "none": whitespace_tokenize,
}


def tokenize(texts: Sequence[str], name: str = "basic") -> list[list[str]]:
    """Tokenise a batch of texts with the tokeniser called `name`.

    Args:
        texts: raw texts.
        name: "basic" (default), "ptb" or "none".

    Returns:
        One token list per text, in input order.

    Raises:
        ValueError: unknown tokeniser name.
        RuntimeError: "ptb" cannot run here (no Java or pycocoevalcap).
    """
    if name == "ptb":
        return ptb_tokenize(texts)
    try:
        fn = _PER_TEXT[name]
    except KeyError:
        raise ValueError(check_tokenizer(name)) from None
    return [fn(t) if t else [] for t in texts]


def iter_tokenize(texts: Sequence[str], name: str = "basic") -> Iterable[list[str]]:
    """Like `tokenize`, but lazily for the pure-Python tokenisers (saves memory).

    Args:
        texts: raw texts.
        name: "basic", "ptb" or "none".

    Returns:
        An iterable of token lists, in input order ("ptb" returns a list).
    """
    if name == "ptb":
        return ptb_tokenize(texts)
    try:
        fn = _PER_TEXT[name]
    except KeyError:
        raise ValueError(check_tokenizer(name)) from None
    return (fn(t) if t else [] for t in texts)
