"""The model every trial trains: optional embedding -> recurrent layers of one variant -> linear head."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sweep.core.variants import Variant
from sweep.nn.cells import make_recurrent


class SequenceModel(nn.Module):
    """Embedding (token data only) -> `make_recurrent(variant, ...)` -> linear head giving raw outputs
    (logits for jsb/ptb/char, values for regression). Gaussian noise of std `input_noise` is added to the
    recurrent layers' inputs (the embeddings, for token data) in training mode only."""

    def __init__(
        self,
        variant: str | Variant,
        input_size: int,
        hidden_size: int,
        output_size: int,
        *,
        vocab_size: int | None = None,
        embedding_size: int | None = None,
        num_layers: int = 1,
        forget_bias: float = 0.0,
        init: str = "normal",
        init_scale: float = 0.1,
        input_noise: float = 0.0,
        noise_seed: int = 0,
    ) -> None:
        super().__init__()
        self.embedding: nn.Embedding | None = None
        if vocab_size is not None:
            self.embedding = nn.Embedding(vocab_size, embedding_size or hidden_size)
            input_size = self.embedding.embedding_dim
        self.recurrent = make_recurrent(
            variant, input_size, hidden_size, num_layers, forget_bias, init=init, init_scale=init_scale
        )
        self.head = nn.Linear(hidden_size, output_size)
        self._init_outer(init, init_scale)
        self.input_noise = input_noise
        # Its own generator, so the noise is reproducible whatever else draws from torch's global RNG.
        self._noise_seed = noise_seed
        self._noise: torch.Generator | None = None

    @torch.no_grad()
    def _init_outer(self, init: str, scale: float) -> None:
        # The embedding and the head follow the same scheme as the recurrent weights (the paper: N(0, 0.1)).
        weights = [self.head.weight] + ([self.embedding.weight] if self.embedding is not None else [])
        for weight in weights:
            if init == "normal":
                weight.normal_(0.0, scale)
            elif init == "xavier":
                nn.init.xavier_uniform_(weight)
        if init == "normal":
            self.head.bias.zero_()

    def forward(self, x: Tensor, lengths: Tensor | None = None, state: Any = None) -> tuple[Tensor, Any]:
        """x: (B, T, M) features or (B, T) token ids -> (outputs (B, T, output_size), recurrent state)."""
        if self.embedding is not None:
            x = self.embedding(x)
        if self.training and self.input_noise > 0:
            x = x + self.input_noise * torch.randn(x.shape, generator=self._generator(x), device=x.device)
        ys, state = self.recurrent(x, lengths, state)
        return self.head(ys), state

    def _generator(self, x: Tensor) -> torch.Generator:
        if self._noise is None or self._noise.device != x.device:
            self._noise = torch.Generator(device=x.device).manual_seed(self._noise_seed)
        return self._noise

    @property
    def n_params(self) -> int:
        """Number of trainable parameters (embedding, recurrent layers and head)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
