"""Our Qwen3 against transformers' own, at a preset's shapes (Qwen3-4B by default), in bf16: logits and greedy tokens.

Two processes, so PyTorch and JAX never hold the GPU together:

    python benchmarks/hf_parity.py hf   --dir DIR     # transformers: weights, reference logits and tokens
    python benchmarks/hf_parity.py ours --dir DIR     # ours, loaded from DIR/checkpoint, against them

`hf` builds a Qwen3ForCausalLM of the preset's shapes with transformers' random initialisation (norm
scales drawn around 1, so a misplaced norm shows), saves it in bf16 with `save_pretrained`
(DIR/checkpoint), then on B random P-token prompts: greedy-generates N tokens with `generate`, and
computes the logits [B, P + N, V] of prompt + continuation in bf16 and again with the same weights
in float32 (the precise reference). Everything lands in DIR; DIR/reference.json is written last, and
a later `hf` run with the same shapes reuses what is there instead of writing it again.

`ours` loads DIR/checkpoint with the model loader (inference: bf16 weights and compute) and reports, for each
`--attention`:
- the relative error ‖ours − ref‖ / ‖ref‖ of its logits against transformers' bf16 and float32
  logits, beside transformers' own bf16 error against float32 (the noise bf16 brings);
- top-1 agreement (argmax over the vocabulary, every position) with each;
- `logits_ok`: our error against float32 at most twice transformers' bf16 error, and top-1
  agreement with float32 no more than 2 points under transformers' bf16;
and for greedy decoding through the GenerationEngine (the first attention, `--decode-attention`): the
N tokens of each prompt against transformers' `generate`, the first position where they differ, and
whether that position was a near-tie (the two tokens' float32 logits closer than 3x the rms
difference between transformers' bf16 and float32 logits there): `greedy_ok` when every row is
identical or first differs at a near-tie. One JSON line per attention, then one for greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REFERENCE = "reference.json"
NEAR_TIE_NOISE = 3.0
ERROR_RATIO = 2.0
TOP1_SLACK = 0.02


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", required=True, type=Path, help="folder for the checkpoint and reference arrays")
    parser.add_argument("--preset", default="qwen3-4b-instruct-2507")
    parser.add_argument("--model-config", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)


def identity(args) -> dict:
    """What the reference in DIR must have been made from to be reused."""
    return {
        "preset": args.preset,
        "model_config": sorted(args.model_config),
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "seed": args.seed,
    }


# ---- transformers' side ------------------------------------------------------------------------------------------


def write_reference(args) -> int:
    marker = args.dir / REFERENCE
    if marker.is_file():
        stored = json.loads(marker.read_text())
        if stored.get("identity") == identity(args):
            emit(**stored["record"], reused=True)
            return 0
    import torch
    import transformers

    from envtune_jax.bench.generate import model_config_changes
    from envtune_jax.models.config import preset, to_hf_dict

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference must be float32
    torch.backends.cudnn.allow_tf32 = False
    cfg = preset(args.preset, **model_config_changes(args.model_config))
    config = transformers.Qwen3Config(**to_hf_dict(cfg))
    config._attn_implementation = "sdpa"
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = transformers.Qwen3ForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
    model = model.to(torch.bfloat16).eval()
    built_s = time.perf_counter() - start
    args.dir.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    start = time.perf_counter()
    model.save_pretrained(args.dir / "checkpoint")
    saved_s = time.perf_counter() - start

    prompts_bp = np.random.RandomState(args.seed).randint(0, cfg.vocab_size, (args.batch, args.prompt_len))
    prompts = torch.tensor(prompts_bp, device=device)
    model.generation_config.eos_token_id = None  # no stop token, no logits processor: plain argmax
    model.generation_config.bos_token_id = None
    start = time.perf_counter()
    with torch.no_grad():
        sequences_bt = model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=False,
            max_new_tokens=args.new_tokens,
            pad_token_id=0,
        )
    generate_s = time.perf_counter() - start
    if sequences_bt.shape[1] != args.prompt_len + args.new_tokens:
        raise RuntimeError(
            f"transformers generated {sequences_bt.shape[1] - args.prompt_len} tokens, not {args.new_tokens}"
        )
    with torch.no_grad():
        bf16_btv = model(sequences_bt).logits.float().cpu().numpy()
        model = model.float()
        fp32_btv = model(sequences_bt).logits.float().cpu().numpy()
    np.save(args.dir / "tokens.npy", sequences_bt.cpu().numpy().astype(np.int32))
    np.save(args.dir / "hf_bf16_logits.npy", bf16_btv)
    np.save(args.dir / "hf_fp32_logits.npy", fp32_btv)
    record = {
        "what": "hf_reference",
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "params": sum(p.numel() for p in model.parameters()),
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "build_s": built_s,
        "save_s": saved_s,
        "generate_s": generate_s,
        "checkpoint_bytes": sum(f.stat().st_size for f in (args.dir / "checkpoint").iterdir()),
    }
    marker.write_text(json.dumps({"identity": identity(args), "record": record}))  # last: the reference is whole
    emit(**record, reused=False)
    return 0


# ---- our side ----------------------------------------------------------------------------------------------------


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def top1_agreement(a_btv, b_btv) -> float:
    return float(np.mean(np.argmax(a_btv, -1) == np.argmax(b_btv, -1)))


def logits_report(ours_btv, bf16_btv, fp32_btv) -> dict:
    report = {
        "rel_err_vs_hf_bf16": rel_err(ours_btv, bf16_btv),
        "rel_err_vs_hf_fp32": rel_err(ours_btv, fp32_btv),
        "hf_bf16_rel_err_vs_fp32": rel_err(bf16_btv, fp32_btv),
        "top1_vs_hf_bf16": top1_agreement(ours_btv, bf16_btv),
        "top1_vs_hf_fp32": top1_agreement(ours_btv, fp32_btv),
        "hf_bf16_top1_vs_fp32": top1_agreement(bf16_btv, fp32_btv),
        "max_abs_err_vs_hf_fp32": float(np.max(np.abs(np.asarray(ours_btv, np.float64) - fp32_btv))),
    }
    report["logits_ok"] = bool(
        np.isfinite(ours_btv).all()
        and report["rel_err_vs_hf_fp32"] <= ERROR_RATIO * report["hf_bf16_rel_err_vs_fp32"]
        and report["top1_vs_hf_fp32"] >= report["hf_bf16_top1_vs_fp32"] - TOP1_SLACK
    )
    return report


def greedy_report(ours_bn, hf_bn, bf16_btv, fp32_btv, prompt_len: int) -> dict:
    """Per row: the first differing position (N if none) and, there, whether it was a near-tie."""
    rows = []
    for b, (ours_n, hf_n) in enumerate(zip(ours_bn, hf_bn)):
        differ = np.flatnonzero(ours_n != hf_n)
        if not differ.size:
            rows.append({"first_difference": len(hf_n)})
            continue
        d = int(differ[0])
        position = prompt_len + d - 1  # the logits that chose token d
        margin = float(fp32_btv[b, position, hf_n[d]] - fp32_btv[b, position, ours_n[d]])
        noise = float(np.sqrt(np.mean((bf16_btv[b, position] - fp32_btv[b, position]) ** 2)))
        rows.append(
            {
                "first_difference": d,
                "hf_token": int(hf_n[d]),
                "our_token": int(ours_n[d]),
                "fp32_margin": margin,
                "bf16_noise_rms": noise,
                "near_tie": abs(margin) <= NEAR_TIE_NOISE * noise,
            }
        )
    identical = sum(r["first_difference"] == len(hf_bn[0]) for r in rows)
    return {
        "rows": rows,
        "rows_identical": identical,
        "tokens_equal": int((ours_bn == hf_bn).sum()),
        "tokens": int(hf_bn.size),
        "greedy_ok": all(r.get("near_tie", True) for r in rows),
    }


def with_runtime(model, **changes):
    """The same weights (no copy) under a model built with other runtime choices (e.g. attention_impl)."""
    from flax import nnx

    from envtune_jax.models.qwen3 import Qwen3

    cfg = model.config.replace(**changes)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(0))))
    _, state = nnx.split(model)
    return nnx.merge(graphdef, state)


def check_ours(args) -> int:
    marker = args.dir / REFERENCE
    if not marker.is_file() or json.loads(marker.read_text()).get("identity") != identity(args):
        raise SystemExit(f"hf_parity ours: no reference for these shapes in {args.dir}: run `hf_parity.py hf` first")
    import jax
    from flax import nnx

    from envtune_jax.models.generation.engine import GenerationEngine
    from envtune_jax.models.generation.sampling_params import SamplingParams
    from envtune_jax.rl.model_loader import load_model

    attentions = [a for a in args.attention.split(",") if a]
    start = time.perf_counter()
    model = load_model(
        use="inference",
        hf=args.dir / "checkpoint",
        attention_impl=attentions[0],
        decode_attention=args.decode_attention,
        progress=False,
    ).model  # bfloat16, as served
    jax.block_until_ready(nnx.state(model))
    load_s = time.perf_counter() - start
    tokens_bt = np.load(args.dir / "tokens.npy")
    bf16_btv = np.load(args.dir / "hf_bf16_logits.npy", mmap_mode="r")
    fp32_btv = np.load(args.dir / "hf_fp32_logits.npy", mmap_mode="r")
    device = jax.devices()[0]
    common = {
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "params": model.config.num_params,
        "jax": jax.__version__,
        "device_kind": device.device_kind,
        "load_s": load_s,
    }
    forward = nnx.jit(lambda m, t: m(t))
    failed = []
    for attention in attentions:
        try:
            variant = model if attention == attentions[0] else with_runtime(model, attention_impl=attention)
            start = time.perf_counter()
            ours_btv = np.asarray(forward(variant, tokens_bt))
            seconds = time.perf_counter() - start
            emit(
                what="parity_logits",
                attention=attention,
                first_call_s=seconds,
                **common,
                **logits_report(ours_btv, bf16_btv, fp32_btv),
            )
            del ours_btv
        except Exception as exc:  # noqa: BLE001 - the next attention, and greedy decoding, still run
            emit(what="parity_logits", attention=attention, error=f"{type(exc).__name__}: {exc}"[:2000], **common)
            failed.append(attention)
    engine = GenerationEngine(
        model, batch_size=args.batch, max_cache_len=args.prompt_len + args.new_tokens, cache_dtype="bfloat16"
    )
    start = time.perf_counter()
    result = engine.generate(
        tokens_bt[:, : args.prompt_len].tolist(),
        SamplingParams(greedy=True, max_new_tokens=args.new_tokens, stop_token_ids=()),
    )
    greedy_s = time.perf_counter() - start
    emit(
        what="parity_greedy",
        attention=attentions[0],
        decode_attention=args.decode_attention,
        first_call_s=greedy_s,
        **common,
        **greedy_report(result.tokens, tokens_bt[:, args.prompt_len :], bf16_btv, fp32_btv, args.prompt_len),
    )
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sides = parser.add_subparsers(dest="side", required=True)
    add_shape_arguments(sides.add_parser("hf", help="transformers: checkpoint, reference logits and tokens"))
    ours = sides.add_parser("ours", help="ours against the reference in --dir")
    add_shape_arguments(ours)
    ours.add_argument("--attention", default="reference", help="comma-separated attention implementations")
    ours.add_argument("--decode-attention", default="reference", choices=["reference", "pallas"])
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.batch, args.prompt_len, args.new_tokens) < 1:
        parser.error("--batch, --prompt-len and --new-tokens must be ≥ 1")
    return write_reference(args) if args.side == "hf" else check_ours(args)


if __name__ == "__main__":
    sys.exit(main())
