"""pytest plugin for running peers' own test suites on vgpu: numba-cuda's (tests/tests/numba.rs)
and CuPy's (tests/tests/cupy_suite.rs).

- `--vgpu-slice K/N` keeps every N-th collected test starting at the K-th (a fixed slice for
  CI; `0/1` is the whole suite).
- `--vgpu-known FILE` (`nodeid<TAB>reason` lines: tests/numba/known_failures.txt,
  tests/cupy_suite/known_failures.txt) and `--vgpu-summary FILE`: at the end, writes the counts
  and compares the failures with the known ones. A failure that is not known is a regression; a
  known one that passed is reported, so the list is kept short. For the whole suite it also
  writes what each third would pass. The summary's last line is `VERDICT ok` or
  `VERDICT regressed`.
- Provides the one fixture numba-cuda's FileCheck tests take from their repository's root
  conftest.py (not shipped in the wheel): `initialize_from_pytest_config`.
- After a failed numba test that left the device faulted, resets it (see
  `reset_a_faulted_device`), so that one failure counts once.
"""

import sys

import pytest

# CUresults CUDA keeps for the context after a kernel faults: every later call returns them
# until the device is reset (vgpu_uapi::cuda::is_sticky, plus a stopped kernel's timeout).
STICKY = {700, 702, 710, 714, 715, 716, 717, 718, 719}


def pytest_addoption(parser):
    parser.addoption("--vgpu-slice", default="0/1", help="K/N: run every N-th test from the K-th")
    parser.addoption("--vgpu-known", default=None, help="known failures: nodeid<TAB>reason per line")
    parser.addoption("--vgpu-summary", default=None, help="where to write the outcome")
    parser.addoption("--vgpu-record-slices", default=3, type=int, help="N: for the whole suite, write what each K/N slice passes")


@pytest.fixture(scope="class")
def initialize_from_pytest_config(request):
    # numba-cuda's FileCheck tests read this; vgpu never dumps their reproducers.
    request.cls._dump_failed_filechecks = False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when == "call" and outcome.get_result().failed:
        reset_a_faulted_device()


def reset_a_faulted_device():
    """A test whose kernel faulted leaves the context with a sticky error, on a GPU as here, and
    every later test of the same process would fail with it. Where that is so, the device is
    reset as a numba user recovers (numba.cuda.close(): cuDevicePrimaryCtxReset); the failure
    itself is still counted."""
    cuda = sys.modules.get("numba.cuda")
    if cuda is None:
        return
    try:
        from numba.cuda.cudadrv.driver import CudaAPIError, driver

        driver.cuCtxSynchronize()
    except CudaAPIError as e:
        code = getattr(e, "code", None)
        if getattr(code, "value", code) in STICKY:  # a plain int or cuda.bindings' CUresult
            # close() resets the device even where it fails: freeing numba's pending
            # deallocations in the faulted context fails (as on a GPU), one per attempt.
            for _ in range(1000):
                try:
                    cuda.close()
                    break
                except Exception:
                    continue
    except Exception:
        pass


def pytest_collection_modifyitems(config, items):
    k, n = (int(x) for x in config.getoption("--vgpu-slice").split("/"))
    outcomes = getattr(config, "_vgpu_outcomes", None)
    if outcomes is not None:
        outcomes.order = {it.nodeid: i for i, it in enumerate(items)}
    if n <= 1:
        return
    keep = [it for i, it in enumerate(items) if i % n == k]
    drop = [it for i, it in enumerate(items) if i % n != k]
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


class Outcomes:
    def __init__(self):
        self.by_test = {}
        self.order = {}  # nodeid -> index in the whole collection

    # With xdist the workers collect; the controller learns the order from them.
    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids):
        if not self.order:
            self.order = {t: i for i, t in enumerate(ids)}

    def pytest_collectreport(self, report):
        # A module that cannot even be collected is a failure too (its nodeid is its path).
        if report.failed:
            self.by_test[report.nodeid] = "failed"

    def pytest_runtest_logreport(self, report):
        # A test fails if any phase fails; it passes if its call passes; skips are skips.
        prev = self.by_test.get(report.nodeid)
        if report.failed:
            self.by_test[report.nodeid] = "failed"
        elif prev != "failed":
            if report.when == "call" and report.passed:
                self.by_test[report.nodeid] = "xfailed" if hasattr(report, "wasxfail") else "passed"
            elif report.skipped and prev is None:
                self.by_test[report.nodeid] = "xfailed" if hasattr(report, "wasxfail") else "skipped"


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist)
        config._vgpu_outcomes = Outcomes()
        config.pluginmanager.register(config._vgpu_outcomes, "vgpu-outcomes")


def known_failures(path):
    known = {}
    if path:
        for line in open(path, encoding="utf-8"):
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                nodeid, _, reason = line.partition("\t")
                known[nodeid.strip()] = reason.strip()
    return known


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    out = getattr(config, "_vgpu_outcomes", None)
    path = config.getoption("--vgpu-summary")
    if out is None or not path:
        return
    known = known_failures(config.getoption("--vgpu-known"))
    counts = {}
    for outcome in out.by_test.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    failed = sorted(t for t, o in out.by_test.items() if o == "failed")
    unexpected = [t for t in failed if t not in known]
    fixed = sorted(t for t, o in out.by_test.items() if o == "passed" and t in known)
    with open(path, "w", encoding="utf-8") as f:
        f.write("COUNTS " + " ".join(f"{k}={counts.get(k, 0)}" for k in ("passed", "failed", "skipped", "xfailed")) + "\n")
        for t in unexpected:
            f.write(f"UNEXPECTED {t}\n")
        for t in fixed:
            f.write(f"NOW-PASSES {t}\t{known[t]}\n")
        if config.getoption("--vgpu-slice") == "0/1" and out.order:
            # What each slice would pass, for the suite's expected_passes.txt.
            n = config.getoption("--vgpu-record-slices")
            per = [sum(1 for t, o in out.by_test.items() if o == "passed" and out.order.get(t, -1) % n == k) for k in range(n)]
            f.write("SLICE-PASSES " + " ".join(f"{k}/{n}={v}" for k, v in enumerate(per)) + "\n")
        f.write("VERDICT " + ("regressed" if unexpected else "ok") + "\n")
