"""Shared-memory tensors: the owner's store, handles, attaching (also from another process), ops.

What users rely on: a tensor's bytes are shared, not copied; a segment exists exactly as long as
someone holds a reference and is gone from ``/dev/shm`` when the last one goes; a worker process
that maps a tensor can read it (and write it, when allowed) but never frees the owner's segment;
every op computes what numpy computes and bad inputs are refused with a message that says why.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np
import pytest

from qhybrid.runtime.tensors import (
    OPS,
    SEGMENT_PREFIX,
    OpError,
    SharedTensor,
    TensorHandle,
    TensorStore,
    attach,
    get_op,
    run_numpy,
)

SHM = Path("/dev/shm")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="needs POSIX shared memory (/dev/shm)")


def _exists(name: str) -> bool:
    return (SHM / name).exists()


def _mine() -> set[str]:
    """This process's qhybrid segments (other test processes may run beside us)."""
    prefix = f"{SEGMENT_PREFIX}{os.getpid()}_"
    return {p.name for p in SHM.iterdir() if p.name.startswith(prefix)}


@pytest.fixture(scope="module", autouse=True)
def _resource_tracker() -> None:
    # multiprocessing's resource tracker is a child process that lives for the whole session;
    # start it before the per-test leak check so that no test appears to have left it behind.
    resource_tracker.ensure_running()


@pytest.fixture
def store() -> Iterator[TensorStore]:
    with TensorStore() as s:
        yield s


def _run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def _handle_json(handle: TensorHandle) -> str:
    return json.dumps(dataclasses.asdict(handle))


# -- creating --------------------------------------------------------------------------------


def test_create_gives_a_zero_filled_tensor_of_the_right_shape_and_dtype(
    store: TensorStore,
) -> None:
    with store.create((3, 5), np.float32) as t:
        assert isinstance(t, SharedTensor)
        assert t.array.shape == (3, 5)
        assert t.array.dtype == np.float32
        assert t.array.flags.writeable
        assert not t.array.any()
        assert t.handle.shape == (3, 5)
        assert t.handle.offset == 0
        assert np.dtype(t.handle.dtype) == np.float32
        assert t.handle.segment.startswith(SEGMENT_PREFIX)
        assert _exists(t.handle.segment)


def test_from_array_round_trips_values_and_dtype(store: TensorStore) -> None:
    rng = np.random.default_rng(1)
    for src in (
        rng.standard_normal((4, 7)).astype(np.float32),
        np.arange(10, dtype=np.int64),
        np.array([[True, False], [False, True]]),
    ):
        with store.from_array(src) as t:
            np.testing.assert_array_equal(t.array, src)
            assert t.array.dtype == src.dtype
            # A copy: changing the source does not change the tensor.
            before = t.array.copy()
            src[...] = 0
            np.testing.assert_array_equal(t.array, before)


def test_tensors_are_separate_segments_and_writes_go_through_handles(store: TensorStore) -> None:
    a = store.from_array(np.ones(4, dtype=np.float32))
    b = store.from_array(np.ones(4, dtype=np.float32))
    try:
        assert a.handle.segment != b.handle.segment
        a.array[2] = 9.0
        assert b.array.tolist() == [1.0, 1.0, 1.0, 1.0]
        # A second reference to the same tensor shares its memory.
        with store.open(a.handle) as again:
            assert again.array.tolist() == [1.0, 1.0, 9.0, 1.0]
            again.array[0] = -1.0
        assert a.array.tolist() == [-1.0, 1.0, 9.0, 1.0]
    finally:
        a.close()
        b.close()
    assert a.closed
    assert b.closed


def test_empty_and_scalar_tensors(store: TensorStore) -> None:
    with store.create((0, 3), np.float32) as empty, store.from_array(np.float32(2.5)) as scalar:
        assert empty.array.shape == (0, 3)
        assert empty.handle.nbytes == 0
        assert scalar.array.shape == ()
        assert float(scalar.array) == 2.5
        assert scalar.handle.describe() == "float32[]"


def test_a_refused_create_leaves_no_segment_behind(store: TensorStore) -> None:
    before = _mine()
    with pytest.raises(ValueError, match="negative dimension"):
        store.create((-1, 4), np.float32)
    assert store.stats().tensors == 0
    leaked = _mine() - before
    for name in leaked:  # clean up here, so the leak shows as this assertion, not a teardown
        shm = shared_memory.SharedMemory(name=name)
        shm.close()
        shm.unlink()
    assert leaked == set()


def test_create_after_close_is_refused() -> None:
    s = TensorStore()
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.create((2,), np.float32)


# -- freeing ---------------------------------------------------------------------------------


def test_close_frees_the_segment_and_is_idempotent(store: TensorStore) -> None:
    t = store.create((8,), np.float32)
    name = t.handle.segment
    assert _exists(name)
    assert not t.closed
    t.close()
    assert t.closed
    assert not _exists(name)
    assert t.handle not in store
    assert store.refcount(t.handle) == 0
    t.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        _ = t.array


def test_leaving_a_with_block_frees_the_segment(store: TensorStore) -> None:
    with store.create((8,), np.float32) as t:
        name = t.handle.segment
        assert _exists(name)
    assert not _exists(name)
    assert t.closed


def test_garbage_collection_of_the_last_reference_frees_the_segment(store: TensorStore) -> None:
    t = store.create((8,), np.float32)
    handle = t.handle
    assert handle in store
    del t
    gc.collect()
    assert not _exists(handle.segment)
    assert handle not in store
    assert store.stats().freed == 1


def test_segment_lives_until_the_last_of_several_references_goes(store: TensorStore) -> None:
    first = store.create((4,), np.float32)
    handle = first.handle
    second = store.open(handle)
    store.retain(handle)  # e.g. the handle is in flight to a worker
    assert store.refcount(handle) == 3

    first.close()
    assert store.refcount(handle) == 2
    assert _exists(handle.segment)
    second.close()
    assert store.refcount(handle) == 1
    assert _exists(handle.segment)
    assert handle in store

    store.release(handle)
    assert store.refcount(handle) == 0
    assert not _exists(handle.segment)
    # Releasing a freed tensor again is harmless and does not resurrect anything.
    store.release(handle)
    assert store.refcount(handle) == 0


def test_closing_one_reference_twice_drops_only_one(store: TensorStore) -> None:
    t = store.create((4,), np.float32)
    other = store.open(t.handle)
    try:
        t.close()
        t.close()
        assert store.refcount(t.handle) == 1
        assert _exists(t.handle.segment)
    finally:
        other.close()
    assert not _exists(t.handle.segment)


def test_open_and_retain_refuse_unknown_or_freed_handles(store: TensorStore) -> None:
    t = store.create((2, 2), np.float32)
    handle = t.handle
    # Same segment, different shape: not the tensor the store holds.
    wrong = TensorHandle(handle.segment, 0, (4,), handle.dtype)
    with pytest.raises(KeyError):
        store.open(wrong)
    t.close()
    with pytest.raises(KeyError, match="freed"):
        store.open(handle)
    with pytest.raises(KeyError):
        store.retain(handle)


def test_store_close_frees_everything_even_referenced_tensors() -> None:
    s = TensorStore()
    a = s.create((16,), np.float32)
    b = s.create((2, 2), np.int32)
    s.retain(b.handle)
    names = [a.handle.segment, b.handle.segment]
    assert all(_exists(n) for n in names)
    s.close()
    assert not any(_exists(n) for n in names)
    assert s.stats().tensors == 0
    assert s.stats().bytes == 0
    assert a.handle not in s
    assert b.handle not in s
    s.close()  # idempotent
    a.close()  # the store already freed them: closing the references later is harmless
    b.close()


def test_stats_count_tensors_bytes_and_peak(store: TensorStore) -> None:
    a = store.create((10,), np.float32)  # 40 bytes
    b = store.create((5,), np.float64)  # 40 bytes
    s = store.stats()
    assert (s.tensors, s.bytes, s.peak_bytes, s.created, s.freed) == (2, 80, 80, 2, 0)
    a.close()
    s = store.stats()
    assert (s.tensors, s.bytes, s.peak_bytes, s.created, s.freed) == (1, 40, 80, 2, 1)
    b.close()
    s = store.stats()
    assert (s.tensors, s.bytes, s.peak_bytes, s.created, s.freed) == (0, 0, 80, 2, 2)


def test_repr_says_shape_segment_and_state(store: TensorStore) -> None:
    t = store.create((2, 3), np.float32)
    assert repr(t) == f"<SharedTensor float32[2x3] {t.handle.segment} open>"
    t.close()
    assert repr(t).endswith(" closed>")


_DANGLING_VIEW = {
    "view-of-a-temporary": (
        """
        import numpy as np
        from qhybrid.runtime.tensors import TensorStore
        with TensorStore() as s:
            a = s.from_array(np.arange(4, dtype=np.float32)).array
            print(a.tolist())
        """,
        {"[0.0, 1.0, 2.0, 3.0]"},
    ),
    "view-kept-past-close": (
        """
        import numpy as np
        from qhybrid.runtime.tensors import TensorStore
        with TensorStore() as s:
            t = s.from_array(np.arange(4, dtype=np.float32))
            a = t.array
            t.close()
            print(a.tolist())
        """,
        {"[0.0, 1.0, 2.0, 3.0]"},
    ),
    "attached-view-kept-past-close": (
        """
        import numpy as np
        from qhybrid.runtime.tensors import TensorStore, attach
        with TensorStore() as s:
            t = s.from_array(np.arange(4, dtype=np.float32))
            at = attach(t.handle)
            a = at.array
            at.close()
            print(a.tolist())
            t.close()
        """,
        {"[0.0, 1.0, 2.0, 3.0]"},
    ),
    "tensor-used-after-store-close": (
        """
        import numpy as np
        from qhybrid.runtime.tensors import TensorStore
        s = TensorStore()
        t = s.from_array(np.arange(4, dtype=np.float32))
        s.close()
        try:
            print(t.array.tolist())
        except ValueError:
            print("refused")
        """,
        # Either answer is fine (the data, or a clear refusal); a crash is not.
        {"[0.0, 1.0, 2.0, 3.0]", "refused"},
    ),
}


@pytest.mark.parametrize("case", sorted(_DANGLING_VIEW))
def test_a_numpy_view_outliving_its_reference_does_not_crash(case: str) -> None:
    # The code says "the unlinked mapping dies with that view": the view must stay readable.
    code, accepted = _DANGLING_VIEW[case]
    proc = _run_child(code)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.strip() in accepted


# -- handles ---------------------------------------------------------------------------------


def test_handle_is_a_hashable_picklable_value() -> None:
    h = TensorHandle("qh_1_0_0", 16, (2, 3), "<f4")
    assert h == TensorHandle("qh_1_0_0", 16, (2, 3), "<f4")
    assert hash(h) == hash(TensorHandle("qh_1_0_0", 16, (2, 3), "<f4"))
    assert h != TensorHandle("qh_1_0_0", 16, (3, 2), "<f4")
    assert pickle.loads(pickle.dumps(h)) == h
    assert h.size == 6
    assert h.nbytes == 24
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.offset = 0  # type: ignore[misc]


def test_handle_describe() -> None:
    assert TensorHandle("qh_x", 0, (128, 64), "<f4").describe() == "float32[128x64]"
    assert TensorHandle("qh_x", 0, (5,), "int64").describe() == "int64[5]"
    assert TensorHandle("qh_x", 0, (), "float64").describe() == "float64[]"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"segment": "psm_123"}, ValueError, "not a qhybrid segment name: 'psm_123'"),
        ({"segment": ""}, ValueError, "not a qhybrid segment name"),
        ({"offset": -4}, ValueError, "negative offset -4"),
        ({"shape": (3, -1)}, ValueError, r"negative dimension in shape \(3, -1\)"),
        ({"dtype": "not-a-dtype"}, TypeError, None),
    ],
)
def test_handle_validation(
    kwargs: dict[str, object], error: type[Exception], match: str | None
) -> None:
    fields: dict[str, object] = {"segment": "qh_1_0_0", "offset": 0, "shape": (2,), "dtype": "<f4"}
    fields.update(kwargs)
    with pytest.raises(error, match=match):
        TensorHandle(**fields)  # type: ignore[arg-type]


# -- attaching -------------------------------------------------------------------------------


def test_attach_in_this_process_sees_the_data_read_only(store: TensorStore) -> None:
    src = np.arange(12, dtype=np.float32).reshape(3, 4)
    with store.from_array(src) as t, attach(t.handle) as at:
        np.testing.assert_array_equal(at.array, src)
        assert not at.array.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            at.array[0, 0] = 1.0
        # The attach is a view, not a copy: the owner's writes show through.
        t.array[1, 1] = 100.0
        assert at.array[1, 1] == 100.0


def test_writable_attach_writes_through_to_the_owner(store: TensorStore) -> None:
    with store.create((2, 2), np.float32) as t:
        with attach(t.handle, writable=True) as at:
            assert at.array.flags.writeable
            at.array[...] = [[1, 2], [3, 4]]
        assert t.array.tolist() == [[1, 2], [3, 4]]
        assert _exists(t.handle.segment)  # closing the attach does not free the tensor


def test_attach_honours_the_offset(store: TensorStore) -> None:
    with store.from_array(np.arange(6, dtype=np.float32)) as t:
        part = TensorHandle(t.handle.segment, 8, (2, 2), "<f4")
        with attach(part) as at:
            assert at.array.tolist() == [[2.0, 3.0], [4.0, 5.0]]


def test_closed_attach_refuses_access(store: TensorStore) -> None:
    with store.create((3,), np.float32) as t:
        at = attach(t.handle)
        at.close()
        with pytest.raises(ValueError, match="closed"):
            _ = at.array
        at.close()  # idempotent


@pytest.mark.parametrize(
    ("offset", "shape"),
    [(0, (5,)), (8, (3,)), (16, (1,))],
)
def test_attach_that_overruns_the_segment_is_refused(
    store: TensorStore, offset: int, shape: tuple[int, ...]
) -> None:
    with store.create((4,), np.float32) as t:  # a 16-byte segment
        bad = TensorHandle(t.handle.segment, offset, shape, "<f4")
        with pytest.raises(ValueError, match="overruns segment") as err:
            attach(bad)
        assert t.handle.segment in str(err.value)
        assert "16 bytes" in str(err.value)


def test_attach_of_a_missing_segment_raises_file_not_found(store: TensorStore) -> None:
    t = store.create((4,), np.float32)
    handle = t.handle
    t.close()
    with pytest.raises(FileNotFoundError):
        attach(handle)


_CHILD = """
    import json, sys
    from qhybrid.runtime.tensors import TensorHandle, attach
    fields = json.loads(sys.argv[1])
    handle = TensorHandle(fields["segment"], fields["offset"], tuple(fields["shape"]),
                          fields["dtype"])
    with attach(handle) as ro:
        seen = ro.array.tolist()
        ro_writeable = bool(ro.array.flags.writeable)
    with attach(handle, writable=True) as rw:
        rw.array[...] = rw.array * 10 + 1
    print(json.dumps({"seen": seen, "ro_writeable": ro_writeable}))
"""


def test_attach_from_another_process_reads_and_writes_without_freeing(
    store: TensorStore,
) -> None:
    src = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = store.from_array(src)
    name = t.handle.segment
    try:
        proc = _run_child(_CHILD, _handle_json(t.handle))
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["seen"] == src.tolist()
        assert report["ro_writeable"] is False
        # The child's writes are visible to the owner.
        np.testing.assert_array_equal(t.array, src * 10 + 1)
        # The child has exited; the owner's segment is still there and still owned.
        assert _exists(name)
        assert t.handle in store
        assert store.refcount(t.handle) == 1
    finally:
        t.close()
    assert not _exists(name)


def test_another_process_that_is_killed_while_attached_does_not_free_the_segment(
    store: TensorStore,
) -> None:
    code = """
        import json, os, signal, sys
        from qhybrid.runtime.tensors import TensorHandle, attach
        f = json.loads(sys.argv[1])
        at = attach(TensorHandle(f["segment"], f["offset"], tuple(f["shape"]), f["dtype"]))
        print(at.array.sum(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    with store.from_array(np.ones(5, dtype=np.float32)) as t:
        proc = _run_child(code, _handle_json(t.handle))
        assert proc.returncode == -9
        assert proc.stdout.strip() == "5.0"
        assert _exists(t.handle.segment)
        assert t.array.tolist() == [1.0] * 5
        name = t.handle.segment
    assert not _exists(name)


# -- ops -------------------------------------------------------------------------------------


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def test_the_op_table_lists_the_documented_ops() -> None:
    assert set(OPS) == {
        "matmul",
        "add",
        "mul",
        "scale",
        "relu",
        "silu",
        "gelu",
        "softmax",
        "rmsnorm",
    }
    for name, spec in OPS.items():
        assert spec.name == name
        assert spec.doc
        assert get_op(name) is spec


@pytest.mark.parametrize(("m", "k", "n"), [(1, 1, 1), (3, 4, 2), (17, 33, 9)])
def test_matmul_matches_numpy(m: int, k: int, n: int) -> None:
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    a, b = _rand(rng, m, k), _rand(rng, k, n)
    assert get_op("matmul").check([a.shape, b.shape], ["<f4", "<f4"]) == ((m, n), "<f4")
    out = np.full((m, n), np.nan, dtype=np.float32)
    run_numpy("matmul", [a, b], out)
    np.testing.assert_allclose(
        out, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("name", "reference"),
    [("add", np.add), ("mul", np.multiply)],
)
def test_elementwise_binary_ops_match_numpy(name: str, reference: np.ufunc) -> None:
    rng = np.random.default_rng(7)
    a, b = _rand(rng, 4, 5), _rand(rng, 4, 5)
    out = np.empty_like(a)
    run_numpy(name, [a, b], out)
    np.testing.assert_array_equal(out, reference(a, b))


def test_scale_multiplies_by_its_factor_and_defaults_to_one() -> None:
    a = np.array([[1.0, -2.0], [0.5, 4.0]], dtype=np.float32)
    out = np.empty_like(a)
    run_numpy("scale", [a], out, {"factor": 2.5})
    np.testing.assert_array_equal(out, a * np.float32(2.5))
    run_numpy("scale", [a], out)
    np.testing.assert_array_equal(out, a)


def test_relu_zeroes_negatives_and_keeps_the_rest() -> None:
    a = np.array([-3.0, -0.0, 0.0, 0.25, 7.0], dtype=np.float32)
    out = np.empty_like(a)
    run_numpy("relu", [a], out)
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.0, 0.25, 7.0])


def test_ops_work_on_shared_tensors_in_place(store: TensorStore) -> None:
    rng = np.random.default_rng(3)
    with (
        store.from_array(_rand(rng, 2, 3)) as a,
        store.from_array(_rand(rng, 3, 4)) as b,
        store.create((2, 4), np.float32) as out,
    ):
        run_numpy("matmul", [a.array, b.array], out.array)
        np.testing.assert_allclose(out.array, a.array @ b.array, rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "shapes", "dtypes", "params", "match"),
    [
        ("matmul", [(2, 3)], ["<f4"], None, "matmul takes 2 inputs, got 1"),
        ("relu", [(2,), (2,)], ["<f4", "<f4"], None, "relu takes 1 inputs, got 2"),
        ("add", [], [], None, "add takes 2 inputs, got 0"),
        ("matmul", [(2, 3), (4, 5)], ["<f4", "<f4"], None, r"inner dimensions differ: \[2, 3\]"),
        ("matmul", [(2, 3, 1), (3, 5)], ["<f4", "<f4"], None, "two 2-D tensors"),
        ("matmul", [(3,), (3, 5)], ["<f4", "<f4"], None, "two 2-D tensors"),
        ("add", [(2, 3), (3, 2)], ["<f4", "<f4"], None, r"shapes differ: \[2, 3\] and \[3, 2\]"),
        ("mul", [(4,), (4, 1)], ["<f4", "<f4"], None, "shapes differ"),
        ("add", [(2,), (2,)], ["<f4", "<f8"], None, "add takes float32 tensors, got float64"),
        ("relu", [(2,)], ["int32"], None, "relu takes float32 tensors, got int32"),
        ("scale", [(2,)], ["<f4"], {"gain": 2.0}, r"scale has no parameter 'gain' \(allowed: fac"),
        ("matmul", [(1, 1), (1, 1)], ["<f4", "<f4"], {"alpha": 1.0}, r"\(allowed: none\)"),
    ],
)
def test_check_refuses_bad_inputs_with_a_clear_message(
    name: str,
    shapes: list[tuple[int, ...]],
    dtypes: list[str],
    params: dict[str, float] | None,
    match: str,
) -> None:
    with pytest.raises(OpError, match=match):
        get_op(name).check(shapes, dtypes, params)


def test_run_numpy_refuses_bad_inputs_and_leaves_the_output_alone() -> None:
    a = np.ones((2, 3), dtype=np.float32)
    out = np.full((2, 2), 5.0, dtype=np.float32)
    with pytest.raises(OpError, match="inner dimensions differ"):
        run_numpy("matmul", [a, a], out)
    with pytest.raises(OpError, match="float32"):
        run_numpy("add", [a, a.astype(np.float64)], np.empty((2, 3), dtype=np.float32))
    np.testing.assert_array_equal(out, 5.0)


def test_run_numpy_refuses_an_output_of_the_wrong_shape() -> None:
    a = np.ones((2, 3), dtype=np.float32)
    b = np.ones((3, 4), dtype=np.float32)
    out = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(OpError, match=r"matmul: output has shape \[4, 2\], expected \[2, 4\]"):
        run_numpy("matmul", [a, b], out)
    assert not out.any()


def test_unknown_op_lists_the_known_ones() -> None:
    with pytest.raises(OpError, match="unknown op 'conv2d'") as err:
        get_op("conv2d")
    assert "(known: add, gelu, matmul, mul, relu, rmsnorm, scale, silu, softmax)" in str(err.value)
    with pytest.raises(OpError, match="unknown op 'conv2d'"):
        run_numpy("conv2d", [np.zeros(2, np.float32)], np.zeros(2, np.float32))


def test_op_error_is_a_value_error() -> None:
    # Callers that validate user input catch ValueError; OpError must be one.
    assert issubclass(OpError, ValueError)
