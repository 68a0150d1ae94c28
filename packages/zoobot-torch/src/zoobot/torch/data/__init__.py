"""Galaxy images for training and evaluation with PyTorch: the Lightning data module and transforms."""

from zoobot.torch.data.datamodule import GalaxyDataModule
from zoobot.torch.data.transforms import (
    augmentation_transform,
    dihedral_transform,
    eval_transform,
    train_transform,
)

__all__ = [
    "GalaxyDataModule",
    "augmentation_transform",
    "dihedral_transform",
    "eval_transform",
    "train_transform",
]
