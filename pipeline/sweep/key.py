"""The resume key: what decides a child's results, so a FINISHED run with the same key is reused on resume."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.config.recipe import ModelSpec, Recipe
from pipeline.data.mmlu import MMLUData, read_split, sha256_hex
from pipeline.runtime import runtime_class
from pipeline.variants.plan import WorkItem, plan

_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class KeyInputs:
    """What decides a child's results besides its recipe sections and model source. One key covers all of
    it: speed is only comparable on the same host, accuracy only from the same code and data, so a FINISHED
    run is reused only when every field matches."""

    host: dict[str, str]  # CPU model, GPU name, compute threads, device
    code: dict[str, str]  # shrinkgate version, git commit and uncommitted changes, library versions, runtime
    data: dict[str, str]  # MMLU origin, directory and sha256 of each split file (`data_fingerprint`)


def content_key(recipe: Recipe, item: WorkItem, source: str, inputs: KeyInputs) -> str:
    """What determines a child's results; a FINISHED run with the same key can be reused on resume.
    `source` is `source_fingerprint(item.model)`."""
    doc = {
        "model": item.model.model_dump(),
        "variant": item.variant.model_dump(),
        "runtime": item.runtime,
        "eval": recipe.eval.key_fields(inputs.host.get("device")),
        "speed": recipe.speed.model_dump(),
        "source": source,
        **runtime_class(item.runtime).key_sections(recipe),
        "host": inputs.host,
        "code": inputs.code,
        "data": inputs.data,
    }
    if recipe.eval.sample is not None and recipe.eval.sample.sequential:
        # look by look, how far a base scores depends on its variants and where a variant stops on its base (and
        # the references follow the bases): a run is the same result only within the same set of runs
        doc["lockstep"] = sorted(
            f"{i.label}@{i.runtime}={json.dumps(i.variant.model_dump(), sort_keys=True, default=str)}"
            for i in plan(recipe)
        )
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


def data_fingerprint(data: MMLUData) -> dict[str, str]:
    """Where the MMLU rows come from and the sha256 of each split file's uncompressed bytes."""
    if data.source == "hub":
        return {"origin": data.origin, "source": data.description}
    out = {"origin": data.origin, "dir": str(data.data_dir)}
    for split, path in sorted(data.files.items()):
        out[split] = sha256_hex(read_split(path))
    return out


def source_fingerprint(model: ModelSpec) -> str | None:
    """Cheap identity of a model source (no download, no conversion), for the resume key; None when a hub
    source's commit cannot be resolved (then nothing may be reused for it)."""
    from pipeline.models.bundled import BUNDLED, package_version

    if model.source in BUNDLED:
        pkg = BUNDLED[model.source].package
        return f"bundled:{pkg}=={package_version(pkg)}"
    path = Path(model.source).expanduser()
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        return "local:" + ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    commit = hub_commit(model.source, model.revision)
    return f"hub:{model.source}@{commit}" if commit else None


def hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub revision (a branch or tag moves) points at: asked of the hub when it answers, else
    the snapshot the local Hugging Face cache holds for it; None when neither knows."""
    if revision and _COMMIT.fullmatch(revision):
        return revision
    from pipeline.env import hub_reachable

    if hub_reachable():
        from huggingface_hub import HfApi

        try:
            sha = HfApi().model_info(repo_id, revision=revision, timeout=10).sha
            if sha:
                return sha
        except Exception:  # noqa: BLE001 - fall back to the cache; the load reports a real problem
            pass
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    # `.../snapshots/<commit>/config.json`: snapshot folders are named by commit
    return Path(cached).parent.name if isinstance(cached, str) else None
