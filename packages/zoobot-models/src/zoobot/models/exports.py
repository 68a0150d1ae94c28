"""Public names of a framework package imported on first use (PEP 562), so `import zoobot.torch` and
`zoobot-torch --help` load no framework until something needs it."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping


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
