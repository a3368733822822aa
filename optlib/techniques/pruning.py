"""Pruning: unstructured masks (torch.nn.utils.prune) and structured channel removal (Torch-Pruning,
DepGraph), the accounting that goes with them (sparsity per layer, MACs and parameters, sparse
storage), and saving a pruned model so that it reloads without a full pickle.

Unstructured pruning zeroes weights inside dense tensors: the shapes, the file and the dense
kernels stay as they were, so no speed-up is expected from it (chapter 06 measures that). Structured
pruning removes whole channels; the dependency graph keeps coupled layers (residual adds, BatchNorm,
the next layer's inputs) consistent.

A structurally pruned model no longer matches its constructor. Its artifact (kind pytorch-pruned) is
the state_dict plus the shape of every Conv2d / BatchNorm2d / Linear (`channel_config`):
`rebuild_pruned` builds the architecture, gives those modules the recorded shapes and loads the
state_dict with weights_only=True. Torch-Pruning's own save paths need a full pickle.
"""
from __future__ import annotations

import copy
import gzip
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import prune as tprune

from ..backends.artifacts import spec_of
from ..backends.pytorch import TorchRunner
from ..core.choices import PRUNE_SCOPES, STRUCTURED_CRITERIA, UNSTRUCTURED_CRITERIA, check_choice
from ..results.values import Artifact
from ..workload.models import HEAD_ATTRIBUTE, build_model, resolve_module, save_state_dict

PRUNABLE = (nn.Conv2d, nn.Linear)
ATTENTION_KEPT = ("attention kept whole ({why}): only the MLPs' hidden widths are pruned")


class PruningError(ValueError):
    """A pruning parameter does not fit the model (e.g. an ignored layer that does not exist)."""


def kept_whole(model: nn.Module, ignored: list[str], prune_head: bool = False) -> list[str]:
    """Module paths left unpruned: the classification head (unless `prune_head`) and `ignored`
    (prune.ignored_layers), each checked to exist (PruningError naming the key otherwise)."""
    names = []
    head = getattr(model, HEAD_ATTRIBUTE, None)
    if head and not prune_head:
        names.append(head)
    for n in ignored:
        try:
            resolve_module(model, n)
        except ValueError:
            have = ", ".join(n for n, _ in model.named_children())
            raise PruningError(f"'prune.ignored_layers': the model has no module {n!r} (top-level modules: {have})") from None
        names.append(n)
    return list(dict.fromkeys(names))


def _inside(name: str, roots: list[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def prunable_layers(model: nn.Module, keep: list[str]) -> list[tuple[str, nn.Module]]:
    """(path, module) of every Conv2d / Linear outside the modules in `keep` and outside any
    nn.MultiheadAttention: attention reads its out_proj's weight directly, bypassing the module's
    forward, so a mask applied by torch.nn.utils.prune's forward hook would never be re-applied (and
    fine-tuning would backpropagate through the first, stale masked weight)."""
    attention = attention_modules(model)
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, PRUNABLE) and not _inside(n, keep) and not _inside(n, attention)]


def attention_modules(model: nn.Module) -> list[str]:
    """Paths of the model's attention modules (nn.MultiheadAttention, or one with heads removed)."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.MultiheadAttention, HeadPrunedAttention))]


# --- attention heads --------------------------------------------------------------------------

class HeadPrunedAttention(nn.Module):
    """Self-attention as nn.MultiheadAttention computes it (batch first, no masks, no dropout),
    with its own query, key and value projections: heads can then be removed while the residual
    stream (`embed_dim`, the input and output width) stays whole. nn.MultiheadAttention cannot
    hold fewer heads: its fused in-projection is as wide as its input. Plain Linear, MatMul and
    Softmax operators: it exports to ONNX and quantizes like the rest of the model."""

    def __init__(self, embed_dim: int, heads: int, head_dim: int, bias: bool = True):
        super().__init__()
        self.embed_dim, self.heads, self.head_dim = embed_dim, heads, head_dim
        inner = heads * head_dim
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(embed_dim, inner, bias) for _ in range(3))
        self.out_proj = nn.Linear(inner, embed_dim, bias)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if key_padding_mask is not None or attn_mask is not None or need_weights or is_causal:
            raise PruningError("a head-pruned attention takes no masks and returns no weights")
        b, n = query.shape[0], query.shape[1]

        def heads(x):  # (batch, tokens, heads x head_dim) -> (batch, heads, tokens, head_dim)
            return x.reshape(b, -1, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        return self.out_proj((w @ v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim)), None


def _heads_unsupported(m: nn.MultiheadAttention) -> str | None:
    """Why the heads of `m` are kept (None: they can be removed)."""
    if not m._qkv_same_embed_dim:
        return "keys and values of another width than the queries"
    if not m.batch_first:
        return "sequence-first attention"
    if m.dropout:
        return f"attention dropout {m.dropout}"
    if m.bias_k is not None or m.add_zero_attn:
        return "extra key/value bias or zero attention"
    return None


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])


def head_importance(m: nn.MultiheadAttention) -> torch.Tensor:
    """Each head's L2 norm over its query, key and value rows and its out_proj columns."""
    e, d = m.embed_dim, m.embed_dim // m.num_heads
    w = m.in_proj_weight.detach().reshape(3, m.num_heads, d, e)
    o = m.out_proj.weight.detach().reshape(e, m.num_heads, d)
    return (w.pow(2).sum(dim=(0, 2, 3)) + o.pow(2).sum(dim=(0, 2))).sqrt()


def without_heads(m: nn.MultiheadAttention, keep: list[int]) -> HeadPrunedAttention:
    """`m` with only the heads in `keep`: the same outputs as `m` with the other heads' out_proj
    columns set to zero."""
    e, d = m.embed_dim, m.embed_dim // m.num_heads
    rows = _head_rows(sorted(keep), d)
    new = HeadPrunedAttention(e, len(keep), d, m.in_proj_bias is not None)
    with torch.no_grad():
        for i, lin in enumerate((new.q_proj, new.k_proj, new.v_proj)):
            lin.weight.copy_(m.in_proj_weight[i * e:(i + 1) * e][rows])
            if m.in_proj_bias is not None:
                lin.bias.copy_(m.in_proj_bias[i * e:(i + 1) * e][rows])
        new.out_proj.weight.copy_(m.out_proj.weight[:, rows])
        if m.out_proj.bias is not None:
            new.out_proj.bias.copy_(m.out_proj.bias)
    return new.train(m.training)


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def prune_heads(model: nn.Module, ratio: float, keep: list[str]) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Remove round(ratio x heads) heads (at least one kept) of every nn.MultiheadAttention outside
    `keep`, the lowest head_importance first, in place: each becomes a HeadPrunedAttention.
    Returns ({path: [heads before, after]}, {path: why its heads were kept})."""
    done, kept = {}, {}
    for path in attention_modules(model):
        m = model.get_submodule(path)
        why = "kept whole by prune.ignored_layers or the head" if _inside(path, keep) else (
            _heads_unsupported(m) if isinstance(m, nn.MultiheadAttention) else "heads already removed")
        if why:
            kept[path] = why
            continue
        n = max(1, m.num_heads - round(ratio * m.num_heads))
        order = torch.argsort(head_importance(m), descending=True)
        _replace(model, path, without_heads(m, order[:n].tolist()))
        done[path] = [m.num_heads, n]
    return done, kept


# --- unstructured -----------------------------------------------------------------------------

def unstructured(model: nn.Module, sparsity: float, criterion: str = "l1", scope: str = "global",
                 keep: list[str] | None = None, seed: int = 0) -> nn.Module:
    """A copy of `model` with `sparsity` of the weights of its Conv2d / Linear layers (outside
    `keep`) masked to zero: by smallest |w| (l1) or at random, per layer or over all of them at once
    (global). The masks stay attached (forward pre-hooks), so fine-tuning keeps the zeros;
    `make_permanent` removes them."""
    check_choice("prune.unstructured_criteria", criterion, UNSTRUCTURED_CRITERIA)
    check_choice("prune.unstructured_scopes", scope, PRUNE_SCOPES)
    if not 0 < sparsity < 1:
        raise PruningError(f"'prune.sparsities': {sparsity} must be strictly between 0 and 1")
    m = copy.deepcopy(model)
    layers = [(mod, "weight") for _, mod in prunable_layers(m, keep or [])]
    torch.manual_seed(seed)
    method = tprune.L1Unstructured if criterion == "l1" else tprune.RandomUnstructured
    if scope == "global":
        tprune.global_unstructured(layers, pruning_method=method, amount=sparsity)
    else:
        for mod, attr in layers:
            method.apply(mod, attr, amount=sparsity)
    return m


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every pruning mask into its weight (in place): a plain module with zeros in it."""
    for mod in model.modules():
        for hook in list(mod._forward_pre_hooks.values()):
            if isinstance(hook, tprune.BasePruningMethod):
                tprune.remove(mod, hook._tensor_name)
    return model


def sparsity_table(model: nn.Module, keep: list[str] | None = None) -> pd.DataFrame:
    """Per Conv2d / Linear weight: elements, zeros and sparsity (as executed: masks applied), and
    whether it was kept whole; a final row `global` over the pruned layers."""
    rows = {}
    keep = keep or []
    for name, mod in model.named_modules():
        if isinstance(mod, PRUNABLE):
            w = mod.weight.detach()
            rows[name] = {"elements": w.numel(), "zeros": int((w == 0).sum()), "kept_whole": _inside(name, keep)}
    df = pd.DataFrame(rows).T
    pruned = df[~df["kept_whole"].astype(bool)]
    df.loc["global"] = {"elements": int(pruned["elements"].sum()), "zeros": int(pruned["zeros"].sum()), "kept_whole": False}
    df["sparsity"] = df["zeros"].astype(float) / df["elements"].astype(float)
    return df


def sparse_storage(model: nn.Module) -> dict:
    """What the weights would take stored sparsely, against the dense state_dict.

    dense_bytes      the state_dict as torch.save writes it (what the artifact is)
    gzip_bytes       that file gzip-compressed (measured: runs of zeros compress)
    bitmask_bytes    every tensor as its non-zero float32 values plus one bit per element (computed)
    """
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    dense = buf.getvalue()
    bitmask = 0
    for t in model.state_dict().values():
        if t.is_floating_point() and t.ndim > 1:
            bitmask += int((t != 0).sum()) * t.element_size() + (t.numel() + 7) // 8
        else:
            bitmask += t.numel() * t.element_size()
    return {"dense_bytes": len(dense), "gzip_bytes": len(gzip.compress(dense, 6)), "bitmask_bytes": bitmask}


# --- structured -------------------------------------------------------------------------------

def _attention_ops(m: HeadPrunedAttention, inputs, output) -> None:
    """Torch-Pruning's count for nn.MultiheadAttention, with `heads` of `head_dim` (the same number
    as for the module it came from while every head is kept)."""
    q, k, v = inputs[:3]
    (b, nq, e), nk, inner = q.shape, k.shape[1], m.heads * m.head_dim
    ops = nq * inner + (nq + 2 * nk) * e * inner + (nq + 2 * nk) * inner * int(m.q_proj.bias is not None)
    ops += m.heads * (2 * nq * nk * m.head_dim + nq * nk) + nq * inner * e + nq * e
    m.__flops__ += int(ops * b)


def macs_and_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """Multiply-accumulates of one forward pass on `example` and the parameter count (Torch-Pruning's
    counter; a head-pruned attention counted as its nn.MultiheadAttention is)."""
    import torch_pruning as tp
    from torch_pruning.utils import op_counter

    op_counter.CUSTOM_MODULES_MAPPING = {HeadPrunedAttention: _attention_ops}  # reset by every count
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model.eval(), example)
    return int(macs), int(params)


def importance(criterion: str):
    import torch_pruning as tp

    check_choice("prune.criteria", criterion, STRUCTURED_CRITERIA)
    return {"l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "taylor": lambda: tp.importance.GroupTaylorImportance(),
            "bn_scale": lambda: tp.importance.BNScaleImportance(),
            "random": lambda: tp.importance.RandomImportance()}[criterion]()


@dataclass
class StructuredPlan:
    criterion: str = "l2"
    ratio: float = 0.5  # fraction of channels removed (per layer, or over all layers when global)
    scope: str = "layer"
    round_to: int | None = 8
    steps: int = 1  # iterative: prune to ratio in this many steps, calling between_steps after each
    keep: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_choice("prune.criteria", self.criterion, STRUCTURED_CRITERIA)
        check_choice("prune.scopes", self.scope, PRUNE_SCOPES)
        if not 0 < self.ratio < 1:
            raise PruningError(f"'prune.ratios': {self.ratio} must be strictly between 0 and 1")

    def label(self) -> str:
        parts = [self.criterion]
        if self.scope == "global":
            parts.append("global")
        parts.append(f"{round(self.ratio * 100)}")
        if self.round_to is None:
            parts.append("unrounded")
        if self.steps > 1:
            parts.append(f"iter{self.steps}")
        return "-".join(parts)


def structured(model: nn.Module, example: torch.Tensor, plan: StructuredPlan, gradient_batches=None,
               loss_fn=None, between_steps=None) -> tuple[nn.Module, dict]:
    """A copy of `model` with channels removed by Torch-Pruning's dependency graph.

    gradient_batches   [(x, y)] whose loss gradients score channels (criterion taylor), recomputed
                       before each step
    between_steps      called as between_steps(model, step) after each step but the last (fine-tuning
                       between the steps of iterative pruning)
    Returns (pruned model in eval mode, info: MACs and parameters before / after, per-step history).
    """
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    macs0, params0 = macs_and_params(m, example)
    ignored = [resolve_module(m, n) for n in plan.keep]
    # Attention: whole heads removed at the plan's ratio, in one go before the channel steps (the
    # lowest L2 norm first; HeadPrunedAttention); Torch-Pruning then leaves attention alone and
    # prunes the MLPs' hidden widths and every convolution's channels. The residual stream stays.
    heads, heads_kept = prune_heads(m, plan.ratio, plan.keep)
    attention = attention_modules(m)
    ignored += [resolve_module(m, n) for n in attention]
    pruner = tp.pruner.BasePruner(m, example, importance=importance(plan.criterion), pruning_ratio=plan.ratio,
                                  global_pruning=plan.scope == "global", iterative_steps=plan.steps,
                                  ignored_layers=ignored, round_to=plan.round_to)
    history = []
    for step in range(plan.steps):
        t0 = time.perf_counter()
        if plan.criterion == "taylor":
            if not gradient_batches:
                raise PruningError("criterion taylor needs training batches to score channels (no training side)")
            m.zero_grad()
            m.eval()  # BatchNorm in inference mode: the gradients score the model as deployed
            for xb, yb in gradient_batches:
                loss_fn(m(xb), yb).backward()
        pruner.step()
        m.zero_grad(set_to_none=True)
        macs, params = macs_and_params(m, example)
        history.append({"step": step + 1, "macs": macs, "parameters": params, "prune_seconds": time.perf_counter() - t0})
        if between_steps is not None and step < plan.steps - 1:
            between_steps(m, step + 1)
    for p in m.parameters():
        p.grad = None
    macs1, params1 = macs_and_params(m, example)
    return m.eval(), {"kind": "structured", "criterion": plan.criterion, "ratio": plan.ratio, "scope": plan.scope,
                      "round_to": plan.round_to, "steps": plan.steps, "kept_whole": plan.keep,
                      "attention_heads": heads or None,
                      "attention_kept_whole": ATTENTION_KEPT.format(why="; ".join(sorted(set(heads_kept.values()))))
                      if heads_kept else None,
                      "macs_before": macs0, "macs_after": macs1, "parameters_before": params0, "parameters_after": params1,
                      "macs_speedup": macs0 / macs1, "history": history, "channels": channel_summary(model, m)}


def _width(mod: nn.Module) -> int | None:
    return mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features if isinstance(mod, nn.Linear) else None


def channel_summary(before: nn.Module, after: nn.Module) -> dict[str, list[int]]:
    """{path: [output width before, after]} for every Conv2d (channels) and Linear (features) whose
    width changed."""
    b = {n: _width(mod) for n, mod in before.named_modules() if _width(mod) is not None}
    return {n: [b[n], _width(mod)] for n, mod in after.named_modules()
            if _width(mod) is not None and n in b and b[n] != _width(mod)}


# --- saving and rebuilding without a full pickle ----------------------------------------------

def channel_config(model: nn.Module) -> dict[str, dict]:
    """The shape-defining attributes of every Conv2d / BatchNorm2d / Linear, and every attention
    whose heads were removed: with the state_dict, enough to rebuild a pruned model from its
    architecture's constructor."""
    cfg = {}
    for n, m in model.named_modules():
        if isinstance(m, HeadPrunedAttention):  # replaces an nn.MultiheadAttention; its Linears follow
            cfg[n] = {"type": "HeadPrunedAttention", "embed": m.embed_dim, "heads": m.heads, "head_dim": m.head_dim,
                      "bias": m.q_proj.bias is not None}
        elif isinstance(m, nn.Conv2d):
            cfg[n] = {"type": "Conv2d", "in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.BatchNorm2d):
            cfg[n] = {"type": "BatchNorm2d", "features": m.num_features}
        elif isinstance(m, nn.Linear):
            cfg[n] = {"type": "Linear", "in": m.in_features, "out": m.out_features}
    return cfg


def _reshape(m: nn.Module, c: dict) -> None:
    """Give module `m` the shapes of config entry `c` (empty tensors: load_state_dict fills them)."""
    def param(*shape):
        return nn.Parameter(torch.empty(*shape))

    if c["type"] == "Conv2d":
        m.in_channels, m.out_channels, m.groups = c["in"], c["out"], c["groups"]
        m.weight = param(c["out"], c["in"] // c["groups"], *m.kernel_size)
        if m.bias is not None:
            m.bias = param(c["out"])
    elif c["type"] == "BatchNorm2d":
        m.num_features = c["features"]
        if m.affine:
            m.weight, m.bias = param(c["features"]), param(c["features"])
        if m.track_running_stats:
            m.running_mean, m.running_var = torch.zeros(c["features"]), torch.ones(c["features"])
    elif c["type"] == "Linear":
        m.in_features, m.out_features = c["in"], c["out"]
        m.weight = param(c["out"], c["in"])
        if m.bias is not None:
            m.bias = param(c["out"])


def rebuild_pruned(arch: str, num_classes: int, config: dict[str, dict], state_path: str | Path,
                   head: str | None = None) -> nn.Module:
    """The pruned model: `arch` built fresh, its layers given the shapes in `config`
    (channel_config), the state_dict at `state_path` loaded with weights_only=True."""
    model = build_model(arch, num_classes)
    for n, c in config.items():  # attention with heads removed first: its projections are new modules
        if c["type"] == "HeadPrunedAttention":
            if not isinstance(dict(model.named_modules()).get(n), nn.MultiheadAttention):
                raise PruningError(f"pruned artifact: {arch} has no nn.MultiheadAttention at {n!r} (saved from another "
                                   "architecture?)")
            _replace(model, n, HeadPrunedAttention(c["embed"], c["heads"], c["head_dim"], c["bias"]))
    modules = dict(model.named_modules())
    missing = [n for n in config if n not in modules]
    if missing:
        raise PruningError(f"pruned artifact: {arch} has no modules {missing[:3]} (saved from another architecture?)")
    for n, c in config.items():
        if c["type"] != "HeadPrunedAttention":
            _reshape(modules[n], c)
    model.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    if head:
        setattr(model, HEAD_ATTRIBUTE, head)
    return model.eval()


def pruned_artifact(model: nn.Module, eager: Artifact, path: str | Path) -> Artifact:
    """Save `model`'s state_dict at `path`; the artifact (kind pytorch-pruned) that rebuilds it."""
    state = save_state_dict(model, path)
    o = eager.options
    return Artifact("pytorch-pruned", {"state": str(state)},
                    {"arch": o["arch"], "num_classes": o["num_classes"], "head": o.get("head"),
                     "channels": channel_config(model)}, eager.preprocess)


def load_pruned(artifact: Artifact, name: str, threads: int, device: str) -> TorchRunner:
    o = artifact.options
    model = rebuild_pruned(o["arch"], o["num_classes"], o["channels"], artifact.files["state"], o.get("head"))
    return TorchRunner(model, spec_of(artifact), name=name, device=device, threads=threads, technique="pruning")


def eager_runner(model: nn.Module, name: str, eager: Artifact, out_dir: str | Path, threads: int,
                 pruning: dict, one_time_cost_seconds: dict | None = None) -> TorchRunner:
    """PyTorch eager over a pruned model, its artifact saved in `out_dir`."""
    artifact = pruned_artifact(model, eager, Path(out_dir) / f"{name}.state.pt")
    r = TorchRunner(model, spec_of(eager), name=name, threads=threads, technique="pruning")
    return r.annotate(size_bytes=Path(artifact.files["state"]).stat().st_size, artifact=artifact,
                      one_time_cost_seconds=one_time_cost_seconds, pruning=pruning)
