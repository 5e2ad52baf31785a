"""``python kill_scores.py OUT SCORE``: the score fit, SIGKILLed after global step 10
(the first step of epoch 4, 0-based 3)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from tests.score_fit import fit

if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    fit(Path(sys.argv[1]), sys.argv[2], 5, kill_at=10)
    raise SystemExit("the fit finished without being killed")
