"""The nbgrader pipeline, end to end, on a temporary copy of the course.

- the committed notebooks/ and solutions/ equal a fresh generation from source;
- nothing only graders may see (solutions, hidden tests, mark schemes) reaches students;
- an autograde round trip: the source, submitted as one student, runs every cell without
  an error and passes every graded test, scoring full automatic marks (what
  `nbgrader validate` asserts); the untouched release, submitted as another, fails every
  graded test and scores zero (what `nbgrader validate --invert` asserts).

Executing lessons is what takes time, so each lesson is executed twice in all, here: the
source's autograde is also the check that the solutions run top to bottom (the solutions
are the source less its hidden tests; `make test-full` runs them on their own, under
nbval, in the full profile). The two submissions are graded in two course copies at once,
and every assertion reads the same gradebooks and autograded notebooks.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "assessments"))
import course_pipeline as pipeline  # noqa: E402

LESSONS = pipeline.lessons(ROOT)
GRADER_ONLY = ["BEGIN HIDDEN TESTS", "END HIDDEN TESTS", "BEGIN SOLUTION", "END SOLUTION",
               "BEGIN MARK SCHEME", "END MARK SCHEME"]
SOURCE_STUDENT, RELEASE_STUDENT = "instructor-source", "untouched-release"

pytestmark = pytest.mark.slow


def _notebook(kind: str, lesson: str, root: Path = ROOT) -> Path:
    if kind == "source":
        return root / "assessments" / "source" / lesson / f"{lesson}.ipynb"
    if kind == "autograded":  # the source student's, as `make autograde` wrote it
        return (root / "assessments" / "autograded" / SOURCE_STUDENT / lesson /
                f"{lesson}.ipynb")
    return root / kind / lesson / f"{lesson}.ipynb"


@pytest.fixture(scope="module")
def fresh_course(tmp_path_factory) -> Path:
    course = pipeline.copy_course(tmp_path_factory.mktemp("course"))
    pipeline.generate(course)
    return course


def test_there_are_lessons():
    assert LESSONS, "assessments/source holds no lesson"


@pytest.mark.parametrize("kind", ["notebooks", "solutions"])
def test_committed_notebooks_match_a_fresh_generation(fresh_course, kind):
    def listing(root):
        return sorted(p.relative_to(root / kind) for p in (root / kind).rglob("*.ipynb"))

    committed, fresh = listing(ROOT), listing(fresh_course)
    assert committed == fresh, f"{kind}/ holds other notebooks than a fresh `make notebooks`"
    for rel in fresh:
        assert pipeline.notebook_json(ROOT / kind / rel) == \
            pipeline.notebook_json(fresh_course / kind / rel), \
            f"{kind}/{rel} differs from a fresh generation: run `make notebooks` and commit"


@pytest.mark.parametrize("kind", ["notebooks", "solutions"])
def test_nothing_only_graders_see_reaches_students(kind):
    for path in (ROOT / kind).rglob("*.ipynb"):
        text = path.read_text()
        leaked = [marker for marker in GRADER_ONLY if marker in text]
        assert not leaked, f"{path.relative_to(ROOT)} contains {leaked}"


def test_release_keeps_the_exercises_and_drops_their_answers():
    for lesson in LESSONS:
        source = _notebook("source", lesson).read_text()
        release = _notebook("notebooks", lesson).read_text()
        assert "BEGIN HIDDEN TESTS" in source, f"{lesson} has no hidden tests"
        assert "raise NotImplementedError()" in release
        assert "YOUR ANSWER HERE" in release


@pytest.mark.parametrize("kind", ["source", "notebooks", "solutions"])
def test_committed_notebooks_carry_no_outputs_and_use_the_course_kernel(kind):
    for lesson in LESSONS:
        nb = json.loads(_notebook(kind, lesson).read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3"
        with_outputs = [i for i, c in enumerate(nb["cells"]) if c.get("outputs")]
        assert not with_outputs, f"{kind} {lesson}: cells {with_outputs} carry outputs"


@pytest.fixture(scope="module")
def grades(tmp_path_factory, fresh_course) -> dict[tuple[str, str], list]:
    """Autograde the source and the committed release; return their cell grades."""
    courses = {}
    for student, kind in [(SOURCE_STUDENT, "source"), (RELEASE_STUDENT, "notebooks")]:
        # A fresh copy, no gradebook: what `make autograde` meets on a fresh clone.
        course = pipeline.copy_course(tmp_path_factory.mktemp(student))
        for lesson in LESSONS:
            pipeline.submit(course, student, lesson, _notebook(kind, lesson))
        courses[student] = course

    def grade_all(student: str) -> dict[str, float]:
        seconds, start = {}, time.perf_counter()

        def lap(message: str) -> None:
            nonlocal start
            seconds[message.split(":")[0]] = time.perf_counter() - start
            start = time.perf_counter()

        graded = pipeline.autograde_submitted(courses[student], log=lap)
        assert graded == LESSONS
        pipeline.feedback_autograded(courses[student], log=lambda message: None)
        return seconds

    with ThreadPoolExecutor(max_workers=2) as pool:
        timings = dict(zip(courses, pool.map(grade_all, courses), strict=True))
    for student, seconds in timings.items():
        for lesson, s in seconds.items():
            print(f"autograde {student:18s} {lesson}: {s:.1f} s")
    grades = {(student, lesson): pipeline.read_grades(courses[student], lesson, student)
              for student in courses for lesson in LESSONS}
    grades["courses"] = courses
    return grades


def test_a_lesson_without_submissions_is_skipped_not_an_error(tmp_path):
    course = pipeline.copy_course(tmp_path / "course")
    said = []
    assert pipeline.autograde_submitted(course, log=said.append) == []
    assert len(said) == len(LESSONS) and all("skipped" in line for line in said)
    assert pipeline.feedback_autograded(course, log=said.append) == []
    assert pipeline.export_grades(course, log=said.append) is None
    assert "run make autograde first" in said[-1]


def _hidden_lines(lesson: str) -> list[str]:
    """Lines of the hidden tests that appear nowhere in the student's release."""
    release = _notebook("notebooks", lesson).read_text()
    lines, hidden = [], False
    for cell in json.loads(_notebook("source", lesson).read_text())["cells"]:
        for line in "".join(cell["source"]).splitlines():
            if "BEGIN HIDDEN TESTS" in line or "END HIDDEN TESTS" in line:
                hidden = "BEGIN" in line
            elif hidden and len(line.strip()) > 20 and line.strip() not in release:
                lines.append(line.strip())
    return lines


@pytest.mark.parametrize("lesson", LESSONS)
def test_feedback_shows_scores_but_no_hidden_test(grades, lesson):
    import html

    for student in (SOURCE_STUDENT, RELEASE_STUDENT):
        (page,) = (grades["courses"][student] / "assessments" / "feedback" / student /
                   lesson).glob("*.html")
        text = html.unescape(page.read_text())
        assert "Score" in text
        leaked = [line for line in _hidden_lines(lesson) if line in text]
        assert not leaked, f"{student}'s feedback for {lesson} shows hidden tests: {leaked[:2]}"


@pytest.mark.parametrize("lesson", LESSONS)
def test_source_runs_every_cell_without_an_error(grades, lesson):
    """What nbval checked on solutions/, read from the autograde's own execution."""
    executed = json.loads(_notebook("autograded", lesson, grades["courses"][SOURCE_STUDENT])
                          .read_text())
    errors = [f"{cell.get('id', i)}: {out['ename']}: {out['evalue'][:300]}"
              for i, cell in enumerate(executed["cells"]) if cell["cell_type"] == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors, f"{lesson}, executed as the source: {errors}"
    ran = [cell for cell in executed["cells"] if cell["cell_type"] == "code"]
    assert all(cell.get("execution_count") for cell in ran if "".join(cell["source"]).strip()), \
        f"{lesson}: some cells were never executed"


@pytest.mark.parametrize("lesson", LESSONS)
def test_source_passes_every_graded_test(grades, lesson):
    cells = [g for g in grades[SOURCE_STUDENT, lesson] if g.is_test]
    assert cells, f"{lesson} has no autograded test cells"
    failing = [g.grade_id for g in cells if g.auto_score != g.max_score]
    assert not failing, f"{lesson}: the solution fails {failing}"


@pytest.mark.parametrize("lesson", LESSONS)
def test_release_fails_every_graded_test(grades, lesson):
    cells = [g for g in grades[RELEASE_STUDENT, lesson] if g.is_test]
    passing = [g.grade_id for g in cells if g.auto_score]
    assert not passing, f"{lesson}: the untouched release passes {passing}"


@pytest.mark.parametrize("lesson", LESSONS)
def test_automatic_totals_are_full_for_source_and_zero_for_release(grades, lesson):
    def total(student):
        cells = [g for g in grades[student, lesson] if g.is_test]
        return sum(g.auto_score or 0 for g in cells), sum(g.max_score for g in cells)

    source_score, source_max = total(SOURCE_STUDENT)
    release_score, release_max = total(RELEASE_STUDENT)
    assert source_max == release_max > 0
    assert source_score == source_max
    assert release_score == 0


@pytest.mark.parametrize("lesson", LESSONS)
def test_written_answers_wait_for_a_human(grades, lesson):
    manual = [g for g in grades[SOURCE_STUDENT, lesson] if not g.is_test]
    assert manual, f"{lesson} has no manually graded answer"
    assert all(g.needs_manual_grade for g in manual)
    # nbgrader scores an untouched answer cell 0 without asking a human
    untouched = [g for g in grades[RELEASE_STUDENT, lesson] if not g.is_test]
    assert all(g.auto_score == 0 and not g.needs_manual_grade for g in untouched)
