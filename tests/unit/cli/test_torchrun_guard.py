"""Only the distributed training commands may run under torchrun; others are refused up front."""

from __future__ import annotations

import pytest

from histovl.cli.app import check_torchrun_command
from histovl.errors import HistovlError


@pytest.mark.parametrize("argv", [
    ["finetune", "--model", "m", "--data", "d", "--out", "o"],
    ["cmm", "fit", "--model", "m"],
    ["stainalign", "fit", "--pairs", "p.csv", "--out", "o"],
])
def test_training_commands_run_under_torchrun(argv):
    check_torchrun_command(argv, world_size=2)


@pytest.mark.parametrize("argv", [["zeroshot", "--model", "m"], ["cmm", "eval", "--head", "h"], ["stainalign", "eval"]])
def test_other_commands_are_refused_with_a_clear_message(argv):
    with pytest.raises(HistovlError, match="runs in one process; under torchrun"):
        check_torchrun_command(argv, world_size=2)
    check_torchrun_command(argv, world_size=1)  # without torchrun nothing changes
