"""Colour distances and the rule that keeps the two sides of a lateral pair apart.

Colours are sRGB triples of integers in [0, 255]. Distances are CIE76 ΔE: the Euclidean distance in CIE
L*a*b* (D65 white, sRGB companding as IEC 61966-2-1), computed here with the standard formulas (no
colour-science dependency). ΔE 2.3 is about the smallest difference a person notices side by side; a segment
outline is thin, so lateral pairs must differ by at least :data:`MIN_LATERAL_DELTA_E`.

The rule (applied by ``Testing/tools/build_anatomy.py`` when it writes ``resources/anatomy.json``):

1. a lateral structure takes TotalSegmentator's colour (its SNOMED mapping gives each side its own shade);
2. where a pair's two colours still differ by less than :data:`MIN_LATERAL_DELTA_E` (the terminology gives
   one colour for both sides, or TotalSegmentator's shades are too close), the right side keeps its colour
   and the left side gets :func:`shifted_lightness` of it: the same a*, b* with L* moved by
   :data:`SIDE_LIGHTNESS_SHIFT` (darker when L* > 50, else lighter), further if sRGB clipping eats into it.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Smallest CIE76 ΔE between the colours of a lateral pair (and between the liver and each kidney).
MIN_LATERAL_DELTA_E = 15.0
#: L* step of a derived side colour (ΔE of the shift when no sRGB channel clips).
SIDE_LIGHTNESS_SHIFT = 25.0

# sRGB (linear) -> XYZ, D65 (IEC 61966-2-1), and its white point.
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_XYZ_TO_RGB = (
    (3.2404542, -1.5371385, -0.4985314),
    (-0.9692660, 1.8760108, 0.0415560),
    (0.0556434, -0.2040259, 1.0572252),
)
_WHITE = (0.95047, 1.0, 1.08883)
_EPSILON = (6 / 29) ** 3


def _check_rgb(color: Sequence[int]) -> tuple[int, int, int]:
    rgb = tuple(color)
    if len(rgb) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in rgb):
        raise ValueError(f"a colour must be three integers in [0, 255], got {color!r}")
    return rgb  # type: ignore[return-value]


def srgb_to_lab(color: Sequence[int]) -> tuple[float, float, float]:
    """CIE L*a*b* (D65) of an sRGB colour given as three integers in [0, 255]."""
    scaled = (v / 255 for v in _check_rgb(color))
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in scaled]
    xyz = [
        sum(m * c for m, c in zip(row, linear, strict=True)) / w
        for row, w in zip(_RGB_TO_XYZ, _WHITE, strict=True)
    ]
    f = [t ** (1 / 3) if t > _EPSILON else t / (3 * (6 / 29) ** 2) + 4 / 29 for t in xyz]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def lab_to_srgb(lab: Sequence[float]) -> tuple[int, int, int]:
    """The sRGB colour (integers in [0, 255], out-of-gamut channels clipped) of a CIE L*a*b* (D65) colour."""
    lightness, a, b = lab
    fy = (lightness + 16) / 116
    f = (fy + a / 500, fy, fy - b / 200)
    xyz = [
        w * (t**3 if t > 6 / 29 else 3 * (6 / 29) ** 2 * (t - 4 / 29)) for t, w in zip(f, _WHITE, strict=True)
    ]
    linear = [sum(m * c for m, c in zip(row, xyz, strict=True)) for row in _XYZ_TO_RGB]
    out = []
    for c in linear:
        c = min(max(c, 0.0), 1.0)
        c = 12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055
        out.append(int(round(min(max(c, 0.0), 1.0) * 255)))
    return out[0], out[1], out[2]


def delta_e76(first: Sequence[int], second: Sequence[int]) -> float:
    """CIE76 ΔE between two sRGB colours (0-255 integers): Euclidean distance of their L*a*b* values."""
    lab1, lab2 = srgb_to_lab(first), srgb_to_lab(second)
    return sum((p - q) ** 2 for p, q in zip(lab1, lab2, strict=True)) ** 0.5


def shifted_lightness(
    color: Sequence[int], min_delta_e: float = MIN_LATERAL_DELTA_E, step: float = SIDE_LIGHTNESS_SHIFT
) -> tuple[int, int, int]:
    """A colour of the same hue as ``color`` but ``step`` L* darker (lighter when L* <= 50), at least
    ``min_delta_e`` away from it: the step grows by 5 L* while clipping keeps the distance short, and turns
    to the other direction when one runs out of range. Deterministic: the same input gives the same colour."""
    lightness, a, b = srgb_to_lab(color)
    first = -1.0 if lightness > 50 else 1.0
    for direction in (first, -first):
        shift = step
        while 0 <= lightness + direction * shift <= 100:
            candidate = lab_to_srgb((lightness + direction * shift, a, b))
            if delta_e76(candidate, color) >= min_delta_e:
                return candidate
            shift += 5.0
    raise ValueError(f"no colour of the hue of {tuple(color)} lies {min_delta_e} ΔE away from it")
