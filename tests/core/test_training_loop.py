"""The shared training loop's loss: only labelled positions are projected onto the vocabulary,
and the result is the model's own loss, value and gradients."""

import pytest
import torch

from prox_assets.core.training_loop import TrainConfig, attach_adapters, causal_lm_loss


def _batch(vocab: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (3, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0  # a right-padded row
    labels = torch.full_like(ids, -100)
    labels[0, 10:] = ids[0, 10:]  # a program at the end of each row, of different lengths
    labels[1, 12:18] = ids[1, 12:18]
    labels[2, 3:] = ids[2, 3:]
    return ids, mask, labels


@pytest.mark.parametrize("lora", [False, True])
def test_loss_and_gradients_equal_the_models_own(tiny_llama_dir, lora):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    if lora:
        model = attach_adapters(model, TrainConfig(lora_layers=None))
    ids, mask, labels = _batch(model.config.vocab_size)
    params = [p for p in model.parameters() if p.requires_grad]

    ours = causal_lm_loss(model, ids, mask, labels)
    ours_grads = torch.autograd.grad(ours, params)
    theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    theirs_grads = torch.autograd.grad(theirs, params)

    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    for a, b in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_only_labelled_positions_reach_the_vocabulary(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    ids, mask, labels = _batch(model.config.vocab_size)
    rows = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: rows.append(args[0].shape[0] * args[0].shape[1])
    )
    causal_lm_loss(model, ids, mask, labels)
    hook.remove()
    # positions 2-22 (some row has a label after them) of 3 rows, not all 24
    assert rows == [3 * 21]
