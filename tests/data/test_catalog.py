"""Catalog loading, validation against a schema, and reproducible splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zoobot.data.catalog import (
    CatalogError,
    build_file_locs,
    load_catalog,
    read_catalog_file,
    validate_catalog,
)
from zoobot.data.sources import get_source
from zoobot.data.splits import assign_splits, split_catalog
from zoobot.shared import MAX_VOTES, Schema, get_schema

TREE = Schema(
    {"smooth": ["yes", "no"], "bar": ["strong", "weak", "none"]},
    {"smooth": None, "bar": "smooth_no"},
    name="toy",
)


def toy_catalog(n: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 10, size=(n, len(TREE.label_cols)))
    frame = pd.DataFrame(counts, columns=TREE.label_cols)
    frame.insert(0, "id_str", [f"{i:03d}" for i in range(n)])
    frame.insert(1, "file_loc", [f"/images/{i}.jpg" for i in range(n)])
    return frame


def problems_of(catalog, *args, **kwargs) -> list[str]:
    with pytest.raises(CatalogError) as err:
        validate_catalog(catalog, *args, **kwargs)
    assert all(p in str(err.value) for p in err.value.problems)
    return err.value.problems


def test_valid_catalog_gives_a_text_id_copy():
    catalog = toy_catalog()
    catalog["id_str"] = [10, 11, 12, 13]
    checked = validate_catalog(catalog, TREE)
    assert list(checked["id_str"]) == ["10", "11", "12", "13"]
    assert catalog["id_str"].iloc[0] == 10  # the input is left alone
    assert pd.api.types.is_string_dtype(checked["id_str"])


def test_csv_ids_keep_leading_zeros_and_long_digits(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text("id_str,file_loc,smooth_yes\n007,a.jpg,1\n587722981741363294,b.jpg,2\n")
    catalog = load_catalog(path, label_cols=["smooth_yes"])
    assert list(catalog["id_str"]) == ["007", "587722981741363294"]
    assert read_catalog_file(path)["id_str"].iloc[0] == "007"


def test_csv_ids_that_look_like_missing_values_are_kept(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text("id_str,file_loc,redshift\nnan,a.jpg,NA\nNA,b.jpg,0.1\nnull,c.jpg,\n")
    catalog = read_catalog_file(path)
    assert catalog["id_str"].tolist() == ["nan", "NA", "null"]
    assert catalog["redshift"].isna().tolist() == [True, False, True]
    path.write_text("id_str,file_loc\n,a.jpg\n")
    assert problems_of(read_catalog_file(path))[0].startswith("id_str is empty in 1 row(s)")


def test_missing_label_columns_are_named():
    catalog = toy_catalog().drop(columns=["bar_weak", "smooth_no"])
    (problem,) = problems_of(catalog, TREE)
    assert problem == "missing 2 label column(s): ['smooth_no', 'bar_weak']"


def test_bad_counts_name_rows_ids_and_columns():
    catalog = toy_catalog(10).astype({"bar_none": float, "smooth_yes": float, "bar_weak": object})
    catalog.loc[2, "smooth_yes"] = -1
    catalog.loc[[1, 3], "bar_none"] = [np.nan, 2.5]
    catalog.loc[4, "bar_weak"] = "many"
    problems = problems_of(catalog, TREE)
    assert "column 'smooth_yes' is negative in 1 row(s): row 2 (id_str '002')" in problems
    assert "column 'bar_none' is NaN or infinite in 1 row(s): row 1 (id_str '001')" in problems
    assert "column 'bar_none' is not a whole number in 1 row(s): row 3 (id_str '003')" in problems
    assert "column 'bar_weak' is not a number in 1 row(s): row 4 (id_str '004')" in problems
    assert len(problems) == 4


def test_many_bad_rows_are_summarised():
    catalog = toy_catalog(12)
    catalog["smooth_yes"] = -1
    (problem,) = problems_of(catalog, TREE)
    assert problem.startswith("column 'smooth_yes' is negative in 12 row(s): row 0 (id_str '000')")
    assert problem.endswith("row 4 (id_str '004') and 7 more")


@pytest.mark.parametrize(
    ("count", "problem"),
    [(np.inf, "NaN or infinite"), (-np.inf, "NaN or infinite"), (1e12, "over"), (1e300, "over")],
)
def test_infinite_and_huge_counts_are_rejected(count, problem):
    """1e12 and 1e300 are whole numbers, but float32 (shards, training) turns them into inf or
    rounds them: counts are bounded by MAX_VOTES."""
    catalog = toy_catalog().astype({"smooth_yes": float})
    catalog.loc[0, "smooth_yes"] = count
    (found,) = problems_of(catalog, TREE)
    assert found.startswith(f"column 'smooth_yes' is {problem}")
    assert found.endswith("row 0 (id_str '000')")
    catalog.loc[0, "smooth_yes"] = MAX_VOTES
    validate_catalog(catalog, TREE)


def test_an_empty_catalog_is_refused():
    assert problems_of(toy_catalog(0), TREE) == ["the catalog has no rows"]
    assert problems_of(toy_catalog(0)) == ["the catalog has no rows"]


def test_ids_with_surrounding_spaces_are_refused():
    catalog = toy_catalog(5)
    catalog.loc[[1, 3], "id_str"] = [" 001", "003\t"]
    (problem,) = problems_of(catalog, TREE)
    assert problem.startswith(
        "id_str has leading or trailing spaces in 2 row(s): row 1 (id_str ' 001'), "
        "row 3 (id_str '003\\t')"
    )


def test_label_columns_must_be_answers_of_the_schema():
    catalog = toy_catalog().assign(extra=1)
    (problem,) = problems_of(catalog, TREE, label_cols=["extra"])
    assert problem == "label column(s) ['extra'] are not answers of schema 'toy'"
    validate_catalog(catalog, label_cols=["extra"])  # without a schema they are counts to check


VALUES = st.one_of(
    st.integers(0, 30).map(float),
    st.sampled_from([np.nan, np.inf, -1.0, 2.5, 1e12, 1e300, float(MAX_VOTES), MAX_VOTES + 1.0]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(VALUES, min_size=5, max_size=5), min_size=1, max_size=8))
def test_validation_accepts_exactly_the_catalogs_of_vote_counts(rows):
    """Accepted iff every count is a whole number in [0, MAX_VOTES]; otherwise every bad
    (row, column) pair is named: its column and its row position with the id."""
    catalog = toy_catalog(len(rows))
    catalog[TREE.label_cols] = np.array(rows)
    values = np.array(rows)
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(values) & (values >= 0) & (values % 1 == 0) & (values <= MAX_VOTES))
    if not bad.any():
        checked = validate_catalog(catalog, TREE)
        np.testing.assert_array_equal(checked[TREE.label_cols].to_numpy(), values)
        return
    problems = problems_of(catalog, TREE)
    for row, col in zip(*np.nonzero(bad), strict=True):
        column = TREE.label_cols[col]
        named = [p for p in problems if p.startswith(f"column {column!r}")]
        assert any(f"row {row} (id_str '{row:03d}')" in p or "more" in p for p in named)
    for col in range(len(TREE.label_cols)):
        if not bad[:, col].any():
            assert not any(p.startswith(f"column {TREE.label_cols[col]!r}") for p in problems)


def test_id_problems():
    assert problems_of(toy_catalog().drop(columns="id_str")) == [
        "no id_str column (a unique text id per galaxy)"
    ]
    repeated = toy_catalog()
    repeated.loc[3, "id_str"] = "001"
    assert problems_of(repeated) == [
        "id_str repeats in 2 row(s): row 1 (id_str '001'), row 3 (id_str '001')"
    ]
    empty = toy_catalog()
    empty.loc[0, "id_str"] = ""
    empty.loc[2, "id_str"] = None
    assert problems_of(empty)[0].startswith("id_str is empty in 2 row(s): row 0")
    floats = toy_catalog()
    floats["id_str"] = [5.877e17, 1.0, 2.0, 3.0]
    assert "floating point" in problems_of(floats)[0]


def test_file_loc_problems(tmp_path):
    assert problems_of(toy_catalog().drop(columns="file_loc")) == [
        "no file_loc column (the path of each galaxy's image)"
    ]
    catalog = toy_catalog(2)
    (tmp_path / "there.jpg").write_bytes(b"x")
    catalog["file_loc"] = [str(tmp_path / "there.jpg"), str(tmp_path / "gone.jpg")]
    validate_catalog(catalog)  # files are only checked on request
    (problem,) = problems_of(catalog, check_files=True)
    assert "row 1 (id_str '001')" in problem and "gone.jpg" in problem


def test_schema_by_registry_name():
    schema = get_schema("gz_rings")
    catalog = pd.DataFrame({"id_str": ["a"], "file_loc": ["a.jpg"], "ring_yes": [3]})
    (problem,) = problems_of(catalog, "gz_rings")
    assert problem == "missing 1 label column(s): ['ring_no']"
    catalog["ring_no"] = 1
    assert list(validate_catalog(catalog, "gz_rings").columns) == list(catalog.columns)
    assert schema.label_cols == ["ring_yes", "ring_no"]


def test_error_message_names_the_schema():
    with pytest.raises(CatalogError, match="against schema 'toy' \\(1 problem"):
        validate_catalog(toy_catalog().drop(columns="bar_none"), TREE)


def test_load_csv_resolves_relative_file_locs(tmp_path):
    folder = tmp_path / "survey"
    folder.mkdir()
    catalog = toy_catalog(2)
    catalog["file_loc"] = ["images/0.jpg", "/elsewhere/1.jpg"]
    catalog.to_csv(folder / "cat.csv", index=False)
    loaded = load_catalog(str(folder / "cat.csv"), schema=TREE)
    assert list(loaded["file_loc"]) == [str(folder.resolve() / "images/0.jpg"), "/elsewhere/1.jpg"]
    rooted = load_catalog(folder / "cat.csv", root=tmp_path / "other", schema=TREE)
    assert rooted["file_loc"].iloc[0] == str((tmp_path / "other").resolve() / "images/0.jpg")


def test_load_parquet_with_numeric_ids(tmp_path):
    catalog = toy_catalog(2)
    catalog["id_str"] = [587722981741363294, 7]
    catalog.to_parquet(tmp_path / "cat.parquet")
    loaded = load_catalog(tmp_path / "cat.parquet", schema=TREE)
    assert list(loaded["id_str"]) == ["587722981741363294", "7"]


def test_load_errors(tmp_path):
    with pytest.raises(CatalogError, match="neither a registered data set .*gz2.* nor an existing"):
        load_catalog("no_such_thing")
    (tmp_path / "cat.txt").write_text("id_str\n1\n")
    with pytest.raises(CatalogError, match="unknown format"):
        load_catalog(tmp_path / "cat.txt")
    pd.DataFrame({"id_str": ["1"]}).to_csv(tmp_path / "nofile.csv", index=False)
    with pytest.raises(CatalogError, match="nofile.csv has no file_loc column"):
        load_catalog(tmp_path / "nofile.csv")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(CatalogError, match=r"catalog file .*broken\.parquet cannot be read"):
        load_catalog(tmp_path / "broken.parquet")
    (tmp_path / "ragged.csv").write_text('id_str,file_loc\n1,a.jpg\n2,"b.jpg\n')
    with pytest.raises(CatalogError, match=r"catalog file .*ragged\.csv cannot be read"):
        load_catalog(tmp_path / "ragged.csv")


def write_registered(root, name: str, columns: list[str], extra: dict) -> None:
    """A folder as `download(name, root)` leaves it: the catalogs; `{split}` in `extra` values."""
    source = get_source(name)
    for i, (split, file) in enumerate(source.catalogs.items()):
        frame = pd.DataFrame({c: [i, i + 1] for c in columns})
        for key, values in extra.items():
            frame[key] = [v.format(split=split) for v in values]
        frame.to_parquet(root / file.filename)


def test_load_registered_builds_file_locs(tmp_path):
    label_cols = get_schema("gz2").label_cols
    extra = {"id_str": ["1{split}", "2{split}"], "subfolder": ["s", "t"], "filename": ["a.jpg"] * 2}
    write_registered(tmp_path, "gz2", label_cols, extra)
    catalog = load_catalog("gz2", tmp_path)
    assert list(catalog["split"]) == ["train", "train", "test", "test"]
    assert catalog["file_loc"].iloc[0] == str(tmp_path.resolve() / "images/s/a.jpg")
    test = load_catalog("gz2", tmp_path, split="test")
    assert list(test["id_str"]) == ["1test", "2test"] and "split" not in test.columns


def test_load_registered_without_id_column_uses_image_names(tmp_path):
    extra = {"subfolder": ["x", "y"], "filename": ["a_{split}.jpg", "b_{split}.jpg"]}
    write_registered(tmp_path, "demo_rings", ["ring"], extra)
    catalog = load_catalog("demo_rings", tmp_path, split="train")
    assert list(catalog["id_str"]) == ["a_train", "b_train"]


def test_load_registered_checks_its_labels(tmp_path):
    extra = {"id_str": ["1{split}", "2{split}"], "filename": ["a", "b"]}
    write_registered(tmp_path, "demo_gz_candels", ["only_one"], extra)
    with pytest.raises(
        CatalogError, match=r"against schema 'gz_candels'[\s\S]*missing 32 label column"
    ):
        load_catalog("demo_gz_candels", tmp_path)


def test_load_registered_errors(tmp_path):
    with pytest.raises(CatalogError, match="needs the folder it was downloaded into"):
        load_catalog("gz2")
    with pytest.raises(
        CatalogError, match=r"gz2_train_catalog.parquet .* is missing; fetch it with"
    ):
        load_catalog("gz2", tmp_path)
    with pytest.raises(CatalogError, match="no split 'validation'; splits: train, test"):
        load_catalog("gz2", tmp_path, split="validation")


def test_build_file_locs_names_missing_columns(tmp_path):
    with pytest.raises(CatalogError, match=r"no column\(s\) \['subfolder'\]"):
        build_file_locs(
            pd.DataFrame({"filename": ["a"]}), "images/{subfolder}/{filename}", tmp_path
        )


def id_catalog(n: int, **columns) -> pd.DataFrame:
    return pd.DataFrame({"id_str": [f"g{i:05d}" for i in range(n)], **columns})


def test_split_default_fractions_are_exact():
    splits = split_catalog(id_catalog(1000), seed=3)
    assert list(splits) == ["train", "validation", "test"]
    assert [len(s) for s in splits.values()] == [800, 100, 100]


def test_split_is_deterministic_and_independent_of_row_order():
    catalog = id_catalog(500)
    first = split_catalog(catalog, seed=7)
    again = split_catalog(catalog, seed=7)
    shuffled = split_catalog(catalog.sample(frac=1, random_state=1), seed=7)
    other_seed = split_catalog(catalog, seed=8)
    for name in first:
        pd.testing.assert_frame_equal(first[name], again[name])
        assert set(first[name]["id_str"]) == set(shuffled[name]["id_str"])
    assert set(first["test"]["id_str"]) != set(other_seed["test"]["id_str"])


def test_split_keeps_input_order_and_index():
    catalog = id_catalog(50).set_index(pd.Index(range(100, 150)))
    for part in split_catalog(catalog, {"a": 0.5, "b": 0.5}).values():
        assert part.index.is_monotonic_increasing and part.index.min() >= 100


def test_split_stratified_keeps_proportions():
    labels = np.array(["ring"] * 100 + ["none"] * 900)
    catalog = id_catalog(1000, label=labels)
    splits = split_catalog(catalog, seed=0, stratify="label")
    counts = {name: part["label"].value_counts().to_dict() for name, part in splits.items()}
    assert counts["train"] == {"none": 720, "ring": 80}
    assert counts["validation"] == {"none": 90, "ring": 10}
    assert counts["test"] == {"none": 90, "ring": 10}


def test_split_tiny_strata_land_randomly_not_all_in_train():
    catalog = id_catalog(300, label=[f"c{i}" for i in range(300)])  # every stratum has one row
    sizes = {k: len(v) for k, v in split_catalog(catalog, seed=1, stratify="label").items()}
    assert sizes["validation"] > 10 and sizes["test"] > 10


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({"train": 0.8, "test": 0.1}, "must sum to 1, got 0.9"),
        ({"train": 1.2, "test": -0.2}, "positive numbers; bad: {'test': -0.2}"),
        ({"train": 1.0, "test": 0.0}, "bad: {'test': 0.0}"),
        ({"train": "half", "test": 0.5}, "bad: {'train': 'half'}"),
        ({}, "non-empty"),
        ([0.5, 0.5], "non-empty"),
        ({"train": float("nan"), "test": 0.5}, "bad"),
    ],
)
def test_split_rejects_bad_fractions(fractions, message):
    with pytest.raises(CatalogError, match=message.replace("{", "\\{").replace("(", "\\(")):
        split_catalog(id_catalog(10), fractions)


def test_split_needs_unique_ids_and_known_stratify_column():
    with pytest.raises(CatalogError, match="needs an id_str column"):
        split_catalog(pd.DataFrame({"x": [1, 2]}))
    with pytest.raises(CatalogError, match="repeated in 2 row"):
        split_catalog(pd.DataFrame({"id_str": ["a", "a", "b"]}))
    with pytest.raises(CatalogError, match="cannot stratify by 'colour'"):
        split_catalog(id_catalog(5), stratify="colour")


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 300),
    weights=st.lists(st.integers(1, 20), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_is_a_partition_with_sizes_within_one(n, weights, seed):
    fractions = {f"s{i}": w / sum(weights) for i, w in enumerate(weights)}
    splits = split_catalog(id_catalog(n), fractions, seed=seed)
    ids = np.concatenate([s["id_str"].to_numpy() for s in splits.values()])
    assert sorted(ids) == sorted(id_catalog(n)["id_str"])
    for name, part in splits.items():
        assert abs(len(part) - fractions[name] * n) < 1 + 1e-9


def test_assign_splits_fractions_are_split_catalog_positions():
    catalog = id_catalog(200).sample(frac=1, random_state=2).set_index(pd.Index(range(5, 205)))
    fractions = {"train": 0.6, "validation": 0.3, "test": 0.1}
    positions = assign_splits(catalog, fractions, seed=4)
    expected = split_catalog(catalog, fractions, seed=4)
    assert list(positions) == list(fractions)
    for name, rows in positions.items():
        assert np.all(np.diff(rows) > 0)
        pd.testing.assert_frame_equal(catalog.iloc[rows], expected[name])


def test_assign_splits_default_is_the_split_column_else_80_10_10():
    catalog = id_catalog(100)
    default = assign_splits(catalog, None, seed=1)
    for name, rows in assign_splits(
        catalog, {"train": 0.8, "validation": 0.1, "test": 0.1}, 1
    ).items():
        np.testing.assert_array_equal(default[name], rows)
    catalog["split"] = ["validation", "extra", "test", "train"] * 25
    by_column = assign_splits(catalog, None, seed=1)
    assert list(by_column) == ["train", "validation", "test", "extra"]
    np.testing.assert_array_equal(by_column["extra"], np.arange(1, 100, 4))


@pytest.mark.parametrize(
    ("splits", "column", "allowed", "message"),
    [
        ("fold", None, None, r"split column 'fold' is not in the catalog; columns: \['id_str'\]"),
        (
            "fold",
            ["train", None, "test", 3],
            None,
            r"split column 'fold' holds 3, None in 2 row\(s\): row 1 \(id_str 'g00001'\), "
            r"row 3 \(id_str 'g00003'\); each row's split must be letters, digits or '_'",
        ),
        (
            "fold",
            ["train", "val", "test", "val"],
            ("train", "validation", "test"),
            r"holds 'val' in 2 row\(s\): row 1 .*must be one of \['train', 'validation', 'test'\]",
        ),
        ("fold", ["train", "a/b", "test", "test"], None, r"holds 'a/b' in 1 row\(s\): row 1"),
        ({"train-a": 1.0}, None, None, r"split name 'train-a' must be letters, digits or '_'"),
        ({"train": 0.5, "val": 0.5}, None, ("train", "validation", "test"), "'val' is not among"),
        ({"train": 0.8, "test": 0.1}, None, None, "must sum to 1, got 0.9"),
        (["train"], None, None, "non-empty"),
    ],
)
def test_assign_splits_errors_name_the_column_value_and_rows(splits, column, allowed, message):
    catalog = id_catalog(4) if column is None else id_catalog(4, fold=column)
    with pytest.raises(CatalogError, match=message):
        assign_splits(catalog, splits, seed=0, allowed=allowed)
