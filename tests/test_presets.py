"""Presets: datasheet figures in YAML, each with a source, loaded into GPU and NodeSpec objects."""

from __future__ import annotations

import pytest

from clustersim.errors import ConfigError
from clustersim.hardware.gpu import GPU
from clustersim.hardware.presets import (NodeSpec, describe_preset, gpu_presets, load_gpu,
                                         load_node, node_presets, preset_table, read_presets)

GPUS = {"A100-SXM4-80GB", "A100-SXM4-40GB", "H100-SXM5-80GB", "H100-PCIe-80GB", "H200-SXM-141GB",
        "B200-SXM-180GB", "L40S"}
NODES = {"DGX-A100", "DGX-H100", "HGX-H200", "DGX-B200", "SN40L-16", "TPU-v4-Board", "NeuPIMs-8",
         "DGX-A100-HBM-PIM"}


def rel(x):
    return pytest.approx(x, rel=1e-9)


def test_every_preset_loads():
    gpus, nodes = gpu_presets(), node_presets()
    assert set(gpus) == GPUS and all(isinstance(g, GPU) for g in gpus.values())
    assert set(nodes) == NODES and all(isinstance(n, NodeSpec) for n in nodes.values())
    from clustersim.hardware.node import device_preset_names
    devices = device_preset_names()
    assert all(node.device in devices for node in nodes.values())
    assert {devices[n.device] for n in nodes.values()} == {"gpu", "rdu", "systolic", "npu_pim"}


def test_every_figure_has_a_source_document():
    for name in GPUS | NODES:
        preset = describe_preset(name)
        assert preset.figures, name
        for key, figure in preset.figures.items():
            assert figure.source.title and figure.source.url.startswith("https://"), (name, key)
        spec = preset.spec
        if isinstance(spec, GPU):                          # every datasheet number is a figure
            for table in ("tensor_flops_per_s", "vector_flops_per_s"):
                for dtype in getattr(spec, table):
                    assert f"{table}.{dtype}" in preset.figures, (name, table, dtype)
            for key in ("num_sms", "clock_hz", "hbm_capacity_bytes", "hbm_bandwidth_bytes_per_s"):
                assert key in preset.figures, (name, key)
        else:
            assert set(preset.figures) >= {"device", "link_bandwidth_bytes_per_s", "nic_latency_s"}


def test_datasheet_figures_in_si_units():
    h100 = load_gpu("H100-SXM5-80GB")
    assert h100.tensor_flops_per_s["bf16"] == rel(989.4e12)            # dense, not sparse
    assert h100.tensor_flops_per_s["fp8"] == rel(1978.9e12)
    assert (h100.num_sms, h100.hbm_bandwidth_bytes_per_s) == (132, rel(3.35e12))
    assert h100.hbm_capacity_bytes == 80 * 2**30
    assert load_gpu("a100").tensor_flops_per_s["bf16"] == rel(312e12)
    assert "fp8" not in load_gpu("a100").tensor_flops_per_s
    assert load_gpu("b200").tensor_flops_per_s["bf16"] == rel(2.25e15)
    dgx = load_node("DGX-H100")
    assert dgx.nvlink_bandwidth_bytes_per_s == rel(450e9)               # 900 GB/s total / 2
    assert dgx.nic_bandwidth_bytes_per_s == rel(50e9)                   # 400 Gb/s
    assert load_node("dgx-a100").nvlink_bandwidth_bytes_per_s == rel(300e9)
    assert load_node("dgx-b200").nvlink_bandwidth_bytes_per_s == rel(900e9)


def test_names_are_case_insensitive_and_aliases_work():
    h100 = load_gpu("H100-SXM5-80GB")
    assert load_gpu("h100") is h100 and load_gpu("h100_sxm5_80gb") is h100
    assert load_node("DGX-H200").name == "HGX-H200"


def test_an_unknown_name_lists_the_valid_ones_and_the_nearest():
    with pytest.raises(ValueError) as err:
        load_gpu("H100-SXM6-80GB")
    message = str(err.value)
    assert "did you mean 'H100-SXM5-80GB'" in message
    assert all(name in message for name in GPUS)
    with pytest.raises(ValueError, match="DGX-B200"):
        load_node("dgx-b300")


def test_overrides_take_human_units_and_reject_unknown_fields():
    gpu = load_gpu("h100", hbm_bandwidth_bytes_per_s="4 TB/s",
                   tensor_flops_per_s={"bf16": "900 TFLOPS"})
    assert gpu.hbm_bandwidth_bytes_per_s == rel(4e12)
    assert gpu.tensor_flops_per_s["bf16"] == rel(900e12)
    assert gpu.tensor_flops_per_s["fp8"] == rel(1978.9e12)             # merged, not replaced
    with pytest.raises(ValueError, match="hbm_bandwidth_bytes_per_s"):
        load_gpu("h100", hbm_bandwith_bytes_per_s="4 TB/s")


def test_a_node_gpu_gets_its_share_of_host_memory():
    node = load_node("DGX-H100")
    host = node.gpu_device().memory_tier("host")
    assert host.capacity_bytes == 2 * 2**40 / 8
    assert host.bandwidth_bytes_per_s == rel(64e9)


def test_preset_table_has_a_row_and_a_source_per_preset():
    table = preset_table()
    assert set(table["name"]) == GPUS | NODES
    assert (table["source"] != "").all() and table["url"].str.startswith("https://").all()
    h100 = table.set_index("name").loc["H100-SXM5-80GB"]
    assert h100["bf16_dense_tflops"] == rel(989.4)


GOOD = """
sources:
  sheet: {title: A datasheet, url: https://example.com/sheet.pdf}
gpus:
  Toy:
    source: sheet
    num_sms: 4
    clock_hz: 1 GHz
    tensor_flops_per_s: {bf16: 100 TFLOPS}
    vector_flops_per_s: {fp32: 10 TFLOPS}
    hbm_capacity_bytes: 16 GiB
    hbm_bandwidth_bytes_per_s: 1 TB/s
"""


def test_a_well_formed_file_reads():
    toy = read_presets(GOOD, kind="gpu", file="toy.yaml")["Toy"]
    assert toy.spec.hbm_bandwidth_bytes_per_s == 1e12
    assert toy.figures["tensor_flops_per_s.bf16"].source.url == "https://example.com/sheet.pdf"


@pytest.mark.parametrize("edit, key, message", [
    (("num_sms: 4", "num_smz: 4"), "gpus.Toy.num_smz", "did you mean 'num_sms'"),
    (("1 TB/s", "-1 TB/s"), "gpus.Toy.hbm_bandwidth_bytes_per_s", "> 0"),
    (("    source: sheet\n", ""), "gpus.Toy.num_sms", "missing source"),
    (("num_sms: 4", "num_sms: {value: 4, source: shet}"), "gpus.Toy.num_sms",
     "did you mean 'sheet'"),
    (("16 GiB", "16 furlongs"), "gpus.Toy.hbm_capacity_bytes", "bytes quantity"),
    (("{fp32: 10 TFLOPS}", "{fp32: 10 TFLOPS, fp128: 1 TFLOPS}"), "gpus.Toy", "fp128"),
])
def test_a_bad_file_is_an_error_naming_file_and_key(edit, key, message):
    text = GOOD.replace(*edit)
    assert text != GOOD
    with pytest.raises(ConfigError) as err:
        read_presets(text, kind="gpu", file="bad.yaml")
    assert (err.value.file, err.value.key) == ("bad.yaml", key)
    assert message in str(err.value)


def test_a_node_file_must_name_a_known_device():
    text = """
sources:
  s: {title: T, url: https://example.com}
nodes:
  N:
    source: s
    device: H101
    devices_per_node: 8
    link_bandwidth_bytes_per_s: 450 GB/s
    link_latency_s: 1 us
    nic_bandwidth_bytes_per_s: 400 Gb/s
    nics_per_node: 8
    nic_latency_s: 2 us
    host_memory_bytes: 2 TiB
    pcie_bandwidth_bytes_per_s: 64 GB/s
"""
    with pytest.raises(ConfigError, match="H100-SXM5-80GB") as err:
        read_presets(text, kind="node", file="n.yaml")
    assert err.value.key == "nodes.N.device" and "SN40L" in str(err.value)   # every kind listed
    assert read_presets(text.replace("H101", "h200"), kind="node")["N"].spec.gpu == "H200-SXM-141GB"
    assert read_presets(text.replace("H101", "sn40l"), kind="node")["N"].spec.device == "SN40L"


def test_sn40l_16_node_totals_match_the_published_system_figures():
    node = load_node("SN40L-16")
    rdu = node.device_model()
    tiers = {t.name: t for t in rdu.memory_tiers}
    n = node.devices_per_node
    assert n * tiers["hbm"].capacity_bytes == 2**40                       # 1 TB HBM
    assert n * tiers["ddr"].capacity_bytes == 24 * 2**40                  # 24 TB DDR
    assert n * tiers["sram"].capacity_bytes == rel(16 * 520 * 2**20)      # "8 GB" SRAM
    assert n * tiers["hbm"].bandwidth_bytes_per_s == rel(25.6e12)
    assert n * tiers["ddr"].bandwidth_bytes_per_s == rel(1.6e12)


@pytest.mark.parametrize("kind", ["gpu", "node", "accelerator", "systolic", "pim", "rdu",
                                  "npu_pim"])
def test_presets_command_lists_every_kind(kind):
    from typer.testing import CliRunner

    from clustersim.cli import app

    result = CliRunner().invoke(app, ["presets", "--kind", kind])
    assert result.exit_code == 0, result.output
    expected = {"gpu": "H100", "node": "SN40L-16", "accelerator": "SN40L", "systolic": "TPU-v1",
                "pim": "HBM-PIM", "rdu": "SN40L", "npu_pim": "NeuPIMs-NPU"}[kind]
    assert expected in result.output


def test_presets_command_refuses_a_kind_that_matches_nothing_in_one_line():
    from typer.testing import CliRunner

    from clustersim.cli import app

    result = CliRunner().invoke(app, ["presets", "--kind", "tpu"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "valid kinds: gpu, node, accelerator" in lines[0]
