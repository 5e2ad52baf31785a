"""`lightning-sparsity report LOGDIR`: a crashed run, a finished sweep, a report JSON, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image
import pytest
import torch
from pytorch_lightning.loggers import CSVLogger

import lightning_sparsity as ls
from lightning_sparsity.cli import main
from lightning_sparsity.counting import SparsityReport
from lightning_sparsity.demo import DigitsDataModule
from lightning_sparsity.sweeps import sweep
from tests.test_callback import CrashesInEpoch2, trainer
from tests.test_sweep import config

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers",
    "ignore:.*is smaller than the logging interval",
)


def table(markdown: str) -> list[list[str]]:
    """The rows of the first markdown table (header and rule left out), as cells."""
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_a_report_read_back_from_its_json_file_is_the_report(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight[:, ::2] = 0  # half the first layer's inputs, the last one's row 1
        model[2].weight[1] = 0
    report = ls.measure(model, torch.randn(3, 8), activations=True)
    report.to_json(tmp_path / "sparsity_report.json")
    read = SparsityReport.from_dict(json.loads((tmp_path / "sparsity_report.json").read_text()))
    assert read == report
    assert read.to_markdown() == report.to_markdown()


def test_a_crashed_run_is_rendered_from_its_history(tmp_path: Path, capsys) -> None:
    pruner = ls.MagnitudePruner(schedule=ls.schedules.Linear(0.5, start_epoch=0, end_epoch=3))
    logger = CSVLogger(tmp_path, name="csv")
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer(tmp_path, [ls.SparsityCallback(pruner)], logger, epochs=4).fit(
            CrashesInEpoch2(), DigitsDataModule()
        )
    run = Path(logger.log_dir)
    assert not (run / "sparsity_report.json").exists()  # the fit did not end
    (run / "sparsity_curves.png").unlink()  # written at the crash: render it again
    history = json.loads((run / "sparsity_history.json").read_text())

    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.split() == [
        str(run / "sparsity_curves.png"),
        str(run / "sparsity_report.md"),
    ]
    image = matplotlib.image.imread(run / "sparsity_curves.png")  # a PNG matplotlib reads back
    assert (run / "sparsity_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # plot_history: 5 x 4 inches a panel at 100 dpi; FLOPs, training FLOPs spent, sparsity
    assert image.shape[:2] == (400, 1500)
    text = (run / "sparsity_report.md").read_text()
    assert "the fit did not finish" in text
    rows = table(text)
    # the start and epochs 0 and 1 finished: points after 0, 1 and 2 completed epochs
    assert [row[0] for row in rows] == ["0", "1", "2"]
    for row, point in zip(rows, history, strict=True):
        # epoch | step | sparse FLOPs | dense FLOPs | sparse/dense | nonzero params | params
        assert row[2] == f"{point['flops_sparse']:,}"
        assert row[3] == f"{point['flops']:,}"
        assert row[4] == f"{point['flops_sparse'] / point['flops']:.4f}"
        assert row[5] == f"{point['params_nonzero']:,}"
        assert row[6] == f"{point['params']:,}"
    assert rows[-1][4] != "1.0000"  # pruned by the schedule before the crash


def test_a_finished_sweep_and_its_runs_are_rendered_again_the_same(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    sweep(config(tmp_path), ["50%"], monitor="val_acc", output=out, echo=lambda s: None)
    names = ("frontier.json", "frontier.csv", "frontier.md")
    written = {name: (out / name).read_bytes() for name in names}
    for name in (*names, "frontier.png"):
        (out / name).unlink()

    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.split() == [
        str(out / name) for name in ("frontier.md", "frontier.csv", "frontier.json", "frontier.png")
    ]
    for name in names:
        assert (out / name).read_bytes() == written[name], name
    assert json.loads((out / "frontier.json").read_text())["rows"][1]["label"] == "50%"
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one run of it: the report table from its JSON, as the callback wrote it at fit end
    run = out / "runs" / "budget50%_seed0"
    report = (run / "sparsity_report.md").read_bytes()
    (run / "sparsity_report.md").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "sparsity_report.md").read_bytes() == report


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({}, r"holds neither a sweep \(sweep\.json\) nor a run's history"),
        ({"version_0/sparsity_history.json": "[]"}, r"these subdirectories do: version_0$"),
        ({"sparsity_history.json": "[]"}, r"holds no points$"),
        ({"sparsity_history.json": "{"}, r"cannot read .*sparsity_history\.json"),
        ({"sweep.json": '{"runs": 3}'}, r"is not a sweep's manifest"),
    ],
)
def test_a_directory_without_a_sweep_or_a_history_is_one_line(
    tmp_path: Path, capsys, files: dict[str, str], match: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("lightning-sparsity: error:")
    assert re.search(match, err)


def test_a_missing_directory_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err
