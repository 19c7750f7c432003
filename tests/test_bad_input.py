"""Every bad-input rule of the public ops: errors name the argument and the expected shape."""

from __future__ import annotations

import pytest
import torch

import mtl_fast


def test_gram_rejects_wrong_rank_dtype_and_type() -> None:
    with pytest.raises(ValueError, match=r"J must have shape \(\.\.\., T, P\), got \(5,\)"):
        mtl_fast.gram(torch.zeros(5))
    with pytest.raises(TypeError, match="J must have dtype"):
        mtl_fast.gram(torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"J must be a torch\.Tensor"):
        mtl_fast.gram("not a tensor")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one task"):
        mtl_fast.gram(torch.zeros(0, 3))


def test_gram_list_rejects_mismatches() -> None:
    with pytest.raises(ValueError, match="empty list"):
        mtl_fast.gram([])
    with pytest.raises(ValueError, match=r"J\[1\] has 2 tasks in dim 0, but J\[0\] has 3"):
        mtl_fast.gram([torch.zeros(3, 4), torch.zeros(2, 4)])
    with pytest.raises(TypeError, match=r"J\[1\] has dtype torch.float64"):
        mtl_fast.gram([torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.float64)])
    with pytest.raises(ValueError, match=r"J\[1\] is on meta"):
        mtl_fast.gram([torch.zeros(3, 4), torch.zeros(3, 4, device="meta")])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_gradients_name_the_tasks(bad: float) -> None:
    J = torch.randn(4, 10)
    J[1, 3] = bad
    J[3, 0] = bad
    with pytest.raises(mtl_fast.NonFiniteError, match=r"task\(s\) \[1, 3\]") as info:
        mtl_fast.gram(J)
    assert info.value.tasks == [1, 3]
    K = mtl_fast.gram(J, check_finite=False)  # opting out returns the raw (non-finite) Gram
    assert not torch.isfinite(K).all()
    with pytest.raises(mtl_fast.NonFiniteError, match=r"Gram matrix K is not finite .* \[1, 3\]"):
        mtl_fast.min_norm(K)


def test_min_norm_rejects_bad_shapes_and_options() -> None:
    with pytest.raises(ValueError, match=r"K must have shape \(\.\.\., T, T\), got \(2, 3\)"):
        mtl_fast.min_norm(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"K must have shape \(\.\.\., T, T\), got \(4,\)"):
        mtl_fast.min_norm(torch.zeros(4))
    with pytest.raises(TypeError, match="K must have dtype"):
        mtl_fast.min_norm(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="max_iter must be an int"):
        mtl_fast.min_norm(torch.eye(2), max_iter=-1)
    with pytest.raises(ValueError, match="tol must be a finite number"):
        mtl_fast.min_norm(torch.eye(2), tol=float("nan"))


def test_combine_rejects_mismatched_weights() -> None:
    with pytest.raises(ValueError, match=r"w must have shape \(3,\) .* got \(4,\)"):
        mtl_fast.combine(torch.zeros(3, 5), torch.zeros(4))
    with pytest.raises(ValueError, match=r"w must have shape \(2, 3\)"):
        mtl_fast.combine(torch.zeros(2, 3, 5), torch.zeros(3))
    with pytest.raises(ValueError, match="w is on meta but J is on cpu"):
        mtl_fast.combine(torch.zeros(3, 5), torch.zeros(3, device="meta"))
    with pytest.raises(TypeError, match="w must have dtype"):
        mtl_fast.combine(torch.zeros(3, 5), torch.zeros(3, dtype=torch.int64))


def test_combine_adam_rejects_bad_state() -> None:
    J, w = torch.zeros(2, 4), torch.ones(2)
    p, m, v, s = torch.zeros(4), torch.zeros(4), torch.zeros(4), torch.zeros(1)
    with pytest.raises(ValueError, match=r"exp_avg must be a contiguous \(4,\) tensor"):
        mtl_fast.combine_adam(J, w, p, torch.zeros(5), v, s)
    with pytest.raises(ValueError, match=r"step must be a \(1,\) float32 tensor"):
        mtl_fast.combine_adam(J, w, p, m, v, torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"w must have shape \(2,\)"):
        mtl_fast.combine_adam(J, torch.ones(3), p, m, v, s)


def test_combine_adam_equals_combine_then_adam() -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6, generator=gen))
    adam = torch.optim.AdamW([p], lr=1e-2, weight_decay=0.1)
    flat, m, v, s = p.detach().clone(), torch.zeros(6), torch.zeros(6), torch.zeros(1)
    for _ in range(5):
        J = torch.randn(3, 6, generator=gen)
        w = torch.rand(3, generator=gen)
        mtl_fast.combine_adam(J, w, flat, m, v, s, lr=1e-2, weight_decay=0.1)
        # The reference's combine, as inside combine_adam on the CPU ("auto" would pick the
        # compiled kernel, whose FMA summation differs in the last bit).
        p.grad = mtl_fast.combine(J, w, backend="reference")
        adam.step()
    torch.testing.assert_close(flat, p.detach(), rtol=2e-6, atol=1e-7)
    assert torch.equal(m, adam.state[p]["exp_avg"]) and s.item() == 5


def test_finite_rows_whose_sum_overflows_are_not_flagged() -> None:
    """The fast check sums rows first; a finite row whose sum overflows must be confirmed
    element by element, not reported."""
    from mtl_fast._core.validate import all_finite, nonfinite_rows

    big = torch.full((3, 4), 3e38)  # finite, but every row sums to inf in fp32
    big[1, 2] = float("nan")
    big[2, 0] = float("-inf")
    assert nonfinite_rows(big) == [1, 2]
    assert nonfinite_rows(big, [2, 0]) == [0]
    assert all_finite(big[0]) and not all_finite(big[1]) and not all_finite(big[2])
    p = torch.nn.Parameter(torch.zeros(4))
    opt = mtl_fast.MultiAdam([p], num_tasks=3, lr=1e-30)
    assert opt.step(big[[0]], tasks=[0])  # overflowing but finite: the step is taken
    with pytest.raises(mtl_fast.NonFiniteError, match=r"\[2\]"):
        opt.step(big, tasks=[0, 2])


def test_dual_cone_ops_name_the_argument_and_the_tasks() -> None:
    J = torch.randn(4, 10)
    J[2, 5] = float("nan")
    K = mtl_fast.gram(J, check_finite=False)
    for op in (mtl_fast.upgrad_weights, mtl_fast.dualproj_weights):
        with pytest.raises(mtl_fast.NonFiniteError, match=r"Gram matrix K .* \[2\]"):
            op(K)
        assert torch.isnan(op(K, check_finite=False)).all()  # opted out: NaN, never garbage
    with pytest.raises(mtl_fast.NonFiniteError, match=r"Gram matrix G .* \[2\]"):
        mtl_fast.dual_cone_projection(torch.eye(4), K)
    with pytest.raises(ValueError, match="U is on meta but G is on cpu"):
        mtl_fast.dual_cone_projection(torch.eye(3, device="meta"), torch.eye(3))
    with pytest.raises(ValueError, match="pref is on meta but K is on cpu"):
        mtl_fast.upgrad_weights(torch.eye(3), pref=torch.ones(3, device="meta"))
    with pytest.raises(ValueError, match=r"U must have shape \(\.\.\., R, 3\) or \(3,\)"):
        mtl_fast.dual_cone_projection(torch.ones(5), torch.eye(3))
