"""`python -m refimpl run`: bad arguments exit 2 with one line naming the parameter, never a traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from refimpl.bench.cli import main
from refimpl.core.registry import all_techniques


def _weight_only():
    return next(t.id for t in all_techniques() if t.kind == "ptq-weight")


@pytest.mark.parametrize("argv,param", [
    (["rtm", "--task", "minilm-layers", "--bits", "4"], "rtn"),            # suggestion for a typo
    (["rtn", "--task", "smollm", "--bits", "4"], "smollm2-ppl"),
    (["rtn", "--task", "minilm-layers", "--bits", "0"], "bits"),
    (["rtn", "--task", "minilm-layers", "--bits", "17"], "bits"),
    (["rtn", "--task", "minilm-layers", "--bits", "4", "--group-size", "100"], "group_size"),
    (["rtn", "--task", "minilm-layers", "--bits", "4", "--option", "x"], "--option"),
    (["rtn", "--task", "minilm-layers", "--bits", "4", "--option", "foo=1"], "foo"),
    (["rtn", "--task", "minilm-layers", "--bits", "4", "--calib-n", "0"], "calib_n"),
])
def test_bad_arguments_exit_2_with_one_line(argv, param, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and param in lines[0]
    assert captured.out == ""


def test_weight_only_technique_refuses_act_bits(capsys):
    tech = _weight_only()
    assert main([tech, "--task", "minilm-layers", "--bits", "4", "--act-bits", "8"]) == 2
    assert "act_bits" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--task", "minilm-layers", "--bits", "4"],        # no technique
                                  ["rtn", "--task", "minilm-layers", "--bits", "four"]])
def test_argparse_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_real_entry_point_prints_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "refimpl", "run", "rtn", "--task", "minilm-layers",
                           "--bits", "4", "--group-size", "7"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: group_size: 7 does not divide")
    assert proc.stdout == ""
