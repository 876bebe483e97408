"""The splash kernel's mask for shared-prefix training rows, computed from the row's static layout.

Splash (jax.experimental.pallas.ops.tpu.splash_attention) takes a static mask per head, classifies its
(query block, key block) tiles once when the kernel is built (skipped, full, partial), and evaluates a
computable mask's function inside the kernel for the partial tiles, so nothing of size T x T is stored.
`PackedRowMask` is such a mask for rows laid out as a `PackedRowLayout` (models/row_layout.py): the
kernel then computes only the tiles the shared-prefix pattern keeps (each prompt against itself, each
continuation against its group's prompt and itself), and the caller's segment ids exclude padding.
Imported only when a splash kernel is built (the Pallas TPU modules are not needed otherwise).
"""

from __future__ import annotations

from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

from envtune_jax.models.row_layout import PackedRowLayout


class PackedRowMask(sm._ComputableMask):  # the base class of splash's own computable masks (CausalMask, ...)
    """The [width, width] mask of `layout.visible`, width ≥ the layout's row width (a row padded up to the
    kernel's block size: the indices past the row only see each other)."""

    def __init__(self, layout: PackedRowLayout, width: int):
        if width < layout.row_width:
            raise ValueError(f"a mask of width {width} cannot hold rows of {layout.row_width} tokens")
        self.layout = layout
        super().__init__(shape=(width, width), mask_function=layout.visible)

    def __eq__(self, other: object):
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.shape == other.shape and self.layout == other.layout

    def __hash__(self):
        return hash((type(self), self.shape, self.layout))
