"""What the verdicts write, as data: the gate's and the sweep's tags on each run, and what a passing variant
registers. Pure; `pipeline.verdict.commands` does the writing."""

from __future__ import annotations

import json

from pipeline import metrics as M
from pipeline.config.policy import Policy
from pipeline.records import SweepRecord, VariantRecord
from pipeline.verdict.gate import GateResult, VariantGate


def child_tags(variants: list[VariantGate], key: str) -> dict[str, dict[str, str]]:
    """run id -> `gate.<key>.verdict` and `gate.<key>.reasons` for each gated child: namespaced by the policy's
    key, so a gate with another policy never rewrites what this one shows (nor the sweep's own `verdict`)."""
    return {
        g.run_id: {
            M.gate_tag(key, M.GATE_VERDICT): g.verdict,
            M.gate_tag(key, M.GATE_REASONS): "; ".join(g.reasons) or "all checks passed",
        }
        for g in variants
        if g.run_id
    }


def parent_tags(result: GateResult, key: str, policy_label: str, stamp: str) -> dict[str, str]:
    """The gate's own record on the sweep's parent, under `gate.<key>.*` (see `child_tags`)."""
    tags = {
        M.gate_tag(key, M.GATE_VERDICT): {0: "pass", 1: "fail"}[result.exit_code],
        M.gate_tag(key, M.GATE_SUMMARY): ", ".join(f"{g.label}={g.verdict}" for g in result.variants)[:5000],
        M.gate_tag(key, M.GATE_POLICY): policy_label,
        M.gate_tag(key, M.GATE_TIME): stamp,
    }
    registered = [f"{g.label} -> {g.registered}" for g in result.variants if g.registered]
    if registered:
        tags[M.gate_tag(key, M.GATE_REGISTERED)] = ", ".join(registered)
    return tags


def sweep_verdict_tags(
    sweep: SweepRecord, variants: list[VariantGate], policy_label: str, key: str
) -> dict[str, dict[str, str]]:
    """run id -> the sweep's verdict on each of its children (`verdict`, `verdict.reasons` and a one-line
    description) and on the parent (`verdict`, `verdict.policy`)."""
    gated = {g.run_id: g for g in variants if g.run_id}
    tags: dict[str, dict[str, str]] = {}
    for r in sweep.children:
        g = gated.get(r.run_id)
        if g is not None:
            line = g.line()
            tags[r.run_id] = {
                M.TAG_VERDICT: g.verdict,
                M.TAG_VERDICT_REASONS: line[:5000],
                M.TAG_DESCRIPTION: f"**{g.verdict}** ({policy_label}): {line}"[:8000],
            }
            continue
        what = "reference" if r.role == "reference" else "base" if r.is_base else "not gated"
        note = {
            "reference": "reference: a published model as published, what the variants are held against",
            "base": f"base: the unmodified {r.model} that each of its variants is compared with",
            "not gated": f"not gated: the policy's `variants` leave {r.label} out",
        }[what]
        if r.status != "FINISHED":
            note += f" ({r.status}: {r.tags.get(M.TAG_STATUS_ERROR, 'no error recorded')})"
        tags[r.run_id] = {M.TAG_VERDICT: what, M.TAG_DESCRIPTION: note[:8000]}
    overall = "none gated" if not variants else "pass" if all(g.verdict == "pass" for g in variants) else "fail"
    tags[sweep.parent_run_id] = {M.TAG_VERDICT: overall, M.TAG_VERDICT_POLICY: f"{policy_label} [key {key}]"}
    return tags


def registry_name(policy: Policy, sweep: SweepRecord, r: VariantRecord) -> str:
    return (
        policy.registry_name.format(experiment=sweep.experiment, model=r.model, variant=r.variant)
        .replace("/", "-")
        .replace(":", "-")
    )


def registry_bundle(g: VariantGate, r: VariantRecord, policy: Policy, sweep: SweepRecord) -> dict[str, str]:
    """What a passing variant registers (file name -> text): how to rebuild it and why it passed."""
    provenance = {k: v for k, v in r.tags.items() if k.startswith(M.TAG_PROVENANCE_PREFIX)}
    doc = {
        "model": r.model,
        "variant": r.variant,
        "method": r.tags.get(M.TAG_METHOD),
        "run_id": r.run_id,
        "parent_run_id": sweep.parent_run_id,
        "experiment": sweep.experiment,
        "content_key": r.tags.get(M.TAG_CONTENT_KEY),
        "provenance": provenance,
        "params": r.params,
        "metrics": r.metrics,
        "gate": {
            "verdict": g.verdict,
            "checks": [c.__dict__ for c in g.checks],
            "policy": policy.model_dump(mode="json"),
        },
        "note": "the compressed weights are not serialized: rebuild them from recipe.yaml + this variant's params",
    }
    return {"shrinkgate_variant.json": json.dumps(doc, indent=2, default=str)}
