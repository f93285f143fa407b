"""DualFormer: aligns frozen spectra and light-curve features; its eigenbasis gives the DESA embedding.

Method section 4, label-free by default:

- each feature vector is read as a sequence of scalar tokens, lifted by the paper's one shared
  ``Linear(1 -> dim)`` (``token_lifting='shared'``) or by a weight and a bias per feature, ``z_i w_i + b_i``
  (``'per_feature'``, the `small` config); rotary positions run over the feature index;
- pre-norm blocks; for the spectra stream ``a_s = Out_s(Attn(q_s, k_l, v_l) + Attn(q_s, k_s, v_s))`` (one
  query for the cross and the self term), symmetric for the light-curve stream; residual; a separate FFN per
  stream. ``attention_type`` 'cross' / 'self' keep one of the two terms (ablations);
- final LayerNorm per token, then mean pooling -> h_s, h_l (``pooling='norm_then_pool'``, the paper), or mean
  pooling, then LayerNorm (``'pool_then_norm'``, the `small` config): a LayerNorm of one lifted scalar is
  nearly sign(z_i), so the paper's order loses what the features carry (docs/model.md);
- one bias-free square matrix A (symmetric by default: A = (W + W^T)/2), p_s = A h_s, p_l = A^T h_l
  ('transpose') or A h_l ('same');
- loss (:func:`alignment_loss`): ``0.5 mean_b (h_s^T A h_s - h_l^T A h_l)^2 + 0.5 L_cov`` with L_cov the
  squared off-diagonal batch covariance of p_s and of p_l divided by the dimension; optional
  cross-covariance and variance (std hinge) terms behind flags (dead / off in the public code);
- ``objective='comm'`` replaces that loss by CoMM (Dufumier et al. 2025; :func:`objective_loss`): a projection
  MLP g on the fused h_s + h_l, InfoNCE between two augmented views and between each single-modality view and
  them; the eigenbasis of A is then only a fixed rotation of the fused representation;
- after training :meth:`DualFormer.finalize` eigendecomposes A (its symmetric part, which is all the loss
  sees), sorts by |eigenvalue|, and ``embedding = (h_s + h_l) V``.

A star that lacks a modality gets a learned placeholder feature vector in that stream; training hides one
modality of a random ``modality_dropout`` share of stars so the placeholder stream learns to impute from the
other stream through cross-attention. Input features are standardised with training-set statistics stored
as buffers, so the model carries everything it needs.

``label_conditioned=True`` is the named leakage ablation of the public code (section 5.1): catalogue labels
are appended to h_s and h_l before the projection. It is never the default.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from desa_core.models.config import CONDITIONING_LABELS, DualFormerConfig
from desa_core.models.layers import RotaryEmbedding, apply_rotary


def conditioning_labels(catalog, rows=None) -> np.ndarray:
    """Catalogue labels of the named label_conditioned ablation, (N, 6) float32, NaN where unknown."""
    rows = np.arange(len(catalog)) if rows is None else np.asarray(rows, dtype=np.int64)
    cols = [catalog[c].to_numpy(np.float64)[rows] if c in catalog.columns else np.full(len(rows), np.nan)
            for c in CONDITIONING_LABELS]
    return np.stack(cols, axis=1).astype(np.float32)


class DualBlock(nn.Module):
    def __init__(self, cfg: DualFormerConfig):
        super().__init__()
        d = cfg.dim
        self.cfg = cfg
        self.heads, self.head_dim = cfg.heads, d // cfg.heads
        self.norm1 = nn.ModuleDict({s: nn.LayerNorm(d) for s in "sl"})
        self.qkv = nn.ModuleDict({s: nn.Linear(d, 3 * d, bias=False) for s in "sl"})
        self.out = nn.ModuleDict({s: nn.Linear(d, d) for s in "sl"})
        self.norm2 = nn.ModuleDict({s: nn.LayerNorm(d) for s in "sl"})
        self.ffn = nn.ModuleDict({s: nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(), nn.Dropout(cfg.dropout),
                                                   nn.Linear(cfg.ffn_dim, d)) for s in "sl"})
        self.rotary = RotaryEmbedding(self.head_dim)
        self.drop = nn.Dropout(cfg.dropout)

    def _heads(self, x, which):
        b, n, _ = x.shape
        q, k, v = self.qkv[which](self.norm1[which](x)).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = self.rotary(n, x.device, x.dtype)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward(self, xs: torch.Tensor, xl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qs, ks, vs = self._heads(xs, "s")
        ql, kl, vl = self._heads(xl, "l")
        t = self.cfg.attention_type
        p = self.cfg.dropout if self.training else 0.0

        def mix(q, k_self, v_self, k_other, v_other):
            y = 0
            if t in ("cross_self", "cross"):
                y = y + F.scaled_dot_product_attention(q, k_other, v_other, dropout_p=p)
            if t in ("cross_self", "self"):
                y = y + F.scaled_dot_product_attention(q, k_self, v_self, dropout_p=p)
            b, h, n, e = y.shape
            return y.transpose(1, 2).reshape(b, n, h * e)

        xs = xs + self.drop(self.out["s"](mix(qs, ks, vs, kl, vl)))
        xl = xl + self.drop(self.out["l"](mix(ql, kl, vl, ks, vs)))
        xs = xs + self.drop(self.ffn["s"](self.norm2["s"](xs)))
        xl = xl + self.drop(self.ffn["l"](self.norm2["l"](xl)))
        return xs, xl


class DualFormer(nn.Module):
    """forward(z_spec, z_lc, has_spec, has_lc, labels=None) -> dict h_s, h_l, p_s, p_l (+ 'embedding' once
    finalised)."""

    def __init__(self, cfg: DualFormerConfig, d_spec: int, d_lc: int, tails: nn.Module | None = None):
        super().__init__()
        self.cfg, self.d_spec, self.d_lc = cfg, int(d_spec), int(d_lc)
        if cfg.finetune_last_block and tails is None:
            raise ValueError("finetune_last_block: the DualFormer needs the encoder tails it fine-tunes "
                             "(EncoderTails.from_encoders, or EncoderTails.skeleton to load a trained one)")
        if tails is not None and not cfg.finetune_last_block:
            raise ValueError("encoder tails given to a DualFormer without finetune_last_block")
        # The encoders' last blocks, trained with the objective (finetune_last_block); they turn
        # PenultimateInputs into the z_spec / z_lc this model reads (desa_core/models/encoder_tails.py).
        self.tails = tails
        self.n_labels = len(CONDITIONING_LABELS) if cfg.label_conditioned else 0
        if cfg.token_lifting == "shared":
            self.lift = nn.Linear(1, cfg.dim)
        else:
            # Per-feature weight and bias; the scale matches nn.Linear(1, dim)'s default U(-1, 1) init.
            self.lift_weight = nn.ParameterDict({"s": nn.Parameter(torch.empty(self.d_spec, cfg.dim).uniform_(-1, 1)),
                                                 "l": nn.Parameter(torch.empty(self.d_lc, cfg.dim).uniform_(-1, 1))})
            self.lift_bias = nn.ParameterDict({"s": nn.Parameter(torch.empty(self.d_spec, cfg.dim).uniform_(-1, 1)),
                                               "l": nn.Parameter(torch.empty(self.d_lc, cfg.dim).uniform_(-1, 1))})
        self.blocks = nn.ModuleList(DualBlock(cfg) for _ in range(cfg.depth))
        self.final_norm = nn.ModuleDict({s: nn.LayerNorm(cfg.dim) for s in "sl"})
        self.placeholder_spec = nn.Parameter(torch.zeros(self.d_spec))
        self.placeholder_lc = nn.Parameter(torch.zeros(self.d_lc))
        n = cfg.dim + self.n_labels
        # Near-identity start: p_s ~ h_s, so the covariance term is informative from the first step.
        self.A_weight = nn.Parameter(torch.eye(n) + 0.01 * torch.randn(n, n))
        for name, d in (("spec", self.d_spec), ("lc", self.d_lc), ("label", self.n_labels)):
            self.register_buffer(f"{name}_mean", torch.zeros(d))
            self.register_buffer(f"{name}_std", torch.ones(d))
        self.register_buffer("eigenvalues", torch.zeros(n))
        self.register_buffer("eigenvectors", torch.eye(n))
        self.register_buffer("finalized", torch.zeros((), dtype=torch.bool))
        if cfg.objective == "comm":
            self.comm_head = nn.Sequential(nn.Linear(n, n), nn.GELU(), nn.Linear(n, n))
        if cfg.objective == "masked":
            # A masked token is the mask vector plus a learned vector of its feature's position: the
            # prediction must know which feature it fills in (rotary positions alone are relative).
            self.mask_token = nn.ParameterDict({s: nn.Parameter(0.02 * torch.randn(cfg.dim)) for s in "sl"})
            self.mask_position = nn.ParameterDict({"s": nn.Parameter(0.02 * torch.randn(self.d_spec, cfg.dim)),
                                                   "l": nn.Parameter(0.02 * torch.randn(self.d_lc, cfg.dim))})
            self.reconstruct = nn.ModuleDict({s: nn.Linear(cfg.dim, 1) for s in "sl"})

    @property
    def embedding_dim(self) -> int:
        return self.cfg.dim + self.n_labels

    @property
    def A(self) -> torch.Tensor:
        w = self.A_weight
        return 0.5 * (w + w.T) if self.cfg.symmetric_A else w

    def set_normalisation(self, z_spec, z_lc, labels=None) -> None:
        """Store per-feature mean/std of the training features (and labels) used to standardise inputs."""
        for name, z in (("spec", z_spec), ("lc", z_lc), ("label", labels)):
            if z is None or len(z) == 0:
                continue
            z = torch.as_tensor(z, dtype=torch.float32)
            mu = torch.nanmean(z, 0)
            sd = torch.sqrt(torch.nanmean((z - mu) ** 2, 0))
            getattr(self, f"{name}_mean").copy_(torch.nan_to_num(mu))
            getattr(self, f"{name}_std").copy_(torch.where(torch.isfinite(sd) & (sd > 1e-6), sd, torch.ones_like(sd)))

    def _stream(self, which, z, has, mean, std, placeholder):
        z = (z - mean) / std
        z = torch.where(has[:, None], z, placeholder[None, :].to(z.dtype))
        if self.cfg.token_lifting == "shared":
            return self.lift(z.unsqueeze(-1))
        return z.unsqueeze(-1) * self.lift_weight[which] + self.lift_bias[which]

    def _pool(self, which, x):
        if self.cfg.pooling == "pool_then_norm":
            return self.final_norm[which](x.mean(1))
        return self.final_norm[which](x).mean(1)

    def forward(self, z_spec: torch.Tensor, z_lc: torch.Tensor, has_spec: torch.Tensor, has_lc: torch.Tensor,
                labels: torch.Tensor | None = None, mask_spec: torch.Tensor | None = None,
                mask_lc: torch.Tensor | None = None) -> dict:
        """``mask_spec`` / ``mask_lc`` (B, d) bool, objective 'masked' only: tokens replaced by the mask token;
        the outputs then carry 'recon_s' / 'recon_l', the predicted standardised features."""
        xs = self._stream("s", z_spec, has_spec, self.spec_mean, self.spec_std, self.placeholder_spec)
        xl = self._stream("l", z_lc, has_lc, self.lc_mean, self.lc_std, self.placeholder_lc)
        masked = mask_spec is not None or mask_lc is not None
        if masked:
            if self.cfg.objective != "masked":
                raise ValueError("feature masks are for the 'masked' objective")
            if mask_spec is not None:
                xs = torch.where(mask_spec[..., None], (self.mask_token["s"] + self.mask_position["s"]).to(xs.dtype), xs)
            if mask_lc is not None:
                xl = torch.where(mask_lc[..., None], (self.mask_token["l"] + self.mask_position["l"]).to(xl.dtype), xl)
        for blk in self.blocks:
            xs, xl = blk(xs, xl)
        recon = {"recon_s": self.reconstruct["s"](xs).squeeze(-1),
                 "recon_l": self.reconstruct["l"](xl).squeeze(-1)} if masked else {}
        h_s, h_l = self._pool("s", xs), self._pool("l", xl)
        if self.n_labels:
            if labels is None:
                raise ValueError("this DualFormer is the label_conditioned ablation: it needs labels "
                                 f"{CONDITIONING_LABELS}")
            lab = torch.nan_to_num((labels.to(h_s.dtype) - self.label_mean) / self.label_std)
            h_s, h_l = torch.cat([h_s, lab], -1), torch.cat([h_l, lab], -1)
        A = self.A
        p_s = h_s @ A.T                                                   # A h_s
        p_l = h_l @ A if self.cfg.projection_type == "transpose" else h_l @ A.T
        out = {"h_s": h_s, "h_l": h_l, "p_s": p_s, "p_l": p_l}
        if self.cfg.objective == "comm":
            out["g"] = self.comm_head(h_s + h_l)
        out.update(recon)
        if bool(self.finalized):
            out["embedding"] = (h_s + h_l) @ self.eigenvectors
        return out

    @torch.no_grad()
    def finalize(self) -> None:
        """Eigendecompose the symmetric part of A (what the loss sees); sort by |eigenvalue|, descending."""
        A = self.A.detach().double()
        vals, vecs = torch.linalg.eigh(0.5 * (A + A.T))
        order = torch.argsort(vals.abs(), descending=True)
        vecs = vecs[:, order]
        # Fix each eigenvector's sign (largest component positive) so the embedding is reproducible.
        idx = vecs.abs().argmax(0)
        vecs = vecs * torch.sign(vecs[idx, torch.arange(vecs.shape[1])])
        self.eigenvalues.copy_(vals[order].float())
        self.eigenvectors.copy_(vecs.float())
        self.finalized.fill_(True)


def _offdiag_sq(c: torch.Tensor) -> torch.Tensor:
    return (c ** 2).sum() - (torch.diagonal(c) ** 2).sum()


def alignment_loss(out: dict, cfg: DualFormerConfig) -> dict:
    """The DESA alignment loss on a batch of DualFormer outputs; returns the total and its terms.

    duality: mean_b (h_s^T A h_s - h_l^T A h_l)^2 -- zero when the two quadratic forms agree per star.
    cov: sum over p in (p_s, p_l) of the squared off-diagonal entries of the batch covariance / dim.
    cross_cov (flag): squared off-diagonal entries of the p_s-p_l cross-covariance / dim.
    variance (flag): mean hinge max(0, 1 - std) over the dimensions of p_s and p_l (VICReg, Bardes et al. 2022).

    >>> o = model(z_s, z_l, has_s, has_l); L = alignment_loss(o, cfg)["loss"]
    """
    h_s, h_l, p_s, p_l = out["h_s"], out["h_l"], out["p_s"], out["p_l"]
    b, d = p_s.shape
    if b < 2:
        raise ValueError("alignment_loss needs a batch of at least 2 stars (it uses batch covariances)")
    # h^T A h = h . p for both streams (p_l = A^T h_l or A h_l: the same quadratic form), so the loss needs
    # only the forward outputs -- which keeps it inside what DDP synchronises.
    q_s = (h_s * p_s).sum(-1)
    q_l = (h_l * p_l).sum(-1)
    duality = ((q_s - q_l) ** 2).mean()
    cs, cl = p_s - p_s.mean(0), p_l - p_l.mean(0)
    cov = (_offdiag_sq(cs.T @ cs / (b - 1)) + _offdiag_sq(cl.T @ cl / (b - 1))) / d
    terms = {"duality": duality, "cov": cov}
    loss = cfg.duality_weight * duality + cfg.cov_weight * cov
    if cfg.cross_cov:
        cross = _offdiag_sq(cs.T @ cl / (b - 1)) / d
        terms["cross_cov"] = cross
        loss = loss + cfg.cross_cov_weight * cross
    if cfg.variance_term:
        var = 0.5 * (F.relu(1 - torch.sqrt(cs.var(0) + 1e-4)).mean() + F.relu(1 - torch.sqrt(cl.var(0) + 1e-4)).mean())
        terms["variance"] = var
        loss = loss + cfg.variance_weight * var
    if cfg.contrastive_term:
        # Symmetric InfoNCE (CLIP, Radford et al. 2021): the spectrum of a star must pick out that star's light
        # curve among the batch and vice versa. Unlike the duality term it cannot be met by collapse.
        zs, zl = F.normalize(p_s, dim=-1), F.normalize(p_l, dim=-1)
        logits = zs @ zl.T / cfg.contrastive_temperature
        target = torch.arange(b, device=logits.device)
        nce = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        terms["contrastive"] = nce
        loss = loss + cfg.contrastive_weight * nce
    terms["loss"] = loss
    return terms


def _info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b`` (the other rows of the batch are negatives)."""
    za, zb = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = za @ zb.T / temperature
    target = torch.arange(len(a), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _augment(model, z: torch.Tensor, which: str, cfg: DualFormerConfig, gen: torch.Generator) -> torch.Tensor:
    """One augmented view of raw features: Gaussian noise (comm_noise train stds) and a random share of
    features reset to their train mean."""
    net = getattr(model, "module", model)
    mean, std = (net.spec_mean, net.spec_std) if which == "s" else (net.lc_mean, net.lc_std)
    noise = torch.randn(z.shape, generator=gen).to(z.device, z.dtype)
    drop = (torch.rand(z.shape, generator=gen) < cfg.comm_feature_drop).to(z.device)
    z = z + cfg.comm_noise * std * noise
    return torch.where(drop, mean.expand_as(z), z)


def objective_loss(model, batch: dict, cfg: DualFormerConfig, gen: torch.Generator) -> dict:
    """The alignment objective ``cfg.objective`` on one batch (``batch``: the forward's keyword arguments);
    returns the total under 'loss' and its terms, as floats' tensors. ``model`` may be DDP-wrapped: every
    objective makes exactly one forward call.

    'desa_paper': :func:`alignment_loss` of the forward outputs.
    'masked': see :func:`_masked_loss`; 'shared_unique': see :func:`_shared_unique_loss`.
    'comm': the batch is stacked four times -- two augmented views with both modalities (v1, v2), v1 with the
    light curve hidden (spectrum-only view), v2 with the spectrum hidden (light-curve-only view) -- and
    ``L = NCE(g1, g2) + mean over unimodal views u of (NCE(g_u, g1) + NCE(g_u, g2)) / 2`` over the stars that
    have both modalities (all stars for the first term), g = the projection head of h_s + h_l.
    """
    if cfg.objective == "desa_paper":
        out = model(**batch)
        return alignment_loss({k: v.float() for k, v in out.items()}, cfg)
    if cfg.objective == "masked":
        return _masked_loss(model, batch, cfg, gen)
    if cfg.objective == "shared_unique":
        return _shared_unique_loss(model, batch, cfg, gen)
    if cfg.objective != "comm":
        raise ValueError(f"unknown objective {cfg.objective!r}")
    b = len(batch["z_spec"])
    both = batch["has_spec"] & batch["has_lc"]
    none = torch.zeros_like(both)
    v1s, v2s = _augment(model, batch["z_spec"], "s", cfg, gen), _augment(model, batch["z_spec"], "s", cfg, gen)
    v1l, v2l = _augment(model, batch["z_lc"], "l", cfg, gen), _augment(model, batch["z_lc"], "l", cfg, gen)
    stacked = {"z_spec": torch.cat([v1s, v2s, v1s, v2s]), "z_lc": torch.cat([v1l, v2l, v1l, v2l]),
               "has_spec": torch.cat([batch["has_spec"], batch["has_spec"], batch["has_spec"], none]),
               "has_lc": torch.cat([batch["has_lc"], batch["has_lc"], none, batch["has_lc"]])}
    if "labels" in batch:
        stacked["labels"] = torch.cat([batch["labels"]] * 4)
    g = model(**stacked)["g"].float()
    g1, g2, g_spec, g_lc = g[:b], g[b:2 * b], g[2 * b:3 * b], g[3 * b:]
    t = cfg.comm_temperature
    fused = _info_nce(g1, g2, t)
    terms = {"fused": fused}
    loss = fused
    if int(both.sum()) >= 2:
        uni = 0.5 * (0.5 * (_info_nce(g_spec[both], g1[both], t) + _info_nce(g_spec[both], g2[both], t))
                     + 0.5 * (_info_nce(g_lc[both], g1[both], t) + _info_nce(g_lc[both], g2[both], t)))
        terms["unimodal"] = uni
        loss = loss + uni
    terms["loss"] = loss
    return terms


def _masked_loss(model, batch: dict, cfg: DualFormerConfig, gen: torch.Generator) -> dict:
    """Cross-modal masked-feature prediction: ``mask_ratio`` of each present modality's tokens are masked per
    star; MSE between the predicted and the true standardised features at the masked positions (per modality,
    then averaged), so a star's spectrum helps fill in its light curve's hidden features and vice versa."""
    net = getattr(model, "module", model)
    z_s, z_l = batch["z_spec"], batch["z_lc"]
    m_s = (torch.rand(z_s.shape, generator=gen) < cfg.mask_ratio).to(z_s.device) & batch["has_spec"][:, None]
    m_l = (torch.rand(z_l.shape, generator=gen) < cfg.mask_ratio).to(z_l.device) & batch["has_lc"][:, None]
    out = model(**batch, mask_spec=m_s, mask_lc=m_l)
    terms, parts = {}, []
    for name, z, m, mean, std, key in (("spectrum", z_s, m_s, net.spec_mean, net.spec_std, "recon_s"),
                                       ("light_curve", z_l, m_l, net.lc_mean, net.lc_std, "recon_l")):
        if m.any():
            target = (z - mean) / std
            err = ((out[key].float() - target.float()) ** 2)[m].mean()
            terms[f"recon_{name}"] = err
            parts.append(err)
    loss = torch.stack(parts).mean() if parts else out["h_s"].float().sum() * 0.0
    terms["loss"] = loss
    return terms


def _barlow(a: torch.Tensor, b: torch.Tensor, offdiag: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(on-diagonal, off-diagonal) Barlow Twins terms of the batch cross-correlation of ``a`` and ``b``."""
    n = len(a)
    za = (a - a.mean(0)) / (a.std(0) + 1e-5)
    zb = (b - b.mean(0)) / (b.std(0) + 1e-5)
    c = za.T @ zb / (n - 1)
    on = ((1 - torch.diagonal(c)) ** 2).sum()
    return on, offdiag * _offdiag_sq(c)


def _shared_unique_loss(model, batch: dict, cfg: DualFormerConfig, gen: torch.Generator) -> dict:
    """DeCUR-style common / unique decoupling (Wang et al., ECCV 2024) of h_s and h_l, over stars with both
    modalities; the batch is stacked twice (two augmented views, one forward call).

    cross-modal, view 1: the first ``shared_fraction`` dimensions (common) -- diagonal of corr(h_s, h_l) to 1,
    off-diagonal to 0 (Barlow Twins); the remaining (unique) dimensions -- diagonal to 0;
    intra-modal: Barlow Twins between the two views of h_s and of h_l (all dimensions).
    Every term is divided by the number of dimensions it covers."""
    b = len(batch["z_spec"])
    both = batch["has_spec"] & batch["has_lc"]
    stacked = {"z_spec": torch.cat([_augment(model, batch["z_spec"], "s", cfg, gen),
                                    _augment(model, batch["z_spec"], "s", cfg, gen)]),
               "z_lc": torch.cat([_augment(model, batch["z_lc"], "l", cfg, gen),
                                  _augment(model, batch["z_lc"], "l", cfg, gen)]),
               "has_spec": torch.cat([batch["has_spec"]] * 2), "has_lc": torch.cat([batch["has_lc"]] * 2)}
    out = model(**stacked)
    h_s, h_l = out["h_s"].float(), out["h_l"].float()
    d = h_s.shape[1]
    c = max(1, int(round(cfg.shared_fraction * d)))
    w = cfg.barlow_offdiag_weight
    s1, s2, l1, l2 = h_s[:b], h_s[b:], h_l[:b], h_l[b:]
    terms = {}
    loss = h_s.sum() * 0.0
    if int(both.sum()) >= 4:
        on, off = _barlow(s1[both, :c], l1[both, :c], w)
        terms["common"] = (on + off) / c
        za = (s1[both, c:] - s1[both, c:].mean(0)) / (s1[both, c:].std(0) + 1e-5)
        zb = (l1[both, c:] - l1[both, c:].mean(0)) / (l1[both, c:].std(0) + 1e-5)
        terms["unique"] = (torch.diagonal(za.T @ zb / (int(both.sum()) - 1)) ** 2).sum() / max(d - c, 1)
        loss = loss + terms["common"] + terms["unique"]
    for name, (x1, x2, has) in {"intra_spectrum": (s1, s2, batch["has_spec"]),
                                "intra_light_curve": (l1, l2, batch["has_lc"])}.items():
        if int(has.sum()) >= 4:
            on, off = _barlow(x1[has], x2[has], w)
            terms[name] = (on + off) / d
            loss = loss + terms[name]
    terms["loss"] = loss
    return terms
