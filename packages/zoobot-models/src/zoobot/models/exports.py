"""Public names of a framework package imported on first use (PEP 562), so `import zoobot.torch` and
`zoobot-torch --help` load no framework until something needs it."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping

# Public names every framework package exports -> the module defining them; ".x" is the framework
# package's own (mirrored) module x.
FRAMEWORK_EXPORTS = {
    "DirichletMultinomialLoss": ".loss",
    "FinetuneableZoobotClassifier": ".finetune",
    "FinetuneableZoobotRegressor": ".finetune",
    "FinetuneableZoobotTree": ".finetune",
    "HubUnavailableError": "zoobot.models.hub",
    "PendingRun": "zoobot.models.distributed",
    "PushResult": "zoobot.models.hub",
    "TrainingSettings": "zoobot.models.settings",
    "WeightsMismatchError": "zoobot.models.layout",
    "ZoobotTree": ".tree",
    "dirichlet_multinomial_loss": ".loss",
    "encoder_dim": ".encoders",
    "fit_catalog": ".training",
    "from_pretrained": ".pretrained",
    "get_representations": ".representations",
    "list_pretrained": "zoobot.models.catalogue",
    "load_encoder": ".encoders",
    "merge": "zoobot.models.distributed",
    "predict": ".predictions",
    "push_to_hub": ".pretrained",
    "register_task": ".pretrained",
    "save_pretrained": ".pretrained",
    "similar_galaxies": ".representations",
    "train": ".training",
}
# First-release names kept working, with a warning naming the new one.
FRAMEWORK_DEPRECATED = {"load_from_name": "from_pretrained"}


def framework_exports(
    package: str, extra: Mapping[str, str]
) -> tuple[list[str], Callable[[str], object], Callable[[], list[str]]]:
    """`lazy_exports` of a framework package: `FRAMEWORK_EXPORTS` and its own `extra` names."""
    exports = {
        name: package + module if module.startswith(".") else module
        for name, module in {**FRAMEWORK_EXPORTS, **extra}.items()
    }
    return lazy_exports(package, exports, FRAMEWORK_DEPRECATED)


def lazy_exports(
    package: str, exports: Mapping[str, str], deprecated: Mapping[str, str]
) -> tuple[list[str], Callable[[str], object], Callable[[], list[str]]]:
    """(`__all__`, `__getattr__`, `__dir__`) of `package`: each name of `exports` is imported from
    its module on first use; a name of `deprecated` warns and gives the name it maps to."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        if name in deprecated:
            warnings.warn(
                f"{package}.{name} is deprecated; use {package}.{deprecated[name]}",
                DeprecationWarning,
                stacklevel=2,
            )
            return __getattr__(deprecated[name])
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return sorted(exports), __getattr__, __dir__
