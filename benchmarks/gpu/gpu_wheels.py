"""Download the GPU check's wheels (`benchmarks/gpu/gpu_wheels.txt`) into `.whl/` and check they fit what travels.

The GPU machine has no network: what it lacks travels with the working tree, which may be 64 MiB in all. This
fetches each pinned wheel for CPython 3.12 on manylinux x86-64 (`pip download --no-deps --only-binary`), keeps
one file per requirement, and fails with one line when the wheels and the repository's own files together
would pass the budget (less a margin for what the check writes).

    python benchmarks/gpu/gpu_wheels.py            # then: carry .whl, run `bash benchmarks/gpu/gpu_check.sh`
    python benchmarks/gpu/gpu_wheels.py --check    # sizes only, nothing downloaded
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # benchmarks/gpu/ -> the repository root (.whl/ goes there)
LIST = Path(__file__).with_name("gpu_wheels.txt")
CARRY_BUDGET = 64 * 2**20  # the device tool's limit on the working tree that travels, carried paths included
MARGIN = 4 * 2**20  # room for files a session adds before it runs the check
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


class WheelError(RuntimeError):
    """What is wrong with the wheel set, in one line."""


def requirements(path: Path = LIST) -> list[tuple[str, str]]:
    """(name, version) of every pinned line; anything but `name==version` is refused."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line)
        if not m:
            raise WheelError(f"{path}:{n}: {line!r} is not `name==version` (an exact pin: the device cannot resolve)")
        out.append((m.group(1), m.group(2)))
    return out


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_for(folder: Path, name: str, version: str) -> Path | None:
    """The one wheel of `name==version` in `folder` (wheel file names normalise '-' and '.' to '_')."""
    found = [
        p
        for p in folder.glob("*.whl")
        if normalized(p.name.split("-")[0]) == normalized(name) and p.name.split("-")[1] == version
    ]
    if len(found) > 1:
        raise WheelError(
            f"{folder}: {len(found)} wheels of {name}=={version} ({', '.join(p.name for p in found)}); keep one"
        )
    return found[0] if found else None


def repo_bytes(root: Path = ROOT) -> int:
    """Bytes of what travels from the repository besides carried paths: tracked and untracked-not-ignored files."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    return sum((root / f).stat().st_size for f in listed if f and (root / f).is_file())


def check_budget(wheels: list[Path], repo: int, budget: int = CARRY_BUDGET, margin: int = MARGIN) -> int:
    """Total bytes that would travel; raises WheelError when it passes `budget - margin`."""
    total = repo + sum(w.stat().st_size for w in wheels)
    if total > budget - margin:
        heaviest = max(wheels, key=lambda w: w.stat().st_size, default=None)
        raise WheelError(
            f"wheels {sum(w.stat().st_size for w in wheels) / 2**20:.1f} MiB + repository {repo / 2**20:.1f} MiB = "
            f"{total / 2**20:.1f} MiB passes the {budget / 2**20:.0f} MiB carry budget less {margin / 2**20:.0f} MiB; drop or "
            f"replace the heaviest ({heaviest.name if heaviest else 'none'}) in {LIST.name}"
        )
    return total


def download(name: str, version: str, dest: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "-d",
        str(dest),
        f"{name}=={version}",
    ]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
        raise WheelError(f"pip download {name}=={version}: {last[-1] if last else 'failed'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=ROOT / ".whl")
    ap.add_argument("--check", action="store_true", help="only check what is in --dest")
    args = ap.parse_args(argv)
    try:
        wanted = requirements()
        args.dest.mkdir(parents=True, exist_ok=True)
        wheels = []
        for name, version in wanted:
            wheel = wheel_for(args.dest, name, version)
            if wheel is None and not args.check:
                download(name, version, args.dest)
                wheel = wheel_for(args.dest, name, version)
            if wheel is None:
                raise WheelError(f"{args.dest}: no wheel of {name}=={version}; run without --check to download it")
            wheels.append(wheel)
        strays = sorted(set(args.dest.glob("*.whl")) - set(wheels))
        if strays:  # two versions of one package stop the whole install there
            raise WheelError(
                f"{args.dest}: wheels not in {LIST.name}: {', '.join(p.name for p in strays)}; remove them"
            )
        repo = repo_bytes()
        total = check_budget(wheels, repo)
    except WheelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for w in wheels:
        print(f"{w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
    print(
        f"wheels {sum(w.stat().st_size for w in wheels) / 2**20:.1f} MiB + repository {repo / 2**20:.1f} MiB = "
        f"{total / 2**20:.1f} MiB of the {CARRY_BUDGET / 2**20:.0f} MiB carry budget (margin {MARGIN / 2**20:.0f} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
