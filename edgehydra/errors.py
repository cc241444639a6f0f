"""User-facing errors: the CLI prints ``str(err)`` as one line and exits with ``err.exit_code``."""
from __future__ import annotations


class EdgeHydraError(Exception):
    """A failure the user can act on (bad file, failed check). Exit code 1."""

    exit_code = 1


class BadInputError(EdgeHydraError):
    """Input the user gave is unusable (missing path, corrupt file, wrong shape). Exit code 2."""

    exit_code = 2


class MissingBackendError(EdgeHydraError):
    """An optional backend is not installed; the message names the pip extra."""

    exit_code = 1

    def __init__(self, package: str, extra: str, purpose: str = ""):
        why = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"{package} is not installed{why}: pip install 'edgehydra[{extra}]'")
        self.package, self.extra = package, extra


def require(module: str, extra: str, purpose: str = ""):
    """Import an optional backend lazily, or raise MissingBackendError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # only a missing top-level package is "not installed"
        if e.name and module.split(".")[0] != e.name.split(".")[0] and e.name != module:
            raise
        raise MissingBackendError(module.split(".")[0], extra, purpose) from e
