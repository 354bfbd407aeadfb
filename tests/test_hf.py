"""wolindex.hf on tiny randomly initialised transformers models (built from a config, nothing downloaded):
greedy generate with the patched head equals unpatched generate (exact index; a certified approximate
method), sampling stays on the candidates, the head runs on the last position only, restore, errors."""
import numpy as np
import pytest

import wolindex

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from wolindex.hf import lm_head_index, patch_lm_head  # noqa: E402
from wolindex.torch import IndexedHead  # noqa: E402

VOCAB = 400


def tiny(kind):
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():      # spread the logits so that greedy choices are not near-ties
        model.get_output_embeddings().weight.mul_(8.0)
    return model.eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return tiny(request.param)


PROMPTS = torch.tensor([[5, 17, 42, 7, 99, 3], [11, 12, 13, 14, 15, 16]])


def generate(model, **kwargs):
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    settings.update(kwargs)
    return model.generate(PROMPTS, attention_mask=torch.ones_like(PROMPTS), **settings)


def test_greedy_generate_equals_unpatched_with_an_exact_index(model):
    want = generate(model)
    index = lm_head_index(model)
    for k in (1, 20):
        with patch_lm_head(model, index, k=k) as patch:
            assert model.get_output_embeddings() is patch.head
            got = generate(model)
        assert torch.equal(got, want)
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)        # restored
    assert torch.equal(generate(model), want)


def test_greedy_generate_equals_unpatched_with_a_certified_approximate_index(model):
    want = generate(model)
    with torch.no_grad():
        hidden = model(torch.randint(0, VOCAB, (8, 32)), output_hidden_states=True).hidden_states[-1]
    index = lm_head_index(model, method="adaptive", train=hidden.reshape(-1, 32), verbose=False)
    with patch_lm_head(model, index, k=5, mode="certified"):
        assert torch.equal(generate(model), want)


def test_sampling_stays_on_the_candidates_and_the_head_sees_the_last_position_only(model):
    index = lm_head_index(model)
    rows = []
    with patch_lm_head(model, index, k=1) as patch:
        patch.head.register_forward_hook(lambda module, args, out: rows.append(tuple(args[0].shape)))
        torch.manual_seed(1)
        sampled = generate(model, do_sample=True, top_k=0, temperature=1.3)
    assert torch.equal(sampled, generate(model))            # one candidate: sampling is greedy
    assert rows and all(shape[:2] == (2, 1) for shape in rows)
    with patch_lm_head(model, index, k=3), torch.inference_mode():
        out = model(PROMPTS).logits
    assert torch.equal(torch.isfinite(out).sum(-1), torch.full(PROMPTS.shape, 3))


def test_bad_arguments_name_themselves(model):
    index = lm_head_index(model)
    other = wolindex.build(np.random.default_rng(0).standard_normal((VOCAB, 32)).astype(np.float32))
    with pytest.raises(ValueError, match="index"):
        patch_lm_head(model, other)
    with pytest.raises(ValueError, match="index"):
        patch_lm_head(model, wolindex.build(np.ones((VOCAB + 1, 32), np.float32)), check_weights=False)
    with pytest.raises(TypeError, match="model"):
        patch_lm_head(torch.nn.Linear(2, 2), index)
    with pytest.raises(TypeError, match="index"):
        patch_lm_head(model, "exact")
    with patch_lm_head(model, index):
        with pytest.raises(ValueError, match="model"):
            patch_lm_head(model, index)
    assert not isinstance(model.get_output_embeddings(), IndexedHead)
