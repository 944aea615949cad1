"""`prorank export-hf`: a run folder -> one HF folder for transformers, mxbai-rerank and
sentence-transformers, checked against the checkpoint's own scores."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import optax
import pytest
import torch
import yaml

from launch import cli
from prorank_jax import checkpoint, hf, model, run_folder_io
from prorank_jax import export as ex
from prorank_jax.config import ModelConfig
from prorank_jax.prompts import RerankPrompt, left_pad
from prorank_jax.pretrained import load_tokenizer
from scoring.reranker import Reranker
from tests.helpers.model_cards import parse_front_matter
from tests.helpers.tokenizer import build_test_tokenizer

QUERY = "what is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "The mitochondria is the powerhouse of the cell; it produces ATP through respiration.",
    "",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Rerankers score each query and document pair and sort candidates by that score",
    "The quick brown fox jumps over the lazy dog. 0 1 10 100 2024",
]
BASE_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
CONFIG = ModelConfig(vocab_size=448, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=8, max_position_embeddings=512, tie_word_embeddings=False,
                     rope_theta=10000.0, bos_token_id=0, eos_token_id=2, pad_token_id=0)


def random_params(seed: int):
    """init_params, then every leaf randomised (norms around 1, biases nonzero) so scores spread."""
    params = model.init_params(CONFIG, jax.random.key(seed))
    rng = np.random.RandomState(seed)

    def perturb(path, x):
        name = str(path[-1])
        x = np.asarray(x)
        if "weight" in name:
            return (1.0 + 0.2 * rng.randn(*x.shape)).astype(np.float32)
        scale = 0.1 if "bias" in name else 0.3
        return (scale * rng.randn(*x.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(perturb, params)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    tok = build_test_tokenizer(root / "tok")
    run = root / "run"
    resolved = {"model": {"path": BASE_MODEL, "dtype": "float32"}, "grpo": {"group_size": 8},
                "loop": {"steps": 4}, "out_dir": str(run)}
    run_folder_io.write_run_metadata(run, resolved_config=resolved, model_config=CONFIG.to_hf(), tokenizer_dir=tok)
    tx = optax.adamw(1e-3)
    with checkpoint.Checkpointer(run / "checkpoints", async_save=False) as ckpt:
        for step, seed in ((2, 1), (4, 0)):
            params = random_params(seed)
            ckpt.save(step, params=params, opt_state=tx.init(params), rng=jax.random.key(0),
                      data_state={"iterator": {}}, force=True)
    rows = [{"step": 2, "time": 1.0, "loss": 0.9, "reward": 0.4},
            {"step": 2, "time": 1.5, "eval/accuracy": 0.5},
            {"step": 4, "time": 2.0, "loss": 0.7, "reward": 0.625},
            {"step": 4, "time": 2.5, "eval/accuracy": 0.75}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"out_dir": str(run), "steps": 4,
               "eval": {"bundled-test": {"ndcg@10": 0.8125, "recall@100": 1.0},
                        "first-stage": {"ndcg@10": 0.5, "recall@100": 1.0}}}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture(scope="module")
def exported(run_dir):
    out = run_dir.parent / "prorank-tiny"
    code = cli.main(["export-hf", "--checkpoint", str(run_dir), "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def reference(run_dir):
    """Scores of the checkpoint itself (the run folder, latest step), through our Reranker."""
    return Reranker.from_pretrained(run_dir, dtype="float32", show_progress=False)


def test_folder_layout(exported):
    names = {p.relative_to(exported).as_posix() for p in exported.rglob("*")}
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "modules.json", "sentence_bert_config.json", "1_LogitScore/config.json",
                 "config_sentence_transformers.json", "README.md", "chat_template.jinja"):
        assert name in names, name
    # nothing left beside it by the staging
    assert [p.name for p in exported.parent.iterdir() if p.name.startswith(f".{exported.name}")] == []
    assert "export-hf" in cli.COMMANDS


def test_model_card(exported):
    card = (exported / "README.md").read_text()
    front = parse_front_matter(card)
    assert front["pipeline_tag"] == "text-ranking"
    assert front["library_name"] == "sentence-transformers"
    assert front["license"] == "apache-2.0"
    assert front["base_model"] == BASE_MODEL
    assert {"reranker", "prorank", "jax"} <= set(front["tags"])
    assert card.startswith("---\n") and yaml.safe_load(card.split("---\n")[1]) == front
    assert "stage 1: GRPO prompt warmup" in card and "| exported step | 4 |" in card
    assert "| reward | 0.625 |" in card and "| accuracy | 0.75 |" in card  # last rows of metrics.jsonl
    assert "| dataset | ndcg@10 | recall@100 |" in card and "| bundled-test | 0.8125 | 1 |" in card
    for heading in ("### mxbai-rerank", "### sentence-transformers", "### transformers", "### prorank-jax"):
        assert heading in card


def code_block(card: str, heading: str) -> str:
    section = card.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_snippet(card: str, heading: str, folder) -> list:
    """Execute a usage snippet of the card against the folder; returns what it printed."""
    code = code_block(card, heading).replace('"prorank-tiny"', repr(str(folder)))
    printed = []
    exec(compile(code, heading, "exec"), {"print": lambda *a: printed.append(a), "__name__": "snippet"})
    return printed


def test_transformers_scores_equal_checkpoint(exported, reference):
    """AutoModelForCausalLM on the exported folder, logits -> logit("1") - logit("0"), equals our scores."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exported)
    hf_model = AutoModelForCausalLM.from_pretrained(exported).eval()
    prompt = RerankPrompt(tokenizer, None, CONFIG.max_position_embeddings)
    encoded = prompt.encode_batch([QUERY] * len(DOCUMENTS), DOCUMENTS, instruction="find the answer")
    ids, mask = left_pad([e.input_ids for e in encoded], max(map(len, encoded)), 0)
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    with torch.no_grad():
        logits = hf_model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                          position_ids=torch.tensor(positions, dtype=torch.long)).logits[:, -1].float().numpy()
    theirs = logits[:, prompt.yes_id] - logits[:, prompt.no_id]
    ours = reference.predict([QUERY] * len(DOCUMENTS), DOCUMENTS, instruction="find the answer")
    assert np.ptp(ours) > 0.5  # the scores spread, so the comparison means something
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)

    # the card's transformers snippet computes the same scores
    (printed,) = run_snippet((exported / "README.md").read_text(), "### transformers", exported)
    docs = ["Paris is the capital of France.", "Berlin is in Germany."]
    np.testing.assert_allclose(printed[0], reference.predict([QUERY] * 2, docs), atol=1e-4, rtol=0)


def test_sentence_transformers_cross_encoder(exported, reference):
    """CrossEncoder(folder) scores with LogitScore("1", "0") on mxbai's prompt: same ids, same scores."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.modules import LogitScore

    ce = CrossEncoder(str(exported))
    logit_score = ce[1]
    assert isinstance(logit_score, LogitScore)
    assert (logit_score.true_token_id, logit_score.false_token_id) == (reference.prompt.yes_id, reference.prompt.no_id)

    pairs = [(QUERY, d) for d in DOCUMENTS]
    for instruction in (None, "find the answer"):
        # the token ids it feeds the model are mxbai's, id for id, on this data ...
        features = ce[0].preprocess(pairs, prompt=instruction)
        mask = features["attention_mask"].numpy().astype(bool)
        got_ids = [row[m].tolist() for row, m in zip(features["input_ids"].numpy(), mask)]
        want = reference.prompt.encode_batch([QUERY] * len(DOCUMENTS), DOCUMENTS, instruction=instruction)
        assert got_ids == [list(e.input_ids) for e in want]
        # ... so the scores are the same (raw logit differences: no activation)
        theirs = ce.predict(pairs, prompt=instruction)
        ours = reference.predict([QUERY] * len(DOCUMENTS), DOCUMENTS, instruction=instruction)
        np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)

    ranked = ce.rank(QUERY, DOCUMENTS)
    assert [r["corpus_id"] for r in ranked] == [r.index for r in reference.rank(QUERY, DOCUMENTS)]

    (printed,) = run_snippet((exported / "README.md").read_text(), "### sentence-transformers", exported)
    docs = ["Paris is the capital of France.", "Berlin is in Germany."]
    np.testing.assert_allclose(printed[0], reference.predict([QUERY] * 2, docs), atol=1e-4, rtol=0)
    assert [r["corpus_id"] for r in printed[1]] == [r.index for r in reference.rank(QUERY, docs)]



def lend_prepare_for_model(monkeypatch, tokenizer_class) -> None:
    """mxbai-rerank 0.1.6's prepare_inputs joins the query ids and the separator + document ids with
    tokenizer.prepare_for_model(..., truncation="only_second"), which calls truncate_sequences.
    transformers 5 removed both from the tokenizers-backed ("fast") tokenizers AutoTokenizer gives;
    the pure-Python backend still has HF's own implementation, which works on ids alone, so the
    class borrows it (as the card's snippet does and as tests/prorank_jax/test_prompts.py's oracle
    does). Through monkeypatch, so the shared tokenizer class is restored after the test."""
    from transformers.tokenization_python import PythonBackend

    if hasattr(tokenizer_class, "prepare_for_model"):  # transformers 4: nothing to lend
        return
    for name in ("prepare_for_model", "truncate_sequences"):
        monkeypatch.setattr(tokenizer_class, name, getattr(PythonBackend, name), raising=False)


def test_mxbai_rerank_scores_equal_checkpoint(exported, reference, monkeypatch):
    """The real mxbai_rerank.MxbaiRerankV2 on the exported folder builds our prompt ids, and its raw
    scores (predict without normalize: forward's logit("1") - logit("0") at the last position) and its
    rank order equal the checkpoint's."""
    from mxbai_rerank import MxbaiRerankV2

    mx = MxbaiRerankV2(str(exported), device="cpu", torch_dtype=torch.float32)
    lend_prepare_for_model(monkeypatch, type(mx.tokenizer))
    assert mx.model.dtype == torch.float32
    assert (mx.yes_loc, mx.no_loc) == (reference.prompt.yes_id, reference.prompt.no_id)

    queries = [QUERY] * len(DOCUMENTS)
    for instruction in (None, "find the answer"):
        # the ids it feeds the model (left-padded to a multiple of 8) are ours, id for id ...
        inputs = mx.prepare_inputs(queries, DOCUMENTS, instruction=instruction)
        mask = inputs["attention_mask"].numpy().astype(bool)
        got_ids = [row[m].tolist() for row, m in zip(inputs["input_ids"].numpy(), mask)]
        want = reference.prompt.encode_batch(queries, DOCUMENTS, instruction=instruction)
        assert got_ids == [list(e.input_ids) for e in want]
        assert all(m[-1] for m in mask)  # left padding: the last position is the prompt's own
        # ... and so are the raw scores (mxbai passes no position_ids; RoPE depends only on
        # relative positions, so left padding shifts nothing but float noise)
        theirs = mx.predict(queries, DOCUMENTS, instruction=instruction).numpy()
        ours = reference.predict(queries, DOCUMENTS, instruction=instruction)
        assert np.ptp(ours) > 0.5  # the scores spread, so the comparison means something
        np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)

    # rank: batch_size below the number of documents takes mxbai's batched (bucketed) path
    for batch_size in (32, 4):
        ranked = mx.rank(QUERY, DOCUMENTS, batch_size=batch_size)
        ours = reference.rank(QUERY, DOCUMENTS)
        assert [r.index for r in ranked] == [r.index for r in ours]
        np.testing.assert_allclose([r.score for r in ranked], [r.score for r in ours], atol=1e-4, rtol=0)
        assert [r.document for r in ranked] == [DOCUMENTS[r.index] for r in ours]


def test_mxbai_rerank_card_snippet(exported, reference, monkeypatch):
    """The card's mxbai-rerank snippet runs as written (its transformers-5 shim included) and
    prints the checkpoint's top 2."""
    import transformers
    from transformers import AutoTokenizer

    tokenizer_class = type(AutoTokenizer.from_pretrained(exported))
    names = ("prepare_for_model", "truncate_sequences")
    lacking = [n for n in names if not hasattr(tokenizer_class, n)]
    if int(transformers.__version__.split(".")[0]) >= 5:
        # the shim is needed here (and no earlier test left the class patched)
        assert lacking == list(names)
    for name in lacking:
        # recorded as absent and then deleted: whatever the snippet sets on the shared class is
        # removed again after the test
        monkeypatch.setattr(tokenizer_class, name, None, raising=False)
        monkeypatch.delattr(tokenizer_class, name)
    (printed,) = run_snippet((exported / "README.md").read_text(), "### mxbai-rerank", exported)
    assert all(hasattr(tokenizer_class, n) for n in names)
    docs = ["Paris is the capital of France.", "Berlin is in Germany."]
    ours = reference.rank(QUERY, docs, top_k=2)
    (results,) = printed
    assert [(r.index, r.document) for r in results] == [(r.index, docs[r.index]) for r in ours]
    np.testing.assert_allclose([r.score for r in results], [r.score for r in ours], atol=1e-4, rtol=0)

def test_chat_template_renders_mxbai_prompt(exported):
    tokenizer = load_tokenizer(exported)
    for instruction in (None, "", "be strict"):
        messages = ([{"role": "system", "content": instruction}] if instruction is not None else []) + [
            {"role": "query", "content": QUERY}, {"role": "document", "content": DOCUMENTS[0]}]
        text = tokenizer.apply_chat_template(messages, chat_template=ex.RERANK_CHAT_TEMPLATE, tokenize=False)
        assert text == ex.rerank_prompt_text(QUERY, DOCUMENTS[0], instruction)
    # other conversations still render as ChatML
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], chat_template=ex.RERANK_CHAT_TEMPLATE,
                                         tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_where_one_string_tokenization_differs(exported):
    """The documented limit: Qwen's pre-tokenizer glues the newline after a query or document ending in
    punctuation to it when the prompt is one string (sentence-transformers), not when the pieces are
    tokenized apart (mxbai); a text ending in a letter splits the same way both ways."""
    pre = load_tokenizer(exported).backend_tokenizer.pre_tokenizer
    joined = [p for p, _ in pre.pre_tokenize_str("France?\ndocument")]
    apart = [p for p, _ in pre.pre_tokenize_str("France?")] + [p for p, _ in pre.pre_tokenize_str("\ndocument")]
    assert joined != apart and "?Ċ" in joined
    joined = [p for p, _ in pre.pre_tokenize_str("France\ndocument")]
    apart = [p for p, _ in pre.pre_tokenize_str("France")] + [p for p, _ in pre.pre_tokenize_str("\ndocument")]
    assert joined == apart


def test_step_and_bfloat16(run_dir, tmp_path):
    out = tmp_path / "bf16"
    result = ex.export_hf(run_dir, out, step=2, dtype="bfloat16")
    assert result.step == 2 and result.check.max_abs_diff <= ex.CHECK_ATOL
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    tensors = hf.read_safetensors(out / "model.safetensors")
    assert {str(t.dtype) for t in tensors.values()} == {"bfloat16"}
    # the weights are step 2's, rounded to bfloat16
    config, params, _ = run_folder_io.load_for_inference(run_dir, step=2)
    rounded = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(tensors["model.norm.weight"].dtype), params)
    assert np.array_equal(np.asarray(hf.load(out)[1]["model"]["norm"]["weight"]),
                          np.asarray(rounded["model"]["norm"]["weight"]).astype(np.float32))
    step2 = Reranker.from_pretrained(run_dir, step=2, dtype="float32", show_progress=False)
    exported = Reranker.from_pretrained(out, dtype="float32", show_progress=False)
    ours, theirs = (r.predict([QUERY] * len(DOCUMENTS), DOCUMENTS) for r in (step2, exported))
    # bfloat16 weights move the scores a little; far less than the scores' spread
    assert np.max(np.abs(ours - theirs)) <= max(result.check.dtype_drift, 1e-4) + 0.05
    assert parse_front_matter((out / "README.md").read_text())["base_model"] == BASE_MODEL


@pytest.fixture
def corrupt_saves(monkeypatch):
    """hf.save writes weights that differ from the checkpoint's (the final norm x 1.01), so the
    export's self-check must fail; returns the real hf.save to put back."""
    real_save = hf.save

    def corrupting_save(params, config, out_dir, **kwargs):
        params = jax.tree_util.tree_map(np.asarray, params)
        params["model"]["norm"]["weight"] = params["model"]["norm"]["weight"] * 1.01
        return real_save(params, config, out_dir, **kwargs)

    monkeypatch.setattr(hf, "save", corrupting_save)
    return real_save


def test_corrupted_weights_fail_and_leave_nothing(run_dir, tmp_path, monkeypatch, corrupt_saves):
    real_save, corrupting_save = corrupt_saves, hf.save
    out = tmp_path / "corrupt"
    with pytest.raises(ex.ExportCheckError, match="differ from the checkpoint"):
        ex.export_hf(run_dir, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []

    # an earlier export at --out survives a failed --overwrite
    monkeypatch.setattr(hf, "save", real_save)
    ex.export_hf(run_dir, out)
    before = (out / "model.safetensors").read_bytes()
    monkeypatch.setattr(hf, "save", corrupting_save)
    with pytest.raises(ex.ExportCheckError):
        ex.export_hf(run_dir, out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt"]


def test_errors_name_the_problem(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    out = tmp_path / "o"
    assert cli.main(["export-hf", "--checkpoint", str(run_dir), "--out", str(out), "--push-to-hub", "me/x"]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err and not out.exists()

    assert cli.main(["export-hf", "--checkpoint", str(run_dir), "--out", str(out), "--step", "3"]) == 2
    assert "no checkpoint of step 3" in capsys.readouterr().err and not out.exists()

    assert cli.main(["export-hf", "--checkpoint", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope: --checkpoint folder does not exist" in capsys.readouterr().err

    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert cli.main(["export-hf", "--checkpoint", str(run_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "keep.txt").exists()

    with pytest.raises(ex.ExportError, match="tokenizer"):
        ex.export_hf(run_dir, tmp_path / "t", tokenizer=tmp_path / "o")


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_tokenizer_chat_template_is_kept(run_dir, tmp_path, reference):
    """A tokenizer with its own (Qwen ChatML) chat template keeps it; sentence-transformers still
    renders pairs with the reranking template from sentence_bert_config.json."""
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer

    tok_dir = tmp_path / "tok"
    tok = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    tok.chat_template = CHATML
    tok.save_pretrained(tok_dir)
    out = tmp_path / "out"
    ex.export_hf(run_dir, out, tokenizer=tok_dir)
    assert AutoTokenizer.from_pretrained(out).chat_template == CHATML
    st_config = json.loads((out / "sentence_bert_config.json").read_text())
    assert st_config["processing_kwargs"]["chat_template"]["chat_template"] == ex.RERANK_CHAT_TEMPLATE
    scores = CrossEncoder(str(out)).predict([(QUERY, d) for d in DOCUMENTS])
    np.testing.assert_allclose(scores, reference.predict([QUERY] * len(DOCUMENTS), DOCUMENTS), atol=1e-4, rtol=0)


def test_hf_folder_inside_a_run_gets_the_runs_card(run_dir, tmp_path, reference):
    """`<run>/hf` (the final HF folder both stages save) exports with its run's training facts."""
    config, params, tokenizer_dir = run_folder_io.load_for_inference(run_dir)
    hf_dir = hf.save(params, config, run_dir / "hf", tokenizer_dir=tokenizer_dir)
    try:
        out = tmp_path / "from-hf"
        assert cli.main(["export-hf", "--checkpoint", str(hf_dir), "--out", str(out), "--license", "mit"]) == 0
        card = (out / "README.md").read_text()
        front = parse_front_matter(card)
        assert front["license"] == "mit" and front["base_model"] == BASE_MODEL
        assert "stage 1: GRPO prompt warmup" in card and "| reward | 0.625 |" in card
        theirs = Reranker.from_pretrained(out, dtype="float32", show_progress=False)
        np.testing.assert_allclose(theirs.predict([QUERY] * len(DOCUMENTS), DOCUMENTS),
                                   reference.predict([QUERY] * len(DOCUMENTS), DOCUMENTS), atol=1e-4, rtol=0)
    finally:
        import shutil

        shutil.rmtree(hf_dir)


class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi: records each call (and, at upload time, the files of the
    folder uploaded, with their bytes) and touches no network."""

    calls: list = []

    def __init__(self, token=None, **kwargs):
        self.calls.append(("HfApi", {"token": token, **kwargs}))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        from pathlib import Path

        folder = Path(kwargs["folder_path"])
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        self.calls.append(("upload_folder", {**kwargs, "files": files}))


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(RecordingHfApi, "calls", [])
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return RecordingHfApi.calls


def test_push_to_hub_uploads_the_exported_folder(run_dir, tmp_path, hub, monkeypatch, capsys):
    out = tmp_path / "pushed"
    assert cli.main(["export-hf", "--checkpoint", str(run_dir), "--out", str(out), "--push-to-hub",
                     "someone/prorank-tiny"]) == 0
    assert [name for name, _ in hub] == ["HfApi", "create_repo", "upload_folder"]
    assert hub[0][1] == {"token": "hf_test_token"}
    assert hub[1][1] == {"repo_id": "someone/prorank-tiny", "repo_type": "model", "exist_ok": True}
    upload = dict(hub[2][1])
    files = upload.pop("files")
    assert upload == {"repo_id": "someone/prorank-tiny", "folder_path": str(out), "repo_type": "model",
                      "commit_message": "Upload ProRank reranker exported by prorank-jax"}
    # exactly the exported folder, as it is on disk (checked, in place, nothing extra)
    assert files == {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "modules.json", "README.md",
            "1_LogitScore/config.json"} <= set(files)
    # the card's snippets load the repo it was pushed to
    card = files["README.md"].decode()
    assert 'MxbaiRerankV2("someone/prorank-tiny")' in card and 'CrossEncoder("someone/prorank-tiny")' in card
    assert "[prorank] pushed" in capsys.readouterr().out

    # push_folder alone: the older token variable is read too
    hub.clear()
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_other")
    assert ex.push_folder(out, "someone/other") == "https://huggingface.co/someone/other"
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN")
    with pytest.raises(ex.ExportError, match="HF_TOKEN is not set"):
        ex.push_folder(out, "someone/other")
    assert hub[0][1] == {"token": "hf_other"} and hub[2][1]["folder_path"] == str(out)
    assert len(hub) == 3  # the tokenless call made none


def test_push_to_hub_does_not_push_a_failed_export(run_dir, tmp_path, hub, monkeypatch, capsys, corrupt_saves):
    real_save = corrupt_saves
    out = tmp_path / "bad"
    assert cli.main(["export-hf", "--checkpoint", str(run_dir), "--out", str(out), "--push-to-hub", "me/bad"]) == 2
    assert "differ from the checkpoint" in capsys.readouterr().err
    assert hub == [] and not out.exists()

    # a malformed repo id is refused before anything is written or pushed
    monkeypatch.setattr(hf, "save", real_save)
    assert cli.main(["export-hf", "--checkpoint", str(run_dir), "--out", str(out), "--push-to-hub", "no-slash"]) == 2
    assert "expected a repo id like 'user/model-name'" in capsys.readouterr().err
    assert hub == [] and not out.exists()
