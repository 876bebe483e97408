"""The HF transformers peer (PyTorch, sdpa attention), at the shapes our benchmarks run, one JSON line per figure.

    python benchmarks/peer_hf.py --parts prefill,train [--tiny]

A Qwen3ForCausalLM of the preset's shapes (models/config.py, through `to_hf_dict`) with transformers'
own random initialisation, in bf16 on the GPU (on CPU without one, for dry runs). Measured the way the
peers' figures quoted in docs/benchmarks-gpu.md were:
- prefill: B x P random tokens, no cache, logits of the last position only (`logits_to_keep=1`);
  one warm-up pass, then the mean of `--repeats` passes: tok/s and 2·params·tokens/s;
- train: fwd + bwd of the causal-LM loss on B x L random tokens with gradient checkpointing, no
  optimizer; one warm-up step, then the mean of `--repeats` steps: tok/s, 6·params·tokens/s, peak memory;
- generate: greedy `generate` of N tokens after B random P-token prompts (no stop token), after a
  short warm-up generation: output tok/s.
Each part frees what it allocated; a part that fails prints {"what": ..., "error": ...} and the
others still run (exit status 1 at the end).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARTS = ("prefill", "train", "generate")
TINY_SHAPES = {"prefill": (2, 64), "train": (2, 64), "generate": ((1, 16, 8), (4, 16, 8))}
SHAPES = {"prefill": (8, 2048), "train": (8, 2048), "generate": ((1, 512, 128), (64, 512, 256), (256, 512, 128))}


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def hf_config(preset: str, changes: list[str]):
    import transformers

    from envtune_jax.bench.generate import model_config_changes
    from envtune_jax.models.config import preset as our_preset
    from envtune_jax.models.config import to_hf_dict

    config = transformers.Qwen3Config(**to_hf_dict(our_preset(preset, **model_config_changes(changes))))
    config._attn_implementation = "sdpa"
    return config


def build(config, device):
    import torch
    import transformers

    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.Qwen3ForCausalLM(config).to(torch.bfloat16)
    return model, sum(p.numel() for p in model.parameters())


def synchronize(device) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def peak_gb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None


def prefill(model, n_params, device, vocab, batch, length, repeats):
    import torch

    model.eval()
    tokens_bt = torch.randint(0, vocab, (batch, length), device=device)
    with torch.no_grad():
        model(tokens_bt, use_cache=False, logits_to_keep=1)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            model(tokens_bt, use_cache=False, logits_to_keep=1)
        synchronize(device)
    seconds = (time.perf_counter() - start) / repeats
    emit(
        what="hf_prefill",
        batch=batch,
        seq=length,
        tok_s=batch * length / seconds,
        tflops=2 * n_params * batch * length / seconds / 1e12,
        seconds=seconds,
        repeats=repeats,
        peak_mem_gb=peak_gb(device),
    )


def train(model, n_params, device, vocab, batch, length, repeats):
    import torch

    model.train()
    model.gradient_checkpointing_enable()
    tokens_bt = torch.randint(0, vocab, (batch, length), device=device)
    try:
        for step in range(repeats + 1):
            if step == 1:  # the first step warms up
                synchronize(device)
                start = time.perf_counter()
            model(tokens_bt, labels=tokens_bt, use_cache=False).loss.backward()
            model.zero_grad(set_to_none=True)
        synchronize(device)
    finally:
        model.gradient_checkpointing_disable()
        model.eval()
    seconds = (time.perf_counter() - start) / repeats
    emit(
        what="hf_train_fwd_bwd_remat",
        batch=batch,
        seq=length,
        tok_s=batch * length / seconds,
        model_tflops=6 * n_params * batch * length / seconds / 1e12,
        seconds=seconds,
        repeats=repeats,
        peak_mem_gb=peak_gb(device),
    )


def generate(model, device, vocab, batch, prompt_len, new_tokens):
    import torch

    model.eval()
    tokens_bt = torch.randint(0, vocab, (batch, prompt_len), device=device)
    options = dict(attention_mask=torch.ones_like(tokens_bt), do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        model.generate(tokens_bt, max_new_tokens=4, min_new_tokens=4, **options)
        synchronize(device)
        start = time.perf_counter()
        out = model.generate(tokens_bt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **options)
        synchronize(device)
    seconds = time.perf_counter() - start
    emit(
        what="hf_generate",
        batch=batch,
        prompt=prompt_len,
        new=new_tokens,
        out_tok_s=batch * new_tokens / seconds,
        s=seconds,
        got=int(out.shape[1] - prompt_len),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="prefill,train", help=f"comma-separated, from {', '.join(PARTS)}")
    parser.add_argument("--preset", default="qwen3-4b-instruct-2507")
    parser.add_argument("--model-config", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--tiny", action="store_true", help="the suite's tiny shapes (CPU dry runs)")
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    if not parts or set(parts) - set(PARTS):
        parser.error(f"--parts {args.parts!r}: choose from {', '.join(PARTS)}")

    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = TINY_SHAPES if args.tiny else SHAPES
    start = time.perf_counter()
    config = hf_config(args.preset, args.model_config)
    model, n_params = build(config, device)
    synchronize(device)
    emit(
        what="hf_versions",
        torch=torch.__version__,
        transformers=transformers.__version__,
        device=device,
        gpu=torch.cuda.get_device_name(0) if device == "cuda" else None,
        params=n_params,
        build_s=time.perf_counter() - start,
    )
    failed = []
    for part in parts:
        try:
            if part == "prefill":
                prefill(model, n_params, device, config.vocab_size, *shapes["prefill"], args.repeats)
            elif part == "train":
                train(model, n_params, device, config.vocab_size, *shapes["train"], args.repeats)
            else:
                for batch, prompt_len, new_tokens in shapes["generate"]:
                    generate(model, device, config.vocab_size, batch, prompt_len, new_tokens)
        except Exception as exc:  # noqa: BLE001 - recorded, and the next part still runs
            emit(what=f"hf_{part}", error=f"{type(exc).__name__}: {exc}"[:2000])
            failed.append(part)
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
