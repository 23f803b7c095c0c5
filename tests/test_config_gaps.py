"""Config values and files a person or a script can get wrong: each is
refused by load_config in one line naming the key or the file, before any process exists."""

from __future__ import annotations

import pytest

from plait.cli import main
from plait.config import load_config
from plait.errors import ConfigError


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lr=inf", "optim.lr"),
        ("optim.lr=.nan", "optim.lr"),
        ("optim.lr=1e999", "optim.lr"),
        ("parallel.timeout_s=inf", "parallel.timeout_s"),
        ("parallel.timeout_s=1e-9", "parallel.timeout_s"),
        ("parallel.timeout_s=1e9", "parallel.timeout_s"),
        (f"train.global_batch={10**30}", "train.global_batch"),
        (f"train.steps={2**40}", "train.steps"),
        ("optim.betas=[0.9, .inf]", "optim.betas"),
    ],
)
def test_non_finite_and_out_of_range_numbers_are_refused(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert msg.startswith(key) and "\n" not in msg, msg


@pytest.mark.parametrize(
    "text, says",
    [
        (b"train:\n  steps: 3\n  name: \xff\xfe\n", "is not UTF-8"),
        (b"- train\n- model\n", "holds a list, not a mapping"),
        (b"train:\n  steps: 3\n  steps: 5\n", "duplicate key 'steps' (line 3"),
        (b"train:\n  steps: 3\ntrain:\n  seed: 1\n", "duplicate key 'train' (line 3"),
        (
            b"model:\n  hf_overrides:\n    a: &a [x, x, x, x, x, x, x, x, x]\n"
            b"    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            b"    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n",
            "aliases (*name) are not allowed (line 4",
        ),
    ],
)
def test_bad_yaml_files_are_refused_in_one_line_naming_the_file(tmp_path, text, says):
    path = tmp_path / "c.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and says in msg and "\n" not in msg, msg


def test_an_override_without_equals_is_named_alone(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("train:\n  steps: 2\n")
    rc = main(["config", "show", str(tmp_path / "c.yaml"), "train.seed=1", "train.steps"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "'train.steps' is not key=value" in err[0], err
    # after an option (parsed apart from the overrides): still only the bad one is named
    rc = main(["train", str(tmp_path / "c.yaml"), "--nproc", "1", "train.seed=1", "train.steps"])
    assert rc != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "'train.steps' is not key=value" in err[-1] and "train.seed=1" not in err[-1], err
