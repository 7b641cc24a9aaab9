"""Tool logs, their grammar, the tokenizer, the small GPT and its KV cache."""

import numpy as np
import pytest
import torch

from helpers import toollogs
from helpers.gpt import ToolLogGPT, ToolLogTokenizer, generate, parse_rate, train_tool_log_lm
from helpers.kv_cache import KVCache, bytes_per_token

GOOD = "06:00:59 ETCH-06 RUN LOT-01000/09 T=348.1 P=2.11 PC=31 RF=1464 PASS"


def test_every_generated_line_parses_and_every_kind_appears():
    lines = [line for log in toollogs.make_tool_logs(30, 40, seed=3) for line in log.splitlines()]
    assert len(lines) == 1200 and all(map(toollogs.parses, lines))
    assert {toollogs.line_kind(line) for line in lines} == set(toollogs.KINDS)
    assert toollogs.make_tool_logs(3, seed=3) == toollogs.make_tool_logs(3, seed=3)
    assert toollogs.make_tool_logs(3, seed=3) != toollogs.make_tool_logs(3, seed=4)


@pytest.mark.parametrize("bad", [
    GOOD.replace("LOT-01000", "LOT-1000"),     # four digits
    GOOD.replace("/09", "/26"),                # a lot has 25 slots
    GOOD.replace("06:00", "24:00"),            # no hour 24
    GOOD.replace("ETCH-06", "ETCH-09"),        # no such tool
    GOOD.replace(" PASS", ""),                 # no verdict
    GOOD + " PASS",                            # trailing junk
    "06:01:04 ETCH-06 ALARM A217 SEV=4 TEMP_OUT_OF_RANGE",
])
def test_lines_off_the_grammar_do_not_parse(bad):
    assert toollogs.parses(GOOD) and not toollogs.parses(bad)


def test_the_tokenizer_round_trips_and_names_what_it_cannot_read():
    tokenizer = ToolLogTokenizer()
    log = toollogs.make_tool_logs(1, 40, seed=1)[0]
    ids = tokenizer.encode(log)
    assert tokenizer.decode(ids) == log and len(ids) < 0.7 * len(log)  # words are one token
    assert len(set(tokenizer.vocab)) == tokenizer.vocab_size
    with pytest.raises(ValueError, match="'x' at 8"):
        tokenizer.encode("06:00:59x ETCH-06")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ToolLogGPT(ToolLogTokenizer().vocab_size).eval()


def test_cached_and_uncached_generation_are_token_identical(model):
    seeded = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, model.config.vocab_size, (3, 17), generator=seeded)
    cached = generate(model, prompts, 80, use_cache=True)
    assert cached.shape == (3, 97) and torch.equal(cached[:, :17], prompts)
    assert torch.equal(cached, generate(model, prompts, 80, use_cache=False))
    sampled = [generate(model, prompts, 40, temperature=1.0, use_cache=cached,
                        generator=torch.Generator().manual_seed(7)) for cached in (True, False)]
    assert torch.equal(*sampled)


def test_a_prefill_in_chunks_gives_the_logits_of_one_pass(model):
    seeded = torch.Generator().manual_seed(2)
    ids = torch.randint(0, model.config.vocab_size, (2, 150), generator=seeded)
    with torch.inference_mode():
        whole = model(ids)
        cache = model.new_cache(2)
        # a chunk of many after the cache (the mask is not the square one), then one token,
        # then the rest
        chunks = [model(ids[:, :60], cache, 0), model(ids[:, 60:61], cache, 60),
                  model(ids[:, 61:], cache, 61)]
    assert (torch.cat(chunks, dim=1) - whole).abs().max() < 1e-4
    assert cache.length == 150


def test_generation_refuses_what_does_not_fit(model):
    with pytest.raises(ValueError, match="over the context of 256"):
        generate(model, [[1] * 200], 57)
    with pytest.raises(ValueError, match="length >= 1"):
        generate(model, [[]], 5)


def test_the_cache_holds_the_formulas_bytes_and_refuses_to_overflow():
    cache = KVCache(n_layer=4, batch=2, n_head=4, max_len=64, head_dim=32)
    assert cache.nbytes == 2 * 64 * bytes_per_token(4, 4, 32) == 2 * 64 * 4096
    k = torch.ones(2, 4, 10, 32)
    keys, values = cache.update(3, 0, k, 2 * k)
    assert keys.shape == (2, 4, 10, 32) and torch.equal(values, 2 * k) and cache.length == 10
    assert cache.used_bytes() == cache.nbytes * 10 // 64
    with pytest.raises(ValueError, match="holds 64 tokens"):
        cache.update(0, 60, k, k)


def test_training_lowers_the_loss_and_the_model_round_trips_the_repository(tmp_path):
    from helpers.models import load_model
    from helpers.repository import save_torch_model

    trained, info = train_tool_log_lm(steps=40, batch_size=4, n_logs=20, seed=0)
    assert info["final_loss"] < 0.8 * np.log(trained.config.vocab_size)  # better than guessing
    save_torch_model(trained, "tool-log-lm", 1, tmp_path, info)
    served = load_model("tool-log-lm", 1, tmp_path, device="cpu")
    ids = np.array([[0, 5, 7], [0, 9, 9]])
    probabilities = served.predict(ids)
    assert probabilities.shape == (2, trained.config.vocab_size)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    with torch.inference_mode():
        expected = torch.softmax(trained(torch.from_numpy(ids))[:, -1], -1).numpy()
    assert np.allclose(probabilities, expected, atol=1e-6)


def test_parse_rate_counts_valid_lines():
    assert parse_rate([GOOD, GOOD, "garbage"]) == pytest.approx(2 / 3) and parse_rate([]) == 0


def test_generate_takes_prompts_as_lists_or_as_tensors(model):
    as_list = generate(model, [[1, 2, 3], [4, 5, 6]], 5)
    assert torch.equal(generate(model, torch.tensor([[1, 2, 3], [4, 5, 6]]), 5), as_list)


def test_log_requests_are_real_log_prompts_with_answers_up_to_the_context():
    from helpers.gpt import log_requests

    requests = log_requests(40, context=256, seed=3)
    assert requests == log_requests(40, context=256, seed=3)  # deterministic
    assert len({request_id for request_id, _, _ in requests}) == 40
    tokenizer = ToolLogTokenizer()
    for _, prompt, new in requests:
        assert prompt[0] == tokenizer.bos_id and 16 <= new and len(prompt) + new <= 256
        lines = tokenizer.decode(prompt).split("\n")
        assert lines[-1] == "" and all(map(toollogs.parses, lines[:-1])) and len(lines) in (2, 3)
    answers = [new for *_, new in requests]
    assert np.median(answers) < 70 and max(answers) > 110  # most short, a few long
