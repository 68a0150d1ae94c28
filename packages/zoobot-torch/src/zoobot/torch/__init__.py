"""Zoobot for PyTorch: Galaxy Zoo models with timm encoders and Lightning.

The public names below are imported on first use (PEP 562), so `import zoobot.torch` and the
`zoobot-torch` command's `--help` do not load torch, Lightning and timm until something needs them.
`save_pretrained`, `from_pretrained` and `push_to_hub` take any encoder or Zoobot model; every
Zoobot model class also has them as methods.
"""

from __future__ import annotations

from zoobot.models.exports import lazy_exports

# public name -> the module defining it
_EXPORTS = {
    "DirichletMultinomialLoss": "zoobot.torch.loss",
    "FinetuneableZoobotClassifier": "zoobot.torch.finetune",
    "FinetuneableZoobotRegressor": "zoobot.torch.finetune",
    "FinetuneableZoobotTree": "zoobot.torch.finetune",
    "GalaxyDataModule": "zoobot.torch.data",
    "HubUnavailableError": "zoobot.models.hub",
    "PushResult": "zoobot.models.hub",
    "TrainingSettings": "zoobot.models.settings",
    "WeightsMismatchError": "zoobot.models.layout",
    "ZoobotTree": "zoobot.torch.tree",
    "dirichlet_multinomial_loss": "zoobot.torch.loss",
    "encoder_dim": "zoobot.torch.encoders",
    "fit_catalog": "zoobot.torch.training",
    "from_pretrained": "zoobot.torch.pretrained",
    "get_representations": "zoobot.torch.representations",
    "get_trainer": "zoobot.torch.training",
    "list_pretrained": "zoobot.models.catalogue",
    "load_encoder": "zoobot.torch.encoders",
    "predict": "zoobot.torch.predictions",
    "push_to_hub": "zoobot.torch.pretrained",
    "register_task": "zoobot.torch.pretrained",
    "save_pretrained": "zoobot.torch.pretrained",
    "similar_galaxies": "zoobot.torch.representations",
    "train": "zoobot.torch.training",
}
# first-release names kept working, with a warning naming the new one
_DEPRECATED = {"load_from_name": "from_pretrained"}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _DEPRECATED)
