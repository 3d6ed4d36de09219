"""open_source / contract_for dispatch, the labelled mask, and the `mosaic-edge synth` command."""

from __future__ import annotations

import numpy as np
import pytest

from mosaic_edge.cli import main
from mosaic_edge.data.base import PatchDataset, labelled_mask
from mosaic_edge.data.benv2 import BigEarthNetV2
from mosaic_edge.data.sen12ms import SEN12MS
from mosaic_edge.data.sources import DataSpec, contract_for, open_source
from mosaic_edge.data.synthetic import SyntheticConfig, SyntheticMosaic
from mosaic_edge.errors import UserError
from tests.support.sen12ms import write_sen12ms_fixture


def test_dispatch(benv2_root, tmp_path):
    syn = open_source("synthetic", "val", n_val=7, seed=3)
    assert isinstance(syn, SyntheticMosaic) and len(syn) == 7 and syn.config.seed == 3
    assert isinstance(open_source(benv2_root, "test"), BigEarthNetV2)
    write_sen12ms_fixture(tmp_path / "sen", scenes=1, patches=1)
    assert isinstance(open_source(tmp_path / "sen", "train"), SEN12MS)
    with pytest.raises(UserError, match="neither"):
        open_source(tmp_path / "missing")
    with pytest.raises(UserError, match="not a BigEarthNet v2 root"):
        open_source(tmp_path)
    with pytest.raises(UserError, match="unknown synthetic options"):
        open_source("synthetic", n_trian=5)


def test_contract_for(benv2_root):
    assert contract_for(benv2_root).stats_source.startswith("BigEarthNet v2.0 official train split")
    cfg = SyntheticConfig(n_train=8, stats_samples=4)
    by_source = contract_for(SyntheticMosaic(cfg, "test"))
    assert by_source.dataset == "synthetic" and by_source == contract_for("synthetic", config=cfg)


def test_data_spec_round_trip_reopens_the_same_data(benv2_root):
    spec = DataSpec("synthetic", {"n_test": 5, "patch_size": 24, "seed": 2})
    again = DataSpec.from_dict(spec.to_dict())
    assert again == spec and again.name == "synthetic" and again.kind == "synthetic"
    src = again.open("test")
    assert len(src) == 5 and src.config.patch_size == 24 and src.config.seed == 2
    assert again.open("test", n_test=3).config.n_test == 3  # overrides win
    real = DataSpec(str(benv2_root))
    assert real.kind == "benv2" and real.name == "benv2-mini" and len(real.open("test")) > 0
    assert real.contract().stats_source.startswith("BigEarthNet v2.0")
    with pytest.raises(UserError, match="not a data spec"):
        DataSpec.from_dict({"options": {}})


def test_labelled_mask_is_seeded_nested_and_sized():
    a = labelled_mask(100, 0.1, seed=0)
    assert a.sum() == 10 and np.array_equal(a, labelled_mask(100, 0.1, seed=0))
    assert not np.array_equal(a, labelled_mask(100, 0.1, seed=1))
    assert np.all(labelled_mask(100, 0.3, seed=0)[a])  # smaller fraction is a subset
    assert labelled_mask(50, 0.001, seed=0).sum() == 1 and labelled_mask(50, 0.0, seed=0).sum() == 0
    with pytest.raises(ValueError):
        labelled_mask(10, 1.5, seed=0)
    cfg = SyntheticConfig(n_train=8, stats_samples=4)
    ds = PatchDataset(
        SyntheticMosaic(cfg, "train"), contract_for("synthetic", config=cfg), label_fraction=0.25
    )
    assert [ds[i]["labelled"] for i in range(len(ds))] == labelled_mask(8, 0.25, seed=0).tolist()


def test_synth_command_writes_readable_layout(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # typer exits 0 after a command
        main(
            [
                "synth",
                "--out",
                str(tmp_path),
                "--n-train",
                "2",
                "--n-val",
                "1",
                "--n-test",
                "1",
                "--seed",
                "4",
            ]
        )
    assert exc.value.code == 0
    assert "wrote 4 synthetic pairs" in capsys.readouterr().out
    source = open_source(tmp_path, "validation")
    assert len(source) == 1 and source.read(0).labels.sum() >= 1


def test_synth_command_bad_option_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", str(tmp_path), "--cloud-fraction", "3"])
    assert exc.value.code == 2 and "cloud_fraction" in capsys.readouterr().err
