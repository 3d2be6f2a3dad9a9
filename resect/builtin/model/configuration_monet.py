"""Monet configuration (arXiv 2412.04139) for transformers 5.x.

Reads the published `config.json` files as they are: LLaMA keys (`rope_theta`, `rope_scaling`,
`intermediate_size: null`, `mlp_bias: null`) plus the `moe_*` keys. Self-contained: edited
checkpoints carry a copy of this file for `trust_remote_code=True`.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

DECOMPOSITIONS = ("vertical", "horizontal")
MASK_KERNELS = ("auto", "torch", "numba", "triton", "reference")  # the masked experts' implementations


@strict
class MonetConfig(PreTrainedConfig):
    model_type = "monet"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    vocab_size: int = 32000
    hidden_size: int = 2048
    intermediate_size: int | None = None  # unused: the MLP is the expert layer
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "relu2"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    attention_bias: bool = False
    attention_dropout: int | float | None = 0.0
    mlp_bias: bool | None = None  # unused, kept for byte-compatible configs
    moe_dim: int = 16
    moe_heads: int = 8
    moe_experts: int = 512
    moe_topk: int = 32
    moe_groups: int = 4
    moe_decompose: str = "vertical"
    output_router_probs: bool = False
    mask_kernel: str = "auto"  # masked experts: auto (Triton on CUDA, numba on CPU, when installed), torch, numba, triton, reference

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Checked on construction; a config that fails cannot describe a Monet model."""
        if self.moe_decompose not in DECOMPOSITIONS:
            raise ValueError(f"moe_decompose must be one of {DECOMPOSITIONS}, got {self.moe_decompose!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads")
        if self.moe_decompose == "vertical" and (self.moe_dim % 2 or self.hidden_size % 2):
            raise ValueError("vertical decomposition needs an even moe_dim and hidden_size")
        if not 0 < self.moe_topk < self.moe_experts:
            raise ValueError(f"moe_topk must lie in (0, moe_experts={self.moe_experts}), got {self.moe_topk}")
        if self.moe_groups < 1:
            raise ValueError(f"moe_groups must be >= 1, got {self.moe_groups}")
        if self.mask_kernel not in MASK_KERNELS:
            raise ValueError(f"mask_kernel must be one of {', '.join(MASK_KERNELS)}, got {self.mask_kernel!r}")

    @property
    def num_routing_groups(self) -> int:
        return -(-self.num_hidden_layers // self.moe_groups)

    @property
    def experts_per_group(self) -> int:
        return self.moe_experts * self.moe_experts


__all__ = ["MonetConfig"]
