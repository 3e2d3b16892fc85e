"""Local LLM inference from GGUF files: model files, tokenizer, and the forward pass.

- :func:`load_model` opens a GGUF model (``llama``, ``qwen2``) as a :class:`ModelFile`: its
  :class:`ModelConfig` and memory-mapped tensors; a bad file raises :class:`ModelError`.
- :class:`Llm` serves a model to many concurrent requests (streaming, cancellation,
  continuous batching through :class:`LlmEngine`); the orchestrator steps the same engine
  once per tick (:func:`open_engine`) for agents' ``llm_complete`` calls.
- :class:`ModelRunner` is what the engine drives (one step: feed tokens, sample one token per
  sequence); :class:`NumpyRunner` is the CPU implementation and the reference of the graph.
- :func:`compile_json_schema` turns a JSON Schema into a grammar; bound to a model's
  :class:`TokenVocabulary` (``grammar.for_vocabulary(vocab)``) it is a :class:`TokenGrammar`
  that :class:`GenerationParams` takes as ``grammar``: every token is then constrained so that
  the answer parses and validates (structured output, tool calls).
- :class:`Tokenizer` is built from the file's metadata (``Tokenizer.from_metadata(
  model.metadata)``): byte-level BPE or SentencePiece, special tokens, streaming decode, the
  chat template.

Never imports Qt. See docs/llm.md.

The names are imported on first use (PEP 562 ``__getattr__``), so that importing one private
module (``_aot_cache``, ``_gguf`` for a file's metadata) does not load the CPU kernels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qhybrid.runtime._lazy import lazy_names

if TYPE_CHECKING:
    from qhybrid.runtime.llm._arch import SUPPORTED_ARCHS
    from qhybrid.runtime.llm._engine import (
        Constraint,
        GenerationParams,
        GenerationResult,
        LlmEngine,
        RequestUpdate,
        sample_host,
    )
    from qhybrid.runtime.llm._gguf import (
        SUPPORTED_QTYPES,
        ModelConfig,
        ModelError,
        ModelFile,
        ModelInfo,
        TensorData,
        load_model,
        read_metadata,
        read_model_info,
    )
    from qhybrid.runtime.llm._grammar import (
        GrammarError,
        JsonGrammar,
        TokenConstraint,
        TokenGrammar,
        TokenVocabulary,
        compile_json_schema,
    )
    from qhybrid.runtime.llm._numpy_model import NumpyRunner
    from qhybrid.runtime.llm._runner import GREEDY, ModelRunner, SamplingParams, SeqInput
    from qhybrid.runtime.llm._service import (
        Llm,
        LlmOptions,
        LoadedModel,
        RunnerChoice,
        TokenStream,
        encode_prompt,
        open_engine,
    )
    from qhybrid.runtime.llm._tokenizer import (
        ChatTemplateError,
        IncrementalDecoder,
        Tokenizer,
        TokenizerError,
        render_chat_template,
    )

#: Each public name and the module it comes from, imported when first asked for.
_LAZY: dict[str, str] = {
    "SUPPORTED_ARCHS": "qhybrid.runtime.llm._arch",
    "Constraint": "qhybrid.runtime.llm._engine",
    "GenerationParams": "qhybrid.runtime.llm._engine",
    "GenerationResult": "qhybrid.runtime.llm._engine",
    "LlmEngine": "qhybrid.runtime.llm._engine",
    "RequestUpdate": "qhybrid.runtime.llm._engine",
    "sample_host": "qhybrid.runtime.llm._engine",
    "SUPPORTED_QTYPES": "qhybrid.runtime.llm._gguf",
    "ModelConfig": "qhybrid.runtime.llm._gguf",
    "ModelError": "qhybrid.runtime.llm._gguf",
    "ModelFile": "qhybrid.runtime.llm._gguf",
    "ModelInfo": "qhybrid.runtime.llm._gguf",
    "TensorData": "qhybrid.runtime.llm._gguf",
    "load_model": "qhybrid.runtime.llm._gguf",
    "read_metadata": "qhybrid.runtime.llm._gguf",
    "read_model_info": "qhybrid.runtime.llm._gguf",
    "GrammarError": "qhybrid.runtime.llm._grammar",
    "JsonGrammar": "qhybrid.runtime.llm._grammar",
    "TokenConstraint": "qhybrid.runtime.llm._grammar",
    "TokenGrammar": "qhybrid.runtime.llm._grammar",
    "TokenVocabulary": "qhybrid.runtime.llm._grammar",
    "compile_json_schema": "qhybrid.runtime.llm._grammar",
    "NumpyRunner": "qhybrid.runtime.llm._numpy_model",
    "GREEDY": "qhybrid.runtime.llm._runner",
    "ModelRunner": "qhybrid.runtime.llm._runner",
    "SamplingParams": "qhybrid.runtime.llm._runner",
    "SeqInput": "qhybrid.runtime.llm._runner",
    "Llm": "qhybrid.runtime.llm._service",
    "LlmOptions": "qhybrid.runtime.llm._service",
    "LoadedModel": "qhybrid.runtime.llm._service",
    "RunnerChoice": "qhybrid.runtime.llm._service",
    "TokenStream": "qhybrid.runtime.llm._service",
    "encode_prompt": "qhybrid.runtime.llm._service",
    "open_engine": "qhybrid.runtime.llm._service",
    "ChatTemplateError": "qhybrid.runtime.llm._tokenizer",
    "IncrementalDecoder": "qhybrid.runtime.llm._tokenizer",
    "Tokenizer": "qhybrid.runtime.llm._tokenizer",
    "TokenizerError": "qhybrid.runtime.llm._tokenizer",
    "render_chat_template": "qhybrid.runtime.llm._tokenizer",
}

__all__ = [
    "GREEDY",
    "SUPPORTED_ARCHS",
    "SUPPORTED_QTYPES",
    "ChatTemplateError",
    "Constraint",
    "GenerationParams",
    "GenerationResult",
    "GrammarError",
    "IncrementalDecoder",
    "JsonGrammar",
    "Llm",
    "LlmEngine",
    "LlmOptions",
    "LoadedModel",
    "ModelConfig",
    "ModelError",
    "ModelFile",
    "ModelInfo",
    "ModelRunner",
    "NumpyRunner",
    "RequestUpdate",
    "RunnerChoice",
    "SamplingParams",
    "SeqInput",
    "TensorData",
    "TokenConstraint",
    "TokenGrammar",
    "TokenStream",
    "TokenVocabulary",
    "Tokenizer",
    "TokenizerError",
    "compile_json_schema",
    "encode_prompt",
    "load_model",
    "open_engine",
    "read_metadata",
    "read_model_info",
    "render_chat_template",
    "sample_host",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
