"""Read the pickle files some data formats are shipped as, by interpreting their opcodes: plain data only.

Planetoid's raw files (``ind.citeseer.x``, ``.graph``, ...; Cora, CiteSeer and PubMed as distributed
since 2016) are Python 2 pickles. Restricting which globals an unpickler resolves is not enough:
with only numpy's own ``_reconstruct`` / ``ndarray`` / ``dtype`` a file can build an *object* array
whose raw bytes are pointers of its choosing (the first read of it is a bus error), and with
``csr_matrix`` + BUILD it can set any attribute (a fake ``_shape``, a shadowed ``tocsr``). So
``pickle`` never runs here: ``load_pickle`` walks the opcodes (``pickletools.genops``) and builds
only what such files hold, each from checked plain values:

* numpy arrays: ``_reconstruct(ndarray, (0,), b'b')`` + BUILD ``(1, shape, dtype, fortran, bytes)``,
  where ``dtype`` is ``dtype(code, False, True)`` + BUILD ``(3, '<'|'>'|'|', None, None, None, -1,
  -1, 0)`` with ``code`` a plain bool / int / uint / float (``DTYPE_CODES``): no object, field,
  subarray or flag can be declared. The array is ``np.frombuffer`` of exactly
  ``prod(shape) * itemsize`` bytes, copied, at most ``MAX_ELEMENTS`` elements;
* scipy CSR matrices: ``NEWOBJ(csr_matrix, ())`` + BUILD of a dict with only ``CSR_KEYS``; the shape,
  ``indptr`` and ``indices`` are checked, then ``csr_matrix((data, indices, indptr), shape=shape)``
  is constructed: no attribute is ever set from the file;
* ``collections.defaultdict(list)`` (Planetoid's graph), read as a plain dict;
* None, bools, ints, floats, strings, bytes (``_codecs.encode(s, 'latin1')`` and ``bytes()`` too),
  tuples, lists, dicts.

Anything else (another global, a call of anything but those constructors, BUILD on anything else,
an extra state key, a size or byte count that does not add up) raises ``RefusedPickle``, a
``DataError`` naming the file, the byte offset and what was refused: no pickle machinery runs and
no byte of the file is ever taken as a pointer or an attribute. Only the container types are
general; the caller checks that the value is the one it expects (``align.data.sources.planetoid_raw``
checks the eight files of a Planetoid folder one by one and against each other).
"""

from __future__ import annotations

import math
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from align.errors import DataError

MAX_ELEMENTS = 1 << 30  # per array, and per CSR matrix once made dense (PubMed's largest: 9.9 M)
DTYPE_CODES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})
CSR_KEYS = frozenset(
    {"data", "indices", "indptr", "_shape", "maxprint", "format"}
    | {"_has_sorted_indices", "_cs_matrix__has_sorted_indices", "_has_canonical_format"}  # recomputed
)
# (module, name) -> what it may build; Python 2 / numpy 1 names and today's
GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("scipy.sparse.csr", "csr_matrix"): "csr",
    ("scipy.sparse._csr", "csr_matrix"): "csr",
    ("collections", "defaultdict"): "defaultdict",
    ("__builtin__", "list"): "list",
    ("builtins", "list"): "list",
    ("_codecs", "encode"): "encode",  # bytes, as protocols 0-2 write them from Python 3: encode(s, 'latin1')
    ("__builtin__", "bytes"): "bytes",  # ... and b'' as bytes()
    ("builtins", "bytes"): "bytes",
}
_LITERALS = {
    "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "SHORT_BINSTRING", "BINSTRING",
    "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8",
}  # fmt: skip
_EMPTY = {"NONE": lambda: None, "NEWTRUE": lambda: True, "NEWFALSE": lambda: False, "EMPTY_TUPLE": tuple}
_EMPTY |= {"EMPTY_LIST": list, "EMPTY_DICT": dict}
_KEY_TYPES = (int, str, bytes)


class RefusedPickle(DataError):
    """A data pickle held something other than plain arrays, CSR matrices and containers."""


class _Global:
    """A global the file named: only usable as the callable of its one known construction."""

    __slots__ = ("kind", "name")

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name

    def __repr__(self) -> str:
        return f"<global {self.name}>"


class _Pending:
    """An ndarray, dtype or csr_matrix that exists once BUILD gives it a checked state."""

    __slots__ = ("kind", "code", "value")

    def __init__(self, kind: str, code: str = "") -> None:
        self.kind, self.code, self.value = kind, code, None

    def __repr__(self) -> str:
        return f"<{self.kind}>" if self.value is None else f"<{self.kind} {getattr(self.value, 'shape', '')}>"


def load_pickle(path: str | Path) -> Any:
    """The plain data a pickle file holds; ``RefusedPickle`` naming the file for anything else."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from None
    machine = _Machine(path)
    try:
        return machine.run(blob)
    except RefusedPickle:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError, MemoryError) as err:
        where = f" (byte {machine.pos})" if machine.pos >= 0 else ""
        raise RefusedPickle(f"{path}{where}: not a plain data pickle: {type(err).__name__}: {err}") from None


class _Machine:
    """The pickle virtual machine, cut down to the opcodes plain data needs (no PERSID, INST, OBJ...)."""

    def __init__(self, path: Path) -> None:
        self.path, self.pos = path, -1

    def refuse(self, what: str) -> RefusedPickle:
        return RefusedPickle(f"{self.path} (byte {self.pos}): {what}")

    def run(self, blob: bytes) -> Any:
        stack: list[Any] = []
        marks: list[int] = []
        memo: dict[int, Any] = {}

        def since_mark() -> list[Any]:
            if not marks:
                raise self.refuse("a MARK-terminated opcode without a MARK")
            start = marks.pop()
            items = stack[start:]
            del stack[start:]
            return items

        for op, arg, pos in pickletools.genops(blob):
            self.pos, name = pos, op.name
            if name in _LITERALS:
                stack.append(arg)
            elif name in _EMPTY:
                stack.append(_EMPTY[name]())
            elif name in ("PROTO", "FRAME"):
                continue
            elif name == "MARK":
                marks.append(len(stack))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = stack[-n:]
                if len(items) != n:
                    raise self.refuse(f"{name} on a stack of {len(items)}")
                del stack[-n:]
                stack.append(tuple(items))
            elif name == "TUPLE":
                stack.append(tuple(since_mark()))
            elif name == "LIST":
                stack.append(since_mark())
            elif name == "DICT":
                stack.append(self.setitems({}, since_mark()))
            elif name in ("APPEND", "APPENDS"):
                items = [stack.pop()] if name == "APPEND" else since_mark()
                if not stack or type(stack[-1]) is not list:
                    raise self.refuse(f"{name} to something that is not a list")
                stack[-1].extend(items)
            elif name in ("SETITEM", "SETITEMS"):
                items = stack[-2:] if name == "SETITEM" else since_mark()
                if name == "SETITEM":
                    del stack[-2:]
                if not stack or type(stack[-1]) is not dict:
                    raise self.refuse(f"{name} on something that is not a dict")
                self.setitems(stack[-1], items)
            elif name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise self.refuse(f"{name} of memo entry {arg}, never stored")
                stack.append(memo[arg])
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                module, attr = arg.split(" ", 1) if name == "GLOBAL" else stack[-2:]
                if name == "STACK_GLOBAL":
                    del stack[-2:]
                kind = GLOBALS.get((module, attr)) if type(module) is str and type(attr) is str else None
                if kind is None:
                    raise self.refuse(
                        f"refused to load global '{module}.{attr}' (only plain arrays, CSR matrices and "
                        "containers are allowed in this file)"
                    )
                stack.append(_Global(kind, f"{module}.{attr}"))
            elif name in ("REDUCE", "NEWOBJ"):
                args, func = stack.pop(), stack.pop()
                stack.append(self.call(func, args, name))
            elif name == "BUILD":
                state = stack.pop()
                if not stack or not isinstance(stack[-1], _Pending) or stack[-1].value is not None:
                    raise self.refuse("BUILD (setting an object's state) on something that is not a new array/csr")
                self.build(stack[-1], state)
            elif name == "STOP":
                if len(stack) != 1 or marks:
                    raise self.refuse(f"STOP with {len(stack)} values on the stack")
                return self.plain(self.done(stack.pop(), "the file's value"))
            else:
                raise self.refuse(f"opcode {name} (not used by plain data)")
        raise self.refuse("no STOP")  # genops raises first; kept for the type checker

    def setitems(self, target: dict, items: list[Any]) -> dict:
        if len(items) % 2:
            raise self.refuse("SETITEMS with an odd number of values")
        for key, value in zip(items[::2], items[1::2]):
            if type(key) not in _KEY_TYPES:
                raise self.refuse(f"a dict key of type {type(key).__name__} (only ints and strings)")
            target[key] = value
        return target

    def done(self, value: Any, what: str) -> Any:
        """``value`` as data: a built array / dtype / matrix; a bare global or unbuilt one is refused."""
        if isinstance(value, _Global):
            raise self.refuse(f"{what} is the global {value.name} itself")
        if isinstance(value, _Pending):
            if value.value is None:
                raise self.refuse(f"{what} is a {value.kind} whose state was never set")
            return value.value
        return value

    def call(self, func: Any, args: Any, op: str) -> Any:
        """The only calls a data pickle makes, each checked argument by argument."""
        if not isinstance(func, _Global) or type(args) is not tuple:
            raise self.refuse(f"{op} of something that is not an allowed global")
        kind = func.kind if op == "REDUCE" else "new " + func.kind
        if kind == "reconstruct" and len(args) == 3 and isinstance(args[0], _Global):
            if args[0].kind == "ndarray" and _is_int_tuple(args[1], (0,)) and args[2] in ("b", b"b"):
                return _Pending("ndarray")
        elif kind == "dtype" and len(args) == 3 and type(args[0]) is str:
            if args[0] not in DTYPE_CODES:
                raise self.refuse(f"dtype {args[0]!r} (only plain bool/int/uint/float: {sorted(DTYPE_CODES)})")
            if args[1] in (0, False) and args[2] in (1, True) and _plain_int(args[1]) and _plain_int(args[2]):
                return _Pending("dtype", args[0])
        elif kind == "defaultdict" and len(args) == 1 and isinstance(args[0], _Global) and args[0].kind == "list":
            return {}
        elif kind == "encode" and len(args) == 2 and type(args[0]) is str and args[1] in ("latin1", "latin-1"):
            return args[0].encode("latin1")
        elif kind == "bytes" and args == ():
            return b""
        elif kind == "new csr" and args == ():
            return _Pending("csr")
        raise self.refuse(f"{op} {func.name}{_short(args)} (not the one construction of it that data files use)")

    def build(self, target: _Pending, state: Any) -> None:
        if target.kind == "dtype":
            target.value = self.dtype(target.code, state)
        elif target.kind == "ndarray":
            target.value = self.array(state)
        else:
            target.value = self.csr(state)

    def dtype(self, code: str, state: Any) -> np.dtype:
        if not (type(state) is tuple and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|")):
            raise self.refuse(f"dtype {code!r} state {_short(state)} (only version 3 with a byte order)")
        if state[2:] != (None, None, None, -1, -1, 0) or not all(map(_plain_int, state[5:] + state[:1])):
            raise self.refuse(f"dtype {code!r} state {_short(state)}: subarray, fields, sizes or flags set")
        dtype = np.dtype(code)
        if state[1] == "|" and dtype.itemsize != 1:
            raise self.refuse(f"dtype {code!r} without a byte order")
        return dtype.newbyteorder(state[1]) if state[1] != "|" else dtype

    def array(self, state: Any) -> np.ndarray:
        if type(state) is not tuple or len(state) != 5 or state[0] != 1 or not _plain_int(state[0]):
            raise self.refuse(f"ndarray state {_short(state)} (expected (1, shape, dtype, fortran, bytes))")
        _, shape, dtype, fortran, raw = state
        dtype = self.done(dtype, "an array's dtype")
        if not isinstance(dtype, np.dtype) or fortran not in (0, 1) or not _plain_int(fortran):
            raise self.refuse(f"ndarray state {_short(state)}: no plain dtype / fortran flag")
        if type(shape) is not tuple or len(shape) > 32 or not all(_plain_int(d) and d >= 0 for d in shape):
            raise self.refuse(f"ndarray shape {_short(shape)} (not a tuple of non-negative ints)")
        if type(raw) is str:
            raw = raw.encode("latin1")  # a Python 2 str, decoded as latin1 by genops
        if type(raw) is not bytes:
            raise self.refuse(f"ndarray data of type {type(raw).__name__} (only raw bytes: no object arrays)")
        count = math.prod(shape)
        if count > MAX_ELEMENTS or any(d > MAX_ELEMENTS for d in shape):
            raise self.refuse(f"ndarray of shape {shape}: more than {MAX_ELEMENTS} elements")
        if count * dtype.itemsize != len(raw):
            need = count * dtype.itemsize
            raise self.refuse(f"ndarray of shape {shape}, dtype {dtype}: needs {need} bytes, the file has {len(raw)}")
        order = "F" if fortran else "C"
        if dtype.kind == "b":  # any non-zero byte is True; never a bool byte numpy did not write
            return np.frombuffer(raw, np.uint8).reshape(shape, order=order) != 0
        flat = np.frombuffer(raw, dtype)
        return np.array(flat.reshape(shape, order=order), dtype=dtype.newbyteorder("="), order=order)

    def csr(self, state: Any):
        import scipy.sparse

        if type(state) is not dict:
            raise self.refuse(f"csr_matrix state of type {type(state).__name__} (expected a dict)")
        extra = sorted(map(repr, set(state) - CSR_KEYS))
        if extra:
            raise self.refuse(f"csr_matrix state key(s) {', '.join(extra)} (only {sorted(CSR_KEYS)})")
        missing = sorted({"data", "indices", "indptr", "_shape"} - set(state))
        if missing:
            raise self.refuse(f"csr_matrix state without {missing}")
        flags = set(state) - {"data", "indices", "indptr", "_shape", "format"}  # maxprint, sorted flags
        if state.get("format", "csr") != "csr" or not all(_plain_int(state[k]) for k in flags):
            raise self.refuse("csr_matrix state: format is not 'csr', or a flag / maxprint is not an int")
        shape = state["_shape"]
        if type(shape) is not tuple or len(shape) != 2 or not all(_plain_int(d) and d >= 0 for d in shape):
            raise self.refuse(f"csr_matrix shape {_short(shape)} (not two non-negative ints)")
        rows, cols = shape
        if rows * cols > MAX_ELEMENTS or max(rows, cols) > MAX_ELEMENTS:
            raise self.refuse(f"csr_matrix of shape {shape}: more than {MAX_ELEMENTS} elements when dense")
        data, indices, indptr = (self.done(state[k], f"csr_matrix {k}") for k in ("data", "indices", "indptr"))
        for key, arr, kinds in (("data", data, "biuf"), ("indices", indices, "iu"), ("indptr", indptr, "iu")):
            if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype.kind not in kinds:
                raise self.refuse(f"csr_matrix {key}: not a 1-d array of kind {kinds!r}")
        if len(indptr) != rows + 1 or indptr[0] != 0 or (np.diff(indptr) < 0).any():
            raise self.refuse(f"csr_matrix of shape {shape}: indptr is not {rows + 1} non-decreasing offsets from 0")
        if not (indptr[-1] == len(indices) == len(data)):
            raise self.refuse(f"csr_matrix: indptr ends at {indptr[-1]}, {len(indices)} indices, {len(data)} values")
        if len(indices) and (indices.min() < 0 or indices.max() >= cols):
            raise self.refuse(f"csr_matrix of shape {shape}: a column index outside [0, {cols})")
        return scipy.sparse.csr_matrix((data, indices, indptr), shape=(rows, cols))

    def plain(self, value: Any) -> Any:
        """``value`` unless a container in it holds a global or an array: only bare arrays are returned."""
        seen, todo = set(), [value]
        while todo:
            item = todo.pop()
            if isinstance(item, (_Global, _Pending)):
                raise self.refuse(f"a container holding {item!r} (data files hold arrays only at the top)")
            if type(item) in (list, tuple, dict) and id(item) not in seen:
                seen.add(id(item))
                todo.extend(item.values() if type(item) is dict else item)
        return value


def _plain_int(value: Any) -> bool:
    return type(value) in (int, bool)


def _is_int_tuple(value: Any, expected: tuple[int, ...]) -> bool:
    return type(value) is tuple and all(_plain_int(v) for v in value) and value == expected


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
