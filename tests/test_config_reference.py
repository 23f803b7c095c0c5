"""plait config keys / show / list, plait --version, and shipped configs found by name."""

from __future__ import annotations

import pytest
import yaml

from plait.cli import main
from plait.config import Config, field_help, from_dict, load_config
from plait.config_reference import config_keys, markdown_reference


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_keys_lists_every_key_with_its_type_default_and_help(capsys):
    rc, out, _ = _run(capsys, "config", "keys")
    assert rc == 0
    keys = field_help()
    assert [k.key for k in config_keys()] == list(keys)
    for key, help_text in keys.items():
        assert f"\n{key} = " in "\n" + out and help_text in out, key
    assert "train.steps = 100    (an integer)\n    Optimizer steps." in out
    assert "checkpoint.async = false" in out  # the YAML key, not the field name
    rc, out, _ = _run(capsys, "config", "keys", "optim.")
    assert out.startswith("optim.name = adamw") and "train." not in out


def test_markdown_reference_names_every_key():
    md = markdown_reference()
    for key in field_help():
        assert f"| `{key}` |" in md, key


def test_show_prints_the_resolved_config_which_loads_back_the_same(capsys, tmp_path):
    rc, out, _ = _run(capsys, "config", "show", "gpt_tiny", "train.steps=17", "parallel.tp=2")
    assert rc == 0
    raw = yaml.safe_load(out)
    assert raw["train"]["steps"] == 17 and raw["parallel"]["tp"] == 2
    assert from_dict(raw) == load_config("gpt_tiny", ["train.steps=17", "parallel.tp=2"])
    assert set(raw) == set(Config().to_dict())


def test_show_refuses_a_bad_key_in_one_line(capsys):
    rc, _, err = _run(capsys, "config", "show", "gpt_tiny", "train.stepz=3")
    assert rc == 2 and "unknown config key 'train.stepz'" in err and "steps" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip().startswith("plait 0.")


def test_shipped_configs_are_found_by_name_from_any_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("gpt_tiny") == load_config("gpt_tiny.yaml")
    assert load_config("gpt_tiny").name == "gpt_tiny"
    rc, out, _ = _run(capsys, "config", "list")
    assert rc == 0 and "gpt_tiny" in out and "seed_mlp" in out
    (tmp_path / "gpt_tiny.yaml").write_text("name: mine\n")  # a file here wins over the name
    assert load_config("gpt_tiny.yaml").name == "mine"
    rc, _, err = _run(capsys, "config", "show", "gpt_tinny")
    assert rc == 2 and "config file 'gpt_tinny' does not exist" in err and "gpt_tiny" in err
