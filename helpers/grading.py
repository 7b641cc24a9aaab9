"""Checks the lessons' hidden tests share: run a student's cell in another process.

Anything a server replica computes from a request — a routing choice, a cache key — must
come out the same in every replica, or a balancer moving a request changes its answer.
Python's ``hash()`` of a string is salted per process, so a function that uses it agrees
with itself and with nobody else. The only honest check is a second interpreter: run the
student's whole cell there (so imports and helpers at the top of the cell come along),
under another hash seed, and compare.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["cell_defining", "evaluate_in_fresh_process"]


def cell_defining(function: str, cells: Sequence[str]) -> str:
    """The most recent cell (of IPython's ``In``) that defines ``function`` at top level."""
    pattern = re.compile(rf"^(async\s+)?def {re.escape(function)}\(", re.M)
    for cell in reversed(cells):
        if pattern.search(cell):
            return cell
    raise AssertionError(f"no cell defines {function}(): run the cell with your answer first")


def evaluate_in_fresh_process(cell: str, expression: str, *, hash_seed: int = 12345,
                              timeout_s: float = 120) -> Any:
    """Run ``cell`` in a new interpreter under ``hash_seed``; return ``expression``'s value.

    The value must be a Python literal (str, number, list, dict, ...). A failure in the
    other process becomes an AssertionError that says what broke there.
    """
    probe = f"{cell}\n\nprint(repr({expression}))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
                          timeout=timeout_s)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise AssertionError("your cell failed in a fresh process; keep what your function "
                             f"needs in its cell: {last}")
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])
