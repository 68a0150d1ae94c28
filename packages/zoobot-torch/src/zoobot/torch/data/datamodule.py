"""A LightningDataModule over a catalog of image files or a Hugging Face dataset of galaxy images."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import datasets
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from zoobot.data.images import read_image
from zoobot.data.labels import LabelRule, check_labels
from zoobot.data.splits import Splits, split_tables
from zoobot.torch.data import transforms

# The splits each Lightning stage reads.
STAGE_SPLITS = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",)}
Data = pd.DataFrame | Mapping[str, pd.DataFrame] | datasets.Dataset | datasets.DatasetDict


class CatalogDataset(Dataset):
    """Images of a catalog (`file_loc`), read by `zoobot.data`, and labels (float32; may be empty)."""

    def __init__(
        self, catalog: pd.DataFrame, label_cols: Sequence[str], image_size: int, transform: Callable
    ):
        self.paths = catalog["file_loc"].astype(str).tolist()
        self.ids = _ids(catalog["id_str"] if "id_str" in catalog.columns else None, len(catalog))
        self.labels = torch.from_numpy(_labels(catalog, label_cols, len(catalog)))
        self.image_size, self.transform = image_size, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(read_image(self.paths[i], self.image_size)), self.labels[i]


class HFImageDataset(Dataset):
    """Images of a Hugging Face dataset's `image` feature, decoded by the same path as files."""

    def __init__(
        self,
        dataset: datasets.Dataset,
        label_cols: Sequence[str],
        image_size: int,
        transform: Callable,
    ):
        self.images = dataset.select_columns(["image"]).cast_column(
            "image", datasets.Image(decode=False)
        )
        table = dataset.select_columns(list(label_cols)).to_pandas() if label_cols else None
        self.labels = torch.from_numpy(_labels(table, label_cols, len(dataset)))
        has_ids = "id_str" in dataset.column_names
        self.ids = _ids(dataset["id_str"] if has_ids else None, len(dataset))
        self.image_size, self.transform = image_size, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i]["image"]
        source = image["path"] if image["bytes"] is None else image["bytes"]
        return self.transform(read_image(source, self.image_size)), self.labels[i]


def _ids(values, n_rows: int) -> list[str]:
    """Each row's `id_str` (its position when the data has none), to name it in errors."""
    return [str(v) for v in values] if values is not None else [str(i) for i in range(n_rows)]


class RecordedBatches(BatchSampler):
    """A `BatchSampler` that keeps the dataset indices of each batch of the epoch under way, so a
    training step that fails can name its galaxies (`zoobot.torch.module`, `batch_ids`)."""

    def __init__(self, sampler, batch_size: int, drop_last: bool):
        super().__init__(sampler, batch_size, drop_last)
        self.epoch: list[list[int]] = []

    def __iter__(self):
        self.epoch = []
        for batch in super().__iter__():
            self.epoch.append(list(batch))
            yield batch


def batch_ids(loader: DataLoader | None, batch: int) -> list[str] | None:
    """The `id_str` of batch number `batch` of the epoch under way in a training loader built on
    `RecordedBatches` (as `GalaxyDataModule`'s is); None for any other loader."""
    sampler = getattr(loader, "batch_sampler", None)
    ids = getattr(getattr(loader, "dataset", None), "ids", None)
    if not isinstance(sampler, RecordedBatches) or ids is None or batch >= len(sampler.epoch):
        return None
    return [ids[i] for i in sampler.epoch[batch]]


def _labels(table: pd.DataFrame | None, label_cols: Sequence[str], n_rows: int) -> np.ndarray:
    """(n_rows, n_label_cols) float32 labels, read from `table` when there are label columns."""
    if not label_cols:
        return np.zeros((n_rows, 0), np.float32)
    missing = [c for c in label_cols if c not in table.columns]
    if missing:
        raise KeyError(f"label columns missing from the data: {missing}")
    return table[list(label_cols)].to_numpy(np.float32, copy=True)


class GalaxyDataModule(pl.LightningDataModule):
    """Galaxy images and labels for Lightning from a catalog or a Hugging Face dataset.

    `data` is a catalog (DESIGN.md 6) or a `datasets.Dataset` with an `image` feature, split here
    into train / validation / test by `zoobot.data`'s rule (`splits=None`: the `split` column if
    there is one, else 80/10/10 by `id_str` and `seed`; or a column name, or `{split: fraction}`);
    or a mapping / `DatasetDict` of splits.
    Prediction uses the whole of a single catalog or dataset, or the `predict` split of a mapping.
    Batches are `(images, labels)`, labels float32 in `label_cols` order (empty if there are none).
    The labels are checked when the module is made, by `label_rule` (`zoobot.data.labels`: vote
    counts, class indices or targets; default: finite numbers), naming the split, column and rows.
    The training loader records each batch's rows, so a failing step can name its galaxies.
    """

    def __init__(
        self,
        data: Data,
        label_cols: Sequence[str] = (),
        image_size: int = 224,
        channels: int = 3,
        batch_size: int = 128,
        num_workers: int = 4,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        splits: Splits = None,
        seed: int = 0,
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        label_rule: LabelRule | None = None,
    ):
        super().__init__()
        if num_workers < 0:
            raise ValueError(
                f"num_workers must be 0 (load in this process) or more, got num_workers={num_workers}"
            )
        self.data, self.label_cols = data, list(label_cols)
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.split_rule, self.seed = splits, seed
        self.train_transform = train_transform or transforms.train_transform(image_size, channels)
        self.eval_transform = eval_transform or transforms.eval_transform(channels)
        self.splits: dict[str, Dataset] = {}
        if self.label_cols:
            self.check_labels(label_rule or LabelRule.targets(self.label_cols))

    def check_labels(self, rule: LabelRule) -> None:
        """Check the labels of every split (all of a single catalog or dataset) by `rule`."""
        single = isinstance(self.data, pd.DataFrame | datasets.Dataset)
        tables = {"the catalog": self.data} if single else dict(self.data)
        for name, table in tables.items():
            if name == "predict":
                continue
            what = name if single else f"split {name!r}"
            if isinstance(table, datasets.Dataset):
                columns = [c for c in ("id_str", *rule.columns) if c in table.column_names]
                table = table.select_columns(columns).to_pandas()
            check_labels(table, rule, what)

    def _tables(self) -> Mapping:
        if isinstance(self.data, pd.DataFrame | datasets.Dataset):
            return split_tables(self.data, self.split_rule, self.seed)
        return self.data

    def _dataset(self, table, transform: Callable) -> Dataset:
        cls = HFImageDataset if isinstance(table, datasets.Dataset) else CatalogDataset
        return cls(table, self.label_cols, self.image_size, transform)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of a stage: `fit`, `validate`, `test` or `predict`."""
        if stage == "predict":
            single = isinstance(self.data, pd.DataFrame | datasets.Dataset)
            table = self.data if single else self.data["predict"]
            self.splits["predict"] = self._dataset(table, self.eval_transform)
            return
        tables = self._tables()
        needed = STAGE_SPLITS[stage or "fit"]
        missing = [s for s in needed if s not in tables]
        if missing:
            raise KeyError(
                f"{stage or 'fit'} needs split(s) {missing}; the data has {list(tables)}"
            )
        for split in needed:
            transform = self.train_transform if split == "train" else self.eval_transform
            self.splits[split] = self._dataset(tables[split], transform)

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        dataset = self.splits[split]
        options = {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers,
        }
        if train:
            drop_last = len(dataset) > self.batch_size
            batches = RecordedBatches(RandomSampler(dataset), self.batch_size, drop_last)
            return DataLoader(dataset, batch_sampler=batches, **options)
        return DataLoader(dataset, batch_size=self.batch_size, **options)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
