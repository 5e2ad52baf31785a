"""Every number the README quotes from one of its commands, run again; drift fails.

    python benchmarks/readme_numbers.py            # run the commands, compare, exit 1 on drift
    python benchmarks/readme_numbers.py --write    # put what they print now into README.md,
                                                   # and the sweeps' frontier.png into docs/

The commands run as the README gives them (``python -m lightning_sparsity.cli ...``, in a
temporary directory, 2 torch threads: the README's numbers are from 2 cores, and a CPU fit's
last digits depend on the thread count). Timings ("7 runs in 18 s", "about 10 s") are not
compared. ``tests/test_readme.py`` (slow) runs the check.

What is compared (each a :class:`Quote`: a pattern in the README, its groups the numbers):

* the budget sweep's frontier table (``sweep --config configs/digits_sweep.yaml --budgets
  50%,20%,5% --seeds 0,1 --monitor val_acc``), its number of runs and epochs per run; its
  ``frontier.png`` is ``docs/digits_frontier.png``;
* the same sweep across pruning criteria (``--scores magnitude,random,taylor``): its table,
  runs and epochs; its ``frontier.png`` is ``docs/digits_frontier_scores.png``;
* ``demo --pattern 2:4``: realizable FLOPs over dense at the end, and the final val_acc;
  ``demo`` (the default 20% budget): the final val_acc;
* ``examples/digits_training_compute.py``: its three lines (RigL, a stop and an adjust
  budget on training compute).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FRONTIER_PNG = ROOT / "docs" / "digits_frontier.png"
SCORES_PNG = ROOT / "docs" / "digits_frontier_scores.png"
SWEEP = [
    "sweep", "--config", str(ROOT / "configs" / "digits_sweep.yaml"), "--budgets", "50%,20%,5%",
    "--seeds", "0,1", "--monitor", "val_acc",
]  # fmt: skip
SCORES = [*SWEEP, "--scores", "magnitude,random,taylor"]
#: each sweep's output folder under the work directory, and where its frontier.png goes
PLOTS = {"out": FRONTIER_PNG, "scores": SCORES_PNG}


def command(args: list[str], cwd: Path, script: Path | None = None) -> str:
    """``lightning-sparsity ARGS`` (or ``python SCRIPT ARGS``) as a fresh process with 2
    torch threads: its stdout.

    Raises:
        RuntimeError: if it exits with an error (its stderr's end).
    """
    program = ["-m", "lightning_sparsity.cli"] if script is None else [str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, *program, *args],
        cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=3600,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"lightning-sparsity {' '.join(args)}: {done.stderr[-2000:]}")
    return done.stdout


@dataclass(frozen=True)
class Quote:
    """Numbers in the README: ``pattern``'s groups, and what the commands give for them."""

    name: str
    pattern: str
    values: tuple[str, ...]

    def found(self, text: str) -> re.Match[str]:
        """The README's quote.

        Raises:
            LookupError: if the README no longer holds it.
        """
        # a space of the pattern is any run of whitespace: the README's lines wrap anywhere
        pattern = re.sub(r"(?<!\\) ", r"\\s+", self.pattern)
        match = re.search(pattern, text, flags=re.MULTILINE)
        if match is None:
            raise LookupError(f"{self.name}: the README no longer quotes /{self.pattern}/")
        return match

    def drift(self, text: str) -> str | None:
        """Where the README's numbers differ from the commands', or ``None``."""
        quoted = self.found(text).groups()
        if quoted == self.values:
            return None
        pairs = zip(quoted, self.values, strict=True)
        return f"{self.name}: " + "; ".join(f"README {a!r}, now {b!r}" for a, b in pairs if a != b)

    def write(self, text: str) -> str:
        """``text`` with the commands' numbers in place of the README's."""
        match = self.found(text)
        parts, end = [], match.start()
        for i, value in enumerate(self.values, 1):
            parts += [text[end : match.start(i)], value]
            end = match.end(i)
        return text[: match.start()] + "".join(parts) + text[end:]


def _sweep(work: Path, args: list[str], out: str) -> tuple[str, int, int]:
    """Run a sweep into ``work/out``: its frontier table, its number of runs, their epochs."""
    command([*args, "--output", str(work / out)], work)
    table = (work / out / "frontier.md").read_text().split("\n\n")[0].rstrip("\n")
    runs = json.loads((work / out / "frontier.json").read_text())["runs"]
    epochs = {r["epochs"] for r in runs}
    if len(epochs) != 1:
        raise RuntimeError(f"the sweep's runs ran {sorted(epochs)} epochs, not one number")
    return table + "\n", len(runs), epochs.pop()


def sweep_quotes(work: Path) -> list[Quote]:
    """The sweep's table, runs and epochs (and its ``frontier.png`` at ``work/out``)."""
    table, runs, epochs = _sweep(work, SWEEP, "out")
    return [
        Quote("sweep table", r"^(\| run \| done \| val_acc .*\|\n(?:\|.*\|\n)+)", (table,)),
        Quote(
            "sweep runs and epochs",
            r"(\d+) runs in [\d.]+ s \((\d+) epochs each\)",
            (str(runs), str(epochs)),
        ),
    ]


def scores_quotes(work: Path) -> list[Quote]:
    """The sweep across criteria: table, runs, epochs (its ``frontier.png``: ``work/scores``)."""
    table, runs, epochs = _sweep(work, SCORES, "scores")
    return [
        Quote(
            "sweep across criteria, table",  # the table whose first pruned row is magnitude's
            r"^(\| run \| done \| val_acc .*\|\n\|.*\|\n\| dense .*\|\n"
            r"\| magnitude 50% .*\|\n(?:\|.*\|\n)*)",
            (table,),
        ),
        Quote(
            "sweep across criteria, runs and epochs",
            r"(\d+) runs across criteria in [\d.]+ min \((\d+) epochs each\)",
            (str(runs), str(epochs)),
        ),
    ]


def _final_acc(stdout: str) -> str:
    found = re.search(r"^final val_acc: (\d\.\d{3})$", stdout, flags=re.MULTILINE)
    if found is None:
        raise RuntimeError(f"the demo printed no final val_acc:\n{stdout[-1000:]}")
    return found.group(1)


def demo_quotes(work: Path) -> list[Quote]:
    """``demo --pattern 2:4`` (realizable/dense at the end, val_acc) and ``demo``'s val_acc."""
    two_four = command(["demo", "--pattern", "2:4", "--output", str(work / "24")], work)
    history = json.loads((work / "24" / "demo" / "version_0" / "sparsity_history.json").read_text())
    ratio = history[-1]["flops_realizable"] / history[-1]["flops"]
    default = command(["demo", "--output", str(work / "default")], work)
    return [
        Quote(
            "demo --pattern 2:4 and demo",
            r"realizable FLOPs (\d\.\d{3}) of dense at the end of the ramp, val_acc"
            r" (\d\.\d{3}); (\d\.\d{3}) with the default 20% FLOP budget",  # lines may wrap
            (f"{ratio:.3f}", _final_acc(two_four), _final_acc(default)),
        )
    ]


def training_quotes(work: Path) -> list[Quote]:
    """``examples/digits_training_compute.py``: its three lines (RigL, two budgets)."""
    out = command([], work, ROOT / "examples" / "digits_training_compute.py")
    lines = [line for line in out.splitlines() if " epochs, val_acc " in line]
    if len(lines) != 3:
        raise RuntimeError(f"digits_training_compute.py printed {len(lines)} runs:\n{out[-1000:]}")
    block = "\n".join(lines) + "\n"
    return [
        Quote("digits_training_compute.py", r"^(RigL 90% ERK: .*\n(?:magnitude .*\n){2})", (block,))
    ]


SOURCES: dict[str, Callable[[Path], list[Quote]]] = {
    "sweep": sweep_quotes,
    "scores": scores_quotes,
    "demo": demo_quotes,
    "training": training_quotes,
}


def quotes(work: Path, only: list[str] | None = None) -> list[Quote]:
    """Run the commands (``only``: of these sources) in ``work``; their quotes."""
    out: list[Quote] = []
    for name, source in SOURCES.items():
        if only is None or name in only:
            out += source(work)
    return out


def check(only: list[str] | None = None) -> list[str]:
    """Run the commands; the README's quotes that drifted (empty: none)."""
    text = README.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        return [d for q in quotes(Path(tmp), only) if (d := q.drift(text)) is not None]


def write(only: list[str] | None = None) -> list[str]:
    """Run the commands; put their numbers into the README and the frontier plots into docs/.

    Returns:
        What changed, then a line per plot written.
    """
    text = README.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        found = quotes(Path(tmp), only)
        changed = [d for q in found if (d := q.drift(text)) is not None]
        for q in found:
            text = q.write(text)
        for out, dest in PLOTS.items():
            png = Path(tmp) / out / "frontier.png"
            if png.is_file():
                shutil.copyfile(png, dest)
                changed.append(f"{dest} written again")
    README.write_text(text)
    return changed


def main() -> int:
    """Check (exit 1 on drift) or ``--write``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update README.md and docs/")
    parser.add_argument("--only", choices=sorted(SOURCES), action="append", help="one source")
    args = parser.parse_args()
    drift = write(args.only) if args.write else check(args.only)
    for line in drift:
        print(line)
    if args.write:
        quoted = sum(not line.endswith(" written again") for line in drift)
        print(f"README.md: {quoted} quotes updated")
        return 0
    print("no drift" if not drift else f"{len(drift)} quotes drifted")
    return 1 if drift else 0


if __name__ == "__main__":
    raise SystemExit(main())
