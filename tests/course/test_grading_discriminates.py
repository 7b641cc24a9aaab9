"""Grading discriminates: plausible wrong answers lose points, a correct answer written in
another style than the reference gets full marks.

Each scenario runs the cells an exercise's grade depends on (the lesson's set-up, the
exercise, its experiment, its graded tests, hidden ones included) from the source notebook,
with the answer cell replaced by one from ``tests/course/answers/<lesson>/`` (or by the
release's own, ``untouched``, which must fail every graded test), in a real kernel under
the quick profile — the graded tests measure the answer in the real server or batcher, as
autograding does. The answers of one exercise share a kernel and one run of
the set-up (what costs most), each starting from the names the set-up left; the exercises of
one lesson share one kernel, so a set-up cell runs once per lesson. A wrong answer
runs only up to the last graded test it must fail; comments in ``EXPECTED`` say which
measured grades a bug slips past.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from round_trip import notebook

ANSWERS = Path(__file__).resolve().parent / "answers"

# (lesson, exercise) -> (the answer cell, the cells a grade of it needs, in order)
SCENARIOS = {
    ("01_realtime_vs_batch", "percentile"): ("cell-016", [
        "cell-002", "cell-016", "cell-017", "cell-018"]),
    ("01_realtime_vs_batch", "chunked-scoring"): ("cell-027", [
        "cell-002", "cell-004", "cell-006", "cell-027", "cell-028", "cell-030", "cell-031"]),
    ("01_realtime_vs_batch", "scenarios"): ("cell-034", [
        "cell-002", "cell-033", "cell-034", "cell-035"]),
    ("02_model_server", "validate"): ("cell-010", [
        "cell-002", "cell-006", "cell-010", "cell-011", "cell-013", "cell-014", "cell-028"]),
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
    ("04_dynamic_batching", "budget"): ("cell-budget-solution", [
        "cell-002", "cell-004", "cell-budget-solution", "cell-budget-tests", "cell-budget-run",
        "cell-budget-run-tests"]),
    ("04_dynamic_batching", "boundaries"): ("cell-bk-solution", [
        "cell-002", "cell-015", "cell-bk-cost", "cell-bk-solution", "cell-bk-tests",
        "cell-bk-server", "cell-bk-server-tests"]),
    ("05_kv_cache", "attention"): ("cell-008", [
        "cell-002", "cell-004", "cell-008", "cell-009", "cell-011", "cell-012"]),
    ("05_kv_cache", "blocks"): ("cell-016", [
        "cell-002", "cell-014", "cell-016", "cell-017", "cell-019", "cell-020"]),
    ("05_kv_cache", "scheduler"): ("cell-024", [
        "cell-002", "cell-014", "cell-022", "cell-024", "cell-025", "cell-027", "cell-028"]),
    ("06_load_balancing", "p2c"): ("cell-p2c-solution", [
        "cell-002", "cell-004", "cell-006", "cell-p2c-solution", "cell-p2c-tests", "cell-p2c-run",
        "cell-p2c-run-tests"]),
    ("06_load_balancing", "ewma"): ("cell-ewma-solution", [
        "cell-002", "cell-ewma-restart", "cell-ewma-solution", "cell-ewma-tests",
        "cell-ewma-run", "cell-ewma-run-tests"]),
    ("06_load_balancing", "budget"): ("cell-budget-solution", [
        "cell-002", "cell-010", "cell-budget-solution", "cell-budget-tests", "cell-budget-run",
        "cell-budget-run-tests"]),
    ("07_autoscaling", "scale"): ("cell-scale-solution", [
        "cell-002", "cell-004", "cell-scale-solution", "cell-scale-tests", "cell-scale-sim",
        "cell-scale-sim-tests"]),
    ("07_autoscaling", "hold"): ("cell-hold-solution", [
        "cell-002", "cell-004", "cell-hold-solution", "cell-hold-tests", "cell-hold-sim",
        "cell-hold-sim-tests"]),
    ("07_autoscaling", "day"): ("cell-day-solution", [
        "cell-002", "cell-004", "cell-012", "cell-day-solution", "cell-day-run",
        "cell-day-tests"]),
    ("08_edge_compression", "recipe"): ("cell-recipe-solution", [
        "cell-002", "cell-recipe-solution", "cell-recipe-tests", "cell-recipe-run",
        "cell-recipe-run-tests"]),
    ("08_edge_compression", "kd"): ("cell-kd-solution", [
        "cell-002", "cell-kd-solution", "cell-kd-tests", "cell-kd-run", "cell-kd-run-tests"]),
    ("08_edge_compression", "layers"): ("cell-layers-solution", [
        "cell-002", "cell-009", "cell-layers-solution", "cell-layers-tests", "cell-layers-run",
        "cell-layers-run-tests"]),
}
# (lesson, exercise, answer file) -> the graded test cells it must fail; [] means full marks
EXPECTED = {
    ("01_realtime_vs_batch", "percentile", "percentile_other_style"): [],
    ("01_realtime_vs_batch", "percentile", "percentile_nearest_rank"): [
        "01_realtime_vs_batch-percentile-tests"],
    ("01_realtime_vs_batch", "percentile", "percentile_slo_strict"): [
        "01_realtime_vs_batch-meets-slo-tests"],
    ("01_realtime_vs_batch", "chunked-scoring", "chunked_other_style"): [],
    # Right answers, in chunks, from a file read whole: only the measured memory tells.
    ("01_realtime_vs_batch", "chunked-scoring", "chunked_reads_whole_file"): [
        "01_realtime_vs_batch-chunked-memory-tests"],
    ("01_realtime_vs_batch", "chunked-scoring", "chunked_drops_last_chunk"): [
        "01_realtime_vs_batch-chunked-scoring-tests", "01_realtime_vs_batch-chunked-memory-tests"],
    ("01_realtime_vs_batch", "scenarios", "scenarios_other_style"): [],
    ("01_realtime_vs_batch", "scenarios", "scenarios_no_hybrid"): [
        "01_realtime_vs_batch-scenarios-tests"],
    ("02_model_server", "validate", "validate_other_style"): [],
    ("02_model_server", "validate", "validate_coerces_strings"): [
        "02_model_server-validate-tests", "02_model_server-validate-http-tests"],
    # The server's three requests hold no NaN: only the hidden tests send one.
    ("02_model_server", "validate", "validate_allows_nan"): ["02_model_server-validate-tests"],
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
    ("04_dynamic_batching", "budget", "budget_other_style"): [],
    # On any machine's curve some SLO of the run tells one call from two.
    ("04_dynamic_batching", "budget", "budget_one_call"): [
        "04_dynamic_batching-budget-tests", "04_dynamic_batching-budget-on-your-curve-tests"],
    # Measured times never equal an SLO exactly: only the unit tests' boundary case tells.
    ("04_dynamic_batching", "budget", "budget_strictly_below"): [
        "04_dynamic_batching-budget-tests"],
    ("04_dynamic_batching", "policy", "other_style"): [],
    ("04_dynamic_batching", "policy", "never_waits"): [
        "04_dynamic_batching-policy-tests", "04_dynamic_batching-policy-under-load-tests"],
    # The real batcher clamps what a policy asks for to its max_batch_size, and `>` against
    # `>=` differs only at an exact boundary no measurement hits: the unit tests catch these.
    ("04_dynamic_batching", "policy", "ignores_max"): ["04_dynamic_batching-policy-tests"],
    ("04_dynamic_batching", "policy", "strict_greater"): ["04_dynamic_batching-policy-tests"],
    ("05_kv_cache", "attention", "attention_other_style"): [],
    ("05_kv_cache", "attention", "attention_is_causal"): [
        "05_kv_cache-attention-tests", "05_kv_cache-attention-speed-tests"],
    ("05_kv_cache", "attention", "attention_before_write"): [
        "05_kv_cache-attention-tests", "05_kv_cache-attention-speed-tests"],
    # Generating prefills from 0 and then adds one token at a time, where the offset does
    # not matter: only a prefill in chunks (the hidden tests) shows the missing offset.
    ("05_kv_cache", "attention", "attention_no_offset"): ["05_kv_cache-attention-tests"],
    ("05_kv_cache", "blocks", "blocks_other_style"): [],
    ("05_kv_cache", "blocks", "blocks_new_block_every_token"): [
        "05_kv_cache-blocks-tests", "05_kv_cache-blocks-under-pressure-tests"],
    ("05_kv_cache", "blocks", "blocks_free_forgets_allocator"): [
        "05_kv_cache-blocks-tests", "05_kv_cache-blocks-under-pressure-tests"],
    # The engine allocates only what the scheduler saw free: a half-done allocation never
    # happens in it, only in the unit tests.
    ("05_kv_cache", "blocks", "blocks_partial_allocate"): ["05_kv_cache-blocks-tests"],
    ("05_kv_cache", "scheduler", "scheduler_other_style"): [],
    ("05_kv_cache", "scheduler", "scheduler_static"): [
        "05_kv_cache-scheduler-tests", "05_kv_cache-scheduler-in-engine-tests"],
    ("05_kv_cache", "scheduler", "scheduler_never_preempts"): [
        "05_kv_cache-scheduler-tests", "05_kv_cache-scheduler-in-engine-tests"],
    # Still token-exact and about as fast on this workload: the unit tests catch these.
    ("05_kv_cache", "scheduler", "scheduler_overtakes"): ["05_kv_cache-scheduler-tests"],
    ("05_kv_cache", "scheduler", "scheduler_evicts_oldest"): ["05_kv_cache-scheduler-tests"],
    ("05_kv_cache", "scheduler", "scheduler_ignores_limit"): ["05_kv_cache-scheduler-tests"],
    ("06_load_balancing", "p2c", "p2c_other_style"): [],
    # samples with replacement: the same replica twice sends the slow one 1/9 whatever its load
    ("06_load_balancing", "p2c", "p2c_same_twice"): [
        "06_load_balancing-p2c-tests", "06_load_balancing-p2c-run-tests"],
    ("06_load_balancing", "p2c", "p2c_more_loaded"): [
        "06_load_balancing-p2c-tests", "06_load_balancing-p2c-run-tests"],
    # never uses replica 2, the slow one: its p99 looks fine, the tie test catches it
    ("06_load_balancing", "p2c", "p2c_first_two"): ["06_load_balancing-p2c-tests"],
    ("06_load_balancing", "ewma", "ewma_other_style"): [],
    # On a quiet machine its run sends the frozen replica nothing for ever; on a busy one (CI
    # runs two notebooks at once) queues grow at the others until P2C's in-flight factor sends
    # it a request, which resets it. The unit tests catch it either way.
    ("06_load_balancing", "ewma", "ewma_never_decays"): ["06_load_balancing-ewma-tests"],
    # still decays between samples, so traffic comes back: only the unit tests see them
    ("06_load_balancing", "ewma", "ewma_weight_inverted"): ["06_load_balancing-ewma-tests"],
    ("06_load_balancing", "ewma", "ewma_no_peak"): ["06_load_balancing-ewma-tests"],
    ("06_load_balancing", "budget", "budget_other_style"): [],
    ("06_load_balancing", "budget", "budget_unbounded"): [
        "06_load_balancing-budget-tests", "06_load_balancing-budget-run-tests"],
    # no retry storm, but the kill's failures reach the clients (ejection alone leaves a few)
    ("06_load_balancing", "budget", "budget_never_retries"): [
        "06_load_balancing-budget-tests", "06_load_balancing-budget-run-tests"],
    # within one short run these behave like a budget: only the unit tests see them
    ("06_load_balancing", "budget", "budget_no_window"): ["06_load_balancing-budget-tests"],
    ("06_load_balancing", "budget", "budget_counts_refused"): ["06_load_balancing-budget-tests"],
    ("07_autoscaling", "scale", "scale_other_style"): [],
    # one replica short at every step: the unit tests see it (not always the misses)
    ("07_autoscaling", "scale", "scale_floor"): ["07_autoscaling-scale-tests"],
    ("07_autoscaling", "scale", "scale_down_in_panic"): [
        "07_autoscaling-scale-tests", "07_autoscaling-scale-sim-tests"],
    ("07_autoscaling", "scale", "scale_no_panic"): [
        "07_autoscaling-scale-tests", "07_autoscaling-scale-sim-tests"],
    ("07_autoscaling", "hold", "hold_other_style"): [],
    ("07_autoscaling", "hold", "hold_no_delay"): [
        "07_autoscaling-hold-tests", "07_autoscaling-hold-sim-tests"],
    # flap no more than the course's on this trace: only the unit tests see them
    ("07_autoscaling", "hold", "hold_sticky"): ["07_autoscaling-hold-tests"],
    ("07_autoscaling", "hold", "hold_never_down"): ["07_autoscaling-hold-tests"],
    ("07_autoscaling", "day", "day_other_style"): [],
    ("07_autoscaling", "day", "day_always_max"): ["07_autoscaling-day-tests"],
    ("07_autoscaling", "day", "day_never_down"): ["07_autoscaling-day-tests"],
    ("07_autoscaling", "day", "day_hot_no_panic"): ["07_autoscaling-day-tests"],
    ("08_edge_compression", "recipe", "recipe_other_style"): [],
    # Each fits two limits of the budget and breaks the third: size, latency, accuracy (the
    # last two also lose accuracy when the hidden test calibrates them on another day).
    ("08_edge_compression", "recipe", "recipe_float32_graph"): [
        "08_edge_compression-recipe-run-tests"],
    ("08_edge_compression", "recipe", "recipe_dynamic_int8"): [
        "08_edge_compression-recipe-run-tests"],
    # Calibrated on healthy maps alone: it loses accuracy in the run, and again on the hidden
    # test's other day.
    ("08_edge_compression", "recipe", "recipe_healthy_calibration"): [
        "08_edge_compression-recipe-tests", "08_edge_compression-recipe-run-tests"],
    ("08_edge_compression", "recipe", "recipe_one_map"): [
        "08_edge_compression-recipe-tests", "08_edge_compression-recipe-run-tests"],
    # Fits the budget (the tuning maps cover every pattern), but ignores the pool it is given:
    # the hidden test's other day, with the notebook's maps all healthy, shows it.
    ("08_edge_compression", "recipe", "recipe_global_calibration"): [
        "08_edge_compression-recipe-tests"],
    ("08_edge_compression", "kd", "kd_other_style"): [],
    # A wrong loss still trains a student (its label term is right): the unit tests tell.
    ("08_edge_compression", "kd", "kd_no_t_squared"): ["08_edge_compression-kd-tests"],
    ("08_edge_compression", "kd", "kd_swapped_kl"): ["08_edge_compression-kd-tests"],
    ("08_edge_compression", "kd", "kd_teacher_not_softened"): ["08_edge_compression-kd-tests"],
    ("08_edge_compression", "layers", "layers_other_style"): [],
    ("08_edge_compression", "layers", "layers_none"): ["08_edge_compression-layers-run-tests"],
    ("08_edge_compression", "layers", "layers_attention_query"): [
        "08_edge_compression-layers-run-tests"],
    ("08_edge_compression", "layers", "layers_last_layer"): [
        "08_edge_compression-layers-run-tests"],
    ("08_edge_compression", "layers", "layers_everything"): ["08_edge_compression-layers-tests"],
    # Search stays good, but the file is far over the note box's 45 %.
    ("08_edge_compression", "layers", "layers_all_but_queries"): [
        "08_edge_compression-layers-run-tests"],
}

# Every exercise also meets its answer cell as the student release hands it out (``raise
# NotImplementedError()``): it must fail every graded test of the exercise. With these, the
# autograde round trip need not execute every lesson's release a second time.
UNTOUCHED = "untouched"


def _graded_tests(lesson: str, cell_ids: list[str]) -> list[str]:
    by_id = {cell["id"]: cell for cell in _notebook("source", lesson)["cells"]}
    grade_ids = [by_id[i].get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
                 for i in cell_ids]
    return [g for g in grade_ids if g.endswith("-tests")]


def _notebook(kind: str, lesson: str) -> dict:
    return json.loads(notebook(kind, lesson).read_text())


for (_lesson, _exercise), (_answer, _cells) in SCENARIOS.items():
    EXPECTED[_lesson, _exercise, UNTOUCHED] = _graded_tests(
        _lesson, _cells[_cells.index(_answer):])


def answer_source(lesson: str, exercise: str, answer: str) -> str:
    """The answer cell's text: a file of ``answers/<lesson>/``, or the release's own cell."""
    if answer != UNTOUCHED:
        return (ANSWERS / lesson / f"{answer}.py").read_text()
    answer_id = SCENARIOS[lesson, exercise][0]
    (cell,) = [c for c in _notebook("notebooks", lesson)["cells"] if c["id"] == answer_id]
    assert "raise NotImplementedError()" in "".join(cell["source"]), \
        f"{lesson}'s release hands out {answer_id} with an answer in it"
    return "".join(cell["source"])


pytestmark = pytest.mark.slow


# Per lesson, the cells that stop what its set-up started (lesson 02's server): run once,
# after every answer of the scenario.
TEARDOWN = {"02_model_server": {"cell-028"}, "06_load_balancing": {"cell-018"},
            "07_autoscaling": {"cell-019"}}

# Every answer of a scenario runs in one kernel, after one run of the set-up: the kernel's
# names are put back as the set-up left them before each answer, so nothing one answer
# defined (a helper, a result) can stand in for what the next one failed to compute.
SNAPSHOT = "_setup_names = dict(globals())\n_setup_names['_setup_names'] = _setup_names"
RESTORE = """\
import re as _re
for _name in [n for n in globals() if n not in _setup_names
              and not _re.fullmatch(r"_+|_i+\\d*|_\\d+|_name", n)]:
    del globals()[_name]
globals().update(_setup_names)"""


def graded_failures(lesson: str, answers: dict[str, list[str]],
                    workdir: Path) -> dict[tuple[str, str], tuple[list[str], list[str]]]:
    """Run every scenario of ``lesson`` (``answers``: exercise -> its answer files) in one
    kernel; per (exercise, answer), the graded test cells that failed, its other own cells
    that failed, and the shared (set-up) cells that failed.

    Each exercise first runs the set-up cells it needs that have not run yet, then its
    answers, each from the names its set-up left. A set-up cell that fails counts against
    every answer of its exercise (and breaks those after it, which then fail too).
    """
    import nbformat
    from nbclient import NotebookClient

    source = _notebook("source", lesson)
    by_id = {cell["id"]: cell for cell in source["cells"]}
    teardown = TEARDOWN.get(lesson, set())

    def code(cell_id: str, text: str) -> dict:
        return {"cell_type": "code", "id": cell_id, "metadata": {}, "outputs": [],
                "execution_count": None, "source": text}

    def grade_id(cell_id: str) -> str:
        return by_id[cell_id].get("metadata", {}).get("nbgrader", {}).get("grade_id", "")

    cells: list[dict] = []
    # Whose grade each cell's failure costs, and whether the cell is shared (set-up) or
    # the answer's own run (its cell, its experiment, its tests).
    owners: list[tuple[list[tuple[str, str]], bool]] = []
    done: set[str] = set()
    # In the order students meet them: an exercise's set-up may change what later ones
    # measure (lesson 06 restarts the replica the earlier exercises find slow).
    in_order = sorted(answers.items(), key=lambda item: list(by_id).index(
        SCENARIOS[lesson, item[0]][0]))
    for exercise, names in in_order:
        answer_id, wanted = SCENARIOS[lesson, exercise]
        split = wanted.index(answer_id)
        every = [(exercise, answer) for answer in names]
        if cells:  # back to the names the set-up left, before this exercise's own set-up
            cells.append(code(f"restore-before-{exercise}", RESTORE))
            owners.append((every, True))
        for cell_id in wanted[:split]:
            if cell_id not in done:
                cells.append(dict(by_id[cell_id], id=f"{cell_id}-setup-{exercise}"))
                owners.append((every, True))
                done.add(cell_id)
        cells.append(code(f"snapshot-{exercise}", SNAPSHOT))
        owners.append((every, True))
        per_answer = [i for i in wanted[split:] if i not in teardown]
        for n, answer in enumerate(names):
            cells.append(code(f"restore-{exercise}-{n}", RESTORE))
            owners.append(([(exercise, answer)], True))  # plumbing, not the answer's own
            # A wrong answer runs up to the last graded test it must fail: what comes after
            # (an experiment its unit tests already failed it on) would only cost time. A
            # full-marks answer runs everything.
            must_fail = EXPECTED[lesson, exercise, answer]
            ran = per_answer if not must_fail else per_answer[:1 + max(
                i for i, cell_id in enumerate(per_answer) if grade_id(cell_id) in must_fail)]
            for cell_id in ran:
                cell = {**by_id[cell_id], "id": f"{cell_id}-{exercise}-{n}"}
                if cell_id == answer_id:
                    cell["source"] = answer_source(lesson, exercise, answer)
                cells.append(cell)
            owners += [([(exercise, answer)], False)] * len(ran)
    for cell_id in sorted(teardown, key=list(by_id).index):
        cells.append(dict(by_id[cell_id]))
        owners.append(([], True))

    nb = nbformat.reads(json.dumps({**source, "cells": cells}), as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(workdir)}})
    # The kernel gets its own environment: os.environ is left alone, since the autograde
    # round trip starts subprocesses from another thread meanwhile (conftest.py).
    client.execute(env={**os.environ, "COURSE_PROFILE": "quick"})
    results = {(ex, a): ([], [], []) for ex, names in answers.items() for a in names}
    for cell, (owner, shared) in zip(nb.cells, owners, strict=True):
        if not any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            continue
        graded = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
        for key in owner:
            failed, own, set_up = results[key]
            (failed if graded.endswith("-tests") else set_up if shared else own).append(
                graded or cell["id"])
    return results


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """(lesson, exercise) -> every answer's result; a lesson's scenarios run once, together."""
    results = {}

    def score(lesson: str, exercise: str) -> dict[str, tuple[list[str], ...]]:
        if lesson not in results:
            answers: dict[str, list[str]] = {}
            for le, ex, answer in sorted(EXPECTED):
                if le == lesson:
                    answers.setdefault(ex, []).append(answer)
            results[lesson] = graded_failures(lesson, answers, tmp_path_factory.mktemp(lesson))
        return {answer: result for (ex, answer), result in results[lesson].items()
                if ex == exercise}
    return score


@pytest.mark.parametrize("lesson, exercise, answer", sorted(EXPECTED))
def test_each_answer_scores_as_it_should(lesson, exercise, answer, scored):
    failed, own, set_up = scored(lesson, exercise)[answer]
    assert not set_up, f"set-up cells failed: {set_up}"
    # An untouched answer breaks its own experiment (it raises); any other must not.
    assert answer == UNTOUCHED or not own, f"cells other than graded tests failed: {own}"
    assert failed == EXPECTED[lesson, exercise, answer], \
        f"{answer} failed {failed}; expected to fail {EXPECTED[lesson, exercise, answer]}"
