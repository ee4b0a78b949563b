"""Exact linear sum assignment (the Hungarian problem), batched, on CPU and CUDA.

``linear_sum_assignment`` follows ``scipy.optimize.linear_sum_assignment``: it returns the rows
(ascending) and the columns of a minimum-cost (or, with ``maximize``, maximum-cost) matching of
size K = min(N, M). ``+inf`` forbids a pair; NaN and ``-inf`` are invalid (with ``maximize`` the
matrix is negated first, so ``-inf`` forbids and ``+inf`` is invalid, as in SciPy); a matrix with
no complete matching avoiding the forbidden pairs is infeasible. Both raise ``ValueError`` with
SciPy's messages.

The solver is a shortest-augmenting-path algorithm (Jonker-Volgenant initialisation on square
problems, Dijkstra searches with Crouse's rectangular handling), in C++ on the CPU (parallel over
the problems of a batch) and one thread block per problem on the GPU. It is not differentiable:
inputs are detached.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch

from pyvision_ops._extension import ops, register_when_loaded
from pyvision_ops.ops._fake import register_fake

__all__ = ["linear_sum_assignment"]


_FLOATS = (torch.float32, torch.float64)


def _as_cost(cost: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(cost, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(cost).__name__}")
    cost = cost.detach()
    if cost.dtype in _FLOATS:
        return cost
    if cost.dtype == torch.bool or cost.is_complex():
        raise TypeError(f"{name} must be a real floating or integer tensor, got dtype {cost.dtype}")
    if cost.is_floating_point():  # float16 / bfloat16: solved exactly in float32
        return cost.to(torch.float32)
    # integer costs: float64 holds every integer up to 2^53 exactly
    return cost.to(torch.float64)


def linear_sum_assignment(
    cost: Union[torch.Tensor, Sequence[torch.Tensor]], maximize: bool = False
) -> Union[Tuple[torch.Tensor, torch.Tensor], List[Tuple[torch.Tensor, torch.Tensor]]]:
    """Solve the linear sum assignment problem exactly.

    Parameters
    ----------
    cost : Tensor (N, M) or (B, N, M), or a list of 2-D tensors of different shapes
        float32 or float64 (integer costs are converted to float64 and solved exactly), CPU or
        CUDA. ``+inf`` forbids a pair. A list is solved in one call and gives a list back.
    maximize : bool
        Find a maximum-weight matching instead (SciPy's convention).

    Returns
    -------
    (row_ind, col_ind) : int64 tensors of shape (K,) or (B, K), K = min(N, M), on the cost's
        device, rows ascending; ``cost[row_ind, col_ind].sum()`` is the optimum. For a list, a list
        of such pairs.

    Raises
    ------
    ValueError
        "matrix contains invalid numeric entries" (NaN, or -inf; +inf when maximizing) and
        "cost matrix is infeasible" (no complete matching avoids the forbidden pairs), as SciPy.
    """
    if isinstance(cost, (list, tuple)):
        return _solve_list(cost, bool(maximize))
    cost = _as_cost(cost, "cost")
    if cost.dim() not in (2, 3):
        raise ValueError(
            f"linear_sum_assignment: cost must be 2-D (N, M) or 3-D (B, N, M), got {cost.dim()}-D "
            f"of shape {tuple(cost.shape)}"
        )
    return ops().linear_sum_assignment(cost, bool(maximize))


def _solve_list(costs: Sequence[torch.Tensor], maximize: bool) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    if len(costs) == 0:
        return []
    mats = [_as_cost(c, f"cost[{i}]") for i, c in enumerate(costs)]
    device = mats[0].device
    for i, c in enumerate(mats):
        if c.dim() != 2:
            raise ValueError(
                f"linear_sum_assignment: cost[{i}] must be 2-D (N, M), got {c.dim()}-D of shape {tuple(c.shape)}"
            )
        if c.device != device:
            raise ValueError(
                f"linear_sum_assignment: every cost must be on one device; cost[0] is on {device}, "
                f"cost[{i}] on {c.device}"
            )
    dtype = torch.float64 if any(c.dtype == torch.float64 for c in mats) else torch.float32
    # Sizes stay symbolic under torch.compile/export (no int(): that would specialise them).
    shapes: List[int] = []
    for c in mats:
        shapes += [c.shape[0], c.shape[1]]
    flat = torch.cat([c.reshape(-1).to(dtype) for c in mats])
    rows, cols = ops()._linear_sum_assignment_packed(flat, shapes, maximize)
    sizes = [torch.sym_min(shapes[2 * i], shapes[2 * i + 1]) for i in range(len(mats))]
    return list(zip(rows.split(sizes), cols.split(sizes)))


@register_when_loaded
def _register() -> None:
    """Fake kernels and autograd of the family's operators (they need the compiled schemas)."""

    # --------------------------------------------------------------------------------------------
    # fake kernels: the output shapes depend only on the input shapes
    # --------------------------------------------------------------------------------------------

    @register_fake("pyvision_ops::linear_sum_assignment")
    def _lsa_fake(cost, maximize):
        torch._check(cost.dim() in (2, 3), lambda: f"linear_sum_assignment: cost must be 2-D or 3-D, got {cost.dim()}-D")
        k = torch.sym_min(cost.shape[-2], cost.shape[-1])
        shape = (k,) if cost.dim() == 2 else (cost.shape[0], k)
        return cost.new_empty(shape, dtype=torch.int64), cost.new_empty(shape, dtype=torch.int64)

    @register_fake("pyvision_ops::_linear_sum_assignment_packed")
    def _lsa_packed_fake(costs, shapes, maximize):
        total = sum(torch.sym_min(shapes[2 * i], shapes[2 * i + 1]) for i in range(len(shapes) // 2))
        return costs.new_empty((total,), dtype=torch.int64), costs.new_empty((total,), dtype=torch.int64)

    @register_fake("pyvision_ops::_linear_sum_assignment_team_reference")
    def _lsa_team_fake(cost, maximize):
        return _lsa_fake(cost, maximize)
