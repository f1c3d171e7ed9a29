"""Planning tokens on the model: ids after the embedding rows, old logits unchanged at step 0,
which parameters each trainable set moves, and the learning-rate schedule."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import pytest

from jaxreason.models import load_pretrained, load_tokenizer
from jaxreason.studies.planning_tokens.config import PlanningTokensConfig, Variant
from jaxreason.studies.planning_tokens.model import with_bias
from jaxreason.studies.planning_tokens.training import token_dataset, train_config
from jaxreason.studies.planning_tokens.vocab import extend_tokenizer, init_sources, output_bias
from jaxreason.tasks.planning import PlanningExample, Template, TokenGroups
from jaxreason.train import objectives
from jaxreason.train.build import apply_peft
from jaxreason.train.loop import initial_state, make_train_step
from jaxreason.train.optim import schedule
from jaxreason.tree_utils import flatten

GROUPS = TokenGroups(n_prefix=2, n_special=2)
EXAMPLES = [PlanningExample("Ruby has 5 boxes with 9 cookies in each. How many cookies does "
                            "Ruby have?", "45", ("memory", "reason"),
                            ("A box has 9 cookies.", "So Ruby has 5 * 9 = 45 cookies.")),
            PlanningExample("Tom has 4 eggs. How many eggs does Tom have?", "4", ("reason",),
                            ("So Tom has 4 eggs.",))]


@pytest.fixture(scope="module")
def world(tiny_world_model):
    model, params = load_pretrained(tiny_world_model)
    tok = load_tokenizer(tiny_world_model)
    rows = model.config.vocab_size
    vocab = extend_tokenizer(tok, GROUPS, rows, "llama")
    return {"dir": tiny_world_model, "model": model, "params": params, "tok": tok,
            "rows": rows, "vocab": vocab, "init": init_sources(tok, GROUPS, rows)}


def _config(world, variant, **kw):
    cfg = PlanningTokensConfig(mode="faithful", lr=1e-2, epochs=2, warmup_steps=0,
                               batch_size=2, **kw)
    bias = output_bias(GROUPS.count, world["model"].config.hidden_size, "faithful", 0)
    return train_config(cfg, variant, world["dir"], world["dir"], world["dir"], rows=2,
                        seq_len=64, new_tokens=GROUPS.count, init=world["init"], bias=bias), bias


def test_new_ids_come_after_the_embedding_rows(world, tiny_world_model):
    tok_len = len(load_tokenizer(tiny_world_model))
    rows, vocab = world["rows"], world["vocab"]
    assert tok_len < rows  # the world tokenizer is shorter than its matrix, like Qwen2.5's
    assert vocab.first_id == rows and vocab.fillers == rows - tok_len
    assert world["tok"].convert_tokens_to_ids(list(GROUPS.all_names())) == list(vocab.ids)
    assert not vocab.in_padding_rows
    # the reproduced bug: on a Qwen checkpoint the ids land in the padding rows
    bug = extend_tokenizer(load_tokenizer(tiny_world_model), GROUPS, rows, "qwen2", True)
    assert bug.first_id == tok_len < rows and bug.in_padding_rows
    with pytest.raises(ValueError, match="Qwen2.5"):
        extend_tokenizer(load_tokenizer(tiny_world_model), GROUPS, rows, "llama", True)


def test_old_logits_unchanged_and_rows_from_the_key_word(world):
    train_cfg, bias = _config(world, Variant())
    model, params, old = apply_peft(world["model"], world["params"], train_cfg.peft, 0)
    assert old == world["rows"] and model.config.vocab_size == world["rows"] + GROUPS.count
    ids = np.asarray([world["tok"].encode("Tom has 4 eggs. So Tom has 4 eggs.")], np.int32)
    base = np.asarray(world["model"].jit_apply(world["params"], ids).logits)
    new = np.asarray(with_bias(model, bias).jit_apply(params, ids).logits)
    scale = np.abs(base).max()
    np.testing.assert_allclose(new[..., :old], base, atol=1e-5 * scale)
    # "reason" is one vocabulary entry: its tokens start from that row, so their logits are
    # the base logit of "reason" plus the frozen bias
    reason = world["tok"].get_vocab()["reason"]
    for j, tid in enumerate(world["vocab"].group_ids()["reason"]):
        np.testing.assert_allclose(new[..., tid], base[..., reason] + bias[tid - old],
                                   atol=1e-5 * scale)


CHANGED = {  # which leaves a step may move, and the ones it must move
    "none": (None, {"embed_tokens/embedding", "layers_0/mlp/up_proj/kernel"}),
    "prompt-tuning": ({"embed_tokens/embedding", "lm_head/kernel"},
                      {"embed_tokens/embedding", "lm_head/kernel"}),
    "lora": ({"lora_b"}, {"lora_b"}),  # lora_a's gradient is zero while B is zero
    "lora+prompt-tuning": ({"embed_tokens/embedding", "lm_head/kernel", "lora_b"},
                           {"embed_tokens/embedding", "lm_head/kernel", "lora_b"}),
}


def _kind(path: tuple[str, ...]) -> str:
    return path[-1] if path[-1].startswith("lora_") else "/".join(path)


@pytest.mark.parametrize("trainable", list(CHANGED))
def test_only_the_intended_parameters_change(world, trainable):
    train_cfg, _ = _config(world, Variant(trainable=trainable))
    model, state, tx, _, _ = initial_state(train_cfg)
    template = Template(lambda t: world["tok"].encode(t, add_special_tokens=False), GROUPS,
                        world["vocab"].group_ids(), 1, 2, "fixed", 64)
    batch = token_dataset(EXAMPLES, template, 0, "fixed").batch(0, 2, 0)
    step = make_train_step(model, tx, objectives.get("planning_lm"),
                           train_cfg.trainer.options(), 1, use_dropout=False)
    before = {p: np.asarray(v) for p, v in flatten(state.params).items()}
    after = {p: np.asarray(v) for p, v in flatten(jax.jit(step)(state, batch)[0].params).items()}
    moved = {p for p in before if not np.array_equal(before[p], after[p])}
    allowed, required = CHANGED[trainable]
    kinds = {_kind(p) for p in moved}
    if allowed is not None:
        assert kinds <= allowed, kinds - allowed
    assert required <= kinds, required - kinds
    rows = world["rows"]
    emb = ("embed_tokens", "embedding")
    old_rows_moved = not np.array_equal(before[emb][:rows], after[emb][:rows])
    assert old_rows_moved == (trainable == "none")  # old rows frozen unless full fine-tuning
    if "prompt-tuning" in trainable:
        assert not np.array_equal(before[emb][rows:], after[emb][rows:])


def test_schedule_matches_the_original(world):
    torch = pytest.importorskip("torch")
    from transformers import get_cosine_schedule_with_warmup

    train_cfg, _ = _config(world, Variant())
    total, warm = 1000, 700  # the README's StrategyQA run: 100 updates x 10 epochs
    lr = schedule(dataclasses.replace(train_cfg.optimizer, lr=2e-4),
                  dataclasses.replace(train_cfg.schedule, warmup_steps=warm), total)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
    hf = get_cosine_schedule_with_warmup(opt, warm, total)
    want = {}
    for update in range(total + 1):
        want[update] = opt.param_groups[0]["lr"]
        opt.step()
        hf.step()
    for update in (0, 1, 350, 699, 700, 701, 850, 999, 1000):
        assert math.isclose(float(lr(update)), want[update], rel_tol=1e-5, abs_tol=1e-12), update
    assert want[0] == 0.0


def test_new_token_init_in_a_train_config():
    from jaxreason.config_io import ConfigError, from_dict
    from jaxreason.train.config import PeftSection

    peft = from_dict(PeftSection, {"mode": "new-embeddings", "new_tokens": 2,
                                   "new_token_init": [[5, 6], None]})
    assert peft.new_token_init == ((5, 6), None)
    with pytest.raises(ConfigError, match="lists 1 entries for peft.new_tokens=2"):
        from_dict(PeftSection, {"mode": "new-embeddings", "new_tokens": 2,
                                "new_token_init": [[5]]})
