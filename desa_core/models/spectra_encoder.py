"""Spectra encoder (method section 3) and its hybrid pre-training objective.

Input (B, 1, 4096) from :func:`desa_core.data.preprocess.preprocess_spectrum`. A CNN stem with max-pooling
turns pixels into tokens (4096 / prod(stem_pools)), a Conformer with rotary attention on half of each head
mixes them, and the mean over tokens is the ``width``-d spectra feature.

:class:`SpectraPretrainer`: masked-pixel reconstruction (``mask_fraction`` of pixels zeroed) by a
transposed-CNN decoder that reads the *Conformer output tokens* -- so the whole encoder learns from the
reconstruction (the public code's decoder reads the CNN stem, leaving the Conformer to the regression term
alone) -- plus quantile regression of Teff/5778, logg, [Fe/H]; each sample is weighted by its S/N.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from desa_core.models.config import SpectraEncoderConfig
from desa_core.models.layers import ConformerBlock, pinball_loss


def _block(cfg: SpectraEncoderConfig) -> ConformerBlock:
    return ConformerBlock(cfg.width, cfg.heads, cfg.conv_kernel, cfg.ffn_mult, macaron=cfg.macaron,
                          post_norm=cfg.post_norm, rotary_fraction=cfg.rotary_fraction, dropout=cfg.dropout)


def spectra_tail_skeleton(cfg: SpectraEncoderConfig) -> nn.ModuleDict:
    """Freshly initialised modules shaped like :meth:`SpectraEncoder.tail_modules` (to load weights into)."""
    return nn.ModuleDict({"block": _block(cfg) if cfg.depth else nn.Identity(), "norm": nn.LayerNorm(cfg.width)})


class SpectraEncoder(nn.Module):
    def __init__(self, cfg: SpectraEncoderConfig):
        super().__init__()
        if len(cfg.stem_pools) != len(cfg.stem_channels):
            raise ValueError("spectra stem_pools and stem_channels must have the same length")
        self.cfg = cfg
        layers, c_in = [], 1
        for i, (c, p) in enumerate(zip(cfg.stem_channels, cfg.stem_pools)):
            stride = cfg.stem_stride if i == 0 else 1
            k = max(cfg.stem_kernel, stride)
            layers += [nn.Conv1d(c_in, c, k, stride=stride, padding=(k - stride + 1) // 2), nn.GroupNorm(1, c),
                       nn.GELU()]
            if p > 1:
                layers.append(nn.MaxPool1d(p))
            c_in = c
        self.stem = nn.Sequential(*layers)
        self.to_width = nn.Linear(c_in, cfg.width) if c_in != cfg.width else nn.Identity()
        self.conformer = nn.ModuleList(_block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)

    @property
    def out_dim(self) -> int:
        return self.cfg.width

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, L) -> tokens before the last Conformer block (B, n_tokens, width)."""
        if x.ndim != 3 or x.shape[1] != 1:
            raise ValueError(f"spectra encoder expects (B, 1, L), got {tuple(x.shape)}")
        t = self.to_width(self.stem(x).transpose(1, 2))
        for blk in self.conformer[:-1]:
            t = blk(t)
        return t

    def tail_modules(self) -> nn.ModuleDict:
        """The parts after :meth:`penultimate`: the last Conformer block (if any) and the final norm."""
        return nn.ModuleDict({"block": self.conformer[-1] if len(self.conformer) else nn.Identity(),
                              "norm": self.norm})

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, L) -> Conformer output tokens (B, n_tokens, width)."""
        tail = self.tail_modules()
        return tail["norm"](tail["block"](self.penultimate(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spectra_tail(self.tail_modules(), self.penultimate(x))


def spectra_tail(tail: nn.ModuleDict, tokens: torch.Tensor) -> torch.Tensor:
    """The spectra encoder after :meth:`SpectraEncoder.penultimate`: last block, norm, mean over tokens."""
    return tail["norm"](tail["block"](tokens)).mean(1)


class SpectraDecoder(nn.Module):
    """Transposed CNN: tokens (B, n, width) -> pixels (B, 1, L); each stage doubles the length, and the last
    conv emits ``decoder_shuffle`` pixels per position (1-D pixel shuffle)."""

    def __init__(self, cfg: SpectraEncoderConfig):
        super().__init__()
        self.shuffle = int(cfg.decoder_shuffle)
        factor = cfg.stem_stride * int(np.prod(cfg.stem_pools))
        if factor % self.shuffle:
            raise ValueError(f"decoder_shuffle {self.shuffle} must divide the stem downsampling {factor}")
        n_up = int(round(np.log2(factor // self.shuffle)))
        if 2 ** n_up * self.shuffle != factor:
            raise ValueError(f"stem downsampling {factor} / decoder_shuffle must be a power of 2")
        chans = list(cfg.decoder_channels)[:n_up]
        chans += [chans[-1] if chans else cfg.width] * (n_up - len(chans))
        layers, c_in = [], cfg.width
        for c in chans:
            layers += [nn.ConvTranspose1d(c_in, c, 4, stride=2, padding=1), nn.GroupNorm(1, c), nn.GELU()]
            c_in = c
        layers.append(nn.Conv1d(c_in, self.shuffle, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        y = self.net(tokens.transpose(1, 2))                     # (B, shuffle, n)
        return y.transpose(1, 2).reshape(y.shape[0], 1, -1)       # (B, 1, n * shuffle)


class SpectraPretrainer(nn.Module):
    """Encoder + decoder + (Teff, logg, [Fe/H]) quantile head; ``forward(x, targets, snr, generator)`` -> loss
    dict (targets: (B, 3) = Teff/5778, logg, [Fe/H]; NaN targets are skipped)."""

    def __init__(self, cfg: SpectraEncoderConfig, quantiles=(0.1, 0.25, 0.5, 0.75, 0.9),
                 ssl_weight: float = 0.5, regression_weight: float = 0.5, mask_fraction: float = 0.15,
                 snr_cap: float = 100.0):
        super().__init__()
        self.encoder = SpectraEncoder(cfg)
        self.decoder = SpectraDecoder(cfg)
        self.quantiles = tuple(quantiles)
        self.n_targets = 3
        self.regressor = nn.Linear(cfg.width, self.n_targets * len(self.quantiles))
        self.ssl_weight, self.regression_weight = ssl_weight, regression_weight
        self.mask_fraction, self.snr_cap = mask_fraction, snr_cap

    def forward(self, x: torch.Tensor, targets: torch.Tensor, snr: torch.Tensor,
             generator: torch.Generator | None = None) -> dict:
        b, _, n = x.shape
        mask = torch.rand(b, 1, n, generator=generator, device="cpu").to(x.device) < self.mask_fraction
        tokens = self.encoder.tokens(x.masked_fill(mask, 0.0))
        recon = self.decoder(tokens)[..., :n]
        w = snr.clamp(0, self.snr_cap)
        w = w / w.mean().clamp_min(1e-8)
        # Zero-padding and masked input pixels are exactly 0 after preprocessing: do not ask to reconstruct them.
        real = mask & (x != 0)
        per = ((recon - x) ** 2 * real).sum((1, 2)) / real.sum((1, 2)).clamp_min(1)
        rec = (per * w).sum() / w.sum().clamp_min(1e-8)
        pred = self.regressor(tokens.mean(1)).view(b, self.n_targets, len(self.quantiles))
        reg = pinball_loss(pred, targets, self.quantiles, weight=w)
        return {"loss": self.ssl_weight * rec + self.regression_weight * reg, "reconstruction": rec,
                "regression": reg}
