"""Bad input is refused with one clear message naming the file, row, column or option, before any
work and without touching a file, in the framework under test (Python API and command line): vote
counts, class indices and targets checked by one rule at every entry point, empty catalogs,
padded ids, bad options and devices, malformed model files; and a fit whose loss turns non-finite
stops naming the step and the batch's galaxies, exporting nothing."""

import importlib
import json
import re

import numpy as np
import pytest
from contract import FAST, SCHEMA

from zoobot.data.catalog import CatalogError

OPTIONS = {
    "epochs": 1,
    "batch_size": 8,
    "image_size": 32,
    "accelerator": "cpu",
    "devices": 1,
    "num_workers": 0,
    "seed": 0,
    "progress": False,
    "splits": {"train": 0.75, "validation": 0.25},
}
SMALL = ["--image-size", "32", "--batch-size", "8", "--num-workers", "0", "--no-progress"]
COLUMN = SCHEMA.label_cols[4]


def run(fw, capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the framework's command."""
    main = importlib.import_module(f"{fw.package.__name__}.cli").main
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def with_count(survey, value):
    catalog = survey.astype({COLUMN: float})
    catalog.loc[6, COLUMN] = value
    return catalog


BAD_COUNTS = [
    (np.nan, "NaN or infinite"),
    (-1.0, "negative"),
    (2.5, "not a whole number"),
    (1e12, "over 100000"),
    (1e300, "over 100000"),
]


@pytest.mark.parametrize(("value", "problem"), BAD_COUNTS)
def test_train_refuses_bad_vote_counts_before_any_work(
    fw, survey, tmp_path, folder_state, value, problem
):
    catalog = with_count(survey, value)
    before = folder_state(tmp_path)
    row = rf"row 6 \(id_str '{survey.id_str[6]}'\)"
    with pytest.raises(CatalogError, match=rf"column '{COLUMN}' is {problem} in 1 row\(s\): {row}"):
        fw.package.train(catalog, SCHEMA, tmp_path / "run", "resnet10t", **OPTIONS)
    assert before.touched() == set() and not (tmp_path / "run").exists()


def test_the_command_refuses_bad_vote_counts_naming_row_and_column(fw, survey, tmp_path, capsys):
    path = tmp_path / "catalog.parquet"
    with_count(survey, 1e300).to_parquet(path)
    code, _, err = run(
        fw, capsys, "train", path, tmp_path / "run", "--schema", SCHEMA.name, "--architecture",
        "resnet10t", "--epochs", "1", "--accelerator", "cpu", *SMALL,
    )  # fmt: skip
    assert code == 1 and f"column '{COLUMN}' is over 100000" in err and "row 6" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("task", "bad", "problem"),
    [
        ("classifier", 2, "not a class index 0 to 1"),
        ("classifier", np.nan, "NaN or infinite"),
        ("classifier", 0.5, "not a whole number"),
        ("regressor", np.inf, "NaN or infinite"),
        ("regressor", 1e39, "beyond float32"),
    ],
)
def test_fit_catalog_checks_labels_by_the_models_task(fw, survey, tmp_path, task, bad, problem):
    """Class indices for a classifier, finite float32 targets for a regressor, vote counts of its
    schema for a tree: the rule of the model being fitted."""
    catalog = survey.assign(label=np.arange(len(survey)) % 2 * 1.0)
    catalog.loc[9, "label"] = bad

    def build():
        if task == "classifier":
            return fw.package.FinetuneableZoobotClassifier(2, name="resnet10t")
        return fw.package.FinetuneableZoobotRegressor(name="resnet10t")

    row = rf"1 row\(s\): row 9 \(id_str '{survey.id_str[9]}'\)"
    with pytest.raises(CatalogError, match=rf"column 'label' is {re.escape(problem)}.* in {row}"):
        fw.backend.fit_catalog(build, catalog, ["label"], tmp_path / "run", OPTIONS)
    assert not (tmp_path / "run").exists()


def test_a_tree_trains_on_its_schemas_answers_only(fw, survey, tmp_path):
    catalog = survey.assign(label=1)

    def build():
        return fw.package.ZoobotTree(SCHEMA, "resnet10t")

    with pytest.raises(
        ValueError, match=r"label columns \['label'\] are not answers of the model's schema"
    ):
        fw.backend.fit_catalog(build, catalog, ["label"], tmp_path / "run", OPTIONS)
    with pytest.raises(ValueError, match="every answer of its schema 'decals_dr5', in order"):
        fw.backend.fit_catalog(build, catalog, SCHEMA.label_cols[:3], tmp_path / "run", OPTIONS)


def test_a_non_finite_loss_stops_the_fit_naming_the_step_and_its_galaxies(fw, survey, tmp_path):
    """Targets of 1e30 are finite float32 numbers, but their squared errors overflow: the very
    first step's loss is infinite. Nothing is exported."""
    catalog = survey.assign(size=1e30)

    def build():
        return fw.package.FinetuneableZoobotRegressor(name="resnet10t", learning_rate=1e-3)

    with pytest.raises(
        FloatingPointError, match=r"the loss was inf at step 0 \(epoch 0, batch 0\)"
    ) as err:
        fw.backend.fit_catalog(build, catalog, ["size"], tmp_path / "run", OPTIONS)
    named = re.findall(
        r"'([^']+)'", str(err.value).split("the batch held id_str ")[1].split(".")[0]
    )
    assert len(named) == OPTIONS["batch_size"] and set(named) <= set(survey["id_str"])
    assert "nothing was exported" in str(err.value)
    assert not (tmp_path / "run" / "best").exists()


def test_save_pretrained_refuses_non_finite_weights(fw, tmp_path, folder_state):
    fw.seed(0)
    model = fw.package.ZoobotTree(SCHEMA, "resnet10t")
    fw.poison(model.head if fw.name == "torch" else model.head.layers[-2])
    before = folder_state(tmp_path)
    with pytest.raises(ValueError, match=r"refusing to save tree \(head\): 1 tensor\(s\) hold NaN"):
        model.save_pretrained(tmp_path / "tree")
    fw.poison(model.encoder)
    with pytest.raises(
        ValueError, match=r"refusing to save encoder \(encoder\): 1 tensor\(s\) hold NaN"
    ):
        fw.package.save_pretrained(model.encoder, tmp_path / "encoder")
    assert before.touched() == set() and list(tmp_path.iterdir()) == []


def test_empty_catalogs_and_padded_ids_are_refused_before_any_work(
    fw, survey, tmp_path, folder_state, capsys
):
    fw.seed(0)
    model = fw.package.ZoobotTree(SCHEMA, "resnet10t")
    before = folder_state(tmp_path)
    with pytest.raises(CatalogError, match="the catalog has no rows"):
        fw.package.predict(survey.iloc[:0], model, tmp_path / "p.parquet", **FAST)
    padded = survey.iloc[:8].copy()
    padded.loc[2, "id_str"] = f" {padded.id_str[2]}"
    with pytest.raises(
        CatalogError, match=r"id_str has leading or trailing spaces in 1 row\(s\): row 2"
    ):
        fw.package.predict(padded, model, tmp_path / "p.parquet", **FAST)
    assert before.touched() == set()
    path = tmp_path / "empty.csv"
    path.write_text("id_str,file_loc\n")
    folder = model.save_pretrained(tmp_path / "model")
    code, _, err = run(fw, capsys, "predict", path, folder, tmp_path / "p.parquet", *SMALL)
    assert code == 1 and "the catalog has no rows" in err
    assert not (tmp_path / "p.parquet").exists()


@pytest.mark.parametrize(
    ("options", "message", "flag"),
    [
        ({"num_workers": -1}, "num_workers=-1", ["--num-workers", "-1"]),
        ({"device": "tpu:3"}, "device", ["--device", "tpu:3"]),
        ({"device": "cuda:7"}, "device='cuda:7'", ["--device", "cuda:7"]),
    ],
)
def test_bad_run_options_fail_first_naming_the_option_or_flag(
    fw, survey, tmp_path, capsys, folder_state, options, message, flag
):
    fw.seed(0)
    folder = fw.package.ZoobotTree(SCHEMA, "resnet10t").save_pretrained(tmp_path / "model")
    before = folder_state(tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)):
        fw.package.predict(survey.iloc[:4], folder, tmp_path / "p.parquet", **{**FAST, **options})
    path = tmp_path / "catalog.parquet"
    survey.iloc[:4].to_parquet(path)
    before = folder_state(tmp_path)
    code, _, err = run(
        fw, capsys, "predict", path, folder, tmp_path / "p.parquet", *SMALL[:4], *flag
    )
    assert code in (1, 2) and flag[0] in err and "Traceback" not in err
    assert before.touched() == set()


def test_n_components_is_checked_before_the_run(fw, survey, tmp_path, folder_state):
    fw.seed(0)
    encoder = fw.package.ZoobotTree(SCHEMA, "resnet10t").encoder
    before = folder_state(tmp_path)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=f"n_components={bad!r}"):
            fw.package.get_representations(
                survey.iloc[:4], encoder, tmp_path / "f.parquet", n_components=bad, **FAST
            )
    assert before.touched() == set()


@pytest.fixture
def saved(fw, tmp_path):
    fw.seed(0)
    model = fw.package.FinetuneableZoobotClassifier(2, name="resnet10t")
    return model.save_pretrained(tmp_path / "model")


@pytest.mark.parametrize(
    ("damage", "name", "message"),
    [
        (
            lambda f: (f / "config.json").write_text('{"architecture": "resnet10t", '),
            "config.json",
            "not valid JSON",
        ),
        (
            lambda f: (f / "model.safetensors").write_bytes(
                (f / "model.safetensors").read_bytes()[:-100]
            ),
            "model.safetensors",
            "cannot read the weights",
        ),
        (
            lambda f: (f / "head.safetensors").write_bytes(b"\x00" * 7),
            "head.safetensors",
            "cannot read the weights",
        ),
    ],
)
def test_a_damaged_model_file_is_named(fw, saved, survey, tmp_path, capsys, damage, name, message):
    damage(saved)
    with pytest.raises(ValueError, match=f"{re.escape(str(saved / name))}.*{message}"):
        fw.package.from_pretrained(saved)
    path = tmp_path / "catalog.parquet"
    survey.iloc[:4].to_parquet(path)
    code, _, err = run(fw, capsys, "predict", path, saved, tmp_path / "p.parquet", *SMALL)
    assert code == 1 and name in err and message in err and "Traceback" not in err
    assert not (tmp_path / "p.parquet").exists()


def test_model_args_the_architecture_does_not_take_are_named_with_their_config(fw, saved):
    config = json.loads((saved / "config.json").read_text())
    config["model_args"] = {**config.get("model_args", {}), "no_such_option": 3}
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(saved / 'config.json'))}: .*no_such_option"
    ):
        fw.package.from_pretrained(saved)
