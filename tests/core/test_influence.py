"""The identities of Influence Distillation (Nikdan et al., 2025, arXiv 2505.19051), on a tiny Llama."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prox_assets.core.influence import (
    AdamState,
    JVPEmbedder,
    TokenBatch,
    adam_factor,
    adam_offset,
    adam_second_order_terms,
    auroc,
    choose_landmarks,
    exact_scores,
    flat_rows,
    krr_propagate,
    lambda_for_k,
    make_batch,
    per_example_loss,
    per_sample_grads,
    round_robin,
    second_order_weights,
    simplex_weights,
    spearman,
    target_gradients,
    top_k,
    warm_up,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(cfg).eval()


def batch(n=6, t=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0  # one padded row
    labels = ids.clone()
    labels[mask == 0] = -100
    return TokenBatch(ids, mask, labels)


def test_per_sample_grads_equal_one_backward_per_example(model):
    b = batch()
    fast = per_sample_grads(model, b)
    for i in range(b.input_ids.shape[0]):
        one = TokenBatch(b.input_ids[i : i + 1], b.attention_mask[i : i + 1], b.labels[i : i + 1])
        model.zero_grad()
        per_example_loss(model, one).sum().backward()
        for name, layer in model.named_modules():
            if name in fast:
                assert torch.allclose(fast[name][i], layer.weight.grad, atol=1e-5, rtol=1e-4), name
    model.zero_grad()


def test_first_order_support_is_top_k():
    p = torch.randn(50, generator=torch.Generator().manual_seed(3))
    for k in (1, 5, 20, 49):
        w = simplex_weights(p, lambda_for_k(p, k, total=50.0), total=50.0)
        assert set(torch.nonzero(w).flatten().tolist()) == set(top_k(p, k))
        assert w.sum().item() == pytest.approx(50.0, rel=1e-5) and (w >= 0).all()


def test_krr_interpolates_landmarks_as_ridge_vanishes():
    g = torch.Generator().manual_seed(0)
    emb, values = torch.randn(40, 8, generator=g), torch.randn(12, 3, generator=g)
    landmarks = choose_landmarks(40, 12, seed=1)
    errors = [
        (krr_propagate(emb, landmarks, values, ridge=r)[landmarks] - values).abs().max().item()
        for r in (1e-1, 1e-3, 1e-6, 1e-9)
    ]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-5


def test_every_sample_a_landmark_equals_exact():
    g = torch.Generator().manual_seed(2)
    emb, exact = torch.randn(25, 6, generator=g), torch.randn(25, 2, generator=g)
    est = krr_propagate(emb, list(range(25)), exact, ridge=1e-9)
    assert torch.allclose(est, exact, atol=1e-5)


def test_adam_factor_matches_a_real_adamw_step_with_v_frozen():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(20))
    opt = torch.optim.AdamW([w], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    for _ in range(5):
        opt.zero_grad()
        (w**3).sum().backward()
        opt.step()
    state = opt.state[w]
    t, m, v = int(state["step"]), state["exp_avg"].clone(), state["exp_avg_sq"].clone() + 1.0
    g = torch.randn(20)
    # make the real step keep v: it computes v' = b2 v_set + (1 - b2) g^2, so set v_set accordingly
    state["exp_avg_sq"].copy_((v - (1 - 0.999) * g**2) / 0.999)
    before = w.detach().clone()
    w.grad = g.clone()
    opt.step()
    delta = w.detach() - before
    a = adam_factor(v, t)
    b = adam_offset(m, v, t)
    assert torch.allclose(delta, -1e-2 * (a * g + b), atol=1e-7, rtol=1e-5)
    assert torch.allclose(state["exp_avg_sq"], v, rtol=1e-6)


def _adam(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    layers = {n: m for n, m in model.named_modules() if n.endswith("mlp.down_proj")}
    factor = {n: torch.rand(m.weight.shape, generator=g) * 10 + 0.1 for n, m in layers.items()}
    offset = {n: torch.randn(m.weight.shape, generator=g) * 1e-2 for n, m in layers.items()}
    return AdamState(factor, offset, step=3)


def test_exact_scores_are_cosines_of_preconditioned_full_gradients(model):
    pool, target = batch(6, 10, seed=1), batch(2, 8, seed=5)
    adam = _adam(model)
    got = exact_scores(model, pool, target_gradients(model, target), adam)
    rows = flat_rows(per_sample_grads(model, pool), adam)  # preconditioned, normalised
    tgt = flat_rows(per_sample_grads(model, target))  # plain, normalised
    assert got.shape == (6, 2)
    assert torch.allclose(got, rows @ tgt.T, atol=1e-5)
    # no projection: scaling a pool example's loss does not change its cosine
    assert got.abs().max() <= 1 + 1e-6


def test_warm_up_trains_in_place_and_returns_its_own_adam_step(model):
    import copy

    work = copy.deepcopy(model)
    before = work.model.layers[0].mlp.down_proj.weight.detach().clone()

    class Tok:  # a character tokenizer: enough for make_batch
        pad_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1 + ord(c) % 96 for c in text]}

    adam = warm_up(
        work,
        Tok(),
        ["some text here", "other words there", "a third one"],
        steps=3,
        lr=1e-3,
        batch_size=2,
        max_len=12,
    )
    assert not torch.equal(
        before, work.model.layers[0].mlp.down_proj.weight
    )  # gradients at the warmed model
    assert adam.step == 3 and len(adam.losses) == 3 and not work.training
    spread = adam.factor_spread()
    assert spread["a_p01"] <= spread["a_p50"] <= spread["a_p99"]


def test_make_batch_keeps_the_whole_answer():
    class Tok:
        pad_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1 + ord(c) % 96 for c in text]}

    b = make_batch(Tok(), ["p" * 50], ["a" * 20], max_len=32)
    assert (
        b.labels[0] != -100
    ).sum() == 20 and b.attention_mask.sum() == 32  # prompt cut from the left
    # a long answer no longer leaves its question one token: a quarter of the window stays the
    # prompt's
    long = make_batch(Tok(), ["q" * 50], ["a" * 100], max_len=32)
    assert (long.labels[0] == -100).sum() == 8 and (long.labels[0] != -100).sum() == 24
    assert long.input_ids[0, :8].tolist() == [1 + ord("q") % 96] * 8
    # a short prompt and a long answer: the whole prompt, the answer's start
    short = make_batch(Tok(), ["qq"], ["a" * 100], max_len=32)
    assert (short.labels[0] == -100).sum() == 2 and short.attention_mask.sum() == 32


def test_jvp_embeddings_are_deterministic_and_leave_the_model_whole(model):
    b = batch()
    for pooling in ("mean", "last"):
        e1 = JVPEmbedder(model, blocks=2, directions=2, seed=4, pooling=pooling)(b)
        e2 = JVPEmbedder(model, blocks=2, directions=2, seed=4, pooling=pooling)(b)
        assert e1.shape == (6, 64) and torch.allclose(e1, e2)
    assert len(model.model.layers) == 3  # the truncated trunk was a copy
    # every parameter of the truncated model is perturbed, embeddings and final norm included
    names = set(JVPEmbedder(model, blocks=2).tangents[0])
    assert {"embed_tokens.weight", "norm.weight"} <= names and not any(
        n.startswith("layers.2.") for n in names
    )


def test_round_robin_alternates_targets_in_shuffled_order():
    scores = torch.tensor([[9.0, 0.0], [8.0, 1.0], [0.0, 7.0], [1.0, 6.0], [5.0, 5.0]])
    orders = set()
    for seed in range(8):
        chosen = round_robin(scores, 4, seed=seed)
        assert set(chosen[:2]) == {0, 2} and set(chosen[2:]) == {1, 3}  # one per target per round
        orders.add(tuple(chosen))
    assert len(orders) > 1  # the order of targets is reshuffled
    assert round_robin(scores[:, :1], 2) == top_k(scores[:, 0], 2)


def test_auroc():
    s = torch.tensor([0.9, 0.8, 0.1, 0.2])
    assert (
        auroc(s, [True, True, False, False]) == 1.0 and auroc(s, [False, False, True, True]) == 0.0
    )
    assert auroc(torch.ones(4), [True, False, True, False]) == 0.5


def test_centred_krr_falls_back_to_the_mean_far_from_landmarks():
    g = torch.Generator().manual_seed(0)
    emb, values = torch.randn(20, 4, generator=g), torch.randn(20, 1, generator=g) + 5
    far = torch.cat([emb, torch.full((1, 4), 1e3)])
    est = krr_propagate(far, list(range(20)), values, ridge=0.1)
    assert est[-1, 0].item() == pytest.approx(values.mean().item(), abs=1e-6)
    assert krr_propagate(far, list(range(20)), values, ridge=0.1, centre=False)[
        -1, 0
    ].item() == pytest.approx(0)


def test_second_order_reduces_to_first_order_without_curvature():
    p = torch.randn(30, generator=torch.Generator().manual_seed(5))
    lam = lambda_for_k(p, 6, 30.0)
    w2 = second_order_weights(
        p, lambda w: torch.zeros_like(w), eta=0.0, lam=lam, total=30.0, steps=2000, lr=lam**-1 * 0.5
    )
    assert torch.allclose(w2, simplex_weights(p, lam, 30.0), atol=1e-3)


def test_adam_second_order_terms_match_finite_differences(model):
    """p = R g_T - eta' R H (b / s) and Qw = (1/n) R H R^T w (R the normalised preconditioned
    rows, s their mean norm, eta' = eta s), checked against a central difference of the
    (normalised) target gradient."""
    pool, target = batch(5, 8, seed=7), batch(2, 8, seed=9)
    adam = _adam(model)
    rows = flat_rows(per_sample_grads(model, pool), adam, normalise=False)
    unit, s = torch.nn.functional.normalize(rows, dim=1).double(), float(rows.norm(dim=1).mean())
    eta = 0.3
    for p in model.parameters():  # a frozen model: the terms must not depend on the caller's flags
        p.requires_grad_(False)
    p, matvec, eta_eff = adam_second_order_terms(model, rows, target, adam, eta)
    assert eta_eff == pytest.approx(eta * s)
    w, u = torch.rand(5, dtype=torch.double), torch.rand(5, dtype=torch.double)
    qw, qu = matvec(w), matvec(u)  # before the weights are nudged below
    w2 = second_order_weights(p, matvec, eta=eta_eff, lam=1.0, total=5.0, steps=100)
    assert w2.sum().item() == pytest.approx(5.0, rel=1e-4) and (w2 >= 0).all()
    names = sorted(n for n, _ in model.named_modules() if n.endswith("mlp.down_proj"))
    weights = [dict(model.named_modules())[n].weight for n in names]

    def target_grad() -> torch.Tensor:
        model.zero_grad()
        per_example_loss(model, target).mean().backward()
        return torch.cat([w.grad.reshape(-1) for w in weights]).double()

    for w_ in weights:
        w_.requires_grad_(True)
    g0 = target_grad()
    scale = 1 / g0.norm()

    def hvp_fd(v: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
        out = []
        for sign in (1, -1):
            offset = 0
            with torch.no_grad():
                for w in weights:
                    w += sign * eps * v[offset : offset + w.numel()].reshape(w.shape).float()
                    offset += w.numel()
            out.append(target_grad())
            offset = 0
            with torch.no_grad():
                for w in weights:
                    w -= sign * eps * v[offset : offset + w.numel()].reshape(w.shape).float()
                    offset += w.numel()
        return (out[0] - out[1]) / (2 * eps) * scale

    b = torch.cat([adam.offset[n].reshape(-1) for n in names]).double() / s  # in the rows' units
    expected_p = unit @ (g0 * scale) - eta_eff * unit @ hvp_fd(b)
    assert torch.allclose(p.double(), expected_p, rtol=2e-2, atol=1e-4)
    expected_q = unit @ hvp_fd(unit.T @ w) / 5
    assert torch.allclose(qw, expected_q, rtol=2e-2, atol=1e-5)
    assert float(u @ qw) == pytest.approx(float(w @ qu), rel=1e-3, abs=1e-8)  # Q is symmetric
    model.zero_grad(set_to_none=True)
    for param in model.parameters():
        param.requires_grad_(True)


def test_rank_metrics():
    a = torch.arange(10.0)
    assert spearman(a, a * 2 + 1) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)


def test_a_chosen_subset_is_a_ranked_table_of_the_pool():
    import polars as pl

    from prox_assets.core.selection import choose_subset

    scores = pl.DataFrame(
        {
            "doc_id": [f"d{i}" for i in range(8)],
            "score": [0.1 * i for i in range(8)],
            "scores_per_example": [[0.1 * i, -0.1 * i] for i in range(8)],
        }
    )
    chosen = choose_subset(scores, "top_k", budget=3)
    assert chosen.frame["doc_id"].to_list() == ["d7", "d6", "d5"]
    assert (
        chosen.frame["rank"].to_list() == [1, 2, 3] and chosen.frame["budget"].to_list() == [3] * 3
    )
    assert (chosen.budget, chosen.pool_size) == (3, 8)
    assert chosen.members == [("d7", 8 / 3), ("d6", 8 / 3), ("d5", 8 / 3)]
    assert chosen.selected_score_mean == pytest.approx(0.6)
    assert chosen.pool_score_mean == pytest.approx(0.35)
    assert chosen.top(1) == [(1, "d7", round(8 / 3, 3), 0.7)]
    assert choose_subset(scores, "round_robin", budget_fraction=0.5).budget == 4
