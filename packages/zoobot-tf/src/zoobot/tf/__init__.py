"""Zoobot for TensorFlow and Keras 3: the same models and numbers as zoobot.torch.

Names are imported on first use (PEP 562), so `import zoobot.tf` and `zoobot-tf --help` do not pay
for importing TensorFlow until a model, loss or pipeline is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_encoder": "zoobot.tf.encoders",
    "encoder_dim": "zoobot.tf.encoders",
    "HubUnavailableError": "zoobot.tf.encoders",
    "LegacyWeightsError": "zoobot.tf.encoders",
    "WeightsMismatchError": "zoobot.tf.weights",
    "DirichletMultinomialLoss": "zoobot.tf.loss",
    "dirichlet_multinomial_loss": "zoobot.tf.loss",
    "ZoobotTree": "zoobot.tf.tree",
    "FinetuneableZoobotClassifier": "zoobot.tf.finetune",
    "FinetuneableZoobotRegressor": "zoobot.tf.finetune",
    "FinetuneableZoobotTree": "zoobot.tf.finetune",
    "PushResult": "zoobot.tf.hub",
    "from_pretrained": "zoobot.tf.hub",
    "load_from_name": "zoobot.tf.hub",
    "push_to_hub": "zoobot.tf.hub",
    "register_task": "zoobot.tf.hub",
    "save_pretrained": "zoobot.tf.hub",
    "fit": "zoobot.tf.training",
    "train": "zoobot.tf.training",
    "eval_dataset": "zoobot.tf.data",
    "train_dataset": "zoobot.tf.data",
    "predict": "zoobot.tf.predictions",
    "get_representations": "zoobot.tf.representations",
    "similar_galaxies": "zoobot.tf.representations",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zoobot.tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
