"""Test numerics, set once: float64, strict rank promotion, fresh PRNG keys, dtype tolerances."""

import gc
import itertools
import os
import tempfile

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

# One persistent XLA compilation cache for the test workers and the notebook kernels they start
# (the notebooks and `tracer-theory figures` compile the same functions): a speed-up only. Every
# program is cached, however quickly it compiled: the suite compiles thousands of small programs
# (tens of milliseconds each, most of its run time), and reading one back takes a millisecond or
# two. (Programs with host callbacks, such as equinox's runtime checks, JAX never caches.)
# A size limit makes JAX read and write entries under a file lock (without one it writes in
# place, and a worker reading an entry another is still writing crashed once: SIGSEGV while
# deserializing the half-written executable).
_CACHE = {"JAX_COMPILATION_CACHE_DIR": os.path.join(tempfile.gettempdir(), "tracer_theory_xla"),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_COMPILATION_CACHE_MAX_SIZE": str(8 * 2**30)}
for _name, _value in _CACHE.items():
    os.environ.setdefault(_name, _value)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_compilation_cache_max_size",
                  int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]))

def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (the multi-device and multi-process subprocesses, ~30 s: they
    would take the suite past its 5 minutes on 2 cores) run with ``TRACER_SLOW_TESTS=1``."""
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
