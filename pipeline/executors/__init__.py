"""Executors other than the local one (`pipeline.sweep.run_sweep`): where each model x variant runs.

`ray_executor.run_sweep_ray` runs every child as a Ray task on a local Ray or a cluster; the driver keeps
the parent run and every child run id, so the MLflow store looks the same as after a local sweep.
Imported lazily by the CLI: `ray` is an optional extra (`pip install -e '.[ray]'`).
"""

__all__ = ["run_sweep_ray"]


def __getattr__(name: str):
    if name == "run_sweep_ray":
        from pipeline.executors.ray_executor import run_sweep_ray

        return run_sweep_ray
    raise AttributeError(name)
