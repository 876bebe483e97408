"""benchmarks/RESULTS.md from the suite's results.jsonl files (benchmarks/gpu_suite.py).

    python benchmarks/results_table.py OUT1/results.jsonl [OUT2/results.jsonl ...] -o benchmarks/RESULTS.md

One table per benchmark, ours beside the peer measured in the same device call, with the ratios
(ours / peer, ours / the device limit) and the goals of the generation and performance issues.
Failed or skipped steps are listed at the end with the reason, so a missing figure is never silent.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# (B, P, N) → (decode-only tok/s goal, end-to-end tok/s goal)
GENERATION_GOALS = {(1, 512, 128): (300, 280), (64, 512, 256): (11_000, 9_000), (256, 512, 128): (20_000, 10_000)}
PREFILL_GOAL_TOK_S = 70_000
TRAIN_GOAL_PEER_RATIO = 1.3
TRAIN_GOAL_MFU = 0.40
DECODE_GOAL_FRACTION = 0.80


def load(paths) -> list[dict]:
    records = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


def _fmt(value, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    return f"{value:,.0f}" if isinstance(value, (int, float)) else str(value)


def _tflops(value) -> str:
    return "—" if value is None else (f"{value:,.0f}" if value >= 10 else f"{value:.2g}")


def _ratio(a, b) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}x"


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def _goal(value, goal) -> str:
    if value is None or goal is None:
        return "—"
    shown = f"{goal:,}" if isinstance(goal, int) else (f"{goal}x" if goal > 1 else f"{100 * goal:.0f}%")
    return f"{'met' if value >= goal else 'not met'} (≥ {shown})"


def _usable(records, **match) -> list[dict]:
    return [r for r in records if r.get("status") in ("ok", "partial") and all(r.get(k) == v for k, v in match.items())]


def render(records: list[dict]) -> str:
    meta = [r for r in records if r.get("step") == "meta"]
    ours = _usable(records, source="ours")
    device = next((r.get("device_kind") for r in ours if r.get("device_kind")), None)
    lines = ["# Benchmark results", ""]
    for m in meta:
        versions = ", ".join(f"{k} {m[k]}" for k in ("jax", "flax", "optax", "transformers", "torch", "google-tunix")
                             if m.get(k))
        lines.append(f"- {m.get('date', '?')[:16]} UTC, commit {m.get('commit') or '?'}, groups "
                     f"{', '.join(m.get('groups', []))}{' (tiny shapes)' if m.get('tiny') else ''}; "
                     f"Python {m.get('python')}; {versions}")
    shapes = "tiny shapes (the Tunix peer's TINY=1 config; the rollout: the tiny_cpu recipe)" \
        if any(m.get("tiny") for m in meta) else "Qwen3-4B-Instruct-2507 shapes"
    lines.append(f"- device: {device or '?'}; {shapes}, random weights, bf16 unless stated")
    probe = {r.get("what"): r for r in _usable(records, source="probe")}
    if probe:
        lines.append(f"- measured in the same call: bf16 matmul {_fmt(probe.get('jax_bf16_matmul_8192', {}).get('tflops'))}"
                     f" TFLOP/s, copy bandwidth {_fmt(probe.get('jax_copy_bw', {}).get('tb_s'), 2)} TB/s "
                     "(our ratios use the device table of envtune_jax/bench/device_limits.py)")
    lines.append("")
    lines += _generation(records)
    goals = not any(m.get("tiny") for m in meta)  # the goals are for 4B shapes on one H100
    lines += _prefill(records, goals)
    lines += _extend(records)
    lines += _train(records, goals)
    lines += _rollout(records)
    lines += _memory(records)
    lines += _problems(records)
    return "\n".join(lines) + "\n"


def _generation(records) -> list[str]:
    ours = {(r["batch"], r["prompt_len"], r["new_tokens"], r.get("decode_attention", "reference")): r
            for r in _usable(records, source="ours", benchmark="generate")}
    tunix_split = {(r["B"], r["P"], r["N"]): r for r in _usable(records, source="tunix", kind="split")}
    tunix_e2e = {(r["B"], r["P"], r["N"]): r for r in _usable(records, source="tunix", kind="e2e")}
    hf = {(r["batch"], r["prompt"], r["new"]): r for r in _usable(records, source="hf", what="hf_generate")}
    shapes = sorted({key[:3] for key in ours} | set(tunix_split) | set(tunix_e2e))
    if not shapes:
        return []
    rows = [(shape, kernel) for shape in shapes
            for kernel in (sorted(k[3] for k in ours if k[:3] == shape) or ["reference"])]
    lines = ["## Generation (greedy, no stop tokens, cache P + N)", "",
             "| B, P, N | decode attention | decode tok/s ours | Tunix | ours/Tunix | ms/step ours / Tunix | ours / decode limit | goal |"
             " end-to-end tok/s ours | Tunix | HF | ours/Tunix | ours/HF | goal | compile s (prefill + decode) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for shape, kernel in rows:
        o, ts, te, h = ours.get((*shape, kernel), {}), tunix_split.get(shape, {}), tunix_e2e.get(shape, {}), hf.get(shape, {})
        decode_goal, e2e_goal = GENERATION_GOALS.get(shape, (None, None))
        compile_s = o.get("compile_s") or {}
        lines.append(
            f"| {', '.join(map(str, shape))} | {_decode_label(kernel, o)} | {_fmt(o.get('decode_tok_s'))} | {_fmt(ts.get('decode_only_tok_per_s'))} | "
            f"{_ratio(o.get('decode_tok_s'), ts.get('decode_only_tok_per_s'))} | "
            f"{_fmt(o.get('ms_per_decode_step'), 2)} / {_fmt(ts.get('decode_ms_per_step'), 2)} | "
            f"{_pct(o.get('decode_fraction_of_limit'))} | {_goal(o.get('decode_tok_s'), decode_goal)} | "
            f"{_fmt(o.get('end_to_end_tok_s'))} | {_fmt(te.get('tok_per_s_median'))} | {_fmt(h.get('out_tok_s'))} | "
            f"{_ratio(o.get('end_to_end_tok_s'), te.get('tok_per_s_median'))} | {_ratio(o.get('end_to_end_tok_s'), h.get('out_tok_s'))} | "
            f"{_goal(o.get('end_to_end_tok_s'), e2e_goal)} | "
            f"{_fmt(compile_s.get('prefill'), 1)} + {_fmt(compile_s.get('decode'), 1)} |")
    lines += ["", f"Decode limit: weights + live KV bytes per step over the bandwidth (goal ≥ {_pct(DECODE_GOAL_FRACTION)} "
              "in steady state); Tunix end-to-end is the median of its 3 timed sampler calls, ours the median of 3 runs.", ""]
    return lines


def _decode_label(kernel: str, record: dict) -> str:
    """The decode attention a row ran: a kernel asked for but not applicable (no block divides S) fell back."""
    if kernel == "pallas" and record and record.get("decode_kernel_blocks") is None:
        return "pallas asked, einsum ran (no block divides S)"
    return kernel


def _prefill(records, goals: bool = True) -> list[str]:
    ours = _usable(records, source="ours", benchmark="prefill")
    hf = _usable(records, source="hf", what="hf_prefill")
    if not ours and not hf:
        return []
    lines = ["## Prefill", "", "| B x P | who | attention | tok/s | ours / HF | model TFLOP/s | of the matmul limit | goal |",
             "|---|---|---|---|---|---|---|---|"]
    hf_by_shape = {(r["batch"], r["seq"]): r for r in hf}
    for r in ours:
        peer = hf_by_shape.get((r["batch"], r["prompt_len"]), {})
        lines.append(f"| {r['batch']} x {r['prompt_len']} | ours | {r['attention']} | {_fmt(r['tok_s'])} | "
                     f"{_ratio(r['tok_s'], peer.get('tok_s'))} | {_tflops(r['model_tflops_per_s'])} | "
                     f"{_pct(r['fraction_of_limit'])} | {_goal(r['tok_s'], PREFILL_GOAL_TOK_S if goals else None)} |")
    for r in hf:
        lines.append(f"| {r['batch']} x {r['seq']} | HF transformers | sdpa | {_fmt(r['tok_s'])} | | {_tflops(r.get('tflops'))} | | |")
    return lines + ["", "Model TFLOP/s = 2·params·tokens/s (the peer's count); no logits are computed for prompt positions.", ""]


def _extend(records) -> list[str]:
    ours = _usable(records, source="ours", benchmark="extend")
    if not ours:
        return []
    lines = ["## An evaluation round's prefill: compacted extends vs all-slot calls", "",
             "| B, context, tail, new prompt | attention | compacted s | all slots s | speed-up | token-rows compacted / all |"
             " of the matmul rate: compacted / all slots |", "|---|---|---|---|---|---|---|"]
    for r in ours:
        c, a = r["compacted"], r["all_slots"]
        lines.append(f"| {r['batch']}, {r['context']}, {r['tail']}, {r['prompt_len']} | {r['attention']} | "
                     f"{_fmt(c['round_s'], 3)} | {_fmt(a['round_s'], 3)} | {r['speedup']:.2f}x | "
                     f"{_fmt(c['token_rows'])} / {_fmt(a['token_rows'])} | "
                     f"{_pct(r['fraction_of_matmul_rate'])} / {_pct(r['all_slots_fraction_of_matmul_rate'])} |")
    return lines + ["", "B - 1 slots append a tail, the last takes a new prompt (GenerationEngine.replace_tail); "
                    "the matmul rate's share: the FLOPs the appended tokens need (layer matmuls and attention "
                    "to earlier tokens) over the rate.", ""]


def _train(records, goals: bool = True) -> list[str]:
    ours = _usable(records, source="ours", benchmark="train")
    hf = _usable(records, source="hf", what="hf_train_fwd_bwd_remat")
    if not ours and not hf:
        return []
    lines = ["## Training step (fwd + bwd, remat)", "",
             "| B x L | who | attention | tokens/s | ours / HF | goal | model TFLOP/s | MFU | goal | peak GB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    hf_by_shape = {(r["batch"], r["seq"]): r for r in hf}
    for r in ours:
        peer = hf_by_shape.get((r["batch"], r["seq_len"]), {})
        ratio = r["tokens_per_s"] / peer["tok_s"] if peer.get("tok_s") else None
        peak = r.get("peak_memory_bytes")
        lines.append(f"| {r['batch']} x {r['seq_len']} | ours (remat {r['remat']}, AdamW) | {r['attention']} | "
                     f"{_fmt(r['tokens_per_s'])} | {_ratio(r['tokens_per_s'], peer.get('tok_s'))} | "
                     f"{_goal(ratio, TRAIN_GOAL_PEER_RATIO if goals else None)} | {_tflops(r['model_tflops_per_s'])} | {_pct(r['mfu'])} | "
                     f"{_goal(r['mfu'], TRAIN_GOAL_MFU if goals else None)} | {_fmt(peak / 1e9 if peak else None, 1)} |")
    for r in hf:
        lines.append(f"| {r['batch']} x {r['seq']} | HF transformers (checkpointing, no optimizer) | sdpa | "
                     f"{_fmt(r['tok_s'])} | | | {_tflops(r.get('model_tflops'))} | | | {_fmt(r.get('peak_mem_gb'), 1)} |")
    return lines + ["", "MFU = 6·params·tokens/s over the device's measured bf16 matmul rate.", ""]


def _rollout(records) -> list[str]:
    ours = _usable(records, source="ours", benchmark="rollout")
    if not ours:
        return []
    lines = ["## Rollout (GRPO iterations on the BFCL environments)", "",
             "| stage | prompts x G | slots | episodes/min | generation | environment | train | other |"
             " sampled tok/s | tokens/episode | train MFU | weights |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ours:
        s = r["shares"]
        lines.append(f"| {r['stage']} | {r['prompts']} x {r['samples_per_prompt']} | {r['sampler_batch_size']} | "
                     f"{_fmt(r['episodes_per_min'], 1)} | {_pct(s['generation'])} | {_pct(s['environment'])} | "
                     f"{_pct(s['train'])} | {_pct(s['other'])} | {_fmt(r['sampled_tok_s'])} | "
                     f"{_fmt(r['episode_tokens_mean'])} | {_pct(r.get('mfu'))} | "
                     f"{'random' if r['random_weights'] else r['model']} |")
    return lines + ["", "Overrides: " + "; ".join(" ".join(r["overrides"]) for r in ours), ""]


def _memory(records) -> list[str]:
    ours = _usable(records, source="ours", benchmark="memory")
    if not ours:
        return []
    lines = ["## Memory (XLA buffer assignment, compiled for this device, not run)", "",
             "| program | weights | context | largest batch | tokens | peak GB | of which arguments GB | limit GB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in ours:
        batch = r.get("largest_batch", r.get("batch"))
        what = "decode loop (slots)" if r["program"] == "decode" else f"train step, remat {r['remat']} (rows per micro-batch)"
        lines.append(f"| {what} | {r['param_dtype']} | {r['context']:,} | {batch} | {_fmt(r['tokens'])} | "
                     f"{r['peak_bytes'] / 1e9:.2f} | {r['argument_bytes'] / 1e9:.2f} | "
                     f"{r['limit_bytes'] / 1e9:.2f} |" if r.get("limit_bytes") else
                     f"{r['peak_bytes'] / 1e9:.2f} | {r['argument_bytes'] / 1e9:.2f} | — |")
    return lines + ["", "Peak = arguments + outputs − donated + temporaries; train rows hold every token in the loss.", ""]


def _problems(records) -> list[str]:
    bad = [r for r in records if r.get("status") in ("failed", "skipped")]
    errors = [r for r in records if r.get("status") in ("ok", "partial") and r.get("kind") == "error"]
    if not bad and not errors:
        return []
    lines = ["## Failed or skipped", ""]
    for r in bad:
        reason = r.get("reason")
        if reason is None and r.get("failures"):
            last = r["failures"][-1]
            tail = (last.get("stderr_tail") or "").strip().splitlines()
            reason = f"exit {last.get('returncode')}: {tail[-1] if tail else 'no output'}"
        lines.append(f"- {r['step']}: {r['status']} — {reason}")
    for r in errors:
        lines.append(f"- {r['step']} B={r.get('B')}: {str(r.get('error', '')).strip().splitlines()[-1:]}")
    return lines + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results.jsonl files of benchmarks/gpu_suite.py")
    parser.add_argument("-o", "--output", default=None, help="write here instead of standard output")
    args = parser.parse_args(argv)
    text = render(load(args.results))
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
