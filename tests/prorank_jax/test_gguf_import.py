"""`prorank import-gguf`: a GGUF file as an HF folder that gives transformers' own GGUF logits.

The GGUF files are tiny random Llama models written here with the gguf package's writer,
float32 (which must reproduce the source HF model) and Q8_0-quantised (which must
reproduce transformers reading the same GGUF)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prorank_jax import hf, model
from prorank_jax.gguf_import import GGUFImportError, import_gguf, inspect_gguf
from tests.helpers.gguf_models import write_gguf
from tests.helpers.hf_models import left_padded_batch, make_hf_model, torch_logits
from tests.helpers.tokenizer import build_test_tokenizer

LLAMA = dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
             intermediate_size=64, tie_word_embeddings=False, rope_theta=10000.0)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny random Llama HF model, its tokenizer, and its float32 and Q8_0 GGUF files."""
    root = tmp_path_factory.mktemp("gguf")
    tokenizer_dir = build_test_tokenizer(root / "tokenizer")
    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    torch_model = make_hf_model(root / "hf", vocab_size=vocab + 12, **LLAMA)
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    config = json.loads((root / "hf" / "config.json").read_text())
    files = {q: write_gguf(root / f"tiny-{q or 'F32'}.gguf", state, config, tokenizer_dir, quantization=q)
             for q in (None, "Q8_0")}
    return root, torch_model, files


def _gguf_reference(gguf_file):
    return AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                dtype=torch.float32).eval()


@pytest.mark.parametrize("quantization", [None, "Q8_0"])
def test_imported_folder_gives_transformers_gguf_logits(source, tmp_path, quantization):
    root, torch_model, files = source
    gguf_file = files[quantization]
    out = import_gguf(gguf_file, tmp_path / "imported")
    config, params = hf.load(out)
    reference = _gguf_reference(gguf_file)
    ids, mask, positions = left_padded_batch(config.vocab_size, [9, 5, 9], seed=4)
    expected = torch_logits(reference, ids, mask, positions)
    ours = np.asarray(model.full_logits(params, config, ids, mask))
    real = mask.astype(bool)
    assert np.abs(ours - expected)[real].max() <= 1e-4
    source_logits = torch_logits(torch_model, ids, mask, positions)
    if quantization is None:  # a float32 GGUF is the source model itself
        assert np.abs(ours - source_logits)[real].max() <= 1e-4
    else:  # Q8_0 moves the logits, but not far
        gap = np.abs(ours - source_logits)[real].max()
        assert 1e-6 < gap < 0.05 * np.abs(source_logits).max()
    # transformers loads the folder too, and its tokenizer is the GGUF's, chat template included.
    np.testing.assert_allclose(torch_logits(AutoModelForCausalLM.from_pretrained(out), ids, mask, positions),
                               expected, atol=1e-4)
    ours_tok, gguf_tok = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name)
    text = "query: what is the capital of France?\ndocument: Paris 1 0"
    assert ours_tok(text)["input_ids"] == gguf_tok(text)["input_ids"]
    messages = [{"role": "user", "content": "Relevance:"}]
    assert ours_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        gguf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert config.model_type == "llama" and not config.tie_word_embeddings


def test_bfloat16_import_through_the_cli(source, tmp_path):
    _, torch_model, files = source
    out = tmp_path / "bf16"
    done = subprocess.run([sys.executable, "-m", "launch.cli", "import-gguf", str(files[None]), str(out),
                           "--dtype", "bfloat16"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"imported {files[None]} (llama, {torch_model.num_parameters():,} parameters" in done.stdout
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    tensors = hf.read_safetensors(out / "model.safetensors")
    assert {str(t.dtype) for t in tensors.values()} == {"bfloat16"}


def test_unreadable_quantisation_and_architecture_name_the_file(source, tmp_path):
    root, torch_model, _ = source
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    config = json.loads((root / "hf" / "config.json").read_text())
    q5 = write_gguf(tmp_path / "q5.gguf", state, config, root / "tokenizer", quantization="Q5_0")
    with pytest.raises(GGUFImportError, match=r"q5\.gguf: holds tensors quantised as \['Q5_0'\]"):
        import_gguf(q5, tmp_path / "never")
    gpt2 = write_gguf(tmp_path / "gpt2.gguf", state, config, root / "tokenizer", architecture="gpt2")
    with pytest.raises(GGUFImportError, match=r"gpt2\.gguf: holds a 'gpt2' model"):
        inspect_gguf(gpt2)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    done = subprocess.run([sys.executable, "-m", "launch.cli", "import-gguf", str(tmp_path / "junk.gguf"),
                           str(tmp_path / "never")], capture_output=True, text=True)
    assert done.returncode == 2 and "junk.gguf: not a readable GGUF file" in done.stderr
    assert not (tmp_path / "never").exists()
