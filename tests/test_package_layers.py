"""Package layers: envs <- evaluation <- experts, without import cycles.

``rlox_dp.envs`` (env definitions, factory, specs) must not import ``rlox_dp.evaluation`` or
``rlox_dp.experts`` while it is imported: they import it, so doing so makes a cycle that breaks
whichever of them a program imports first. Each check runs in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_envs_do_not_import_evaluation_or_experts():
    out = run_python(
        "import sys, rlox_dp.envs\n"
        "up = sorted(m for m in sys.modules if m.startswith(('rlox_dp.evaluation', 'rlox_dp.experts')))\n"
        "assert not up, up\n"
    )
    assert out.returncode == 0, out.stderr[-3000:]


def test_experts_import_first():
    """``rlox_dp.experts`` (and so ``rlox_dp.evaluation`` and ``rlox_dp.envs``) as a program's first import."""
    out = run_python("import rlox_dp.experts.pusht")
    assert out.returncode == 0, out.stderr[-3000:]
