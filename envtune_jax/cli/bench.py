"""`envtune bench <kind>`: speed benchmarks, one JSON line each, with ratios to the device's limits.

Each kind lives in `envtune_jax/bench/<kind>.py` exposing `add_arguments(parser)`, `run(args)` and
`check_arguments(args)` (run before anything heavy is imported: bad arguments fail at once); the kind's
name is its module's.
"""

from __future__ import annotations

import argparse

from envtune_jax.bench import extend, generate, memory, prefill, prefix, probe, prompts, rollout, train

BENCHMARKS = (probe, generate, prefill, extend, train, rollout, memory, prefix, prompts)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="speed benchmarks (JSON lines)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = parser.add_subparsers(dest="benchmark", metavar="KIND", required=True)
    for module in BENCHMARKS:
        name = module.__name__.rpartition(".")[2]
        first_line = (module.__doc__ or name).strip().splitlines()[0]
        kind = kinds.add_parser(
            name, help=first_line, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(kind)
        kind.set_defaults(func=_runner(module), validate=getattr(module, "check_arguments", None))


def _runner(module):
    def run(args) -> int:
        module.run(args)
        return 0

    return run
