"""Training loop on CPU with the tiny architecture: end-to-end train -> evaluate, bit-identical resume, DDP
(gloo)."""

from __future__ import annotations

import dataclasses
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
    with pytest.raises(ValueError, match="unknown arch 'resnet7'.*resnet18"):
        TrainConfig(arch="resnet7")  # checked against the encoder registry
    with pytest.raises(ValueError):
        TrainConfig(min_labelled=-1)
    with pytest.raises(ValueError):
        TrainConfig(channels_last="yes")
    a, b = TrainConfig(), TrainConfig(label_fraction=0.1)
    assert a.name != b.name and str(a.out_dir).startswith("runs")
    assert TrainConfig.from_json(b.to_json()) == b


def test_train_options_are_the_config_fields() -> None:
    import typer.main

    from mosaic_edge.commands.train import train_cmd

    app = typer.Typer(add_completion=False)
    app.command()(train_cmd)
    cmd = typer.main.get_command(app)
    opts = {p.name: p for p in cmd.params if p.param_type_name == "option"}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(opts) == set(fields) | {"resume"}
    defaults = TrainConfig()
    for name, f in fields.items():
        want = getattr(defaults, name)
        assert opts[name].default == (list(want) if isinstance(want, tuple) else want), name
        assert opts[name].help == f.metadata["help"], name
    assert opts["compile"].opts == ["--compile"] and opts["compile"].secondary_opts == ["--no-compile"]
    assert opts["split_file"].multiple and "-o" in opts["out"].opts
    res = CliRunner().invoke(app, ["--arch", "resnet7", "--out", "/nonexistent"])
    assert res.exit_code != 0 and "unknown arch" in str(res.exception)


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
    # torch's SyncBatchNorm takes CUDA tensors only: on gloo/CPU BatchNorm stays per process, and says so
    assert rec["sync_bn"] is False and "SyncBatchNorm needs CUDA" in proc.stderr
    assert (tmp_path / "ddp" / "model.pt").is_file()


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    cfg = TrainConfig(**TINY, epochs=2, out=str(tmp_path / "r"))
    train(cfg, stop_after=1)
    with pytest.raises(UserError, match="different training config"):
        train(cfg.replace(lr=0.1), resume=True, stop_after=2)


def test_sync_batchnorm_conversion_round_trips() -> None:
    from mosaic_edge.train.distributed import DistInfo, revert_sync_batchnorm, use_sync_batchnorm
    from mosaic_edge.train.models import build_model

    model = build_model("tiny", 19, 16)
    x = (torch.randn(4, 2, 16, 16), torch.randn(4, 12, 16, 16))
    model.train()
    model(*x)  # move the running statistics away from their initial values
    model.eval()
    ref = model(*x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # one process, or CPU: nothing to synchronise
    assert not use_sync_batchnorm(model, DistInfo(), torch.device("cuda"), True)
    assert not use_sync_batchnorm(model, DistInfo(0, 2, 0), torch.device("cpu"), True)
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()) == 4
    assert set(model.state_dict()) == set(state)  # same keys: checkpoints do not see the conversion
    revert_sync_batchnorm(model)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert sum(type(m) is torch.nn.BatchNorm2d for m in model.modules()) == 4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    out = model(*x)
    assert all(torch.equal(out[k], ref[k]) for k in ref)


def test_channels_last_and_compile_plumbing_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mosaic_edge.train import loop

    compiled: list[object] = []

    def fake_compile(model: torch.nn.Module, **kw: object) -> torch.nn.Module:
        compiled.append(model)
        return model

    formats: list[bool] = []
    real_forward = loop.MosaicModel.forward

    def spy_forward(self: torch.nn.Module, sar: torch.Tensor, optical: torch.Tensor) -> dict[str, torch.Tensor]:
        formats.append(sar.is_contiguous(memory_format=torch.channels_last) and self.enc_sar.body[0][0].weight
                       .is_contiguous(memory_format=torch.channels_last))
        return real_forward(self, sar, optical)

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(loop.MosaicModel, "forward", spy_forward)
    torch.set_num_threads(1)
    cfg = TrainConfig(**{**TINY, "finetune_epochs": 0}, epochs=1, channels_last="on", compile=True)
    on = train(cfg.replace(out=str(tmp_path / "on")))
    assert len(compiled) == 1 and isinstance(compiled[0], loop.MosaicModel)
    assert formats and all(formats)  # phase-1 batches and weights in channels_last
    rec = json.loads((tmp_path / "on" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["channels_last"] is True
    saved = torch.load(tmp_path / "on" / "model.pt", weights_only=True)["state_dict"]
    assert all(v.is_contiguous() for v in saved.values())  # layout-neutral checkpoint
    formats.clear()
    off = train(cfg.replace(out=str(tmp_path / "off"), channels_last="auto", compile=False))  # auto: off on CPU
    assert not any(formats) and len(compiled) == 1
    assert on.metrics["test"]["macro_map"] == pytest.approx(off.metrics["test"]["macro_map"], abs=0.05)


def test_supervised_baseline_sees_one_geometric_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mosaic_edge.train import loop
    from mosaic_edge.train.augment import GEOMETRIC_AUGMENT

    seen: list[object] = []
    real = loop.augment_pair

    def spy(sar: torch.Tensor, optical: torch.Tensor, contract: Contract, cfg: object, *a: object) -> object:
        seen.append(cfg)
        return real(sar, optical, contract, cfg, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "augment_pair", spy)
    cfg = TrainConfig(**{**TINY, "finetune_epochs": 0}, epochs=1, l_intra=0.0, l_inter=0.0, l_sup=0.0,
                      classifier="joint", out=str(tmp_path / "sup"))
    train(cfg)
    steps = cfg.n_train // cfg.batch_size
    assert len(seen) == steps and all(c is GEOMETRIC_AUGMENT for c in seen)


def test_sen12ms_split_file_and_threshold_are_recorded_for_evaluate(tmp_path: Path) -> None:
    from tests.support.sen12ms import write_sen12ms_fixture

    root = write_sen12ms_fixture(tmp_path / "sen", scenes=3, patches=2)
    csv = tmp_path / "splits.csv"
    csv.write_text("key,split\n" + "".join(
        f"ROIs{r}_{s}_{k},{split}\n" for r, s in (("1158", "spring"), ("1868", "summer"))
        for k, split in ((1, "train"), (2, "validation"), (3, "test"))))
    cfg = TrainConfig(**{**TINY, "patch_size": 48, "crop_size": 32, "batch_size": 4, "finetune_epochs": 0},
                      data=str(root), epochs=1, label_threshold=0.2, split_file=(str(csv),), out=str(tmp_path / "r"))
    with pytest.raises(ValueError):
        TrainConfig(label_threshold=1.5)
    res = train(cfg)
    spec = DataSpec.from_dict(torch.load(res.checkpoint, weights_only=True)["extra"]["data_spec"])
    assert spec.options == {"label_threshold": 0.2, "split_file": [str(csv.resolve())]}
    from mosaic_edge.train.evaluate import evaluate_checkpoint

    again = evaluate_checkpoint(res.checkpoint)
    assert again["n"] == 4 and again["macro_map"] == pytest.approx(res.metrics["test"]["macro_map"])
    with pytest.raises(UserError, match="apply to SEN12MS data, not to the synthetic"):
        train(TrainConfig(**TINY, split_file=(str(csv),), out=str(tmp_path / "x")))


def test_a_relative_data_root_is_recorded_absolute(benv2_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mosaic_edge.train.data import data_spec

    monkeypatch.chdir(benv2_root.parent)
    spec = data_spec(TrainConfig(data=benv2_root.name))
    assert spec.data == str(benv2_root.resolve()) and Path(spec.data).is_absolute()
