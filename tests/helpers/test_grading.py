"""helpers.grading: a student's cell, run again in another interpreter."""

import pytest

from helpers.grading import cell_defining, evaluate_in_fresh_process


def test_the_latest_cell_that_defines_the_function_is_found():
    cells = ["x = 1", "def pick(k):\n    return 1", "pick(3)",
             "import os\n\ndef pick(k):\n    return 2"]
    assert cell_defining("pick", cells) == cells[3]
    assert cell_defining("pick", cells[:3]) == cells[1]
    with pytest.raises(AssertionError, match="no cell defines choose"):
        cell_defining("choose", cells)


def test_a_stable_hash_agrees_across_processes_and_a_salted_one_does_not():
    stable = "import hashlib\n\ndef key(s):\n    return hashlib.sha256(s.encode()).hexdigest()"
    salted = "def key(s):\n    return hash(s)"
    words = [f"LOT-{i}" for i in range(20)]
    assert (evaluate_in_fresh_process(stable, f"[key(w) for w in {words!r}]", hash_seed=1)
            == evaluate_in_fresh_process(stable, f"[key(w) for w in {words!r}]", hash_seed=2))
    assert (evaluate_in_fresh_process(salted, f"[key(w) for w in {words!r}]", hash_seed=1)
            != evaluate_in_fresh_process(salted, f"[key(w) for w in {words!r}]", hash_seed=2))


def test_a_cell_that_fails_elsewhere_says_what_broke():
    with pytest.raises(AssertionError, match="NameError: name 'hashlib' is not defined"):
        evaluate_in_fresh_process("def key(s):\n    return hashlib.sha256(s)", "key('a')")
