"""Shared fixtures: the real data folder (or a skip), encoder configs, and offline tokenizers."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "epitome-reddit"
MECHANISM_FILES = {
    "ER": "emotional-reactions-reddit.csv",
    "IP": "interpretations-reddit.csv",
    "EX": "explorations-reddit.csv",
}
MINILM_CFG = {"name": "minilm", "path": "packaged:all-MiniLM-L6-v2"}

# The commands and scripts the tests run as subprocesses import the checkout under test first,
# whatever `empathy` the environment has installed.
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
CSV_HEADER = ("sp_id", "rp_id", "seeker_post", "response_post", "level", "rationales")

BPE_TRAINING_TEXT = [
    "I am so sorry you are going through this. Hang in there, friend!",
    "That sounds really hard; do you have anyone you can talk to?",
    "Ça va aller, je suis là pour toi. Très bien, merci beaucoup.",
    "Ich verstehe dich, das klingt wirklich schwer.",
    "我明白你的感受。加油！",
    "You are not alone 😊 ❤️ we're here with you.",
]


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The folder of the real EPITOME CSVs: EMPATHY_DATA_DIR, else ../shared/data/epitome-reddit."""
    env = os.environ.get("EMPATHY_DATA_DIR")
    folder = Path(env) if env else DEFAULT_DATA_DIR
    missing = [name for name in MECHANISM_FILES.values() if not (folder / name).is_file()]
    if missing:
        source = "EMPATHY_DATA_DIR" if env else "the default location"
        pytest.skip(
            f"real EPITOME data not found in {folder} ({source}; missing {', '.join(missing)}): "
            "set EMPATHY_DATA_DIR or run `python scripts/fetch_data.py` (see data/README.md)"
        )
    return folder


@pytest.fixture(scope="session")
def tiny_encoder_cfg() -> dict:
    """conf/encoder/tiny.yaml as a plain dict."""
    return OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "encoder" / "tiny.yaml"), resolve=True)


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """The packaged MiniLM WordPiece tokenizer (offline)."""
    from empathy.encoders import load_tokenizer

    return load_tokenizer(MINILM_CFG)


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer (RoBERTa style) trained on a few sentences, saved to a folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(BPE_TRAINING_TEXT, trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")),
        ("<s>", tok.token_to_id("<s>")),
        trim_offsets=True,
        add_prefix_space=False,
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    folder = tmp_path_factory.mktemp("bpe-tokenizer")
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def bpe_tokenizer(bpe_tokenizer_dir):
    from empathy.encoders import load_tokenizer

    return load_tokenizer({"name": "bpe", "path": str(bpe_tokenizer_dir)})


@pytest.fixture(params=["wordpiece", "bpe"])
def any_tokenizer(request):
    """Each of the two tokenizer families the alignment must handle."""
    return request.getfixturevalue("minilm_tokenizer" if request.param == "wordpiece" else "bpe_tokenizer")


@pytest.fixture
def write_csv(tmp_path) -> Callable[..., Path]:
    """Write rows (tuples in CSV_HEADER order) as an EPITOME CSV with the csv module."""

    def write(rows: Sequence[Sequence], name: str = "data.csv", header: Sequence[str] = CSV_HEADER) -> Path:
        path = tmp_path / name
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        return path

    return write


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and a busy machine makes them spin: use one
    (a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
