"""``python kill_scores.py OUT SCORE [STEP]``: the score fit (or RigL / SET), SIGKILLed after
global step STEP (default 10: the first step of epoch 4, 0-based 3)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from tests.score_fit import fit

if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    fit(Path(sys.argv[1]), sys.argv[2], 5, kill_at=int(sys.argv[3]) if len(sys.argv) > 3 else 10)
    raise SystemExit("the fit finished without being killed")
