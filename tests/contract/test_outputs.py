"""The files a run writes, in the framework under test (Python API and command line): the files of
one predict run are one set (a later run replaces an earlier one only with overwrite, and removes
its files it does not rewrite), a save_loc that is a folder or a file zoobot did not write is
refused before any work, two runs into one save_loc collide with a clear message, a resumed run
must have the same images, and no writer touches a file it did not write."""

import importlib
import os
from pathlib import Path

import pandas as pd
import pytest
from contract import FAST, SCHEMA

from zoobot.models.outputs import OutputSet, RunLockedError, run_lock

SMALL = ["--image-size", "32", "--batch-size", "8", "--num-workers", "0", "--no-progress"]


def run(fw, capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the framework's command."""
    main = importlib.import_module(f"{fw.package.__name__}.cli").main
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def models(fw, tmp_path_factory):
    """A tree and a classifier, saved."""
    folder = tmp_path_factory.mktemp("models")
    fw.seed(0)
    tree = fw.package.ZoobotTree(SCHEMA, "resnet10t").save_pretrained(folder / "tree")
    classifier = fw.package.FinetuneableZoobotClassifier(2, name="resnet10t")
    return tree, classifier.save_pretrained(folder / "classifier")


@pytest.fixture
def catalog(survey, tmp_path):
    path = tmp_path / "catalog.parquet"
    survey.iloc[:12].to_parquet(path)
    return path


def test_a_later_run_replaces_an_earlier_set_only_with_overwrite(
    fw, models, catalog, tmp_path, capsys, folder_state
):
    """A tree's predictions, then a classifier's into the same save_loc: refused without
    --overwrite; with it, the tree's friendly table goes with the rest of the earlier set."""
    tree, classifier = models
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    save_loc = out / "p.parquet"
    code, _, err = run(fw, capsys, "predict", catalog, tree, save_loc, *SMALL)
    assert code == 0 and sorted(p.name for p in out.iterdir()) == [
        "notes.txt", "p.parquet", "p.parquet.failed.csv", "p_friendly.parquet",
    ]  # fmt: skip
    before = folder_state(out)
    code, _, err = run(fw, capsys, "predict", catalog, classifier, save_loc, *SMALL)
    assert code == 1 and "results of an earlier run; pass --overwrite" in err
    assert "overwrite=True" not in err and before.touched() == set()
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        fw.package.predict(catalog, classifier, save_loc, **FAST)
    code, _, err = run(fw, capsys, "predict", catalog, classifier, save_loc, *SMALL, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "notes.txt",
        "p.parquet",
        "p.parquet.failed.csv",
    ]
    assert before.touched() == {"p.parquet", "p.parquet.failed.csv", "p_friendly.parquet"}
    assert pd.read_parquet(save_loc).columns[1] == "class_0_probability"
    files = fw.package.predict(catalog, tree, save_loc, overwrite=True, **FAST)
    assert files.friendly == out / "p_friendly.parquet" and files.friendly.is_file()


def test_files_zoobot_did_not_write_are_refused_before_any_work(
    fw, models, catalog, tmp_path, capsys, folder_state
):
    tree, _ = models
    theirs = tmp_path / "theirs.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(theirs)
    (tmp_path / "mine_friendly.parquet").write_text("someone's friendly table")
    (tmp_path / "folder").mkdir()
    before = folder_state(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(
            FileExistsError, match="theirs.parquet exists and was not written by zoobot"
        ):
            fw.package.predict(catalog, tree, theirs, overwrite=overwrite, **FAST)
        with pytest.raises(
            FileExistsError, match="mine_friendly.parquet exist.*zoobot did not write"
        ):
            fw.package.predict(
                catalog, tree, tmp_path / "mine.parquet", overwrite=overwrite, **FAST
            )
    with pytest.raises(IsADirectoryError, match="save_loc .*folder is a folder"):
        fw.package.predict(catalog, tree, tmp_path / "folder", **FAST)
    with pytest.raises(IsADirectoryError, match="save_loc .*folder is a folder"):
        fw.package.get_representations(catalog, tree, tmp_path / "folder", **FAST)
    code, _, err = run(fw, capsys, "predict", catalog, tree, tmp_path / "folder", *SMALL)
    assert code == 1 and "folder is a folder" in err
    code, _, err = run(fw, capsys, "represent", catalog, tree, theirs, *SMALL, "--overwrite")
    assert code == 1 and "was not written by zoobot" in err
    assert before.touched() == set()


def test_two_runs_into_one_save_loc_collide_with_a_clear_message(
    fw, models, catalog, tmp_path, capsys
):
    tree, _ = models
    save_loc = tmp_path / "p.parquet"
    with run_lock(OutputSet.of(save_loc)):
        with pytest.raises(
            RunLockedError, match=f"being written by another run \\(pid {os.getpid()}"
        ):
            fw.package.predict(catalog, tree, save_loc, **FAST)
        code, _, err = run(fw, capsys, "predict", catalog, tree, save_loc, *SMALL)
        assert code == 1 and "being written by another run" in err and "Traceback" not in err
    assert not save_loc.exists()
    fw.package.predict(catalog, tree, save_loc, **FAST)  # free once the first run is done
    assert not OutputSet.of(save_loc).lock.exists()


def test_a_resumed_run_refuses_images_changed_since(
    fw, models, survey, tmp_path, capsys, monkeypatch
):
    """Interrupted after its first chunk, then an image is rewritten in place: resuming would mix
    predictions of the old and new image, so it is refused, naming --no-resume on the command
    line."""
    tree, _ = models
    catalog = survey.iloc[:24].copy()
    images = tmp_path / "images"
    images.mkdir()
    for i, path in enumerate(catalog["file_loc"]):
        (images / f"{i}.jpg").write_bytes(Path(path).read_bytes())
    catalog["file_loc"] = [str(images / f"{i}.jpg") for i in range(len(catalog))]
    path = tmp_path / "catalog.parquet"
    catalog.to_parquet(path)
    save_loc = tmp_path / "p.parquet"
    module_name, name = fw.reader
    module = importlib.import_module(module_name)
    read, reads = getattr(module, name), []

    def failing(source, *args):
        reads.append(source)
        if len(reads) > 20:  # the disk goes away in the second chunk (rows 16..23)
            raise RuntimeError("disk gone")
        return read(source, *args)

    monkeypatch.setattr(module, name, failing)
    with pytest.raises(Exception, match="disk gone"):
        fw.package.predict(path, tree, save_loc, num_workers=0, **FAST)
    monkeypatch.setattr(module, name, read)
    assert (tmp_path / "p.parquet.parts" / "part-000000.parquet").is_file()
    changed = images / "3.jpg"
    changed.write_bytes(Path(catalog.file_loc[5]).read_bytes())
    with pytest.raises(ValueError, match=r"differs in: images\); pass resume=False"):
        fw.package.predict(path, tree, save_loc, num_workers=0, **FAST)
    same = [*SMALL, "--chunk-rows", "16"]
    code, _, err = run(fw, capsys, "predict", path, tree, save_loc, *same)
    assert code == 1 and "differs in: images); pass --no-resume" in err
    code, _, err = run(fw, capsys, "predict", path, tree, save_loc, *same, "--no-resume")
    assert code == 0, err


def test_model_folders_and_training_runs_never_replace_someone_elses_files(
    fw, survey, tmp_path, capsys, folder_state
):
    fw.seed(0)
    model = fw.package.ZoobotTree(SCHEMA, "resnet10t")
    folder = model.save_pretrained(tmp_path / "model")
    (folder / "my_notes.txt").write_text("mine")
    (tmp_path / "run" / "best").mkdir(parents=True)
    (tmp_path / "run" / "best" / "config.json").write_text('{"architecture": "x"}')
    before = folder_state(tmp_path)
    with pytest.raises(
        FileExistsError, match=r"holds files a saved model does not \(my_notes.txt\)"
    ):
        model.save_pretrained(folder)
    path = tmp_path / "catalog.parquet"
    survey.to_parquet(path)
    before = folder_state(tmp_path)
    code, _, err = run(
        fw, capsys, "train", path, tmp_path / "run", "--schema", SCHEMA.name, "--architecture",
        "resnet10t", "--epochs", "1", "--accelerator", "cpu", *SMALL,
    )  # fmt: skip
    assert code == 1 and "run/best is not a model zoobot saved" in err
    assert before.touched() == set()
