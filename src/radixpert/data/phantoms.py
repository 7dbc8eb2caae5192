"""Synthetic chest radiograph phantoms with known ground truth: image, boxes, labels, report.

The project's stand-in for real chest X-rays on machines without them, and the data of the
demo and of the training tests. Every phantom is a frontal (PA, sometimes AP) radiograph
drawn with vectorised numpy: body outline and soft tissue, two lungs with vascular markings,
mediastinum, trachea, heart (its width sets the cardiothoracic ratio), diaphragm domes with a
gastric bubble, posterior ribs, clavicles, then blur and noise. Findings are drawn on top,
each with a `Box` in 0–1 coordinates and a CheXpert label: Cardiomegaly, Pleural Effusion,
Pneumothorax, Consolidation, Lung Lesion and Support Devices. A report (findings +
impression, with varied wording and explicit negations of some absent findings) agrees with
the image and the labels. Everything is deterministic by seed.

Usage::

    from radixpert.data.phantoms import generate_phantom, generate_phantoms
    pixels, truth = generate_phantom(7)                       # uint8 (256, 256), PhantomTruth
    pixels, truth = generate_phantom(7, findings={"Pneumothorax": {"side": "left"}})
    studies = generate_phantoms(1000, "out/phantoms")         # images/*.png + studies.jsonl

    python -m radixpert.data.phantoms --n 1000 --out out/phantoms [--size 256] [--seed 0]

Image orientation is the radiological convention: the patient's right is on the image left.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import logging
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radixpert.data.study import Box, Image, Study, write_studies
from radixpert.io import write_bytes
from radixpert.vocab import OBSERVATIONS

logger = logging.getLogger(__name__)

__all__ = [
    "FINDINGS",
    "NEGATION_CUES",
    "OBSERVATION_KEYWORDS",
    "PREVALENCE",
    "PhantomTruth",
    "generate_phantom",
    "generate_phantoms",
    "main",
    "phantom_seed",
]

# Findings a phantom can show, with the share of studies that show each (chosen independently,
# so about 40% of phantoms have none, roughly like an inpatient chest X-ray worklist).
PREVALENCE: dict[str, float] = {
    "Support Devices": 0.25,
    "Pleural Effusion": 0.20,
    "Cardiomegaly": 0.15,
    "Consolidation": 0.12,
    "Lung Lesion": 0.08,
    "Pneumothorax": 0.06,
}
FINDINGS = tuple(PREVALENCE)

# Lower-case substrings by which each observation is mentioned in a phantom report; the tests
# (and anyone auditing the labels) use them: a 1 or 0 label is mentioned, a None one is not.
OBSERVATION_KEYWORDS: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("cardiomegaly", "heart", "cardiac", "cardiomediastinal"),
    "Enlarged Cardiomediastinum": ("mediastin",),
    "Pleural Effusion": ("effusion",),
    "Pneumothorax": ("pneumothorax",),
    "Consolidation": ("consolidation",),
    "Lung Lesion": ("nodule", "mass"),
    "Support Devices": ("tube", "catheter"),
    "Fracture": ("fracture",),
}
# A sentence that negates what it mentions contains one of these words (positive sentences
# never do), so the negation of each 0 label can be checked from the text alone.
NEGATION_CUES = re.compile(r"\b(no|normal|without|unremarkable)\b", re.IGNORECASE)

SIDES = ("right", "left")  # the patient's sides; "right" is drawn on the image left
SIZES = ("small", "moderate", "large")
# Lobe-like zones: (side, distance from the midline, height), in 0–1 image units.
ZONES: dict[str, tuple[str, float, float]] = {
    "right upper lobe": ("right", 0.21, 0.27),
    "right middle lobe": ("right", 0.17, 0.52),
    "right lower lobe": ("right", 0.24, 0.64),
    "left upper lobe": ("left", 0.22, 0.29),
    "lingula": ("left", 0.26, 0.52),
    "left lower lobe": ("left", 0.27, 0.66),
}
DEVICES = ("endotracheal tube", "central venous catheter", "enteric tube")
CM_PER_UNIT = 38.0  # 1.0 image width is about 38 cm of patient: a 30 cm chest fills ~0.78


@dataclass
class PhantomTruth:
    """What a phantom shows: CheXpert labels, boxes, the report, and the drawing parameters.

    Attributes:
        labels: all 14 CheXpert observations: 1 drawn, 0 drawn absent and negated in the
            report, None not mentioned. "No Finding" follows the CheXpert rule.
        boxes: one `Box` (0–1 coordinates) per drawn finding; a device has one per device.
        findings: the report's findings section.
        impression: the report's impression section.
        indication: why the study was ordered.
        view: "PA" or "AP".
        ctr: the drawn cardiothoracic ratio.
        spec: the drawn findings with all their parameters (JSON-serialisable), accepted
            back by `generate_phantom(seed, findings=spec)`.
    """

    labels: dict[str, int | None]
    boxes: list[Box]
    findings: str
    impression: str
    indication: str
    view: str
    ctr: float
    spec: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers


def _rng(seed: int, *stream: int) -> np.random.Generator:
    # Separate streams for anatomy, finding choice, each finding's geometry, noise and text,
    # so that adding a finding to a seed leaves everything else identical (the tests rely on
    # it: a finding's pixels are the difference against the same seed without it).
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, *stream])


def phantom_seed(seed: int, index: int) -> int:
    """The `generate_phantom` seed of phantom `index` in a set generated with `seed`."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, index]).generate_state(1)[0])


def _ramp(v: np.ndarray, w: float) -> np.ndarray:
    """Soft step 0 -> 1 as `v` crosses 0, over a width `w` (anti-aliased edges)."""
    v = v * (1.0 / w)  # a new array: `v` may be a caller's array or a broadcast view
    v += 0.5
    return np.clip(v, 0.0, 1.0, out=v)


def _pow(v: np.ndarray, k: int) -> np.ndarray:
    """`v ** k` for a small even k by in-place squaring (float32 `**` calls the slow pow)."""
    out = v * v
    if k == 2:
        return out
    if k == 6:
        sq = out.copy()
        out *= out
        out *= sq
        return out
    if k == 12:
        out *= v * v * v * v
        out *= out
        return out
    raise ValueError(k)


def _win(n: int, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice]:
    """Row and column slices of the 0–1 box (x0, y0, x1, y1) in an n x n image.

    Small structures are drawn only inside their window: most of the drawing time is
    whole-image array operations, and a window is a fraction of the image.
    """
    return (
        slice(max(0, int(y0 * n)), min(n, math.ceil(y1 * n))),
        slice(max(0, int(x0 * n)), min(n, math.ceil(x1 * n))),
    )


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (numpy only: scipy is not a dependency)."""
    r = max(1, math.ceil(2.5 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    p = np.pad(img, r, mode="edge")
    h, w = img.shape
    rows = k[0] * p[:, 0:w]
    for i in range(1, 2 * r + 1):  # 2r+1 shifted adds, each one whole-array operation
        rows += k[i] * p[:, i : i + w]
    out = k[0] * rows[0:h]
    for i in range(1, 2 * r + 1):
        out += k[i] * rows[i : i + h]
    return out


def _bbox(mask: np.ndarray, pad: int = 0) -> tuple[float, float, float, float] | None:
    """Tight 0–1 box (x1, y1, x2, y2) around the true pixels of `mask`, or None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (
        max(0, cols[0] - pad) / w,
        max(0, rows[0] - pad) / h,
        min(w, cols[-1] + 1 + pad) / w,
        min(h, rows[-1] + 1 + pad) / h,
    )


def _box(label: str, xyxy: tuple[float, float, float, float], phrase: str) -> Box:
    x1, y1, x2, y2 = (round(min(1.0, max(0.0, float(v))), 4) for v in xyxy)
    return Box(label, x1, y1, x2, y2, phrase=phrase)


# ----------------------------------------------------------------------------- findings spec


def _as_params(value: Any) -> dict[str, Any] | None:
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, dict):
        return dict(value)
    raise ValueError(f"finding parameters must be True, False, None or a dict, got {value!r}")


def _resolve_findings(seed: int, findings: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Which findings to draw, with every parameter filled in (random but seeded)."""
    if findings is None:
        choose = _rng(seed, 1)
        draws = choose.random(len(FINDINGS))
        wanted: dict[str, Any] = {
            name: {} for name, u in zip(FINDINGS, draws) if u < PREVALENCE[name]
        }
    else:
        unknown = set(findings) - set(FINDINGS)
        if unknown:
            raise ValueError(
                f"unknown finding(s) {sorted(unknown)}; phantoms draw {', '.join(FINDINGS)}"
            )
        wanted = {k: p for k, v in findings.items() if (p := _as_params(v)) is not None}
    spec: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(FINDINGS):
        if name not in wanted:
            continue
        p = wanted[name]
        r = _rng(seed, 2, i, 0)  # parameter stream per finding; geometry uses (2, i, 1)
        if name == "Cardiomegaly":
            p.setdefault("ctr", round(float(r.uniform(0.55, 0.68)), 3))
        elif name in ("Pleural Effusion", "Pneumothorax"):
            p.setdefault("side", SIDES[int(r.integers(2))])
            p.setdefault("size", SIZES[int(r.choice(3, p=[0.5, 0.35, 0.15]))])
        elif name == "Consolidation":
            p.setdefault("zone", list(ZONES)[int(r.integers(len(ZONES)))])
            p.setdefault("size", SIZES[int(r.choice(3, p=[0.4, 0.4, 0.2]))])
        elif name == "Lung Lesion":
            p.setdefault("zone", list(ZONES)[int(r.integers(len(ZONES)))])
            # Log-uniform diameter: mostly nodules (< 3 cm), sometimes a mass.
            p.setdefault("diameter_cm", round(float(math.exp(r.uniform(-0.2, 1.55))), 1))
        elif name == "Support Devices" and "devices" not in p:
            picks = [d for d, q in zip(DEVICES, (0.5, 0.6, 0.35)) if r.random() < q]
            p["devices"] = picks or [DEVICES[int(r.integers(len(DEVICES)))]]
        _check_params(name, p)
        spec[name] = p
    return spec


def _check_params(name: str, p: dict[str, Any]) -> None:
    if p.get("side", "right") not in SIDES:
        raise ValueError(f"{name}: side must be one of {SIDES}, got {p['side']!r}")
    if p.get("size", "small") not in SIZES:
        raise ValueError(f"{name}: size must be one of {SIZES}, got {p['size']!r}")
    if p.get("zone", "lingula") not in ZONES:
        raise ValueError(f"{name}: zone must be one of {list(ZONES)}, got {p['zone']!r}")
    for d in p.get("devices", []):
        if d not in DEVICES:
            raise ValueError(f"{name}: device must be one of {DEVICES}, got {d!r}")
    if name == "Cardiomegaly" and not 0.5 < float(p["ctr"]) < 0.8:
        raise ValueError(f"Cardiomegaly: ctr must be in (0.5, 0.8), got {p['ctr']!r}")


# ----------------------------------------------------------------------------- drawing


def _draw(
    seed: int,
    size: int,
    spec: dict[str, dict[str, Any]],
    truth_boxes: list[tuple[str, Any]],
    min_px: float = 0.0,
    contrast: float = 1.0,
) -> tuple[np.ndarray, float]:
    """Density image (float32, ~0–1, bright = dense) and the drawn CTR; appends boxes.

    `min_px` and `contrast` are the opt-in conspicuity options of `generate_phantom`; at their
    defaults (0 and 1) the drawing is exactly the standard one.
    """
    n = size
    x = ((np.arange(n, dtype=np.float32) + 0.5) / n)[None, :]
    y = ((np.arange(n, dtype=np.float32) + 0.5) / n)[:, None]
    d = x - 0.5
    # Edge softness: 1.6 px (anti-aliasing), but at least 0.4% of the image, so that large
    # images look like the same radiograph rather than a sharper cartoon.
    w = max(1.6 / n, 0.004)

    an = _rng(seed, 0)
    scale = float(an.uniform(0.94, 1.04))  # habitus: thoracic width
    dome_r = float(an.uniform(0.62, 0.66))
    dome_l = dome_r + float(an.uniform(0.01, 0.04))  # the left dome sits lower
    ctr = float(an.uniform(0.4, 0.48))  # drawn always, so the later draws never shift
    if "Cardiomegaly" in spec:
        ctr = float(spec["Cardiomegaly"]["ctr"])
    rib_phase = float(an.uniform(-0.01, 0.01))
    vessel_kind = int(an.integers(_VESSEL_KINDS))
    tilt = float(an.uniform(-0.01, 0.01))  # slight patient rotation shifts the midline
    a = np.abs(d - tilt)  # distance from the patient's midline
    right = (d - tilt) < 0  # the patient's right, on the image left

    # Chest wall (inner rib margin) half-width widens from the apices to the bases.
    hw = (0.39 * scale) * (1.0 - np.exp(-np.maximum(y - 0.06, 0.0) / 0.11))
    hw_max = 0.39 * scale * (1.0 - math.exp(-(0.7 - 0.06) / 0.11))
    body_w = 0.13 + (0.36 * scale) * np.clip((y - 0.02) / 0.13, 0, 1) ** 0.6
    body = _ramp(body_w - a, 2 * w)

    med = np.where(right, 0.05, 0.058).astype(np.float32)  # mediastinal border
    apex = 0.085 + 1.1 * (a - 0.24) ** 2
    peak = np.where(right, dome_r, dome_l).astype(np.float32)
    k = np.where(a > 0.2, 4.0 / scale**2, 1.5).astype(np.float32)
    dia = peak + k * (a - 0.2) ** 2  # diaphragm domes, deepest at the costophrenic angles

    t_lat = _ramp(hw - a, w)
    t_apex = _ramp(y - apex, w)
    t_rest = _ramp(a - med, w) * _ramp(dia - y, w)
    lung = t_lat * t_apex * t_rest

    # Heart: an ellipse two-thirds to the patient's left; its width is CTR x thoracic width.
    wh = ctr * 2 * hw_max
    # Long axis tilted ~35 degrees: the apex points down and to the patient's left.
    hcx, hcy, ang = 0.5 + tilt + 0.16 * wh, 0.63, math.radians(-35)
    ca, sa = math.cos(ang), math.sin(ang)
    ratio = 0.72  # short / long semi-axis
    hrx = wh / 2 / math.sqrt(ca * ca + ratio * ratio * sa * sa)  # long semi-axis
    hry = hrx * ratio
    half_h = math.sqrt((hrx * sa) ** 2 + (hry * ca) ** 2)  # vertical half-extent
    hwin = _win(n, hcx - wh / 2 - 2 * w, hcy - half_h - 2 * w, hcx + wh / 2 + 2 * w, 1.0)
    hx_, hy_ = x[:, hwin[1]] - hcx, y[hwin[0]] - hcy
    u = (hx_ * ca - hy_ * sa) / hrx
    v = (hx_ * sa + hy_ * ca) / hry
    heart = np.zeros((n, n), np.float32)
    heart[hwin] = _ramp((1.0 - (u * u + v * v)) * (hry / 2), w)
    lung[hwin] *= 1.0 - heart[hwin]
    if "Cardiomegaly" in spec:
        truth_boxes.append(
            ("Cardiomegaly", (hcx - wh / 2, hcy - half_h, hcx + wh / 2, hcy + half_h))
        )

    dens = 0.05 + 0.45 * body
    dens += 0.07 * _ramp(a - hw - 0.01, 0.05) * body  # chest wall seen tangentially
    marking_mask = lung.copy()

    # Findings that change the lungs themselves, before the lung is subtracted.
    lung_air = lung.copy()
    for name in ("Pleural Effusion", "Pneumothorax", "Consolidation"):
        if name not in spec:
            continue
        p = spec[name]
        if name == "Pleural Effusion":
            side_mask = right if p["side"] == "right" else ~right
            h = {"small": 0.09, "moderate": 0.19, "large": 0.32}[p["size"]]
            # Meniscus: the fluid level climbs laterally along the chest wall.
            base = (dome_r if p["side"] == "right" else dome_l) + 0.1
            level = base - h * (0.72 + 0.28 * np.exp(-(hw - a) / 0.05))  # concave meniscus
            fluid = lung * side_mask * _ramp(y - level, 0.02)
            lung_air -= 0.92 * fluid
            marking_mask *= 1.0 - fluid
            bb = _bbox(fluid > 0.25)
            if bb:
                truth_boxes.append((name, bb))
        elif name == "Pneumothorax":
            side_mask = right if p["side"] == "right" else ~right
            g0 = {"small": 0.03, "moderate": 0.055, "large": 0.09}[p["size"]]
            if min_px > 0:
                g0 = max(g0, min_px / n)  # the widest gap is at least min_px pixels
            ext = {"small": 0.22, "moderate": 0.4, "large": 0.62}[p["size"]]
            gap = g0 * np.clip(1.25 - (y - 0.1) / ext, 0.0, 1.0)
            s_lat = _ramp(hw - gap - a, w)
            # The apex drops away from the dome of the pleura, least so near the mediastinum.
            s_apex = _ramp(y - apex - 0.8 * g0 * np.clip((a - 0.08) / 0.12, 0, 1), w)
            collapsed = s_lat * s_apex * t_rest * (1.0 - heart)
            space = np.clip(lung - collapsed, 0, 1) * side_mask
            marking_mask *= 1.0 - space
            # No lung tissue there: blacker than lung.
            lung_air += (0.4 if contrast == 1.0 else min(1.0, 0.4 * contrast)) * space
            # The line runs only where the lung has fallen away from the wall (gap > 0).
            edge = 4 * s_lat * (1 - s_lat) * np.clip(gap / (2 * w), 0, 1)
            edge += 4 * s_apex * (1 - s_apex)
            line = 0.22 if contrast == 1.0 else 0.22 * contrast
            dens += line * np.clip(edge, 0, 1) * lung * side_mask  # the visceral pleural line
            bb = _bbox(space > 0.5, pad=1)
            if bb:
                truth_boxes.append((name, bb))
        else:  # Consolidation
            side, za, zy = ZONES[p["zone"]]
            r = _rng(seed, 2, FINDINGS.index(name), 1)
            sgn = -1.0 if side == "right" else 1.0
            s = {"small": 0.035, "moderate": 0.055, "large": 0.08}[p["size"]]
            field_ = np.zeros((n, n), np.float32)
            for _ in range(int(r.integers(3, 6))):  # a handful of lobules, not pixels
                cx = 0.5 + tilt + sgn * (za + r.uniform(-0.04, 0.04))
                cy = zy + r.uniform(-0.05, 0.05)
                sg = s * r.uniform(0.6, 1.1)
                field_ += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sg * sg))
            opac = np.clip(field_ * 1.8 - 0.3, 0, 1) * lung
            # Air bronchograms: thin dark branches kept inside the opacity.
            theta = np.arctan2(y - 0.42, x - (0.5 + tilt + sgn * 0.08))
            bron = np.cos(theta * 40 + 5 * np.sin(12 * np.hypot(x - 0.5, y - 0.42))) ** 30
            lung_air -= 0.85 * opac * (1 - 0.35 * bron)
            bb = _bbox(opac > 0.3)
            if bb:
                truth_boxes.append((name, bb))

    # Overlying soft tissue makes the lung bases and edges less black than the mid zones.
    dens -= (0.33 - 0.1 * y) * lung_air
    # Vascular markings: one of a bank of textures (cached per size), moved with the midline.
    rs = _win(n, 0, _VESSEL_ROWS[0], 1, _VESSEL_ROWS[1])[0]
    ves = _vessels(n, vessel_kind)
    shift = round(tilt * n)
    if shift:
        ves = np.roll(ves, shift, axis=1)  # wrapped columns lie outside the lungs (masked)
    dens[rs] += ves * marking_mask[rs]

    # Mediastinum, spine, trachea, aortic knob, heart.
    dens += 0.08 * _ramp(med - a, 3 * w) * body + 0.06 * np.exp(-(((d - tilt) / 0.03) ** 2))
    rs, cs = _win(n, 0.44 + tilt, 0.0, 0.56 + tilt, 0.37)
    trachea = np.exp(-(((d[:, cs] - tilt) / 0.013) ** 2)) * _ramp(0.34 - y[rs], 0.03)
    dens[rs, cs] -= 0.14 * trachea * _ramp(y[rs] - 0.03, 0.03)
    kx, ky = 0.56 + tilt, 0.3  # aortic knob
    rs, cs = _win(n, kx - 0.04, ky - 0.04, kx + 0.04, ky + 0.04)
    dens[rs, cs] += 0.06 * _ramp(0.035 - np.hypot(x[:, cs] - kx, y[rs] - ky), w)
    # The heart's lower half sinks into the abdomen's density below the domes.
    dens[hwin] += 0.09 * heart[hwin] * _ramp(dia[:, hwin[1]] + 0.02 - y[hwin[0]], 0.04)
    # Gastric bubble under the left dome.
    bx, by = 0.66 + tilt, dome_l + 0.06
    rs, cs = _win(n, bx - 0.06, by - 0.035, bx + 0.06, by + 0.035)
    eb = ((x[:, cs] - bx) / 0.055) ** 2 + ((y[rs] - by) / 0.03) ** 2
    dens[rs, cs] -= 0.12 * _ramp((1 - eb) * 0.03, w) * _ramp(y[rs] - dome_l - 0.045, w)

    # Posterior ribs: periodic bands along curves that rise from the spine and fall laterally.
    spacing = 0.072 * scale
    curve = y - (-0.22 * a + 1.5 * a * a) - 0.095 - rib_phase
    ph = curve / spacing
    frac = ph - np.floor(ph) - 0.5
    band = np.exp(-((frac * spacing / 0.013) ** 2))
    within = _ramp(hw + 0.03 - a, 3 * w) * _ramp(a - 0.035, 3 * w) * _ramp(ph, 0.4)
    within *= _ramp(9.3 - ph, 0.4)
    within *= 0.55 + 0.45 * _ramp(dia + 0.03 - y, 0.06)  # fainter through the abdomen
    dens += 0.08 * band * within
    # Anterior ribs: fainter, curving down towards the midline.
    ph2 = (y + 0.5 * a - 0.2) / (spacing * 0.9)
    f2 = ph2 - np.floor(ph2) - 0.5
    dens += 0.035 * np.exp(-((f2 * spacing / 0.01) ** 2)) * within * _ramp(a - 0.1, 0.05)
    # Clavicles: S-shaped bright bars from the sternal notch to the shoulders.
    yc = 0.17 - 0.28 * (a - 0.04) + 0.45 * (a - 0.04) ** 2 + 0.02 * np.sin(a * 14)
    rs = _win(n, 0, 0.04, 1, 0.24)[0]
    clav = np.exp(-(((y[rs] - yc) / 0.013) ** 2)) * (_ramp(a - 0.045, w) * _ramp(0.36 - a, 0.04))
    dens[rs] += 0.16 * clav

    # Findings drawn over everything else.
    if "Lung Lesion" in spec:
        p = spec["Lung Lesion"]
        side, za, zy = ZONES[p["zone"]]
        r = _rng(seed, 2, FINDINGS.index("Lung Lesion"), 1)
        sgn = -1.0 if side == "right" else 1.0
        rad = float(p["diameter_cm"]) / CM_PER_UNIT / 2
        if min_px > 0:
            rad = max(rad, min_px / n / 2)  # drawn at least min_px pixels across
        cx = 0.5 + tilt + sgn * (za + r.uniform(-0.03, 0.03))
        cy = zy + r.uniform(-0.03, 0.03)
        m = rad * 1.1 + w
        rs, cs = _win(n, cx - m - w, cy - m - w, cx + m + w, cy + m + w)
        lx, ly = x[:, cs] - cx, y[rs] - cy
        dist = np.sqrt(lx**2 + ly**2)
        lobulated = rad * (1 + 0.08 * np.cos(5 * np.arctan2(ly, lx) + r.uniform(0, 6)))
        nodule = 0.2 if contrast == 1.0 else 0.2 * contrast
        dens[rs, cs] += nodule * _ramp(lobulated - dist, max(w, 0.15 * rad))
        truth_boxes.append(("Lung Lesion", (cx - m, cy - m, cx + m, cy + m)))
    if "Support Devices" in spec:
        for dev in spec["Support Devices"]["devices"]:
            tube_y = np.linspace(0, 1, 256, dtype=np.float32)
            if dev == "endotracheal tube":
                y0, y1, wd = 0.0, 0.26, 0.0045
                fx = 0.5 + tilt + 0.006 * np.sin(tube_y * 9)
                fxi = 0.5 + tilt + 0.006 * np.sin(y * 9)
            elif dev == "central venous catheter":
                # Right internal jugular: down the neck, then medially into the SVC.
                y0, y1, wd = 0.0, 0.43, 0.0028
                fx = 0.405 + tilt + 0.06 * np.clip(tube_y / 0.4, 0, 1) ** 2
                fxi = 0.405 + tilt + 0.06 * np.clip(y / 0.4, 0, 1) ** 2
            else:  # enteric tube: midline oesophagus, then into the stomach under the left dome
                y0, y1, wd = 0.0, dome_l + 0.1, 0.0035
                fx = 0.495 + tilt + 0.17 * np.clip((tube_y - dome_l + 0.03) / 0.13, 0, 1) ** 1.5
                fxi = 0.495 + tilt + 0.17 * np.clip((y - dome_l + 0.03) / 0.13, 0, 1) ** 1.5
            # x = f(y) curves: one exp over the image per device, no polyline distance maps.
            wd = max(wd, 0.9 / n)
            seg = fx[(tube_y >= y0) & (tube_y <= y1)]
            m = 2 * wd + w
            rs, cs = _win(n, seg.min() - 2 * m, y0, seg.max() + 2 * m, y1 + w)
            along = _ramp(y[rs] - y0, w) * _ramp(y1 - y[rs], w)
            dens[rs, cs] += 0.3 * np.exp(-(((x[:, cs] - fxi[rs]) / wd) ** 2)) * along
            truth_boxes.append((f"Support Devices:{dev}", (seg.min() - m, y0, seg.max() + m, y1)))
    return dens.astype(np.float32, copy=False), ctr


_VESSEL_KINDS = 16
_VESSEL_ROWS = (0.06, 0.86)  # the rows that can hold lung


@functools.lru_cache(maxsize=2 * _VESSEL_KINDS)
def _vessels(n: int, kind: int) -> np.ndarray:
    """Vascular marking texture number `kind` for an n x n image (rows `_VESSEL_ROWS`).

    Branching vessels radiate from each hilum and thin outwards. The trigonometry is the
    costliest part of a phantom, so a bank of `_VESSEL_KINDS` textures is computed once per
    size; lung shape, tilt and findings still make every phantom's markings different.
    """
    phase = 2 * math.pi * kind / _VESSEL_KINDS
    rs = _win(n, 0, _VESSEL_ROWS[0], 1, _VESSEL_ROWS[1])[0]
    x = ((np.arange(n, dtype=np.float32) + 0.5) / n)[None, :]
    y = ((np.arange(n, dtype=np.float32) + 0.5) / n)[rs, None]
    hx = np.where(x < 0.5, 0.41, 0.59).astype(np.float32)
    yv = y - 0.45
    rh = np.sqrt((x - hx) ** 2 + yv**2)
    th = np.arctan2(yv, x - hx)
    ves = _pow(0.5 + 0.5 * np.cos(th * 17 + 2.5 * np.sin(rh * 26 + phase)), 6)
    # Break the spokes into branching segments with a second, differently warped pattern.
    ves *= 0.35 + 0.65 * _pow(0.5 + 0.5 * np.cos(th * 9 - rh * 55 + phase), 2)
    ves += 0.6 * _pow(0.5 + 0.5 * np.cos(th * 31 + 4.0 * np.sin(rh * 17 - phase)), 12)
    ves *= np.exp(-rh / 0.13)
    ves *= 0.13
    ves += 0.1 * np.exp(-((rh / 0.045) ** 2))  # hilar vessels
    ves.flags.writeable = False  # shared by every phantom of this size and kind
    return ves


_DISPLAY_LUT = (np.linspace(0.0, 1.0, 4096) ** 0.85 * 255.0 + 0.5).astype(np.uint8)


def _render(
    seed: int,
    size: int,
    spec: dict[str, dict[str, Any]],
    min_px: float = 0.0,
    contrast: float = 1.0,
) -> tuple[np.ndarray, list[tuple[str, Any]], float]:
    """Pixels (uint8), the drawn (label, 0–1 box) pairs and the drawn CTR."""
    boxes: list[tuple[str, Any]] = []
    dens, ctr = _draw(seed, size, spec, boxes, min_px, contrast)
    noise = _rng(seed, 3)
    img = _blur(dens, 0.8 * size / 256)
    # Uniform noise of the same spread as N(0, 0.012): a quarter of the cost of normal draws,
    # and no eye can tell the two apart once quantised to 8 bits.
    grain = noise.random(img.shape, dtype=np.float32)
    grain -= 0.5
    grain *= 0.012 * math.sqrt(12.0)
    img += grain
    # Display curve: slight gamma lifts the soft tissue as on a processed radiograph; a
    # 12-bit lookup table instead of a float power over every pixel.
    np.clip(img, 0.0, 1.0, out=img)
    img *= 4095.0
    img += 0.5
    out = _DISPLAY_LUT[img.astype(np.uint16)]
    return out, boxes, ctr


# ----------------------------------------------------------------------------- report text

_INDICATIONS = (
    "Cough and fever.",
    "Shortness of breath.",
    "Chest pain.",
    "Preoperative evaluation.",
    "Follow-up.",
    "Dyspnea, evaluate for acute process.",
    "Hypoxia.",
    "Fall, chest wall pain.",
)
_SIZE_WORDS = {
    "small": ("small", "small", "trace"),
    "moderate": ("moderate", "moderate-sized", "medium"),
    "large": ("large", "large", "sizable"),
}
_CTR_WORDS = (("mild", "mildly"), ("moderate", "moderately"), ("marked", "markedly"))


def _cm(diameter: float) -> str:
    return f"{diameter:.1f} cm" if diameter < 1 or diameter % 1 else f"{diameter:.0f} cm"


def _write_report(
    spec: dict[str, dict[str, Any]], ctr: float, view: str, r: np.random.Generator
) -> tuple[str, str, str, dict[str, int | None]]:
    """Findings, impression, indication and labels for the drawn `spec` (seeded wording)."""

    def pick(options: Sequence[str]) -> str:
        return options[int(r.integers(len(options)))]

    labels: dict[str, int | None] = {o: None for o in OBSERVATIONS}
    findings: list[str] = []
    impression: list[str] = []

    if "Support Devices" in spec:
        labels["Support Devices"] = 1
        for dev in spec["Support Devices"]["devices"]:
            if dev == "endotracheal tube":
                cm = f"{r.uniform(3.5, 5.5):.1f}"
                findings.append(
                    pick(
                        (
                            f"Endotracheal tube terminates {cm} cm above the carina.",
                            f"An endotracheal tube is in place, tip {cm} cm above the carina.",
                            "The endotracheal tube is in satisfactory position.",
                        )
                    )
                )
            elif dev == "central venous catheter":
                findings.append(
                    pick(
                        (
                            "Right internal jugular central venous catheter terminates in the "
                            "superior vena cava.",
                            "A right IJ catheter is seen with its tip in the mid SVC.",
                            "Right-sided central venous catheter with tip in the low SVC.",
                        )
                    )
                )
            else:
                findings.append(
                    pick(
                        (
                            "An enteric tube courses below the diaphragm, tip in the stomach.",
                            "Nasogastric tube tip projects over the stomach.",
                            "Feeding tube extends into the stomach.",
                        )
                    )
                )
        impression.append(
            pick(("Support devices as above.", "Tubes and lines in expected position."))
        )

    if "Cardiomegaly" in spec:
        labels["Cardiomegaly"] = 1
        adj, adv = _CTR_WORDS[0 if ctr < 0.58 else 1 if ctr < 0.63 else 2]
        findings.append(
            pick(
                (
                    f"The heart is {adv} enlarged.",
                    f"{adj.capitalize()} cardiomegaly.",
                    f"The cardiac silhouette is {adv} enlarged (cardiothoracic ratio {ctr:.2f}).",
                    f"There is {adj} enlargement of the cardiac silhouette.",
                )
            )
        )
        impression.append(pick((f"{adj.capitalize()} cardiomegaly.", "Cardiomegaly.")))
    elif r.random() < 0.75:
        s = pick(
            (
                ("Heart size is normal.", ()),
                ("The cardiac silhouette is within normal limits.", ()),
                ("Normal heart size.", ()),
                ("The cardiomediastinal silhouette is normal.", ("Enlarged Cardiomediastinum",)),
                ("Heart and mediastinum are unremarkable.", ("Enlarged Cardiomediastinum",)),
            )
        )  # type: ignore[arg-type]
        findings.append(s[0])
        labels["Cardiomegaly"] = 0
        for o in s[1]:
            labels[o] = 0

    lung_pos = False
    if "Consolidation" in spec:
        p = spec["Consolidation"]
        labels["Consolidation"] = 1
        lung_pos = True
        zone = p["zone"]
        sz = {
            "small": ("small", "focal"),
            "moderate": ("patchy", "moderate"),
            "large": ("extensive", "large", "dense"),
        }[p["size"]]
        word = pick(sz)
        findings.append(
            pick(
                (
                    f"There is {word} consolidation in the {zone}.",
                    f"{word.capitalize()} airspace consolidation in the {zone}.",
                    f"A {word} area of consolidation is seen in the {zone}.",
                    f"{word.capitalize()} consolidation with air bronchograms in the {zone}.",
                )
            )
        )
        impression.append(pick((f"{zone.capitalize()} consolidation.", f"Consolidation, {zone}.")))
    if "Lung Lesion" in spec:
        p = spec["Lung Lesion"]
        labels["Lung Lesion"] = 1
        lung_pos = True
        cm = _cm(float(p["diameter_cm"]))
        zone = p["zone"]
        if float(p["diameter_cm"]) > 3.0:
            noun, adj = "mass", pick(("", "lobulated ", "rounded "))
        else:
            noun, adj = (
                pick(("nodule", "pulmonary nodule")),
                pick(
                    ("", "well-circumscribed ", "small " if float(p["diameter_cm"]) < 1.2 else "")
                ),
            )
        findings.append(
            pick(
                (
                    f"A {cm} {adj}{noun} is seen in the {zone}.",
                    f"There is a {adj}{cm} {noun} projecting over the {zone}.",
                    f"{(adj + noun).capitalize()} in the {zone} measuring {cm}.",
                )
            )
        )
        impression.append(
            pick(
                (
                    f"{cm.capitalize()} {noun} in the {zone}; CT recommended.",
                    f"{zone.capitalize()} {noun}.",
                )
            )
        )
    if "Pneumothorax" in spec:
        p = spec["Pneumothorax"]
        labels["Pneumothorax"] = 1
        sw = pick(_SIZE_WORDS[p["size"]][:2])
        side = p["side"]
        where = "apical" if p["size"] == "small" else "apicolateral"
        findings.append(
            pick(
                (
                    f"{sw.capitalize()} {side}-sided pneumothorax with a visible pleural line.",
                    f"There is a {sw} {side} {where} pneumothorax.",
                    f"{side.capitalize()} pneumothorax, {p['size']} in size.",
                    f"A {side} {where} pleural line is seen, consistent with a {sw} pneumothorax.",
                )
            )
        )
        impression.append(
            pick((f"{sw.capitalize()} {side} pneumothorax.", f"{side.capitalize()} pneumothorax."))
        )
    if "Pleural Effusion" in spec:
        p = spec["Pleural Effusion"]
        labels["Pleural Effusion"] = 1
        sw = pick(_SIZE_WORDS[p["size"]])
        side = p["side"]
        findings.append(
            pick(
                (
                    f"{sw.capitalize()} {side} pleural effusion.",
                    f"There is a {sw} {side}-sided pleural effusion with blunting of the "
                    "costophrenic angle.",
                    f"{side.capitalize()} pleural effusion, {sw}.",
                    f"A {sw} {side} effusion layers at the lung base with a meniscus.",
                )
            )
        )
        impression.append(
            pick((f"{sw.capitalize()} {side} pleural effusion.", f"{side.capitalize()} effusion."))
        )

    # Explicit negations of some absent findings (each one sets a 0 label).
    clear = not (lung_pos or "Pleural Effusion" in spec or "Pneumothorax" in spec)
    if clear and r.random() < 0.7:
        findings.append(pick(("The lungs are clear.", "Lungs are well expanded and clear.")))
    if "Consolidation" not in spec and r.random() < 0.6:
        findings.append(
            pick(
                (
                    "No focal consolidation.",
                    "There is no focal consolidation.",
                    "The lungs are without focal consolidation.",
                )
            )
        )
        labels["Consolidation"] = 0
    if "Lung Lesion" not in spec and r.random() < 0.3:
        findings.append(pick(("No pulmonary nodules or masses.", "No suspicious nodule or mass.")))
        labels["Lung Lesion"] = 0
    eff, ptx = "Pleural Effusion" in spec, "Pneumothorax" in spec
    u = r.random()
    if not eff and not ptx and u < 0.7:
        findings.append(
            pick(
                (
                    "No pleural effusion or pneumothorax.",
                    "There is no effusion or pneumothorax.",
                    "No pneumothorax or pleural effusion.",
                )
            )
        )
        labels["Pleural Effusion"] = labels["Pneumothorax"] = 0
    elif not eff and u < 0.6:
        findings.append(pick(("No pleural effusion.", "There is no pleural effusion.")))
        labels["Pleural Effusion"] = 0
    elif not ptx and u < 0.6:
        findings.append(pick(("No pneumothorax.", "There is no pneumothorax.")))
        labels["Pneumothorax"] = 0
    if r.random() < 0.3:
        findings.append(pick(("No acute fracture.", "No displaced rib fracture.")))
        labels["Fracture"] = 0

    # CheXpert rule: No Finding when no pathology is positive or uncertain (devices aside).
    pathologies = [o for o in OBSERVATIONS if o not in ("No Finding", "Support Devices")]
    if not any(labels[o] in (1, -1) for o in pathologies):
        labels["No Finding"] = 1
        impression.append(
            pick(
                (
                    "No acute cardiopulmonary process.",
                    "No acute cardiopulmonary abnormality.",
                    "No acute cardiopulmonary process." if spec else "Normal chest radiograph.",
                )
            )
        )
    if "Support Devices" in spec and len(impression) > 1 and labels["No Finding"] != 1:
        impression.append(impression.pop(0))  # the acute findings lead the impression

    indication = pick(_INDICATIONS)
    if "Support Devices" in spec and "endotracheal tube" in spec["Support Devices"]["devices"]:
        indication = pick(("Intubated patient.", "Status post intubation.", indication))
    if view == "AP":
        findings.insert(0, pick(("Portable AP view of the chest.", "Single portable AP view.")))
    return " ".join(findings), " ".join(impression), indication, labels


# ----------------------------------------------------------------------------- public API


def generate_phantom(
    seed: int,
    size: int = 256,
    findings: dict[str, Any] | None = None,
    *,
    min_px: float = 0.0,
    contrast: float = 1.0,
) -> tuple[np.ndarray, PhantomTruth]:
    """Draw one phantom chest radiograph and its ground truth.

    Args:
        seed: any integer; the same seed (and arguments) gives byte-identical output.
        size: image height and width in pixels (64 or more).
        findings: None for a random, seeded choice at realistic prevalences (`PREVALENCE`);
            otherwise exactly the findings to draw, keyed by CheXpert name (see `FINDINGS`),
            each True (random parameters) or a dict of parameters:
            Cardiomegaly {"ctr"}; Pleural Effusion / Pneumothorax {"side": "right"|"left",
            "size": "small"|"moderate"|"large"}; Consolidation {"zone", "size"}; Lung Lesion
            {"zone", "diameter_cm"}; Support Devices {"devices": [...] from `DEVICES`}.
            `{}` draws a normal chest. Missing parameters are drawn from the seed.
        min_px: conspicuity option for small images (default 0: off). Nodules are drawn at
            least `min_px` pixels across and a pneumothorax's widest pleural gap is at least
            `min_px` pixels; the report, labels and spec keep the nominal size (a 0.9 cm
            nodule stays "0.9 cm"), and the boxes follow the drawn size.
        contrast: conspicuity option (default 1: off): multiplies the density of nodules and
            masses and the density of a pneumothorax's visceral pleural line and of its
            darkening of the pleural space (that factor capped at 2.5x, i.e. at 1.0).
            At the defaults the output is byte-identical to phantoms drawn without them.

    Returns:
        (pixels, truth): uint8 array (size, size), bright = dense, and its `PhantomTruth`.

    Raises:
        ValueError: unknown finding or parameter, a size below 64, a negative `min_px` or a
            `contrast` not above 0.
    """
    if size < 64:
        raise ValueError(f"size must be at least 64, got {size}")
    if min_px < 0 or not contrast > 0:
        raise ValueError(f"min_px must be >= 0 and contrast > 0, got {min_px!r}, {contrast!r}")
    spec = _resolve_findings(seed, findings)
    pixels, drawn, ctr = _render(seed, size, spec, float(min_px), float(contrast))
    boxes = []
    for label, bb in drawn:
        if label.startswith("Support Devices:"):
            boxes.append(_box("Support Devices", bb, label.split(":", 1)[1]))
        else:
            boxes.append(_box(label, bb, _PHRASES[label](spec[label])))
    text = _rng(seed, 4)
    view = "AP" if text.random() < (0.6 if "Support Devices" in spec else 0.1) else "PA"
    fnd, imp, ind, labels = _write_report(spec, ctr, view, text)
    truth = PhantomTruth(
        labels=labels,
        boxes=boxes,
        findings=fnd,
        impression=imp,
        indication=ind,
        view=view,
        ctr=round(ctr, 3),
        spec=spec,
    )
    return pixels, truth


_PHRASES = {
    "Cardiomegaly": lambda p: "enlarged cardiac silhouette",
    "Pleural Effusion": lambda p: f"{p['size']} {p['side']} pleural effusion",
    "Pneumothorax": lambda p: f"{p['size']} {p['side']} pneumothorax",
    "Consolidation": lambda p: f"consolidation in the {p['zone']}",
    "Lung Lesion": lambda p: (
        f"{p['diameter_cm']} cm {'mass' if p['diameter_cm'] > 3 else 'nodule'}"
    ),
}


def _split(seed: int, study_id: str) -> str:
    # Hash of (seed, id), not a permutation of 0..n-1: a study keeps its split when more
    # phantoms are generated into the same set.
    u = int.from_bytes(hashlib.sha256(f"{seed}:{study_id}".encode()).digest()[:8], "big") / 2**64
    return "train" if u < 0.8 else "validate" if u < 0.9 else "test"


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    im = PILImage.fromarray(pixels, mode="L")
    if fmt == "png":
        # Level 1: a noisy radiograph compresses little better at 6, and 3x slower.
        im.save(buf, format="PNG", compress_level=1)
    else:
        im.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def generate_phantoms(
    n: int,
    out_dir: str | Path,
    size: int = 256,
    seed: int = 0,
    fmt: str = "png",
    progress: bool = False,
    *,
    min_px: float = 0.0,
    contrast: float = 1.0,
) -> list[Study]:
    """Generate `n` phantoms: `images/phantom-000000.png`, ... and `studies.jsonl` in `out_dir`.

    Phantom `i` is `generate_phantom(phantom_seed(seed, i), size)`; its seed is kept in the
    Study's `extra`. Re-running over an existing folder rewrites only images whose content
    differs, so an interrupted run can be resumed cheaply and a finished one is a no-op.

    Args:
        n: number of phantoms.
        out_dir: output folder (created).
        size: image side in pixels.
        seed: set seed; the same seed gives the same files.
        fmt: "png" (lossless) or "jpg".
        progress: report progress on stderr about once a second.
        min_px, contrast: the opt-in conspicuity options of `generate_phantom` (defaults: off,
            the standard drawing); when set they are recorded in each Study's `extra`.

    Returns:
        The Studies, as written to `out_dir/studies.jsonl` (image paths relative to out_dir).
    """
    fmt = fmt.lower().lstrip(".").replace("jpeg", "jpg")
    if fmt not in ("png", "jpg"):
        raise ValueError(f"fmt must be 'png' or 'jpg', got {fmt!r}")
    from radixpert._optional import require

    require("PIL", purpose="writing phantom images")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    studies: list[Study] = []
    t0 = last = time.monotonic()
    skipped = 0
    for i in range(n):
        sid = f"phantom-{i:06d}"
        ps = phantom_seed(seed, i)
        pixels, truth = generate_phantom(ps, size, min_px=min_px, contrast=contrast)
        rel = f"images/{sid}.{fmt}"
        data = _encode(pixels, fmt)
        path = out / rel
        digest = hashlib.sha256(data).hexdigest()
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            skipped += 1  # resumed run: this image is already there, byte for byte
        else:
            # Atomic, never a truncated image; no fsync: thousands of small files that a
            # re-run checks byte for byte and writes again.
            write_bytes(path, data, fsync=False)
        studies.append(
            Study(
                id=sid,
                dataset="phantoms",
                split=_split(seed, sid),
                patient_id=sid,
                images=[Image(rel, truth.view)],
                indication=truth.indication,
                findings=truth.findings,
                impression=truth.impression,
                labels=truth.labels,
                boxes=truth.boxes,
                report_source="phantom",
                extra={
                    "phantom_seed": ps,
                    "size": size,
                    "ctr": truth.ctr,
                    "spec": truth.spec,
                    "sha256": digest,
                    **({"min_px": min_px} if min_px else {}),
                    **({"contrast": contrast} if contrast != 1.0 else {}),
                },
            )
        )
        now = time.monotonic()
        if progress and now - last >= 1.0:
            last = now
            rate = (i + 1) / (now - t0)
            sys.stderr.write(f"phantoms: {i + 1}/{n} ({rate:.0f} images/s)\n")
            sys.stderr.flush()
    write_studies(studies, out / "studies.jsonl")
    logger.info("wrote %d phantoms to %s (%d images unchanged)", n, out, skipped)
    return studies


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of `radixpert data phantoms` (shared by `main` and the radixpert CLI)."""
    ap.add_argument("--n", type=int, required=True, help="number of phantoms")
    ap.add_argument("--out", "-o", required=True, help="output folder (images/ and studies.jsonl)")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    ap.add_argument("--seed", type=int, default=0, help="set seed (default 0)")
    ap.add_argument("--format", default="png", choices=("png", "jpg"), help="image format")


def run(args: argparse.Namespace) -> int:
    """Generate the phantoms `args` asks for and print a one-line summary."""
    from radixpert.errors import UsageError

    if args.n < 0:
        raise UsageError(f"--n must be >= 0, got {args.n}")
    if args.size < 64:
        raise UsageError(f"--size must be at least 64, got {args.size}")
    t0 = time.monotonic()
    studies = generate_phantoms(
        args.n, args.out, size=args.size, seed=args.seed, fmt=args.format, progress=True
    )
    dt = time.monotonic() - t0
    positives = sum(1 for s in studies if s.labels.get("No Finding") != 1)
    print(
        f"wrote {len(studies)} phantoms ({positives} with findings) of {args.size}x{args.size} "
        f"to {Path(args.out) / 'studies.jsonl'} in {dt:.1f} s "
        f"({len(studies) / max(dt, 1e-9):.0f} images/s)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `radixpert data phantoms --n N --out DIR [--size 256] [--seed 0] [--format png]`."""
    ap = argparse.ArgumentParser(
        prog="radixpert data phantoms",
        description="Generate synthetic chest radiographs with boxes, labels and reports.",
    )
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
