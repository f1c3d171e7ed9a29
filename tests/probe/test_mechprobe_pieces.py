"""Pieces of the MechanisticProbe reproduction (jaxreason.probe), on hand-made data and a tiny
random GPT-2."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from jaxreason.models import GPT2Config, from_config
from jaxreason.probe import entropy as ent
from jaxreason.probe import features as feat
from jaxreason.probe import knn
from jaxreason.probe import plots

# ----------------------------------------------------------------------------- kNN and scores


def test_probing_score_and_nan_case():
    assert knn.probing_score(0.9, 0.5) == pytest.approx(0.8)
    assert knn.probing_score(0.5, 0.5) == 0.0
    assert math.isnan(knn.probing_score(1.0, 1.0))  # S_P2 at K=0: 0/0
    s = knn.probing_score(np.array([0.75, 1.0]), np.array([0.5, 1.0]))
    assert s[0] == pytest.approx(0.5) and math.isnan(s[1])


def test_two_fold_row_split_uses_example_count_as_row_index():
    # 30 rows but n_examples=20 -> split at row 10. Rows 0..9: class 0 at x=0. Rows 10..29: ten
    # class-0 rows at x=0 and ten class-1 rows at x=1 (exact duplicates: zero-distance vote).
    X = np.array([[0.0]] * 20 + [[1.0]] * 10)
    y = np.array([0] * 20 + [1] * 10)
    # Fold A trains on rows 0..9 (class 0 only), so it predicts 0 for the 20 test rows:
    # F1(0) = 2 * (10/20) * 1 / (10/20 + 1) = 2/3, F1(1) = 0 -> macro 1/3.
    # Fold B trains on rows 10..29 and predicts the 10 class-0 rows exactly -> macro 1.
    assert knn.knn_f1_two_fold_rows(X, y, n_examples=20) == pytest.approx((1 / 3 + 1) / 2)
    # The example split keeps whole examples together; here it is perfect.
    ids = np.arange(30) % 10
    assert knn.knn_f1_by_example(X, y, ids, folds=2, seed=0) == pytest.approx(1.0)


def test_p2_faithful_macro_f1_is_one_plus_answer_f1_over_two():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    is_ans = (rng.random(60) < 0.4).astype(int)
    X[is_ans == 1] += 0.7  # partly separable, so F1_answer is strictly between 0 and 1
    Y = np.stack([np.ones(60, int), is_ans], axis=1)
    got = knn.knn_f1_two_fold_rows(X, Y, n_examples=40)
    h = 20
    f1s = []
    for tr, te in ((slice(0, h), slice(h, None)), (slice(h, None), slice(0, h))):
        clf = KNeighborsClassifier(n_neighbors=8, weights="distance").fit(X[tr], is_ans[tr])
        f1s.append(f1_score(is_ans[te], clf.predict(X[te]), zero_division=0))
    assert 0 < np.mean(f1s) < 1
    assert got == pytest.approx(np.mean([(1 + f) / 2 for f in f1s]))


def test_rows_cv_and_layerwise():
    rng = np.random.default_rng(1)
    n, s, layers = 12, 16, 3
    feats = rng.random((n, s, layers))
    p1 = np.zeros((n, s), int)
    p1[:, :3] = 1
    ans = np.full(n, 1)
    X, y, ids = knn.p1_rows(feats, p1)
    assert X.shape == (n * s, layers) and y.sum() == 3 * n and ids[16] == 1
    X2, Y2, ids2 = knn.p2_rows(feats, p1, ans, faithful=True)
    assert X2.shape == (3 * n, layers) and (Y2[:, 0] == 1).all()
    assert Y2[:, 1].tolist() == [0, 1, 0] * n and np.allclose(X2[1], feats[0, 1])
    _, y2f, _ = knn.p2_rows(feats, p1, ans, faithful=False)
    assert y2f.ndim == 1 and y2f.tolist() == [0, 1, 0] * n
    X[y == 1] += 5.0  # separable on every layer
    assert knn.knn_f1_cv(X, y, cv=5, p=1) == pytest.approx(1.0)
    lw = knn.layerwise_scores(X, y, lambda Xs, ys: knn.knn_f1_by_example(Xs, ys, ids, seed=0))
    assert lw.shape == (layers,) and np.allclose(lw, 1.0)


# ----------------------------------------------------------------------------- entropy, masks


def test_entropy_uniform_one_and_onehot_zero():
    dist = np.array([[[0.25] * 4, [1.0, 0, 0, 0]], [[2.0] * 4, [0.5, 0.5, 0, 0]]])  # (2, 2, 4)
    h = ent.head_entropy(dist)
    assert h.shape == (2, 2)
    np.testing.assert_allclose(h, [[1.0, 0.0], [1.0, math.log(2) / math.log(4)]], atol=1e-12)
    assert math.isnan(ent.head_entropy(np.zeros((1, 1, 4)))[0, 0])


def test_by_rank_reindexing_with_duplicates():
    lists = np.array([[5, 3, 5, 1]])  # sorted: 1, 3, 5, 5
    attn = np.array([0.1, 0.2, 0.3, 0.4]).reshape(1, 1, 1, 4)
    by_pos, by_rank = ent.attention_by_rank(attn, lists)
    np.testing.assert_allclose(by_pos[0, 0], [0.1, 0.2, 0.3, 0.4])
    # faithful: rank r reads the first position holding sorted[r] -> positions 3, 1, 0, 0
    np.testing.assert_allclose(by_rank[0, 0], [0.4, 0.2, 0.1, 0.1])
    # fixed: stable argsort gives each copy its own rank -> positions 3, 1, 0, 2
    _, by_rank_fixed = ent.attention_by_rank(attn, lists, dedupe=True)
    np.testing.assert_allclose(by_rank_fixed[0, 0], [0.4, 0.2, 0.1, 0.3])
    # dataset mean over two examples
    attn2 = np.concatenate([attn, attn[..., ::-1]])
    _, br2 = ent.attention_by_rank(attn2, np.concatenate([lists, [[1, 2, 3, 4]]]))
    want = (np.array([0.4, 0.2, 0.1, 0.1]) + np.array([0.4, 0.3, 0.2, 0.1])) / 2
    np.testing.assert_allclose(br2[0, 0], want)


def test_heads_to_mask_counts_and_low_policy():
    e = np.arange(144, dtype=float).reshape(12, 12) / 144  # distinct entropies
    for frac in (0.1, 0.4, 0.9):
        p = int(frac * 12 * 12)
        for policy in ("random", "low"):
            assert (ent.heads_to_mask(e, frac, policy, 0, faithful=True) == 0).sum() == p + 1
            assert (ent.heads_to_mask(e, frac, policy, 0, faithful=False) == 0).sum() == p
    m = ent.heads_to_mask(e, 0.1, "low", 0, faithful=False)  # p = 14: the 14 lowest heads
    assert np.flatnonzero(m.ravel() == 0).tolist() == list(range(14))
    m = ent.heads_to_mask(e, 0.1, "low", 0, faithful=True)
    assert np.flatnonzero(m.ravel() == 0).tolist() == list(range(15))
    # ties broken at random: all-equal entropies give seed-dependent choices
    flat = np.zeros((12, 12))
    picks = {tuple(np.flatnonzero(ent.heads_to_mask(flat, 0.1, "low", s) == 0)) for s in range(4)}
    assert len(picks) > 1
    assert (ent.heads_to_mask(e, 1.0, "low", 0, faithful=True) == 0).all()  # capped at L*H


# ----------------------------------------------------------------------------- features


def test_gpt2_probe_features_max_normalised():
    rng = np.random.default_rng(0)
    attn = rng.random((3, 2, 4, 16))  # (N, L, H, S)
    f = feat.gpt2_probe_features(attn)
    assert f.shape == (3, 16, 2)
    np.testing.assert_allclose(f.max(axis=(1, 2)), 1.0)
    want = attn.mean(2).transpose(0, 2, 1)
    np.testing.assert_allclose(f[1], want[1] / want[1].max())


def test_llama_statement_features_by_hand():
    b = feat.statement_boundaries(1, [2, 2])  # cumsum [1, 3, 5], first shifted +1
    assert b.tolist() == [2, 3, 5]
    a = np.zeros((1, 2, 2, 7))  # (L, H, Q, S): query rows are positions 5, 6
    a[0, 0, 0, 2:5] = [0.2, 0.4, 0.6]
    a[0, 0, 1, 2:5] = [0.4, 0.2, 0.0]
    a[0, 1, :, 2:5] = 0.1
    (f_max,) = feat.llama_statement_features([a], [b], "max")
    # max over queries: head0 [.4 .4 .6], head1 [.1 .1 .1]; head mean [.25 .25 .35]
    np.testing.assert_allclose(f_max, [[0.25], [0.30]])
    (f_mean,) = feat.llama_statement_features([a], [b], "mean")
    # mean over queries: head0 [.3 .3 .3]; head mean [.2 .2 .2]
    np.testing.assert_allclose(f_mean, [[0.2], [0.2]])
    a3 = np.concatenate([a, 2 * a, 3 * a])  # 3 layers; keep layers 0 and 2
    (f_keep,) = feat.llama_statement_features([a3], [b], "max", keep_layers=(0, 2))
    np.testing.assert_allclose(f_keep, [[0.25, 0.75], [0.30, 0.90]])


@pytest.fixture(scope="module")
def tiny_gpt2():
    model, params = from_config(GPT2Config.tiny(), seed=0)
    tokens = np.random.default_rng(0).integers(0, 128, size=(5, 16))
    return model, params, tokens


def test_last_query_attention_matches_full_capture(tiny_gpt2):
    model, params, tokens = tiny_gpt2
    rows = feat.last_query_attention(model, params, tokens, batch_size=2)  # padded last batch
    L, H = model.config.num_layers, model.config.num_heads
    assert rows.shape == (5, L, H, 16) and rows.dtype == np.float32
    full = model.jit_apply(params, jnp.asarray(tokens), capture={"blocks.*.attn.hook_pattern"})
    for layer in range(L):
        want = np.asarray(full.captured[f"blocks.{layer}.attn.hook_pattern"])[:, :, -1, :]
        np.testing.assert_allclose(rows[:, layer], want, atol=1e-6)
    np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-5)
    mid = feat.last_query_attention(model, params, tokens, batch_size=2, query_position=7)
    assert np.allclose(mid[..., 8:], 0.0) and np.allclose(mid.sum(-1), 1.0, atol=1e-5)


def test_last_query_attention_dropout(tiny_gpt2):
    model, params, tokens = tiny_gpt2
    p = 0.3
    base = feat.last_query_attention(model, params, tokens, batch_size=2)
    drop = feat.last_query_attention(model, params, tokens, batch_size=2, dropout_rate=p,
                                     dropout_seed=1)
    assert not np.allclose(drop, base)
    assert (drop == 0).any() and not np.allclose(drop.sum(-1), 1.0)
    # layer 0 sees the undropped input, so its kept entries are exactly base / (1 - p)
    kept = drop[:, 0] != 0
    np.testing.assert_allclose(drop[:, 0][kept], base[:, 0][kept] / (1 - p), rtol=1e-5)
    assert 0.5 < kept.mean() < 0.9
    # per-example keys: the result does not depend on the batch size
    again = feat.last_query_attention(model, params, tokens, batch_size=5, dropout_rate=p,
                                      dropout_seed=1)
    np.testing.assert_array_equal(drop == 0, again == 0)
    np.testing.assert_allclose(drop, again, rtol=1e-5, atol=1e-7)


def test_head_mask_interventions_zero_masked_heads(tiny_gpt2):
    model, params, tokens = tiny_gpt2
    mask = np.ones((2, 4))
    mask[0, 1] = 0
    mask[1, [0, 3]] = 0
    edits = ent.interventions_for_mask(mask)
    assert sorted(edits) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    assert ent.interventions_for_mask(np.ones((2, 4))) == {}
    cap = {"blocks.*.attn.hook_pattern"}
    out = model.jit_apply(params, jnp.asarray(tokens), capture=cap, interventions=edits)
    ref = model.jit_apply(params, jnp.asarray(tokens), capture=cap)
    p0 = np.asarray(out.captured["blocks.0.attn.hook_pattern"])
    p1 = np.asarray(out.captured["blocks.1.attn.hook_pattern"])
    assert np.all(p0[:, 1] == 0) and np.all(p1[:, [0, 3]] == 0)
    ref0 = np.asarray(ref.captured["blocks.0.attn.hook_pattern"])
    np.testing.assert_allclose(p0[:, [0, 2, 3]], ref0[:, [0, 2, 3]], atol=1e-6)
    np.testing.assert_allclose(p1[:, [1, 2]].sum(-1), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- plots


def test_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    paths = [
        plots.plot_attention_grid(rng.random((16, 12)) / 8, [str(i + 1) for i in range(16)],
                                  "by size rank", tmp_path / "rank.png", center=1 / 16),
        plots.plot_attention_grid(rng.random((16, 12)), [str(i + 1) for i in range(16)],
                                  "by position", tmp_path / "pos.png", vmin=0, vmax=0.92,
                                  ylabel="position"),
        plots.plot_entropy_heatmap(rng.random((12, 12)), "H_pos", tmp_path / "ent.png"),
        plots.plot_masking_curves([0, 0.1, 0.2],
                                  {"random": [1, 0.9, 0.8], "low H_pos": [1, 1, 0.95]},
                                  tmp_path / "mask.png"),
        plots.plot_layerwise([1, 2, 3], {"P1": [0.5, 0.7, 0.9], "P2": [0.6, 0.6, 0.8]},
                             tmp_path / "sub" / "layers.png"),
    ]
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
