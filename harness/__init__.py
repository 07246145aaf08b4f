"""harness: benchmark and evaluation harness for efficient task adaptation.

The public API, for scripts and notebooks (`harness run` is `run_job(RunSpec(...))`):

    from harness import RunSpec, run_job, read_results
    result = run_job(RunSpec(suite="glue", task="sst2", method="lora", model="minilm-l6"))

Names are imported on first use, so `import harness` stays cheap (no torch) for the modules that
only need `__version__`.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("harness")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

# name -> the module that defines it
_PUBLIC = {
    "RunSpec": "harness.spec.run",
    "ResolvedRun": "harness.spec.run",
    "resolve": "harness.engine.resolve",
    "run_job": "harness.engine.job",
    "Method": "harness.methods.base",
    "METHODS": "harness.methods.base",
    "Pipeline": "harness.methods.pipeline",
    "Suite": "harness.suites.base",
    "SUITES": "harness.suites.base",
    "MODELS": "harness.data.models",
    "EVAL_BACKENDS": "harness.evaluation.base",
    "EXECUTORS": "harness.execution.base",
    "read_results": "harness.results.store",
    "compare_stores": "harness.results.compare",
    "write_report": "harness.site.build",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
