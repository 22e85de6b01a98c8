"""Text adapters: HF transformers encoders (tiny BERT saved locally) with mean/CLS pooling, and
raw-text preprocessing. Nothing downloads."""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from align.errors import SampleError
from align.modalities import build_adapter

TINY_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TINY_VISION = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16}

# --------------------------------------------------------------------------------------------
# HF transformers text encoder (tiny BERT saved locally)
# --------------------------------------------------------------------------------------------

CAPTION_WORDS = "a photo of the number zero one two three four five six seven eight nine handwritten digit cat".split()


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    root = tmp_path_factory.mktemp("tiny_bert")
    vocab_dir = root / "vocab"
    vocab_dir.mkdir()
    (vocab_dir / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CAPTION_WORDS, ".", ","]) + "\n"
    )
    tok = BertTokenizer.from_pretrained(str(vocab_dir))
    ids = tok("a photo of the number seven.")["input_ids"]
    assert tok.unk_token_id not in ids, "test vocab was not picked up by the tokenizer"

    torch.manual_seed(3)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    model_dir = root / "model"
    BertModel(config).save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    return model_dir


def _hf_adapter(model_dir, pooling):
    return build_adapter("text", {"hf_model": str(model_dir), "pooling": pooling, "max_length": 32}).eval()


def _reference(model_dir, captions):
    """Independent forward pass: fresh tokenizer + model from the folder, no adapter code."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    enc = tok(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    return enc, hidden


CAPTIONS = ["a cat.", "a photo of the number seven, a handwritten digit seven.", "the digit two"]


def test_hf_text_mean_pooling(tiny_bert_dir):
    adapter = _hf_adapter(tiny_bert_dir, "mean")
    assert adapter.feature_dim == 32
    pre = adapter.preprocessor()
    batch = pre.collate([pre(c, train=False) for c in CAPTIONS])
    enc, hidden = _reference(tiny_bert_dir, CAPTIONS)
    assert torch.equal(batch["input_ids"], enc["input_ids"])
    assert torch.equal(batch["attention_mask"], enc["attention_mask"])
    assert (batch["attention_mask"] == 0).any(), "captions should need padding for this test"
    with torch.no_grad():
        out = adapter(batch)
    assert out.shape == (3, 32)
    for i in range(len(CAPTIONS)):
        n = int(enc["attention_mask"][i].sum())
        expected = hidden[i, :n].mean(0)  # real tokens are a prefix (right padding)
        torch.testing.assert_close(out[i], expected, rtol=1e-5, atol=1e-6)


def test_hf_text_cls_pooling(tiny_bert_dir):
    adapter = _hf_adapter(tiny_bert_dir, "cls")
    pre = adapter.preprocessor()
    batch = pre.collate([pre(c, train=False) for c in CAPTIONS])
    _, hidden = _reference(tiny_bert_dir, CAPTIONS)
    with torch.no_grad():
        out = adapter(batch)
    torch.testing.assert_close(out, hidden[:, 0], rtol=1e-5, atol=1e-6)
    # cls and mean pooling really are different features
    with torch.no_grad():
        mean_out = _hf_adapter(tiny_bert_dir, "mean")(batch)
    assert not torch.allclose(out, mean_out)


def test_hf_text_padding_does_not_change_mean(tiny_bert_dir):
    adapter = _hf_adapter(tiny_bert_dir, "mean")
    pre = adapter.preprocessor()
    short, long = "a cat", "a photo of the number eight, a handwritten eight. the digit eight."
    alone = pre.collate([short])
    both = pre.collate([short, long])
    assert both["input_ids"].shape[1] > alone["input_ids"].shape[1]
    with torch.no_grad():
        out_alone = adapter(alone)[0]
        out_both = adapter(both)[0]
    torch.testing.assert_close(out_both, out_alone, rtol=1e-5, atol=1e-5)


def test_hf_text_max_length_truncates(tiny_bert_dir):
    adapter = build_adapter("text", {"hf_model": str(tiny_bert_dir), "max_length": 6})
    batch = adapter.preprocessor().collate(["a photo of the number seven a photo of the number seven"])
    assert batch["input_ids"].shape == (1, 6)


# --------------------------------------------------------------------------------------------
# text preprocessing of raw samples
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cfg_text_adapter():
    return build_adapter("text", {"text_cfg": TINY_TEXT, "output_dim": 24}).eval()


def test_text_list_random_in_train_first_in_eval(cfg_text_adapter):
    pre = cfg_text_adapter.preprocessor()
    captions = ["a photo of the number one.", "a handwritten one.", "the digit one.", "one by hand."]
    random.seed(0)
    drawn = [pre(captions, train=True) for _ in range(200)]
    assert set(drawn) == set(captions)  # every caption gets drawn, nothing else
    assert {pre(captions, train=False) for _ in range(50)} == {captions[0]}
    assert pre(tuple(captions), train=False) == captions[0]
    assert pre("just one", train=True) == "just one"
    tokens = pre.collate([pre(captions, train=False), "a cat"])
    assert tokens.shape == (2, TINY_TEXT["context_length"]) and tokens.dtype == torch.long
    with torch.no_grad():
        assert cfg_text_adapter(tokens).shape == (2, 24)


@pytest.mark.parametrize("raw", [5, None, b"bytes", [], ["ok", 3], {"text": "a"}])
def test_text_non_string_is_sample_error(cfg_text_adapter, raw):
    with pytest.raises(SampleError):
        cfg_text_adapter.preprocessor()(raw, train=True)


def test_adapter_options_are_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="exactly one"):
        build_adapter("image", {})
    with pytest.raises(ValidationError, match="exactly one"):
        build_adapter("text", {"text_cfg": TINY_TEXT, "hf_model": "x"})
    with pytest.raises(ValidationError, match="vison_cfg"):
        build_adapter("image", {"vison_cfg": TINY_VISION})
    with pytest.raises(ValidationError, match="patch_szie"):
        build_adapter("image", {"vision_cfg": {**TINY_VISION, "patch_szie": 4}})
    with pytest.raises(ValidationError, match="laers"):
        build_adapter("text", {"text_cfg": {**TINY_TEXT, "laers": 4}})
