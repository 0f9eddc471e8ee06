"""A sequential sample run look by look, base and variants together (`pipeline.sweep.lockstep`), simulated: the
false-pass rate at a true drop equal to the margin stays at alpha, and the base stops when its last variant is
decided."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.sampling import look_sizes
from pipeline.sweep.lockstep import LockStep, Member

CONFIDENCE, MARGIN = 0.95, 3.0
MAX, STEP, POPULATION = 2000, 100, 14042
DISCORDANCE = 0.12
ORDER = tuple(("s", i) for i in range(MAX))
SIZES = look_sizes(STEP, MAX)


def _answers(rng, base: np.ndarray, drop_points: float) -> np.ndarray:
    """A variant of `base`: losses and gains around a true drop of `drop_points` at DISCORDANCE."""
    drop = drop_points / 100.0
    p_loss, p_gain = (DISCORDANCE + drop) / 2, (DISCORDANCE - drop) / 2
    u = rng.random(base.size)
    lose = base & (u < 2 * p_loss)  # base right (half of the questions): right -> wrong
    gain = ~base & (u < 2 * p_gain)
    return np.where(lose, False, np.where(gain, True, base))


def _run(
    members: list[Member], answers: dict[str, np.ndarray], *, fail: set[str] = frozenset()
) -> tuple[LockStep, list[tuple]]:
    """Drive the controller as the sweep's driver does: a "go" scores the member's next look (a member in `fail`
    crashes instead), a "stop" ends it."""
    step = LockStep(
        members,
        ORDER,
        SIZES,
        MARGIN,
        CONFIDENCE,
        POPULATION,
        correct=lambda run_id, keys: answers[run_id][: len(keys)],
    )
    log = []
    while (action := step.next_action()) is not None:
        kind, run_id, reason = action
        log.append(action)
        m = next(x for x in members if x.run_id == run_id)
        if kind == "go" and run_id in fail:
            step.ended(run_id, told=False)
        elif kind == "go":
            step.scored(run_id, next(n for n in SIZES if n > m.scored))
        else:
            step.ended(run_id, told=True)
    return step, log


def _sweep() -> list[Member]:
    return [
        Member("base", "m/none", "m", "llama.cpp", "base"),
        Member("at", "m/at-margin", "m", "llama.cpp", "variant"),
        Member("same", "m/same", "m", "llama.cpp", "variant"),
        Member("worse", "m/worse", "m", "llama.cpp", "variant"),
        Member("ref", "ref/none", "ref", "llama.cpp", "reference"),
    ]


def test_lockstep_false_pass_rate_and_the_base_stops_with_its_last_variant():
    rng = np.random.default_rng(2027)
    sweeps, false_pass = 1000, 0
    decided_same = []
    for _ in range(sweeps):
        base = rng.random(MAX) < 0.5
        answers = {
            "base": base,
            "at": _answers(rng, base, MARGIN),  # every pass of this one is false
            "same": _answers(rng, base, 0.0),
            "worse": _answers(rng, base, 2 * MARGIN),
            "ref": rng.random(MAX) < 0.4,
        }
        members = _sweep()
        step, log = _run(members, answers)
        by = {m.run_id: m for m in members}
        false_pass += by["at"].stopped.startswith("pass")
        # the base scores exactly as far as its last undecided variant needed, the reference as far as the base
        assert by["base"].scored == max(by[v].scored for v in ("at", "same", "worse"))
        assert by["ref"].scored == by["base"].scored
        assert all(m.done and not m.failed for m in members)
        # one look at a time, base first: no variant ever scores a look its base has not finished
        seen = {}
        for kind, run_id, _ in log:
            if kind == "go":
                seen[run_id] = seen.get(run_id, 0) + 1
                if run_id in ("at", "same", "worse"):
                    assert seen.get("base", 0) >= seen[run_id]
        decided_same.append(by["same"].scored)
        assert by["worse"].stopped.startswith(("fail", "undecided"))
    rate = false_pass / sweeps
    print(
        f"\nlock-step: false-pass rate {rate:.3f} at a true drop equal to the {MARGIN:g}-point margin over {sweeps} sweeps; "
        f"a 0-point variant stops after {np.mean(decided_same):.0f} questions on average"
    )
    assert rate <= 1 - CONFIDENCE
    assert np.median(decided_same) < MAX  # the good variant usually stops early


def test_a_base_without_variants_scores_all_and_a_failed_base_stops_its_variants():
    rng = np.random.default_rng(1)
    alone = [
        Member("base", "m/none", "m", "transformers", "base"),
        Member("ref", "r/none", "r", "transformers", "reference"),
    ]
    step, _ = _run(alone, {"base": rng.random(MAX) < 0.5, "ref": rng.random(MAX) < 0.5})
    assert [m.scored for m in alone] == [MAX, MAX]
    members = _sweep()
    base = rng.random(MAX) < 0.5
    answers = {"base": base, "at": base, "same": base, "worse": base, "ref": base}
    _run(members, answers, fail={"base"})
    by = {m.run_id: m for m in members}
    assert by["base"].failed and all("failed" in by[v].stopped and by[v].scored == 0 for v in ("at", "same", "worse"))
    assert by["ref"].done


def test_a_resumed_sweep_starts_at_the_last_finished_look():
    """Members that bring finished looks from an unfinished earlier run (here: 400 questions) are not asked to score
    those again; decisions are taken from what they bring."""
    rng = np.random.default_rng(5)
    base = rng.random(MAX) < 0.5
    answers = {
        "base": base,
        "at": _answers(rng, base, MARGIN),
        "same": base,
        "worse": _answers(rng, base, 2 * MARGIN),
        "ref": base,
    }
    members = _sweep()
    for m in members:
        m.scored = 400
    _, log = _run(members, answers)
    first_go = next((i for i, a in enumerate(log) if a[0] == "go"), None)
    stopped_before = [a[1] for a in log[: first_go if first_go is not None else len(log)] if a[0] == "stop"]
    # a variant the first 400 questions already decide stops without scoring anything more
    assert "same" in stopped_before or "worse" in stopped_before
    assert all(next(x for x in members if x.run_id == rid).scored >= 400 for rid in ("base", "at", "same", "worse"))
    # no look up to 400 is scored again: each member's first "go" takes it from 400 to 800
    by = {m.run_id: m for m in members}
    gos = [rid for kind, rid, _ in log if kind == "go"]
    assert len(gos) <= sum(len([n for n in SIZES if n > 400 and n <= by[rid].scored]) for rid in by)


@pytest.mark.parametrize("prior", [0, 100])
def test_the_reference_follows_the_furthest_base(prior):
    rng = np.random.default_rng(9)
    members = [
        Member("b1", "a/none", "a", "llama.cpp", "base", scored=prior),
        Member("v1", "a/q", "a", "llama.cpp", "variant", scored=prior),
        Member("b2", "b/none", "b", "llama.cpp", "base", scored=prior),
        Member("v2", "b/q", "b", "llama.cpp", "variant", scored=prior),
        Member("ref", "r/none", "r", "llama.cpp", "reference", scored=prior),
    ]
    base = rng.random(MAX) < 0.5
    answers = {"b1": base, "v1": base, "b2": base, "v2": _answers(rng, base, MARGIN), "ref": base}
    _run(members, answers)
    by = {m.run_id: m for m in members}
    assert by["b1"].scored == by["v1"].scored and by["b2"].scored == by["v2"].scored
    assert by["ref"].scored == max(by["b1"].scored, by["b2"].scored)
