"""True morphology of synthetic galaxies: what each galaxy really is, before anyone looks at it.

Fractions, sizes and magnitudes loosely follow GZ DECaLS (r < 18.5, half the galaxies featured,
a third of disks barred). Observing conditions (PSF, sky noise) are drawn per galaxy too, and
`clarity` summarises how visible the morphology is, which sets how much the volunteers agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

KINDS = ("smooth", "disk", "artifact")
KIND_P = (0.42, 0.55, 0.03)
BARS = ("none", "weak", "strong")
BAR_P = (0.62, 0.22, 0.16)
MERGERS = ("none", "minor", "major", "merger")
MERGER_P = (0.84, 0.08, 0.05, 0.03)
ARTIFACTS = ("trail", "bright_star", "missing_data")
ARM_COUNTS = (1, 2, 3, 4, 5, 6)
ARM_COUNT_P = (0.05, 0.55, 0.18, 0.1, 0.07, 0.05)
MAG_RANGE = (14.0, 18.5)
ZERO_POINT = 22.5  # magnitudes are AB with fluxes in nanomaggies, as in the Legacy Surveys
SKY_NOISE = 0.03  # nanomaggies per arcsec (the sky sigma of a 1 arcsec^2 patch) at median depth
DISK_SCALE = 1.678  # half-light radius / scale length of an exponential disk
BAR_SHARE = 0.35  # share of the disk's light in a bar of strength 1


@dataclass(frozen=True)
class Morphology:
    """The true parameters of a galaxy and its observation (sizes in arcsec, angles in degrees)."""

    kind: str  # smooth, disk or artifact
    magnitude: float  # total r-band AB magnitude
    size: float  # half-light radius of the elliptical or of the disk
    sersic_n: float  # Sersic index of the elliptical or of the bulge
    axis_ratio: float  # projected minor/major axis ratio
    inclination: float  # of a disk; 0 is face-on, 90 edge-on
    bulge_fraction: float  # bulge-to-total flux ratio (1 for an elliptical)
    bulge_shape: str  # none, rounded or boxy
    bar: str  # none, weak or strong
    bar_strength: float  # 0 without a bar; sets the bar's share of the disk light
    bar_length: float  # semi-major axis of the bar, 0 without one
    spiral_arms: int  # number of arms, 0 without arms
    spiral_pitch: float  # pitch angle of the arms: small is tightly wound
    spiral_strength: float  # share of the disk light in the arms
    ring: bool
    clumps: int  # star-forming knots in the disk
    merger: str  # none, minor, major (disturbance) or merger
    companions: int  # other galaxies in the image, the merging partner included
    stars: int  # foreground stars in the image
    artifact: str  # none, trail, bright_star or missing_data
    psf_fwhm: float
    sky_noise: float  # sky sigma in nanomaggies of a 1 arcsec^2 patch, r band
    field_of_view: float  # side of the square cutout
    clarity: float  # how visible the morphology is, in (0, 1): sets how much volunteers agree

    @property
    def flux(self) -> float:
        """Total r-band flux in nanomaggies."""
        return magnitude_to_flux(self.magnitude)

    def to_dict(self) -> dict:
        """The parameters by name: the `true_*` columns of a survey catalog."""
        return asdict(self)


def magnitude_to_flux(magnitude: float) -> float:
    """Flux in nanomaggies of an AB magnitude (22.5 is 1 nanomaggy)."""
    return 10 ** (-0.4 * (magnitude - ZERO_POINT))


def _magnitude(rng: np.random.Generator) -> float:
    # Euclidean-like number counts: many more faint galaxies than bright ones (p ~ 10^(0.3 m)).
    lo, hi = (10 ** (0.3 * m) for m in MAG_RANGE)
    return float(np.log10(lo + rng.random() * (hi - lo)) / 0.3)


def _size(rng: np.random.Generator, magnitude: float, kind: str) -> float:
    # Brighter galaxies are bigger (about 0.2 dex per magnitude); ellipticals are more compact.
    log_r = 0.68 - 0.18 * (magnitude - 16) + rng.normal(0, 0.12) - (0.08 if kind == "smooth" else 0)
    return float(np.clip(10**log_r, 1.0, 20.0))


def clarity(size: float, magnitude: float, psf_fwhm: float, sky_noise: float) -> float:
    """How visible the morphology is, in (0, 1): falls as the galaxy nears the PSF or the noise."""
    resolution = 1 / (1 + (1.6 * psf_fwhm / size) ** 2.5)
    snr = 0.5 * magnitude_to_flux(magnitude) / (sky_noise * np.sqrt(np.pi) * size)
    signal = 1 / (1 + (80 / snr) ** 1.5)
    return float(resolution * signal)


def _sersic_index(rng: np.random.Generator, low: float, high: float) -> float:
    # Quarter steps: GalSim caches each Sersic index's profile tables, so rendering stays fast.
    return float(np.round(rng.uniform(low, high) * 4) / 4)


def _disk(rng: np.random.Generator) -> dict:
    """Disk structure: inclination, bulge, bar, arms, ring and clumps."""
    inclination = float(np.degrees(np.arccos(rng.uniform(0.0, 1.0))))
    bulge_fraction = float(rng.beta(1.4, 3.5))
    bulge_shape = "none" if bulge_fraction < 0.06 else ("boxy" if rng.random() < 0.3 else "rounded")
    bar = str(rng.choice(BARS, p=BAR_P))
    strength = {"none": 0.0, "weak": rng.uniform(0.2, 0.5), "strong": rng.uniform(0.55, 1.0)}[bar]
    has_arms = rng.random() < 0.85 - 0.7 * bulge_fraction
    ring_p = 0.25 if bar != "none" else 0.08
    return {
        "inclination": inclination,
        "bulge_fraction": bulge_fraction if bulge_shape != "none" else 0.0,
        "bulge_shape": bulge_shape,
        "sersic_n": _sersic_index(rng, 1.0, 4.0),
        "bar": bar,
        "bar_strength": float(strength),
        "spiral_arms": int(rng.choice(ARM_COUNTS, p=ARM_COUNT_P)) if has_arms else 0,
        "spiral_pitch": float(rng.uniform(8.0, 35.0)) if has_arms else 0.0,
        "spiral_strength": float(rng.uniform(0.25, 0.6)) if has_arms else 0.0,
        "ring": bool(rng.random() < ring_p),
        "clumps": int(rng.integers(3, 9)) if rng.random() < 0.1 else 0,
    }


def _spheroid(rng: np.random.Generator) -> dict:
    """A smooth galaxy: Sersic index and a mostly round axis ratio."""
    return {
        "sersic_n": _sersic_index(rng, 2.0, 5.5),
        "axis_ratio": float(1 - 0.75 * rng.beta(1.3, 2.5)),
        "bulge_fraction": 1.0,
        "bulge_shape": "rounded",
    }


def draw_morphology(rng: np.random.Generator) -> Morphology:
    """Draw one galaxy's true morphology and observing conditions."""
    kind = str(rng.choice(KINDS, p=KIND_P))
    magnitude = _magnitude(rng)
    if kind == "artifact":
        magnitude = min(magnitude + 1.0, MAG_RANGE[1])
    params = {
        "axis_ratio": 1.0,
        "inclination": 0.0,
        "bar": "none",
        "bar_strength": 0.0,
        "bar_length": 0.0,
        "spiral_arms": 0,
        "spiral_pitch": 0.0,
        "spiral_strength": 0.0,
        "ring": False,
        "clumps": 0,
    }
    params.update(_disk(rng) if kind == "disk" else _spheroid(rng))
    if kind == "disk":
        # Projected axis ratio of a disk with intrinsic thickness 0.12.
        cos_i = np.cos(np.radians(params["inclination"]))
        params["axis_ratio"] = float(np.sqrt(cos_i**2 + 0.12**2 * (1 - cos_i**2)))
    size = _size(rng, magnitude, kind)
    if params["bar"] != "none":
        params["bar_length"] = float(size / DISK_SCALE * rng.uniform(1.0, 1.8))
    merger = str(rng.choice(MERGERS, p=MERGER_P)) if kind != "artifact" else "none"
    companions = int(merger != "none") + int(rng.poisson(0.3))
    psf_fwhm = float(np.clip(rng.normal(1.3, 0.15), 0.9, 1.9))
    sky_noise = float(SKY_NOISE * 10 ** rng.normal(0, 0.12))
    seen = clarity(size, magnitude, psf_fwhm, sky_noise)
    return Morphology(
        kind=kind,
        magnitude=magnitude,
        size=size,
        merger=merger,
        companions=companions,
        stars=int(rng.poisson(0.8)),
        artifact=str(rng.choice(ARTIFACTS)) if kind == "artifact" else "none",
        psf_fwhm=psf_fwhm,
        sky_noise=sky_noise,
        # GZ DECaLS scales each cutout with the galaxy's size, within limits.
        field_of_view=float(np.clip(10 * size, 16.0, 160.0)),
        # An artifact is plain to see however faint the galaxy behind it.
        clarity=max(seen, 0.75) if kind == "artifact" else seen,
        **params,
    )
