"""The framework-free model layer of Zoobot, shared by `zoobot.torch` and `zoobot.tf`.

- `zoobot.models.layout`, `zoobot.models.hub`: the Hub model format and where models live;
- `zoobot.models.pretrained`: save, reload and publish models (`PretrainedMixin`);
- `zoobot.models.tasks`: the task protocol and registry; `zoobot.models.settings`: training settings;
- `zoobot.models.runner`, `zoobot.models.inference`: resumable `predict` / `get_representations`;
- `zoobot.models.cli`: the `zoobot-torch` / `zoobot-tf` command line;
- `zoobot.models.backend`: the contract each framework implements;
- `zoobot.models.legacy`: a restricted reader of legacy `pytorch_model.bin` files, without torch.
"""

from zoobot.models.hub import HubUnavailableError, ModelSource, PushResult
from zoobot.models.layout import WeightsMismatchError
from zoobot.models.runner import PredictionFiles, RepresentationFiles, RunSettings
from zoobot.models.settings import FINETUNING, PRETRAINING, TrainingSettings

__all__ = [
    "FINETUNING",
    "PRETRAINING",
    "HubUnavailableError",
    "ModelSource",
    "PredictionFiles",
    "PushResult",
    "RepresentationFiles",
    "RunSettings",
    "TrainingSettings",
    "WeightsMismatchError",
]
