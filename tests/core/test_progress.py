"""What long work shows while it runs: the phase text on a progress bar (with "compiling" while JAX
compiles), and the evaluation driver's entries in play."""

from __future__ import annotations

import io
import time

import jax

from envtune_jax import progress
from envtune_jax.cli.eval import live_text
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.evaluation import LiveEpisode, evaluate_bfcl
from envtune_jax.environments.policies import OraclePolicy
from envtune_jax.environments.splits import first_per_category, split_entries
from envtune_jax.progress import PhaseDisplay, phase_text


class _Bar:
    """The part of tqdm that PhaseDisplay uses."""

    def __init__(self, disable: bool = False):
        self.disable = disable
        self.fp = io.StringIO()  # not a terminal: redrawn only when the text changes
        self.postfixes: list[str] = []

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfixes.append(text)


def _wait_for(condition, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_phase_texts():
    assert phase_text("rollout", 3, 16) == "rollout 3/16 episodes"
    assert phase_text("environment", 3, 16) == "environment (3/16 episodes done)"
    assert phase_text("validation", 0, 4) == "validation 0/4 episodes"
    assert phase_text("update") == "update"


def test_display_shows_the_phase_and_compiling_while_jax_compiles(monkeypatch):
    monkeypatch.setattr(progress, "COMPILE_SHOWN_S", 0.0)
    bar = _Bar()
    with PhaseDisplay(bar, prefix="reward 0.500 | ") as display:
        display("rollout", 1, 4)
        assert display.current() == "reward 0.500 | rollout 1/4 episodes"
        assert _wait_for(lambda: bar.postfixes[-1:] == ["reward 0.500 | rollout 1/4 episodes"])
        jax.monitoring.record_scalar("/jax/core/compile/backend_compile_duration", time.time(), fun_name="f")
        assert display.current() == "compiling · reward 0.500 | rollout 1/4 episodes"
        assert _wait_for(lambda: bar.postfixes[-1].startswith("compiling · "))
        jax.monitoring.record_event_duration_secs("/jax/core/compile/backend_compile_duration", 1.0, fun_name="f")
        display("update")
        assert display.current() == "reward 0.500 | update"
        # a real compilation is seen too
        jax.monitoring.record_scalar("/jax/core/compile/jaxpr_trace_duration", time.time(), fun_name="g")
        assert display.current().startswith("compiling · ")
        jax.monitoring.record_event_duration_secs("/jax/core/compile/jaxpr_trace_duration", 0.1, fun_name="g")
        assert _wait_for(lambda: bar.postfixes[-1] == "reward 0.500 | update")
    assert bar.postfixes[-1] == "reward 0.500"  # what the closed bar keeps: the prefix
    assert display._thread is None and display._remove_listeners is None
    drawn = len(bar.postfixes)
    jax.monitoring.record_scalar("/jax/core/compile/backend_compile_duration", time.time(), fun_name="f")
    jax.monitoring.record_event_duration_secs("/jax/core/compile/backend_compile_duration", 1.0, fun_name="f")
    assert display._compiling == 0 and len(bar.postfixes) == drawn  # no longer listening


def test_a_disabled_bar_gets_no_thread_and_no_listener():
    display = PhaseDisplay(_Bar(disable=True))
    display("rollout", 0, 2)
    assert display._thread is None and display._remove_listeners is None
    display.close()


def test_live_text_names_the_entries_in_play():
    live = [
        LiveEpisode("multi_turn_base_3", 1, 2, 4),
        LiveEpisode("multi_turn_miss_func_8", 0, 0, 3),
        LiveEpisode("multi_turn_base_5", 0, 1, 2),
    ]
    assert live_text(live, 57) == "57 steps | base_3 turn 2/4 step 3, miss_func_8 turn 1/3 step 1 (+1 more)"
    assert live_text(live[:1], 4) == "4 steps | base_3 turn 2/4 step 3"
    assert live_text([], 9) == "9 steps"


def test_the_evaluation_driver_reports_the_episodes_in_play_after_every_round():
    entries = first_per_category(split_entries("test", ["multi_turn_base"]), 2)
    rounds: list[tuple[list[LiveEpisode], int]] = []
    records = evaluate_bfcl(
        entries,
        OraclePolicy.for_bfcl(entries),
        EnvironmentConfig.evaluation(),
        on_round=lambda live, steps: rounds.append((live, steps)),
    )
    assert [record.outcome.correct for record in records] == [True, True]
    steps = [taken for _, taken in rounds]
    assert steps == sorted(steps) and steps[-1] == sum(sum(len(turn) for turn in r.steps) for r in records)
    assert rounds[0][0][0].episode_id == entries[0].id and rounds[0][0][0].num_turns == entries[0].num_turns
    assert rounds[-1][0] == []  # the last round ended every episode
    assert any(episode.turn > 0 for live, _ in rounds for episode in live)
