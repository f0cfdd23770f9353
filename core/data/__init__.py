"""Datasets: read a file / folder / Hub id / bundled sample, understand its columns, render each example
with a prompt template, and tokenize it with a mask saying which tokens the model is trained on.

One module per stage, in the order data flows: ``read`` (files, folders, Hub, line numbers) -> ``schema``
(detection, mapping, canonical records) -> ``render`` (templates, trained segments) -> ``tokenize`` ->
``prepare`` (split, cache) -> ``checks`` (duplicates, leakage...); ``report`` writes ``data inspect``.
Everything public is re-exported here: callers write ``from core.data import ...``.

Heavy libraries (datasets, pyarrow) are imported inside functions: the GUI imports this package at
start-up. No input file is ever written to.
"""

from __future__ import annotations

from core.data.checks import (  # noqa: F401
    NEAR_DUPLICATE_THRESHOLD,
    CheckReport,
    Finding,
    check_records,
    near_duplicate_groups,
    normalize_text,
    run_checks,
)
from core.data.prepare import (  # noqa: F401
    CACHE_VERSION,
    DataSummary,
    LengthHistogram,
    LengthStats,
    PreparedData,
    check_trainable,
    data_summary,
    dataset_fingerprint,
    measure_lengths,
    prepare_dataset,
    require_trainable,
    split_indices,
    summarize_records,
    training_split,
)
from core.data.read import (  # noqa: F401
    DATA_EXTENSIONS,
    JSONL_EXTENSIONS,
    TABLE_EXTENSIONS,
    TEXT_CHUNK_CHARS,
    TEXT_EXTENSIONS,
    BadRow,
    LazyJsonlTable,
    RawDataset,
    column_value,
    has_column,
    is_message_list,
    load_raw,
    looks_like_hub_id,
    preview_rows,
    save_jsonl,
    text_chunks,
)
from core.data.render import (  # noqa: F401
    ALPACA_NO_INPUT,
    ALPACA_WITH_INPUT,
    TRAINED_CLOSE,
    TRAINED_OPEN,
    Segment,
    marked_text,
    prompt_for,
    render_segments,
    template_fields,
)
from core.data.report import (  # noqa: F401
    inspect_report,
)
from core.data.schema import (  # noqa: F401
    ANSWER_ROLES,
    DPO_ADVICE,
    KTO_ADVICE,
    PREFERENCE_CHOICES,
    ROLE_ALIASES,
    SCHEMA_ROLES,
    TOOL_ADVICE,
    TOOL_ROLES,
    SchemaGuess,
    detect_schema,
    load_records,
    normalize_record,
    preference_kind,
    resolve_schema,
    tool_call_problem,
)
from core.data.tokenize import (  # noqa: F401
    IGNORE_INDEX,
    TokenizedExample,
    token_mask_view,
    tokenize_segments,
)
