"""Shared building blocks: rotary position embedding, rotary multi-head attention, Conformer block.

Rotary embedding (Su et al. 2021, RoFormer) rotates pairs of query/key channels by position-dependent
angles, so attention scores depend on relative position; ``rotary_fraction`` < 1 rotates only the first part
of each head (the DESA spectra Conformer rotates half). The Conformer block (Gulati et al. 2020) is
[FFN/2] -> self-attention -> convolution module -> FFN, pre-norm by default, post-norm for the
light-curve Astroconformer; switches are constructor flags, not subclasses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotating the first ``rot_dim`` channels of each head (``rot_dim`` even)."""

    def __init__(self, head_dim: int, fraction: float = 1.0, base: float = 10_000.0):
        super().__init__()
        rot = int(head_dim * fraction) // 2 * 2
        self.rot_dim = rot
        inv = 1.0 / (base ** (torch.arange(0, max(rot, 2), 2, dtype=torch.float32) / max(rot, 2)))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, n: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(n, device=device if device is not None else self.inv_freq.device, dtype=torch.float32)
        ang = pos[:, None] * self.inv_freq.to(pos.device)[None, :]
        ang = torch.cat([ang, ang], dim=-1)                         # (n, rot_dim)
        return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] channels of x (..., n, head_dim); the rest pass through."""
    r = cos.shape[-1]
    if r == 0:
        return x
    xr, xp = x[..., :r], x[..., r:]
    x1, x2 = xr[..., : r // 2], xr[..., r // 2:]
    rotated = torch.cat([-x2, x1], dim=-1)
    return torch.cat([xr * cos + rotated * sin, xp], dim=-1)


class RotaryAttention(nn.Module):
    """Multi-head attention with rotary positions; ``context`` (keys/values) defaults to ``x``."""

    def __init__(self, dim: int, heads: int, rotary_fraction: float = 1.0, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)
        self.rotary = RotaryEmbedding(self.head_dim, rotary_fraction)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = self.rotary(n, x.device, x.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, activation=nn.GELU):
        super().__init__(nn.Linear(dim, hidden), activation(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))


class ConvModule(nn.Module):
    """Pointwise conv + GLU -> depthwise conv -> norm -> SiLU -> pointwise conv, on (B, n, dim) tokens.

    GroupNorm(1) instead of the Conformer's BatchNorm: no running statistics, so training, evaluation and
    DDP ranks see the same normalisation.
    """

    def __init__(self, dim: int, kernel: int, dropout: float = 0.0):
        super().__init__()
        self.pw1 = nn.Conv1d(dim, 2 * dim, 1)
        self.dw = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.GroupNorm(1, dim)
        self.pw2 = nn.Conv1d(dim, dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.glu(self.pw1(x.transpose(1, 2)), dim=1)
        y = self.pw2(F.silu(self.norm(self.dw(y))))
        return self.drop(y.transpose(1, 2))


class ConformerBlock(nn.Module):
    """Conformer layer with switches: ``ffn_mult=0`` drops the FFN, ``macaron`` splits it around attention,
    ``post_norm`` normalises after each residual (Astroconformer) instead of before (pre-norm)."""

    def __init__(self, dim: int, heads: int, conv_kernel: int = 7, ffn_mult: float = 4.0, macaron: bool = False,
                 post_norm: bool = False, rotary_fraction: float = 1.0, dropout: float = 0.0):
        super().__init__()
        self.post_norm = post_norm
        hidden = int(dim * ffn_mult)
        self.ffn1 = FeedForward(dim, hidden, dropout, nn.SiLU) if (macaron and hidden) else None
        self.attn = RotaryAttention(dim, heads, rotary_fraction, dropout)
        self.conv = ConvModule(dim, conv_kernel, dropout)
        self.ffn2 = FeedForward(dim, hidden, dropout, nn.SiLU) if hidden else None
        n_sub = 2 + (self.ffn1 is not None) + (self.ffn2 is not None)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n_sub))
        self.final_norm = nn.LayerNorm(dim) if (macaron and not post_norm) else None

    def _sub(self, x, fn, norm, scale=1.0):
        if self.post_norm:
            return norm(x + scale * fn(x))
        return x + scale * fn(norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        half = 0.5 if self.ffn1 is not None else 1.0
        if self.ffn1 is not None:
            x = self._sub(x, self.ffn1, self.norms[i], half); i += 1
        x = self._sub(x, self.attn, self.norms[i]); i += 1
        x = self._sub(x, self.conv, self.norms[i]); i += 1
        if self.ffn2 is not None:
            x = self._sub(x, self.ffn2, self.norms[i], half); i += 1
        return self.final_norm(x) if self.final_norm is not None else x


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, quantiles, weight: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Quantile (pinball) loss, averaged; pred (B, K, Q), target (B, K); NaN targets are ignored.

    Koenker & Bassett (1978). ``weight`` (B,) weights samples (e.g. spectrum S/N).
    """
    q = torch.as_tensor(quantiles, dtype=pred.dtype, device=pred.device)
    valid = torch.isfinite(target)
    t = torch.where(valid, target, torch.zeros_like(target))
    err = t.unsqueeze(-1) - pred                                    # (B, K, Q)
    loss = torch.maximum(q * err, (q - 1) * err).mean(-1)           # (B, K)
    w = valid.to(pred.dtype)
    if weight is not None:
        w = w * weight.to(pred.dtype).unsqueeze(-1)
    return (loss * w).sum() / w.sum().clamp_min(1e-8)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
