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


def test_interval_membership_and_wording():
    from optlib.core.params import Interval

    assert 0 in Interval(0, 1) and 1 in Interval(0, 1) and 0 not in Interval(0, 1, open_low=True)
    assert 1 not in Interval(0, 1, open_high=True) and 0.999 in Interval(0, 1, open_high=True)
    assert 10 ** 9 in Interval(1) and 0 not in Interval(1) and -5 in Interval(None, 5)
    assert [Interval(1).describe(), Interval(0, open_low=True).describe(), Interval(0, 1, True, True).describe(),
            Interval(16, 8192).describe(), Interval(0, 1, open_high=True).describe()] == [
        "at least 1", "greater than 0", "strictly between 0 and 1", "between 16 and 8192", "in [0, 1)"]


def _section_and_type(key):
    import dataclasses
    import typing

    from optlib.core.params import Params

    section, name = key.split(".")
    cls = next(f.default_factory for f in dataclasses.fields(Params) if f.name == section)
    tp = typing.get_type_hints(cls)[name]
    is_list = typing.get_origin(tp) is list
    scalar = typing.get_args(tp)[0] if is_list else next(a for a in (typing.get_args(tp) or (tp,)) if a is not type(None))
    return section, name, scalar, is_list


# A closed end that a cross-field rule (core.params._validate) only accepts with another key set.
CROSS_FIELD_CONTEXT = {"model.num_classes": {"data": {"embedded": "phantoms"}}}


def _declared_cases():
    from optlib.core.params import declared_ranges

    cases = []
    for key, iv in declared_ranges().items():
        section, name, scalar, is_list = _section_and_type(key)
        step = 1 if scalar is int else 1e-6
        for end, open_, sign in ((iv.low, iv.open_low, -1), (iv.high, iv.open_high, +1)):
            if end is None:
                continue
            outside = end if open_ else end + sign * step
            cases.append((key, section, name, scalar(outside), is_list, False))
            if not open_:
                cases.append((key, section, name, scalar(end), is_list, True))
    return cases


@pytest.mark.parametrize("key,section,name,value,is_list,accepted", _declared_cases(),
                         ids=lambda v: str(v) if not isinstance(v, bool) else "")
def test_every_declared_range_is_enforced_at_both_ends(key, section, name, value, is_list, accepted):
    """Generated from the declarations: a value just outside each end names the key; a closed end itself passes."""
    content = {section: {name: [value] if is_list else value}}
    for other, values in CROSS_FIELD_CONTEXT.get(key, {}).items():  # what the explicit cross-field rules need
        content.setdefault(other, {}).update(values)
    if accepted:
        assert from_dict(content)
    else:
        with pytest.raises(ParamsError, match=rf"'{key}(\[0\])?' must be"):
            from_dict(content)


def test_declared_ranges_cover_the_counts_and_fractions():
    from optlib.core.params import declared_ranges

    ranges = declared_ranges()
    assert len(ranges) >= 50
    for key in ("bench.samples", "bench.threads", "quant.max_accuracy_drop", "prune.ratios", "data.positive_share",
                "memory.batch_sizes", "comparison.gemm_size", "model.decision_threshold"):
        assert key in ranges, key


def test_a_params_file_named_in_a_notebook_replaces_its_tiny_defaults(tmp_path):
    from optlib.chapter import chapter_params

    tiny = {"data": {"image_size": 32}, "bench": {"trials": 3}}
    assert chapter_params(None, tiny).data.image_size == 32
    file = paths.params_file_for("cpu")
    raw = yaml.safe_load(file.read_text())
    from_file = chapter_params(str(file), tiny)
    assert (from_file.target, from_file.data.image_size, from_file.bench.trials) == \
        ("cpu", raw["data"]["image_size"], raw["bench"]["trials"])
    assert raw["data"]["image_size"] != 32 and raw["bench"]["trials"] != 3
