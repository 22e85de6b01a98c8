"""align.index.info / `align index info DIR`: a verified folder's description; a damaged one is refused."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from align.app.cli import main
from align.index.choose import Candidate, as_record
from align.index.embedding_index import EmbeddingIndex
from align.index.info import format_info, index_info


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


def test_on_disk_folder_shows_its_lists_file_and_the_ram_part(tmp_path, capsys):
    """Lists on disk: the storage line names the mapped lists file and its size, the in-memory figure is
    the quantizer and list directory (far less than the same index in RAM), and the chooser's RAM and
    disk estimates are shown from the build record."""
    n, d = 2_000, 16
    x = np.random.default_rng(1).standard_normal((n, d)).astype(np.float32)
    ram = EmbeddingIndex(d, "IVF32,Flat", use_gpu=False)
    ram.add(x)
    ram_info = index_info(ram.save(tmp_path / "ram"))
    disk = EmbeddingIndex(d, "IVF32,Flat", use_gpu=False)
    disk.add(x)
    disk.move_lists_to_disk(tmp_path / "lists.ivfdata")
    chosen = Candidate("IVF32,Flat", 5_000, 1.5, "lists on disk", storage="ondisk", disk_bytes=140_000)
    disk.build_report = as_record(chosen, "lists on disk", {"max_memory": 10_000, "max_query_ms": None})
    folder = disk.save(tmp_path / "disk")
    info = index_info(folder)
    assert (ram_info["storage"], ram_info["lists_file"]) == ("ram", None)
    assert info["storage"] == "ondisk"
    assert info["lists_file"] == {"name": "lists.ivfdata", "bytes": (folder / "lists.ivfdata").stat().st_size}
    assert info["lists_file"]["bytes"] == n * (4 * d + 8)  # the codes and ids, compact
    assert info["memory_bytes"] * 10 < ram_info["memory_bytes"]
    assert main(["index", "info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "storage     lists on disk: lists.ivfdata 140.6 KiB, memory-mapped" in out
    assert "(coarse quantizer and list directory)" in out and "bytes in index.faiss and lists.ivfdata" in out
    assert "estimated   4.9 KiB RAM + 136.7 KiB lists on disk, 1.50 ms a query" in out
    assert "in RAM" in format_info(ram_info)


def test_older_build_records_still_display(tmp_path):
    """A build record from before lists on disk (no storage / disk_bytes in ``chosen``) shows as in RAM."""
    idx = EmbeddingIndex(16, "Flat", use_gpu=False)
    idx.add(np.random.default_rng(2).standard_normal((50, 16)).astype(np.float32))
    chosen = {"spec": "Flat", "bytes": 4_000, "query_ms": 0.01, "why": "exact"}
    idx.build_report = {"chosen": chosen, "why": "exact", "budget": {"max_memory": 10**6, "max_query_ms": None}}
    text = format_info(index_info(idx.save(tmp_path / "old")))
    assert "estimated   3.9 KiB, 0.01 ms a query" in text and "storage     in RAM" in text


def test_rescoring_parameter_shown(tmp_path):
    idx = EmbeddingIndex(16, "IVF8,PQ4,Refine(SQ8)", use_gpu=False)
    refine = faiss.downcast_index(idx.inner)
    faiss.downcast_index(refine.base_index).do_polysemous_training = False  # 5 s otherwise (test_choose._build)
    idx.add(np.random.default_rng(3).standard_normal((2_000, 16)).astype(np.float32))
    refine.k_factor = 16
    info = index_info(idx.save(tmp_path / "refine"))
    assert info["k_factor"] == 16 and "rescoring the best 16·k (IndexRefine k_factor)" in format_info(info)
