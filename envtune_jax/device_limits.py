"""Physical limits of the device a program runs on: copy bandwidth and bf16 matmul rate.

Benchmarks report their speed as a fraction of these; training reports its MFU against them. Known device kinds
take figures measured on
single-GPU machines (docs/benchmarks-gpu.md lists them with their dates); any other device, or
`probe=True`, gets a quick measurement: a device-to-device copy (bytes read + written) and a square
matmul in bf16 (float32 on CPU, where bf16 matmuls are emulated). `DeviceLimits.source` says which
was used.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp

# substring of jax's device_kind → (copy bandwidth B/s, bf16 matmul FLOP/s, where the figures come from)
MEASURED: dict[str, tuple[float, float, str]] = {
    "H100": (2.9e12, 789e12, "measured on an H100 80GB, 2026-11-23 (docs/benchmarks-gpu.md)"),
    "H200": (4.3e12, 788e12, "measured on H200s, 2026-10-28 and 2026-11-04 (docs/benchmarks-gpu.md)"),
}


@dataclasses.dataclass(frozen=True)
class DeviceLimits:
    device_kind: str
    num_devices: int
    bandwidth_bytes_per_s: float  # all devices together
    matmul_flops_per_s: float  # all devices together
    source: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _best_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def probe_device(
    device=None, copy_bytes: int | None = None, matmul_size: int | None = None, repeats: int = 5
) -> tuple[float, float, str]:
    """(copy bandwidth B/s, matmul FLOP/s, description) of one device, measured now."""
    device = device or jax.devices()[0]
    on_cpu = device.platform == "cpu"
    copy_bytes = copy_bytes or (1 << 25 if on_cpu else 1 << 30)
    matmul_size = matmul_size or (768 if on_cpu else 8192)
    dtype = jnp.float32 if on_cpu else jnp.bfloat16
    source = jax.device_put(jnp.ones((copy_bytes // 2,), jnp.bfloat16), device)
    copy_s = _best_time(jax.jit(lambda x: x * 2), source, repeats=repeats)
    a = jax.device_put(jax.random.normal(jax.random.key(0), (matmul_size, matmul_size), dtype), device)
    matmul_s = _best_time(jax.jit(lambda x, y: x @ y), a, a, repeats=repeats)
    what = f"probed now: {copy_bytes / 2**20:.0f} MiB copy, {matmul_size}^3 {jnp.dtype(dtype).name} matmul"
    return 2 * copy_bytes / copy_s, 2 * matmul_size**3 / matmul_s, what


def device_limits(probe: bool = False, devices=None) -> DeviceLimits:
    """Limits of `devices` (default: all), from the MEASURED table or a probe of the first one."""
    devices = list(devices) if devices is not None else jax.devices()
    kind = devices[0].device_kind
    known = next((figures for key, figures in MEASURED.items() if key in kind), None)
    if known is None or probe:
        bandwidth, matmul, source = probe_device(devices[0])
    else:
        bandwidth, matmul, source = known
    n = len(devices)
    return DeviceLimits(kind, n, bandwidth * n, matmul * n, source)
