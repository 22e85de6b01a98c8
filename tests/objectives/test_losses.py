"""align.objectives.losses against open_clip's reference losses (float64), plus the model's temperature,
bias and score API, and the loss registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip import loss as oc_loss

from align.model.align_model import AlignModel, contrastive_loss
from align.objectives import factory, losses
from align.registry import LOSSES
from tests.support.losses import pair_inputs, value_and_grads
from tests.support.tiny import TINY_MODALITIES as TINY

RTOL = 1e-6
ATOL = 1e-12  # float64: only matters where both sides are (numerically) zero

pytestmark = pytest.mark.usefixtures("one_thread")


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


def _check_parity(ours, reference, batch, dim, seed, bias):
    a, b, log_scale, logit_bias = pair_inputs(batch, dim, seed, bias)
    v_ours, g_ours = value_and_grads(ours, a, b, log_scale, logit_bias)
    v_ref, g_ref = value_and_grads(reference, a, b, log_scale, logit_bias)
    assert v_ours.dtype == torch.float64
    assert torch.isfinite(v_ref)
    _close(v_ours, v_ref, "loss value")
    names = ["d/d a", "d/d b", "d/d log(logit_scale)", "d/d logit_bias"]
    for name, go, gr in zip(names, g_ours, g_ref):
        _close(go, gr, name)
    return v_ref, g_ref


SHAPES = [(1, 16), (7, 16), (7, 64), (32, 16), (32, 64)]


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("batch,dim", SHAPES)
def test_clip_loss_matches_open_clip(batch, dim, bias):
    seed = 1000 * batch + dim + int(bias)
    ref = oc_loss.ClipLoss(local_loss=False, gather_with_grad=True, rank=0, world_size=1)
    for local in (True, False):  # local_loss must not matter on one process
        v_ref, g_ref = _check_parity(
            losses.ClipLoss(local_loss=local, rank=0, world_size=1), ref, batch, dim, seed, bias
        )
    if batch > 1:  # with one sample InfoNCE is identically 0; otherwise the check must have teeth
        assert v_ref > 0
        assert all(g.abs().max() > 0 for g in g_ref)


@pytest.mark.parametrize("batch,dim", SHAPES)
def test_siglip_loss_matches_open_clip(batch, dim):
    seed = 7 + 1000 * batch + dim
    v_ref, g_ref = _check_parity(
        losses.SigLipLoss(rank=0, world_size=1), oc_loss.SigLipLoss(rank=0, world_size=1), batch, dim, seed, bias=True
    )
    assert v_ref > 0
    assert all(g.abs().max() > 0 for g in g_ref)


def test_losses_default_to_single_process_without_dist():
    """With no rank/world given and no process group, the losses behave as world_size 1."""
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    a, b, log_scale, bias = pair_inputs(9, 16, seed=3, bias=True)
    scale = log_scale.exp()
    _close(losses.ClipLoss()(a, b, scale), oc_loss.ClipLoss()(a, b, scale), "clip value")
    _close(losses.SigLipLoss()(a, b, scale, bias), oc_loss.SigLipLoss()(a, b, scale, bias), "siglip value")


# --- the model: temperature / bias init, clamping, score kinds ------------------------------


@pytest.fixture(scope="module")
def clip_model(tiny_model_config):
    torch.manual_seed(0)
    return AlignModel(tiny_model_config("clip"))


@pytest.fixture(scope="module")
def siglip_model(tiny_model_config):
    torch.manual_seed(0)
    return AlignModel(tiny_model_config("siglip"))


def test_logit_scale_and_bias_init(clip_model, siglip_model):
    assert clip_model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    assert clip_model.logit_scale.requires_grad
    assert clip_model.logit_bias is None
    assert siglip_model.logit_scale.item() == pytest.approx(math.log(10.0), rel=1e-6)
    assert siglip_model.logit_bias is not None and siglip_model.logit_bias.requires_grad
    assert siglip_model.logit_bias.item() == pytest.approx(-10.0, rel=1e-6)
    names = {n for n, _ in siglip_model.named_parameters()}
    assert {"logit_scale", "logit_bias"} <= names
    assert "logit_bias" not in {n for n, _ in clip_model.named_parameters()}


def test_logit_scale_overrides(tiny_model_config):
    torch.manual_seed(0)
    m = AlignModel(tiny_model_config("clip", init_logit_scale=1.25, init_logit_bias=-2.5, learn_logit_scale=False))
    assert m.logit_scale.item() == pytest.approx(1.25)
    assert not m.logit_scale.requires_grad
    assert m.logit_bias.item() == pytest.approx(-2.5)


def test_clamp_logit_scale(tiny_model_config):
    torch.manual_seed(0)
    m = AlignModel(tiny_model_config("siglip"))
    bias_before = m.logit_bias.item()
    for value, expected in [
        (10.0, math.log(100.0)),
        (-3.0, 0.0),
        (1.5, 1.5),
        (math.log(100.0) + 1e-3, math.log(100.0)),
        (0.0, 0.0),
    ]:
        with torch.no_grad():
            m.logit_scale.fill_(value)
        m.clamp_logit_scale_()
        assert m.logit_scale.item() == pytest.approx(expected, abs=1e-6), value
        assert m.logit_scale.requires_grad  # clamped in place, still the same learnable parameter
    assert m.logit_bias.item() == bias_before


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_score_kinds(loss, clip_model, siglip_model):
    model = clip_model if loss == "clip" else siglip_model
    a, b = _unit(5, 16, seed=1), _unit(9, 16, seed=2)
    with torch.no_grad():
        model.logit_scale.fill_(1.7)  # a non-default temperature, so exp() is really exercised
        cos = model.score(a, b, "cosine")
        assert cos.shape == (5, 9)
        torch.testing.assert_close(cos, a @ b.T)
        torch.testing.assert_close(model.score(a, b), cos)  # cosine is the default
        assert cos.abs().max() <= 1 + 1e-6
        expected = math.exp(1.7) * cos
        if loss == "siglip":
            expected = expected + model.logit_bias.item()
        logits = model.score(a, b, "logits")
        torch.testing.assert_close(logits, expected)
        prob = model.score(a, b, "probability")
    assert prob.shape == (5, 9)
    if loss == "clip":
        torch.testing.assert_close(prob.sum(dim=1), torch.ones(5))
        torch.testing.assert_close(prob, torch.softmax(expected, dim=1))
    else:
        assert ((prob > 0) & (prob < 1)).all()
        torch.testing.assert_close(prob, torch.sigmoid(expected))
        assert not torch.allclose(prob.sum(dim=1), torch.ones(5))  # independent pairs, not a softmax
    with pytest.raises(ValueError, match="unknown score kind"):
        model.score(a, b, "similarity")


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_contrastive_loss_uses_model_temperature(loss, clip_model, siglip_model):
    """contrastive_loss hands exp(logit_scale) and the bias to the loss, like open_clip's training."""
    model = clip_model if loss == "clip" else siglip_model
    emb = {"image": _unit(6, 16, seed=4), "text": _unit(6, 16, seed=5)}
    with torch.no_grad():
        model.logit_scale.fill_(2.1)
        got = contrastive_loss(model, emb, [("image", "text")], factory.build_loss(loss))
    ref_fn = oc_loss.ClipLoss() if loss == "clip" else oc_loss.SigLipLoss()
    ref = ref_fn(
        emb["image"],
        emb["text"],
        torch.tensor(math.exp(2.1)),
        None if model.logit_bias is None else model.logit_bias.detach(),
    )
    torch.testing.assert_close(got, ref)


# --- registry ------------------------------------------------------------------------------


def test_build_loss_registry():
    known = LOSSES.names()
    assert {"clip", "siglip"} <= set(known)
    clip = factory.build_loss("clip", local_loss=False, rank=1, world_size=4)
    assert isinstance(clip, losses.ClipLoss) and clip.local_loss is False
    assert clip.dist() == (1, 4)
    # the trainer passes local_loss to every loss; SigLIP has no such option and must accept it
    sig = factory.build_loss("siglip", local_loss=True, rank=2, world_size=4)
    assert isinstance(sig, losses.SigLipLoss)
    assert sig.dist() == (2, 4)
    with pytest.raises(KeyError) as err:
        factory.build_loss("infonce-typo", local_loss=True)
    msg = str(err.value)
    assert "infonce-typo" in msg
    for name in known:
        assert name in msg


def test_loss_classes_carry_what_align_asks(tiny_model_config):
    """What config validation, the task and the model ask a loss by name lives on its class; a model
    starts from its loss's temperature and bias (CLIP ln(1/0.07), SigLIP ln 10 and -10) and turns
    logits into probabilities its way."""
    pairwise = {"clip", "siglip", "multi_positive", "dcl", "hcl", "mochi"}
    assert set(LOSSES.names()) == pairwise | {"symile", "gram"}
    for name in LOSSES.names():
        cls = LOSSES.get(name)
        assert issubclass(cls, losses.Loss), name
        assert cls.multiway == (name not in pairwise), name
        assert cls.needs_labels == (name == "multi_positive"), name
        siglip = name == "siglip"
        assert cls.init_logit_scale == (math.log(10.0) if siglip else math.log(1 / 0.07)), name
        assert cls.init_logit_bias == (-10.0 if siglip else None), name
        assert cls.probability == ("sigmoid" if siglip else "softmax"), name
    torch.manual_seed(0)
    dcl = AlignModel(tiny_model_config("dcl"))
    assert dcl.logit_scale.item() == torch.tensor(math.log(1 / 0.07)).item() and dcl.logit_bias is None
    sig = AlignModel(tiny_model_config("siglip"))
    assert sig.logit_scale.item() == torch.tensor(math.log(10.0)).item() and sig.logit_bias.item() == -10.0


def test_loss_names_are_known_before_their_modules_are_imported():
    """The entry points name every loss; asking for one imports its module (no side-effect imports)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from align.registry import LOSSES\n"
        "assert 'dcl' in LOSSES.names() and 'symile' in LOSSES.names()\n"
        "assert not any(m.startswith('align.objectives') for m in sys.modules), sorted(sys.modules)\n"
        "assert LOSSES.get('dcl').__module__ == 'align.objectives.variants'\n"
        "assert 'align.objectives.multiway' not in sys.modules\n"
        "assert LOSSES.get('gram').__module__ == 'align.objectives.multiway'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def _loss_config(model: dict | None = None, train: dict | None = None):
    from align.config.schema import config_from_dict

    return config_from_dict(
        {
            "model": {"embed_dim": 16, "modalities": dict(TINY), **(model or {})},
            "data": {
                "train": {
                    "source": "sklearn-digits",
                    "columns": {"image": "image", "text": "caption"},
                    "label_column": "label",
                }
            },
            "train": dict(train or {}),
        },
        validate_adapters=False,
    )


@pytest.mark.parametrize(
    "model, train, message",
    [
        (
            {"loss": "clipp"},
            {},
            "config key 'model.loss': unknown loss 'clipp'; pairwise losses: "
            "clip, dcl, hcl, mochi, multi_positive, siglip",
        ),
        ({"loss": "symile"}, {}, "config key 'model.loss': loss 'symile' scores three or more modalities at once"),
        (
            {},
            {"pairs": [["image", "text"], {"modalities": ["text", "image"], "loss": "gram"}]},
            "config key 'train.pairs[1].loss': loss 'gram' scores three or more modalities at once",
        ),
        (
            {},
            {"pairs": [{"modalities": ["image", "text"], "loss": "hlc"}]},
            "config key 'train.pairs[0].loss': unknown loss 'hlc'; pairwise losses: clip, dcl",
        ),
        (
            {},
            {"pairs": [], "multiway": {"loss": "clip", "modalities": ["image", "text", "image2"]}},
            "config key 'train.multiway.loss': loss 'clip' scores a pair",
        ),
        (
            {},
            {"pairs": [], "multiway": {"loss": "symle", "modalities": ["image", "text", "image2"]}},
            "config key 'train.multiway.loss': unknown loss 'symle'; multiway losses: gram, symile",
        ),
    ],
)
def test_a_bad_loss_name_names_its_key_and_the_real_losses(model, train, message):
    from align.errors import ConfigError

    if "multiway" in train:  # a third modality for the multiway term
        model = {**model, "modalities": {**TINY, "image2": TINY["image"]}}
    with pytest.raises(ConfigError) as err:
        _loss_config(model, train)
    assert message in str(err.value)


def test_validation_asks_the_class_for_labels():
    """``multi_positive``'s class needs labels: without a label column its config fails naming the key."""
    from align.config.objectives import needs_labels
    from align.errors import ConfigError

    assert needs_labels(_loss_config({"loss": "multi_positive"})) and not needs_labels(_loss_config())
    from align.config.schema import config_from_dict

    with pytest.raises(ConfigError, match=r"'model.loss': loss 'multi_positive' .* needs data.train.label_column"):
        config_from_dict(
            {
                "model": {"embed_dim": 16, "modalities": dict(TINY), "loss": "multi_positive"},
                "data": {"train": {"source": "sklearn-digits", "columns": {"image": "image", "text": "caption"}}},
            },
            validate_adapters=False,
        )
