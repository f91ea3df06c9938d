"""hf_tokenizer / apply_chat_template on a tiny tokenizer built in the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlserve.client import Client, apply_chat_template, hf_tokenizer

TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if tools %}<tools>{{ tools | length }}{% endif %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<eos>": 1, "hi": 2, "there": 3}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="[UNK]")
    tok.chat_template = TEMPLATE
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(path)
    return path


def test_hf_tokenizer_sets_pad_to_eos(tokenizer_dir: Path) -> None:
    tok = hf_tokenizer(str(tokenizer_dir))
    assert tok.pad_token == "<eos>" and tok.pad_token_id == tok.eos_token_id == 1


def test_apply_chat_template_text_tools_and_ids(tokenizer_dir: Path) -> None:
    tok = hf_tokenizer(str(tokenizer_dir))
    messages = [{"role": "user", "content": "hi there"}]
    assert apply_chat_template(tok, messages) == "<user>hi there<assistant>"
    tool = {"type": "function", "function": {"name": "calc", "parameters": {}}}
    assert apply_chat_template(tok, messages, tools=[tool]) == "<user>hi there<tools>1<assistant>"
    ids = apply_chat_template(tok, messages, tokenize=True)
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    with Client("http://127.0.0.1:9", tokenizer=str(tokenizer_dir)) as client:
        assert client.apply_chat_template(messages) == "<user>hi there<assistant>"


def test_client_without_tokenizer_says_so() -> None:
    with Client("http://127.0.0.1:9") as client, pytest.raises(ValueError, match="tokenizer"):
        client.apply_chat_template([{"role": "user", "content": "x"}])


def _gemma_like(folder: Path) -> Path:
    """A tiny tokenizer with Gemma-2's special tokens, saved under `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "<end_of_turn>": 3, "hi": 4}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<end_of_turn>"],
    )
    tok.save_pretrained(folder)
    return folder


def test_correct_gemma2_makes_end_of_turn_the_eos(tmp_path: Path) -> None:
    gemma = _gemma_like(tmp_path / "gemma-2-2b-it")
    tok = hf_tokenizer(str(gemma))
    assert (tok.eos_token, tok.eos_token_id) == ("<end_of_turn>", 3)
    assert hf_tokenizer(str(gemma), correct_gemma2=False).eos_token == "<eos>"
    # Only Gemma-2 instruct checkpoints: the base model and other names keep their EOS.
    for name in ("gemma-2-2b", "other-model"):
        assert hf_tokenizer(str(_gemma_like(tmp_path / name))).eos_token == "<eos>"


def test_correct_gemma2_sees_the_name_in_a_hub_cache_path(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--google--gemma-2-2b-it" / "snapshots" / "0123abcd"
    assert hf_tokenizer(str(_gemma_like(snapshot))).eos_token == "<end_of_turn>"


def test_correct_gemma2_leaves_a_vocabulary_without_end_of_turn_alone(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    import shutil

    named = tmp_path / "gemma-2-9b-it"
    shutil.copytree(tokenizer_dir, named)
    assert hf_tokenizer(str(named)).eos_token == "<eos>"
