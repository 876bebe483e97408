"""Running episodes in worker processes (concurrent.futures.ProcessPoolExecutor).

Episodes are independent and picklable: `step_batch` ships each chunk of (episode, action) pairs to a
worker, steps them there and returns the advanced episodes with their step results (an episode whose
calls run in a tool process travels as its history and is rebuilt in the worker's own tool process). The caller
keeps the returned episodes,
which replace the ones it sent. `map_in_chunks` runs any picklable function over chunks of items.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Executor
from typing import Callable, Sequence, TypeVar

from envtune_jax.environments.base import StepResult, ToolCall, ToolCallLike, ToolEnvironment

Item = TypeVar("Item")
Out = TypeVar("Out")


@dataclasses.dataclass(frozen=True)
class StepAction:
    """One step's input for `ToolEnvironment.step`, in picklable form."""

    assistant_text: str
    calls: tuple[ToolCall, ...]
    format_errors: tuple[str, ...] = ()

    @classmethod
    def of(cls, assistant_text: str, calls: Sequence[ToolCallLike], format_errors: Sequence[str] = ()) -> "StepAction":
        return cls(
            assistant_text, tuple(ToolCall(c.name, dict(c.arguments)) for c in calls), tuple(map(str, format_errors))
        )


def split_evenly(items: Sequence[Item], num_chunks: int) -> list[list[Item]]:
    """Contiguous chunks whose sizes differ by at most one (no empty chunks)."""
    num_chunks = max(1, min(num_chunks, len(items)))
    size, extra = divmod(len(items), num_chunks)
    chunks, start = [], 0
    for index in range(num_chunks):
        end = start + size + (1 if index < extra else 0)
        chunks.append(list(items[start:end]))
        start = end
    return [chunk for chunk in chunks if chunk]


def map_in_chunks(
    pool: Executor, function: Callable[[list[Item]], list[Out]], items: Sequence[Item], num_chunks: int
) -> list[Out]:
    """`function` applied to contiguous chunks in the pool; results concatenated in item order."""
    futures = [pool.submit(function, chunk) for chunk in split_evenly(items, num_chunks)]
    return [out for future in futures for out in future.result()]


def _step_chunk(pairs: list[tuple[ToolEnvironment, StepAction]]) -> list[tuple[ToolEnvironment, StepResult]]:
    results = []
    for episode, action in pairs:
        results.append((episode, episode.step(action.assistant_text, action.calls, action.format_errors)))
    return results


def step_batch(
    pool: Executor, episodes: Sequence[ToolEnvironment], actions: Sequence[StepAction], num_chunks: int
) -> tuple[list[ToolEnvironment], list[StepResult]]:
    """Steps every episode with its action across the pool; returns (advanced episodes, results)."""
    if len(episodes) != len(actions):
        raise ValueError(f"{len(episodes)} episodes but {len(actions)} actions")
    stepped = map_in_chunks(pool, _step_chunk, list(zip(episodes, actions)), num_chunks)
    return [episode for episode, _ in stepped], [result for _, result in stepped]
