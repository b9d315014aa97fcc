from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from deri_sweep.common.strict_loader import ConfigError, apply_overrides, from_dict, load_yaml


@dataclass
class Inner:
    depth: int = 2
    on: bool = True
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    lr: float = 1e-3
    name: str | None = None
    inner: Inner = field(default_factory=Inner)
    fractions: list[float] = field(default_factory=lambda: [0.01, 1.0])


def test_overrides_parse_yaml_values_and_nest():
    cfg = apply_overrides(Outer(), ["inner.depth=4", "lr=0.5", "inner.on=false", "fractions=[0.1]", "name=null"])
    assert cfg.inner.depth == 4 and cfg.lr == 0.5 and cfg.inner.on is False
    assert cfg.fractions == [0.1] and cfg.name is None
    assert Outer().inner.depth == 2  # the original is untouched


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("inner.depht=3", "unknown key inner.depht"),
        ("inner.depth=deep", "inner.depth: expected an integer"),
        ("inner.on=1", "inner.on: expected true/false"),
        ("inner.mode=c", "not one of ['a', 'b']"),
        ("lr.x=1", "lr is not a config section"),
        ("lr", "must look like key.sub=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        apply_overrides(Outer(), [override])


def test_yaml_errors_name_the_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("lr: 0.1\ninner:\n  depth: 6\n")
    assert load_yaml(Outer, good, ["inner.mode=b"]) == Outer(lr=0.1, inner=Inner(depth=6, mode="b"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner:\n  depthh: 6\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key\(s\) \['depthh'\] in inner"):
        load_yaml(Outer, bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: invalid YAML"):
        load_yaml(Outer, broken)
    with pytest.raises(ConfigError, match="missing.yaml: cannot read config"):
        load_yaml(Outer, tmp_path / "missing.yaml")


def test_int_given_for_float_is_accepted_but_bool_is_not():
    assert from_dict(Outer, {"lr": 1}).lr == 1.0
    with pytest.raises(ConfigError):
        from_dict(Outer, {"lr": True})


def test_name_dir_arguments_parse_one_way_for_every_entry_point(tmp_path):
    from deri_sweep.common.cli_args import name_dirs

    assert name_dirs([f"mimic={tmp_path}", "ptbxl=rel/dir"]) == {"mimic": tmp_path, "ptbxl": Path("rel/dir").resolve()}
    for bad, says in (("mimic", "expected NAME=DIR"), ("=dir", "expected NAME=DIR"), ("mimic=", "expected NAME=DIR")):
        with pytest.raises(ValueError, match=says):
            name_dirs([bad])
    with pytest.raises(ValueError, match="'mimic' is given twice"):
        name_dirs(["mimic=a", "mimic=b"])
