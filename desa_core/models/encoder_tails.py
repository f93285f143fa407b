"""The last block of each encoder, trainable during alignment (``DualFormerConfig.finetune_last_block``).

Alignment normally reads frozen encoder features. With ``finetune_last_block`` the DualFormer owns copies of
what comes after each encoder's penultimate Conformer block -- for the light curve the last block and the
projector (the CNN branch stays frozen), for the spectrum the last block and the final norm -- and trains
them with its objective at ``finetune_lr_factor`` times the alignment learning rate. The inputs of those
copies (:class:`PenultimateInputs`) are computed once per survey with the frozen encoders and cached, so an
epoch costs two Conformer blocks per star on top of the DualFormer.

After training, :meth:`EncoderTails.load_into` writes the fine-tuned weights into a pair of encoders, so
inference (precompute, uploads) runs the encoders the embedding was trained with
(:meth:`desa_core.rundir.RunDir.encoders`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from desa_core.models.light_curve_encoder import light_curve_tail, light_curve_tail_skeleton
from desa_core.models.spectra_encoder import spectra_tail, spectra_tail_skeleton


@dataclass
class PenultimateInputs:
    """Per star (catalogue order, zeros where a modality is missing): what the encoder tails read."""
    lc_summary: np.ndarray    # (N, c) light-curve CNN branch, time-averaged
    lc_tokens: np.ndarray     # (N, n_lc, width_lc) tokens before the last light-curve Conformer block
    spec_tokens: np.ndarray   # (N, n_spec, width_spec) tokens before the last spectra Conformer block

    def __len__(self) -> int:
        return len(self.lc_summary)

    def batch(self, idx: np.ndarray, device) -> dict:
        """Rows ``idx`` as tensors (read in sorted order: the arrays may be memory-mapped)."""
        idx = np.asarray(idx, np.int64)
        order = np.argsort(idx)
        back = np.argsort(order)
        rows = idx[order]
        return {k: torch.from_numpy(np.ascontiguousarray(np.asarray(getattr(self, k)[rows])[back],
                                                         dtype=np.float32)).to(device)
                for k in ("lc_summary", "lc_tokens", "spec_tokens")}


class EncoderTails(nn.Module):
    """Trainable copies of the encoders' tails; ``features(batch)`` -> (z_spec, z_lc)."""

    def __init__(self, lc_tail: nn.ModuleDict, spec_tail: nn.ModuleDict):
        super().__init__()
        self.lc = lc_tail
        self.spec = spec_tail

    @classmethod
    def from_encoders(cls, lc_encoder, spec_encoder) -> "EncoderTails":
        """Copies of the (pretrained) encoders' tails: the starting point of fine-tuning."""
        return cls(copy.deepcopy(lc_encoder.tail_modules()), copy.deepcopy(spec_encoder.tail_modules()))

    @classmethod
    def skeleton(cls, lc_cfg, spec_cfg) -> "EncoderTails":
        """Tails shaped by the encoder configs (to load a trained DualFormer's state into)."""
        return cls(light_curve_tail_skeleton(lc_cfg), spectra_tail_skeleton(spec_cfg))

    def features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return (spectra_tail(self.spec, batch["spec_tokens"]),
                light_curve_tail(self.lc, batch["lc_summary"], batch["lc_tokens"]))

    def load_into(self, lc_encoder, spec_encoder) -> None:
        """Overwrite the encoders' tails with these weights (in place)."""
        lc_encoder.tail_modules().load_state_dict(self.lc.state_dict())
        spec_encoder.tail_modules().load_state_dict(self.spec.state_dict())
