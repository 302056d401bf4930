"""Running approved code in worker processes: results, failures, limits and concurrency."""

from __future__ import annotations

import os
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from jupyter_syft.crypto.seal import ResultSeal, open_sealed
from jupyter_syft.domain.executor import Executor
from jupyter_syft.domain.jobs import CodeError, InputSpec, JobOutcome, JobSpec, check_code
from jupyter_syft.identity import Identity
from jupyter_syft.wire.values import (
    data_to_table,
    decode_result,
    read_ipc_file,
    table_kind,
    write_ipc_file,
)

FRAME = pd.DataFrame({"age": [30.0, 40.0, 50.0], "name": ["a", "b", "c"]})
MEAN_AGE = "def mean_age(people):\n    return people['age'].mean()\n"
SCIENTIST = Identity.generate()  # results are sealed to this key


@pytest.fixture(scope="module")
def executor() -> Iterator[Executor]:
    with Executor() as executor:
        executor.warm()
        yield executor


def asset(folder: Path, name: str, data: Any) -> InputSpec:
    table = data_to_table(data)
    path = folder / f"{name}.arrow"
    write_ipc_file(path, table)
    return InputSpec(path=str(path), kind=table_kind(table.schema))


def job(folder: Path, code: str, function_name: str = "mean_age", **options: Any) -> JobSpec:
    """A job over FRAME (argument "people") unless other inputs are given."""
    folder.mkdir(exist_ok=True)
    options.setdefault("inputs", {"people": asset(folder, "people", FRAME)})
    return JobSpec(
        request_id="req-1",
        code=textwrap.dedent(code),
        function_name=function_name,
        output_dir=str(folder / "out"),
        domain_peer_id="domain-peer",
        requester=SCIENTIST.peer_id,
        seal_to=SCIENTIST.peer_id,
        **options,
    )


def result(spec: JobSpec, outcome: JobOutcome) -> Any:
    """The decoded result, after checking the job wrote exactly the files it reported."""
    assert outcome.ok, outcome.error
    folder = Path(spec.output_dir)
    parts = [f"part-{i}.sealed" for i in range(outcome.part_count)]
    assert sorted(os.listdir(folder)) == sorted(["manifest.sealed", *parts])
    contexts = ResultSeal(spec.request_id, spec.domain_peer_id, spec.requester)
    manifest = open_sealed(
        (folder / "manifest.sealed").read_bytes(), SCIENTIST, contexts.manifest()
    )
    tables = [
        pa.ipc.open_file(
            open_sealed((folder / part).read_bytes(), SCIENTIST, contexts.part(i))
        ).read_all()
        for i, part in enumerate(parts)
    ]
    return decode_result(manifest, tables)


def fails_cleanly(executor: Executor, folder: Path, spec: JobSpec) -> JobOutcome:
    """Run a failing job: it leaves no result files, and a normal job afterwards works."""
    outcome = executor.run(spec)
    assert not outcome.ok
    assert not os.path.exists(spec.output_dir)
    follow_up = job(folder / "next", MEAN_AGE)
    assert result(follow_up, executor.run(follow_up)) == 40.0
    return outcome


def test_mean_of_a_column(executor: Executor, tmp_path: Path) -> None:
    spec = job(tmp_path, MEAN_AGE)
    outcome = executor.run(spec)
    assert result(spec, outcome) == 40.0
    assert outcome.part_count == 0
    assert outcome.result_bytes == os.path.getsize(Path(spec.output_dir) / "manifest.sealed")
    assert 0 < outcome.seconds < 5


def test_tensor_and_array_inputs(executor: Executor, tmp_path: Path) -> None:
    code = """
    import torch

    def stats(images, labels):
        assert isinstance(images, torch.Tensor) and images.dtype == torch.float32
        images -= 1  # inputs may be changed in place: the asset file stays as it was
        return images.sum(dim=0), labels.shape, labels.dtype.name
    """
    images = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    inputs = {
        "images": asset(tmp_path, "images", images),
        "labels": asset(tmp_path, "labels", np.arange(4, dtype=np.int16)),
    }
    spec = job(tmp_path, code, "stats", inputs=inputs)
    summed, shape, dtype = result(spec, executor.run(spec))
    assert torch.equal(summed, (images - 1).sum(dim=0))
    assert (shape, dtype) == ((4,), "int16")
    assert read_ipc_file(inputs["images"].path).equals(data_to_table(images))


def test_result_of_tensor_and_table(executor: Executor, tmp_path: Path) -> None:
    code = """
    import torch

    def summary(people):
        return {"weights": torch.ones(3, 2, dtype=torch.float64), "table": people.describe()}
    """
    spec = job(tmp_path, code, "summary")
    outcome = executor.run(spec)
    value = result(spec, outcome)
    assert outcome.part_count == 2
    assert torch.equal(value["weights"], torch.ones(3, 2, dtype=torch.float64))
    pd.testing.assert_frame_equal(value["table"], FRAME.describe())


def test_code_that_raises_shows_the_users_lines(executor: Executor, tmp_path: Path) -> None:
    code = """
    def mean_age(people):
        ages = people["age"]
        return ages.sum() / helper(0)

    def helper(n):
        return 1 // n
    """
    outcome = fails_cleanly(executor, tmp_path, job(tmp_path, code))
    # The scientist sees the type and their own lines, never the message (it could hold data).
    assert outcome.error == (
        "the code raised an error: ZeroDivisionError\n"
        "in your code (the message is for the owner to release):\n"
        "  line 4: return ages.sum() / helper(0)\n"
        "  line 7: return 1 // n"
    )
    # The owner gets the whole text.
    headline, traceback = outcome.error_full.split("\n", 1)
    assert headline == (
        "the code raised an error: ZeroDivisionError: integer division or modulo by zero"
    )
    assert 'File "<request req-1>", line 4, in mean_age' in traceback
    assert "return 1 // n" in traceback
    assert "worker.py" not in traceback  # the worker's own frames are left out


@pytest.mark.parametrize(
    "raise_it",
    [
        "raise ValueError(repr(people.to_dict()))",
        "raise type('Secret' + str(int(people['age'].sum())), (Exception,), {})()",
        "raise type('KeyError', (Exception,), {'__module__': 'builtins'})(str(people))",
        "assert False, str(people)",
        "print(people)\n    1 / 0",
    ],
)
def test_a_raising_job_does_not_disclose_data(
    executor: Executor, tmp_path: Path, raise_it: str
) -> None:
    """The attack: an approved job raised all private rows in its exception message."""
    frame = pd.DataFrame({"age": [31337.0, 31338.0], "name": ["MARKER-ANN", "MARKER-BOB"]})
    inputs = {"people": asset(tmp_path, "secret", frame)}
    code = f"def mean_age(people):\n    {raise_it}\n"
    outcome = fails_cleanly(executor, tmp_path, job(tmp_path, code, inputs=inputs))
    assert "MARKER" not in outcome.error and "62675" not in outcome.error
    assert outcome.error.startswith("the code raised an error: ")
    assert "MARKER" in outcome.error_full + outcome.log.decode() or "Secret" in outcome.error_full


def test_syntax_errors_are_found_before_running(executor: Executor, tmp_path: Path) -> None:
    with pytest.raises(CodeError) as info:
        check_code("def f(x):\n    return x +\n", "f")
    assert (info.value.line, info.value.column) == (2, 15)
    assert str(info.value).startswith("syntax error at line 2, column 15: ")
    with pytest.raises(CodeError, match="line 1, column 1: 'return' outside function"):
        check_code("return 1\ndef f(): pass\n", "f")
    outcome = fails_cleanly(executor, tmp_path, job(tmp_path, "def mean_age(:\n"))
    assert outcome.error.startswith("syntax error at line 1, column 14")


def test_missing_function(executor: Executor, tmp_path: Path) -> None:
    check_code(MEAN_AGE, "mean_age")
    for code in ("def other():\n    def mean_age(): pass\n", "mean_age = lambda people: 1\n"):
        with pytest.raises(CodeError, match="defines no top-level function 'mean_age'"):
            check_code(code, "mean_age")
    outcome = fails_cleanly(executor, tmp_path, job(tmp_path, "def other(people): pass\n"))
    assert outcome.error == "the code defines no top-level function 'mean_age'"


def test_infinite_loop_times_out(executor: Executor, tmp_path: Path) -> None:
    code = "def mean_age(people):\n    while True:\n        pass\n"
    started = time.monotonic()
    outcome = fails_cleanly(executor, tmp_path, job(tmp_path, code, timeout_s=1.0))
    assert outcome.error == "timed out after 1 s"
    assert 1.0 <= outcome.seconds < 1.5
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "allocation",
    ["np.ones(10**9)", "torch.ones(10**9)", "[0] * 10**9", "pd.DataFrame({'a': np.arange(10**9)})"],
)
def test_allocating_too_much_is_out_of_memory(
    executor: Executor, tmp_path: Path, allocation: str
) -> None:
    code = f"""
    import numpy as np, pandas as pd, torch

    def mean_age(people):
        return {allocation}
    """
    outcome = fails_cleanly(executor, tmp_path, job(tmp_path, code, memory_bytes=256 * 2**20))
    headline, traceback = outcome.error.split("\n", 1)
    assert headline == "ran out of memory (limit 256 MiB)"
    assert f"return {allocation}" in traceback


def test_memory_limit_leaves_room_for_the_job(executor: Executor, tmp_path: Path) -> None:
    code = """
    import numpy as np

    def mean_age(people):
        return float(np.ones(16 * 2**20).sum())  # 128 MiB
    """
    spec = job(tmp_path, code, memory_bytes=256 * 2**20)
    assert result(spec, executor.run(spec)) == 16 * 2**20


def test_exit_inside_code_is_a_crash(executor: Executor, tmp_path: Path) -> None:
    code = "import os\ndef mean_age(people):\n    os._exit(3)\n"
    outcome = fails_cleanly(executor, tmp_path, job(tmp_path, code))
    assert outcome.error == "worker crashed (exit code 3)"


def test_signal_inside_code_is_a_crash(executor: Executor, tmp_path: Path) -> None:
    code = "import ctypes\ndef mean_age(people):\n    ctypes.string_at(0)\n"
    outcome = fails_cleanly(executor, tmp_path, job(tmp_path, code))
    assert outcome.error == "worker crashed (signal 11 SIGSEGV)"


def test_result_over_the_limit_is_refused(executor: Executor, tmp_path: Path) -> None:
    code = "import numpy as np\ndef mean_age(people):\n    return np.zeros(2**18)\n"  # 2 MiB
    outcome = fails_cleanly(executor, tmp_path, job(tmp_path, code, max_result_bytes=2**20))
    assert outcome.error == "the result is 2 MiB, over the limit of 1 MiB"


def test_unsupported_result_is_refused(executor: Executor, tmp_path: Path) -> None:
    code = "def mean_age(people):\n    return {'ages': {30, 40}}\n"
    outcome = fails_cleanly(executor, tmp_path, job(tmp_path, code))
    assert outcome.error.startswith(
        "the result cannot be sent back: result['ages']: cannot ship a value of type set"
    )


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        # a part frame, then the job dies: the part's file is removed
        ("P\\0\\0\\0\\x04abcdE\\0\\0\\0\\0P\\0\\0\\0\\x02ab", "worker crashed (exit code 3)"),
        ("X\\0\\0\\0\\x01a", "the job sent a malformed frame"),
        ("P\\xff\\xff\\xff\\xff", "the result is over 4096 MiB, past the limit of 1024 MiB"),
        ("R\\0\\0\\0\\x03abc", "could not write the result: "),
    ],
)
def test_hostile_frames_to_the_keeper_leave_no_files(
    executor: Executor, tmp_path: Path, frames: str, error: str
) -> None:
    """A job may write anything to its end of the socket: the keeper believes none of it."""
    code = f"""
    import os, socket

    def mean_age(people):
        for fd in map(int, os.listdir("/proc/self/fd")):
            try:
                sock = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue
            sock.sendall(b"{frames}")
            os._exit(3)
    """
    outcome = fails_cleanly(executor, tmp_path, job(tmp_path, code))
    assert outcome.error.startswith(error)


def test_output_dir_that_existed_is_kept_but_emptied(executor: Executor, tmp_path: Path) -> None:
    spec = job(tmp_path, "def mean_age(people):\n    return 1 / 0\n")
    os.makedirs(spec.output_dir)
    assert not executor.run(spec).ok
    assert os.listdir(spec.output_dir) == []


def test_bad_input_is_reported(executor: Executor, tmp_path: Path) -> None:
    inputs = {"people": InputSpec(path=str(tmp_path / "missing.arrow"), kind="table")}
    outcome = executor.run(job(tmp_path, MEAN_AGE, inputs=inputs))
    assert outcome.error == "could not load input 'people': FileNotFoundError"
    assert "No such file or directory" in outcome.error_full
    inputs = {"people": asset(tmp_path, "tensor", np.zeros(3))}
    inputs["people"].kind = "table"
    outcome = executor.run(job(tmp_path, MEAN_AGE, inputs=inputs))
    assert outcome.error == "could not load input 'people': expected a table, found a tensor"


def test_concurrent_jobs(executor: Executor, tmp_path: Path) -> None:
    code = """
    import torch

    def scaled(people, factor):
        return torch.tensor(people["age"].to_numpy()).sum() * float(factor.item())
    """

    def run(i: int) -> Any:
        folder = tmp_path / f"job{i}"
        folder.mkdir()
        inputs = {
            "people": asset(folder, "people", FRAME),
            "factor": asset(folder, "factor", np.array(i)),
        }
        spec = job(folder, code, "scaled", inputs=inputs)
        return result(spec, executor.run(spec)).item()

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(run, range(8))) == [120.0 * i for i in range(8)]


def test_close_stops_running_jobs(tmp_path: Path) -> None:
    executor = Executor()
    spec = job(tmp_path, "import time\ndef mean_age(people):\n    time.sleep(60)\n")
    outcomes: list[JobOutcome] = []
    runner = threading.Thread(target=lambda: outcomes.append(executor.run(spec)))
    runner.start()
    time.sleep(0.5)
    executor.close()
    runner.join(timeout=10)
    assert outcomes[0].error == "the executor was closed while the job was running"
    assert executor.run(spec).error == "the executor is closed"


def test_a_kept_worker_serves_the_rounds_of_one_plan(executor: Executor, tmp_path: Path) -> None:
    """Rounds of one plan share a confined worker; another key or a failure gets a fresh one."""
    code = """
    import sys

    def mean_age(people):
        sys.rounds_seen = getattr(sys, "rounds_seen", 0) + 1
        print("round", sys.rounds_seen)
        return sys.rounds_seen
    """

    def round_of(key: str, i: int) -> tuple[int, bytes]:
        spec = job(tmp_path / f"{key}-{i}", code)
        outcome = executor.run(spec, keep_for=key)
        return result(spec, outcome), outcome.log

    assert [round_of("plan-a", i) for i in range(3)] == [
        (1, b"round 1\n"),
        (2, b"round 2\n"),
        (3, b"round 3\n"),
    ]
    assert round_of("plan-b", 0)[0] == 1
    plain = job(tmp_path / "plain", code)
    assert result(plain, executor.run(plain)) == 1
    failing = job(tmp_path / "fails", "def mean_age(people):\n    return 1 / 0\n")
    assert not executor.run(failing, keep_for="plan-a").ok
    assert round_of("plan-a", 9)[0] == 1  # the failed round's worker was not kept
