"""The data-pickle reader builds plain data only: crafted files (an object array of raw pointers, a CSR
matrix with a fake shape or a shadowed method, a huge declared size, a call of ``os.system``) are a
``DataError`` naming the file, never a crash; the real Planetoid files read exactly as before."""

from __future__ import annotations

import collections
import copyreg
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from numpy._core.multiarray import _reconstruct

from align.errors import DataError
from align.io.safe_pickle import RefusedPickle, load_pickle

REPO = Path(__file__).resolve().parents[2]
GRAPH = REPO.parent / "shared" / "data" / "graph"
CITESEER, CORA = GRAPH / "citeseer", GRAPH / "cora"
PLAIN_STATE = (3, "|", None, None, None, -1, -1, 0)
# sha256 of each array the PyG + restricted-unpickler reader made from the shared CiteSeer files
# (commit 33891df, before this reader): the opcode reader must give the same bytes
CITESEER_SHA256 = {
    "x": "cb9a425333dd8d1ae650e0eb4f3d65b14920aa6d5f0d4efa56d60f18f8d8c600",
    "edge_index": "0826c26dc48439ab46d52ca6998839846b8d67562bb25aab06b6fea1b01e020c",
    "num_nodes": "4fc3678223e9a09c722538277350acb7a8e6b87061b83277aee91f9ca860c3fa",
    "y": "a33560b649dadb27528b35f6bf2a3976cdc61d2e24ae8db5f5d503233b0ef7aa",
    "train_mask": "8efce52f9800be63f1ac0858b52958bbdde930d20ce5a0b4e5431c13a7d16eab",
    "val_mask": "b11b25e3892ac2656e35555f2ea1ddcbccba18f2f1233baffbfdaacf3a7fda63",
    "test_mask": "e5f2dd697aa940453faf3ca12682f7ddb7da9a7b011e141672be2b230889b30a",
}
needs_citeseer = pytest.mark.skipif(not (CITESEER / "raw").is_dir(), reason="shared CiteSeer data missing")


class R:
    """Pickles as exactly the reduce tuple given: how the crafted files are written."""

    def __init__(self, *reduce) -> None:
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def dtype(code: str, state=None) -> R:
    order = "|" if np.dtype(code).itemsize == 1 else "<"
    return R(np.dtype, (code, False, True), state or (3, order, *PLAIN_STATE[2:]))


def array(shape, dt, raw, version=1) -> R:
    return R(_reconstruct, (np.ndarray, (0,), b"b"), (version, shape, dt, False, raw))


class _AsCsr(R):
    """Passes pickle's ``__newobj__`` class check, so the file says NEWOBJ(csr_matrix) + BUILD(state)."""

    @property
    def __class__(self):
        return sp.csr_matrix


def csr(state, args=()) -> R:
    return _AsCsr(copyreg.__newobj__, (sp.csr_matrix, *args), state)


def csr_state(**over) -> dict:
    m = sp.csr_matrix(np.array([[0, 1.5, 0], [2.0, 0, 3.0]], dtype=np.float32))
    return {"_shape": m.shape, "data": m.data, "indices": m.indices, "indptr": m.indptr, "maxprint": 50, **over}


def write(tmp_path: Path, obj, protocol: int = 3, name: str = "ind.citeseer.graph") -> Path:
    path = tmp_path / name
    path.write_bytes(obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=protocol))
    return path


def refused(tmp_path: Path, obj, match: str, protocol: int = 3) -> None:
    path = write(tmp_path, obj, protocol)
    with pytest.raises(RefusedPickle, match=match) as info:
        load_pickle(path)
    assert str(path) in str(info.value) and isinstance(info.value, DataError)


# ------------------------------------------------------------------------------------------------
# what plain data files hold reads as pickle would read it
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_plain_values_arrays_and_csr_round_trip(tmp_path, protocol):
    values = {"a": [1, -2, 2**40], 3: (b"raw", "text", None, True, 1.5), "empty": ((), [], {})}
    assert load_pickle(write(tmp_path, values, protocol)) == values
    arrays = [
        np.arange(12, dtype=np.int32).reshape(3, 4),
        np.linspace(0, 1, 6).reshape(2, 3).astype(">f8"),  # big-endian: read as native, same values
        np.asfortranarray(np.arange(6, dtype=np.uint16).reshape(2, 3)),
        np.array([True, False, True]),
        np.zeros((0, 5), np.float32),
        np.array(7, dtype=np.int64),
    ]
    for a in arrays:
        got = load_pickle(write(tmp_path, a, protocol))
        assert got.shape == a.shape and got.dtype == a.dtype.newbyteorder("=") and np.array_equal(got, a)
        assert got.flags.writeable and got.flags.owndata  # a copy, not a view of the file's bytes
    m = sp.random(7, 5, density=0.4, format="csr", dtype=np.float32, random_state=0)
    got = load_pickle(write(tmp_path, m, protocol))
    assert type(got) is sp.csr_matrix and got.shape == (7, 5) and np.array_equal(got.toarray(), m.toarray())
    graph = collections.defaultdict(list, {0: [1, 2], 5: [0]})
    got = load_pickle(write(tmp_path, graph, protocol))
    assert type(got) is dict and got == {0: [1, 2], 5: [0]}


@needs_citeseer
def test_real_citeseer_pickles_read_as_pickle_reads_them():
    for part in ("x", "tx", "allx", "y", "ty", "ally", "graph"):
        path = CITESEER / "raw" / f"ind.citeseer.{part}"
        ours = load_pickle(path)
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the scipy.sparse.csr name
            theirs = pickle.load(f, encoding="latin1")  # the shared, trusted files only
        if part == "graph":
            assert type(ours) is dict and list(ours.items()) == list(theirs.items())
        elif sp.issparse(theirs):
            assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
            assert np.array_equal(ours.toarray(), theirs.toarray())
        else:
            assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


@needs_citeseer
def test_citeseer_store_arrays_are_bit_identical_to_the_old_reader():
    from align.data.sources.planetoid_raw import read_planetoid

    arrays = read_planetoid(CITESEER / "raw", "citeseer")
    assert {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in arrays.items()} == (
        CITESEER_SHA256
    )
    assert arrays["x"].shape == (3327, 3703) and arrays["edge_index"].shape == (2, 9104)


@pytest.mark.skipif(not (CORA / "raw").is_dir(), reason="shared Cora data missing")
def test_cora_counts():
    from align.data.sources.planetoid_raw import read_planetoid

    arrays = read_planetoid(CORA / "raw", "cora")
    assert int(arrays["num_nodes"]) == 2708 and arrays["edge_index"].shape == (2, 10556)
    assert arrays["x"].shape == (2708, 1433) and (arrays["y"] >= 0).all()


# ------------------------------------------------------------------------------------------------
# crafted files
# ------------------------------------------------------------------------------------------------

POINTERS = b"\x41" * 16  # two "object pointers" 0x4141414141414141: a bus error once dereferenced


@pytest.mark.parametrize(
    "obj, match",
    [
        (array((2,), dtype("O"), POINTERS), r"dtype 'O' \(only plain"),
        (array((2,), dtype("i8", (3, "|", None, None, None, -1, -1, 63)), POINTERS), "flags set"),
        (array((2,), dtype("i8", (3, "<", None, None, None, 8, 1, 0)), POINTERS), "flags set"),
        (array((2,), dtype("V8", (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 63)), POINTERS), "'V8'"),
        (array((2,), dtype("i8", (3, "<", (np.dtype("i8"), (1,)), None, None, -1, -1, 0)), POINTERS), "flags set"),
        (array((2,), dtype("f8", (4, "<", None, None, None, -1, -1, 0, {"m": 1})), POINTERS), "only version 3"),
        (array((2,), dtype("i8"), [1, 2]), "ndarray data of type list"),  # how object arrays pickle
        (R(np.ndarray, ((2,), np.dtype("i8"))), "REDUCE numpy.ndarray"),
        (R(_reconstruct, (np.ndarray, (2,), b"b"), (1, (2,), dtype("i8"), False, POINTERS)), "REDUCE numpy"),
    ],
)
def test_object_dtypes_and_other_constructions_are_refused(tmp_path, obj, match):
    refused(tmp_path, obj, match)


def test_an_object_array_of_raw_pointers_does_not_crash_the_process(tmp_path):
    """The attack that was a bus error: loading it in a fresh interpreter exits 1 with the message."""
    path = write(tmp_path, array((2,), dtype("O"), POINTERS), protocol=2)  # latin1 str payload, as Python 2
    script = (
        "import sys\nfrom align.errors import DataError\nfrom align.io.safe_pickle import load_pickle\n"
        "try:\n    print(repr(load_pickle(sys.argv[1])))\n"
        "except DataError as err:\n    print(err, file=sys.stderr)\n    sys.exit(1)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)  # not -7 / -11 (135 / 139 in a shell)
    assert str(path) in proc.stderr and "dtype 'O'" in proc.stderr


@pytest.mark.parametrize(
    "over, match",
    [
        ({"_shape": (10, 3)}, "indptr is not 11 non-decreasing offsets"),  # a fake shape
        ({"_shape": (2, 2)}, r"a column index outside \[0, 2\)"),
        ({"_shape": (2, -3)}, "not two non-negative ints"),
        ({"_shape": (2, 3, 1)}, "not two non-negative ints"),
        ({"_shape": (2, 10**12)}, "more than 1073741824 elements when dense"),
        ({"indptr": np.array([0, 1, 9], np.int32)}, "indptr ends at 9"),
        ({"indptr": np.array([0, 2, 1], np.int32)}, "non-decreasing"),
        ({"indices": np.array([0.5, 1, 2])}, "csr_matrix indices: not a 1-d array"),
        ({"tocsr": "shadowed"}, "state key\\(s\\) 'tocsr'"),  # a shadowed method
        ({"__class__": "csc_matrix"}, "state key\\(s\\) '__class__'"),
        ({"__class__": sp.coo_matrix}, "global 'scipy.sparse._coo.coo_matrix'"),
        ({"__dict__": {}}, "state key\\(s\\) '__dict__'"),
        ({"format": "csc"}, "format is not 'csr'"),
        ({"maxprint": "50"}, "maxprint is not an int"),
    ],
)
def test_csr_state_is_checked_and_never_set_as_attributes(tmp_path, over, match):
    refused(tmp_path, csr(csr_state(**over)), match)


def test_csr_needs_its_arrays_and_a_dict_state(tmp_path):
    state = csr_state()
    del state["indptr"]
    refused(tmp_path, csr(state), r"without \['indptr'\]")
    refused(tmp_path, csr((1, 2)), "state of type tuple")
    refused(tmp_path, csr({}, (5,)), r"NEWOBJ scipy.sparse._csr.csr_matrix\(5,\)")


@pytest.mark.parametrize(
    "shape, raw, match",
    [
        ((10**12,), b"\x00" * 8, "more than 1073741824 elements"),
        ((10**6, 10**6), b"\x00" * 8, "more than 1073741824 elements"),
        ((3,), b"\x00" * 8, "needs 24 bytes, the file has 8"),
        ((-1,), b"", "not a tuple of non-negative ints"),
        ([2], b"\x00" * 16, "not a tuple of non-negative ints"),
        ((2.0,), b"\x00" * 16, "not a tuple of non-negative ints"),
    ],
)
def test_declared_sizes_must_match_the_bytes(tmp_path, shape, raw, match):
    refused(tmp_path, array(shape, dtype("i8", (3, "<", None, None, None, -1, -1, 0)), raw), match)


def test_globals_outside_the_data_set_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "code-ran"
    refused(tmp_path, R(os.system, (f"touch {marker}",)), r"refused to load global '(os|posix|nt)\.system'", 2)
    refused(tmp_path, R(exec, (f"open({str(marker)!r}, 'w')",)), r"refused to load global '__builtin__\.exec'", 2)
    refused(tmp_path, R(eval, ("1",)), r"refused to load global 'builtins\.eval'", 4)
    assert not marker.exists()


def test_known_globals_used_any_other_way_are_refused(tmp_path):
    refused(tmp_path, R(collections.defaultdict, (dict,)), "refused to load global '__builtin__.dict'", 2)
    refused(tmp_path, R(collections.defaultdict, (list, {1: 2})), r"REDUCE collections.defaultdict")
    refused(tmp_path, R(list, ([1, 2],)), "REDUCE builtins.list")
    refused(tmp_path, R(np.dtype, ("i8", True, True), PLAIN_STATE), "REDUCE numpy.dtype")
    refused(tmp_path, [np.dtype, 1], "a container holding <global numpy.dtype>")
    refused(tmp_path, {"x": np.arange(3)}, "a container holding <ndarray")
    # BUILD sets state only on a new array / csr: never on a dict, a list or a built array
    refused(tmp_path, R(collections.defaultdict, (list,), {"default_factory": 1}), "BUILD")
    refused(tmp_path, R(copyreg._reconstructor, (list, list, None)), "global 'copy_reg._reconstructor'", 2)


def test_malformed_streams_are_data_errors(tmp_path):
    assert load_pickle(write(tmp_path, b"\x80\x02(K\x01K\x02l.")) == [1, 2]  # hand-assembled: MARK ... LIST
    good = pickle.dumps(np.arange(4), protocol=2)
    for blob, match in [
        (good[:-30], "not a plain data pickle"),
        (b"not a pickle", "not a plain data pickle"),
        (b"\x80\x02h\x05.", "BINGET of memo entry 5, never stored"),
        (b"\x80\x02K\x01\x86.", "TUPLE2 on a stack of 1"),
        (b"\x80\x02K\x01K\x02.", "STOP with 2 values"),
        (b"\x80\x02K\x01e.", "APPENDS without a MARK|MARK-terminated opcode without a MARK"),
        (b"\x80\x02cos\nsystem\nq\x00.", "refused to load global 'os.system'"),
        (b"\x80\x02(I1\nl.", "opcode INT"),
        (b"\x80\x02}K\x01]\x86b.", "BUILD"),
        (b"\x80\x02}]K\x01s.", "a dict key of type list"),
    ]:
        with pytest.raises(RefusedPickle, match=match):
            load_pickle(write(tmp_path, blob))


# ------------------------------------------------------------------------------------------------
# the Planetoid folder, and the user's view of a crafted file
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def citeseer_copy(tmp_path) -> Path:
    if not (CITESEER / "raw").is_dir():
        pytest.skip("shared CiteSeer data missing")
    shutil.copytree(CITESEER / "raw", tmp_path / "citeseer" / "raw")
    return tmp_path / "citeseer"


@pytest.mark.parametrize(
    "part, obj, match",
    [
        ("graph", {0: [1], 3327: [0]}, r"ind\.citeseer\.graph: node 3327 or one of its neighbours is not below 3327"),
        ("graph", {0: [-1]}, "neighbours are not all node numbers"),
        ("graph", {0: (1,)}, "not a node number with a list"),
        ("graph", np.zeros((2, 2)), "not a dict of node"),
        ("ty", np.zeros((1000, 5), np.int32), "label widths differ"),
        ("tx", sp.csr_matrix((999, 3703), dtype=np.float32), "row counts do not match"),
        ("y", [1, 2], r"ind\.citeseer\.y: holds list, not a 2-d array"),
        ("test.index", b"2312\n-5\n", r"ind\.citeseer\.test\.index line 2: '-5' is not one node number"),
        ("test.index", b"2312\n" * 1000, "a node number appears twice"),
        ("test.index", b"".join(b"%d\n" % i for i in range(9000, 10000)), "node numbers up to 9999"),
    ],
)
def test_planetoid_parts_are_checked_against_each_other(citeseer_copy, part, obj, match):
    from align.data.sources.planetoid_raw import read_planetoid

    path = citeseer_copy / "raw" / f"ind.citeseer.{part}"
    path.write_bytes(obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=2))
    with pytest.raises(DataError, match=f"cannot read planetoid 'citeseer' from .*{match}"):
        read_planetoid(citeseer_copy / "raw", "citeseer")


def test_align_data_names_the_crafted_graph_file_in_one_line(citeseer_copy, tmp_path, capsys):
    import yaml

    from align.app.cli import main

    graph = citeseer_copy / "raw" / "ind.citeseer.graph"
    graph.write_bytes(pickle.dumps(array((2,), dtype("O"), POINTERS), protocol=2))
    cfg = yaml.safe_load((REPO / "configs" / "citeseer-node-text.yaml").read_text())
    cfg["output_dir"] = str(tmp_path / "run")
    for s in (cfg["data"]["train"], cfg["eval"]["data"]):
        s.update(data_dir=str(citeseer_copy), load_kwargs={**s["load_kwargs"], "cache_dir": str(tmp_path / "cache")})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["data", str(tmp_path / "c.yaml")]) == 2  # a user error (AlignError): one line, no traceback
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("align: error: ") and f"{graph} (byte " in err and "dtype 'O'" in err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npy"))
