"""`envtune generate`: one chat reply from a model (--hf or --ckpt), streamed to stdout as it decodes.

The prompt is rendered with the chat template (optionally with tools from a JSON file), decoded in
chunks of --stream-chunk tokens (one compiled while-loop per chunk), and each chunk's text is
printed as soon as it arrives. Timing goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from envtune_jax.cli import validate as check
from envtune_jax.cli.common import add_mesh_flag, add_model_source, parse_mesh


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="stream a chat reply from a model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: envtune generate --hf ~/models/Qwen3-4B-Instruct-2507 --dtype bfloat16 "
        "--prompt 'List the files here' --tools configs/tools/file_system.json",
    )
    add_model_source(parser)
    parser.add_argument("--prompt", required=True, help="the user message")
    parser.add_argument("--system", default=None, help="an optional system message")
    parser.add_argument(
        "--tools",
        type=Path,
        default=None,
        help="JSON file with a list of tool descriptions (BFCL or OpenAI function format)",
    )
    parser.add_argument("--style", default="qwen_fc", choices=["qwen_fc", "paper"], help="prompt rendering style")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (ignores temperature/top-k/top-p)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-k", type=int, default=20, help="0 = off")
    parser.add_argument("--top-p", type=float, default=0.8, help="1.0 = off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stream-chunk", type=int, default=16, help="tokens decoded per compiled call (≥ 1)")
    parser.add_argument(
        "--cache-dtype",
        default=None,
        choices=["bfloat16", "float32"],
        help="KV cache dtype (default: the model's compute dtype)",
    )
    parser.add_argument(
        "--attention", default="reference", choices=["reference", "xla", "cudnn"], help="attention implementation"
    )
    parser.add_argument(
        "--decode-attention",
        default="reference",
        choices=["reference", "pallas"],
        help="attention of one-token steps (pallas: JAX's Pallas GPU decode kernel)",
    )
    add_mesh_flag(parser)
    parser.set_defaults(func=run, validate=validate)


def validate(args) -> None:
    check.model_source(args)
    check.sampling_flags(args)
    check.at_least(args, 1, "stream_chunk")
    check.mesh_spec(args.mesh)
    args.tool_list = check.tools_file(args.tools)


class TextStream:
    """Prints the text of a growing list of token ids, holding back an incomplete UTF-8 character."""

    def __init__(self, tokenizer, out=None):
        # Resolve stdout at call time so a redirected or captured sys.stdout is honoured.
        self.tokenizer, self.out = tokenizer, (out if out is not None else sys.stdout)
        self.ids: list[int] = []
        self.printed = 0

    def add(self, ids: list[int]) -> None:
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
            return
        self.out.write(text[self.printed :])
        self.out.flush()
        self.printed = len(text)

    def finish(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        self.out.write(text[self.printed :] + "\n")
        self.out.flush()
        return text


def run(args) -> int:
    from envtune_jax.chat import encode_text, render_messages
    from envtune_jax.cli.common import load_model_from_args
    from envtune_jax.models.generation.engine import GenerationEngine
    from envtune_jax.models.generation.sampling_params import SamplingParams

    tools = getattr(args, "tool_list", None) or check.tools_file(args.tools)
    mesh = parse_mesh(args.mesh)
    loaded = load_model_from_args(
        args, mesh=mesh, attention_impl=args.attention, decode_attention=args.decode_attention
    )
    model, tokenizer = loaded.model, loaded.tokenizer
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.prompt})
    prompt_ids = encode_text(tokenizer, render_messages(messages, tools, args.style))
    stop_ids = tuple(
        i for i in (tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")) if i is not None
    )
    sampling = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
        max_new_tokens=args.max_new_tokens,
        stop_token_ids=stop_ids,
    )
    engine = GenerationEngine(
        model,
        batch_size=1,
        max_cache_len=len(prompt_ids) + args.max_new_tokens,
        mesh=mesh,
        cache_dtype=args.cache_dtype or model.config.dtype,
    )
    started = time.perf_counter()
    state = engine.start([prompt_ids], rng=args.seed)
    stream = TextStream(tokenizer)
    generated = 0
    while True:
        state, result = engine.decode(state, sampling, max_steps=args.stream_chunk)
        stream.add(result.token_lists()[0])
        generated += int(result.num_tokens[0])
        if result.finished[0] or result.num_tokens[0] == 0:
            break
    stream.finish()
    elapsed = time.perf_counter() - started
    print(
        f"[{len(prompt_ids)} prompt tokens, {generated} new tokens in {elapsed:.2f} s including compilation; "
        f"compiled {engine.num_compilations} programs]",
        file=sys.stderr,
    )
    return 0
