"""ModelSession: streaming, cancelling, stop strings, adapter toggle, checkpoints, thread-safety."""

from __future__ import annotations

import re
import threading

import pytest

from core.cancel import StopToken
from core.config import GenerationConfig
from core.errors import ModelError


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    from lora_run import make_lora_run

    return make_lora_run(tmp_path_factory.mktemp("runs") / "lora-run", tiny_model_dir)


@pytest.fixture(scope="module")
def session(lora_run):
    from core.generation import ModelSession

    return ModelSession(lora_run, device="cpu")


def greedy(n: int = 12, **kw) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=n, do_sample=False, repetition_penalty=1.0, **kw)


def test_streaming_pieces_arrive_one_by_one_and_join_to_text(session):
    pieces = []
    result = session.generate("What is the capital of France?", greedy(12), on_token=pieces.append)
    assert result.n_tokens > 1
    assert len(pieces) > 1  # streamed, not one final blob
    assert len(pieces) <= result.n_tokens
    assert "".join(pieces) == result.text
    assert "Question" not in result.text[:3]  # the prompt is stripped
    assert result.prompt == "### Question:\nWhat is the capital of France?\n### Answer:\n"
    assert result.stopped_by in ("eos", "max_tokens")
    assert result.first_token_seconds is not None and 0 < result.first_token_seconds <= result.seconds
    assert result.tokens_per_second > 0

    stream = session.stream("What is the capital of France?", greedy(12))
    streamed = list(stream)
    assert "".join(streamed) == result.text  # greedy: same answer through the iterator
    assert stream.result is not None and stream.result.text == result.text


def test_cancel_returns_promptly(session):
    stop = StopToken()
    pieces = []

    def on_token(piece):
        pieces.append(piece)
        if len(pieces) == 3:
            stop.request("user pressed stop")

    result = session.generate("Who wrote Hamlet?", greedy(300), on_token=on_token, stop=stop)
    assert result.stopped_by == "cancelled"
    assert result.n_tokens <= 6  # stops within a token or two, not at 300
    assert "".join(pieces) == result.text


def test_closing_a_stream_cancels_it(session):
    stream = session.stream("Who wrote Hamlet?", greedy(300))
    first = next(stream)
    assert isinstance(first, str)
    stream.close()
    assert stream.result is not None and stream.result.stopped_by == "cancelled"
    assert stream.result.n_tokens < 300


def test_stop_string_cuts_the_answer(session):
    full = session.generate("What do bees make?", greedy(16)).text
    assert len(full) > 6
    stop_string = full[3:6]
    pieces = []
    result = session.generate("What do bees make?", greedy(16, stop_strings=[stop_string]), on_token=pieces.append)
    assert result.stopped_by == "stop_string"
    assert result.text == full[: full.find(stop_string)]
    assert "".join(pieces) == result.text


def test_adapter_toggle_matches_plain_base_model(session, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    assert session.has_adapter and session.has_finetuned
    ids = session.tokenizer("### Question:\nWho wrote Hamlet?", return_tensors="pt")
    with torch.no_grad():
        with session.model_for(use_adapter=True) as model:
            tuned = model(**ids).logits
        with session.model_for(use_adapter=False) as model:
            base = model(**ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        reference = plain(**ids).logits
    assert not torch.allclose(tuned, base, atol=1e-3)
    torch.testing.assert_close(base, reference, rtol=0, atol=1e-6)
    # And the adapter is back on after the base answer.
    with torch.no_grad(), session.model_for(use_adapter=True) as model:
        torch.testing.assert_close(model(**ids).logits, tuned, rtol=0, atol=0)

    prompt, prompt_ids = session.build_prompt("Who wrote Hamlet?")
    assert prompt == "### Question:\nWho wrote Hamlet?\n### Answer:\n"
    encoded = session.tokenizer(prompt, return_tensors="pt")
    assert encoded["input_ids"][0].tolist() == prompt_ids
    with torch.no_grad():
        out = plain.generate(**encoded, max_new_tokens=10, do_sample=False, pad_token_id=session.tokenizer.pad_token_id)
    expected = session.tokenizer.decode(out[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    assert session.generate("Who wrote Hamlet?", greedy(10), use_adapter=False).text == expected


def test_checkpoint_selection_and_plain_model(lora_run, tiny_model_dir, session):
    import torch

    from core.generation import ModelSession

    at_step_1 = ModelSession(lora_run, checkpoint=1, device="cpu")
    assert at_step_1.weights_dir.name == "checkpoint-1"
    ids = session.tokenizer("Paris", return_tensors="pt")
    with torch.no_grad(), at_step_1.model_for(True) as model:
        early = model(**ids).logits
    with torch.no_grad(), session.model_for(True) as model:
        final = model(**ids).logits
    assert not torch.allclose(early, final, atol=1e-4)
    with pytest.raises(ModelError, match="checkpoint-7"):
        ModelSession(lora_run, checkpoint=7, device="cpu")

    plain = ModelSession(str(tiny_model_dir), device="cpu")
    assert not plain.has_adapter and plain.run_config is None
    result = plain.generate("The quick brown", greedy(5))
    assert result.prompt == "The quick brown"  # raw text for a plain model
    assert result.n_tokens >= 1


def test_messages_use_the_run_template_or_the_chat_template(session, tiny_model_dir):
    from core.generation import ModelSession

    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Who wrote Hamlet?"},
    ]
    # A run answers in the format it was trained on (here the classic template), turn by turn.
    result = session.generate(messages, greedy(4))
    assert result.prompt == "### Question:\nHi\n### Answer:\nHello\n\n### Question:\nWho wrote Hamlet?\n### Answer:\n"
    # A plain model uses the tokenizer's chat template.
    plain = ModelSession(str(tiny_model_dir), device="cpu")
    text, ids = plain.build_prompt(messages)
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nHi<|im_end|>" in text
    assert plain.tokenizer.decode(ids) == text
    with pytest.raises(ValueError, match="message 1"):
        session.generate([{"content": "no role"}], greedy(2))


def test_sampling_is_reproducible_with_a_seed(session):
    cfg = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.5, top_p=1.0, top_k=0, seed=7)
    first = session.generate("What is frozen water?", cfg).text
    second = session.generate("What is frozen water?", cfg).text
    assert first == second


def test_two_threads_share_one_session(session):
    expected = session.generate("Which planet is red?", greedy(8)).text
    expected_base = session.generate("Which planet is red?", greedy(8), use_adapter=False).text
    results = {}

    def worker(name, use_adapter):
        results[name] = session.generate("Which planet is red?", greedy(8), use_adapter=use_adapter).text

    threads = [threading.Thread(target=worker, args=("tuned", True)), threading.Thread(target=worker, args=("base", False))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == {"tuned": expected, "base": expected_base}


@pytest.mark.real_model
def test_bundled_model_chat_stops_at_end_of_turn():
    from core.generation import ModelSession
    from core.models import BUNDLED_MODEL

    session = ModelSession(BUNDLED_MODEL, device="cpu")
    pieces = []
    result = session.generate([{"role": "user", "content": "What is the capital of France? One word."}],
                              greedy(40), on_token=pieces.append)
    assert "Paris" in result.text
    assert result.stopped_by == "eos" and "<|im_end|>" not in result.text
    assert "".join(pieces) == result.text
    assert result.tokens_per_second > 0 and result.first_token_seconds < result.seconds


def test_plain_model_with_the_runs_prompt_format_answers_as_the_runs_base_side(session, tiny_model_dir):
    from core.generation import ModelSession

    plain = ModelSession(str(tiny_model_dir), device="cpu")
    messages = [{"role": "user", "content": "Who wrote Hamlet?"}]
    # Without a format a plain model uses its chat template: another prompt, another answer.
    assert plain.build_prompt(messages)[0] != session.build_prompt(messages)[0]
    fmt = session.run_config.data
    assert plain.build_prompt(messages, prompt_format=fmt) == session.build_prompt(messages)
    expected = session.generate(messages, greedy(10), use_adapter=False)
    got = plain.generate(messages, greedy(10), prompt_format=fmt)
    assert got.prompt == expected.prompt and got.text == expected.text


def test_continue_text_carries_on_the_same_answer(session):
    whole = session.generate("Which planet is red?", greedy(10))
    start = session.generate("Which planet is red?", greedy(4))
    assert start.stopped_by == "max_tokens" and whole.text.startswith(start.text)
    pieces = []
    rest = session.generate("Which planet is red?", greedy(6), continue_text=start.text, continue_ids=start.token_ids,
                            on_token=pieces.append)
    assert start.token_ids + rest.token_ids == whole.token_ids
    assert start.text + rest.text == whole.text
    assert "".join(pieces) == rest.text and rest.n_tokens <= 6


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_batched_greedy_answers_equal_one_by_one(session, penalty):
    # Left-padded batches (prompts of different lengths) give the same tokens as answering alone, with
    # the repetition penalty too (ours skips the padding; the library's would penalise the pad token).
    questions = ["What is the capital of France?", "Hi", "Name three colours of the rainbow, please.",
                 "2+2?", "Why is the sky blue when the sun is high and red when it sets?"]
    cfg = GenerationConfig(max_new_tokens=10, do_sample=False, repetition_penalty=penalty)
    for use_adapter in (False, True):
        alone = [session.generate(q, cfg, use_adapter=use_adapter) for q in questions]
        together = session.generate_batch(questions, cfg, use_adapter=use_adapter, batch_size=3)
        assert [r.token_ids for r in together] == [r.token_ids for r in alone]
        assert [r.text for r in together] == [r.text for r in alone]
        assert [r.stopped_by for r in together] == [r.stopped_by for r in alone]


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_base_and_tuned_rows_in_one_batch_equal_one_by_one(session, penalty):
    # Evaluate's path: each question twice in one mixed-adapter batch (peft adapter_names); rows that end early
    # (here a stop string taken from one answer) leave the batch and the cache while the others go on.
    from core.generation import _decodes_by_hand

    assert session.can_pair and _decodes_by_hand(session.model)
    questions = ["What is the capital of France?", "Hi", "Name three colours of the rainbow, please.",
                 "2+2?", "Why is the sky blue when the sun is high and red when it sets?"]
    cfg = GenerationConfig(max_new_tokens=10, do_sample=False, repetition_penalty=penalty)
    first = session.generate(questions[2], cfg, use_adapter=True)
    cut = re.search(r"[A-Za-z]{2}", first.text).group(0)  # whole characters (the tiny model also makes bytes)
    cfg = GenerationConfig(max_new_tokens=10, do_sample=False, repetition_penalty=penalty, stop_strings=[cut])
    alone_base = [session.generate(q, cfg, use_adapter=False) for q in questions]
    alone_tuned = [session.generate(q, cfg, use_adapter=True) for q in questions]
    assert alone_tuned[2].stopped_by == "stop_string" and alone_tuned[2].n_tokens < 10
    counts = []
    base, tuned = session.generate_both(questions, cfg, batch_size=3, progress=lambda d, t: counts.append((d, t)))
    for together, alone in ((base, alone_base), (tuned, alone_tuned)):
        for got, want in zip(together, alone, strict=True):
            if want.stopped_by == "stop_string":  # generate() alone checks one token late: its ids run one further
                assert want.token_ids[:len(got.token_ids)] == got.token_ids and len(want.token_ids) - 1 <= len(got.token_ids)
            else:
                assert got.token_ids == want.token_ids
        assert [r.text for r in together] == [r.text for r in alone]
        assert [r.stopped_by for r in together] == [r.stopped_by for r in alone]
    # Progress counts answers as rows end, within a batch too: never back, all 10 at the end.
    assert counts[-1] == (10, 10) and all(t == 10 for _, t in counts) and len(counts) > 2
    assert [d for d, _ in counts] == sorted(d for d, _ in counts)
    assert [r.text for r in base] != [r.text for r in tuned]


def test_batch_rows_leave_when_they_end_and_cancel_stops_within_a_token(session, monkeypatch):
    # The hand-written loop shrinks the batch as rows end: a row that ends at its stop string is not computed
    # again. Measured through the rows each forward pass gets.
    from core.generation import answer_batch

    cfg = GenerationConfig(max_new_tokens=10, do_sample=False)
    prompts = [session.build_prompt(q) for q in ("What is the capital of France?", "Hi", "2+2?")]
    with session.model_for(True) as model:
        full = answer_batch(model, session.tokenizer, prompts, cfg)
        cut = next(c for c in (m.group(1) for m in re.finditer(r"(?=([A-Za-z]{2}))", full[1].text))
                   if c not in full[0].text and c not in full[2].text)
        widths: list[int] = []
        original = type(model).forward

        def counting(self, *args, **kwargs):
            widths.append(int(kwargs["input_ids"].shape[0]))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(type(model), "forward", counting)
        stopped = answer_batch(model, session.tokenizer, prompts,
                               GenerationConfig(max_new_tokens=10, do_sample=False, stop_strings=[cut]))
        assert stopped[1].stopped_by == "stop_string" and stopped[1].n_tokens < full[1].n_tokens
        # Each forward pass gets exactly the rows still answering (a row that ended, by EOS or its stop string,
        # is not computed again).
        steps = max(r.n_tokens for r in stopped)
        assert widths == [sum(1 for r in stopped if r.n_tokens > k) for k in range(steps)]
        assert widths[0] == 3 and widths[-1] < 3
        stop = StopToken()
        widths.clear()

        def stop_after_two(self, *args, **kwargs):
            if len(widths) == 2:
                stop.request("user")
            return counting(self, *args, **kwargs)

        monkeypatch.setattr(type(model), "forward", stop_after_two)
        cancelled = answer_batch(model, session.tokenizer, prompts, cfg, stop=stop)
    assert len(widths) <= 3  # cancelled within one token
    for got, want in zip(cancelled, full, strict=True):
        assert got.token_ids == want.token_ids[:3]
        assert got.stopped_by == ("cancelled" if want.n_tokens > 3 else want.stopped_by)


def test_batch_answers_without_a_kv_cache_equal_those_with_one(session):
    # A model that returns no cache (use_cache off, or in training mode) gets the whole sequence every step.
    from core.generation import answer_batch

    cfg = GenerationConfig(max_new_tokens=6, do_sample=False, repetition_penalty=1.2)
    prompts = [session.build_prompt(q) for q in ("What is the capital of France?", "Hi", "2+2?")]
    with session.model_for(True) as model:
        cached = answer_batch(model, session.tokenizer, prompts, cfg)
        uncached = answer_batch(model, session.tokenizer, prompts, cfg, use_cache=False)
    assert [r.token_ids for r in uncached] == [r.token_ids for r in cached]


def test_probe_answers_in_a_batch_equal_one_by_one(session):
    # The training-time probes use the same batched path on the model being trained.
    from core.probes import generate_probe_answer, generate_probe_answers

    prompts = ["What is the capital of France?", "Hi", "Why is the sky blue when the sun is high?"]
    cfg = GenerationConfig(max_new_tokens=8, do_sample=False, repetition_penalty=1.2)
    data_cfg = session.run_config.data
    with session.model_for(True) as model:
        alone = [generate_probe_answer(model, session.tokenizer, data_cfg, cfg, p, max_new_tokens=8) for p in prompts]
        together = generate_probe_answers(model, session.tokenizer, data_cfg, cfg, prompts, max_new_tokens=8)
    assert [(text, n) for text, n, _ in together] == alone


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_both_panes_from_one_generate_equal_each_answer_alone(session, penalty):
    # The Chat page's one-model mode: base and fine-tuned rows in one mixed-adapter batch (prompts of different
    # lengths, so the shorter is left-padded) stream the same tokens and text as each answer generated alone.
    assert session.can_pair
    prompts = [[{"role": "user", "content": "Hi"}],
               [{"role": "user", "content": "Why is the sky blue when the sun is high?"}]]
    cfg = GenerationConfig(max_new_tokens=12, do_sample=False, repetition_penalty=penalty)
    for flags in ((False, True), (True, False)):
        alone = [session.generate(p, cfg, use_adapter=flag) for p, flag in zip(prompts, flags, strict=True)]
        assert alone[0].token_ids != session.generate(prompts[0], cfg, use_adapter=not flags[0]).token_ids
        pieces: list[list[str]] = [[], []]
        together = session.generate_pair(prompts, cfg, use_adapter=flags,
                                         on_tokens=[pieces[0].append, pieces[1].append])
        assert [r.token_ids for r in together] == [r.token_ids for r in alone]
        assert [r.text for r in together] == [r.text for r in alone]
        assert ["".join(p) for p in pieces] == [r.text for r in together]
        assert all(len(p) > 1 for p in pieces)  # streamed piece by piece, not at the end
        assert [r.stopped_by for r in together] == [r.stopped_by for r in alone]


def test_paired_answers_honour_stop_strings_and_cancel(session):
    cfg = greedy(12)
    alone = session.generate("What is the capital of France?", cfg, use_adapter=True)
    cut = alone.text[len(alone.text) // 2:][:3] or alone.text[-2:]
    cfg_stop = greedy(12, stop_strings=[cut])
    together = session.generate_pair(["What is the capital of France?", "Hi"], cfg_stop, use_adapter=[True, False])
    assert together[0].stopped_by == "stop_string" and cut not in together[0].text
    assert together[1].token_ids == session.generate("Hi", cfg_stop, use_adapter=False).token_ids
    stop = StopToken()
    seen: list[str] = []

    def on_piece(piece: str) -> None:
        seen.append(piece)
        stop.request("user")

    cancelled = session.generate_pair(["Hi", "Hello"], greedy(40), use_adapter=[False, True],
                                      on_tokens=[on_piece, None], stop=stop)
    assert [r.stopped_by for r in cancelled] == ["cancelled", "cancelled"]
    assert all(r.n_tokens <= 3 for r in cancelled)
