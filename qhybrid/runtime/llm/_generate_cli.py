"""``qhybrid generate MODEL [PROMPT]``: text generation from a GGUF model, streamed.

MODEL is a file or a name as ``qhybrid models`` lists it (``llama3.2:1b``, a file stem such as
``smollm2``; an ambiguous name lists the candidates). Like llama.cpp's CLI, the prompt is
printed, then the generated text as it comes, and a one-line timing summary goes to stderr;
``--json`` prints one object instead (no prompt echo). The text shown to a person has its control
characters escaped (``\\x1b``, ``\\r``: a model cannot clear the screen or forge a line);
``--json`` keeps the exact text. ``--chat`` formats the prompt with the
model's chat template and keeps the conversation going: each line read from stdin is the next
user turn, until end of input. A model file larger than 64 MB is read in with a progress bar on
a terminal. Exit codes: 0 done, 1 the device failed, 2 bad input (flags, model, prompt), 130
interrupted (the text generated so far is kept).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from qhybrid._argparse import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Parser,
    positive_int,
)
from qhybrid.runtime._text import printable, printable_lines

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
        description=(
            "Generate text from a GGUF model (llama, qwen2, qwen3, gemma2, gemma3, phi3), "
            "streamed to stdout."
        ),
    )
    parser.add_argument(
        "model", metavar="MODEL", help="a GGUF file, or a model name as `qhybrid models` lists it"
    )
    parser.add_argument(
        "prompt", metavar="PROMPT", nargs="?", help="the prompt text (with --chat: optional)"
    )
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
        "--chat",
        action="store_true",
        help="chat: the model's chat template, then further turns read from stdin",
    )
    parser.add_argument(
        "--system", metavar="TEXT", default=None, help="with --chat: a system message first"
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
    if args.prompt is None and not args.chat:
        return _bad("a PROMPT is needed (or --chat, to read the conversation from stdin)")
    try:
        args.model = _resolve(args.model)
    except _NameError as exc:
        return _bad(str(exc))
    from qhybrid.runtime.llm import _aot_cache

    try:
        if note := _aot_cache.prepare():
            sys.stderr.write(f"qhybrid generate: {note}\n")
    except _aot_cache.BadChoice as exc:
        return _bad(str(exc))
    try:
        return asyncio.run(_generate(args))
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        sys.stderr.write("qhybrid generate: interrupted\n")
        return EXIT_INTERRUPTED


class _NameError(Exception):
    pass


def _resolve(name: str) -> Path:
    from qhybrid.runtime.llm._models_cli import ModelNameError, resolve_model

    try:
        return resolve_model(name)
    except ModelNameError as exc:
        if not exc.candidates and (name.lower().endswith(".gguf") or "/" in name):
            raise _NameError(f"{name}: no such model file") from None
        lines = [str(exc)]
        lines += [f"  {m.name or m.path.name}  ({m.source}: {m.path})" for m in exc.candidates]
        if exc.candidates:
            lines.append("give one of these names, or the file's path")
        raise _NameError("\n".join(lines)) from None


def _read_with_progress(path: Path) -> None:
    """Read a large model file once, with a progress bar on a terminal: the weights are
    memory-mapped, so this is the disk read the first forward pass would otherwise stall on."""
    size = path.stat().st_size
    if size < 64 << 20 or not sys.stderr.isatty():
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with (
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            transient=True,
        ) as bar,
        path.open("rb") as fh,
    ):
        task = bar.add_task(f"loading {path.name}", total=size)
        while chunk := fh.read(16 << 20):
            bar.advance(task, len(chunk))


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The conversation so far as prompt ids, through the model's chat template."""
    text = tokenizer.apply_chat_template(messages)
    bos = tokenizer.bos_id
    # A template that writes the BOS token itself must not get a second one.
    writes_bos = bos is not None and text.startswith(tokenizer.token_text(bos))
    ids: list[int] = tokenizer.encode(text, add_bos=None if not writes_bos else False)
    return ids


def _next_turn() -> str | None:
    """The next user line from stdin, or None at the end of input."""
    if sys.stdin.isatty():
        sys.stderr.write("> ")
        sys.stderr.flush()
    try:
        line = sys.stdin.readline()
    except (OSError, ValueError):  # no stdin (closed, or captured by a test runner)
        return None
    if not line:
        return None
    return line.rstrip("\n")


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
        await asyncio.to_thread(_read_with_progress, args.model)
        llm = await Llm.open(args.model, options, device=device)
    except ModelError as exc:
        await asyncio.to_thread(device.close)
        return _bad(str(exc))
    except GpuJobError as exc:
        await asyncio.to_thread(device.close)
        sys.stderr.write(f"qhybrid generate: {exc}\n")
        return EXIT_FAILED
    try:
        if not args.chat:
            return await _one_turn(llm, args, params, args.prompt, None)
        from qhybrid.runtime.llm import ChatTemplateError

        messages: list[dict[str, str]] = []
        if args.system:
            messages.append({"role": "system", "content": args.system})
        user = args.prompt if args.prompt is not None else await asyncio.to_thread(_next_turn)
        typed = args.prompt is None and sys.stdin.isatty()
        while user is not None:
            if user.strip():
                messages.append({"role": "user", "content": user})
                try:
                    ids = _chat_ids(llm.tokenizer, messages)
                except ChatTemplateError as exc:
                    return _bad(str(exc))
                if not args.json and not typed:  # a typed line is on the terminal already
                    sys.stdout.write(f"> {printable(user)}\n")
                code, answer = await _stream(llm, args, params, ids)
                if code != EXIT_OK:
                    return code
                messages.append({"role": "assistant", "content": answer.strip()})
            user = await asyncio.to_thread(_next_turn)
            typed = sys.stdin.isatty()
        return EXIT_OK
    finally:
        await llm.aclose()
        await asyncio.to_thread(device.close)


async def _one_turn(
    llm: Any, args: argparse.Namespace, params: Any, prompt: str, _ids: list[int] | None
) -> int:
    try:
        ids = llm.encode(prompt)
    except ValueError as exc:
        return _bad(str(exc))
    if not args.json:
        sys.stdout.write(printable_lines(prompt))
        sys.stdout.flush()
    code, _text = await _stream(llm, args, params, ids)
    return code


async def _stream(
    llm: Any, args: argparse.Namespace, params: Any, ids: list[int]
) -> tuple[int, str]:
    """Generate from ``ids``, streaming to stdout (or one JSON line); (exit code, text)."""
    try:
        stream = llm.stream(ids, params)
    except ValueError as exc:
        return _bad(str(exc)), ""
    parts: list[str] = []
    try:
        async for text in stream:
            parts.append(text)
            if not args.json:
                # Model text is shown, not obeyed: ESC sequences and \r escaped (issue 12).
                sys.stdout.write(printable_lines(text))
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
        return EXIT_FAILED, "".join(parts)
    return EXIT_OK, "".join(parts)
