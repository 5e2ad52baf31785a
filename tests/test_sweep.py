"""Budget sweeps end to end: runs, frontier files, TensorBoard, kill and restart, errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from lightning_sparsity.cli import main
from lightning_sparsity.pruning.scores import SCORES, random_scores
from lightning_sparsity.sweeps import RunSpec, SweepError, frontier_rows, plan, sweep
from lightning_sparsity.sweeps.frontier import frontier_figure
from tests.tb_views import experiment_shown, layout_shown, ticked

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers",
    "ignore:.*is smaller than the logging interval",
)

# the digits demo, small: the budget lands after 2 epochs, 6 batches per epoch
CONFIG = """
seed_everything: 0
trainer:
  max_epochs: 2
  accelerator: cpu
  deterministic: true
  limit_train_batches: 6
  limit_val_batches: 2
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning_sparsity.SparsityCallback
      init_args:
        per_layer: false
        verbose: false
        pruning:
          class_path: lightning_sparsity.MagnitudePruner
          init_args:
            keep_first_dense: true
        budget:
          class_path: lightning_sparsity.FlopBudget
          init_args:
            target: 20%
            by_epoch: 2
            action: adjust
model:
  class_path: lightning_sparsity.demo.DigitsCNN
data:
  class_path: lightning_sparsity.demo.DigitsDataModule
"""


def config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def scalars(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_plan() -> None:
    runs = plan(["50%", "25%"], [0, 1])
    assert [r.name for r in runs] == [
        "baseline_seed0",
        "budget50%_seed0",
        "budget50%_seed1",
        "budget25%_seed0",
        "budget25%_seed1",
    ]
    assert [r.name for r in plan(sparsities=[0.5], seeds=[3], baseline=False)] == [
        "sparsity0.5_seed3"
    ]


def test_frontier_rows_mean_std_delta_and_pareto() -> None:
    def run(label: str, metric: float, flops: float) -> dict:
        return {"label": label, "status": "done", "metric": metric, "flops_sparse": flops,
                "flops_ratio": flops / 100, "params_nonzero": flops}  # fmt: skip

    results = [
        run("dense", 0.9, 100),
        run("50%", 0.92, 50),
        run("50%", 0.90, 50),
        run("25%", 0.80, 25),
        run("25%", 0.84, 25),
        run("40%", 0.85, 40),  # worse than 50% at more FLOPs than 25%: dominated? no:
        {"label": "10%", "status": "failed", "error": "boom"},
    ]
    rows = {r["label"]: r for r in frontier_rows(results)}
    assert rows["50%"]["metric_mean"] == pytest.approx(0.91)
    # sample std of (0.92, 0.90): sqrt(((0.01)^2 * 2) / 1) = 0.014142...
    assert rows["50%"]["metric_std"] == pytest.approx(0.0141421356)
    assert rows["50%"]["delta"] == pytest.approx(0.01)
    assert rows["25%"]["delta"] == pytest.approx(-0.08)
    # 50% beats dense at fewer FLOPs; 40% is beaten by 50%? no: 50% has more FLOPs, so 40%
    # (0.85 at 40) is on the front beside 25% (0.82 at 25) and 50% (0.91 at 50)
    assert {k: r["pareto"] for k, r in rows.items()} == {
        "dense": False,
        "50%": True,
        "25%": True,
        "40%": True,
        "10%": False,
    }
    assert (rows["10%"]["runs"], rows["10%"]["failed"]) == (0, 1)
    # lower is better: the loss frontier keeps the lowest loss per FLOPs
    rows = {r["label"]: r for r in frontier_rows(results, mode="min")}
    assert rows["25%"]["pareto"]
    assert not rows["50%"]["pareto"]


def test_sweep_of_two_budgets_two_seeds_and_a_baseline(tmp_path: Path) -> None:
    out = tmp_path / "out"
    results = sweep(
        config(tmp_path), ["50%", "20%"], seeds=[0, 1], monitor="val_acc", output=out,
        echo=lambda line: None,
    )  # fmt: skip
    assert [r["name"] for r in results] == [
        "baseline_seed0",
        "budget50%_seed0",
        "budget50%_seed1",
        "budget20%_seed0",
        "budget20%_seed1",
    ]
    assert all(r["status"] == "done" for r in results)
    frontier = json.loads((out / "frontier.json").read_text())
    assert frontier["runs"] == results
    for run in results:
        run_dir = Path(run["log_dir"])
        # the run's own report
        report = json.loads((run_dir / "sparsity_report.json").read_text())
        assert run["flops_sparse"] == report["total"]["flops_sparse"]
        assert run["params_nonzero"] == report["total"]["params_nonzero"]
        # its TensorBoard final scalars, read back as TensorBoard does
        acc = scalars(run_dir)
        final = acc.Scalars("sparsity/final_flops_sparse_per_example")[-1].value
        assert final == pytest.approx(run["flops_sparse"], rel=1e-6)  # float32 events
        assert acc.Scalars("sparsity/final_flops_ratio")[-1].value == pytest.approx(
            run["flops_ratio"], rel=1e-6
        )
        assert acc.Scalars("val_acc")[-1].value == pytest.approx(run["metric"], rel=1e-6)
        # one HParams entry per run: the sweep's seed and budget, the module's settings
        content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert hparams["sweep/seed"].number_value == run["seed"]
        assert hparams["sweep/label"].string_value == run["label"]
        assert hparams["lr"].number_value == 0.01
        # the baseline too holds the column the sweep varies: one type in every run
        assert hparams["budget/target"].string_value == (run["budget"] or "none")
    # what TensorBoard serves for the whole sweep, through its own plugins: one FLOP chart
    # (one layout for the baseline and the budget runs), the varying settings and the
    # monitored metric first in HParams (its page ticks five of each)
    layout = layout_shown(out)
    assert [c.title for cat in layout.category for c in cat.chart] == [
        "FLOPs per example: dense, sparse, realizable, budget limit",
        "sparsity: pruned weights, schedule target, all parameters",
    ]
    experiment = experiment_shown(out)
    columns, metrics = ticked(experiment)
    assert columns[:3] == ["budget/target", "sweep/label", "sweep/seed"]
    assert metrics[0] == "val_acc"
    names = [i.name for i in experiment.hparam_infos]
    assert not [name for name in names if name.startswith("_")]  # LightningCLI's internals
    # TensorBoard takes the columns from any one run with an experiment: never the
    # baseline's, which lack the pruner's and the budget's
    assert {"pruning/type", "budget/by_epoch"} <= set(names)
    baseline = scalars(out / "runs" / "baseline_seed0").PluginTagToContent("hparams")
    assert set(baseline) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    rows = {r["label"]: r for r in frontier["rows"]}
    assert list(rows) == ["dense", "50%", "20%"]
    for label in ("50%", "20%"):
        metrics = [r["metric"] for r in results if r["label"] == label]
        assert rows[label]["metric_mean"] == pytest.approx(sum(metrics) / 2)
        assert rows[label]["delta"] == pytest.approx(
            rows[label]["metric_mean"] - rows["dense"]["metric_mean"]
        )
        # the budget held: at or below its target after the deadline
        limit = float(label[:-1]) / 100 * rows["dense"]["flops_sparse"]
        assert rows[label]["flops_sparse"] <= limit
    csv_lines = (out / "frontier.csv").read_text().splitlines()
    assert csv_lines[0].startswith("label,budget,sparsity,runs,failed,pending,metric_mean")
    assert len(csv_lines) == 4
    assert "| 50% | 2/2 |" in (out / "frontier.md").read_text()
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path: Path, capsys) -> None:
    # keep_first_dense: conv1's 18,432 FLOPs (1.5% of dense) stay, so 1% is unreachable
    out = tmp_path / "out"
    code = main(
        ["sweep", "--config", str(config(tmp_path)), "--budgets", "50%,1%", "--no-baseline",
         "--output", str(out), "--monitor", "val_acc"]
    )  # fmt: skip
    assert code == 1
    results = json.loads((out / "frontier.json").read_text())["runs"]
    assert [r["status"] for r in results] == ["done", "failed"]
    assert "unreachable" in results[1]["error"]
    assert "Failed: budget1%_seed0: BudgetError: FlopBudget" in (out / "frontier.md").read_text()
    assert "failed: ['budget1%_seed0']" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--budgets", "50%,abc"], r"budget 'abc': `target` must be a positive number"),
        (["--budgets", ""], r"the sweep needs budgets"),
        (["--budgets", "50%", "--monitor", "val_accuracy"], r"'val_accuracy' is never logged"),
        (["--budgets", "50%", "--seeds", "0,0"], r"seeds repeat a value: \[0, 0\]"),
    ],
)
def test_bad_input_is_one_line_before_any_run(
    tmp_path: Path, capsys, args: list[str], match: str
) -> None:
    out = refused(tmp_path, capsys, args, match)
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())


def refused(tmp_path: Path, capsys, args: list[str], match: str) -> Path:
    """Run the sweep command, check it exits 2 with one line matching ``match``."""
    out = tmp_path / "out"
    assert main(["sweep", "--config", str(config(tmp_path)), "--output", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-sparsity: error:")
    assert len(err.splitlines()) == 1
    assert re.search(match, err), err
    return out


@pytest.mark.parametrize(
    ("args", "match"),
    [
        # seed_everything takes 0 .. 2**32 - 1 (Lightning's min/max_seed_value)
        (
            ["--budgets", "50%", "--seeds=-1,0"],
            r"a seed must be an int in \[0, 4294967295\] \(what seed_everything takes\), got -1",
        ),
        (["--budgets", "50%", "--seeds", "4294967296"], r"got 4294967296"),
        (["--budgets", "50%", "--seeds", "0,1,0"], r"seeds repeat a value: \[0, 1, 0\]"),
        # the same target spelled twice would run it twice, under two names
        (["--budgets", "50%,50.0%"], r"budgets '50%' and '50.0%' are the same target \(50%"),
        (["--budgets", "1.2G,25%,1200M"], r"budgets '1.2G' and '1200M' are the same target"),
        (["--sparsities", "0.5,0.50"], r"sparsities repeat a value: \[0.5, 0.5\]"),
        # was ignored: the runs went in-process
        (["--budgets", "50%", "--address", "auto"], r"--address .* goes with --backend ray"),
        # distinct values, one run directory: the second would be skipped as finished
        (
            ["--sparsities", "0.1234561,0.1234562"],
            r"0.1234561 and 0.1234562 share the run .*sparsity0.123456_seed0",
        ),
    ],
)
def test_bad_seeds_and_repeated_targets_are_refused_before_anything_is_written(
    tmp_path: Path, capsys, args: list[str], match: str
) -> None:
    # refused by the plan: no run, no manifest, no directory
    assert not refused(tmp_path, capsys, args, match).exists()


def test_an_output_that_cannot_hold_the_sweep_is_one_line(tmp_path: Path, capsys) -> None:
    # were FileExistsError / JSONDecodeError tracebacks, exit 1
    out = tmp_path / "out"
    out.write_text("a file\n")
    refused(tmp_path, capsys, ["--budgets", "50%"], r"output '.*out' is a file, not a directory")
    assert out.read_text() == "a file\n"
    out.unlink()
    out.mkdir()
    (out / "sweep.json").write_text("{not json")
    match = r"out/sweep.json is not a sweep's manifest \(Expecting property name.*\); pick"
    refused(tmp_path, capsys, ["--budgets", "50%"], match)
    assert (out / "sweep.json").read_text() == "{not json"  # left as found
    assert [p.name for p in out.iterdir()] == ["sweep.json"]


@pytest.mark.parametrize(
    ("seeds", "match"),
    [
        (
            [True],
            r"a seed must be an int in \[0, 4294967295\] \(what seed_everything takes\), got True",
        ),
        ([0.5], r"got 0.5"),
        ([2**32], r"got 4294967296"),
        ([0, 2**32 - 1], None),  # both ends accepted
    ],
)
def test_plan_checks_the_seeds(seeds: list[object], match: str | None) -> None:
    if match is None:
        assert [r.seed for r in plan(["50%"], seeds, baseline=False)] == seeds  # type: ignore[arg-type]
        return
    with pytest.raises(SweepError, match=match):
        plan(["50%"], seeds)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        # a string was iterated: budget '5' (5 FLOPs), then '0' and '%' refused
        ({"budgets": "50%"}, r"^`budgets` must be a list, got '50%'$"),
        ({"budgets": ["50%"], "seeds": 5}, r"^`seeds` must be a list, got 5$"),  # was TypeError
        ({"sparsities": [False]}, r"a sparsity must be in \[0, 1\), got False"),  # was 0.0
    ],
)
def test_plan_refuses_what_is_not_a_list_of_values(kwargs: dict, match: str) -> None:
    with pytest.raises(SweepError, match=match):
        plan(**kwargs)


def test_a_config_without_the_callback_is_refused(tmp_path: Path) -> None:
    text = CONFIG.split("  callbacks:")[0] + "model:" + CONFIG.split("model:")[1]
    with pytest.raises(SweepError, match=r"one lightning_sparsity\.SparsityCallback"):
        sweep(config(tmp_path, text), ["50%"], output=tmp_path / "out", echo=lambda s: None)


def test_sweep_killed_in_its_second_run_and_restarted_equals_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path)
    args = ["--budgets", "50%,20%", "--seeds", "0", "--monitor", "val_acc"]
    whole = tmp_path / "whole"
    assert main(["sweep", "--config", str(cfg), "--output", str(whole), *args]) == 0

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "lightning_sparsity.cli", "sweep", "--config", str(cfg),
               "--output", str(out), *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    second = out / "runs" / "budget50%_seed0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not second.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)  # during the second run, after its first epoch
    proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()
    assert not (out / "runs" / "budget50%_seed0" / "sweep_run.json").exists()

    assert main(["sweep", "--config", str(cfg), "--output", str(out), *args]) == 0
    results = json.loads((out / "frontier.json").read_text())["runs"]
    expected = json.loads((whole / "frontier.json").read_text())["runs"]
    assert [r["name"] for r in results] == [r["name"] for r in expected]  # each run once

    def numbers(run: dict) -> tuple:
        return (run["name"], run["status"], run["metric"], run["flops_sparse"],
                run["params_nonzero"], run["epochs"])  # fmt: skip

    assert [numbers(r) for r in results] == [numbers(r) for r in expected]
    rows = json.loads((out / "frontier.json").read_text())["rows"]
    assert rows == json.loads((whole / "frontier.json").read_text())["rows"]
    history = json.loads((out / "runs" / "budget50%_seed0" / "sparsity_history.json").read_text())
    assert [p["epoch"] for p in history] == [0, 1, 2]  # resumed: no gap, no duplicate


def test_an_unknown_flag_is_the_parsers_error_and_poisons_nothing(tmp_path: Path, capsys) -> None:
    # was: blamed on the config ("the config does not make a run"), sweep.json written, and
    # the next, correct command refused ("holds a sweep with other overrides")
    out = refused(
        tmp_path,
        capsys,
        ["--budgets", "50%", "--bogus-flag"],
        r"error: unrecognized arguments: --bogus-flag: neither an option of sweep nor of the"
        r" config's LightningCLI \(see lightning-sparsity sweep --help\)$",
    )
    assert not out.exists()
    refused(tmp_path, capsys, ["--budgets", "50%", "--trainer.max_epochs=x"], r"max_epochs: exp")
    assert not out.exists()
    assert main(["sweep", "--config", str(config(tmp_path)), "--output", str(out),
                 "--budgets", "50%", "--plan"]) == 0  # fmt: skip
    assert "1 runs" not in capsys.readouterr().out  # "2 runs": the baseline and 50%


def test_a_refused_sweep_writes_nothing(tmp_path: Path, capsys) -> None:
    # the monitor is found missing by the one-batch check: nothing may be there before it
    out = refused(
        tmp_path, capsys, ["--budgets", "50%", "--monitor", "val_accuracy"], "never logged"
    )
    assert not out.exists()


def test_plan_lists_runs_differences_and_finished_runs_and_writes_nothing(
    tmp_path: Path, capsys
) -> None:
    cfg = config(tmp_path)
    out = tmp_path / "out"
    done = RunSpec("budget50%_seed0", 0, budget="50%")
    failed = RunSpec("budget20%_seed1", 1, budget="20%")
    for spec, fields in [
        (done, {"status": "done", "metric": 0.98126}),
        (failed, {"status": "failed", "error": "ValueError: boom"}),
    ]:
        (spec.directory(out)).mkdir(parents=True)
        (spec.directory(out) / "sweep_run.json").write_text(json.dumps(spec.record(**fields)))
    started = RunSpec("budget50%_seed1", 1, budget="50%").directory(out) / "checkpoints"
    started.mkdir(parents=True)
    (started / "last.ckpt").write_bytes(b"")
    before = sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*"))
    args = ["sweep", "--config", str(cfg), "--output", str(out), "--budgets", "50%,20%",
            "--seeds", "0,1", "--monitor", "val_acc", "--trainer.max_epochs=3"]  # fmt: skip
    assert main([*args, "--plan"]) == 0
    text = capsys.readouterr().out
    assert main([*args, "--dry-run"]) == 0  # the flag a user reaches for
    assert capsys.readouterr().out == text
    assert sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    lines = text.splitlines()
    assert lines[0] == "sweep plan: 5 runs, 2 finished, 3 to run (nothing run, nothing written)"
    assert lines[2] == "  overrides: --trainer.max_epochs=3"
    assert "  trainer.logger: None -> TensorBoardLogger(save_dir='OUTPUT', name='runs'," in text
    budget = "      trainer.callbacks.SparsityCallback.budget"
    assert text.split("the runs (status, then how each differs from the config):\n")[1] == (
        "  baseline_seed0   to run\n"
        f"{budget.rsplit('.', 1)[0]}.pruning: MagnitudePruner -> None\n"
        f"{budget}: FlopBudget -> None\n"
        f"{budget.rsplit('.', 1)[0]}.hparams_experiment: True -> False\n"
        "  budget50%_seed0  done (val_acc 0.9813)\n"
        f"{budget}.target: '20%' -> '50%'\n"
        "  budget50%_seed1  started (resumes from runs/budget50%_seed1/checkpoints/last.ckpt)\n"
        "      seed_everything: 0 -> 1\n"
        f"{budget}.target: '20%' -> '50%'\n"
        "  budget20%_seed0  to run\n"
        "  budget20%_seed1  failed (ValueError: boom; kept; --retry-failed runs it again)\n"
        "      seed_everything: 0 -> 1\n"
    )
    # what the sweep refuses, the plan refuses too
    (out / "sweep.json").write_text(json.dumps({"config": str(cfg), "monitor": "val_loss"}))
    assert main([*args, "--plan"]) == 2
    assert "holds a sweep with other monitor" in capsys.readouterr().err


# ---------------------------------------------------------------- across pruning criteria


def test_plan_across_scores_and_without_them_as_before() -> None:
    runs = plan(["50%", "20%"], [0, 1], scores=["magnitude", "taylor"])
    assert [(r.name, r.label) for r in runs] == [
        ("baseline_seed0", "dense"),
        ("budget50%_magnitude_seed0", "magnitude 50%"),
        ("budget50%_magnitude_seed1", "magnitude 50%"),
        ("budget20%_magnitude_seed0", "magnitude 20%"),
        ("budget20%_magnitude_seed1", "magnitude 20%"),
        ("budget50%_taylor_seed0", "taylor 50%"),
        ("budget50%_taylor_seed1", "taylor 50%"),
        ("budget20%_taylor_seed0", "taylor 20%"),
        ("budget20%_taylor_seed1", "taylor 20%"),
    ]
    assert [r.score for r in runs] == ["none", *["magnitude"] * 4, *["taylor"] * 4]
    assert runs[5].record(status="done")["score"] == "taylor"
    (sparse,) = plan(sparsities=[0.8], scores=["random"], baseline=False)
    assert (sparse.name, sparse.label) == ("sparsity0.8_random_seed0", "random sparsity 0.8")
    # no scores: the names, the records and the frontier rows of before (no score key)
    plain = plan(["50%"], [0])
    assert [r.name for r in plain] == ["baseline_seed0", "budget50%_seed0"]
    assert all("score" not in r.record(status="done") for r in plain)
    rows = frontier_rows([r.record(status="done", metric=0.5, flops_sparse=1.0, flops_ratio=1.0,
                                   params_nonzero=1) for r in plain])  # fmt: skip
    assert all("score" not in row for row in rows)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        # the accepted names are the pruner's own (pruning.scores.SCORES), listed
        (
            ["--budgets", "50%", "--scores", "magnitude,tayler"],
            r"score 'tayler' is not one the pruner takes: " + ", ".join(SCORES) + "$",
        ),
        (["--budgets", "50%", "--scores", ""], r"the sweep needs at least one score \(of mag"),
        (
            ["--budgets", "50%", "--scores", "random,taylor,random"],
            r"scores repeat a value: \['random', 'taylor', 'random'\]$",
        ),
    ],
)
def test_bad_scores_are_refused_before_anything_is_written(
    tmp_path: Path, capsys, args: list[str], match: str
) -> None:
    assert not refused(tmp_path, capsys, args, match).exists()


@pytest.mark.parametrize(
    ("pruning", "match"),
    [
        (
            None,
            r"--scores sets the pruner's score \('random'\), and the config's"
            r" SparsityCallback has no pruner",
        ),
        (
            "        pruning:\n          class_path: lightning_sparsity.RigL\n"
            "          init_args:\n            sparsity: 0.5\n",
            r"the config's pruner RigL takes no `score`",
        ),
    ],
)
def test_scores_need_a_pruner_that_takes_one(
    tmp_path: Path, capsys, pruning: str | None, match: str
) -> None:
    old = "        pruning:\n          class_path: lightning_sparsity.MagnitudePruner\n" \
          "          init_args:\n            keep_first_dense: true\n"  # fmt: skip
    assert old in CONFIG
    cfg = config(tmp_path, CONFIG.replace(old, pruning or ""))
    out = tmp_path / "out"
    for plan_only in ([], ["--plan"]):  # the plan refuses it too
        args = ["--budgets", "50%", "--scores", "random", *plan_only]
        assert main(["sweep", "--config", str(cfg), "--output", str(out), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lightning-sparsity: error:")
        assert len(err.splitlines()) == 1
        assert re.search(match, err), err
        assert not out.exists()


def _zeros(run: dict) -> dict[str, torch.Tensor]:
    """The zero pattern of each pruned weight in a run's last checkpoint."""
    ckpt = torch.load(Path(run["log_dir"]) / "checkpoints" / "last.ckpt", weights_only=False)
    weights = {k: v for k, v in ckpt["state_dict"].items() if k.endswith("weight") and v.dim() > 1}
    return {k: v == 0 for k, v in weights.items() if (v == 0).any()}


def _out_of_order(zeros: dict[str, torch.Tensor], seed: int) -> int:
    """Kept weights whose ``random`` score (at ``seed``) is below a pruned one's, per layer."""
    total = 0
    for name, pruned in zeros.items():
        score = random_scores(seed, name, pruned.shape, torch.device("cpu"))
        total += int((score[~pruned] < score[pruned].max()).sum())
    return total


def test_sweep_across_scores_prunes_by_each_and_draws_a_line_per_method(tmp_path: Path) -> None:
    out = tmp_path / "out"
    scores = ["magnitude", "random", "taylor"]
    results = sweep(
        config(tmp_path), ["20%"], seeds=[1], scores=scores, monitor="val_acc", output=out,
        echo=lambda line: None,
    )  # fmt: skip
    assert [(r["name"], r["status"], r["score"]) for r in results] == [
        ("baseline_seed1", "done", "none"),
        ("budget20%_magnitude_seed1", "done", "magnitude"),
        ("budget20%_random_seed1", "done", "random"),
        ("budget20%_taylor_seed1", "done", "taylor"),
    ]
    base = results[0]
    manifest = json.loads((out / "sweep.json").read_text())
    assert [r["score"] for r in manifest["runs"]] == ["none", *scores]
    # each run's HParams: the pruner it ran with, its score and the run's seed
    for run in results:
        acc = scalars(Path(run["log_dir"]))
        content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert hparams["pruning/score"].string_value == run["score"]
        if run is not base:
            assert hparams["pruning/seed"].number_value == 1
            # the budget held, as in the sweep without scores
            assert run["flops_sparse"] <= 0.2 * base["flops_sparse"]
            assert run["flops_ratio"] == pytest.approx(0.2, abs=1e-3)
    columns, _ = ticked(experiment_shown(out))
    assert columns[:4] == ["budget/target", "pruning/score", "sweep/label", "sweep/seed"]
    # the masks are the criterion's: in the random run every pruned weight of a layer drew a
    # lower random score (seed 1, the run's) than every kept one; not so at seed 0, nor in
    # the magnitude run; taylor's differ from both
    zeros = {run["score"]: _zeros(run) for run in results[1:]}
    assert _out_of_order(zeros["random"], 1) == 0
    assert _out_of_order(zeros["random"], 0) > 1000
    assert _out_of_order(zeros["magnitude"], 1) > 1000
    for a, b in [("magnitude", "random"), ("magnitude", "taylor"), ("random", "taylor")]:
        assert any(bool((zeros[a][k] != zeros[b][k]).any()) for k in zeros[a]), (a, b)
    # the frontier: a row per (method, budget), the training compute of each run's history
    frontier = json.loads((out / "frontier.json").read_text())
    rows = frontier["rows"]
    assert [(r["label"], r["score"]) for r in rows] == [
        ("dense", "none"), ("magnitude 20%", "magnitude"), ("random 20%", "random"),
        ("taylor 20%", "taylor"),
    ]  # fmt: skip

    def trained(run: dict) -> float:
        history = json.loads((Path(run["log_dir"]) / "sparsity_history.json").read_text())
        return float(history[-1]["train_flops_total"])

    for row, run in zip(rows, results, strict=True):
        assert row["train_flops_total"] == trained(run) == run["train_flops_total"]
        assert row["train_flops_ratio"] == pytest.approx(trained(run) / trained(base), rel=1e-12)
    assert rows[0]["train_flops_ratio"] == 1
    assert 0 < rows[1]["train_flops_ratio"] < 1  # pruned from epoch 1: less compute
    csv_lines = (out / "frontier.csv").read_text().splitlines()
    assert csv_lines[0].startswith("label,score,budget,sparsity,runs,failed,pending,metric_mean")
    assert "train_flops_total,train_flops_ratio" in csv_lines[0]
    assert len(csv_lines) == 5
    md = (out / "frontier.md").read_text()
    assert "| taylor 20% | 1/1 |" in md
    assert "| training FLOPs | training/dense |" in md
    # the plot: one coloured line per method, named in both panels' legends
    fig = frontier_figure(rows, "val_acc", "max")
    try:
        flops, compute = fig.axes
        for ax, key in ((flops, "flops_sparse"), (compute, "train_flops_total")):
            legend = [t.get_text() for t in ax.get_legend().get_texts()]
            lines = {line.get_label(): line for line in ax.get_lines()}
            colours = set()
            for method in scores:
                assert f"{method} (mean ± std over seeds)" in legend
                (row,) = [r for r in rows if r["score"] == method]
                line = next(c for c in ax.containers if c.get_label().startswith(method))[0]
                assert list(line.get_xdata()) == [row[key]]
                assert list(line.get_ydata()) == [row["metric_mean"]]
                colours.add(line.get_color())
            assert len(colours) == 3
            assert "dense baseline" in legend
            assert f"dense reference (val_acc {base['metric']:.4f})" in lines
        assert compute.get_xlabel() == "total training FLOPs of the run (log)"
    finally:
        plt.close(fig)


def test_a_resumed_sweep_with_other_scores_reuses_only_runs_of_its_own_scores(
    tmp_path: Path, capsys
) -> None:
    # the score is in every run's name: a finished magnitude run is not taken for a random
    # one, nor for a run of the sweep without scores (the config's own pruner)
    cfg = config(tmp_path)
    out = tmp_path / "out"
    done = RunSpec("budget50%_magnitude_seed0", 0, budget="50%", score="magnitude")
    done.directory(out).mkdir(parents=True)
    (done.directory(out) / "sweep_run.json").write_text(
        json.dumps(done.record(status="done", metric=0.9))
    )
    base = ["sweep", "--config", str(cfg), "--output", str(out), "--budgets", "50%",
            "--monitor", "val_acc", "--no-baseline", "--plan"]  # fmt: skip
    assert main([*base, "--scores", "magnitude,random"]) == 0
    text = capsys.readouterr().out
    assert "  budget50%_magnitude_seed0  done (val_acc 0.9000)\n" in text
    assert "  budget50%_random_seed0     to run\n" in text
    assert "pruning.score: 'magnitude' -> 'random'" in text
    assert main(base) == 0
    assert "  budget50%_seed0  to run\n" in capsys.readouterr().out
