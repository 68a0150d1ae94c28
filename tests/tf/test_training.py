"""Training on votes with Keras: `train` from a catalog, the callbacks (best export, early stopping,
CSV/TensorBoard logs), precision policies, and data parallelism on two CPU devices (TensorFlow's
MirroredStrategy, or Keras's DataParallel on JAX).

Exact (bit-equal) comparisons here run the same weights on the same inputs with the same
batch shapes in one process (or processes with the same threads): the same kernels, hence the
same numbers, on any CPU; results that change kernels or batching carry tolerances.
"""

import csv
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from keras_backend import jax_only, tensorflow_only
from PIL import Image

from zoobot.models import fast_paths
from zoobot.shared import Schema
from zoobot.tf.encoders import load_encoder
from zoobot.tf.pretrained import from_pretrained
from zoobot.tf.training import (
    ExportBest,
    dtype_policy,
    fit,
    get_callbacks,
    resolve_precision,
    train,
)
from zoobot.tf.tree import ZoobotTree

TOY = Schema(
    {"smooth-or-featured-dr5": ["smooth", "featured"], "bar-dr8": ["yes", "no"]},
    {"bar-dr8": "smooth-or-featured-dr5_featured"},
    name="toy",
)


def vote_arrays(n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.random((n, 32, 32, 3), dtype=np.float32)
    counts = rng.integers(0, 10, (n, len(TOY.label_cols))).astype(np.float32)
    return images, counts


@pytest.fixture
def catalog(tmp_path) -> pd.DataFrame:
    """30 PNG galaxies of 32 px whose smooth votes follow their brightness."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        brightness = rng.uniform(0.1, 0.9)
        pixels = np.clip(rng.normal(brightness, 0.05, (32, 32, 3)) * 255, 0, 255).astype(np.uint8)
        path = tmp_path / "images" / f"galaxy_{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(path)
        smooth = int(round(20 * brightness))
        featured = 20 - smooth
        bar = rng.multinomial(featured, [0.3, 0.7]) if i % 2 else [0, 0]
        rows.append(
            {
                "id_str": f"g{i}",
                "file_loc": str(path),
                "smooth-or-featured-dr5_smooth": smooth,
                "smooth-or-featured-dr5_featured": featured,
                "bar-dr8_yes": bar[0],
                "bar-dr8_no": bar[1],
            }
        )
    return pd.DataFrame(rows)


def test_train_from_a_catalog_exports_the_best_epoch_and_logs(catalog, tmp_path):
    save_dir = tmp_path / "run"
    model = train(
        catalog,
        TOY,
        save_dir,
        architecture="test_convnext",
        epochs=3,
        batch_size=8,
        image_size=32,
        seed=1,
        model_kwargs={"learning_rate": 3e-3},
        verbose=0,
    )
    assert isinstance(model, ZoobotTree)
    with open(save_dir / "logs" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 3
    for column in ("loss", "val_loss", "val_loss/bar-dr8", "campaign_loss/dr5", "learning_rate"):
        assert column in rows[0]
    assert sorted(p.name for p in (save_dir / "checkpoints").iterdir()) == [
        "best.weights.h5",
        "last.weights.h5",
    ]
    best = save_dir / "best"
    assert sorted(p.name for p in best.iterdir()) == [
        "README.md",
        "config.json",
        "head.safetensors",
        "model.safetensors",
    ]
    best_loss = min(float(row["val_loss"]) for row in rows)
    assert f"| val_loss | {best_loss}" in (best / "README.md").read_text()
    reloaded = from_pretrained(best)
    images = vote_arrays(n=4)[0]
    np.testing.assert_allclose(np.asarray(reloaded(images)), np.asarray(model(images)), rtol=1e-6)
    assert json.loads((best / "config.json").read_text())["zoobot"]["task"] == "tree"


def test_export_best_writes_the_best_epoch_and_leaves_the_final_weights(tmp_path):
    model = ZoobotTree(TOY, encoder=load_encoder("test_convnext"))
    images = vote_arrays(n=2)[0]
    exporter = ExportBest(tmp_path / "best", monitor="val_loss")
    exporter.set_model(model)
    exporter.on_train_begin()
    bias = model.head.layers[1].bias
    outputs = []
    for epoch, loss in enumerate([3.0, 1.0, 2.0]):
        bias.assign(np.full(bias.shape, float(epoch), np.float32))
        outputs.append(np.asarray(model(images)))
        exporter.on_epoch_end(epoch, {"val_loss": loss})
    exporter.on_train_end()
    np.testing.assert_array_equal(
        np.asarray(from_pretrained(tmp_path / "best")(images)), outputs[1]
    )
    np.testing.assert_array_equal(np.asarray(model(images)), outputs[2])
    assert exporter.best == 1.0
    assert "| val_loss | 1.0 |" in (tmp_path / "best" / "README.md").read_text()


def test_fit_stops_early_and_restores_the_best_weights(tmp_path):
    model = ZoobotTree(TOY, encoder=load_encoder("test_convnext"), learning_rate=0.0)
    model.compile(run_eagerly=True)
    data = tf.data.Dataset.from_tensor_slices(vote_arrays(n=8)).batch(8)
    history = fit(
        model, data, data, save_dir=tmp_path / "run", epochs=10, patience=1, verbose=0
    ).history
    assert len(history["val_loss"]) == 2, "no improvement (learning rate 0): stops after patience"
    assert (tmp_path / "run" / "best" / "config.json").is_file()


@pytest.mark.parametrize("native", [True, False])
def test_precision_names_and_the_policy_is_restored(monkeypatch, native):
    """bf16 and fp16 on a CPU only where native (oneDNN held to AVX2: TensorFlow refuses them)."""
    monkeypatch.setattr(fast_paths, "native", lambda kind: (native, "test"))
    cpu_bf16 = "mixed_bfloat16" if native else "float32"
    assert resolve_precision("32") == "float32"
    assert resolve_precision("bf16-mixed") == cpu_bf16
    assert resolve_precision("16-mixed") == ("mixed_float16" if native else "float32")
    assert resolve_precision("mixed") == cpu_bf16  # no GPU here
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("64")
    with dtype_policy("bf16-mixed") as policy:
        assert policy == keras.config.dtype_policy().name == cpu_bf16
    assert keras.config.dtype_policy().name == "float32"


def test_tensorboard_logs_when_its_package_is_there(tmp_path):
    installed = importlib.util.find_spec("tensorboard") is not None
    names = [type(c).__name__ for c in get_callbacks(tmp_path)]
    assert ("TensorBoard" in names) == installed
    assert {"ModelCheckpoint", "EarlyStopping", "CSVLogger", "ExportBest"} <= set(names)
    if not installed:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            get_callbacks(tmp_path, tensorboard=True)


MIRRORED = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import numpy as np

    from zoobot.shared import Schema
    from zoobot.tf.pretrained import from_pretrained
    from zoobot.tf.training import ExportBest, get_strategy
    from zoobot.tf.tree import ZoobotTree

    toy = Schema(
        {"smooth-or-featured-dr5": ["smooth", "featured"], "bar-dr8": ["yes", "no"]},
        {"bar-dr8": "smooth-or-featured-dr5_featured"},
        name="toy",
    )
    rng = np.random.default_rng(0)
    images = rng.random((16, 32, 32, 3), dtype=np.float32)
    counts = rng.integers(0, 10, (16, 4)).astype(np.float32)
    options = dict(dropout=0.0, warmup_epochs=0, learning_rate=1e-3)
    EPSILON = 1e-3  # Adam's epsilon: see the test for why it equals the learning rate

    keras.utils.set_random_seed(0)
    single = ZoobotTree(toy, "test_convnext", **options)
    start = single.get_weights()
    single.compile(gradient_clip_val=1.0, run_eagerly=True)  # the reference: one device, eager
    single.optimizer.epsilon = EPSILON
    single.fit(images, counts, batch_size=8, epochs=1, shuffle=False, verbose=0)

    strategy = get_strategy("mirrored", ["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = ZoobotTree(toy, "test_convnext", **options)
        mirrored.set_weights(start)
        mirrored.compile(gradient_clip_val=1.0)
        mirrored.optimizer.epsilon = EPSILON
    export = ExportBest(sys.argv[1], monitor="loss")
    history = mirrored.fit(
        images, counts, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[export]
    )
    differences = [
        float(np.abs(a - b).max()) for a, b in zip(single.get_weights(), mirrored.get_weights())
    ]
    moved = max(float(np.abs(a - b).max()) for a, b in zip(start, mirrored.get_weights()))
    reloaded = from_pretrained(sys.argv[1])
    exported = float(np.abs(np.asarray(reloaded(images[:2])) - np.asarray(mirrored(images[:2]))).max())
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "max_difference": max(differences),
        "moved": moved,
        "exported_difference": exported,
        "loss": history.history["loss"][0],
    }))
    """
)


DATA_PARALLEL = textwrap.dedent(
    """
    import json, sys
    import jax

    jax.config.update("jax_num_cpu_devices", 2)

    import keras
    import numpy as np

    from zoobot.shared import Schema
    from zoobot.tf.pretrained import from_pretrained
    from zoobot.tf.training import ExportBest, keras_distribution
    from zoobot.tf.tree import ZoobotTree

    toy = Schema(
        {"smooth-or-featured-dr5": ["smooth", "featured"], "bar-dr8": ["yes", "no"]},
        {"bar-dr8": "smooth-or-featured-dr5_featured"},
        name="toy",
    )
    rng = np.random.default_rng(0)
    images = rng.random((16, 32, 32, 3), dtype=np.float32)
    counts = rng.integers(0, 10, (16, 4)).astype(np.float32)
    options = dict(dropout=0.0, warmup_epochs=0, learning_rate=1e-3)
    EPSILON = 1e-3

    keras.utils.set_random_seed(0)
    single = ZoobotTree(toy, "test_convnext", **options)
    start = single.get_weights()
    single.compile(gradient_clip_val=1.0)
    single.optimizer.epsilon = EPSILON
    single.fit(images, counts, batch_size=8, epochs=1, shuffle=False, verbose=0)

    distribution = keras_distribution("mirrored", "cpu", 2)
    with distribution.scope():
        parallel = ZoobotTree(toy, "test_convnext", **options)
        parallel.set_weights(start)
        parallel.compile(gradient_clip_val=1.0)
        parallel.optimizer.epsilon = EPSILON
        export = ExportBest(sys.argv[1], monitor="loss")
        history = parallel.fit(
            images, counts, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[export]
        )
    differences = [
        float(np.abs(a - b).max()) for a, b in zip(single.get_weights(), parallel.get_weights())
    ]
    moved = max(float(np.abs(a - b).max()) for a, b in zip(start, parallel.get_weights()))
    reloaded = from_pretrained(sys.argv[1])
    exported = float(np.abs(np.asarray(reloaded(images[:2])) - np.asarray(parallel(images[:2]))).max())
    kernel = parallel.head.layers[1].kernel.value
    print(json.dumps({
        "replicas": len(distribution.device_mesh.devices.ravel()),
        "weights_on": len(kernel.sharding.device_set),
        "max_difference": max(differences),
        "moved": moved,
        "exported_difference": exported,
        "loss": history.history["loss"][0],
    }))
    """
)


@jax_only
def test_data_parallel_on_two_jax_cpu_devices_matches_one_device(tmp_path):
    """JAX's CPU devices must be set before JAX starts: run in a fresh interpreter. One global
    batch sharded across two devices computes the one-device step's gradients (sums of the same
    terms in another order), so the weights agree as in the MirroredStrategy test."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", DATA_PARALLEL, str(tmp_path / "best")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["weights_on"] == 2
    assert result["moved"] > 1e-4, "the data-parallel model trained"
    assert result["max_difference"] < 1e-5, "two devices step like one (see the TF test)"
    assert result["exported_difference"] == 0.0
    assert np.isfinite(result["loss"])


@tensorflow_only
def test_mirrored_strategy_on_two_cpu_devices_matches_one_device(tmp_path):
    """Logical devices must be set before TensorFlow starts: run in a fresh interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED, str(tmp_path / "best")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["moved"] > 1e-4, "the mirrored model trained"
    # Two replicas sum two half-batch gradients where one device takes one batch mean: the same
    # float32 terms summed in another order, apart by a few roundings (2**-24 ~ 6e-8 relative) of
    # gradients of order 1, so by ~1e-6 at most. Adam's step lr * m / (sqrt(v) + eps) changes by
    # at most lr / eps per unit of gradient change; with eps = lr (1e-3) that factor is 1 and the
    # two steps of this fit move the weights apart by ~2e-6 at most; 1e-5 leaves room. (With the
    # default eps = 1e-8 a gradient within rounding of zero could flip its step, 2 * lr apart,
    # which is why the fit uses eps = lr.)
    assert result["max_difference"] < 1e-5, "two replicas step like one device"
    assert result["exported_difference"] == 0.0
    assert np.isfinite(result["loss"])
