"""The architectures (smri.networks): output shapes, the SE gates, parameter counts, shape
errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smri.errors import ConfigError
from smri.networks import (
    CNN1,
    CNN2,
    CNN3,
    MODEL_NAMES,
    ConvBlock,
    ModelConfig,
    SEBlock,
    build_model,
    count_parameters,
    pad_first_conv,
)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(("b", "m", "shape"), [(2, 4, (16, 32, 32)), (1, 3, (32, 16, 48))])
def test_cnn_lstm_gives_one_logit_per_patient(name, b, m, shape):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, volume_shape=shape, width=0.25)).eval()
    out = model(torch.randn(b, m, *shape))
    assert out.shape == (b,)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("cls", "features"), [(CNN1, 256), (CNN2, 128), (CNN3, 128)])
def test_cnn_embedding_sizes(cls, features):
    cnn = cls((16, 32, 32)).eval()
    assert cnn(torch.randn(3, 1, 16, 32, 32)).shape == (3, features)
    assert cnn.out_features == features


def test_width_scales_channels():
    cnn = CNN2((16, 16, 16), width=0.5)
    assert [b.conv.out_channels for b in cnn.backbone.blocks] == [8, 16, 32, 64]
    assert cnn.out_features == 64


def test_conv_block_halves_every_dimension():
    block = ConvBlock(1, 16)
    assert block(torch.randn(2, 1, 8, 10, 12)).shape == (2, 16, 4, 5, 6)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_padding_the_first_conv_changes_neither_function_nor_gradients(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, volume_shape=(16, 32, 32), width=0.25)).eval()
    x = torch.rand(2, 4, 16, 32, 32)
    keys = list(model.state_dict())

    def run():
        out = model(x)
        return out.detach(), torch.autograd.grad(out.sum(), list(model.parameters()))

    plain, plain_grads = run()
    pad_first_conv(model, 8)
    assert [m.run_channels for m in model.modules() if hasattr(m, "run_channels")][:2] == [8, 0]
    padded, padded_grads = run()
    torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(padded_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert list(model.state_dict()) == keys  # same checkpoint
    with torch.autocast("cpu", dtype=torch.bfloat16):  # pads in the compute dtype
        torch.testing.assert_close(model(x).float(), plain, rtol=0.05, atol=0.05)
    pad_first_conv(model, 0)
    torch.testing.assert_close(model(x).detach(), plain)


def test_se_block_scales_channels_by_gates_in_unit_interval():
    torch.manual_seed(0)
    se = SEBlock(16, reduction=8)
    assert se.fc1.out_features == 4  # 16 // 8 = 2, raised to the minimum of 4 hidden units
    x = torch.randn(3, 16, 4, 4, 4) * 10
    gates = se.gates(x)
    assert gates.shape == (3, 16)
    assert ((gates > 0) & (gates < 1)).all()
    torch.testing.assert_close(se(x), x * gates[:, :, None, None, None])


def test_se_hidden_units_follow_reduction():
    assert SEBlock(128, reduction=8).fc1.out_features == 16


def test_cnn3_has_se_after_each_relu():
    cnn = CNN3((16, 16, 16))
    assert all(isinstance(b.se, SEBlock) for b in cnn.backbone.blocks)
    assert [b.se.fc1.out_features for b in cnn.backbone.blocks] == [4, 4, 8, 16]


def test_parameter_counts_at_brats_geometry():
    counts = {n: count_parameters(build_model(ModelConfig(name=n))) for n in MODEL_NAMES}
    # conv blocks 291,456; CNN1 FC 128*2*15*15*256+256 and its BatchNorm 2*256;
    # LSTM 4*128*(F+128)+8*128; head 129
    conv = 291_456
    fc = 57_600 * 256 + 256 + 2 * 256
    assert counts["cnn1"] == conv + fc + 4 * 128 * (256 + 128) + 1024 + 129
    assert counts["cnn2"] == conv + 4 * 128 * (128 + 128) + 1024 + 129
    assert counts["cnn3"] == counts["cnn2"] + 5_776
    assert counts == {"cnn1": 15_235_585, "cnn2": 423_681, "cnn3": 429_457}


def test_cnn1_fc_follows_volume_shape():
    small = CNN1((16, 32, 32))
    assert small.head[1].in_features == 128 * 1 * 2 * 2


def test_cnn1_fc_units_stay_alive_under_adam():
    """The FC layer is normalised before its ReLU: Adam's first steps, which move every weight
    of a unit by about lr in one direction (its inputs are all >= 0), cannot push a unit
    below zero for every volume, as they did to 84 % of the units without the BatchNorm."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="cnn1", volume_shape=(16, 32, 32), width=0.25, dropout=0))
    relu = next(m for m in model.cnn.head if isinstance(m, torch.nn.ReLU))
    fired = []
    relu.register_forward_hook(lambda _m, _i, out: fired.append((out > 0).any(0)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(4, 4, 16, 32, 32)
    y = torch.tensor([0.0, 1.0, 0.0, 1.0])
    for _ in range(10):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fired[-1].float().mean() == 1.0  # every unit positive for some volume of the batch
    assert "BatchNorm1d" in [type(m).__name__ for m in model.cnn.head]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_too_small_volume_is_a_clear_error(name):
    with pytest.raises(ConfigError, match=r"\(8, 32, 32\) is too small .* at least 16"):
        build_model(ModelConfig(name=name, volume_shape=(8, 32, 32)))


def test_unknown_model_names_the_choices():
    with pytest.raises(ConfigError, match="unknown model 'cnn9'; choose one of cnn1, cnn2, cnn3"):
        build_model(ModelConfig(name="cnn9"))


def test_model_config_round_trips_through_a_plain_dict():
    from dataclasses import asdict

    cfg = ModelConfig(name="cnn3", volume_shape=(16, 32, 32), width=0.5)
    d = asdict(cfg)
    d["volume_shape"] = list(d["volume_shape"])  # as after JSON
    assert ModelConfig.from_dict(d) == cfg


def test_backward_reaches_every_parameter():
    model = build_model(ModelConfig(name="cnn3", volume_shape=(16, 16, 16), width=0.25))
    model(torch.randn(2, 2, 16, 16, 16)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_input_pool_is_the_model_on_k_by_k_voxel_means(name):
    """`input_pool` K: the same function as the unpooled model applied to each slice's K x K
    block means, computed here with numpy (same weights; CNN1's FC sees the same positions)."""
    torch.manual_seed(0)
    k, (s, h, w) = 3, (16, 48, 96)
    pooled = build_model(ModelConfig(name=name, volume_shape=(s, h, w), width=0.25, input_pool=k))
    plain = build_model(ModelConfig(name=name, volume_shape=(s, h // k, w // k), width=0.25))
    plain.load_state_dict(pooled.state_dict())  # same keys and shapes: pooling has no weights
    x = torch.rand(2, 4, s, h, w)
    means = x.numpy().astype(np.float64).reshape(2, 4, s, h // k, k, w // k, k).mean(axis=(4, 6))
    with torch.no_grad():
        got = pooled.eval()(x)
        want = plain.eval()(torch.from_numpy(means.astype(np.float32)))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("k", "shape", "message"),
    [
        (7, (16, 48, 48), "the in-plane size 48x48 is not a multiple of 7; choose a divisor of 48"),
        (3, (16, 48, 64), "not a multiple of 3; choose a common divisor of 48 and 64"),
        (4, (16, 48, 48), "4 leaves 12x12 voxels in-plane, too few for 4 pooling stages (at "
         "least 16); choose at most 3"),
        (0, (16, 48, 48), "must be a whole number >= 1, got 0"),
        (1.5, (16, 48, 48), "must be a whole number >= 1, got 1.5"),
        (True, (16, 48, 48), "must be a whole number >= 1, got True"),
    ],
)  # fmt: skip
def test_an_input_pool_that_cannot_be_built_names_the_option(k, shape, message):
    with pytest.raises(ConfigError) as err:
        build_model(ModelConfig(volume_shape=shape, input_pool=k))
    assert str(err.value).endswith(message)
    assert err.value.option == "--input-pool"


def test_the_receptive_field_is_where_one_unit_of_the_last_block_gets_a_gradient():
    """46 voxels: measured as the in-plane extent of the input gradient of one central unit
    (max pooling swapped for average pooling of the same geometry, every ReLU kept active,
    so the gradient reaches every voxel the unit depends on)."""
    from smri.networks import receptive_field

    torch.manual_seed(0)
    backbone = CNN2((16, 128, 128), width=0.25).backbone.eval()
    for block in backbone.blocks:
        block.pool = torch.nn.AvgPool3d(2)
        block.conv.weight.data.abs_()
        block.conv.bias.data.fill_(0.1)
    x = torch.rand(1, 1, 16, 128, 128, requires_grad=True)
    backbone(x)[0, 0, 0, 4, 4].backward()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(dim=(0, 1))).flatten()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(dim=(0, 2))).flatten()
    assert int(cols[-1] - cols[0]) + 1 == int(rows[-1] - rows[0]) + 1 == receptive_field() == 46
    assert receptive_field(3) == 138


@pytest.mark.parametrize(
    ("name", "shape", "k", "advice"),
    [
        ("cnn2", (32, 120, 120), 1, "--input-pool 3 gives them most of it"),
        ("cnn3", (32, 120, 120), 2, "--input-pool 3 gives them most of it"),
        ("cnn2", (32, 240, 240), 1, "--input-pool 5 gives them most of it"),
        ("cnn2", (32, 64, 64), 1, "--input-pool 2 gives them most of it"),
        ("cnn2", (32, 97, 97), 1, None),  # no whole divisor: the note, without advice
        ("cnn2", (32, 40, 40), 1, False),  # the demo: the units see the whole slice
        ("cnn2", (32, 48, 48), 1, False),  # 46 of 48: learnt in every fold
        ("cnn2", (32, 120, 120), 3, False),
        ("cnn1", (32, 240, 240), 1, False),  # CNN1 keeps every position
    ],
)
def test_the_run_log_notes_a_field_too_small_for_global_pooling(name, shape, k, advice):
    from smri.networks import field_note

    note = field_note(ModelConfig(name=name, volume_shape=shape, input_pool=k))
    if advice is False:
        assert note is None
        return
    assert note.startswith(f"note: {name}'s last-block units each see {46 * k} of the ")
    assert note.endswith(advice) if advice else "--input-pool" not in note
