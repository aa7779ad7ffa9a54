"""Prediction throughput: our end-to-end file scoring against its limit and against a naive loop.

    python scripts/bench_predict.py                       # 2000 rows, packaged MiniLM, random heads
    python scripts/bench_predict.py --rows 100000         # the memory figure (streaming: RSS stays flat)
    python scripts/bench_predict.py --models ER=er.ckpt IP=models/IP EX=models/EX --synthetic
    python scripts/bench_predict.py --joint                # one joint model (model=joint) for all three
    python scripts/bench_predict.py --models joint=models/joint
    python scripts/bench_predict.py --joint --ensemble 3   # + (e): an ensemble of 3 (seeds) of the model

One run, the same rows and encoder for all three:
  (a) end-to-end: ``predict_file`` on a CSV (read, validate, tokenize, three mechanisms, rationale
      spans, write CSV), model loading excluded;
  (b) the bare forward passes (a) needs at the same batch size, sorting and padding (one shared
      seeker pass + one response pass per mechanism, or per batch for a joint model), inputs
      tokenized and padded beforehand: the limit (a) can reach;
  (c) a naive loop as the original code scored: three separate models (one per mechanism), one row
      at a time, each model with its own seeker pass, padded to 64 tokens, fp32; measured on the
      first --naive-rows rows (a joint model runs once per mechanism there, as three models would).
  (e) with ``--ensemble N``: (a) again with each model replaced by an ensemble of N copies of it
      (``EnsembleNet``: one seeker pass, N response passes), the inference cost of a seed ensemble.
Rows come from EMPATHY_DATA_DIR (default ../shared/data/epitome-reddit beside the checkout) or synthetic ones,
repeated to --rows. Without --models: three bi-encoders on the packaged MiniLM with randomly
initialised heads (the speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import itertools
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from empathy import CONFIG_DIR
from empathy.data.synthetic import write_synthetic_epitome
from empathy.hardware import describe_hardware, hardware
from empathy.models.checkpoint import random_heads_model
from empathy.models.ensemble import EnsembleNet
from empathy.predict import EmpathyPredictor, LoadedModel, load_model, predict_file
from empathy.predict.predictor import MECHANISMS, autocast_dtype, length_sorted_batches

MINILM = {"name": "minilm", "path": "packaged:all-MiniLM-L6-v2"}
# conf/encoder/tiny.yaml: a 2-layer, 32-wide BERT with random weights
TINY = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "encoder" / "tiny.yaml"))
# Beside a checkout (as the project's CI and tests find it), else EMPATHY_DATA_DIR.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "epitome-reddit"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def random_head_models(encoder: dict, max_len: int, joint: bool) -> dict[str, LoadedModel]:
    """Bi-encoders on ``encoder`` with random heads: one per mechanism, or one joint model of all
    three (the speed does not depend on the weights)."""
    groups = {"joint": list(MECHANISMS)} if joint else {m: [m] for m in MECHANISMS}
    return {name: random_heads_model(encoder, ms, max_len, seed=k + 1) for k, (name, ms) in enumerate(groups.items())}


def source_pairs(synthetic: bool) -> tuple[list[tuple[str, str]], str]:
    folder = Path(os.environ.get("EMPATHY_DATA_DIR", DEFAULT_DATA_DIR))
    path = folder / "emotional-reactions-reddit.csv"
    if synthetic or not path.is_file():
        folder = write_synthetic_epitome(tempfile.mkdtemp(prefix="bench-predict-data-"), n_rows=600, seed=0)
        path, label = folder / "emotional-reactions-reddit.csv", "synthetic"
    else:
        label = str(path)
    with path.open(encoding="utf-8", newline="") as f:
        pairs = [
            (r["seeker_post"], r["response_post"])
            for r in csv.DictReader(f)
            if r["seeker_post"].strip() and r["response_post"].strip()
        ]
    return pairs, label


def write_input(path: Path, pairs: list[tuple[str, str]], rows: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "seeker_post", "response_post"])
        for i, (s, r) in zip(range(rows), itertools.cycle(pairs)):
            writer.writerow([i, s, r])


def read_input(path: Path) -> tuple[list[str], list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["seeker_post"] for r in rows], [r["response_post"] for r in rows]


def _pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def bare_forward(predictor: EmpathyPredictor, seekers: list[str], responses: list[str]) -> float:
    """Seconds for the forward passes alone, with (a)'s batches (inputs prepared beforehand)."""
    models = predictor.models
    first = next(iter(models.values()))
    tok, max_len, pad = first.tokenizer, first.max_len, first.tokenizer.pad_token_id
    kwargs = {"truncation": True, "max_length": max_len, "return_attention_mask": False, "return_token_type_ids": False}
    window = predictor.batch_size * predictor.sort_window
    batches = []
    for w0 in range(0, len(responses), window):
        s_ids = tok(seekers[w0 : w0 + window], **kwargs)["input_ids"]
        r_ids = tok(responses[w0 : w0 + window], **kwargs)["input_ids"]
        lengths = [(len(r), len(s)) for r, s in zip(r_ids, s_ids, strict=True)]
        for rows in length_sorted_batches(lengths, predictor.batch_size):
            batches.append((*_pad([s_ids[i] for i in rows], pad), *_pad([r_ids[i] for i in rows], pad)))
    device, dtype = predictor.device, predictor.dtype
    groups = predictor.seeker_groups
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    started = time.perf_counter()
    with torch.inference_mode(), autocast:
        for s_ids, s_mask, r_ids, r_mask in batches:
            s_ids, s_mask, r_ids, r_mask = (t.to(device) for t in (s_ids, s_mask, r_ids, r_mask))
            states = {}
            for group in groups:
                encoded = models[group[0]].net.encode_seeker(s_ids, s_mask)
                states.update(dict.fromkeys(group, encoded))
            for m, model in models.items():
                out = model.net(
                    response_input_ids=r_ids,
                    response_attention_mask=r_mask,
                    seeker_attention_mask=s_mask,
                    seeker_states=states.get(m),
                )
                for o in out.values():
                    o.level_logits.float().argmax(-1).cpu()
                    o.rationale_logits.argmax(-1).cpu()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def naive_loop(models: dict[str, LoadedModel], seekers: list[str], responses: list[str]) -> tuple[float, dict]:
    """Seconds for the original code's way: three separate models, one per mechanism, each run on
    one row at a time with its own seeker pass, padded to 64 tokens, fp32. A model of several
    mechanisms (the joint one) stands in for each of its mechanisms' separate models: it runs once
    per mechanism, as three models of that size would, and only that mechanism's output is read."""
    model_of = {m: model for model in models.values() for m in model.mechanisms}
    levels: dict[str, list[int]] = {m: [] for m in model_of}
    kwargs = {"padding": "max_length", "truncation": True, "max_length": 64, "return_tensors": "pt"}
    started = time.perf_counter()
    with torch.no_grad():
        for s, r in zip(seekers, responses, strict=True):
            for m, model in model_of.items():
                s_enc = model.tokenizer(s, **kwargs)
                r_enc = model.tokenizer(r, **kwargs)
                out = model.net(
                    response_input_ids=r_enc["input_ids"],
                    response_attention_mask=r_enc["attention_mask"],
                    seeker_input_ids=s_enc["input_ids"],
                    seeker_attention_mask=s_enc["attention_mask"],
                )[m]
                levels[m].append(int(model.decisions[m].levels(out.level_logits.float())))
                out.rationale_logits.argmax(-1).tolist()
    return time.perf_counter() - started, levels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000, help="rows to score in (a) and (b) (input rows repeated)")
    parser.add_argument("--naive-rows", type=int, default=200, help="rows for the naive loop (c)")
    parser.add_argument(
        "--models", nargs="*", default=[], metavar="M=PATH", help="ER=... IP=... EX=... or joint=... (ckpt or export)"
    )
    parser.add_argument(
        "--joint",
        action="store_true",
        help="without --models: one random-head joint model (model=joint) instead of three bi-encoders",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sort-window", type=int, default=50)
    parser.add_argument("--chunk-rows", type=int, default=10000)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--encoder",
        choices=("minilm", "tiny"),
        default="minilm",
        help="without --models: the encoder of the random-head models (tiny: the tests' 32-wide "
        "BERT, for a quick memory figure on many rows)",
    )
    parser.add_argument("--synthetic", action="store_true", help="synthetic rows instead of the real data")
    parser.add_argument(
        "--ensemble",
        type=int,
        default=1,
        metavar="N",
        help="also time (a) with an ensemble of N copies of each model (e): a seed ensemble's cost",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    started = time.perf_counter()
    if args.models:
        paths = dict(spec.split("=", 1) for spec in args.models)
        models = {m: load_model(p, None if m == "joint" else m) for m, p in paths.items()}
        model_label = ", ".join(f"{m}={p}" for m, p in paths.items())
    else:
        encoder = MINILM if args.encoder == "minilm" else TINY
        models = random_head_models(encoder, max_len=64, joint=args.joint)
        name = "packaged all-MiniLM-L6-v2" if args.encoder == "minilm" else "tiny random 32-wide BERT"
        kind = "joint bi-encoder (one body, three pairs of heads)" if args.joint else "bi-encoders"
        model_label = f"{name} {kind}, random-init heads (ER, IP, EX)"
    load_seconds = time.perf_counter() - started
    predictor = EmpathyPredictor(
        models, device=args.device, precision=args.precision, batch_size=args.batch_size, sort_window=args.sort_window
    )
    pairs, data_label = source_pairs(args.synthetic)

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        src, out = Path(tmp) / "pairs.csv", Path(tmp) / "scored.csv"
        write_input(src, pairs, args.rows)
        rss_before = peak_rss_mib()

        summary = predict_file(predictor, src, out, chunk_rows=args.chunk_rows, progress=False)
        e2e_seconds = summary.seconds
        rss_after_e2e = peak_rss_mib()
        seekers, responses = read_input(src)

        forward_seconds = bare_forward(predictor, seekers, responses)

        ensemble_seconds = None
        if args.ensemble > 1:
            ensembles = {
                m: dataclasses.replace(
                    model,
                    net=EnsembleNet([model.net] + [copy.deepcopy(model.net) for _ in range(args.ensemble - 1)]).eval(),
                )
                for m, model in models.items()
            }
            ensemble_predictor = EmpathyPredictor(
                ensembles,
                device=args.device,
                precision=args.precision,
                batch_size=args.batch_size,
                sort_window=args.sort_window,
            )
            ensemble_seconds = predict_file(
                ensemble_predictor, src, Path(tmp) / "ensemble.csv", chunk_rows=args.chunk_rows, progress=False
            ).seconds

        k = min(args.naive_rows, len(responses))
        naive_seconds, naive_levels = naive_loop(models, seekers[:k], responses[:k])
        with out.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            first = [next(reader) for _ in range(k)]
        scored = {m: [int(r[f"{m}_level"]) for r in first] for m in predictor.mechanisms}
        agree = sum(scored[m][i] == naive_levels[m][i] for m in predictor.mechanisms for i in range(k))

    n = summary.rows
    a, b, c = n / e2e_seconds, n / forward_seconds, k / naive_seconds
    dtype = predictor.dtype
    print("bench_predict")
    print(
        f"  machine      {describe_hardware(hardware())}, torch threads "
        f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} (other jobs share the CPU)"
    )
    print(
        f"  device       {predictor.device}, precision {'fp32' if dtype is None else dtype} "
        f"(autocast: {autocast_dtype(args.precision, predictor.device)})"
    )
    print(f"  models       {model_label} (loaded in {load_seconds:.1f} s)")
    print(f"  seeker pass  shared by {predictor.seeker_groups}")
    print(
        f"  rows         {n} from {data_label} ({len(pairs)} distinct pairs, repeated); batch {args.batch_size}, "
        f"sort window {args.sort_window} batches, chunk {args.chunk_rows} rows"
    )
    print(f"  (a) end-to-end predict_file CSV -> CSV   {a:9.1f} pairs/s   ({e2e_seconds:.1f} s for {n} rows)")
    print(f"  (b) bare forward passes (the limit)      {b:9.1f} pairs/s   ({forward_seconds:.1f} s for {n} rows)")
    print(
        f"  (c) naive: 3 models, per row, fp32, pad 64 {c:7.1f} pairs/s   (the first {k} rows: {naive_seconds:.1f} s)"
    )
    joint = any(len(model.mechanisms) > 1 for model in models.values())
    print(
        f"  a/c = {a / c:5.2f}   (target >= {10 if joint else 5}: "
        f"{'a joint model' if joint else 'one model per mechanism'})"
    )
    print(f"  a/b = {a / b:5.2f}   (target >= 0.7)")
    if ensemble_seconds is not None:
        e = n / ensemble_seconds
        print(
            f"  (e) (a) with ensembles of {args.ensemble}          {e:9.1f} pairs/s   ({ensemble_seconds:.1f} s for "
            f"{n} rows); "
            f"a/e = {a / e:4.2f}: the ensemble's inference cost"
        )
    print(f"  levels of (a) and (c) agree on {agree}/{k * len(predictor.mechanisms)} (row, mechanism) pairs")
    print(
        f"  peak RSS     {rss_before:.0f} MiB after loading and writing the input, {rss_after_e2e:.0f} MiB after (a), "
        f"{peak_rss_mib():.0f} MiB at the end ((b) holds all {n} rows' tokens in memory; (a) streams)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
