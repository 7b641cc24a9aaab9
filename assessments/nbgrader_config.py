"""nbgrader configuration of the course (run nbgrader from this folder, or use the Makefile).

Layout:
    assessments/source/<lesson>/<lesson>.ipynb   the one source of truth, with solutions
                                                 (### BEGIN SOLUTION) and hidden tests
    notebooks/<lesson>/                          the student release (generate_assignment)
    solutions/<lesson>/                          worked solutions (generate_solution):
                                                 solutions kept, delimiters, hidden tests
                                                 and mark schemes removed, never executed
    assessments/submitted|autograded|feedback    local grading state, git-ignored
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from course_preprocessors import HideHiddenTestDetails, StripSolutionDelimiters  # noqa: E402
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import (  # noqa: E402
    ClearHiddenTests,
    ClearMarkScheme,
    ClearOutput,
    GetGrades,
    IncludeHeaderFooter,
    LockCells,
)

c = get_config()  # noqa: F821 - provided by traitlets when it loads this file

c.CourseDirectory.course_id = "realtime-ml-serving"
c.CourseDirectory.root = HERE
c.CourseDirectory.release_directory = os.path.join("..", "notebooks")
c.CourseDirectory.solution_directory = os.path.join("..", "solutions")
# Data files a lesson writes while it runs never travel with a release or submission.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "scratch", "*.parquet"]

# A limit per *cell*, not per lesson. The slowest cell of any lesson takes about 50 s in
# the full profile on a 2-core machine; five minutes leaves room for a slower laptop,
# and an infinite loop in a student's cell costs five minutes, not ten.
# Both settings are needed: nbgrader's Execute and nbconvert's ExecutePreprocessor.
c.Execute.timeout = 300
c.ExecutePreprocessor.timeout = 300
c.Execute.kernel_name = "python3"
c.ExecutePreprocessor.kernel_name = "python3"

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Worked solutions: keep the solutions, drop what only graders see, do not execute.
c.GenerateSolution.preprocessors = [
    IncludeHeaderFooter,
    LockCells,
    ClearOutput,
    ClearHiddenTests,
    ClearMarkScheme,
    StripSolutionDelimiters,
]
# The mark scheme sits inside the model answer of a written exercise (a manually
# graded answer cell), where instructors see it in the source.
c.ClearMarkScheme.enforce_metadata = False

# Feedback shows scores, the student's code and visible tests, never the hidden tests'
# code, their tracebacks, or a mark scheme.
c.GenerateFeedback.preprocessors = [
    GetGrades,
    HideHiddenTestDetails,
    ClearHiddenTests,
    ClearMarkScheme,
    CSSHTMLHeaderPreprocessor,
]

# The exchange (nbgrader's release/collect/feedback mailbox) lives inside the course:
# the system-wide default, /srv/nbgrader/exchange, is not writable on a laptop.
c.Exchange.root = os.path.join(HERE, "exchange")
os.makedirs(c.Exchange.root, exist_ok=True)
