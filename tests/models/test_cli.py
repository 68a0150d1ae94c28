"""The command line zoobot-torch and zoobot-tf share, run with a stand-in backend that records calls."""

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from zoobot.data.streaming import CatalogRows
from zoobot.models import inference
from zoobot.models.cli import HELP_KEYS, ModelCommand, build_parser, class_labels, run_command
from zoobot.models.runner import PredictionFiles, RepresentationFiles
from zoobot.models.tasks import TaskRegistry
from zoobot.shared import get_schema


class StandIn:
    """A backend that records what the shared runners ask of it (models are dicts of arguments)."""

    name, package = "test", "zoobot-test"

    def __init__(self, fail: Exception | None = None):
        self.calls, self.fail = [], fail
        self.tasks = TaskRegistry(builtin="json")
        for task in ("tree", "classifier", "regressor", "finetuneable_tree"):
            self.tasks.register(type(task, (dict,), {"task": task, **PROTOCOL}))

    def fit_catalog(self, build, data, label_cols, save_dir, options):
        if self.fail is not None:
            raise self.fail
        model = build()
        self.calls.append(("fit", type(model).task, model, list(label_cols), options))
        return model

    def set_threads(self, threads):
        self.calls.append(("threads", threads))

    def device(self, name):
        return None if name is None else f"<{name}>"

    def reads_natively(self, path):
        return False


PROTOCOL = {
    "__init__": lambda self, *args, **kwargs: dict.__init__(self, args=args, **kwargs),
    "task_config": lambda self: dict(self),
    "from_task_config": classmethod(lambda cls, config, encoder: cls(**config)),
}


def stand_in(backend: StandIn) -> ModelCommand:
    return ModelCommand(
        prog="zoobot-test",
        framework="TestFramework",
        backend=backend,
        description="a stand-in",
        epilog="",
        help={key: f"<{key}>" for key in HELP_KEYS},
    )


@pytest.fixture
def catalog(tmp_path):
    path = tmp_path / "catalog.csv"
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    votes = dict.fromkeys(get_schema("decals_dr5").label_cols, 1)
    rows = [
        {"id_str": f"g{i}", "file_loc": str(image), "kind": "ab"[i % 2], **votes} for i in range(4)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_train_and_finetune_build_the_backend_models_and_fit_them(catalog):
    backend = StandIn()
    command = stand_in(backend)
    assert run_command(command, ["train", catalog, "runs", "--schema", "decals_dr5"]) == 0
    argv = ["finetune", catalog, "runs/ft", "--pretrained", "enc", "--label-col", "kind"]
    assert run_command(command, [*argv, "--n-blocks", "2", "--augment", "none"]) == 0
    (_, task, tree, labels, options), (_, task2, classifier, labels2, options2) = backend.calls
    assert task == "tree" and tree["args"][0].name == "decals_dr5" and len(labels) == 34
    assert options["epochs"] == 100 and options["splits"] is None and options["seed"] == 42
    assert options["augment"] is None  # the model's task chooses: dihedral for trees
    assert task2 == "classifier" and classifier["class_names"] == ["a", "b"]
    assert classifier["n_blocks"] == 2 and labels2 == ["kind"] and options2["epochs"] == 30
    assert options2["augment"] == "none"


def test_predict_and_represent_call_the_shared_inference(catalog, monkeypatch):
    calls = []
    monkeypatch.setattr(inference, "predict", lambda *a, **k: calls.append((a, k)) or FILES)
    monkeypatch.setattr(
        inference, "get_representations", lambda *a, **k: calls.append((a, k)) or REPRESENTED
    )
    backend = StandIn()
    command = stand_in(backend)
    argv = ["predict", catalog, "model", "out.parquet", "--precision", "bf16", "--threads", "3"]
    assert (
        run_command(command, [*argv, "--device", "cuda:1", "--devices", "2", "--slice", "1/4"]) == 0
    )
    argv = ["represent", catalog, "enc", "f.parquet", "--n-components", "0.9"]
    assert run_command(command, argv) == 0
    (predicted, options), (represented, represent_options) = calls
    assert predicted[0] is backend and predicted[2:4] == ("model", Path("out.parquet"))
    assert options["precision"] == "bf16" and options["resume"] and options["batch_size"] == 128
    assert options["device"] == "<cuda:1>" and ("threads", 3) in backend.calls
    assert (options["devices"], options["nodes"], options["strategy"]) == (2, 1, "auto")
    assert options["catalog_slice"] == "1/4" and represent_options["catalog_slice"] is None
    # a catalog file is streamed, not loaded: the shared inference gets its rows
    assert isinstance(predicted[1], CatalogRows) and len(predicted[1]) == 4
    assert represent_options["n_components"] == 0.9 and represented[2] == "enc"


FILES = PredictionFiles(Path("p"), None, Path("f"), 4, 0)
REPRESENTED = RepresentationFiles(Path("r"), None, Path("f"), 4, 0)


def test_framework_texts_reach_the_help(capsys):
    parser = build_parser(stand_in(StandIn()))
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "<run_precision>" in text and "<device>" in text and "(TestFramework)" in text
    assert "zoobot-test predict" in text  # the example names the command


def test_a_missing_help_text_is_refused():
    with pytest.raises(ValueError, match="predict_input"):
        ModelCommand("p", "f", "module", "", {"device": "x"})


def test_library_errors_are_one_line_with_exit_code_1(catalog, capsys):
    command = stand_in(StandIn(fail=FileNotFoundError("no images at x")))
    assert run_command(command, ["train", catalog, "runs", "--schema", "decals_dr5"]) == 1
    assert capsys.readouterr().err == "zoobot-test train: error: no images at x\n"
    command = stand_in(StandIn(fail=RuntimeError("a bug")))
    with pytest.raises(RuntimeError):
        run_command(command, ["train", catalog, "runs", "--schema", "decals_dr5"])


def test_class_labels_from_names_or_indices():
    catalog = pd.DataFrame({"kind": ["smooth", "disk", "smooth"]})
    coded, names = class_labels(catalog, "kind")
    assert names == ["disk", "smooth"] and coded["kind"].tolist() == [1, 0, 1]
    coded, names = class_labels(pd.DataFrame({"kind": [2, 0]}), "kind")
    assert names == ["0", "1", "2"] and coded["kind"].tolist() == [2, 0]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["predict", "c.csv", "m", "p.parquet", "--num-workers", "-1"], "--num-workers"),
        (["train", "c.csv", "runs", "--schema", "gz2", "--num-workers", "-2"], "--num-workers"),
        (["represent", "c.csv", "e", "f.parquet", "--n-components", "0"], "--n-components"),
        (["represent", "c.csv", "e", "f.parquet", "--n-components", "1.5"], "--n-components"),
        (["represent", "c.csv", "e", "f.parquet", "--n-components", "-3"], "--n-components"),
    ],
)
def test_bad_option_values_fail_before_any_work_naming_the_flag(argv, flag, capsys):
    backend = StandIn()
    with pytest.raises(SystemExit) as stop:
        run_command(stand_in(backend), argv)
    assert stop.value.code == 2 and backend.calls == []
    assert f"argument {flag}: expected a whole number" in capsys.readouterr().err


def test_library_messages_name_the_flags_not_the_python_arguments(catalog, capsys):
    message = "p.parts holds parts of a different run; pass resume=False to start again"
    command = stand_in(StandIn(fail=ValueError(message)))
    assert run_command(command, ["train", catalog, "runs", "--schema", "decals_dr5"]) == 1
    err = capsys.readouterr().err
    assert "pass --no-resume to start again" in err and "resume=False" not in err
    command = stand_in(StandIn(fail=ValueError("unknown device='tpu:9'; overwrite=True")))
    assert run_command(command, ["train", catalog, "runs", "--schema", "decals_dr5"]) == 1
    assert "unknown --device 'tpu:9'; --overwrite" in capsys.readouterr().err


def test_a_class_column_with_gaps_is_refused_naming_the_rows():
    catalog = pd.DataFrame({"id_str": ["a", "b", "c"], "kind": ["disk", None, "smooth"]})
    with pytest.raises(
        ValueError, match=r"--label-col kind has no class in 1 row\(s\): row 1 \(id_str 'b'\)"
    ):
        class_labels(catalog, "kind")
