"""FastGRNN (Kusupati et al., NeurIPS 2018): a gated RNN that reuses one pre-activation.

Update equations, for inputs ``x_t`` and hidden state ``h_{t-1}``::

    a_t  = W x_t + U h_{t-1}
    z_t  = sigmoid(a_t + b_z)                      (gate)
    h~_t = tanh(a_t + b_h)                         (candidate)
    h_t  = (zeta * (1 - z_t) + nu) * h~_t + z_t * h_{t-1}

with ``zeta = sigmoid(zeta_raw)`` and ``nu = sigmoid(nu_raw)`` trainable scalars (raw
initial values 1 and -4, as in the paper and its reference code), both biases initialised
to one, and ``h_0 = 0``. A linear classifier reads the last hidden state ``h_T``.

Low rank: ``W = W2 @ W1`` and ``U = U2 @ U1``. Each factor is a bias-free ``nn.Linear``, so
the four factors and the classifier are the prunable layers, in this (registration and
forward) order: ``W1, W2, U1, U2, classifier``. ``w_rank=None`` / ``u_rank=None`` gives a
full-rank ``W`` / ``U`` (one Linear named ``W`` / ``U``) instead.

Inputs are ``(batch, time, features)``. ``W x_t`` does not depend on the recurrence, so it
is computed for all time steps in one batched product before the loop; the recurrence
always runs in float32 (autocast is switched off inside it) because a bf16 hidden state
drifts over long sequences.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prune_gym.errors import ConfigError


class FastGRNN(nn.Module):
    """FastGRNN classifier on the last hidden state.

    Args:
        input_size: features per time step.
        hidden_size: hidden units.
        num_classes: classifier outputs.
        w_rank: rank of ``W`` (``None``: full rank, one Linear).
        u_rank: rank of ``U`` (``None``: full rank, one Linear).
        zeta_init, nu_init: initial raw (pre-sigmoid) values of the two scalars.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_classes: int,
        w_rank: int | None = None,
        u_rank: int | None = None,
        zeta_init: float = 1.0,
        nu_init: float = -4.0,
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_classes", num_classes)):
            if int(value) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name, value in (("w_rank", w_rank), ("u_rank", u_rank)):
            if value is not None and int(value) < 1:
                raise ConfigError(f"{name} must be a positive integer or None (full rank), got {value!r}")
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.w_rank = w_rank
        self.u_rank = u_rank
        # Registration order is forward order (W before U before the classifier): the pruning
        # engine relies on it when no example input is given.
        if w_rank is None:
            self.W = nn.Linear(input_size, hidden_size, bias=False)
        else:
            self.W1 = nn.Linear(input_size, w_rank, bias=False)
            self.W2 = nn.Linear(w_rank, hidden_size, bias=False)
        if u_rank is None:
            self.U = nn.Linear(hidden_size, hidden_size, bias=False)
        else:
            self.U1 = nn.Linear(hidden_size, u_rank, bias=False)
            self.U2 = nn.Linear(u_rank, hidden_size, bias=False)
        self.bias_gate = nn.Parameter(torch.ones(hidden_size))
        self.bias_update = nn.Parameter(torch.ones(hidden_size))
        self.zeta = nn.Parameter(torch.tensor([float(zeta_init)]))
        self.nu = nn.Parameter(torch.tensor([float(nu_init)]))
        self.classifier = nn.Linear(hidden_size, num_classes)
        self._init_recurrent_weights()

    def _init_recurrent_weights(self) -> None:
        # The reference implementation draws W and U factors from N(0, 0.1^2): small enough
        # that tanh/sigmoid start unsaturated over 100+ time steps.
        for module in self.recurrent_layers():
            nn.init.normal_(module.weight, std=0.1)

    def recurrent_layers(self) -> list[nn.Linear]:
        """The Linear modules of ``W`` and ``U`` (factors or full), in forward order."""
        names = ["W"] if self.w_rank is None else ["W1", "W2"]
        names += ["U"] if self.u_rank is None else ["U1", "U2"]
        return [getattr(self, name) for name in names]

    def input_projection(self, x: Tensor) -> Tensor:
        """``W x_t`` for every time step: ``(batch, time, features) -> (batch, time, hidden)``."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ConfigError(
                f"FastGRNN expects inputs of shape (batch, time, {self.input_size}), got {tuple(x.shape)}"
            )
        if self.w_rank is None:
            return self.W(x)
        return self.W2(self.W1(x))

    def recurrent_projection(self, h: Tensor) -> Tensor:
        """``U h`` for one hidden state ``(batch, hidden)``."""
        if self.u_rank is None:
            return self.U(h)
        return self.U2(self.U1(h))

    def gates(self) -> tuple[Tensor, Tensor]:
        """The scalars ``(zeta, nu)`` after the sigmoid."""
        return torch.sigmoid(self.zeta), torch.sigmoid(self.nu)

    def recurrence(self, projected_inputs: Tensor) -> Tensor:
        """Run the cell over ``W x`` (from :meth:`input_projection`); returns ``h_T``."""
        device_type = projected_inputs.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            wx = projected_inputs.float()
            zeta, nu = self.gates()
            h = wx.new_zeros(wx.shape[0], self.hidden_size)
            for t in range(wx.shape[1]):
                pre_activation = wx[:, t] + self.recurrent_projection(h)
                z = torch.sigmoid(pre_activation + self.bias_gate)
                candidate = torch.tanh(pre_activation + self.bias_update)
                h = (zeta * (1.0 - z) + nu) * candidate + z * h
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.recurrence(self.input_projection(x)))

    def stages(self) -> list[nn.Module]:
        """``[input projection, recurrence, classifier]``: their composition is ``forward``.

        Lets an evaluator reuse ``h_T`` while only the classifier changes (the recurrence is
        nearly all of the cost).
        """
        return [_InputProjection(self), _Recurrence(self), self.classifier]


class _InputProjection(nn.Module):
    """Stage 1 of :meth:`FastGRNN.stages`: owns the ``W`` layers."""

    def __init__(self, model: FastGRNN) -> None:
        super().__init__()
        # A plain attribute (not a submodule) so the model is not registered twice.
        object.__setattr__(self, "_model", model)
        self.layers = nn.ModuleList(model.recurrent_layers()[: 1 if model.w_rank is None else 2])

    def forward(self, x: Tensor) -> Tensor:
        return self._model.input_projection(x)


class _Recurrence(nn.Module):
    """Stage 2 of :meth:`FastGRNN.stages`: owns the ``U`` layers."""

    def __init__(self, model: FastGRNN) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)
        self.layers = nn.ModuleList(model.recurrent_layers()[1 if model.w_rank is None else 2 :])

    def forward(self, projected_inputs: Tensor) -> Tensor:
        return self._model.recurrence(projected_inputs)


def fastgrnn_har2(num_classes: int = 2) -> FastGRNN:
    """FastGRNN for HAR-2: 9 input channels, 80 hidden units, rank-8 ``W`` and ``U``.

    The paper uses 80 hidden units on HAR-2 (FastGRNN-LSQ, 29 KB at full rank). The ranks of
    its low-rank HAR-2 model are not restated here from a verified source; ``w_rank=8`` and
    ``u_rank=8`` are this package's choice (``W`` is 80x9, so rank 8 keeps it nearly full).
    """
    return FastGRNN(input_size=9, hidden_size=80, num_classes=num_classes, w_rank=8, u_rank=8)
