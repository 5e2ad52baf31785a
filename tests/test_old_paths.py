"""Import paths from before the package was split into layers keep working, each in a fresh
interpreter: modules (``lightning_sparsity.budget``, ``.guard``, ``.controller``, ``.oneshot``,
``.sweeps``, ``.sweep_ray``), the console script ``lightning_sparsity.cli:main``, YAML
``class_path`` s of either spelling, and a pickle that names an old module."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

from tests.test_packaging import ROOT, run

OLD_MODULES = [
    # old path, new path, names users imported from it
    ("budget", "control.budget", ("FlopBudget", "BudgetDecision", "parse_flops")),
    ("guard", "control.guard", ("MetricGuard",)),
    ("controller", "control.controller", ("SparsityController", "HistoryPoint")),
    ("oneshot", "control.oneshot", ("prune_to_flops",)),
    ("sweep_ray", "sweeps.ray", ("run_ray", "DEFAULT_RESOURCES")),
]


def test_each_old_module_path_is_the_module_at_its_new_path() -> None:
    checks = "".join(
        f"""
from lightning_sparsity.{old} import {", ".join(names)}
import lightning_sparsity.{old} as old
import lightning_sparsity.{new} as new
assert old is new, (old, new)
assert new.__spec__.name == "lightning_sparsity.{new}", new.__spec__
assert {" and ".join(f"{n} is new.{n}" for n in names)}
print(new.__name__)
"""
        for old, new, names in OLD_MODULES
    )
    sweeps = """
from lightning_sparsity.sweeps import (
    SEEDS, RunSpec, SweepError, collect_results, format_clock, frontier_rows, plan,
    run_one, sweep, write_frontier, write_json,
)
import lightning_sparsity as ls
assert sweep is ls.sweep and format_clock(75.2) == "1:15"
print(plan(["50%"], [0])[1].name)
"""
    out = run(checks + sweeps)
    assert out.split() == [f"lightning_sparsity.{new}" for _, new, _ in OLD_MODULES] + [
        "budget50%_seed0"
    ]


def test_the_console_script_entry_point_loads_main() -> None:
    # the console script is whatever pyproject's [project.scripts] names
    out = run(
        """
        from importlib.metadata import entry_points
        (script,) = entry_points(group="console_scripts", name="lightning-sparsity")
        from lightning_sparsity.cli import CliError, main
        assert script.value == "lightning_sparsity.cli:main", script.value
        assert script.load() is main
        print(main(["count", "nope.module:factory", "--input-shape", "1,4"]))
        """
    )
    assert out.split() == ["2"]  # a user error: one line, exit 2


def test_a_config_class_path_of_either_spelling_builds_the_budget(tmp_path: Path) -> None:
    configs = []
    for i, class_path in enumerate(
        ["lightning_sparsity.FlopBudget", "lightning_sparsity.budget.FlopBudget"]
    ):
        config = tmp_path / f"config{i}.yaml"
        config.write_text(
            (ROOT / "configs" / "digits_budget.yaml")
            .read_text()
            .replace("class_path: lightning_sparsity.FlopBudget", f"class_path: {class_path}")
        )
        assert class_path in config.read_text()
        configs.append(str(config))
    out = run(
        f"""
        import lightning_sparsity as ls
        from lightning_sparsity.lightning_cli import sparsity_cli
        for config in {configs!r}:
            cli = sparsity_cli(["--config", config], run=False)  # built, not fitted
            (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, ls.SparsityCallback)]
            print(type(callback.budget) is ls.FlopBudget, callback.budget.target)
        """
    )
    assert out.split() == ["True", "20%", "True", "20%"]  # the config's target


def test_a_pickle_naming_an_old_module_loads(tmp_path: Path) -> None:
    # a pickle as the code before the split wrote it: classes named by their old module
    import lightning_sparsity as ls

    budget = ls.FlopBudget("25%", by_epoch=3)
    cls = type(budget)
    saved = cls.__module__
    try:
        cls.__module__ = "lightning_sparsity.budget"
        data = pickle.dumps(budget)
    finally:
        cls.__module__ = saved
    assert b"lightning_sparsity.budget" in data
    assert b"control" not in data
    path = tmp_path / "budget.pkl"
    path.write_bytes(data)
    out = run(
        textwrap.dedent(
            f"""
            import pickle
            budget = pickle.loads(open({str(path)!r}, "rb").read())
            print(type(budget).__module__, budget.target, budget.by_epoch)
            """
        )
    )
    assert out.split() == ["lightning_sparsity.control.budget", "25%", "3"]
