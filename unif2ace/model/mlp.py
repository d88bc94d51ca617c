"""Dense Phi MLP (fc1 → act → fc2) in the FFN slot's signature."""
from __future__ import annotations

from torch import nn
from transformers.activations import ACT2FN


class DenseMLP(nn.Module):
    def __init__(self, hidden: int, inner: int, act: str = "gelu_new"):
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)
        self.act = ACT2FN[act]

    def forward(self, h, ctx=None):
        return self.fc2(self.act(self.fc1(h))), {}
