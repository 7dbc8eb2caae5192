"""One vocabulary of radiograph views, from every spelling the datasets use.

    normalise_view("antero-posterior")      # "AP"   (MIMIC's ViewCodeSequence_CodeMeaning)
    normalise_view("Frontal")               # "FRONTAL" (CheXpert, IU-Xray: PA or AP unknown)
    normalise_view("AP_horizontal")         # "AP"   (PadChest's Projection)
    normalise_view("nan")                   # ""     (unknown)
    normalise_view("Erect")                 # None   (not a view: the caller counts it)
    is_frontal("PA")                        # True

The vocabulary (``VIEWS``) is MIMIC-CXR's ``ViewPosition``, the most used one, folded where the
difference is a position of the patient rather than a projection:

- ``PA``, ``AP`` (AP axial/lordotic, supine, erect, horizontal-beam AP included), ``FRONTAL``
  (a frontal projection whose direction the publisher does not say);
- ``LATERAL``, ``LL`` (left lateral), ``RL`` (right lateral); cross-table laterals are
  ``LATERAL``;
- ``DECUBITUS`` (AP/PA LLD/RLD: a frontal projection of a patient lying on one side),
  ``OBLIQUE`` (LAO, RAO, LPO, RPO), ``SWIMMERS``, ``OTHER`` (PadChest's ``COSTAL`` rib views and
  the like);
- ``""``: unknown (empty, ``nan``, ``None``, ``UNK``, PadChest's ``EXCLUDE``).

``normalise_view`` returns None for a value that is not a view at all (ReXrank-MIMIC's
``Erect``, an orientation shifted into the view column): readers keep the image with view ""
and count the value, so that nothing is lost silently. The frontal filter (``is_frontal``) takes
PA, AP and FRONTAL; decubitus, oblique and lateral films are not frontal chest radiographs for
report training (a lateral taken for a frontal corrupts frontal-only training, while a dropped
frontal only costs one image).
"""

from __future__ import annotations

import re

VIEWS: tuple[str, ...] = (
    "PA",
    "AP",
    "FRONTAL",
    "LATERAL",
    "LL",
    "RL",
    "DECUBITUS",
    "OBLIQUE",
    "SWIMMERS",
    "OTHER",
    "",
)
"""Every value ``Image.view`` can hold after a reader."""

FRONTAL_VIEWS = frozenset({"PA", "AP", "FRONTAL"})
LATERAL_VIEWS = frozenset({"LATERAL", "LL", "RL"})

# Spellings, after upper-casing, "_"/"-"/"." read as spaces and runs of spaces collapsed.
# Sources: MIMIC-CXR-JPG metadata ViewPosition and ViewCodeSequence_CodeMeaning (PhysioNet
# mimic-cxr-jpg 2.0.0/2.1.0), CheXpert "Frontal/Lateral" and "AP/PA", CheXpert Plus
# frontal_lateral / ap_pa, ReXrank's frontal_lateral lists, IU-Xray (Kaggle projections and the
# DICOM View Position), PadChest's Projection and ViewPosition_DICOM, ReXGradient's
# ImageViewPosition, VinDr-CXR (PA only). docs/data.md lists them per dataset.
_SPELLINGS: dict[str, str] = {
    # frontal, direction known
    "PA": "PA",
    "POSTEROANTERIOR": "PA",
    "POSTERO ANTERIOR": "PA",
    "PA ERECT": "PA",
    "PA AXIAL": "PA",
    "PA UPRIGHT": "PA",
    "AP": "AP",
    "ANTEROPOSTERIOR": "AP",
    "ANTERO POSTERIOR": "AP",
    "AP AXIAL": "AP",
    "AP LORDOTIC": "AP",
    "AP SUPINE": "AP",
    "AP ERECT": "AP",
    "AP UPRIGHT": "AP",
    "AP HORIZONTAL": "AP",
    "AP PORTABLE": "AP",
    "AP SEMI ERECT": "AP",
    # frontal, direction unknown
    "FRONTAL": "FRONTAL",
    "F": "FRONTAL",
    "PA OR AP": "FRONTAL",
    "AP OR PA": "FRONTAL",
    # lateral
    "LATERAL": "LATERAL",
    "LAT": "LATERAL",
    "L": "LATERAL",
    "LARGE LATERAL": "LATERAL",
    "XTABLE LATERAL": "LATERAL",
    "CROSS TABLE LATERAL": "LATERAL",
    "LL": "LL",
    "LEFT LATERAL": "LL",
    "RL": "RL",
    "RIGHT LATERAL": "RL",
    # decubitus (frontal projection, patient on one side)
    "AP LLD": "DECUBITUS",
    "AP RLD": "DECUBITUS",
    "PA LLD": "DECUBITUS",
    "PA RLD": "DECUBITUS",
    "LLD": "DECUBITUS",
    "RLD": "DECUBITUS",
    "DECUBITUS": "DECUBITUS",
    "LEFT LATERAL DECUBITUS": "DECUBITUS",
    "RIGHT LATERAL DECUBITUS": "DECUBITUS",
    # oblique and others
    "LAO": "OBLIQUE",
    "RAO": "OBLIQUE",
    "LPO": "OBLIQUE",
    "RPO": "OBLIQUE",
    "OBLIQUE": "OBLIQUE",
    "SWIMMERS": "SWIMMERS",
    "COSTAL": "OTHER",
    "AP (KUB)": "OTHER",  # ReXGradient: an abdominal film (kidneys, ureters, bladder)
    # unknown
    "": "",
    "NAN": "",
    "NONE": "",
    "NULL": "",
    "UNK": "",
    "UNKNOWN": "",
    "N/A": "",
    "EXCLUDE": "",
}


def _key(text: str) -> str:
    return " ".join(re.sub(r"[_\-.]", " ", text).upper().split())


def normalise_view(text: object) -> str | None:
    """The ``VIEWS`` name of a publisher's view spelling; None when it is not a view.

    Args:
        text: The value as the file has it (a string; None and float NaN, as JSON and pandas
            write missing values, are unknown views).
    """
    if text is None or (isinstance(text, float) and text != text):
        return ""
    return _SPELLINGS.get(_key(str(text)))


def is_frontal(view: str) -> bool:
    """Whether a view (a ``VIEWS`` name, or any spelling ``normalise_view`` knows) is a frontal
    (PA/AP) chest projection; unknown and unrecognised views are not."""
    return normalise_view(view) in FRONTAL_VIEWS


__all__ = ["FRONTAL_VIEWS", "LATERAL_VIEWS", "VIEWS", "is_frontal", "normalise_view"]
