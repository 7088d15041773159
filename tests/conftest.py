"""Test numerics, set once: float64, strict rank promotion, fresh PRNG keys, dtype tolerances."""

import gc
import itertools
import os
import tempfile
import time

# Two host CPU devices, so the data-parallel tests can compare 1 and 2 devices in-process; and
# no LLVM optimization of the CPU kernels: the suite is dominated by compiling many small
# programs, not by running them (same results; about a quarter less time). The notebook kernels
# the tests start inherit both.
_FLAGS = {"--xla_force_host_platform_device_count": "2", "--xla_backend_optimization_level": "0"}
for _flag, _value in _FLAGS.items():
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}={_value}".strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

# A persistent XLA compilation cache: a speed-up only. Every program is cached, however quickly
# it compiled: the suite compiles thousands of small programs (tens of milliseconds each, most of
# its run time), and reading one back takes a millisecond or two. (Programs with host callbacks,
# such as equinox's runtime checks, JAX never caches.)
# One folder per test worker, held under a lock for the worker's life (a second pytest run at the
# same time takes the next free folder), and shared only with the notebook kernels and
# subprocesses that worker starts and waits for: one process writes at a time, so no entry is
# read half-written (that crashed a worker once, SIGSEGV while deserializing). Hence no size
# limit: with one, JAX scans the whole folder under a file lock on every write, and a cold run
# of the suite took over 18 minutes instead of ~9. At start a worker hard-links the entries its
# sibling folders finished more than a minute ago (a file moves between workers from run to
# run); a folder past 2 GB starts again empty. TRACER_XLA_CACHE moves the folders (default:
# <tmp>/tracer_theory_xla).
_CACHE_LIMIT = 2 * 2**30
_FINISHED_AFTER_S = 60.0
_HELD_LOCKS = []  # the lock on this process's folder, kept for the life of the process


def _claim_cache_folder(base: str) -> str | None:
    """This process's cache folder under ``base`` (created, locked), or None when every
    candidate is taken."""
    from filelock import FileLock, Timeout

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    for attempt in range(8):
        path = os.path.join(base, worker if attempt == 0 else f"{worker}-{attempt}")
        os.makedirs(path, exist_ok=True)
        lock = FileLock(f"{path}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        _HELD_LOCKS.append(lock)
        return path
    return None


def _fill_cache_folder(path: str, base: str) -> None:
    """Empty ``path`` past the size limit, then link in the entries of the other folders under
    ``base`` that it lacks, written more than ``_FINISHED_AFTER_S`` ago (so complete)."""
    have = set(os.listdir(path))
    if sum(os.path.getsize(os.path.join(path, n)) for n in have) > _CACHE_LIMIT:
        for name in have:
            os.remove(os.path.join(path, name))
        have = set()
    newest = time.time() - _FINISHED_AFTER_S
    for sibling in os.scandir(base):
        if not sibling.is_dir() or sibling.path == path:
            continue
        for entry in os.scandir(sibling.path):
            if entry.name not in have and entry.stat().st_mtime < newest:
                try:
                    os.link(entry.path, os.path.join(path, entry.name))
                except OSError:  # raced by another worker, or links not supported: skip it
                    continue
                have.add(entry.name)


_BASE = os.environ.setdefault("TRACER_XLA_CACHE",
                              os.path.join(tempfile.gettempdir(), "tracer_theory_xla"))
_FOLDER = _claim_cache_folder(_BASE)
if _FOLDER is not None:
    _fill_cache_folder(_FOLDER, _BASE)
    # the environment, so the kernels and subprocesses this worker starts use the same folder
    os.environ.update({"JAX_COMPILATION_CACHE_DIR": _FOLDER,
                       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                       "JAX_COMPILATION_CACHE_MAX_SIZE": "-1"})
    jax.config.update("jax_compilation_cache_dir", _FOLDER)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_compilation_cache_max_size", -1)


#: The longest test files (20-50 s each on a warm 2-worker run), collected first: xdist hands
#: out whole files in collection order, and with these first the two workers end together
#: instead of one waiting on a long file handed out last. Scheduling only.
_LONG_FILES = ("test_notebooks.py", "test_finetune_task.py", "test_scan.py", "test_claims.py",
               "test_figures.py", "test_budget.py", "test_dynamics.py",
               "test_horizon_reference.py", "test_toy.py", "test_teachers.py")


def pytest_collection_modifyitems(config, items):
    """The longest files first (``_LONG_FILES``). Tests marked ``slow`` (the multi-device and
    multi-process subprocesses, ~30 s, and `reproduce --quick` in a copy of the checkout,
    ~2.5 min: they would take the suite past its 5 minutes on 2 cores) run with
    ``TRACER_SLOW_TESTS=1``."""
    rank = {name: i for i, name in enumerate(_LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
    if os.environ.get("TRACER_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow: TRACER_SLOW_TESTS=1 pytest runs it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


#: Relative tolerance of closed-form comparisons by dtype.
TOL = {jnp.float32: 2e-4, jnp.float64: 1e-10}


@pytest.fixture
def getkey():
    """Hands out fresh, deterministic PRNG keys: ``getkey()``."""
    counter = itertools.count()
    return lambda: jax.random.key(next(counter))


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """The toy experiment in quick mode (about a minute): ``(config, results folder, payload)``.
    Only tests/test_toy.py uses it, and ``--dist loadfile`` keeps a file on one worker."""
    from tracer_theory.deep.studies.experiment import quick_config, run_experiment

    out = tmp_path_factory.mktemp("toy")
    config = quick_config()
    return config, out, run_experiment(config, out, progress=False)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test file. Every XLA:CPU executable keeps its
    own memory mappings, and a worker that compiles half the suite's thousands of programs
    passes the kernel's 65,530 mappings per process (measured: 52,000 after 9 files), where
    compiling the next one aborts; recompiling a dropped one is a persistent-cache read."""
    yield
    jax.clear_caches()
    gc.collect()
