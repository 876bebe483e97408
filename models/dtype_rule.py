"""The one dtype rule of model loading: the parameter and compute dtypes a model gets for what it is loaded for.

| use | parameters | compute | who |
|---|---|---|---|
| train | float32 | bfloat16 | `envtune train`, the synthetic run, `envtune bench rollout` (recipe `model:` section) |
| inference | bfloat16 | bfloat16 | `envtune generate`, `envtune eval`, `envtune bench generate / prefill / extend` |
| convert | float32 | float32 | `envtune convert`, `envtune export`, the demo's conversion |

Trained weights stay float32 because an update of lr x 1e-6 is far below a bfloat16 ulp of a weight; a
model that only generates loses nothing measurable in bfloat16 and halves its memory traffic; a conversion
reads every stored float type (F16, BF16, F32) exactly in float32. An explicit dtype wins: a parameter dtype
alone (`--dtype`) sets the compute dtype too, and outside training a compute dtype alone sets the parameters'
too (weights and compute are one setting there). The source of the weights (HF folder, envtune checkpoint,
random) never changes the result. JAX-free: the command line and the recipe dataclasses read it.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

Use = Literal["train", "inference", "convert"]
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelDtypes:
    param: str  # the weights as stored on the devices
    compute: str  # activations and matmul inputs


DTYPE_RULE: dict[str, ModelDtypes] = {
    "train": ModelDtypes("float32", "bfloat16"),
    "inference": ModelDtypes("bfloat16", "bfloat16"),
    "convert": ModelDtypes("float32", "float32"),
}


def model_dtypes(use: Use, param: Optional[str] = None, compute: Optional[str] = None) -> ModelDtypes:
    """The dtypes of a model loaded for `use`: explicit ones win; one given alone sets the other too, except
    that training keeps float32 weights under any compute dtype."""
    if use not in DTYPE_RULE:
        raise ValueError(f"unknown model use {use!r}; choose from {sorted(DTYPE_RULE)}")
    for name, value in (("param_dtype", param), ("dtype", compute)):
        if value is not None and value not in DTYPES:
            raise ValueError(f"{name} must be float32 or bfloat16, got {value!r}")
    rule = DTYPE_RULE[use]
    return ModelDtypes(param or (compute if use != "train" else None) or rule.param, compute or param or rule.compute)
