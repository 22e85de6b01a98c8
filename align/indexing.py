"""``align index build`` and ``align query``: encode a dataset into a FAISS index folder, then
search it with a query of any modality the checkpoint has.

An index remembers which model made it (``model`` in its manifest: the checkpoint's weights hash
and path), so querying it with another model's embeddings fails instead of returning nonsense.
"""
from __future__ import annotations

from align.errors import AlignError

import argparse
import hashlib
from pathlib import Path
from typing import Any


class IndexBuildError(AlignError, ValueError):
    """The index cannot be built or queried as asked; the message says why."""


def model_identity(ckpt: Path) -> str:
    h = hashlib.sha256()
    with open(ckpt / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()[:16]} {ckpt.resolve()}"


def parse_data_spec(text: str):
    """``--data`` is a YAML file holding a dataset spec, or the spec inline as YAML."""
    import yaml
    from pydantic import ValidationError

    from align.config import ConfigError, DatasetSpec, _format_validation_error

    path = Path(text)
    data = yaml.safe_load(path.read_text()) if path.is_file() else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"--data: expected a dataset spec mapping (source, split, columns, ...), got {text!r}")
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, "data.")) from None


def _metadata(row: dict, i: int, spec, modality: str, names) -> dict[str, Any]:
    meta: dict[str, Any] = {"row": i}
    raw = row[spec.columns[modality]]
    if isinstance(raw, dict) and raw.get("path"):
        meta["path"] = raw["path"]
    elif isinstance(raw, str) and modality != "text":
        meta["path"] = raw
    if spec.label_column:
        label = row[spec.label_column]
        meta["label"] = names[label] if names is not None else label
    if "text" in spec.columns:
        value = row[spec.columns["text"]]
        meta["caption"] = value[0] if isinstance(value, list) else value
    return meta


def build_index(checkpoint: str | Path, spec, modality: str, index_spec: str = "Flat",
                batch_size: int = 256, progress: bool = True):
    """Encode ``spec``'s ``modality`` column with the checkpoint's model into an ``EmbeddingIndex``
    whose metadata holds each item's row, path, label and caption where the data has them."""
    import torch
    from tqdm.auto import tqdm

    from align.checkpoint import load_model, resolve_checkpoint
    from align.data import Collator, PairedDataset, class_names, load_table
    from align.index import EmbeddingIndex
    from align.zeroshot import to_device

    ckpt = resolve_checkpoint(checkpoint)
    model, cfg = load_model(ckpt)
    if modality not in model.adapters:
        raise IndexBuildError(f"checkpoint {ckpt} has no modality '{modality}' (it has {model.modalities})")
    if modality not in spec.columns:
        raise IndexBuildError(f"--data names no column for modality '{modality}' (columns: {spec.columns})")
    table = load_table(spec, "data")
    names = class_names(table, spec.label_column) if spec.label_column else None
    pre = {modality: model.adapters[modality].preprocessor()}
    ds = PairedDataset(table, {modality: spec.columns[modality]}, pre, train=False, name=f"data ({spec.source})",
                       on_error=spec.on_error)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=Collator(pre))
    index = EmbeddingIndex(cfg.model.embed_dim, index_spec, model=model_identity(ckpt), modality=modality)
    device = next(model.parameters()).device
    index.skipped = 0  # rows left out because they failed to load (on_error=skip)
    for batch in tqdm(loader, desc=f"encode {modality}", disable=not progress):
        index.skipped += int(batch["skipped"])
        if not len(batch["index"]):
            continue
        with torch.no_grad():
            emb = model.encode(modality, to_device(batch[modality], device)).float().cpu()
        rows = batch["index"].tolist()
        index.add(emb, ids=rows, metadata=[_metadata(table[i], i, spec, modality, names) for i in rows])
    return index


def _build_cli(args: argparse.Namespace) -> int:
    from align.index import check_save_target

    def check_out() -> None:
        try:
            check_save_target(Path(args.out), args.overwrite, hint="pass --overwrite to replace it")
        except FileExistsError as e:
            raise IndexBuildError(f"--out: {e}") from None

    check_out()  # before the model loads or anything is encoded: a refused --out should cost nothing
    spec = parse_data_spec(args.data)
    index = build_index(args.checkpoint, spec, args.modality, args.spec, args.batch_size)
    try:
        folder = index.save(args.out, model=index.model, modality=args.modality, overwrite=args.overwrite)
    except FileExistsError:
        check_out()  # --out was written while we encoded: the same refusal, in the CLI's words
        raise
    skipped = f"; skipped {index.skipped} rows that failed to load" if index.skipped else ""
    print(f"indexed {len(index)} {args.modality} items ({args.spec}) into {folder}{skipped}")
    return 0


QUERY_HELP = {"text": "a string", "graph": "a SMILES string or a .graphml / .gml / .gexf file"}


def query_flags() -> list[str]:
    """One ``--<modality>`` flag per modality the registry knows (installed packages' included),
    read from entry points without importing any adapter."""
    from align.modalities import ADAPTERS

    return ADAPTERS.names()


def query_index(index_dir: str | Path, modality: str, raw: Any, k: int = 5, checkpoint: str | None = None):
    """Top-k ``(score, id, metadata)`` for one raw query (a string, a file path, ...)."""
    from align.checkpoint import load_model, resolve_checkpoint
    from align.index import EmbeddingIndex
    from align.model import raw_encoder

    # the index first: a folder that is no index (no manifest.json, an edited file) is reported as that,
    # not as a missing checkpoint at the model path an absent manifest could not give
    index = EmbeddingIndex.load(index_dir)
    built_with = index.model or ""
    if not checkpoint and not built_with:
        raise IndexBuildError(f"index {index_dir} does not record the model that built it; pass --checkpoint")
    ckpt = resolve_checkpoint(checkpoint or built_with.split(" ", 1)[-1])
    identity = model_identity(ckpt)
    if built_with and built_with.split(" ")[0] != identity.split(" ")[0]:
        raise IndexBuildError(f"index {index_dir} was built with a different model ({built_with}); "
                              f"this checkpoint is {identity}")
    model, cfg = load_model(ckpt)
    if index.dim != cfg.model.embed_dim:
        raise IndexBuildError(f"index {index_dir} has dim {index.dim}, the model embeds to {cfg.model.embed_dim}")
    if modality not in model.adapters:
        raise IndexBuildError(f"checkpoint {ckpt} has no modality '{modality}' (it has {model.modalities})")
    return index.search_with_metadata(raw_encoder(model, modality)([raw]), k)[0]


def _query_cli(args: argparse.Namespace) -> int:
    flags = query_flags()
    given = [(m, getattr(args, m, None)) for m in flags if getattr(args, m, None) is not None]
    if args.modality is not None or args.query is not None:
        if args.modality is None or args.query is None:
            raise IndexBuildError("--modality and --query go together, e.g. --modality text --query 'a seven'")
        given.append((args.modality, args.query))
    if len(given) != 1:
        raise IndexBuildError("give exactly one query: --modality M --query Q, or one of "
                              + ", ".join(f"--{m}" for m in flags))
    modality, raw = given[0]
    for rank, (score, id_, meta) in enumerate(query_index(args.index, modality, raw, args.k, args.checkpoint), 1):
        extras = "  ".join(f"{k}={v}" for k, v in meta.items() if k != "row")
        print(f"{rank:>3}. score {score:.4f}  id {id_}  {extras}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("index", help="build a FAISS index of a dataset's embeddings")
    isub = p.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="encode a dataset column into an index folder")
    b.add_argument("--checkpoint", required=True)
    b.add_argument("--data", required=True, help="dataset spec: YAML file or inline YAML "
                   "(e.g. '{source: sklearn-digits, split: test, columns: {image: image}, label_column: label}')")
    b.add_argument("--modality", required=True)
    b.add_argument("--out", required=True, help="index folder (refused if it exists, unless --overwrite)")
    b.add_argument("--spec", default="Flat", help="faiss index_factory string: Flat, HNSW32, IVF256,Flat, ...")
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--overwrite", action="store_true", help="replace the index folder at --out (checked before "
                   "anything is encoded; a folder that is not an index is never replaced)")
    b.set_defaults(func=_build_cli)
    q = sub.add_parser("query", help="search an index with a text / image / ... query")
    q.add_argument("--index", required=True)
    q.add_argument("--checkpoint", help="default: the checkpoint that built the index")
    q.add_argument("-k", type=int, default=5)
    q.add_argument("--modality", help="the query's modality (any the checkpoint has), with --query")
    q.add_argument("--query", help="the raw query: a string, a file path, a SMILES ...")
    for m in query_flags():
        q.add_argument(f"--{m}", help=f"{m} query ({QUERY_HELP.get(m, 'a file path')})")
    q.set_defaults(func=_query_cli)
