"""Domain-adaptive MLM pre-training: corpus readers, exclusion of evaluation texts, packing, and a
tiny encoder trained through the real entry point whose saved folder the bi-encoder loads."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from empathy import runner
from empathy.data import corpus as C
from empathy.data.processing import prepare_mechanism
from empathy.data.synthetic import FILES, write_synthetic_epitome
from empathy.pretrain import METRICS_FILE, pretrain

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "encoder" / "tiny.yaml"), resolve=True)
EPITOME = {"mechanisms": dict(FILES), "split_fractions": [0.75, 0.05, 0.2], "split_seed": 12}


@pytest.fixture(scope="module")
def epitome_dir(tmp_path_factory) -> Path:
    return write_synthetic_epitome(tmp_path_factory.mktemp("epitome"), n_rows=120, seed=0)


def datamodule(corpus: dict, data_dir: Path, **kwargs) -> C.CorpusDataModule:
    return C.CorpusDataModule(corpus=corpus, encoder=TINY, epitome={**EPITOME, "data_dir": str(data_dir)}, **kwargs)


def texts_of(*parts) -> list[str]:
    return [row[C.TEXT] for part in parts for row in part]


# ---------------------------------------------------------------------------- packing
def test_packing_makes_blocks_of_max_len_with_separators():
    ids = [[5, 6, 7], [8, 9], [], [10, 11, 12, 13, 14, 15, 16]]
    out = C.pack_token_ids(ids, 6, prefix=[1], suffix=[2], separator=3)
    # stream 5 6 7 3 8 9 3 10 ... 16 (14 tokens), cut into pieces of 4 between [1] and [2]
    assert out["input_ids"] == [[1, 5, 6, 7, 3, 2], [1, 8, 9, 3, 10, 2], [1, 11, 12, 13, 14, 2], [1, 15, 16, 2]]
    assert all(len(b) == 6 for b in out["input_ids"][:-1]) and len(out["input_ids"][-1]) <= 6
    assert out["special_tokens_mask"][0] == [1, 0, 0, 0, 1, 1]
    with_offsets = C.pack_token_ids(
        [[5, 6], [7]], 4, prefix=[1], suffix=[2], separator=3, offsets=[[(0, 2), (2, 4)], [(0, 3)]]
    )
    assert with_offsets["offset_mapping"][0] == [(0, 0), [0, 2], [2, 4], (0, 0)]
    with pytest.raises(ValueError, match="no room"):
        C.pack_token_ids(ids, 2, prefix=[1], suffix=[2], separator=3)


def test_tokenized_blocks_are_max_len_and_whole_word_masking_runs(minilm_tokenizer):
    ds = datasets.Dataset.from_dict({C.TEXT: ["I understand how lonely that feels, friend."] * 20})
    blocks = C.tokenize_blocks(ds, minilm_tokenizer, 16, with_offsets=True)
    lengths = [len(b) for b in blocks["input_ids"]]
    assert set(lengths[:-1]) == {16} and lengths[-1] <= 16
    assert all(
        b[0] == minilm_tokenizer.cls_token_id and b[-1] == minilm_tokenizer.sep_token_id for b in blocks["input_ids"]
    )
    dm = C.CorpusDataModule(corpus={}, encoder=TINY, epitome={}, whole_word_mask=True, mlm_probability=0.5)
    dm.tokenizer = minilm_tokenizer
    batch = C.masked_batches(C.take(blocks, 4), dm.collator(seed=0), 4)[0]
    assert batch["input_ids"].shape == (4, 16) and (batch["labels"] != -100).any()
    # the same seed masks the same tokens (the held-out evaluation before and after training)
    again = C.masked_batches(C.take(blocks, 4), dm.collator(seed=0), 4)[0]
    assert torch.equal(batch["labels"], again["labels"])


def test_heldout_slice_is_seeded_and_near_the_fraction():
    texts = [f"text number {i}" for i in range(2000)]
    share = sum(C.in_heldout(t, 0.1, seed=1) for t in texts) / len(texts)
    assert 0.07 < share < 0.13
    assert [C.in_heldout(t, 0.1, 1) for t in texts] == [C.in_heldout(t, 0.1, 1) for t in texts]
    assert [C.in_heldout(t, 0.1, 1) for t in texts] != [C.in_heldout(t, 0.1, 2) for t in texts]
    assert C.in_heldout("Text  NUMBER 5", 0.1, 1) == C.in_heldout("text number 5", 0.1, 1)


# ---------------------------------------------------------------------------- readers
def write_tables(folder: Path) -> dict[str, Path]:
    frame = pd.DataFrame(
        {"seeker_post": ["s one", "s two", None], "response_post": ["r one", "", "r three"], "n": [1, 2, 3]}
    )
    paths = {"csv": folder / "c.csv", "jsonl": folder / "j.jsonl", "parquet": folder / "p.parquet"}
    frame.to_csv(paths["csv"], index=False)
    frame.to_json(paths["jsonl"], orient="records", lines=True)
    frame.to_parquet(paths["parquet"])
    return paths


@pytest.mark.parametrize("streaming", [False, True])
def test_table_readers_csv_jsonl_parquet(tmp_path, streaming):
    paths = write_tables(tmp_path)
    expected = ["s one", "r one", "s two", "r three"]
    for path in paths.values():
        ds = C.read_table_files(
            [path],
            text_columns=["seeker_post", "response_post"],
            streaming=streaming,
            cache_dir=str(tmp_path / "cache"),
        )
        assert isinstance(ds, datasets.IterableDataset) == streaming
        assert texts_of(ds) == expected, path
    both = C.read_table_files(
        [paths["csv"], paths["parquet"]], text_columns=["response_post"], cache_dir=str(tmp_path / "cache")
    )
    assert texts_of(both) == ["r one", "r three"] * 2


def test_text_reader_lines_and_blocks(tmp_path):
    path = tmp_path / "posts.txt"
    path.write_text("first post\nstill first\n\nsecond post\n\n\nthird\n", encoding="utf-8")
    lines = C.read_text_files([path], sample_by="line", cache_dir=str(tmp_path / "cache"))
    assert texts_of(lines) == ["first post", "still first", "second post", "third"]
    blocks = C.read_text_files([path], sample_by="paragraph", cache_dir=str(tmp_path / "cache"))
    assert [" ".join(t.split()) for t in texts_of(blocks)] == ["first post still first", "second post", "third"]


def test_missing_text_column_names_the_file_and_the_column(tmp_path):
    paths = write_tables(tmp_path)
    for path in paths.values():
        with pytest.raises(C.CorpusError, match=rf"{path.name}: no column 'body'.*seeker_post"):
            C.read_table_files([path], text_columns=["seeker_post", "body"], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(C.CorpusError, match="does not exist"):
        C.read_table_files([tmp_path / "nope.csv"], text_columns=["text"])
    with pytest.raises(C.CorpusError, match="extension"):
        C.table_format(tmp_path / "posts.xlsx")


def test_streaming_corpus_gives_mlm_batches(tmp_path):
    path = tmp_path / "posts.jsonl"
    path.write_text(
        "\n".join(json.dumps({"body": f"post {i}: I hear you, that sounds hard."}) for i in range(200)),
        encoding="utf-8",
    )
    corpus = {"name": "table", "format": "json", "files": [str(path)], "text_columns": ["body"], "streaming": True}
    dm = datamodule(corpus, tmp_path, max_len=16, batch_size=4, heldout_fraction=0.1, cache_dir=str(tmp_path / "cache"))
    dm.setup()
    assert dm.summary["train_texts"] is None and dm.summary["heldout_blocks"] > 0  # unknown until read
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 16) and batch["labels"].shape == (4, 16)
    assert (batch["labels"][:, 0] == -100).all() and (
        batch["labels"][:, -1] == -100
    ).all()  # [CLS] / [SEP] never masked


# ---------------------------------------------------------------------------- exclusion
@pytest.fixture(scope="module")
def eval_texts_by_prepare(epitome_dir, tmp_path_factory) -> set[str]:
    """The dev/test seeker and response posts of every mechanism, as training prepares them."""
    cache = tmp_path_factory.mktemp("cache")
    texts = set()
    for mechanism, file in FILES.items():
        prepared = prepare_mechanism(
            data_dir=epitome_dir, mechanism=mechanism, mechanism_file=file, encoder_cfg=TINY, cache_dir=cache
        )
        for split in ("dev", "test"):
            texts |= set(prepared.datasets[split]["seeker_post"]) | set(prepared.datasets[split]["response_post"])
    return texts


def test_epitome_corpus_excludes_every_dev_and_test_text(epitome_dir, eval_texts_by_prepare):
    corpus = {"name": "epitome", "format": "epitome", "exclude_eval_texts": True, "deduplicate": True}
    dm = datamodule(corpus, epitome_dir, heldout_fraction=0.2)
    kept = {C.normalise_text(t) for t in texts_of(*dm.select_texts())}
    banned = {C.normalise_text(t) for t in eval_texts_by_prepare}
    assert kept and not kept & banned
    assert dm.summary["excluded_eval_texts"] > 0 and dm.summary["heldout_texts"] > 0

    dm = datamodule({**corpus, "exclude_eval_texts": False}, epitome_dir, heldout_fraction=0.2)
    kept = {C.normalise_text(t) for t in texts_of(*dm.select_texts())}
    assert banned <= kept
    assert dm.summary["excluded_eval_texts"] == 0


def test_exclusion_flag_on_a_user_corpus(epitome_dir, eval_texts_by_prepare, tmp_path):
    some_eval = sorted(eval_texts_by_prepare)[:5]
    path = tmp_path / "corpus.jsonl"
    rows = [{"body": t.upper()} for t in some_eval] + [{"body": f"an unrelated post {i}"} for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    corpus = {
        "name": "table",
        "format": "auto",
        "files": [str(path)],
        "text_columns": ["body"],
        "exclude_eval_texts": True,
    }
    dm = datamodule(corpus, epitome_dir, heldout_fraction=0.0, cache_dir=str(tmp_path / "cache"))
    kept = texts_of(*dm.select_texts())
    assert sorted(kept) == sorted(f"an unrelated post {i}" for i in range(20))
    assert dm.summary["excluded_eval_texts"] == 5


# ---------------------------------------------------------------------------- entry point
def pretrain_cfg(data_dir: Path, out: Path, *extra: str) -> DictConfig:
    overrides = [
        "encoder=tiny",
        "logger=csv",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "++trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false",
        "trainer.max_steps=24",
        "trainer.val_check_interval=1000",
        "datamodule.max_len=32",
        "datamodule.batch_size=16",
        "datamodule.heldout_fraction=0.2",
        "model.optimizer.lr=5e-3",
        "head_warmup.steps=8",
        "head_warmup.lr=1e-2",
        *extra,
    ]
    return runner.compose_config("pretrain", overrides, data_dir=data_dir, output_dir=out)


@pytest.fixture(scope="module")
def pretrained(epitome_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pretrain")
    return out, pretrain(pretrain_cfg(epitome_dir, out), out)


def test_pretraining_lowers_the_heldout_mlm_loss(pretrained):
    out, result = pretrained
    before, after = result["heldout_before"], result["heldout_after"]
    assert after["mlm_loss"] < before["mlm_loss"]
    assert after["masked_tokens"] == before["masked_tokens"] > 0  # the same masked tokens
    saved = json.loads((out / METRICS_FILE).read_text())
    assert saved["heldout_after"] == pytest.approx(after)
    assert saved["steps"] == 24
    assert saved["corpus"]["excluded_eval_texts"] > 0  # corpus=epitome excludes by default


def test_head_warmup_fits_the_head_first_and_is_reported(pretrained):
    _, result = pretrained
    assert result["head_warmup_steps"] == 8
    fresh, before = result["heldout_before_head_warmup"], result["heldout_before"]
    assert before["mlm_loss"] < fresh["mlm_loss"]
    assert before["masked_tokens"] == fresh["masked_tokens"]


def test_head_only_phase_trains_the_head_and_leaves_the_encoder_unchanged():
    from empathy.models.mlm import MaskedLMModule, head_parameters

    module = MaskedLMModule(TINY, {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3})
    module.head_warmup_lr = 1e-2
    optimizer = module.configure_optimizers()["optimizer"]
    encoder_before = {k: v.clone() for k, v in module.model.base_model.state_dict().items()}
    head_before = [p.detach().clone() for p in head_parameters(module.model)]
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (4, 12))
    labels = torch.full_like(ids, -100)
    labels[:, 3:6] = ids[:, 3:6]
    loss, _ = module.masked_loss({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    loss.backward()
    optimizer.step()
    assert all(torch.equal(v, module.model.base_model.state_dict()[k]) for k, v in encoder_before.items())
    assert any(not torch.equal(a, b) for a, b in zip(head_before, head_parameters(module.model), strict=True))


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_masked_position_loss_equals_the_full_forward_loss(model_type):
    from empathy.models.mlm import MaskedLMModule

    config = {**TINY["config"], "model_type": model_type}
    module = MaskedLMModule({"name": "tiny", "config": config}, {"_target_": "torch.optim.AdamW", "_partial_": True})
    module.eval()
    assert module.head is not None
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (3, 10))
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 4:7], labels[2, 9] = ids[0, 2], ids[1, 4:7], ids[2, 9]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        ours, tokens = module.masked_loss(batch)
        full = module(batch).loss
    assert tokens == 5
    assert ours.item() == pytest.approx(full.item(), rel=1e-5)


def test_saved_folder_loads_as_automodel_and_as_the_biencoders_encoders(pretrained):
    from transformers import AutoModel, AutoModelForMaskedLM

    from empathy.encoders import load_tokenizer
    from empathy.models.biencoder import BiEncoder

    folder = pretrained[0] / "encoder"
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    mlm = AutoModelForMaskedLM.from_pretrained(folder)
    base = AutoModel.from_pretrained(folder, add_pooling_layer=False)
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(base.state_dict()[key], mlm.base_model.state_dict()[key])

    encoder = {"name": "local", "path": str(folder)}
    net = BiEncoder(encoder, mechanisms=["ER"]).eval()
    assert torch.equal(net.seeker_encoder.state_dict()[key], net.response_encoder.state_dict()[key])
    assert torch.equal(net.response_encoder.state_dict()[key], base.state_dict()[key])
    tokenizer = load_tokenizer(encoder)
    seeker = tokenizer(["I feel so alone."], return_tensors="pt")
    response = tokenizer(["That sounds really hard.", "Hang in there."], return_tensors="pt", padding=True)
    out = net(
        response["input_ids"],
        response["attention_mask"],
        seeker["input_ids"].expand(2, -1),
        seeker["attention_mask"].expand(2, -1),
    )["ER"]
    assert out.level_logits.shape == (2, 3)
    assert out.rationale_logits.shape[:2] == response["input_ids"].shape


def test_dapt_then_finetune_script_passes_the_encoder_folder(tmp_path):
    spec = importlib.util.spec_from_file_location("dapt", REPO_ROOT / "scripts" / "dapt_then_finetune.py")
    dapt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dapt)
    pre, train = dapt.commands(
        ["corpus=epitome", "data.split_seed=3", "--", "model=biencoder", "mechanism=IP"], tmp_path / "run", python="py"
    )
    assert pre == [
        "py",
        "-m",
        "empathy.pretrain",
        "corpus=epitome",
        "data.split_seed=3",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    assert train == [
        "py",
        "-m",
        "empathy.train",
        "experiment=dapt_then_finetune",
        "encoder=local",
        f"encoder.path={tmp_path / 'run' / 'encoder'}",
        "data.split_seed=3",
        "model=biencoder",
        "mechanism=IP",
    ]
    # a multirun flag after `--` goes before the overrides (Hydra's parser would split them)
    _, multirun = dapt.commands(["--", "model=joint", "-m", "seed=1,2", "--cfg", "job"], tmp_path / "run", python="py")
    assert multirun == [
        "py",
        "-m",
        "empathy.train",
        "-m",
        "--cfg",
        "job",
        "experiment=dapt_then_finetune",
        "encoder=local",
        f"encoder.path={tmp_path / 'run' / 'encoder'}",
        "model=joint",
        "seed=1,2",
    ]
    assert dapt.main(["--dry-run", "--run-dir", str(tmp_path / "x")]) == 0
    assert sys.executable  # the real run uses the current interpreter
