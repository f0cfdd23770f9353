"""Data checks before training (the last stage of core.data): exact and near-duplicate questions,
held-out examples that also occur in the training split (leakage), empty or one-character answers, one
answer repeated across many rows, template placeholders left in the text, and extreme lengths.

Every finding names its rows by the row numbers a user sees (``RawDataset.line_numbers``) and suggests
rows to leave out of the run (``data.drop_rows``); the file itself is never modified. Near duplicates
are found with MinHash over character 3-grams and locality-sensitive hashing (numpy, no other library),
then confirmed with the exact Jaccard similarity of the two texts' 3-grams (3-grams, not longer pieces: one
changed letter or short word in a short question still leaves it similar, a changed topic word does not).
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import string
import time
from collections import defaultdict
from dataclasses import dataclass, field

from core.cancel import ProgressFn, StopToken
from core.data.prepare import DataSummary, measure_lengths, summarize_records, training_split
from core.data.render import render_segments
from core.data.schema import load_records

NEAR_DUPLICATE_THRESHOLD = 0.8  # Jaccard similarity of the character 3-gram sets
_SHINGLE = 3
_BANDS, _BAND_ROWS = 10, 5  # 50 MinHash values: a pair at similarity 0.8 is a candidate with p ~ 0.98,
# one at 0.3 (unrelated texts sharing common letter triples) with p ~ 0.02
_MIN_NEAR_CHARS = 12  # shorter questions differ in a word or a number: not "near duplicates"
_MAX_NEAR_BYTES = 2000  # the start of a long text is enough to tell
_LONG_FACTOR = 8  # "extremely long": over this many times the median length (and above the 99th percentile)

# punctuation (ASCII and the common typographic marks) -> space, for normalize_text
_PUNCTUATION = {ord(c): " " for c in string.punctuation + "“”‘’«»‹›„‚–—…¿¡·•。、，！？：；（）【】「」『』"}
# Only obvious placeholders: {{name}}, <PLACEHOLDER>/<FIRST_NAME>, [INSERT ...]/[Your name]. A single
# {name} is not flagged: code and format strings are full of them.
_PLACEHOLDERS = (
    re.compile(r"\{\{\s*[^{}\n]{1,40}?\s*\}\}"),
    re.compile(r"<(?:PLACEHOLDER|TODO|TBD|NAME|INSERT[A-Z _]*|YOUR[A-Z _]*|ENTER[A-Z _]*|FILL[A-Z _]*"
               r"|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)>"),
    re.compile(r"\[(?:insert|your|enter|placeholder|todo|fill in|add)\b[^\]\n]{0,40}\]", re.IGNORECASE),
)


@dataclass
class Finding:
    kind: str  # duplicate_question | near_duplicate_question | leakage | short_answer | repeated_answer |
    #            placeholder | extremely_long | over_max_length
    title: str  # one line, with the count: "3 groups of rows ask the same question"
    detail: str  # what it means and what to do
    rows: list[int]  # every row involved, sorted
    groups: list[list[int]] = field(default_factory=list)  # rows that belong together (duplicates, leaks)
    drop: list[int] = field(default_factory=list)  # the rows "drop these" leaves out (data.drop_rows)
    examples: list[str] = field(default_factory=list)  # a few short excerpts (plain text)


@dataclass
class CheckReport:
    summary: DataSummary
    findings: list[Finding]
    seconds: float
    length_unit: str  # "tokens" or "characters"

    def drop_rows(self) -> list[int]:
        """Every row some finding suggests leaving out, sorted."""
        return sorted({row for finding in self.findings for row in finding.drop})

    def text(self, max_rows: int = 20) -> str:
        """The plain-text report of ``data check``."""
        label = self.summary.row_label
        out = [f"Dataset:   {self.summary.source} ({self.summary.kind}, {self.summary.schema})",
               f"Rows:      {self.summary.line()}"]
        for bad in self.summary.bad_rows[:10]:
            out.append(f"  bad {label} {bad.line}: {bad.message}")
        if self.summary.n_bad > 10:
            out.append(f"  … and {self.summary.n_bad - 10} more bad rows")
        if not self.findings:
            out.append("No problems found.")
        for finding in self.findings:
            out.append("")
            out.append(f"* {finding.title}")
            out.append(f"  {finding.detail}")
            if finding.groups and any(len(g) > 1 for g in finding.groups):
                shown = [g for g in finding.groups if len(g) > 1][:8]
                for group in shown:
                    out.append(f"  {label}s " + ", ".join(map(str, group)))
                if len(finding.groups) > len(shown):
                    out.append(f"  … and {len(finding.groups) - len(shown)} more groups")
            else:
                out.append(f"  {label}s {_row_list(finding.rows, max_rows)}")
            for example in finding.examples[:3]:
                out.append(f"    e.g. {example}")
            if finding.drop:
                out.append(f"  drop these ({len(finding.drop)}): --set 'data.drop_rows={_compact(finding.drop)}'")
        drop = self.drop_rows()
        if drop:
            out.append("")
            out.append(f"To leave out every suggested row ({len(drop)}) in a run (the file is not changed): "
                       f"--set 'data.drop_rows={_compact(drop)}'")
        out.append(f"({self.seconds:.2f} s, lengths in {self.length_unit})")
        return "\n".join(out)


def _row_list(rows: list[int], limit: int) -> str:
    return ", ".join(map(str, rows[:limit])) + (f" … and {len(rows) - limit} more" if len(rows) > limit else "")


def _compact(rows: list[int]) -> str:
    return "[" + ",".join(map(str, rows)) + "]"


def normalize_text(text: str) -> str:
    """Text as duplicates are compared: case folded, punctuation and runs of spaces made one space."""
    return " ".join(text.casefold().translate(_PUNCTUATION).split())


def _question_of(record: dict) -> str:
    if "messages" in record:
        return "\n".join(m["content"] for m in record["messages"] if m["role"] == "user")
    if not record.get("question") and "text" in record:
        return record["text"]  # plain text: the whole text is what repeats
    return record.get("question", "")


def _answers_of(record: dict) -> list[str]:
    if "messages" in record:
        return [m["content"] for m in record["messages"] if m["role"] == "assistant"]
    if not record.get("question") and "text" in record:
        return []  # plain text has no answer
    return [record.get("answer", "")]


def _all_text(record: dict) -> str:
    if "messages" in record:
        return "\n".join(m["content"] for m in record["messages"])
    return "\n".join(v for k, v in record.items() if isinstance(v, str))


def _excerpt(text: str, limit: int = 70) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")


# ------------------------------------------------------------------------------------------ MinHash


def _mix(values):
    """splitmix64's finalizer: a well-spread 64-bit hash of each value (numpy uint64, wrapping)."""
    import numpy as np

    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def _shingles(texts: list[str]):
    """(hashes of every character 3-gram of every text, start offset of each text's 3-grams, counts)."""
    import numpy as np

    encoded = [t.encode("utf-8")[:_MAX_NEAR_BYTES] for t in texts]
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint64)
    windows = len(buffer) - _SHINGLE + 1
    rolling = np.zeros(max(windows, 0), dtype=np.uint64)
    for j in range(_SHINGLE):
        rolling = rolling * np.uint64(257) + buffer[j:j + windows]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    counts = np.maximum(lengths - _SHINGLE + 1, 0)
    positions = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts, strict=True)])
    hashes = _mix(rolling[positions])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return hashes, offsets, counts


def near_duplicate_groups(texts: list[str], threshold: float = NEAR_DUPLICATE_THRESHOLD) -> list[list[int]]:
    """Groups (indices into ``texts``, each group sorted) of texts whose character 3-gram sets have a Jaccard
    similarity of at least ``threshold`` with another member; texts are compared as given (normalise
    them first). Texts under 12 characters are left out."""
    import numpy as np

    candidates = [i for i, t in enumerate(texts) if len(t) >= _MIN_NEAR_CHARS]
    if len(candidates) < 2:
        return []
    hashes, offsets, counts = _shingles([texts[i] for i in candidates])
    # One cheap permutation per MinHash value: a * h + b (a odd: a bijection of the 64-bit hashes), whose
    # minimum is taken; the shingle hashes are already well mixed, so this suffices.
    multipliers = _mix(np.arange(1, _BANDS * _BAND_ROWS + 1, dtype=np.uint64)) | np.uint64(1)
    increments = _mix(np.arange(101, 101 + _BANDS * _BAND_ROWS, dtype=np.uint64))
    signature = np.empty((len(candidates), len(multipliers)), dtype=np.uint64)
    permuted = np.empty_like(hashes)
    for column in range(len(multipliers)):
        np.multiply(hashes, multipliers[column], out=permuted)
        np.add(permuted, increments[column], out=permuted)
        signature[:, column] = np.minimum.reduceat(permuted, offsets)
    parent = list(range(len(candidates)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    shingle_sets: dict[int, set] = {}

    def shingle_set(i: int) -> set:
        if i not in shingle_sets:
            shingle_sets[i] = set(hashes[offsets[i]:offsets[i] + counts[i]].tolist())
        return shingle_sets[i]

    indices = np.arange(len(candidates))
    for band in range(_BANDS):
        block = signature[:, band * _BAND_ROWS:(band + 1) * _BAND_ROWS]
        key = np.zeros(len(candidates), dtype=np.uint64)
        for column in range(_BAND_ROWS):
            key = _mix(key ^ block[:, column])
        # Compare each member of a bucket with its first member only: linear even for a huge bucket.
        _, first_index, inverse = np.unique(key, return_index=True, return_inverse=True)
        firsts = first_index[inverse.ravel()]
        for i in indices[firsts != indices].tolist():
            first = int(firsts[i])
            if find(first) == find(i):
                continue
            a, b = shingle_set(first), shingle_set(i)
            if len(a & b) >= threshold * len(a | b):
                parent[find(i)] = find(first)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(candidates)):
        groups[find(i)].append(candidates[i])
    return [sorted(g) for g in groups.values() if len(g) > 1]


# ------------------------------------------------------------------------------------------- checks


def check_records(records: list[dict], row_numbers: list[int], train_indices: list[int],
                  test_indices: list[int], *, lengths: list[int] | None = None, max_length: int | None = None,
                  length_unit: str = "characters", near_threshold: float = NEAR_DUPLICATE_THRESHOLD,
                  stop: StopToken | None = None) -> list[Finding]:
    """The findings for ``records`` (``row_numbers``: the row of each; the indices: the training split).
    ``lengths`` (one per record, in ``length_unit``) enable the length checks; ``max_length`` (tokens) the
    truncation one."""
    findings: list[Finding] = []
    n = len(records)
    questions = [normalize_text(_question_of(r)) for r in records]
    answers = [[normalize_text(a) for a in _answers_of(r)] for r in records]
    raw_answers = [_answers_of(r) for r in records]

    # -- exact duplicate questions
    by_question: dict[str, list[int]] = defaultdict(list)
    for i, question in enumerate(questions):
        if question:
            by_question[question].append(i)
    exact = [g for g in by_question.values() if len(g) > 1]
    if exact:
        same_answer = sum(1 for g in exact if len({tuple(answers[i]) for i in g}) == 1)
        findings.append(Finding(
            "duplicate_question",
            f"{len(exact)} question{'s are' if len(exact) != 1 else ' is'} asked in more than one row "
            f"({sum(len(g) for g in exact)} rows)",
            f"the same question after ignoring case, punctuation and spacing; {same_answer} of these groups also "
            "have the same answer. Repeats weigh those examples more and can leak into the held-out split: keep "
            "the first of each group.",
            sorted(row_numbers[i] for g in exact for i in g), [[row_numbers[i] for i in g] for g in exact],
            sorted(row_numbers[i] for g in exact for i in g[1:]),
            [_excerpt(_question_of(records[g[0]])) for g in exact[:3]]))
    if stop is not None:
        stop.raise_if_set()

    # -- near-duplicate questions (one representative per distinct normalised question)
    distinct = list(by_question)
    near = near_duplicate_groups(distinct, near_threshold)
    near_groups = [sorted(i for d in group for i in by_question[distinct[d]]) for group in near]
    if near_groups:
        findings.append(Finding(
            "near_duplicate_question",
            f"{len(near_groups)} group{'s' if len(near_groups) != 1 else ''} of nearly identical questions "
            f"({sum(len(g) for g in near_groups)} rows)",
            f"questions that differ only slightly (at least {near_threshold:.0%} of their 3-letter pieces in "
            "common); check them and keep one of each group.",
            sorted(row_numbers[i] for g in near_groups for i in g), [[row_numbers[i] for i in g] for g in near_groups],
            sorted(row_numbers[i] for g in near_groups for i in g[1:]),
            [" ~ ".join(_excerpt(_question_of(records[i]), 50) for i in g[:2]) for g in near_groups[:3]]))
    if stop is not None:
        stop.raise_if_set()

    # -- leakage: held-out examples whose question (exactly or nearly) is also in the training split
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for group in exact + near_groups:
        for i in group[1:]:
            parent[root(i)] = root(group[0])
    cluster = [root(i) for i in range(n)]
    train_by_cluster: dict[int, list[int]] = defaultdict(list)
    for i in train_indices:
        train_by_cluster[cluster[i]].append(i)
    leaks = [(i, train_by_cluster[cluster[i]]) for i in test_indices if train_by_cluster.get(cluster[i])]
    if leaks:
        findings.append(Finding(
            "leakage",
            f"{len(leaks)} held-out example{'s' if len(leaks) != 1 else ''} also occur{'s' if len(leaks) == 1 else ''} "
            "in the training split",
            "the eval loss on these measures memory, not generalisation. Leave out the held-out copies (or the "
            "duplicates: the split is recomputed after rows are left out, so run the check again).",
            sorted({row_numbers[i] for i, twins in leaks} | {row_numbers[j] for _, twins in leaks for j in twins}),
            [[row_numbers[i]] + [row_numbers[j] for j in twins] for i, twins in leaks],
            sorted(row_numbers[i] for i, _ in leaks),
            [_excerpt(_question_of(records[i])) for i, _ in leaks[:3]]))

    # -- empty or one-character answers
    short = [i for i in range(n) if any(len(a.strip()) <= 1 for a in raw_answers[i])]
    if short:
        findings.append(Finding(
            "short_answer", f"{len(short)} answer{'s are' if len(short) != 1 else ' is'} empty or one character",
            "fine for one-letter or one-digit answers; otherwise the row is likely cut or mis-mapped.",
            [row_numbers[i] for i in short], [[row_numbers[i]] for i in short], [row_numbers[i] for i in short],
            [f"{row_numbers[i]}: {_excerpt(raw_answers[i][-1] if raw_answers[i] else '')}" for i in short[:3]]))

    # -- the same answer for many different questions
    rows_by_answer: dict[str, list[int]] = defaultdict(list)
    questions_by_answer: dict[str, set[str]] = defaultdict(set)
    for i in range(n):
        final = answers[i][-1] if answers[i] else ""
        if final:
            rows_by_answer[final].append(i)
            questions_by_answer[final].add(questions[i] or f"#{i}")
    threshold = max(3, -(-n // 100))  # at least 3 different questions and 1% of the data
    repeated_groups = sorted((rows for answer, rows in rows_by_answer.items()
                              if len(questions_by_answer[answer]) >= threshold), key=len, reverse=True)
    if repeated_groups:
        findings.append(Finding(
            "repeated_answer",
            f"{len(repeated_groups)} answer{'s are' if len(repeated_groups) != 1 else ' is'} given to many different "
            f"questions (each to {threshold} or more)",
            "a boilerplate answer (\"I cannot help with that\") repeated this often becomes the model's default "
            "reply; keep a few.",
            sorted(row_numbers[i] for g in repeated_groups for i in g),
            [[row_numbers[i] for i in g] for g in repeated_groups],
            sorted(row_numbers[i] for g in repeated_groups for i in g[1:]),
            [f"{_excerpt(raw_answers[g[0]][-1], 50)} × {len(g)}" for g in repeated_groups[:3]]))

    # -- template placeholders left in the text
    placeholders = []
    for i, record in enumerate(records):
        text = _all_text(record)
        for pattern in _PLACEHOLDERS:
            match = pattern.search(text)
            if match:
                placeholders.append((i, match.group(0)))
                break
    if placeholders:
        findings.append(Finding(
            "placeholder", f"{len(placeholders)} row{'s' if len(placeholders) != 1 else ''} still hold a template "
                           "placeholder",
            "text such as {{name}}, <PLACEHOLDER> or [INSERT ...] was never filled in; the model would learn to "
            "write it. (Code that really uses {{ }} is fine.)",
            [row_numbers[i] for i, _ in placeholders], [[row_numbers[i]] for i, _ in placeholders],
            [row_numbers[i] for i, _ in placeholders],
            [f"{row_numbers[i]}: {match}" for i, match in placeholders[:3]]))

    # -- extreme lengths
    if lengths is not None and n >= 2:
        ordered = sorted(lengths)
        median = statistics.median(ordered)
        p99 = ordered[min(n - 1, int(round(0.99 * (n - 1))))]
        limit = max(_LONG_FACTOR * median, 1)
        long = sorted((i for i in range(n) if lengths[i] > limit and lengths[i] >= p99), key=lambda i: -lengths[i])
        if long:
            findings.append(Finding(
                "extremely_long",
                f"{len(long)} example{'s are' if len(long) != 1 else ' is'} extremely long (over {_LONG_FACTOR}× the "
                f"median of {median:g} {length_unit})",
                "often a scraping or export error (a whole page in one cell); check them.",
                sorted(row_numbers[i] for i in long), [[row_numbers[i]] for i in long],
                sorted(row_numbers[i] for i in long),
                [f"{row_numbers[i]}: {lengths[i]:,} {length_unit}" for i in long[:3]]))
        if max_length is not None and length_unit == "tokens":
            over = [i for i in range(n) if lengths[i] > max_length]
            if over:
                findings.append(Finding(
                    "over_max_length",
                    f"{len(over)} example{'s are' if len(over) != 1 else ' is'} longer than the max length of "
                    f"{max_length} tokens",
                    "their end (often the answer) is cut off, or they are left out with overlong=drop; raise the max "
                    "length if there are many.",
                    [row_numbers[i] for i in over], [[row_numbers[i]] for i in over], [row_numbers[i] for i in over],
                    [f"{row_numbers[i]}: {lengths[i]:,} tokens" for i in over[:3]]))
    return findings


def run_checks(data_cfg, tokenizer=None, max_length: int | None = None, *,
               near_threshold: float = NEAR_DUPLICATE_THRESHOLD, stop: StopToken | None = None,
               progress: ProgressFn | None = None) -> CheckReport:
    """Check ``data_cfg``'s data before training (see the module docstring) on the same rows and the same
    train / held-out split training uses. Bad rows are counted, not raised. Lengths are in tokens with a
    ``tokenizer`` (and the over-max-length check needs ``max_length``), else in characters of the
    rendered text."""
    started = time.perf_counter()
    relaxed = dataclasses.replace(data_cfg, skip_bad_rows=True)
    raw, guess, records, lines = load_records(relaxed, stop=stop, progress=progress)
    summary = summarize_records(raw, guess, lines, data_cfg)
    train_idx, test_idx, unused = training_split(len(records), data_cfg)
    used = len(records) - unused
    records, lines = records[:used], lines[:used]
    if progress is not None:
        progress(0.5, "measuring lengths")
    if tokenizer is not None:
        lengths = measure_lengths(records, lines, data_cfg, tokenizer, max_length or 10**9, stop=stop).lengths
        unit = "tokens"
    else:
        template_cfg = data_cfg if data_cfg.template != "chat" else dataclasses.replace(data_cfg, template="plain")
        lengths = [sum(len(s.text) for s in render_segments(r, template_cfg, None)) for r in records]
        unit = "characters"
    if progress is not None:
        progress(0.7, "looking for duplicates")
    findings = check_records(records, lines, train_idx, test_idx, lengths=lengths,
                             max_length=max_length if tokenizer is not None else None, length_unit=unit,
                             near_threshold=near_threshold, stop=stop)
    if progress is not None:
        progress(1.0, f"{len(findings)} finding{'s' if len(findings) != 1 else ''}")
    return CheckReport(summary, findings, time.perf_counter() - started, unit)
