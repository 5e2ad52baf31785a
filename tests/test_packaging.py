"""What imports what: counting and pruning need no Lightning; the callback runs on either
Lightning package alone (the other blocked in a fresh interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LIGHTNING = ("pytorch_lightning", "lightning", "lightning_fabric")


def run(code: str, block: tuple[str, ...] = ()) -> str:
    """Run ``code`` in a fresh interpreter with the packages in ``block`` not importable."""
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in block)
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"},
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_counting_and_pruning_import_no_lightning_package() -> None:
    # before: `import lightning_sparsity.counting` imported pytorch_lightning
    out = run(
        """
        import lightning_sparsity.counting, lightning_sparsity.pruning, lightning_sparsity.control
        import lightning_sparsity as ls
        names = [m for m in sys.modules if m.split(".")[0] in {LIGHTNING!r}]
        print(sorted(names))
        """.replace("{LIGHTNING!r}", repr(LIGHTNING))
    )
    assert out.strip() == "[]"


def fit(
    package: str, callback: str, model: str = "DigitsCNN()", data: str = "DigitsDataModule()"
) -> str:
    """Code that fits ``model`` for one epoch under ``package``'s Trainer with ``callback``."""
    return f"""
import warnings
warnings.filterwarnings("ignore")
import lightning_sparsity as ls
from lightning_sparsity.demo import DigitsCNN, DigitsDataModule
import {package} as L
schedule = ls.schedules.Linear(0.5, start_epoch=0, end_epoch=1)
callback = {callback}(ls.MagnitudePruner(schedule=schedule), write_files=False)
model = {model}
print(isinstance(callback, L.Callback), isinstance(model, L.LightningModule))
trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, callbacks=[callback])
trainer.fit(model, {data})
print([round(p.pruned_sparsity, 3) for p in callback.history])
"""


UNIFIED = "__import__('lightning_sparsity.lightning').lightning.SparsityCallback"


def test_the_callback_and_demo_with_only_the_unified_lightning_package() -> None:
    # before: lightning_sparsity.lightning needed pytorch_lightning installed as well
    for callback in ("ls.SparsityCallback", UNIFIED):
        out = run(fit("lightning.pytorch", callback), block=("pytorch_lightning",))
        assert out.split("\n")[:2] == ["True True", "[0.0, 0.5]"]


@pytest.mark.slow
def test_the_callback_and_demo_with_only_pytorch_lightning() -> None:
    out = run(fit("pytorch_lightning", "ls.SparsityCallback"), block=("lightning",))
    assert out.split("\n")[:2] == ["True True", "[0.0, 0.5]"]
    missing = run(
        """
        try:
            import lightning_sparsity.lightning
        except ImportError as err:
            print(err)
        """,
        block=("lightning",),
    )
    assert "needs the unified `lightning` package" in missing


@pytest.mark.slow
def test_the_unified_trainer_runs_the_pytorch_lightning_callback() -> None:
    # both installed: lightning.pytorch.Trainer takes ls.SparsityCallback, a
    # pytorch_lightning.Callback (the model must be a lightning.pytorch module)
    model = "__import__('tests.test_unified_lightning').test_unified_lightning.Tiny()"
    out = run(fit("lightning.pytorch", "ls.SparsityCallback", model=model, data="None"))
    assert out.split("\n")[:2] == ["False True", "[0.0, 0.5]"]
