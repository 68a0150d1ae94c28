"""Hugging Face datasets: catalog -> DatasetDict -> Hub layout -> load_dataset / catalog, and publishing.

No test touches the network: the Hub endpoint is a closed loopback port, offline mode is on unless a
test turns it off to reach the token check, and the datasets cache lives in the test's tmp folder.
"""

from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from zoobot.data.catalog import CatalogError
from zoobot.data.hf import (
    HubDatasetError,
    PublishError,
    citation_for,
    layout_files,
    load_hf_catalog,
    publish,
    read_card,
    save_hub_layout,
    schema_from_card,
    to_hf_dataset,
)
from zoobot.data.hf import layout as layout_module
from zoobot.data.hf import upload as upload_module
from zoobot.shared import Schema, get_schema

SCHEMA = Schema(
    {"shape": ["round", "disk", "artifact"], "bar": ["yes", "no"]},
    {"bar": "shape_disk"},
    name="toy",
    description="a two-question tree for tests",
)
COUNTS = [
    # shape_round, shape_disk, shape_artifact, bar_yes, bar_no
    (5, 0, 0, 0, 0),  # smooth: bar never asked
    (1, 3, 1, 2, 1),
    (0, 4, 0, 0, 4),
    (0, 0, 0, 0, 0),  # nobody classified it at all
    (2, 2, 1, 1, 1),
    (0, 6, 0, 6, 0),
    (3, 1, 0, 0, 1),
    (0, 0, 2, 0, 0),
    (4, 4, 0, 3, 1),
    (1, 1, 1, 1, 0),
    (7, 0, 0, 0, 0),
    (0, 2, 0, 1, 1),
]
IDS = ["0012", "J1234+5678", "gal/3", *(f"g{i}" for i in range(3, len(COUNTS)))]


@pytest.fixture(autouse=True)
def no_network(tmp_path, monkeypatch):
    """Keep every test off the network and out of the user's caches and Hub credentials."""
    home = tmp_path / "hf_home"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("ZOOBOT_CACHE", str(tmp_path / "zoobot_cache"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)


def write_images(folder, n):
    """Real PNG (RGB and greyscale) and JPEG files of different sizes, each with distinct pixels."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        size = 8 + 2 * i
        if i % 3 == 0:
            image, name = Image.fromarray(rng.integers(0, 256, (size, size), np.uint8)), f"{i}.png"
        else:
            image = Image.fromarray(rng.integers(0, 256, (size, size + 1, 3), np.uint8))
            name = f"{i}.png" if i % 3 == 1 else f"{i}.jpg"
        image.save(folder / name)
        paths.append(str(folder / name))
    return paths


@pytest.fixture
def catalog(tmp_path):
    frame = pd.DataFrame(COUNTS, columns=SCHEMA.label_cols)
    frame.insert(0, "id_str", IDS)
    frame.insert(1, "file_loc", write_images(tmp_path / "images", len(IDS)))
    frame["ra"] = np.linspace(10.0, 20.0, len(IDS))
    return frame


@pytest.fixture
def dataset(catalog):
    return to_hf_dataset(catalog, SCHEMA, extra_columns=["ra"])


@pytest.fixture
def folder(dataset, tmp_path):
    return save_hub_layout(dataset, tmp_path / "hub", SCHEMA, card={"license": "cc-by-4.0"})


def by_id(catalog):
    return catalog.set_index("id_str")


def assert_rows_match_catalog(split, catalog):
    """Every row's id, counts and image (bytes and pixels) equal the catalog's for that id."""
    expected = by_id(catalog)
    raw = split.cast_column("image", datasets.Image(decode=False))
    for row, decoded in zip(raw, split, strict=True):
        assert isinstance(row["id_str"], str)
        source = expected.loc[row["id_str"]]
        with open(source["file_loc"], "rb") as f:
            original = f.read()
        assert row["image"]["bytes"] == original
        np.testing.assert_array_equal(
            np.asarray(decoded["image"]), np.asarray(Image.open(source["file_loc"]))
        )
        for col in SCHEMA.label_cols:
            assert row[col] == source[col]
        assert row["ra"] == source["ra"]


def test_vote_totals_and_fractions(dataset, catalog):
    rows = pd.concat([split.to_pandas() for split in dataset.values()]).set_index("id_str")
    expected = by_id(catalog)
    for question in SCHEMA.questions:
        counts = expected[question.label_cols].to_numpy()
        totals = counts.sum(axis=1)
        np.testing.assert_array_equal(
            rows.loc[expected.index, f"{question.name}_total-votes"], totals
        )
        for j, col in enumerate(question.label_cols):
            fractions = rows.loc[expected.index, f"{col}_fraction"].to_numpy()
            answered = totals > 0
            np.testing.assert_allclose(fractions[answered], counts[answered, j] / totals[answered])
            assert np.isnan(fractions[~answered]).all()
    # Zero-vote questions are null (None in Python rows), not 0.
    smooth = next(r for split in dataset.values() for r in split if r["id_str"] == "0012")
    assert smooth["bar_total-votes"] == 0 and smooth["bar_yes_fraction"] is None
    assert smooth["shape_round_fraction"] == 1.0


def test_features(dataset):
    features = dataset["train"].features
    assert isinstance(features["image"], datasets.Image)
    assert features["id_str"].dtype == "string"
    assert all(features[c].dtype == "int64" for c in SCHEMA.label_cols)
    assert features["shape_total-votes"].dtype == "int64"
    assert features["bar_no_fraction"].dtype == "float64"


def test_load_dataset_returns_same_rows_images_and_labels(dataset, folder, catalog):
    loaded = datasets.load_dataset(str(folder))
    assert set(loaded) == {"train", "validation", "test"}
    for name, split in loaded.items():
        assert split.features == dataset[name].features
        assert split["id_str"] == dataset[name]["id_str"]
        assert_rows_match_catalog(split, catalog)
        original = dataset[name].remove_columns("image").to_pandas()
        pd.testing.assert_frame_equal(split.remove_columns("image").to_pandas(), original)


def test_layout_is_the_hub_layout(folder):
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert names == [
        "README.md",
        "data/test-00000-of-00001.parquet",
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
    ]
    assert [p.name for p in layout_files(folder)][0] == "README.md"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_card_yaml_holds_configs_features_schema_and_citation(folder):
    text = (folder / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["license"] == "cc-by-4.0"
    assert "galaxy-zoo" in meta["tags"]
    data_files = meta["configs"][0]["data_files"]
    assert {f["split"]: f["path"] for f in data_files} == {
        "train": "data/train-*",
        "validation": "data/validation-*",
        "test": "data/test-*",
    }
    features = {f["name"]: f["dtype"] for f in meta["dataset_info"]["features"]}
    assert features["image"] == "image" and features["id_str"] == "string"
    assert meta["zoobot"]["schema_name"] == "toy"
    assert meta["zoobot"]["label_cols"] == SCHEMA.label_cols
    assert Schema.from_dict(meta["zoobot"]["schema"]) == SCHEMA
    assert schema_from_card(read_card(folder)) == SCHEMA


def test_registry_schema_card_cites_its_release(tmp_path):
    schema = get_schema("decals_dr5")
    frame = pd.DataFrame(np.ones((3, len(schema.label_cols)), dtype=int), columns=schema.label_cols)
    frame.insert(0, "id_str", ["a", "b", "c"])
    frame.insert(1, "file_loc", write_images(tmp_path / "images", 3))
    frame["split"] = ["train", "validation", "test"]
    folder = save_hub_layout(to_hf_dataset(frame, "decals_dr5"), tmp_path / "hub", "decals_dr5")
    card = read_card(folder)
    assert schema_from_card(card) == schema
    assert "2022MNRAS.509.3966W" in card.data.to_dict()["zoobot"]["citation"]
    assert "10.1093/mnras/stab2093" in card.text
    assert "Willett" in citation_for("gz2") and "2835" in citation_for("gz2")
    assert citation_for("toy") == ""


def test_shards_are_cut_by_size_and_load_in_order(dataset, tmp_path, catalog):
    folder = save_hub_layout(dataset, tmp_path / "hub", SCHEMA, max_shard_size=2_000)
    shards = sorted(p.name for p in (folder / "data").glob("train-*"))
    count = len(shards)
    assert count > 1
    assert shards == [f"train-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
    loaded = datasets.load_dataset(str(folder), split="train")
    assert loaded["id_str"] == dataset["train"]["id_str"]
    assert_rows_match_catalog(loaded, catalog)


def test_splits_are_seeded_by_id_not_row_order(catalog):
    def assignment(frame, **kwargs):
        ds = to_hf_dataset(frame, SCHEMA, **kwargs)
        return {i: name for name, split in ds.items() for i in split["id_str"]}

    first = assignment(catalog, seed=1)
    assert first == assignment(catalog.sample(frac=1, random_state=3), seed=1)
    assert first != assignment(catalog, seed=2)
    sizes = pd.Series(first).value_counts().to_dict()
    assert (
        abs(sizes["train"] - 9.6) < 1 and sizes["validation"] + sizes["test"] == 12 - sizes["train"]
    )
    halves = assignment(catalog, splits={"train": 0.5, "test": 0.5})
    assert pd.Series(halves).value_counts().to_dict() == {"train": 6, "test": 6}


def test_split_column_is_used(catalog):
    catalog["split"] = ["test", "validation", *["train"] * (len(catalog) - 2)]
    ds = to_hf_dataset(catalog, SCHEMA)
    assert ds["test"]["id_str"] == ["0012"] and ds["validation"]["id_str"] == ["J1234+5678"]
    catalog["fold"] = catalog.pop("split")
    assert to_hf_dataset(catalog, SCHEMA, splits="fold")["test"]["id_str"] == ["0012"]
    catalog.loc[0, "fold"] = "val"
    with pytest.raises(CatalogError, match=r"split column 'fold' holds 'val' in 1 row\(s\): row 0"):
        to_hf_dataset(catalog, SCHEMA, splits="fold")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.assign(id_str=["same"] * len(c)), "id_str repeats"),
        (lambda c: c.assign(file_loc=c["file_loc"].str.replace("images", "gone")), "no file"),
        (lambda c: c.assign(bar_yes=0.5), "not a whole number"),
        (lambda c: c.assign(bar_yes=np.nan), "NaN"),
        (lambda c: c.assign(bar_yes=-1), "negative"),
        (lambda c: c.assign(bar_yes=1e12), r"column 'bar_yes' is over 100000 in \d+ row"),
        (lambda c: c.drop(columns="bar_no"), "bar_no"),
        (lambda c: c.iloc[:0], "the catalog has no rows"),
    ],
)
def test_bad_catalogs_are_refused(catalog, change, message):
    with pytest.raises(CatalogError, match=message):
        to_hf_dataset(change(catalog), SCHEMA)


def test_a_file_that_is_not_an_image_is_named(catalog, tmp_path):
    fake = tmp_path / "images" / "fake.png"
    fake.write_text("not an image")
    catalog.loc[4, "file_loc"] = str(fake)
    fits = tmp_path / "images" / "fits.jpg"
    fits.write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    catalog.loc[6, "file_loc"] = str(fits)
    with pytest.raises(
        HubDatasetError,
        match=r"2 image\(s\)[\s\S]*row 4 \(id_str '.*'\), file "
        r".*fake\.png: not a JPEG or PNG file[\s\S]*row 6 .*fits\.jpg: .*a FITS file",
    ):
        to_hf_dataset(catalog, SCHEMA, splits={"train": 1.0})


def test_bad_extra_columns_are_refused(catalog):
    with pytest.raises(HubDatasetError, match="not in the catalog"):
        to_hf_dataset(catalog, SCHEMA, extra_columns=["dec"])
    with pytest.raises(HubDatasetError, match="clash"):
        to_hf_dataset(
            catalog.assign(**{"bar_total-votes": 1}), SCHEMA, extra_columns=["bar_total-votes"]
        )


def test_save_is_atomic_and_never_clobbers(dataset, folder, tmp_path, monkeypatch):
    with pytest.raises(FileExistsError):
        save_hub_layout(dataset, folder, SCHEMA)
    before = (folder / "README.md").read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(layout_module, "build_card", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_hub_layout(dataset, folder, SCHEMA, overwrite=True)
    with pytest.raises(RuntimeError, match="disk full"):
        save_hub_layout(dataset, tmp_path / "fresh", SCHEMA)
    assert (folder / "README.md").read_text() == before
    assert not (tmp_path / "fresh").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(HubDatasetError, match="refusing"):
        save_hub_layout(dataset, other, SCHEMA, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"


def test_a_layout_zoobot_data_did_not_write_is_never_replaced(
    dataset, folder, tmp_path, folder_state
):
    """Same file names, but a card without our `zoobot` key: someone else's dataset."""
    theirs = tmp_path / "theirs"
    (theirs / "data").mkdir(parents=True)
    (theirs / "README.md").write_text("---\nlicense: mit\n---\n\nMy own dataset.\n")
    (theirs / "data" / "train-00000-of-00001.parquet").write_bytes(b"their rows")
    before = folder_state(theirs)
    with pytest.raises(HubDatasetError, match="not a Hub-layout dataset folder written by zoobot"):
        save_hub_layout(dataset, theirs, SCHEMA, overwrite=True)
    assert before.touched() == set()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_overwrite_replaces_an_earlier_layout(dataset, folder, catalog):
    smaller = datasets.DatasetDict({"train": dataset["train"].select(range(3))})
    save_hub_layout(smaller, folder, SCHEMA, overwrite=True)
    assert sorted(p.name for p in (folder / "data").iterdir()) == ["train-00000-of-00001.parquet"]
    assert datasets.load_dataset(str(folder), split="train")["id_str"] == smaller["train"]["id_str"]


@pytest.fixture
def hub_calls(monkeypatch):
    """Record (and refuse) any HfApi call, so a test can assert nothing was sent."""
    calls = []

    def refuse(name):
        def method(self, *args, **kwargs):
            calls.append(name)
            raise AssertionError(f"HfApi.{name} must not be called")

        return method

    for name in ("create_repo", "create_branch", "repo_info", "list_repo_files", "create_commit"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, refuse(name))
    return calls


def test_dry_run_lists_the_files_without_network(folder, hub_calls, capsys):
    plan = publish(folder, "someone/galaxies", dry_run=True)
    expected = [(p.relative_to(folder).as_posix(), p.stat().st_size) for p in layout_files(folder)]
    assert list(plan.files) == expected
    assert [path for path, _ in plan.files] == [
        "README.md",
        "data/test-00000-of-00001.parquet",
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
    ]
    printed = capsys.readouterr().out
    assert all(path in printed for path, _ in plan.files)
    assert plan.commit_url is None and hub_calls == []


def test_dry_run_of_a_dataset_dict(dataset, hub_calls):
    plan = publish(dataset, "someone/galaxies", dry_run=True, schema=SCHEMA)
    assert [p for p, _ in plan.files][0] == "README.md" and len(plan.files) == 4
    assert hub_calls == []


def test_offline_publish_fails_clearly_and_uploads_nothing(folder, hub_calls):
    with pytest.raises(PublishError, match="HF_HUB_OFFLINE"):
        publish(folder, "someone/galaxies", token="hf_dummy")
    assert hub_calls == []


def test_unauthenticated_publish_says_how_to_log_in(folder, hub_calls, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(PublishError, match="hf auth login") as err:
        publish(folder, "someone/galaxies")
    assert "HF_TOKEN" in str(err.value)
    assert hub_calls == []


def test_unreachable_hub_fails_clearly(folder, monkeypatch):
    # The endpoint is a closed port on loopback: the connection is refused without leaving the host.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(PublishError, match="cannot reach"):
        publish(folder, "someone/galaxies", token="hf_dummy")


class FakeApi:
    """Stands in for HfApi: a repo with an earlier upload whose shards this one must replace."""

    calls: list = []

    def __init__(self, token=None):
        self.endpoint = "http://hub.invalid"

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def repo_info(self, repo_id, **kwargs):
        return type("Info", (), {"sha": "parent-sha"})()

    def list_repo_files(self, repo_id, **kwargs):
        return [".gitattributes", "README.md", "LICENSE", "data/train-00000-of-00002.parquet"]

    def create_commit(self, repo_id, **kwargs):
        self.calls.append(("create_commit", repo_id, kwargs))
        return type("Commit", (), {"commit_url": "http://hub.invalid/commit/1"})()


def test_publish_is_one_commit_replacing_stale_shards(folder, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(upload_module, "HfApi", FakeApi)
    FakeApi.calls = []
    result = publish(folder, "someone/galaxies", private=True, revision="v1", token="hf_dummy")
    kinds = [call[0] for call in FakeApi.calls]
    assert kinds == ["create_repo", "create_branch", "create_commit"]
    assert FakeApi.calls[0][2] == {"repo_type": "dataset", "private": True, "exist_ok": True}
    commit = FakeApi.calls[2][2]
    assert commit["repo_type"] == "dataset" and commit["revision"] == "v1"
    assert commit["parent_commit"] == "parent-sha"
    added = [op.path_in_repo for op in commit["operations"] if hasattr(op, "path_or_fileobj")]
    deleted = [op.path_in_repo for op in commit["operations"] if not hasattr(op, "path_or_fileobj")]
    assert added == [path for path, _ in result.files]
    assert deleted == ["data/train-00000-of-00002.parquet"] == list(result.deleted)
    assert result.commit_url == "http://hub.invalid/commit/1"


def test_load_hf_catalog_materialises_identical_images(folder, catalog, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    splits = {
        name: load_hf_catalog(folder, name, cache_dir=cache)
        for name in ("train", "validation", "test")
    }
    loaded = pd.concat(splits.values(), ignore_index=True)
    assert sorted(loaded["id_str"]) == sorted(IDS)
    assert list(loaded.columns[:2]) == ["id_str", "file_loc"]
    assert loaded["id_str"].map(type).eq(str).all()
    expected = by_id(catalog)
    for _, row in loaded.iterrows():
        source = expected.loc[row["id_str"]]
        with open(row["file_loc"], "rb") as got, open(source["file_loc"], "rb") as want:
            assert got.read() == want.read()
        assert row["file_loc"].endswith(source["file_loc"][-4:])
        assert all(row[c] == source[c] for c in SCHEMA.label_cols)
    # Ids become safe file names inside the split's folder.
    gal3 = loaded.set_index("id_str").loc["gal/3", "file_loc"]
    assert gal3.startswith(str(cache)) and gal3.endswith("gal_3.jpg")

    writes = []
    monkeypatch.setattr("zoobot.data.hf.catalog.atomic_write_bytes", lambda p, d: writes.append(p))
    train = splits["train"]
    pd.testing.assert_frame_equal(load_hf_catalog(folder, "train", cache_dir=cache), train)
    assert writes == []
    with open(train["file_loc"].iloc[0], "wb") as f:
        f.write(b"corrupted")
    load_hf_catalog(folder, "train", cache_dir=cache)
    assert [str(p) for p in writes] == [train["file_loc"].iloc[0]]


def test_load_hf_catalog_default_cache_is_per_dataset(folder, tmp_path):
    catalog = load_hf_catalog(folder, "test")
    image_dir = Path(catalog["file_loc"].iloc[0]).parent
    assert image_dir.name == "test"
    assert image_dir.parent.parent == tmp_path / "zoobot_cache" / "hf-images"
    assert image_dir.parent.name.startswith("local--hub--")


def test_load_hf_catalog_needs_a_schema(dataset, tmp_path):
    folder = save_hub_layout(dataset, tmp_path / "hub", SCHEMA)
    card = folder / "README.md"
    text = card.read_text()
    meta, body = text.split("---")[1], text.split("---", 2)[2]
    stripped = {k: v for k, v in yaml.safe_load(meta).items() if k != "zoobot"}
    card.write_text(f"---\n{yaml.safe_dump(stripped, sort_keys=False)}---{body}")
    with pytest.raises(HubDatasetError, match="schema="):
        load_hf_catalog(folder, "train", cache_dir=tmp_path / "cache")
    catalog = load_hf_catalog(folder, "train", cache_dir=tmp_path / "cache", schema=SCHEMA)
    assert len(catalog) == len(dataset["train"])
