"""The course's nbgrader pipeline, shared by the Makefile and the tests.

    python assessments/course_pipeline.py generate [LESSON ...]   # notebooks/, solutions/
    python assessments/course_pipeline.py autograde               # every submitted lesson
    python assessments/course_pipeline.py feedback                # every autograded lesson
    python assessments/course_pipeline.py grades                  # assessments/grades.csv

``generate`` regenerates ``notebooks/`` (the student release) and ``solutions/`` from
``assessments/source/``. ``autograde`` works from a fresh clone: it registers each
lesson that has submissions in the gradebook (creating it), skips the lessons that
have none, and adds students as they appear. The tests in ``tests/course/`` use the
same functions on a temporary copy of the course to prove that the committed
notebooks are fresh and that grading discriminates (the source scores full marks,
the release zero).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

COURSE_ROOT = Path(__file__).resolve().parent.parent
# What a course copy needs: the config, our preprocessors and the sources.
COURSE_FILES = ["nbgrader_config.py", "course_preprocessors.py", "source"]


def lessons(course: Path = COURSE_ROOT) -> list[str]:
    return sorted(p.name for p in (course / "assessments" / "source").iterdir() if p.is_dir())


# nbgrader treats an assignment id as a glob: "*" does every lesson in one process, where
# one process per lesson would spend about 4 s each just starting nbgrader. Only commands
# that execute nothing use it; autograde runs per lesson, each with its own time limit.
EVERY_LESSON = "*"
# nbgrader processes still running, so a caller can stop them (the tests, when interrupted).
RUNNING: set[subprocess.Popen] = set()
_stopping = threading.Event()


def nbgrader(course: Path, *args: str, timeout: float = 1800) -> str:
    """Run an nbgrader command in ``course``/assessments; raise with its output if it fails."""
    # nbgrader creates a gradebook by running `alembic`, which lives beside this Python.
    if _stopping.is_set():
        raise RuntimeError("stopped: stop_all() was called")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbgrader", *args], cwd=course / "assessments",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,  # its kernels in its process group, to stop them together
    )
    RUNNING.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise
    finally:
        RUNNING.discard(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{out[-4000:]}\n{err[-4000:]}")
    return out + err


def stop_all() -> None:
    """Stop every running nbgrader command, and refuse new ones."""
    _stopping.set()
    for proc in list(RUNNING):
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Stop an nbgrader process and the kernels it started."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def generate(course: Path = COURSE_ROOT, names: list[str] | None = None) -> None:
    """Write notebooks/<lesson>/ and solutions/<lesson>/ from assessments/source/<lesson>/."""
    every = not names or set(names) == set(lessons(course))
    for name in [EVERY_LESSON] if every else names:
        nbgrader(course, "generate_assignment", name, "--force")
        nbgrader(course, "generate_solution", name, "--force")


def copy_course(dst: Path, src: Path = COURSE_ROOT) -> Path:
    """A fresh course root at ``dst`` with the sources only (no release, no gradebook)."""
    (dst / "assessments").mkdir(parents=True)
    for name in COURSE_FILES:
        source = src / "assessments" / name
        target = dst / "assessments" / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(
                "scratch", ".ipynb_checkpoints", "__pycache__"))
        else:
            shutil.copy2(source, target)
    return dst


def notebook_json(path: Path) -> dict:
    return json.loads(path.read_text())


@dataclass(frozen=True)
class CellGrade:
    lesson: str
    student: str
    grade_id: str
    auto_score: float | None
    max_score: float
    needs_manual_grade: bool
    is_test: bool  # an autograded test cell (code, graded, not a solution)


def submit(course: Path, student: str, lesson: str, notebook: Path) -> None:
    folder = course / "assessments" / "submitted" / student / lesson
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(notebook, folder / f"{lesson}.ipynb")


def autograde(course: Path, lesson: str) -> str:
    """Grade every submission of ``lesson``: each is executed, so the time limit grows with
    their number (a full-profile lesson takes a few minutes on two cores)."""
    submitted = course / "assessments" / "submitted"
    submissions = len(list(submitted.glob(f"*/{lesson}/{lesson}.ipynb")))
    return nbgrader(course, "autograde", lesson, "--create", "--force",
                    timeout=1800 * max(1, submissions))


def lessons_with(course: Path, folder: str) -> list[str]:
    """The lessons some student has a notebook for under ``assessments/<folder>/``."""
    root = course / "assessments" / folder
    return [lesson for lesson in lessons(course)
            if any(root.glob(f"*/{lesson}/{lesson}.ipynb"))]


def register(course: Path, lesson: str = EVERY_LESSON) -> None:
    """Put ``lesson`` (by default every lesson) in the gradebook, creating it, without
    touching ``notebooks/``: what an instructor's gradebook holds once the lessons are out.

    nbgrader learns a lesson's graded cells when it generates the release, so this
    generates one into a scratch folder.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        nbgrader(course, "generate_assignment", lesson, "--force",
                 f"--CourseDirectory.release_directory={scratch}")


def autograde_submitted(course: Path = COURSE_ROOT, log=print) -> list[str]:
    """Autograde every lesson with submissions; the ones without are skipped, and said so.

    Every lesson is registered at once; each lesson is then graded on its own.
    """
    submitted = lessons_with(course, "submitted")
    if submitted:
        register(course)
    for lesson in lessons(course):
        if lesson not in submitted:
            log(f"{lesson}: no submissions under assessments/submitted/*/{lesson}/, skipped")
            continue
        autograde(course, lesson)
        log(f"{lesson}: autograded")
    return submitted


def feedback_autograded(course: Path = COURSE_ROOT, log=print) -> list[str]:
    """HTML feedback for every autograded lesson, into ``assessments/feedback/``."""
    graded = lessons_with(course, "autograded")
    if graded:
        nbgrader(course, "generate_feedback", EVERY_LESSON, "--force")
    for lesson in graded:
        log(f"{lesson}: feedback in assessments/feedback/*/{lesson}/")
    if not graded:
        log("nothing is autograded yet: run make autograde first")
    return graded


def export_grades(course: Path = COURSE_ROOT, log=print) -> Path | None:
    out = course / "assessments" / "grades.csv"
    if not (course / "assessments" / "gradebook.db").is_file():
        log("no gradebook yet: run make autograde first")
        return None
    nbgrader(course, "export", "--to", str(out))
    log(f"grades in {out.relative_to(course)}")
    return out


def read_grades(course: Path, lesson: str, student: str) -> list[CellGrade]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'assessments' / 'gradebook.db'}") as gb:
        submission = gb.find_submission_notebook(lesson, lesson, student)
        return [
            CellGrade(lesson, student, grade.name, grade.auto_score, grade.max_score,
                      bool(grade.needs_manual_grade),
                      grade.cell.cell_type == "code" and grade.cell.max_score > 0
                      and grade.name.endswith("-tests"))
            for grade in submission.grades
        ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="regenerate notebooks/ and solutions/")
    gen.add_argument("lessons", nargs="*", help="default: every lesson in assessments/source")
    sub.add_parser("autograde", help="grade assessments/submitted/<student>/<lesson>/")
    sub.add_parser("feedback", help="HTML feedback into assessments/feedback/")
    sub.add_parser("grades", help="export every grade to assessments/grades.csv")
    args = parser.parse_args(argv)
    if args.command == "autograde":
        autograde_submitted()
    elif args.command == "feedback":
        feedback_autograded()
    elif args.command == "grades":
        export_grades()
    else:
        generate(COURSE_ROOT, args.lessons or None)
        for name in args.lessons or lessons():
            print(f"generated notebooks/{name}/ and solutions/{name}/")


if __name__ == "__main__":
    main()
