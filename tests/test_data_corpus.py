"""Every file of tests/data_corpus (small files written for these tests in the shapes real datasets ship:
Alpaca, ShareGPT, OpenAI messages, single-conversation JSON, prompt/response CSV and Parquet, Parquet shards,
plain text, BOM + CRLF JSONL, ; and tab CSV with multi-line cells, DPO, KTO, tool calls) goes through
``data inspect`` with its expected counts and a 2-step ``train`` on the tiny model; preference and tool-call
data are refused with their explanation, before any run folder exists, and without a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parent / "data_corpus"

# file -> (extra options, the count line of `data inspect`, the format it is read as)
TRAINABLE = {
    "alpaca.json": ([], "5 rows in the file · 5 usable · 4 train / 1 held-out", "alpaca"),
    "sharegpt.jsonl": ([], "4 rows in the file · 4 usable · 3 train / 1 held-out", "messages"),
    "openai_messages.jsonl": ([], "4 rows in the file · 4 usable · 3 train / 1 held-out", "messages"),
    "single_conversation.json": ([], "1 row in the file · 1 usable · 1 train / 0 held-out", "messages"),
    "single_messages.json": ([], "1 row in the file · 1 usable · 1 train / 0 held-out", "messages"),
    "prompt_response.csv": ([], "5 rows in the file · 5 usable · 4 train / 1 held-out", "question_answer"),
    "prompt_response.parquet": ([], "4 rows in the file · 4 usable · 3 train / 1 held-out", "question_answer"),
    "parquet_shards": ([], "5 rows in the file · 5 usable · 4 train / 1 held-out", "alpaca"),
    "notes.txt": ([], "1 piece of text in the file · 1 usable · 1 train / 0 held-out", "text"),
    "guide.md": ([], "1 piece of text in the file · 1 usable · 1 train / 0 held-out", "text"),
    "bom_crlf.jsonl": ([], "3 rows in the file · 3 usable · 2 train / 1 held-out", "question_answer"),
    "semicolon_multiline.csv": ([], "4 rows in the file · 4 usable · 3 train / 1 held-out", "question_answer"),
    "tab_delimited.csv": ([], "3 rows in the file · 3 usable · 2 train / 1 held-out", "question_answer"),
    "dolly_context.jsonl": ([], "3 rows in the file · 3 usable · 2 train / 1 held-out", "alpaca"),
    "human_assistant.jsonl": ([], "3 rows in the file · 3 usable · 2 train / 1 held-out", "question_answer"),
    "nested_fields.jsonl": ([], "3 rows in the file · 3 usable · 2 train / 1 held-out", "question_answer"),
    "custom_headers.csv": (["--map", "question=tip_question", "--map", "answer=tip_answer", "--skip-bad-rows"],
                           "6 rows in the file · 1 bad (skipped) · 5 usable · 4 train / 1 held-out",
                           "question_answer"),
    "dpo_prompt_chosen_rejected.jsonl": (["--preference", "chosen_only"],
                                         "3 rows in the file · 3 usable · 2 train / 1 held-out", "preference"),
    "dpo_conversational.jsonl": (["--map", "messages=chosen"], "2 rows in the file · 2 usable · 1 train / 1 held-out",
                                 "messages"),
    "kto_labels.jsonl": (["--preference", "chosen_only"],
                         "5 rows in the file · 2 left out · 3 usable · 2 train / 1 held-out", "kto"),
}
# file -> (options, what the refusal says); without the options of TRAINABLE
REFUSED = {
    "dpo_prompt_chosen_rejected.jsonl": ([], "this is preference data (DPO: prompt/chosen/rejected)"),
    "dpo_conversational.jsonl": ([], "this is preference data (DPO: chosen/rejected)"),
    "kto_labels.jsonl": ([], "this is preference data (KTO: prompt/completion/label)"),
    "tool_calls.jsonl": ([], "this is tool-call (function-calling) data"),
    "custom_headers.csv": (["--skip-bad-rows"], "cannot tell which column is the question and which the answer; "
                                                "columns: tip_question, tip_answer"),
}


def test_every_corpus_file_is_listed():
    assert {p.name for p in CORPUS.iterdir()} == set(TRAINABLE) | set(REFUSED)


@pytest.mark.parametrize("name", sorted(TRAINABLE))
def test_inspect_counts(name, tiny_model_dir, capsys, isolated_home):
    from core.cli import main

    options, counts, schema = TRAINABLE[name]
    assert main(["data", "inspect", str(CORPUS / name), "--model", str(tiny_model_dir), "--examples", "1",
                 *options]) == 0
    out = capsys.readouterr().out
    assert f"Rows:      {counts}" in out, out
    assert f"Format:    {schema} —" in out and "--- Example 1 of" in out


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusals_say_what_the_data_is(name, tiny_model_dir, capsys, isolated_home, tmp_path):
    from core.cli import main

    options, message = REFUSED[name]
    assert main(["data", "inspect", str(CORPUS / name), "--model", str(tiny_model_dir), *options]) == 2
    err = capsys.readouterr().err
    assert message in err and str(CORPUS / name) in err and "Traceback" not in err
    if "preference" in message:
        assert "DPO" in err or "KTO" in err
        assert "data.preference=chosen_only" in err
    # train refuses it too: exit 2, one error line, and no run folder
    workspace = tmp_path / "ws"
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(CORPUS / name), "--output", str(workspace),
                 "--max-steps", "2", *_train_options(options)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count(message) == 1 and message not in captured.out
    assert "Traceback" not in captured.err
    assert not workspace.exists() or not any(workspace.iterdir())


def _train_options(options: list[str]) -> list[str]:
    """The `data inspect` options of TRAINABLE as `train` takes them."""
    out, items = [], iter(options)
    for item in items:
        if item == "--map":
            out += ["--map", next(items)]
        elif item == "--preference":
            out += ["--set", f"data.preference={next(items)}"]
        elif item == "--skip-bad-rows":
            out += ["--set", "data.skip_bad_rows=true"]
    return out


def test_two_step_train_on_every_format(tiny_model_dir, tmp_path, capsys, isolated_home):
    """One 2-step LoRA run per trainable file (tiny model, CPU): each finishes with a final model."""
    from core.cli import main

    workspace = tmp_path / "ws"
    for name, (options, _, _) in sorted(TRAINABLE.items()):
        run_name = name.replace(".", "_")
        code = main(["train", "--model", str(tiny_model_dir), "--data", str(CORPUS / name), "--method", "lora",
                     "--max-steps", "2", "--batch-size", "2", "--output", str(workspace), "--name", run_name,
                     "--set", "training.device=cpu", "--set", "training.max_length=256",
                     "--set", "data.test_fraction=0", "--set", "training.save_steps=1000",
                     *_train_options(options)])
        captured = capsys.readouterr()
        assert code == 0, (name, captured.err[-2000:])
        assert "Traceback" not in captured.err
        assert (workspace / run_name / "final").is_dir(), name
