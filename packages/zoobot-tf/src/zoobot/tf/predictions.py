"""`predict`: a Zoobot model over a whole catalog or TFRecord shard folder, streamed to parquet,
resumable, failures reported.

The tables and the resumable run are `zoobot.models.inference` / `zoobot.models.runner`, written
once for every framework; here with Keras (`zoobot.tf.runner`). `catalog` may also be a folder of
zoobot-data TFRecord shards (`file_loc` in the failure report is then `<shard file>#<record>`).
`num_workers` images are decoded at once; TensorFlow's own threads run the model
(`tf.config.threading`). `precision="bf16"` runs the encoder under the `mixed_bfloat16` policy (a
copy with the same weights). `channels_last` is accepted for the torch package's signature: Keras
is always channels-last. `device` is a TensorFlow device name (`"/CPU:0"`, `"/GPU:0"`).
"""

from zoobot.models import inference
from zoobot.models.backend import bind
from zoobot.models.runner import TABLE_FORMAT, PredictionFiles

__all__ = ["TABLE_FORMAT", "PredictionFiles", "predict"]

predict = bind(inference.predict, "zoobot.tf.backend")
