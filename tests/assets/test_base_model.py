"""One source for "which base model": the asset configs name none of their own, the SFT set
records the model whose tokenizer sized it and the refiner trains exactly that one; one LoRA
mapping; one window size."""

import dagster as dg
import pytest

from prox_assets.core.chunking import DEFAULT_WINDOW_TOKENS, chunk_document
from prox_assets.core.refiner_training import version_id
from prox_assets.core.training_loop import TrainConfig, lora_train_config
from prox_assets.lineage import Recorded
from prox_assets.refiner_training import RefinerConfig, _train_config, refiner_base_model
from prox_assets.selection import InfluenceAssetConfig
from prox_assets.synthesis import SFTConfig
from prox_assets.training import CheckpointConfig
from prox_resources.engine import ModelEngine
from prox_resources.settings import DEFAULT_MODEL
from tests.support.pipeline import materialize


def test_no_asset_config_defaults_a_model_of_its_own():
    for config, name in (
        (SFTConfig(), "refiner_base_model"),
        (RefinerConfig(), "base_model"),
        (InfluenceAssetConfig(), "model"),
        (CheckpointConfig(), "base_model"),
    ):
        assert getattr(config, name) == "", type(config).__name__
    engine = ModelEngine(model="/scorer")
    assert engine.base_or("") == "/scorer" and engine.base_or("/named") == "/named"
    assert ModelEngine(backend="vllm", model="/big").base == DEFAULT_MODEL
    assert ModelEngine(backend="vllm", model="/big", base_model="/small").base_or("") == "/small"


def _sft_set(**metadata) -> Recorded:
    return Recorded("sft_programs", "chunk", "v", {"sft_version": "s1", **metadata}, "run", 1)


def test_the_refiner_trains_the_model_its_sft_set_was_built_with():
    engine = ModelEngine(model="/engine-model")
    built = _sft_set(refiner_base_model="/tokenizer-model")
    assert refiner_base_model(built, "", engine) == "/tokenizer-model"
    assert refiner_base_model(built, "/tokenizer-model", engine) == "/tokenizer-model"
    with pytest.raises(dg.Failure, match="built with '/tokenizer-model'"):
        refiner_base_model(built, "/other", engine)
    # an SFT set recorded before the base model was: the config's, else the engine's
    assert refiner_base_model(_sft_set(), "", engine) == "/engine-model"
    assert refiner_base_model(_sft_set(), "/other", engine) == "/other"


def test_one_lora_mapping_and_unchanged_versions():
    """The mapping both refiner and checkpoint configs go through gives the TrainConfig each
    built by hand before, so existing refiner and checkpoint versions keep their hashes."""
    before = TrainConfig(
        method="lora",
        lora_r=16,
        lora_alpha=32,
        lora_layers=10,
        epochs=3.0,
        max_steps=24,
        batch_size=4,
        lr=3e-4,
        min_lr=3e-4 / 10,  # as the refiner asset computed it
        max_seq_len=640,
        seed=0,
    )
    assert _train_config(RefinerConfig()) == before
    assert version_id(DEFAULT_MODEL, "s", _train_config(RefinerConfig())) == version_id(
        DEFAULT_MODEL, "s", before
    )
    checkpoint = CheckpointConfig().train_config(1)
    assert (checkpoint.lora_alpha, checkpoint.lora_layers, checkpoint.min_lr) == (16, 4, 1e-4)
    every_block = lora_train_config(method="lora", lora_r=8, lora_layers=0, lr=1e-3)
    assert every_block.lora_layers is None and every_block.lora_alpha == 16


def test_one_window_size():
    assert SFTConfig().window_tokens == SFTConfig().doc_max_tokens == DEFAULT_WINDOW_TOKENS == 384
    text = "\n".join(f"word {i} " * 20 for i in range(200))
    count = lambda lines: [len(s.split()) for s in lines]  # noqa: E731
    windows = chunk_document(text, count)
    assert max(w.n_tokens for w in windows) <= DEFAULT_WINDOW_TOKENS < 1500
    assert windows == chunk_document(text, count, SFTConfig().window_tokens)


@pytest.mark.slow
def test_sft_set_records_its_base_model_and_the_refiner_follows_it(pipeline):
    """PROX_MODEL names the tiny model (transformers: the base model too); nothing else does."""
    instance, _store, model = pipeline
    sft = {"window_tokens": 96, "chunk_docs_per_shard": 4, "val_fraction": 0.3}
    meta = (
        materialize(instance, "sft_programs", "chunk", sft)
        .asset_materializations_for_node("sft_programs")[0]
        .metadata
    )
    assert meta["refiner_base_model"].value == model

    refused = materialize(
        instance, "refiner", "chunk", {"base_model": DEFAULT_MODEL}, raise_on_error=False
    )
    assert not refused.success
    failure = next(e for e in refused.all_events if e.is_step_failure)
    assert "built with" in failure.step_failure_data.error.message

    quick = {
        "max_steps": 1,
        "batch_size": 2,
        "eval_examples": 2,
        "max_new_tokens": 8,
        "quality_pages": 0,
        "quality_clean": 0,
        "max_seq_len": 256,
    }
    trained = materialize(instance, "refiner", "chunk", quick).asset_materializations_for_node(
        "refiner"
    )[0]
    assert trained.metadata["base_model"].value == model
