"""The compiled decode loop reads the KV cache as it lies: XLA's optimised program holds no transposed
copy of any layer's keys or values (the old [B, S, K, H] layout made one per layer per step)."""

from __future__ import annotations

import itertools
import re

from envtune_jax.bench.memory import lower_decode
from envtune_jax.models.config import preset

_COPY = re.compile(r"\s*(?:ROOT )?%\S+ = \w+\[([0-9,]+)\]\S* (transpose|copy)\(")


def test_decode_loop_has_no_transposed_copy_of_the_cache():
    cfg = preset("tiny", param_dtype="bfloat16", dtype="bfloat16")
    batch, context = 3, 96  # a slot count unlike every model dimension, so shapes are unambiguous
    hlo = lower_decode(cfg, batch, context, "bfloat16").compile().as_text()
    cache_bksh = (batch, cfg.num_kv_heads, context, cfg.head_dim)
    transposed = {",".join(map(str, p)) for p in itertools.permutations(cache_bksh)} - {",".join(map(str, cache_bksh))}
    copies = [line.strip()[:160] for line in hlo.splitlines() if (m := _COPY.match(line)) and m.group(1) in transposed]
    assert "while" in hlo and len(hlo) > 10_000, "the decode loop was not compiled"
    assert not copies, "\n".join(copies)
