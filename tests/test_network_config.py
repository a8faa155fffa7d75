"""YAML: describing a leaf-spine cluster and a collective run; bad input named before a run."""

import math

import pytest
import yaml

from clustersim.errors import ConfigError
from clustersim.experiment import load_experiment, run_experiment


def experiment(network=None, workload=None, nodes=8, **top):
    data = {"name": "net", "seed": 1,
            "cluster": {"node": "DGX-H100", "nodes": nodes, "gpus_per_node": 2,
                        "network": {"kind": "leaf_spine", "hosts_per_leaf": 4, "spines": 4,
                                    **(network or {})}},
            "workload": {"kind": "collective", "collective": "all_reduce", "size": "64 MiB",
                         **(workload or {})}, **top}
    return data


def error_for(tmp_path, data) -> ConfigError:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    return info.value


@pytest.mark.parametrize("network, workload, key, words", [
    ({"hosts_per_leaf": 3}, {}, "cluster.network.hosts_per_leaf", ["8 hosts", "divisor"]),
    ({"spines": 16}, {}, "cluster.network.spines", ["16 spines", "8 leaf uplinks"]),
    ({"leaf_uplinks": 6}, {}, "cluster.network.leaf_uplinks", ["multiple of 4"]),
    ({"leaves": 3}, {}, "cluster.network.leaves", ["make 2 leaves"]),
    ({"spine": 4}, {}, "cluster.network.spine", ["did you mean 'spines'"]),
    ({"routing": "teleport"}, {}, "cluster.network.routing.kind", ["'ecmp'", "'spray'", "teleport"]),
    ({"planes": [{"name": "x", "nic": "myrinet"}]}, {}, "cluster.network.planes.0.nic",
     ["'infiniband'", "'roce'", "'ethernet'"]),
    ({"planes": [{"name": "eth", "nic": "ethernet"}]}, {}, "cluster.network.planes.0.nic_bandwidth",
     ["ethernet plane needs"]),
    ({"planes": [{"name": "ib", "nodes": "0-3"}]}, {}, "cluster.network.planes",
     ["node 4 is attached to no network plane"]),
    ({"planes": [{"name": "ib", "nodes": "0-3"}, {"name": "roce", "nic": "roce", "nodes": "4-7"}]},
     {}, "cluster.network.planes", ["share no plane", "ethernet"]),
    ({"planes": [{"name": "ib", "nodes": "0-9"}]}, {}, "cluster.network.planes.0.nodes",
     ["node 8 does not exist"]),
    ({}, {"group": ["n0.gpu0", "n9.gpu1"]}, "workload.group", ["'n9.gpu1'", "not in the cluster"]),
    ({}, {"group": "rail:5"}, "workload.group", ["rail 5"]),
    ({}, {"algorithm": "butterfly"}, "workload.algorithm", ["butterfly", "ring", "tree",
                                                            "hierarchical"]),
    ({}, {"routing": "split:x"}, "workload.routing.subflows", ["integer"]),
    ({}, {"algorithm": "halving_doubling", "collective": "reduce_scatter"}, "workload.algorithm",
     ["halving"]),
])
def test_bad_input_names_the_key_and_the_choices(tmp_path, network, workload, key, words):
    error = error_for(tmp_path, experiment(network, workload))
    assert error.key == key, str(error)
    for word in words:
        assert word in str(error), str(error)


def test_a_collective_sweep_over_routing_reports_nccl_bandwidths_and_the_ideal_reference(tmp_path):
    data = experiment({"routing": "ecmp"}, {"collective": "all_to_all"}, nodes=16,
                      sweep={"cluster.network.routing": ["ecmp", "spray", "split:4"]},
                      output={"trace": False, "plots": False, "parquet": False})
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    table = run_experiment(path, out=tmp_path / "out").set_index("routing")
    assert list(table.index) == ["ecmp", "spray", "split:4"]
    assert (table["status"] == "ok").all()
    n = 32
    for row in table.itertuples():
        assert math.isclose(row.algbw_bytes_per_s, 64 * 2**20 / row.completion_time_s)
        assert math.isclose(row.busbw_bytes_per_s, row.algbw_bytes_per_s * (n - 1) / n)
        assert row.time_vs_ideal >= 1 - 1e-9 and row.ideal_max_link_congestion == pytest.approx(1)
    assert table.loc["spray", "time_vs_ideal"] == pytest.approx(1.0)
    assert table.loc["ecmp", "max_link_congestion"] > 1
    again = run_experiment(path, out=tmp_path / "again").set_index("routing")
    assert again["completion_time_s"].tolist() == table["completion_time_s"].tolist()
