"""Per-model measurements: parameters, FLOPs (torch's counter) and latency."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from search.trial.measure import activation_bytes, count_flops, count_params, measure_latency_ms
from search.trial.models import build_model
from spaces import load_space
from spaces.schema import TrialConfig

MNIST_BASELINE = load_space("mnist-baseline").config_from_params({})


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: two OpenMP threads on a shared 2-core machine make timings erratic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("c_in,c_out,k,size", [(3, 8, 3, 10), (1, 16, 5, 28), (4, 4, 1, 7)])
def test_flops_of_a_conv_are_two_times_its_multiply_adds(c_in, c_out, k, size):
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2)
    assert count_flops(conv, (c_in, size, size)) == 2 * c_in * c_out * k * k * size * size


def test_flops_of_the_mnist_baseline_add_up_over_its_layers():
    model = build_model(MNIST_BASELINE, (1, 28, 28), 10)
    conv1 = 2 * 1 * 16 * 25 * 28 * 28
    conv2 = 2 * 16 * 32 * 25 * 14 * 14
    fc = 2 * 32 * 7 * 7 * 10
    assert count_flops(model, (1, 28, 28)) == conv1 + conv2 + fc


def test_count_flops_leaves_training_mode_and_batch_norm_statistics_alone():
    model = build_model(TrialConfig.from_dict({"width": 4, "batch_norm": True}), (1, 8, 8), 10)
    model.train()
    bn = model.features[0].body[1]
    with torch.no_grad():
        bn.running_mean.fill_(5.0)  # a training-mode pass over any input would pull it towards the batch mean
    count_flops(model, (1, 8, 8))
    assert model.training and bn.training
    assert torch.all(bn.running_mean == 5.0)


def test_count_params_counts_only_trainable_parameters():
    model = build_model(MNIST_BASELINE, (1, 28, 28), 10)
    assert count_params(model) == 28938
    for p in model.features.parameters():
        p.requires_grad_(False)
    assert count_params(model) == 32 * 7 * 7 * 10 + 10


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
def test_latency_is_positive_and_leaves_the_model_as_found(amp_dtype):
    model = build_model(TrialConfig.from_dict({"width": 4, "attention": "both"}), (1, 8, 8), 10)
    model.train()
    rng = torch.get_rng_state()
    latency = measure_latency_ms(model, (1, 8, 8), "cpu", repeats=3, warmup=1, amp_dtype=amp_dtype)
    assert isinstance(latency, float) and latency > 0
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)  # measuring draws no random numbers


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp_dtype", [None, torch.float16, torch.bfloat16])
def test_cuda_timings_and_flops_on_the_gpu(amp_dtype):
    model = build_model(TrialConfig.from_dict({"model": "resnet18"}), (3, 32, 32), 10)
    cpu_flops = count_flops(model, (3, 32, 32))
    latency = measure_latency_ms(model, (3, 32, 32), "cuda", repeats=5, warmup=2, amp_dtype=amp_dtype)
    assert next(model.parameters()).is_cuda
    assert latency > 0
    assert count_flops(model, (3, 32, 32)) == cpu_flops


def test_activation_bytes_do_not_count_the_weights_a_linear_layer_keeps_transposed():
    # A Linear saves its weight (as a transposed view) for the input's gradient: a weight, not an
    # activation. Counted per image it made AlexNet look like 28 GB and refused it on every host.
    with torch.device("meta"):
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                              nn.Linear(4096, 10))
    total, largest = activation_bytes(model, (1, 8, 8))
    assert largest == 4096 * 4 and total == (64 + 2 * 4096) * 4  # the input, and each ReLU output (kept once)
