"""``align.serve.inputs``: uploaded bytes become what each modality's preprocessor reads (a temporary
file with the right extension for graph and point-cloud readers, which pick a parser by suffix)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from align.serve import SearchError, Upload
from align.serve.inputs import check_batch, readable_items


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_point_cloud_bytes_become_a_temporary_file_the_reader_opens():
    from align.modalities.pointcloud_io import read_cloud

    cloud = np.random.default_rng(0).standard_normal((50, 3)).astype(np.float32)
    ply = b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n"
    with readable_items("pointcloud", [npy_bytes(cloud), Upload(b"1 2 3\n4 5 6\n", "c.xyz"), ply, cloud], 100) as out:
        paths = [Path(p) for p in out[:3]]
        assert [p.suffix for p in paths] == [".npy", ".xyz", ".ply"] and all(p.is_file() for p in paths)
        np.testing.assert_array_equal(read_cloud(out[0], mesh_points=10).xyz, cloud.astype(np.float64))
        assert out[3] is cloud  # not bytes: passed through untouched
    assert not any(p.exists() for p in paths)  # removed once the batch is encoded


def test_graph_bytes_are_sniffed_and_unknown_bytes_ask_for_a_filename():
    graphml = b'<?xml version="1.0"?>\n<graphml xmlns="http://graphml.graphdrawing.org/xmlns"></graphml>'
    with readable_items("graph", [graphml, "CCO"], 100) as out:
        assert out[0].endswith(".graphml") and out[1] == "CCO"  # a SMILES string stays a string
    with pytest.raises(SearchError, match=r"graph item 0: cannot tell the file format of 5 bytes; send it as Upload"):
        with readable_items("graph", [b"\x00\x01abc"], 100):
            pass


def test_bytes_for_the_other_modalities():
    with readable_items("image", [b"\x89PNG..", Upload(b"\x89PNG..", "a.png"), bytearray(b"xy")], 100) as out:
        assert out == [b"\x89PNG..", {"bytes": b"\x89PNG..", "path": "a.png"}, b"xy"]  # the loaders decode bytes
    with readable_items("text", ["a", "é".encode()], 100) as out:
        assert out == ["a", "é"]
    for modality, items, message in [
        ("text", [b"\xff\xfe"], r"text item 0: bytes are not UTF-8"),
        ("text", [b"x" * 20], r"text item 0 is a string of 20 characters; the limit is 10"),
        ("tabular", [b"1,2"], r"tabular item 0: the tabular modality takes no file bytes"),
        ("audio", ["ok.wav", b""], r"audio item 1: empty upload"),
    ]:
        with pytest.raises(SearchError, match=message):
            with readable_items(modality, items, 10):
                pass


def test_check_batch():
    assert check_batch("tabular", np.zeros((3, 4)), 8, 10)[2].shape == (4,)  # an array batch is its rows
    for raw, message in [
        ("abc", r"got str; wrap one item"),
        (Upload(b"x"), r"got Upload"),
        (42, r"got int"),
        ([], r"empty batch"),
        (["a"] * 9, r"batch of 9 .* at most 8"),
        (["a", "b" * 11], r"item 1 is a string of 11 characters; the limit is 10"),
    ]:
        with pytest.raises(SearchError, match=message):
            check_batch("text", raw, 8, 10)
