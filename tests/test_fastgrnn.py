"""FastGRNN: shapes, the gating equations against a hand computation, prunable layers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prune_gym.evaluation import Evaluator
from prune_gym.pruning import find_prunable_layers
from prune_gym.tasks.models.fastgrnn import FastGRNN, fastgrnn_har2


def _sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def test_har2_model_maps_batches_of_sequences_to_two_logits():
    model = fastgrnn_har2()
    logits = model(torch.randn(4, 128, 9))
    assert logits.shape == (4, 2)
    assert torch.isfinite(logits).all()
    # Other sequence lengths work too: the cell does not depend on the number of steps.
    assert model(torch.randn(3, 5, 9)).shape == (3, 2)


def test_scalars_and_biases_start_as_in_the_paper():
    model = fastgrnn_har2()
    zeta, nu = model.gates()
    assert zeta.item() == pytest.approx(_sigmoid(1.0))
    assert nu.item() == pytest.approx(_sigmoid(-4.0))
    assert torch.equal(model.bias_gate, torch.ones(80))
    assert torch.equal(model.bias_update, torch.ones(80))


def test_one_step_matches_a_hand_computation():
    # 1 input feature, 2 hidden units, rank 1: every number below is worked out by hand.
    model = FastGRNN(input_size=1, hidden_size=2, num_classes=1, w_rank=1, u_rank=1, zeta_init=0.5, nu_init=-1.0)
    with torch.no_grad():
        model.W1.weight.fill_(2.0)  # W = W2 @ W1 = [[1.0], [-0.5]] * 2 = [[2.0], [-1.0]]
        model.W2.weight.copy_(torch.tensor([[1.0], [-0.5]]))
        model.U1.weight.fill_(0.0)  # h_0 = 0 anyway
        model.U2.weight.fill_(0.0)
        model.bias_gate.copy_(torch.tensor([0.1, -0.2]))
        model.bias_update.copy_(torch.tensor([0.3, 0.0]))
        model.classifier.weight.copy_(torch.tensor([[1.0, 1.0]]))
        model.classifier.bias.zero_()
    x = 0.5
    zeta, nu = _sigmoid(0.5), _sigmoid(-1.0)
    expected = []
    for w, b_z, b_h in ((2.0, 0.1, 0.3), (-1.0, -0.2, 0.0)):
        pre = w * x
        z = _sigmoid(pre + b_z)
        candidate = math.tanh(pre + b_h)
        expected.append((zeta * (1 - z) + nu) * candidate + z * 0.0)
    h = model.recurrence(model.input_projection(torch.tensor([[[x]]])))
    assert h.squeeze(0).tolist() == pytest.approx(expected, rel=1e-6)
    assert model(torch.tensor([[[x]]])).item() == pytest.approx(sum(expected), rel=1e-6)


def test_two_steps_follow_the_recurrence_with_dense_w_and_u():
    torch.manual_seed(0)
    model = FastGRNN(input_size=3, hidden_size=4, num_classes=2, w_rank=2, u_rank=3)
    x = torch.randn(2, 2, 3)
    W = model.W2.weight @ model.W1.weight
    U = model.U2.weight @ model.U1.weight
    zeta, nu = torch.sigmoid(model.zeta), torch.sigmoid(model.nu)
    h = torch.zeros(2, 4)
    for t in range(2):
        pre = x[:, t] @ W.T + h @ U.T
        z = torch.sigmoid(pre + model.bias_gate)
        h = (zeta * (1 - z) + nu) * torch.tanh(pre + model.bias_update) + z * h
    expected = h @ model.classifier.weight.T + model.classifier.bias
    torch.testing.assert_close(model(x), expected)


def test_prunable_layers_are_the_factors_and_classifier_in_forward_order():
    model = fastgrnn_har2()
    by_registration = find_prunable_layers(model)
    by_forward = find_prunable_layers(model, example_input=torch.randn(2, 128, 9))
    names = ["W1", "W2", "U1", "U2", "classifier"]
    assert [layer.name for layer in by_registration] == names
    assert [layer.name for layer in by_forward] == names
    assert [tuple(layer.weight.shape) for layer in by_forward] == [(8, 9), (80, 8), (8, 80), (80, 8), (2, 80)]
    assert all(isinstance(layer.module, nn.Linear) for layer in by_forward)


def test_full_rank_option_uses_one_matrix_each():
    model = FastGRNN(input_size=9, hidden_size=16, num_classes=2)
    assert [layer.name for layer in find_prunable_layers(model)] == ["W", "U", "classifier"]
    assert model(torch.randn(2, 7, 9)).shape == (2, 2)


def test_stages_compose_to_forward_and_let_the_evaluator_cache_h_T():
    torch.manual_seed(0)
    model = fastgrnn_har2().eval()
    x = torch.randn(6, 20, 9)
    h = x
    for stage in model.stages():
        h = stage(h)
    torch.testing.assert_close(h, model(x))
    labels = model(x).argmax(1)
    evaluator = Evaluator(model, (x, labels), cache_activations=True)
    assert evaluator.accuracy(keep_stage=2) == 1.0
    with torch.no_grad():
        model.classifier.weight.neg_()
        model.classifier.bias.neg_()
    # Reusing the cached h_T after a classifier-only change gives the full forward pass's answer.
    full = Evaluator(model, (x, labels), cache_activations=False).accuracy()
    assert full == 0.0  # two classes: negated logits flip every prediction
    evaluator.mark_changed(2)  # the classifier's stage: the cached h_T stays valid
    assert evaluator.cached_stage == 2
    assert evaluator.accuracy() == full


def test_bad_shapes_and_sizes_are_rejected_with_a_clear_message():
    model = fastgrnn_har2()
    with pytest.raises(ValueError, match=r"\(batch, time, 9\)"):
        model(torch.randn(4, 128))
    with pytest.raises(ValueError, match="w_rank"):
        FastGRNN(input_size=9, hidden_size=8, num_classes=2, w_rank=0)
