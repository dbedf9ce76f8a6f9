"""Influence Distillation: the math, without Dagster (METHODS.md §2).

- ``per_sample_grads``: exact per-example gradients of a subset of ``nn.Linear`` weights
  (default: the MLP down-projections) from ONE batched backward pass: a forward hook keeps each
  layer's input x, a backward hook its output gradient d, and the per-example gradient is
  ``d^T x`` summed over positions (the standard per-example-gradient identity for linear layers;
  no Python loop of backward passes);
- ``CountSketch``: a sparse Johnson-Lindenstrauss projection (one random bucket and sign per
  coordinate) that preserves inner products in expectation, applied tensor by tensor;
- ``adam_factor``: the elementwise factor a of a frozen-second-moment AdamW step;
- ``jvp_embeddings``: forward-mode Jacobian-vector products of the last token's hidden state
  after the first B blocks along R random parameter directions (``torch.func.jvp``), projected;
- ``krr_propagate``: kernel ridge regression from landmarks to every sample, one Cholesky
  factorisation for every target column;
- selection: the first-order simplex solution (its support is the top-k), round-robin over
  target examples, and the second-order objective through Hessian-vector products.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_PARAMS = "mlp.down_proj"


# --- batches -------------------------------------------------------------------------------------
@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # (B, T), right-padded
    attention_mask: torch.Tensor
    labels: torch.Tensor  # -100 where no loss


def make_batch(tokenizer, prompts: Sequence[str], answers: Sequence[str] | None, max_len: int) -> TokenBatch:
    """Loss on ``answers`` tokens when given (target examples), else on every token (pool)."""
    rows = []
    for i, prompt in enumerate(prompts):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if answers is None:
            ids = p[:max_len]
            labels = list(ids)
        else:
            a = tokenizer(answers[i], add_special_tokens=False)["input_ids"][:max_len // 2]
            p = p[-(max_len - len(a)):] if len(p) + len(a) > max_len else p
            ids, labels = p + a, [-100] * len(p) + a
        rows.append((ids, labels))
    width = max(len(r[0]) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (x, y) in enumerate(rows):
        ids[r, : len(x)], labels[r, : len(y)], mask[r, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return TokenBatch(ids, mask, labels)


def per_example_loss(model, batch: TokenBatch) -> torch.Tensor:
    """Mean next-token loss of each example, shape (B,)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    targets = batch.labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    counts = (targets != -100).sum(1).clamp(min=1)
    return nll.sum(1) / counts


def representation_similarity(model, tokenizer, pool_texts: Sequence[str], target_texts: Sequence[str],
                              max_len: int = 128, batch_size: int = 8) -> torch.Tensor:
    """(n_pool,) mean cosine similarity between each pool text and the target texts in the
    model's mean-pooled last hidden states: the RDS-style embedding baseline."""
    def pooled(texts):
        out = []
        for i in range(0, len(texts), batch_size):
            batch = make_batch(tokenizer, list(texts[i : i + batch_size]), None, max_len)
            with torch.no_grad():
                h = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          output_hidden_states=True).hidden_states[-1]
            m = batch.attention_mask[..., None].float()
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1))
        return torch.cat(out)

    return (pooled(pool_texts) @ pooled(target_texts).T).mean(1)


# --- per-example gradients ------------------------------------------------------------------------
def selected_linears(model, param_filter: str = DEFAULT_PARAMS) -> dict[str, torch.nn.Linear]:
    out = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and param_filter in name}
    if not out:
        raise ValueError(f"no nn.Linear matches {param_filter!r}")
    return out


def per_sample_grads(model, batch: TokenBatch, param_filter: str = DEFAULT_PARAMS) -> dict[str, torch.Tensor]:
    """{layer name: (B, out, in)} exact gradients of each example's mean loss."""
    layers = selected_linears(model, param_filter)
    inputs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            inputs[name] = args[0].detach()
            output.register_hook(lambda g: grads.__setitem__(name, g.detach()))
        return hook

    handles = [layer.register_forward_hook(keep(name)) for name, layer in layers.items()]
    selected = {id(m.weight) for m in layers.values()}
    saved = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():  # weight gradients only where they are wanted
            p.requires_grad_(id(p) in selected)
        with torch.enable_grad():
            # the sum of per-example means: each example's gradient is its own, unscaled
            per_example_loss(model, batch).sum().backward()
    finally:
        for h in handles:
            h.remove()
        for p, flag in saved.items():
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
    return {name: torch.einsum("bto,bti->boi", grads[name].float(), inputs[name].float()) for name in layers}


class CountSketch:
    """A sparse JL projection to ``dim`` coordinates: E[<Sx, Sy>] = <x, y>, variance <= 2|x|^2|y|^2/dim."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], dim: int, seed: int = 0):
        self.dim = dim
        g = torch.Generator().manual_seed(seed)
        self.buckets, self.signs = {}, {}
        for name in sorted(shapes):
            n = math.prod(shapes[name])
            self.buckets[name] = torch.randint(0, dim, (n,), generator=g)
            self.signs[name] = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1

    def __call__(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        b = next(iter(grads.values())).shape[0]
        out = torch.zeros(b, self.dim)
        for name, g in grads.items():
            out.index_add_(1, self.buckets[name], g.reshape(b, -1) * self.signs[name])
        return out


def adam_factor(exp_avg_sq: torch.Tensor, step: int, beta1: float = 0.9, beta2: float = 0.999,
                eps: float = 1e-8) -> torch.Tensor:
    """a in delta = -lr (a * g + b): the next AdamW step with the second moment frozen is affine
    in the gradient g, with this elementwise slope."""
    t = step + 1
    return (1 - beta1) / (1 - beta1**t) / ((exp_avg_sq / (1 - beta2**t)).sqrt() + eps)


def projected_grads(model, batch: TokenBatch, sketch: CountSketch, param_filter: str = DEFAULT_PARAMS,
                    precondition: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Projected, optionally Adam-preconditioned, L2-normalised per-example gradients (B, dim)."""
    grads = per_sample_grads(model, batch, param_filter)
    if precondition is not None:
        grads = {n: g * precondition[n] for n, g in grads.items()}
    return torch.nn.functional.normalize(sketch(grads), dim=1)


# --- JVP embeddings -----------------------------------------------------------------------------
def jvp_embeddings(model, batch: TokenBatch, blocks: int = 4, directions: int = 2, dim: int = 4096,
                   seed: int = 0) -> torch.Tensor:
    """(B, min(dim, directions * hidden)) embeddings: the change of the last real token's hidden
    state after the first ``blocks`` blocks along random parameter directions. Forward mode
    only: no backward pass, and only ``blocks`` blocks are run."""
    import copy

    from torch.func import functional_call, jvp

    trunk = copy.copy(model.model)  # shallow: shares the weights...
    trunk._modules = dict(model.model._modules)  # ...but not the module table it is about to edit
    trunk.layers = torch.nn.ModuleList(list(model.model.layers)[:blocks])
    params = {n: p.detach() for n, p in trunk.named_parameters() if n.startswith("layers.")}
    last = batch.attention_mask.sum(1) - 1
    rows = torch.arange(batch.input_ids.shape[0])

    def hidden(p):
        out = functional_call(trunk, p, (batch.input_ids,), {"attention_mask": batch.attention_mask}, strict=False)
        return out.last_hidden_state[rows, last].float()

    g = torch.Generator().manual_seed(seed)
    parts = []
    with torch.no_grad():
        for _ in range(directions):
            tangent = {n: torch.randn(v.shape, generator=g, dtype=v.dtype) for n, v in params.items()}
            parts.append(jvp(hidden, (params,), (tangent,))[1])
    emb = torch.cat(parts, dim=1)
    if emb.shape[1] > dim:
        proj = torch.randn(emb.shape[1], dim, generator=g) / math.sqrt(dim)
        emb = emb @ proj
    return emb


# --- landmarks and kernel ridge regression ---------------------------------------------------------
def choose_landmarks(n: int, count: int, seed: int = 0, embeddings: torch.Tensor | None = None,
                     method: str = "uniform") -> list[int]:
    g = torch.Generator().manual_seed(seed)
    count = min(count, n)
    if method == "uniform" or embeddings is None:
        return sorted(torch.randperm(n, generator=g)[:count].tolist())
    # k-means++ seeding: spread landmarks over the embedding space
    chosen = [int(torch.randint(0, n, (1,), generator=g))]
    d2 = ((embeddings - embeddings[chosen[0]]) ** 2).sum(1)
    while len(chosen) < count:
        nxt = int(torch.multinomial(d2 / d2.sum(), 1, generator=g)) if d2.sum() > 0 else len(chosen)
        chosen.append(nxt)
        d2 = torch.minimum(d2, ((embeddings - embeddings[nxt]) ** 2).sum(1))
    return sorted(set(chosen))


def rbf(a: torch.Tensor, b: torch.Tensor, bandwidth: float) -> torch.Tensor:
    return torch.exp(-torch.cdist(a.double(), b.double()) ** 2 / (2 * bandwidth**2))


def median_bandwidth(x: torch.Tensor) -> float:
    d = torch.cdist(x.double(), x.double())
    off = d[~torch.eye(len(x), dtype=torch.bool)]
    return float(off.median()) if off.numel() else 1.0


def krr_propagate(emb: torch.Tensor, landmarks: Sequence[int], values: torch.Tensor, ridge: float = 0.01,
                  bandwidth: float | None = None) -> torch.Tensor:
    """p_hat = K_SL (K_LL + ridge I)^-1 p_L for every column of ``values`` (L, m) at once."""
    e_l = emb[list(landmarks)]
    h = bandwidth or median_bandwidth(e_l)
    k_ll = rbf(e_l, e_l, h)
    chol = torch.linalg.cholesky(k_ll + ridge * torch.eye(len(landmarks), dtype=k_ll.dtype))
    alpha = torch.cholesky_solve(values.double().reshape(len(landmarks), -1), chol)
    return (rbf(emb, e_l, h) @ alpha).float()


# --- weights and selection ------------------------------------------------------------------------
def simplex_weights(p: torch.Tensor, lam: float, total: float) -> torch.Tensor:
    """argmin -p.w + lam/2 |w|^2 over w >= 0, sum w = total: w = max(0, (p - tau) / lam)."""
    s, _ = torch.sort(p.double(), descending=True)
    cums = torch.cumsum(s, 0)
    ks = torch.arange(1, len(p) + 1, dtype=torch.double)
    taus = (cums - lam * total) / ks
    k = int((s > taus).nonzero().max()) + 1
    return torch.clamp((p.double() - taus[k - 1]) / lam, min=0).float()


def lambda_for_k(p: torch.Tensor, k: int, total: float) -> float:
    """A ridge lam whose simplex solution has exactly k non-zero weights (for k < n, distinct
    scores). The support is the top-k exactly when tau = (sum of top-k - lam total) / k lies in
    [s_(k+1), s_k): take the midpoint."""
    s, _ = torch.sort(p.double(), descending=True)
    if not 0 < k < len(p):
        raise ValueError(f"k must be in 1..{len(p) - 1}")
    tau = (s[k - 1] + s[k]) / 2
    return float((s[:k].sum() - k * tau) / total)


def top_k(p: torch.Tensor, k: int) -> list[int]:
    return torch.topk(p, min(k, len(p))).indices.tolist()


def round_robin(scores: torch.Tensor, k: int) -> list[int]:
    """Select k rows of ``scores`` (n, m): each target column in turn takes its best unchosen row."""
    order = torch.argsort(scores, dim=0, descending=True)
    chosen: list[int] = []
    seen: set[int] = set()
    pointers = [0] * scores.shape[1]
    k = min(k, scores.shape[0])
    while len(chosen) < k:
        for j in range(scores.shape[1]):
            while pointers[j] < scores.shape[0] and int(order[pointers[j], j]) in seen:
                pointers[j] += 1
            if pointers[j] < scores.shape[0] and len(chosen) < k:
                i = int(order[pointers[j], j])
                chosen.append(i)
                seen.add(i)
    return chosen


def second_order_weights(p: torch.Tensor, q_matvec, eta: float, lam: float, total: float,
                         steps: int = 200, lr: float | None = None) -> torch.Tensor:
    """Projected gradient descent on f(w) = -p.w + eta/2 w.Qw + lam/2 |w|^2 over the scaled
    simplex, with Q only through ``q_matvec`` (Hessian-vector products): the part of the method
    the reference code leaves out, practical for small pools."""
    n = len(p)
    w = torch.full((n,), total / n, dtype=torch.double)
    p = p.double()
    step = lr or 1.0 / (lam + eta * 1.0)
    for _ in range(steps):
        grad = -p + eta * q_matvec(w) + lam * w
        w = _project_simplex(w - step * grad, total)
    return w.float()


def _project_simplex(v: torch.Tensor, total: float) -> torch.Tensor:
    s, _ = torch.sort(v, descending=True)
    cums = torch.cumsum(s, 0) - total
    ks = torch.arange(1, len(v) + 1, dtype=v.dtype)
    k = int((s - cums / ks > 0).nonzero().max()) + 1
    return torch.clamp(v - cums[k - 1] / k, min=0)


def q_matvec_factory(model, pool_grads: torch.Tensor, target_batch: TokenBatch, param_filter: str = DEFAULT_PARAMS):
    """Q w = (1/n) G H_T G^T w with G the (n, d) unprojected pool gradients of the selected
    weights and H_T the target loss's Hessian in those weights, applied by double backward."""
    layers = selected_linears(model, param_filter)
    params = [m.weight for m in layers.values()]
    shapes = [p.shape for p in params]
    n = pool_grads.shape[0]

    def matvec(w: torch.Tensor) -> torch.Tensor:
        v = (pool_grads.double().T @ w).float()  # G^T w, a parameter-space vector
        chunks, offset = [], 0
        for s in shapes:
            size = math.prod(s)
            chunks.append(v[offset : offset + size].reshape(s))
            offset += size
        with torch.enable_grad():
            loss = per_example_loss(model, target_batch).mean()
            g = torch.autograd.grad(loss, params, create_graph=True)
            hv = torch.autograd.grad(g, params, grad_outputs=chunks)
        flat = torch.cat([h.reshape(-1) for h in hv]).double()
        return pool_grads.double() @ flat / n

    return matvec


# --- measuring the approximation ----------------------------------------------------------------------
def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    return pearson(ra, rb)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denom = a.norm() * b.norm()
    return float(a @ b / denom) if denom > 0 else 0.0


def topk_recall(estimate: torch.Tensor, exact: torch.Tensor, k: int) -> float:
    return len(set(top_k(estimate, k)) & set(top_k(exact, k))) / max(min(k, len(exact)), 1)


# --- one influence computation, end to end -------------------------------------------------------
@dataclass(frozen=True)
class InfluenceConfig:
    param_filter: str = DEFAULT_PARAMS
    proj_dim: int = 8192
    jvp_blocks: int = 4
    jvp_directions: int = 2
    embed_dim: int = 4096
    landmarks: int = 32  # 0 = every sample is a landmark: the exact method, for validation
    landmark_method: str = "uniform"  # or "kmeans++"
    ridge: float = 0.01
    max_len: int = 128
    batch_size: int = 8
    warmup_steps: int = 4
    warmup_lr: float = 1e-5
    exact_holdout: int = 16  # non-landmarks given exact scores too, to measure the approximation
    seed: int = 0


def warm_up(model, tokenizer, texts: Sequence[str], config: InfluenceConfig) -> tuple[dict[str, torch.Tensor], int]:
    """A short AdamW run on random pool samples; returns the second moments of the selected
    weights and the step count, for the frozen-v Adam preconditioner. The model is restored."""
    import copy

    work = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(work.parameters(), lr=config.warmup_lr)
    g = torch.Generator().manual_seed(config.seed)
    for _ in range(config.warmup_steps):
        idx = torch.randint(0, len(texts), (config.batch_size,), generator=g).tolist()
        loss = per_example_loss(work, make_batch(tokenizer, [texts[i] for i in idx], None, config.max_len)).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    layers = selected_linears(work, config.param_filter)
    second = {name: opt.state[m.weight]["exp_avg_sq"].clone() if m.weight in opt.state else torch.ones_like(m.weight)
              for name, m in layers.items()}
    return second, config.warmup_steps


def _batched(fn, items: Sequence, size: int) -> list:
    out = []
    for i in range(0, len(items), size):
        out.append(fn(items[i : i + size]))
    return out


def compute_influence(model, tokenizer, pool_texts: Sequence[str], target_prompts: Sequence[str],
                      target_answers: Sequence[str], config: InfluenceConfig,
                      warmup: tuple[dict[str, torch.Tensor], int] | None = None, log=print) -> dict:
    """Landmark-based influence of every pool sample on every target example.

    Returns scores (n, m), the landmark indices, exact scores for landmarks and a held-out set
    of non-landmarks, accuracy on that held-out set, and timings of each phase."""
    import time

    timings: dict[str, float] = {}
    t = time.perf_counter()
    second, step = warmup or warm_up(model, tokenizer, pool_texts, config)
    timings["warmup_s"] = time.perf_counter() - t
    precond = {n: adam_factor(v, step) for n, v in second.items()}
    layers = selected_linears(model, config.param_filter)
    sketch = CountSketch({n: tuple(m.weight.shape) for n, m in layers.items()}, config.proj_dim, config.seed)

    def grads(texts, answers=None, pre=None):
        b = make_batch(tokenizer, texts, answers, config.max_len)
        return projected_grads(model, b, sketch, config.param_filter, pre)

    t = time.perf_counter()
    targets = torch.cat(_batched(lambda i: grads([target_prompts[j] for j in i], [target_answers[j] for j in i]),
                                 list(range(len(target_prompts))), config.batch_size))
    timings["target_grads_s"] = time.perf_counter() - t

    t = time.perf_counter()
    emb = torch.cat(_batched(lambda chunk: jvp_embeddings(
        model, make_batch(tokenizer, chunk, None, config.max_len), config.jvp_blocks, config.jvp_directions,
        config.embed_dim, config.seed), list(pool_texts), config.batch_size))
    timings["embeddings_s"] = time.perf_counter() - t
    log(f"embedded {len(pool_texts)} pool samples in {timings['embeddings_s']:.1f}s")

    n = len(pool_texts)
    landmarks = choose_landmarks(n, config.landmarks or n, config.seed, emb, config.landmark_method)
    t = time.perf_counter()
    g_l = torch.cat(_batched(lambda idx: grads([pool_texts[i] for i in idx], pre=precond), landmarks, config.batch_size))
    timings["landmark_grads_s"] = time.perf_counter() - t
    per_sample_s = timings["landmark_grads_s"] / max(len(landmarks), 1)
    p_l = g_l @ targets.T
    log(f"exact gradients of {len(landmarks)} landmarks in {timings['landmark_grads_s']:.1f}s")

    t = time.perf_counter()
    scores = krr_propagate(emb, landmarks, p_l, config.ridge)
    scores[landmarks] = p_l  # landmarks keep their exact values
    timings["krr_s"] = time.perf_counter() - t

    rest = [i for i in range(n) if i not in set(landmarks)]
    g = torch.Generator().manual_seed(config.seed + 1)
    holdout = sorted(rest[i] for i in torch.randperm(len(rest), generator=g)[: config.exact_holdout].tolist())
    accuracy: dict[str, float] = {}
    exact_holdout = torch.zeros(0, len(target_prompts))
    if len(holdout) >= 3:
        exact_holdout = torch.cat(_batched(lambda idx: grads([pool_texts[i] for i in idx], pre=precond),
                                           holdout, config.batch_size)) @ targets.T
        est, ex = scores[holdout].mean(1), exact_holdout.mean(1)
        k = max(1, len(holdout) // 10)
        accuracy = {"spearman": spearman(est, ex), "pearson": pearson(est, ex), f"top{k}_recall": topk_recall(est, ex, k),
                    "n_holdout": len(holdout)}
    timings["landmark_method_s"] = timings["embeddings_s"] + timings["landmark_grads_s"] + timings["krr_s"]
    timings["exact_method_estimate_s"] = per_sample_s * n
    return {"scores": scores, "landmarks": landmarks, "exact_landmarks": p_l, "holdout": holdout,
            "exact_holdout": exact_holdout, "accuracy": accuracy, "timings": timings}


def flops_ratio(n_layers: int, blocks: int, directions: int, landmarks: int, pool: int) -> float:
    """METHODS.md's cost model, relative to one forward pass per pool sample (RDS+):
    ID / RDS+ ~= R B / n_layers + 3 |L| / |S|."""
    return directions * blocks / n_layers + 3 * landmarks / pool
