"""The numbers the README quotes are what its commands print now (timings aside)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_numbers():  # benchmarks/ is not a package: load the script by its path
    spec = importlib.util.spec_from_file_location(
        "readme_numbers", ROOT / "benchmarks" / "readme_numbers.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_quote_finds_its_numbers_and_writes_new_ones() -> None:
    pattern = r"val_acc (\d\.\d{3}); (\d\.\d{3}) with"
    quote = readme_numbers().Quote("q", pattern, ("0.997", "0.990"))
    text = "a demo: val_acc 0.992;\n  1.000 with the default budget"  # a wrapped line
    assert quote.drift(text) == "q: README '0.992', now '0.997'; README '1.000', now '0.990'"
    assert quote.write(text) == "a demo: val_acc 0.997;\n  0.990 with the default budget"
    assert quote.drift(quote.write(text)) is None
    with pytest.raises(LookupError, match="the README no longer quotes"):
        quote.drift("nothing here")


@pytest.mark.slow
def test_the_readme_numbers_reproduce() -> None:
    # the two sweeps (7 and 19 runs) and two demos, as the README gives them: minutes on 2 cores
    assert readme_numbers().check() == []
