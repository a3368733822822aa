from pathlib import Path

import pytest
import yaml

from optlib.core.params import ParamsError, from_dict, load_params, notebook_params
from optlib.core import paths


@pytest.mark.parametrize("target", ["cpu", "cuda", "smoke", "resnet50-cpu"])
def test_shipped_params_files_are_valid(target):
    p = load_params(paths.params_file_for(target))
    assert p.target == target


def write(tmp_path, content: dict) -> Path:
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump(content))
    return f


def test_unknown_key_names_key_and_file(tmp_path):
    f = write(tmp_path, {"bench": {"sample": 10}})
    with pytest.raises(ParamsError) as e:
        load_params(f)
    assert str(f) in str(e.value) and "'bench.sample'" in str(e.value) and "samples" in str(e.value)


def test_unknown_section(tmp_path):
    with pytest.raises(ParamsError, match="unknown key 'modle'"):
        load_params(write(tmp_path, {"modle": {}}))


@pytest.mark.parametrize("content,key", [
    ({"bench": {"samples": "many"}}, "bench.samples"),
    ({"bench": {"batch_sizes": [1, "8"]}}, "bench.batch_sizes[1]"),
    ({"model": {"trust_checkpoint": "yes"}}, "model.trust_checkpoint"),
    ({"data": {"mean": 0.5}}, "data.mean"),
    ({"device": "tpu"}, "device"),
    ({"bench": {"threads": 0}}, "bench.threads"),
])
def test_wrong_type_or_value_names_key(tmp_path, content, key):
    with pytest.raises(ParamsError) as e:
        load_params(write(tmp_path, content))
    assert f"'{key}'" in str(e.value)


def test_missing_paths_name_key(tmp_path):
    with pytest.raises(ParamsError, match=r"'model.checkpoint' names a file that does not exist"):
        load_params(write(tmp_path, {"model": {"checkpoint": str(tmp_path / "nope.ckpt")}}))
    with pytest.raises(ParamsError, match=r"'data.root' names a folder that does not exist"):
        load_params(write(tmp_path, {"data": {"root": str(tmp_path / "nope")}}))
    # the shipped example points at /data/...: a clear error, not a crash
    with pytest.raises(ParamsError, match="model.checkpoint"):
        load_params(paths.PARAMS_DIR / "example-xray.yaml")


def test_bad_yaml_and_missing_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("bench: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(f)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "absent.yaml")


def test_defaults_and_int_to_float():
    p = from_dict({"train": {"lr": 1}})
    assert p.train.lr == 1.0 and isinstance(p.train.lr, float)
    assert p.bench.batch_sizes == [1, 8, 32] and p.data.root is None


def test_notebook_params_override_file_key_by_key(tmp_path):
    f = write(tmp_path, {"target": "x", "bench": {"samples": 50, "trials": 2}})
    p = notebook_params(str(f), bench={"trials": 4})
    assert (p.target, p.bench.samples, p.bench.trials) == ("x", 50, 4)
    assert p.hash() != notebook_params(str(f)).hash()
