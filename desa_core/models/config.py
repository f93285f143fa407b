"""Configuration of the DESA model and its training, as dataclasses; named configs live in YAML files.

    >>> cfg = get_config("small")            # desa_core/configs/small.yaml: the 2-core CPU default
    >>> cfg = get_config("paper")            # the paper's sizes (~11M + ~522M + ~10.6M parameters)
    >>> cfg = get_config("my_run.yaml")      # any YAML file with the same sections

A YAML file has the sections ``preprocess``, ``light_curve``, ``spectra``, ``dualformer`` and ``train``;
fields it leaves out keep the dataclass defaults below, unknown fields are an error naming the file.
A named config is data, not a code path: every switch the configs use is a field here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# The catalogue labels the named ``label_conditioned`` ablation appends (method section 5.1: leakage).
CONDITIONING_LABELS = ("teff", "logg", "prot_days", "feh", "radius", "ruwe")


@dataclass
class PreprocessConfig:
    """Light curve -> (4, lc_length) channels; spectrum -> (1, spec_length) pixels (method section 2)."""
    # light curve
    lc_cadence_days: float = 0.125        # model cadence: input cadences are smoothed, then binned to this
    lc_length: int = 1024                 # model points per crop (crop = lc_length * lc_cadence_days days)
    lc_smooth_days: float = 0.27          # moving-average window before binning (paper: 13 x 29.4 min)
    lc_gap_days: float = 0.5              # a gap longer than this starts a new segment (quarter) ...
    lc_abs_mag_channel: bool = True       # ... channel 0 carries log10 L_G from abs_g (ablation: False)
    abs_mag_ref: float = 4.67             # solar absolute G magnitude: log10 L_G = -0.4 (abs_g - ref)
    lc_flux_scale: float = 100.0          # channel 0 = lc_flux_scale * (flux/median - 1) + log10 L_G
    # spectrum
    spec_blue: tuple[float, float] = (3841.0, 5800.0)   # rest-frame Angstrom
    spec_red: tuple[float, float] = (5800.0, 8798.0)
    spec_log_step: float = 1e-4           # dex per pixel
    spec_length: int = 4096               # zero-padded length
    spec_median_width: int = 3
    spec_continuum_degree: int = 5
    spec_clip_sigma: float = 3.0


@dataclass
class LightCurveEncoderConfig:
    """Two branches (CNN on [ACF, FFT]; Astroconformer on the two flux channels) -> projector -> out_dim."""
    in_channels: int = 4
    cnn_channels: tuple[int, ...] = (32, 64, 128, 256, 512, 512)
    cnn_kernel: int = 5
    cnn_sine_w0: float = 1.0              # sine activation sin(w0 x)
    patch: int = 20                       # patch embedding kernel = stride
    width: int = 512
    depth: int = 5
    heads: int = 8
    conv_kernel: int = 31                 # depthwise conv in each conformer layer
    ffn_mult: float = 0.0                 # 0: no FFN in the conformer layers (Astroconformer)
    post_norm: bool = True
    rotary_fraction: float = 1.0
    projector_hidden: int = 1024
    out_dim: int = 256
    dropout: float = 0.0
    predictor_hidden: int = 128           # SimSiam predictor bottleneck (pre-training only)


@dataclass
class SpectraEncoderConfig:
    """CNN stem (with max-pooling) -> Conformer -> mean over tokens -> out_dim = width."""
    stem_channels: tuple[int, ...] = (64, 128, 256, 1024, 2048)
    stem_kernel: int = 3
    stem_stride: int = 1                  # stride of the first conv (a cheap CPU stem: fewer full-length passes)
    stem_pools: tuple[int, ...] = (2, 2, 2, 2, 2)   # stem_stride * product = spec_length / tokens
    width: int = 2048
    depth: int = 8
    heads: int = 16
    conv_kernel: int = 7
    ffn_mult: float = 2.0
    macaron: bool = False                 # two half-FFNs (Conformer paper) instead of one
    post_norm: bool = False
    rotary_fraction: float = 0.5          # rotary on half of each head
    dropout: float = 0.0
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)   # transposed-CNN decoder (pre-training only)
    decoder_shuffle: int = 1              # last layer emits this many pixels per position (1-D pixel shuffle)

    @property
    def out_dim(self) -> int:
        return self.width


OBJECTIVES = ("desa_paper", "comm", "masked", "shared_unique")


@dataclass
class DualFormerConfig:
    """The alignment transformer over frozen features (method section 4) and its loss switches."""
    dim: int = 256
    depth: int = 4
    heads: int = 8
    ffn_dim: int = 2048
    attention_type: str = "cross_self"    # 'cross_self' | 'cross' | 'self'
    projection_type: str = "transpose"    # 'transpose': p_l = A^T h_l | 'same': p_l = A h_l
    symmetric_A: bool = True              # parameterise A = (W + W^T)/2: real orthonormal eigenbasis
    duality_weight: float = 0.5
    cov_weight: float = 0.5
    cross_cov: bool = False               # off-diagonal cross-covariance of p_s and p_l (dead code upstream)
    cross_cov_weight: float = 0.5
    variance_term: bool = False           # VICReg-style std hinge on p_s and p_l (never on upstream)
    variance_weight: float = 0.5
    contrastive_term: bool = False        # cross-modal InfoNCE between p_s and p_l of the same star
    contrastive_weight: float = 1.0
    contrastive_temperature: float = 0.1
    label_conditioned: bool = False       # NAMED LEAKAGE ABLATION: append CONDITIONING_LABELS to h. Never default.
    modality_dropout: float = 0.15        # train the placeholder stream: hide one modality of some stars
    dropout: float = 0.0
    # Readout switches (docs/model.md, "DualFormer readout"). The paper (these defaults) lifts every scalar
    # with one shared Linear(1 -> dim) and LayerNorms each token before mean pooling; that loses what the
    # features carry, because a LayerNorm of z * w + b is nearly a function of sign(z) (Teff R^2 0.96 from the
    # features, 0.85 through an untrained DualFormer). The `small` config uses a weight and a bias per feature
    # (FT-Transformer, Gorishniy et al. 2021) and LayerNorm after pooling. Runs trained before these switches
    # existed have neither key in their manifest and load with these defaults, which is what they used.
    token_lifting: str = "shared"         # 'shared': Linear(1 -> dim) (paper) | 'per_feature': z_i w_i + b_i
    pooling: str = "norm_then_pool"       # 'norm_then_pool' (paper) | 'pool_then_norm'
    # What alignment optimises (desa_core/models/dualformer.py, objective_loss):
    # 'desa_paper': the paper's duality + covariance loss (with the flags above);
    # 'comm': CoMM (Dufumier et al., ICLR 2025) -- InfoNCE between the fused representations (h_s + h_l, through
    #   a projection MLP) of two augmented views of a star, plus between each single-modality view (the other
    #   modality hidden) and the fused views.
    # 'masked': cross-modal masked-feature prediction -- a share `mask_ratio` of each modality's feature tokens
    #   is replaced by a learned mask token and predicted (standardised value, MSE) from the output tokens,
    #   which see the unmasked rest of both modalities through cross-attention;
    # 'shared_unique': DeCUR-style (Wang et al., ECCV 2024) common / unique split of h -- across modalities the
    #   first `shared_fraction` of the dimensions are pulled to correlation 1 (Barlow Twins) and the rest to
    #   correlation 0; within each modality, two augmented views are pulled together (Barlow Twins). Needs
    #   attention_type 'self' (each stream reads only its own modality, as DeCUR's two encoders).
    objective: str = "desa_paper"
    # Fine-tune the last block of each encoder during alignment instead of reading frozen features
    # (desa_core/models/encoder_tails.py): the light curve's last Conformer block and projector, the spectrum's
    # last Conformer block and final norm, at finetune_lr_factor x align_lr. Any objective but 'masked', whose
    # targets are the features themselves (trainable features could make them trivially predictable).
    finetune_last_block: bool = False
    finetune_lr_factor: float = 0.1
    mask_ratio: float = 0.5
    shared_fraction: float = 0.5
    barlow_offdiag_weight: float = 0.005
    comm_temperature: float = 0.1
    comm_noise: float = 0.1               # augmentation: Gaussian noise in units of each feature's train std
    comm_feature_drop: float = 0.2        # augmentation: share of features set to their train mean per view

    def __post_init__(self):
        if self.attention_type not in ("cross_self", "cross", "self"):
            raise ValueError(f"attention_type must be cross_self, cross or self, not {self.attention_type!r}")
        if self.projection_type not in ("transpose", "same"):
            raise ValueError(f"projection_type must be transpose or same, not {self.projection_type!r}")
        if self.token_lifting not in ("per_feature", "shared"):
            raise ValueError(f"token_lifting must be per_feature or shared, not {self.token_lifting!r}")
        if self.pooling not in ("pool_then_norm", "norm_then_pool"):
            raise ValueError(f"pooling must be pool_then_norm or norm_then_pool, not {self.pooling!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")
        if self.objective == "shared_unique" and self.attention_type != "self":
            raise ValueError("objective shared_unique needs attention_type 'self' (each stream reads only its own "
                             "modality; with cross-attention 'unique' dimensions could read the other modality)")
        if self.finetune_last_block and self.objective == "masked":
            raise ValueError("finetune_last_block does not combine with objective 'masked': its targets are the "
                             "features, which fine-tuning could make constant (and so trivially predictable)")
        if not self.finetune_lr_factor > 0:
            raise ValueError(f"finetune_lr_factor must be > 0, got {self.finetune_lr_factor}")
        if not 0.0 < self.mask_ratio < 1.0 or not 0.0 < self.shared_fraction < 1.0:
            raise ValueError(f"mask_ratio and shared_fraction must be in (0, 1), got {self.mask_ratio}, "
                             f"{self.shared_fraction}")
        if self.dim % self.heads:
            raise ValueError(f"dualformer dim {self.dim} is not divisible by heads {self.heads}")


# Scales of the encoders' regression targets: Prot / 70 d (the paper's; or a log target, TrainConfig.prot_target)
# and Teff / 5778 K; logg and [Fe/H] as they are.
PROT_SCALE_DAYS = 70.0
TEFF_SCALE_K = 5778.0


@dataclass
class TrainConfig:
    seed: int = 0
    quantiles: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    ssl_weight: float = 0.5               # hybrid objective: SSL and quantile regression, 0.5 / 0.5
    regression_weight: float = 0.5
    mask_fraction: float = 0.15           # masked-pixel reconstruction of spectra
    prot_clip_days: float = 100.0         # Prot targets above this are clipped: giants reach 10^5 d, which no
                                          # light curve shows and which would dominate the Prot/70 pinball loss
    # Light-curve pretraining target: 'linear' = Prot / 70 d (the paper), 'log' = log10(1 + Prot) / log10(1 +
    # prot_clip_days), which asks for relative precision (gyrochronology ages go as log Prot). `small` uses 'log'
    # (docs/model.md, "Rotation periods in the light-curve features").
    prot_target: str = "linear"
    snr_cap: float = 100.0                # per-sample S/N weight saturates here
    # light-curve encoder stage
    lc_epochs: int = 10
    lc_batch_size: int = 64
    lc_lr: float = 3e-4
    lc_steps_per_epoch: int | None = None  # None: one pass over the training stars
    # spectra encoder stage
    spec_epochs: int = 10
    spec_batch_size: int = 64
    spec_lr: float = 3e-4
    spec_steps_per_epoch: int | None = None
    # DualFormer stage
    align_epochs: int = 50
    align_batch_size: int = 256
    align_lr: float = 1e-3
    align_patience: int = 8               # early stopping on the validation loss
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    feature_batch_size: int = 256
    val_max_stars: int = 1024             # encoder stages: validation loss on at most this many val stars
    warmup_fraction: float = 0.05         # linear warm-up, then cosine decay, per optimiser step
    torch_threads: int | None = None      # None: torch's default
    amp: bool = False                     # bfloat16 autocast on CUDA (the paper config); ignored on CPU

    def __post_init__(self):
        if self.prot_target not in ("linear", "log"):
            raise ValueError(f"prot_target must be linear or log, not {self.prot_target!r}")

    def prot_targets(self, prot_days) -> np.ndarray:
        """Light-curve pretraining target from Prot [d], clipped at ``prot_clip_days``: Prot / 70 d (the
        paper's, ``prot_target: linear``) or log10(1 + Prot) / log10(1 + clip) (``log``, in [0, 1]). NaN stays
        NaN (no loss)."""
        p = np.minimum(np.asarray(prot_days, np.float64), self.prot_clip_days)
        if self.prot_target == "log":
            return np.log10(1.0 + p) / np.log10(1.0 + self.prot_clip_days)
        return p / PROT_SCALE_DAYS

    def prot_from_targets(self, y) -> np.ndarray:
        """Prot [d] from the light-curve head's output (the inverse of :meth:`prot_targets`)."""
        y = np.asarray(y, np.float64)
        if self.prot_target == "log":
            return 10 ** (y * np.log10(1.0 + self.prot_clip_days)) - 1.0
        return y * PROT_SCALE_DAYS


@dataclass
class DesaConfig:
    name: str
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    light_curve: LightCurveEncoderConfig = field(default_factory=LightCurveEncoderConfig)
    spectra: SpectraEncoderConfig = field(default_factory=SpectraEncoderConfig)
    dualformer: DualFormerConfig = field(default_factory=DualFormerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)


_SECTIONS = {"preprocess": PreprocessConfig, "light_curve": LightCurveEncoderConfig,
             "spectra": SpectraEncoderConfig, "dualformer": DualFormerConfig, "train": TrainConfig}


def _build(cls, values: dict | None, where: str):
    values = dict(values or {})
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown} for {cls.__name__}")
    for k, v in list(values.items()):
        if isinstance(v, list):   # YAML lists -> tuples, so configs compare and hash consistently
            values[k] = tuple(v)
    return cls(**values)


def config_from_dict(d: dict, where: str = "config") -> DesaConfig:
    """Build a DesaConfig from a nested dict (a YAML file, or ``run_manifest.json``'s ``config``)."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: a config must be a mapping of sections")
    unknown = sorted(set(d) - set(_SECTIONS) - {"name"})
    if unknown:
        raise ValueError(f"{where}: unknown sections {unknown}; expected {sorted(_SECTIONS)}")
    return DesaConfig(name=str(d.get("name", Path(where).stem)),
                      **{s: _build(cls, d.get(s), f"{where} [{s}]") for s, cls in _SECTIONS.items()})


def get_config(name_or_yaml_path: str) -> DesaConfig:
    """A named config ('small', 'paper') from desa_core/configs, or any YAML file path."""
    p = Path(name_or_yaml_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        path = p
    else:
        path = CONFIG_DIR / f"{name_or_yaml_path}.yaml"
        if not path.is_file():
            names = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
            raise ValueError(f"unknown config {name_or_yaml_path!r}: use one of {names} or a YAML file path")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        d: Any = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    d.setdefault("name", path.stem)
    return config_from_dict(d, where=str(path))
