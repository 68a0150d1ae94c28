"""Zoobot for TensorFlow and Keras 3: the same models and numbers as zoobot.torch.

Names (`zoobot.models.exports.FRAMEWORK_EXPORTS`, and the pipelines and `fit` below) are imported
on first use (PEP 562), so `import zoobot.tf` and `zoobot-tf --help` do not pay for importing
TensorFlow until a model, loss or pipeline is needed. `save_pretrained`, `from_pretrained` and
`push_to_hub` take any encoder or Zoobot model; every Zoobot model class also has them as methods.
"""

from __future__ import annotations

from zoobot.models.exports import framework_exports

__all__, __getattr__, __dir__ = framework_exports(
    __name__,
    {
        "LegacyWeightsError": "zoobot.models.legacy",
        "eval_dataset": ".data",
        "fit": ".training",
        "train_dataset": ".data",
    },
)
