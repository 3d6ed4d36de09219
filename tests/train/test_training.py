"""Training loop on CPU with the tiny architecture: end-to-end train -> evaluate, bit-identical resume, DDP
(gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mosaic_edge.cli import app
from mosaic_edge.contract import Contract
from mosaic_edge.data.sources import DataSpec
from mosaic_edge.errors import UserError
from mosaic_edge.train.config import TrainConfig
from mosaic_edge.train.loop import lr_at, train

TINY = dict(
    arch="tiny",
    n_train=48,
    n_val=24,
    n_test=24,
    patch_size=24,
    crop_size=16,
    batch_size=16,
    head_epochs=10,
    finetune_epochs=1,
    device="cpu",
    log_every=100,
)


def test_lr_schedule_warmup_then_cosine() -> None:
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)) and lrs[-1] < 0.01


def test_config_validates_and_names_runs() -> None:
    with pytest.raises(ValueError):
        TrainConfig(label_fraction=0.0)
    with pytest.raises(ValueError):
        TrainConfig(classifier="both")
    a, b = TrainConfig(), TrainConfig(label_fraction=0.1)
    assert a.name != b.name and str(a.out_dir).startswith("runs")
    assert TrainConfig.from_json(b.to_json()) == b


def test_train_then_evaluate_cli(tmp_path: Path) -> None:
    out = tmp_path / "run"
    runner = CliRunner()
    args = [
        "train",
        "--arch",
        "tiny",
        "--epochs",
        "1",
        "--head-epochs",
        "10",
        "--finetune-epochs",
        "2",
        "--n-train",
        "48",
        "--n-val",
        "24",
        "--n-test",
        "24",
        "--patch-size",
        "24",
        "--crop-size",
        "16",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--label-fraction",
        "0.5",
        "--out",
        str(out),
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    for name in ("model.pt", "contract.json", "metrics.jsonl", "curves.png"):
        assert (out / name).is_file(), name
        assert f"wrote {out / name}" in res.output
    contract = Contract.load(out / "contract.json")
    assert contract.dataset == "synthetic" and contract.model_name == "tiny" and contract.model_hash
    raw = torch.load(out / "model.pt", weights_only=True)
    assert Contract.from_json(raw["contract"]) == contract
    spec = DataSpec.from_dict(raw["extra"]["data_spec"])  # what export and evaluate reopen
    assert spec.data == "synthetic" and spec.options["patch_size"] == 24 and spec.options["n_test"] == 24
    assert spec.contract() == Contract.from_json(raw["contract"]).replace(thresholds=spec.contract().thresholds,
                                                                           model_name="", model_hash="")
    phases = [json.loads(line)["phase"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert phases == ["pretrain", "head", "finetune", "test"]

    res = runner.invoke(app, ["evaluate", str(out / "model.pt"), "--split", "test", "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.output)
    for key in ("macro_map", "micro_map", "macro_f1", "micro_f1", "silhouette", "per_class_ap"):
        assert key in metrics
    assert 0.0 < metrics["macro_map"] <= 1.0 and len(metrics["per_class_ap"]) == 19
    # evaluating reproduces the test numbers training stored in the checkpoint
    assert metrics["macro_map"] == pytest.approx(raw["extra"]["test"]["macro_map"], abs=1e-6)
    res = runner.invoke(app, ["evaluate", str(out / "model.pt")])
    assert res.exit_code == 0 and "per-class AP" in res.output


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = TrainConfig(**TINY, epochs=3, label_fraction=0.5)
    train(cfg.replace(out=str(tmp_path / "a")), stop_after=2)
    train(cfg.replace(out=str(tmp_path / "b")), stop_after=1)
    train(cfg.replace(out=str(tmp_path / "b")), resume=True, stop_after=2)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert json.loads(a["records"])[1]["loss_total"] == json.loads(b["records"])[1]["loss_total"]


_DDP_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from mosaic_edge.train.config import TrainConfig
    from mosaic_edge.train.distributed import gather_with_grad, init_distributed
    from mosaic_edge.train.loss_ntxent import nt_xent
    from mosaic_edge.train.loop import train
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    g = torch.Generator().manual_seed(0)
    z1 = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=1)
    z2 = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=1)
    sl = slice(4 * info.rank, 4 * info.rank + 4)
    a, b = z1[sl].clone().requires_grad_(), z2[sl].clone().requires_grad_()
    loss = nt_xent(gather_with_grad(a), gather_with_grad(b), 0.2)
    loss.backward()
    r1, r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ref = nt_xent(r1, r2, 0.2)
    ref.backward()
    assert torch.allclose(loss, ref), (loss, ref)
    # every rank holds the global loss, so local grads are world_size x the global gradient (DDP divides)
    assert torch.allclose(a.grad, 2 * r1.grad[sl], atol=1e-6)
    assert torch.allclose(b.grad, 2 * r2.grad[sl], atol=1e-6)
    cfg = TrainConfig(**json.loads(sys.argv[1]))
    res = train(cfg)
    print("RANK", info.rank, "OK", json.dumps(res.metrics.get("test", {}).get("macro_map")))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ddp_two_gloo_processes(tmp_path: Path) -> None:
    script = tmp_path / "ddp_worker.py"
    script.write_text(_DDP_SCRIPT)
    cfg = dict(TINY, epochs=1, out=str(tmp_path / "ddp"))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(script),
        json.dumps(cfg),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "RANK 0 OK" in proc.stdout and "RANK 1 OK" in proc.stdout
    rec = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["world_size"] == 2 and rec["phase"] == "pretrain"
    assert (tmp_path / "ddp" / "model.pt").is_file()


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    cfg = TrainConfig(**TINY, epochs=2, out=str(tmp_path / "r"))
    train(cfg, stop_after=1)
    with pytest.raises(UserError, match="different training config"):
        train(cfg.replace(lr=0.1), resume=True, stop_after=2)
