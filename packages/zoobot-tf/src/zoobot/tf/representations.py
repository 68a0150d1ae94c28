"""`get_representations`: galaxies embedded by an encoder's pooled features; `similar_galaxies`.

Written once in `zoobot.models.inference` (the files and their columns are documented there); here
with Keras, from catalogs or TFRecord shard folders. `similar_galaxies` is
`zoobot.shared.neighbours.similar_galaxies` (NumPy, blockwise), the same in every framework.
"""

from zoobot.models import inference
from zoobot.models.backend import bind
from zoobot.models.runner import RepresentationFiles
from zoobot.shared.neighbours import METRICS, similar_galaxies

__all__ = ["METRICS", "RepresentationFiles", "get_representations", "similar_galaxies"]

get_representations = bind(inference.get_representations, "zoobot.tf.backend")
