"""Influence Distillation (Nikdan et al., 2025): the math, without Dagster.

docs/methods.md#influence-distillation describes the method as implemented here, section by
section; the README says what was measured.

- ``warm_up``: a short AdamW run on the pool, *in place*; gradients are then taken at the
  warmed-up model, preconditioned with its own frozen-second-moment Adam factor ``a``;
- ``exact_scores``: the cosine between each pool sample's Adam-preconditioned gradient and each
  target example's gradient, over the full (unprojected) weights of the selected ``nn.Linear``
  layers (default: the MLP down-projections). Per-example gradients come from ONE batched
  backward pass: a forward hook keeps each layer's input x, a backward hook its output gradient
  d, and the per-example gradient is ``d^T x`` summed over positions. No random projection: at
  this signal size (cosines ~1e-3) a sketch to 8k dimensions adds ten times the signal as noise;
- ``JVPEmbedder``: forward-mode Jacobian-vector products of the hidden states after the first B
  blocks along R random directions over *every* parameter of that truncated model (embeddings,
  blocks, final norm), pooled over tokens (mean by default; ``last`` is the paper's choice);
- ``krr_propagate``: kernel ridge regression from landmarks to every sample (RBF kernel,
  median-distance bandwidth, centred targets), one Cholesky factorisation for every target column;
- selection: the first-order simplex solution (its support is the top-k), round-robin over
  target examples (order reshuffled each round, as the reference does); and, as library code for
  small pools, the second-order objective for Adam through Hessian-vector products.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from prox_assets.core import precision

DEFAULT_PARAMS = "mlp.down_proj"


# --- batches -------------------------------------------------------------------------------------
@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # (B, T), right-padded
    attention_mask: torch.Tensor
    labels: torch.Tensor  # -100 where no loss

    def to(self, device) -> TokenBatch:
        return TokenBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device)
        )


def make_batch(
    tokenizer, prompts: Sequence[str], answers: Sequence[str] | None, max_len: int
) -> TokenBatch:
    """Loss on ``answers`` tokens when given (target examples), else on every token (pool).
    A long prompt is cut from the left so that the whole answer fits, but keeps at least its last
    ``max_len // 4`` tokens: when both are long, the answer keeps its first ``max_len - max_len //
    4`` tokens. (Before, a long answer left its prompt one token, so the loss measured the answer
    without the question.)"""
    rows = []
    for i, prompt in enumerate(prompts):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if answers is None:
            ids = p[:max_len]
            labels = list(ids)
        else:
            a = tokenizer(answers[i], add_special_tokens=False)["input_ids"]
            keep = min(len(p), max(max_len - len(a), max_len // 4))
            p, a = p[len(p) - keep :], a[: max_len - keep]
            ids, labels = p + a, [-100] * len(p) + a
        rows.append((ids, labels))
    width = max(1, max(len(r[0]) for r in rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    label_ids = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (x, y) in enumerate(rows):
        input_ids[r, : len(x)], label_ids[r, : len(y)], mask[r, : len(x)] = (
            torch.tensor(x),
            torch.tensor(y),
            1,
        )
    return TokenBatch(input_ids, mask, label_ids)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _autocast(model, dtype: str):
    return precision.autocast(_device(model), dtype)


def per_example_loss(model, batch: TokenBatch) -> torch.Tensor:
    """Mean next-token loss of each example, shape (B,)."""
    batch = batch.to(_device(model))
    logits = (
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    )
    targets = batch.labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), targets, ignore_index=-100, reduction="none"
    )
    counts = (targets != -100).sum(1).clamp(min=1)
    return nll.sum(1) / counts


def mean_hidden_states(
    model,
    tokenizer,
    texts: Sequence[str],
    max_len: int = 128,
    batch_size: int = 8,
    dtype: str = "float32",
) -> torch.Tensor:
    """(n, hidden) L2-normalised mean-pooled last hidden states: the RDS-style embedding."""
    out = []
    for i in range(0, len(texts), batch_size):
        batch = make_batch(tokenizer, list(texts[i : i + batch_size]), None, max_len).to(
            _device(model)
        )
        with torch.no_grad(), _autocast(model, dtype):
            h = (
                model(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    output_hidden_states=True,
                )
                .hidden_states[-1]
                .float()
            )
        m = batch.attention_mask[..., None].float()
        out.append(
            torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=1).cpu()
        )
    return torch.cat(out)


def representation_similarity(
    model,
    tokenizer,
    pool_texts: Sequence[str],
    target_texts: Sequence[str],
    max_len: int = 128,
    batch_size: int = 8,
) -> torch.Tensor:
    """(n_pool,) mean cosine similarity between each pool text and the target texts in the
    model's mean-pooled last hidden states: the RDS-style embedding baseline."""
    pool = mean_hidden_states(model, tokenizer, pool_texts, max_len, batch_size)
    target = mean_hidden_states(model, tokenizer, target_texts, max_len, batch_size)
    return (pool @ target.T).mean(1)


# --- per-example gradients ------------------------------------------------------------------------
def selected_linears(model, param_filter: str = DEFAULT_PARAMS) -> dict[str, torch.nn.Linear]:
    out = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and param_filter in name
    }
    if not out:
        raise ValueError(f"no nn.Linear matches {param_filter!r}")
    return out


def _layer_inputs_and_output_grads(
    model, batch: TokenBatch, param_filter: str, dtype: str = "float32"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One batched backward of the sum of per-example mean losses; for each selected layer its
    input x (B, T, in) and output gradient d (B, T, out): example b's weight gradient is d_b^T x_b."""
    layers = selected_linears(model, param_filter)
    inputs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            inputs[name] = args[0].detach()
            output.register_hook(lambda g: grads.__setitem__(name, g.detach()))

        return hook

    handles = [layer.register_forward_hook(keep(name)) for name, layer in layers.items()]
    # No weight gradient at all (d and x are all we need): the graph starts at the embeddings'
    # output instead of at any parameter, so backward computes activation gradients only.
    handles.append(
        model.get_input_embeddings().register_forward_hook(
            lambda m, a, out: out.requires_grad_(True)
        )
    )
    saved = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.enable_grad(), _autocast(model, dtype):
            per_example_loss(model, batch).sum().backward()
    finally:
        for h in handles:
            h.remove()
        for p, flag in saved.items():
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
    return inputs, grads


def per_sample_grads(
    model, batch: TokenBatch, param_filter: str = DEFAULT_PARAMS, dtype: str = "float32"
) -> dict[str, torch.Tensor]:
    """{layer name: (B, out, in)} exact gradients of each example's mean loss."""
    inputs, grads = _layer_inputs_and_output_grads(model, batch, param_filter, dtype)
    return {
        name: torch.einsum("bto,bti->boi", grads[name].float(), inputs[name].float())
        for name in inputs
    }


def adam_factor(
    exp_avg_sq: torch.Tensor, step: int, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
) -> torch.Tensor:
    """a in delta = -lr (a * g + b): the next AdamW step with the second moment frozen is affine
    in the gradient g, with this elementwise slope."""
    t = step + 1
    return (1 - beta1) / (1 - beta1**t) / ((exp_avg_sq / (1 - beta2**t)).sqrt() + eps)


def adam_offset(
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> torch.Tensor:
    """b in delta = -lr (a * g + b): the first moment's carried-over part of the next step."""
    t = step + 1
    return beta1 * exp_avg / (1 - beta1**t) / ((exp_avg_sq / (1 - beta2**t)).sqrt() + eps)


# --- the warm-up and its Adam preconditioner --------------------------------------------------------
@dataclass
class AdamState:
    """The frozen-second-moment AdamW step of the warmed-up model, for the selected layers:
    delta = -lr (factor * g + offset)."""

    factor: dict[str, torch.Tensor]
    offset: dict[str, torch.Tensor]
    step: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0  # the warm-up's wall-clock (warm_up_on_pool)

    def factor_spread(self) -> dict[str, float]:
        """Quantiles of the factor a over every selected weight: a spread of many orders of
        magnitude means a few never-seen weights dominate the preconditioned gradient."""
        flat = torch.cat([a.flatten().float().cpu() for a in self.factor.values()])
        sample = flat[
            torch.randperm(len(flat), generator=torch.Generator().manual_seed(0))[:1_000_000]
        ]
        q = torch.quantile(sample, torch.tensor([0.01, 0.5, 0.99]))
        return {
            "a_p01": float(q[0]),
            "a_p50": float(q[1]),
            "a_p99": float(q[2]),
            "a_p99_over_p01": float(q[2] / q[0]),
            "a_max_over_min": float(flat.max() / flat.min()),
        }

    def summary(self) -> dict[str, float]:
        """The factor spread and the warm-up's first and last batch losses."""
        return {
            **self.factor_spread(),
            "warmup_loss_first": self.losses[0] if self.losses else float("nan"),
            "warmup_loss_last": self.losses[-1] if self.losses else float("nan"),
        }


def warm_up(
    model,
    tokenizer,
    texts: Sequence[str],
    steps: int,
    lr: float,
    batch_size: int,
    max_len: int,
    param_filter: str = DEFAULT_PARAMS,
    seed: int = 0,
    dtype: str = "float32",
) -> AdamState:
    """A short AdamW run on random pool samples, training ``model`` IN PLACE (gradients are then
    taken at the warmed-up model, as the method prescribes); returns its optimizer's frozen step
    for the selected layers."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(texts), (batch_size,), generator=g).tolist()
        with _autocast(model, dtype):
            loss = per_example_loss(
                model, make_batch(tokenizer, [texts[i] for i in idx], None, max_len)
            ).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    factor, offset = {}, {}
    beta1, beta2 = opt.defaults["betas"]
    eps = opt.defaults["eps"]
    for name, layer in selected_linears(model, param_filter).items():
        state = opt.state.get(layer.weight)
        if not state:  # no warm-up: plain gradients (a = 1, b = 0)
            factor[name], offset[name] = (
                torch.ones_like(layer.weight),
                torch.zeros_like(layer.weight),
            )
            continue
        factor[name] = adam_factor(state["exp_avg_sq"], steps, beta1, beta2, eps)
        # AdamW's decoupled weight decay is part of the step too: lr * wd * theta
        offset[name] = (
            adam_offset(state["exp_avg"], state["exp_avg_sq"], steps, beta1, beta2, eps)
            + opt.defaults["weight_decay"] * layer.weight.detach()
        )
    return AdamState(factor, offset, steps, losses)


# --- exact influence --------------------------------------------------------------------------------
def target_gradients(
    model, batch: TokenBatch, param_filter: str = DEFAULT_PARAMS, dtype: str = "float32"
) -> dict[str, torch.Tensor]:
    """{layer: (m, out*in)} each target example's gradient, L2-normalised over all layers."""
    grads = per_sample_grads(model, batch, param_filter, dtype)
    flat = {n: g.reshape(g.shape[0], -1) for n, g in grads.items()}
    norms = torch.sqrt(torch.stack([(f * f).sum(1) for f in flat.values()]).sum(0)).clamp(min=1e-30)
    return {n: f / norms[:, None] for n, f in flat.items()}


def exact_scores(
    model,
    batch: TokenBatch,
    targets: dict[str, torch.Tensor],
    adam: AdamState | None,
    param_filter: str = DEFAULT_PARAMS,
    dtype: str = "float32",
) -> torch.Tensor:
    """(B, m): cos(a * g_i, g_j) between each pool sample's Adam-preconditioned gradient and each
    target example's gradient, layer by layer so one layer's (B, out, in) is alive at a time."""
    inputs, grads = _layer_inputs_and_output_grads(model, batch, param_filter, dtype)
    b = batch.input_ids.shape[0]
    dots = torch.zeros(
        b, next(iter(targets.values())).shape[0], dtype=torch.float64, device=_device(model)
    )
    sq = torch.zeros(b, dtype=torch.float64, device=_device(model))
    for name in list(inputs):
        g = torch.einsum("bto,bti->boi", grads.pop(name).float(), inputs.pop(name).float()).reshape(
            b, -1
        )
        if adam is not None:
            g = g * adam.factor[name].reshape(1, -1)
        dots += (g @ targets[name].T).double()
        sq += (g * g).sum(1).double()
    return (dots / sq.sqrt().clamp(min=1e-30)[:, None]).float().cpu()


# --- JVP embeddings -----------------------------------------------------------------------------
class JVPEmbedder:
    """Embeds a batch by the change of the hidden states after the first ``blocks`` blocks along
    ``directions`` random Gaussian directions over every parameter of that truncated model
    (token embeddings, the blocks, the final norm): forward mode only, no backward pass, and
    only ``blocks`` blocks are run. The directions are drawn once, so every batch shares them.
    ``pooling``: ``mean`` over real tokens (measured best here) or ``last`` token (the paper)."""

    def __init__(
        self,
        model,
        blocks: int = 4,
        directions: int = 2,
        seed: int = 0,
        pooling: str = "mean",
        dtype: str = "float32",
    ):
        import copy

        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be mean or last, not {pooling!r}")
        trunk = copy.copy(model.model)  # shallow: shares the weights...
        trunk._modules = dict(
            model.model._modules
        )  # ...but not the module table it is about to edit
        trunk.layers = torch.nn.ModuleList(list(model.model.layers)[:blocks])
        self.trunk, self.pooling, self.dtype, self.model = trunk, pooling, dtype, model
        self.params = {n: p.detach() for n, p in trunk.named_parameters()}
        g = torch.Generator().manual_seed(seed)
        self.tangents = [
            {
                n: torch.randn(v.shape, generator=g).to(v.dtype).to(v.device)
                for n, v in self.params.items()
            }
            for _ in range(directions)
        ]

    def __call__(self, batch: TokenBatch) -> torch.Tensor:
        from torch.func import functional_call, jvp

        batch = batch.to(next(iter(self.params.values())).device)
        mask = batch.attention_mask[..., None].float()
        last = batch.attention_mask.sum(1) - 1
        rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)

        def hidden(p):
            out = functional_call(
                self.trunk,
                p,
                (batch.input_ids,),
                {"attention_mask": batch.attention_mask},
                strict=False,
            )
            h = out.last_hidden_state.float()
            return (
                h[rows, last.clamp(min=0)]
                if self.pooling == "last"
                else (h * mask).sum(1) / mask.sum(1).clamp(min=1)
            )

        config = (
            self.trunk.config
        )  # forward-mode AD has no fused-attention kernel: eager while embedding
        saved = config._attn_implementation
        config._attn_implementation = "eager"
        try:
            with (
                torch.no_grad(),
                _autocast(self.model, self.dtype),
            ):  # bf16: 2.8x faster, cosine 0.9997 to fp32
                parts = [jvp(hidden, (self.params,), (t,))[1].float() for t in self.tangents]
        finally:
            config._attn_implementation = saved
        return torch.cat(parts, dim=1).cpu()


# --- landmarks and kernel ridge regression ---------------------------------------------------------
def choose_landmarks(
    n: int,
    count: int,
    seed: int = 0,
    embeddings: torch.Tensor | None = None,
    method: str = "uniform",
) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    count = min(count, n)
    if method == "uniform" or embeddings is None:
        return sorted(torch.randperm(n, generator=g)[:count].tolist())
    # k-means++ seeding: spread landmarks over the embedding space
    chosen = [int(torch.randint(0, n, (1,), generator=g))]
    d2 = ((embeddings - embeddings[chosen[0]]) ** 2).sum(1)
    while len(chosen) < count and d2.sum() > 0:
        nxt = int(torch.multinomial(d2 / d2.sum(), 1, generator=g))
        chosen.append(nxt)
        d2 = torch.minimum(d2, ((embeddings - embeddings[nxt]) ** 2).sum(1))
    return sorted(set(chosen))


def rbf(a: torch.Tensor, b: torch.Tensor, bandwidth: float) -> torch.Tensor:
    return torch.exp(-(torch.cdist(a.double(), b.double()) ** 2) / (2 * bandwidth**2))


def median_bandwidth(x: torch.Tensor) -> float:
    d = torch.cdist(x.double(), x.double())
    off = d[~torch.eye(len(x), dtype=torch.bool)]
    med = float(off.median()) if off.numel() else 1.0
    return med if med > 0 else 1.0


def krr_propagate(
    emb: torch.Tensor,
    landmarks: Sequence[int],
    values: torch.Tensor,
    ridge: float = 0.01,
    bandwidth: float | None = None,
    centre: bool = True,
) -> torch.Tensor:
    """p_hat = mu + K_SL (K_LL + ridge I)^-1 (p_L - mu) for every column of ``values`` (L, m) at
    once; mu is the landmarks' mean (``centre``), so far from every landmark an estimate falls
    back to the mean instead of to zero."""
    e_l = emb[list(landmarks)]
    h = bandwidth or median_bandwidth(e_l)
    k_ll = rbf(e_l, e_l, h)
    v = values.double().reshape(len(landmarks), -1)
    mu = v.mean(0, keepdim=True) if centre else torch.zeros(1, v.shape[1], dtype=v.dtype)
    chol = torch.linalg.cholesky(k_ll + ridge * torch.eye(len(landmarks), dtype=k_ll.dtype))
    alpha = torch.cholesky_solve(v - mu, chol)
    return (mu + rbf(emb, e_l, h) @ alpha).float()


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


def round_robin(scores: torch.Tensor, k: int, seed: int = 0) -> list[int]:
    """Select k rows of ``scores`` (n, m): in each round every target column, in a freshly
    shuffled order (as the reference does), takes its best row not yet taken."""
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError("round robin needs a score column per target example")
    order = torch.argsort(scores, dim=0, descending=True)
    g = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    seen: set[int] = set()
    pointers = [0] * scores.shape[1]
    k = min(k, scores.shape[0])
    while len(chosen) < k:
        for j in torch.randperm(scores.shape[1], generator=g).tolist():
            while pointers[j] < scores.shape[0] and int(order[pointers[j], j]) in seen:
                pointers[j] += 1
            if pointers[j] < scores.shape[0] and len(chosen) < k:
                i = int(order[pointers[j], j])
                chosen.append(i)
                seen.add(i)
    return chosen


@dataclass(frozen=True)
class Selection:
    """A subset chosen from influence estimates: row indices in rank order and their weights."""

    chosen: list[int]
    weights: list[float]
    budget: int
    pool_size: int
    mean: torch.Tensor  # the mean estimate of every pool row


def select_subset(
    mean: torch.Tensor,
    per_example: torch.Tensor,
    method: str,
    budget: int = 0,
    budget_fraction: float = 0.25,
    seed: int = 0,
) -> Selection:
    """``budget`` rows (or ``budget_fraction`` of the pool) by ``method``: ``round_robin`` over
    the target examples (``per_example``: n x m), ``top_k`` of the mean, or ``simplex`` (top-k
    support, first-order simplex weights). Uniform weights sum to the pool size."""
    n = len(mean)
    k = min(budget or max(1, round(budget_fraction * n)), n)
    if method == "round_robin":
        chosen = round_robin(per_example, k, seed=seed)
        weights = [n / k] * len(chosen)  # uniform over the support, summing to |S|
    elif method in ("top_k", "simplex"):
        chosen = top_k(mean, k)
        if method == "simplex" and k < n:
            w = simplex_weights(mean, lambda_for_k(mean, k, float(n)), float(n))
            weights = [float(w[i]) for i in chosen]
        else:
            weights = [n / k] * len(chosen)
    else:
        raise ValueError(f"unknown selection method {method!r}")
    return Selection(chosen=chosen, weights=weights, budget=k, pool_size=n, mean=mean)


def second_order_weights(
    p: torch.Tensor,
    q_matvec: Callable[[torch.Tensor], torch.Tensor],
    eta: float,
    lam: float,
    total: float,
    steps: int = 200,
    lr: float | None = None,
) -> torch.Tensor:
    """Projected gradient descent on f(w) = -p.w + eta/2 w.Qw + lam/2 |w|^2 over the scaled
    simplex, with Q only through ``q_matvec``. The step is 1/L for L = lam + eta |Q|, |Q| by
    power iteration (Q need not be PSD: the target Hessian is indefinite away from a minimum)."""
    n = len(p)
    w = torch.full((n,), total / n, dtype=torch.double)
    p = p.double()
    step = lr or 1.0 / (lam + eta * operator_norm(q_matvec, n))
    for _ in range(steps):
        grad = -p + eta * q_matvec(w) + lam * w
        w = _project_simplex(w - step * grad, total)
    return w.float()


def operator_norm(
    matvec: Callable[[torch.Tensor], torch.Tensor], n: int, iters: int = 20, seed: int = 0
) -> float:
    """The largest |eigenvalue| of a symmetric operator by power iteration."""
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.double)
    v /= v.norm()
    norm = 0.0
    for _ in range(iters):
        u = matvec(v).double()
        norm = float(u.norm())
        if norm == 0:
            return 0.0
        v = u / norm
    return norm


def _project_simplex(v: torch.Tensor, total: float) -> torch.Tensor:
    s, _ = torch.sort(v, descending=True)
    cums = torch.cumsum(s, 0) - total
    ks = torch.arange(1, len(v) + 1, dtype=v.dtype)
    k = int((s - cums / ks > 0).nonzero().max()) + 1
    return torch.clamp(v - cums[k - 1] / k, min=0)


def flat_rows(
    grads: dict[str, torch.Tensor], adam: AdamState | None = None, normalise: bool = True
) -> torch.Tensor:
    """(n, d) per-example gradients over every selected layer (sorted by name), on the CPU,
    Adam-preconditioned when ``adam`` is given, L2-normalised unless ``normalise`` is False."""
    n = next(iter(grads.values())).shape[0]
    rows = torch.cat(
        [
            (g * adam.factor[name] if adam else g).reshape(n, -1).cpu()
            for name, g in sorted(grads.items())
        ],
        1,
    )
    return torch.nn.functional.normalize(rows, dim=1) if normalise else rows


def adam_second_order_terms(
    model,
    rows: torch.Tensor,
    target_batch: TokenBatch,
    adam: AdamState,
    eta: float,
    param_filter: str = DEFAULT_PARAMS,
):
    """p and Q of the second-order objective for one frozen-v AdamW step (library code: the
    assets select first-order; this is for small pools and for checking the first-order choice).

    ``rows``: the pool's Adam-preconditioned gradients a*g_i (``flat_rows(..., normalise=False)``).
    As in the first-order scores each row is normalised, R = rows / |rows|, which reweights the
    samples; the optimizer's own part of the step b is expressed in the same units by dividing it
    by the rows' mean norm s. The step on the w-weighted pool is then delta = -eta s (R^T w / n + b / s);
    expanding the (normalised) target loss to second order and dividing by eta s / n gives
    f(w) = -p.w + eta' / 2 w.Qw with eta' = eta s and
        p = R g_T - eta' R H_T (b / s),   Q = (1/n) R H_T R^T,
    g_T, H_T the target loss's gradient and Hessian in the selected weights. Returns (p, Q-matvec, eta')."""
    layers = selected_linears(model, param_filter)
    names = sorted(layers)
    params = [layers[n].weight for n in names]
    shapes = [p.shape for p in params]
    rows = rows.detach().double().cpu()
    n = rows.shape[0]
    scale_s = float(rows.norm(dim=1).mean().clamp(min=1e-30))
    unit = torch.nn.functional.normalize(rows, dim=1)
    device = _device(model)

    def split(v: torch.Tensor) -> list[torch.Tensor]:
        out, offset = [], 0
        for s in shapes:
            size = math.prod(s)
            out.append(
                v[offset : offset + size].reshape(s).to(device=device, dtype=params[0].dtype)
            )
            offset += size
        return out

    def with_grad_on_selected(fn):
        saved = {p: p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        try:
            with torch.enable_grad():
                return fn()
        finally:
            for p, flag in saved.items():
                p.requires_grad_(flag)

    def target_grad():
        loss = per_example_loss(model, target_batch).mean()
        return torch.autograd.grad(loss, params, create_graph=True)

    g_t = with_grad_on_selected(target_grad)
    scale = 1.0 / float(
        torch.sqrt(sum((g.detach().double() ** 2).sum() for g in g_t)).clamp(min=1e-30)
    )

    def hvp(v: torch.Tensor) -> torch.Tensor:
        hv = with_grad_on_selected(
            lambda: torch.autograd.grad(g_t, params, grad_outputs=split(v), retain_graph=True)
        )
        return torch.cat([h.reshape(-1) for h in hv]).cpu().double() * scale

    eta_eff = eta * scale_s
    flat_g = torch.cat([g.detach().reshape(-1) for g in g_t]).cpu().double() * scale
    b = torch.cat([adam.offset[name].reshape(-1).cpu() for name in names]).double() / scale_s
    p_vec = unit @ flat_g - eta_eff * (unit @ hvp(b))

    def q_matvec(w: torch.Tensor) -> torch.Tensor:
        return unit @ hvp(unit.T @ w.double().cpu()) / n

    return p_vec.float(), q_matvec, eta_eff


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


def auroc(scores: torch.Tensor, positive: Sequence[bool]) -> float:
    """P(score of a random positive > score of a random negative), ties counted half."""
    pos = torch.tensor(list(positive), dtype=torch.bool)
    s_pos, s_neg = scores[pos].double(), scores[~pos].double()
    if len(s_pos) == 0 or len(s_neg) == 0:
        return float("nan")
    diff = s_pos[:, None] - s_neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


# --- one influence computation, end to end -------------------------------------------------------
@dataclass(frozen=True)
class InfluenceConfig:
    param_filter: str = DEFAULT_PARAMS
    jvp_blocks: int = 4
    jvp_directions: int = 2
    jvp_pooling: str = "mean"  # or "last" (the paper)
    landmarks: int = 32  # 0 = every sample is a landmark: the exact method, for validation
    landmark_method: str = "uniform"  # or "kmeans++"
    ridge: float = 0.01
    centre: bool = True
    max_len: int = 128
    batch_size: int = 8
    warmup_steps: int = 16
    warmup_lr: float = 1e-5
    exact_holdout: int = 16  # non-landmarks given exact scores too, to measure the approximation
    dtype: str = "auto"  # float32 | bfloat16 | auto (bf16 autocast where bf16 is fast)
    seed: int = 0


@dataclass
class InfluenceResult:
    scores: torch.Tensor  # (n, m) estimates; exact on landmarks
    landmarks: list[int]
    exact_landmarks: torch.Tensor  # (L, m)
    holdout: list[int]
    exact_holdout: torch.Tensor  # (H, m)
    accuracy: dict[str, float]
    timings: dict[str, float]
    adam: dict[str, float]  # the warm-up's factor spread and losses


def all_target_gradients(
    model, tokenizer, prompts: Sequence[str], answers: Sequence[str], config: InfluenceConfig
) -> dict[str, torch.Tensor]:
    """``target_gradients`` of every target example, ``config.batch_size`` at a time."""
    parts = [
        target_gradients(
            model,
            make_batch(
                tokenizer,
                prompts[i : i + config.batch_size],
                answers[i : i + config.batch_size],
                config.max_len,
            ),
            config.param_filter,
            config.dtype,
        )
        for i in range(0, len(prompts), config.batch_size)
    ]
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def exact_scores_of(
    model,
    tokenizer,
    texts: Sequence[str],
    targets: dict[str, torch.Tensor],
    adam: AdamState | None,
    config: InfluenceConfig,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """``exact_scores`` (n, m) of ``texts``, ``config.batch_size`` at a time."""
    parts = []
    for i in range(0, len(texts), config.batch_size):
        batch = make_batch(tokenizer, list(texts[i : i + config.batch_size]), None, config.max_len)
        parts.append(exact_scores(model, batch, targets, adam, config.param_filter, config.dtype))
        if progress:
            progress(i + len(parts[-1]), len(texts))
    return torch.cat(parts) if parts else torch.zeros(0, next(iter(targets.values())).shape[0])


def embed_texts(
    model, tokenizer, texts: Sequence[str], config: InfluenceConfig, pooling: str | None = None
) -> torch.Tensor:
    """JVP embeddings of ``texts`` (``config``'s blocks, directions, seed; ``pooling`` defaults
    to ``config.jvp_pooling``), one embedder so every batch shares the directions."""
    embed = JVPEmbedder(
        model,
        config.jvp_blocks,
        config.jvp_directions,
        config.seed,
        pooling or config.jvp_pooling,
        config.dtype,
    )
    return torch.cat(
        [
            embed(
                make_batch(tokenizer, list(texts[i : i + config.batch_size]), None, config.max_len)
            )
            for i in range(0, len(texts), config.batch_size)
        ]
    )


def warm_up_on_pool(
    model, tokenizer, pool_texts: Sequence[str], config: InfluenceConfig, log=print
) -> AdamState:
    """The method's warm-up of ``model`` (in place) on the pool, with ``config``'s settings."""
    t = time.perf_counter()
    adam = warm_up(
        model,
        tokenizer,
        pool_texts,
        config.warmup_steps,
        config.warmup_lr,
        config.batch_size,
        config.max_len,
        config.param_filter,
        config.seed,
        config.dtype,
    )
    adam.seconds = time.perf_counter() - t
    summary = adam.summary()
    log(
        f"warm-up: {config.warmup_steps} AdamW steps in {adam.seconds:.0f}s, loss "
        f"{summary['warmup_loss_first']:.3f} -> {summary['warmup_loss_last']:.3f}, "
        f"Adam factor p99/p01 {summary['a_p99_over_p01']:.3g}"
    )
    return adam


def compute_influence(
    model,
    tokenizer,
    pool_texts: Sequence[str],
    target_prompts: Sequence[str],
    target_answers: Sequence[str],
    config: InfluenceConfig,
    log=print,
    warmed: AdamState | None = None,
) -> InfluenceResult:
    """Landmark-based influence of every pool sample on every target example. ``model`` is
    warmed up in place (pass a copy to keep the original), unless ``warmed`` says it already is
    (``warm_up_on_pool``'s result for this pool and config: the warm-up does not depend on the
    target, so targets of one pool can share it)."""
    if not pool_texts or not target_prompts:
        raise ValueError(
            f"influence needs a pool and target examples ({len(pool_texts)} and {len(target_prompts)} given)"
        )
    adam = warmed or warm_up_on_pool(model, tokenizer, pool_texts, config, log)
    timings: dict[str, float] = {"warmup_s": adam.seconds}  # a shared warm-up's own time
    summary = adam.summary()

    t = time.perf_counter()
    targets = all_target_gradients(model, tokenizer, target_prompts, target_answers, config)
    timings["target_grads_s"] = time.perf_counter() - t

    def exact(idx: Sequence[int]) -> torch.Tensor:
        return exact_scores_of(
            model, tokenizer, [pool_texts[i] for i in idx], targets, adam, config
        )

    t = time.perf_counter()
    emb = embed_texts(model, tokenizer, pool_texts, config)
    timings["embeddings_s"] = time.perf_counter() - t
    log(f"embedded {len(pool_texts)} pool samples in {timings['embeddings_s']:.1f}s")

    n = len(pool_texts)
    landmarks = choose_landmarks(n, config.landmarks or n, config.seed, emb, config.landmark_method)
    t = time.perf_counter()
    p_l = exact(landmarks)
    timings["landmark_grads_s"] = time.perf_counter() - t
    log(f"exact influence of {len(landmarks)} landmarks in {timings['landmark_grads_s']:.1f}s")

    t = time.perf_counter()
    scores = krr_propagate(emb, landmarks, p_l, config.ridge, centre=config.centre)
    scores[landmarks] = p_l  # landmarks keep their exact values
    timings["krr_s"] = time.perf_counter() - t

    taken = set(landmarks)
    rest = [i for i in range(n) if i not in taken]
    g = torch.Generator().manual_seed(config.seed + 1)
    holdout = sorted(
        rest[i] for i in torch.randperm(len(rest), generator=g)[: config.exact_holdout].tolist()
    )
    accuracy: dict[str, float] = {}
    exact_holdout = torch.zeros(0, len(target_prompts))
    if len(holdout) >= 3:
        exact_holdout = exact(holdout)
        est, ex = scores[holdout].mean(1), exact_holdout.mean(1)
        k = max(1, len(holdout) // 10)
        accuracy = {
            "spearman": spearman(est, ex),
            "pearson": pearson(est, ex),
            f"top{k}_recall": topk_recall(est, ex, k),
            "n_holdout": len(holdout),
        }
    per_sample_s = timings["landmark_grads_s"] / max(len(landmarks), 1)
    timings["landmark_method_s"] = (
        timings["embeddings_s"] + timings["landmark_grads_s"] + timings["krr_s"]
    )
    timings["exact_method_estimate_s"] = per_sample_s * n
    return InfluenceResult(
        scores, landmarks, p_l, holdout, exact_holdout, accuracy, timings, summary
    )


def flops_ratio(n_layers: int, blocks: int, directions: int, landmarks: int, pool: int) -> float:
    """The paper's cost model (docs/methods.md#jvp-embeddings-and-propagation), relative to one
    forward pass per pool sample (RDS+):
    ID / RDS+ ~= R B / n_layers + 3 |L| / |S|."""
    return directions * blocks / n_layers + 3 * landmarks / pool
