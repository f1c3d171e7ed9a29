"""What makes one model family different from another, written down once.

jaxreason implements each family as a Flax module whose parameter names mirror the
HuggingFace checkpoint (``models/gpt2.py``, ``models/llama.py``). Everything outside that
module which has to know about the family (which config class and module to build, how
parameter paths map to checkpoint keys, which dense layers LoRA may adapt, where the token
embedding, LM head, MLP down projections and final norm live, which hook points exist,
whether positions are learned rows with a hard limit, the named presets) reads it from the
family's :class:`Family` description instead of keeping a table of its own.

Each description lives at the bottom of its model file, next to the module whose names it
spells, and ``models/families.py`` lists them. A new family is therefore one new file
(config class, module and ``FAMILY = Family(...)``) plus one entry in that list.

Parameter paths are tuples of key names in the bare parameter tree, e.g.
``("h_3", "mlp", "c_proj", "kernel")``; a block's module name is a template with ``{i}``.
A model whose blocks run under scan stacks them into one module (``stacked_block``, ``"h"``)
whose leaves have a leading layer axis; ``jaxreason.models.layout`` converts between the two.
Kernels of jaxreason's dense layers are stored (in, out).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Iterable, Mapping

from jaxreason.hooks import HOOK_TEMPLATES, hook_names

Path = tuple[str, ...]
# Leaf names jaxreason uses where HF state dicts say ``weight``.
_HF_LEAF = {"kernel": "weight", "embedding": "weight"}


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Family:
    """The description of one model family.

    Attributes:
      name: the family's key, equal to ``config_class.family`` (``"gpt2"``).
      title: how messages name it (``"GPT-2"``).
      config_class: the frozen config dataclass (a ``BaseConfig`` subclass with ``from_hf``).
      module_class: the Flax module built as ``module_class(config)``.
      hf_model_types: HF ``config.json`` ``model_type`` values this family loads.
      presets: preset name -> config factory accepting field overrides, for training runs.
      hook_templates: the hook templates of ``jaxreason.hooks.HOOK_TEMPLATES`` this family
        has (a block template carries ``{i}``).
      lora_targets: names of the dense modules LoRA may adapt (never the head or embeddings).
      block: module name of block ``i``, a template such as ``"h_{i}"``.
      embedding: path of the (V, D) input token embedding.
      lm_head: path of the untied (D, V) output head, or None when the family always ties it
        to the embedding. With a path, the config's ``tie_word_embeddings`` still decides.
      down_proj: path inside a block of the MLP's output projection module; its ``kernel``
        maps the F neurons of ``mlp.hook_post`` into the residual stream.
      down_proj_neuron_axis: the axis of that kernel that indexes neurons (0 for (F, D)).
      final_norm: path of the final norm's module (its params: ``weight`` and maybe ``bias``).
      make_final_norm: config -> an unbound norm module computing exactly the model's final
        norm from those params (used to apply it to arbitrary vectors).
      learned_positions: positions are rows of a learned table, so position ids must stay
        below ``config.max_position_embeddings`` (GPT-2); rotary families have no such limit.
      hf_block: the HF name of block ``i`` (``"h.{i}"``).
      hf_prefix: prefix of HF keys (``"transformer."``), except for ``hf_unprefixed`` modules.
      hf_unprefixed: top-level modules whose HF keys carry no prefix (Llama's ``lm_head``).
      hf_prefix_optional: some checkpoints of the family omit the prefix (OpenAI's GPT-2).
      hf_transposed: HF stores the dense kernels (out, in) (``nn.Linear``), not (in, out).
      hf_buffers: regexes of checkpoint keys that are buffers, not parameters (ignored).
      hf_tied_head: HF key of a head that a tied checkpoint may still carry (ignored when tied).
    """

    name: str
    title: str
    config_class: type
    module_class: type
    hf_model_types: tuple[str, ...]
    presets: Mapping[str, Callable[..., Any]]
    hook_templates: frozenset[str]
    lora_targets: tuple[str, ...]
    block: str
    embedding: Path
    lm_head: Path | None
    down_proj: Path
    final_norm: Path
    make_final_norm: Callable[[Any], Any]
    learned_positions: bool
    hf_block: str
    hf_prefix: str
    hf_transposed: bool
    hf_unprefixed: frozenset[str] = frozenset()
    hf_prefix_optional: bool = False
    hf_buffers: tuple[str, ...] = ()
    hf_tied_head: str = "lm_head.weight"
    down_proj_neuron_axis: int = 0

    def __post_init__(self):
        if getattr(self.config_class, "family", None) != self.name:
            raise ValueError(f"family {self.name!r}: config class {self.config_class.__name__} "
                             f"declares family {getattr(self.config_class, 'family', None)!r}")
        unknown = sorted(set(self.hook_templates) - set(HOOK_TEMPLATES))
        if unknown:
            raise ValueError(f"family {self.name!r} lists hook templates {unknown} that "
                             "jaxreason.hooks.HOOK_TEMPLATES does not define")
        for field in ("block", "hf_block"):
            if "{i}" not in getattr(self, field):
                raise ValueError(f"family {self.name!r}: {field}={getattr(self, field)!r} "
                                 "must contain '{i}'")
        if self.down_proj_neuron_axis not in (0, 1):
            raise ValueError(f"family {self.name!r}: down_proj_neuron_axis must be 0 or 1")

    def __repr__(self) -> str:
        return f"Family({self.name!r})"

    # ------------------------------------------------------------------ paths

    def block_name(self, layer: int) -> str:
        """The module name of block ``layer`` (``"h_3"``)."""
        return self.block.format(i=layer)

    @property
    def stacked_block(self) -> str:
        """The module name of the blocks stacked for scan (``"h"``, ``"layers"``): the block
        template without its index. Its leaves carry a leading L axis."""
        return self.block.replace("_{i}", "").replace("{i}", "")

    def layer_path(self, stacked_path: Iterable[str], layer: int) -> Path:
        """The unrolled path of layer ``layer``'s slice of a stacked leaf:
        ``("h", "mlp", "c_fc", "kernel"), 3`` -> ``("h_3", "mlp", "c_fc", "kernel")``."""
        stacked_path = tuple(stacked_path)
        return (self.block_name(layer), *stacked_path[1:])

    def down_proj_kernel(self, layer: int) -> Path:
        """Path of block ``layer``'s MLP down-projection kernel."""
        return (self.block_name(layer), *self.down_proj, "kernel")

    def head_path(self, config) -> Path | None:
        """Path of the untied (D, V) head of a model with this config, None when tied."""
        if self.lm_head is None or config.tie_word_embeddings:
            return None
        return self.lm_head

    def vocab_leaves(self) -> dict[Path, int]:
        """Last two names of each vocabulary-indexed leaf -> its vocabulary axis."""
        leaves = {tuple(self.embedding[-2:]): 0}
        if self.lm_head is not None:
            leaves[tuple(self.lm_head[-2:])] = 1
        return leaves

    def position_limit(self, config) -> int | None:
        """How many positions a model with this config can address (None: unbounded)."""
        return config.max_position_embeddings if self.learned_positions else None

    def hook_names(self, num_layers: int) -> tuple[str, ...]:
        """Every hook name of a model with ``num_layers`` blocks, in forward order."""
        return hook_names(self.hook_templates, num_layers)

    # ------------------------------------------------------------------ HF names

    @functools.cached_property
    def _block_re(self):
        return re.compile("^" + re.escape(self.block).replace(r"\{i\}", r"(\d+)") + "$")

    def hf_key(self, path: Iterable[str]) -> tuple[str, bool]:
        """The HF state-dict key of a parameter path, and whether HF stores it transposed.

        ``("h_3", "attn", "c_attn", "kernel")`` -> ``("transformer.h.3.attn.c_attn.weight",
        False)``; ``("layers_0", "self_attn", "q_proj", "kernel")`` ->
        ``("model.layers.0.self_attn.q_proj.weight", True)``.
        """
        path = tuple(path)
        parts = []
        for p in path[:-1]:
            m = self._block_re.match(p)
            parts.append(self.hf_block.format(i=m.group(1)) if m else p)
        key = ".".join(parts + [_HF_LEAF.get(path[-1], path[-1])])
        if path[0] not in self.hf_unprefixed:
            key = self.hf_prefix + key
        return key, self.hf_transposed and path[-1] == "kernel"

    def hf_key_map(self, paths: Iterable[Iterable[str]]) -> dict[str, tuple[Path, bool]]:
        """The inverse of :meth:`hf_key` over a model's parameter paths: HF key ->
        (path, transposed). HF's ``weight`` is ambiguous on its own (kernel, embedding or
        norm scale), so the inverse needs the paths of the model it is for."""
        out = {}
        for path in paths:
            key, transposed = self.hf_key(path)
            if key in out:
                raise ValueError(f"family {self.name!r}: parameters {'/'.join(out[key][0])} and "
                                 f"{'/'.join(path)} both map to HF key {key!r}")
            out[key] = (tuple(path), transposed)
        return out

    def is_hf_buffer(self, key: str) -> bool:
        """True for checkpoint tensors that are buffers (causal masks, cached RoPE freqs)."""
        return any(re.search(pattern, key) for pattern in self.hf_buffers)
