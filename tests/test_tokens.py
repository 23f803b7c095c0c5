"""Your own data: a BPE tokenizer trained here, ``plait data prepare`` into token
files, ``data.name=tokens`` read lazily in seeded epochs and mixtures, and every bad input
refused in one line. No network: the tokenizer is trained on a temp corpus."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import BASE
from plait.cli import main
from plait.config import load_config
from plait.data.permute import Permutation
from plait.data.prepare import prepare
from plait.data.tokenizer import load_tokenizer, train_bpe
from plait.data.tokens import TokenData, interleave
from plait.errors import PlaitError
from plait.models import gpt_args

WORDS = "the a data model token shard memory loader epoch mixture seed step rank batch".split()


def _docs(n: int = 40, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(30, 120)))
        + ("\n\tcafé ✓" if k % 7 == 0 else "")
        for k in range(n)
    ]


def _write_formats(root: Path, docs: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "txt").mkdir(parents=True)
    for i, d in enumerate(docs):
        (root / "txt" / f"doc{i:03d}.txt").write_text(d)
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    pq.write_table(pa.table({"text": docs}), root / "docs.parquet", row_group_size=9)
    import datasets

    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(root / "saved"), num_shards=3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = _docs()
    _write_formats(root, docs)
    train_bpe([root / "docs.jsonl"], root / "tok", 300)
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.bin"))}  # + doc_ends.bin


def test_txt_jsonl_parquet_and_worker_counts_give_identical_token_files(corpus, tmp_path):
    tok = str(corpus / "tok")
    outs = {}
    for name, src, workers in [
        ("txt1", corpus / "txt", 1),
        ("txt2", corpus / "txt", 2),
        ("jsonl", corpus / "docs.jsonl", 1),
        ("parquet", corpus / "docs.parquet", 2),
        ("datasets", corpus / "saved", 2),
    ]:
        meta = prepare([str(src)], tmp_path / name, tok, workers=workers, shard_tokens=1000)
        outs[name] = _files(tmp_path / name)
    assert meta["documents"] == 40 and meta["dtype"] == "uint16" and meta["vocab_size"] == 300
    assert len(meta["shards"]) == -(-meta["tokens"] // 1000) > 1
    assert all(v == outs["txt1"] for v in outs.values())
    # the documents round-trip and each ends with the end-of-document id
    t = load_tokenizer(tok)
    shards = [b for k, b in outs["txt1"].items() if k.startswith("tokens-")]
    stream = np.concatenate([np.frombuffer(b, np.uint16) for b in shards])
    assert stream[-1] == t.eod_id and (stream == t.eod_id).sum() == 40
    first = stream[: int(np.argmax(stream == t.eod_id))].tolist()
    assert t.tok.decode(first) == _docs()[0]
    # a second run on unchanged input does no work; a changed input is prepared again
    mtime = (tmp_path / "jsonl" / "meta.json").stat().st_mtime_ns
    again = prepare([str(corpus / "docs.jsonl")], tmp_path / "jsonl", tok, shard_tokens=1000)
    assert again.get("up_to_date")
    assert (tmp_path / "jsonl" / "meta.json").stat().st_mtime_ns == mtime
    other = prepare([str(corpus / "docs.jsonl")], tmp_path / "jsonl", tok, shard_tokens=500)
    assert not other.get("up_to_date") and len(other["shards"]) == -(-other["tokens"] // 500)
    assert not list(tmp_path.glob(".*tmp*")) and not list(tmp_path.glob(".*old*"))


def test_bad_input_is_one_line(corpus, tmp_path):
    tok = str(corpus / "tok")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n\n{"body": "b"}\n')
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe bytes")
    cases = [
        ([str(tmp_path / "empty.txt")], {}, "empty.txt' is an empty file"),
        ([str(tmp_path / "bad.jsonl")], {}, r"bad.jsonl:3: no text field 'text'"),
        ([str(corpus / "docs.parquet")], {"column": "body"}, "has no column 'body'; columns: text"),
        ([str(tmp_path / "nope*.txt")], {}, "matches no file"),
        ([str(corpus / "saved")], {"column": "body"}, "arrow' has no column 'body'; columns: text"),
    ]
    for inputs, kw, msg in cases:
        with pytest.raises(PlaitError, match=msg):
            prepare(inputs, tmp_path / "out", tok, **kw)
    with pytest.raises(PlaitError, match="'missing' does not exist"):
        prepare([str(tmp_path / "bad.txt")], tmp_path / "out", "missing")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "__init__.py").write_bytes(b"")
    (tmp_path / "folder" / "a.py").write_text("x = 1")
    assert prepare([str(tmp_path / "folder")], tmp_path / "f", tok)["skipped_empty"] == 1
    meta = prepare([str(tmp_path / "bad.txt")], tmp_path / "utf8", tok)  # replace and count
    assert meta["invalid_utf8"] == {"documents": 1, "replaced_chars": 2}
    assert not (tmp_path / "out").exists()

    d = load_config(None, ["data.name=tokens", f"data.path={tmp_path / 'utf8'}"]).data
    shard = tmp_path / "utf8" / "tokens-00000.bin"
    good = shard.read_bytes()
    shard.write_bytes(good[:-1])
    with pytest.raises(PlaitError, match="truncated: .* not a multiple of 2"):
        TokenData(0, d)
    shard.write_bytes(good[:-2] + bytes([good[-2] ^ 1, good[-1]]))
    with pytest.raises(PlaitError, match=r"does not match meta.json \(SHA-256\)"):
        TokenData(0, d)
    shard.write_bytes(good)
    raw = load_config(None, ["data.name=tokens", f"data.path={shard}"]).data
    with pytest.raises(PlaitError, match="raw token file; say its dtype"):
        TokenData(0, raw)
    with pytest.raises(PlaitError, match="data.dtype: 'float32' is not allowed; expected one of"):
        TokenData(
            0,
            load_config(
                None, ["data.name=tokens", f"data.path={shard}", "data.dtype=float32"]
            ).data,
        )


def test_vocab_auto_from_metadata_and_refusal(corpus, tmp_path):
    prepare([str(corpus / "docs.jsonl")], tmp_path / "p", str(corpus / "tok"))
    data = ["data.name=tokens", f"data.path={tmp_path / 'p'}"]
    auto = load_config(None, [*data, "model.vocab_size=auto"])
    assert gpt_args(auto).vocab_size == 320  # 300 padded to a multiple of 64
    with pytest.raises(
        PlaitError, match=r"model.vocab_size: 256 is too small for data.name=tokens .* >= 300"
    ):
        from plait.models import check_model

        check_model(load_config(None, data))  # gpt tiny: 256
    hf = [*data, "model.name=hf", "model.hf_arch=LlamaForCausalLM",
          "model.hf_overrides={vocab_size: 299, hidden_size: 32, num_attention_heads: 2, "
          "num_key_value_heads: 2, intermediate_size: 64, num_hidden_layers: 1}"]  # fmt: skip
    with pytest.raises(
        PlaitError,
        match=r"hf_overrides.vocab_size: 299 is too small for data.name=tokens .* >= 300",
    ):
        check_model(load_config(None, hf))
    with pytest.raises(PlaitError, match="model.vocab_size: 'auto' .* needs data.name=tokens"):
        load_config(None, ["model.vocab_size=auto"])


def test_tiktoken_file_and_byte_level(tmp_path):
    import base64

    ranks = [bytes([i]) for i in range(256)] + [b"th", b"the", b" the"]
    f = tmp_path / "mini.tiktoken"
    f.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(ranks)))
    (tmp_path / "a.txt").write_text("the cat the")
    meta = prepare([str(tmp_path / "a.txt")], tmp_path / "tt", str(f), progress=False)
    toks = np.fromfile(tmp_path / "tt" / "tokens-00000.bin", dtype=np.uint16).tolist()
    assert toks == [257, 32, 99, 97, 116, 258, 259] and meta["tokenizer"]["kind"] == "tiktoken"
    with pytest.raises(PlaitError, match="tiktoken encoding name, which tiktoken would download"):
        load_tokenizer("cl100k_base")
    b = prepare([str(tmp_path / "a.txt")], tmp_path / "b", "bytes", progress=False)
    assert b["vocab_size"] == 257 and b["tokens"] == len("the cat the") + 1


@pytest.mark.parametrize("n", [*range(1, 70), 255, 256, 257, 1000, 4097])
def test_lazy_permutation_is_a_bijection(n):
    p = Permutation(n, key=12345 + n)
    out = p[np.arange(n)]
    assert sorted(out.tolist()) == list(range(n))
    if n > 20:  # and not the identity, and another key gives another order
        assert (out != np.arange(n)).mean() > 0.5
        assert not np.array_equal(Permutation(n, key=1)[np.arange(n)], out)


def test_lazy_permutation_is_cheap_at_2_pow_40():
    n = 2**40
    p = Permutation(n, key=7)
    i = np.arange(0, n, n // 100_000, dtype=np.int64)[:100_000]
    out = p[i]
    assert out.min() >= 0 and out.max() < n and len(np.unique(out)) == len(i)
    assert p.keys.nbytes < 100  # no O(n) state


def _make_source(root: Path, letter: str, n_docs: int = 30) -> Path:
    (root / letter).mkdir(parents=True)
    for i in range(n_docs):
        (root / letter / f"{i}.txt").write_text(letter * 200)
    prepare([str(root / letter)], root / f"p_{letter}", "bytes", progress=False)
    return root / f"p_{letter}"


def test_mixture_fractions_follow_weights(tmp_path):
    a, b = _make_source(tmp_path, "a"), _make_source(tmp_path, "b")
    cfg = load_config(
        None,
        ["data.name=tokens", "data.seq_len=16", f"data.mix={{{a}: 0.7, {b}: 0.3}}"],
    )
    data = TokenData(0, cfg.data)
    seqs = torch.cat([data.sample("train", k, 0, 100, 100)["input"] for k in range(20)])
    from_a = (seqs == ord("a")).any(1).float().mean().item()
    assert abs(from_a - 0.7) <= 0.03, from_a
    src, _ = interleave(np.arange(2000), [0.5, 0.2, 0.3])
    assert all(abs((src == s).mean() - w) < 0.003 for s, w in enumerate([0.5, 0.2, 0.3]))


def test_global_batch_is_a_pure_function_of_seed_and_step(corpus, tmp_path):
    prepare([str(corpus / "docs.jsonl")], tmp_path / "p", str(corpus / "tok"))
    d = load_config(
        None, ["data.name=tokens", f"data.path={tmp_path / 'p'}", "data.seq_len=16"]
    ).data
    data, again = TokenData(0, d), TokenData(0, d)
    n = data.sources[0].n
    B = 8
    seen = []
    for step in range(0, -(-n // B) * 2 + 3):  # past two epochs
        whole = data.sample("train", step, 0, B, B)
        parts = [again.sample("train", step, r * 2, r * 2 + 2, B) for r in range(4)]
        assert torch.equal(torch.cat([p["input"] for p in parts]), whole["input"])
        assert torch.equal(whole["input"][:, 1:], whole["target"][:, :-1])
        seen.append(whole["input"])
    first_epoch = torch.cat(seen)[:n]
    assert len({tuple(r.tolist()) for r in first_epoch}) == n  # every sequence once per epoch
    assert not torch.equal(TokenData(1, d).sample("train", 0, 0, B, B)["input"], seen[0])
    # held-out: the last documents, cut at a document boundary, never in the training stream
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    ends = np.fromfile(tmp_path / "p" / "doc_ends.bin", dtype=np.uint64)
    (s, start, k) = data.evals[0]
    assert start in ends.tolist() and start < meta["tokens"] and k >= 1
    assert data.sources[0].n * 16 < start


def test_raw_bin_and_separate_eval_folder(tmp_path):
    arr = (np.arange(10_000) % 50_000).astype(np.uint32)
    arr.tofile(tmp_path / "train.bin")
    arr[:500].tofile(tmp_path / "val.bin")
    d = load_config(
        None,
        ["data.name=tokens", f"data.path={tmp_path / 'train.bin'}", "data.dtype=uint32",
         f"data.eval_path={tmp_path / 'val.bin'}", "data.seq_len=10"],
    ).data  # fmt: skip
    data = TokenData(0, d)
    b = data.sample("train", 3, 0, 4, 4)["input"]
    assert b.dtype == torch.int64 and ((b[:, 1:] - b[:, :-1]) == 1).all()  # contiguous windows
    ev = data.sample("eval", 0, 0, 4, 4)["input"]
    assert ev[0, 0] == 0 and ev[1, 0] == 10 and data.sources[0].n == 999


def test_megatron_bin_takes_its_dtype_from_the_idx(tmp_path):
    import struct

    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "web_text_document.bin")
    head = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8)  # 8: uint16
    (tmp_path / "web_text_document.idx").write_bytes(head + bytes(16))
    d = load_config(
        None,
        ["data.name=tokens", f"data.path={tmp_path / 'web_text_document.bin'}", "data.seq_len=8"],
    ).data
    data = TokenData(0, d)
    assert data.sources[0].stream.dtype == np.uint16 and len(data.sources[0].stream) == 1000


def test_byte_corpus_takes_a_file_and_logs_a_cut(tmp_path, capsys):
    from plait.data.text import ByteText

    f = tmp_path / "corpus.txt"
    f.write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    whole = ByteText(0, 16, 0.1, str(f), max_bytes=1 << 20)
    assert "cut" not in whole.describe() and capsys.readouterr().out == ""
    cut = ByteText(0, 16, 0.1, str(f), max_bytes=4096)
    assert "first 4,096 of 10,240 bytes" in capsys.readouterr().out
    assert "cut from 10240" in cut.describe()


@pytest.mark.timeout(400)
def test_readme_own_text_commands_run_as_written(tmp_path, capsys):
    """The README's "Train on your own text": its four commands as written, on a small corpus,
    with steps, checkpoint interval and logging shrunk by appended overrides."""
    repo = Path(__file__).parents[1]
    readme = (repo / "README.md").read_text()
    block = readme.split("## Train on your own text", 1)[1].split("```bash", 1)[1].split("```")[0]
    cmds = [c.strip() for c in block.strip().splitlines() if c.strip().startswith("plait ")]
    assert len(cmds) == 4, cmds
    (tmp_path / "my_corpus").mkdir()
    for i, doc in enumerate(_docs(60, seed=1)):
        (tmp_path / "my_corpus" / f"{i}.txt").write_text(doc)
    (tmp_path / "configs").symlink_to(repo / "configs")
    small = ["model.n_layers=2", "optim.warmup_steps=1", "checkpoint.every=2", "log.every=1", *BASE]
    shrink = [[*small, "train.steps=4"], [*small, "train.steps=6"]]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for i, c in enumerate(cmds):
            extra = shrink[i - 2] if i >= 2 else []
            assert main([*c.split()[1:], *extra]) == 0, c
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "resumed from" in out and "step-00000004" in out
    run = tmp_path / "runs" / "mine"
    m = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in m] == [1, 2, 3, 4, 5, 6]
    assert all(r["data_wait_s"] >= 0 for r in m) and m[-1]["loss"] < m[0]["loss"]
    meta = json.loads((tmp_path / "my_tokens" / "meta.json").read_text())
    assert "TokenData(my_tokens" in json.loads((run / "run.json").read_text())["data"]
    assert meta["tokenizer"]["kind"] == "hf" and meta["documents"] == 60


@pytest.mark.timeout(600)
def test_gpt_on_prepared_tokens_matches_one_process_on_2_ranks_and_resumes(corpus, tmp_path):
    """Acceptance: DDP, ZeRO-3, tp=2 and pp=2 on 2 real gloo ranks follow the one-process run
    per step (relative 1e-5) with the same held-out loss, in ONE launch; a run resumed at step 3
    (one process, and 2-rank DDP from the one-process checkpoint) continues it exactly."""
    from helpers import (
        assert_resumed,
        assert_same_run_and_eval,
        run_distributed_many,
        run_single,
        step3_checkpoint,
    )

    prepare([str(corpus / "txt")], tmp_path / "tokens", str(corpus / "tok"), progress=False)
    base = ["data.name=tokens", f"data.path={tmp_path / 'tokens'}", "model.vocab_size=auto",
            "model.n_layers=2", "data.seq_len=16", "train.global_batch=8", "train.steps=6",
            "train.eval_batches=2", "optim.warmup_steps=2", "train.grad_clip=1.0"]  # fmt: skip
    ref = run_single([*base, "checkpoint.every=3", "checkpoint.keep=5"], tmp_path / "one")
    resumed_one = run_single(
        [*base, f"checkpoint.dir={step3_checkpoint(ref.run_dir, tmp_path / 'ck1')}"],
        tmp_path / "one_resumed",
    )
    assert_resumed(ref, resumed_one, "one process resumed at step 3")
    layouts = {
        "ddp": [],
        "zero3": ["parallel.zero_stage=3"],
        "tp2": ["parallel.tp=2"],
        "pp2": ["parallel.pp=2", "parallel.pp_microbatches=2"],
        "ddp resumed": [f"checkpoint.dir={step3_checkpoint(ref.run_dir, tmp_path / 'ck2')}"],
    }
    got = run_distributed_many(
        [[*base, *ov] for ov in layouts.values()], 2, tmp_path / "ranks", timeout=600
    )
    for name, res in zip(layouts, got):
        if name == "ddp resumed":
            assert_resumed(ref, res, name)
        else:
            assert_same_run_and_eval(ref, res, name)
    assert ref.final_eval["eval_loss"] > 0 and all("data_wait_s" in m for m in ref.metrics)


def test_prefetcher_reads_ahead_the_same_batches(tmp_path):
    from plait.data.prefetch import Prefetcher
    from plait.data.synthetic import SyntheticTokens

    data = SyntheticTokens(0, 256, 16)
    pf = Prefetcher(data, 2, 6, 8, torch.device("cpu"), steps=5)
    try:
        for step in [0, 1, 2, 4, 3]:  # 4: a jump (resume) is read in place, not from the queue
            got, wait = pf.get(step)
            assert wait >= 0 and torch.equal(
                got["input"], data.sample("train", step, 2, 6, 8)["input"]
            )
            assert pf.pending is None if step == 4 else pf.pending[0] == step + 1
    finally:
        pf.close()
    off = Prefetcher(data, 0, 8, 8, torch.device("cpu"), enabled=False)
    off.get(0)
    assert off.pending is None
