"""align.index.info / `align index info DIR`: a verified folder's description; a damaged one is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from align.app.cli import main
from align.index.embedding_index import EmbeddingIndex
from align.index.info import index_info


def _index(tmp_path, spec: str = "Flat", n: int = 300):
    rng = np.random.default_rng(0)
    idx = EmbeddingIndex(16, spec, model=f"sha256:0123456789abcdef {tmp_path / 'gone'}", modality="image")
    meta = [{"row": i, "label": ["cat", "dog"][i % 2]} for i in range(n)]
    idx.add(rng.standard_normal((n, 16)).astype(np.float32), ids=np.arange(n), metadata=meta)
    return idx.save(tmp_path / f"idx-{spec.replace(',', '_')}")


def test_info_describes_what_the_folder_holds(tmp_path):
    folder = _index(tmp_path)
    info = index_info(folder)
    assert (info["count"], info["dim"], info["spec"], info["modality"]) == (300, 16, "Flat", "image")
    assert info["metadata_fields"] == ["label", "row"] and info["format"] == 4
    assert not info["checkpoint_present"]  # the recorded model folder does not exist
    assert info["files"]["index.faiss"] == (folder / "index.faiss").stat().st_size
    assert info["index_bytes_per_vector"] >= 16 * 4  # flat float32 vectors, plus the id map
    ivf = index_info(_index(tmp_path, "IVF8,Flat"))
    assert (ivf["ivf_lists"], ivf["nprobe"], ivf["faiss_type"]) == (8, 1, "IndexIVFFlat")


def test_cli_prints_it_and_refuses_a_damaged_folder(tmp_path, capsys):
    folder = _index(tmp_path)
    assert main(["index", "info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "items" in out and "300 of dim 16" in out and "(that folder is gone)" in out and "label, row" in out
    assert main(["index", "info", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 300
    data = bytearray((folder / "metadata.arrow").read_bytes())
    data[len(data) // 2] ^= 1
    (folder / "metadata.arrow").write_bytes(bytes(data))
    assert main(["index", "info", str(folder)]) == 2
    assert "metadata.arrow" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["HNSW8"])
def test_hnsw_search_parameter_shown(tmp_path, spec):
    assert index_info(_index(tmp_path, spec))["efSearch"] is not None
