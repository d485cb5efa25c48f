"""histovl._stopwatch: phases are exclusive, and nothing is measured without a stopwatch."""

from __future__ import annotations

import time

from histovl._stopwatch import _CURRENT, Stopwatch, phase, running


def test_nested_phases_count_once_and_the_rest_is_the_remainder() -> None:
    with running() as sw:
        with phase("model"):
            time.sleep(0.02)
            with phase("model_load"):
                time.sleep(0.03)
        with phase("read_decode"):
            time.sleep(0.01)
        time.sleep(0.01)
    split = sw.split()
    assert 0.015 <= split["model_s"] < 0.03  # the load inside is not counted twice
    assert split["model_load_s"] >= 0.025 and split["read_decode_s"] >= 0.008
    assert abs(split["read_decode_s"] + split["model_s"] + split["other_s"] - split["total_s"]) < 2e-3
    assert split["other_s"] >= split["model_load_s"]


def test_phase_without_a_stopwatch_measures_nothing() -> None:
    assert _CURRENT.get() is None
    with phase("model"):
        pass
    sw = Stopwatch()
    with running(sw), phase("model"):
        assert _CURRENT.get() is sw
    assert _CURRENT.get() is None and sw.seconds["model"] > 0
