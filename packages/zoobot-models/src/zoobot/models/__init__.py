"""The framework-free model layer of Zoobot, shared by `zoobot.torch` and `zoobot.tf`.

- `zoobot.models.layout`, `zoobot.models.hub`: the Hub model format and where models live;
- `zoobot.models.catalogue`: the published Zoobot encoders (`list_pretrained`);
- `zoobot.models.pretrained`: save, reload and publish models (`PretrainedMixin`);
- `zoobot.models.tasks`: the task protocol and registry; `zoobot.models.settings`: training settings;
- `zoobot.models.runner`, `zoobot.models.inference`: resumable `predict` / `get_representations`;
- `zoobot.models.cli`: the `zoobot-torch` / `zoobot-tf` command line;
- `zoobot.models.training`: `train` on votes; `zoobot.models.backend`: the contract each
  framework implements; `zoobot.models.exports`: lazy public names;
- `zoobot.models.legacy`: a restricted reader of legacy `pytorch_model.bin` files, without torch.
"""

from zoobot.models.exports import lazy_exports

_EXPORTS = {
    "FINETUNING": "zoobot.models.settings",
    "PRETRAINING": "zoobot.models.settings",
    "HubUnavailableError": "zoobot.models.hub",
    "ModelSource": "zoobot.models.hub",
    "PredictionFiles": "zoobot.models.runner",
    "PushResult": "zoobot.models.hub",
    "RepresentationFiles": "zoobot.models.runner",
    "RunSettings": "zoobot.models.runner",
    "TrainingSettings": "zoobot.models.settings",
    "WeightsMismatchError": "zoobot.models.layout",
    "list_pretrained": "zoobot.models.catalogue",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, {})
