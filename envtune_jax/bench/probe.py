"""`envtune bench probe`: the device's copy bandwidth and bf16 matmul rate, measured now.

The two ceilings every other benchmark's ratios are read against (device_limits.py keeps a table
of them for known devices): a device-to-device copy counting bytes read + written, and a square
matmul on random data (bf16 on accelerators, float32 on CPU, where bf16 matmuls are emulated),
each the best of `--repeats` timed runs after a warm-up. Also prints the table's figures for this
device kind, if it has any, and the library versions. Prints one JSON line.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--copy-mib", type=int, default=None, help="bytes copied (default 1024 MiB; 32 on CPU)")
    parser.add_argument("--matmul-size", type=int, default=None, help="matmul side (default 8192; 768 on CPU)")
    parser.add_argument("--repeats", type=int, default=10)


def run(args) -> dict:
    import importlib.metadata

    import jax

    from envtune_jax.cli.common import print_json
    from envtune_jax.config import ConfigError
    from envtune_jax.device_limits import MEASURED, probe_device

    if (
        args.repeats < 1
        or (args.copy_mib is not None and args.copy_mib < 1)
        or (args.matmul_size is not None and args.matmul_size < 1)
    ):
        raise ConfigError("--repeats, --copy-mib and --matmul-size must be ≥ 1")
    device = jax.devices()[0]
    copy_bytes = args.copy_mib * 2**20 if args.copy_mib else None
    bandwidth, matmul, what = probe_device(device, copy_bytes, args.matmul_size, repeats=args.repeats)
    table = next((figures for key, figures in MEASURED.items() if key in device.device_kind), None)
    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "transformers", "safetensors"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    record = {
        "benchmark": "probe",
        "device": str(device),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "num_devices": len(jax.devices()),
        "copy_bandwidth_bytes_per_s": bandwidth,
        "matmul_flops_per_s": matmul,
        "what": what,
        "table_bandwidth_bytes_per_s": table[0] if table else None,
        "table_matmul_flops_per_s": table[1] if table else None,
        "versions": versions,
    }
    print_json(record)
    return record
