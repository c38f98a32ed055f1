"""build_model: the custom CNN family over every toggle and input shape, and the torchvision backbones."""

from __future__ import annotations

import itertools
import os
import socket
import time

import pytest
import torch
import torchvision
from torch import nn

import search
from search.trial.errors import ModelError
from search.trial.measure import activation_bytes, count_flops, count_params
from search.trial.models import as_built, build_model, space_fit_warning
from spaces import load_space, parse_space
from spaces.schema import DEFAULT_CONFIG, TrialConfig

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
BACKBONE_SHAPES = [(1, 28, 28), (3, 32, 32)]
MAX_DEPTH = {(1, 8, 8): 2, (1, 28, 28): 3, (3, 32, 32): 4}
TOGGLES = list(
    itertools.product(
        [False, True], [False, True], ["none", "channel", "spatial", "both"], ["gap", "flatten"], ["max", "avg"]
    )
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads fighting other
    processes made these tiny models ~15x slower (measured: 80 s vs 5 s for the toggle grid)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stage_convs(model: nn.Module) -> list[int]:
    """Conv layers per stage, leaving out attention and shortcut convs."""
    return [sum(isinstance(m, nn.Conv2d) for m in stage.body) for stage in model.features]


def sgd_step(model: nn.Module, shape: tuple[int, int, int], num_classes: int = 3) -> torch.Tensor:
    """One forward/backward/SGD step on a batch of 2; returns the logits."""
    x = torch.randn(2, *shape)
    y = torch.tensor([0, num_classes - 1])
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    return logits


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("batch_norm,residual,attention,head,pool", TOGGLES)
def test_every_toggle_combination_trains_one_step_at_max_depth(shape, batch_norm, residual, attention, head, pool):
    config = TrialConfig.from_dict(
        {
            "width": 4,
            "depth": MAX_DEPTH[shape],
            "fc_units": 5,
            "dropout": 0.1,
            "batch_norm": batch_norm,
            "residual": residual,
            "attention": attention,
            "head": head,
            "pool": pool,
            "activation": "gelu",
        }
    )
    model = build_model(config, shape, 3)
    assert model.notes == []
    assert len(model.features) == MAX_DEPTH[shape]
    logits = sgd_step(model, shape)
    assert logits.shape == (2, 3)
    no_grad = [name for name, p in model.named_parameters() if p.grad is None]
    assert no_grad == [], f"parameters outside the graph: {no_grad}"


@pytest.mark.parametrize("shape,depth", [((1, 8, 8), 2), ((1, 28, 28), 3), ((3, 32, 32), 4), ((1, 4, 4), 1)])
def test_depth_beyond_what_the_input_holds_is_clamped_with_a_note(shape, depth):
    model = build_model(TrialConfig.from_dict({"width": 4, "depth": 8}), shape, 10)
    assert len(model.features) == depth
    side = f"{shape[1]}x{shape[2]}"
    assert model.notes == [
        f"depth 8 clamped to {depth}: the {side} input holds {depth} downsampling stage{'s' if depth > 1 else ''}"
    ]
    assert sgd_step(model, shape, 10).shape == (2, 10)


def test_input_too_small_to_pool_gets_one_unpooled_stage():
    config = TrialConfig.from_dict({"width": 4, "depth": 3, "attention": "both", "head": "flatten"})
    model = build_model(config, (1, 3, 3), 2)
    assert len(model.features) == 1
    assert any("no pooling" in note for note in model.notes)
    assert any("depth 3 clamped to 1" in note for note in model.notes)
    assert sgd_step(model, (1, 3, 3), 2).shape == (2, 2)


def test_layers_are_spread_evenly_with_earlier_stages_getting_the_extra():
    model = build_model(TrialConfig.from_dict({"width": 4, "depth": 3, "layers": 8}), (3, 32, 32), 10)
    assert stage_convs(model) == [3, 3, 2]
    assert model.notes == []
    model = build_model(TrialConfig.from_dict({"width": 4, "depth": 2, "layers": None}), (3, 32, 32), 10)
    assert stage_convs(model) == [1, 1]


def test_fewer_layers_than_stages_clamps_depth_with_a_note():
    model = build_model(TrialConfig.from_dict({"width": 4, "depth": 4, "layers": 2}), (3, 32, 32), 10)
    assert stage_convs(model) == [1, 1]
    assert model.notes == ["depth 4 clamped to 2: layers=2 gives each stage at least one conv"]


def test_residual_with_several_convs_per_stage_trains():
    config = TrialConfig.from_dict({"width": 4, "depth": 2, "layers": 5, "residual": True, "growth": 1.0})
    model = build_model(config, (1, 8, 8), 10)
    assert stage_convs(model) == [3, 2]
    assert sgd_step(model, (1, 8, 8), 10).shape == (2, 10)


@pytest.mark.parametrize("stride,params", [(1, 112 + 296 + 8 * 16 * 16 * 10 + 10), (2, 112 + 296 + 8 * 8 * 8 * 10 + 10),
                                           (4, 112 + 296 + 8 * 4 * 4 * 10 + 10)])
def test_a_strided_stem_shrinks_the_image_before_the_first_stage(stride, params):
    config = TrialConfig.from_dict({"width": 4, "depth": 2, "batch_norm": False, "head": "flatten",
                                    "stem_stride": stride})
    model = build_model(config, (3, 64, 64), 10)
    assert model.notes == [] and as_built(config, (3, 64, 64)) == config
    assert model.features(torch.zeros(2, 3, 64, 64)).shape == (2, 8, 16 // stride, 16 // stride)
    assert count_params(model) == params  # the convs keep their weights; only the head reads a smaller map
    if stride == 1:
        return
    # An odd side rounds up, as a padded strided conv does: 63 px at stride 2 is a 32-px map.
    odd = build_model(config, (3, 63, 63), 10)
    assert odd.features(torch.zeros(2, 3, 63, 63)).shape == model.features(torch.zeros(2, 3, 64, 64)).shape
    assert sgd_step(odd, (3, 63, 63), 10).shape == (2, 10)


def test_a_residual_first_stage_with_a_strided_stem_has_a_strided_projection_shortcut():
    # Three channels in and out: an identity shortcut would fit the channels, but not the halved map.
    config = TrialConfig.from_dict({"width": 3, "depth": 2, "residual": True, "stem_stride": 2, "head": "gap"})
    model = build_model(config, (3, 32, 32), 10)
    first, second = model.features
    projection = first.shortcut[0]
    assert isinstance(projection, nn.Conv2d) and (projection.kernel_size, projection.stride) == ((1, 1), (2, 2))
    assert second.shortcut[0].stride == (1, 1)  # later stages do not stride
    assert model.features(torch.zeros(2, 3, 32, 32)).shape == (2, 6, 4, 4)
    assert sgd_step(model, (3, 32, 32), 10).shape == (2, 10)


@pytest.mark.parametrize("shape,asked,built,small", [((1, 12, 12), 4, 2, "3x3"), ((1, 6, 6), 2, 1, "3x3")])
def test_a_stem_stride_too_large_for_the_image_is_clamped_noted_and_recorded(shape, asked, built, small):
    config = TrialConfig.from_dict({"width": 4, "depth": 3, "stem_stride": asked, "attention": "spatial"})
    model = build_model(config, shape, 10)
    side = f"{shape[1]}x{shape[2]}"
    assert model.notes[0] == (f"stem_stride {asked} clamped to {built}: the {side} input would be {small} after it, "
                              "and a stage needs at least 4x4 to halve")
    recorded = as_built(config, shape)
    assert recorded.stem_stride == built
    rebuilt = build_model(recorded, shape, 10)  # what the trial records builds the network it trained
    assert not any("stem_stride" in note for note in rebuilt.notes)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values(),
                                                 strict=True))
    assert sgd_step(model, shape, 10).shape == (2, 10)
    # 13 px at stride 4 is a 4-px map: enough for one stage, so the stride is kept.
    assert as_built(config, (1, 13, 13)).stem_stride == asked


def test_depth_is_fitted_to_the_map_after_the_stem():
    model = build_model(TrialConfig.from_dict({"width": 4, "depth": 8, "stem_stride": 4}), (3, 64, 64), 10)
    assert len(model.features) == 3  # 16 px after the stem: 8, 4, 2
    assert model.notes == ["depth 8 clamped to 3: the 64x64 input (16x16 after stem_stride 4) holds 3 "
                           "downsampling stages"]


def test_the_depth_warning_counts_the_stages_left_after_the_stem():
    space = parse_space({"params": {"stem_stride": 4, "depth": {"type": "int", "low": 2, "high": 6}}}, name="s4")
    assert space_fit_warning(space, (3, 128, 128)).startswith(
        "space 's4' asks for depth up to 6, but the 128x128 input (32x32 after stem_stride 4) holds 4 downsampling "
        "stages: deeper configs are built (and recorded) with depth 4")
    assert space_fit_warning(parse_space({"params": {"depth": 6}}, name="s1"), (3, 128, 128)) is None  # stride 1: 6


def test_stage_channels_grow_and_are_capped_at_512_with_a_note():
    model = build_model(TrialConfig.from_dict({"width": 200, "growth": 2.0, "depth": 3}), (1, 8, 8), 10)
    # depth is clamped to 2 first; a third stage would not be built at all
    assert [stage.body[0].out_channels for stage in model.features] == [200, 400]
    model = build_model(TrialConfig.from_dict({"width": 200, "growth": 2.0, "depth": 3}), (3, 32, 32), 10)
    assert [stage.body[0].out_channels for stage in model.features] == [200, 400, 512]
    assert model.notes == ["channels [200, 400, 800] capped at 512"]


def test_mnist_baseline_is_the_classic_two_conv_network():
    config = load_space("mnist-baseline").config_from_params({})  # the preset itself, not a copy of it
    model = build_model(config, (1, 28, 28), 10)
    leaves = [m for m in model.modules() if not list(m.children())]
    assert [type(m) for m in leaves] == [
        nn.Conv2d,
        nn.ReLU,
        nn.MaxPool2d,
        nn.Conv2d,
        nn.ReLU,
        nn.MaxPool2d,
        nn.Flatten,
        nn.Dropout,
        nn.Linear,
    ]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.padding) for m in leaves if isinstance(m, nn.Conv2d)] == [
        (1, 16, (5, 5), (2, 2)),
        (16, 32, (5, 5), (2, 2)),
    ]
    conv1 = 1 * 16 * 5 * 5 + 16
    conv2 = 16 * 32 * 5 * 5 + 32
    fc = 32 * 7 * 7 * 10 + 10
    assert count_params(model) == conv1 + conv2 + fc == 28938


def test_same_seed_gives_the_same_weights_and_leaves_the_global_rng_alone():
    config = TrialConfig.from_dict({"width": 4, "seed": 7})
    state = torch.get_rng_state()
    first, second = build_model(config, (1, 8, 8), 10), build_model(config, (1, 8, 8), 10)
    assert torch.equal(torch.get_rng_state(), state)
    other = build_model(config.replace(seed=8), (1, 8, 8), 10)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first.features[0].body[0].weight, other.features[0].body[0].weight)


def test_kaiming_and_xavier_init_follow_their_formulas():
    base = {"width": 64, "depth": 2, "kernel": 3, "batch_norm": False, "fc_units": 256, "head": "gap"}
    kaiming = build_model(TrialConfig.from_dict({**base, "init": "kaiming"}), (3, 32, 32), 10)
    conv = kaiming.features[1].body[0]  # 64 -> 128 channels, 3x3: fan_out = 128 * 9
    assert conv.weight.std().item() == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.05)
    assert torch.count_nonzero(conv.bias) == 0
    xavier = build_model(TrialConfig.from_dict({**base, "init": "xavier"}), (3, 32, 32), 10)
    fc = xavier.head[2]  # gap, flatten, Linear(128 -> 256)
    bound = (6 / (128 + 256)) ** 0.5
    assert fc.weight.abs().max().item() <= bound
    assert fc.weight.abs().max().item() > 0.9 * bound
    assert torch.count_nonzero(fc.bias) == 0


def test_bad_config_value_or_shape_is_a_one_line_model_error():
    with pytest.raises(ModelError, match="activation='tanh'"):
        search.build_model({**DEFAULT_CONFIG, "activation": "tanh"}, (1, 8, 8), 10)
    with pytest.raises(ModelError, match="input_shape"):
        search.build_model(DEFAULT_CONFIG, (8, 8), 10)
    with pytest.raises(ModelError, match="input_shape"):
        build_model(TrialConfig(), (8, 8), 10)


def test_a_partial_config_builds_the_architecture_of_the_full_default_config():
    partial = {name: value for name, value in DEFAULT_CONFIG.items() if name != "depth"}
    model = search.build_model(partial, (1, 8, 8), 10)
    default = build_model(TrialConfig(), (1, 8, 8), 10)
    assert repr(model) == repr(default)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), default.state_dict().values(),
                                                  strict=True))


def test_pretrained_custom_cnn_is_refused():
    with pytest.raises(ModelError, match="pretrained=true.*'cnn'"):
        build_model(TrialConfig.from_dict({"pretrained": True}), (1, 8, 8), 10)


# --- HOG feature fusion ---


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("head,fc_units", [("gap", 0), ("flatten", 0), ("gap", 5), ("flatten", 5)])
def test_hog_features_join_the_pooled_features_before_the_head_and_train(shape, head, fc_units):
    base = {"width": 4, "depth": 2, "head": head, "fc_units": fc_units}
    plain = build_model(TrialConfig.from_dict(base), shape, 3)
    fused = build_model(TrialConfig.from_dict({**base, "hog": True}), shape, 3)
    first_plain = next(m for m in plain.head if isinstance(m, nn.Linear))
    first_fused = next(m for m in fused.head if isinstance(m, nn.Linear))
    assert first_fused.in_features == first_plain.in_features + fused.hog.size
    assert fused.notes == plain.notes
    sgd_step(fused, shape)


def test_hog_size_on_mnist_is_the_textbook_one():
    model = build_model(TrialConfig.from_dict({"width": 4, "depth": 2, "head": "gap", "hog": True}), (1, 28, 28), 10)
    # 4x4-pixel cells: 7x7 cells, 6x6 overlapping blocks of 2x2 cells, 9 bins each; plus 8 pooled channels.
    assert model.hog.size == 6 * 6 * 2 * 2 * 9
    assert model.head[-1].in_features == 8 + 1296


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=lambda s: "x".join(map(str, s)))
def test_flops_count_the_hog_gradient_convs_and_the_wider_head(shape):
    base = {"width": 4, "depth": 2, "head": "gap", "hog_orientations": 12}
    plain = count_flops(build_model(TrialConfig.from_dict(base), shape, 10), shape)
    model = build_model(TrialConfig.from_dict({**base, "hog": True}), shape, 10)
    channels, height, width = shape
    gradients = 2 * (2 * 9 * channels * height * width)  # one 3x3 conv, two outputs (d/d row, d/d column)
    assert count_flops(model, shape) - plain == gradients + 2 * model.hog.size * 10


def test_hog_larger_than_the_input_is_shrunk_with_a_note():
    config = TrialConfig.from_dict({"depth": 1, "hog": True, "hog_cell": 16, "hog_block": 3})
    model = build_model(config, (1, 8, 8), 10)
    assert model.notes == ["hog_cell 16 shrunk to 8: the 8x8 input holds no larger cell",
                           "hog_block 3 shrunk to 1: 8x8 pixels hold 1x1 cells of 8x8"]
    sgd_step(model, (1, 8, 8))


def test_hog_keeps_the_weights_of_the_plain_network():
    """HOG adds no weights of its own: a plain model's state_dict keys stay what they were (exported
    weights still load), and a fused one differs only in the wider first Linear of the head."""
    plain = build_model(TrialConfig.from_dict({"head": "flatten"}), (1, 28, 28), 10)
    assert [k for k in plain.state_dict() if k.startswith("head.")] == ["head.2.weight", "head.2.bias"]
    fused = build_model(TrialConfig.from_dict({"head": "flatten", "hog": True}), (1, 28, 28), 10)
    assert count_params(fused) - count_params(plain) == fused.hog.size * 10


def test_hog_runs_under_mixed_precision_and_on_the_meta_device():
    config = TrialConfig.from_dict({"width": 4, "hog": True})
    model = build_model(config, (3, 32, 32), 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    with torch.device("meta"):
        shadow = build_model(config, (3, 32, 32), 10)
    assert activation_bytes(shadow, (3, 32, 32))[0] > 0


def test_hog_on_a_backbone_is_ignored_with_a_note():
    model = build_model(TrialConfig.from_dict({"model": "lenet5", "hog": True}), (1, 28, 28), 10)
    assert "hog ignored: HOG fusion is a choice of the custom CNN (model 'cnn'), not of 'lenet5'" in model.notes


# --- backbones ---


@pytest.mark.slow
@pytest.mark.parametrize("shape", BACKBONE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "vgg11_bn", "alexnet", "lenet5"])
def test_every_backbone_runs_on_grey_and_colour_images(name, shape):
    model = build_model(TrialConfig.from_dict({"model": name}), shape, 10)
    if name == "vgg11_bn":  # 129M parameters: its backward pass alone takes seconds on 2 cores
        model.eval()
        with torch.no_grad():
            assert model(torch.randn(2, *shape)).shape == (2, 10)
    else:
        assert sgd_step(model, shape, 10).shape == (2, 10)
    minimum = {"alexnet": 63, "lenet5": 28}.get(name, 32)
    upsampled = [note for note in model.notes if "upsampled" in note]
    assert bool(upsampled) == (shape[1] < minimum)


def test_lenet5_has_the_classic_parameter_count_on_28x28():
    model = build_model(TrialConfig.from_dict({"model": "lenet5"}), (1, 28, 28), 10)
    conv1, conv2 = 1 * 6 * 25 + 6, 6 * 16 * 25 + 16
    fcs = 400 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10
    assert count_params(model) == conv1 + conv2 + fcs == 61706
    assert model.notes == []


def test_lenet5_pretrained_is_refused():
    with pytest.raises(ModelError, match="lenet5"):
        build_model(TrialConfig.from_dict({"model": "lenet5", "pretrained": True}), (1, 28, 28), 10)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty torch hub cache and no network: any download attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def refuse(*args, **kwargs):
        raise AssertionError("build_model tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return tmp_path / "torch-home"


def test_pretrained_weights_missing_offline_are_a_quick_model_error(offline):
    start = time.perf_counter()
    with pytest.raises(ModelError) as caught:
        build_model(TrialConfig.from_dict({"model": "resnet18", "pretrained": True}), (3, 32, 32), 10)
    assert time.perf_counter() - start < 10
    message = str(caught.value)
    assert "\n" not in message
    expected = os.path.join(str(offline), "hub", "checkpoints", "resnet18-f37072fd.pth")
    assert expected in message and "weights_path" in message


def test_weights_path_that_does_not_exist_is_a_model_error(offline, tmp_path):
    missing = str(tmp_path / "nowhere.pth")
    with pytest.raises(ModelError, match="weights_path=.*nowhere.pth.*does not exist"):
        build_model(
            TrialConfig.from_dict({"model": "resnet18", "pretrained": True, "weights_path": missing}), (3, 32, 32), 10
        )


@pytest.fixture
def resnet18_weights(tmp_path) -> tuple[str, dict[str, torch.Tensor]]:
    torch.manual_seed(3)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = str(tmp_path / "resnet18-local.pth")
    torch.save(state, path)
    return path, state


def test_pretrained_resnet18_loads_from_weights_path(offline, resnet18_weights):
    path, state = resnet18_weights
    config = TrialConfig.from_dict({"model": "resnet18", "pretrained": True, "weights_path": path})
    model = build_model(config, (3, 32, 32), 10)
    assert torch.equal(model.net.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.net.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert model.net.fc.out_features == 10
    grey = build_model(config, (1, 28, 28), 10)
    # averaged RGB filters scaled by 3: a grey image gives the response the RGB net gives it as (g, g, g)
    assert torch.allclose(grey.net.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True), atol=1e-6)
    assert any("averaged" in note for note in grey.notes)
    assert sgd_step(grey, (1, 28, 28), 10).shape == (2, 10)


def test_pretrained_resnet18_loads_from_the_hub_cache(offline, resnet18_weights):
    path, state = resnet18_weights
    checkpoints = offline / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    os.replace(path, checkpoints / "resnet18-f37072fd.pth")
    model = build_model(TrialConfig.from_dict({"model": "resnet18", "pretrained": True}), (3, 32, 32), 10)
    assert torch.equal(model.net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_weights_of_another_model_are_a_model_error(offline, tmp_path):
    path = str(tmp_path / "lenet.pth")
    torch.save({"conv1.weight": torch.zeros(6, 1, 5, 5)}, path)
    with pytest.raises(ModelError, match="not a state dict of torchvision's resnet18"):
        build_model(
            TrialConfig.from_dict({"model": "resnet18", "pretrained": True, "weights_path": path}), (3, 32, 32), 10
        )


def test_unreadable_weights_file_is_a_model_error(offline, tmp_path):
    path = tmp_path / "truncated.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read .*truncated.pth as a state dict"):
        build_model(
            TrialConfig.from_dict({"model": "resnet18", "pretrained": True, "weights_path": str(path)}), (3, 32, 32), 10
        )
