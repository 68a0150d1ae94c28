"""What a galaxy's image shows of its true morphology: volunteers answer from this, not the truth.

Seeing rounds the outline of a thin disk and a bulge rounds it further, so an edge-on disk looks
rounder than its true axis ratio; a bar shorter than the seeing, spiral arms packed closer than it,
or a bulge's shape smaller than it, blur into smooth light; detail in the disk plane foreshortens
as the disk tilts. Each function here gives, from the true parameters, the apparent value or a
visibility in [0, 1]. Their constants were fitted to, or checked against, measurements of rendered
images (the survey's images are rendered with the same seeing).
"""

from __future__ import annotations

import numpy as np

from zoobot.data.synthetic.morphology import BAR_SHARE, DISK_SCALE, Morphology

# Apparent axis ratio: the outline (isophote at 3x the sky noise of a 1 arcsec^2 patch) of the
# rendered, seeing-convolved galaxy; q^2 -> (q^2 + e) / (1 + e), e = a (fwhm / size)^2 + b B for a
# disk with bulge-to-total B. Least-squares fit to 770 isolated rendered galaxies (428 disks):
# median error 0.034 for disks (0.087 when taking the true axis ratio), 0.004 for ellipticals.
SEEING_ROUNDING = 0.20
BULGE_ROUNDING = 0.23
# Inclinations (degrees) from which structure in the disk plane is lost, and the width of the fall.
BAR_INCLINATION, ARMS_INCLINATION, TILT_WIDTH = 60.0, 70.0, 5.0
CONTRAST = 0.3  # share of the light a feature needs, against the bulge's, to be half visible


def resolved(scale: float, fwhm: float) -> float:
    """How clearly a structure of angular `scale` survives seeing of `fwhm` (same units):
    1/2 when they are equal, near 1 from twice the seeing, near 0 below half of it."""
    if scale <= 0:
        return 0.0
    return float(1 / (1 + (fwhm / scale) ** 4))


def standing_out(feature: float, bulge: float) -> float:
    """How well a feature's light stands out of a bulge's, from its share c of their summed light:
    1 without a bulge, about 1/2 at c = 0.3 (judged on rendered images: a bar or arms fainter
    than that are lost in the bulge's glare in the display stretch), 0 at c = 0."""
    if feature <= 0:
        return 0.0
    share = feature / (feature + bulge)
    return float(share**2 * (1 + CONTRAST**2) / (share**2 + CONTRAST**2))


def face_on(inclination: float, limit: float) -> float:
    """1 for a disk seen face-on, 1/2 at `limit` degrees, falling to 0 as it tilts further."""
    return float(1 / (1 + np.exp((inclination - limit) / TILT_WIDTH)))


def apparent_axis_ratio(m: Morphology) -> float:
    """Minor/major axis ratio of the galaxy's outline in its image, seeing and bulge included."""
    extra = SEEING_ROUNDING * (m.psf_fwhm / m.size) ** 2
    if m.kind == "disk":
        extra += BULGE_ROUNDING * m.bulge_fraction
    return float(np.sqrt((m.axis_ratio**2 + extra) / (1 + extra)))


def bar_visibility(m: Morphology) -> float:
    """How visible the bar is: longer than the seeing, bright against the bulge, in a disk not
    too tilted."""
    if m.bar == "none":
        return 0.0
    bar_light = BAR_SHARE * m.bar_strength * (1 - m.bulge_fraction)
    return (
        resolved(m.bar_length, m.psf_fwhm)
        * standing_out(bar_light, m.bulge_fraction)
        * face_on(m.inclination, BAR_INCLINATION)
    )


def arm_spacing(m: Morphology) -> float:
    """Radial distance between neighbouring arms where the arms are brightest (arcsec).

    Logarithmic arms with pitch angle p are 2 pi r tan(p) / n apart in radius; their light peaks
    around 1.2 disk scale lengths (`render`).
    """
    if not m.spiral_arms:
        return 0.0
    r = 1.2 * m.size / DISK_SCALE
    return float(2 * np.pi * r * np.tan(np.radians(m.spiral_pitch)) / m.spiral_arms)


def arms_visibility(m: Morphology) -> float:
    """How visible the spiral arms are: further apart than the seeing, bright against the bulge,
    in a disk not edge-on."""
    if not m.spiral_arms:
        return 0.0
    arms_light = m.spiral_strength * (1 - m.bulge_fraction)
    return (
        resolved(arm_spacing(m), m.psf_fwhm)
        * standing_out(arms_light, m.bulge_fraction)
        * face_on(m.inclination, ARMS_INCLINATION)
    )


def ring_visibility(m: Morphology) -> float:
    """How visible the ring is: wider than the seeing around the centre, in a disk not edge-on."""
    if not m.ring:
        return 0.0
    radius = m.bar_length if m.bar != "none" else 1.9 * m.size / DISK_SCALE
    return resolved(radius, m.psf_fwhm) * face_on(m.inclination, ARMS_INCLINATION)


def bulge_shape_visibility(m: Morphology) -> float:
    """How visible the bulge's shape (boxy or rounded) is: its size against the seeing."""
    if m.bulge_shape == "none":
        return 1.0  # the absence of a bulge is plain to see
    radius = m.size * (0.1 + 0.3 * m.bulge_fraction)  # the bulge's half-light radius (`render`)
    return resolved(2 * radius, m.psf_fwhm)
