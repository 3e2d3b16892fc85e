"""``qhybrid generate MODEL PROMPT``: one-off text generation from a GGUF file, streamed.

Like llama.cpp's CLI: the generated text goes to stdout as it comes (the prompt is not
echoed), a one-line timing summary to stderr; ``--json`` prints one object instead. Exit codes:
0 done, 1 the device failed, 2 bad input (flags, model file, prompt), 130 interrupted (the
text generated so far is kept).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from qhybrid._argparse import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Parser,
    positive_int,
)

logger = logging.getLogger(__name__)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _probability(text: str) -> float:
    value = _non_negative_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="qhybrid generate",
        description="Generate text from a GGUF model (llama, qwen2), streamed to stdout.",
    )
    parser.add_argument("model", metavar="MODEL", type=Path, help="a GGUF model file")
    parser.add_argument("prompt", metavar="PROMPT", help="the prompt text")
    parser.add_argument(
        "--max-tokens", type=positive_int, default=128, metavar="N", help="default 128"
    )
    parser.add_argument(
        "--temperature",
        type=_non_negative_float,
        default=0.8,
        metavar="T",
        help="0 is greedy (default 0.8)",
    )
    parser.add_argument(
        "--top-k", type=_non_negative_int, default=40, metavar="K", help="0: 64 (default 40)"
    )
    parser.add_argument(
        "--top-p", type=_probability, default=0.95, metavar="P", help="default 0.95"
    )
    parser.add_argument(
        "--repeat-penalty",
        type=_non_negative_float,
        default=1.0,
        metavar="R",
        help="1 is off (default 1.0)",
    )
    parser.add_argument(
        "--seed", type=_non_negative_int, default=0, metavar="S", help="sampling seed (default 0)"
    )
    parser.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop before this text (repeatable)",
    )
    parser.add_argument(
        "--chat", action="store_true", help="format the prompt with the model's chat template"
    )
    parser.add_argument(
        "--n-ctx",
        type=positive_int,
        default=None,
        metavar="N",
        help="context size (default: the model's, at most 2048)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "gpu", "cpu"),
        default="auto",
        help="where the model runs: auto (the GPU if there is one), gpu, or cpu (numpy)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of streaming"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else 10
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    if args.repeat_penalty == 0:
        return _bad("--repeat-penalty must be > 0")
    if not args.model.is_file():
        return _bad(f"{args.model}: no such model file")
    try:
        return asyncio.run(_generate(args))
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        sys.stderr.write("qhybrid generate: interrupted\n")
        return EXIT_INTERRUPTED


def _bad(message: str) -> int:
    sys.stderr.write(f"qhybrid generate: error: {message}\n")
    return EXIT_BAD_INPUT


async def _generate(args: argparse.Namespace) -> int:
    from qhybrid.runtime.llm import (
        GenerationParams,
        Llm,
        LlmOptions,
        ModelError,
        SamplingParams,
    )
    from qhybrid.runtime.wgpu_thread import GpuDevice, GpuJobError

    try:
        params = GenerationParams(
            max_tokens=args.max_tokens,
            sampling=SamplingParams(
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                repeat_penalty=args.repeat_penalty,
            ),
            seed=args.seed,
            stop=tuple(args.stop),
        )
        options = LlmOptions(n_slots=1, n_ctx=args.n_ctx, runner=args.device)
    except ValueError as exc:
        return _bad(str(exc))
    device = GpuDevice(prefer="cpu" if args.device == "cpu" else args.device)
    try:
        llm = await Llm.open(args.model, options, device=device)
    except ModelError as exc:
        await asyncio.to_thread(device.close)
        return _bad(str(exc))
    except GpuJobError as exc:
        await asyncio.to_thread(device.close)
        sys.stderr.write(f"qhybrid generate: {exc}\n")
        return EXIT_FAILED
    try:
        try:
            stream = llm.stream(args.prompt, params, chat=args.chat)
        except ValueError as exc:
            return _bad(str(exc))
        try:
            async for text in stream:
                if not args.json:
                    sys.stdout.write(text)
                    sys.stdout.flush()
        except asyncio.CancelledError:
            await stream.aclose()
            raise
        result = stream.result
        assert result is not None
        info = llm.device_info
        if args.json:
            summary = result.to_json()
            summary.update(
                model=str(args.model),
                model_name=llm.model.name,
                arch=llm.model.config.arch,
                placement=llm.placement,
                device=info.to_json(),
            )
            sys.stdout.write(json.dumps(summary) + "\n")
        else:
            where = f"GPU {info.name}" if llm.placement == "gpu" else "CPU (numpy)"
            sys.stdout.write("\n")
            sys.stderr.write(
                f"[{len(result.prompt_tokens)} prompt tokens at {result.prefill_tok_s:.1f} tok/s, "
                f"{len(result.tokens)} generated at {result.decode_tok_s:.1f} tok/s, "
                f"{result.finish}; {where}]\n"
            )
        if result.finish == "error":
            sys.stderr.write(f"qhybrid generate: {result.error}\n")
            return EXIT_FAILED
        return EXIT_OK
    finally:
        await llm.aclose()
        await asyncio.to_thread(device.close)
