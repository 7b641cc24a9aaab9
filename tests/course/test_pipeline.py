"""The nbgrader pipeline, end to end, on temporary copies of the course.

- the committed notebooks/ and solutions/ equal a fresh generation from source;
- nothing only graders may see (solutions, hidden tests, mark schemes) reaches students;
- an autograde round trip (started in the background by ``conftest.py``): the source of
  every lesson, submitted as one student, runs every cell without an error and passes
  every graded test, scoring full automatic marks (what `nbgrader validate` asserts); the
  untouched release of one lesson, submitted as another, fails every graded test and
  scores zero (what `nbgrader validate --invert` asserts). The corpus's ``untouched``
  answers show the same of every exercise of every lesson, and a test here checks that
  every graded test belongs to an exercise of the corpus.

Executing lessons is what takes time, so each lesson is executed once here: the source's
autograde is also the check that the solutions run top to bottom (the solutions are the
source less its hidden tests; `make test-full` runs them on their own, under nbval, in
the full profile).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from round_trip import LESSONS, RELEASE_LESSON, RELEASE_STUDENT, SOURCE_STUDENT, notebook, pipeline
from test_grading_discriminates import SCENARIOS

GRADER_ONLY = ["BEGIN HIDDEN TESTS", "END HIDDEN TESTS", "BEGIN SOLUTION", "END SOLUTION",
               "BEGIN MARK SCHEME", "END MARK SCHEME"]
ROOT = pipeline.COURSE_ROOT

pytestmark = pytest.mark.slow


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
        source = notebook("source", lesson).read_text()
        release = notebook("notebooks", lesson).read_text()
        assert "BEGIN HIDDEN TESTS" in source, f"{lesson} has no hidden tests"
        assert "raise NotImplementedError()" in release
        assert "YOUR ANSWER HERE" in release


@pytest.mark.parametrize("kind", ["source", "notebooks", "solutions"])
def test_committed_notebooks_carry_no_outputs_and_use_the_course_kernel(kind):
    for lesson in LESSONS:
        nb = json.loads(notebook(kind, lesson).read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3"
        with_outputs = [i for i, c in enumerate(nb["cells"]) if c.get("outputs")]
        assert not with_outputs, f"{kind} {lesson}: cells {with_outputs} carry outputs"


@pytest.fixture(scope="module")
def grades(autograded_course) -> dict[tuple[str, str], list]:
    """(student, lesson) -> its cell grades, read from the round trip's gradebook."""
    grades = {(SOURCE_STUDENT, lesson): pipeline.read_grades(autograded_course, lesson,
                                                             SOURCE_STUDENT)
              for lesson in LESSONS}
    grades[RELEASE_STUDENT, RELEASE_LESSON] = pipeline.read_grades(
        autograded_course, RELEASE_LESSON, RELEASE_STUDENT)
    grades["course"] = autograded_course
    return grades


def test_every_graded_test_belongs_to_an_exercise_of_the_corpus():
    """So the corpus's untouched answers prove, lesson by lesson, what the one autograded
    release proves for its lesson: no graded test passes before the student writes."""
    for lesson in LESSONS:
        source = json.loads(notebook("source", lesson).read_text())
        graded = {cell["id"]: cell["metadata"]["nbgrader"]["grade_id"]
                  for cell in source["cells"] if cell["cell_type"] == "code"
                  and cell.get("metadata", {}).get("nbgrader", {}).get("grade")}
        # The corpus tells a graded test from other cells by this name.
        assert all(g.endswith("-tests") for g in graded.values()), graded
        after_an_answer = {cell_id for (le, _), (answer, cells) in SCENARIOS.items()
                           if le == lesson for cell_id in cells[cells.index(answer):]}
        assert set(graded) <= after_an_answer, \
            f"{lesson}: graded cells {sorted(set(graded) - after_an_answer)} follow no answer " \
            "of a SCENARIOS entry"


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
    release = notebook("notebooks", lesson).read_text()
    lines, hidden = [], False
    for cell in json.loads(notebook("source", lesson).read_text())["cells"]:
        for line in "".join(cell["source"]).splitlines():
            if "BEGIN HIDDEN TESTS" in line or "END HIDDEN TESTS" in line:
                hidden = "BEGIN" in line
            elif hidden and len(line.strip()) > 20 and line.strip() not in release:
                lines.append(line.strip())
    return lines


def _students(lesson: str) -> list[str]:
    return [SOURCE_STUDENT] + [RELEASE_STUDENT] * (lesson == RELEASE_LESSON)


@pytest.mark.parametrize("lesson", LESSONS)
def test_feedback_shows_scores_but_no_hidden_test(grades, lesson):
    import html

    for student in _students(lesson):
        (page,) = (grades["course"] / "assessments" / "feedback" / student /
                   lesson).glob("*.html")
        text = html.unescape(page.read_text())
        assert "Score" in text
        leaked = [line for line in _hidden_lines(lesson) if line in text]
        assert not leaked, f"{student}'s feedback for {lesson} shows hidden tests: {leaked[:2]}"


@pytest.mark.parametrize("lesson", LESSONS)
def test_source_runs_every_cell_without_an_error(grades, lesson):
    """What nbval checked on solutions/, read from the autograde's own execution."""
    executed = json.loads(notebook("autograded", lesson, grades["course"]).read_text())
    errors = [f"{cell.get('id', i)}: {out['ename']}: {out['evalue'][:300]}"
              for i, cell in enumerate(executed["cells"]) if cell["cell_type"] == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors, f"{lesson}, executed as the source: {errors}"
    ran = [cell for cell in executed["cells"] if cell["cell_type"] == "code"]
    assert all(cell.get("execution_count") for cell in ran if "".join(cell["source"]).strip()), \
        f"{lesson}: some cells were never executed"


def _total(grades, student: str, lesson: str) -> tuple[float, float]:
    cells = [g for g in grades[student, lesson] if g.is_test]
    return sum(g.auto_score or 0 for g in cells), sum(g.max_score for g in cells)


@pytest.mark.parametrize("lesson", LESSONS)
def test_source_passes_every_graded_test_with_full_marks(grades, lesson):
    cells = [g for g in grades[SOURCE_STUDENT, lesson] if g.is_test]
    assert cells, f"{lesson} has no autograded test cells"
    failing = [g.grade_id for g in cells if g.auto_score != g.max_score]
    assert not failing, f"{lesson}: the solution fails {failing}"
    score, most = _total(grades, SOURCE_STUDENT, lesson)
    assert score == most > 0


def test_the_untouched_release_fails_every_graded_test_and_scores_zero(grades):
    cells = [g for g in grades[RELEASE_STUDENT, RELEASE_LESSON] if g.is_test]
    passing = [g.grade_id for g in cells if g.auto_score]
    assert not passing, f"{RELEASE_LESSON}: the untouched release passes {passing}"
    score, most = _total(grades, RELEASE_STUDENT, RELEASE_LESSON)
    assert score == 0 and most == _total(grades, SOURCE_STUDENT, RELEASE_LESSON)[1] > 0


@pytest.mark.parametrize("lesson", LESSONS)
def test_written_answers_wait_for_a_human(grades, lesson):
    manual = [g for g in grades[SOURCE_STUDENT, lesson] if not g.is_test]
    assert manual, f"{lesson} has no manually graded answer"
    assert all(g.needs_manual_grade for g in manual)


def test_an_untouched_written_answer_scores_zero_without_a_human(grades):
    untouched = [g for g in grades[RELEASE_STUDENT, RELEASE_LESSON] if not g.is_test]
    assert untouched and all(g.auto_score == 0 and not g.needs_manual_grade for g in untouched)
