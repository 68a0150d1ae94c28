"""Zoobot for TensorFlow and Keras 3: the same models and numbers as zoobot.torch.

Names are imported on first use (PEP 562), so `import zoobot.tf` and `zoobot-tf --help` do not pay
for importing TensorFlow until a model, loss or pipeline is needed. `save_pretrained`,
`from_pretrained` and `push_to_hub` take any encoder or Zoobot model; every Zoobot model class also
has them as methods.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_EXPORTS = {
    "load_encoder": "zoobot.tf.encoders",
    "encoder_dim": "zoobot.tf.encoders",
    "HubUnavailableError": "zoobot.models.hub",
    "LegacyWeightsError": "zoobot.models.legacy",
    "WeightsMismatchError": "zoobot.models.layout",
    "TrainingSettings": "zoobot.models.settings",
    "DirichletMultinomialLoss": "zoobot.tf.loss",
    "dirichlet_multinomial_loss": "zoobot.tf.loss",
    "ZoobotTree": "zoobot.tf.tree",
    "FinetuneableZoobotClassifier": "zoobot.tf.finetune",
    "FinetuneableZoobotRegressor": "zoobot.tf.finetune",
    "FinetuneableZoobotTree": "zoobot.tf.finetune",
    "PushResult": "zoobot.models.hub",
    "from_pretrained": "zoobot.tf.pretrained",
    "push_to_hub": "zoobot.tf.pretrained",
    "register_task": "zoobot.tf.pretrained",
    "save_pretrained": "zoobot.tf.pretrained",
    "fit": "zoobot.tf.training",
    "fit_catalog": "zoobot.tf.training",
    "train": "zoobot.tf.training",
    "eval_dataset": "zoobot.tf.data",
    "train_dataset": "zoobot.tf.data",
    "predict": "zoobot.tf.predictions",
    "get_representations": "zoobot.tf.representations",
    "similar_galaxies": "zoobot.tf.representations",
}
# first-release names kept working, with a warning naming the new one
_DEPRECATED = {"load_from_name": "from_pretrained"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and keep the name here."""
    if name in _DEPRECATED:
        warnings.warn(
            f"zoobot.tf.{name} is deprecated; use zoobot.tf.{_DEPRECATED[name]}",
            DeprecationWarning,
            stacklevel=2,
        )
        return __getattr__(_DEPRECATED[name])
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zoobot.tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
