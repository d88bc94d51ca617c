"""MAGVIT-v2 image tokenizer: convolutional encoder/decoder + lookup-free quantisation.

    from unif2ace.tokenizers.magvit import MagvitConfig, MagvitV2
    tok = MagvitV2.from_pretrained("weights/magvitv2")   # dir with config.json + weights, or a file
    codes = tok.encode(images)            # (B, 3, H, W) in [-1, 1] -> (B, h*w) long, row-major
    images = tok.decode_codes(codes, (h, w))               # -> (B, 3, H, W) in [-1, 1]
    tok.save_pretrained("runs/tok")       # config.json + model.safetensors (atomic writes)

The default ``MagvitConfig()`` reproduces the architecture of the public
``showlab/magvitv2`` checkpoint (Show-o's tokenizer: 13-bit codes, ×16 downsampling,
≈95M parameters) with the same ``state_dict`` key names and shapes, so a local copy of
that checkpoint (``pytorch_model.bin`` + its ``config.json``) loads as is.
``MagvitConfig.synthface()`` and ``MagvitConfig.tiny()`` are small presets matching the
``synthface`` and ``tiny`` recipes; ``tools/train_image_tokenizer.py`` trains them.
Loading is strict: missing, unexpected or mis-shaped keys are reported by name.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unif2ace.checkpoint.hf_io import CheckpointError, check_state_dict
from unif2ace.checkpoint.safetensors_dir import CONFIG_NAME, WEIGHTS_NAME, save_safetensors_dir
from unif2ace.config import ConfigError, build
from unif2ace.jsonfile import read_json
from unif2ace.tokenizers import lfq

# Weight file names looked for in a directory, in order (ours, then Show-o / diffusers style).
WEIGHT_FILES = (WEIGHTS_NAME, "pytorch_model.safetensors", "diffusion_pytorch_model.safetensors",
                "pytorch_model.bin", "diffusion_pytorch_model.bin")


@dataclass
class MagvitConfig:
    """Shapes of a MAGVIT-v2 tokenizer. Defaults = the ``showlab/magvitv2`` checkpoint."""

    in_channels: int = 3
    """Image channels at the encoder input."""
    out_channels: int = 3
    """Image channels at the decoder output."""
    ch: int = 128
    """Base width; level i of the encoder has ``ch * encoder_ch_mult[i]`` channels."""
    encoder_ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4, 4])
    """Encoder width multipliers per resolution level (len L: downsampling ×2**(L-1))."""
    encoder_num_res_blocks: list[int] = field(default_factory=lambda: [4, 3, 4, 3, 4])
    """Residual blocks per encoder level."""
    decoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    """Decoder width multipliers per level (index 0 = full resolution, like the encoder's)."""
    decoder_num_res_blocks: list[int] = field(default_factory=lambda: [4, 4, 3, 4, 3])
    """Residual blocks per decoder level (index 0 = full resolution)."""
    attn_levels: list[int] = field(default_factory=list)
    """Levels whose residual blocks are each followed by self-attention (showlab/magvitv2:
    none; its ``attn_resolutions=[5]`` never matches a level). The middle always has one."""
    codebook_bits: int = 13
    """LFQ bits = latent channels; the codebook has 2**codebook_bits codes."""
    norm_groups: int = 32
    """GroupNorm groups (every width must be divisible by it)."""
    dropout: float = 0.0
    """Dropout inside residual blocks."""

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- presets

    @classmethod
    def showlab(cls) -> "MagvitConfig":
        """The ``showlab/magvitv2`` architecture (256² → 16×16 codes of 13 bits)."""
        return cls()

    @classmethod
    def synthface(cls) -> "MagvitConfig":
        """The ``synthface`` recipe: 64² → 8×8 = 64 codes, codebook 256 (8 bits); 3.1M parameters.
        Narrow at full resolution, wide at 8×8: of the shapes tried it reached the best val PSNR
        per CPU-second on SynthFace (≈2.8 GFLOP per image per training step)."""
        return cls(ch=16, encoder_ch_mult=[1, 2, 4, 8], encoder_num_res_blocks=[1, 1, 2, 2],
                   decoder_ch_mult=[1, 2, 4, 8], decoder_num_res_blocks=[1, 1, 2, 2],
                   codebook_bits=8, norm_groups=8)

    @classmethod
    def synthface16(cls) -> "MagvitConfig":
        """The built-in demo's tokenizer: 64² → 16×16 = 256 codes, codebook 256 (8 bits).
        A 4× (not 8×) reduction: at 8×8 codes the run's attribute classifier found eye colour,
        expression and eyebrow shape near chance on faces decoded from their own codes."""
        return cls(ch=16, encoder_ch_mult=[1, 2, 4], encoder_num_res_blocks=[1, 1, 2],
                   decoder_ch_mult=[1, 2, 4], decoder_num_res_blocks=[1, 1, 2],
                   codebook_bits=8, norm_groups=8)

    @classmethod
    def tiny(cls) -> "MagvitConfig":
        """The ``tiny`` recipe, for tests: 32² → 4×4 = 16 codes, codebook 64 (6 bits)."""
        return cls(ch=16, encoder_ch_mult=[1, 1, 2, 2], encoder_num_res_blocks=[1, 1, 1, 1],
                   decoder_ch_mult=[1, 1, 2, 2], decoder_num_res_blocks=[1, 1, 1, 1],
                   codebook_bits=6, norm_groups=8)

    @classmethod
    def preset(cls, name: str) -> "MagvitConfig":
        presets = {"showlab": cls.showlab, "synthface": cls.synthface, "synthface16": cls.synthface16,
                   "tiny": cls.tiny}
        if name not in presets:
            raise ConfigError(f"unknown MAGVIT preset {name!r}; known: {sorted(presets)}")
        return presets[name]()

    # ----------------------------------------------------------------- derived sizes

    @property
    def codebook_size(self) -> int:
        return 2 ** self.codebook_bits

    @property
    def downsample(self) -> int:
        """Spatial reduction factor from image to code grid."""
        return 2 ** (len(self.encoder_ch_mult) - 1)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Code grid (h, w) of an image; raises if the size is not a multiple of ``downsample``."""
        f = self.downsample
        if height % f or width % f or height <= 0 or width <= 0:
            raise ValueError(f"image size {height}×{width} is not a positive multiple of the "
                             f"tokenizer's downsampling factor {f}")
        return height // f, width // f

    # ----------------------------------------------------------------- (de)serialisation

    def validate(self) -> None:
        for enc, name in ((self.encoder_ch_mult, "encoder"), (self.decoder_ch_mult, "decoder")):
            blocks = getattr(self, f"{name}_num_res_blocks")
            if len(enc) != len(blocks):
                raise ConfigError(f"{name}_ch_mult has {len(enc)} levels but {name}_num_res_blocks has {len(blocks)}")
            if any(b < 1 for b in blocks) or any(m < 1 for m in enc):
                raise ConfigError(f"{name}_ch_mult and {name}_num_res_blocks must be positive")
            for m in enc:
                if (self.ch * m) % self.norm_groups:
                    raise ConfigError(f"width ch*{m}={self.ch * m} ({name}) is not divisible by norm_groups={self.norm_groups}")
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise ConfigError("encoder_ch_mult and decoder_ch_mult must have the same number of levels")
        if not 1 <= self.codebook_bits <= 20:
            raise ConfigError(f"codebook_bits={self.codebook_bits} must be in [1, 20]")
        bad = [a for a in self.attn_levels if not 0 <= a < len(self.encoder_ch_mult)]
        if bad:
            raise ConfigError(f"attn_levels {bad} are not levels of a {len(self.encoder_ch_mult)}-level model")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MagvitConfig":
        """Build from a mapping; keys starting with ``_`` (diffusers metadata such as
        ``_class_name`` in showlab/magvitv2's config.json) are ignored, unknown keys rejected."""
        return build(cls, {k: v for k, v in data.items() if not k.startswith("_")})


# --------------------------------------------------------------------------- building blocks


def _norm(cfg: MagvitConfig, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.norm_groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm → swish → conv3×3, twice, plus a (1×1 conv when widths differ) shortcut."""

    def __init__(self, cfg: MagvitConfig, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cfg, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cfg, cout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        # Key name ``nin_shortcut`` as in the checkpoint; absent when widths agree.
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, 1×1-conv projections, residual."""

    def __init__(self, cfg: MagvitConfig, channels: int):
        super().__init__()
        self.norm = _norm(cfg, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q, k, v = (p(h).flatten(2).transpose(1, 2) for p in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale c**-0.5, as in the checkpoint's code
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, hh, ww))


class Downsample(nn.Module):
    """Stride-2 conv3×3 after zero padding right and bottom only (the checkpoint's convention)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest ×2 then conv3×3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (res blocks), ``attn`` (optional), and a resampler."""

    def __init__(self, cfg: MagvitConfig, cin: int, cout: int, n_blocks: int, attn: bool):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cfg, cin if i == 0 else cout, cout) for i in range(n_blocks))
        self.attn = nn.ModuleList(AttnBlock(cfg, cout) for _ in range(n_blocks if attn else 0))

    def run_blocks(self, h: Tensor) -> Tensor:
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, cfg: MagvitConfig, ch: int):
        super().__init__()
        self.block_1 = ResnetBlock(cfg, ch, ch)
        self.attn_1 = AttnBlock(cfg, ch)
        self.block_2 = ResnetBlock(cfg, ch, ch)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image (B, C, H, W) → latents (B, K, H/f, W/f), K = codebook bits (before quantisation)."""

    def __init__(self, cfg: MagvitConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        n = len(cfg.encoder_ch_mult)
        for i, (mult, nb) in enumerate(zip(cfg.encoder_ch_mult, cfg.encoder_num_res_blocks)):
            cout = cfg.ch * mult
            level = _Level(cfg, cin, cout, nb, i in cfg.attn_levels)
            if i != n - 1:
                level.downsample = Downsample(cout)
            self.down.append(level)
            cin = cout
        self.mid = _Mid(cfg, cin)
        self.norm_out = _norm(cfg, cin)
        self.conv_out = nn.Conv2d(cin, cfg.codebook_bits, 3, padding=1)
        self.quant_conv = nn.Conv2d(cfg.codebook_bits, cfg.codebook_bits, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run_blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.conv_out(F.silu(self.norm_out(self.mid(h))))
        return self.quant_conv(h)


class Decoder(nn.Module):
    """Quantised latents (B, K, h, w) → image (B, C, h·f, w·f). ``up[i]`` is level i
    (0 = full resolution) though it runs from the coarsest level up, as in the checkpoint."""

    def __init__(self, cfg: MagvitConfig):
        super().__init__()
        n = len(cfg.decoder_ch_mult)
        cin = cfg.ch * cfg.decoder_ch_mult[-1]
        self.post_quant_conv = nn.Conv2d(cfg.codebook_bits, cfg.codebook_bits, 1)
        self.conv_in = nn.Conv2d(cfg.codebook_bits, cin, 3, padding=1)
        self.mid = _Mid(cfg, cin)
        levels: list[nn.Module] = []
        for i in reversed(range(n)):
            cout = cfg.ch * cfg.decoder_ch_mult[i]
            level = _Level(cfg, cin, cout, cfg.decoder_num_res_blocks[i], i in cfg.attn_levels)
            if i != 0:
                level.upsample = Upsample(cout)
            levels.insert(0, level)
            cin = cout
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(cfg, cin)
        self.conv_out = nn.Conv2d(cin, cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            h = level.run_blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# --------------------------------------------------------------------------- the tokenizer


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or a ``torch.save``d dict (``weights_only=True``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable torch weights file ({e})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a flat mapping of parameter names to tensors")
    return sd


class MagvitV2(nn.Module):
    """MAGVIT-v2 tokenizer: ``encoder`` / ``quantize`` (LFQ) / ``decoder`` submodules."""

    def __init__(self, cfg: MagvitConfig | None = None):
        super().__init__()
        self.config = cfg or MagvitConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.quantize = lfq.LFQuantizer(self.config.codebook_bits)

    # ----------------------------------------------------------------- inference API

    def encode_latents(self, images: Tensor) -> Tensor:
        """Continuous latents (B, K, h, w) of images in [-1, 1] (before quantisation)."""
        if images.dim() != 4 or images.shape[1] != self.config.in_channels or not images.is_floating_point():
            raise ValueError(f"expected float images (B, {self.config.in_channels}, H, W), "
                             f"got {tuple(images.shape)} {images.dtype}")
        self.config.grid(images.shape[2], images.shape[3])
        return self.encoder(images)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] → codes (B, h*w) long, row-major over the grid."""
        return self.quantize.codes(self.encode_latents(images)).flatten(1)

    def decode_latents(self, zq: Tensor) -> Tensor:
        """Quantised latents (B, K, h, w) → images (B, 3, H, W), unclamped."""
        return self.decoder(zq)

    @torch.no_grad()
    def decode_codes(self, codes: Tensor, hw: tuple[int, int] | None = None) -> Tensor:
        """Codes (B, h*w) → images (B, 3, h·f, w·f) clamped to [-1, 1]; ``hw`` defaults to a square grid."""
        b, n = codes.shape
        if hw is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"{n} codes per image is not a square grid: pass hw=(h, w)")
            hw = (side, side)
        if hw[0] * hw[1] != n:
            raise ValueError(f"hw={hw} does not hold {n} codes")
        zq = self.quantize.embed(codes.view(b, *hw)).to(self.decoder.conv_in.weight.dtype)
        return self.decoder(zq).clamp(-1, 1)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Training pass: ``recon`` (unclamped), ``latents`` (pre-quantisation), ``codes`` (B, h, w).
        Losses on the latents are in ``lfq`` (entropy_terms, commitment_loss)."""
        z = self.encode_latents(images)
        zq, codes = self.quantize(z)
        return {"recon": self.decoder(zq), "latents": z, "codes": codes}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ----------------------------------------------------------------- persistence

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (atomically)."""
        # not whole: the directory may also hold tools/train_image_tokenizer.py's resume state
        return save_safetensors_dir(directory, {"_class_name": "MagvitV2", **self.config.to_dict()},
                                    self.state_dict(), whole=False)

    def load_checked(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        """Strict load (``check_state_dict``): any missing / unexpected / mis-shaped key is
        named and the load refused."""
        state = dict(state)
        # The LFQ buffers are pure functions of the config: a file may omit them (rebuilt here),
        # but when present they must equal ours, else the file uses another bit order.
        derived = {"quantize.embedding": lfq.codebook(self.config.codebook_bits),
                   "quantize.power_vals": lfq.bit_values(self.config.codebook_bits)}
        for k, value in derived.items():
            if k not in state:
                state[k] = value
            elif state[k].shape == value.shape and not torch.equal(state[k].to(value.dtype), value):
                raise CheckpointError(f"{source}: {k} differs from the LFQ bit layout this code uses "
                                      "(channel 0 = most significant bit)")
        check_state_dict(self, state, source)

    @classmethod
    def from_pretrained(cls, path: str | Path, config: MagvitConfig | None = None) -> "MagvitV2":
        """Load from a directory (``config.json`` + one of ``WEIGHT_FILES``) or a weights file
        (``config.json`` beside it). ``config`` overrides the file's config."""
        path = Path(path)
        if path.is_dir():
            found = [path / n for n in WEIGHT_FILES if (path / n).is_file()]
            if not found:
                raise FileNotFoundError(f"{path}: no weights file (looked for {', '.join(WEIGHT_FILES)})")
            weights, cfg_file = found[0], path / CONFIG_NAME
        elif path.is_file():
            weights, cfg_file = path, path.parent / CONFIG_NAME
        else:
            raise FileNotFoundError(f"{path}: no such tokenizer file or directory")
        if config is None:
            if not cfg_file.is_file():
                raise FileNotFoundError(f"{cfg_file}: missing; pass config=MagvitConfig(...) to load {weights} without it")
            data = read_json(cfg_file, CheckpointError)
            try:
                config = MagvitConfig.from_dict(data)
            except ConfigError as e:
                raise ConfigError(f"{cfg_file}: {e}") from None
        state = read_state_dict(weights)
        with torch.device("meta"):  # skip the init work: every tensor comes from the file
            model = cls(config)
        model = model.to_empty(device="cpu")
        model.load_checked(state, source=str(weights))
        return model.eval()
