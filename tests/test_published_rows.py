"""The shipped published rows are the configurations their sources give: every row expands into
one valid run, and the Megatron-LM 2021 Table 1 rows satisfy the table's own arithmetic."""

import math

from clustersim.experiment import expand
from clustersim.validate.published import load_published

SHIPPED = "experiments/published_results.yaml"
# Table 1's "Number of parameters (billion)" column
TABLE1_PARAMS = {"megatron2021-t1-1.7b": 1.7, "megatron2021-t1-3.6b": 3.6, "megatron2021-t1-7.5b": 7.5,
                 "megatron2021-t1-18b": 18.4, "megatron2021-t1-39b": 39.1, "megatron2021-t1-76b": 76.1,
                 "megatron2021-t1-145b": 145.6, "megatron2021-t1-310b": 310.1,
                 "megatron2021-t1-530b": 529.6, "megatron2021-t1-1t": 1008.0}


def test_every_shipped_row_is_one_configuration():
    spec = load_published(SHIPPED)
    names = [r.name for r in spec.rows]
    assert len(names) == len(set(names))
    for row in spec.rows:
        assert len(expand({"name": row.name, **row.experiment}, file=SHIPPED)) == 1


def test_megatron_table1_rows_use_8_gpus_per_node_and_whole_micro_batches():
    rows = [r for r in load_published(SHIPPED).rows if r.name.startswith("megatron2021-t1-")]
    assert len(rows) == 10  # 1.7B ... 1T
    for row in rows:
        work, par = row.experiment["workload"], row.experiment["workload"]["parallel"]
        gpus = 8 * row.experiment["cluster"]["nodes"]
        assert par["tp"] * par["pp"] * par["dp"] == gpus
        assert work["global_batch_size"] % (work["micro_batch_size"] * par["dp"]) == 0
        model = work["model"]
        # the paper's parameter count (its eq. 2, V = 51,200) within 3 % of the table's size
        # (1.7B is 1.65B rounded to a tenth)
        h, layers = model["hidden_size"], model["num_layers"]
        params = 12 * layers * h * h * (1 + 13 / (12 * h) + (51200 + 2048) / (12 * layers * h))
        assert layers % par["pp"] == 0
        assert math.isclose(params, TABLE1_PARAMS[row.name] * 1e9, rel_tol=0.03)


# llm-foundry's A100-80GB table: NumParams, MFU (%) and GradAccum of each shipped row
LLM_FOUNDRY = {"mpt-1b-s2048": (1315950592, 59.86, 4), "mpt-3b-s2048": (2651837440, 62.11, 2),
               "mpt-7b-s2048": (6658859008, 64.23, 2), "mpt-13b-s2048": (12853954560, 59.57, 3),
               "mpt-30b-s2048": (29975214080, 55.3, 21), "mpt-7b-s4096": (6667247616, 54.84, 2),
               "mpt-13b-s4096": (12864440320, 57.62, 3)}


# ... and of the "H100 80GB BF16" table
LLM_FOUNDRY_H100 = {"mpt-1b-s2048": (1315950592, 41.82, 1), "mpt-7b-s2048": (6658859008, 46.44, 1),
                    "mpt-13b-s4096": (12864440320, 41.6, 3), "mpt-30b-s2048": (29975214080, 38.11, 21)}
PEAK_BF16 = {"a100": 312e12, "h100": 989e12}   # the README's GPU_AVAILABLE_FLOPS (dense bf16)


def test_llm_foundry_rows_satisfy_the_tables_own_arithmetic():
    from clustersim.workloads.models import ModelConfig

    rows = [r for r in load_published(SHIPPED).rows if r.name.startswith("llm-foundry-")]
    assert len(rows) == len(LLM_FOUNDRY) + len(LLM_FOUNDRY_H100)
    for row in rows:
        gpu = row.name.split("-")[2]
        table = LLM_FOUNDRY if gpu == "a100" else LLM_FOUNDRY_H100
        params, mfu, accum = table[row.name.removeprefix(f"llm-foundry-{gpu}-80gb-")
                                   .removesuffix("-8gpu")]
        work = row.experiment["workload"]
        gpus = 8 * row.experiment["cluster"]["nodes"]
        assert work["global_batch_size"] == work["micro_batch_size"] * accum * gpus
        model = ModelConfig.from_dict(work["model"])
        assert math.isclose(model.params_total, params, rel_tol=1e-3)
        # the README's MFU: (6 N + 12 L d s) FLOPs per token over the GPU's dense bf16 peak
        s, layers, d = work["seq_len"], model.num_layers, model.hidden_size
        tokens_s = mfu / 100 * gpus * PEAK_BF16[gpu] / (6 * params + 12 * layers * d * s)
        assert math.isclose(tokens_s, row.published.value, rel_tol=5e-3)


def test_llm_foundry_sequence_sweep_rows_are_the_runs_they_cite():
    """experiments/llm_foundry_seq_sweep.yaml: one run per row, NumParams of the cited row (it
    grows with max_seq_len through the learned positions), the batch arithmetic, and the same
    software settings as the shipped llm-foundry rows."""
    import re

    from clustersim.workloads.models import ModelConfig

    spec = load_published("experiments/llm_foundry_seq_sweep.yaml")
    shipped = {r.name: r for r in load_published(SHIPPED).rows}
    kernels = shipped["llm-foundry-a100-80gb-mpt-7b-s4096-8gpu"].experiment["workload"]["kernels"]
    assert len(spec.rows) == 13
    for row in spec.rows:
        assert len(expand({"name": row.name, **row.experiment}, file="sweep")) == 1
        work = row.experiment["workload"]
        params = int(re.search(r"NumParams (\d+)", row.source.where).group(1))
        assert math.isclose(ModelConfig.from_dict(work["model"]).params_total, params, rel_tol=1e-3)
        mb = int(re.search(r"-mb(\d+)$", row.name).group(1))
        accum = int(re.search(r"(\d+) gradient accumulations", row.notes).group(1))
        assert work["micro_batch_size"] == mb
        assert work["global_batch_size"] == mb * accum * 8
        assert work["kernels"] == kernels and work["zero_reduce_dtype"] == "bf16"
