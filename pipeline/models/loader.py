"""Resolve a recipe's model source to a local dense safetensors directory, then load it.

GGUF files (and the bundled packages, which ship GGUF) are dequantized by transformers once and cached as
dense safetensors, so later loads take seconds instead of a minute.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config.recipe import ModelSpec
from pipeline.env import hub_reachable
from pipeline.models.bundled import BUNDLED, BundleMissing, cache_root, package_version
from pipeline.models.gguf_facts import gguf_shape, tensor_census
from pipeline.results import Provenance

_ALLOWED_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]


class ModelError(RuntimeError):
    """A model source that cannot be used; one line naming the source and the fix."""


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    dense_dir: Path
    provenance: Provenance
    gguf_path: Path | None = None  # the published GGUF file, for GGUF and bundled sources


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    resolved: ResolvedModel
    device: str


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _dense_from_gguf(gguf_path: Path, spec: ModelSpec, base: Provenance) -> ResolvedModel:
    sha = sha256_file(gguf_path)
    arch = gguf_shape(gguf_path).architecture
    # The census's quant name, so provenance and the census spell it alike ("Q4_K_M").
    quant = tensor_census(gguf_path).file_type
    prov = Provenance(**{**base.__dict__, "file": gguf_path.name, "file_sha256": sha, "gguf_quant_type": quant})
    import transformers

    target = cache_root() / "dense" / f"{sha[:16]}-tf{transformers.__version__}"
    if (target / "config.json").is_file():
        return ResolvedModel(spec.name, target, prov, gguf_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype="float32")
    except (ValueError, KeyError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"models `{spec.name}`: GGUF {gguf_path} (architecture {arch!r}) cannot be dequantized by transformers "
            f"{transformers.__version__}: {first}; use a GGUF of a supported architecture or a safetensors directory"
        ) from None
    # transformers 5 refuses to save a GGUF-loaded model while it still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent.parent if target.parent.exists() else cache_root(), prefix=".dense-"))
    target.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "shrinkgate_provenance.json").write_text(json.dumps(prov.__dict__, indent=2))
    try:
        os.replace(tmp, target)  # atomic: a concurrent converter of the same file just loses the race
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return ResolvedModel(spec.name, target, prov, gguf_path)


def _check_local_weights(path: Path, spec: ModelSpec) -> None:
    if not (path / "config.json").is_file():
        raise ModelError(
            f"models `{spec.name}`: {path} has no config.json; point source at a transformers model directory"
        )
    if any(path.glob("*.safetensors")):
        return
    if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
        if not spec.allow_pickle:
            raise ModelError(
                f"models `{spec.name}`: {path} holds only pickle checkpoints (.bin), which can run code when loaded; "
                "convert to safetensors or set `allow_pickle: true` on this model if you trust it"
            )
        return
    raise ModelError(
        f"models `{spec.name}`: {path} has no weights (*.safetensors); point source at a complete model directory"
    )


def _from_hub(spec: ModelSpec) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    online = hub_reachable()
    patterns = _ALLOWED_FILES + (["*.bin"] if spec.allow_pickle else [])
    try:
        path = Path(
            snapshot_download(spec.source, revision=spec.revision, allow_patterns=patterns, local_files_only=not online)
        )
    except LocalEntryNotFoundError:
        raise ModelError(
            f"models `{spec.name}`: hub id {spec.source!r} is not in the local Hugging Face cache and the hub is "
            "unreachable (offline); download it where the hub is reachable, or set source to a local directory or .gguf"
        ) from None
    except Exception as exc:  # RepositoryNotFoundError, RevisionNotFoundError, HTTP errors  # noqa: BLE001 - the hub's errors have no common base
        raise ModelError(
            f"models `{spec.name}`: cannot fetch {spec.source!r} from the hub: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        ) from None
    revision = path.name  # snapshot folders are named by commit hash: the pin recorded in provenance
    _check_local_weights(path, spec)
    return ResolvedModel(spec.name, path, Provenance(source=spec.source, kind="hub", revision=revision))


def preflight(spec: ModelSpec) -> None:
    """Cheap checks of a model source, before any model loads (used by `validate` and at the start of `run`)."""
    if spec.source in BUNDLED:
        bundle = BUNDLED[spec.source]
        if package_version(bundle.package) is None:
            raise ModelError(f"models `{spec.name}`: package {bundle.package} is not installed; {bundle.install_hint}")
        return
    path = Path(spec.source).expanduser()
    if spec.source.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"models `{spec.name}`: GGUF file {path} does not exist; fix `source`")
        return
    if path.exists() or spec.source.startswith((".", "/", "~")):
        if not path.is_dir():
            raise ModelError(
                f"models `{spec.name}`: local path {path} does not exist; fix `source` (a directory, a .gguf, a hub id or one of: {', '.join(BUNDLED)})"
            )
        _check_local_weights(path, spec)
        return
    if spec.source.count("/") != 1:
        raise ModelError(
            f"models `{spec.name}`: source {spec.source!r} is neither a local path, a .gguf, a hub id (org/name) nor a "
            f"bundled model ({', '.join(BUNDLED)}); fix `source`"
        )
    if not hub_reachable():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec.source, "config.json", revision=spec.revision)
        if not isinstance(cached, str):
            raise ModelError(
                f"models `{spec.name}`: hub id {spec.source!r} is not in the local Hugging Face cache and the hub is "
                "unreachable (offline); download it where the hub is reachable, or set source to a local directory or .gguf"
            )


def resolve_model(spec: ModelSpec) -> ResolvedModel:
    """Map a recipe model to a dense local directory and its provenance (may convert a GGUF once)."""
    if spec.source in BUNDLED:
        bundle = BUNDLED[spec.source]
        try:
            gguf_path = bundle.locate(cache_root())
        except BundleMissing as exc:
            raise ModelError(f"models `{spec.name}`: {exc}") from None
        base = Provenance(
            source=spec.source,
            kind="bundled",
            package=bundle.package,
            package_version=package_version(bundle.package),
            license=bundle.license,
        )
        return _dense_from_gguf(gguf_path, spec, base)
    path = Path(spec.source).expanduser()
    if spec.source.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"models `{spec.name}`: GGUF file {path} does not exist; fix `source`")
        return _dense_from_gguf(path.resolve(), spec, Provenance(source=spec.source, kind="gguf"))
    if path.exists() or spec.source.startswith((".", "/", "~")):
        if not path.is_dir():
            raise ModelError(
                f"models `{spec.name}`: local path {path} does not exist; fix `source` (a directory, a .gguf, a hub id or one of: {', '.join(BUNDLED)})"
            )
        _check_local_weights(path, spec)
        return ResolvedModel(spec.name, path.resolve(), Provenance(source=spec.source, kind="local"))
    if spec.source.count("/") != 1:
        raise ModelError(
            f"models `{spec.name}`: source {spec.source!r} is neither a local path, a .gguf, a hub id (org/name) nor a "
            f"bundled model ({', '.join(BUNDLED)}); fix `source`"
        )
    return _from_hub(spec)


def is_gguf_source(spec: ModelSpec) -> bool:
    """A bundled model or a .gguf file: llama.cpp takes it as is, without the safetensors converter."""
    return spec.source in BUNDLED or spec.source.endswith(".gguf")


def read_config(spec: ModelSpec) -> Any:
    """The model's transformers config without loading or converting weights (a GGUF's header is read).

    Lets `validate` run each method's `check_model` (shapes, group sizes) before any model loads."""
    from transformers import AutoConfig

    if is_gguf_source(spec):
        if spec.source in BUNDLED:
            try:
                gguf = BUNDLED[spec.source].locate(cache_root())
            except BundleMissing as exc:
                raise ModelError(f"models `{spec.name}`: {exc}") from None
        else:
            gguf = Path(spec.source).expanduser().resolve()
        return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    path = Path(spec.source).expanduser()
    if path.is_dir():
        return AutoConfig.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    return AutoConfig.from_pretrained(spec.source, revision=spec.revision, trust_remote_code=spec.trust_remote_code)


def load_model(
    resolved: ResolvedModel, spec: ModelSpec, *, device: str, load_kwargs: dict[str, Any] | None = None
) -> LoadedModel:
    """Load the dense copy (optionally quantized at load time by a transformers quantization_config)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = dict(load_kwargs or {})
    quantized_at_load = "quantization_config" in kwargs
    if quantized_at_load:
        kwargs.setdefault("device_map", device)
    model = AutoModelForCausalLM.from_pretrained(
        resolved.dense_dir,
        dtype=getattr(torch, spec.dtype),
        use_safetensors=None if spec.allow_pickle else True,
        trust_remote_code=spec.trust_remote_code,
        **kwargs,
    )
    if not quantized_at_load:
        model = model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(resolved.dense_dir, trust_remote_code=spec.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, resolved=resolved, device=device)
