"""Frozen, checked model configurations for the two families jaxreason implements.

One dataclass per family (:class:`GPT2Config`, :class:`LlamaConfig`), both built on
:class:`BaseConfig`, which holds what every decoder-only transformer shares. Each config:

* checks itself in ``__post_init__`` (heads divide evenly, dtypes are known, ...),
* exposes derived fields as properties (``head_dim``, ``num_kv_groups``),
* converts from and to a HuggingFace ``config.json`` dict (``from_hf`` / ``to_hf``). The
  converter refuses fields it does not understand, so a checkpoint feature that jaxreason does
  not implement (sliding windows on Qwen2 layers, YaRN rope, Q/K norms, ...) is an error that
  names the field instead of a silently wrong model,
* has a ``tiny()`` preset that the tests use.

Dtypes are stored as strings (``"float32"``, ``"bfloat16"``) so configs stay hashable, print
nicely and round-trip through YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from typing import Any, ClassVar

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Models this deep run their blocks under scan unless the config says otherwise: below it,
# compiling the unrolled blocks is quick and the per-layer parameter tree is the simpler one.
SCAN_MIN_LAYERS = 16
REMAT_CHOICES = ("none", "block", "dots")
ATTENTION_CHOICES = ("auto", "explicit")
# config fields that choose how a model runs, not what it computes
EXECUTION_OPTIONS = ("scan_layers", "remat", "attention_impl")

# Keys every HF config.json may carry that do not change the forward pass.
_HF_HARMLESS = frozenset({
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "use_cache", "_name_or_path", "_attn_implementation_autoset", "_commit_hash",
    "initializer_range", "output_attentions", "output_hidden_states", "return_dict",
    "task_specific_params", "id2label", "label2id", "problem_type", "tokenizer_class",
    "prefix", "finetuning_task", "chunk_size_feed_forward", "is_encoder_decoder",
    "is_decoder", "add_cross_attention", "tie_encoder_decoder", "pruned_heads",
    "torchscript", "max_length", "min_length", "do_sample",
    "early_stopping", "num_beams", "temperature", "top_k", "top_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "bad_words_ids", "num_return_sequences",
    "output_scores", "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "typical_p", "diversity_penalty", "num_beam_groups",
    "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "cross_attention_hidden_size", "tf_legacy_loss",
    "use_bfloat16", "generation_config", "num_labels",
    "attn_implementation", "_attn_implementation",
    "_experts_implementation",
})


def dtype_of(name: str):
    """The jnp dtype for a config dtype string."""
    return DTYPES[name]


def _check_choice(field: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not supported; allowed: {sorted(allowed)}")


def refuse_unknown_hf_fields(hf: dict, known: set[str], model_type: str) -> None:
    """Raise on HF config keys that jaxreason neither implements nor knows to be harmless."""
    unknown = sorted(k for k in hf if k not in known and k not in _HF_HARMLESS)
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, sorted(known), n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"{model_type} config.json has fields jaxreason does not implement: {', '.join(hints)}. "
            "Refusing to load a model that might compute something different; pass strict=False "
            "to load_pretrained to ignore them at your own risk.")


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Fields shared by every decoder-only transformer jaxreason builds.

    Attributes:
      vocab_size: rows of the token embedding (and the LM head).
      hidden_size: width D of the residual stream.
      num_layers: number of transformer blocks L.
      num_heads: query heads H.
      intermediate_size: width F of the MLP hidden layer (the neurons of ``mlp.hook_post``).
      max_position_embeddings: longest sequence the positional scheme is meant for.
      tie_word_embeddings: the LM head reuses the token embedding matrix.
      dtype: compute dtype of matmuls; softmax and norms always run in float32.
      param_dtype: storage dtype of the parameters.

    Execution options (how the model runs, not what it computes; never written to HF files):
      scan_layers: stack the blocks' parameters (leading axis L) and run the blocks under
        ``nn.scan``, so compile time does not grow with depth. None (the default) scans
        models with at least :data:`SCAN_MIN_LAYERS` blocks. Every hook works in both
        layouts; ``jaxreason.models.layout`` converts parameter trees between them.
      remat: activation checkpointing of each block for training: ``none``, ``block`` (keep
        only the block inputs, recompute the rest in the backward pass) or ``dots`` (keep
        the products with the weights, recompute the rest).
      attention_impl: ``auto`` uses ``jax.nn.dot_product_attention`` in every layer whose
        scores and pattern (``attn.hook_attn_scores``, ``attn.hook_pattern``) are neither
        captured nor edited, and the explicit softmax path elsewhere; ``explicit`` always
        uses the explicit path.
    """

    family: ClassVar[str] = "base"
    vocab_size: int = 256
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool | None = None
    remat: str = "none"
    attention_impl: str = "auto"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                     "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("param_dtype", self.param_dtype, DTYPES)
        _check_choice("remat", self.remat, REMAT_CHOICES)
        _check_choice("attention_impl", self.attention_impl, ATTENTION_CHOICES)
        if self.scan_layers not in (None, True, False):
            raise ValueError(f"scan_layers={self.scan_layers!r} must be true, false or null "
                             f"(null: scan models of {SCAN_MIN_LAYERS} or more layers)")

    @property
    def scanned(self) -> bool:
        """Whether the blocks run under scan with stacked parameters (see ``scan_layers``)."""
        if self.scan_layers is None:
            return self.num_layers >= SCAN_MIN_LAYERS
        return self.scan_layers

    def execution_options(self) -> dict:
        """The execution options (``scan_layers``, ``remat``, ``attention_impl``)."""
        return {name: getattr(self, name) for name in EXECUTION_OPTIONS}

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    @property
    def num_kv_groups(self) -> int:
        """Query heads per key/value head (1 for multi-head attention)."""
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes) -> "BaseConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {"family": self.family, **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class GPT2Config(BaseConfig):
    """GPT-2: learned positions, pre-LayerNorm, fused QKV, ``gelu_new`` MLP, tied head."""

    family: ClassVar[str] = "gpt2"
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu_new"

    ACTIVATIONS: ClassVar[tuple] = ("gelu_new", "gelu", "relu", "gelu_pytorch_tanh")

    def __post_init__(self):
        super().__post_init__()
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_heads={self.num_heads}")
        _check_choice("activation", self.activation, self.ACTIVATIONS)

    @classmethod
    def tiny(cls, **overrides) -> "GPT2Config":
        """A 2-layer, 64-wide GPT-2 for tests (runs in milliseconds on a CPU)."""
        base = dict(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4,
                    intermediate_size=256, max_position_embeddings=128)
        return cls(**{**base, **overrides})

    @classmethod
    def small(cls, **overrides) -> "GPT2Config":
        """The GPT-2 small (124M) shape."""
        base = dict(vocab_size=50257, hidden_size=768, num_layers=12, num_heads=12,
                    intermediate_size=3072, max_position_embeddings=1024)
        return cls(**{**base, **overrides})

    HF_FIELDS: ClassVar[frozenset] = frozenset({
        "vocab_size", "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "n_ctx",
        "layer_norm_epsilon", "activation_function", "tie_word_embeddings", "resid_pdrop",
        "embd_pdrop", "attn_pdrop", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
        "reorder_and_upcast_attn", "summary_type", "summary_use_proj", "summary_activation",
        "summary_proj_to_labels", "summary_first_dropout", "add_cross_attention",
        "n_special", "predict_special_tokens",
    })

    @classmethod
    def from_hf(cls, hf: dict, strict: bool = True, **overrides) -> "GPT2Config":
        """Build from a HF GPT-2 ``config.json`` dict, refusing features not implemented."""
        _check_choice("model_type", hf.get("model_type", "gpt2"), {"gpt2"})
        if strict:
            refuse_unknown_hf_fields(hf, cls.HF_FIELDS, "gpt2")
        for flag, wanted in (("scale_attn_weights", True),
                             ("scale_attn_by_inverse_layer_idx", False),
                             ("reorder_and_upcast_attn", False),
                             ("add_cross_attention", False)):
            if hf.get(flag, wanted) != wanted:
                raise ValueError(f"gpt2 config field {flag}={hf[flag]!r} is not implemented "
                                 f"(only {wanted!r})")
        if not hf.get("tie_word_embeddings", True):
            raise ValueError("gpt2 config field tie_word_embeddings=False is not implemented; "
                             "GPT-2's LM head is the token embedding")
        n_embd = hf.get("n_embd", 768)
        fields = dict(
            vocab_size=hf.get("vocab_size", 50257), hidden_size=n_embd,
            num_layers=hf.get("n_layer", 12), num_heads=hf.get("n_head", 12),
            intermediate_size=hf.get("n_inner") or 4 * n_embd,
            max_position_embeddings=hf.get("n_positions", 1024),
            layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
            activation=hf.get("activation_function", "gelu_new"))
        return cls(**{**fields, **overrides})

    def to_hf(self) -> dict:
        return {
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size, "n_embd": self.hidden_size,
            "n_layer": self.num_layers, "n_head": self.num_heads,
            "n_inner": self.intermediate_size, "n_positions": self.max_position_embeddings,
            "n_ctx": self.max_position_embeddings,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "activation_function": self.activation, "tie_word_embeddings": True,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "torch_dtype": self.param_dtype,
        }


ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class LlamaConfig(BaseConfig):
    """Llama family: RMSNorm, RoPE (default, linear or llama3 scaling), GQA, SwiGLU.

    Covers Llama 1-3, Mistral (with its sliding window), Qwen2/2.5 (bias on q/k/v) and Yi
    checkpoints whose config fits these features.

    Attributes (beyond :class:`BaseConfig`):
      kv_heads: key/value heads K; must divide ``num_heads``. ``None`` means K = H.
      head_dim_override: per-head width when it is not ``hidden_size // num_heads``
        (Mistral-Nemo uses 128 with hidden 5120 and 32 heads).
      rope_theta: RoPE base.
      rope_type: ``default``, ``linear`` or ``llama3``; the scaling fields below apply to
        the last two.
      sliding_window: attend only to the last ``sliding_window`` positions (Mistral).
      qkv_bias, o_bias, mlp_bias: optional biases (Qwen2 uses q/k/v bias only).
    """

    family: ClassVar[str] = "llama"
    kv_heads: int | None = None
    head_dim_override: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    sliding_window: int | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.kv_heads is None:  # one spelling per model, so equal models compare equal
            object.__setattr__(self, "kv_heads", self.num_heads)
        if self.kv_heads <= 0 or self.num_heads % self.kv_heads:
            raise ValueError(f"kv_heads={self.kv_heads} must be positive and divide "
                             f"num_heads={self.num_heads}")
        if self.head_dim_override is None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads="
                             f"{self.num_heads}; set head_dim_override")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        _check_choice("rope_type", self.rope_type, ROPE_TYPES)
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"sliding_window={self.sliding_window} must be positive or None")

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden_size // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads or self.num_heads

    @classmethod
    def tiny(cls, **overrides) -> "LlamaConfig":
        """A 2-layer, 64-wide Llama with GQA (4 query heads, 2 KV heads) for tests."""
        base = dict(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, kv_heads=2,
                    intermediate_size=128, max_position_embeddings=256)
        return cls(**{**base, **overrides})

    HF_FIELDS: ClassVar[frozenset] = frozenset({
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "intermediate_size", "max_position_embeddings", "head_dim",
        "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters", "hidden_act",
        "tie_word_embeddings", "attention_bias", "mlp_bias", "attention_dropout",
        "pretraining_tp", "sliding_window", "use_sliding_window", "max_window_layers",
        "layer_types",
    })
    MODEL_TYPES: ClassVar[tuple] = ("llama", "mistral", "qwen2")

    @classmethod
    def from_hf(cls, hf: dict, strict: bool = True, **overrides) -> "LlamaConfig":
        """Build from a HF Llama/Mistral/Qwen2 ``config.json`` dict."""
        model_type = hf.get("model_type", "llama")
        _check_choice("model_type", model_type, cls.MODEL_TYPES)
        if strict:
            refuse_unknown_hf_fields(hf, cls.HF_FIELDS, model_type)
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"{model_type} config field hidden_act={act!r} is not implemented "
                             "(only 'silu')")
        rope = _rope_from_hf(hf)
        window = _sliding_window_from_hf(hf, model_type)
        hidden, heads = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
        head_dim = hf.get("head_dim")
        bias = bool(hf.get("attention_bias", False))
        fields = dict(
            vocab_size=hf.get("vocab_size", 32000), hidden_size=hidden,
            num_layers=hf.get("num_hidden_layers", 32), num_heads=heads,
            kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim_override=head_dim if head_dim and head_dim != hidden // heads else None,
            intermediate_size=hf.get("intermediate_size", 11008),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            sliding_window=window,
            qkv_bias=True if model_type == "qwen2" else bias,
            o_bias=False if model_type == "qwen2" else bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            **rope)
        return cls(**{**fields, **overrides})

    def to_hf(self) -> dict:
        """A Llama (or Mistral/Qwen2, when the biases or window demand it) config dict."""
        if self.qkv_bias and not self.o_bias:
            model_type, arch = "qwen2", "Qwen2ForCausalLM"
        elif self.sliding_window is not None:
            model_type, arch = "mistral", "MistralForCausalLM"
        else:
            model_type, arch = "llama", "LlamaForCausalLM"
        if model_type == "mistral" and (self.qkv_bias or self.o_bias or self.mlp_bias):
            raise ValueError("a sliding window together with attention/MLP biases has no HF "
                             "model type to export to")
        rope = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.rope_type == "linear":
            rope["factor"] = self.rope_factor
        elif self.rope_type == "llama3":
            rope.update(factor=self.rope_factor, low_freq_factor=self.rope_low_freq_factor,
                        high_freq_factor=self.rope_high_freq_factor,
                        original_max_position_embeddings=self.rope_original_max_position_embeddings)
        hf = {
            "model_type": model_type, "architectures": [arch],
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps, "hidden_act": "silu",
            "tie_word_embeddings": self.tie_word_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_type == "default" else dict(rope),
            "rope_parameters": rope,
            "torch_dtype": self.param_dtype,
        }
        if model_type == "llama":
            hf.update(attention_bias=self.o_bias, mlp_bias=self.mlp_bias)
        elif model_type == "mistral":
            hf["sliding_window"] = self.sliding_window
        else:
            hf.update(use_sliding_window=False, sliding_window=None)
        return hf


def _rope_from_hf(hf: dict) -> dict:
    """Read RoPE settings as ``transformers`` (5.x) does, from either spelling.

    transformers < 5 wrote ``rope_theta`` at the top level and the scaling in ``rope_scaling``;
    transformers >= 5 writes both into ``rope_parameters``. When a file has both, a non-empty
    ``rope_scaling`` replaces ``rope_parameters`` whole (transformers'
    ``convert_rope_params_to_dict``): its type and factors are used and ``rope_theta`` comes
    from it, else from the top-level ``rope_theta``, else 10000. A ``rope_parameters`` that
    says something else is then ignored by transformers, so it is warned about here.
    """
    scaling, params = hf.get("rope_scaling"), hf.get("rope_parameters")
    for key, value in (("rope_scaling", scaling), ("rope_parameters", params)):
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"field {key}={value!r} must be an object or null")
    source = "rope_scaling" if scaling else "rope_parameters"
    chosen = dict(scaling or params or {})
    if scaling and params and {**params, **scaling} != {**scaling, **params}:
        warnings.warn(f"config.json has both rope_scaling={scaling} and rope_parameters="
                      f"{params}; like transformers, jaxreason uses rope_scaling and ignores "
                      f"rope_parameters", stacklevel=3)
    theta = chosen.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = chosen.get("rope_type", chosen.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"{source}: rope scaling type {rope_type!r} is not "
                         f"implemented; allowed: {list(ROPE_TYPES)}")
    if chosen.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"{source}: partial_rotary_factor="
                         f"{chosen['partial_rotary_factor']!r} is not implemented (only 1.0)")
    needed = {"default": (), "linear": ("factor",),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor")}[rope_type]
    known = {"rope_type", "type", "rope_theta", "partial_rotary_factor",
             *needed, *(("original_max_position_embeddings",) if rope_type == "llama3" else ())}
    extra = sorted(set(chosen) - known)
    if extra:
        raise ValueError(f"{source}: fields {extra} are not implemented for "
                         f"rope_type={rope_type!r}; allowed fields: {sorted(known)}")
    missing = [k for k in needed if k not in chosen]
    if missing:
        raise ValueError(f"{source} with rope_type={rope_type!r} lacks {missing}")
    out = dict(rope_theta=float(theta), rope_type=rope_type)
    if rope_type in ("linear", "llama3"):
        out["rope_factor"] = float(chosen["factor"])
    if rope_type == "llama3":
        # transformers' default: the pretraining length is max_position_embeddings
        original = chosen.get("original_max_position_embeddings",
                              hf.get("max_position_embeddings", 2048))
        out.update(rope_low_freq_factor=float(chosen["low_freq_factor"]),
                   rope_high_freq_factor=float(chosen["high_freq_factor"]),
                   rope_original_max_position_embeddings=int(original))
    return out


def _sliding_window_from_hf(hf: dict, model_type: str) -> int | None:
    if model_type == "qwen2":
        if hf.get("use_sliding_window", False):
            raise ValueError("qwen2 config field use_sliding_window=True is not implemented "
                             "(per-layer windows)")
        return None
    if model_type == "llama":
        if hf.get("sliding_window") is not None:
            raise ValueError("llama config field sliding_window is not implemented")
        return None
    window = hf.get("sliding_window")
    layer_types = hf.get("layer_types")
    if layer_types and len(set(layer_types)) > 1:
        raise ValueError(f"{model_type} config field layer_types={sorted(set(layer_types))} "
                         "(mixed per-layer attention) is not implemented")
    return int(window) if window is not None else None


def __getattr__(name: str):
    """``config_from_hf`` and ``config_from_dict`` dispatch on the family registry, which
    imports this module; they live in ``jaxreason.models.families`` and are re-exported here
    on first use."""
    if name in ("config_from_hf", "config_from_dict"):
        from jaxreason.models import families

        return getattr(families, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
