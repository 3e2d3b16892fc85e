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
"""

from __future__ import annotations

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
