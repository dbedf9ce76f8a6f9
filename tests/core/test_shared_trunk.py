"""Evaluating LoRA checkpoints with the bottom blocks they share computed once
(``core/shared_trunk.py``): the metrics are exactly those computed in full."""

import shutil

import pytest
import torch

from prox_assets.core.evaluation import evaluate
from prox_assets.core.shared_trunk import SharedTrunk
from prox_assets.core.training import train_lm
from prox_assets.core.training_loop import TrainConfig
from prox_resources.device import DeviceSettings
from prox_resources.engine import ModelEngine
from prox_resources.loader import LoadedModel

PROSE = [
    "It was a truth generally acknowledged that the evening walk along the river had done them "
    "all good. The light was soft, the talk was easy, and nobody hurried home.",
    "The village lay at the bottom of a wide valley, and in the spring the river rose.",
]
CHOICES = [
    {"prompt": "Question: What is blue?\nAnswer:", "answer": " the sky", "gold": 0,
     "choices": '[" the sky", " grass", " a stone"]'},
    {"prompt": "Question: What do plants need?\nAnswer:", "answer": " light", "gold": 0,
     "choices": '[" light", " rocks"]'},
]  # fmt: skip
GSM = [
    {"prompt": "Question: 2 + 3?\nAnswer:", "answer": " 5\n#### 5", "choices": "[]", "gold": -1},
    {"prompt": "Question: 10 - 4?\nAnswer:", "answer": " 6\n#### 6", "choices": "[]", "gold": -1},
]


@pytest.fixture(scope="module")
def four_layers(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama with four blocks: two shared, two trained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(tiny_llama_dir)
    config.num_hidden_layers = 4
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("four-layers")
    LlamaForCausalLM(config).save_pretrained(out)
    for f in tiny_llama_dir.iterdir():
        if "token" in f.name or f.name.endswith(".jinja"):
            shutil.copy(f, out / f.name)
    return out


def trained(engine, cpu, lora_layers, seed, tmp_path) -> LoadedModel:
    config = TrainConfig(
        lora_r=4,
        lora_alpha=8,
        lora_layers=lora_layers,
        max_steps=2,
        batch_size=2,
        lr=5e-2,
        warmup_steps=1,
        max_seq_len=24,
        seed=seed,
    )
    model, tokenizer = engine.load_model(cpu, train=True)
    out = train_lm(model, tokenizer, PROSE * 3, config, tmp_path / f"{lora_layers}-{seed}")
    return LoadedModel(out.model, tokenizer)


def test_replayed_bottom_blocks_give_exactly_the_full_metrics(four_layers, tmp_path):
    engine, cpu = ModelEngine(model=str(four_layers)), DeviceSettings(device="cpu")
    models = [engine.load_model(cpu)] + [trained(engine, cpu, 2, s, tmp_path) for s in (0, 1)]
    trunk = SharedTrunk.for_lora(4, 2, "lora")
    assert trunk is not None and trunk.depth == 2
    results = set()
    for i, loaded in enumerate(models):
        backend = engine.serve(loaded, cpu)
        for task, rows in (("arc_challenge", CHOICES), ("gsm8k", GSM)):
            full = evaluate(backend, task, rows, PROSE, max_new_tokens=6)
            replayed, computed = trunk.replayed, trunk.computed
            with trunk.sharing(loaded.model) as shared:
                fast = evaluate(backend, task, rows, PROSE, max_new_tokens=6)
            assert shared and fast == full, (i, task)
            # the first model (the reference) computes and records its calls; the others replay
            # every one (its greedy completions start alike: the first tokens' calls too)
            if i == 0 and task == "arc_challenge":
                assert trunk.replayed == replayed and trunk.computed > computed
            elif i > 0:
                assert trunk.replayed > replayed, (i, task)
                if task == "arc_challenge":  # no generation: the very same calls
                    assert trunk.computed == computed
            results.add(tuple(sorted(full.items())))
        assert "forward" not in loaded.model.get_decoder().layers[0].__dict__  # restored
    assert len(results) == 6  # three different models: the replay did not copy metrics across


def test_a_model_with_other_bottom_blocks_is_computed_in_full(four_layers, tmp_path):
    engine, cpu = ModelEngine(model=str(four_layers)), DeviceSettings(device="cpu")
    trunk = SharedTrunk.for_lora(4, 2, "lora")
    assert trunk is not None
    base = engine.load_model(cpu)
    with trunk.sharing(base.model) as shared:
        evaluate(engine.serve(base, cpu), "arc_challenge", CHOICES, PROSE)
    assert shared
    everywhere = trained(engine, cpu, None, 0, tmp_path)  # adapters on every block
    backend = engine.serve(everywhere, cpu)
    full = evaluate(backend, "arc_challenge", CHOICES, PROSE)
    with trunk.sharing(everywhere.model) as shared:
        again = evaluate(backend, "arc_challenge", CHOICES, PROSE)
    assert not shared and again == full and trunk.replayed == 0


def test_no_trunk_when_every_block_is_trained():
    assert SharedTrunk.for_lora(30, 4, "lora").depth == 26
    assert SharedTrunk.for_lora(30, None, "lora") is None
    assert SharedTrunk.for_lora(30, 0, "lora") is None
    assert SharedTrunk.for_lora(30, 4, "full") is None
    assert SharedTrunk.for_lora(4, 4, "lora") is None
