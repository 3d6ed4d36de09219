"""tegrastats / nvpmodel parsing and the power arithmetic (no Jetson needed: parsers run on sample lines)."""

from __future__ import annotations

import pytest

from mosaic_edge.edge_runtime.power import (
    PowerSummary,
    input_power_mw,
    parse_tegrastats_line,
    summarize_power,
)
from mosaic_edge.environment import cpu_info, parse_nvpmodel

# Lines in the formats tegrastats prints on each Jetson generation (field layout per NVIDIA's tegrastats docs;
# values are illustrative). Orin / JetPack 5-6 prints "current mW/average mW"; JetPack 4 prints bare numbers.
ORIN_JP6 = ("11-27-2026 22:00:01 RAM 2262/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
            "CPU [2%@729,1%@729,0%@729,0%@729,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305] NVENC off "
            "NVDEC off "
            "VIC off OFA off APE 200 cpu@47.968C soc2@46.562C gpu@47.5C tj@47.968C "
            "VDD_IN 4980mW/4870mW VDD_CPU_GPU_CV 482mW/470mW VDD_SOC 1445mW/1440mW")
XAVIER_NX_JP4 = ("RAM 2448/7765MB (lfb 87x4MB) SWAP 0/3883MB (cached 0MB) CPU [3%@1190,1%@1190,off,off] "
                 "EMC_FREQ 0% GR3D_FREQ 0% AUX@35.5C CPU@37.5C GPU@35.5C PMIC@50C "
                 "VDD_IN 3841/3800 VDD_CPU_GPU_CV 409/400 VDD_SOC 1229/1200")
NANO_JP4 = ("RAM 1018/3956MB (lfb 444x4MB) SWAP 0/1978MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
            "CPU [7%@102,3%@102,2%@102,2%@102] EMC_FREQ 0%@204 GR3D_FREQ 0%@76 APE 25 PLL@21.5C CPU@24C "
            "POM_5V_IN 1093/1050 POM_5V_GPU 0/0 POM_5V_CPU 124/120")
AGX_XAVIER_JP4 = ("RAM 1567/15692MB (lfb 3301x4MB) SWAP 0/7846MB (cached 0MB) CPU [1%@1190,off] EMC_FREQ 0% "
                  "GR3D_FREQ 0% AO@32C GPU@32.5C Tdiode@34.25C GPU 0/0 CPU 311/300 SOC 932/930 CV 0/0 "
                  "VDDRQ 155/150 SYS5V 1386/1380")


def test_orin_line_gives_instantaneous_rails_and_skips_memory():
    rails = parse_tegrastats_line(ORIN_JP6)
    assert rails == {"VDD_IN": 4980.0, "VDD_CPU_GPU_CV": 482.0, "VDD_SOC": 1445.0}
    assert input_power_mw(rails) == (4980.0, "VDD_IN")


def test_jetpack4_lines_without_units():
    assert parse_tegrastats_line(XAVIER_NX_JP4) == {"VDD_IN": 3841.0, "VDD_CPU_GPU_CV": 409.0,
                                                    "VDD_SOC": 1229.0}
    nano = parse_tegrastats_line(NANO_JP4)
    assert nano == {"POM_5V_IN": 1093.0, "POM_5V_GPU": 0.0, "POM_5V_CPU": 124.0}  # IRAM .../252kB is memory
    assert input_power_mw(nano) == (1093.0, "POM_5V_IN")


def test_no_input_rail_sums_the_rails():
    rails = parse_tegrastats_line(AGX_XAVIER_JP4)
    assert rails == {"GPU": 0.0, "CPU": 311.0, "SOC": 932.0, "CV": 0.0, "VDDRQ": 155.0, "SYS5V": 1386.0}
    assert input_power_mw(rails) == (311.0 + 932.0 + 155.0 + 1386.0, "sum")


def test_lines_without_power():
    assert parse_tegrastats_line("RAM 1018/3956MB SWAP 0/1978MB (cached 0MB) CPU [7%@102]") == {}
    assert input_power_mw({}) == (None, None)


def test_average_power_and_energy_per_tile_over_a_window():
    samples = [(0.5, {"VDD_IN": 9000.0}), (1.0, {"VDD_IN": 4000.0}), (2.0, {"VDD_IN": 6000.0}),
               (3.0, {"VDD_IN": 5000.0}), (3.5, {"VDD_IN": 100.0})]
    s = summarize_power(samples, 1.0, 3.0)
    assert s is not None and s.samples == 3 and s.rail == "VDD_IN"
    assert s.avg_power_w == pytest.approx(5.0)
    assert s.window_s == pytest.approx(2.0)
    # 5 W for 2 s over 100 tiles = 0.1 J = 100 mJ per tile
    assert s.energy_per_tile_mj(100) == pytest.approx(100.0)
    assert s.energy_per_tile_mj(0) is None
    assert summarize_power(samples, 10.0, 11.0) is None
    assert PowerSummary(2.0, "sum", 1, 0.5).to_dict()["avg_power_w"] == 2.0


def test_nvpmodel_output():
    assert parse_nvpmodel("NV Power Mode: MAXN\n0\n") == {"name": "MAXN", "id": 0}
    warned = "NVPM WARN: fan mode is not set!\nNV Power Mode: 15W\n2\n"
    assert parse_nvpmodel(warned) == {"name": "15W", "id": 2}
    assert parse_nvpmodel("garbage") == {"name": None, "id": None}


def test_cpu_info_here():
    info = cpu_info()
    assert info["logical_cpus"] >= 1 and 1 <= info["usable_threads"] <= info["logical_cpus"]


def test_doctor_and_profile_share_one_environment_probe(tmp_path, monkeypatch):
    from mosaic_edge import doctor, environment

    model, release = tmp_path / "model", tmp_path / "nv_tegra_release"
    model.write_text("NVIDIA Jetson Orin NX Engineering Reference Developer Kit\x00")
    release.write_text("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64\n")
    monkeypatch.setattr(environment, "_JETSON_MODEL", model)
    monkeypatch.setattr(environment, "_L4T_RELEASE", release)
    monkeypatch.setattr(environment, "_run", lambda cmd: "NV Power Mode: 15W\n2\n" if cmd[0] == "nvpmodel" else None)
    jetson = doctor.collect()["jetson"]
    assert jetson == {"model": "NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
                      "l4t_release": "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64",
                      "power_mode": {"name": "15W", "id": 2}}
    profiled = environment.environment()["jetson"]
    assert {k: profiled[k] for k in jetson} == jetson and "clocks" in profiled
    assert doctor.collect()["numpy"] == environment.module_version("numpy") == environment.versions()["numpy"]
