"""Preference records, win rate, and DPO training (core.preference) on the tiny model."""

from __future__ import annotations

import json
import os

import pytest

from core.preference import PreferenceRecord, VoteStore, load_preference_pairs, votes_path, wilson_interval, win_rate


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 5)
    assert low == 0.0 and 0 < high < 0.5


def _vote(vote, a_model="fine-tuned"):
    b_model = "base" if a_model == "fine-tuned" else "fine-tuned"
    return PreferenceRecord(prompt="Who wrote Hamlet?", a="answer A", b="answer B", a_model=a_model, b_model=b_model,
                            vote=vote, models={"fine-tuned": "run/final", "base": "tiny"}, settings={"do_sample": False})


def test_vote_store_saves_edits_exports(tmp_path):
    store = VoteStore(votes_path(tmp_path / "ws"))
    first = store.add(_vote("a"))
    store.add(_vote("b", a_model="base"))  # B is the fine-tuned model: it won again
    store.add(_vote("tie"))
    store.add(_vote("both_bad"))
    records = store.records()
    assert [r.vote for r in records] == ["a", "b", "tie", "both_bad"]
    assert records[0].chosen == "answer A" and records[0].rejected == "answer B"
    rate = win_rate(records)
    assert (rate.wins, rate.losses, rate.ties, rate.both_bad) == (2, 0, 1, 1)
    assert "Fine-tuned wins 100% of 2 decided votes" in rate.sentence()
    store.update(first.id, vote="b")
    assert win_rate(store.records()).losses == 1
    with pytest.raises(ValueError):
        store.update(first.id, vote="maybe")
    exported = tmp_path / "pairs.jsonl"
    assert store.export(exported) == 2  # ties and both-bad have no pair
    rows = [json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines()]
    assert {"prompt", "chosen", "rejected", "a_model", "b_model", "models", "settings"} <= set(rows[0])
    store.delete(first.id)
    assert len(store.records()) == 3


def test_preference_files_of_every_shape(tmp_path):
    from core.config import DataConfig

    store = VoteStore(tmp_path / "votes.jsonl")
    for vote in ("a", "tie", "b"):
        store.add(_vote(vote))
    pairs, skipped, label = load_preference_pairs(DataConfig(source=str(store.path)))
    assert len(pairs) == 2 and skipped == [(2, "a tie vote has no chosen answer")] and label == "line"
    # LLaMA-Factory's conversation-shaped DPO file (dpo_en_demo.json)
    factory = tmp_path / "dpo_en_demo.json"
    factory.write_text(json.dumps([{"conversations": [{"from": "human", "value": "Hi?"}],
                                    "chosen": {"from": "gpt", "value": "Hello!"},
                                    "rejected": {"from": "gpt", "value": "Go away."}}]), encoding="utf-8")
    pairs, skipped, _ = load_preference_pairs(DataConfig(source=str(factory)))
    assert pairs[0].prompt == [{"role": "user", "content": "Hi?"}] and pairs[0].chosen == "Hello!"
    # SFT data is not preference data
    sft = tmp_path / "qa.jsonl"
    sft.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n", encoding="utf-8")
    from core.errors import DataError

    with pytest.raises(DataError, match="DPO needs preference data"):
        load_preference_pairs(DataConfig(source=str(sft)))


GOOD = ["Paris", "William Shakespeare", "Mars", "Honey", "Blue"]
BAD = ["I do not know", "Nobody", "No idea", "Nothing", "Green"]
QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "Which planet is red?", "What do bees make?",
             "What colour is the sky?"]


def test_dpo_from_an_sft_adapter_learns_the_votes_and_loads_in_plain_peft(tiny_model_dir, tmp_path, isolated_home,
                                                                         capsys, monkeypatch):
    import huggingface_hub.constants as hub_constants
    import trl.trainer.base_trainer as trl_trainer
    from lora_run import make_lora_run

    from core.cli import main
    from core.preference import reward_accuracy
    from core.runs import read_metrics

    # TRL's usage ping on trainer start: telemetry must be off by then (HF_HUB_DISABLE_TELEMETRY, set by the
    # app; the ping itself is skipped under CI, so what is checked is the flag whenever it is reached).
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "restore-me")
    monkeypatch.delenv("HF_HUB_DISABLE_TELEMETRY")
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_TELEMETRY", False)
    pings = []
    monkeypatch.setattr(trl_trainer, "send_telemetry",
                        lambda *args, **kwargs: pings.append(hub_constants.HF_HUB_DISABLE_TELEMETRY))
    sft = make_lora_run(tmp_path / "sft", tiny_model_dir)
    store = VoteStore(votes_path(tmp_path / "ws"))
    for i in range(20):  # 20 scripted votes: the good answer always wins, shown as A or B
        q, good, bad = QUESTIONS[i % 5], GOOD[i % 5], BAD[i % 5]
        if i % 2:
            store.add(PreferenceRecord(q, good, bad, "fine-tuned", "base", "a"))
        else:
            store.add(PreferenceRecord(q, bad, good, "base", "fine-tuned", "b"))
    code = main(["train", "--model", str(tiny_model_dir), "--data", str(store.path), "--method", "dpo",
                 "--start-from", str(sft), "--output", str(tmp_path / "ws"), "--name", "dpo", "--epochs", "8",
                 "--learning-rate", "5e-3", "--batch-size", "4", "--set", "data.test_fraction=0",
                 "--set", "training.max_length=64", "--set", "training.logging_steps=2",
                 "--set", "training.save_steps=1000", "--set", "method.lora_dropout=0"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "dpo train @ step" in err and "reward accuracy" in err
    run = tmp_path / "ws" / "dpo"
    lines = [r for r in read_metrics(run) if r.get("kind") == "preference"]
    assert lines and {"reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward"} <= set(lines[-1])
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1" and hub_constants.HF_HUB_DISABLE_TELEMETRY is True
    assert all(pings), pings  # any ping TRL tried found telemetry off (huggingface_hub then sends nothing)
    measured = reward_accuracy(run)
    assert measured["pairs"] == 20 and len(measured["rows"]) == 20
    assert measured["reward_accuracy"] > 0.5, measured
    assert measured["logp_margin_tuned"] > measured["logp_margin_reference"], measured
    # final/ is a plain peft adapter (no frozen reference copy)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert not (run / "final" / "ref").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(run / "final"))
    assert list(model.peft_config) == ["default"]


def _pairs_file(path, n=24):
    """``n`` prompt/chosen/rejected rows (the good answer is always chosen)."""
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            handle.write(json.dumps({"prompt": QUESTIONS[i % 5] + f" ({i})", "chosen": GOOD[i % 5],
                                     "rejected": BAD[i % 5]}) + "\n")
    return path


def _dpo_config(model_dir, data):
    from core.config import RunConfig

    cfg = RunConfig(name="dpo")
    cfg.model.name_or_path = str(model_dir)
    cfg.data.source = str(data)
    cfg.data.test_fraction = 0.2
    cfg.method.method = "dpo"
    cfg.method.lora_r, cfg.method.lora_alpha = 4, 8
    cfg.method.lora_dropout = 0.1  # uses the random-number state, which the checkpoint must restore
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length = 6, 4, 64
    t.eval_steps = t.save_steps = 2
    t.logging_steps = 1
    t.learning_rate, t.warmup_ratio, t.max_eval_examples = 5e-3, 0.0, 0
    t.device = "cpu"
    return cfg


def test_dpo_stopped_midway_resumes_to_the_same_end(tiny_model_dir, tmp_path, isolated_home):
    """A DPO run stopped through the GUI's cancel mechanism (core.cancel.StopToken) is 'stopped' with a complete
    checkpoint; resume finishes it at the same step with the same losses and rewards as an uninterrupted run
    (1e-6 relative: the same bound as the supervised methods in test_faults)."""
    from transformers import TrainerCallback

    from core.cancel import StopToken
    from core.runs import latest_checkpoint, read_metrics, read_status
    from core.training import resume, train

    data = _pairs_file(tmp_path / "pairs.jsonl")
    cfg = _dpo_config(tiny_model_dir, data)
    cfg.name = "whole"
    whole = train(cfg, workspace=tmp_path / "ws")
    assert whole.state == "finished" and whole.global_step == 6

    stop = StopToken()

    class StopAtStepTwo(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                stop.request("stopped by the user")

    cfg.name = "stopped"
    stopped = train(cfg, workspace=tmp_path / "ws", stop=stop, extra_callbacks=[StopAtStepTwo()])
    # The studio callback checks the token at the end of each step: it sees the request at step 3.
    assert stopped.state == "stopped" and stopped.global_step == 3
    status = read_status(stopped.run_dir)
    assert status["state"] == "stopped" and "resume from checkpoint-3" in status["message"]
    assert latest_checkpoint(stopped.run_dir).name == "checkpoint-3"
    assert not (stopped.run_dir / "final").exists()

    resumed = resume(stopped.run_dir)
    assert resumed.state == "finished" and resumed.global_step == 6
    assert read_status(resumed.run_dir)["state"] == "finished"

    def by_step(run_dir, kind, key, split=None):
        return {r["step"]: r[key] for r in read_metrics(run_dir)
                if r.get("kind") == kind and (split is None or r.get("split") == split) and r.get(key) is not None}

    for kind, key, split in (("train", "loss", None), ("eval", "eval_loss", None),
                             ("preference", "reward_margin", "train"), ("preference", "reward_accuracy", "train"),
                             ("preference", "chosen_reward", "train"), ("preference", "reward_margin", "eval")):
        expected, got = by_step(whole.run_dir, kind, key, split), by_step(resumed.run_dir, kind, key, split)
        assert expected and sorted(got) == sorted(expected), (kind, key, split)
        for step in expected:
            assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-9), (kind, key, split, step)
    # Held-out records say over how many pairs (24 x 0.2 = 5), and the run summary speaks of them.
    from core.outcome import summarize_outcome

    held_out = [r for r in read_metrics(whole.run_dir) if r.get("kind") == "preference" and r.get("split") == "eval"]
    assert held_out and all(r.get("pairs") == 5 for r in held_out)
    assert summarize_outcome(whole.run_dir).headline.startswith("On 5 held-out pairs it "), \
        summarize_outcome(whole.run_dir).headline


@pytest.mark.parametrize("row", [
    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Lyon, I think."},
    {"conversations": [{"from": "human", "value": "Name a red fruit."}],
     "chosen": {"from": "gpt", "value": "A strawberry."}, "rejected": {"from": "gpt", "value": "A banana."}},
    {"chosen": [{"role": "user", "content": "Synonym for happy?"}, {"role": "assistant", "content": "Joyful."}],
     "rejected": [{"role": "user", "content": "Synonym for happy?"}, {"role": "assistant", "content": "Sad."}]},
], ids=["prompt_chosen_rejected", "llama_factory", "trl_implicit_prompt"])
def test_pair_tokens_are_what_trl_trains(tiny_model_dir, tmp_path, row):
    """The Data page's pair view (core.preference.pair_tokens) shows exactly the prompt and answer tokens TRL's
    DPOTrainer builds from the rendered pair (its own tokenize step), and cuts them at max_length like it."""
    from trl.data_utils import _tokenize, common_prefix_length

    from core.config import RunConfig
    from core.models import load_tokenizer
    from core.preference import pair_tokens, render_pair

    path = tmp_path / "pair.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    cfg = RunConfig()
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.data.source = str(path)
    tokenizer = load_tokenizer(cfg.model)
    (pair,), skipped, _ = load_preference_pairs(cfg.data)
    assert not skipped
    shown = pair_tokens(pair, cfg.data, tokenizer, 512)
    text = render_pair(pair, cfg.data, tokenizer)
    prompt_ids = _tokenize(tokenizer, text["prompt"])["input_ids"]
    ids = {side: _tokenize(tokenizer, text["prompt"] + text[side] + tokenizer.eos_token)["input_ids"]
           for side in ("chosen", "rejected")}
    start = min(common_prefix_length(prompt_ids, ids[side]) for side in ids)
    assert "".join(t for t, _ in shown.prompt) == tokenizer.decode(prompt_ids[:start])
    assert len(shown.prompt) == start and not any(trained for _, trained in shown.prompt)
    for side, tokens in (("chosen", shown.chosen), ("rejected", shown.rejected)):
        assert len(tokens) == len(ids[side]) - start and all(trained for _, trained in tokens)
        assert "".join(t for t, _ in tokens) == tokenizer.decode(ids[side][start:])
    assert shown.chosen[-1][0] == tokenizer.eos_token
    cut = pair_tokens(pair, cfg.data, tokenizer, start + 2)  # room for two answer tokens
    assert len(cut.chosen) == 2 and cut.chosen_cut == len(ids["chosen"]) - start - 2
