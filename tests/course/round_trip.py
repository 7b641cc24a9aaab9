"""The autograde round trip the lesson tests read, and what they share about it.

Executing lessons is what the lesson tests spend their time on, and two of them can run at
once on two cores (as two notebooks open side by side would). So, as soon as tests that
read the round trip are collected, the autograde starts in a thread of its own (nbgrader
runs in a subprocess, its kernels in theirs) and executes every lesson while the grading
corpus (``test_grading_discriminates.py``) executes its scenarios in another kernel. The
tests of ``test_pipeline.py`` wait for it.

The round trip, as an instructor runs it from a fresh clone: the source of every lesson
is submitted as one student (it must run every cell and score full automatic marks: what
`nbgrader validate` asserts), and the untouched release of one lesson as another (it must
score zero: `nbgrader validate --invert`). That every graded test of *every* lesson fails on
the untouched release is shown exercise by exercise by the corpus's ``untouched`` answers,
which reuse the set-up it has already run instead of executing each lesson a second time.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "assessments"))
import course_pipeline as pipeline  # noqa: E402

LESSONS = pipeline.lessons(ROOT)
SOURCE_STUDENT, RELEASE_STUDENT = "instructor-source", "untouched-release"
RELEASE_LESSON = LESSONS[0]  # the quickest to execute: its set-up is small


def notebook(kind: str, lesson: str, root: Path = ROOT) -> Path:
    if kind == "source":
        return root / "assessments" / "source" / lesson / f"{lesson}.ipynb"
    if kind == "autograded":  # the source student's, as `make autograde` wrote it
        return (root / "assessments" / "autograded" / SOURCE_STUDENT / lesson /
                f"{lesson}.ipynb")
    return root / kind / lesson / f"{lesson}.ipynb"


def autograde_round_trip(course: Path) -> float:
    """Submit, autograde and write feedback in a fresh copy of the course (no gradebook:
    what `make autograde` meets on a fresh clone); return the seconds it took."""
    start = time.perf_counter()
    pipeline.copy_course(course)
    for lesson in LESSONS:
        pipeline.submit(course, SOURCE_STUDENT, lesson, notebook("source", lesson))
    pipeline.submit(course, RELEASE_STUDENT, RELEASE_LESSON, notebook("notebooks", RELEASE_LESSON))
    assert pipeline.autograde_submitted(course, log=lambda message: None) == LESSONS
    pipeline.feedback_autograded(course, log=lambda message: None)
    return time.perf_counter() - start
