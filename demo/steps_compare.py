"""Step 3: the published weights in both frameworks, in one process, compared number by number.

This is the one step that imports PyTorch and TensorFlow together. triton (which torch imports
when present) segfaults when its native module loads after TensorFlow's, so `block_triton` must
run before torch is imported: nothing here compiles GPU kernels. A user who only needs one
framework never meets this: load the same folder in `zoobot.torch` or in `zoobot.tf`.

Compared on held-out test galaxies:
- the evaluation preprocessing (torch transform of `read_image` vs the `zoobot.tf.data` pipeline);
- the encoder's pooled features (the published encoder folder, loaded by each `load_encoder`);
- the whole tree model (saved by zoobot.torch, reloaded by `zoobot.tf.pretrained.from_pretrained`):
  its Dirichlet concentrations with dropout off.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from common import ENCODER, SURVEY, TORCH_TREE, Run, say


def block_triton() -> None:
    """Make `import triton` fail cleanly (see the module docstring); call before importing torch."""
    # triton's native module segfaults when loaded after TensorFlow's; torch falls back without it.
    sys.modules.setdefault("triton", None)


def differences(reference: np.ndarray, other: np.ndarray) -> dict:
    """Max abs diff, and max rel diff relative to the reference's scale (its max |value|)."""
    reference = np.asarray(reference, np.float64)
    other = np.asarray(other, np.float64)
    abs_diff = float(np.max(np.abs(reference - other)))
    scale = float(np.max(np.abs(reference)))
    return {
        "shape": list(reference.shape),
        "max_abs_diff": abs_diff,
        "max_rel_diff": abs_diff / scale if scale else 0.0,
        "scale": scale,
    }


def compare(run: Run) -> dict:
    block_triton()
    import keras
    import tensorflow as tf
    import torch  # noqa: E402 - after block_triton, on purpose

    from zoobot.data.images import read_image
    from zoobot.tf import finetune as _tf_finetune  # noqa: F401 - registers the TF task classes
    from zoobot.tf.data import eval_dataset
    from zoobot.tf.encoders import load_encoder as tf_load_encoder
    from zoobot.tf.pretrained import from_pretrained as tf_from_pretrained
    from zoobot.torch import from_pretrained as torch_from_pretrained
    from zoobot.torch import load_encoder as torch_load_encoder
    from zoobot.torch.data.transforms import eval_transform

    s = run.settings
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    tf.config.experimental.enable_tensor_float_32_execution(False)

    catalog = pd.read_parquet(run.path(SURVEY) / "catalog_with_splits.parquet")
    test = catalog[catalog["split"] == "test"].head(s.feature_check_galaxies)
    results: dict = {"galaxies": len(test)}

    transform = eval_transform(3)
    torch_images = torch.stack([transform(read_image(p, s.image_size)) for p in test["file_loc"]])
    tf_batches = eval_dataset(test, image_size=s.image_size, batch_size=len(test))
    tf_images = next(iter(tf_batches))["image"].numpy()
    results["preprocessing"] = differences(torch_images.permute(0, 2, 3, 1).numpy(), tf_images)

    folder = run.path(ENCODER)
    torch_encoder = torch_load_encoder(folder).eval()
    tf_encoder = tf_load_encoder(folder)
    with torch.no_grad():
        torch_features = torch_encoder(torch_images).numpy()
    tf_features = keras.ops.convert_to_numpy(tf_encoder(tf_images, training=False))
    results["features"] = differences(torch_features, tf_features)
    run.path("comparison").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(run.path("comparison/features.npz"), torch=torch_features, tf=tf_features)

    tree_folder = run.path(TORCH_TREE) / "best"
    torch_tree = torch_from_pretrained(tree_folder).eval()
    tf_tree = tf_from_pretrained(tree_folder)
    with torch.no_grad():
        torch_alpha = torch_tree(torch_images).numpy()
    tf_alpha = keras.ops.convert_to_numpy(tf_tree(tf_images, training=False))
    results["tree_concentrations"] = differences(torch_alpha, tf_alpha)
    results["tree_model"] = {"torch": type(torch_tree).__name__, "tf": type(tf_tree).__name__}

    for name in ("preprocessing", "features", "tree_concentrations"):
        d = results[name]
        say(
            f"  {name:>20}: torch vs TF max abs diff {d['max_abs_diff']:.2e}, max rel diff "
            f"{d['max_rel_diff']:.2e} (shape {tuple(d['shape'])}, scale {d['scale']:.3g})"
        )
    return results
