"""What every command shares: the typer app, the consoles, one-line user errors (exit 2), a checked recipe."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Is this quantized or pruned model really better than a smaller published model?",
)
# Logs and CI pipes have no terminal width; 160 columns keeps table rows on one line there.
console = Console() if Console().is_terminal else Console(width=160)
err_console = Console(stderr=True)


def user_errors() -> tuple[type[BaseException], ...]:
    from pipeline.config.recipe import RecipeError
    from pipeline.data.mmlu import MMLUDataError
    from pipeline.env import DeviceUnavailable
    from pipeline.methods import MethodError
    from pipeline.models import ModelError
    from pipeline.tracking import TrackingError

    return (RecipeError, ModelError, MMLUDataError, TrackingError, MethodError, DeviceUnavailable)


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def split_csv(csv: str | None) -> list[str] | None:
    return [s.strip() for s in csv.split(",") if s.strip()] if csv else None


def parse_batch_sizes(csv: str | None) -> list[int] | None:
    """The whole numbers >= 1 of a comma-separated --batch-sizes; None when it was not given. Anything else exits 2."""
    if csv is None:
        return None
    sizes = []
    for item in split_csv(csv) or [csv]:
        try:
            size = int(item)
        except ValueError:
            size = 0  # refused below like any size < 1
        if size < 1:
            fail(
                f"--batch-sizes: {item!r} is not a whole number >= 1; give comma-separated batch sizes, e.g. --batch-sizes 1,8,64"
            )
        sizes.append(size)
    return sizes


def load_checked(recipe_path: Path, **overrides):
    from pipeline.config.recipe import apply_overrides, load_recipe
    from pipeline.runtime import check_runtime_names, check_runtimes
    from pipeline.variants.plan import check_recipe, preflight

    recipe = apply_overrides(
        check_runtime_names(check_recipe(load_recipe(recipe_path), recipe_path), str(recipe_path)), **overrides
    )
    preflight(recipe)
    check_runtimes(recipe, str(recipe_path))
    if recipe.speed.target_hardware:
        from pipeline.config.recipe import RecipeError
        from pipeline.predict.hardware import HardwareError, check_name

        try:
            check_name(recipe.speed.target_hardware)
        except HardwareError as exc:
            raise RecipeError(
                f"{recipe_path}: field speed.target_hardware: {exc.args[0].removeprefix('--hardware ')} -> use one of them or remove the key"
            ) from None
    return recipe
