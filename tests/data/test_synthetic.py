"""The synthetic survey: determinism, catalog layout, votes that follow the tree and the truth."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zoobot.data.catalog import load_catalog, validate_catalog
from zoobot.data.synthetic import (
    SurveyError,
    UnsupportedQuestionError,
    appearance,
    check_schema,
    draw_galaxy,
    make_survey,
    render_galaxy,
    simulate_votes,
    survey_catalog,
)
from zoobot.shared import Schema, get_schema, list_schemas

SCHEMA = get_schema("decals_dr5")


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """A few hundred small galaxies, rendered on two workers."""
    out = tmp_path_factory.mktemp("survey")
    return out, make_survey(300, out, image_size=64, seed=3, workers=2, progress=False)


def fractions(catalog: pd.DataFrame, question: str, answer: str) -> pd.Series:
    """Vote fraction of one answer among the volunteers asked `question` (NaN if none was)."""
    asked = catalog[SCHEMA.get_question(question).label_cols].sum(axis=1)
    return catalog[f"{question}_{answer}"] / asked.where(asked > 0)


def entropy(catalog: pd.DataFrame, question: str) -> pd.Series:
    """Entropy of each galaxy's votes for `question` (NaN where nobody was asked it)."""
    counts = catalog[SCHEMA.get_question(question).label_cols].to_numpy(float)
    total = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return pd.Series(np.where(total[:, 0] > 0, -terms.sum(axis=1), np.nan))


def test_catalog_has_exactly_the_schema_label_columns(survey):
    out, catalog = survey
    labels = [c for c in catalog.columns if c not in ("id_str", "file_loc")]
    labels = [c for c in labels if not c.startswith("true_")]
    assert labels == SCHEMA.label_cols
    assert catalog.columns[:2].tolist() == ["id_str", "file_loc"]
    assert all(catalog[c].dtype == np.int64 for c in SCHEMA.label_cols)
    assert (catalog[SCHEMA.label_cols] >= 0).all().all()
    assert {"true_bar", "true_ring", "true_spiral_arms", "true_magnitude", "true_size"} <= set(
        catalog.columns
    )
    validate_catalog(catalog, SCHEMA, check_files=True)


def test_catalog_files_resolve_to_the_images(survey):
    out, catalog = survey
    on_disk = pd.read_parquet(out / "catalog.parquet")
    assert on_disk["file_loc"].str.startswith("images/").all()
    loaded = load_catalog(out / "catalog.csv")
    assert loaded["file_loc"].tolist() == catalog["file_loc"].tolist()
    assert loaded["id_str"].tolist() == catalog["id_str"].tolist()
    assert json.loads((out / "survey.json").read_text())["schema"] == "decals_dr5"


def test_images_are_rgb_jpegs_of_the_requested_size(survey):
    _, catalog = survey
    for loc in catalog["file_loc"].iloc[:20]:
        with Image.open(loc) as image:
            assert image.format == "JPEG"
            assert image.size == (64, 64)
            assert image.mode == "RGB"
            pixels = np.asarray(image)
        assert pixels.std() > 5  # not blank


def test_votes_follow_the_tree(survey):
    _, catalog = survey
    counts = catalog[SCHEMA.label_cols].to_numpy()
    for question in SCHEMA.questions:
        asked = counts[:, question.start : question.end + 1].sum(axis=1)
        if question.asked_after is None:
            assert ((asked >= 30) & (asked <= 50)).all()
        else:
            parent = counts[:, SCHEMA.get_answer(question.asked_after).index]
            # Every question has a single parent answer: exactly its voters are asked.
            np.testing.assert_array_equal(asked, parent)
    unreached = catalog["disk-edge-on-dr5_yes"] == 0
    assert (
        (catalog.loc[unreached, SCHEMA.get_question("edge-on-bulge-dr5").label_cols] == 0)
        .all()
        .all()
    )


def test_vote_fractions_track_the_true_morphology(survey):
    _, catalog = survey
    disks = catalog[catalog["true_kind"] == "disk"]
    smooth = fractions(catalog, "smooth-or-featured-dr5", "smooth")
    assert (
        smooth[catalog["true_kind"] == "smooth"].mean()
        > smooth[catalog["true_kind"] == "disk"].mean() + 0.25
    )

    edge_on = fractions(disks, "disk-edge-on-dr5", "yes")
    assert edge_on[disks["true_inclination"] > 80].mean() > 0.6
    assert edge_on[disks["true_inclination"] < 60].mean() < 0.2

    face_on = disks[disks["true_inclination"] < 60]
    barred = 1 - fractions(face_on, "bar-dr5", "no")
    assert (
        barred[face_on["true_bar"] == "strong"].mean()
        > barred[face_on["true_bar"] == "none"].mean() + 0.3
    )

    spiral = fractions(face_on, "has-spiral-arms-dr5", "yes")
    has_arms = face_on["true_spiral_arms"] > 0
    assert spiral[has_arms].mean() > spiral[~has_arms].mean() + 0.3

    merging = 1 - fractions(catalog, "merging-dr5", "none")
    assert (
        merging[catalog["true_merger"] != "none"].mean()
        > merging[catalog["true_merger"] == "none"].mean() + 0.3
    )


def a_disk(**changes):
    """A bright, face-on, bulgeless disk under median seeing, with `changes`."""
    disk = next(m for m in map(lambda i: draw_galaxy(0, i), range(100)) if m.kind == "disk")
    plain = dict(
        magnitude=15.0,
        size=4.0,
        inclination=20.0,
        axis_ratio=0.94,
        bulge_fraction=0.0,
        bulge_shape="none",
        bar="none",
        bar_strength=0.0,
        bar_length=0.0,
        spiral_arms=0,
        spiral_pitch=0.0,
        spiral_strength=0.0,
        ring=False,
        clumps=0,
        merger="none",
        psf_fwhm=1.3,
        clarity=0.95,
    )
    return dataclasses.replace(disk, **{**plain, **changes})


def mean_fraction(galaxy, question: str, answer: str, draws: int = 300) -> float:
    """Mean vote fraction of `answer` over many crowds of 40 volunteers looking at `galaxy`."""
    rng = np.random.default_rng(0)
    q = SCHEMA.get_question(question)
    column = SCHEMA.get_answer(f"{question}_{answer}").index
    shares = []
    for _ in range(draws):
        votes = simulate_votes(SCHEMA, galaxy, rng, n_volunteers=40)
        asked = votes[q.start : q.end + 1].sum()
        if asked:
            shares.append(votes[column] / asked)
    return float(np.mean(shares))


def test_volunteers_see_a_bar_only_where_the_image_shows_it():
    # A strong bar twice the seeing in a face-on disk; the same bar at half the seeing, or in a
    # disk tilted to 72 degrees (not yet edge-on: volunteers are still asked about bars).
    bar = dict(bar="strong", bar_strength=0.8)
    clear = a_disk(**bar, bar_length=2.6)
    unresolved = a_disk(**bar, bar_length=0.65)
    tilted = a_disk(**bar, bar_length=2.6, inclination=72.0, axis_ratio=0.33)
    no_bar = mean_fraction(clear, "bar-dr5", "no")
    assert no_bar < 0.3
    # The 300 crowds' mean fractions have standard errors below 0.02: gaps of 0.4 are far out.
    assert mean_fraction(unresolved, "bar-dr5", "no") > no_bar + 0.4
    assert mean_fraction(tilted, "bar-dr5", "no") > no_bar + 0.4


def test_volunteers_see_spiral_arms_only_where_they_are_resolved():
    arms = dict(spiral_arms=2, spiral_strength=0.5)
    loose = a_disk(**arms, spiral_pitch=30.0)  # arms 5 arcsec apart: 4x the seeing
    tight = a_disk(**arms, spiral_pitch=8.0, size=1.5)  # 0.5 arcsec apart: within the seeing
    assert mean_fraction(loose, "has-spiral-arms-dr5", "yes") > 0.8
    assert mean_fraction(tight, "has-spiral-arms-dr5", "yes") < 0.3


def test_edge_on_votes_follow_the_outline_the_seeing_and_the_bulge_leave():
    thin = a_disk(inclination=88.0, axis_ratio=0.12)
    # The same disk, smaller than the seeing and with a large bulge, looks round enough that
    # volunteers no longer call it edge-on.
    blurred = dataclasses.replace(thin, size=1.2, bulge_fraction=0.6, bulge_shape="rounded")
    assert (
        appearance.apparent_axis_ratio(thin) < 0.2 < 0.45 < appearance.apparent_axis_ratio(blurred)
    )
    assert mean_fraction(thin, "disk-edge-on-dr5", "yes") > 0.8
    assert mean_fraction(blurred, "disk-edge-on-dr5", "yes") < 0.3


def test_fainter_and_smaller_galaxies_get_more_ambiguous_votes():
    # On a detail question: faint disks look smooth to everyone, so the root question's votes
    # agree about as much for faint galaxies as for bright ones.
    catalog = survey_catalog(SCHEMA, seed=5, n=1500)
    spread = entropy(catalog, "bulge-size-dr5")
    faint = catalog["true_magnitude"] > catalog["true_magnitude"].median()
    small = catalog["true_size"] < catalog["true_size"].median()
    assert spread[faint].mean() > spread[~faint].mean() + 0.05
    assert spread[small].mean() > spread[~small].mean() + 0.05
    clarity = catalog["true_clarity"]
    blurred, clear = clarity < clarity.quantile(1 / 3), clarity > clarity.quantile(2 / 3)
    assert spread[blurred].mean() > spread[clear].mean() + 0.05


def test_same_seed_same_survey_serial_or_parallel(tmp_path):
    serial = make_survey(10, tmp_path / "a", image_size=48, seed=7, workers=1, progress=False)
    parallel = make_survey(10, tmp_path / "b", image_size=48, seed=7, workers=2, progress=False)
    pd.testing.assert_frame_equal(
        serial.drop(columns="file_loc"), parallel.drop(columns="file_loc")
    )
    for a, b in zip(serial["file_loc"], parallel["file_loc"], strict=True):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    other = make_survey(10, tmp_path / "c", image_size=48, seed=8, workers=1, progress=False)
    assert not other[SCHEMA.label_cols].equals(serial[SCHEMA.label_cols])


def test_galaxies_do_not_depend_on_survey_size():
    small = survey_catalog(SCHEMA, seed=2, n=5)
    large = survey_catalog(SCHEMA, seed=2, n=40)
    pd.testing.assert_frame_equal(small, large.iloc[:5])
    assert render_galaxy(2, 3, 48) == render_galaxy(2, 3, 48)


def test_resume_renders_only_missing_images(tmp_path):
    first = make_survey(6, tmp_path, image_size=32, seed=1, workers=1, progress=False)
    kept = Path(first["file_loc"][0]).read_bytes()
    (tmp_path / "images" / f"{first['id_str'][5]}.jpg").unlink()
    again = make_survey(8, tmp_path, image_size=32, seed=1, workers=1, progress=False)
    assert len(again) == 8 and all(Path(p).read_bytes() for p in again["file_loc"])
    assert Path(again["file_loc"][0]).read_bytes() == kept
    assert Path(again["file_loc"][5]).read_bytes() == render_galaxy(1, 5, 32)
    with pytest.raises(SurveyError, match="image_size=32"):
        make_survey(8, tmp_path, image_size=64, seed=1, workers=1, progress=False)


@pytest.mark.parametrize("name", list_schemas())
def test_every_registered_schema_can_be_simulated(name):
    schema = get_schema(name)
    check_schema(schema)
    catalog = survey_catalog(schema, seed=0, n=30)
    counts = catalog[schema.label_cols].to_numpy()
    assert (counts >= 0).all()
    for question in schema.questions:
        if question.asked_after is not None:
            asked = counts[:, question.start : question.end + 1].sum(axis=1)
            assert (asked <= counts[:, schema.get_answer(question.asked_after).index]).all()
    # A union of campaigns shows each galaxy in one campaign only, as in GZ Evo.
    shown = [
        catalog[[c for q in questions for c in schema.get_question(q).label_cols]].sum(axis=1) > 0
        for questions in schema.campaigns.values()
    ]
    assert (np.sum(shown, axis=0) == 1).all()


def test_unknown_questions_are_refused_with_the_known_ones():
    schema = Schema({"tidal-features": ["yes", "no"]}, name="custom")
    with pytest.raises(UnsupportedQuestionError, match="tidal-features.*known questions: .*bar"):
        check_schema(schema)
    odd_answers = Schema({"bar-dr5": ["long", "short"]}, name="odd")
    with pytest.raises(UnsupportedQuestionError, match=r"\['bar-dr5_long', 'bar-dr5_short'\]"):
        check_schema(odd_answers)


def test_simulate_votes_for_one_galaxy():
    rng = np.random.default_rng(0)
    galaxy = draw_galaxy(0, 0)
    votes = simulate_votes(SCHEMA, galaxy, rng, n_volunteers=40)
    assert votes.dtype == np.int64 and votes.shape == (len(SCHEMA.label_cols),)
    root = SCHEMA.get_question("smooth-or-featured-dr5")
    assert votes[root.start : root.end + 1].sum() == 40


def test_bad_requests_are_refused(tmp_path):
    with pytest.raises(SurveyError, match="image_size >= 16"):
        make_survey(3, tmp_path, image_size=8, progress=False)
    with pytest.raises(KeyError, match="unknown schema"):
        make_survey(3, tmp_path, schema="gz_nonexistent", progress=False)


@pytest.mark.parametrize("pa", [0.0, 0.7, 2.0])
def test_a_boxy_bulge_lies_along_its_disk(pa):
    import galsim

    from zoobot.data.synthetic.render import _bulge

    edge_on = a_disk(inclination=87.0, axis_ratio=0.13, bulge_fraction=0.4)
    cos_i = float(np.cos(np.radians(edge_on.inclination)))
    for shape in ("boxy", "rounded"):
        bulge = _bulge(dataclasses.replace(edge_on, bulge_shape=shape), cos_i, pa)
        image = bulge.drawImage(nx=96, ny=96, scale=0.1)
        moments = galsim.hsm.FindAdaptiveMom(image).observed_shape
        angle = moments.beta.rad % np.pi
        # Position angles are defined modulo pi; HSM's angle is good to well under 0.01 rad here.
        assert min(abs(angle - pa % np.pi), np.pi - abs(angle - pa % np.pi)) < 0.05, shape
        elongation = (1 - moments.g) / (1 + moments.g)
        assert elongation < (0.6 if shape == "boxy" else 0.8), shape
