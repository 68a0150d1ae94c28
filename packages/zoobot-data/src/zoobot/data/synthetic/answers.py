"""What a galaxy's true morphology says to each Galaxy Zoo question, matched by meaning.

Questions are recognised by name without the campaign suffix (`bar-dr5` and `bar-gz2` are both
`bar`) and answers through synonyms (`features` is `featured-or-disk`, `5-plus` is
`more-than-4`), so one table serves every campaign's tree: GZ2, UKIDSS, CANDELS, Hubble, all the
DECaLS campaigns, DESI, Cosmic Dawn, Euclid, JWST and GZ Rings. Ordered answers (bar strength,
bulge size, roundness, winding, arm count, merger stage) come from a Gaussian kernel around the
true value, so coarse and fine answer sets are both served. Volunteers answer from the image
(`appearance`): the outline's apparent axis ratio, and features only as far as the seeing and
the disk's tilt let them show. An unsure volunteer drifts towards the question's `unsure` answers,
the more so for detail-heavy questions (`difficulty`) and for detail the image hides
(`visibility`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from zoobot.data.synthetic.appearance import (
    apparent_axis_ratio,
    arms_visibility,
    bar_visibility,
    bulge_shape_visibility,
    ring_visibility,
)
from zoobot.data.synthetic.morphology import Morphology, draw_morphology
from zoobot.shared import Question, Schema

FLOOR = 0.02  # every answer keeps a little probability: some volunteers click anything
# A disk looks edge-on when its outline is thinner than this (an inclination of about 75 degrees,
# seeing and bulge included: `appearance.apparent_axis_ratio`); an elliptical, below its own.
EDGE_ON_DISK_Q, EDGE_ON_SMOOTH_Q, EDGE_ON_WIDTH = 0.42, 0.3, 0.03


class UnsupportedQuestionError(ValueError):
    """A question (or answer) the synthetic volunteers do not know how to answer."""


def _sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


def _kernel(value: float, positions: Mapping[str, float], width: float) -> dict[str, float]:
    """Weights of ordered answers placed at `positions`, by closeness to the true value."""
    return {a: float(np.exp(-0.5 * ((value - p) / width) ** 2)) for a, p in positions.items()}


def _yes(p: float) -> dict[str, float]:
    return {"yes": p, "no": 1 - p}


def _looks_edge_on(m: Morphology) -> float:
    """How edge-on the galaxy looks, from the apparent thinness of its outline."""
    threshold = EDGE_ON_DISK_Q if m.kind == "disk" else EDGE_ON_SMOOTH_Q
    return _sigmoid((threshold - apparent_axis_ratio(m)) / EDGE_ON_WIDTH)


def _featured(m: Morphology) -> float:
    """How featured a disk looks: visible arms, bar and ring, a thin disk; big bulges look smooth."""
    score = (
        0.35
        + 1.2 * m.spiral_strength * arms_visibility(m)
        + 0.6 * m.bar_strength * bar_visibility(m)
        + 0.4 * ring_visibility(m)
        + 0.2 * bool(m.clumps)
        + 0.4 * _looks_edge_on(m)
        - 0.4 * m.bulge_fraction
    )
    return float(np.clip(score, 0.05, 0.97))


# The truth of each kind of question: answer weights, by canonical answer name, for a galaxy.


def _smooth_or_featured(m: Morphology) -> dict[str, float]:
    if m.kind == "artifact":
        return {"smooth": 0.1, "featured-or-disk": 0.05, "artifact": 0.85}
    if m.kind == "smooth":
        featured = {"none": 0.03, "minor": 0.08, "major": 0.25, "merger": 0.35}[m.merger]
        return {"smooth": 0.98 - featured, "featured-or-disk": featured, "artifact": 0.02}
    featured = _featured(m)
    return {"smooth": 0.99 - featured, "featured-or-disk": featured, "artifact": 0.01}


def _disk_edge_on(m: Morphology) -> dict[str, float]:
    return _yes(_looks_edge_on(m))


def _has_spiral_arms(m: Morphology) -> dict[str, float]:
    return _yes(max(0.04 + 0.91 * arms_visibility(m), 0.04 + 0.21 * ring_visibility(m)))


def _bar(m: Morphology) -> dict[str, float]:
    """Volunteers judge the bar they see: a bar the seeing or the tilt hides reads as none."""
    positions = {"no": 0.0, "weak": 0.35, "strong": 0.8, "yes": 0.6}
    return _kernel(m.bar_strength * bar_visibility(m), positions, 0.12)


def _bulge_size(m: Morphology) -> dict[str, float]:
    positions = {
        "none": 0.0,
        "small": 0.12,
        "just-noticeable": 0.12,
        "moderate": 0.28,
        "obvious": 0.3,
        "large": 0.45,
        "dominant": 0.7,
    }
    return _kernel(m.bulge_fraction, positions, 0.08)


def _how_rounded(m: Morphology) -> dict[str, float]:
    positions = {"round": 0.92, "in-between": 0.62, "cigar-shaped": 0.3}
    return _kernel(apparent_axis_ratio(m), positions, 0.1)


def _edge_on_bulge(m: Morphology) -> dict[str, float]:
    shapes = {"boxy": 0.05, "none": 0.05, "rounded": 0.05}
    shapes[m.bulge_shape] = 0.9
    has_bulge = 0.9 if m.bulge_shape != "none" else 0.1
    return {**shapes, "yes": has_bulge, "no": 1 - has_bulge}


def _spiral_winding(m: Morphology) -> dict[str, float]:
    return _kernel(m.spiral_pitch, {"tight": 10.0, "medium": 20.0, "loose": 30.0}, 4.0)


def _spiral_arm_count(m: Morphology) -> dict[str, float]:
    positions = {"1": 1, "2": 2, "3": 3, "4": 4, "more-than-4": 5, "cant-tell": -10}
    return _kernel(min(m.spiral_arms, 5), positions, 0.35)


def _merging(m: Morphology) -> dict[str, float]:
    stage = {"none": 0, "minor": 1, "major": 2, "merger": 3}[m.merger]
    positions = {"none": 0, "minor-disturbance": 1, "major-disturbance": 2, "merger": 3}
    return _kernel(stage, positions, 0.4)


def _something_odd(m: Morphology) -> dict[str, float]:
    odd = {"none": 0.04, "minor": 0.5, "major": 0.85, "merger": 0.9}[m.merger]
    return _yes(max(odd, 0.7 if m.ring else 0.0, 0.6 if m.artifact != "none" else 0.0))


def _ring(m: Morphology) -> dict[str, float]:
    return _yes(0.95 if m.ring else 0.03)


def _clumps(m: Morphology) -> dict[str, float]:
    return _yes(0.9 if m.clumps else 0.05)


def _symmetrical(m: Morphology) -> dict[str, float]:
    return _yes(0.85 if m.merger == "none" else 0.2)


def _embedded(m: Morphology) -> dict[str, float]:
    return _yes(0.85 if m.kind == "disk" else 0.3)


def _problem(m: Morphology) -> dict[str, float]:
    if m.artifact == "bright_star":
        return {"star": 0.4, "artifact": 0.6, "zoom": 0.0}
    if m.artifact != "none":
        return {"star": 0.0, "artifact": 1.0, "zoom": 0.0}
    # Volunteers who call a real galaxy a problem mostly find it too small, or take it for a star.
    return {"star": 0.3 * (1 - m.clarity), "artifact": 0.2, "zoom": 0.5}


def _artifact_type(m: Morphology) -> dict[str, float]:
    weights = dict.fromkeys(("satellite", "scattered", "diffraction", "ray", "saturation"), 0.0)
    weights.update(other=0.0, ghost=0.0)
    key = {"trail": "satellite", "bright_star": "diffraction", "missing_data": "other"}
    if m.artifact in key:
        weights[key[m.artifact]] = 1.0
        if m.artifact == "bright_star":
            weights["saturation"] = 0.4
    else:
        weights["other"] = 1.0
    return weights


@dataclass(frozen=True)
class Concept:
    """How true morphology answers one kind of question, and how unsure volunteers answer it."""

    truth: Callable[[Morphology], dict[str, float]]
    unsure: (
        Mapping[str, float] | None
    )  # answer weights of a volunteer who cannot tell; None: uniform
    difficulty: float  # exponent on the galaxy's clarity: fine detail is the first to be lost
    synonyms: Mapping[str, str] = field(default_factory=dict)
    # How visible the detail this question asks about is, in [0, 1]; None: as visible as the
    # galaxy (its clarity). Hidden detail leaves volunteers unsure, and split.
    visibility: Callable[[Morphology], float] | None = None


EDGE_ON_BULGE_UNSURE = {"boxy": 0.2, "none": 0.3, "rounded": 0.5, "yes": 0.6, "no": 0.4}
CONCEPTS: dict[str, Concept] = {
    "smooth-or-featured": Concept(
        _smooth_or_featured,
        {"smooth": 0.75, "featured-or-disk": 0.22, "artifact": 0.03},
        1.0,
        {"features": "featured-or-disk", "problem": "artifact", "star-artifact-zoom": "artifact"},
    ),
    "disk-edge-on": Concept(_disk_edge_on, _yes(0.25), 0.6),
    "has-spiral-arms": Concept(_has_spiral_arms, _yes(0.3), 1.3),
    "bar": Concept(_bar, {"no": 0.7, "weak": 0.2, "strong": 0.1, "yes": 0.3}, 1.6),
    "bulge-size": Concept(
        _bulge_size,
        {
            "none": 0.1,
            "small": 0.2,
            "just-noticeable": 0.2,
            "moderate": 0.35,
            "obvious": 0.4,
            "large": 0.2,
            "dominant": 0.1,
        },
        1.2,
        {"no": "none"},
    ),
    "how-rounded": Concept(
        _how_rounded,
        {"round": 0.25, "in-between": 0.6, "cigar-shaped": 0.15},
        0.7,
        {"completely": "round", "cigar": "cigar-shaped"},
    ),
    "edge-on-bulge": Concept(
        _edge_on_bulge, EDGE_ON_BULGE_UNSURE, 1.2, visibility=bulge_shape_visibility
    ),
    "bulge-shape": Concept(
        _edge_on_bulge,
        EDGE_ON_BULGE_UNSURE,
        1.2,
        {"round": "rounded", "no-bulge": "none"},
        visibility=bulge_shape_visibility,
    ),
    "spiral-winding": Concept(
        _spiral_winding,
        {"tight": 0.25, "medium": 0.5, "loose": 0.25},
        2.0,
        visibility=arms_visibility,
    ),
    "spiral-arm-count": Concept(
        _spiral_arm_count,
        {"1": 0.05, "2": 0.2, "3": 0.07, "4": 0.04, "more-than-4": 0.04, "cant-tell": 0.6},
        2.0,
        {"5-plus": "more-than-4"},
        visibility=arms_visibility,
    ),
    "merging": Concept(
        _merging,
        {"none": 0.8, "minor-disturbance": 0.12, "major-disturbance": 0.05, "merger": 0.03},
        1.0,
        {"neither": "none", "tidal-debris": "minor-disturbance", "both": "major-disturbance"},
    ),
    "something-odd": Concept(_something_odd, _yes(0.25), 1.0),
    "ring": Concept(_ring, _yes(0.15), 1.5),
    "clumpy-appearance": Concept(_clumps, _yes(0.3), 1.5),
    "clumps": Concept(_clumps, _yes(0.3), 1.5),
    "galaxy-symmetrical": Concept(_symmetrical, _yes(0.6), 1.0),
    "clumps-embedded-larger-object": Concept(_embedded, _yes(0.6), 1.0),
    "problem": Concept(
        _problem, {"star": 0.3, "artifact": 0.2, "zoom": 0.5}, 0.5, {"bad-zoom": "zoom"}
    ),
    "artifact": Concept(_artifact_type, None, 0.5),
}


def concept_name(question: Question) -> str:
    """The question's name without its campaign suffix: `bar-dr5` -> `bar`."""
    suffix = question.campaign
    return question.name[: -len(suffix) - 1] if suffix else question.name


def _concept(question: Question) -> tuple[Concept, list[str]]:
    """The concept answering `question` and the canonical name of each of its answers."""
    name = concept_name(question)
    if name not in CONCEPTS:
        raise UnsupportedQuestionError(
            f"synthetic volunteers cannot answer question {question.name!r} (as {name!r}); "
            f"known questions: {', '.join(sorted(CONCEPTS))}"
        )
    concept = CONCEPTS[name]
    canonical = [concept.synonyms.get(a.name, a.name) for a in question.answers]
    return concept, canonical


def check_schema(schema: Schema) -> None:
    """Raise `UnsupportedQuestionError` if a question or answer of `schema` cannot be simulated."""
    probe = draw_morphology(np.random.default_rng(0))
    for question in schema.questions:
        concept, canonical = _concept(question)
        weights = concept.truth(probe)
        unknown = [
            a for a, c in zip(question.label_cols, canonical, strict=True) if c not in weights
        ]
        if unknown:
            raise UnsupportedQuestionError(
                f"synthetic volunteers cannot answer {unknown} of question {question.name!r}; "
                f"the answers they know for it are {sorted(weights)}"
            )


def question_probabilities(question: Question, m: Morphology) -> np.ndarray:
    """The answer probabilities of a typical volunteer for this galaxy, confusion included."""
    concept, canonical = _concept(question)
    weights = concept.truth(m)
    truth = np.array([weights[c] for c in canonical], dtype=float)
    truth = truth / truth.sum() if truth.sum() > 0 else np.full(len(truth), 1 / len(truth))
    unsure = np.array([(concept.unsure or {}).get(c, 0.0) for c in canonical], dtype=float)
    unsure = unsure / unsure.sum() if unsure.sum() > 0 else np.full(len(truth), 1 / len(truth))
    seen = _seen(concept, m)
    mixed = seen * truth + (1 - seen) * unsure
    return (1 - FLOOR) * mixed + FLOOR / len(truth)


def _seen(concept: Concept, m: Morphology) -> float:
    seen = m.clarity**concept.difficulty
    return seen * concept.visibility(m) if concept.visibility is not None else seen


def question_clarity(question: Question, m: Morphology) -> float:
    """How clearly this question's answer can be seen in this galaxy, in [0, 1)."""
    return _seen(_concept(question)[0], m)
