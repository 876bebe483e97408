"""Generation benchmark as a plain script (same as `envtune bench generate`), for machines without the
package installed: `python benchmarks/bench_generate.py --preset qwen3-4b --random-weights --batch 64`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envtune_jax.bench.generate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
