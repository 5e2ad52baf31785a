"""``python kill_fit.py OUT EVERY HOOK AT AFTER``: the resume fit, SIGKILLed at one hook."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from tests.resume_fit import fit

if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    out, every, hook, at, after = sys.argv[1:]
    fit(Path(out), int(every), (hook, int(at), after == "after"))
    raise SystemExit("the fit finished without being killed")
