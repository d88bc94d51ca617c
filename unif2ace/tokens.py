"""The one source of truth for token ids, sequence formats and the omni-attention mask.

Id layout (Show-o's, so Show-o checkpoints map 1:1)::

    [0, V_text)                 text tokens (V_text = len(text tokenizer), 50295 for Phi)
    V_text                      [PAD]
    V_text+1 … V_text+9         <|soi|> <|eoi|> <|sov|> <|eov|> <|t2i|> <|mmu|> <|t2v|> <|v2v|> <|lvg|>
    V_text+10 + k               image code k, k < codebook_size
    last                        [MASK]

Every row, T2I or MMU, has the same length ``text_len + num_image_tokens + 3``::

    T2I: [PAD…] <|t2i|> <sot> prompt <eot> <|soi|> img×N <|eoi|>      (text left-padded)
    MMU: <|mmu|> <|soi|> img×N <|eoi|> <sot> q a q a … <eot> [PAD…]    (loss on answers)

so rows of both tasks mix freely in one batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import torch

SPECIAL_TOKENS = ("<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>")
IGNORE = -100
TASK_T2I, TASK_MMU = 0, 1
"""Task ids: T2I rows use the generation expert group, MMU rows the understanding group."""


@dataclass(frozen=True)
class TokenLayout:
    """Derives every id from the text vocabulary size and the codebook size."""

    text_vocab_size: int
    codebook_size: int
    bos_id: int
    eos_id: int

    @classmethod
    def from_model_config(cls, m) -> "TokenLayout":
        return cls(m.text_vocab_size, m.codebook_size, m.bos_id, m.eos_id)

    @property
    def pad_id(self) -> int:
        return self.text_vocab_size

    def special(self, name: str) -> int:
        return self.text_vocab_size + 1 + SPECIAL_TOKENS.index(name)

    @property
    def soi(self) -> int:
        return self.special("<|soi|>")

    @property
    def eoi(self) -> int:
        return self.special("<|eoi|>")

    @property
    def t2i(self) -> int:
        return self.special("<|t2i|>")

    @property
    def mmu(self) -> int:
        return self.special("<|mmu|>")

    @property
    def image_offset(self) -> int:
        return self.text_vocab_size + 1 + len(SPECIAL_TOKENS)

    @property
    def mask_id(self) -> int:
        return self.image_offset + self.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.mask_id + 1

    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.long() + self.image_offset

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        return ids - self.image_offset

    def is_image(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.image_offset) & (ids <= self.mask_id)


# --------------------------------------------------------------------------- masking schedule


def mask_ratio(t: torch.Tensor, schedule: str = "cosine") -> torch.Tensor:
    """Fraction of image tokens masked at uniform draw ``t``∈[0,1] (Show-o: cos(π/2·t))."""
    if schedule == "cosine":
        return torch.cos(t * math.pi / 2)
    if schedule == "linear":
        return 1.0 - t
    raise ValueError(f"unknown mask schedule {schedule!r} (cosine | linear)")


def mask_image_codes(codes: torch.Tensor, ratio: torch.Tensor, generator: torch.Generator | None = None):
    """Choose ``round(N·ratio)`` (≥ 1) positions per row to mask.

    Returns the boolean mask (B, N) and the ratio actually applied (count / N).
    """
    b, n = codes.shape
    count = (ratio * n).round().clamp(1, n)
    scores = torch.rand(b, n, generator=generator)
    rank = scores.argsort(dim=-1).argsort(dim=-1)
    masked = rank < count[:, None]
    return masked, count / n


# --------------------------------------------------------------------------- sequence builders


def _fit_text(ids: Sequence[int], room: int) -> list[int]:
    return list(ids)[:room]


def build_t2i(layout: TokenLayout, prompt: Sequence[int], codes: torch.Tensor, masked: torch.Tensor,
              text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One T2I row. ``prompt``: text ids without <sot>/<eot> (truncated to fit); ``codes``: (N,)
    image codes; ``masked``: (N,) bool. Returns (input_ids, labels), both (text_len + N + 3,).

    Labels follow Show-o: not shifted (logit i predicts token i), the original code at masked
    positions, IGNORE elsewhere in the image, <|soi|>/<|eoi|> their own targets, text ignored.
    """
    text = [layout.bos_id] + _fit_text(prompt, text_len - 2) + [layout.eos_id]
    pads = text_len - len(text)
    img = layout.codes_to_ids(codes)
    img_in = torch.where(masked, torch.full_like(img, layout.mask_id), img)
    head = torch.tensor([layout.pad_id] * pads + [layout.t2i] + text, dtype=torch.long)
    ids = torch.cat([head, torch.tensor([layout.soi]), img_in, torch.tensor([layout.eoi])])
    labels = torch.cat([torch.full_like(head, IGNORE), torch.tensor([layout.soi]),
                        torch.where(masked, img, torch.full_like(img, IGNORE)), torch.tensor([layout.eoi])])
    return ids, labels


def build_mmu(layout: TokenLayout, codes: torch.Tensor, turns: Sequence[tuple[Sequence[int], Sequence[int]]],
              text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One MMU row: the image, then (question, answer) turns, each answer closed by <eot>:
    ``<sot> q1 a1 <eot> q2 a2 <eot> …``. Labels are the *next* token (shift applied by the loss)
    only on answer tokens and their <eot>, so every turn teaches where an answer ends — the
    decoder stops at <eot>, and a single-turn row is exactly Show-o's ``<sot> q a <eot>``. Turns
    that do not fit in ``text_len`` are dropped whole; at least the first turn is kept (answer
    truncated).
    """
    text = [layout.bos_id]
    lab = [IGNORE]
    for i, (q, a) in enumerate(turns):
        need = len(q) + len(a) + 1
        if len(text) + need > text_len:
            if i > 0:
                break
            q = list(q)[: max(0, text_len - 2 - 1)]
            a = list(a)[: max(0, text_len - 2 - len(q))]
        text += list(q) + list(a) + [layout.eos_id]
        lab += [IGNORE] * len(q) + list(a) + [layout.eos_id]
    pads = text_len - len(text)
    head = torch.tensor([layout.mmu, layout.soi], dtype=torch.long)
    img = layout.codes_to_ids(codes)
    tail = torch.tensor([layout.eoi] + text + [layout.pad_id] * pads, dtype=torch.long)
    ids = torch.cat([head, img, tail])
    labels = torch.cat([torch.full((2 + len(img) + 1,), IGNORE, dtype=torch.long),
                        torch.tensor(lab + [IGNORE] * pads, dtype=torch.long)])
    return ids, labels


def build_mmu_prompt(layout: TokenLayout, codes: torch.Tensor, question: Sequence[int]) -> torch.Tensor:
    """MMU inference prefix: image, <sot>, question (no <eot>, no pads); decoding continues it."""
    return torch.cat([torch.tensor([layout.mmu, layout.soi]), layout.codes_to_ids(codes),
                      torch.tensor([layout.eoi, layout.bos_id] + list(question), dtype=torch.long)])


# --------------------------------------------------------------------------- omni-attention mask


MMU_ATTENTION = ("omni", "showo")
MMU_TURNS = ("causal", "isolated")


def mmu_turn_index(ids: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """(B, L) long: k ≥ 1 at the tokens of the k-th (question, answer, <eot>) turn of an MMU row
    (``build_mmu``), 0 everywhere else — the image prefix, the <sot> after <|eoi|>, T2I rows."""
    is_eoi = ids == layout.eoi
    after_sot = (is_eoi.long().cumsum(-1) - is_eoi.long()).cumsum(-1) > 1  # past <|eoi|> and the <sot> after it
    text = after_sot & (ids == layout.mmu).any(-1, keepdim=True) & (ids != layout.pad_id)
    eot = (text & (ids == layout.eos_id)).long()
    return torch.where(text, 1 + eot.cumsum(-1) - eot, torch.zeros_like(eot))


def mmu_turn_positions(ids: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """(B, L) position ids for ``mmu_turns="isolated"``: every turn of an MMU row restarts right
    after its <sot>, so each (question, answer) sits where a single-turn row — and the decoder
    at inference — puts it. Elsewhere positions are 0..L−1 (left pads counted, as Show-o)."""
    b, l = ids.shape
    pos = torch.arange(l, device=ids.device).expand(b, l)
    turn = mmu_turn_index(ids, layout)
    start = turn != torch.nn.functional.pad(turn, (1, 0))[:, :-1]  # first token of each turn
    first = torch.where(start & (turn > 0), pos, torch.zeros_like(pos)).cummax(-1).values
    sot = torch.where(turn == 1, pos, torch.full_like(pos, l)).min(-1, keepdim=True).values - 1
    return torch.where(turn > 0, sot + 1 + pos - first, pos)


def omni_attention_mask(ids: torch.Tensor, layout: TokenLayout, mmu: str = "omni",
                        turns: str = "causal") -> torch.Tensor:
    """Boolean (B, 1, L, L) mask, True = may attend.

    Causal over text; every position of an image span <|soi|> … <|eoi|> (inclusive) sees the
    whole span and everything before it; [PAD] keys are hidden from everyone. Each query sees
    at least itself, so pad rows stay finite (they carry no loss).

    ``mmu="showo"``: in a row holding <|mmu|>, every position also sees the whole prefix up to
    and including the row's first <|eoi|>, as Show-o's ``create_attention_mask_for_mmu`` does.
    The only change from "omni" is that the <|mmu|> token itself sees the image; its state
    then reaches every later position, so Show-o's weights need it to reproduce their logits.

    ``turns="isolated"``: each (question, answer) turn of an MMU row sees the image prefix, the
    <sot> and its own earlier tokens, not the other turns — a row of k turns then trains k
    single-turn examples that share one image prefix (use ``mmu_turn_positions`` with it).
    """
    if mmu not in MMU_ATTENTION:
        raise ValueError(f"unknown MMU attention {mmu!r} ({' | '.join(MMU_ATTENTION)})")
    if turns not in MMU_TURNS:
        raise ValueError(f"unknown MMU turns {turns!r} ({' | '.join(MMU_TURNS)})")
    b, l = ids.shape
    is_soi = ids == layout.soi
    is_eoi = ids == layout.eoi
    opened = is_soi.cumsum(-1)
    closed = is_eoi.cumsum(-1) - is_eoi.long()  # an <|eoi|> still belongs to its span
    span = torch.where(opened > closed, opened, torch.zeros_like(opened))  # (B, L), 0 = not in image
    pos = torch.arange(l, device=ids.device)
    causal = pos[None, :, None] >= pos[None, None, :]
    same_span = (span[:, :, None] == span[:, None, :]) & (span[:, :, None] > 0)
    allowed = causal | same_span
    if mmu == "showo":
        first_eoi = (is_eoi.long().cumsum(-1) == 0).sum(-1)  # L when the row has none
        prefix = (pos[None, :] <= first_eoi[:, None]) & (ids == layout.mmu).any(-1, keepdim=True)
        allowed = allowed | prefix[:, None, :]
    if turns == "isolated":
        turn = mmu_turn_index(ids, layout)
        allowed = allowed & ((turn[:, None, :] == 0) | (turn[:, None, :] == turn[:, :, None]))
    allowed = allowed & (ids != layout.pad_id)[:, None, :]
    allowed |= torch.eye(l, dtype=torch.bool, device=ids.device)[None]
    return allowed[:, None]


@dataclass
class Batch:
    """One batch of rows: what ``ShardLoader`` yields and the trainer, the losses and the metrics
    read (``collate`` makes one from rows; the loader fills the optional fields)."""

    input_ids: torch.Tensor
    """(B, L) long."""
    labels: torch.Tensor
    """(B, L) long, ``IGNORE`` where no loss."""
    task: torch.Tensor
    """(B,) long: TASK_T2I / TASK_MMU."""
    mask_ratio: torch.Tensor | None = None
    """(B,) float: the applied mask ratio (0 on MMU rows); needed by the T2I loss."""
    features: dict[str, torch.Tensor] | None = None
    """Per-sample conditioning ('clip', 'face', 'face_found', 'noise', …), rows as above."""
    sample_index: torch.Tensor | None = None
    """(B,) long: each row's global sample row in the shards."""
    cond_dropped: torch.Tensor | None = None
    """(B,) bool: the caption and features were dropped (classifier-free guidance)."""

    def to(self, device: torch.device | str) -> "Batch":
        def move(x):
            if isinstance(x, dict):
                return {k: v.to(device, non_blocking=True) for k, v in x.items()}
            return x.to(device, non_blocking=True) if torch.is_tensor(x) else x

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


def collate(rows: list[tuple[torch.Tensor, torch.Tensor]], tasks: list[int],
            trim_pad_id: int | None = None) -> Batch:
    """Stack equal-length rows into a ``Batch`` (input_ids, labels, task). With ``trim_pad_id``
    the batch is cut to its longest real row (``trim_padding``)."""
    ids = torch.stack([r[0] for r in rows])
    labels = torch.stack([r[1] for r in rows])
    if trim_pad_id is not None:
        ids, labels = trim_padding(ids, labels, trim_pad_id)
    return Batch(ids, labels, torch.tensor(tasks, dtype=torch.long))


def trim_padding(ids: torch.Tensor, labels: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the [PAD] columns that carry nothing: each row's leading pads (a T2I row's left
    padding) are rotated to its end, then the columns that are [PAD] in every row are cut.

    Exact for this model: pads are masked as keys and carry no loss, and rotary attention
    depends only on the *difference* of two positions, which the rotation keeps for every pair
    of real tokens. A T2I row of a short caption then costs its length, not ``text_len``."""
    real = ids != pad_id
    lead = torch.where(real.any(1), real.int().argmax(1), torch.zeros_like(real[:, 0], dtype=torch.long))
    if bool((lead > 0).any()):
        col = (torch.arange(ids.shape[1]).unsqueeze(0) + lead.unsqueeze(1)) % ids.shape[1]
        ids, labels = ids.gather(1, col), labels.gather(1, col)
        real = ids != pad_id
    keep = int(real.any(0).nonzero().max()) + 1 if bool(real.any()) else ids.shape[1]
    return ids[:, :keep].contiguous(), labels[:, :keep].contiguous()
