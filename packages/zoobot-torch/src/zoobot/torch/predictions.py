"""`predict`: a Zoobot model over a whole catalog, streamed to parquet, resumable, failures reported.

The tables and the resumable run are `zoobot.models.inference` / `zoobot.models.runner`, written
once for every framework; here with PyTorch (`zoobot.torch.runner`). Speed on CPU (see
`zoobot.torch.cpu`): `precision="bf16"` runs the model under bfloat16 autocast, on CPUs with
AVX-512 bf16 or AMX with ConvNeXt's convolution + GELU fused (`zoobot.torch.fusion`); on other CPUs,
where bf16 is emulated and slower, in float32 (logged; `zoobot.torch.cpu.run_precision`);
`channels_last=None` picks the memory layout; activations are reused between batches;
`torch.set_num_threads` sets the compute threads and `num_workers` the decoding processes.
"""

from zoobot.models import inference
from zoobot.models.backend import bind
from zoobot.models.runner import TABLE_FORMAT, PredictionFiles

__all__ = ["TABLE_FORMAT", "PredictionFiles", "predict"]

predict = bind(inference.predict, "zoobot.torch.backend")
