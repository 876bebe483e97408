"""The static layout of a shared-prefix training row, and the attention mask that layout implies.

A packed row (rl/prefix_packing.py) holds `groups` GRPO groups, each as a prompt block of P tokens
followed by G continuation blocks of C tokens:

    row = [prompt_1 | cont_1,1 | ... | cont_1,G | prompt_2 | cont_2,1 | ... ]        T = n · (P + G · C)

Tokens sit at the start of their block (padding after them), with positions rising along the block and
every continuation position after its prompt's. Under those rules the shared-prefix mask (same segment,
key position ≤ query position, key branch 0 or the query's own) depends on token indices only, apart from
padding: `PackedRowLayout.visible` is that index pattern, which a kernel taking a static mask (splash on
TPU) runs with segment ids excluding the padding. The layout is a frozen dataclass so it can be a static
part of a program (a pytree meta field, a cache key).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PackedRowLayout:
    """Where things sit in a shared-prefix training row: `groups` times [prompt block of `prompt_width`
    tokens, then `branches` continuation blocks of `branch_width` tokens]. Static (part of the program)."""

    groups: int  # n: groups per row
    prompt_width: int  # P
    branches: int  # G: continuation blocks per group
    branch_width: int  # C

    @property
    def group_width(self) -> int:
        return self.prompt_width + self.branches * self.branch_width

    @property
    def row_width(self) -> int:
        return self.groups * self.group_width

    def visible(self, q_index, kv_index):
        """Whether the token at row index q_index may attend the one at kv_index, by the layout alone: same
        group, key not after the query, and the key in the group's prompt block or in the query's own
        continuation block. q_index, kv_index: integer arrays (NumPy or JAX) that broadcast against each
        other; returns booleans of their broadcast shape. Indices past the row continue the pattern (further
        groups), so a row padded to a kernel's block size keeps its padding apart from its tokens.

        Only +, -, *, // and comparisons on non-negative integers: the splash kernel evaluates this inside
        the kernel on the TPU as well as on the host."""
        w, p, c = self.group_width, self.prompt_width, self.branch_width
        q_group, kv_group = q_index // w, kv_index // w
        q_offset, kv_offset = q_index - q_group * w, kv_index - kv_group * w
        # continuation blocks numbered by (offset + shift) // C, which is never negative; a prompt offset's
        # number is never compared (a prompt key is visible anyway, a prompt query never sees a later block)
        shift = -(-p // c) * c - p
        same_block = (q_offset + shift) // c == (kv_offset + shift) // c
        return (q_group == kv_group) & (kv_index <= q_index) & ((kv_offset < p) | same_block)
