"""The model engine's transformers backend against direct computation, on a tiny model."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prox_resources.backends import VLLMBackend
from prox_resources.device import DeviceSettings
from prox_resources.engine import ModelEngine

CHATS = [
    [{"role": "user", "content": "Rate this: the river rose overnight."}],
    [
        {
            "role": "user",
            "content": "A much longer question about rivers, rain, hills and the town " * 5,
        }
    ],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
]


@pytest.fixture(scope="module")
def backend(tiny_llama_dir):
    # fp32 compute: these tests compare with a direct fp32 forward to 1e-4
    return ModelEngine(model=str(tiny_llama_dir), max_batch_size=2).load(
        DeviceSettings(device="cpu", dtype="float32")
    )


@pytest.fixture(scope="module")
def reference(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    return tok, model


def _ids(tok, text):
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


def test_next_token_probs_match_an_unpadded_forward(backend, reference):
    tok, model = reference
    got = backend.next_token_probs(CHATS, ["0", "1", "2", "3", "4", "5"], prefixes=["Score: "] * 3)
    for chat, probs in zip(CHATS, got):
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + "Score: "
        with torch.no_grad():
            logits = model(_ids(tok, text)).logits[0, -1]
        p = torch.softmax(logits, -1)
        for digit, value in probs.items():
            expected = p[tok(digit, add_special_tokens=False)["input_ids"][0]].item()
            assert value == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_batched_greedy_generation_equals_one_at_a_time(backend):
    batched = backend.generate(CHATS, max_new_tokens=8)
    alone = [backend.generate([c], max_new_tokens=8)[0] for c in CHATS]
    assert batched == alone  # left padding and position ids are right; order is preserved
    assert backend.generate(CHATS, max_new_tokens=8) == batched  # greedy is deterministic


def test_sampled_generation_is_seeded(backend):
    a = backend.generate(CHATS[:1], max_new_tokens=8, temperature=1.0, seed=3)
    b = backend.generate(CHATS[:1], max_new_tokens=8, temperature=1.0, seed=3)
    assert a == b


def test_loglikelihood_matches_direct_sum(backend, reference):
    tok, model = reference
    # rows of a batch with continuations of different lengths (only the last positions of a
    # left-padded batch are projected onto the vocabulary), and three rows continuing one context
    # (run once, in batches of two from its cache)
    contexts = ["The river", "Once upon a time there was", *["Q: which one is it?"] * 3]
    conts = [" rose overnight.", " a fern", " A", " the longest answer of them all, by far", "B"]
    reused = backend.usage["prefix_tokens_reused"]
    got = backend.loglikelihood(contexts, conts)
    reused = backend.usage["prefix_tokens_reused"] - reused
    for ctx, cont, value in zip(contexts, conts, got):
        ids = (
            tok(ctx, add_special_tokens=False)["input_ids"]
            + tok(cont, add_special_tokens=False)["input_ids"]
        )
        k = len(tok(cont, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
        direct = sum(logp[len(ids) - k - 1 + j, ids[len(ids) - k + j]].item() for j in range(k))
        assert value == pytest.approx(direct, rel=1e-4)
        assert value < 0 and math.isfinite(value)
    # the shared question ran once per batch of two rows (2 + 1), not once per row
    n = len(tok("Q: which one is it?", add_special_tokens=False)["input_ids"])
    assert reused == (n - 1) * (2 - 1)


def test_truncate_cuts_at_token_boundaries(backend):
    text = "word " * 500
    cut = backend.truncate(text, 50)
    assert len(
        backend.tokenizer(cut, add_special_tokens=False)["input_ids"]
    ) <= 50 and text.startswith(cut)


def test_vllm_backend_without_the_gpu_extra_says_how_to_get_it(tiny_llama_dir):
    """vLLM is never installed on CPU machines; the error must say what to do."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"prox-platform\[gpu\]"):
            VLLMBackend(str(tiny_llama_dir))
    else:
        pytest.skip("vLLM is installed here: this test is about its absence")


def test_openai_backend_needs_a_url():
    with pytest.raises(ValueError, match="base_url"):
        ModelEngine(backend="openai").load()


@pytest.mark.slow
def test_real_smollm2_scores_and_generates(smollm2_dir):
    from prox_assets.core.scoring import score_documents

    backend = ModelEngine(model=str(smollm2_dir)).load(DeviceSettings(device="cpu"))
    answer = backend.generate(
        [[{"role": "user", "content": "What is the capital of France? One word."}]], 12
    )[0]
    assert "Paris" in answer
    docs = [
        "Photosynthesis is the process by which green plants use sunlight to make glucose from "
        "carbon dioxide and water. It takes place in the chloroplasts and releases oxygen.",
        "Home | Login | Cart (0)\nBUY NOW!!! 50% OFF\nClick here click here\n© 2024 Shop",
        "Chapter 1. The quadratic formula x = (-b ± sqrt(b^2 - 4ac)) / 2a solves ax^2 + bx + c = 0.",
    ]
    scores = score_documents(backend, docs, "edu")
    assert all(0 <= s.score <= 5 and 0 <= s.expected <= 5 for s in scores)
    # a real instruct model puts most of its next-token mass on a digit after "Score: "
    assert min(s.mass for s in scores) > 0.5
    assert scores[0].expected > scores[1].expected


def test_empty_batches(backend):
    assert backend.generate([], 4) == [] and backend.next_token_probs([], ["0"]) == []
    assert backend.loglikelihood([], []) == []


RUBRIC = "Rate how useful the document below would be for teaching, from 0 to 5. " * 6


def test_a_shared_prompt_head_is_computed_once_and_changes_no_probability(backend, reference):
    tok, model = reference
    chats = [
        [{"role": "user", "content": f"{RUBRIC}\nDocument:\n{d}"}]
        for d in (
            "The river rose.",
            "Photosynthesis turns light into sugar in plants " * 4,
            "x",
            "Hi there",
        )
    ]
    before = backend.usage["prefix_tokens_reused"]
    got = backend.next_token_probs(chats, ["0", "1", "2"], prefixes=["Score: "] * len(chats))
    saved = backend.usage["prefix_tokens_reused"] - before
    head = len(
        tok(
            tok.apply_chat_template(chats[0], tokenize=False, add_generation_prompt=True)[:-200],
            add_special_tokens=False,
        )["input_ids"]
    )
    assert saved >= 3 * head > 0  # the head ran once for four prompts (batches of 2 share it too)
    for chat, probs in zip(chats, got):
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + "Score: "
        with torch.no_grad():
            p = torch.softmax(model(_ids(tok, text)).logits[0, -1], -1)
        for digit, value in probs.items():
            assert value == pytest.approx(
                p[tok(digit, add_special_tokens=False)["input_ids"][0]].item(), rel=1e-4, abs=1e-7
            )


def test_shared_prefix_length_leaves_every_sequence_a_token_of_its_own():
    from prox_resources.backends import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix_length([[7], [7, 8]]) == 0
    assert shared_prefix_length([[1, 2], [3, 4]]) == 0


def test_auto_precision_runs_bf16_matmuls_where_the_cpu_has_bf16_units(tiny_llama_dir, backend):
    from prox_assets.core.precision import bf16_is_fast

    auto = ModelEngine(model=str(tiny_llama_dir), max_batch_size=2).load(
        DeviceSettings(device="cpu")
    )
    assert auto is not backend and auto.compute == "auto" and backend.compute == "float32"
    seen, logits = [], []
    hooks = [
        auto.model.model.layers[0].mlp.down_proj.register_forward_hook(
            lambda m, i, o: seen.append(o.dtype)
        ),
        auto.model.get_output_embeddings().register_forward_hook(
            lambda m, i, o: logits.append(o.dtype)
        ),
    ]
    try:
        got = auto.next_token_probs(CHATS, ["0", "1"], prefixes=["Score: "] * 3)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen and set(seen) == {torch.bfloat16 if bf16_is_fast("cpu") else torch.float32}
    assert logits and set(logits) == {torch.float32}  # the argmax is taken on fp32 logits
    assert next(auto.model.parameters()).dtype == torch.float32  # weights stay as loaded
    exact = backend.next_token_probs(CHATS, ["0", "1"], prefixes=["Score: "] * 3)
    for a, b in zip(got, exact):
        assert a == pytest.approx(b, abs=2e-2)


def test_refine_benchmark_compares_precisions_on_the_same_windows(tiny_llama_dir, sample_files):
    from prox_assets.benchmarks import program_agreement, refine_benchmark, sample_texts

    texts = sample_texts(sample_files, piece_chars=1500)[:3]
    engine = ModelEngine(model=str(tiny_llama_dir), max_batch_size=4)

    def load(dtype):
        backend = engine.load(DeviceSettings(device="cpu", dtype=dtype))
        return backend, backend

    report = refine_benchmark(texts, load, 128, 128, chunk_new_tokens=12, doc_new_tokens=4)
    assert set(report["by_dtype"]) == {"float32", "auto"}
    assert report["by_dtype"]["float32"]["speedup_vs_reference"] == 1.0
    agreement = report["by_dtype"]["auto"]["agreement_with_reference"]
    assert agreement["windows_compared"] > 0
    assert 0 <= agreement["window_programs_identical"] <= agreement["window_outputs_agree"] <= 1
    assert report["matmul_peak_GFLOP_per_s_same_run"]["float32"] > 0

    # the agreement measure itself: a run agrees fully with itself, and not with other programs
    from prox_assets.benchmarks import refine_once

    backend = engine.load(DeviceSettings(device="cpu", dtype="float32"))
    run = refine_once(texts, backend, backend, 128, 128, 12, 4)
    assert program_agreement(run, run)["window_outputs_agree"] == 1.0
    from prox_assets.core.refinement import ChunkRun

    other = {
        **run,
        "chunk_runs": [
            ChunkRun(r.windows, ["drop_doc()"] * len(r.windows), r.result)
            for r in run["chunk_runs"]
        ],
    }
    assert program_agreement(run, other)["window_programs_identical"] < 1.0
