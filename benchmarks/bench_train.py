"""Train-step benchmark as a plain script (same as `envtune bench train`), for machines without the package
installed. Next to the peer (benchmarks/peer_hf.py --parts train: HF Qwen3-4B shapes, bf16, sdpa, gradient
checkpointing, batch 8 x 2048, fwd+bwd without an optimizer), in the same device session:

    python benchmarks/bench_train.py --preset qwen3-4b --random-weights --batch 8 --seq-len 2048 --remat full \\
        --attention cudnn
    python benchmarks/bench_train.py --preset qwen3-4b --random-weights --batch 8 --seq-len 2048 --remat full \\
        --attention cudnn --micro-batch 2
    python benchmarks/peer_hf.py --parts train

Compare tokens/s and model TFLOP/s (both 6·params·tokens/s) as ratios within one run; our step also
applies AdamW, which the peer's does not.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envtune_jax.bench.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
