"""The models a server serves: names resolved as ``qhybrid models`` gives them, loaded once.

A model is asked for by a path to a GGUF file or by a name from ``qhybrid models``; the
server knows it by that listing's name and also by its file name and stem, so ``tiny-stories``,
``tiny-stories.gguf`` and the path all address the same model.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qhybrid.runtime.llm import (
    GrammarError,
    Llm,
    LlmOptions,
    ModelError,
    TokenGrammar,
    TokenVocabulary,
    _models_cli,
    compile_json_schema,
)
from qhybrid.runtime.llm._models_cli import FoundModel, find_models
from qhybrid.serve._errors import ApiError

logger = logging.getLogger(__name__)


class ModelNotFound(LookupError):
    """A model name that no file and no ``qhybrid models`` entry matches."""


def _aliases(found: FoundModel) -> list[str]:
    names = [found.name] if found.name else []
    names += [found.path.name, found.path.stem]
    return list(dict.fromkeys(n for n in names if n))


def resolve_model(spec: str) -> FoundModel:
    """A path to a GGUF file, or a name as ``qhybrid models`` lists it (its file name and stem
    also match; ``NAME:latest`` matches ``NAME``). Where ``qhybrid models`` has its own
    ``resolve_model`` (name matching, fetching the known real models), that decides the file;
    the served name is then the listing's name for it. Raises :class:`ModelNotFound`."""
    path = Path(spec).expanduser()
    if path.is_file():
        return FoundModel(path, "path", path.name)
    shared = getattr(_models_cli, "resolve_model", None)
    if shared is not None:
        refused = getattr(_models_cli, "ModelNameError", LookupError)
        try:
            path = Path(shared(spec.removesuffix(":latest")))
        except refused as exc:
            raise ModelNotFound(str(exc)) from None
        for found in find_models([], usual_places=True):
            if found.path == path:
                return found
        return FoundModel(path, "path", path.name)
    wanted = {spec, spec.removesuffix(":latest")}
    for found in find_models([], usual_places=True):
        if wanted & set(_aliases(found)):
            return found
    raise ModelNotFound(
        f"no model named {spec!r}: give a GGUF file, or a name that `qhybrid models` lists"
    )


@dataclass
class ServedModel:
    """A loaded model and its serving state (all on the server's event loop)."""

    name: str
    aliases: list[str]
    path: Path
    llm: Llm
    max_queue: int
    created: int = field(default_factory=lambda: int(time.time()))
    in_flight: int = 0  # sequences submitted and not finished (n counts n)
    requests_total: int = 0
    tokens_total: int = 0
    cancelled_total: int = 0  # sequences ended before they finished (clients gone)
    _vocab: TokenVocabulary | None = None
    _grammars: dict[str, TokenGrammar] = field(default_factory=dict)

    @property
    def n_ctx(self) -> int:
        return self.llm.engine.runner.n_ctx

    @property
    def n_slots(self) -> int:
        return self.llm.engine.runner.n_slots

    @property
    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    @property
    def digest(self) -> str:
        return hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()

    def admit(self, sequences: int) -> None:
        """Count ``sequences`` in, or 503 when the slots and the queue are full."""
        if self.in_flight + sequences > self.n_slots + self.max_queue:
            raise ApiError(
                503,
                f"the server is busy: {self.in_flight} sequences in flight for "
                f"{self.n_slots} slots and a queue of {self.max_queue}; retry shortly",
                code="server_busy",
                headers={"Retry-After": "1"},
            )
        self.in_flight += sequences
        self.requests_total += 1

    def release(self, sequences: int) -> None:
        self.in_flight -= sequences

    def grammar(self, schema: Any, *, root_object: bool, param: str) -> TokenGrammar:
        """The schema compiled over this model's tokens (cached per schema text)."""
        import json

        key = json.dumps([schema, root_object], sort_keys=True)
        cached = self._grammars.get(key)
        if cached is not None:
            return cached
        try:
            compiled = compile_json_schema(schema, root_object=root_object)
        except GrammarError as exc:
            raise ApiError(400, f"{param}: {exc}", param=param, code="invalid_schema") from None
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"{param}: not a usable JSON Schema: {exc}", param=param) from None
        if self._vocab is None:
            self._vocab = TokenVocabulary.from_tokenizer(self.llm.tokenizer)
        bound = compiled.for_vocabulary(self._vocab)
        if len(self._grammars) > 64:
            self._grammars.clear()
        self._grammars[key] = bound
        return bound

    def describe(self) -> dict[str, Any]:
        model = self.llm.model
        return {
            "arch": model.config.arch,
            "n_params": model.n_params,
            "n_ctx": self.n_ctx,
            "slots": self.n_slots,
            "placement": self.llm.placement,
        }


class ModelRegistry:
    """Loads the given models (on the server's loop) and finds them by any of their names."""

    def __init__(self, specs: list[str], options: LlmOptions, max_queue: int) -> None:
        self.specs = specs
        self.options = options
        self.max_queue = max_queue
        self.models: list[ServedModel] = []
        self._by_name: dict[str, ServedModel] = {}
        #: Why :meth:`load` failed, if it did.
        self.error: BaseException | None = None

    async def load(self) -> None:
        """Load every model; on a failure, close what was loaded and raise."""
        try:
            await self._load()
        except BaseException as exc:
            self.error = exc
            await self.aclose()
            raise

    async def _load(self) -> None:
        for spec in self.specs:
            found = resolve_model(spec)
            logger.info("loading %s from %s", spec, found.path)
            llm = await Llm.open(found.path, self.options)
            aliases = list(
                dict.fromkeys([found.name or spec, spec, *_aliases(found), llm.model.name])
            )
            served = ServedModel(aliases[0], aliases, found.path, llm, self.max_queue)
            self.models.append(served)
            for alias in aliases:
                self._by_name.setdefault(alias, served)

    async def aclose(self) -> None:
        models, self.models = self.models, []
        self._by_name.clear()
        await asyncio.gather(*(m.llm.aclose() for m in models), return_exceptions=True)

    def get(self, name: Any, *, param: str = "model") -> ServedModel:
        """The model called ``name``: 400 when missing and ambiguous, 404 when unknown. With
        one model served, an empty name means it."""
        if name is None or name == "":
            if len(self.models) == 1:
                return self.models[0]
            raise ApiError(
                400, f"{param}: required (one of {self.names()})", param=param, code="missing_model"
            )
        if not isinstance(name, str):
            raise ApiError(400, f"{param}: expected a string", param=param)
        served = self._by_name.get(name) or self._by_name.get(name.removesuffix(":latest"))
        if served is None:
            raise ApiError(
                404,
                f"the model {name!r} does not exist here; served: {', '.join(self.names())}",
                param=param,
                code="model_not_found",
            )
        return served

    def names(self) -> list[str]:
        return [m.name for m in self.models]


__all__ = ["ModelError", "ModelNotFound", "ModelRegistry", "ServedModel", "resolve_model"]
