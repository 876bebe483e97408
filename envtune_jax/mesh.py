"""Building the (data, fsdp, tensor) device mesh for single-host, multi-host and fake-CPU set-ups.

`MeshConfig` sizes may be -1 (at most one): that axis takes all remaining devices. Multi-host runs
call `initialize_distributed()` first (auto-detected on TPU pods, SLURM, or from env variables);
fake multi-device meshes on CPU come from `XLA_FLAGS=--xla_force_host_platform_device_count=8`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import TYPE_CHECKING, ClassVar

from envtune_jax.config import ConfigError

if TYPE_CHECKING:
    from jax.sharding import Mesh

# JAX is imported inside the functions that use it: a recipe's `mesh:` section loads and is checked without it.
MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass
class MeshConfig:
    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    FIELD_USE: ClassVar[tuple] = ()  # every axis is read whatever the others say

    def __post_init__(self):
        sizes = [self.data, self.fsdp, self.tensor]
        if any(not isinstance(s, int) or s == 0 or s < -1 for s in sizes):
            raise ValueError(f"mesh axis sizes must be positive or -1 (the rest of the devices), got {self}")
        if sizes.count(-1) > 1:
            raise ValueError(f"at most one mesh axis may be -1, got {self}")


def resolve_mesh_shape(config: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) sizes of `config` on `num_devices` devices; ConfigError if they do not fit."""
    sizes = [config.data, config.fsdp, config.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(
                f"mesh data={config.data}, fsdp={config.fsdp}, tensor={config.tensor} needs a multiple "
                f"of {known} devices, have {num_devices}"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {num_devices}")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(config: MeshConfig | None = None, devices=None) -> Mesh:
    """A mesh over all (or the given) devices with axes (data, fsdp, tensor)."""
    import jax
    from jax.sharding import AxisType

    config = config or MeshConfig()
    devices = list(devices) if devices is not None else jax.devices()
    shape = resolve_mesh_shape(config, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def initialize_distributed() -> bool:
    """Calls `jax.distributed.initialize()` when this looks like a multi-process run.

    Explicit: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. Auto-detected by JAX:
    a SLURM job step (inside `srun`; an sbatch/salloc shell alone stays single-process), GKE TPU
    (TPU_WORKER_HOSTNAMES / MEGASCALE_COORDINATOR_ADDRESS), or anything when ENVTUNE_DISTRIBUTED=1
    (Cloud TPU VM pod slices, found through the metadata server: launch/tpu_pod.sh sets it).
    Must run before any JAX computation; a second call is a no-op. Returns whether this is (now) a
    distributed run.
    """
    import jax

    if jax.distributed.is_initialized():
        return True
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        missing = [name for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if name not in os.environ]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} not")
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
        return True
    slurm_step = all(name in os.environ for name in SLURM_STEP_VARS)
    gke_tpu = "TPU_WORKER_HOSTNAMES" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
    if slurm_step or gke_tpu or os.environ.get("ENVTUNE_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    return False
