"""The generation engine: continuous and static batching over paged blocks, token-identical
to generating each request alone, preemption included, and no block left behind."""

import pytest
import torch

from helpers.generation import GenerationEngine
from helpers.gpt import ToolLogGPT, ToolLogTokenizer, generate


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ToolLogGPT(ToolLogTokenizer().vocab_size).eval()


@pytest.fixture(scope="module")
def workload(model):
    """Prompts of 5..40 tokens, outputs of 3..70 tokens, and what each gives alone."""
    rng = torch.Generator().manual_seed(4)
    requests = []
    for i in range(10):
        prompt = torch.randint(0, model.config.vocab_size, (5 + 4 * i % 36,), generator=rng)
        new = [3, 70, 12, 40, 5, 64, 20, 9, 33, 50][i]
        alone = generate(model, prompt[None], new)[0, len(prompt):].tolist()
        requests.append((f"r{i}", prompt.tolist(), new, alone))
    return requests


@pytest.mark.parametrize("static", [False, True])
def test_the_engine_makes_what_each_request_makes_alone(model, workload, static):
    engine = GenerationEngine(model, n_blocks=64, max_running=4, static=static)
    for request_id, prompt, new, _ in workload:
        engine.add(request_id, prompt, new)
    out = engine.run_until_done()
    assert out == {request_id: alone for request_id, _, _, alone in workload}
    assert engine.manager.allocator.n_free == 64 and engine.manager.tables == {}


def test_a_pool_smaller_than_the_peak_preempts_and_still_gets_it_right(model, workload):
    engine = GenerationEngine(model, n_blocks=12, max_running=8)  # peak demand is higher
    for request_id, prompt, new, _ in workload:
        engine.add(request_id, prompt, new)
    requests = {r.request_id: r for r in engine.waiting}
    out = engine.run_until_done()
    assert out == {request_id: alone for request_id, _, _, alone in workload}
    assert sum(r.preemptions for r in requests.values()) > 0
    assert engine.manager.allocator.n_free == 12


def test_continuous_batching_takes_fewer_steps_than_static_on_mixed_lengths(model, workload):
    steps = {}
    for static in (False, True):
        engine = GenerationEngine(model, n_blocks=64, max_running=4, static=static)
        for request_id, prompt, new, _ in workload:
            engine.add(request_id, prompt, new)
        steps[static] = 0
        while engine.has_work:
            engine.step()
            steps[static] += 1
    assert steps[False] < steps[True]


def test_cancel_frees_blocks_and_bad_requests_are_refused(model):
    engine = GenerationEngine(model, n_blocks=8, max_running=2)
    engine.add("a", [1, 2, 3], 50)
    engine.add("b", [4, 5], 50)
    engine.step()
    assert engine.manager.used_blocks == 2
    engine.cancel("a")
    engine.cancel("b")
    assert engine.manager.allocator.n_free == 8 and not engine.has_work
    with pytest.raises(ValueError, match="over the context"):
        engine.add("c", [1] * 250, 10)
    with pytest.raises(ValueError, match="the pool can give one sequence 7"):
        engine.add("d", [1] * 100, 50)  # 150 tokens need 10 blocks
    with pytest.raises(ValueError, match="at least one new token"):
        engine.add("e", [1], 0)
    engine.add("f", [1], 1)
    with pytest.raises(ValueError, match="already queued"):
        engine.add("f", [1], 1)


def test_static_batches_end_together_and_continuous_rows_leave_when_done(model):
    finished_at = {}
    for static in (False, True):
        engine = GenerationEngine(model, n_blocks=16, max_running=2, static=static)
        engine.add("short", [1, 2, 3], 3)
        engine.add("long", [4, 5, 6], 30)
        step = 0
        while engine.has_work:
            step += 1
            for request_id, _, done in engine.step():
                if done:
                    finished_at[static, request_id] = step
        assert engine.manager.allocator.n_free == 16
    assert finished_at[False, "short"] == 3 and finished_at[False, "long"] == 30
    assert finished_at[True, "short"] == finished_at[True, "long"] == 30  # padded to the longest


@pytest.mark.cuda
def test_the_engine_runs_on_a_gpu_and_matches_generating_alone(model, workload):
    import copy

    on_gpu = copy.deepcopy(model).to("cuda")
    engine = GenerationEngine(on_gpu, n_blocks=64, max_running=4)
    for request_id, prompt, new, _ in workload:
        engine.add(request_id, prompt, new)
    out = engine.run_until_done()
    for request_id, prompt, new, _ in workload:
        alone = generate(on_gpu, [prompt], new)[0, len(prompt):].tolist()
        assert out[request_id] == alone
    assert engine.pool.keys.device.type == "cuda" and engine.manager.used_blocks == 0


def test_drive_measures_a_workload_and_the_plug_in_points_are_used(model, workload):
    from helpers.generation import drive
    from helpers.kv_cache import BlockManager
    from helpers.scheduling import schedule

    calls, manager = [], BlockManager(12, watermark_blocks=1)

    def counting_schedule(*args, **kwargs):
        calls.append(kwargs["max_running"])
        return schedule(*args, **kwargs)

    engine = GenerationEngine(model, n_blocks=12, max_running=8, manager=manager,
                              scheduler=counting_schedule)
    run = drive(engine, [(i, p, n) for i, p, n, _ in workload])
    assert engine.manager is manager and len(calls) == run.steps and set(calls) == {8}
    assert run.outputs == {i: alone for i, _, _, alone in workload}
    assert run.preemptions > 0 and run.leaked_blocks == 0  # 12 blocks are under the peak
    assert run.tokens == sum(n for _, _, n, _ in workload)
    assert set(run.finished_step) == set(run.first_token_s) == set(run.outputs)
    assert 0 <= run.paged_waste < run.reserved_waste < 1
    summary = run.summary()
    assert summary["steps"] == run.steps and summary["tokens/step"] == run.tokens / run.steps


def test_an_engine_that_can_make_no_progress_says_so_instead_of_spinning(model):
    from helpers.kv_cache import BlockManager

    class LeakyManager(BlockManager):
        def free(self, seq):  # forgets to give the blocks back
            self.tables.pop(seq)
            self.lengths.pop(seq)

    engine = GenerationEngine(model, n_blocks=4, max_running=2, manager=LeakyManager(4))
    engine.add("a", [1] * 40, 20)  # 4 blocks at its end
    engine.add("b", [1] * 10, 5)
    with pytest.raises(RuntimeError, match="stuck"):
        engine.run_until_done()
