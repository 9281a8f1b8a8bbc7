"""The one jsonl reader: BOM, undecodable lines as file:line, the raise/skip policy and its counts."""

import json

import pytest
from vision_tokenizer.runtime.jsonl import ReadCounts, RecordError, read_records


def test_jsonl_lines_with_bom_bad_utf8_and_bad_json(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"k": 1}\n\n{"k": "\xff"}\n{"k": 3\n["ok"]\n')
    with pytest.raises(RecordError, match=r"a\.jsonl:3: not valid UTF-8 \(byte 0xff"):
        list(read_records(path))
    counts = ReadCounts()
    got = [(location.line, value) for location, value in read_records(path, "skip", counts)]
    assert got == [(1, {"k": 1}), (5, ["ok"])]  # the blank line 2 is no record
    assert counts.seen == 4 and [e.location for e in counts.skipped] == [f"{path}:3", f"{path}:4"]
    assert "not valid JSON" in counts.skipped[1].reason
    assert counts.summary("a") == "a: 4 records read, 2 used, 2 skipped"


def test_json_lists_read_alike_and_a_broken_one_is_one_error(tmp_path):
    good = tmp_path / "list.json"
    good.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"k": "é"}, {"k": 2}]).encode())
    assert [(str(loc), value) for loc, value in read_records(good)] == [
        (f"{good}[0]", {"k": "é"}),
        (f"{good}[1]", {"k": 2}),
    ]
    broken = tmp_path / "broken.json"
    broken.write_text('[{"k": 1},\n {"k": ]')
    with pytest.raises(RecordError, match=r"broken\.json:2: not valid JSON"):
        list(read_records(broken))
    counts = ReadCounts()
    assert list(read_records(broken, "skip", counts)) == [] and len(counts.skipped) == 1
    with pytest.raises(ValueError, match="policy"):
        list(read_records(good, "ignore"))
