"""Grading discriminates: plausible wrong answers lose points, a correct answer written in
another style than the reference gets full marks.

Each scenario runs the cells an exercise's grade depends on (the lesson's set-up, the
exercise, its experiment, its graded tests, hidden ones included) from the source notebook,
with the answer cell replaced by one from ``tests/course/answers/<lesson>/``, in a real
kernel under the quick profile — the graded tests measure the answer in the real server
or batcher, as autograding does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSWERS = Path(__file__).resolve().parent / "answers"

# (lesson, exercise) -> (the answer cell, the cells a grade of it needs, in order)
SCENARIOS = {
    ("02_model_server", "router"): ("cell-018", [
        "cell-002", "cell-006", "cell-018", "cell-019", "cell-021", "cell-022", "cell-028"]),
    ("02_model_server", "retries"): ("cell-retry-solution", [
        "cell-002", "cell-006", "cell-retry-solution", "cell-retry-tests", "cell-retry-restart",
        "cell-retry-restart-tests", "cell-028"]),
    ("03_caching", "cache"): ("cell-013", [
        "cell-002", "cell-013", "cell-014", "cell-016", "cell-017"]),
    ("03_caching", "single-flight"): ("cell-sf-solution", [
        "cell-002", "cell-011", "cell-sf-solution", "cell-sf-tests", "cell-sf-server",
        "cell-sf-server-tests"]),
    ("03_caching", "cache-key"): ("cell-key-solution", [
        "cell-002", "cell-key-solution", "cell-key-tests", "cell-key-server",
        "cell-key-server-tests"]),
    ("04_dynamic_batching", "policy"): ("cell-009", [
        "cell-002", "cell-009", "cell-010", "cell-012", "cell-burst", "cell-013"]),
    ("04_dynamic_batching", "boundaries"): ("cell-bk-solution", [
        "cell-002", "cell-015", "cell-bk-cost", "cell-bk-solution", "cell-bk-tests",
        "cell-bk-server", "cell-bk-server-tests"]),
}
# (lesson, exercise, answer file) -> the graded test cells it must fail; [] means full marks
EXPECTED = {
    ("02_model_server", "router", "other_style"): [],
    ("02_model_server", "router", "salted_hash"): ["02_model_server-router-tests",
                                                   "02_model_server-ab-experiment-tests"],
    ("02_model_server", "retries", "retries_other_style"): [],
    ("02_model_server", "retries", "retries_status_only"): [
        "02_model_server-retries-tests", "02_model_server-retries-restart-tests"],
    ("02_model_server", "retries", "retries_no_backoff"): [
        "02_model_server-retries-tests", "02_model_server-retries-restart-tests"],
    # Rides out a restart well (it ends); only a server that never comes back shows the bug.
    ("02_model_server", "retries", "retries_without_deadline"): ["02_model_server-retries-tests"],
    ("03_caching", "cache", "other_style"): [],
    ("03_caching", "cache", "fifo"): ["03_caching-cache-tests",
                                      "03_caching-cache-in-server-tests"],
    ("03_caching", "cache", "never_evicts"): ["03_caching-cache-tests",
                                              "03_caching-cache-in-server-tests"],
    ("03_caching", "cache", "evicts_most_recent"): ["03_caching-cache-tests",
                                                    "03_caching-cache-in-server-tests"],
    ("03_caching", "single-flight", "single_flight_other_style"): [],
    ("03_caching", "single-flight", "single_flight_no_coalescing"): [
        "03_caching-single-flight-tests", "03_caching-single-flight-in-server-tests"],
    # Correct counts in the server, but one key waits for another, or one leaving caller
    # cancels the rest: the hidden tests catch these.
    ("03_caching", "single-flight", "single_flight_global_lock"): [
        "03_caching-single-flight-tests"],
    ("03_caching", "single-flight", "single_flight_cancel_spreads"): [
        "03_caching-single-flight-tests"],
    ("03_caching", "cache-key", "key_other_style"): [],
    ("03_caching", "cache-key", "key_without_version"): [
        "03_caching-cache-key-tests", "03_caching-cache-key-in-server-tests"],
    ("03_caching", "cache-key", "key_str_of_array"): [
        "03_caching-cache-key-tests", "03_caching-cache-key-in-server-tests"],
    # Right in one process, so right in the server; only a second process tells.
    ("03_caching", "cache-key", "key_python_hash"): ["03_caching-cache-key-tests"],
    ("04_dynamic_batching", "boundaries", "boundaries_other_style"): [],
    ("04_dynamic_batching", "boundaries", "boundaries_quantiles"): [
        "04_dynamic_batching-boundaries-tests", "04_dynamic_batching-boundaries-in-server-tests"],
    ("04_dynamic_batching", "boundaries", "boundaries_evenly_spaced"): [
        "04_dynamic_batching-boundaries-tests", "04_dynamic_batching-boundaries-in-server-tests"],
    ("04_dynamic_batching", "boundaries", "boundaries_greedy"): [
        "04_dynamic_batching-boundaries-tests"],
    ("04_dynamic_batching", "policy", "other_style"): [],
    ("04_dynamic_batching", "policy", "never_waits"): [
        "04_dynamic_batching-policy-tests", "04_dynamic_batching-policy-under-load-tests"],
    # The real batcher clamps what a policy asks for to its max_batch_size, and `>` against
    # `>=` differs only at an exact boundary no measurement hits: the unit tests catch these.
    ("04_dynamic_batching", "policy", "ignores_max"): ["04_dynamic_batching-policy-tests"],
    ("04_dynamic_batching", "policy", "strict_greater"): ["04_dynamic_batching-policy-tests"],
}

pytestmark = pytest.mark.slow


def graded_failures(lesson: str, exercise: str, answer: str,
                    workdir: Path) -> tuple[list[str], list[str]]:
    """Run the scenario; return (graded test cells that failed, other cells that failed)."""
    import nbformat
    from nbclient import NotebookClient

    source = json.loads((ROOT / "assessments" / "source" / lesson / f"{lesson}.ipynb")
                        .read_text())
    answer_id, wanted = SCENARIOS[lesson, exercise]
    by_id = {cell["id"]: cell for cell in source["cells"]}
    cells = [dict(by_id[cell_id]) for cell_id in wanted]
    for cell in cells:
        if cell["id"] == answer_id:
            cell["source"] = (ANSWERS / lesson / f"{answer}.py").read_text()
    nb = nbformat.reads(json.dumps({**source, "cells": cells}), as_version=4)
    env = {**os.environ, "COURSE_PROFILE": "quick"}
    client = NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(workdir)}})
    old = dict(os.environ)
    os.environ.update(env)
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    failed, broken = [], []
    for cell in nb.cells:
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
            (failed if grade_id.endswith("-tests") else broken).append(grade_id or cell["id"])
    return failed, broken


@pytest.mark.parametrize("lesson, exercise, answer", sorted(EXPECTED))
def test_each_answer_scores_as_it_should(lesson, exercise, answer, tmp_path):
    failed, broken = graded_failures(lesson, exercise, answer, tmp_path)
    assert not broken, f"cells other than graded tests failed: {broken}"
    assert failed == EXPECTED[lesson, exercise, answer], \
        f"{answer} failed {failed}; expected to fail {EXPECTED[lesson, exercise, answer]}"
