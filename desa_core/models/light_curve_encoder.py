"""Light-curve encoder (method section 3) and its hybrid pre-training objective.

Input: (B, 4, L) channels from :func:`desa_core.data.preprocess.light_curve_channels`
[flux at log L, z-scored flux, ACF, log|FFT|].

- branch 1: 1-D CNN with sine activations and max-pooling on [ACF, FFT], time-averaged;
- branch 2: "Astroconformer" on the two flux channels: patch embedding (kernel = stride = ``patch``), then
  post-norm Conformer layers (rotary self-attention + depthwise conv), mean-pooled;
- concatenation -> 3-layer projector -> ``out_dim`` light-curve feature.

:class:`LightCurvePretrainer` adds the SimSiam predictor (Chen & He 2021) and a quantile head for Prot / 70 d;
the loss is ``ssl_weight * SimSiam + regression_weight * pinball`` (0.5/0.5; the public script set the SSL
weight to 0 by accident).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from desa_core.models.config import LightCurveEncoderConfig
from desa_core.models.layers import ConformerBlock, pinball_loss


class Sine(nn.Module):
    def __init__(self, w0: float = 1.0):
        super().__init__()
        self.w0 = w0

    def forward(self, x):
        return torch.sin(self.w0 * x)


def _block(cfg: LightCurveEncoderConfig) -> ConformerBlock:
    return ConformerBlock(cfg.width, cfg.heads, cfg.conv_kernel, cfg.ffn_mult, macaron=False, post_norm=cfg.post_norm,
                          rotary_fraction=cfg.rotary_fraction, dropout=cfg.dropout)


def _projector(cfg: LightCurveEncoderConfig) -> nn.Sequential:
    d, h = cfg.cnn_channels[-1] + cfg.width, cfg.projector_hidden
    return nn.Sequential(nn.Linear(d, h), nn.LayerNorm(h), nn.GELU(), nn.Linear(h, h), nn.LayerNorm(h), nn.GELU(),
                         nn.Linear(h, cfg.out_dim))


def light_curve_tail_skeleton(cfg: LightCurveEncoderConfig) -> nn.ModuleDict:
    """Freshly initialised modules shaped like :meth:`LightCurveEncoder.tail_modules` (to load weights into)."""
    return nn.ModuleDict({"block": _block(cfg) if cfg.depth else nn.Identity(), "projector": _projector(cfg)})


class LightCurveEncoder(nn.Module):
    def __init__(self, cfg: LightCurveEncoderConfig):
        super().__init__()
        self.cfg = cfg
        layers, c_in = [], 2
        for c in cfg.cnn_channels:
            layers += [nn.Conv1d(c_in, c, cfg.cnn_kernel, padding=cfg.cnn_kernel // 2), nn.GroupNorm(1, c),
                       Sine(cfg.cnn_sine_w0), nn.MaxPool1d(2, ceil_mode=True)]
            c_in = c
        self.cnn = nn.Sequential(*layers)
        self.patch = nn.Conv1d(2, cfg.width, cfg.patch, stride=cfg.patch)
        self.conformer = nn.ModuleList(_block(cfg) for _ in range(cfg.depth))
        self.projector = _projector(cfg)

    @property
    def out_dim(self) -> int:
        return self.cfg.out_dim

    def penultimate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 4, L) -> (CNN branch summary (B, c), tokens before the last Conformer block (B, n, width)):
        what :func:`light_curve_tail` finishes (alignment's ``finetune_last_block`` caches these)."""
        if x.ndim != 3 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"light-curve encoder expects (B, {self.cfg.in_channels}, L), got {tuple(x.shape)}")
        a = self.cnn(x[:, 2:4]).mean(-1)
        t = self.patch(x[:, 0:2]).transpose(1, 2)
        for blk in self.conformer[:-1]:
            t = blk(t)
        return a, t

    def tail_modules(self) -> nn.ModuleDict:
        """The parts after :meth:`penultimate`: the last Conformer block (if any) and the projector."""
        return nn.ModuleDict({"block": self.conformer[-1] if len(self.conformer) else nn.Identity(),
                              "projector": self.projector})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return light_curve_tail(self.tail_modules(), *self.penultimate(x))


def light_curve_tail(tail: nn.ModuleDict, summary: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The light-curve encoder after :meth:`LightCurveEncoder.penultimate`: last block, mean over tokens,
    concatenation with the CNN summary, projector."""
    return tail["projector"](torch.cat([summary, tail["block"](tokens).mean(1)], dim=-1))


def simsiam_loss(p1, z1, p2, z2) -> torch.Tensor:
    """Symmetric negative cosine with stop-gradient on the targets (Chen & He 2021); in [-1, 1]."""
    return -0.5 * (F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
                   + F.cosine_similarity(p2, z1.detach(), dim=-1).mean())


class LightCurvePretrainer(nn.Module):
    """Encoder + SimSiam predictor + Prot quantile head; ``forward(view1, view2, prot_norm)`` -> loss dict.

    The loss is the forward pass so DistributedDataParallel sees (and synchronises) every parameter.
    """

    def __init__(self, cfg: LightCurveEncoderConfig, quantiles=(0.1, 0.25, 0.5, 0.75, 0.9),
                 ssl_weight: float = 0.5, regression_weight: float = 0.5):
        super().__init__()
        self.encoder = LightCurveEncoder(cfg)
        d = cfg.out_dim
        self.predictor = nn.Sequential(nn.Linear(d, cfg.predictor_hidden), nn.LayerNorm(cfg.predictor_hidden),
                                       nn.GELU(), nn.Linear(cfg.predictor_hidden, d))
        self.quantiles = tuple(quantiles)
        self.regressor = nn.Linear(d, len(self.quantiles))
        self.ssl_weight, self.regression_weight = ssl_weight, regression_weight

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, prot_norm: torch.Tensor) -> dict:
        z1, z2 = self.encoder(view1), self.encoder(view2)
        ssl = simsiam_loss(self.predictor(z1), z1, self.predictor(z2), z2)
        target = prot_norm.reshape(-1, 1)
        reg = 0.5 * (pinball_loss(self.regressor(z1).unsqueeze(1), target, self.quantiles)
                     + pinball_loss(self.regressor(z2).unsqueeze(1), target, self.quantiles))
        return {"loss": self.ssl_weight * ssl + self.regression_weight * reg, "ssl": ssl, "regression": reg}
