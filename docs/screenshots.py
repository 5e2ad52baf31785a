"""Screenshots of TensorBoard as a user sees it: Scalars, Custom Scalars and HParams.

Makes the runs with the README's own commands (a budget fit, the same fit killed after
two epochs and resumed from its checkpoint, and the 7-run sweep), starts a real
``tensorboard --host 127.0.0.1`` on them, and photographs its pages with headless Chromium
(Playwright driving the system's browser). The PNGs go to ``docs/tensorboard_*.png``.

Needs, beside the development set-up: ``pip install playwright`` and a Chromium (Debian:
``apt-get install chromium``; or ``playwright install chromium`` and ``--browser ''``)::

    python docs/screenshots.py                      # about 4 minutes on 2 CPU cores
    python docs/screenshots.py --runs /tmp/tb_runs  # keep (or reuse) the runs
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
CLI = [sys.executable, "-m", "lightning_sparsity.cli"]
VIEW = {"width": 1500, "height": 1300}
RUN_FILTER = "Write a regex to filter runs"  # the custom-scalars page's run filter
# TensorBoard's time-series page takes its tag filter from the URL query (smoothing left at
# its default, 0.6, and outlier clipping on: what a user sees first)
TAGS = "sparsity/flops_per_example|sparsity/flops_ratio|sparsity_global_step/flops_ratio|val_acc"
PAGES = {
    "scalars": ("?tagFilter=" + urllib.parse.quote(TAGS) + "#timeseries", None),
    "custom_scalars": ("#custom_scalars", None),
    "hparams": ("#hparams", None),
}
# the sweep's chart for one run: its four series, the run list their legend
ONE_RUN = {"custom_scalars_one_run": ("#custom_scalars", "budget20%_seed0")}


def make_runs(root: Path) -> dict[str, Path]:
    """The three log directories: one fit, one resumed fit, one sweep (made if missing)."""
    dirs = {"single": root / "single", "resumed": root / "resumed", "sweep": root / "sweep"}
    config = str(ROOT / "configs" / "digits_budget.yaml")
    if not dirs["single"].exists():
        fit = [*CLI, "fit", "--config", config, f"--trainer.default_root_dir={dirs['single']}"]
        subprocess.run([*fit, f"--trainer.logger.save_dir={dirs['single']}"], check=True)
    if not dirs["resumed"].exists():
        where = [
            f"--trainer.default_root_dir={dirs['resumed']}",
            f"--trainer.logger.save_dir={dirs['resumed']}",
        ]
        first = [*CLI, "fit", "--config", config, *where, "--trainer.max_epochs=2"]
        subprocess.run(first, check=True)
        [ckpt] = sorted(dirs["resumed"].rglob("*.ckpt"))[-1:]
        resume = [*CLI, "fit", "--config", config, *where, f"--ckpt_path={ckpt}"]
        subprocess.run(resume, check=True)
    if not dirs["sweep"].exists():
        sweep = [*CLI, "sweep", "--config", str(ROOT / "configs" / "digits_sweep.yaml")]
        budgets = ["--budgets", "50%,20%,5%", "--seeds", "0,1", "--monitor", "val_acc"]
        subprocess.run([*sweep, *budgets, "--output", str(dirs["sweep"])], check=True)
    return dirs


def free_port() -> int:
    """A TCP port free on localhost now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tensorboard(logdir: Path) -> Iterator[str]:
    """A real TensorBoard server on ``logdir``; its address."""
    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url + "data/runs", timeout=1).read()
                break
            time.sleep(0.5)
        time.sleep(3)  # the first load of the event files
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def shoot(browser: object, url: str, path: Path, runs: str | None = None) -> None:
    """Photograph one page; with ``runs``, the custom-scalars page for those runs only."""
    page = browser.new_page(viewport=VIEW)  # type: ignore[attr-defined]
    page.goto(url, wait_until="networkidle")
    if runs is not None:
        page.get_by_label(RUN_FILTER).fill(runs)
    time.sleep(4)  # charts draw after the data arrives
    page.screenshot(path=str(path))
    page.close()
    print(f"wrote {path.relative_to(ROOT)}")


def main() -> None:
    """Make the runs, serve each with TensorBoard, photograph its pages."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, help="where the runs go (default: a temp dir)")
    parser.add_argument("--browser", default=shutil.which("chromium") or "", help="Chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    runs = args.runs or Path(tempfile.mkdtemp(prefix="lightning_sparsity_tb_"))
    dirs = make_runs(runs)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.browser or None, headless=True)
        for name, logdir in dirs.items():
            pages = {**PAGES, **(ONE_RUN if name == "sweep" else {})}
            with tensorboard(logdir) as url:
                for page, (route, runs) in pages.items():
                    shoot(browser, url + route, DOCS / f"tensorboard_{name}_{page}.png", runs)
        browser.close()


if __name__ == "__main__":
    main()
