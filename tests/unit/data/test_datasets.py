"""Loading prompt datasets from hand-made files (every format, every bad input) and the resumable epoch cursor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlplat.data.datasets import EpochCursor, Row, common_columns, load_rows, rows_from_records

RECORDS = [  # one Arrow type per column: parquet and save_to_disk can't mix strings and message lists in one
    {"prompt": [{"role": "user", "content": "What is 2 + 3?"}], "answer": "5", "level": 1},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "7 * 6?"}],
     "answer": "42", "level": 2},
]


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _load(files, tmp_path: Path, **kw) -> list[Row]:
    return load_rows(files, cache_dir=tmp_path / "hf-cache", **kw)


# ---------------------------------------------------------------- formats


def _write_each_format(tmp_path: Path) -> dict[str, Path]:
    import datasets

    ds = datasets.Dataset.from_list(RECORDS)
    out = {"jsonl": _jsonl(tmp_path / "d.jsonl", [json.dumps(r) for r in RECORDS]),
           "json": tmp_path / "d.json", "parquet": tmp_path / "d.parquet", "dir": tmp_path / "saved"}
    out["json"].write_text(json.dumps(RECORDS))
    ds.to_parquet(str(out["parquet"]))
    ds.save_to_disk(str(out["dir"]))
    return out


def test_every_format_gives_the_same_rows(tmp_path: Path) -> None:
    for fmt, path in _write_each_format(tmp_path).items():
        rows = _load([path], tmp_path)
        assert [r.prompt for r in rows] == [r["prompt"] for r in RECORDS], fmt
        assert [r.columns for r in rows] == [{"answer": "5", "level": 1}, {"answer": "42", "level": 2}], fmt
        assert [r.where for r in rows] == [f"{path} row 1", f"{path} row 2"], fmt


def test_csv_string_prompts_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("question,answer\nHow many legs has a cat?,4\nAnd a bird?,2\n")
    rows = _load([str(path)], tmp_path, prompt_key="question")
    assert [(r.prompt, r.columns) for r in rows] == [("How many legs has a cat?", {"answer": 4}),
                                                    ("And a bird?", {"answer": 2})]


def test_several_files_in_order_with_their_sources(tmp_path: Path) -> None:
    a = _jsonl(tmp_path / "a.jsonl", ['{"prompt": "a1"}', '{"prompt": "a2"}'])
    b = _jsonl(tmp_path / "b.jsonl", ['{"prompt": "b1", "answer": "x"}'])
    rows = _load([a, b], tmp_path)
    assert [(r.prompt, r.source, r.index) for r in rows] == [("a1", str(a), 0), ("a2", str(a), 1), ("b1", str(b), 0)]
    assert common_columns(rows) == frozenset()  # `answer` is only in b.jsonl
    assert common_columns(rows[2:]) == {"answer"}


def test_messages_keep_extra_keys_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "m.jsonl", [
        '{"prompt": [{"role": "user", "content": "hi", "name": "ana"}], "answer": "1"}', "",
        '{"prompt": [{"role": "user", "content": "yo"}], "answer": "2"}'])
    rows = _load([path], tmp_path)
    assert rows[0].prompt == [{"role": "user", "content": "hi", "name": "ana"}]
    assert rows[1].prompt == [{"role": "user", "content": "yo", "name": None}]  # Arrow fills the key; chat.py drops it
    assert [r.where for r in rows] == [f"{path} row 1", f"{path} row 2"]


def test_a_column_mixing_types_names_the_line(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "m.jsonl", ['{"prompt": [{"role": "user", "content": "hi"}]}', "",
                                         '{"prompt": "plain"}'])
    with pytest.raises(ValueError, match=r"m.jsonl line 3: column 'prompt' is a string here but a list on line 1"):
        _load([path], tmp_path)


def test_in_memory_records_get_the_same_checks() -> None:
    rows = rows_from_records([{"prompt": "cp:12=", "answer": "12"}], source="digits:copy")
    assert rows == [Row(prompt="cp:12=", columns={"answer": "12"}, source="digits:copy", index=0)]
    with pytest.raises(ValueError, match="^digits:copy: the dataset has no rows$"):
        rows_from_records([], source="digits:copy")


# ---------------------------------------------------------------- bad input: one line, naming file and place


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^data file '.*nope.jsonl' does not exist$"):
        _load([tmp_path / "nope.jsonl"], tmp_path)


def test_no_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no data files given"):
        _load([], tmp_path)


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("hello\n")
    with pytest.raises(ValueError, match=r"unknown format '.txt'"):
        _load([path], tmp_path)


def test_unknown_prompt_key_lists_the_columns(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", ['{"question": "q", "answer": "1"}'])
    with pytest.raises(ValueError, match=r"d.jsonl: no column 'prompt' for the prompt \(columns: 'question', "
                                         r"'answer'\); set prompt_key$"):
        _load([path], tmp_path)


def test_malformed_jsonl_line_is_named(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", ['{"prompt": "a"}', "", '{"prompt": "b", "answer": 2', '{"prompt": "c"}'])
    with pytest.raises(ValueError, match=r"d.jsonl line 3: malformed JSON: ") as e:
        _load([path], tmp_path)
    assert "\n" not in str(e.value)


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", ['{"prompt": "a"}', '[1, 2]'])
    with pytest.raises(ValueError, match=r"d.jsonl line 2: expected a JSON object, got list"):
        _load([path], tmp_path)


def test_malformed_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[{"prompt": "a"},\n {"prompt": "b"]')
    with pytest.raises(ValueError, match=r"d.json line 2: malformed JSON"):
        _load([path], tmp_path)


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match="d.jsonl: the dataset has no rows"):
        _load([path], tmp_path)


def test_empty_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    with pytest.raises(ValueError, match="d.parquet: the dataset has no rows"):
        _load([path], tmp_path)


def test_dataset_dict_directory_asks_for_a_split(tmp_path: Path) -> None:
    import datasets

    split = datasets.Dataset.from_list(RECORDS)
    d = datasets.DatasetDict({"train": split, "test": split})
    d.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"holds several splits \(test, train\): name one, e.g. .*dd/test"):
        _load([tmp_path / "dd"], tmp_path)
    assert len(_load([tmp_path / "dd" / "train"], tmp_path)) == 2


def test_plain_directory_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    with pytest.raises(ValueError, match="not a dataset written by save_to_disk"):
        _load([tmp_path / "notes"], tmp_path)


@pytest.mark.parametrize(("line", "match"), [
    ('{"prompt": null}', "row 2: the prompt is missing"),
    ('{"prompt": ""}', "row 2: the prompt is empty"),
    ('{"prompt": 7}', "row 2: the prompt must be a string or a non-empty list of chat messages, got int"),
    ('{"prompt": [{"text": "hi"}]}', "row 2: each chat message needs 'role' and 'content'"),
])
def test_bad_prompt_values_name_the_row(tmp_path: Path, line: str, match: str) -> None:
    path = _jsonl(tmp_path / "d.jsonl", ['{"prompt": "fine"}', line])
    with pytest.raises(ValueError, match=match):
        rows_from_records([{"prompt": "fine"}, json.loads(line)], source=str(path))


def test_row_without_the_prompt_key(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", ['{"prompt": "fine"}', '{"question": "other"}'])
    with pytest.raises(ValueError, match=r"d.jsonl row 2: the prompt is missing"):
        _load([path], tmp_path)


# ---------------------------------------------------------------- cursor


def test_cursor_serves_each_row_once_per_epoch_and_reshuffles() -> None:
    c = EpochCursor(10, seed=3)
    first, second = c.take(10), c.take(10)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second  # a new permutation each epoch
    assert EpochCursor(10, seed=3).take(10) == first  # seeded
    assert EpochCursor(10, seed=4).take(10) != first


def test_cursor_without_shuffle_is_file_order_across_epochs() -> None:
    c = EpochCursor(3, seed=0, shuffle=False)
    assert c.take(2) == [0, 1]
    assert c.take(5) == [2, 0, 1, 2, 0]  # crosses two epoch boundaries
    assert c.state() == {"epoch": 2, "position": 1, "seed": 0, "num_rows": 3, "shuffle": False}


def test_take_across_an_epoch_boundary() -> None:
    c = EpochCursor(5, seed=1)
    epoch0 = EpochCursor(5, seed=1).take(5)
    epoch1 = EpochCursor(5, seed=1, epoch=1).take(5)
    assert c.take(3) == epoch0[:3]
    assert c.take(4) == epoch0[3:] + epoch1[:2]
    assert (c.epoch, c.position) == (1, 2)


@pytest.mark.parametrize("cut", [0, 1, 6, 7, 13, 14, 20])
def test_resumed_cursor_continues_with_the_next_unseen_row(cut: int) -> None:
    """Checkpoint after `cut` rows (7 rows per epoch, batches of 3 and odd takes), restore through JSON, go on:
    the served sequence equals an uninterrupted run's, so no row is repeated or skipped."""
    uninterrupted = EpochCursor(7, seed=11).take(30)
    c = EpochCursor(7, seed=11)
    served = c.take(cut)
    state = json.loads(json.dumps(c.state()))
    resumed = EpochCursor.from_state(state, num_rows=7)
    while len(served) < 30:
        served += resumed.take(min(3, 30 - len(served)))
    assert served == uninterrupted
    for epoch in range(4):  # and each epoch holds every row exactly once
        assert sorted(uninterrupted[7 * epoch:7 * epoch + 7]) == list(range(7))


def test_resume_with_a_different_dataset_size_is_an_error() -> None:
    state = EpochCursor(7, seed=0).state()
    with pytest.raises(ValueError, match="the dataset has 8 rows but the checkpoint's cursor was over 7"):
        EpochCursor.from_state(state, num_rows=8)
    with pytest.raises(ValueError, match="cursor state lacks seed"):
        EpochCursor.from_state({"epoch": 0, "position": 0, "num_rows": 7})


def test_cursor_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        EpochCursor(0, seed=0)
    with pytest.raises(ValueError, match="bad cursor position"):
        EpochCursor(3, seed=0, position=4)
    with pytest.raises(ValueError, match="n >= 0"):
        EpochCursor(3, seed=0).take(-1)


def test_doctests() -> None:
    import doctest

    import rlplat.data.chat as chat
    import rlplat.data.datasets as datasets_module

    assert doctest.testmod(datasets_module).failed == 0 and doctest.testmod(chat).failed == 0
