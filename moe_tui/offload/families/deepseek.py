"""DeepSeek-V2, DeepSeek-V3 and GLM-4.5: group-limited routing, shared experts (resident with the block), dense
first layers (no experts to offload) and, for the DeepSeeks, multi-head latent attention (transformers' own).

* V2 scores experts by softmax and, with ``topk_method: group_limited_greedy``, keeps the ``topk_group``
  groups whose best expert scores highest;
* V3 and GLM-4.5 score by sigmoid plus a learned correction bias (used for choosing only) and keep the groups
  whose two best experts sum highest.

Original checkpoints name experts as Qwen-MoE does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe_tui.errors import UserError
from moe_tui.offload.families.base import Family, check_groups, check_top_k, mask_groups
from moe_tui.offload.families.qwen import QWEN_NAMES


def v2_choice(router: nn.Module, hidden: Tensor) -> Tensor:
    """DeepSeek-V2's ranking: softmax scores, limited to the best groups by their best expert."""
    scores = F.linear(hidden.float(), router.weight.float()).softmax(dim=-1)
    if router.topk_method != "group_limited_greedy":
        return scores
    return mask_groups(scores, router.num_group, router.topk_group, lambda grouped: grouped.max(dim=-1).values)


def v3_choice(router: nn.Module, hidden: Tensor) -> Tensor:
    """DeepSeek-V3's and GLM-4.5's ranking: sigmoid scores plus the correction bias, limited to the best groups
    by the sum of their two best experts."""
    scores = torch.sigmoid(F.linear(hidden.float(), router.weight.float())) + router.e_score_correction_bias
    return mask_groups(
        scores, router.num_group, router.topk_group, lambda grouped: grouped.topk(2, dim=-1).values.sum(dim=-1)
    )


def check_v2(config: object) -> None:
    """Top-k within the experts; groups that work when routing is group-limited."""
    check_top_k(config, "n_routed_experts")
    if config.topk_method == "group_limited_greedy":
        check_groups(config, config.n_routed_experts)


def check_v3(config: object) -> None:
    """Top-k within the experts; groups that work, each of at least two experts (V3 ranks groups by their best
    two)."""
    experts = config.n_routed_experts
    check_top_k(config, "n_routed_experts")
    check_groups(config, experts)
    if experts // config.n_group < 2:
        raise UserError(f"n_group {config.n_group} leaves fewer than 2 experts a group ({experts} experts)")


DEEPSEEK_V2 = Family("deepseek_v2", check_v2, expert_names=QWEN_NAMES, choice=v2_choice)
DEEPSEEK_V3 = Family("deepseek_v3", check_v3, expert_names=QWEN_NAMES, choice=v3_choice)
GLM4_MOE = Family("glm4_moe", check_v3, expert_names=QWEN_NAMES, choice=v3_choice)
