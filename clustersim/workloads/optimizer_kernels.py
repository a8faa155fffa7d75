"""The kernels of one optimizer step (AdamW on fp32 master weights), as frameworks launch them.

Fidelity: analytical (bytes per parameter of each pass; the device times each as a
memory-bound op).

Three forms, per parameter of this rank's shard (``wb``: bytes of the working weight dtype,
``gb``: bytes of the gradient handed to the optimizer):

* fused (apex ``FusedAdam`` / multi-tensor Adam writing the working copy in the same pass):
  reads grad, master, m, v and writes master, m, v and the working weight, ``gb + 12`` read and
  ``12 + wb`` written (30 bytes with fp32 gradients and bf16 weights);
* unfused (``torch.optim.AdamW(foreach=False)``): 8 kernels and a copy, 86 bytes;
* Megatron-LM 2021's ``Float16OptimizerWithFloat16Params`` around apex ``FusedAdam``
  (NVIDIA/Megatron-LM de7dc40f88, ``megatron/optimizer/optimizer.py``): ``step()`` (line 377)
  first casts every fp16 model gradient to a new fp32 main gradient
  (``_copy_model_grads_to_main_grads``, line 303: ``model_param.grad.float()``, reads ``wb``
  writes 4), unscales them and checks for inf/nan (line 335,
  ``torch._amp_foreach_non_finite_check_and_unscale_``, reads 4 writes 4; run with the static
  loss scale of the paper's scripts too), takes their global L2 norm for ``--clip-grad 1.0``
  (``clip_grads.py`` ``multi_tensor_l2norm``, reads 4), runs ``FusedAdam`` (reads grad, master,
  m, v: 16; writes master, m, v: 12) and then copies the fp32 masters into the fp16 model
  weights (line 419 -> ``_multi_tensor_copy_this_to_that``, reads 4 writes ``wb``): 52 bytes per
  parameter with fp16 weights. The clip itself (a second read and write of the fp32 gradients)
  runs only when the norm exceeds the threshold and is not counted.
"""

from __future__ import annotations

from clustersim.ops import Op, OpKind, dtype_bytes

# Unfused AdamW, per parameter (fp32 bytes read, written) of each kernel torch launches:
# decay p (4, 4); m.lerp_(g) (8, 4); v.mul_ (4, 4); v.addcmul_(g, g) (8, 4); sqrt(v) (4, 4);
# / bias correction (4, 4); + eps (4, 4); p.addcdiv_(m, denom) (12, 4); and the copy of the master
# weight into the working weight (4, eb).
_UNFUSED_ADAM_PASSES = ((4, 4), (8, 4), (4, 4), (8, 4), (4, 4), (4, 4), (4, 4), (12, 4))


def _pass(name: str, n: int, read: float, written: float, flops: float, labels: dict) -> Op:
    return Op(OpKind.OPTIMIZER, flops=float(flops) * n, bytes_read=float(read) * n,
              bytes_written=float(written) * n, dtype="fp32", shape=(n,), name=name,
              labels=dict(labels))


def adam_ops(params: float, *, weight_dtype: str = "bf16", grad_dtype: str = "fp32",
             fused: bool = True, fp16_optimizer_passes: bool = False,
             ddp_bucket_copies: bool = False, **labels) -> list[Op]:
    """AdamW on ``params`` parameters with fp32 master weights and states (module docstring).

    ``fp16_optimizer_passes``: Megatron-LM 2021's mixed-precision wrapper (model gradients in
    ``weight_dtype`` cast to fp32, unscaled, normed; apex FusedAdam; weight copy back).
    ``ddp_bucket_copies``: torch DDP's copies of each ``weight_dtype`` gradient into its bucket
    before the all-reduce and back after it (``reducer.cpp`` ``mark_variable_ready_dense``:
    ``bucket_view.copy_(grad)``, and the copy-out when the bucket finishes; no copies since
    ``gradient_as_bucket_view``). They run on the compute stream, in the backward pass and at its
    end; they are listed here, with the step's other per-parameter passes, at the same cost."""
    n, wb, gb = max(int(params), 1), dtype_bytes(weight_dtype), dtype_bytes(grad_dtype)
    copies = ([_pass("ddp.copy_into_bucket", n, wb, wb, 0, labels),
               _pass("ddp.copy_out_of_bucket", n, wb, wb, 0, labels)] if ddp_bucket_copies else [])
    return copies + _adam(n, wb, gb, fused, fp16_optimizer_passes, labels)


def _adam(n: int, wb: int, gb: int, fused: bool, fp16_optimizer_passes: bool,
          labels: dict) -> list[Op]:
    if fp16_optimizer_passes:
        return [_pass("optimizer.grad_to_fp32", n, wb, 4, 0, labels),
                _pass("optimizer.unscale_check_inf", n, 4, 4, 2, labels),
                _pass("optimizer.grad_norm", n, 4, 0, 2, labels),
                _pass("adam", n, 16, 12, 10, labels),
                _pass("optimizer.copy_to_model", n, 4, wb, 0, labels)]
    if fused:
        return [_pass("adam", n, gb + 12, 12 + wb, 10, labels)]
    out = [_pass(f"adam.pass{i}", n, r, w, 1, labels)
           for i, (r, w) in enumerate(_UNFUSED_ADAM_PASSES)]
    # the passes that touch the gradient read it in its own dtype
    out[1] = _pass("adam.pass1", n, 4 + gb, 4, 1, labels)
    out[3] = _pass("adam.pass3", n, 4 + gb, 4, 1, labels)
    out.append(_pass("adam.copy_weights", n, 4, wb, 0, labels))
    return out
