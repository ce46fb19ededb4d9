"""The VQ autoencoder both of the course's tokenizers are: encoder → VectorQuantizer → decoder.

    x ─ encoder ─▶ z_e (B, D, *grid) ─ VectorQuantizer ─▶ tokens (B, *grid), z_q (B, D, *grid)
                                      z_q ─ decoder ─▶ x̂ (the shape of x)

    L = ‖x − x̂‖² + β‖z_e − sg(e)‖²   (van den Oord et al. 2017; EMA codebook: no codebook term)

`VQAutoencoder` holds what chapter 02's image tokenizer (`mmcourse.tokenizer.VQVAE`, grid (h, w))
and chapter 06's video tokenizer (`mmcourse.video.VideoVQVAE`, grid (t, h, w)) share: the
config, the forward pass with its losses, and encode/decode through the codebook. A subclass
names its encoder and decoder classes, the names of its token grid's dimensions and the check
of its input layout.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmcourse import _validate
from mmcourse.vq import VectorQuantizer, nearest_code

__all__ = ["VQAutoencoder", "VQOutput"]


class VQOutput(NamedTuple):
    """What `VQAutoencoder.forward` returns."""

    x_hat: torch.Tensor  # reconstruction, the shape of x, unclamped
    tokens: torch.Tensor  # (B, *grid) long
    loss: torch.Tensor  # recon_loss + vq_loss, scalar
    recon_loss: torch.Tensor  # ‖x − x̂‖², mean over pixels
    vq_loss: torch.Tensor  # β‖z_e − sg(e)‖² (+ the codebook term without EMA)
    perplexity: torch.Tensor  # of this batch's codes, no gradient


class VQAutoencoder(nn.Module):
    """Encoder → VectorQuantizer (K = num_codes codes of dimension code_dim) → Decoder.

    Subclasses set `encoder_class` and `decoder_class` (each built as `cls(channels, code_dim,
    groups)`), `grid` (the names of the token grid's dimensions) and `_check` (the input
    layout). `encode` maps inputs to tokens, `decode` tokens back; `forward` runs both with the
    straight-through estimator and returns the losses for training.
    """

    encoder_class: type[nn.Module]
    decoder_class: type[nn.Module]
    grid: tuple[str, ...]  # e.g. ("h", "w"): tokens are (B, h, w)

    def __init__(
        self,
        channels: int,
        num_codes: int,
        code_dim: int,
        groups: int,
        beta: float,
        ema: bool = True,
    ) -> None:
        super().__init__()
        _validate.positive_int("channels", channels)
        _validate.positive_int("groups", groups)
        self.config = {
            "channels": channels,
            "num_codes": num_codes,
            "code_dim": code_dim,
            "groups": groups,
            "beta": beta,
        }
        self.encoder = self.encoder_class(channels, code_dim, groups)
        self.quantizer = VectorQuantizer(num_codes, code_dim, beta=beta, ema=ema)
        self.decoder = self.decoder_class(channels, code_dim, groups)

    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    def _check(self, x: object) -> torch.Tensor:
        """x in the layout the encoder takes, or a clear error."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> VQOutput:
        return self._losses(self._check(x))

    def _losses(self, x: torch.Tensor) -> VQOutput:
        """forward without the input checks, for the training loop's own batches (checking the
        value range reads it back from the device, which would stall a GPU every step)."""
        z_e = self.encoder(x)  # (B, D, *grid)
        vq = self.quantizer(z_e)  # z_q (B, D, *grid) straight-through, tokens (B, *grid)
        x_hat = self.decoder(vq.z_q)  # the shape of x
        recon_loss = F.mse_loss(x_hat, x)
        return VQOutput(
            x_hat=x_hat,
            tokens=vq.tokens,
            loss=recon_loss + vq.loss,
            recon_loss=recon_loss,
            vq_loss=vq.loss,
            perplexity=vq.perplexity,
        )

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs x → tokens (B, *grid) long. Never moves the codebook, even in training mode."""
        z_e = self.encoder(self._check(x))  # (B, D, *grid)
        rows = z_e.movedim(1, -1).reshape(-1, z_e.shape[1])  # (B·prod(grid), D): channels last
        return nearest_code(rows, self.quantizer.codebook).view(z_e.shape[0], *z_e.shape[2:])

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, *grid) long in [0, K) → reconstructions in [0, 1]."""
        tokens = _validate.tensor("tokens", tokens, shape=("B", *self.grid), dtype=torch.long)
        return self.decoder(self.quantizer.decode(tokens)).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x)): the shape of x, in [0, 1]."""
        return self.decode(self.encode(x))
