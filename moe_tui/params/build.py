"""Build the parameter tree of a model from its config: instantiate it on the meta device and walk its modules.

The meta device gives every tensor a shape and no storage, so even DeepSeek-V3 builds in a fraction of a
second and no memory. Active parameters are derived, never guessed: each family in
:mod:`moe_tui.params.families` says which config field is the top-k, and the walker marks the routed experts
(fused 3-D tensors, or a list of per-expert modules) as ``top_k`` of ``E`` copies used per token. For a
``model_type`` without that knowledge the tree still carries exact totals, with ``active`` None and a note
on the root that says why.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from moe_tui.errors import UserError
from moe_tui.params.config import one_line
from moe_tui.params.families import Family, family_for, generic_family, known_model_types
from moe_tui.params.tree import ParamNode
from moe_tui.precision import format_count

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig

LAYERS_PATHS = ("model.layers", "transformer.h", "model.decoder.layers", "transformer.layers")
TOKEN_EMBEDDINGS = ("embed_tokens", "wte", "word_embeddings")
SHARED_LABELS = {"shared_expert": "shared expert", "shared_expert_gate": "shared expert gate"}


def build_tree(config: PretrainedConfig) -> ParamNode:
    """The parameter tree of the causal LM that ``config`` describes, built on the meta device (no weights).

    Trees are immutable and cached per config content, so repeated calls (the planner asking for bytes at
    several precisions) cost one build.
    """
    return _cached_tree(_config_key(config), config.model_type)


def _config_key(config: PretrainedConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=str)


@lru_cache(maxsize=16)
def _cached_tree(key: str, model_type: str) -> ParamNode:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = CONFIG_MAPPING[model_type].from_dict(json.loads(key))
    return tree_from_model(meta_model(config), config)


def meta_model(config: PretrainedConfig) -> nn.Module:
    """Instantiate the ``...ForCausalLM`` of ``config`` with every tensor on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(copy.deepcopy(config))
    except Exception as error:  # a config transformers accepted but cannot build: report it, no traceback
        raise UserError(f"cannot build a {config.model_type!r} model from this config: {one_line(error)}") from None


def tree_from_model(model: nn.Module, config: PretrainedConfig | None = None) -> ParamNode:
    """The parameter tree of an already-built model (on any device); ``config`` defaults to ``model.config``."""
    config = config if config is not None else model.config
    family = family_for(config.model_type) or _generic(config, model)
    count = getattr(config, family.experts_field, None) if family is not None and family.is_moe else None
    walker = _Walker(family, _top_k(config, family), count if isinstance(count, int) else None)
    layers_path = _find_layers_path(model)
    children = walker.flatten(model, "", layers_path.split(".") if layers_path else [])
    note = "" if family is not None else _unknown_note(config.model_type)
    if family is None and generic_family(config) is not None:
        note = (
            f"active parameters not derived: this {config.model_type!r} model's routed experts are stored where "
            "moe-tui does not read them (parallel linear modules outside an experts module, or experts inside "
            "attention); the total is exact"
        )
    if family is not None and not family.model_types:
        note = (
            f"a model type moe-tui has no entry for, read as a MoE with routed experts: {family.experts_field} "
            f"experts per layer, {family.top_k_field} of them per token"
        )
    label = f"{type(model).__name__} ({family.name if family else config.model_type})"
    return ParamNode(
        name=type(model).__name__,
        kind="model",
        label=label,
        shapes=walker.own_shapes(model),
        active_copies=walker.active(1),
        children=tuple(children),
        note=note,
    )


def _unknown_note(model_type: str) -> str:
    known = ", ".join(known_model_types())
    return (
        f"active parameters not derived: moe-tui does not know which parameters a token uses in a "
        f"{model_type!r} model (it knows: {known}); the total is exact, an active count would be a guess"
    )


def _generic(config: PretrainedConfig, model: nn.Module) -> Family | None:
    """A generic MoE family when the config names an expert count and a top-k and every routed expert weight of
    the model is inside a feed-forward block's ``experts`` module (the layouts the walker reads); None otherwise:
    experts stored as parallel linear modules elsewhere, or inside attention, are not counted by guess."""
    family = generic_family(config)
    if family is None:
        return None
    walker = _Walker(family, getattr(config, family.top_k_field), getattr(config, family.experts_field))
    readable = False
    for _, module in model.named_modules():
        children = dict(module.named_children())
        if "experts" in children or walker._parallel_experts(module):
            readable = True
    experts = getattr(config, family.experts_field)
    for name, param in model.named_parameters():
        if param.dim() == 3 and param.shape[0] == experts:
            owner = model.get_submodule(name.rsplit(".", 2)[0]) if name.count(".") >= 2 else model
            if "experts" not in name.split(".") and not walker._parallel_experts(owner):
                return None  # a routed weight where no router sits beside it: not counted by guess
    return family if readable else None


def _top_k(config: PretrainedConfig, family: Family | None) -> int | None:
    if family is None or not family.is_moe:
        return None
    value = getattr(config, family.top_k_field, None)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"the config's {family.top_k_field} is {value!r}: a {family.name} model needs a top-k >= 1")
    return value


def _find_layers_path(model: nn.Module) -> str:
    """The dotted path of the decoder layers' ModuleList ("" when the model has none of the usual ones)."""
    from torch import nn

    for path in LAYERS_PATHS:
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList):
            return path
    return ""


class _Walker:
    """Turns modules into nodes; knows the family (None: unknown) and the top-k of its routed experts."""

    def __init__(self, family: Family | None, top_k: int | None, experts: int | None = None) -> None:
        self.family = family
        self.top_k = top_k
        self.experts = experts  # routed experts per MoE block (finds experts stored as parallel linear modules)
        self.seen: set[int] = set()

    def active(self, copies: int) -> int | None:
        """Active copies of an always-used part: all of them, or None for an unknown family."""
        return copies if self.family is not None else None

    def own_shapes(self, module: nn.Module) -> tuple[tuple[int, ...], ...]:
        """Shapes of the parameters registered directly on ``module``, skipping ones already counted (ties)."""
        shapes = []
        for param in module.parameters(recurse=False):
            if id(param) not in self.seen:
                self.seen.add(id(param))
                shapes.append(tuple(param.shape))
        return tuple(shapes)

    def flatten(self, module: nn.Module, path: str, layers_parts: list[str]) -> list[ParamNode]:
        """Children of ``module`` as top-level nodes: the containers on the way to the decoder layers (the base
        ``model``) are opened up, so the root lists embeddings, layer groups, final norm and lm_head."""
        nodes = []
        for name, child in module.named_children():
            child_path = f"{path}.{name}" if path else name
            if layers_parts and name == layers_parts[0]:
                if len(layers_parts) == 1:
                    nodes.extend(self.layer_groups(child, child_path))
                else:
                    nodes.extend(self.flatten(child, child_path, layers_parts[1:]))
                continue
            node = self.top_level(name, child, child_path)
            if node is not None:
                nodes.append(node)
        return nodes

    def top_level(self, name: str, module: nn.Module, path: str) -> ParamNode | None:
        """Embeddings, final norm, lm_head or anything else outside the decoder layers (None if no params)."""
        from torch import nn

        if isinstance(module, nn.Embedding) or "embed" in name:
            label = "embeddings" if name in TOKEN_EMBEDDINGS else name
            return self.module_node(name, module, path, kind="embeddings", label=label)
        if name == "lm_head":
            node = self.module_node(name, module, path, kind="lm_head", label="lm_head", keep_empty=True)
            if node is not None and node.total == 0:
                return replace(node, label="lm_head (tied to the embeddings)")
            return node
        if "norm" in name:
            return self.module_node(name, module, path, kind="norm", label="final norm")
        return self.module_node(name, module, path, kind="other", label=name)

    def layer_groups(self, layers: Any, path: str) -> list[ParamNode]:
        """One node per run of identical consecutive decoder layers: "layers 0-31 (x32)"."""
        built = [self.layer_node(layer, f"{path}.{index}") for index, layer in enumerate(layers)]
        groups: list[ParamNode] = []
        start = 0
        for end in range(1, len(built) + 1):
            if end == len(built) or built[end].structure() != built[start].structure():
                groups.append(self._group(built[start], start, end - 1, path))
                start = end
        return groups

    def _group(self, layer: ParamNode, first: int, last: int, path: str) -> ParamNode:
        count = last - first + 1
        name = f"layer {first}" if count == 1 else f"layers {first}-{last}"
        return ParamNode(
            name=name,
            kind="layers",
            label=name if count == 1 else f"{name} (x{count})",
            path=f"{path}.{first}" if count == 1 else f"{path}.{first}-{last}",
            shapes=layer.shapes,
            copies=count,
            active_copies=self.active(count),
            repeat=count,
            children=tuple(child.scaled(count) for child in layer.children),
            span=(first, last),
        )

    def layer_node(self, layer: nn.Module, path: str) -> ParamNode:
        """One decoder layer: attention, feed-forward block (MoE or MLP), norms."""
        children = []
        for name, module in layer.named_children():
            child_path = f"{path}.{name}"
            if name in ("self_attn", "self_attention", "attention", "attn"):
                label = self.family.attention_label if self.family else "attention"
                node = self.attention_node(name, module, child_path, label)
            elif name in ("mlp", "block_sparse_moe", "feed_forward", "moe"):
                node = self.feed_forward_node(name, module, child_path)
            elif "norm" in name:
                node = self.module_node(name, module, child_path, kind="norm", label=name)
            else:
                node = self.module_node(name, module, child_path, kind="other", label=name)
            if node is not None:
                children.append(node)
        return ParamNode(
            name="layer",
            kind="layers",
            label="decoder layer",
            path=path,
            shapes=self.own_shapes(layer),
            active_copies=self.active(1),
            children=tuple(children),
        )

    def attention_node(self, name: str, module: nn.Module, path: str, label: str) -> ParamNode | None:
        """Attention, with a mixture of attention experts inside it (JetMoE's MoA) split like a MoE block."""
        inner = dict(module.named_children()).get("experts")
        if inner is None or not self._parallel_experts(inner):
            return self.module_node(name, module, path, kind="attention", label=label)
        children = []
        for child_name, child in module.named_children():
            child_path = f"{path}.{child_name}"
            if child is inner:
                node = self.feed_forward_node(child_name, child, child_path)
            else:
                node = self.module_node(child_name, child, child_path, kind=_leaf_kind(child_name), label=child_name)
            if node is not None:
                children.append(node)
        return ParamNode(
            name=name,
            kind="attention",
            label=f"{label} (mixture of attention experts)",
            path=path,
            shapes=self.own_shapes(module),
            active_copies=self.active(1),
            children=tuple(children),
        )

    def _parallel_experts(self, module: nn.Module) -> list[tuple[str, nn.Module]]:
        """The children of ``module`` that hold every expert of a layer as one 3-D tensor [E, out, in] (experts
        stored as parallel linear modules), when ``module`` also has a router; [] otherwise."""
        children = dict(module.named_children())
        if self.experts is None or not any(name in children for name in ("gate", "router")):
            return []
        found = []
        for name, child in children.items():
            params = list(child.parameters())
            if params and all(p.dim() == 3 and p.shape[0] == self.experts for p in params):
                found.append((name, child))
        return found

    def feed_forward_node(self, name: str, module: nn.Module, path: str) -> ParamNode | None:
        """A dense MLP, or a MoE block split into router, routed experts, shared experts and the rest."""
        experts = dict(module.named_children()).get("experts")
        parallel = self._parallel_experts(module) if experts is None else []
        if parallel:
            return self._parallel_moe_node(name, module, path, parallel)
        if experts is None:
            return self.module_node(name, module, path, kind="mlp", label="MLP")
        routers = self.family.routers if self.family else ("gate", "router")
        shared = self.family.shared if self.family else ()
        children = []
        for child_name, child in module.named_children():
            child_path = f"{path}.{child_name}"
            if child is experts:
                node = self.experts_node(child_name, child, child_path)
            elif child_name in routers:
                node = self.module_node(child_name, child, child_path, kind="router", label="router")
            elif child_name in shared or child_name.startswith("shared_expert"):
                label = SHARED_LABELS.get(child_name, child_name.replace("_", " "))
                node = self.module_node(child_name, child, child_path, kind="shared_experts", label=label)
            else:
                node = self.module_node(child_name, child, child_path, kind="other", label=child_name)
            if node is not None:
                children.append(node)
        return self._moe_block(name, module, path, children)

    def _parallel_moe_node(
        self, name: str, module: nn.Module, path: str, parallel: list[tuple[str, nn.Module]]
    ) -> ParamNode:
        """A MoE block whose experts are parallel linear modules: router, one routed-experts node, the rest."""
        top_k = self.top_k if self.family is not None and self.family.is_moe else None
        leaves = []
        for child_name, child in parallel:
            for param_name, param in child.named_parameters():
                self.seen.add(id(param))
                leaf_name = f"{child_name}.{param_name}"
                leaves.append(_leaf(leaf_name, f"{path}.{leaf_name}", tuple(int(n) for n in param.shape[1:]), None))
        count = int(self.experts or 0)
        each = format_count(sum(leaf.own_params for leaf in leaves))
        routed = ParamNode(
            name="experts",
            kind="experts",
            label=f"routed experts ({count} x {each}, top-{top_k}, parallel linear modules)",
            path=path,
            copies=count,
            active_copies=top_k,
            repeat=count,
            children=tuple(replace(leaf, copies=count, active_copies=top_k) for leaf in leaves),
        )
        children = [routed]
        parallel_names = {child_name for child_name, _ in parallel}
        for child_name, child in module.named_children():
            if child_name in parallel_names:
                continue
            kind, label = ("router", "router") if child_name in ("gate", "router") else ("other", child_name)
            node = self.module_node(child_name, child, f"{path}.{child_name}", kind=kind, label=label)
            if node is not None:
                children.append(node)
        return self._moe_block(name, module, path, children)

    def _moe_block(self, name: str, module: nn.Module, path: str, children: list[ParamNode]) -> ParamNode:
        """The MoE block's node: its own parameters (if any) and the children read from it."""
        return ParamNode(
            name=name,
            kind="moe",
            label="MoE block",
            path=path,
            shapes=self.own_shapes(module),
            active_copies=self.active(1),
            children=tuple(children),
        )

    def experts_node(self, name: str, module: nn.Module, path: str) -> ParamNode:
        """The routed experts: ``repeat`` = number of experts, ``top_k`` of them active per token."""
        from torch import nn

        if isinstance(module, nn.ModuleList):
            count, leaves = self._listed_experts(module, path)
        else:
            count, leaves = self._fused_experts(module, path)
        top_k = self.top_k if self.family is not None and self.family.is_moe else None
        each = format_count(sum(leaf.own_params for leaf in leaves))
        label = (
            f"routed experts ({count} x {each}, top-{top_k})" if top_k is not None else f"experts ({count} x {each})"
        )
        return ParamNode(
            name=name,
            kind="experts",
            label=label,
            path=path,
            copies=count,
            active_copies=top_k,
            repeat=count,
            children=tuple(replace(leaf, copies=count, active_copies=top_k) for leaf in leaves),
        )

    def _listed_experts(self, experts: Any, path: str) -> tuple[int, list[ParamNode]]:
        """Per-expert modules (transformers 4 layout): the leaves of expert 0, after checking all match."""
        shapes = [tuple(tuple(p.shape) for p in expert.parameters()) for expert in experts]
        if any(s != shapes[0] for s in shapes):
            raise UserError(f"{path}: the experts differ in shape, so one expert's size is not defined")
        for expert in experts:
            for param in expert.parameters():
                self.seen.add(id(param))
        first = experts[0]
        leaves = []
        for name, module in first.named_modules():
            own = tuple(tuple(p.shape) for p in module.parameters(recurse=False))
            if own:
                leaf_name = name or "weights"
                leaves.append(ParamNode(leaf_name, "weights", leaf_name, f"{path}.0.{name}".rstrip("."), own))
        return len(experts), leaves

    def _fused_experts(self, module: nn.Module, path: str) -> tuple[int, list[ParamNode]]:
        """Experts fused into 3-D tensors [E, ...]: split each into the matrices one expert owns."""
        params = dict(module.named_parameters(recurse=False))
        for param in params.values():
            self.seen.add(id(param))
        counts = {int(p.shape[0]) for p in params.values()}
        nested = sum(p.numel() for child in module.children() for p in child.parameters())
        if len(counts) != 1 or nested:
            raise UserError(f"{path}: unexpected experts layout (leading sizes {sorted(counts)}, nested {nested})")
        count = counts.pop()
        transposed = bool(getattr(module, "is_transposed", False))
        has_gate = bool(getattr(module, "has_gate", True))
        leaves = []
        for name, param in params.items():
            if name.endswith("_bias") and name[: -len("_bias")] in params:
                continue
            shape = tuple(int(n) for n in param.shape[1:])
            bias = params.get(f"{name}_bias")
            bias_shape = tuple(int(n) for n in bias.shape[1:]) if bias is not None else None
            if name == "gate_up_proj" and has_gate:
                for part in ("gate_proj", "up_proj"):
                    leaves.append(_leaf(part, f"{path}.{name}", _half(shape, transposed), _half(bias_shape, True)))
            else:
                leaves.append(_leaf(name, f"{path}.{name}", shape, bias_shape))
        return count, leaves

    def module_node(
        self, name: str, module: nn.Module, path: str, *, kind: str, label: str, keep_empty: bool = False
    ) -> ParamNode | None:
        """A node for ``module`` with its direct tensors and one ``weights`` child per sub-module with params."""
        shapes = self.own_shapes(module)
        children = []
        for child_name, child in module.named_children():
            node = self.module_node(
                child_name, child, f"{path}.{child_name}", kind=_leaf_kind(child_name), label=child_name
            )
            if node is not None:
                children.append(node)
        if not shapes and not children and not keep_empty:
            return None
        return ParamNode(
            name=name,
            kind=kind,
            label=label,
            path=path,
            shapes=shapes,
            active_copies=self.active(1),
            children=tuple(children),
        )


def _leaf_kind(name: str) -> str:
    return "norm" if "norm" in name else "weights"


def _leaf(name: str, path: str, shape: tuple[int, ...], bias_shape: tuple[int, ...] | None) -> ParamNode:
    shapes = (shape,) if bias_shape is None else (shape, bias_shape)
    return ParamNode(name=name, kind="weights", label=name, path=path, shapes=shapes)


def _half(shape: tuple[int, ...] | None, last_axis: bool) -> tuple[int, ...] | None:
    """Half of a fused gate|up tensor: split the first axis ([2I, H]) or, transposed, the last ([H, 2I])."""
    if shape is None:
        return None
    axis = len(shape) - 1 if last_axis else 0
    if shape[axis] % 2:
        raise UserError(f"fused gate/up tensor of shape {shape} cannot be split in half")
    return tuple(n // 2 if i == axis else n for i, n in enumerate(shape))
