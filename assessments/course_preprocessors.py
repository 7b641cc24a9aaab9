"""nbgrader preprocessors of our own, used by nbgrader_config.py."""

from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Unicode


class StripSolutionDelimiters(NbGraderPreprocessor):
    """Remove the ``### BEGIN SOLUTION`` / ``### END SOLUTION`` lines, keep what is between.

    nbgrader's solution output keeps the markers; students reading a worked
    solution should see plain code.
    """

    begin = Unicode("BEGIN SOLUTION").tag(config=True)
    end = Unicode("END SOLUTION").tag(config=True)

    def preprocess_cell(self, cell, resources, index):
        lines = cell.source.split("\n")
        kept = [line for line in lines if self.begin not in line and self.end not in line]
        if len(kept) != len(lines):
            cell.source = "\n".join(kept)
        return cell, resources


class HideHiddenTestDetails(NbGraderPreprocessor):
    """Feedback for students: a test cell's hidden part stays hidden.

    nbgrader restores the hidden tests before grading, so the autograded notebook (and
    the HTML feedback made from it) would show their code, and the traceback of a
    failing one would quote the very line that failed. For each test cell that holds
    a hidden region, this keeps only the last line of an error ("AssertionError: ...")
    and drops the traceback; ``ClearHiddenTests``, after it, removes the code.
    """

    marker = Unicode("BEGIN HIDDEN TESTS").tag(config=True)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code" or self.marker not in cell.source:
            return cell, resources
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                output["traceback"] = [f"{output.get('ename', 'Error')}: "
                                       f"{output.get('evalue', '')} (a hidden test failed)"]
        return cell, resources
