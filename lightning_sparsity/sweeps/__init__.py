"""Budget sweeps: one LightningCLI fit per (budget, seed) of a config, and the frontier.

With ``scores``: one fit per (pruning criterion, budget, seed), one frontier line per criterion.

- :mod:`.runs`: the plan (:class:`RunSpec`), each run's config, one fit, the results on disk;
- :mod:`.frontier`: the accuracy–FLOPs frontier from those results (rows, table, plot);
- :mod:`.sweep`: :func:`sweep`, the loop (in this process, or Ray Tune trials: :mod:`.ray`).
"""

from lightning_sparsity._files import write_json
from lightning_sparsity._text import clock as format_clock
from lightning_sparsity.sweeps.frontier import frontier_rows, write_frontier
from lightning_sparsity.sweeps.runs import (
    SEEDS,
    RunSpec,
    SweepError,
    collect_results,
    plan,
    run_one,
)
from lightning_sparsity.sweeps.sweep import PlannedRun, SweepPlan, sweep, sweep_plan

__all__ = [
    "SEEDS",
    "PlannedRun",
    "RunSpec",
    "SweepError",
    "SweepPlan",
    "collect_results",
    "format_clock",
    "frontier_rows",
    "plan",
    "run_one",
    "sweep",
    "sweep_plan",
    "write_frontier",
    "write_json",
]
