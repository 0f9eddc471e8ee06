"""The verdict side: works only on what `pipeline.tracking` wrote, so it runs on any past sweep.

stats      paired statistics on per-question outcomes (McNemar, bootstrap, the one bound rule, non-inferiority)
design     how a run's questions were chosen (all, first-n, stratified, sequential), read back from its tags
stratified bounds for a sample stratified by subject (weighted; Korn-Graubard exact side)
sequential the anytime-valid paired test and its bounds
paired     a pair of runs compared by the rule their design allows (gate, dominance margins, compare)
frontier   dominance verdicts on speed and size axes, the baseline ladder
analysis   a sweep's bases, paired comparisons, verdicts, table rows, per-subject deltas (pure)
gate       a policy checked against a sweep: `evaluate(sweep, policy)` (pure)
writes     what the gate and the sweep's verdict write on each run, and what a pass registers (pure)
units      how numbers read in reports and check details
render     compare's Markdown, review page, CSV and console table
gate_report the gate's Markdown, JUnit XML, console table and closing verdict line
plots      Pareto and per-subject PNGs (matplotlib)
commands   run_compare, log_sweep_report, run_gate: read through tracking, write files, tags, registry
"""

from pipeline.verdict.analysis import SweepAnalysis, analyze
from pipeline.verdict.commands import CompareResult, log_sweep_report, run_compare, run_gate
from pipeline.verdict.gate import GateResult, evaluate

__all__ = [
    "CompareResult",
    "GateResult",
    "SweepAnalysis",
    "analyze",
    "evaluate",
    "log_sweep_report",
    "run_compare",
    "run_gate",
]
