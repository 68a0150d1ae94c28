"""Zoobot for PyTorch: Galaxy Zoo models with timm encoders and Lightning.

The public names (`zoobot.models.exports.FRAMEWORK_EXPORTS`, and the data module and Trainer below)
are imported on first use (PEP 562), so `import zoobot.torch` and the `zoobot-torch` command's
`--help` do not load torch, Lightning and timm until something needs them. `save_pretrained`,
`from_pretrained` and `push_to_hub` take any encoder or Zoobot model; every Zoobot model class also
has them as methods.
"""

from __future__ import annotations

from zoobot.models.exports import framework_exports

__all__, __getattr__, __dir__ = framework_exports(
    __name__, {"GalaxyDataModule": ".data", "get_trainer": ".training"}
)
