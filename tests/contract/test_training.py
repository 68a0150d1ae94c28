"""Training on a catalog, the same in every framework: `n_blocks` trains exactly the last encoder
blocks and the head (frozen BatchNorm statistics included stay put), and the best weights are
exported in the Hub layout."""

import numpy as np
import pytest
import safetensors.numpy

OPTIONS = {
    "epochs": 1,
    "batch_size": 16,
    "image_size": 32,
    "precision": "32",
    "accelerator": "cpu",
    "devices": 1,
    "num_workers": 0,
    "patience": 2,
    "seed": 3,
    "progress": False,
    "splits": {"train": 0.75, "validation": 0.25},
}
# resnet10t's blocks, head side first: layer4, layer3, layer2, layer1, then the stem (conv1, bn1)
BLOCKS = ["layer4.", "layer3.", "layer2.", "layer1.", "conv1.", "bn1."]


def encoder_tensors(fw, model, folder) -> dict[str, np.ndarray]:
    """The encoder's timm tensors, as saved."""
    saved = fw.package.save_pretrained(model.encoder, folder)
    return safetensors.numpy.load_file(saved / "model.safetensors")


@pytest.mark.parametrize("n_blocks", [0, 1, -1])
def test_exactly_the_last_blocks_train(fw, survey, tmp_path, n_blocks):
    catalog = survey.assign(label=(survey["true_kind"] == "disk").astype(int))
    fw.seed(OPTIONS["seed"])  # as fit_catalog seeds before it builds: the same initial weights

    def build():
        return fw.package.FinetuneableZoobotClassifier(
            2, name="resnet10t", n_blocks=n_blocks, learning_rate=0.05, warmup_epochs=0
        )

    before = encoder_tensors(fw, build(), tmp_path / "before")
    model = fw.backend.fit_catalog(build, catalog, ["label"], tmp_path / "run", OPTIONS)
    after = encoder_tensors(fw, model, tmp_path / "after")
    trained = BLOCKS if n_blocks < 0 else BLOCKS[:n_blocks]
    for prefix in BLOCKS:
        keys = [k for k in before if k.startswith(prefix) and "num_batches" not in k]
        moved = [k for k in keys if not np.array_equal(before[k], after[k])]
        if prefix in trained:
            # AdamW moves every tensor with a gradient; a few get none (a BatchNorm shift that
            # the next train-mode BatchNorm cancels), so most, not all, of a block moves
            assert len(moved) > len(keys) / 2, (prefix, n_blocks, sorted(set(keys) - set(moved)))
        else:  # frozen: weights and BatchNorm statistics bit for bit as they were
            assert moved == [], (prefix, n_blocks, moved)
    reloaded = fw.package.from_pretrained(tmp_path / "run" / "best")
    assert type(reloaded) is type(model) and reloaded.settings.n_blocks == n_blocks
