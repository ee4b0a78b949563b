"""Op family 5: linear_sum_assignment (exact Hungarian matching, DETR's matcher).

Oracle: ``scipy.optimize.linear_sum_assignment`` on float64 NumPy copies. Ties allow several
optimal assignments, so totals are compared, never the indices (except where a test builds a
matrix whose optimum is unique). Every result is also checked on its own: int64, shape (K,) or
(B, K) with K = min(N, M), rows strictly ascending, columns distinct, all in range, no forbidden
pair chosen, on the cost's device, and the caller's tensor untouched.

Tolerances (the contract): float64 (and integer) costs within 1e-9 of the optimum, relative;
float32 within 1e-5 * K * max|c|. Totals are summed exactly (``math.fsum``) so that the
comparison does not add rounding of its own.

Three implementations are held to the same cases: the public op on the CPU, the public op on
CUDA (skipped without a GPU), and ``_linear_sum_assignment_team_reference`` -- the GPU kernel's
algorithm run sequentially on the CPU, so the CPU suite exercises the code the GPU runs. Each
registered op (dense/batched, the packed list form, the team reference) also passes the shared
contract (tests/contract.py), and every CPU test runs on the vectorised and the portable kernels
(tests/conftest.py).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_linear_sum_assignment

import pyvision_ops
from pyvision_ops.ops import assign as assign_ops
from contract import BadInput, EmptyCase, OpContract, Sample
from references.assign import as_numpy64, exact_sum, scipy_total
from conftest import (
    DEVICES,
    ERRORS,
    assert_unchanged,
    needs_cuda,
    poison_allocator,
    sync,
)

ops = torch.ops.pyvision_ops
INF = float("inf")
NAN = float("nan")
INFEASIBLE = "cost matrix is infeasible"
INVALID = "matrix contains invalid numeric entries"

Assignment = Tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------------------------
# the implementations under test
# --------------------------------------------------------------------------------------------


class Solver:
    """One implementation on one device: ``solver(cost, maximize)`` returns (row_ind, col_ind)."""

    def __init__(self, kind: str, device: str) -> None:
        self.kind = kind
        self.device = torch.device(device)

    def __call__(self, cost: torch.Tensor, maximize: bool = False) -> Assignment:
        if self.kind == "team_reference":
            # The private op takes float32/float64 only; the public layer's conversion first.
            return ops._linear_sum_assignment_team_reference(assign_ops._as_cost(cost, "cost"), maximize)
        return pyvision_ops.linear_sum_assignment(cost, maximize=maximize)

    def __repr__(self) -> str:
        return f"Solver({self.kind!r}, {str(self.device)!r})"


SOLVERS = [
    pytest.param(("op", "cpu"), id="cpu"),
    pytest.param(("op", "cuda"), id="cuda", marks=needs_cuda),
    pytest.param(("team_reference", "cpu"), id="team_reference"),
]


@pytest.fixture(params=SOLVERS)
def solver(request: pytest.FixtureRequest) -> Solver:
    return Solver(*request.param)


@pytest.fixture
def gen() -> torch.Generator:
    """A private generator seeded from conftest's per-test seed: fresh inputs, replayable."""
    return torch.Generator().manual_seed(torch.initial_seed())


# --------------------------------------------------------------------------------------------
# oracle and checks
# --------------------------------------------------------------------------------------------


def solve_dtype(cost: torch.Tensor) -> torch.dtype:
    """The precision the solver works in: float64 for float64 and integer costs, else float32."""
    return torch.float64 if cost.dtype == torch.float64 or not cost.is_floating_point() else torch.float32


def total_tolerance(cost: torch.Tensor, expected: float) -> float:
    matrix = as_numpy64(cost)
    k = min(matrix.shape)
    finite = np.abs(matrix[np.isfinite(matrix)])
    largest = float(finite.max()) if finite.size else 0.0
    if solve_dtype(cost) == torch.float32:
        return 1e-5 * k * largest
    # 1e-9 relative; the tiny absolute part only matters when the optimum itself is ~0 while the
    # entries are not (an integer optimum of 0 still has to be hit exactly: any miss is >= 1).
    return 1e-9 * abs(expected) + 1e-13 * k * largest


def check_valid(cost: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, maximize: bool) -> float:
    """Assert that (rows, cols) is a complete assignment of the 2-D ``cost`` avoiding forbidden
    pairs, in the contract's format; return its exact total on the original values."""
    n, m = cost.shape
    k = min(n, m)
    for name, index in (("row_ind", rows), ("col_ind", cols)):
        assert isinstance(index, torch.Tensor), f"{name} is a {type(index).__name__}"
        assert index.dtype == torch.int64, f"{name} dtype {index.dtype}, expected torch.int64"
        assert index.device == cost.device, f"{name} on {index.device}, cost on {cost.device}"
        assert tuple(index.shape) == (k,), f"{name} shape {tuple(index.shape)}, expected ({k},) for cost {n}x{m}"
        assert not index.requires_grad, f"{name} requires grad"
    r, c = rows.cpu(), cols.cpu()
    assert bool(((r >= 0) & (r < n)).all()), f"row_ind out of range [0, {n}): {r.tolist()[:20]}"
    assert bool(((c >= 0) & (c < m)).all()), f"col_ind out of range [0, {m}): {c.tolist()[:20]}"
    assert bool((r[1:] > r[:-1]).all()), f"row_ind not strictly ascending: {r.tolist()[:20]}"
    assert len(set(c.tolist())) == k, f"col_ind has repeated columns: {c.tolist()[:20]}"
    chosen = as_numpy64(cost)[r.numpy(), c.numpy()]
    forbidden = -INF if maximize else INF
    assert not bool(np.any(chosen == forbidden)), f"a forbidden ({forbidden}) pair was chosen"
    assert bool(np.all(np.isfinite(chosen))), f"non-finite chosen costs: {chosen[~np.isfinite(chosen)][:5]}"
    return exact_sum(chosen.tolist())


def check_optimal(
    cost: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    maximize: bool = False,
    tolerance: Optional[float] = None,
) -> float:
    """Valid, and the total equals SciPy's optimum within the contract's tolerance; returns it."""
    ours = check_valid(cost, rows, cols, maximize)
    expected = scipy_total(cost, maximize)
    tol = total_tolerance(cost, expected) if tolerance is None else tolerance
    assert abs(ours - expected) <= tol, (
        f"{'max' if maximize else 'min'} total {ours!r}, SciPy's optimum {expected!r} "
        f"(|difference| {abs(ours - expected):.3g} > tolerance {tol:.3g}); cost {tuple(cost.shape)} {cost.dtype}"
    )
    return ours


def solve_checked(solver, cost: torch.Tensor, maximize: bool = False, tolerance: Optional[float] = None):
    """Solve a 2-D or 3-D ``cost``, check every problem against the oracle and that ``cost`` is
    unchanged; return the per-problem totals (a float for 2-D, a list for 3-D)."""
    before = cost.detach().clone()
    rows, cols = solver(cost, maximize)
    sync(cost.device)
    assert_unchanged(before, cost.detach())
    if cost.dim() == 2:
        return check_optimal(cost, rows, cols, maximize, tolerance)
    k = min(cost.shape[1], cost.shape[2])
    for name, index in (("row_ind", rows), ("col_ind", cols)):
        expected = (cost.shape[0], k)
        assert tuple(index.shape) == expected, f"{name} shape {tuple(index.shape)}, expected {expected}"
    return [check_optimal(cost[b], rows[b], cols[b], maximize, tolerance) for b in range(cost.shape[0])]


def expect_value_error(fn, tensors: Sequence[torch.Tensor], match: str):
    """``fn()`` raises ValueError (SciPy's type, not RuntimeError) matching ``match`` and leaves
    ``tensors`` untouched, with no sticky asynchronous CUDA error behind."""
    before = [t.detach().clone() for t in tensors]
    with pytest.raises(ValueError, match=match):
        fn()
        sync(tensors[0].device)
    for b, t in zip(before, tensors):
        assert_unchanged(b, t.detach())
    sync(tensors[0].device)


def shape_id(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def make_cost(kind: str, shape: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    """A float64 CPU cost matrix (or batch) of one of the families below."""
    shape = tuple(shape)
    if kind == "uniform":
        return torch.rand(shape, generator=gen, dtype=torch.float64)
    if kind == "signed":  # negative costs too: no solver may assume c >= 0
        return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * 100
    if kind == "ties":  # integers 0..4: many optimal assignments, many equal reduced costs
        return torch.randint(0, 5, shape, generator=gen).to(torch.float64)
    if kind == "all_equal":
        return torch.full(shape, -3.25, dtype=torch.float64)
    if kind == "wide_range":  # magnitudes 1e-7 .. 1e7 in one matrix
        return torch.exp(torch.randn(shape, generator=gen, dtype=torch.float64) * 5)
    raise ValueError(kind)


def with_forbidden(cost: torch.Tensor, density: float, gen: torch.Generator, value: float = INF) -> torch.Tensor:
    """``cost`` with about ``density`` of its pairs set to ``value``, keeping a random complete
    assignment allowed (so the problem stays feasible)."""
    n, m = cost.shape
    out = cost.clone()
    forbid = torch.rand((n, m), generator=gen) < density
    k = min(n, m)
    rows = torch.randperm(n, generator=gen)[:k]
    cols = torch.randperm(m, generator=gen)[:k]
    forbid[rows, cols] = False
    out[forbid] = value
    return out


KINDS = ["uniform", "signed", "ties", "all_equal", "wide_range"]
# 1xM / Nx1, tiny, square, DETR's tall (queries x targets) and its transpose, odd sizes, and one
# size beyond a few hundred elements per side of the working arrays.
SHAPES = [(1, 1), (1, 7), (7, 1), (2, 2), (5, 5), (3, 8), (8, 3), (100, 20), (20, 100), (37, 53), (64, 64), (150, 149)]


# --------------------------------------------------------------------------------------------
# API surface
# --------------------------------------------------------------------------------------------


def test_exported_and_registered():
    assert pyvision_ops.linear_sum_assignment is assign_ops.linear_sum_assignment
    for name in ("linear_sum_assignment", "_linear_sum_assignment_packed", "_linear_sum_assignment_team_reference"):
        assert hasattr(ops, name), f"torch.ops.pyvision_ops.{name} is not registered"


def test_default_is_minimize():
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
    rows, cols = pyvision_ops.linear_sum_assignment(cost)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]  # SciPy's documented example: 5
    rows, cols = pyvision_ops.linear_sum_assignment(cost, maximize=True)
    assert float(cost[rows, cols].sum()) == 11.0


# --------------------------------------------------------------------------------------------
# optimality against SciPy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_scipy_float64(kind, shape, maximize, solver, gen):
    cost = make_cost(kind, shape, gen).to(solver.device)
    total = solve_checked(solver, cost, maximize)
    if kind == "all_equal":
        assert total == -3.25 * min(shape)


@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 5), (8, 3), (3, 8), (100, 20), (64, 64), (150, 149)], ids=shape_id)
@pytest.mark.parametrize("kind", ["uniform", "signed", "ties", "wide_range"])
def test_float32_within_contract_tolerance(kind, shape, maximize, solver, gen):
    """Compared with SciPy's float64 optimum of the same (float32-representable) values."""
    cost = make_cost(kind, shape, gen).to(device=solver.device, dtype=torch.float32)
    solve_checked(solver, cost, maximize)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_half_costs_are_solved_in_float32(dtype, device, gen):
    cost = make_cost("uniform", (40, 30), gen).to(device=device, dtype=dtype)
    solve_checked(Solver("op", device), cost)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8], ids=str)
@pytest.mark.parametrize("shape", [(6, 6), (30, 12), (12, 30), (64, 64)], ids=shape_id)
def test_integer_costs_are_exact(shape, dtype, solver, gen):
    low = 0 if dtype == torch.uint8 else -50
    cost = torch.randint(low, 100, shape, generator=gen).to(device=solver.device, dtype=dtype)
    for maximize in (False, True):
        # tolerance 0: integer optima are exact in float64
        solve_checked(solver, cost, maximize, tolerance=0.0)


@pytest.mark.parametrize("shape", [(6, 6), (20, 20), (9, 4), (4, 9)], ids=shape_id)
def test_unique_optimum_gives_exact_indices(shape, solver, gen):
    """A planted assignment of cost < 0.01 per pair among pairs costing >= 1: it is the only
    optimum (any other complete assignment uses at least one pair >= 1 > K * 0.01), so the
    indices themselves are determined, not just the total."""
    n, m = shape
    k = min(n, m)
    cost = 1 + torch.rand(shape, generator=gen, dtype=torch.float64)
    planted_rows = torch.randperm(n, generator=gen)[:k]
    planted_cols = torch.randperm(m, generator=gen)[:k]
    cost[planted_rows, planted_cols] = torch.rand(k, generator=gen, dtype=torch.float64) * 0.01
    order = torch.argsort(planted_rows)
    rows, cols = solver(cost.to(solver.device))
    assert rows.cpu().tolist() == planted_rows[order].tolist()
    assert cols.cpu().tolist() == planted_cols[order].tolist()
    # and the same under maximize of the negated matrix
    rows, cols = solver(-cost.to(solver.device), True)
    assert rows.cpu().tolist() == planted_rows[order].tolist()
    assert cols.cpu().tolist() == planted_cols[order].tolist()


def test_many_small_random_problems(solver, gen):
    """Fuzz: 300 small problems of random shape, cost family, forbidden density and direction,
    feasible or not. Ours must agree with SciPy on each: the same optimum, or the same error."""
    for trial in range(300):
        n, m = (int(v) for v in torch.randint(1, 11, (2,), generator=gen))
        kind = KINDS[int(torch.randint(0, len(KINDS), (1,), generator=gen))]
        maximize = bool(torch.randint(0, 2, (1,), generator=gen))
        cost = make_cost(kind, (n, m), gen)
        density = float(torch.rand((), generator=gen)) * 0.8
        cost[torch.rand((n, m), generator=gen) < density] = -INF if maximize else INF  # may be infeasible
        try:
            scipy_linear_sum_assignment(cost.numpy(), maximize=maximize)
        except ValueError as error:
            assert INFEASIBLE in str(error)
            expect_value_error(lambda: solver(cost.to(solver.device), maximize), [cost], INFEASIBLE)
            continue
        try:
            solve_checked(solver, cost.to(solver.device), maximize)
        except (AssertionError, ValueError) as error:
            raise AssertionError(f"trial {trial}: {kind} {n}x{m} maximize={maximize}\n{cost}\n{error}") from error


@pytest.mark.parametrize("kind", ["uniform", "ties", "wide_range"])
@pytest.mark.parametrize("shape", [(300, 300), (300, 120)], ids=shape_id)
def test_medium_problems(kind, shape, solver, gen):
    cost = make_cost(kind, shape, gen).to(solver.device)
    solve_checked(solver, cost, maximize=False)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["uniform", "integer_0_100"])
def test_large_1000x1000(kind, solver, gen):
    """The benchmark's single-problem sizes."""
    size = 1000
    if kind == "uniform":
        cost = torch.rand((size, size), generator=gen, dtype=torch.float64)
    else:  # degenerate: ~size/100 zeros per row, optimum 0
        cost = torch.randint(0, 100, (size, size), generator=gen).to(torch.float64)
    total = solve_checked(solver, cost.to(solver.device), tolerance=None)
    if kind == "integer_0_100":
        assert total == scipy_total(cost)  # exact


# --------------------------------------------------------------------------------------------
# numerically hard values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
@pytest.mark.parametrize("shape", [(40, 40), (25, 60), (60, 25)], ids=shape_id)
def test_huge_finite_costs_are_avoided(shape, maximize, solver, gen):
    """1e30 (finite) on ~30% of the pairs, uniform [0, 1) elsewhere: the optimum avoids every
    1e30 pair, so its total is small and must be hit to 1e-9 (potentials near 1e30 must not
    swallow the small costs). Oracle: the same matrix with those pairs forbidden instead (an
    allowed assignment avoiding them exists, and any assignment using one costs more than any
    that avoids them), so the oracle never computes with 1e30."""
    sign = -1.0 if maximize else 1.0
    small = torch.rand(shape, generator=gen, dtype=torch.float64)
    cost = sign * with_forbidden(small, 0.3, gen, value=1e30)
    expected = scipy_total(torch.where(cost.abs() == 1e30, sign * INF, cost), maximize)
    assert abs(expected) < min(shape)  # the case is what it claims to be
    assert scipy_total(cost, maximize) == pytest.approx(expected, rel=1e-12)
    rows, cols = solver(cost.to(solver.device), maximize)
    ours = check_valid(cost.to(solver.device), rows, cols, maximize)
    assert abs(ours - expected) <= 1e-9 * abs(expected), f"total {ours!r}, optimum {expected!r}"


@pytest.mark.xfail(
    reason="known limitation: once a row of 1e30 costs enters the search, c - v rounds to the same "
    "value for every column (1e30's ulp is 1.4e14) and the other rows' small differences are lost; "
    "only the total within 1e-9 relative (the contract) is guaranteed. SciPy loses them too, less "
    "often (3 of 80 seeded cases vs 42 of 80, measured 2026-12-02)",
    strict=False,
)
@pytest.mark.parametrize("shape", [(30, 30), (30, 45)], ids=shape_id)
def test_huge_cost_row_keeps_the_rest_exact(shape, solver, gen):
    """Row 0 costs 1e30 everywhere, so every complete assignment pays exactly one 1e30 there;
    the remaining rows must still be solved optimally. Their optimum is SciPy's on cost[1:]
    alone (row 0 then takes any column left over, all equal), an oracle that never sees 1e30."""
    cost = torch.rand(shape, generator=gen, dtype=torch.float64)
    cost[0] = 1e30
    rest_expected = scipy_total(cost[1:])
    rows, cols = solver(cost.to(solver.device))
    check_valid(cost.to(solver.device), rows, cols, False)
    r, c = rows.cpu(), cols.cpu()
    assert r[0].item() == 0, "row 0 must be assigned (N <= M)"
    rest = exact_sum(cost[r[1:], c[1:]].tolist())
    assert abs(rest - rest_expected) <= 1e-9 * rest_expected, f"rows 1..: total {rest!r}, optimum {rest_expected!r}"


@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
@pytest.mark.parametrize("shape", [(8, 8), (50, 50), (20, 35), (35, 20)], ids=shape_id)
def test_integers_near_2_pow_53_are_exact(shape, maximize, solver, gen):
    """Integers in [2^53 - 2^21, 2^53 - 2^20): every value exact in float64, sums are not. The
    exact optimum is that of the small offsets (every complete assignment picks K entries, so
    the shift by a constant adds exactly K * base): an oracle free of rounding. Our total is
    summed exactly as Python integers."""
    base = 2**53 - 2**21
    offsets = torch.randint(0, 2**20, shape, generator=gen, dtype=torch.int64)
    cost = (offsets + base).to(torch.float64)
    assert bool(((cost.to(torch.int64) - base) == offsets).all())  # representable exactly
    k = min(shape)
    small = offsets.to(torch.float64).numpy()
    r0, c0 = scipy_linear_sum_assignment(small, maximize=maximize)
    expected = int(small[r0, c0].sum()) + k * base
    before = cost.clone()
    rows, cols = solver(cost.to(solver.device), maximize)
    check_valid(cost.to(solver.device), rows, cols, maximize)
    assert_unchanged(before, cost)
    ours = sum(int(v) for v in cost[rows.cpu(), cols.cpu()].to(torch.int64).tolist())
    assert ours == expected, f"exact total {ours}, optimum {expected} (off by {ours - expected})"


# --------------------------------------------------------------------------------------------
# forbidden pairs, infeasible and invalid matrices
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
@pytest.mark.parametrize("density", [0.5, 0.95])
@pytest.mark.parametrize("shape", [(1, 1), (6, 6), (40, 40), (15, 40), (40, 15), (100, 20)], ids=shape_id)
def test_forbidden_pairs_feasible(shape, density, maximize, solver, gen):
    """+inf forbids (-inf under maximize); a complete allowed assignment is planted."""
    forbidden = -INF if maximize else INF
    cost = with_forbidden(make_cost("uniform", shape, gen), density, gen, value=forbidden)
    solve_checked(solver, cost.to(solver.device), maximize)


def test_only_one_assignment_allowed(solver, gen):
    """Every pair forbidden but one permutation: the answer is that permutation."""
    n = 30
    perm = torch.randperm(n, generator=gen)
    for maximize in (False, True):
        cost = torch.full((n, n), -INF if maximize else INF, dtype=torch.float64)
        cost[torch.arange(n), perm] = torch.rand(n, generator=gen, dtype=torch.float64)
        rows, cols = solver(cost.to(solver.device), maximize)
        assert rows.cpu().tolist() == list(range(n))
        assert cols.cpu().tolist() == perm.tolist()


@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
def test_all_forbidden_row_of_a_tall_matrix_is_left_out(maximize, solver, gen):
    """With N > M a row may be unassigned: a row (or, N < M, a column) of forbidden pairs is
    feasible and simply not used."""
    forbidden = -INF if maximize else INF
    tall = make_cost("uniform", (9, 5), gen)
    tall[3] = forbidden
    rows, _ = solver(tall.to(solver.device), maximize)
    assert 3 not in rows.cpu().tolist()
    solve_checked(solver, tall.to(solver.device), maximize)
    wide = make_cost("uniform", (5, 9), gen)
    wide[:, 6] = forbidden
    _, cols = solver(wide.to(solver.device), maximize)
    assert 6 not in cols.cpu().tolist()
    solve_checked(solver, wide.to(solver.device), maximize)


def _infeasible_cases() -> List[Tuple[str, torch.Tensor]]:
    x = INF
    cases = [
        ("1x1", torch.tensor([[x]])),
        ("all_forbidden", torch.full((4, 4), x)),
        ("square_row_forbidden", torch.tensor([[1.0, 2.0, 3.0], [x, x, x], [3.0, 1.0, 2.0]])),
        ("square_column_forbidden", torch.tensor([[1.0, x, 3.0], [2.0, x, 1.0], [3.0, x, 2.0]])),
        ("wide_row_forbidden", torch.tensor([[1.0, 2.0, 3.0, 4.0], [x, x, x, x]])),
        ("tall_column_forbidden", torch.tensor([[1.0, x], [2.0, x], [3.0, x]])),
        # Hall: rows 0-2 may only use columns 0-1 (every row and every column has an allowed pair)
        ("hall_square", torch.tensor([[1.0, 2.0, x, x], [2.0, 1.0, x, x], [3.0, 3.0, x, x], [1.0, 1.0, 1.0, 1.0]])),
        # Hall, wide: two rows share the single column 0
        ("hall_wide", torch.tensor([[1.0, x, x, x, x], [2.0, x, x, x, x], [1.0, 2.0, 3.0, 4.0, 5.0]])),
        # Hall, tall: columns 0 and 1 are both reachable from row 0 only
        ("hall_tall", torch.tensor([[1.0, 2.0, 3.0], [x, x, 1.0], [x, x, 2.0], [x, x, 3.0], [x, x, 4.0]])),
    ]
    big = torch.rand(60, 60) + 1
    big[:, 30:][:45] = x  # 45 rows share the 30 columns 0..29
    cases.append(("hall_60x60", big))
    return cases


INFEASIBLE_CASES = _infeasible_cases()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
@pytest.mark.parametrize("name,matrix", INFEASIBLE_CASES, ids=[name for name, _ in INFEASIBLE_CASES])
def test_infeasible_raises(name, matrix, maximize, dtype, solver):
    # maximize forbids with -inf: negate (finite entries too, so the pattern is the same)
    cost = (-matrix if maximize else matrix).to(device=solver.device, dtype=dtype)
    with pytest.raises(ValueError, match=INFEASIBLE):  # the oracle agrees that it is infeasible
        scipy_linear_sum_assignment(as_numpy64(cost), maximize=maximize)
    expect_value_error(lambda: solver(cost, maximize), [cost], INFEASIBLE)
    # a batch containing it, and a following good call still works (no state left behind)
    good = torch.rand(matrix.shape, dtype=dtype, device=solver.device)
    batch = torch.stack([good, cost, good])
    expect_value_error(lambda: solver(batch, maximize), [batch], INFEASIBLE)
    solve_checked(solver, good, maximize)


def _invalid_cases() -> List[Tuple[str, torch.Tensor, bool]]:
    def with_value(shape, position, value):
        cost = torch.rand(shape, dtype=torch.float64) + 0.5
        cost[position] = value
        return cost

    cases = [
        ("nan", with_value((4, 4), (2, 1), NAN), False),
        ("nan_max", with_value((4, 4), (0, 3), NAN), True),
        ("minus_inf", with_value((4, 4), (1, 1), -INF), False),
        ("plus_inf_under_maximize", with_value((4, 4), (3, 0), INF), True),
        ("nan_1x1", torch.tensor([[NAN]]), False),
        # in a row that an optimal tall solution would not even use: still rejected, as SciPy
        ("nan_tall", with_value((7, 3), (5, 2), NAN), False),
        ("minus_inf_wide", with_value((3, 7), (0, 6), -INF), False),
        ("nan_among_forbidden", torch.tensor([[1.0, INF], [NAN, 2.0]]), False),
    ]
    big = torch.rand(50, 70, dtype=torch.float64)
    big[49, 69] = NAN  # the very last element
    cases.append(("nan_last_element", big, False))
    return cases


INVALID_CASES = _invalid_cases()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name,matrix,maximize", INVALID_CASES, ids=[name for name, _, _ in INVALID_CASES])
def test_invalid_entries_raise(name, matrix, maximize, dtype, solver):
    cost = matrix.to(device=solver.device, dtype=dtype)
    with pytest.raises(ValueError, match=INVALID):
        scipy_linear_sum_assignment(as_numpy64(cost), maximize=maximize)
    expect_value_error(lambda: solver(cost, maximize), [cost], INVALID)
    good = torch.rand(matrix.shape, dtype=dtype, device=solver.device)
    batch = torch.stack([good, good, cost])  # only the last problem is bad
    expect_value_error(lambda: solver(batch, maximize), [batch], INVALID)
    solve_checked(solver, good, maximize)


# --------------------------------------------------------------------------------------------
# empty, batched, list, strided
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
@pytest.mark.parametrize(
    "kind,shape",
    [
        ("uniform", (64, 100, 20)),
        ("ties", (7, 12, 9)),
        ("signed", (5, 9, 12)),
        ("uniform", (33, 6, 6)),
        ("uniform", (1, 5, 5)),
    ],
    ids=lambda v: v if isinstance(v, str) else shape_id(v),
)
def test_batched_equals_per_problem(kind, shape, maximize, solver, gen):
    """Every problem of a batch optimal, and equal in total to solving it alone. Enough problems
    for the CPU to split them over its threads; the int64 output block is poisoned first."""
    cost = make_cost(kind, shape, gen).to(solver.device)
    poison_allocator((shape[0], min(shape[1:])), torch.int64, solver.device)
    totals = solve_checked(solver, cost, maximize)
    for b in range(shape[0]):
        rows, cols = solver(cost[b], maximize)
        alone = check_valid(cost[b], rows, cols, maximize)
        tolerance = total_tolerance(cost[b], totals[b])
        assert abs(alone - totals[b]) <= tolerance, f"problem {b}: {alone} alone, {totals[b]} in the batch"


def test_batched_mixed_feasibility_patterns(solver, gen):
    """One batch where problems have different forbidden patterns (some dense): each optimal."""
    problems = []
    for b in range(12):
        base = make_cost("uniform", (15, 10), gen)
        problems.append(with_forbidden(base, 0.1 * (b % 10), gen))
    solve_checked(solver, torch.stack(problems).to(solver.device))


@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
@pytest.mark.parametrize("device", DEVICES)
def test_list_of_different_shapes(maximize, device, gen):
    shapes = [(5, 3), (0, 4), (3, 5), (4, 0), (1, 1), (20, 7), (7, 20), (0, 0), (100, 20), (13, 13)]
    dtypes = [torch.float64, torch.float32, torch.int64]
    costs = [
        make_cost("ties" if i % 3 == 2 else "uniform", shape, gen).to(device=device, dtype=dtypes[i % 3])
        for i, shape in enumerate(shapes)
    ]
    before = [c.clone() for c in costs]
    results = pyvision_ops.linear_sum_assignment(costs, maximize=maximize)
    sync(device)
    assert isinstance(results, list) and len(results) == len(costs)
    for i, (cost, (rows, cols)) in enumerate(zip(costs, results)):
        assert_unchanged(before[i], cost)
        # each held to its own dtype's tolerance (the list is solved in float64 when any is)
        total = check_optimal(cost, rows, cols, maximize)
        alone = check_valid(cost, *pyvision_ops.linear_sum_assignment(cost, maximize=maximize), maximize)
        assert abs(total - alone) <= total_tolerance(cost, alone), f"list item {i} {tuple(cost.shape)}"


@pytest.mark.parametrize("device", DEVICES)
def test_list_edge_cases(device, gen):
    assert pyvision_ops.linear_sum_assignment([]) == []
    only_empty = pyvision_ops.linear_sum_assignment([torch.rand(0, 3, device=device), torch.rand(2, 0, device=device)])
    assert [tuple(r.shape) for r, _ in only_empty] == [(0,), (0,)]
    assert all(r.dtype == torch.int64 and c.dtype == torch.int64 for r, c in only_empty)
    assert all(r.device.type == torch.device(device).type for r, _ in only_empty)
    single = pyvision_ops.linear_sum_assignment((make_cost("uniform", (6, 4), gen).to(device),))  # a tuple too
    assert len(single) == 1


@pytest.mark.parametrize("device", DEVICES)
def test_list_errors_name_the_bad_matrix(device, gen):
    good = make_cost("uniform", (4, 4), gen).to(device)
    infeasible = torch.tensor([[INF, INF], [1.0, 2.0]], dtype=torch.float64, device=device)
    invalid = torch.tensor([[NAN, 1.0], [1.0, 2.0]], dtype=torch.float64, device=device)
    expect_value_error(lambda: pyvision_ops.linear_sum_assignment([good, infeasible]), [good, infeasible], INFEASIBLE)
    expect_value_error(lambda: pyvision_ops.linear_sum_assignment([invalid, good]), [good, invalid], INVALID)
    bad_rank = torch.rand(2, 3, 4, device=device)
    with pytest.raises(ValueError, match=r"cost\[1\]"):
        pyvision_ops.linear_sum_assignment([good, bad_rank])
    with pytest.raises(TypeError, match=r"cost\[1\]"):
        pyvision_ops.linear_sum_assignment([good, torch.ones(2, 2, dtype=torch.bool, device=device)])
    with pytest.raises(TypeError):
        pyvision_ops.linear_sum_assignment([good, [[1.0, 2.0]]])


@pytest.mark.parametrize("device", DEVICES)
def test_packed_op_directly(device, gen):
    shapes = [(3, 5), (0, 2), (4, 4), (6, 2), (1, 1)]
    mats = [make_cost("uniform", s, gen).to(device) for s in shapes]
    flat = torch.cat([m.reshape(-1) for m in mats])
    dims = [d for s in shapes for d in s]
    for maximize in (False, True):
        rows, cols = ops._linear_sum_assignment_packed(flat, dims, maximize)
        sizes = [min(s) for s in shapes]
        assert tuple(rows.shape) == (sum(sizes),) and tuple(cols.shape) == (sum(sizes),)
        for m, r, c in zip(mats, rows.split(sizes), cols.split(sizes)):
            check_optimal(m, r, c, maximize)
    empty_rows, empty_cols = ops._linear_sum_assignment_packed(flat[:0], [], False)
    assert empty_rows.numel() == 0 and empty_cols.numel() == 0


def strided_layouts(cost: torch.Tensor) -> List[Tuple[str, torch.Tensor]]:
    """``cost``'s values (2-D) in non-contiguous storage: transposed view, sliced, offset."""
    n, m = cost.shape
    transposed = cost.t().contiguous().t()
    big = torch.full((2 * n, m + 3), NAN, dtype=cost.dtype, device=cost.device)
    sliced = big[::2, 1 : 1 + m]
    sliced.copy_(cost)
    every_other_column = torch.full((n, 2 * m), NAN, dtype=cost.dtype, device=cost.device)
    every_other_column[:, 1::2] = cost
    layouts = [("transposed", transposed), ("sliced", sliced), ("column_stride_2", every_other_column[:, 1::2])]
    for name, view in layouts:
        assert not view.is_contiguous(), name
        assert torch.equal(view, cost), name
    return layouts


@pytest.mark.parametrize("shape", [(7, 7), (30, 12), (12, 30)], ids=shape_id)
def test_non_contiguous_inputs(shape, solver, gen):
    cost = make_cost("uniform", shape, gen).to(solver.device)
    expected = scipy_total(cost)
    for name, view in strided_layouts(cost):
        total = solve_checked(solver, view)
        assert abs(total - expected) <= total_tolerance(cost, expected), name


def test_non_contiguous_batches(solver, gen):
    base = make_cost("uniform", (6, 9, 5), gen).to(solver.device)
    permuted = base.permute(2, 1, 0).contiguous().permute(2, 1, 0)  # batch dim innermost in memory
    assert not permuted.is_contiguous() and torch.equal(permuted, base)
    solve_checked(solver, permuted)
    solve_checked(solver, base[::2])  # batch stride doubled
    solve_checked(solver, base.transpose(1, 2))  # (6, 5, 9) view
    expanded = base[:1].expand(4, 9, 5)  # one problem repeated with stride 0
    totals = solve_checked(solver, expanded)
    assert len(set(totals)) == 1, f"identical problems, different totals: {totals}"


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4, 5)], ids=["0d", "1d", "4d"])
def test_rejects_wrong_rank(shape, device):
    """The Python layer's ValueError (the registered ops' own checks are the contract's)."""
    cost = torch.rand(shape, device=device)
    with pytest.raises(ValueError, match="cost"):
        pyvision_ops.linear_sum_assignment(cost)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bool, torch.complex64, torch.complex128], ids=str)
def test_rejects_bool_and_complex(dtype, device):
    cost = torch.ones(3, 3, dtype=dtype, device=device)
    with pytest.raises(TypeError, match="cost"):
        pyvision_ops.linear_sum_assignment(cost)
    with pytest.raises(TypeError, match="cost"):
        pyvision_ops.linear_sum_assignment(cost[None])


def test_rejects_non_tensor():
    with pytest.raises(TypeError):
        pyvision_ops.linear_sum_assignment(np.ones((3, 3)))


@pytest.mark.parametrize("device", DEVICES)
def test_registered_op_on_integer_dtype_raises_or_solves(device, gen):
    """The Python layer converts integers; called directly, the op must either name ``cost`` in
    an error or solve the problem correctly -- never misread the integers as floats."""
    cost = torch.randint(0, 9, (6, 6), generator=gen).to(device)
    try:
        rows, cols = ops.linear_sum_assignment(cost, False)
        sync(device)
    except ERRORS as error:
        assert "cost" in str(error), f"error does not name the argument: {error}"
        return
    check_optimal(cost, rows, cols, tolerance=0.0)


@pytest.mark.parametrize("device", DEVICES)
def test_inputs_requiring_grad_are_detached(device, gen):
    cost = make_cost("uniform", (8, 5), gen).to(device).requires_grad_(True)
    rows, cols = pyvision_ops.linear_sum_assignment(cost)
    check_optimal(cost.detach(), rows, cols)
    assert rows.grad_fn is None and cols.grad_fn is None
    batch = make_cost("uniform", (3, 5, 8), gen).to(device).requires_grad_(True)
    rows, cols = pyvision_ops.linear_sum_assignment(batch)
    assert not rows.requires_grad and not cols.requires_grad
    (rows, cols), = pyvision_ops.linear_sum_assignment([cost])
    assert not rows.requires_grad
    # the matched cost is differentiable through ordinary indexing (DETR's loss does this)
    cost[rows, cols].sum().backward()
    expected = torch.zeros(8, 5, dtype=torch.float64)
    expected[rows.cpu(), cols.cpu()] = 1
    torch.testing.assert_close(cost.grad.cpu(), expected)


# --------------------------------------------------------------------------------------------
# the shared op contract (tests/contract.py): opcheck (no autograd: the outputs are indices),
# torch.compile, empty problems, bad input -- for each registered op of the family
# --------------------------------------------------------------------------------------------

CONTRACT_SHAPES = [(5, 5), (7, 4), (4, 7), (3, 6, 4), (2, 4, 6), (0, 3, 3), (3, 0, 2)]
EMPTY_SHAPES = [(0, 0), (0, 5), (5, 0), (0, 3, 4), (3, 0, 4), (3, 4, 0), (0, 0, 0)]


def _k_shape(shape: Sequence[int]) -> Tuple[int, ...]:
    k = min(shape[-2], shape[-1])
    return (k,) if len(shape) == 2 else (shape[0], k)


class TestLinearSumAssignmentContract(OpContract):
    """The dense (N, M) and batched (B, N, M) op."""

    op_name = "linear_sum_assignment"
    differentiable = False

    def samples(self, device):
        return [
            Sample((torch.rand(shape, dtype=dtype, device=device), (i + j) % 2 == 1), f"{shape_id(shape)}-{dtype}")
            for i, shape in enumerate(CONTRACT_SHAPES)
            for j, dtype in enumerate((torch.float32, torch.float64))
        ]

    def empty_cases(self, device):
        return [
            EmptyCase(Sample((torch.rand(shape, dtype=torch.float64, device=device), maximize), f"{shape_id(shape)}-{maximize}"),
                      [_k_shape(shape), _k_shape(shape)])
            for shape in EMPTY_SHAPES
            for maximize in (False, True)
        ]

    def bad_inputs(self, device):
        def with_value(value, position=(2, 1), shape=(4, 4)):
            cost = torch.rand(shape, dtype=torch.float64, device=device) + 0.5
            cost[position] = value
            return cost

        good = torch.rand(3, 4, 4, dtype=torch.float64, device=device)
        batch_with_nan = good.clone()
        batch_with_nan[2, 3, 3] = NAN
        return [
            BadInput("0-d cost", (torch.rand((), device=device), False), r"cost must be 2-D \(N, M\) or 3-D"),
            BadInput("1-D cost", (torch.rand(5, device=device), False), r"cost must be 2-D \(N, M\) or 3-D"),
            BadInput("4-D cost", (torch.rand(2, 3, 4, 5, device=device), False), r"cost must be 2-D \(N, M\) or 3-D"),
            BadInput("NaN", (with_value(NAN), False), INVALID),
            BadInput("-inf", (with_value(-INF), False), INVALID),
            BadInput("+inf under maximize", (with_value(INF), True), INVALID),
            BadInput("NaN in the last problem of a batch", (batch_with_nan, False), INVALID),
            BadInput("a forbidden row", (torch.tensor([[1.0, 2.0], [INF, INF]], dtype=torch.float64, device=device), False), INFEASIBLE),
        ]


class TestLinearSumAssignmentTeamReferenceContract(TestLinearSumAssignmentContract):
    """The CUDA kernel's algorithm with a team of one thread, on the CPU."""

    op_name = "_linear_sum_assignment_team_reference"
    devices = ("cpu",)


class TestLinearSumAssignmentPackedContract(OpContract):
    """The list form: matrices of different shapes concatenated, solved in one call."""

    op_name = "_linear_sum_assignment_packed"
    differentiable = False

    def samples(self, device):
        samples = []
        for shapes in ([(3, 5), (0, 2), (4, 4), (6, 2)], [(1, 1), (7, 3), (2, 0)]):
            for dtype in (torch.float32, torch.float64):
                flat = torch.rand(sum(n * m for n, m in shapes), dtype=dtype, device=device)
                dims = [d for s in shapes for d in s]
                samples.append(Sample((flat, dims, dtype == torch.float64), f"{shapes}-{dtype}"))
        return samples

    def empty_cases(self, device):
        flat = torch.rand(0, dtype=torch.float64, device=device)
        return [
            EmptyCase(Sample((flat, [], False), "no matrices"), [(0,), (0,)]),
            EmptyCase(Sample((flat, [0, 3, 4, 0, 0, 0], True), "only empty matrices"), [(0,), (0,)]),
        ]

    def bad_inputs(self, device):
        flat = torch.rand(3 * 5 + 4 * 4, dtype=torch.float64, device=device)
        with_nan = flat.clone()
        with_nan[-1] = NAN
        return [
            BadInput("odd-length shapes", (flat, [3, 5, 4], False), r"shapes must list \(rows, cols\) pairs"),
            BadInput("too few elements", (flat, [3, 5, 4, 5], False), r"costs has 31 elements but shapes describe 35"),
            BadInput("too many elements", (flat, [3, 5, 4, 3], False), r"costs has 31 elements but shapes describe 27"),
            BadInput("negative rows", (flat, [-1, 5, 4, 4], False), r"shapes must be non-negative"),
            BadInput("negative cols", (flat, [3, -5, 4, 4], False), r"shapes must be non-negative"),
            BadInput("2-D costs", (flat[:15].view(3, 5), [3, 5], False), r"costs must be 1-D"),
            BadInput("NaN in the last matrix", (with_nan, [3, 5, 4, 4], False), INVALID),
        ]


# --------------------------------------------------------------------------------------------
# torch.compile: the matcher pattern (the op alone is the contract's)
# --------------------------------------------------------------------------------------------


def matched_cost(queries: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A DETR-like matcher: pairwise L1 costs, optimal matching, the matched cost per image."""
    cost = torch.cdist(queries, targets, p=1)
    rows, cols = pyvision_ops.linear_sum_assignment(cost)
    batch = torch.arange(cost.shape[0], device=cost.device).unsqueeze(1)
    return cost[batch, rows, cols].sum(dim=1)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_matcher_with_dynamic_shapes(device, gen):
    """cdist -> assignment -> indexing in one graph, over two shapes with dynamic=True."""
    torch._dynamo.reset()
    compiled = torch.compile(matched_cost, backend="aot_eager", fullgraph=True, dynamic=True)
    for b, q, t in [(3, 10, 4), (2, 12, 7)]:
        queries = torch.rand((b, q, 4), generator=gen).to(device)
        targets = torch.rand((b, t, 4), generator=gen).to(device)
        out = compiled(queries, targets)
        expected = matched_cost(queries, targets)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
        cost = torch.cdist(queries, targets, p=1)
        for i in range(b):  # and it is the optimum
            assert abs(float(out[i]) - scipy_total(cost[i])) <= total_tolerance(cost[i], float(out[i]))


def matched_cost_of_list(costs: List[torch.Tensor]) -> torch.Tensor:
    results = pyvision_ops.linear_sum_assignment(costs)
    return torch.stack([c[r, k].sum() for c, (r, k) in zip(costs, results)])


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_list_form(device, gen):
    torch._dynamo.reset()
    compiled = torch.compile(matched_cost_of_list, backend="aot_eager", fullgraph=True)
    costs = [torch.rand(s, generator=gen).to(device) for s in [(10, 3), (10, 0), (10, 6)]]
    torch.testing.assert_close(compiled(costs), matched_cost_of_list(costs))


# --------------------------------------------------------------------------------------------
# CUDA only
# --------------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
@pytest.mark.parametrize(
    "kind,shape",
    [("uniform", (64, 100, 20)), ("ties", (16, 40, 40)), ("wide_range", (8, 30, 70)), ("uniform", (256, 300, 100))],
    ids=lambda v: v if isinstance(v, str) else shape_id(v),
)
def test_cuda_matches_cpu(kind, shape, maximize, gen):
    cost = make_cost(kind, shape, gen)
    cpu_rows, cpu_cols = pyvision_ops.linear_sum_assignment(cost, maximize=maximize)
    rows, cols = pyvision_ops.linear_sum_assignment(cost.cuda(), maximize=maximize)
    assert rows.is_cuda and cols.is_cuda
    for b in range(shape[0]):
        cpu_total = check_valid(cost[b], cpu_rows[b], cpu_cols[b], maximize)
        cuda_total = check_valid(cost[b].cuda(), rows[b], cols[b], maximize)
        assert abs(cpu_total - cuda_total) <= total_tolerance(cost[b], cpu_total), f"problem {b}"


@needs_cuda
def test_cuda_list_matches_cpu(gen):
    shapes = [(100, 7), (100, 0), (100, 25), (3, 3), (60, 90)]
    costs = [make_cost("uniform", s, gen) for s in shapes]
    cpu = pyvision_ops.linear_sum_assignment(costs)
    gpu = pyvision_ops.linear_sum_assignment([c.cuda() for c in costs])
    for cost, (cr, cc), (gr, gc) in zip(costs, cpu, gpu):
        assert gr.is_cuda
        cpu_total = check_valid(cost, cr, cc, False)
        assert check_valid(cost.cuda(), gr, gc, False) == pytest.approx(cpu_total, rel=1e-9, abs=1e-12)


@needs_cuda
def test_cuda_list_rejects_mixed_devices():
    a, b = torch.rand(3, 3), torch.rand(3, 3, device="cuda")
    with pytest.raises(ValueError, match="device"):
        pyvision_ops.linear_sum_assignment([a, b])
    with pytest.raises(ValueError, match="device"):
        pyvision_ops.linear_sum_assignment([b, a])


@needs_cuda
def test_cuda_runs_on_current_stream(gen):
    cost = make_cost("uniform", (128, 100, 30), gen).cuda()
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        scaled = cost * 2  # queued on the side stream: the op must wait for it, and only it
        rows, cols = pyvision_ops.linear_sum_assignment(scaled)
    stream.synchronize()
    for b in range(0, 128, 17):
        check_optimal(scaled[b], rows[b], cols[b])


@needs_cuda
@pytest.mark.slow
def test_cuda_large_1000x1000(gen):
    cost = torch.rand((1000, 1000), generator=gen, dtype=torch.float64)
    solve_checked(Solver("op", "cuda"), cost.cuda())
