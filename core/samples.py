"""Bundled sample datasets: the English chatterbot corpus as question/answer pairs (no torch, no network).

``sample:trivia`` is the default dataset of a new run; ``sample:all`` joins every topic.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import DataError

DEFAULT_TOPIC = "trivia"


def corpus_dir() -> Path:
    """The folder holding the English chatterbot-corpus YAML files."""
    try:
        import chatterbot_corpus
    except ModuleNotFoundError:
        raise DataError("the bundled sample data (package chatterbot-corpus) is not installed; "
                        "install it with `pip install chatterbot-corpus` or open your own dataset file") from None
    return Path(chatterbot_corpus.__file__).resolve().parent / "data" / "english"


def list_sample_topics() -> list[str]:
    """Topic names usable as ``sample:<topic>`` (plus ``all``), sorted."""
    folder = corpus_dir()
    return sorted(path.stem for path in folder.glob("*.yml"))


def sample_files(topic: str) -> list[Path]:
    """The YAML files behind a topic (every file for ``all``)."""
    topic = (topic or DEFAULT_TOPIC).strip().lower()
    folder = corpus_dir()
    if topic == "all":
        return sorted(folder.glob("*.yml"))
    path = folder / f"{topic}.yml"
    if not path.is_file():
        raise DataError(f"unknown sample topic {topic!r}; available: all, {', '.join(list_sample_topics())}",
                        source=f"sample:{topic}")
    return [path]


def _split_broken_item(text: str) -> tuple[str, str] | None:
    # One trivia entry lost its leading "- " in the YAML, so the pair arrives as a single string
    # 'question? - 'answer''; recover it instead of silently losing a sample.
    if " - " not in text:
        return None
    question, answer = text.rsplit(" - ", 1)
    answer = answer.strip().strip("'\"").strip()
    question = question.strip()
    return (question, answer) if question and answer else None


def _pairs_from_conversation(conversation) -> list[tuple[str, str]]:
    if isinstance(conversation, str):
        pair = _split_broken_item(conversation)
        return [pair] if pair else []
    if not isinstance(conversation, list):
        return []
    turns = [str(turn).strip() for turn in conversation if turn is not None]
    # A conversation is [question, answer, question, answer, ...]; a dangling last line has no reply.
    return [(turns[i], turns[i + 1]) for i in range(0, len(turns) - 1, 2) if turns[i] and turns[i + 1]]


def load_sample(topic: str = DEFAULT_TOPIC) -> list[dict]:
    """Question/answer pairs of a bundled topic, in file order: ``[{"question", "answer"}, ...]``."""
    import yaml

    rows: list[dict] = []
    for path in sample_files(topic):
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise DataError(f"cannot read the sample file: {exc}", source=str(path)) from None
        for conversation in document.get("conversations") or []:
            rows.extend({"question": q, "answer": a} for q, a in _pairs_from_conversation(conversation))
    return rows
