"""Galaxy images for training and evaluation with PyTorch: the Lightning data module and transforms."""

from zoobot.torch.data.datamodule import GalaxyDataModule
from zoobot.torch.data.transforms import eval_transform, train_transform

__all__ = ["GalaxyDataModule", "eval_transform", "train_transform"]
