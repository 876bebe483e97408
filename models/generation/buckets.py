"""Shape buckets: the few static sizes that cache capacity and prefill chunk widths are rounded up to.

Every distinct static shape costs one XLA compilation, so the engine never compiles for a raw
length: a cache capacity S is rounded up to the next `cache_lengths` bucket (capped at the
engine's max_cache_len), and a chunk of T new tokens to the next `chunk_lengths` bucket. A whole
rollout then compiles at most |cache buckets used| decode functions and |cache buckets| x |chunk
buckets| extend functions, however its prompt and extension lengths vary.

Cache capacities climb 1, 1.5, 2, 3, 4, 6, 8, ... times a base: each bucket is at most 1.5x the
previous one, so a decode step reads at most ~1.5x the KV slots it needs (KV reads dominate decode
at large batch), at about twice the compilations of a powers-of-two ladder (`cache_half_steps`
switches the 1.5 steps off). Chunk widths are powers of two: padding a chunk wastes only prefill
compute, which matters less. Compiled programs are kept for the engine's lifetime, so across a
training run each (capacity, chunk) pair compiles once at most.
"""

from __future__ import annotations

import bisect
import dataclasses


class BucketError(ValueError):
    """A requested size exceeds the largest bucket (e.g. a prompt longer than the cache)."""


def geometric_ladder(smallest: int, largest: int, half_steps: bool = True) -> tuple[int, ...]:
    """smallest x (1, 1.5, 2, 3, 4, 6, ...) — or x (1, 2, 4, ...) without half steps — up to `largest`,
    which is always the last bucket."""
    if smallest < 1 or largest < 1:
        raise ValueError(f"bucket sizes must be positive, got {smallest}, {largest}")
    sizes, power = [], smallest
    while power < largest:
        sizes.append(power)
        half_step = power + power // 2
        if half_steps and power >= 2 and half_step < largest:
            sizes.append(half_step)
        power *= 2
    sizes.append(largest)
    return tuple(sorted(set(sizes)))


def round_up(size: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket ≥ size; BucketError when size exceeds the largest bucket."""
    index = bisect.bisect_left(buckets, size)
    if index == len(buckets):
        raise BucketError(f"size {size} exceeds the largest bucket {buckets[-1]}")
    return buckets[index]


@dataclasses.dataclass(frozen=True)
class BucketConfig:
    """Smallest cache capacity / prefill chunk bucket; the ladders grow geometrically from them.

    `prefill_chunk` is the widest chunk of new tokens run in one call (longer prompts and
    extensions are processed chunk by chunk), which bounds activation memory during prefill.
    `compact_rows`: an extend of a few slots may run on those rows only (row counts 1, 4, 16, ... < B;
    see extend_plan.py); off, every extend call runs all B slots (fewer programs to compile).
    """

    min_cache_len: int = 64
    min_chunk_len: int = 16
    prefill_chunk: int = 512
    cache_half_steps: bool = True
    compact_rows: bool = True

    def __post_init__(self):
        for name in ("min_cache_len", "min_chunk_len", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"BucketConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.min_chunk_len > self.prefill_chunk:
            raise ValueError(f"min_chunk_len {self.min_chunk_len} > prefill_chunk {self.prefill_chunk}")

    def cache_lengths(self, max_cache_len: int) -> tuple[int, ...]:
        return geometric_ladder(min(self.min_cache_len, max_cache_len), max_cache_len, self.cache_half_steps)

    def chunk_lengths(self) -> tuple[int, ...]:
        return geometric_ladder(self.min_chunk_len, self.prefill_chunk, half_steps=False)
