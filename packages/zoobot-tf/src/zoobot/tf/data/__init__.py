"""`tf.data` pipelines of galaxy images from image catalogs and `zoobot-data` TFRecord shards.

A source is a catalog DataFrame (`id_str`, `file_loc`, label columns; DESIGN.md contract 6), a
catalog file, or a shard folder with its `shards.json` sidecar (contract 4). `open_source` checks
the requested label columns against it (`LabelColumnError` names the missing columns and the
catalog or folder) and picks a split: catalog splits by `zoobot.data.splits.assign_splits`, the
rule of `zoobot.torch`'s `GalaxyDataModule`; shard splits as written.

`eval_dataset(source, image_size=224, channels=3, batch_size=128, mean=(0.0,), std=(1.0,), *,
label_cols=None, schema=None, split=None, splits=None, split_seed=0, start=0, stop=None,
transform=True, as_tuples=False, num_parallel_calls=AUTOTUNE)` yields, in source order, batches
(the last one may be smaller) of dicts:

- `"image"`: float32 (B, image_size, image_size, channels), the evaluation transform of
  `zoobot.tf.data.transforms` (decode + resize by `zoobot.data.images.read_image` through
  `tf.numpy_function`, then torch's arithmetic in TF ops, bit-exact); uint8 RGB
  (B, size, size, 3) with `transform=False` (apply `eval_transform` yourself);
- `"id_str"`: tf.string (B,);
- `"index"`: int64 (B,), the row's position: in the catalog as given (also when a `split` is
  taken), or in the shard order (sidecar order of files, records in file order);
- `"ok"`: bool (B,), False where the image could not be read; its `"image"` is then the transform
  of an all-zero image and must be discarded;
- `"error"`: tf.string (B,), the `ImageDecodeError` message naming the file ("" where ok);
- `"labels"`: float32 (B, len(label_cols)), only when label columns were asked for.

So `predict` / `get_representations` run the model on every batch (or on `image[ok]`), keep the
rows where `ok`, and write the others (`id_str`, `file_loc`, `error`, looking the path up by
`index` in the catalog) to `<save_loc>.failed.csv`, as `zoobot.torch` does; an unreadable image
never stops a run. `start`/`stop` select rows of the whole order before anything is decoded, for
resuming in chunks. With `as_tuples=True` the batches are `(images, labels)` (`images` alone
without label columns) for Keras, and an unreadable image raises instead.

`train_dataset(source, label_cols=None, image_size=224, channels=3, batch_size=128, augment=True,
seed=None, shuffle_buffer=None, mean=(0.0,), std=(1.0,), *, schema=None, split="train",
splits=None, split_seed=0, drop_remainder=None, deterministic=None, cycle_length=None,
num_parallel_calls=AUTOTUNE)` yields shuffled `(images, labels)`: images float32
(B, image_size, image_size, channels), labels float32 (B, len(label_cols)) (vote counts, or
whatever the label columns hold). Decoding (`tf.io.decode_jpeg` / `decode_image`) and the
augmentations of `zoobot.tf.data.augment` are TF ops only, with stateless randomness from `seed`.
"""

from zoobot.data.inputs import (
    CatalogSource,
    LabelColumnError,
    ShardSource,
    is_shard_folder,
    open_source,
)
from zoobot.tf.data.augment import AugmentConfig, augment_batch
from zoobot.tf.data.pipelines import decode_train_image, eval_dataset, train_dataset
from zoobot.tf.data.transforms import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    dihedral_transform,
    eval_transform,
    mean_greyscale,
    normalise,
    read_image_op,
    to_float,
)

__all__ = [
    "DEFAULT_MEAN",
    "DEFAULT_STD",
    "AugmentConfig",
    "CatalogSource",
    "LabelColumnError",
    "ShardSource",
    "augment_batch",
    "decode_train_image",
    "dihedral_transform",
    "eval_dataset",
    "eval_transform",
    "is_shard_folder",
    "mean_greyscale",
    "normalise",
    "open_source",
    "read_image_op",
    "to_float",
    "train_dataset",
]
