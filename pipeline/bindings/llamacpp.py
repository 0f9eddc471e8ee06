"""llama.cpp in-process through llama-cpp-python's low-level ctypes API: the library (`require_llama_cpp`, what
it was built with) and `LlamaCppModel` (one model, one context, explicit batches and KV cache), so callers
control exactly which positions produce logits and which sequences share a step. The build (KL vs base) and
the llama.cpp runtime share it; what a GGUF file holds is `pipeline.models.gguf_facts`.
"""

from __future__ import annotations

import collections
import ctypes
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

INSTALL_HINT = "llama-cpp-python is not installed (or failed to build); run `bash scripts/install.sh`"

_NOT_ISA = frozenset({"LLAMAFILE", "OPENMP", "REPACK", "KLEIDIAI", "ACCELERATE"})


class LlamaCppUnavailable(RuntimeError):
    """llama-cpp-python cannot be imported."""


class LlamaCppError(RuntimeError):
    """llama.cpp refused a file or a call; the message carries llama.cpp's last error lines."""


# ---------------------------------------------------------------------------------------------
# The library and what it was built with
# ---------------------------------------------------------------------------------------------

_LOG: dict[str, Any] = {"callback": None, "errors": collections.deque(maxlen=8)}


def require_llama_cpp() -> Any:
    """The `llama_cpp` module, with llama.cpp's log routed away from the console (errors are kept for
    exception messages); `LlamaCppUnavailable` with the install hint when it cannot be imported."""
    try:
        import llama_cpp
    except Exception:  # noqa: BLE001 - ImportError, or an OSError from a shared library that failed to build
        raise LlamaCppUnavailable(INSTALL_HINT) from None
    if _LOG["callback"] is None:
        errors = _LOG["errors"]

        @llama_cpp.llama_log_callback
        def keep_errors(level: int, text: bytes, user_data: Any) -> None:
            # ggml.h of the pinned build: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4 (llama_cpp/_logger.py's table is stale)
            if level == 4:
                errors.append(text.decode("utf-8", "replace").strip())

        _LOG["callback"] = keep_errors  # a reference must outlive the C side's use of it
        llama_cpp.llama_log_set(keep_errors, ctypes.c_void_p(0))
    return llama_cpp


def _last_errors() -> str:
    lines = [line for line in _LOG["errors"] if line]
    _LOG["errors"].clear()
    return f" (llama.cpp: {' | '.join(lines[-3:])})" if lines else ""


def llama_cpp_version() -> str:
    return str(require_llama_cpp().__version__)


def system_info() -> str:
    """`llama_print_system_info()`: the backends and CPU features this llama.cpp build uses."""
    return require_llama_cpp().llama_print_system_info().decode("utf-8", "replace").strip().rstrip("|").strip()


def cpu_features(info: str | None = None) -> tuple[str, ...]:
    """Instruction-set features enabled in the CPU backend ("AVX2 = 1" -> "AVX2"), in llama.cpp's order.

    Build switches that are not instruction sets (LLAMAFILE, OPENMP, REPACK, ...) are left out.
    """
    text = system_info() if info is None else info
    out, section = [], ""
    for item in text.split("|"):
        if ":" in item:  # "CPU : SSE3 = 1" opens a backend's section
            section, _, item = item.partition(":")
            section = section.strip()
        name, _, value = item.partition("=")
        name = name.strip()
        if section == "CPU" and value.strip() == "1" and name not in _NOT_ISA and re.fullmatch(r"[A-Z0-9_]+", name):
            out.append(name)
    return tuple(out)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-softmax over the last axis."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class LlamaCppModel:
    """One GGUF model and one llama.cpp context (KV cache for up to `n_seq_max` sequences).

    Low-level on purpose: `decode` takes explicit (token, position, sequence, wants-logits) rows, so the
    scorer evaluates a shared context once and the decode timer runs B sequences in one batch per step.
    `logits_all=True` lets a batch return logits at every position of a sequence (scoring, `logprobs`);
    otherwise llama.cpp's default of one output per sequence per batch holds (decode).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int,
        n_threads: int,
        n_batch: int = 512,
        n_seq_max: int = 1,
        logits_all: bool = False,
        swa_full: bool = True,
    ) -> None:
        lib = require_llama_cpp()
        self._lib = lib
        self.path = Path(path)
        self.n_threads = int(n_threads)
        self.n_seq_max = int(n_seq_max)
        self.logits_all = logits_all
        self.swa_full = swa_full
        self._ctx = None
        self._batch = None
        self._batch_cap = 0
        self._n_outputs = 0
        if not self.path.is_file():
            raise LlamaCppError(f"GGUF file {self.path} does not exist")
        lib.llama_backend_init()
        mparams = lib.llama_model_default_params()
        mparams.use_mmap = True
        self._model = lib.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            self._model = None
            raise LlamaCppError(f"llama.cpp could not load {self.path}{_last_errors()}")
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(self._model))
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab))
        self.bos_id = int(lib.llama_vocab_bos(self._vocab))
        self.eos_id = int(lib.llama_vocab_eos(self._vocab))
        try:
            self.resize(n_ctx, n_batch=n_batch)
        except Exception:
            self.close()
            raise

    @classmethod
    def open(cls, path: str | Path, **kwargs: Any) -> LlamaCppModel:
        """The constructor, read as `with LlamaCppModel.open(path, n_ctx=..., n_threads=...) as llama`."""
        return cls(path, **kwargs)

    # -- lifecycle -------------------------------------------------------------------------------

    def resize(self, n_ctx: int, *, n_batch: int | None = None, n_seq_max: int | None = None) -> None:
        """(Re)create the context with room for `n_ctx` tokens over all sequences (KV cleared); the model's
        weights stay loaded."""
        lib = self._lib
        self._free_context()
        n_batch = int(n_batch or self.n_batch)
        self.n_seq_max = int(n_seq_max or self.n_seq_max)
        params = lib.llama_context_default_params()
        params.n_ctx = max(int(n_ctx), 8)
        params.n_batch = max(n_batch, 1)
        params.n_ubatch = min(params.n_batch, 512)
        params.n_seq_max = self.n_seq_max
        params.n_threads = params.n_threads_batch = self.n_threads
        params.no_perf = True
        params.swa_full = self.swa_full
        if self.logits_all:
            params.n_outputs_max_per_seq = 0  # = n_outputs_max = n_batch: logits at every position
        ctx = lib.llama_init_from_model(self._model, params)
        if not ctx:
            raise LlamaCppError(
                f"llama.cpp could not create a context of {n_ctx} tokens for {self.path}{_last_errors()}"
            )
        self._ctx = ctx
        self._memory = lib.llama_get_memory(ctx)
        self.n_ctx = int(lib.llama_n_ctx(ctx))
        self.n_batch = int(params.n_batch)

    def _free_context(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch, self._batch_cap = None, 0
        if self._ctx is not None:
            self._lib.llama_free(self._ctx)
            self._ctx = None

    def close(self) -> None:
        self._free_context()
        if self._model is not None:
            self._lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LlamaCppModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- tokenizer -------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        """llama.cpp's tokenizer; `add_special` adds BOS/EOS only where the GGUF says the model wants them
        (like a transformers tokenizer's `add_special_tokens`); special-token text is parsed as such."""
        lib = self._lib
        data = text.encode("utf-8")
        cap = len(data) + 8
        for _ in range(2):
            buf = (lib.llama_token * cap)()
            n = lib.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, True)
            if n >= 0:
                return list(buf[:n])
            cap = -n
        raise LlamaCppError(f"llama.cpp could not tokenize {len(data)} bytes{_last_errors()}")

    def detokenize(self, ids: Sequence[int], special: bool = True) -> str:
        lib = self._lib
        out = b""
        buf = ctypes.create_string_buffer(256)
        for tok in ids:
            n = lib.llama_token_to_piece(self._vocab, int(tok), buf, 256, 0, special)
            out += buf.raw[: max(n, 0)]
        return out.decode("utf-8", "replace")

    # -- KV cache ----------------------------------------------------------------------------------

    def clear(self) -> None:
        """Empty the KV cache of every sequence."""
        self._lib.llama_memory_clear(self._memory, True)

    def save_seq(self, seq_id: int = 0) -> bytes:
        """The KV cache of sequence `seq_id` as bytes (`llama_state_seq_get_data`), for `load_seq` later."""
        size = int(self._lib.llama_state_seq_get_size(self._ctx, seq_id))
        buf = (ctypes.c_uint8 * size)()
        written = int(self._lib.llama_state_seq_get_data(self._ctx, buf, size, seq_id))
        if written == 0:
            raise LlamaCppError(f"llama.cpp could not save the state of sequence {seq_id}")
        return bytes(buf)[:written]

    def load_seq(self, state: bytes, seq_id: int = 0) -> bool:
        """Put a `save_seq` state into sequence `seq_id` (whose cells should be empty); False when llama.cpp refuses."""
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        return int(self._lib.llama_state_seq_set_data(self._ctx, buf, len(state), seq_id)) != 0

    def truncate(self, seq_id: int, pos: int) -> bool:
        """Drop positions >= `pos` of sequence `seq_id`; False when llama.cpp cannot (recurrent state)."""
        return bool(self._lib.llama_memory_seq_rm(self._memory, seq_id, pos, -1))

    # -- evaluation --------------------------------------------------------------------------------

    def _ensure_batch(self, n: int) -> Any:
        if self._batch is None or n > self._batch_cap:
            if self._batch is not None:
                self._lib.llama_batch_free(self._batch)
            self._batch_cap = max(n, self.n_batch)
            self._batch = self._lib.llama_batch_init(self._batch_cap, 0, 1)
        return self._batch

    def decode(
        self, tokens: Sequence[int], positions: Sequence[int], seq_ids: Sequence[int], outputs: Sequence[bool]
    ) -> None:
        """One `llama_decode` of rows (token, position, sequence, whether it returns logits)."""
        n = len(tokens)
        if n == 0:
            return
        if n > self.n_batch:
            raise ValueError(f"{n} tokens in one batch exceed n_batch={self.n_batch}")
        batch = self._ensure_batch(n)
        batch.n_tokens = n
        for i in range(n):
            batch.token[i] = tokens[i]
            batch.pos[i] = positions[i]
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_ids[i]
            batch.logits[i] = bool(outputs[i])
        rc = self._lib.llama_decode(self._ctx, batch)
        if rc != 0:
            hint = " (no KV slot: the context is too small)" if rc == 1 else ""
            raise LlamaCppError(f"llama_decode returned {rc}{hint}{_last_errors()}")
        self._n_outputs = sum(1 for o in outputs if o)

    def greedy(self) -> np.ndarray:
        """Argmax token of every output row of the last `decode`, in batch order (no copy of the logits)."""
        ptr = self._lib.llama_get_logits(self._ctx)
        if not ptr or not self._n_outputs:
            raise LlamaCppError(f"no logits from the last decode{_last_errors()}")
        return np.ctypeslib.as_array(ptr, shape=(self._n_outputs, self.n_vocab)).argmax(axis=-1)

    def logits_ith(self, i: int) -> np.ndarray:
        """float32 logits [V] of batch row `i` of the last `decode` (negative: from the end), copied."""
        ptr = self._lib.llama_get_logits_ith(self._ctx, i)
        if not ptr:
            raise LlamaCppError(f"no logits for batch row {i}{_last_errors()}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def eval(self, tokens: Sequence[int], *, seq_id: int = 0, pos0: int = 0, logits: str = "last") -> np.ndarray:
        """Evaluate one sequence's tokens from position `pos0` (after what the cache holds), in n_batch chunks.

        Returns float32 logits [k, V]: k = 1 for `logits="last"`, len(tokens) for `"all"`.
        """
        if logits not in ("last", "all"):
            raise ValueError("logits must be 'last' or 'all'")
        if logits == "all" and not self.logits_all and len(tokens) > 1:
            raise ValueError("logits at every position need a model opened with logits_all=True")
        if pos0 + len(tokens) > self.n_ctx // max(self.n_seq_max, 1):
            raise LlamaCppError(
                f"{pos0 + len(tokens)} positions exceed the context of {self.n_ctx // self.n_seq_max} tokens per sequence"
            )
        rows: list[np.ndarray] = []
        for start in range(0, len(tokens), self.n_batch):
            chunk = list(tokens[start : start + self.n_batch])
            last_chunk = start + self.n_batch >= len(tokens)
            outs = [logits == "all" or (last_chunk and j == len(chunk) - 1) for j in range(len(chunk))]
            self.decode(chunk, [pos0 + start + j for j in range(len(chunk))], [seq_id] * len(chunk), outs)
            if logits == "all":
                rows.extend(self.logits_ith(j) for j in range(len(chunk)))
            elif last_chunk:
                rows.append(self.logits_ith(len(chunk) - 1))
        return np.stack(rows) if rows else np.zeros((0, self.n_vocab), dtype=np.float32)

    def logprobs(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token log-probabilities [T, V] (float64) at every position of one sequence, from an empty cache."""
        self.clear()
        try:
            return log_softmax(self.eval(list(ids), logits="all"))
        finally:
            self.clear()
