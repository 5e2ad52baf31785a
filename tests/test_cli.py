"""The ``lightning-sparsity`` command, run as a real process."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

import lightning_sparsity as ls
from lightning_sparsity.cli import main
from lightning_sparsity.demo import DigitsCNN
from tests.fits import WIDE_DENSE

SCRIPT = Path(sys.executable).parent / "lightning-sparsity"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )


def test_count_json_equals_measure() -> None:
    done = run("count", "lightning_sparsity.demo:DigitsCNN", "--input-shape", "1,1,8,8", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    expected = ls.measure(DigitsCNN(), torch.zeros(1, 1, 8, 8))
    assert data["total"]["flops"] == expected.total.flops
    assert data["total"]["params"] == expected.total.params
    assert [row["name"] for row in data["layers"]] == [row.name for row in expected.layers]


def test_count_table_from_a_checkpoint(tmp_path: Path) -> None:
    model = DigitsCNN()
    with torch.no_grad():
        model.fc.weight[:, :32] = 0  # half of the classifier
    trainer = pl.Trainer(
        max_epochs=0, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    done = run(
        "count",
        "lightning_sparsity.demo:DigitsCNN",
        "--input-shape",
        "1,1,8,8",
        "--checkpoint",
        str(tmp_path / "m.ckpt"),
    )
    assert done.returncode == 0, done.stderr
    expected = ls.measure(model, torch.zeros(1, 1, 8, 8))
    assert "| fc | Linear | 650 | 330 |" in done.stdout  # 640 + 10 bias, 320 + 10 nonzero
    assert f"{expected.total.params_nonzero:,}" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nomodule:thing", "--input-shape", "1,2"], "cannot import 'nomodule:thing'"),
        (["torch", "--input-shape", "1,2"], "TARGET must look like package.module:factory"),
        (["torch.nn:Linear", "--input-shape", "1,2"], "calling torch.nn:Linear failed: TypeError"),
        (["lightning_sparsity.demo:DigitsCNN", "--input-shape", "1,x"], "--input-shape must be"),
        (
            ["lightning_sparsity.demo:DigitsCNN", "--input-shape", "1,3,8,8"],
            r"DigitsCNN forward failed on the example input \(Tensor\(1, 3, 8, 8\)",
        ),
    ],
)
def test_count_errors_are_one_clear_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) if "input-shape must" in message else nullcontext():
        assert main(["count", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(message, err), err


def test_count_of_a_model_built_on_meta_gives_its_dense_counts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the input is made where the model is: a meta model was fed a CPU tensor and failed
    # with "forward failed ... Tensor on device meta is not on the expected device cpu"
    assert main(["count", "tests.test_speed:meta_model", "--input-shape", "8,64", "--json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    # Small: fc1 64→128 and fc2 128→10 (called on two halves of the batch), per example:
    # 2·(64·128 + 128·10) = 18,944 FLOPs; 8,192 + 128 + 1,280 + 10 = 9,610 parameters
    assert total["flops"] == 18_944
    assert total["params"] == 9_610
    assert total["flops_sparse"] is None  # no values on meta


def test_demo_end_to_end(tmp_path: Path) -> None:
    done = run("demo", "--epochs", "3", "--limit-batches", "3", "--output", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    assert f"tensorboard --logdir {tmp_path / 'o'}" in done.stdout
    run_dir = tmp_path / "o" / "demo" / "version_0"
    assert (run_dir / "sparsity_curves.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((run_dir / "sparsity_report.json").read_text())
    history = json.loads((run_dir / "sparsity_history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    assert history[-1]["flops_sparse"] == report["total"]["flops_sparse"]
    # the default budget, 20% of dense, reached at the deadline (after 2 of 3 epochs), kept
    limit = 0.2 * history[0]["flops"]
    assert history[-1]["budget_limit"] == pytest.approx(limit)
    # on its FLOP curve after the first epoch (was "over": judged against the final limit)
    assert [row["budget_status"] for row in history[1:]] == ["on_schedule", "within", "within"]
    assert limit * 0.995 < history[-1]["flops_sparse"] <= limit
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    assert len(acc.Scalars("sparsity/flops_sparse_per_example")) == 4


@pytest.mark.filterwarnings("ignore:.*does not have many workers", "ignore:not pruning")
def test_demo_pruned_two_four(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_sparsity.cli import main

    out = tmp_path / "o"
    args = ["demo", "--pattern", "2:4", "--epochs", "3", "--limit-batches", "3"]
    assert main([*args, "--output", str(out)]) == 0
    history = json.loads((out / "demo" / "version_0" / "sparsity_history.json").read_text())
    # conv2 (rows of 16·9) and conv3 (32·9) carry 2:4; conv1 (rows of 9) and fc (10 rows,
    # not a multiple of 32) stay dense: at the end of the cubic ramp (after 2 epochs) both
    # convolutions run at half: 1,199,360 - (589,824 + 589,824) / 2 = 609,536
    assert history[-1]["flops_realizable"] == 609_536
    assert history[1]["flops_realizable"] == 1_199_360  # part of the groups: no kernel yet
    assert "conv2.weight 2:4, conv3.weight 2:4" in capsys.readouterr().out
    assert main([*args, "--budget", "20%", "--output", str(out)]) == 2
    assert "give it without a budget" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize(
    ("config", "limit"), [("digits_budget.yaml", 0.2), ("digits_schedule.yaml", 0.3)]
)
def test_fit_from_each_yaml_config(tmp_path: Path, config: str, limit: float) -> None:
    path = Path(__file__).resolve().parents[1] / "configs" / config
    args = ["fit", "--config", str(path), "--trainer.max_epochs=2"]
    args += ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    args += [
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    assert main(args) == 0
    (run,) = tmp_path.glob("*/version_0")
    history = json.loads((run / "sparsity_history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert history[-1]["budget_limit"] == pytest.approx(limit * history[0]["flops"])
    assert history[-1]["flops_sparse"] < history[0]["flops"]  # the configured pruner pruned


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "150%"], r"percentage must be in \(0, 100\], got '150%'"),
        (["--epochs", "0"], "`epochs` must be >= 1, got 0"),
        (["--budget", "none", "--final-sparsity", "1.0"], "`final_sparsity` must be a float"),
        # was an IndexError traceback after an empty fit (no history to tabulate)
        (["--limit-batches", "0"], "--limit-batches must be an int >= 1 .*, got 0"),
    ],
)
def test_demo_option_errors_are_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lightning-sparsity: error: ")
    assert re.search(message, err), err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # refused once the fit traces the model (were ~50-line tracebacks, exit 1)
        (["--budget", "0.2"], r"target '0.2' is 0.2 sparse FLOPs.*did you mean '20%'\?"),
        (["--budget", "1e11"], r"target '1e11' \(100,000,000,000\) is above the dense model's"),
        (["--budget", "0.01%"], r"target '0.01%' .* is unreachable"),
    ],
)
def test_demo_budget_errors_found_at_fit_start_are_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--output", str(tmp_path / "runs"), "--epochs", "1", "--limit-batches", "1"]
    assert main(["demo", *args, *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lightning-sparsity: error: FlopBudget: ")
    assert err.count("\n") == 1, err
    assert re.search(message, err), err


def test_demo_output_that_is_a_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("mine\n")
    assert main(["demo", "--output", str(taken), "--limit-batches", "1"]) == 2  # was a traceback
    err = capsys.readouterr().err
    assert f"--output {str(taken)!r} is a file, not a directory" in err
    assert taken.read_text() == "mine\n"


def test_count_input_that_cannot_be_allocated_and_a_directory_checkpoint_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 10**11 * 64 float32 entries = 25.6 TB
    huge = ["lightning_sparsity.demo:DigitsCNN", "--input-shape", "100000000000,1,8,8"]
    assert main(["count", *huge]) == 2  # was a 9-line traceback, exit 1
    err = capsys.readouterr().err
    assert "cannot make an input of shape (100000000000, 1, 8, 8)" in err
    assert err.count("\n") == 1, err
    target = "lightning_sparsity.demo:DigitsCNN"
    args = [target, "--input-shape", "1,1,8,8", "--checkpoint", str(tmp_path)]
    assert main(["count", *args]) == 2
    assert f"checkpoint {str(tmp_path)!r} is a directory, not a file" in capsys.readouterr().err


# ---------------------------------------------------------------- count --checkpoint errors


class OtherModule(pl.LightningModule):
    """A LightningModule of another architecture (with hyperparameters DigitsCNN lacks)."""

    def __init__(self, hidden: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lin = torch.nn.Linear(4, hidden)


def save_checkpoint(model: pl.LightningModule, path: Path) -> Path:
    trainer = pl.Trainer(
        max_epochs=0, logger=False, enable_progress_bar=False, default_root_dir=path.parent
    )
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    good = save_checkpoint(DigitsCNN(), root / "good.ckpt").read_bytes()
    (root / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    (root / "random.ckpt").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy())
    small = save_checkpoint(DigitsCNN(channels=(8, 8, 8)), root / "small.ckpt")
    weights = torch.load(small, weights_only=True)
    del weights["hyper_parameters"]  # weights only: loads as the default DigitsCNN
    torch.save(weights, root / "small_no_hparams.ckpt")
    save_checkpoint(OtherModule(), root / "other.ckpt")
    return {p.stem: p for p in root.glob("*.ckpt")}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("random", r"checkpoint '.*random.ckpt' is not a readable checkpoint"),
        ("truncated", r"checkpoint '.*truncated.ckpt' is truncated"),
        (
            "small_no_hparams",
            r"checkpoint '.*small_no_hparams.ckpt' does not fit lightning_sparsity.demo:DigitsCNN:"
            r" conv1.weight has shape \(8, 1, 3, 3\) in the checkpoint, \(16, 1, 3, 3\) in the"
            r" model \(and 15 more shape mismatches\)$",
        ),
        (
            "other",
            r"checkpoint '.*other.ckpt' does not fit lightning_sparsity.demo:DigitsCNN:"
            r" 17 missing keys \(conv1.weight, bn1.weight, bn1.bias, \.\.\. \(14 more\)\);"
            r" 2 unexpected keys \(lin.weight, lin.bias\)$",
        ),
    ],
)
@pytest.mark.parametrize("command", [["count"], ["speed", "--compact"]])
def test_unusable_checkpoint_is_one_line(
    checkpoints: dict[str, Path],
    name: str,
    message: str,
    command: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # count and speed load a checkpoint the same way: the same one-line errors
    args = [*command, "lightning_sparsity.demo:DigitsCNN", "--input-shape", "1,1,8,8"]
    assert main([*args, "--checkpoint", str(checkpoints[name])]) == 2
    err = capsys.readouterr().err
    (line,) = err.splitlines()
    assert line.startswith("lightning-sparsity: error: ")
    assert re.search(message, line), line
    assert "weights_only" not in line


def test_count_checkpoint_rebuilds_from_its_hyperparameters(
    checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Another DigitsCNN width loads: the checkpoint's hyperparameters build the model."""
    args = ["count", "lightning_sparsity.demo:DigitsCNN", "--input-shape", "1,1,8,8", "--json"]
    assert main([*args, "--checkpoint", str(checkpoints["small"])]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = ls.measure(DigitsCNN(channels=(8, 8, 8)), torch.zeros(1, 1, 8, 8))
    assert data["total"]["params"] == expected.total.params


def test_speed_compact_from_the_checkpoint_of_a_pruning_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from tests.fits import Wide, quiet_trainer

    torch.manual_seed(0)
    pruner = ls.MagnitudePruner(structured=True, schedule=ls.schedules.Constant(0.5))
    trainer = quiet_trainer(tmp_path, [ls.SparsityCallback(pruner, verbose=False)], 1)
    trainer.fit(Wide())
    trainer.save_checkpoint(tmp_path / "pruned.ckpt")
    args = ["speed", "tests.fits:Wide", "--input-shape", "2,3,16,16", "--repeats", "2"]
    assert main([*args, "--checkpoint", str(tmp_path / "pruned.ckpt"), "--compact"]) == 0
    out = capsys.readouterr().out
    # the FLOPs FlopCounterMode counts on the checkpoint's model and on its compacted copy;
    # the input the command makes (seed 0) does not change them
    x = torch.randn(2, 3, 16, 16)
    loaded = Wide.load_from_checkpoint(tmp_path / "pruned.ckpt").eval()
    small = ls.compact(loaded, x)
    flops = []
    for model in (loaded, small):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
        flops.append(counter.get_total_flops())
    dense, compacted = flops
    assert dense == 2 * WIDE_DENSE  # dense FLOPs: zeros or not, per example WIDE_DENSE
    assert compacted < dense  # rows the fit pruned are gone
    assert f"| masked (as is) | {dense:,} | 1.00× |" in out
    assert f"| compacted | {compacted:,} | {dense / compacted:.2f}× |" in out
    assert "their outputs equal torch's on the example input" in out
    # the fresh model, without the checkpoint, has nothing to remove
    assert main([*args, "--compact"]) == 0
    assert f"| compacted | {dense:,} | 1.00× |" in capsys.readouterr().out


# ---------------------------------------------------------------- LightningCLI errors

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAST = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.logger=false",
]


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "allocation: global",
            "allocation: globl",
            r"lightning_sparsity.MagnitudePruner > allocation: Expected a typing.Literal"
            r"\['global', 'uniform', 'erk', 'flops'\]. Got value: globl$",
        ),
        (
            "target: 20%",
            "target: abc",
            r"FlopBudget: `target` must be a positive number of FLOPs .* got 'abc'$",
        ),
        (
            "by_epoch: 7",
            "by_epoch: soon",
            r"lightning_sparsity.FlopBudget > by_epoch: expected int or None, got 'soon'$",
        ),
        (
            "action: adjust",
            "action: adjust\n            deadline: 7",
            r"lightning_sparsity.FlopBudget: Option 'deadline' is not accepted$",
        ),
    ],
)
def test_fit_config_error_is_one_line(
    tmp_path: Path, old: str, new: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (CONFIGS / "digits_budget.yaml").read_text()
    assert old in text
    config = tmp_path / "bad.yaml"
    config.write_text(text.replace(old, new))
    assert main(["fit", "--config", str(config), *FAST]) == 2
    err = capsys.readouterr().err
    (line,) = err.splitlines()
    assert line.startswith("lightning-sparsity: error: ")
    assert re.search(message, line), line


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "no/such.yaml"], r"config: File does not exist: '.*no/such.yaml'$"),
        (["--trainer.max_epochs=x"], r"trainer.max_epochs: expected int or None, got 'x'$"),
        (["--ckpt_path", "RANDOM"], r"checkpoint '.*random.ckpt' is not a readable checkpoint"),
    ],
)
def test_fit_option_error_is_one_line(
    checkpoints: dict[str, Path],
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [str(checkpoints["random"]) if a == "RANDOM" else a for a in args]
    config = ["--config", str(CONFIGS / "digits_budget.yaml")]
    assert main(["fit", *config, *FAST, *args]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("lightning-sparsity: error: ")
    assert re.search(message, line), line


def test_console_script_config_error_is_exactly_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    text = (CONFIGS / "digits_budget.yaml").read_text()
    config.write_text(text.replace("allocation: global", "allocation: globl"))
    done = run("fit", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("lightning-sparsity: error: trainer.callbacks > ")
    assert done.stderr.count("\n") == 1, done.stderr  # no usage, no tree, no traceback


def test_console_script_fit_reads_argv_without_warning(tmp_path: Path) -> None:
    """Run as the console script, LightningCLI reads sys.argv: no "args parameter" warning."""
    done = run("fit", "--config", str(CONFIGS / "digits_schedule.yaml"), *FAST, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "args parameter is intended" not in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_fit_resumes_from_ckpt_path(tmp_path: Path) -> None:
    config = ["--config", str(CONFIGS / "digits_schedule.yaml"), *FAST]
    config.append(f"--trainer.default_root_dir={tmp_path}")
    assert main(["fit", *config]) == 0
    (ckpt,) = tmp_path.glob("checkpoints/*.ckpt")
    assert main(["fit", *config, "--trainer.max_epochs=2", "--ckpt_path", str(ckpt)]) == 0
    assert sorted(p.name for p in tmp_path.glob("checkpoints/*.ckpt")) == [
        "epoch=0-step=2.ckpt",
        "epoch=1-step=4.ckpt",
    ]


def hparams_runs(root: Path) -> list[str]:
    """The runs under ``root`` that TensorBoard's HParams dashboard lists (one row each)."""
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(root))
    multiplexer.Reload()
    runs = multiplexer.PluginRunToTagToContent("hparams")
    return sorted(run for run, tags in runs.items() if "_hparams_/session_start_info" in tags)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize(
    ("logger", "name"),
    [("--trainer.logger.init_args.save_dir={}", "digits_budget"), ("--trainer.logger=true", None)],
)
def test_fit_resume_continues_the_run_it_resumes(
    tmp_path: Path, logger: str, name: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    args = ["fit", "--config", str(CONFIGS / "digits_budget.yaml"), logger.format(tmp_path)]
    args += ["--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"]
    args += [f"--trainer.default_root_dir={tmp_path}"]
    assert main([*args, "--trainer.max_epochs=1"]) == 0
    root = tmp_path / (name or "lightning_logs")  # the default logger's name
    run = root / "version_0"
    (ckpt,) = run.glob("checkpoints/*.ckpt")
    # the README's resume command wrote version_1: two runs (0-1, 2) and two HParams rows
    assert main([*args, "--trainer.max_epochs=2", "--ckpt_path", str(ckpt)]) == 0
    assert [p.name for p in root.iterdir()] == ["version_0"]
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    assert sorted(e.step for e in acc.Scalars("sparsity/flops_ratio")) == [0, 1, 2]
    assert hparams_runs(tmp_path) == [f"{root.name}/version_0"]
    history = json.loads((run / "sparsity_history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert (run / "sparsity_report.md").is_file()
    if name is None:
        return
    # the finished run: one line says so; no new version directory
    (last,) = run.glob("checkpoints/epoch=1-*.ckpt")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pytorch_lightning"):  # the demo quiets it
        assert main([*args, "--trainer.max_epochs=2", "--ckpt_path", str(last)]) == 0
    said = [r.getMessage() for r in caplog.records if "lightning_sparsity" in r.getMessage()]
    assert said == [
        "lightning_sparsity: the run is finished (max_epochs=2 reached at epoch 2): nothing to"
        f" train; its logs are in {run}; raise max_epochs to train on"
    ]
    assert [p.name for p in root.iterdir()] == ["version_0"]


# ---------------------------------------------------------------- papercuts (issue 17, 7)


def test_console_script_imports_a_target_from_the_working_directory(tmp_path: Path) -> None:
    # `python -m` puts the working directory on the import path; the console script did not
    (tmp_path / "mymodels.py").write_text(
        "from torch import nn\n\ndef mlp():\n    return nn.Sequential(nn.Linear(8, 4))\n"
    )
    done = run("count", "mymodels:mlp", "--input-shape", "1,8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| **total** |  | 36 | " in done.stdout  # 8·4 + 4 parameters


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"lightning-sparsity {ls.__version__}\n"


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_fit_budget_without_percent_is_one_line_and_leaves_no_version_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # was the good hint inside a 72-line traceback, exit 1, and an empty version_0
    text = (CONFIGS / "digits_budget.yaml").read_text()
    config = tmp_path / "budget20.yaml"
    config.write_text(text.replace("target: 20%", "target: 20").replace("sparsity_runs", "runs"))
    args = ["fit", "--config", str(config), *FAST[:3]]
    args.append(f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}")
    assert main(args) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("lightning-sparsity: error: FlopBudget: target 20")
    assert "did you mean '20%'?" in line
    assert not (tmp_path / "runs" / "digits_budget" / "version_0").exists()
    # a version directory that was there before the fit is kept
    (tmp_path / "runs" / "digits_budget" / "version_0").mkdir(parents=True)
    (tmp_path / "runs" / "digits_budget" / "version_0" / "mine.txt").write_text("mine")
    assert main(args) == 2
    capsys.readouterr()
    versions = sorted(p.name for p in (tmp_path / "runs" / "digits_budget").iterdir())
    assert versions == ["version_0"]


def test_report_says_when_it_lists_fewer_runs_than_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(7):
        (tmp_path / f"run{i}").mkdir()
        (tmp_path / f"run{i}" / "sparsity_history.json").write_text("[]")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.rstrip().endswith(
        "these subdirectories do: run0, run1, run2, run3, run4 and 2 more"
    ), err


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_demo_settings_cause_no_lightning_notice(tmp_path: Path) -> None:
    # `Trainer(limit_train_batches=1.0)` was configured so 100% of the batches ...,
    # and log_every_n_steps=50 above the 23 batches of an epoch
    done = run("demo", "--epochs", "1", "--output", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    assert "limit_train_batches" not in done.stderr
    assert "limit_val_batches" not in done.stderr
    assert "log_every_n_steps" not in done.stderr
