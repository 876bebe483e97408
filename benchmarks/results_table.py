"""benchmarks/RESULTS.md from the suite's results.jsonl files (benchmarks/gpu_suite.py).

    python benchmarks/results_table.py CALL1/results.jsonl [CALL2/results.jsonl ...] -o benchmarks/RESULTS.md

One table per benchmark, ours beside the peer, with the ratios (ours / peer, ours / the device limit)
and the performance goals; the correctness of our 4B model against transformers' first. Several
calls merge: for each step, the latest call that ran it (rather than skipped it) counts, and a
ratio whose two sides come from different calls is marked †. Failed or skipped steps are listed at
the end with the reason, so a missing figure is never silent. Records from a CPU (the suite's
`--tiny` dry run) are said to be no GPU figures.
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
    for index, path in enumerate(paths):
        for line in Path(path).read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                record.setdefault("call", f"file {index + 1}")  # results written before calls were named
                records.append(record)
    return records


def latest_per_step(records: list[dict]) -> list[dict]:
    """The meta records, and for each step the records of the latest call that ran it (else the latest
    call that skipped it); calls are ordered as they first appear."""
    order = {}
    for r in records:
        order.setdefault(r.get("call"), len(order))
    chosen: dict[str, object] = {}
    for r in records:
        if r.get("step") == "meta":
            continue
        ran = r.get("status") != "skipped"
        best = chosen.get(r["step"])
        if best is None or (ran, order[r.get("call")]) >= best:
            chosen[r["step"]] = (ran, order[r.get("call")])
    return [
        r
        for r in records
        if r.get("step") == "meta"
        or (r.get("status") != "skipped") >= chosen[r["step"]][0]
        and order[r.get("call")] == chosen[r["step"]][1]
    ]


def _fmt(value, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    return f"{value:,.0f}" if isinstance(value, (int, float)) else str(value)


def _tflops(value) -> str:
    return "—" if value is None else (f"{value:,.0f}" if value >= 10 else f"{value:.2g}")


def _ratio(a, b, calls=None) -> str:
    """a / b; `calls`: the two records' call ids, marked † when they differ."""
    if a is None or not b:
        return "—"
    apart = calls is not None and None not in calls and calls[0] != calls[1]
    return f"{a / b:.2f}x{' †' if apart else ''}"


def _calls(a: dict, b: dict):
    return (a.get("call"), b.get("call")) if a and b else None


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
    records = latest_per_step(records)
    meta = [r for r in records if r.get("step") == "meta"]
    measured = [r for r in records if r.get("status") in ("ok", "partial") and r.get("device_kind")]
    devices = sorted({r["device_kind"] for r in measured})
    on_gpu = any(d.lower() != "cpu" for d in devices)
    lines = ["# Benchmark results", ""]
    if not measured:
        lines += ["**No figures: no step of these calls measured anything (see the failed or skipped steps).**", ""]
    elif not on_gpu:
        lines += [
            "**No GPU figures: these records come from a CPU (a dry run at tiny shapes, which checks that "
            "the steps run, not how fast).**",
            "",
        ]
    for m in meta:
        versions = ", ".join(
            f"{k} {m[k]}" for k in ("jax", "flax", "optax", "transformers", "torch", "google-tunix") if m.get(k)
        )
        lines.append(
            f"- call {m.get('call', '?')}: {str(m.get('date', '?'))[:16]} UTC, commit {m.get('commit') or '?'}, "
            f"{'preset ' + m['preset'] if m.get('preset') else 'groups ' + ', '.join(m.get('groups', []))}"
            f"{' (tiny shapes)' if m.get('tiny') else ''}; GPU {m.get('gpu') or 'none'}; "
            f"Python {m.get('python')}; {versions}"
        )
    shapes = (
        "tiny shapes (the Tunix peer's TINY=1 config; the rollout: the tiny_cpu recipe)"
        if any(m.get("tiny") for m in meta)
        else "Qwen3-4B-Instruct-2507 shapes"
    )
    lines.append(
        f"- device: {', '.join(devices) or '?'}; {shapes}, random weights, bf16 unless stated; "
        "† = ours and the peer from different calls"
    )
    lines.append("")
    goals = not any(m.get("tiny") for m in meta)  # the goals are for 4B shapes on one H100
    lines += _probe(records)
    lines += _parity(records)
    lines += _generation(records)
    lines += _prefill(records, goals)
    lines += _extend(records)
    lines += _train(records, goals)
    lines += _shared_prefix(records)
    lines += _rollout(records)
    lines += _memory(records)
    lines += _problems(records)
    return "\n".join(lines) + "\n"


def _probe(records) -> list[str]:
    probes = _usable(records, benchmark="probe")
    if not probes:
        return []
    lines = [
        "## Device probe",
        "",
        "| device | bf16 matmul TFLOP/s | copy TB/s (read + write) | device table used by the ratios |",
        "|---|---|---|---|",
    ]
    for r in probes:
        table = (
            f"{_tflops(r['table_matmul_flops_per_s'] / 1e12)} TFLOP/s, "
            f"{r['table_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s"
            if r.get("table_matmul_flops_per_s")
            else "none: each benchmark probes"
        )
        lines.append(
            f"| {r['device_kind']} | {_tflops(r['matmul_flops_per_s'] / 1e12)} | "
            f"{r['copy_bandwidth_bytes_per_s'] / 1e12:.2f} | {table} |"
        )
    return lines + ["", f"{probes[0]['what']}; best of the timed runs.", ""]


def _parity(records) -> list[str]:
    logits = _usable(records, what="parity_logits")
    greedy = _usable(records, what="parity_greedy")
    if not logits and not greedy:
        return []
    lines = ["## Correctness: ours against transformers, same weights (written by transformers), bf16", ""]
    if logits:
        lines += [
            "| attention | B x T | rel. error vs HF bf16 | vs HF fp32 | HF bf16 vs HF fp32 | top-1 vs HF bf16 |"
            " vs HF fp32 | HF bf16 vs fp32 | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in logits:
            if r.get("error"):
                lines.append(f"| {r['attention']} | | failed: {r['error'].splitlines()[0][:120]} | | | | | | |")
                continue
            lines.append(
                f"| {r['attention']} | {r['batch']} x {r['prompt_len'] + r['new_tokens']} | "
                f"{r['rel_err_vs_hf_bf16']:.2e} | {r['rel_err_vs_hf_fp32']:.2e} | {r['hf_bf16_rel_err_vs_fp32']:.2e} | "
                f"{_pct1(r['top1_vs_hf_bf16'])} | {_pct1(r['top1_vs_hf_fp32'])} | {_pct1(r['hf_bf16_top1_vs_fp32'])} | "
                f"{'ok' if r['logits_ok'] else 'NOT OK'} |"
            )
        lines += [
            "",
            "ok: our error against fp32 at most 2x transformers' own bf16 error, and top-1 agreement with "
            "fp32 at most 2 points under transformers' bf16.",
            "",
        ]
    for r in greedy:
        rows = r["rows"]
        firsts = ", ".join(
            str(row["first_difference"])
            + (
                ""
                if row["first_difference"] == r["new_tokens"]
                else (" (near-tie)" if row.get("near_tie") else " (NOT a tie)")
            )
            for row in rows
        )
        lines.append(
            f"Greedy, {r['new_tokens']} tokens after {r['batch']} prompts of {r['prompt_len']} "
            f"({r['attention']} attention, {r['decode_attention']} decode attention): "
            f"{r['rows_identical']} of {len(rows)} rows identical to transformers' `generate`, "
            f"{r['tokens_equal']} of {r['tokens']} tokens equal; first difference per row: {firsts}; "
            f"{'ok' if r['greedy_ok'] else 'NOT OK'}."
        )
        lines.append("")
    return lines


def _pct1(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _shared_prefix(records) -> list[str]:
    """One row per engine (`shared_prefix`: G, or null for the plain one), and the shared run's ratios to the
    plain one measured in the same process (`vs_unshared`)."""
    rows = _usable(records, group="shared-prefix", benchmark="generate")
    if not rows:
        return []
    lines = [
        "## Decode at BFCL shapes, without and with a shared prompt per GRPO group",
        "",
        "| B, P, N | prompt held | decode attention | decode tok/s | ms/step | KV GB read per step (live) | "
        "of the decode limit | end-to-end tok/s | peak GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r.get("shared_prefix") or 0):
        group = r.get("shared_prefix")
        peak = r.get("peak_memory_bytes")
        read, live = r.get("kv_bytes_read_per_step"), r.get("kv_bytes_live_per_step")
        lines.append(
            f"| {r['batch']}, {r['prompt_len']}, {r['new_tokens']} | "
            f"{f'once per {group} slots' if group else 'per slot'} | {r.get('decode_attention', '—')} | "
            f"{_fmt(r['decode_tok_s'])} | {_fmt(r['ms_per_decode_step'], 2)} | "
            f"{_fmt(read / 1e9 if read else None, 2)} ({_fmt(live / 1e9 if live else None, 2)}) | "
            f"{_pct(r.get('decode_fraction_of_limit'))} | {_fmt(r['end_to_end_tok_s'])} | "
            f"{_fmt(peak / 1e9 if peak else None, 1)} |"
        )
    for r in rows:
        gain = r.get("vs_unshared")
        if gain:
            lines += [
                "",
                f"Shared / unshared, same process and prompts: decode {gain['decode_speedup']:.2f}x, "
                f"end-to-end {gain['end_to_end_speedup']:.2f}x; KV bytes read per step "
                f"{gain['kv_bytes_read_ratio']:.2f}x fewer (live {gain['kv_bytes_live_ratio']:.2f}x); greedy "
                f"tokens: {gain['rows_identical']} of {gain['rows']} rows identical, "
                f"{_pct1(gain['tokens_equal_fraction'])} of tokens equal.",
            ]
    return lines + [""]


def _generation(records) -> list[str]:
    ours = {
        (r["batch"], r["prompt_len"], r["new_tokens"], r.get("decode_attention", "reference")): r
        for r in _usable(records, source="ours", benchmark="generate")
        if r.get("group") != "shared-prefix"
    }
    tunix_split = {(r["B"], r["P"], r["N"]): r for r in _usable(records, source="tunix", kind="split")}
    tunix_e2e = {(r["B"], r["P"], r["N"]): r for r in _usable(records, source="tunix", kind="e2e")}
    hf = {(r["batch"], r["prompt"], r["new"]): r for r in _usable(records, source="hf", what="hf_generate")}
    shapes = sorted({key[:3] for key in ours} | set(tunix_split) | set(tunix_e2e))
    if not shapes:
        return []
    rows = [
        (shape, kernel)
        for shape in shapes
        for kernel in (sorted(k[3] for k in ours if k[:3] == shape) or ["reference"])
    ]
    lines = [
        "## Generation (greedy, no stop tokens, cache P + N)",
        "",
        "| B, P, N | decode attention | decode tok/s ours | Tunix | ours/Tunix | ms/step ours / Tunix | "
        "ours / decode limit | goal |"
        " end-to-end tok/s ours | Tunix | HF | ours/Tunix | ours/HF | goal | compile s (prefill + decode) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, kernel in rows:
        o, ts, te, h = (
            ours.get((*shape, kernel), {}),
            tunix_split.get(shape, {}),
            tunix_e2e.get(shape, {}),
            hf.get(shape, {}),
        )
        decode_goal, e2e_goal = GENERATION_GOALS.get(shape, (None, None))
        compile_s = o.get("compile_s") or {}
        lines.append(
            f"| {', '.join(map(str, shape))} | {_decode_label(kernel, o)} | {_fmt(o.get('decode_tok_s'))} | "
            f"{_fmt(ts.get('decode_only_tok_per_s'))} | "
            f"{_ratio(o.get('decode_tok_s'), ts.get('decode_only_tok_per_s'), _calls(o, ts))} | "
            f"{_fmt(o.get('ms_per_decode_step'), 2)} / {_fmt(ts.get('decode_ms_per_step'), 2)} | "
            f"{_pct(o.get('decode_fraction_of_limit'))} | {_goal(o.get('decode_tok_s'), decode_goal)} | "
            f"{_fmt(o.get('end_to_end_tok_s'))} | {_fmt(te.get('tok_per_s_median'))} | {_fmt(h.get('out_tok_s'))} | "
            f"{_ratio(o.get('end_to_end_tok_s'), te.get('tok_per_s_median'), _calls(o, te))} | "
            f"{_ratio(o.get('end_to_end_tok_s'), h.get('out_tok_s'), _calls(o, h))} | "
            f"{_goal(o.get('end_to_end_tok_s'), e2e_goal)} | "
            f"{_fmt(compile_s.get('prefill'), 1)} + {_fmt(compile_s.get('decode'), 1)} |"
        )
    lines += [
        "",
        f"Decode limit: weights + live KV bytes per step over the bandwidth (goal ≥ {_pct(DECODE_GOAL_FRACTION)} "
        "in steady state); Tunix end-to-end is the median of its 3 timed sampler calls, ours the median of 3 runs.",
        "",
    ]
    for r in _usable(records, benchmark="decode_tokens"):
        lines.append(
            f"Pallas decode kernel vs the einsum at {r['batch']}, {r['prompt_len']}, {r['new_tokens']} (same "
            f"weights and prompts, greedy): {r['rows_identical']} of {r['rows']} rows identical, "
            f"{_pct1(r['tokens_equal_fraction'])} of tokens equal, "
            f"first difference at {r['mean_first_difference']:.1f} "
            "on average (bf16 near-ties let rows part; a kernel bug parts them at once)."
        )
    return lines + [""] if lines[-1] else lines


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
    lines = [
        "## Prefill",
        "",
        "| B x P | who | attention | tok/s | ours / HF | model TFLOP/s | of the matmul limit | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    hf_by_shape = {(r["batch"], r["seq"]): r for r in hf}
    for r in ours:
        peer = hf_by_shape.get((r["batch"], r["prompt_len"]), {})
        lines.append(
            f"| {r['batch']} x {r['prompt_len']} | ours | {r['attention']} | {_fmt(r['tok_s'])} | "
            f"{_ratio(r['tok_s'], peer.get('tok_s'), _calls(r, peer))} | {_tflops(r['model_tflops_per_s'])} | "
            f"{_pct(r['fraction_of_limit'])} | {_goal(r['tok_s'], PREFILL_GOAL_TOK_S if goals else None)} |"
        )
    for r in hf:
        lines.append(
            f"| {r['batch']} x {r['seq']} | HF transformers | sdpa | {_fmt(r['tok_s'])} | | "
            f"{_tflops(r.get('tflops'))} | | |"
        )
    return lines + [
        "",
        "Model TFLOP/s = 2·params·tokens/s (the peer's count); no logits are computed for prompt positions.",
        "",
    ]


def _extend(records) -> list[str]:
    ours = _usable(records, source="ours", benchmark="extend")
    if not ours:
        return []
    lines = [
        "## An evaluation round's prefill: compacted extends vs all-slot calls",
        "",
        "| B, context, tail, new prompt | attention | compacted s | all slots s | speed-up | "
        "token-rows compacted / all |"
        " of the matmul rate: compacted / all slots |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ours:
        c, a = r["compacted"], r["all_slots"]
        lines.append(
            f"| {r['batch']}, {r['context']}, {r['tail']}, {r['prompt_len']} | {r['attention']} | "
            f"{_fmt(c['round_s'], 3)} | {_fmt(a['round_s'], 3)} | {r['speedup']:.2f}x | "
            f"{_fmt(c['token_rows'])} / {_fmt(a['token_rows'])} | "
            f"{_pct(r['fraction_of_matmul_rate'])} / {_pct(r['all_slots_fraction_of_matmul_rate'])} |"
        )
    return lines + [
        "",
        "B - 1 slots append a tail, the last takes a new prompt (GenerationEngine.replace_tail); "
        "the matmul rate's share: the FLOPs the appended tokens need (layer matmuls and attention "
        "to earlier tokens) over the rate.",
        "",
    ]


def _train(records, goals: bool = True) -> list[str]:
    ours = _usable(records, source="ours", benchmark="train")
    hf = _usable(records, source="hf", what="hf_train_fwd_bwd_remat")
    if not ours and not hf:
        return []
    lines = [
        "## Training step (fwd + bwd, remat)",
        "",
        "| B x L | who | attention | tokens/s | ours / HF | goal | model TFLOP/s | MFU | goal | peak GB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    hf_by_shape = {(r["batch"], r["seq"]): r for r in hf}
    for r in ours:
        peer = hf_by_shape.get((r["batch"], r["seq_len"]), {})
        ratio = r["tokens_per_s"] / peer["tok_s"] if peer.get("tok_s") else None
        peak = r.get("peak_memory_bytes")
        lines.append(
            f"| {r['batch']} x {r['seq_len']} | ours (remat {r['remat']}, AdamW) | {r['attention']} | "
            f"{_fmt(r['tokens_per_s'])} | {_ratio(r['tokens_per_s'], peer.get('tok_s'), _calls(r, peer))} | "
            f"{_goal(ratio, TRAIN_GOAL_PEER_RATIO if goals else None)} | {_tflops(r['model_tflops_per_s'])} | "
            f"{_pct(r['mfu'])} | "
            f"{_goal(r['mfu'], TRAIN_GOAL_MFU if goals else None)} | {_fmt(peak / 1e9 if peak else None, 1)} |"
        )
    for r in hf:
        lines.append(
            f"| {r['batch']} x {r['seq']} | HF transformers (checkpointing, no optimizer) | sdpa | "
            f"{_fmt(r['tok_s'])} | | | {_tflops(r.get('model_tflops'))} | | | {_fmt(r.get('peak_mem_gb'), 1)} |"
        )
    return lines + ["", "MFU = 6·params·tokens/s over the device's measured bf16 matmul rate.", ""]


def _rollout(records) -> list[str]:
    ours = _usable(records, source="ours", benchmark="rollout")
    if not ours:
        return []
    lines = [
        "## Rollout (GRPO iterations on the BFCL environments)",
        "",
        "| stage | prompts x G | slots | episodes/min | generation | environment | train | other |"
        " sampled tok/s | tokens/episode | train MFU | weights |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ours:
        s = r["shares"]
        lines.append(
            f"| {r['stage']} | {r['prompts']} x {r['samples_per_prompt']} | {r['sampler_batch_size']} | "
            f"{_fmt(r['episodes_per_min'], 1)} | {_pct(s['generation'])} | {_pct(s['environment'])} | "
            f"{_pct(s['train'])} | {_pct(s['other'])} | {_fmt(r['sampled_tok_s'])} | "
            f"{_fmt(r['episode_tokens_mean'])} | {_pct(r.get('mfu'))} | "
            f"{'random' if r['random_weights'] else r['model']} |"
        )
    return lines + ["", "Overrides: " + "; ".join(" ".join(r["overrides"]) for r in ours), ""]


def _memory(records) -> list[str]:
    ours = _usable(records, source="ours", benchmark="memory")
    if not ours:
        return []
    lines = [
        "## Memory (XLA buffer assignment, compiled for this device, not run)",
        "",
        "| program | weights | context | largest batch | tokens | peak GB | of which arguments GB | limit GB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in ours:
        batch = r.get("largest_batch", r.get("batch"))
        what = (
            "decode loop (slots)"
            if r["program"] == "decode"
            else f"train step, remat {r['remat']} (rows per micro-batch)"
        )
        lines.append(
            f"| {what} | {r['param_dtype']} | {r['context']:,} | {batch} | {_fmt(r['tokens'])} | "
            f"{r['peak_bytes'] / 1e9:.2f} | {r['argument_bytes'] / 1e9:.2f} | "
            f"{r['limit_bytes'] / 1e9:.2f} |"
            if r.get("limit_bytes")
            else f"{r['peak_bytes'] / 1e9:.2f} | {r['argument_bytes'] / 1e9:.2f} | — |"
        )
    return lines + [
        "",
        "Peak = arguments + outputs − donated + temporaries; train rows hold every token in the loss.",
        "",
    ]


def _problems(records) -> list[str]:
    bad = [r for r in records if r.get("status") in ("failed", "skipped")]
    errors = [
        r
        for r in records
        if r.get("status") in ("ok", "partial")
        and (r.get("kind") == "error" or (r.get("error") and r.get("source") == "hf"))
    ]
    if not bad and not errors:
        return []
    lines = ["## Failed or skipped", ""]
    for r in bad:
        reason = r.get("reason")
        if reason is None and r.get("failures"):
            last = r["failures"][-1]
            tail = (last.get("output_tail") or last.get("stderr_tail") or "").strip().splitlines()
            reason = f"exit {last.get('returncode')}: {tail[-1] if tail else 'no output'}"
        later = " (a later call can run it: `gpu_suite.py --resume`)" if r.get("resumable") else ""
        lines.append(f"- {r['step']}: {r['status']} — {reason}{later}")
    for r in errors:
        where = f" B={r['B']}" if r.get("B") is not None else (f" {r['what']}" if r.get("what") else "")
        last = (str(r.get("error", "")).strip().splitlines() or [""])[-1]
        lines.append(f"- {r['step']}{where}: {last}")
    return lines + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results.jsonl files of benchmarks/gpu_suite.py")
    parser.add_argument("-o", "--output", default=None, help="write here instead of standard output")
    args = parser.parse_args(argv)
    missing = [path for path in args.results if not Path(path).is_file()]
    if missing:
        parser.error(f"no such results file(s): {', '.join(missing)}")
    text = render(load(args.results))
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
