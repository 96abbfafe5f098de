"""matplotlib is the ``bench`` extra: the library never imports it, the benchmark scripts import it
only to plot, and a benchmark that plots says which extra to install before it trains."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from helpers import load_benchmark

import rlox_dp

#: scripts whose figures need matplotlib.
PLOTTING = ["dagger", "multimodal", "pusht", "pusht_fewstep"]


def test_the_library_does_not_import_matplotlib():
    package = Path(rlox_dp.__file__).parent
    importing = [str(p.relative_to(package)) for p in sorted(package.rglob("*.py"))
                 if re.search(r"^\s*(import|from)\s+matplotlib", p.read_text(), re.MULTILINE)]
    assert importing == []


@pytest.mark.parametrize("name", PLOTTING)
def test_plotting_benchmark_without_matplotlib_names_the_extra(name, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # any import of matplotlib raises
    bench = load_benchmark(name)  # the module itself imports without matplotlib
    demos = tmp_path / "never_read.zarr"
    demos.mkdir()
    args = {"dagger": ["--demos", str(demos), "--out", str(tmp_path)],
            "multimodal": ["--out", str(tmp_path)],
            "pusht": ["--demos", str(demos), "--out", str(tmp_path)],
            "pusht_fewstep": ["--demos", str(demos), "--keep", str(tmp_path), "--out", str(tmp_path)]}
    with pytest.raises(ImportError, match=r'matplotlib.*pip install -e "\.\[bench\]"'):
        bench.main(args[name])  # stops before loading demonstrations or training
