"""The gate as a pure function: a sweep's candidate variants checked against a policy (`evaluate`).

Fails closed: a gated variant passes only when every check it is subject to could be evaluated and passed.
A FAILED/KILLED/RUNNING child, a missing metric, missing or mismatched per-question outcomes, a missing or
failed unmodified candidate to compare against, or a variant named in the policy but absent from the sweep is
a failure with its reason; a reference or base it must be held against for dominance that is FAILED/KILLED or
lacks the axis metric makes that check `undecided`, naming it. The MMLU check is three-way (see
`pipeline.verdict.stats.non_inferiority`): `undecided` (too few questions to tell) is not a pass, so it also
exits 1.

No I/O here: `pipeline.verdict.commands.run_gate` reads the sweep, writes the report files, tags the runs
and registers the passes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from pipeline import metrics as M
from pipeline.config.policy import Policy
from pipeline.records import SweepRecord, VariantRecord
from pipeline.verdict.analysis import base_for, dominance
from pipeline.verdict.frontier import axis_by_name
from pipeline.results import question_rank
from pipeline.verdict.sequential import sequential_non_inferiority
from pipeline.verdict.stats import NonInferiority, PairingError, flip_rate, non_inferiority, pair
from pipeline.verdict.units import fmt

Outcome = Literal["pass", "fail", "undecided"]


class GateError(RuntimeError):
    """Nothing can be gated (exit 2); one line."""


@dataclass(frozen=True)
class Check:
    name: str
    outcome: Outcome
    detail: str


@dataclass
class VariantGate:
    label: str
    model: str
    variant: str
    run_id: str | None
    checks: list[Check] = field(default_factory=list)
    mmlu: NonInferiority | None = None
    registered: str | None = None  # "name vN" once registered

    @property
    def verdict(self) -> Outcome:
        outcomes = {c.outcome for c in self.checks}
        if not self.checks or "fail" in outcomes:
            return "fail"
        return "undecided" if "undecided" in outcomes else "pass"

    @property
    def reasons(self) -> list[str]:
        if not self.checks:
            return ["no check could run"]
        return [f"{c.name}: {c.detail}" for c in self.checks if c.outcome != "pass"]


@dataclass
class GateResult:
    exit_code: int  # 0 every gated variant passed, 1 any failed or is undecided, 2 error
    variants: list[VariantGate] = field(default_factory=list)
    policy: Policy | None = None
    parent_run_id: str | None = None
    experiment: str | None = None
    report_path: Path | None = None
    junit_path: Path | None = None
    error: str | None = None  # set with exit code 2

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


def exit_code(variants: list[VariantGate]) -> int:
    return 0 if all(g.verdict == "pass" for g in variants) else 1


# -- checks -------------------------------------------------------------------------------------------


def select(sweep: SweepRecord, names: list[str] | None) -> list[tuple[str, VariantRecord | None]]:
    """(name, record) for each gated variant: every candidate variant except the unmodified one, or the
    named ones (variant name or model/variant); a name with no child run gives (name, None)."""
    candidates = [r for r in sweep.children if r.role == "candidate"]
    if names is None:
        return [(r.label, r) for r in candidates if not r.is_base]
    out: list[tuple[str, VariantRecord | None]] = []
    for name in names:
        hits = [r for r in candidates if name in (r.variant, r.label)]
        out += [(r.label, r) for r in hits] if hits else [(name, None)]
    return out


def _metric_check(r: VariantRecord, name: str, metric: str, limit: float, upper: bool) -> Check:
    v = r.metric(metric)
    if v is None:
        return Check(name, "fail", f"missing metric {metric}")
    ok = v <= limit if upper else v >= limit
    op = "<=" if upper else ">="
    shown = fmt(v, metric) if metric == M.WEIGHT_BYTES else f"{v:.4g}"
    limit_s = fmt(float(limit), metric) if metric == M.WEIGHT_BYTES else f"{limit:g}"
    return Check(name, "pass" if ok else "fail", f"{metric} {shown} {'' if ok else 'not '}{op} {limit_s}")


def _no_base(r: VariantRecord, records: list[VariantRecord]) -> str:
    """Why a variant has no base to compare with, naming the base's status when it is there but unusable."""
    found = [b for b in records if b.is_base and b.model == r.model and b.runtime == r.runtime]
    if not found:
        return f"no FINISHED unmodified candidate (method none) for model {r.model} to compare with: none in the sweep"
    states = ", ".join(f"{b.label} is {b.status}" + (f" ({b.tags[M.TAG_STATUS_ERROR]})" if b.tags.get(M.TAG_STATUS_ERROR) else "") for b in found)
    return f"no FINISHED unmodified candidate (method none) for model {r.model} to compare with: {states}"


def _repeats(r: VariantRecord, records: list[VariantRecord]) -> list[VariantRecord]:
    """FINISHED runs of the same variant under another name: same model, method and params."""

    def what(x: VariantRecord) -> dict[str, str]:
        return {k: v for k, v in x.params.items() if k.startswith("variant.") and k != "variant.name"}

    mine = what(r)
    if not mine:  # params not logged: cannot tell a repeat from another variant
        return []
    return [
        x
        for x in records
        if x.run_id != r.run_id and x.model == r.model and x.runtime == r.runtime and x.status == "FINISHED" and x.questions and what(x) == mine
    ]


def _noise_floor(r: VariantRecord, records: list[VariantRecord]) -> tuple[float | None, str]:
    """Run-to-run noise of r's MMLU answers, in points: the largest flip rate vs a repeat of it in the sweep
    (measured beats declared); else 0 for a deterministic method; None (unknown) for a tagged
    `deterministic=false` one."""
    reps = _repeats(r, records)
    if reps:
        flips = max(flip_rate(r.questions or (), x.questions or ()) for x in reps)
        return flips * 100.0, "flip rate vs " + ", ".join(x.label for x in reps)
    if r.tags.get(M.TAG_DETERMINISTIC) == "false":
        return None, ""
    return 0.0, ""


def _mmlu_check(r: VariantRecord, base: VariantRecord | None, policy: Policy, records: list[VariantRecord]) -> tuple[Check, NonInferiority | None]:
    name = "mmlu_drop"
    if base is None:
        return Check(name, "fail", _no_base(r, records)), None
    if not r.questions:
        return Check(name, "fail", f"no per-question outcomes ({M.ART_QUESTIONS}) for {r.label}"), None
    if not base.questions:
        return Check(name, "fail", f"no per-question outcomes ({M.ART_QUESTIONS}) for {base.label}"), None
    if r is not base and r.tags.get(M.TAG_MMLU_ORDER_SEED):
        return _sequential_check(r, base, policy, records)
    try:
        p = pair(r.questions, base.questions)
        if not p.complete:
            return Check(name, "fail", f"question sets differ from {base.label}: {p.only_a} only here, {p.only_b} only in base"), None
        noise, source = _noise_floor(r, records)
        ni = non_inferiority(
            r.questions, base.questions, policy.max_mmlu_drop_points, confidence=policy.confidence,
            n_boot=policy.bootstrap_samples, seed=policy.seed, noise_points=noise or 0.0,
        )
    except PairingError as exc:
        return Check(name, "fail", str(exc)), None
    if noise is None and ni.decision == "pass":  # fails closed: a rerun could move it by an unknown amount
        return Check(
            name, "undecided",
            f"{ni.reason}, but {r.label} is tagged {M.TAG_DETERMINISTIC}=false and the sweep has no repeat of it to measure "
            "its run-to-run flip rate: add the same variant again under another name (same method and params)",
        ), ni
    return Check(name, ni.decision, ni.reason + (f"; noise floor {noise:.2f} pts ({source})" if noise else "")), ni


def _sequential_check(r: VariantRecord, base: VariantRecord, policy: Policy, records: list[VariantRecord]) -> tuple[Check, NonInferiority | None]:
    """A variant scored as a sequential sample (`eval.sample.questions: auto`; it may have stopped early): the
    anytime-valid paired test walks its questions in the seeded order against the same questions of the base,
    at the policy's margin (less the noise floor) and confidence. Fixed-sample bounds after optional stopping
    would not hold, so the decision is the sequential test's; the fixed figures are shown for the drop only."""
    name = "mmlu_drop"
    seed = r.tags[M.TAG_MMLU_ORDER_SEED]
    if base.tags.get(M.TAG_MMLU_ORDER_SEED) != seed:
        return Check(name, "fail", f"{r.label} was scored in the seeded order {seed} and {base.label} was not: score both with the same eval.sample"), None
    base_right = {(q.subject, q.index): q.correct for q in base.questions or ()}
    missing = [q for q in r.questions or () if (q.subject, q.index) not in base_right]
    if missing:
        return Check(name, "fail", f"{len(missing)} questions of {r.label} were not scored for {base.label} (its sample.max is smaller): rerun the base"), None
    try:
        population, seed_value = int(r.tags.get(M.TAG_MMLU_POPULATION, "")), int(seed)
    except ValueError:
        return Check(name, "fail", f"{r.label}: tags {M.TAG_MMLU_POPULATION} / {M.TAG_MMLU_ORDER_SEED} missing or not numbers"), None
    noise, source = _noise_floor(r, records)
    if noise is None:
        return Check(
            name, "undecided",
            f"{r.label} is tagged {M.TAG_DETERMINISTIC}=false and the sweep has no repeat of it to measure its run-to-run flip rate",
        ), None
    order = sorted(r.questions or (), key=lambda q: question_rank(seed_value, q.subject, q.index))
    d = [int(q.correct) - int(base_right[(q.subject, q.index)]) for q in order]
    margin = policy.max_mmlu_drop_points - noise  # a rerun can move the variant by up to the noise floor
    if margin < 0:
        return Check(name, "fail", f"noise floor {noise:.2f} pts ({source}) exceeds the {policy.max_mmlu_drop_points:g}-point margin"), None
    seq = sequential_non_inferiority(d, margin, policy.confidence, population=population)
    asked = {(q.subject, q.index) for q in order}
    ni = non_inferiority(
        r.questions, [q for q in base.questions or () if (q.subject, q.index) in asked],
        policy.max_mmlu_drop_points, confidence=policy.confidence, n_boot=policy.bootstrap_samples, seed=policy.seed,
    )
    detail = f"sequential (anytime-valid) over {len(d)} questions of the seeded order: {seq.reason}"
    if noise:
        detail += f"; margin less noise floor {noise:.2f} pts ({source})"
    stopped = r.tags.get(M.TAG_MMLU_STOPPED)
    if stopped:
        detail += f"; scoring stopped: {stopped}"
    return Check(name, seq.decision, detail), replace(ni, decision=seq.decision, reason=detail)


def evaluate(sweep: SweepRecord, policy: Policy) -> list[VariantGate]:
    """Every gated variant with its checks (pure: no MLflow, no files)."""
    gated = select(sweep, policy.variants)
    records = list(sweep.children)
    axes = [axis_by_name(a) for a in policy.dominance_axes] if policy.must_not_be_dominated else []
    verdicts = dominance(records, policy, axes)
    out: list[VariantGate] = []
    for name, r in gated:
        if r is None:
            g = VariantGate(name, name.split("/")[0] if "/" in name else "?", name.split("/")[-1], None)
            g.checks.append(Check("run", "fail", f"no candidate child run named {name!r} in sweep {sweep.parent_run_id}"))
            out.append(g)
            continue
        g = VariantGate(r.label, r.model, r.variant, r.run_id)
        out.append(g)
        if r.status != "FINISHED":
            err = r.tags.get(M.TAG_STATUS_ERROR)
            g.checks.append(Check("run", "fail", f"status {r.status}" + (f" ({err})" if err else "")))
            continue
        g.checks.append(Check("run", "pass", "FINISHED"))
        if r.metric(M.MMLU_ACC) is None:
            g.checks.append(Check("mmlu", "fail", f"missing metric {M.MMLU_ACC}"))
        base = r if r.is_base else base_for(r, records)
        check, g.mmlu = _mmlu_check(r, base, policy, records)
        g.checks.append(check)
        if policy.min_decode_tok_s is not None:
            g.checks.append(_metric_check(r, "min_decode_tok_s", M.DECODE_TOK_S, policy.min_decode_tok_s, upper=False))
        if policy.max_weight_bytes is not None:
            g.checks.append(_metric_check(r, "max_weight_bytes", M.WEIGHT_BYTES, policy.max_weight_bytes, upper=True))
        if policy.max_kl_vs_base is not None:
            g.checks.append(_metric_check(r, "max_kl_vs_base", M.KL_VS_BASE, policy.max_kl_vs_base, upper=True))
        for ax in axes:
            v = verdicts[ax.metric][r.run_id]
            if v.status == "frontier":
                g.checks.append(Check(f"not_dominated[{ax.metric}]", "pass", "on the frontier"))
            elif v.status == "unplaced":
                g.checks.append(Check(f"not_dominated[{ax.metric}]", "fail", f"cannot place: {v.reason}"))
            elif v.status == "undecided":  # a reference or the base it must be held against is unusable
                g.checks.append(Check(f"not_dominated[{ax.metric}]", "undecided", v.reason))
            else:
                g.checks.append(Check(f"not_dominated[{ax.metric}]", "fail", "dominated by " + ", ".join(v.dominated_by)))
    return out


# -- what the verdicts write (pure; `commands.run_gate` does the writing) -----------------------------


def child_tags(variants: list[VariantGate], policy_path: str | Path, stamp: str) -> dict[str, dict[str, str]]:
    """run id -> `gate.verdict`, `gate.reasons`, `gate.policy`, `gate.time` for each gated child run."""
    return {
        g.run_id: {"gate.verdict": g.verdict, "gate.reasons": "; ".join(g.reasons) or "all checks passed", "gate.policy": str(policy_path), "gate.time": stamp}
        for g in variants
        if g.run_id
    }


def parent_tags(result: GateResult, stamp: str) -> dict[str, str]:
    return {
        "gate.verdict": {0: "pass", 1: "fail"}[result.exit_code],
        "gate.summary": ", ".join(f"{g.label}={g.verdict}" for g in result.variants)[:5000],
        "gate.time": stamp,
    }


def registry_name(policy: Policy, sweep: SweepRecord, r: VariantRecord) -> str:
    return policy.registry_name.format(experiment=sweep.experiment, model=r.model, variant=r.variant).replace("/", "-").replace(":", "-")


def registry_bundle(g: VariantGate, r: VariantRecord, policy: Policy, sweep: SweepRecord) -> dict[str, str]:
    """What a passing variant registers (file name -> text): how to rebuild it and why it passed."""
    provenance = {k: v for k, v in r.tags.items() if k.startswith("provenance.")}
    doc = {
        "model": r.model,
        "variant": r.variant,
        "method": r.tags.get("method"),
        "run_id": r.run_id,
        "parent_run_id": sweep.parent_run_id,
        "experiment": sweep.experiment,
        "content_key": r.tags.get(M.TAG_CONTENT_KEY),
        "provenance": provenance,
        "params": r.params,
        "metrics": r.metrics,
        "gate": {"verdict": g.verdict, "checks": [c.__dict__ for c in g.checks], "policy": policy.model_dump(mode="json")},
        "note": "the compressed weights are not serialized: rebuild them from recipe.yaml + this variant's params",
    }
    return {"shrinkgate_variant.json": json.dumps(doc, indent=2, default=str)}
