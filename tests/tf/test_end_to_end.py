"""zoobot.tf end to end on the synthetic survey: pretrain on votes -> save -> reload -> finetune ->
predict, as a user of the TensorFlow package alone would run it."""

import numpy as np
import pandas as pd
import pytest

from zoobot.data.synthetic import make_survey
from zoobot.shared import get_schema
from zoobot.tf import (
    FinetuneableZoobotClassifier,
    ZoobotTree,
    eval_dataset,
    fit,
    from_pretrained,
    predict,
    train,
    train_dataset,
)

SIZE = 32


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> pd.DataFrame:
    folder = tmp_path_factory.mktemp("survey")
    return make_survey(
        120, folder, "decals_dr5", image_size=SIZE, seed=3, workers=1, progress=False
    )


def test_pretrain_save_reload_finetune_predict(survey, tmp_path):
    schema = get_schema("decals_dr5")
    catalog = survey[["id_str", "file_loc", *schema.label_cols]]
    tree = train(
        catalog,
        schema,
        tmp_path / "pretrain",
        architecture="test_convnext",
        epochs=2,
        batch_size=16,
        image_size=SIZE,
        seed=0,
        verbose=0,
    )
    best = tmp_path / "pretrain" / "best"
    reloaded = from_pretrained(best)
    assert isinstance(reloaded, ZoobotTree)
    images = next(iter(eval_dataset(catalog.head(8), SIZE, batch_size=8)))["image"]
    np.testing.assert_allclose(np.asarray(reloaded(images)), np.asarray(tree(images)), rtol=1e-6)

    labelled = survey.loc[survey["true_kind"] != "artifact", ["id_str", "file_loc"]]
    labelled = labelled.assign(disk=(survey["true_kind"] == "disk").astype(np.int64))
    classifier = FinetuneableZoobotClassifier(num_classes=2, name=best, n_blocks=1)
    before = classifier.encoder.get_weights()
    fit(
        classifier,
        train_dataset(labelled, ["disk"], SIZE, batch_size=16, seed=0),
        eval_dataset(labelled, SIZE, batch_size=16, label_cols=["disk"], as_tuples=True),
        tmp_path / "finetune",
        epochs=1,
        verbose=0,
    )
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(before, classifier.encoder.get_weights(), strict=True)
    ]
    assert any(changed) and not all(changed)  # the last block trains, the rest stays frozen

    files = predict(
        labelled, tmp_path / "finetune" / "best", tmp_path / "disks.parquet", image_size=SIZE
    )
    assert (files.n_predicted, files.n_failed) == (len(labelled), 0)
    table = pd.read_parquet(files.predictions)
    assert sorted(table["id_str"]) == sorted(labelled["id_str"])
    probabilities = table.filter(like="probability")
    assert probabilities.shape[1] == 2
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
