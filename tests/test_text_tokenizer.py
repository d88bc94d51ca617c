"""Text tokenizer wrapper (HF dir / SentencePiece) and tools/train_text_tokenizer.py."""
import json
from pathlib import Path

import pytest

from unif2ace.config import load_config
from unif2ace import synthface
from unif2ace.tokenizers.text import QUESTION_TEMPLATE, TextTokenizer, train_sentencepiece

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("red blond black brown grey auburn hair short long curly wavy straight woman man person smiling "
         "laughing surprised neutral glasses sunglasses hat cap beard moustache stubble freckles wrinkles "
         "round oval square heart face eyes blue green hazel earrings mask lipstick pale tan dark skin").split()


def _texts(n=400, seed=0):
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + "." for _ in range(n)]


def _hf_dir(tmp_path: Path, vocab=None) -> Path:
    """A tiny Hugging Face fast tokenizer saved in the usual directory layout."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = vocab or {w: i for i, w in enumerate(["<unk>", "<|endoftext|>"] + WORDS + ["."])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>")
    tok.add_tokens(["<extra_a>", "<extra_b>"])  # len(tokenizer) must count added tokens
    d = tmp_path / "hf_tok"
    tok.save_pretrained(d)
    return d


def test_sentencepiece_ids_size_and_determinism(tmp_path):
    texts = _texts()
    a = train_sentencepiece(texts, tmp_path / "a.model", vocab_size=1024)
    b = train_sentencepiece(list(reversed(list(reversed(texts)))), tmp_path / "b.model", vocab_size=1024)
    assert a.read_bytes() == b.read_bytes()  # same texts → same file, byte for byte
    tok = TextTokenizer.load(a)
    assert (tok.kind, tok.vocab_size, tok.bos_id, tok.eos_id) == ("sentencepiece", 1024, 1, 2)
    assert tok.impl.id_to_piece(0) == "<unk>"
    s = "a woman with long auburn hair and round glasses."
    ids = tok.encode(s)
    assert 1 not in ids and 2 not in ids and 0 not in ids  # no bos/eos added, no unk on seen text
    assert tok.decode(ids) == s
    assert tok.decode([1] + ids + [2]) == s
    # Unseen characters fall back to bytes (no <unk>), and decode back exactly.
    odd = "Ünïcode 42 ✓"
    assert 0 not in tok.encode(odd) and tok.decode(tok.encode(odd)) == odd
    # Reserved pieces that fill the vocabulary are never produced.
    unused = [i for i in range(tok.vocab_size) if tok.impl.is_unused(i)]
    assert unused and max(max(tok.encode(t)) for t in texts[:50]) < min(unused)
    # Other texts → other model → other hash; reloading keeps the hash.
    c = train_sentencepiece(_texts(seed=1), tmp_path / "c.model", vocab_size=1024)
    assert TextTokenizer.load(c).config_hash() != tok.config_hash()
    assert TextTokenizer.load(a).config_hash() == tok.config_hash()


def test_sentencepiece_in_directory_and_errors(tmp_path):
    d = tmp_path / "spm"
    train_sentencepiece(_texts(), d / "text.model", vocab_size=300)
    assert TextTokenizer.load(d).vocab_size == 300
    with pytest.raises(FileNotFoundError, match="nope"):
        TextTokenizer.load(tmp_path / "nope")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.model"):
        TextTokenizer.load(tmp_path / "junk.model")
    with pytest.raises(ValueError, match="too small"):
        train_sentencepiece(_texts(), tmp_path / "x.model", vocab_size=100)
    with pytest.raises(ValueError, match="no non-empty text"):
        train_sentencepiece(["", "  "], tmp_path / "y.model", vocab_size=300)


def test_hf_tokenizer_directory(tmp_path):
    d = _hf_dir(tmp_path)
    tok = TextTokenizer.load(d)
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(d))
    assert tok.kind == "hf"
    assert tok.vocab_size == len(ref) == len(WORDS) + 3 + 2  # <unk>, eot, '.', two added tokens
    eot = ref.convert_tokens_to_ids("<|endoftext|>")
    assert tok.bos_id == tok.eos_id == eot == 1
    ids = tok.encode("red hair woman")
    assert ids == [WORDS.index(w) + 2 for w in ("red", "hair", "woman")]
    assert tok.decode([eot] + ids + [eot]) == "red hair woman"
    assert tok.encode_question("blue eyes") == tok.encode(QUESTION_TEMPLATE.format(q="blue eyes"))
    # Different vocabulary → different hash.
    other = _hf_dir(tmp_path / "o", vocab={w: i for i, w in enumerate(["<unk>", "<|endoftext|>"] + WORDS[::-1] + ["."])})
    assert TextTokenizer.load(other).config_hash() != tok.config_hash()


def test_hf_remote_code_is_never_run(tmp_path):
    d = _hf_dir(tmp_path)
    marker = tmp_path / "executed"
    (d / "evil_tok.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                   "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": [None, "evil_tok.EvilTokenizer"]}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    try:
        TextTokenizer.load(d)
    except Exception:
        pass  # refusing is fine; running the file is not
    assert not marker.exists()


def test_train_tool_on_synthface(tmp_path, capsys):
    from unif2ace.commands import train_text_tokenizer

    synthface.write_dataset(tmp_path / "sf", num=24, progress=False)
    out = tmp_path / "spm.model"
    argv = ["--data", str(tmp_path / "sf"), "--out", str(out), "--vocab-size", "400", "--split", ""]
    assert train_text_tokenizer.main(argv) == 0
    first = out.read_bytes()
    assert train_text_tokenizer.main(argv) == 0
    assert out.read_bytes() == first  # deterministic end to end
    tok = TextTokenizer.load(out)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (400, 1, 2)
    assert "vocab_size=400" in capsys.readouterr().out
    # The prompt templates were part of the training text: the question wrapper is a few pieces.
    assert len(tok.encode("USER: ASSISTANT:")) <= 4
    meta = [json.loads(line) for line in (tmp_path / "sf" / "metadata.jsonl").read_text().splitlines()]
    cap = meta[0]["caption"]
    assert tok.decode(tok.encode(cap)) == cap


def test_synthface_recipe_ids_match_the_trained_tokenizer(tmp_path):
    """Default vocab 1024 with bos 1 / eos 2 is what the synthface recipe's model expects."""
    m = load_config("synthface").model
    texts = _texts(2000)
    tok = TextTokenizer.load(train_sentencepiece(texts, tmp_path / "s.model"))
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (m.text_vocab_size, m.bos_id, m.eos_id)
