"""JSON / JSON Lines readers: values back, errors that name the file (and line).

    pytest tests/test_jsonfile.py -q
"""
import pytest

from unif2ace.jsonfile import read_json, read_jsonl


def test_read_jsonl_skips_blank_lines_and_names_a_bad_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 2.5}\n\n{"event": "done", "step": 1}\n')
    assert read_jsonl(p) == [{"step": 1, "loss": 2.5}, {"event": "done", "step": 1}]
    p.write_text('{"step": 1}\n{"step": 2, \n')
    with pytest.raises(KeyError, match=rf"{p}:2: not valid JSON"):
        read_jsonl(p, KeyError)


def test_read_json_names_the_file(tmp_path):
    p = tmp_path / "manifest.json"
    p.write_text("{oops")
    with pytest.raises(ValueError, match=rf"{p}: not valid JSON"):
        read_json(p)
