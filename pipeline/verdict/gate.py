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

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from pipeline import metrics as M
from pipeline.config.policy import Policy
from pipeline.records import SweepRecord, VariantRecord
from pipeline.results import question_rank
from pipeline.verdict.analysis import base_for, dominance
from pipeline.verdict.design import design_of
from pipeline.verdict.frontier import axis_by_name
from pipeline.verdict.paired import bounds_of, pairing_of
from pipeline.verdict.sequential import drop_bounds, questions_to_decide, sequential_non_inferiority
from pipeline.verdict.stats import NonInferiority, PairingError, decide_drop, flip_rate
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

    @property
    def deciding(self) -> list[Check]:
        """The checks that decided the verdict: the failed ones, else the undecided ones, else none (a pass)."""
        for outcome in ("fail", "undecided"):
            found = [c for c in self.checks if c.outcome == outcome]
            if found:
                return found
        return []

    def line(self) -> str:
        """The verdict in one line: pass / fail / undecided, the rule(s) that decided, what they found (for an
        undecided MMLU rule: how many more questions a decision would take); then what else did not pass."""
        if not self.checks:
            return "fail: no check could run"
        deciding = self.deciding
        if not deciding:
            return "pass: every rule passed (" + ", ".join(c.name for c in self.checks) + ")"
        text = f"{self.verdict} by {', '.join(c.name for c in deciding)}: " + "; ".join(c.detail for c in deciding)
        rest = [c for c in self.checks if c.outcome == "undecided" and c not in deciding]
        if rest:
            text += " | also undecided: " + "; ".join(f"{c.name}: {c.detail}" for c in rest)
        return text


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
    states = ", ".join(
        f"{b.label} is {b.status}" + (f" ({b.tags[M.TAG_STATUS_ERROR]})" if b.tags.get(M.TAG_STATUS_ERROR) else "")
        for b in found
    )
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
        if x.run_id != r.run_id
        and x.model == r.model
        and x.runtime == r.runtime
        and x.status == "FINISHED"
        and x.questions
        and what(x) == mine
    ]


def _noise_floor(r: VariantRecord, records: list[VariantRecord]) -> tuple[float | None, str]:
    """Run-to-run noise of r's MMLU answers in points, and where it comes from: the largest flip rate vs a repeat
    of it in the sweep (measured beats declared); else 0 when the run is tagged `deterministic=true` (its methods
    and its scoring path measured bit-reproducible); else None (unknown: `false`, `unknown` or no tag) with why."""
    reps = _repeats(r, records)
    if reps:
        flips = max(flip_rate(r.questions or (), x.questions or ()) for x in reps)
        return flips * 100.0, "flip rate vs " + ", ".join(x.label for x in reps)
    value = r.tags.get(M.TAG_DETERMINISTIC)
    if value == "true":
        return 0.0, ""
    why = (
        f"{r.label} is tagged {M.TAG_DETERMINISTIC}={value}"
        if value
        else f"{r.label} has no {M.TAG_DETERMINISTIC} tag, so its run-to-run noise is unknown"
    )
    basis = r.tags.get(M.TAG_DETERMINISTIC_BASIS)
    return None, why + (f" ({basis})" if basis else "")


_NO_REPEAT = "and the sweep has no repeat of it to measure its run-to-run flip rate: add the same variant again under another name (same method and params)"


def _pair_noise(r: VariantRecord, base: VariantRecord, records: list[VariantRecord]) -> tuple[float | None, str]:
    """The noise floor of a drop: the variant's and the base's own (either can move by a rerun); None when either
    is unknown, with why."""
    noise, source = _noise_floor(r, records)
    if r is base or noise is None:
        return noise, source
    base_noise, base_source = _noise_floor(base, records)
    if base_noise is None:
        return None, base_source
    return noise + base_noise, "; ".join(x for x in (source, base_source) if x)


def _mmlu_check(
    r: VariantRecord, base: VariantRecord | None, policy: Policy, records: list[VariantRecord]
) -> tuple[Check, NonInferiority | None]:
    name = "mmlu_drop"
    if base is None:
        return Check(name, "fail", _no_base(r, records)), None
    if not r.questions:
        return Check(name, "fail", f"no per-question outcomes ({M.ART_QUESTIONS}) for {r.label}"), None
    if not base.questions:
        return Check(name, "fail", f"no per-question outcomes ({M.ART_QUESTIONS}) for {base.label}"), None
    design, base_design = design_of(r), design_of(base)
    unknown = next((x for x, d in ((r, design), (base, base_design)) if d.kind == "unknown"), None)
    if unknown is not None:
        return Check(
            name,
            "undecided",
            f"{unknown.label} records no sampling design ({M.TAG_MMLU_DESIGN}; an older shrinkgate wrote it), so no bound can say "
            "what it holds for: rerun the recipe",
        ), None
    if r is not base and "sequential" in (design.kind, base_design.kind):
        return _sequential_check(r, base, policy, records)
    if design.kind != base_design.kind:
        return Check(
            name,
            "fail",
            f"{r.label} ({design.label()}) and {base.label} ({base_design.label()}) were scored with different sampling designs: score both with one eval section",
        ), None
    if design.kind == "stratified" and not design.strata:
        return Check(
            name,
            "undecided",
            f"{r.label}: a stratified sample without its stratum sizes ({M.TAG_MMLU_STRATA}; an older shrinkgate wrote it): rerun the recipe",
        ), None
    try:
        p = pairing_of(base, r)  # of the drop: base - variant
        if not p.complete:
            return Check(
                name, "fail", f"question sets differ from {base.label}: {p.only_b} only here, {p.only_a} only in base"
            ), None
        noise, source = _pair_noise(r, base, records)
        bounds = bounds_of(p, design, confidence=policy.confidence, n_boot=policy.bootstrap_samples, seed=policy.seed)
    except PairingError as exc:
        return Check(name, "fail", str(exc)), None
    if design.kind == "first-n":
        # lm-eval's --limit rows are a fixed slice of each subject: a bound over them is about those rows, not MMLU
        ni = decide_drop(
            bounds,
            policy.max_mmlu_drop_points,
            noise_points=noise or 0.0,
            bound=f"first {design.first_n or 'N'} rows per subject only, not a sample of MMLU",
        )
        return Check(
            name,
            "undecided",
            f"{ni.reason}; the first {design.first_n or 'N'} test rows of each subject (eval.limit_per_subject) are not a random "
            "sample, so these bounds hold for those rows only, not for MMLU: score a seeded sample (eval.sample, or run --sample N) to decide",
        ), replace(ni, decision="undecided")
    ni = decide_drop(bounds, policy.max_mmlu_drop_points, noise_points=noise or 0.0)
    if noise is None and ni.decision == "pass":  # fails closed: a rerun could move it by an unknown amount
        return Check(name, "undecided", f"{ni.reason}, but {source} {_NO_REPEAT}"), replace(ni, decision="undecided")
    return Check(name, ni.decision, ni.reason + (f"; noise floor {noise:.2f} pts ({source})" if noise else "")), ni


def _sequential_check(
    r: VariantRecord, base: VariantRecord, policy: Policy, records: list[VariantRecord]
) -> tuple[Check, NonInferiority | None]:
    """A variant scored as a sequential sample (`eval.sample.questions: auto`; it may have stopped early): the
    anytime-valid paired test walks its questions in the seeded order against the same questions of the base,
    at the policy's margin (less the noise floor) and confidence. Fixed-sample bounds after optional stopping
    would not hold, so the decision and the bounds shown are the sequential test's (its confidence sequence)."""
    name = "mmlu_drop"
    seed = r.tags.get(M.TAG_MMLU_ORDER_SEED)
    if seed is None or base.tags.get(M.TAG_MMLU_ORDER_SEED) != seed:
        who, other = (r, base) if seed is not None else (base, r)
        return Check(
            name,
            "fail",
            f"{who.label} was scored in the seeded order {who.tags.get(M.TAG_MMLU_ORDER_SEED)} and {other.label} was not: score both with the same eval.sample",
        ), None
    base_right = {(q.subject, q.index): q.correct for q in base.questions or ()}
    missing = [q for q in r.questions or () if (q.subject, q.index) not in base_right]
    if missing:
        return Check(
            name,
            "fail",
            f"{len(missing)} questions of {r.label} were not scored for {base.label} (its sample.max is smaller): rerun the base",
        ), None
    try:
        population, seed_value = int(r.tags.get(M.TAG_MMLU_POPULATION, "")), int(seed)
    except ValueError:
        return Check(
            name, "fail", f"{r.label}: tags {M.TAG_MMLU_POPULATION} / {M.TAG_MMLU_ORDER_SEED} missing or not numbers"
        ), None
    noise, source = _pair_noise(r, base, records)
    if noise is None:
        return Check(name, "undecided", f"{source} {_NO_REPEAT}"), None
    order = sorted(r.questions or (), key=lambda q: question_rank(seed_value, q.subject, q.index))
    d = [int(q.correct) - int(base_right[(q.subject, q.index)]) for q in order]
    margin = policy.max_mmlu_drop_points - noise  # a rerun can move the variant by up to the noise floor
    if margin < 0:
        return Check(
            name,
            "fail",
            f"noise floor {noise:.2f} pts ({source}) exceeds the {policy.max_mmlu_drop_points:g}-point margin",
        ), None
    seq = sequential_non_inferiority(d, margin, policy.confidence, population=population)
    lower, upper = drop_bounds(d, policy.confidence, population)
    losses, gains = sum(x < 0 for x in d), sum(x > 0 for x in d)
    needed = (
        questions_to_decide(losses, gains, len(d), margin, policy.confidence, population)
        if seq.decision == "undecided"
        else None
    )
    detail = f"sequential (anytime-valid) over {len(d)} questions of the seeded order: {seq.reason}"
    if seq.decision == "undecided":
        detail += (
            f"; a decision needs about {max(needed - len(d), 1):,} more questions ({needed:,} in all) at this discordance"
            if needed is not None
            else f"; no number of questions up to the {population:,} in the population decides it at this drop"
        )
    if noise:
        detail += f"; margin less noise floor {noise:.2f} pts ({source})"
    stopped = r.tags.get(M.TAG_MMLU_STOPPED)
    if stopped:
        detail += f"; scoring stopped: {stopped}"
    ni = NonInferiority(
        decision=seq.decision,
        delta_points=policy.max_mmlu_drop_points,
        confidence=policy.confidence,
        n=len(d),
        drop_points=-100.0 * sum(d) / len(d) if d else 0.0,
        drop_upper_points=upper + noise,
        drop_lower_points=lower - noise,
        bootstrap_upper_points=None,
        exact_upper_points=None,
        questions_needed=needed,
        reason=detail,
        noise_points=noise,
        bound="anytime-valid (betting confidence sequence)",
        anytime_valid=True,
    )
    return Check(name, seq.decision, detail), ni


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
            g.checks.append(
                Check("run", "fail", f"no candidate child run named {name!r} in sweep {sweep.parent_run_id}")
            )
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
                g.checks.append(
                    Check(f"not_dominated[{ax.metric}]", "fail", "dominated by " + ", ".join(v.dominated_by))
                )
    return out
