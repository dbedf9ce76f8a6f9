"""The identities of METHODS.md §2, on a tiny Llama."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prox_assets.core.influence import (
    CountSketch,
    TokenBatch,
    adam_factor,
    choose_landmarks,
    jvp_embeddings,
    krr_propagate,
    lambda_for_k,
    per_example_loss,
    per_sample_grads,
    q_matvec_factory,
    round_robin,
    second_order_weights,
    simplex_weights,
    spearman,
    top_k,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager")
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
    errors = [(krr_propagate(emb, landmarks, values, ridge=r)[landmarks] - values).abs().max().item()
              for r in (1e-1, 1e-3, 1e-6, 1e-9)]
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
    b = 0.9 * m / (1 - 0.9 ** (t + 1)) / ((v / (1 - 0.999 ** (t + 1))).sqrt() + 1e-8)
    assert torch.allclose(delta, -1e-2 * (a * g + b), atol=1e-7, rtol=1e-5)
    assert torch.allclose(state["exp_avg_sq"], v, rtol=1e-6)


def test_countsketch_preserves_inner_products_within_jl_bounds():
    g = torch.Generator().manual_seed(0)
    d, k = 20000, 2048
    x = torch.nn.functional.normalize(torch.randn(30, d, generator=g), dim=1)
    y = 0.5 * x + 0.5 * torch.nn.functional.normalize(torch.randn(30, d, generator=g), dim=1)
    sketch = CountSketch({"w": (d,)}, k, seed=3)
    sx, sy = sketch({"w": x}), sketch({"w": y})
    errors = ((sx * sy).sum(1) - (x * y).sum(1)).abs()
    bound = 3 * math.sqrt(2 / k) * x.norm(dim=1) * y.norm(dim=1)  # three standard deviations
    assert (errors <= bound).float().mean() >= 0.95
    assert errors.mean() < math.sqrt(2 / k)


def test_jvp_embeddings_are_deterministic_and_leave_the_model_whole(model):
    b = batch()
    e1 = jvp_embeddings(model, b, blocks=2, directions=2, dim=16, seed=4)
    e2 = jvp_embeddings(model, b, blocks=2, directions=2, dim=16, seed=4)
    assert e1.shape == (6, 16) and torch.allclose(e1, e2)
    assert len(model.model.layers) == 3  # the truncated trunk was a copy


def test_round_robin_alternates_targets():
    scores = torch.tensor([[9.0, 0.0], [8.0, 1.0], [0.0, 7.0], [1.0, 6.0], [5.0, 5.0]])
    assert round_robin(scores, 4) == [0, 2, 1, 3]
    assert round_robin(scores[:, :1], 2) == top_k(scores[:, 0], 2)


def test_second_order_reduces_to_first_order_without_curvature():
    p = torch.randn(30, generator=torch.Generator().manual_seed(5))
    lam = lambda_for_k(p, 6, 30.0)
    w2 = second_order_weights(p, lambda w: torch.zeros_like(w), eta=0.0, lam=lam, total=30.0, steps=2000, lr=lam ** -1 * 0.5)
    assert torch.allclose(w2, simplex_weights(p, lam, 30.0), atol=1e-3)


def test_second_order_with_hessian_vector_products(model):
    pool, target = batch(5, 8, seed=7), batch(2, 8, seed=9)
    grads = per_sample_grads(model, pool)
    g = torch.cat([grads[n].reshape(5, -1) for n in grads], dim=1)
    matvec = q_matvec_factory(model, g, target)
    w = torch.rand(5, dtype=torch.double)
    qw = matvec(w)
    assert qw.shape == (5,) and torch.isfinite(qw).all()
    # Q is symmetric: u.Qw == w.Qu
    u = torch.rand(5, dtype=torch.double)
    assert float(u @ qw) == pytest.approx(float(w @ matvec(u)), rel=1e-3, abs=1e-8)
    p = (g @ g[:1].T).flatten()
    w2 = second_order_weights(p, matvec, eta=0.1, lam=1.0, total=5.0, steps=50)
    assert w2.sum().item() == pytest.approx(5.0, rel=1e-4) and (w2 >= 0).all()


def test_rank_metrics():
    a = torch.arange(10.0)
    assert spearman(a, a * 2 + 1) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)
