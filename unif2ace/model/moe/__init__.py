"""Grouped token-level and sequence-level MoE (docs/design.md §2).

    from unif2ace.model.moe import ZERO3_LEAF_MODULES
    deepspeed.utils.set_z3_leaf_modules(model, list(ZERO3_LEAF_MODULES))

Files: token_moe.py (grouped dropless token MoE), dropless.py (sort / grouped-matmul ops),
megablocks_backend.py (CUDA backend, lazy), seq_moe.py + resampler.py (sequence MoE),
upcycle.py (experts from a dense MLP), stats.py (routing statistics per layer; their heat maps:
unif2ace/eval/routing.py).
"""
from unif2ace.model.moe.seq_moe import GroupedSequenceMoE
from unif2ace.model.moe.token_moe import GroupedTokenMoE

ZERO3_LEAF_MODULES: tuple[type, ...] = (GroupedTokenMoE, GroupedSequenceMoE)
"""Modules whose parameters are used data-dependently (stacked experts indexed by routing;
feature experts run only for the sequences routed to them). ZeRO-3 must gather each of them
as one unit (``deepspeed.utils.set_z3_leaf_modules``) or ranks hang on mismatched gathers."""

__all__ = ["GroupedTokenMoE", "GroupedSequenceMoE", "ZERO3_LEAF_MODULES"]
