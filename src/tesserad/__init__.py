"""tesserad: the tessera daemon (registry, datasets, training, inference over gRPC)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tesserad")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
