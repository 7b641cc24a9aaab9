import asyncio
import threading
import time

import pytest

from helpers.batching import (
    BatcherClosedError,
    BatcherFailedError,
    BatchPolicy,
    DeadlineExceededError,
    DynamicBatcher,
    ItemTooLargeError,
    QueueFullError,
)


# -- BatchPolicy: pure decisions, no loop, no clock ---------------------------------------
def test_policy_waits_for_company_then_sends_what_is_there():
    policy = BatchPolicy(max_batch_size=8, max_wait_s=0.010)
    assert policy.decide(queued=0, oldest_wait_s=1.0) == 0  # an empty queue sends nothing
    assert policy.decide(queued=3, oldest_wait_s=0.004) == 0  # young: wait
    assert policy.decide(queued=3, oldest_wait_s=0.010) == 3  # waited max_wait: send all
    assert policy.wait_budget_s(0.004) == pytest.approx(0.006)
    assert policy.wait_budget_s(0.5) == 0.0


def test_policy_sends_a_full_batch_at_once_and_never_more():
    policy = BatchPolicy(max_batch_size=8, max_wait_s=10)
    assert policy.decide(queued=8, oldest_wait_s=0) == 8
    assert policy.decide(queued=50, oldest_wait_s=0) == 8
    assert policy.decide(queued=50, oldest_wait_s=100) == 8


def test_policy_prefers_the_largest_formable_preferred_size():
    policy = BatchPolicy(max_batch_size=16, max_wait_s=1, preferred_sizes=(8, 4))
    assert policy.preferred_sizes == (4, 8)
    assert policy.decide(queued=3, oldest_wait_s=0) == 0
    assert policy.decide(queued=5, oldest_wait_s=0) == 4
    assert policy.decide(queued=9, oldest_wait_s=0) == 8
    assert policy.decide(queued=3, oldest_wait_s=1) == 3


def test_zero_wait_never_waits():
    assert BatchPolicy(max_batch_size=4, max_wait_s=0).decide(queued=1, oldest_wait_s=0) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"max_batch_size": 2.5}, "max_batch_size"),
    ({"max_wait_s": -1}, "max_wait_s"),
    ({"max_wait_s": float("nan")}, "max_wait_s"),
    ({"max_batch_size": 4, "preferred_sizes": (2, 8)}, r"\[8\]"),
])
def test_policy_rejects_bad_settings_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchPolicy(**kwargs)


# -- DynamicBatcher ------------------------------------------------------------------------
class GatedModel:
    """Doubles its inputs; each call blocks until the test opens the gate."""

    def __init__(self, fail_on=None):
        self.calls: list[list] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail_on = fail_on

    def __call__(self, items):
        self.calls.append(list(items))
        self.entered.set()
        assert self.gate.wait(10), "test never opened the gate"
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot score {self.fail_on}")
        return [2 * x for x in items]


async def _until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.001)


def test_requests_queued_during_a_computation_leave_together():
    async def scenario():
        model = GatedModel()
        policy = BatchPolicy(max_batch_size=4, max_wait_s=0)
        async with DynamicBatcher(model, policy) as batcher:
            first = asyncio.create_task(batcher.submit(0))
            await _until(model.entered.is_set)            # batch [0] is computing
            rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 10)]
            await _until(lambda: batcher.queue_depth == 9)  # the loop kept accepting
            model.gate.set()
            results = await asyncio.gather(first, *rest)
        return model, batcher, results

    model, batcher, results = asyncio.run(scenario())
    assert results == [2 * i for i in range(10)]          # each caller got its own answer
    assert model.calls == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert batcher.stats.batch_sizes == {1: 2, 4: 2}
    assert batcher.stats.completed == 10 and batcher.stats.queue_time.count == 10


def test_groups_never_share_a_batch_share_the_worker_and_go_oldest_first():
    async def scenario():
        model = GatedModel()
        policy = BatchPolicy(max_batch_size=2, max_wait_s=0)
        async with DynamicBatcher(model, policy, group_of=lambda x: x // 100) as batcher:
            blocker = asyncio.create_task(batcher.submit(0))
            await _until(model.entered.is_set)             # the only worker is busy
            rest = []
            for queued, item in enumerate((1, 101, 2, 3), 1):  # groups 0, 1, 0, 0 in order
                rest.append(asyncio.create_task(batcher.submit(item)))
                await _until(lambda n=queued: batcher.queue_depth == n)
            model.gate.set()
            results = await asyncio.gather(blocker, *rest)
        return model, results

    model, results = asyncio.run(scenario())
    assert results == [0, 2, 202, 4, 6]
    # 101 waited for the worker although its group was idle; after [1, 2], group 1's
    # oldest (101) had waited longer than group 0's (3), so it went first.
    assert model.calls == [[0], [1, 2], [101], [3]]


def test_the_queue_bound_covers_every_group():
    async def scenario():
        model = GatedModel()
        async with DynamicBatcher(model, BatchPolicy(max_batch_size=1, max_wait_s=0),
                                  max_queue=2, group_of=lambda x: x % 2) as batcher:
            running = asyncio.create_task(batcher.submit(0))
            await _until(model.entered.is_set)
            queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]  # two groups
            await _until(lambda: batcher.queue_depth == 2)
            with pytest.raises(QueueFullError):
                await batcher.submit(3)
            model.gate.set()
            return await asyncio.gather(running, *queued)

    assert asyncio.run(scenario()) == [0, 2, 4]


def test_max_wait_lets_a_burst_fill_one_batch():
    async def scenario():
        calls = []

        def model(items):
            calls.append(len(items))
            return items

        async with DynamicBatcher(model, BatchPolicy(max_batch_size=64, max_wait_s=0.2)) as b:
            await asyncio.gather(*(b.submit(i) for i in range(20)))
        return calls

    assert asyncio.run(scenario()) == [20]


def test_a_full_queue_rejects_at_once_with_a_retry_hint():
    async def scenario():
        model = GatedModel()
        async with DynamicBatcher(model, BatchPolicy(max_batch_size=1, max_wait_s=0),
                                  max_queue=2) as batcher:
            running = asyncio.create_task(batcher.submit(1))
            await _until(model.entered.is_set)
            queued = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
            await _until(lambda: batcher.queue_depth == 2)
            with pytest.raises(QueueFullError, match="queue full") as info:
                await batcher.submit(4)
            model.gate.set()
            done = await asyncio.gather(running, *queued)
        return info.value, batcher, done

    error, batcher, done = asyncio.run(scenario())
    assert error.retry_after_s > 0
    assert done == [2, 4, 6] and batcher.stats.rejected == 1


def test_a_request_past_its_deadline_is_failed_and_never_computed():
    async def scenario():
        model = GatedModel()
        async with DynamicBatcher(model, BatchPolicy(max_batch_size=8, max_wait_s=0)) as b:
            busy = asyncio.create_task(b.submit(1))
            await _until(model.entered.is_set)            # the only worker is busy
            with pytest.raises(DeadlineExceededError, match="not computed"):
                await b.submit(2, timeout_s=0.05)          # answered on time, not when free
            model.gate.set()
            await busy
            assert await b.submit(3) == 6
        return model, b

    model, batcher = asyncio.run(scenario())
    assert [2] not in model.calls and all(2 not in call for call in model.calls)
    assert batcher.stats.expired == 1


def test_a_failing_batch_fails_only_its_own_requests():
    async def scenario():
        model = GatedModel(fail_on=13)
        model.gate.set()
        async with DynamicBatcher(model, BatchPolicy(max_batch_size=2, max_wait_s=0.05)) as b:
            bad = await asyncio.gather(b.submit(13), b.submit(1), return_exceptions=True)
            good = await asyncio.gather(b.submit(2), b.submit(3))
        return bad, good, b

    bad, good, batcher = asyncio.run(scenario())
    assert all(isinstance(r, ValueError) and "13" in str(r) for r in bad)
    assert good == [4, 6]
    assert batcher.stats.failed == 2 and batcher.stats.completed == 2


def test_a_wrong_number_of_results_is_an_error_for_that_batch():
    async def scenario():
        async with DynamicBatcher(lambda items: items[:-1], BatchPolicy(max_wait_s=0)) as b:
            return await asyncio.gather(b.submit(1), return_exceptions=True)

    (result,) = asyncio.run(scenario())
    assert isinstance(result, RuntimeError) and "0 results for 1 items" in str(result)


def test_a_cancelled_caller_does_not_poison_the_batch():
    async def scenario():
        model = GatedModel()
        async with DynamicBatcher(model, BatchPolicy(max_batch_size=8, max_wait_s=0)) as b:
            busy = asyncio.create_task(b.submit(0))
            await _until(model.entered.is_set)
            leaving = asyncio.create_task(b.submit(1))
            staying = asyncio.create_task(b.submit(2))
            await _until(lambda: b.queue_depth == 2)
            leaving.cancel()
            model.gate.set()
            results = await asyncio.gather(busy, staying)
        return model, b, results, leaving

    model, batcher, results, leaving = asyncio.run(scenario())
    assert leaving.cancelled() and results == [0, 4]
    assert model.calls == [[0], [2]]                   # the cancelled item was never computed
    assert batcher.stats.cancelled == 1


def test_close_drains_every_admitted_request_then_refuses_new_ones():
    async def scenario():
        model = GatedModel()
        batcher = await DynamicBatcher(model, BatchPolicy(max_batch_size=3, max_wait_s=60)).start()
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(7)]
        await _until(lambda: model.entered.is_set() or batcher.queue_depth == 7)
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherClosedError):
            await batcher.submit(99)
        model.gate.set()
        await closing                                  # returns only when all are answered
        return [t.result() for t in tasks]

    assert asyncio.run(scenario()) == [2 * i for i in range(7)]


def test_the_event_loop_keeps_running_while_a_batch_computes():
    async def scenario():
        ticks = 0

        def slow_model(items):
            time.sleep(0.2)                            # blocks its worker thread, not the loop
            return items

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        tick_task = asyncio.create_task(ticker())
        async with DynamicBatcher(slow_model, BatchPolicy(max_wait_s=0)) as b:
            await b.submit(1)
        tick_task.cancel()
        return ticks

    assert asyncio.run(scenario()) >= 10


def test_submit_before_start_and_bad_settings():
    batcher = DynamicBatcher(lambda items: items)
    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(batcher.submit(1))
    with pytest.raises(ValueError, match="max_queue"):
        DynamicBatcher(lambda items: items, max_queue=0)


# -- hardening: what a review broke -----------------------------------------------------
def test_the_policy_counts_rows_and_a_request_larger_than_a_batch_is_refused():
    async def scenario():
        model = GatedModel()
        policy = BatchPolicy(max_batch_size=8, max_wait_s=0)
        lots = [[i] * n for i, n in enumerate((1, 3, 3, 3, 5, 2))]  # rows per request
        async with DynamicBatcher(model, policy, size_of=len) as batcher:
            with pytest.raises(ItemTooLargeError, match="9 rows"):
                await batcher.submit([0] * 9)
            first = asyncio.create_task(batcher.submit(lots[0]))
            await _until(model.entered.is_set)
            rest = [asyncio.create_task(batcher.submit(lot)) for lot in lots[1:]]
            await _until(lambda: batcher.queue_depth == 5)
            model.gate.set()
            await asyncio.gather(first, *rest)
        return model, batcher

    model, batcher = asyncio.run(scenario())
    rows = [sum(len(item) for item in call) for call in model.calls]
    assert rows == [1, 6, 8, 2]  # never more than 8 rows; a lot is never split
    assert batcher.stats.batch_sizes == {1: 1, 6: 1, 8: 1, 2: 1}


class GreedyPolicy(BatchPolicy):
    """Asks for more than is queued, and for negative sizes when the queue is short."""

    def decide(self, queued, oldest_wait_s):
        return 1000 if queued > 1 else -5 if queued else 0


def test_what_a_policy_returns_is_clamped():
    async def scenario():
        async with DynamicBatcher(lambda items: items, GreedyPolicy(4, 0.001)) as batcher:
            return await asyncio.wait_for(
                asyncio.gather(*(batcher.submit(i) for i in range(10))), 5)

    assert asyncio.run(scenario()) == list(range(10))


class BrokenPolicy(BatchPolicy):
    def decide(self, queued, oldest_wait_s):
        raise ZeroDivisionError("policy bug")


def test_a_dead_scheduler_fails_every_waiting_request_and_refuses_new_ones():
    async def scenario():
        batcher = await DynamicBatcher(lambda items: items, BrokenPolicy(4, 0)).start()
        waiting = [asyncio.create_task(batcher.submit(i)) for i in range(3)]  # no deadline
        outcomes = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
        with pytest.raises(BatcherFailedError, match="policy bug"):
            await batcher.submit(99)
        await asyncio.wait_for(batcher.close(), 5)  # and closing does not raise
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, BatcherFailedError) for o in outcomes), outcomes


def test_expired_and_abandoned_requests_do_not_hold_queue_slots():
    async def scenario():
        model = GatedModel()
        policy = BatchPolicy(max_batch_size=1, max_wait_s=0)
        async with DynamicBatcher(model, policy, max_queue=2) as batcher:
            blocker = asyncio.create_task(batcher.submit(0))
            await _until(model.entered.is_set)  # the only worker is busy
            for coro in (batcher.submit(1, timeout_s=0.01), batcher.submit(2, timeout_s=0.01)):
                with pytest.raises(DeadlineExceededError):
                    await coro
            abandoned = asyncio.create_task(batcher.submit(3))
            await _until(lambda: batcher.queue_depth == 1)
            abandoned.cancel()
            await _until(lambda: batcher.queue_depth == 0)
            live = [asyncio.create_task(batcher.submit(i)) for i in (4, 5)]  # both admitted
            await _until(lambda: batcher.queue_depth == 2)
            with pytest.raises(QueueFullError):  # the bound still holds for live requests
                await batcher.submit(6)
            model.gate.set()
            return await asyncio.gather(blocker, *live), model.calls

    results, calls = asyncio.run(scenario())
    assert results == [0, 8, 10] and calls == [[0], [4], [5]]  # the dead were never computed


def test_an_expiry_found_by_the_scheduler_is_counted_once():
    now = [0.0]

    async def scenario():
        model = GatedModel()
        batcher = DynamicBatcher(model, BatchPolicy(1, 0), clock=lambda: now[0])
        async with batcher:
            blocker = asyncio.create_task(batcher.submit(0))
            await _until(model.entered.is_set)
            late = asyncio.create_task(batcher.submit(1, timeout_s=60))  # real timer: far off
            await _until(lambda: batcher.queue_depth == 1)
            now[0] = 120.0  # the batcher's clock says its deadline has passed
            model.gate.set()
            with pytest.raises(DeadlineExceededError):
                await late
            await blocker
        return batcher.stats

    stats = asyncio.run(scenario())
    assert stats.expired == 1


def test_close_with_a_grace_period_answers_what_is_left():
    async def scenario():
        model = GatedModel()
        batcher = await DynamicBatcher(model, BatchPolicy(1, 0)).start()
        computing = asyncio.create_task(batcher.submit(0))
        await _until(model.entered.is_set)
        waiting = asyncio.create_task(batcher.submit(1))
        await _until(lambda: batcher.queue_depth == 1)
        await batcher.close(timeout_s=0.1)  # the model never finishes within the grace
        outcomes = await asyncio.gather(computing, waiting, return_exceptions=True)
        model.gate.set()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, BatcherClosedError) and "grace" in str(o) for o in outcomes)


def test_expiries_are_counted_once_when_the_scheduler_and_the_timer_race():
    def slow(items):
        time.sleep(0.003)
        return items

    async def scenario():
        async with DynamicBatcher(slow, BatchPolicy(1, 0), max_queue=100_000) as batcher:
            async def one(i):
                await asyncio.sleep((i % 50) * 0.0007)
                try:
                    await batcher.submit(i, timeout_s=0.004)
                    return "ok"
                except DeadlineExceededError:
                    return "expired"

            outcomes = await asyncio.gather(*(one(i) for i in range(1500)))
        return outcomes, batcher.stats

    outcomes, stats = asyncio.run(scenario())
    assert stats.expired == outcomes.count("expired")
    assert stats.completed == outcomes.count("ok")


def test_close_with_a_grace_answers_the_computing_callers_of_every_worker():
    async def scenario():
        model = GatedModel()
        batcher = await DynamicBatcher(model, BatchPolicy(1, 0), workers=2).start()
        computing = [asyncio.create_task(batcher.submit(i)) for i in range(2)]
        await _until(lambda: len(model.calls) == 2)  # both workers busy
        await batcher.close(timeout_s=0.1)
        outcomes = await asyncio.wait_for(
            asyncio.gather(*computing, return_exceptions=True), 5)
        model.gate.set()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, BatcherClosedError) for o in outcomes), outcomes
