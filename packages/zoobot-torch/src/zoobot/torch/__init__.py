"""Zoobot for PyTorch: Galaxy Zoo models with timm encoders and Lightning.

The public names below are imported on first use (PEP 562), so `import zoobot.torch` and the
`zoobot-torch` command's `--help` do not load torch, Lightning and timm until something needs them.
"""

from __future__ import annotations

import importlib

# public name -> the module defining it
_EXPORTS = {
    "DirichletMultinomialLoss": "zoobot.torch.loss",
    "FinetuneableZoobotClassifier": "zoobot.torch.finetune",
    "FinetuneableZoobotRegressor": "zoobot.torch.finetune",
    "FinetuneableZoobotTree": "zoobot.torch.finetune",
    "GalaxyDataModule": "zoobot.torch.datamodule",
    "HubUnavailableError": "zoobot.torch.encoders",
    "PushResult": "zoobot.torch.hub",
    "WeightsMismatchError": "zoobot.torch.encoders",
    "ZoobotTree": "zoobot.torch.tree",
    "dirichlet_multinomial_loss": "zoobot.torch.loss",
    "encoder_dim": "zoobot.torch.encoders",
    "from_pretrained": "zoobot.torch.hub",
    "get_representations": "zoobot.torch.representations",
    "get_trainer": "zoobot.torch.training",
    "load_encoder": "zoobot.torch.encoders",
    "load_from_name": "zoobot.torch.hub",
    "predict": "zoobot.torch.predictions",
    "push_to_hub": "zoobot.torch.hub",
    "register_task": "zoobot.torch.hub",
    "save_pretrained": "zoobot.torch.hub",
    "similar_galaxies": "zoobot.torch.representations",
    "train": "zoobot.torch.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import a public name's module on first use and keep the name here."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
