"""Lets nbgrader's JupyterLab extensions (the formgrader) find the course when Jupyter
runs from the repository root, as `make lab` starts it. The real configuration is
assessments/nbgrader_config.py."""

import os

load_subconfig(  # noqa: F821 - provided by traitlets when it loads this file
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "assessments", "nbgrader_config.py")
)
