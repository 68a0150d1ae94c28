"""Zoobot for TensorFlow and Keras 3: the same models and numbers as zoobot.torch.

Names are imported on first use (PEP 562), so `import zoobot.tf` and `zoobot-tf --help` do not pay
for importing TensorFlow until a model, loss or pipeline is needed. `save_pretrained`,
`from_pretrained` and `push_to_hub` take any encoder or Zoobot model; every Zoobot model class also
has them as methods.
"""

from __future__ import annotations

from zoobot.models.exports import lazy_exports

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
    "list_pretrained": "zoobot.models.catalogue",
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

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _DEPRECATED)
