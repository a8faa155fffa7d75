"""Serving workloads for the tests, built from keyword paths (``scheduler__policy="chunked"``
sets ``workload["scheduler"]["policy"]``) on top of a small LLaMA-2-7B request mix."""

from __future__ import annotations

from clustersim.workloads.serving.workload import ServingWorkload


def serving_workload(*, count=60, rate=30.0, prompt=(100, 900), output=(20, 300), arrival=None,
                     **spec) -> ServingWorkload:
    base = {"model": "llama2-7b",
            "requests": {"count": count, "arrival": arrival or {"kind": "poisson", "rate": rate},
                         "prompt_tokens": {"kind": "uniform", "min": prompt[0], "max": prompt[1]},
                         "output_tokens": {"kind": "uniform", "min": output[0],
                                           "max": output[1]}}}
    for key, value in spec.items():
        target = base
        *path, last = key.split("__")
        for part in path:
            target = target.setdefault(part, {})
        target[last] = value
    return ServingWorkload.model_validate(base)
