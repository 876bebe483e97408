"""Where slots that start a prompt go in shared-prefix mode: which region, which lane, what to prefill.

A pure host-side function of the slots' current lanes, so it is tested on its own. Rules:
- a slot joins a live region that holds exactly its prompt and has a free lane (no prefill: the
  samples of a group that start late share the region of those already running);
- the other slots with the same prompt take free regions, M per region, each prefilled once;
- a slot and its region sit on the same batch shard (shard = index // (count / shards)), so on a mesh
  a group whose slots span shards gets one region per shard;
- slots that find no free region stay unplaced (the caller refuses them or lets them wait).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class RegionPlan:
    lanes: dict[int, int]  # slot -> lane (region · M + m)
    prefill: dict[int, np.ndarray]  # region -> prompt to prefill there (a region not live before)
    unplaced: tuple[int, ...]  # slots without a region


def plan_regions(
    prompts: Mapping[int, np.ndarray],
    lane_b: np.ndarray,
    *,
    num_regions: int,
    lanes: int,
    shards: int,
    held_prompt: Callable[[int], np.ndarray],
) -> RegionPlan:
    """Places each slot of `prompts` (slot -> prompt ids) given lane_b [B] (R·M = no lane; the slots of
    `prompts` are treated as released). held_prompt(r): the prompt a live region holds."""
    batch = lane_b.shape[0]
    no_lane = num_regions * lanes
    lane_b = lane_b.copy()
    lane_b[list(prompts)] = no_lane
    used = collections.defaultdict(set)  # region -> lanes in use (m)
    for lane in lane_b[lane_b < no_lane]:
        used[int(lane) // lanes].add(int(lane) % lanes)
    slot_shard = lambda slot: slot * shards // batch  # noqa: E731
    region_shard = lambda region: region * shards // num_regions  # noqa: E731
    by_prompt: dict[tuple[bytes, int], list[int]] = collections.defaultdict(list)
    for slot in sorted(prompts):
        by_prompt[(np.asarray(prompts[slot], np.int32).tobytes(), slot_shard(slot))].append(slot)
    plan_lanes: dict[int, int] = {}
    prefill: dict[int, np.ndarray] = {}
    unplaced: list[int] = []
    for (_, shard), slots in by_prompt.items():
        prompt = np.asarray(prompts[slots[0]], np.int32)
        waiting = list(slots)
        candidates = [
            r
            for r in range(num_regions)
            if region_shard(r) == shard and used[r] and len(used[r]) < lanes and np.array_equal(held_prompt(r), prompt)
        ]
        for region in candidates + [r for r in range(num_regions) if region_shard(r) == shard and not used[r]]:
            if not waiting:
                break
            if not used[region]:
                prefill[region] = prompt
            for m in range(lanes):
                if waiting and m not in used[region]:
                    used[region].add(m)
                    plan_lanes[waiting.pop(0)] = region * lanes + m
        unplaced.extend(waiting)
    return RegionPlan(plan_lanes, prefill, tuple(sorted(unplaced)))
