"""The model families the engine offloads, one adapter each (see :mod:`moe_tui.offload.families.base`)."""

from moe_tui.offload.families.base import Family
from moe_tui.offload.families.deepseek import DEEPSEEK_V2, DEEPSEEK_V3, GLM4_MOE
from moe_tui.offload.families.gpt_oss import GPT_OSS
from moe_tui.offload.families.granite import GRANITEMOE
from moe_tui.offload.families.mixtral import MIXTRAL, PHIMOE
from moe_tui.offload.families.qwen import OLMOE, QWEN2_MOE, QWEN3_MOE

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        MIXTRAL,
        PHIMOE,
        QWEN2_MOE,
        QWEN3_MOE,
        OLMOE,
        DEEPSEEK_V2,
        DEEPSEEK_V3,
        GLM4_MOE,
        GRANITEMOE,
        GPT_OSS,
    )
}

__all__ = ["FAMILIES", "Family"]
