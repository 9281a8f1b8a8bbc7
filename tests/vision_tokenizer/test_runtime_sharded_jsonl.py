"""The sharded resumable jsonl writer: torn lines, resume on another world size, merge order."""

import json

import pytest
from vision_tokenizer.runtime.sharded_jsonl import ShardedJsonlWriter, read_complete_rows


def _writer(folder, rank, world, resume=True):
    return ShardedJsonlWriter(folder, "out", rank=rank, world_size=world, key="id", resume=resume)


def test_a_torn_last_line_is_ignored_and_truncated_on_resume(tmp_path):
    writer = _writer(tmp_path, 0, 1)
    writer.append([{"id": 3, "v": "é"}, {"id": 1}])
    with open(writer.part, "ab") as handle:
        handle.write(b'{"id": 2, "v"')  # a kill in the middle of the next write
    assert _writer(tmp_path, 1, 2).done_keys() == {1, 3}  # other ranks read past the torn line
    resumed = _writer(tmp_path, 0, 1)
    assert writer.part.read_bytes().endswith(b"\n")  # the owner cut it off
    resumed.append([{"id": 2}])
    assert [row["id"] for row in read_complete_rows(writer.part)[0]] == [3, 1, 2]


def test_resume_with_another_world_size_sees_every_shard_and_merges_in_key_order(tmp_path):
    for rank in range(3):
        _writer(tmp_path, rank, 3).append([{"id": i} for i in range(10) if i % 3 == rank and i < 7])
    two = [_writer(tmp_path, rank, 2) for rank in range(2)]
    done = two[0].done_keys()
    assert done == set(range(7))
    todo = [i for i in range(10) if i not in done]
    for rank, writer in enumerate(two):
        writer.append([{"id": i, "late": True} for i in todo[rank::2]])
    assert not two[0].merge(expected=range(11))  # id 10 missing: nothing written
    assert not two[0].merged_path.exists()
    assert two[0].merge(expected=range(10), remove_parts=True)
    rows = [json.loads(line) for line in two[0].merged_path.read_text().splitlines()]
    assert [row["id"] for row in rows] == list(range(10))
    assert [row.get("late", False) for row in rows] == [False] * 7 + [True] * 3
    assert two[0].parts() == []


def test_a_fresh_start_drops_earlier_parts(tmp_path):
    _writer(tmp_path, 0, 2).append([{"id": 0}])
    _writer(tmp_path, 1, 2).append([{"id": 1}])
    assert _writer(tmp_path, 0, 1, resume=False).done_keys() == set()


def test_a_damaged_complete_line_is_reported_with_its_location(tmp_path):
    writer = _writer(tmp_path, 0, 1)
    writer.part.write_bytes(b'{"id": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"out\.rank0of1\.jsonl:2"):
        writer.done_keys()
