"""Wanda (Sun et al., 2023, "A Simple and Effective Pruning Approach for LLMs"): prune by |W| x ‖X_j‖.

A weight's score is its magnitude times the L2 norm of its input channel over calibration tokens; within
each output row the lowest scores go (unstructured), or the 2 lowest of every 4 consecutive inputs (2:4).
Like the reference implementation it runs block by block: the inputs of block b are computed by the
already-pruned blocks 0..b-1, so later layers adapt to earlier pruning. No weight update, no Hessian.

Unstructured pruning removes exactly round(amount x numel) weights per layer: floor(amount x in) per
row, and the remainder from the rows whose next candidate scores lowest.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline import metrics as M
from pipeline.methods.base import CalibratedMethod, register
from pipeline.methods.pruning import check_nm_widths, nm_mask
from pipeline.methods.targets import is_target_linear, target_linears


def wanda_keep_mask(weight, sq_norm, amount: float, pattern: str):
    """Keep-mask for one layer. `sq_norm[j]` = Σ_tokens x_j² of input channel j."""
    import torch

    score = weight.detach().abs().float() * sq_norm.float().sqrt().unsqueeze(0)
    if pattern == "2:4":
        return nm_mask(score, 2, 4)
    out_f, in_f = score.shape
    total = round(amount * out_f * in_f)
    k, extra = divmod(total, out_f)
    order = score.argsort(dim=1, stable=True)
    prune = torch.zeros_like(score, dtype=torch.bool)
    if k:
        prune.scatter_(1, order[:, :k], True)
    if extra:
        nxt = order[:, k]
        rows = score.gather(1, nxt.unsqueeze(1)).squeeze(1).argsort(stable=True)[:extra]
        prune[rows, nxt[rows]] = True
    return ~prune


def decoder_blocks(model):
    """The ModuleList of decoder blocks (the one with the most children that hold target linears)."""
    from torch import nn

    best = None
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if all(any(is_target_linear(n, m) for n, m in child.named_modules()) for child in module):
                if best is None or len(module) > len(best):
                    best = module
    return best


class _Stop(Exception):
    pass


def _collect(block, inputs, stats):
    """Run `block` on cached (args, kwargs) with hooks summing x² per input channel of its target linears."""
    import torch

    hooks = []
    for name, module in block.named_modules():
        if is_target_linear(name, module):

            def hook(m, args, _out):
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                s = stats.get(m)
                stats[m] = x.pow(2).sum(0) if s is None else s + x.pow(2).sum(0)

            hooks.append(module.register_forward_hook(hook))
    outs = []
    try:
        with torch.no_grad():
            for args, kwargs in inputs:
                out = block(*args, **kwargs)
                outs.append(out[0] if isinstance(out, tuple) else out)
    finally:
        for h in hooks:
            h.remove()
    return outs


@register
class Wanda(CalibratedMethod):
    name = "wanda"
    library = "torch"
    kind = "prune"
    summary = "activation-aware pruning: |W| x input-channel norm, unstructured or 2:4, block-sequential"

    amount: float = Field(0.5, gt=0.0, lt=1.0, description="share of weights set to zero (2:4 implies 0.5)")
    pattern: Literal["unstructured", "2:4"] = Field(
        "unstructured", description="unstructured (per output row) or 2:4 semi-structured"
    )

    @model_validator(mode="after")
    def _half_for_2of4(self):
        if self.pattern == "2:4" and self.amount != 0.5:
            raise ValueError(
                f"method 'wanda' pattern 2:4 prunes exactly half; drop `amount` or set it to 0.5 (got {self.amount})"
            )
        return self

    def check_model(self, config) -> str | None:
        return check_nm_widths(self.name, config, 2, 4) if self.pattern == "2:4" else None

    def nm_pattern(self):
        return (2, 4) if self.pattern == "2:4" else None

    def apply(self, model, ctx):
        import torch

        from pipeline.methods.batches import tokenized_batches

        data = ctx.calibration_data(self)
        batches = tokenized_batches(ctx.tokenizer, data.texts, self.calibration_seq_len, ctx.device)
        blocks = decoder_blocks(model)
        if blocks is None:  # no block structure found: one pass over the whole (dense) model
            stats: dict = {}
            _collect(model, [((), {**b, "use_cache": False}) for b in batches], stats)
            self._prune(dict(target_linears(model)).values(), stats)
            ctx.notes[M.NOTE_WANDA_MODE] = "single pass"
            return model
        # One dense pass records every block's kwargs (masks/rotary can differ per block) and block 0's input.
        per_block_kwargs: list[list[dict]] = [[] for _ in blocks]
        first_inputs: list[tuple] = []
        handles = []
        for i, block in enumerate(blocks):

            def pre(mod, args, kwargs, i=i):
                per_block_kwargs[i].append({k: v for k, v in kwargs.items() if k != "hidden_states"})
                if i == 0:
                    hs = args[0] if args else kwargs["hidden_states"]
                    first_inputs.append(hs.detach())
                if i == len(blocks) - 1:
                    raise _Stop

            handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        try:
            with torch.no_grad():
                for b in batches:
                    try:
                        model(**b, use_cache=False)
                    except _Stop:
                        pass
        finally:
            for h in handles:
                h.remove()
        hidden = first_inputs
        for i, block in enumerate(blocks):
            inputs = [((hs,), kw) for hs, kw in zip(hidden, per_block_kwargs[i])]
            stats = {}
            _collect(block, inputs, stats)
            self._prune([m for n, m in block.named_modules() if is_target_linear(n, m)], stats)
            hidden = _collect(block, inputs, {})  # outputs of the pruned block feed the next one
        ctx.notes[M.NOTE_WANDA_MODE] = "block-sequential"
        return model

    def _prune(self, modules, stats) -> None:
        import torch

        with torch.no_grad():
            for module in modules:
                sq = stats.get(module)
                if sq is None:  # never reached by calibration tokens: fall back to magnitude
                    sq = torch.ones(module.weight.shape[1], device=module.weight.device)
                keep = wanda_keep_mask(module.weight, sq.to(module.weight.device), self.amount, self.pattern)
                module.weight.mul_(keep.to(module.weight.dtype))

    def kernel(self, device: str, model=None) -> str:
        what = "2:4 sparse kernel" if self.pattern == "2:4" else "unstructured-sparse kernel"
        return f"dense matmul on masked weights: no {what} on {'CPU' if device == 'cpu' else device}"
