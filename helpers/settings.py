"""Course-wide settings read from the environment: the run profile and where data lives.

Two profiles run the *same code path* at different sizes:

- ``full`` (the default): the sizes a student runs on their own machine.
- ``quick``: what CI sets (``COURSE_PROFILE=quick``) so that every lesson executes
  headlessly in about a minute on a 2-core CPU.

Everything is read when a function is called, never on import, so a test or a
notebook can change the environment and see the change at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

__all__ = ["PROFILE_ENV", "profile", "is_quick", "by_profile", "course_root", "data_dir"]

PROFILE_ENV = "COURSE_PROFILE"
_PROFILES = ("full", "quick")

T = TypeVar("T")


def profile() -> str:
    """The active profile, ``"full"`` or ``"quick"``."""
    value = os.environ.get(PROFILE_ENV, "full").strip().lower() or "full"
    if value not in _PROFILES:
        raise ValueError(f"{PROFILE_ENV}={value!r} is not a profile; use one of {_PROFILES}")
    return value


def is_quick() -> bool:
    return profile() == "quick"


def by_profile(full: T, quick: T) -> T:
    """Pick an experiment size: ``n_rows = by_profile(full=2_000_000, quick=100_000)``."""
    return quick if is_quick() else full


def course_root() -> Path:
    """The course checkout: the folder that holds ``helpers/`` (an editable install)."""
    return Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Generated data and the model repository; ``COURSE_DATA_DIR`` overrides ``<root>/data``."""
    override = os.environ.get("COURSE_DATA_DIR")
    return Path(override).expanduser().resolve() if override else course_root() / "data"
