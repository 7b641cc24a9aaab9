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
