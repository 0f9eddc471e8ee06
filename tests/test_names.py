"""Every tag, metric, param and note name is spelled once, in pipeline/metrics.py."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1] / "pipeline"
# a dotted or underscored lower-case name: what a stored tag/metric looks like ("mmlu.design", "decode_tok_s")
NAME = re.compile(r"[a-z][a-z0-9]*([._][a-z0-9]+)+")


def _strings(tree: ast.AST):
    return (n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def test_no_stored_name_is_spelled_outside_metrics():
    names = {n.value for n in _strings(ast.parse((ROOT / "metrics.py").read_text())) if NAME.fullmatch(n.value)}
    assert len(names) > 100  # the guard reads metrics.py, not an empty set
    hits = [
        f"{p.relative_to(ROOT)}:{n.lineno}: {n.value!r}"
        for p in sorted(ROOT.rglob("*.py"))
        if p.name != "metrics.py"
        for n in _strings(ast.parse(p.read_text()))
        if n.value in names
    ]
    assert hits == [], "use the pipeline.metrics constant:\n" + "\n".join(hits)


def test_no_stored_name_is_built_from_a_prefix_spelled_outside_metrics():
    """f"frontier.{metric}" and the like: a name built from a stored prefix uses the metrics constant too."""
    prefixes = tuple(
        n.value for n in _strings(ast.parse((ROOT / "metrics.py").read_text())) if re.fullmatch(r"[a-z_]+\.", n.value)
    )
    assert "frontier." in prefixes and "provenance." in prefixes
    hits = [
        f"{p.relative_to(ROOT)}:{n.lineno}: {n.values[0].value!r}"
        for p in sorted(ROOT.rglob("*.py"))
        if p.name != "metrics.py"
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.JoinedStr)
        and n.values
        and isinstance(n.values[0], ast.Constant)
        and n.values[0].value in prefixes
    ]
    assert hits == [], "use the pipeline.metrics prefix constant:\n" + "\n".join(hits)
