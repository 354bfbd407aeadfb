"""The PyTorch port of the debian-lm-100k model (wolindex.contrib.debian_torch) against the data folder's NumPy
reference (hidden.py) to 1e-4: a full forward, step-by-step decoding with the KV cache, chunked prefill, and
decode's re-encoding when the context is full (skipped without WOLINDEX_DATA)."""
import importlib.util

import numpy as np
import pytest

from wolindex.contrib.datasets import debian_lm_100k_path

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")          # hidden.py's GELU
from wolindex.contrib.debian_torch import CONTEXT, DebianLM, KVCache, decode  # noqa: E402

pytestmark = pytest.mark.data
TOL = 1e-4


@pytest.fixture(scope="module")
def folder():
    path = debian_lm_100k_path()
    if path is None:
        pytest.skip("debian-lm-100k not available (set WOLINDEX_DATA)")
    return path


@pytest.fixture(scope="module")
def model(folder):
    torch.set_num_threads(2)
    return DebianLM.load(folder)


@pytest.fixture(scope="module")
def windows(folder):
    with np.load(folder / "tokens_train.npz") as z:
        tokens = z["tokens"]
    starts = np.random.default_rng(0).choice(len(tokens) - CONTEXT, 2, replace=False)
    return np.stack([tokens[s:s + CONTEXT] for s in starts]).astype(np.int64)


@pytest.fixture(scope="module")
def reference(folder, model, windows):
    spec = importlib.util.spec_from_file_location("debian_hidden", folder / "hidden.py")
    hidden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hidden)
    with np.load(folder / "body.npz") as body:
        params = dict(body)
    return hidden.hidden(params, model.W.numpy(), windows)


def test_forward_matches_hidden_py(model, windows, reference):
    with torch.inference_mode():
        got = model(torch.from_numpy(windows)).numpy()
    assert got.shape == (2, CONTEXT, 256) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference, atol=TOL, rtol=0)


def test_cached_steps_and_chunks_match_hidden_py(model, windows, reference):
    ids = torch.from_numpy(windows)
    with torch.inference_mode():
        cache = KVCache()
        parts = [model(ids[:, :100], cache)] + [model(ids[:, i:i + 1], cache) for i in range(100, 104)]
        parts.append(model(ids[:, 104:], cache))
        assert cache.length == CONTEXT
        with pytest.raises(ValueError, match="ids"):
            model(ids[:, :1], cache)
    np.testing.assert_allclose(torch.cat(parts, dim=1).numpy(), reference, atol=TOL, rtol=0)


def test_decode_re_encodes_the_last_tokens_when_the_context_is_full(model, windows):
    """Greedy decoding past the context equals recomputing each step from scratch on the same window."""
    W, b = model.W, model.b

    def greedy(h):
        return torch.argmax(h @ W.T + b, dim=1)

    prompt = torch.from_numpy(windows[:, :124])
    keep, n_new = 64, 8                     # the context fills after 4 new tokens
    out = decode(model, prompt, n_new, greedy, keep=keep)
    assert out.tokens.shape == (2, n_new) and out.prefill_s > 0 and out.decode_s > 0
    seq, window_start = prompt, 0
    with torch.inference_mode():
        for i in range(n_new):
            nxt = greedy(model(seq[:, window_start:])[:, -1])
            assert torch.equal(nxt, out.tokens[:, i]), f"step {i}"
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            if seq.shape[1] - window_start > CONTEXT:
                window_start = seq.shape[1] - keep
    with pytest.raises(ValueError, match="keep"):
        decode(model, prompt, 2, greedy, keep=0)
