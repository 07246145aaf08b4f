"""harness: benchmark and evaluation harness for efficient task adaptation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("harness")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
