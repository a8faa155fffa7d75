"""Expert-parallel MoE inference: each iteration's batch routing sets the all-to-all.

Fidelity: event-level. DeepSeek-V3's serving layout (DeepSeek-AI 2024, section 3.4): attention
data parallel (each of the ``ep`` GPUs holds ``batch_size`` sequences and their KV), routed
experts split over the ``ep`` GPUs, dispatch and combine all-to-allv per layer. One prefill
iteration (``prompt_len`` tokens per sequence) then ``output_len`` decode iterations (one token
per sequence), chained on the engine; every iteration draws its own routing for its tokens
(``EPPlan`` with one "micro-batch" per iteration), so the per-pair bytes of each all-to-all and
the expert GEMMs of each GPU follow that batch's skew. Attention per GPU is timed from its ops
(QKV, the attention core against the growing context, the output projection, norms, router).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clustersim import ops
from clustersim.sim.engine import Simulation
from clustersim.sim.program import Program
from clustersim.workloads.models import ModelConfig
from clustersim.workloads.moe import expert_ops
from clustersim.workloads.moe.ep_layer import EPOptions, EPPlan
from clustersim.workloads.moe.metrics import ep_metrics


def attention_s(model: ModelConfig, device, *, batch: int, q_len: int, context: int,
                dtype: str) -> float:
    m, t, h = model, batch * q_len, model.hidden_size
    work = [ops.matmul(t, m.q_dim + 2 * m.kv_dim, h, dtype=dtype, shared_b=True),
            ops.attention(batch, m.num_heads, m.num_kv_heads, q_len, context, m.head_dim,
                          dtype=dtype, causal=q_len > 1),
            ops.matmul(t, h, m.q_dim, dtype=dtype, shared_b=True),
            ops.elementwise(t * h, inputs=2, dtype=dtype, name="norms_residuals"),
            ops.matmul(t, m.num_experts, h, dtype=dtype, shared_b=True, name="router")]
    return expert_ops.time_s(device, work)


def run_ep_inference(model: ModelConfig, cluster, *, ep: int, batch: int, prompt_len: int,
                     output_len: int, dtype: str, options: EPOptions,
                     rng: np.random.Generator) -> dict[str, Any]:
    iterations = 1 + output_len

    def tokens_of(iteration: int) -> int:
        return batch * (prompt_len if iteration == 0 else 1)

    plan = EPPlan(model, tp=1, dp=ep, ep=ep, micro_batch=batch, seq_len=prompt_len, dtype=dtype,
                  options=options, cluster=cluster, device_of=lambda s, t, d: d, rng=rng,
                  tokens_of=tokens_of)
    device = cluster.devices[0]
    program = Program()
    for name in cluster.names:
        program.device(name)
    last: dict[tuple[int, int], int] = {}
    ends: list[list[int]] = []
    for it in range(iterations):
        q_len = prompt_len if it == 0 else 1
        context = prompt_len if it == 0 else prompt_len + it
        attn = attention_s(model, device, batch=batch, q_len=q_len, context=context, dtype=dtype)
        for layer in range(model.num_layers):
            deps = {}
            for r in range(ep):
                deps[(0, r)] = [program.compute(r, "compute", f"attention L{layer}", attn,
                                                deps=[last[(0, r)]] if (0, r) in last else [],
                                                labels={"iteration": it, "layer": layer})]
            last = plan.emit(program, stage=0, tp_ranks=[0], group_first=0, layer=layer,
                             microbatch=it, phase="fwd", dgrad=True, wgrad=True, deps=deps,
                             labels={"iteration": it})
        ends.append(list(last.values()))
    kwargs = cluster.simulation_kwargs()
    kwargs.pop("memory")
    sim = Simulation(**kwargs, record_trace=True)
    sim.run_program(program)
    end_of = {task: end for task, _, end in sim.recorder.spans}
    finish = [max(end_of[t] for t in ids) for ids in ends]
    steps = np.diff([0.0] + finish)
    metrics = {"ttft_s": finish[0], "tpot_s": float(np.mean(steps[1:])) if output_len else 0.0,
               "tokens_per_s": ep * batch * output_len / (finish[-1] - finish[0])
               if output_len else 0.0}
    metrics.update(ep_metrics(plan, sim, program, cluster))
    return metrics
