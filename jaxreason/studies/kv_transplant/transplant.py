"""The transplant as hook captures and interventions, and the two-pass loss through it.

The arguer runs read each argument; the keys and values of every layer, before RoPE
(``blocks.{l}.attn.hook_k`` / ``hook_v``), are captured at the arguer window columns and
replace the chooser's at the mapped chooser columns with ``Replace`` (per-example positions
under left padding). The chooser then rotates them with its own position ids, so its later
tokens attend to exactly the arguer's cached keys and values of the window: chooser layer l
receives arguer layer l. The captured values stay in the autograd graph, so the chooser's
loss differentiates into the arguer's whole forward pass as well as its own.

``params`` is one tree for both roles (the original's shared adapter) or a pair
``(arguer_params, chooser_params)`` (two independent adapters, a different experiment).
The loss is the full-vocabulary NLL of the correct slot's token at the chooser's last
position (left padding puts every row's last token in the last column).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreason.hooks import Replace
from jaxreason.registry import OBJECTIVES


def kv_hook_names(num_layers: int) -> list[str]:
    return [f"blocks.{l}.attn.hook_{kv}" for l in range(num_layers) for kv in "kv"]


def arguer_kv(model, params, batch) -> dict:
    """{hook name: (2B, P, K, E)} keys/values of the arguer runs at their window columns."""
    capture = {name: batch["arg_pos"] for name in kv_hook_names(model.config.num_layers)}
    return model.apply(params, batch["arg_ids"], batch["arg_mask"], capture=capture).captured


def transplant_edits(captured: dict, chooser_pos) -> dict:
    """``Replace`` edits of the chooser: slot 1's and slot 2's windows side by side."""
    b = chooser_pos.shape[0]
    edits = {}
    for name, values in captured.items():
        two_b, p = values.shape[:2]
        if two_b != 2 * b or chooser_pos.shape[1] != 2 * p:
            raise ValueError(f"{name}: captured {values.shape} do not fit chooser positions "
                             f"{chooser_pos.shape} (need (2B, P, ...) and (B, 2P))")
        edits[name] = Replace(values.reshape((b, 2 * p) + values.shape[2:]), chooser_pos)
    return edits


def roles(params):
    """(arguer params, chooser params) of a shared tree or a pair."""
    if isinstance(params, (tuple, list)):
        return params[0], params[1]
    return params, params


def chooser_logits(model, params, batch, transplant: bool = True, remat: bool = False):
    """(B, V) chooser logits at the last position, with or without the transplant."""
    arguer, chooser = roles(params)

    def run_arguer(p):
        return arguer_kv(model, p, batch)

    def run_chooser(p, captured):
        edits = transplant_edits(captured, batch["ch_pos"]) if captured is not None else None
        return model.apply(p, batch["ch_ids"], batch["ch_mask"], interventions=edits).logits[:, -1]

    if remat:  # keep only each pass's inputs; recompute its activations in the backward pass
        run_arguer, run_chooser = jax.checkpoint(run_arguer), jax.checkpoint(run_chooser)
    captured = run_arguer(arguer) if transplant else None
    return run_chooser(chooser, captured)


def choice_outputs(logits, batch, answer_ids):
    """Per-example NLL of the correct slot, chosen-correct flag and probability margin."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ids = jnp.asarray(answer_ids, jnp.int32)
    pair = logp[:, ids]  # (B, 2): log p("1"), log p("2")
    label = batch["label"]
    nll = -jnp.take_along_axis(pair, label[:, None], axis=1)[:, 0]
    picks_2 = pair[:, 1] > pair[:, 0]
    chosen_correct = picks_2 == (label == 1)
    p = jnp.exp(pair)
    diff = jnp.where(label == 1, p[:, 1] - p[:, 0], p[:, 0] - p[:, 1])
    return {"nll": nll, "chosen_correct": chosen_correct, "diff": diff}


def transplant_loss(model, params, batch, *, answer_ids, transplant: bool = True,
                    remat: bool = False):
    """(mean NLL over the rows of weight > 0, per-example outputs)."""
    out = choice_outputs(chooser_logits(model, params, batch, transplant, remat), batch,
                         answer_ids)
    w = batch["weight"]
    return jnp.sum(out["nll"] * w) / jnp.maximum(jnp.sum(w), 1.0), out


@OBJECTIVES.register("kv_transplant")
def kv_transplant_objective(model, params, batch, rng, *, answer_ids, transplant=True,
                            remat=False):
    """The two-pass objective in the training engine's form (``rng`` unused: no dropout)."""
    del rng
    loss, out = transplant_loss(model, params, batch, answer_ids=answer_ids,
                                transplant=transplant, remat=remat)
    return loss, {"loss": loss, "accuracy": jnp.mean(out["chosen_correct"].astype(jnp.float32))}
