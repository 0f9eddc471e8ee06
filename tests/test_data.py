"""The MMLU copy shipped in the package: exact bytes, row counts, the wheel carries it (and every task
config), scoring and calibration read it by default with the same results and provenance as plain JSONL,
and a relative `$SHRINKGATE_MMLU_DIR` means the same files in a child started in another directory.

When the sibling `../shared/data/mmlu` exists beside the clone, the shipped copy must equal it byte for
byte (a difference fails); without it only the shipped sums are checked.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
import yaml
from scripted_lm import ScriptedLM

import pipeline.data.mmlu as data_mmlu
from pipeline.config.recipe import EvalSpec
from pipeline.data.mmlu import SHIPPED_DIR, SPLITS, SUMS_FILE, MMLUDataError, resolve_data
from pipeline.env import MMLU_DIR_ENV

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "mmlu"
ROWS = {"test": 14_042, "dev": 285, "validation": 1_531}
SHIPPED_FILES = {f"{s}.jsonl.gz" for s in SPLITS} | {SUMS_FILE, "README.md", "LICENSE"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sums() -> dict[str, str]:
    out = {}
    for line in (SHIPPED_DIR / SUMS_FILE).read_text(encoding="utf-8").splitlines():
        digest, name = line.split()
        out[name] = digest
    return out


def _uncompressed(split: str) -> bytes:
    return gzip.decompress((SHIPPED_DIR / f"{split}.jsonl.gz").read_bytes())


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped copy decompressed by hand (plain .jsonl), to compare the .gz reading path against."""
    d = tmp_path_factory.mktemp("mmlu-plain")
    for split in SPLITS:
        (d / f"{split}.jsonl").write_bytes(_uncompressed(split))
    return d


@pytest.fixture
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MMLU_DIR_ENV, raising=False)


# ------------------------------------------------------------------------------------- the bytes


def test_shipped_files_are_all_there() -> None:
    assert {p.name for p in SHIPPED_DIR.iterdir() if p.is_file()} == SHIPPED_FILES
    assert (
        "MIT License" in (SHIPPED_DIR / "LICENSE").read_text()
        and "Dan Hendrycks" in (SHIPPED_DIR / "LICENSE").read_text()
    )


def test_shipped_data_decompresses_to_its_sums_and_row_counts() -> None:
    sums = _sums()
    assert set(sums) == {f"{s}.jsonl" for s in SPLITS}
    for split in SPLITS:
        raw = _uncompressed(split)
        assert _sha(raw) == sums[f"{split}.jsonl"], f"{split}.jsonl.gz does not decompress to its SHA256SUMS entry"
        rows = [json.loads(line) for line in raw.decode("utf-8").split("\n") if line]
        assert len(rows) == ROWS[split] == raw.count(b"\n")
        assert len({r["subject"] for r in rows}) == 57
    # The sums are the ones the data's own README documents.
    readme = (SHIPPED_DIR / "README.md").read_text(encoding="utf-8")
    documented = dict(re.findall(r"^\| `(\w+\.jsonl)` \| [\d,]+ \| [\d,]+ \| `([0-9a-f]{64})` \|$", readme, re.M))
    assert documented == sums


def test_shipped_gzip_is_reproducible() -> None:
    # `gzip -9n`: no file name and mtime 0 in the header, so the same data gives the same bytes.
    for split in SPLITS:
        head = (SHIPPED_DIR / f"{split}.jsonl.gz").read_bytes()[:10]
        assert head[:3] == b"\x1f\x8b\x08", split
        assert head[3] == 0, f"{split}.jsonl.gz header carries a file name or other fields (use gzip -9n)"
        assert head[4:8] == b"\0\0\0\0", f"{split}.jsonl.gz header carries an mtime (use gzip -9n)"


def test_shipped_data_equals_the_shared_copy_when_present() -> None:
    shipped = {f"{s}.jsonl": _sha(_uncompressed(s)) for s in SPLITS}
    assert shipped == _sums()
    if not SHARED.is_dir():
        return  # no sibling folder (a fresh clone elsewhere): the sums above are the check
    shared = {f"{s}.jsonl": _sha((SHARED / f"{s}.jsonl").read_bytes()) for s in SPLITS}
    assert shipped == shared, f"the shipped MMLU copy differs from {SHARED}"
    assert (SHIPPED_DIR / "README.md").read_bytes() == (SHARED / "README.md").read_bytes()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda raw: gzip.compress(raw.replace(b'"answer": 1', b'"answer": 2', 1)),
            r"sha256 of the uncompressed data .*reinstall",
        ),
        (lambda raw: gzip.compress(raw)[:1000], r"not a complete gzip file .*reinstall"),
    ],
    ids=["one-answer-changed", "truncated"],
)
def test_damaged_shipped_copy_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_override: None, damage, message
) -> None:
    fake = tmp_path / "mmlu_data"
    shutil.copytree(SHIPPED_DIR, fake)
    (fake / "dev.jsonl.gz").write_bytes(damage(_uncompressed("dev")))
    monkeypatch.setattr(data_mmlu, "SHIPPED_DIR", fake)
    with pytest.raises(MMLUDataError, match=r"dev\.jsonl\.gz: " + message) as err:
        resolve_data(EvalSpec(subjects=["anatomy"]))
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------- the wheel


def _source_copy(tmp_path: Path) -> Path:
    """What a build reads, copied, so building leaves no build/ folder in the working tree."""
    src = tmp_path / "src"
    for folder in ("pipeline", "evals"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    return src


def test_wheel_carries_the_data_and_every_task_config(tmp_path: Path) -> None:
    src = _source_copy(tmp_path)
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), "."],
        cwd=src,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (wheel,) = dist.glob("shrinkgate-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for name in SHIPPED_FILES:
            arc = f"pipeline/data/mmlu_data/{name}"
            assert arc in names, f"wheel lacks {arc}"
            assert zf.read(arc) == (SHIPPED_DIR / name).read_bytes()
        # The top-level evals/ installs as pipeline/evals/, byte for byte.
        configs = [p.name for p in (REPO / "evals" / "mmlu").iterdir() if p.is_file()]
        assert len([n for n in configs if n.startswith("shrinkgate_mmlu_")]) == 57
        for name in configs:
            arc = f"pipeline/evals/mmlu/{name}"
            assert arc in names, f"wheel lacks evals config {name}"
            assert zf.read(arc) == (REPO / "evals" / "mmlu" / name).read_bytes()
        # pyproject lists the packages (to map evals/): a subpackage left off the list would be missing here.
        modules = {
            p.relative_to(REPO).as_posix() for p in (REPO / "pipeline").rglob("*.py") if "__pycache__" not in p.parts
        }
        assert modules - names == set(), "pyproject.toml [tool.setuptools] packages lacks these modules' packages"
        zf.extractall(tmp_path / "site")

    # A non-editable install: the unpacked wheel finds its shipped data and materialises all tasks.
    code = (
        "import pathlib, sys, tempfile, pipeline\n"
        "from pipeline.config.recipe import EvalSpec\n"
        "from pipeline.data.mmlu import resolve_data\n"
        "from pipeline.data.tasks import EVALS_DIR, materialize_tasks\n"
        "d = resolve_data(EvalSpec())\n"
        "out = materialize_tasks(d, pathlib.Path(tempfile.mkdtemp()))\n"
        "print(pipeline.__file__, d.origin, d.data_dir, EVALS_DIR, sum(d.test_rows.values()), len(list(out.glob('shrinkgate_mmlu_*.yaml'))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != MMLU_DIR_ENV} | {"PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True, text=True, timeout=120
    )
    module, origin, data_dir, evals_dir, rows, tasks = out.stdout.split()
    site = str((tmp_path / "site").resolve())
    assert module.startswith(site) and data_dir.startswith(site), out.stdout
    assert evals_dir == str(Path(site) / "pipeline" / "evals" / "mmlu"), out.stdout
    assert (origin, int(rows), int(tasks)) == ("shipped", ROWS["test"], 57)


def test_editable_install_reads_the_top_level_evals(tmp_path: Path) -> None:
    """`pip install -e .` (the README's install): the package is the checkout's, the task configs its evals/."""
    src = _source_copy(tmp_path)
    code = "import sys; from setuptools.build_meta import build_editable\nprint(build_editable(sys.argv[1]))\n"
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "dist")],
        cwd=src,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("shrinkgate-*.whl")
    assert wheel.name == out.stdout.split()[-1]
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path / "site")
    (finder,) = (tmp_path / "site").glob("__editable__*_finder.py")
    # The venv's own editable install (of the working tree) leaves; the one just built comes in, as its .pth would.
    code = (
        "import importlib.util, sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, '__name__', '') != '_EditableFinder']\n"
        "spec = importlib.util.spec_from_file_location('built_finder', sys.argv[1])\n"
        "finder = importlib.util.module_from_spec(spec); spec.loader.exec_module(finder); finder.install()\n"
        "import pipeline; from pipeline.data.tasks import EVALS_DIR\n"
        "print(pipeline.__file__, EVALS_DIR, len(list(EVALS_DIR.glob('shrinkgate_mmlu_*.yaml'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code, str(finder)],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    module, evals_dir, tasks = out.stdout.split()
    assert module == str(src.resolve() / "pipeline" / "__init__.py"), out.stdout
    assert (evals_dir, int(tasks)) == (str(src.resolve() / "evals" / "mmlu"), 57)


# -------------------------------------------------------------------------------- default source


def test_default_source_is_the_shipped_copy(no_override: None) -> None:
    data = resolve_data(EvalSpec())
    assert (data.source, data.origin, data.data_dir) == ("local", "shipped", SHIPPED_DIR)
    assert {s: p.name for s, p in data.files.items()} == {s: f"{s}.jsonl.gz" for s in SPLITS}
    assert sum(data.test_rows.values()) == ROWS["test"]
    assert data.description.startswith("shipped ")


def test_order_data_dir_then_env_then_shipped(plain_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    shutil.copytree(plain_dir, other)
    monkeypatch.setenv(MMLU_DIR_ENV, str(plain_dir))
    assert resolve_data(EvalSpec(subjects=["anatomy"])).origin == f"${MMLU_DIR_ENV}"
    spec = EvalSpec(subjects=["anatomy"], data_dir=str(other))
    assert (resolve_data(spec).origin, resolve_data(spec).data_dir) == ("eval.data_dir", other.resolve())


def _scripted_lm() -> ScriptedLM:
    """An lm-eval LM that picks a choice from a hash of the prompt (so answers vary) and records every request."""
    return ScriptedLM(lambda req: zlib.crc32(req.args[0].encode()) % 4)


def test_scoring_the_shipped_copy_equals_plain_jsonl_per_question(plain_dir: Path, no_override: None) -> None:
    from pipeline.runtime.mmlu import score_mmlu

    subjects = ["college_mathematics", "nutrition", "professional_law"]
    dirs: dict[str, str | None] = {"shipped": None, "plain": str(plain_dir)}
    if SHARED.is_dir():
        dirs["shared"] = str(SHARED)
    runs = {}
    for name, data_dir in dirs.items():
        lm = _scripted_lm()
        result = score_mmlu(lm, EvalSpec(subjects=subjects, limit_per_subject=4, num_fewshot=5, data_dir=data_dir))
        runs[name] = (dict(lm.requests), result)
    ref_requests, ref = runs["shipped"]
    assert len(ref.questions) == 12 and 0 < ref.acc < 1
    for name, (requests, result) in runs.items():
        assert requests == ref_requests, f"prompts differ: shipped vs {name}"
        assert result.questions == ref.questions, f"per-question outcomes differ: shipped vs {name}"
        assert (result.acc, result.per_subject) == (ref.acc, ref.per_subject)


def test_calibration_and_heldout_read_the_shipped_copy_with_unchanged_provenance(
    plain_dir: Path, no_override: None
) -> None:
    from pipeline.data.calibration import heldout_texts, load_calibration

    shipped = load_calibration(None, 24)
    plain = load_calibration(None, 24, data_dir=plain_dir)
    assert shipped.kind == plain.kind == "mmlu-local"
    assert shipped.file_sha256 == plain.file_sha256 == _sums()["validation.jsonl"]  # hash of the uncompressed bytes
    assert (shipped.texts, shipped.sha256, shipped.excluded_test_duplicates) == (
        plain.texts,
        plain.sha256,
        plain.excluded_test_duplicates,
    )
    assert shipped.excluded_test_duplicates > 0  # the test split (.gz) was read for the duplicate check
    assert heldout_texts(16) == heldout_texts(16, data_dir=plain_dir)


def test_data_package_imports_no_torch_lm_eval_or_mlflow() -> None:
    code = (
        "import sys, pipeline.data.mmlu, pipeline.data.sampling, pipeline.data.estimates, pipeline.data.tasks, pipeline.data.calibration\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lm_eval', 'mlflow')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- env paths, absolute


def _mmlu_subset(src: Path, dst: Path, subject: str = "anatomy") -> Path:
    dst.mkdir(parents=True)
    for split in SPLITS:
        lines = (src / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        (dst / f"{split}.jsonl").write_text(
            "\n".join(ln for ln in lines if f'"subject": "{subject}"' in ln) + "\n", encoding="utf-8"
        )
    return dst


def test_cli_makes_a_relative_data_dir_absolute_for_children(tmp_path: Path) -> None:
    (tmp_path / "mmlu").mkdir()
    (tmp_path / "cwd").mkdir()
    code = "import os, pipeline.cli as cli\ncli.app = lambda: print(os.environ['SHRINKGATE_MMLU_DIR'])\ncli.main()\n"
    env = {**os.environ, MMLU_DIR_ENV: "../mmlu"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path / "cwd",
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == str((tmp_path / "mmlu").resolve())


def test_validate_with_a_relative_data_dir_from_another_cwd(
    tmp_path: Path, tiny_model_dir: Path, plain_dir: Path
) -> None:
    data = _mmlu_subset(plain_dir, tmp_path / "data" / "mmlu")
    work = tmp_path / "elsewhere"
    work.mkdir()
    recipe = work / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "rel",
                "models": [{"name": "tiny", "source": str(tiny_model_dir), "role": "candidate"}],
                "variants": [{"name": "none", "method": "none"}],
                "eval": {"num_fewshot": 0, "subjects": ["anatomy"], "limit_per_subject": 1},
                "speed": {"prompt_tokens": 8, "new_tokens": 2},
            }
        )
    )
    shrinkgate = Path(sys.executable).with_name("shrinkgate")
    env = {**os.environ, MMLU_DIR_ENV: os.path.relpath(data, work)}
    ok = subprocess.run(
        [str(shrinkgate), "validate", "recipe.yaml"], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The relative path really is read from that cwd: one naming another subject fails, naming it.
    bad = subprocess.run(
        [str(shrinkgate), "validate", "recipe.yaml"],
        cwd=work,
        env={**env, MMLU_DIR_ENV: "../nowhere"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and str((tmp_path / "nowhere").resolve()) in bad.stderr.replace("\n", ""), bad.stderr
