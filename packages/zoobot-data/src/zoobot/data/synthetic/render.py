"""Render a galaxy's true morphology as a g, r, z image with GalSim, then as an 8-bit RGB JPEG.

Smooth profiles (Sersic bulges and ellipticals, inclined exponential disks, bars, companions) are
GalSim objects convolved with a Moffat PSF; arms, rings, tidal tails, clumps, stars and artifacts
are pixel maps (`layers`) convolved with the same PSF by FFT. Each component has its own colour:
red bulges and ellipticals, blue disks and bluer arms. Fluxes are in nanomaggies.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from zoobot.data.images import DECALS_SCALES, lupton_rgb
from zoobot.data.synthetic import layers
from zoobot.data.synthetic.morphology import BAR_SHARE, DISK_SCALE, Morphology, magnitude_to_flux

try:
    import galsim
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the synthetic survey renders with GalSim: pip install 'zoobot-data[synthetic]'"
    ) from err

BANDS = ("g", "r", "z")
BAND_NOISE = np.array([0.58, 1.0, 2.3])  # sky sigma relative to r, from DECaLS g/r/z depths
DECALS_PIXEL = 0.262  # arcsec; the display stretch below is tuned for fluxes per DECaLS pixel
RGB_OFFSET = 0.03  # added to each scaled band before the stretch: lifts the sky off black
STRETCH, Q = 0.23, 4.6  # Lupton asinh equivalent of the Legacy Surveys' arcsinh(20 I) stretch
TRAIL_FLUX = 0.3  # nanomaggies per DECaLS pixel along a satellite trail
GSPARAMS = galsim.GSParams(folding_threshold=1e-2, maxk_threshold=2e-3)
COLOURS = {  # (g - r, r - z) of each kind of light
    "bulge": (0.95, 0.55),
    "bar": (0.8, 0.48),
    "disk": (0.45, 0.3),
    "arms": (0.22, 0.12),
    "clumps": (0.05, 0.0),
    "tails": (0.5, 0.3),
}


def use_one_thread() -> None:
    """Limit GalSim to one OpenMP thread: worker processes already share out the CPUs."""
    galsim.utilities.set_omp_threads(1)


def colour_weights(g_r: float, r_z: float) -> np.ndarray:
    """Flux in g, r, z per unit r-band flux for the given colours."""
    return np.array([10 ** (-0.4 * g_r), 1.0, 10 ** (0.4 * r_z)])


class Canvas:
    """Collects g, r, z light: GalSim draws profiles, pixel maps get the PSF by FFT at the end."""

    def __init__(self, size: int, scale: float, psf: galsim.GSObject):
        self.size, self.scale, self.psf = size, scale, psf
        self.bands = np.zeros((3, size, size))
        self.pre_psf = np.zeros((3, size, size))

    def add_profile(self, profile: galsim.GSObject, flux: float, colour: np.ndarray) -> None:
        """Draw `profile` (r-band `flux`, nanomaggies) through the PSF into every band."""
        image = galsim.Convolve(profile.withFlux(flux), self.psf, gsparams=GSPARAMS).drawImage(
            nx=self.size, ny=self.size, scale=self.scale, method="auto"
        )
        self.bands += colour[:, None, None] * image.array

    def add_map(self, image: np.ndarray, flux: float, colour: np.ndarray) -> None:
        """Add a unit-sum pixel map carrying r-band `flux`; it gets the PSF in `convolved`."""
        self.pre_psf += (flux * colour)[:, None, None] * image

    def convolved(self) -> np.ndarray:
        """All light so far, the pixel maps convolved with the PSF (zero padded, no wrap-around)."""
        if not self.pre_psf.any():
            return self.bands.copy()
        n = self.size
        kernel = self.psf.drawImage(nx=n + 1, ny=n + 1, scale=self.scale, method="auto").array
        shape = (2 * n, 2 * n)  # holds the whole linear convolution of n and n + 1 pixels
        product = np.fft.rfft2(self.pre_psf, s=shape) * np.fft.rfft2(kernel, s=shape)
        full = np.fft.irfft2(product, s=shape)
        half = n // 2
        return self.bands + full[:, half : half + n, half : half + n]


def _jitter(rng: np.random.Generator, name: str, spread: float = 0.06) -> np.ndarray:
    """Colour weights of a kind of light, varied a little so no two galaxies share exact colours."""
    g_r, r_z = COLOURS[name]
    return colour_weights(g_r + rng.normal(0, spread), r_z + rng.normal(0, spread / 2))


def _smooth(canvas: Canvas, m: Morphology, rng: np.random.Generator, center, pa: float) -> None:
    """An elliptical: one Sersic profile, sheared to its axis ratio."""
    profile = galsim.Sersic(
        m.sersic_n, half_light_radius=m.size, trunc=8 * m.size, gsparams=GSPARAMS
    )
    profile = profile.shear(q=m.axis_ratio, beta=pa * galsim.radians)
    canvas.add_profile(profile.shift(*center), m.flux, _jitter(rng, "bulge"))


def _disk_projection(profile: galsim.GSObject, angle: float, cos_i: float, pa: float):
    """Rotate a profile by `angle` in the disk plane, incline it, then turn it to the disk's PA."""
    return (
        profile.rotate(angle * galsim.radians).transform(1, 0, 0, cos_i).rotate(pa * galsim.radians)
    )


def _bulge(m: Morphology, cos_i: float, pa: float) -> galsim.GSObject:
    """A Sersic bulge, rounded or (seen near edge-on) boxy: two crossed, flattened components.

    Built along the x axis, flattened with the disk's tilt, then turned to the disk's position
    angle, so a boxy bulge's X lies along the disk.
    """
    radius = m.size * (0.1 + 0.3 * m.bulge_fraction)
    bulge = galsim.Sersic(
        m.sersic_n, half_light_radius=radius, trunc=10 * radius, gsparams=GSPARAMS
    )
    if m.bulge_shape == "boxy" and cos_i < 0.5:
        lobe = galsim.Sersic(1.0, half_light_radius=radius * 1.2, gsparams=GSPARAMS)
        lobe = lobe.shear(q=0.45, beta=0 * galsim.radians)
        bulge = galsim.Add([lobe.rotate(0.5 * galsim.radians), lobe.rotate(-0.5 * galsim.radians)])
    flattening = 1 - 0.3 * (1 - cos_i)
    return bulge.shear(q=flattening, beta=0 * galsim.radians).rotate(pa * galsim.radians)


def _light_shares(m: Morphology) -> dict[str, float]:
    """Shares of the disk light in its bar, arms, ring and clumps (at most 3/4 in all)."""
    shares = {
        "bar": BAR_SHARE * m.bar_strength,
        "arms": m.spiral_strength,
        "ring": 0.35 if m.ring else 0.0,
        "clumps": 0.15 if m.clumps else 0.0,
    }
    total = sum(shares.values())
    return {k: v * min(1.0, 0.75 / total) for k, v in shares.items()} if total else shares


def _disk(canvas: Canvas, m: Morphology, rng: np.random.Generator, center, pa: float) -> None:
    """A disk galaxy: inclined exponential disk, bulge and bar, then its arms, ring and clumps."""
    cos_i = float(np.cos(np.radians(m.inclination)))
    h = m.size / DISK_SCALE  # exponential scale length of a disk with this half-light radius
    disk_flux = m.flux * (1 - m.bulge_fraction)
    bar_angle, bar_length = rng.uniform(0, np.pi), m.bar_length  # the bar's angle in the disk
    shares = _light_shares(m)
    disk = galsim.InclinedExponential(
        m.inclination * galsim.degrees, scale_radius=h, scale_h_over_r=0.1, gsparams=GSPARAMS
    ).rotate(pa * galsim.radians)
    smooth_share = 1 - sum(shares.values())
    canvas.add_profile(disk.shift(*center), disk_flux * smooth_share, _jitter(rng, "disk"))
    if m.bulge_fraction > 0:
        bulge = _bulge(m, cos_i, pa)
        canvas.add_profile(bulge.shift(*center), m.flux * m.bulge_fraction, _jitter(rng, "bulge"))
    if m.bar != "none":
        bar = galsim.Sersic(0.5, half_light_radius=0.45 * bar_length, gsparams=GSPARAMS)
        bar = bar.shear(q=0.32 - 0.1 * m.bar_strength, beta=0 * galsim.radians)
        bar = _disk_projection(bar, bar_angle, cos_i, pa)
        canvas.add_profile(bar.shift(*center), disk_flux * shares["bar"], _jitter(rng, "bar"))
    x, y = layers.grid(canvas.size, canvas.scale)
    r, theta = layers.disk_plane(x, y, center, pa, cos_i)
    if m.spiral_arms:
        start = bar_length if m.bar != "none" else h * rng.uniform(0.3, 0.7)
        phase = m.spiral_arms * bar_angle if m.bar != "none" else rng.uniform(0, 2 * np.pi)
        arms = layers.spiral_arms(r, theta, m.spiral_arms, m.spiral_pitch, 1.2 * h, start, phase)
        canvas.add_map(arms, disk_flux * shares["arms"], _jitter(rng, "arms"))
    if m.ring:
        radius = bar_length * 1.05 if m.bar != "none" else h * rng.uniform(1.4, 2.4)
        ring = layers.ring(r, radius, max(0.08 * radius, 0.5 * canvas.scale))
        canvas.add_map(ring, disk_flux * shares["ring"], _jitter(rng, "arms"))
    if m.clumps:
        knots = _clumps(canvas, m.clumps, rng, center, pa, cos_i, h)
        canvas.add_map(knots, disk_flux * shares["clumps"], _jitter(rng, "clumps"))


def _clumps(
    canvas: Canvas, count: int, rng: np.random.Generator, center, pa: float, cos_i: float, h: float
) -> np.ndarray:
    """Star-forming knots scattered over the disk plane, as a unit-sum pixel map."""
    radius = rng.gamma(2.0, h, size=count)
    angle = rng.uniform(0, 2 * np.pi, size=count)
    u, v = radius * np.cos(angle), radius * np.sin(angle) * cos_i
    x = center[0] + u * np.cos(pa) - v * np.sin(pa)
    y = center[1] + u * np.sin(pa) + v * np.cos(pa)
    knots = layers.points(
        canvas.size, canvas.scale, np.stack([x, y], axis=1), rng.lognormal(0, 0.5, count)
    )
    return knots / max(knots.sum(), 1e-12)


def _galaxy(canvas: Canvas, m: Morphology, rng: np.random.Generator, center, pa: float) -> None:
    """The main galaxy; an artifact's faint galaxy is drawn as a smooth one."""
    if m.kind == "disk":
        _disk(canvas, m, rng, center, pa)
    else:
        _smooth(canvas, m, rng, center, pa)


def _neighbour(
    canvas: Canvas, rng: np.random.Generator, center, magnitude: float, size: float
) -> None:
    """Another galaxy: a red spheroid or a blue disk, at `center`."""
    red = rng.random() < 0.5
    n = 4.0 if red else 1.0
    profile = galsim.Sersic(n, half_light_radius=size, trunc=8 * size, gsparams=GSPARAMS)
    profile = profile.shear(q=rng.uniform(0.35, 1.0), beta=rng.uniform(0, np.pi) * galsim.radians)
    colour = _jitter(rng, "bulge" if red else "disk", 0.1)
    canvas.add_profile(profile.shift(*center), magnitude_to_flux(magnitude), colour)


def _tails(
    canvas: Canvas, m: Morphology, rng: np.random.Generator, center, fraction: float, n: int
) -> None:
    """Tidal tails (two, opposite) or a plume (one) carrying `fraction` of the galaxy's light."""
    start = rng.uniform(0, 2 * np.pi)
    curl = rng.choice([-1, 1]) * rng.uniform(1.2, 2.4)
    for k in range(n):
        xy, weights = layers.tidal_tail(
            rng, center, start + k * np.pi, m.size * rng.uniform(2.0, 3.5), curl, 0.25 * m.size
        )
        tail = layers.points(canvas.size, canvas.scale, xy, weights)
        canvas.add_map(tail / max(tail.sum(), 1e-12), m.flux * fraction / n, _jitter(rng, "tails"))


def _interaction(canvas: Canvas, m: Morphology, rng: np.random.Generator, center) -> None:
    """The merging partner and the tidal debris of minor and major interactions and mergers."""
    separation, delta_mag, tail_fraction, n_tails = {
        "minor": (rng.uniform(1.5, 3.0), rng.uniform(1.8, 3.0), 0.05, 1),
        "major": (rng.uniform(1.0, 2.0), rng.uniform(0.3, 1.2), 0.14, 2),
        "merger": (rng.uniform(0.35, 0.8), rng.uniform(0.0, 0.8), 0.2, 2),
    }[m.merger]
    angle = rng.uniform(0, 2 * np.pi)
    partner = (
        center[0] + separation * m.size * np.cos(angle),
        center[1] + separation * m.size * np.sin(angle),
    )
    size = m.size * 10 ** (-0.15 * delta_mag) * rng.uniform(0.6, 1.0)
    _neighbour(canvas, rng, partner, m.magnitude + delta_mag, size)
    _tails(canvas, m, rng, center, tail_fraction, n_tails)


def _field(canvas: Canvas, m: Morphology, rng: np.random.Generator) -> None:
    """Unrelated neighbours and foreground stars scattered over the field."""
    half = canvas.size * canvas.scale / 2
    for _ in range(m.companions - int(m.merger != "none")):
        radius = rng.uniform(2.5 * m.size, half)
        angle = rng.uniform(0, 2 * np.pi)
        magnitude = m.magnitude + rng.uniform(0.8, 3.0)
        size = m.size * 10 ** (-0.18 * (magnitude - m.magnitude)) * rng.uniform(0.5, 1.2)
        _neighbour(canvas, rng, (radius * np.cos(angle), radius * np.sin(angle)), magnitude, size)
    for _ in range(m.stars):
        xy = rng.uniform(-half, half, size=2)
        g_r = rng.uniform(0.3, 1.5)
        star = layers.points(canvas.size, canvas.scale, xy)
        magnitude = 22.0 - 5.0 * rng.random() ** 2.5  # mostly faint, a few bright
        canvas.add_map(star, magnitude_to_flux(magnitude), colour_weights(g_r, 0.4 * g_r))


def _artifact(canvas: Canvas, m: Morphology, rng: np.random.Generator) -> None:
    """Image problems volunteers flag as artifacts: satellite trails and saturated bright stars."""
    half = canvas.size * canvas.scale / 2
    if m.artifact == "trail":
        band = np.eye(3)[rng.integers(3)]
        trail = layers.line(
            canvas.size, canvas.scale, rng.uniform(0, np.pi), rng.uniform(-0.6, 0.6) * half
        )
        canvas.add_map(trail, TRAIL_FLUX * canvas.size * (canvas.scale / DECALS_PIXEL) ** 2, band)
    elif m.artifact == "bright_star":
        xy = rng.uniform(-0.6, 0.6, size=2) * half
        colour = colour_weights(rng.uniform(0.4, 1.2), 0.4)
        flux = magnitude_to_flux(rng.uniform(9.5, 11.5))
        canvas.add_map(layers.points(canvas.size, canvas.scale, xy), flux, colour)
        canvas.add_map(
            layers.diffraction_spikes(canvas.size, canvas.scale, tuple(xy)), 0.05 * flux, colour
        )


def _missing_data(bands: np.ndarray, rng: np.random.Generator) -> None:
    """Blank one band over a strip of the image, as where a CCD chip gap or bad exposure fell."""
    n = bands.shape[-1]
    start = rng.integers(0, n // 2)
    width = rng.integers(n // 5, n // 2)
    band = rng.integers(3)
    if rng.random() < 0.5:
        bands[band, start : start + width] = 0.0
    else:
        bands[band, :, start : start + width] = 0.0


def render_bands(
    m: Morphology, rng: np.random.Generator, image_size: int
) -> tuple[np.ndarray, float]:
    """The observed (3, N, N) g, r, z image in nanomaggies per pixel, and its pixel scale."""
    scale = m.field_of_view / image_size
    canvas = Canvas(image_size, scale, galsim.Moffat(beta=3.5, fwhm=m.psf_fwhm, gsparams=GSPARAMS))
    center = tuple(rng.uniform(-0.5, 0.5, size=2) * scale)
    pa = rng.uniform(0, np.pi)
    _galaxy(canvas, m, rng, center, pa)
    if m.merger != "none":
        _interaction(canvas, m, rng, center)
    _field(canvas, m, rng)
    _artifact(canvas, m, rng)
    # Cutouts finer than the survey's pixels are interpolated: their noise per pixel stops falling.
    sigma = m.sky_noise * scale * min(1.0, scale / DECALS_PIXEL) * BAND_NOISE
    bands = (
        canvas.convolved() + rng.standard_normal((3, image_size, image_size)) * sigma[:, None, None]
    )
    if m.artifact == "missing_data":
        _missing_data(bands, rng)
    return bands, scale


def to_rgb(bands: np.ndarray, scale: float) -> np.ndarray:
    """Asinh (Lupton) RGB of g, r, z fluxes per pixel, with the Legacy Surveys' colour balance."""
    per_decals_pixel = bands * (DECALS_PIXEL / scale) ** 2
    g, r, z = (
        plane + RGB_OFFSET / DECALS_SCALES[name]
        for plane, name in zip(per_decals_pixel, BANDS, strict=True)
    )
    return lupton_rgb(g, r, z, stretch=STRETCH, q=Q)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an (H, W, 3) uint8 image, as Galaxy Zoo serves its images."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def render_rgb(m: Morphology, rng: np.random.Generator, image_size: int) -> np.ndarray:
    """The galaxy as an (N, N, 3) uint8 RGB image, north up (row 0 at the top)."""
    bands, scale = render_bands(m, rng, image_size)
    return np.ascontiguousarray(to_rgb(bands, scale)[::-1])
