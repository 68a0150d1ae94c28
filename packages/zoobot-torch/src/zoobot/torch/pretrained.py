"""Save, reload and publish any encoder or Zoobot model in the Hub layout: `zoobot.models.pretrained`
with PyTorch. Zoobot model classes have the same as methods (`model.save_pretrained(folder)`,
`FinetuneableZoobotClassifier.from_pretrained(name, num_classes=2)`, `model.push_to_hub(repo)`).
`register_task` registers a model class of your own, following `zoobot.models.tasks`'s protocol.
"""

from zoobot.models import pretrained
from zoobot.torch.backend import BACKEND

__all__ = ["from_pretrained", "push_to_hub", "register_task", "save_pretrained"]

save_pretrained, from_pretrained, push_to_hub = pretrained.bound("zoobot.torch.backend")
register_task = BACKEND.tasks.register
