from __future__ import annotations

import pytest

from core.errors import DataError
from core.samples import list_sample_topics, load_sample


def test_topics_list_the_english_corpus():
    topics = list_sample_topics()
    assert "trivia" in topics and "greetings" in topics
    assert topics == sorted(topics)


def test_trivia_has_261_clean_pairs_including_the_broken_yaml_entry():
    rows = load_sample("trivia")
    assert len(rows) == 261
    assert rows[0] == {"question": "Who was the 37th President of the United States?", "answer": "Richard Nixon"}
    # The YAML entry missing its "- " arrives as one string; it is split back into its pair.
    assert {"question": 'In a game of bingo, which number is represented by the phrase "two little ducks"?',
            "answer": "22"} in rows
    assert all(isinstance(r["question"], str) and r["question"] and r["answer"] for r in rows)
    assert rows[1]["answer"] == "1963"  # quoted YAML numbers stay text


def test_multi_line_conversations_give_consecutive_pairs():
    # conversations.yml holds [q, a, q, a, ...] lists with more than one pair.
    rows = load_sample("conversations")
    assert len(rows) > 23  # more pairs than conversations
    assert all(set(r) == {"question", "answer"} for r in rows)


def test_all_joins_every_topic():
    total = load_sample("all")
    assert len(total) == sum(len(load_sample(t)) for t in list_sample_topics())


def test_unknown_topic_names_the_choices():
    with pytest.raises(DataError) as info:
        load_sample("astrology")
    assert "astrology" in str(info.value) and "trivia" in str(info.value)
