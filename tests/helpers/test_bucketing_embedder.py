import asyncio
import threading
import time

import httpx
import numpy as np
import pytest

from helpers import data, models
from helpers.batching import BatchPolicy, DynamicBatcher
from helpers.bucketing import BucketedBatcher, bucket_for, pad_to_longest, padding_waste


def test_bucket_for_and_padding_arithmetic():
    bounds = (16, 32, 64)
    assert [bucket_for(n, bounds) for n in (0, 16, 17, 32, 64, 65, 500)] == [0, 0, 1, 1, 2, 3, 3]
    with pytest.raises(ValueError):
        bucket_for(-1, bounds)
    assert padding_waste([10, 10]) == 0.0
    assert padding_waste([2, 10]) == pytest.approx(0.4)  # 8 of 20 positions are padding
    assert padding_waste([]) == 0.0
    ids, mask = pad_to_longest([[5, 6, 7], [8]], pad_id=0)
    assert ids == [[5, 6, 7], [8, 0, 0]] and mask == [[1, 1, 1], [1, 0, 0]]


def _batches(batcher_factory, lengths):
    seen = []

    def batch(items):
        seen.append([len(x) for x in items])
        return [len(x) for x in items]

    async def scenario():
        async with batcher_factory(batch) as batcher:
            return await asyncio.gather(*(batcher.submit("x" * n) for n in lengths))

    results = asyncio.run(scenario())
    assert results == lengths  # every caller got its own answer either way
    return seen


def test_bucketing_groups_similar_lengths_and_cuts_padding():
    lengths = [3, 120, 4, 110, 5, 100, 6, 90]
    policy = BatchPolicy(max_batch_size=8, max_wait_s=0.2)
    mixed = _batches(lambda fn: DynamicBatcher(fn, policy), lengths)
    bucketed = _batches(lambda fn: BucketedBatcher(fn, policy, (16, 64), len), lengths)
    assert mixed == [lengths]
    assert sorted(map(sorted, bucketed)) == [[3, 4, 5, 6], [90, 100, 110, 120]]
    def waste(batches):
        return 1 - sum(map(sum, batches)) / sum(len(b) * max(b) for b in batches)

    assert waste(bucketed) < 0.2 < 0.4 < waste(mixed)


def test_buckets_take_turns_on_the_same_worker():
    running, most = 0, 0
    lock = threading.Lock()

    def batch(items):  # slow enough that two buckets would overlap if they could
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return items

    async def scenario():
        policy = BatchPolicy(max_batch_size=2, max_wait_s=0)
        async with BucketedBatcher(batch, policy, (4, 8), len, workers=1) as batcher:
            return await asyncio.gather(*(batcher.submit("x" * n) for n in (2, 6, 12, 3, 7, 11)))

    assert asyncio.run(scenario()) == ["x" * n for n in (2, 6, 12, 3, 7, 11)]
    assert most == 1  # one worker: one batch at a time, whatever its bucket


def test_bucketed_batcher_rejects_bad_bounds_and_sums_stats():
    with pytest.raises(ValueError, match="increasing"):
        BucketedBatcher(lambda items: items, BatchPolicy(), (32, 16), len)
    stats_batcher = BucketedBatcher(lambda items: items, BatchPolicy(max_wait_s=0), (4,), len)

    async def scenario():
        async with stats_batcher as b:
            await asyncio.gather(b.submit("ab"), b.submit("abcdefgh"))
        return b.stats

    stats = asyncio.run(scenario())
    assert stats.completed == 2 and stats.batches == 2 and stats.queue_time.count == 2


@pytest.fixture(scope="module")
def embedder():
    from helpers.embedder import NoteEmbedder
    return NoteEmbedder("cpu")


def test_embeddings_are_unit_vectors_that_follow_meaning(embedder):
    notes = ["pump vibration is rising on ETCH-03", "the vacuum pump on ETCH-03 vibrates more",
             "humidity in bay 4 exceeded 55 percent"]
    e = embedder.predict(notes)
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_padding_does_not_change_an_embedding_but_is_counted(embedder):
    long_note = max(data.make_engineer_notes(200), key=len)
    alone = embedder.predict(["ok"])
    before = embedder.padding.padded_tokens
    together = embedder.predict(["ok", long_note])
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)  # the mask hides padding
    np.testing.assert_allclose(embedder.predict(embedder.prepare(["ok"])), alone, atol=1e-6)
    assert embedder.padding.padded_tokens - before > 2 * len(embedder.token_ids([long_note])[0])
    assert 0 < embedder.padding.waste < 1
    assert embedder.predict([]).shape == (0, 384)


def test_token_lists_of_equal_length_are_still_one_note_each(embedder):
    notes = ["pump ok", "fan ok", "valve ok"]
    ids = embedder.token_ids(notes)
    assert len({len(i) for i in ids}) == 1  # equal lengths: NumPy makes this 2-D
    as_array = np.array(ids, dtype=object)
    assert as_array.ndim == 2
    expected = embedder.predict(notes)
    for rows in (as_array, ids, embedder.prepare(notes)):
        np.testing.assert_allclose(embedder.predict(rows), expected, atol=1e-6)


def test_the_tokenizer_alone_splits_notes_as_the_embedder_does(embedder):
    from helpers.embedder import note_tokenizer

    tokenizer = note_tokenizer()
    notes = data.make_engineer_notes(20, seed=4)
    assert tokenizer(notes)["input_ids"] == embedder.token_ids(notes)
    assert tokenizer.pad_token_id == embedder.tokenizer.pad_token_id == 0


def test_the_server_embeds_text_over_v2_with_buckets(tmp_path):
    from helpers.server import ServerSettings, create_app
    from helpers.serving import serve_in_thread

    models.write_embedder_entry(tmp_path)
    notes = data.make_engineer_notes(6, seed=2)
    body = {"inputs": [{"name": "text", "shape": [6], "datatype": "BYTES", "data": notes}]}
    settings = ServerSettings(repository=tmp_path, device="cpu", buckets=(16, 64),
                              cache_entries=10)
    with serve_in_thread(create_app(settings)) as url:
        response = httpx.post(url + "/v2/models/note-embedder/infer", json=body, timeout=60)
        cached = httpx.post(url + "/v2/models/note-embedder/infer", json=body, timeout=60)
        bad = httpx.post(url + "/v2/models/note-embedder/infer", json={"inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": [7]}]})
    (out,) = response.json()["outputs"]
    assert out["shape"] == [6, 384] and out["datatype"] == "FP32"
    assert cached.json()["outputs"] == response.json()["outputs"]
    assert bad.status_code == 400 and "strings" in bad.json()["error"]


def test_a_changed_package_is_refused(tmp_path):
    import json
    folder = models.write_embedder_entry(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["weights_sha256"] = "0" * 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(models.ModelFormatError, match="differ from the SHA-256"):
        models.load_model("note-embedder", repository=tmp_path)
